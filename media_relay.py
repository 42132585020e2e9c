"""The server's media plane: the ``udp`` thread, datagram routing, the mixer tick and levels.

One thread receives every datagram (``h`` binds an address, ``a`` feeds the
session's mixer, ``v`` is forwarded to the viewers subscribed to that sender's layer,
and to nobody else, ``k`` is answered) and, on a monotonic schedule, ticks every
session's N-1 mixer, sends the ``l`` levels, the coalesced keyframe requests and,
once a second, the bandwidth guard's ``bitrate`` hints. A session being recorded also
gets its active speaker's small layer reassembled for the recorder, and the speaker
chosen from each levels interval (``recording_feed.RecordingFeeds``).

Every datagram is sealed (media_crypto.MediaCipher, one per participant; PROTOCOL.md
section 9), at the socket edge only: ``_open`` authenticates what arrives before any
routing, ``_seal_send`` seals what leaves, once per recipient. Routing in between
sees the plaintext header and payload.
It reads and changes session state only while holding the server's session
lock, and sends after releasing it (lock order: top of server.py).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import config
import media_crypto
import recording_feed
import security
import utils
from config import ServerConfig
from sessions import Route, Send, SessionTable

log = logging.getLogger(__name__)

Count = Callable[..., None]  # ConferenceServer.count(name, n=1)
# An ``a``/``v`` datagram before sealing: the recipient's cipher, header, payload, address.
MediaSend = tuple[Any, bytes, bytes, tuple[str, int]]


def _audio_to(member: Any, seq: int, opus: bytes, clock: int) -> MediaSend | None:
    """The server's ``a`` datagram carrying ``opus`` to ``member`` as its ``seq`` (sender
    0, PROTOCOL.md section 5): a mix, a forwarded packet or a repeat alike. None for
    a member gone or not yet bound to a UDP address."""
    if member is None or member.udp_addr is None:
        return None
    h = utils.MEDIA_HEADER.pack(utils.KIND_AUDIO, utils.MEDIA_VERSION, 0, seq % utils.U32, clock)
    return (member.cipher, h, bytes(utils.AudioPacket(opus)), member.udp_addr)


class MediaRelay:
    """Routes UDP media between the members of each session; runs the ``udp`` thread."""

    def __init__(
        self,
        sock: socket.socket,
        table: SessionTable,
        lock: threading.Lock,
        count: Count,
        cfg: ServerConfig,
        stopping: threading.Event,
        deliver_locked: Callable[[list[Send]], None],
    ) -> None:
        self._udp = sock
        self._table = table
        self._lock = lock  # the server's session lock: guards ``table`` and every mixer
        self._count = count
        self._frame_s = cfg.audio_frame_samples / cfg.audio_rate_hz
        self._stopping = stopping  # the server's: set once, at the start of its stop()
        self._deliver_locked = deliver_locked  # queues control frames; session lock held
        self._next_guard_tick = 0.0
        self._recording = recording_feed.RecordingFeeds()  # the recordings' camera picture
        self._thread = threading.Thread(target=self._loop, name="udp")

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the ``udp`` thread, which ends soon after ``stopping`` is set."""
        self._thread.join(timeout)

    def _loop(self) -> None:
        udp = self._udp
        period = self._frame_s
        max_lag = config.MIXER_MAX_LAG_FRAMES * period
        levels_every = config.LEVELS_INTERVAL_S
        now = time.monotonic()
        next_tick = now + period
        next_levels = now + levels_every
        bufsize = config.UDP_MAX_DATAGRAM_BYTES + 1
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self._mix_tick()
                self._video_tick(now)
                next_tick += period
                if now - next_tick > max_lag:  # fell far behind: skip, never burst
                    self._count("mixer_ticks_skipped")
                    next_tick = now + period
                continue
            if now >= next_levels:
                self._send_levels()
                next_levels += levels_every
                if now - next_levels > levels_every:
                    next_levels = now + levels_every
                continue
            udp.settimeout(min(next_tick, next_levels) - now)
            try:
                data, addr = udp.recvfrom(bufsize)
            except TimeoutError:
                continue
            except OSError as exc:  # e.g. ICMP port unreachable reported on Windows
                if self._stopping.is_set():
                    break
                log.debug("udp recv: %s", exc)
                continue
            try:
                self.on_datagram(data, addr)
            except Exception:  # a bug must not stop the media loop
                log.exception("datagram from %r", addr)
                self._count("datagrams_dropped")

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._udp.sendto(data, addr)
        except OSError as exc:
            self._count("datagrams_send_failed")
            log.debug("udp send to %r: %s", addr, exc)
            return
        self._count("datagrams_out")
        self._count("udp_bytes_out", len(data))

    def _seal_send(
        self, cipher: media_crypto.MediaCipher | None, header: bytes, payload: bytes, addr: Any
    ) -> None:
        """Seal (plaintext ``header`` + ``payload``) under one recipient's key and send it."""
        if cipher is None:
            return
        try:
            data = cipher.seal(header, payload)
        except security.SecurityError as exc:  # counter exhausted: 2**64 datagrams
            self._count("datagrams_send_failed")
            log.warning("cannot seal for %r: %s", addr, exc.message)
            return
        self._sendto(data, addr)

    def _open(
        self, cipher: media_crypto.MediaCipher, data: bytes, addr: Any, register: bool = False
    ) -> tuple[bytes, bytes] | None:
        """The authentic (header, payload) of ``data``, or None (dropped and counted)."""
        try:
            if register:
                return cipher.open_registration(data)
            return cipher.open(data)
        except media_crypto.DatagramRejected as exc:
            self._drop(exc.code, addr, exc.message)
            return None

    def _drop(self, why: str, addr: Any, detail: Any = "") -> None:
        self._count("datagrams_dropped")
        self._count(f"datagrams_{why}")
        log.debug("dropped datagram from %r: %s %r", addr, why, detail)

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        """Open one sealed datagram, then bind, mix, forward, answer or drop (and count) it.

        The clear header names the sender; an ``h`` is opened with that participant's
        key and, if its counter is the newest, moves the binding to ``addr``. Any other
        kind must come from the address bound to its sender before it is opened.
        """
        self._count("datagrams_in")
        self._count("udp_bytes_in", len(data))
        if len(data) < media_crypto.MIN_SEALED_BYTES:
            self._drop(security.SecErr.TRUNCATED, addr, len(data))
            return
        kind, ver, sender = data[0], data[1], int.from_bytes(data[2:4], "big")
        if ver != utils.MEDIA_VERSION:
            self._drop(security.SecErr.BAD_VERSION, addr, ver)
            return
        if kind not in utils.KINDS or kind == utils.KIND_LEVELS:
            self._drop("malformed", addr, f"kind {kind}")
            return
        if kind == utils.KIND_REGISTER:
            self._register(data, sender, addr)
            return
        with self._lock:
            p = self._table.media_sender(addr, sender)
        if p is None or p.cipher is None:
            self._drop("unbound", addr, sender)
            return
        opened = self._open(p.cipher, data, addr)
        if opened is None:
            return
        header, payload = opened
        if kind == utils.KIND_KEEPALIVE:  # answered, so the client knows its binding lives
            self._seal_send(p.cipher, self._reply_header(utils.KIND_KEEPALIVE), b"", addr)
            return
        if kind == utils.KIND_AUDIO:
            try:
                packet = utils.AudioPacket.parse(payload)
            except ValueError as exc:
                self._drop("malformed", addr, str(exc))
                return
        elif kind == utils.KIND_VIDEO:
            try:
                frag = utils.VideoFragment.parse(payload)
            except ValueError as exc:
                self._drop("malformed", addr, str(exc))
                return
        targets: tuple[Route, ...] = ()
        audio: list[MediaSend] = []
        recorded: recording_feed.RecordingFeed | None = None
        with self._lock:
            if p.gone:
                return
            # A host's ask_mute / stop_video holds this media until its sender turns it on.
            meeting = p.session.meeting
            if kind == utils.KIND_AUDIO and meeting.allows_audio(p.id):
                seq = utils.MEDIA_HEADER.unpack(header)[3]
                if not p.session.mixer.push(p.id, seq, packet.opus, 1000 * time.monotonic()):
                    self._count("audio_packets_refused")
                audio = self._forwarded_audio(p.session)
            elif kind == utils.KIND_VIDEO and meeting.allows_video(p.id):
                targets = p.session.routes.get((p.id, frag.layer), ())
                recorded = self._recording.route_locked(p, frag.layer)
        if kind == utils.KIND_VIDEO:
            self.forward_video(header, payload, targets)
            if recorded is not None:  # the recording shows this camera: reassembled here
                recorded.add(frag, time.monotonic())
        for cipher, h, opus, target in audio:
            self._seal_send(cipher, h, opus, target)

    def _forwarded_audio(self, sess: Any) -> list[MediaSend]:
        """A lone talker's packet as the mixer forwards it: an ``a`` from sender 0 to each
        listener, with that listener's seq (PROTOCOL.md section 5). Session lock held."""
        clock = utils.media_clock_ms()
        sends = [
            send
            for listener, seq, opus in sess.mixer.take_forwards()
            if (send := _audio_to(sess.members.get(listener), seq, opus, clock)) is not None
        ]
        if sends:
            self._count("audio_packets_forwarded", len(sends))
        return sends

    def forward_video(self, header: bytes, payload: bytes, targets: tuple[Route, ...]) -> None:
        """Reseal a ``v`` datagram for each viewer subscribed to its layer (maybe none)."""
        if not targets:
            self._count("video_unsubscribed")
            return
        self._count("video_datagrams_forwarded", len(targets))
        for cipher, target in targets:
            self._seal_send(cipher, header, payload, target)

    def _reply_header(self, kind: int) -> bytes:
        return utils.MEDIA_HEADER.pack(kind, utils.MEDIA_VERSION, 0, 0, utils.media_clock_ms())

    def _register(self, data: bytes, sender: int, addr: tuple[str, int]) -> None:
        """A sealed ``h``: proves the key of participant ``sender``; the newest one binds."""
        with self._lock:
            p = self._table.registering(sender)
        if p is None or p.cipher is None:
            self._drop("bad_token", addr, sender)
            return
        if self._open(p.cipher, data, addr, register=True) is None:
            return
        with self._lock:
            bound = self._table.bind_udp(p, addr)
        if bound is None:
            self._drop("bad_token", addr, sender)
            return
        self._seal_send(p.cipher, self._reply_header(utils.KIND_REGISTER), b"", addr)

    def _video_tick(self, now: float) -> None:
        """Send coalesced keyframe requests now due and, once a second, ``bitrate`` hints."""
        guard = now >= self._next_guard_tick
        if guard:
            self._next_guard_tick = now + config.BW_TICK_INTERVAL_S
        with self._lock:
            sends = self._table.video_tick(now, guard)
            if sends:
                self._deliver_locked(sends)
        if sends:
            self._count("video_control_sent", len(sends))

    def _mix_tick(self) -> None:
        """20 ms of every session: each listener its mix as one Opus packet (K+1 encodes).

        The mixer numbers each listener's packets (``MixResult.seqs``): a seq counts every
        tick, sent or not, and continues the numbering of packets it forwarded (PROTOCOL.md,
        "Audio"), so a listener's jitter buffer sees one timeline.
        The packet is the plaintext payload of the ``a`` datagram sealed for that member;
        a listener that loses packets also gets its previous one again (audio_repeat.py).
        """
        sends: list[MediaSend] = []
        recorded: list[tuple[Any, Any]] = []  # (recorder, everyone's mix): fed after the lock
        clock = utils.media_clock_ms()
        with self._lock:
            for sess in self._table.sessions.values():
                result = sess.mixer.tick(1000 * time.monotonic())
                if result.encodes:
                    self._count("audio_mixes_encoded", result.encodes)
                if sess.recorder is not None:
                    recorded.append((sess.recorder, result.everyone))
                # Each listener's mix, then the repeats (audio_repeat.py).
                mixes = [(pid, result.seqs[pid], pk) for pid, pk in result.packets.items()]
                for listener, seq, packet in (*mixes, *result.repeats):
                    send = _audio_to(sess.members.get(listener), seq, packet, clock)
                    if send is not None:
                        sends.append(send)
                if result.repeats:
                    self._count("audio_packets_repeated", len(result.repeats))
        for rec, everyone in recorded:
            if everyone is not None:
                rec.add_audio(everyone)
        for cipher, h, payload, addr in sends:
            self._seal_send(cipher, h, payload, addr)

    def _send_levels(self) -> None:
        """Send every bound member the levels of its session (and one all-zero after speech)."""
        sends: list[MediaSend] = []
        clock = utils.media_clock_ms()
        now = time.monotonic()
        with self._lock:
            for sess in self._table.sessions.values():
                levels = sess.mixer.take_levels()
                self._deliver_locked(
                    self._recording.on_levels_locked(self._table, sess, levels, now)
                )
                nonzero = any(levels.values())
                if not nonzero and not sess.levels_were_nonzero:
                    continue
                sess.levels_were_nonzero = nonzero
                payload = utils.encode_levels(levels)
                for m in sess.members.values():
                    if m.udp_addr is not None:
                        m.levels_seq += 1
                        h = utils.MEDIA_HEADER.pack(
                            utils.KIND_LEVELS,
                            utils.MEDIA_VERSION,
                            0,
                            m.levels_seq % utils.U32,
                            clock,
                        )
                        sends.append((m.cipher, h, payload, m.udp_addr))
        for cipher, h, payload, addr in sends:
            self._seal_send(cipher, h, payload, addr)
