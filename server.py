"""FusionMeet server: TCP plumbing composing session state (sessions.py) and media (media_relay.py).

``ConferenceServer`` owns the sockets and the TCP threads; ``sessions.SessionTable``
decides joins, leaves, chat and the presenter; ``media_relay.MediaRelay`` runs UDP.
Each control message has one handler (``CONTROL_HANDLERS``, ``FIRST_FRAME_HANDLERS``),
checked at import against ``utils.CLIENT_FIELDS``.
``joining.Joining`` turns a ``hello`` into a participant (the scrypt password check
outside the session lock, then admission under it); ``continuity.Continuity`` keeps a
lost participant's place, serves ``resume`` and saves/restores state across a restart.
Imports only the standard library, numpy, config, utils, security, audio_mixer,
file_store and the modules above.

Every TCP connection is TLS 1.3 (security.server_handshake, run by its ``conn-<n>``
thread, never by ``accept``); a peer that does not start a TLS handshake (a protocol 1
client) gets one plain ``unsupported_protocol`` error frame and is closed. The server's
identity (key and self-signed certificate) is made on first start in its data folder.

Threads: ``accept``; per TCP connection ``conn-<n>`` (TLS, first frame), which becomes
``client-<id>-reader`` (with its ``client-<id>-writer``) or ``file-<n>``; one
``udp`` thread (MediaRelay) that receives datagrams and ticks every session's mixer;
one ``state-saver`` (continuity.py) that writes the state on disk after changes.

Lock order. A lock may be taken while holding locks above it in this list, never
one below it (the comment beside each lock says what it guards and who takes it):

    1. ConferenceServer._lock, "the session lock": SessionTable, every session's mixer
    2. FileStore._lock: the stored files and offers (store.offer, delete, list_files and
       drop_session run under the session lock; uploads and downloads take it alone)
    3. _Connections._lock: the open TCP connections and the threads serving them
    4. _Outbox._cond, one per participant: its queued frames
    5. _Counters._lock: the statistics (count() runs anywhere, under any lock above)
    6. recorder.MeetingRecorder._cond, one per recording: its queue (a leaf: nothing is
       taken while holding it; recording_feed queues a picture under the session lock)

media_relay.MediaRelay (the udp thread) takes the session lock, count(), and under the
session lock the outboxes' _cond (queueing keyframe requests and bitrate hints) and a
recorder's queue (the black picture of recording_feed).

A method whose name ends in ``_locked`` is called with the session lock held (by
the caller) and takes no lock it would deadlock on; nothing else ends in ``_locked``.
Sockets are never written while holding the session lock: frames are queued in the
participant's outbox and its writer sends them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import config
import meeting_handlers
import security
import utils
from config import ServerConfig
from continuity import Continuity
from file_store import FileStore, FileStoreError
from joining import Joining
from limits import ConnectionLimiter, Deadline, DeadlineSocket, Refusal, reservation_ledger
from media_relay import MediaRelay
from sessions import (
    Participant,
    Send,
    SessionTable,
    media_params,
)
from utils import Err, Msg

log = logging.getLogger(__name__)

config_module = config  # ConferenceServer.__init__'s parameter is also called ``config``

# _Outbox.put results
_QUEUED, _CLOSED, _OVERFLOW = "queued", "closed", "overflow"
# _Outbox.put_screen results beside _QUEUED and _CLOSED: the receiver waits for a keyframe
# (the frame was not queued), or its queue was full and has just been dropped.
_SCREEN_WAITING, _SCREEN_RESYNC = "waiting", "resync"


class _Outbox:
    """One client's bounded outgoing queue: control never dropped, screen frames in sync.

    Screen frames are VP8: each depends on the previous one, so none is skipped.
    A receiver is *in sync* from a keyframe on; when its screen queue is full the
    queue is dropped and it waits for the next keyframe (so does a new receiver).
    """

    def __init__(self, max_bytes: int) -> None:
        # Taken by every thread that queues a frame for this client (readers of any member,
        # file-<n> threads announcing file_added, stop()), often under the session lock, and
        # by this client's writer; never by the udp thread. Guards every field below.
        self._cond = threading.Condition(threading.Lock())
        self._control: deque[bytes] = deque()
        self._control_bytes = 0
        self._screen: deque[bytes] = deque()
        self._screen_synced = False
        self._closing = False
        self.max_bytes = max_bytes

    def put(self, data: bytes) -> str:
        """Queue a non-droppable frame: _QUEUED, _CLOSED (ignored) or _OVERFLOW (now closed)."""
        with self._cond:
            if self._closing:
                return _CLOSED
            if self._control_bytes + len(data) > self.max_bytes:
                self._closing = True
                self._control.clear()
                self._screen.clear()
                self._cond.notify()
                return _OVERFLOW
            self._control.append(data)
            self._control_bytes += len(data)
            self._cond.notify()
            return _QUEUED

    def put_screen(self, data: bytes, keyframe: bool) -> str:
        """Queue a screen frame: _QUEUED, _CLOSED, _SCREEN_WAITING or _SCREEN_RESYNC."""
        with self._cond:
            if self._closing:
                return _CLOSED
            if keyframe:
                self._screen.clear()  # a keyframe makes everything before it useless
                self._screen_synced = True
            elif not self._screen_synced:
                return _SCREEN_WAITING
            elif len(self._screen) >= config.SCREEN_QUEUE_FRAMES:
                self._screen.clear()
                self._screen_synced = False
                return _SCREEN_RESYNC
            self._screen.append(data)
            self._cond.notify()
            return _QUEUED

    def clear_screen(self) -> None:
        """Forget queued screen frames; the next one this receiver gets is a keyframe."""
        with self._cond:
            self._screen.clear()
            self._screen_synced = False

    def close(self) -> None:
        """No more frames; the writer sends what is queued and then ends."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def get(self) -> bytes | None:
        """The next frame to send (control first), or None once closed and drained."""
        with self._cond:
            while True:
                if self._control:
                    data = self._control.popleft()
                    self._control_bytes -= len(data)
                    return data
                if self._screen:
                    return self._screen.popleft()
                if self._closing:
                    return None
                self._cond.wait()

    def write_to(self, sock: socket.socket, count: Callable[..., None], who: str) -> None:
        """The writer thread: send queued frames until closed, then shut ``sock`` down."""
        try:
            while (data := self.get()) is not None:
                sock.sendall(data)
                count("tcp_bytes_out", len(data))
                count("frames_out")
        except OSError as exc:
            log.info("%s: send failed: %s", who, exc)
        finally:
            self.close()  # nothing more will be sent
            # Wakes the reader (if still reading) so that the participant is removed.
            _shutdown(sock)


class _CountingSocket:
    """What FrameReader needs of a socket (recv_into), counting the bytes read."""

    def __init__(self, sock: socket.socket, count: Any) -> None:
        self._sock = sock
        self._count = count

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        n = self._sock.recv_into(buf, nbytes)
        self._count("tcp_bytes_in", n)
        return n


class _Counters:
    """The server's named counters, safe to add to from any thread."""

    def __init__(self) -> None:
        # Taken by every thread that counts (add) and by snapshot(); guards _counts.
        # The innermost lock: taken while holding any other, never holding one itself.
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters, with bytes_in/bytes_out = TCP control + UDP totals.

        Keys: frames_in/out, tcp_bytes_in/out (control connections, not file data),
        datagrams_in/out, udp_bytes_in/out, datagrams_dropped (and by reason:
        datagrams_malformed, datagrams_unbound, datagrams_bad_token and, from opening
        sealed datagrams, datagrams_<security.SecErr code>: truncated, too_large,
        bad_version, bad_tag, replayed, too_old, stale_registration, not_register),
        tls_refused (a connection that did not complete TLS), plain_clients (protocol 1
        clients sent unsupported_protocol), bad_frames,
        clients_too_slow, screen_resyncs (a receiver's screen queue dropped),
        screen_frames_waiting (not sent: the receiver waits for a keyframe),
        keyframe_requests_in/out, video_unsubscribed, video_datagrams_forwarded,
        mixer_ticks_skipped.
        """
        with self._lock:
            snap = dict(self._counts)
        snap["bytes_in"] = snap.get("tcp_bytes_in", 0) + snap.get("udp_bytes_in", 0)
        snap["bytes_out"] = snap.get("tcp_bytes_out", 0) + snap.get("udp_bytes_out", 0)
        return snap


class _Connections:
    """The open TCP connections (sockets) and the threads serving them, capped in number."""

    def __init__(self, cfg: ServerConfig) -> None:
        # Taken by the accept thread, connection threads (on exit), joins (a new writer,
        # with the session lock held) and stop(); guards every field below.
        self._lock = threading.Lock()
        self._limiter = ConnectionLimiter(cfg.max_connections, cfg.max_connections_per_address)
        self._addr: dict[socket.socket, str] = {}
        self._socks: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._opened = 0  # connections ever accepted: numbers conn-<n>

    def open(self, sock: socket.socket, address: str) -> int | Refusal:
        """Track ``sock``; its number (for ``conn-<n>``), or why it is refused (the real cap)."""
        with self._lock:
            refused = self._limiter.acquire(address)
            if refused is not None:
                return refused
            self._opened += 1
            self._socks.add(sock)
            self._addr[sock] = address
            return self._opened

    def close(self, sock: socket.socket, thread: threading.Thread) -> None:
        with self._lock:
            if sock in self._addr:
                self._limiter.release(self._addr.pop(sock))
            self._socks.discard(sock)
            self._threads.discard(thread)

    def add_thread(self, t: threading.Thread) -> None:
        with self._lock:
            self._threads.add(t)

    def discard_thread(self, t: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(t)

    def snapshot(self) -> tuple[list[socket.socket], list[threading.Thread]]:
        with self._lock:
            return list(self._socks), list(self._threads)

    def __len__(self) -> int:
        with self._lock:
            return len(self._socks)


class ConferenceServer:
    """The FusionMeet server: one TCP listener, one UDP socket, sessions in memory."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.host = self.config.host
        self.tcp_port = 0
        self.udp_port = 0
        self._stats = _Counters()
        # The session lock. Taken by conn/reader threads (join, control messages, leave),
        # file-<n> threads (token lookup, file_added), the udp thread (binding, mixing,
        # forwarding targets), describe/list_sessions callers and stop(). Guards
        # self.sessions (every Session, Participant and mixer) and the file store's
        # per-session order of offers and announcements.
        self._lock = threading.Lock()
        self.sessions = SessionTable(self.config)
        self._conns = _Connections(self.config)
        self._stopping = threading.Event()
        self._tcp: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._relay: MediaRelay | None = None
        self.store: FileStore | None = None
        self.identity: security.Identity | None = None  # loaded (or made) by start()
        self._tls: Any = None  # the ssl.SSLContext every connection's handshake uses
        self._welcome_media = media_params(self.config, 0)  # udp_port: set by start()
        self.continuity = Continuity(self, self._new_outbox)
        self.joining = Joining(self, self._new_outbox)  # hello: password check, admission

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Bind both sockets, open the file store and start the accept and udp threads."""
        cfg = self.config
        # IdentityError (an OSError-free SecurityError) if the folder is unusable.
        self.identity = security.load_or_create_identity(cfg.identity_dir)
        self._tls = security.server_context(self.identity)
        tcp, udp = _bind(cfg)
        saved, keep = Continuity.load(cfg)
        try:
            self.store = FileStore(
                Path(cfg.storage_dir),
                cfg.max_file_bytes,
                cfg.file_idle_timeout_s,
                cfg.file_offer_start_timeout_s,
                ledger=reservation_ledger(cfg),
                keep_ids=keep,
            )
            self.continuity.restore(saved)
        except BaseException:
            tcp.close()
            udp.close()
            raise
        self._tcp, self._udp = tcp, udp
        self.host = tcp.getsockname()[0]
        self.tcp_port = tcp.getsockname()[1]
        self.udp_port = udp.getsockname()[1]
        self._welcome_media["udp_port"] = self.udp_port
        self._relay = MediaRelay(
            udp, self.sessions, self._lock, self.count, cfg, self._stopping, self._deliver_locked
        )
        self._accept_thread = threading.Thread(target=self._accept_loop, name="accept")
        self._accept_thread.start()
        self._relay.start()
        addrs = (self.host, self.tcp_port, self.host, self.udp_port)
        log.info("listening on tcp %s:%d, udp %s:%d", *addrs)

    def stop(self) -> None:
        """Tell every client (server_shutdown), save the state, close, join every thread."""
        if self._stopping.is_set() or self._tcp is None:
            self._stopping.set()
            return
        self._stopping.set()
        join_s = config_module.SERVER_THREAD_JOIN_TIMEOUT_S
        if self._accept_thread is not None:
            self._accept_thread.join(join_s)
        notice = utils.encode_frame(utils.error_header(Err.SERVER_SHUTDOWN))
        with self._lock:
            participants = self.sessions.participants()
            recorders = [s.recorder for s in self.sessions.sessions.values() if s.recorder]
        for rec in recorders:
            rec.stop()  # finalises the file (meeting_handlers offers nothing: store closing)
        for p in participants:
            p.outbox.put(notice)
            p.outbox.close()
        if self.store is not None:
            self.continuity.save()
            self.store.close(keep=True)  # aborts uploads and downloads in progress
        deadline = time.monotonic() + config_module.SERVER_STOP_FLUSH_S
        for p in participants:
            if p.writer is not None:
                p.writer.join(max(0.0, deadline - time.monotonic()))
        socks, threads = self._conns.snapshot()
        for s in socks:  # wakes readers, queries and stuck writers
            _shutdown(s)
        deadline = time.monotonic() + join_s  # one bound for all, not one per thread
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._relay is not None:
            self._relay.join(max(0.0, deadline - time.monotonic()))
        self._tcp.close()
        if self._udp is not None:
            self._udp.close()
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.warning("threads still running after stop: %s", alive)
        log.info("stopped")

    @property
    def fingerprint(self) -> str:
        """The full SHA-256 fingerprint (64 hex) of the certificate; "" before start()."""
        return self.identity.fingerprint if self.identity is not None else ""

    def _new_outbox(self) -> _Outbox:
        return _Outbox(self.config.client_queue_max_bytes)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (any thread)."""
        self._stats.add(name, n)

    def snapshot_stats(self) -> dict[str, int]:
        """A copy of the counters (keys: ``_Counters.snapshot``)."""
        return self._stats.snapshot()

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every live session: name, participant count, locked."""
        with self._lock:
            return self.sessions.list()

    # --- TCP: accept and first frame --------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._tcp is not None
        while not self._stopping.is_set():
            self.continuity.tick()  # the accept thread also ends grace periods
            try:
                sock, addr = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                log.warning("accept failed: %s", exc)
                time.sleep(config_module.SERVER_ACCEPT_POLL_S)  # e.g. out of descriptors
                continue
            accepted_at = time.monotonic()
            sock.settimeout(None)
            n = self._conns.open(sock, addr[0])
            if isinstance(n, Refusal):
                log.warning("refusing %r: %s (%d open)", addr, n.code, len(self._conns))
                self.count("connections_refused")
                _send_quietly(sock, n.header())
                sock.close()
                continue
            t = threading.Thread(
                target=self._serve_connection,
                args=(sock, addr, n, accepted_at),
                name=f"conn-{n}",
            )
            self._conns.add_thread(t)
            t.start()

    def _serve_connection(self, sock: socket.socket, addr: Any, n: int, accepted: float) -> None:
        tls: Any = None
        try:
            tls = _tls_handshake(self, sock, addr, n)
            if tls is not None:
                self._first_frame(tls, addr, n, accepted)
        except Exception:
            log.exception("connection %d from %r failed", n, addr)
        finally:
            _shutdown(sock)
            if tls is not None:
                tls.close()
            sock.close()
            self._conns.close(sock, threading.current_thread())

    def _reader(self, sock: Any) -> utils.FrameReader:
        counted: Any = _CountingSocket(sock, self.count)
        return utils.FrameReader(
            counted, self.config.max_header_bytes, self.config.max_payload_bytes
        )

    def _first_frame(self, sock: socket.socket, addr: Any, n: int, accepted: float) -> None:
        """Read whole first frames (each within its deadline, PROTOCOL.md 11) until one
        decides the connection's role (FIRST_FRAME_HANDLERS)."""
        cfg = self.config
        timed = DeadlineSocket(sock, Deadline(0.0), time.monotonic)
        reader = self._reader(timed)
        start = accepted  # the first frame's 10 s run from accept, later ones from now
        while not self._stopping.is_set():
            timed.deadline = Deadline(
                min(start + cfg.first_frame_timeout_s, accepted + cfg.unjoined_connection_max_s)
            )
            try:
                frame = reader.read()
            except TimeoutError:
                log.info("connection %d from %r: no whole frame in time", n, addr)
                self.count("first_frame_timeouts")
                with contextlib.suppress(OSError):  # best effort: the peer may not read
                    sock.settimeout(config_module.SERVER_ACCEPT_POLL_S)
                    sock.sendall(utils.encode_frame(utils.error_header(Err.TIMEOUT)))
                return
            except utils.ProtocolError as exc:
                log.info("connection %d from %r: bad first frame: %s", n, addr, exc)
                self._send_direct(sock, utils.error_header(exc.code, str(exc)))
                return
            except (OSError, utils.ConnectionClosed):
                return
            self.count("frames_in")
            kind = frame.type
            handler = FIRST_FRAME_HANDLERS.get(kind)
            try:
                utils.validate_client_message(frame.header)
            except utils.ProtocolError as exc:
                code = exc.code if handler is not None else Err.NOT_JOINED
                self._send_direct(sock, utils.error_header(code, str(exc), re=kind))
                return
            if handler is None:
                self._send_direct(sock, utils.error_header(Err.NOT_JOINED, re=kind))
                return
            if not handler(self, sock, frame, addr, n):
                return
            start = time.monotonic()

    def _send_direct(self, sock: socket.socket, header: dict[str, Any]) -> None:
        """Send one frame on a connection that has no writer thread (yet)."""
        data = utils.encode_frame(header)
        try:
            sock.sendall(data)
            self.count("tcp_bytes_out", len(data))
            self.count("frames_out")
        except OSError as exc:
            log.info("could not send %s: %s", header.get("type"), exc)

    # --- first-frame handlers: True keeps reading first frames ----------------------------

    def _on_list_sessions(self, sock: socket.socket, frame: utils.Frame, addr: Any, n: int) -> bool:
        self._send_direct(sock, {"type": Msg.SESSIONS, "sessions": self.list_sessions()})
        return True  # then hello, another list_sessions, or close

    def _on_hello(self, sock: socket.socket, frame: utils.Frame, addr: Any, n: int) -> bool:
        p = self.joining.join(sock, frame.header, addr)
        if p is not None:
            threading.current_thread().name = f"client-{p.id}-reader"
            self._serve_participant(p)
        return False

    # --- per-participant reader and writer -------------------------------------------

    def _serve_participant(self, p: Participant) -> None:
        sock, outbox, writer, connection = p.sock, p.outbox, p.writer, p.connection
        sock.settimeout(self.config.heartbeat_timeout_s)
        reader = self._reader(sock)
        try:
            # No _stopping check here: stop() queues server_shutdown, and the writer then
            # shuts the socket down, which ends this loop. A bye ends it by leaving.
            while not p.gone and p.connection == connection:
                try:
                    frame = reader.read()
                except utils.FrameTooLarge as exc:
                    log.info("participant %d: %s", p.id, exc)
                    self._send(p, utils.error_header(Err.FRAME_TOO_LARGE, str(exc)))
                    self._leave(p)  # a broken or hostile client: no place kept
                    break
                except utils.ProtocolError as exc:
                    self.count("bad_frames")
                    self._send(p, utils.error_header(exc.code, str(exc)))
                    continue
                except TimeoutError:
                    log.info("participant %d silent for %.1f s", p.id, sock.gettimeout() or 0)
                    self._send(p, utils.error_header(Err.TIMEOUT))
                    break
                except (OSError, utils.ConnectionClosed):
                    break
                self.count("frames_in")
                try:
                    utils.validate_client_message(frame.header)
                    handler = CONTROL_HANDLERS.get(frame.type)
                    if handler is None:  # list_sessions, hello, upload, download
                        raise utils.ProtocolError(f"{frame.type} is not allowed after joining")
                    handler(self, p, frame)
                except utils.ProtocolError as exc:
                    self.count("bad_frames")
                    log.info("participant %d: %s", p.id, exc)
                    self._send(p, utils.error_header(exc.code, str(exc), re=frame.type))
        finally:
            self.continuity.lost(p, connection)
            outbox.close()
            if writer is not None:
                writer.join(config_module.SERVER_THREAD_JOIN_TIMEOUT_S)
                self._conns.discard_thread(writer)

    def _send(self, p: Participant, header: dict[str, Any]) -> None:
        """Queue a frame for one participant (with or without the session lock held)."""
        self._put(p, utils.encode_frame(header))

    def _put(self, p: Participant, data: bytes) -> None:
        if p.outbox.put(data) == _OVERFLOW:
            # The queue was cleared and closed; the client is not reading, so the error
            # frame would only wait behind a full socket buffer: cut the connection now.
            log.warning("participant %d (%r) could not keep up: disconnected", p.id, p.username)
            self.count("clients_too_slow")
            _shutdown(p.sock)

    def _deliver_locked(self, sends: list[Send]) -> None:
        """Queue what session state decided, each frame encoded once, in order."""
        self.continuity.changed_locked(sends)  # the state on disk follows (state-saver)
        for recipients, header in sends:
            data = utils.encode_frame(header)
            for m in recipients:
                self._put(m, data)

    def _leave(self, p: Participant) -> None:
        """Remove a participant (once): presenter released, others told, session ended."""
        with self._lock:
            if p.gone:
                return
            sends, ended = self.sessions.leave(p)
            self._deliver_locked(sends)
            pending = self.sessions.take_pending()
            switches = meeting_handlers.run_events_locked(self, p.session, pending)
            if self.store is not None:
                self.store.drop_offers(p.session.name, p.id)
                if ended and not self._stopping.is_set():
                    self.store.drop_session(p.session.name)
        for switch in switches:  # the last one left: the recorder stops
            meeting_handlers.switch_recording(self, p.session, switch.on, None)
        log.info("%r (id %d) left %r", p.username, p.id, p.session.name)

    # --- control handlers (one per message type; see CONTROL_HANDLERS) -------------------

    def _on_chat(self, p: Participant, frame: utils.Frame) -> None:
        h = frame.header
        sess = p.session
        with self._lock:  # seq assigned and queued under one hold: one order for everyone
            before = sess.chat_seq
            sends = self.sessions.chat(
                p, h["message"], h.get("to"), time.time(), h.get("cid"), time.monotonic()
            )
            self._deliver_locked(sends)
            rec, new = sess.recorder, sess.chat_seq != before
            said = sess.history[-1] if rec is not None and new and h.get("to") is None else None
        if said is not None:  # a recording keeps the public chat (its .chat.txt side file)
            rec.add_chat(said["username"], said["message"])

    def _on_media(self, p: Participant, frame: utils.Frame) -> None:
        h = frame.header
        with self._lock:
            sends = self.sessions.set_media(p, h["audio"], h["video"], h.get("layers"))
            self._deliver_locked(sends)

    def _on_present_start(self, p: Participant, frame: utils.Frame) -> None:
        with self._lock:
            self._deliver_locked(self.sessions.present_start(p))

    def _on_present_stop(self, p: Participant, frame: utils.Frame) -> None:
        with self._lock:
            self._deliver_locked(self.sessions.present_stop(p))

    def _on_ping(self, p: Participant, frame: utils.Frame) -> None:
        pong: dict[str, Any] = {"type": Msg.PONG}
        if "t" in frame.header:
            pong["t"] = frame.header["t"]
        try:
            data = utils.encode_frame(pong)
        except (ValueError, RecursionError):  # a hostile t, e.g. nested very deeply
            raise utils.ProtocolError("ping: 't' cannot be echoed") from None
        self._put(p, data)

    def _on_audio_gain(self, p: Participant, frame: utils.Frame) -> None:
        h = frame.header
        with self._lock:
            sends = self.sessions.set_audio_gain(p, h["id"], h["percent"], h.get("muted", False))
            self._deliver_locked(sends)

    def _on_bye(self, p: Participant, frame: utils.Frame) -> None:
        log.info("participant %d said bye", p.id)
        self._leave(p)  # p.gone ends the reader loop


# --- control handlers outside the class (video routing, screen frames, file offers) ---


def _on_subscribe(server: ConferenceServer, p: Participant, frame: utils.Frame) -> None:
    with server._lock:
        server._deliver_locked(
            server.sessions.subscribe(p, frame.header["streams"], time.monotonic())
        )


def _on_keyframe_request(server: ConferenceServer, p: Participant, frame: utils.Frame) -> None:
    h = frame.header
    with server._lock:
        sends = server.sessions.keyframe_request(p, h["sender"], h["layer"], time.monotonic())
        server._deliver_locked(sends)
    server.count("keyframe_requests_in")
    if sends:
        server.count("keyframe_requests_out")


def _on_report(server: ConferenceServer, p: Participant, frame: utils.Frame) -> None:
    h = frame.header
    with server._lock:
        sends = server.sessions.report(p, h["streams"], time.monotonic(), h.get("audio"))
        server._deliver_locked(sends)


def _on_screen_frame(server: ConferenceServer, p: Participant, frame: utils.Frame) -> None:
    h = frame.header
    keyframe = check_screen_frame(h, frame.payload)
    out = {"type": Msg.SCREEN_FRAME, "from": p.id, "seq": h["seq"]}
    out |= {"width": h["width"], "height": h["height"], "keyframe": keyframe}  # exactly
    data = utils.encode_frame(out, frame.payload)
    with server._lock:
        viewers = server.sessions.screen_viewers(p)
        if viewers is None:
            server._send(p, utils.error_header(Err.NOT_PRESENTER, re=Msg.SCREEN_FRAME))
            return
        results = [m.outbox.put_screen(data, keyframe) for m in viewers]
        waiting = results.count(_SCREEN_WAITING) + results.count(_SCREEN_RESYNC)
        rec = p.session.recorder  # the recorder may need a keyframe too
        if waiting or (rec is not None and rec.wants_keyframe and not keyframe):
            server._deliver_locked(server.sessions.screen_keyframe(p, time.monotonic()))
    if rec is not None:  # the recording shows the shared screen (VP8, decoded there)
        rec.add_video(frame.payload, keyframe=keyframe)
    if _SCREEN_RESYNC in results:
        server.count("screen_resyncs", results.count(_SCREEN_RESYNC))
    if _SCREEN_WAITING in results:
        server.count("screen_frames_waiting", results.count(_SCREEN_WAITING))


def _on_file_offer(server: ConferenceServer, p: Participant, frame: utils.Frame) -> None:
    assert server.store is not None
    h = frame.header
    with server._lock:
        try:
            file_id = server.store.offer(
                p.session.name, p.id, p.username, h["name"], h["size"], p.address
            )
        except FileStoreError as exc:
            error = utils.error_header(exc.code, exc.message, re=Msg.FILE_OFFER, **exc.extra)
            server._send(p, error)
            return
        server._send(p, {"type": Msg.UPLOAD_READY, "file_id": file_id})


def _on_file_delete(server: ConferenceServer, p: Participant, frame: utils.Frame) -> None:
    assert server.store is not None
    file_id = frame.header["file_id"]
    with server._lock:
        try:
            if not server.store.delete(file_id, p.session.name, p.id):
                return  # an upload cancelled by its owner: nobody else knew of it
        except FileStoreError as exc:
            server._send(p, utils.error_header(exc.code, exc.message, re=Msg.FILE_DELETE))
            return
        removed = {"type": Msg.FILE_REMOVED, "file_id": file_id}
        server._deliver_locked([(p.session.everyone(), removed)])


# --- outside the class: a connection's TLS handshake and file data connections ---


def _tls_handshake(server: ConferenceServer, sock: socket.socket, addr: Any, n: int) -> Any:
    """The TLS stream of a new connection, or None (refused, counted, ``sock`` closed)."""
    plain = utils.encode_frame(
        utils.error_header(
            Err.UNSUPPORTED_PROTOCOL, supported=list(config_module.SUPPORTED_PROTOCOLS)
        )
    )
    timeout = min(server.config.first_frame_timeout_s, config_module.TLS_HANDSHAKE_TIMEOUT_S)
    try:
        return security.server_handshake(sock, server._tls, timeout, plain_reply=plain)
    except security.HandshakeError as exc:
        if exc.code == security.SecErr.NOT_TLS:
            server.count("plain_clients")
        server.count("tls_refused")
        log.info("connection %d from %r: no TLS: %s", n, addr, exc.message)
        return None


def _on_file_connection(
    server: ConferenceServer, sock: socket.socket, frame: utils.Frame, addr: Any, n: int
) -> bool:
    """``upload`` and ``download``: a file data connection (PROTOCOL.md section 6).

    A first-frame handler of ``server`` (module level: it uses only the server's lock,
    sessions, store and ``_send_direct``/``_deliver_locked``)."""
    threading.current_thread().name = f"file-{n}"
    assert server.store is not None
    h = frame.header
    kind = h["type"]
    with server._lock:
        p = server.sessions.with_token(h["token"])
        session_name = p.session.name if p is not None else ""
    if p is None:
        log.info("%s with a bad token", kind)
        server._send_direct(sock, utils.error_header(Err.BAD_TOKEN, re=kind))
        return False
    sock.settimeout(server.config.file_idle_timeout_s)
    try:
        if kind == Msg.UPLOAD:
            info = server.store.receive_upload(sock, h["file_id"], p.id, h.get("resume", False))
            server._send_direct(
                sock,
                {"type": Msg.UPLOAD_DONE, "file_id": info["id"], "sha256": info["sha256"]},
            )
            with server._lock:
                added = {"type": Msg.FILE_ADDED, "file": info}
                server._deliver_locked([(p.session.everyone(), added)])  # none if it ended
        else:
            offset = h.get("offset", 0)
            server.store.send_download(sock, h["file_id"], session_name, offset)
    except FileStoreError as exc:
        log.info("%s of %r by %d refused: %s", kind, h["file_id"], p.id, exc.code)
        server._send_direct(sock, utils.error_header(exc.code, exc.message, re=kind, **exc.extra))
    return False


def check_screen_frame(h: dict[str, Any], payload: bytes) -> bool:
    """The keyframe flag of a valid v2 ``screen_frame``; ``ProtocolError`` otherwise.

    The payload must be one VP8 frame whose keyframe bit matches ``keyframe`` and,
    for a keyframe, whose size matches ``width`` x ``height`` (no codec needed).
    """
    try:
        info = utils.parse_vp8_frame(payload)
    except ValueError as exc:
        raise utils.ProtocolError(f"screen_frame: not a VP8 frame: {exc}") from None
    if info.keyframe != h["keyframe"]:
        raise utils.ProtocolError("screen_frame: 'keyframe' does not match the VP8 frame")
    if info.keyframe and (info.width, info.height) != (h["width"], h["height"]):
        raise utils.ProtocolError(
            f"screen_frame: a {info.width}x{info.height} keyframe "
            f"said {h['width']}x{h['height']}"
        )
    if not (0 < h["width"] <= config_module.SCREEN_VP8_MAX_WIDTH_PX) or not (
        0 < h["height"] <= config_module.SCREEN_VP8_MAX_HEIGHT_PX
    ):
        raise utils.ProtocolError(
            f"screen_frame: {h['width']}x{h['height']} is over "
            f"{config_module.SCREEN_VP8_MAX_WIDTH_PX}x{config_module.SCREEN_VP8_MAX_HEIGHT_PX}"
        )
    return info.keyframe


FirstFrameHandler = Callable[[ConferenceServer, socket.socket, utils.Frame, Any, int], bool]
ControlHandler = Callable[[ConferenceServer, Participant, utils.Frame], None]

# The first frame on a connection decides its role (PROTOCOL.md section 2).
FIRST_FRAME_HANDLERS: dict[str, FirstFrameHandler] = {
    Msg.LIST_SESSIONS: ConferenceServer._on_list_sessions,
    Msg.HELLO: ConferenceServer._on_hello,
    Msg.RESUME: Continuity.on_resume,
    Msg.UPLOAD: _on_file_connection,
    Msg.DOWNLOAD: _on_file_connection,
}
# One handler per control message of a joined participant (STYLE.md 18).
CONTROL_HANDLERS: dict[str, ControlHandler] = {
    Msg.CHAT: ConferenceServer._on_chat,
    Msg.MEDIA: ConferenceServer._on_media,
    Msg.PRESENT_START: ConferenceServer._on_present_start,
    Msg.PRESENT_STOP: ConferenceServer._on_present_stop,
    Msg.SCREEN_FRAME: _on_screen_frame,
    Msg.FILE_OFFER: _on_file_offer,
    Msg.FILE_DELETE: _on_file_delete,
    Msg.SUBSCRIBE: _on_subscribe,
    Msg.KEYFRAME_REQUEST: _on_keyframe_request,
    Msg.REPORT: _on_report,
    Msg.PING: ConferenceServer._on_ping,
    Msg.AUDIO_GAIN: ConferenceServer._on_audio_gain,
    Msg.BYE: ConferenceServer._on_bye,
    **meeting_handlers.CONTROL_HANDLERS,  # meeting controls (issue 14)
}
utils.check_handlers("server.py", utils.CLIENT_FIELDS, FIRST_FRAME_HANDLERS, CONTROL_HANDLERS)


def _bind(cfg: ServerConfig) -> tuple[socket.socket, socket.socket]:
    """The listening TCP socket and the UDP socket, bound as ``cfg`` says."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if sys.platform != "win32":
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((cfg.host, cfg.tcp_port))
        tcp.listen(config_module.LISTEN_BACKLOG)
        tcp.settimeout(config_module.SERVER_ACCEPT_POLL_S)
        try:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config_module.UDP_RECV_BUFFER_BYTES)
        except OSError:
            log.info("could not enlarge the UDP receive buffer")
        udp.bind((cfg.host, cfg.udp_port))
    except BaseException:
        tcp.close()
        udp.close()
        raise
    return tcp, udp


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _send_quietly(sock: socket.socket, header: dict[str, Any]) -> None:
    """Best effort, never blocking (used by the accept thread)."""
    try:
        sock.setblocking(False)
        sock.send(utils.encode_frame(header))
    except OSError:
        pass


# --- command line (server_cli.py) ----------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM (server_cli.main); returns the exit status."""
    import server_cli  # the command line, banner and status line

    return server_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
