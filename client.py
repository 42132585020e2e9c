"""FusionMeet client: the headless ConferenceClient core and the program entry point.

``ConferenceClient`` speaks the whole wire protocol (docs/PROTOCOL.md) without Qt:
the GUI, the headless participant, tests and benchmarks all drive it. Importing
this module imports no PyQt5, cv2, PyAudio or mss.

Private by default (PROTOCOL.md sections 8-9): every TCP connection is TLS 1.3 and
the server's certificate is checked against a pinned fingerprint (``trust_store``,
``expected_fingerprint``, ``trust_first_use``) before a byte of the protocol is sent;
every UDP datagram is sealed with the participant's media key from the welcome, in
one place each way (``_send_udp`` seals, ``_udp_loop`` opens).

Threads: the caller's (connect, send_*, leave), ``tcp-receiver-<id>``,
``udp-receiver-<id>`` and ``heartbeat-<id>`` (one set per live link), and
``reconnect-<id>`` while a lost link is being resumed (issue 13). Event
callbacks run on these.

Reconnection: when the control connection breaks (or the server goes silent),
the link's threads stop, the ``reconnecting`` event fires and the reconnect
thread tries ``resume`` (with the welcome's ``resume_secret`` and the last chat
seq held) with backoff and jitter; if the server no longer keeps the place
(``resume_failed``, e.g. it restarted) it joins the same session by name with
``hello``. Media flags are restored, the chat outbox is sent again (each
message once, by ``cid``) and ``reconnected`` fires; after
``ClientConfig.reconnect_give_up_s`` it gives up and fires ``disconnected``.

Lock order (each lock's comment in ``ConferenceClient.__init__`` says what it
guards and who takes it). A lock may be taken while holding one above it on its
line, never the other way round:

    _close_lock -> _send_lock      (leave() sends ``bye`` while closing)
    _offer_lock -> _send_lock      (an offer is queued and sent together)

``_close_lock`` is released before ``_offer_lock`` is taken. ``_state_lock``,
``_seq_lock``, ``_handlers_lock``, ``_outbox_lock`` (the chat outbox) and
``ChatLog``'s lock are leaves: nothing
is taken while holding them, and event callbacks run with no lock held, so a
callback may call any method, ``leave()`` included. No method name here ends
in ``_locked``.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import audio_repeat
import client_net
import config as cfg
import media_crypto
import security
import utils
from chat_module import ChatLog
from client_meeting import MeetingActions
from client_net import (
    JoinError,
    NotConnected,
    RequestError,
    _media_cipher,
    open_secure,
)
from client_reconnect import ReconnectLink
from config import ClientConfig
from history import Outbox, OutboxFull
from utils import Err, LocalErr, Msg

log = logging.getLogger(__name__)

# Errors after which the server closes the link for good: the client ends, no reconnect.
FINAL_ERROR_CODES = frozenset({Err.REMOVED, Err.MEETING_ENDED})

EVENTS = frozenset(
    {
        "participant_joined",
        "participant_left",
        "participant_updated",
        "chat",
        "presenter_changed",
        "present_granted",
        "screen_frame",
        "levels",
        "audio",
        "video_fragment",
        "keyframe_request",
        "video_layers",
        "bitrate",
        "file_added",
        "file_removed",
        "error",
        "pong",
        "udp_registered",
        "disconnected",
        # --- reconnection (issue 13) ---
        "reconnecting",  # (reason): the link broke; trying to resume
        "reconnected",  # (welcome): back; welcome["resumed"] is False if rejoined as new
        "chat_ack",  # (cid, seq): a resent message had already been delivered
        # --- meeting controls (issue 14) ---
        "lobby_waiting",  # (message, recording): the join waits for a host (during connect)
        "meeting_changed",  # (kind, by): client.meeting changed (hosts, hands, access, ...)
        "mute_requested",  # (by_username, everyone): the client already turned audio off
        "video_stopped",  # (by_username): the client already turned video off
        "screen_stopped",  # (by_username): the server already released the presenter
        "reaction",  # (from_id, emoji)
        "recording_changed",  # (recording, message or None)
    }
)


class _Waiter:
    """One pending request/response pair (``file_offer`` -> ``upload_ready``)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: RequestError | None = None


class ConferenceClient(MeetingActions, ReconnectLink):
    """One participant's connection to a FusionMeet server (control over TCP, media over UDP)."""

    def __init__(
        self,
        host: str,
        tcp_port: int = cfg.DEFAULT_TCP_PORT,
        config: ClientConfig | None = None,
        trust_store: security.TrustStore | None = None,
        expected_fingerprint: str | None = None,
        trust_first_use: bool = False,
    ) -> None:
        """``trust_store`` (default: the user's) pins servers by fingerprint;
        ``expected_fingerprint`` (full or short) must match and is then pinned;
        ``trust_first_use`` pins an unknown server without asking (never a changed one).
        """
        self.host = host
        self.tcp_port = tcp_port
        self.config = config or ClientConfig()
        self.trust_store = trust_store if trust_store is not None else security.TrustStore()
        self.expected_fingerprint = expected_fingerprint
        self.trust_first_use = trust_first_use
        self.server_fingerprint: str | None = None  # full hex, once connected
        # Counts of server datagrams refused by reason (security.SecErr codes).
        self.udp_rejected: dict[str, int] = {}
        self.my_id: int | None = None
        self.username: str | None = None
        self.token: str | None = None
        self.session: str | None = None
        self.participants: dict[int, dict[str, Any]] = {}
        self.presenter: int | None = None
        self.files: dict[str, dict[str, Any]] = {}
        self.media_params: dict[str, Any] = {}
        self.levels: dict[int, int] = {}
        self.chat = ChatLog()
        self.rtt_s: float | None = None
        self.connected = False
        # Meeting controls (issue 14): welcome.meeting, kept current by the meeting
        # messages (hosts, hands, locked, ask_to_join, spotlight, recording; lobby and
        # bans for hosts). Guarded by _state_lock.
        self.meeting: dict[str, Any] = {"hosts": [], "hands": []}
        # Counters for tests, benchmarks and diagnostics (written by one thread each).
        self.udp_dropped = 0
        self.udp_send_errors = 0
        self.audio_frames_received = 0
        self.video_datagrams_received = 0

        self._tcp: Any = None  # a security.TLSStream once connected
        self._udp: socket.socket | None = None
        self._cipher: media_crypto.MediaCipher | None = None  # the welcome's media key
        self._last_udp_rx = time.monotonic()
        self._server_udp: tuple[str, int] | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._udp_registered = threading.Event()
        # Taken by every thread that sends on the TCP socket (callers of send_*, the
        # heartbeat thread, leave); guards the socket's send side so frames never interleave.
        self._send_lock = threading.Lock()
        # Taken by on() callers and by the network threads when emitting; guards _handlers.
        self._handlers_lock = threading.Lock()
        self._handlers: dict[str, list[Callable[..., Any]]] = {name: [] for name in EVENTS}
        # Taken by the tcp-receiver thread (updates) and readers of the participant,
        # presenter and file state; guards participants, presenter, files.
        self._state_lock = threading.Lock()
        # Taken by callers of send_audio/send_video/send_screen_frame and the heartbeat
        # thread; guards the per-kind sequence counters and the video frame id.
        self._seq_lock = threading.Lock()
        self._seq: dict[Any, int] = {}  # per datagram kind; video per (kind, layer)
        # Taken by callers of send_audio (the audio-capture thread) and the tcp-receiver
        # thread (audio_loss); guards the Opus encoder, which is stateful and made on first
        # use, the expected loss the server asked it to plan for, and the repeats.
        self._audio_lock = threading.Lock()
        self._opus: Any = None
        # Each packet again while the loss is high, and from the start until the server
        # has measured it (audio_loss).
        self._repeat = audio_repeat.Repeater(on=cfg.AUDIO_REPEAT_AT_START)
        self.audio_expected_loss = cfg.OPUS_EXPECTED_LOSS_PERCENT
        self.audio_packets_sent = 0
        self.audio_bytes_sent = 0  # Opus packets sent, first copies
        self.audio_repeat_bytes_sent = 0  # ...and sent again (audio_repeat.py)
        self.audio_loss_told: int | None = None  # the server's last audio_loss (percent)
        self._screen_seq = 0
        self._subscribed: dict[int, str] | None = None  # the last subscribe sent
        self._video_layers: list[dict[str, Any]] | None = None  # see set_video_layers
        # Taken by offer_file callers and the tcp-receiver thread; guards _offers, the
        # FIFO of offers waiting for upload_ready (the server answers them in order).
        self._offer_lock = threading.Lock()
        self._offers: deque[_Waiter] = deque()
        # Taken by leave() and by the threads that notice the server vanished; guards
        # the one-time shutdown (_closed) so it runs once.
        self._close_lock = threading.Lock()
        self._closed = False
        self._last_rx = time.monotonic()
        # Reconnection (issue 13). What a new link needs (set by connect, read by the
        # reconnect thread), the media flags to restore, the chat outbox (taken under
        # _outbox_lock by send_chat callers and the tcp-receiver: a leaf lock), the
        # reconnect thread, and the times for the GUI bar and the benchmark.
        self._password = ""
        self._media_flags = (False, False)
        self._resume_secret: str | None = None
        self._outbox_lock = threading.Lock()
        self.outbox = Outbox()
        self.reconnecting = False
        self.reconnect_started: float | None = None  # monotonic, while reconnecting
        self.reconnects = 0  # successful reconnections (resumed or rejoined)
        self._reconnect_thread: threading.Thread | None = None
        self._done = threading.Event()  # set once by _shutdown: no more links
        # Resume tries over this client's life (the server refuses an attempt number
        # not above the last it accepted): only the reconnect thread touches it.
        self._attempts = 0
        self._grace_s = cfg.RESUME_GRACE_S  # the server's, from welcome
        self._server_shut_down = False  # a server_shutdown notice came on this link
        # A removal or the meeting's end (issue 14): the text to end with, never reconnecting.
        self._final_reason: str | None = None

    # --- Events ---------------------------------------------------------------------

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback`` on ``event`` (from a network thread: keep it short)."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; known: {sorted(EVENTS)}")
        with self._handlers_lock:
            self._handlers[event].append(callback)

    def off(self, event: str, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` on ``event`` (no error if it was not registered)."""
        with self._handlers_lock:
            try:
                self._handlers[event].remove(callback)
            except (KeyError, ValueError):
                pass

    def _emit(self, event: str, *args: Any) -> None:
        with self._handlers_lock:
            handlers = list(self._handlers[event])
        for fn in handlers:
            try:
                fn(*args)
            except Exception:  # a broken callback must not kill the network thread
                log.exception("callback %r for event %r raised", fn, event)

    # --- Joining --------------------------------------------------------------------

    list_sessions = staticmethod(client_net.list_sessions)  # (host, port, ...) -> sessions

    def connect(
        self,
        username: str,
        session: str,
        password: str = "",
        audio: bool = True,
        video: bool = True,
        timeout: float | None = None,
        ask_to_join: bool = False,
    ) -> dict[str, Any]:
        """Join ``session``: hello/welcome, ``media`` flags, start threads; returns the welcome.

        If a host must let us in, ``lobby_waiting`` fires and the wait lasts up to
        ``MEETING_LOBBY_MAX_WAIT_S`` (then ``JoinError`` declined, timeout, ...).
        ``ask_to_join`` makes a session this hello creates ask every newcomer.

        Raises ``JoinError`` (``code`` from the server, or ``LocalErr.UNREACHABLE``).
        """
        if self.connected or self._tcp is not None or self._closed:
            raise RuntimeError("this client is already connected; make a new one")
        timeout = self.config.connect_timeout_s if timeout is None else timeout
        hello = {
            "type": Msg.HELLO,
            "protocol": cfg.PROTOCOL_VERSION,
            "username": username,
            "session": session,
            "password": password,
        }
        if ask_to_join:
            hello["ask_to_join"] = True
        sock, welcome = self._open_control(hello, timeout)
        try:
            self._adopt_welcome(welcome)
        except BaseException:
            sock.close()
            raise
        # Pinned for this client's life: a reconnect must meet the same certificate.
        self.server_fingerprint = security.peer_fingerprint(sock)
        self._password = password
        self._media_flags = (bool(audio), bool(video))
        try:
            self._start_link(sock)
        except OSError as exc:
            self._shutdown(None)
            raise JoinError(
                LocalErr.UNREACHABLE, f"The connection failed while joining: {exc}"
            ) from None
        log.info("joined %r as %r (id %s)", self.session, self.username, self.my_id)
        return welcome

    def _open_control(
        self, first: dict[str, Any], timeout: float, connect_timeout: float | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Connect over TLS, send ``hello`` or ``resume``, return the stream and the welcome.

        The first connection checks the server against the trust store (and pins it); every
        later one (reconnecting) must present the fingerprint that first connection saw:
        a server with another certificate is refused (``fingerprint_mismatch``).
        """
        connect_timeout = timeout if connect_timeout is None else min(timeout, connect_timeout)
        if self.server_fingerprint is None:
            store, expected, tofu = (
                self.trust_store,
                self.expected_fingerprint,
                self.trust_first_use,
            )
        else:
            store, expected, tofu = None, self.server_fingerprint, False
        sock = open_secure(
            self.host, self.tcp_port, timeout, store, expected, tofu, connect_timeout
        )
        try:
            welcome = self._handshake(sock, first, timeout)
        except BaseException:
            sock.close()
            raise
        return sock, welcome

    def _start_link(self, sock: socket.socket) -> None:
        """Use a new control socket (welcome adopted): UDP, media flags, the link's threads."""
        self._tcp = sock
        stop = threading.Event()
        self._stop = stop
        self._udp_registered.clear()  # the heartbeat sends a sealed `h` at once
        self._last_udp_rx = time.monotonic()
        self._open_udp(sock)
        sock.settimeout(None)  # the receiver blocks; leave() and the watchdog shut it down
        self.connected = True
        audio, video = self._media_flags
        media: dict[str, Any] = {"type": Msg.MEDIA, "audio": audio, "video": video}
        if video and self._video_layers is not None:
            media["layers"] = [dict(layer) for layer in self._video_layers]
        self._send(media)
        if self._subscribed:  # a resumed link asks again for what it watched
            entries = [{"sender": s, "layer": la} for s, la in sorted(self._subscribed.items())]
            self._send({"type": Msg.SUBSCRIBE, "streams": entries})
        self._last_rx = time.monotonic()
        suffix = f"-{self.my_id}"
        for name, target in (
            ("tcp-receiver", self._tcp_loop),
            ("udp-receiver", self._udp_loop),
            ("heartbeat", self._heartbeat_loop),
        ):
            t = threading.Thread(target=target, args=(stop,), name=name + suffix, daemon=True)
            self._threads.append(t)
            t.start()

    def _handshake(self, sock: Any, hello: dict[str, Any], timeout: float) -> dict[str, Any]:
        ping_s = self.config.heartbeat_interval_s
        return client_net.handshake(
            sock, hello, timeout, ping_s, self._emit, self.host, self.tcp_port
        )

    def _adopt_welcome(self, welcome: dict[str, Any]) -> None:
        cipher = _media_cipher(welcome["media"])  # first: a bad welcome changes nothing
        you = welcome["you"]
        self.my_id = you["id"]
        self.username = you["username"]
        self.token = welcome["token"]
        self.session = welcome.get("session")
        self.media_params = welcome["media"]
        self._resume_secret = welcome.get("resume_secret")
        self._grace_s = float(welcome.get("resume_grace_s", self._grace_s))
        self._server_shut_down = False
        # A new media key with every welcome (a resume too): the old cipher is replaced.
        self._cipher = cipher
        with self._state_lock:  # the welcome was validated against utils.SERVER_FIELDS
            self.participants = {p["id"]: p for p in welcome.get("participants", [])}
            self.presenter = welcome.get("presenter")
            self.files = {f["id"]: f for f in welcome.get("files", [])}
            self.meeting = {"hosts": [], "hands": []} | welcome.get("meeting", {})
        history = welcome.get("chat", [])
        last = self.chat.last_seq
        if self.reconnecting and not welcome.get("resumed") and last is not None:
            top = max((m.get("seq", 0) for m in history if isinstance(m, dict)), default=0)
            if top < last:  # a restarted server numbers chat from 1 again
                self.chat.clear()
        for msg in history:  # what was missed is delivered once (ChatLog keeps one per seq)
            if self.chat.add(msg) and self.reconnecting:
                self._confirm_outbox(msg)
                self._emit("chat", msg)

    def _open_udp(self, tcp: socket.socket) -> None:
        local_ip = tcp.getsockname()[0]
        server_ip = tcp.getpeername()[0]
        udp = socket.socket(tcp.family, socket.SOCK_DGRAM)
        try:
            udp.bind((local_ip, 0))
            try:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.UDP_RECV_BUFFER_BYTES)
            except OSError as exc:  # some systems cap the buffer; smaller still works
                log.debug("SO_RCVBUF not set: %s", exc)
            udp.settimeout(cfg.CLIENT_UDP_POLL_S)
        except OSError:
            udp.close()
            raise
        self._udp = udp
        self._server_udp = (server_ip, int(self.media_params["udp_port"]))

    # --- TCP sends ------------------------------------------------------------------

    def _send(self, header: dict[str, Any], payload: bytes = b"", lock_timeout: float = -1) -> bool:
        """Send one frame; False only if ``lock_timeout`` passed while another send blocked."""
        data = utils.encode_frame(header, payload)
        sock = self._tcp
        if sock is None or not self.connected:
            raise NotConnected("not connected to a server")
        if not self._send_lock.acquire(timeout=lock_timeout):
            return False
        try:
            sock.sendall(data)
        finally:
            self._send_lock.release()
        return True

    def send_chat(self, message: str, to: list[int] | None = None) -> str:
        """Send a chat message to everyone, or privately to the ids in ``to``; its ``cid``.

        The server delivers a ``cid`` once (a resent copy gets ``chat_ack``); a
        refusal (e.g. ``rate_limited``) is an ``error`` event with ``re`` chat.
        """
        if not isinstance(message, str) or not 1 <= len(message) <= cfg.MAX_CHAT_CHARS:
            raise ValueError(f"a chat message is 1-{cfg.MAX_CHAT_CHARS} characters")
        if not (self.connected or self.reconnecting):
            raise NotConnected("not connected to a server")
        with self._outbox_lock:
            try:
                header = self.outbox.add(message, [int(i) for i in to] if to is not None else None)
            except OutboxFull as exc:
                raise RequestError(LocalErr.NOT_CONNECTED, f"Chat not sent: {exc}.") from None
        if self.reconnecting:
            return header["cid"]  # sent once the link is back (the outbox keeps it)
        try:
            self._send(header)
        except (OSError, NotConnected) as exc:  # the link broke: sent after the resume
            log.debug("chat waits in the outbox: %s", exc)
        return header["cid"]

    def set_media(
        self, audio: bool, video: bool, layers: list[dict[str, Any]] | None = None
    ) -> None:
        """Tell everyone whether the microphone and camera are on (and the camera's layers).

        The flags are kept and sent again after a resume."""
        self._media_flags = (bool(audio), bool(video))
        if self.reconnecting:
            return
        header: dict[str, Any] = {"type": Msg.MEDIA, "audio": bool(audio), "video": bool(video)}
        layers = self._video_layers if layers is None and video else layers
        if layers is not None:
            header["layers"] = [dict(layer) for layer in layers]
        self._send(header)

    def set_video_layers(self, layers: list[dict[str, Any]] | None) -> None:
        """The camera's layers, sent with every later ``media`` that turns video on."""
        self._video_layers = None if layers is None else [dict(layer) for layer in layers]

    def subscribe(self, streams: dict[int, str | None]) -> bool:
        """Ask for exactly these senders' layers (None: nothing); sends only on a change.

        Returns True if a ``subscribe`` went out. The list replaces the previous one.
        """
        wanted = {int(s): layer for s, layer in streams.items() if layer is not None}
        if wanted == self._subscribed:
            return False
        entries = [{"sender": s, "layer": layer} for s, layer in sorted(wanted.items())]
        self._send({"type": Msg.SUBSCRIBE, "streams": entries})
        self._subscribed = wanted
        return True

    @property
    def subscriptions(self) -> dict[int, str]:
        """What the last ``subscribe`` asked for (sender -> layer)."""
        return dict(self._subscribed or {})

    def participants_snapshot(self) -> dict[int, dict[str, Any]]:
        """A copy of the other participants (id -> participant dict), safe from any thread."""
        with self._state_lock:
            return {pid: dict(p) for pid, p in self.participants.items()}

    def request_keyframe(self, sender: int, layer: str) -> None:
        """Ask ``sender`` (through the server, throttled there) for a keyframe of ``layer``."""
        self._send({"type": Msg.KEYFRAME_REQUEST, "sender": int(sender), "layer": layer})

    def send_report(self, streams: list[dict[str, Any]]) -> None:
        """Loss per received stream since the last report (PROTOCOL.md 10.6)."""
        self._send({"type": Msg.REPORT, "streams": streams})

    def send_audio_report(self, received: int, lost: int) -> None:
        """Frames of the server's audio decoded and lost since the last report (section 4)."""
        audio = {"received": int(received), "lost": int(lost)}
        self._send({"type": Msg.REPORT, "streams": [], "audio": audio})

    def present_start(self) -> None:
        """Ask to present; answered by the ``present_granted`` or ``error`` event."""
        self._send({"type": Msg.PRESENT_START})

    def present_stop(self) -> None:
        """Stop presenting."""
        self._send({"type": Msg.PRESENT_STOP})

    def send_screen_frame(self, vp8: bytes, width: int, height: int, keyframe: bool) -> None:
        """Send one shared-screen VP8 frame (only the presenter may)."""
        with self._seq_lock:
            self._screen_seq += 1
            seq = self._screen_seq
        header = {"type": Msg.SCREEN_FRAME, "seq": seq, "width": int(width), "height": int(height)}
        header["keyframe"] = bool(keyframe)
        self._send(header, bytes(vp8))

    def offer_file(
        self, name: str, size: int, timeout: float = cfg.FILE_OFFER_REPLY_TIMEOUT_S
    ) -> str:
        """Offer a file; returns the ``file_id`` to upload to, or raises ``RequestError``."""
        waiter = _Waiter()
        with self._offer_lock:  # append and send together: answers come in send order
            self._offers.append(waiter)
            try:
                self._send({"type": Msg.FILE_OFFER, "name": name, "size": int(size)})
            except BaseException:
                self._offers.remove(waiter)
                raise
        if not waiter.done.wait(timeout):
            with self._offer_lock:
                # Leave a placeholder in its slot so later answers still match their offers.
                waiter.error = RequestError(Err.TIMEOUT, "The server did not answer the offer.")
            raise RequestError(Err.TIMEOUT, f"No answer to the file offer within {timeout} s.")
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def delete_file(self, file_id: str) -> None:
        """Delete a file this participant shared (answered by ``file_removed`` or ``error``)."""
        self._send({"type": Msg.FILE_DELETE, "file_id": str(file_id)})

    def ping(self) -> None:
        """Send a ping now; the ``pong`` event gives the round-trip time."""
        self._send({"type": Msg.PING, "t": time.monotonic()})

    # --- UDP sends ------------------------------------------------------------------

    def _next_seq(self, kind: int) -> int:
        with self._seq_lock:
            seq = self._seq.get(kind, 0)
            self._seq[kind] = seq + 1
            return seq

    def _send_udp(self, kind: int, seq: int, time_ms: int, payload: bytes = b"") -> int:
        """Seal one datagram (plaintext header + payload) and send it: the one UDP send.

        Returns the bytes sent (0 when not connected or the send failed).
        """
        udp, addr, cipher = self._udp, self._server_udp, self._cipher
        if udp is None or addr is None or cipher is None or self._stop.is_set():
            return 0
        if self.reconnecting:  # no link: a resume brings a new cipher and UDP socket
            return 0
        header = utils.MEDIA_HEADER.pack(
            kind, utils.MEDIA_VERSION, self.my_id or 0, seq % utils.U32, time_ms % utils.U32
        )
        sealed = cipher.seal(header, payload)
        try:
            udp.sendto(sealed, addr)
        except OSError as exc:  # media is lossy: count it, never break the caller's loop
            self.udp_send_errors += 1
            log.debug("UDP send failed: %s", exc)
            return 0
        return len(sealed)

    def send_audio(self, pcm: bytes, time_ms: int | None = None) -> bool:
        """Encode one 20 ms frame (int16 LE mono PCM at 48 kHz) to Opus and send it.

        ``seq`` counts every frame, sent or not: a frame that DTX leaves empty (silence)
        sends nothing (PROTOCOL.md, "Audio"). True when a packet went out. Raises
        ``audio_codec.CodecUnavailable`` when libopus cannot be loaded.
        """
        if self.my_id is None:
            raise NotConnected("not connected to a server")
        a = self.media_params.get("audio", {})
        want = int(a.get("frame_samples", cfg.AUDIO_FRAME_SAMPLES)) * int(
            a.get("sample_width", cfg.AUDIO_SAMPLE_WIDTH_BYTES)
        )
        if len(pcm) != want:
            raise ValueError(f"an audio frame is {want} bytes, got {len(pcm)}")
        t = utils.media_clock_ms() if time_ms is None else time_ms
        with self._audio_lock:
            if self._opus is None:
                import audio_codec  # lazily: a client without audio needs no libopus

                self._opus = audio_codec.OpusEncoder(expected_loss_percent=self.audio_expected_loss)
            packet = self._opus.encode(pcm)
            seq = self._next_seq(utils.KIND_AUDIO)
            item = (seq, t, bytes(utils.AudioPacket(packet))) if packet else None
            sends = self._repeat.send(item) if item else self._repeat.flush()
        for i, (s, ts, payload) in enumerate(sends):  # it, then the last one again
            self._send_udp(utils.KIND_AUDIO, s, ts, payload)
            if i == 0 and item is not None:
                self.audio_bytes_sent += len(payload)
            else:  # a repeat (audio_repeat.py)
                self.audio_repeat_bytes_sent += len(payload)
        if item is None:
            return False
        self.audio_packets_sent += 1
        return True

    @property
    def audio_repeating(self) -> bool:
        """Whether our audio packets are each sent twice now (audio_repeat.py)."""
        with self._audio_lock:
            return self._repeat.on

    def set_audio_gain(self, participant_id: int, percent: int, muted: bool = False) -> None:
        """Hear one participant at ``percent`` (0-200) or not at all: the server mixes it."""
        lo, hi = cfg.AUDIO_GAIN_MIN_PERCENT, cfg.AUDIO_GAIN_MAX_PERCENT
        percent = max(lo, min(hi, int(percent)))
        self._send(
            {"type": Msg.AUDIO_GAIN, "id": int(participant_id), "percent": percent, "muted": muted}
        )

    def send_video_frame(self, layer: str, frame_id: int, keyframe: bool, data: bytes) -> int:
        """Send one encoded VP8 frame of ``layer`` as <= 1200-byte ``v`` datagrams.

        ``seq`` counts datagrams per layer. Returns the number of bytes sent.
        """
        if self.my_id is None:
            raise NotConnected("not connected to a server")
        frags = utils.split_vp8_frame(layer, frame_id, keyframe, bytes(data))
        with self._seq_lock:
            key = (utils.KIND_VIDEO, layer)
            first = self._seq.get(key, 0)
            self._seq[key] = first + len(frags)
        t = utils.media_clock_ms()
        sent = 0
        for i, frag in enumerate(frags):
            sent += self._send_udp(utils.KIND_VIDEO, first + i, t, frag)
        return sent

    def wait_udp_registered(self, timeout: float) -> bool:
        """Block until the server confirmed our UDP address; False on timeout."""
        return self._udp_registered.wait(timeout)

    @property
    def media_on(self) -> tuple[bool, bool]:
        """(audio, video): what we last told the server (sent again after a resume)."""
        return self._media_flags

    @property
    def udp_registered(self) -> bool:
        """True once the server answered our UDP ``h`` register."""
        return self._udp_registered.is_set()

    # --- Threads --------------------------------------------------------------------

    def _tcp_loop(self, stop: threading.Event) -> None:
        sock = self._tcp
        assert sock is not None
        reader = utils.FrameReader(sock)
        reason = "the server closed the connection"
        while not stop.is_set():
            try:
                frame = reader.read()
            except utils.FrameTooLarge as exc:
                reason = f"the server sent a frame that is too large ({exc})"
                break
            except utils.ProtocolError as exc:
                log.warning("malformed frame from the server: %s", exc)
                continue
            except (OSError, utils.ConnectionClosed) as exc:
                if not stop.is_set():
                    reason = f"the connection to the server was lost ({exc})"
                break
            self._last_rx = time.monotonic()
            try:
                self._dispatch(frame)
            except Exception:  # a malformed event must not stop the receiver
                log.exception("could not handle %r", frame.header)
        self._link_lost(stop, reason)

    def _dispatch(self, frame: utils.Frame) -> None:
        """Validate one frame from the server against ``utils.SERVER_FIELDS``, then handle it."""
        try:
            utils.validate_server_message(frame.header)
        except utils.ProtocolError as exc:
            if exc.code == Err.UNKNOWN_TYPE:  # a newer server: ignore what we do not know
                log.debug("ignoring %r from the server", frame.type)
            else:
                log.warning("malformed frame from the server: %s", exc)
            return
        handler = _HANDLERS.get(frame.type)
        if handler is None:  # a known type that has no place on a joined control connection
            log.debug("ignoring %r from the server", frame.type)
            return
        handler(self, frame)

    # --- Handlers of server frames (one per message type; see _HANDLERS) -------------

    def _on_chat(self, frame: utils.Frame) -> None:
        self._confirm_outbox(frame.header)
        if self.chat.add(frame.header):
            self._emit("chat", frame.header)

    def _confirm_outbox(self, header: dict[str, Any]) -> None:
        if "cid" in header:
            with self._outbox_lock:
                self.outbox.confirm(header, self.my_id)

    def _on_chat_ack(self, frame: utils.Frame) -> None:
        """A resent message had been delivered already: it leaves the outbox."""
        self._confirm_outbox(frame.header)
        self._emit("chat_ack", frame.header["cid"], frame.header["seq"])

    def _on_participant(self, frame: utils.Frame) -> None:
        """``participant_joined`` and ``participant_updated``."""
        p = frame.header["participant"]
        if p["id"] != self.my_id:
            with self._state_lock:
                self.participants[p["id"]] = p
        self._emit(frame.type, p)

    def _on_participant_left(self, frame: utils.Frame) -> None:
        h = frame.header
        pid = h["id"]
        with self._state_lock:
            gone = self.participants.pop(pid, None)
            if self.presenter == pid:
                self.presenter = None
        name = h.get("username") or (gone or {}).get("username", "")
        self._emit("participant_left", pid, name)

    def _on_presenter_changed(self, frame: utils.Frame) -> None:
        with self._state_lock:
            self.presenter = frame.header["presenter"]
            for pid, p in self.participants.items():
                p["presenting"] = pid == self.presenter
        self._emit("presenter_changed", self.presenter)

    def _on_present_granted(self, frame: utils.Frame) -> None:
        with self._state_lock:
            self.presenter = self.my_id
        self._emit("present_granted")

    def _on_screen_frame(self, frame: utils.Frame) -> None:
        h = frame.header
        size = (h["width"], h["height"])
        self._emit("screen_frame", h["from"], h["seq"], *size, frame.payload, h["keyframe"])

    def _on_keyframe_request(self, frame: utils.Frame) -> None:
        self._emit("keyframe_request", frame.header["layer"])

    def _on_video_layers(self, frame: utils.Frame) -> None:
        self._emit("video_layers", frame.header["large"])

    def _on_bitrate(self, frame: utils.Frame) -> None:
        self._emit("bitrate", frame.header["layer"], frame.header["bps"])

    def _on_audio_loss(self, frame: utils.Frame) -> None:
        """The server's figure for the loss our audio meets: the encoder's FEC follows it."""
        percent = max(0, min(100, frame.header["percent"]))
        with self._audio_lock:
            self.audio_loss_told = percent
            self._repeat.set_on(audio_repeat.repeating(percent, self._repeat.on))
            self.audio_expected_loss = audio_repeat.encoder_percent(percent / 100, self._repeat.on)
            if self._opus is not None:
                self._opus.set_expected_loss(self.audio_expected_loss)

    def _on_file_added(self, frame: utils.Frame) -> None:
        f = frame.header["file"]
        with self._state_lock:
            self.files[f["id"]] = f
        self._emit("file_added", f)

    def _on_file_removed(self, frame: utils.Frame) -> None:
        file_id = frame.header["file_id"]
        with self._state_lock:
            self.files.pop(file_id, None)
        self._emit("file_removed", file_id)

    def _on_upload_ready(self, frame: utils.Frame) -> None:
        self._answer_offer(result=frame.header["file_id"])

    def _on_pong(self, frame: utils.Frame) -> None:
        t = frame.header.get("t")
        if t is not None:
            self.rtt_s = max(0.0, time.monotonic() - t)
            self._emit("pong", self.rtt_s)

    def _on_error(self, frame: utils.Frame) -> None:
        h = frame.header
        code = h["code"]
        message = h.get("message") or code
        re = h.get("re")
        log.info("server error %r: %r (re %r)", code, message, re)
        if code == Err.SERVER_SHUTDOWN:  # wait for a restart only for the grace period
            self._server_shut_down = True
        if code in FINAL_ERROR_CODES:  # the server closes the link next: do not come back
            self._final_reason = message
        if re == Msg.FILE_OFFER:
            self._answer_offer(error=RequestError(code, message))
        if re == Msg.CHAT and isinstance(h.get("cid"), str):  # refused: it was not sent
            with self._outbox_lock:
                self.outbox.drop(h["cid"])
        self._emit("error", code, message, re)

    def _answer_offer(self, result: Any = None, error: RequestError | None = None) -> None:
        with self._offer_lock:
            if not self._offers:
                log.warning("an offer answer with no offer pending: %r %r", result, error)
                return
            waiter = self._offers.popleft()
            if waiter.error is None:
                waiter.result, waiter.error = result, error
        waiter.done.set()

    def _udp_loop(self, stop: threading.Event) -> None:
        udp, server, cipher = self._udp, self._server_udp, self._cipher
        assert udp is not None and server is not None and cipher is not None
        while not stop.is_set():
            try:
                data, addr = udp.recvfrom(cfg.UDP_MAX_DATAGRAM_BYTES + 1)
            except TimeoutError:
                continue
            except OSError as exc:
                if not stop.is_set():
                    log.warning("UDP receive failed: %s", exc)
                break
            if addr[0] != server[0] or addr[1] != server[1]:
                self.udp_dropped += 1
                continue
            try:  # authenticate before anything reads it
                header, payload = cipher.open(data)
            except media_crypto.DatagramRejected as exc:
                self.udp_dropped += 1
                self.udp_rejected[exc.code] = self.udp_rejected.get(exc.code, 0) + 1
                log.debug("refused datagram: %s", exc.message)
                continue
            self._last_udp_rx = time.monotonic()
            try:
                kind, _ver, sender, seq, time_ms = utils.MEDIA_HEADER.unpack(header)
                dg = utils.Datagram(kind, sender, seq, time_ms, payload)
                self._on_datagram(dg)
            except ValueError as exc:
                self.udp_dropped += 1
                log.debug("dropped datagram: %s", exc)

    def _on_datagram(self, dg: utils.Datagram) -> None:
        if dg.kind == utils.KIND_AUDIO:
            packet = utils.AudioPacket.parse(dg.payload)
            self.audio_frames_received += 1
            self._emit("audio", packet.opus, dg.seq, dg.time_ms)
        elif dg.kind == utils.KIND_VIDEO:
            frag = utils.VideoFragment.parse(dg.payload)
            self.video_datagrams_received += 1
            self._emit("video_fragment", dg.sender, dg.seq, frag)
        elif dg.kind == utils.KIND_LEVELS:
            self.levels = utils.parse_levels(dg.payload)
            self._emit("levels", dict(self.levels))
        elif dg.kind == utils.KIND_REGISTER:
            if not self._udp_registered.is_set():
                self._udp_registered.set()
                log.debug("UDP address registered")
                self._emit("udp_registered")
        elif dg.kind == utils.KIND_KEEPALIVE:
            pass  # the server's answer: the binding lives (_last_udp_rx was updated)
        else:
            self.udp_dropped += 1

    # --- Leaving --------------------------------------------------------------------

    def leave(self) -> None:
        """Say bye, close both sockets and join every thread; safe to call more than once."""
        self._shutdown(None)

    def _shutdown(self, reason: str | None) -> None:
        """Stop everything once; ``reason`` (when the server vanished) fires ``disconnected``."""
        with self._close_lock:
            if self._closed:
                first = False
            else:
                self._closed = first = True
                self._done.set()
                was_connected = self.connected or self.reconnecting
                self.reconnecting = False
                if reason is None and self.connected:
                    try:
                        # Bounded wait: a send stuck on an undrained socket must not hang leave().
                        self._send({"type": Msg.BYE}, lock_timeout=cfg.CLIENT_BYE_TIMEOUT_S)
                    except OSError as exc:
                        log.debug("bye not sent: %s", exc)
                self.connected = False
                self._stop.set()
                if self._tcp is not None:
                    try:
                        self._tcp.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed by the peer
        if first:
            with self._offer_lock:
                pending = list(self._offers)
                self._offers.clear()
            for w in pending:
                if w.error is None:
                    w.error = RequestError(Err.TIMEOUT, "The connection closed before an answer.")
                w.done.set()
        me = threading.current_thread()
        for t in self._threads:
            if t is not me and t.ident is not None:  # not yet started: nothing to wait for
                t.join(cfg.CLIENT_THREAD_JOIN_TIMEOUT_S)
                if t.is_alive():
                    log.warning("thread %s did not stop in time", t.name)
        if first:
            for s in (self._tcp, self._udp):
                if s is not None:
                    s.close()
            if reason is not None and was_connected:
                log.info("disconnected: %s", reason)
                self._emit("disconnected", reason)

    def __enter__(self) -> ConferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()


# One handler per server message on a joined control connection (STYLE.md 18).
_HANDLERS: dict[str, Callable[[ConferenceClient, utils.Frame], None]] = {
    Msg.CHAT: ConferenceClient._on_chat,
    Msg.CHAT_ACK: ConferenceClient._on_chat_ack,
    Msg.PARTICIPANT_JOINED: ConferenceClient._on_participant,
    Msg.PARTICIPANT_UPDATED: ConferenceClient._on_participant,
    Msg.PARTICIPANT_LEFT: ConferenceClient._on_participant_left,
    Msg.PRESENTER_CHANGED: ConferenceClient._on_presenter_changed,
    Msg.PRESENT_GRANTED: ConferenceClient._on_present_granted,
    Msg.SCREEN_FRAME: ConferenceClient._on_screen_frame,
    Msg.KEYFRAME_REQUEST: ConferenceClient._on_keyframe_request,
    Msg.VIDEO_LAYERS: ConferenceClient._on_video_layers,
    Msg.BITRATE: ConferenceClient._on_bitrate,
    Msg.AUDIO_LOSS: ConferenceClient._on_audio_loss,
    Msg.FILE_ADDED: ConferenceClient._on_file_added,
    Msg.FILE_REMOVED: ConferenceClient._on_file_removed,
    Msg.UPLOAD_READY: ConferenceClient._on_upload_ready,
    Msg.PONG: ConferenceClient._on_pong,
    Msg.ERROR: ConferenceClient._on_error,
    # --- meeting controls (issue 14) ---
    Msg.HOSTS_CHANGED: ConferenceClient._on_meeting_state,
    Msg.HANDS_CHANGED: ConferenceClient._on_meeting_state,
    Msg.ACCESS_CHANGED: ConferenceClient._on_meeting_state,
    Msg.SPOTLIGHT_CHANGED: ConferenceClient._on_meeting_state,
    Msg.LOBBY_UPDATED: ConferenceClient._on_meeting_state,
    Msg.BANS_CHANGED: ConferenceClient._on_meeting_state,
    Msg.MUTE_REQUESTED: ConferenceClient._on_mute_requested,
    Msg.VIDEO_STOPPED: ConferenceClient._on_video_stopped,
    Msg.SCREEN_STOPPED: ConferenceClient._on_screen_stopped,
    Msg.REACTION: ConferenceClient._on_reaction,
    Msg.RECORDING_CHANGED: ConferenceClient._on_recording_changed,
}
# Server messages answered elsewhere, never on a joined control connection.
_HANDLED_ELSEWHERE: dict[str, str] = {
    Msg.SESSIONS: "client_net.list_sessions",
    Msg.WELCOME: "client_net.handshake",
    Msg.LOBBY_WAIT: "client_net.handshake",
    Msg.HISTORY: "client_net.handshake (the frames that complete a welcome)",
    Msg.UPLOAD_DONE: "file_sharing_module (upload data connection)",
    Msg.DOWNLOAD_START: "file_sharing_module (download data connection)",
}
utils.check_handlers("client.py", utils.SERVER_FIELDS, _HANDLERS, _HANDLED_ELSEWHERE)


def main(argv: list[str] | None = None) -> int:
    """``client.py`` opens the GUI; ``client.py --headless ...`` runs a headless participant."""
    args = list(sys.argv[1:] if argv is None else argv)
    module_name = "headless" if "--headless" in args else "gui"
    if module_name == "headless":
        args.remove("--headless")
    try:
        module = __import__(module_name)
    except ImportError as exc:
        print(f"FusionMeet: cannot start the {module_name} client: {exc}", file=sys.stderr)
        return 2
    return module.main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
