"""FusionMeet server: sessions, chat, presenter, file glue over TCP; N-1 audio and video over UDP.

Threads: ``accept``; per TCP connection ``conn-<n>`` (first frame), which becomes
``client-<id>-reader`` (with its ``client-<id>-writer``) or ``file-<n>``; one
``udp`` thread that receives datagrams and ticks every session's mixer.
Imports only the standard library, numpy, config, utils, audio_mixer, file_store.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import secrets
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import config
import utils
from audio_mixer import AudioMixer
from config import ServerConfig
from file_store import FileStore, FileStoreError
from utils import Err, Msg

log = logging.getLogger(__name__)

config_module = config  # ConferenceServer.__init__'s parameter is also called ``config``

_CHAT_ALLOWED_CONTROLS = frozenset("\n\t\r")
_FIRST_FRAME_TYPES = frozenset({Msg.LIST_SESSIONS, Msg.HELLO, Msg.UPLOAD, Msg.DOWNLOAD})
# _Outbox.put results
_QUEUED, _CLOSED, _OVERFLOW = "queued", "closed", "overflow"


class _Outbox:
    """One client's bounded outgoing queue: control never dropped, screen frames latest-wins."""

    def __init__(self, max_bytes: int) -> None:
        # Taken by every thread that sends to this client (readers of any participant, the
        # udp thread never) and by this client's writer. Guards every field below.
        self._cond = threading.Condition(threading.Lock())
        self._control: deque[bytes] = deque()
        self._control_bytes = 0
        self._screen: deque[bytes] = deque(maxlen=config.SCREEN_QUEUE_FRAMES)
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

    def put_screen(self, data: bytes) -> bool:
        """Queue a screen frame, replacing an older one still waiting; True if one was."""
        with self._cond:
            if self._closing:
                return False
            replaced = len(self._screen) == self._screen.maxlen
            self._screen.append(data)
            self._cond.notify()
            return replaced

    def clear_screen(self) -> None:
        with self._cond:
            self._screen.clear()

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


class _CountingSocket:
    """What FrameReader needs of a socket (recv_into), counting the bytes read."""

    def __init__(self, sock: socket.socket, count: Any) -> None:
        self._sock = sock
        self._count = count

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        n = self._sock.recv_into(buf, nbytes)
        self._count("tcp_bytes_in", n)
        return n


@dataclass(eq=False)
class _Participant:
    """A joined participant: identity, media flags, control socket, UDP address."""

    id: int
    username: str
    session: _Session
    token: str
    sock: socket.socket
    outbox: _Outbox
    audio: bool = False
    video: bool = False
    udp_addr: tuple[str, int] | None = None
    mix_seq: int = 0
    levels_seq: int = 0
    gone: bool = False
    writer: threading.Thread | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "audio": self.audio,
            "video": self.video,
            "presenting": self.session.presenter == self.id,
        }


@dataclass(eq=False)
class _Session:
    """A live session: its members, password, chat history, presenter and mixer."""

    name: str
    password: str
    mixer: AudioMixer
    members: dict[int, _Participant] = field(default_factory=dict)
    chat_seq: int = 0
    history: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=config.CHAT_HISTORY_MESSAGES)
    )
    presenter: int | None = None
    levels_were_nonzero: bool = False

    @property
    def locked(self) -> bool:
        return bool(self.password)


class _Drop(Exception):
    """End this connection (after an optional error frame already queued or sent)."""


class ConferenceServer:
    """The FusionMeet server: one TCP listener, one UDP socket, sessions in memory."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.host = self.config.host
        self.tcp_port = 0
        self.udp_port = 0
        self._stats: Counter[str] = Counter()
        # Taken by any thread that counts something; guards self._stats.
        self._stats_lock = threading.Lock()
        # The server lock. Taken by conn/reader threads (join, control messages, leave), the
        # file-<n> threads (token lookup, file_added), the udp thread (binding, mixing,
        # forwarding targets) and stop(). Guards _sessions, _by_token, _by_addr, _next_id and
        # every _Session/_Participant (and each session's mixer). Outbox locks and the file
        # store's lock may be taken while holding it, never the other way round.
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}  # casefolded name -> session
        self._by_token: dict[str, _Participant] = {}
        self._by_addr: dict[tuple[str, int], _Participant] = {}
        self._next_id = 1
        # Taken by the accept thread, connection threads (on exit) and stop(); guards
        # _threads, _conn_socks and _conn_count.
        self._conn_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._conn_socks: set[socket.socket] = set()
        self._conn_count = 0
        self._stopping = threading.Event()
        self._tcp: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._udp_thread: threading.Thread | None = None
        self.store: FileStore | None = None
        cfg = self.config
        self._frame_s = cfg.audio_frame_samples / cfg.audio_rate_hz
        self._welcome_media: dict[str, Any] = {
            "udp_port": 0,  # the bound port, set by start()
            "audio": {
                "rate": cfg.audio_rate_hz,
                "channels": config_module.AUDIO_CHANNELS,
                "sample_width": config_module.AUDIO_SAMPLE_WIDTH_BYTES,
                "frame_samples": cfg.audio_frame_samples,
            },
            "video": {
                "width": cfg.video_width_px,
                "height": cfg.video_height_px,
                "fps": cfg.video_fps,
                "max_datagram": cfg.max_datagram_bytes,
            },
        }

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Bind both sockets, open the file store and start the accept and udp threads."""
        cfg = self.config
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if sys.platform != "win32":
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((cfg.host, cfg.tcp_port))
            tcp.listen(config_module.LISTEN_BACKLOG)
            tcp.settimeout(config_module.SERVER_ACCEPT_POLL_S)
            try:
                udp.setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF, config_module.UDP_RECV_BUFFER_BYTES
                )
            except OSError:
                log.info("could not enlarge the UDP receive buffer")
            udp.bind((cfg.host, cfg.udp_port))
            self.store = FileStore(
                Path(cfg.storage_dir), cfg.max_file_bytes, cfg.file_idle_timeout_s
            )
        except BaseException:
            tcp.close()
            udp.close()
            raise
        self._tcp, self._udp = tcp, udp
        self.host = tcp.getsockname()[0]
        self.tcp_port = tcp.getsockname()[1]
        self.udp_port = udp.getsockname()[1]
        self._welcome_media["udp_port"] = self.udp_port
        self._accept_thread = threading.Thread(target=self._accept_loop, name="accept")
        self._udp_thread = threading.Thread(target=self._udp_loop, name="udp")
        self._accept_thread.start()
        self._udp_thread.start()
        log.info("listening on tcp %s:%d, udp %s:%d", self.host, self.tcp_port, *self._udp_addr())

    def _udp_addr(self) -> tuple[str, int]:
        return (self.host, self.udp_port)

    def stop(self) -> None:
        """Tell every client (server_shutdown), close everything, join every thread."""
        if self._stopping.is_set() or self._tcp is None:
            self._stopping.set()
            return
        self._stopping.set()
        join_s = config_module.SERVER_THREAD_JOIN_TIMEOUT_S
        if self._accept_thread is not None:
            self._accept_thread.join(join_s)
        notice = utils.encode_frame(utils.error_header(Err.SERVER_SHUTDOWN))
        with self._lock:
            participants = [p for s in self._sessions.values() for p in s.members.values()]
        for p in participants:
            p.outbox.put(notice)
            p.outbox.close()
        if self.store is not None:
            self.store.close()  # aborts uploads and downloads in progress
        deadline = time.monotonic() + config_module.SERVER_STOP_FLUSH_S
        for p in participants:
            if p.writer is not None:
                p.writer.join(max(0.0, deadline - time.monotonic()))
        with self._conn_lock:
            socks = list(self._conn_socks)
            threads = list(self._threads)
        for s in socks:  # wakes readers, queries and stuck writers
            _shutdown(s)
        deadline = time.monotonic() + join_s  # one bound for all, not one per thread
        for t in [*threads, self._udp_thread]:
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        self._tcp.close()
        if self._udp is not None:
            self._udp.close()
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.warning("threads still running after stop: %s", alive)
        log.info("stopped")

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (any thread)."""
        with self._stats_lock:
            self._stats[name] += n

    @property
    def stats(self) -> dict[str, int]:
        """The counters now (a copy, see ``snapshot_stats``)."""
        return self.snapshot_stats()

    def snapshot_stats(self) -> dict[str, int]:
        """A copy of the counters, with bytes_in/bytes_out = TCP control + UDP totals.

        Keys: frames_in/out, tcp_bytes_in/out (control connections, not file data),
        datagrams_in/out, udp_bytes_in/out, datagrams_dropped (and by reason:
        datagrams_malformed, datagrams_unbound, datagrams_bad_token), bad_frames,
        clients_too_slow, screen_frames_replaced, mixer_ticks_skipped.
        """
        with self._stats_lock:
            snap = dict(self._stats)
        snap["bytes_in"] = snap.get("tcp_bytes_in", 0) + snap.get("udp_bytes_in", 0)
        snap["bytes_out"] = snap.get("tcp_bytes_out", 0) + snap.get("udp_bytes_out", 0)
        return snap

    def describe(self) -> str:
        """One line for the console: sessions, participants and the main counters."""
        with self._lock:
            sessions = len(self._sessions)
            people = sum(len(s.members) for s in self._sessions.values())
        st = self.snapshot_stats()
        keys = ("datagrams_in", "datagrams_out", "datagrams_dropped", "frames_in", "frames_out")
        counters = " ".join(f"{k}={st.get(k, 0)}" for k in (*keys, "clients_too_slow"))
        return f"sessions={sessions} participants={people} {counters}"

    # --- TCP: accept and first frame --------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._tcp is not None
        n = 0
        while not self._stopping.is_set():
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
            sock.settimeout(None)
            with self._conn_lock:
                full = self._conn_count >= config_module.SERVER_MAX_CONNECTIONS
                if not full:
                    n += 1
                    self._conn_count += 1
                    self._conn_socks.add(sock)
                    t = threading.Thread(
                        target=self._serve_connection, args=(sock, addr, n), name=f"conn-{n}"
                    )
                    self._threads.add(t)
            if full:
                log.warning("refusing %r: %d connections open", addr, self._conn_count)
                _send_quietly(sock, utils.error_header(Err.SERVER_FULL))
                sock.close()
                continue
            t.start()

    def _serve_connection(self, sock: socket.socket, addr: Any, n: int) -> None:
        try:
            self._first_frame(sock, addr, n)
        except Exception:
            log.exception("connection %d from %r failed", n, addr)
        finally:
            _shutdown(sock)
            sock.close()
            with self._conn_lock:
                self._conn_socks.discard(sock)
                self._conn_count -= 1
                self._threads.discard(threading.current_thread())

    def _reader(self, sock: socket.socket) -> utils.FrameReader:
        counted: Any = _CountingSocket(sock, self.count)
        return utils.FrameReader(
            counted, self.config.max_header_bytes, self.config.max_payload_bytes
        )

    def _first_frame(self, sock: socket.socket, addr: Any, n: int) -> None:
        sock.settimeout(self.config.first_frame_timeout_s)
        reader = self._reader(sock)
        while not self._stopping.is_set():
            try:
                frame = reader.read()
            except utils.ProtocolError as exc:
                log.info("connection %d from %r: bad first frame: %s", n, addr, exc)
                self._send_direct(sock, utils.error_header(exc.code, str(exc)))
                return
            except (OSError, utils.ConnectionClosed):
                return
            self.count("frames_in")
            kind = frame.type
            try:
                utils.validate_client_message(frame.header)
            except utils.ProtocolError as exc:
                code = exc.code if kind in _FIRST_FRAME_TYPES else Err.NOT_JOINED
                self._send_direct(sock, utils.error_header(code, str(exc), re=kind))
                return
            if kind == Msg.LIST_SESSIONS:
                self._send_direct(sock, {"type": Msg.SESSIONS, "sessions": self.list_sessions()})
                continue  # then hello, another list_sessions, or close
            if kind == Msg.HELLO:
                p = self._join(sock, frame.header, addr)
                if p is not None:
                    threading.current_thread().name = f"client-{p.id}-reader"
                    self._serve_participant(p)
                return
            if kind in (Msg.UPLOAD, Msg.DOWNLOAD):
                threading.current_thread().name = f"file-{n}"
                self._serve_file(sock, frame.header)
                return
            self._send_direct(sock, utils.error_header(Err.NOT_JOINED, re=kind))
            return

    def _send_direct(self, sock: socket.socket, header: dict[str, Any]) -> None:
        """Send one frame on a connection that has no writer thread (yet)."""
        data = utils.encode_frame(header)
        try:
            sock.sendall(data)
            self.count("tcp_bytes_out", len(data))
            self.count("frames_out")
        except OSError as exc:
            log.info("could not send %s: %s", header.get("type"), exc)

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every live session: name, participant count, locked."""
        with self._lock:
            return [
                {"name": s.name, "participants": len(s.members), "locked": s.locked}
                for s in self._sessions.values()
            ]

    # --- joining ------------------------------------------------------------------------

    def _join(self, sock: socket.socket, hello: dict[str, Any], addr: Any) -> _Participant | None:
        cfg = self.config

        def refuse(code: str, message: str | None = None, **extra: Any) -> None:
            log.info("hello from %r refused: %s", addr, code)
            self._send_direct(sock, utils.error_header(code, message, re=Msg.HELLO, **extra))

        if hello["protocol"] not in config_module.SUPPORTED_PROTOCOLS:
            refuse(
                Err.PROTOCOL_MISMATCH,
                f"This server speaks protocol {config_module.PROTOCOL_VERSION}, "
                f"not {hello['protocol']!r}.",
                supported=list(config_module.SUPPORTED_PROTOCOLS),
            )
            return None
        username = utils.clean_display_name(hello["username"], config_module.MAX_USERNAME_CHARS)
        if username is None:
            refuse(Err.BAD_USERNAME)
            return None
        name = utils.clean_display_name(hello["session"], config_module.MAX_SESSION_NAME_CHARS)
        if name is None:
            refuse(Err.BAD_SESSION)
            return None
        password = hello.get("password", "")
        if len(password) > config_module.MAX_PASSWORD_CHARS:
            refuse(
                Err.BAD_MESSAGE,
                f"Passwords are at most {config_module.MAX_PASSWORD_CHARS} characters.",
            )
            return None
        outbox = _Outbox(cfg.client_queue_max_bytes)
        with self._lock:
            refusal = self._check_join_locked(name, username, password)
            if refusal is None:
                p = self._admit_locked(name, username, password, sock, outbox)
        if refusal is not None:
            refuse(*refusal)
            return None
        log.info("%r (id %d) joined %r from %r", username, p.id, p.session.name, addr)
        return p

    def _check_join_locked(
        self, name: str, username: str, password: str
    ) -> tuple[str, str | None] | None:
        """Why this hello cannot join (code, message), or None; caller holds the lock."""
        if self._stopping.is_set():  # stop() may already have told everyone
            return Err.SERVER_SHUTDOWN, None
        sess = self._sessions.get(name.casefold())
        if sess is not None:
            if sess.locked and not hmac.compare_digest(
                sess.password.encode("utf-8"), password.encode("utf-8")
            ):
                return Err.WRONG_PASSWORD, None
            if len(sess.members) >= self.config.max_participants:
                return Err.SESSION_FULL, None
            folded = username.casefold()
            if any(m.username.casefold() == folded for m in sess.members.values()):
                return Err.USERNAME_TAKEN, None
        elif len(self._sessions) >= config_module.MAX_SESSIONS:
            return Err.SERVER_FULL, None
        if self._next_id > config_module.MAX_PARTICIPANT_ID:
            return Err.SERVER_FULL, "The server has used every participant id; restart it."
        return None

    def _admit_locked(
        self, name: str, username: str, password: str, sock: socket.socket, outbox: _Outbox
    ) -> _Participant:
        """Add a checked participant, start its writer, queue welcome and tell the others."""
        cfg = self.config
        key = name.casefold()
        sess = self._sessions.get(key)
        if sess is None:
            mixer = AudioMixer(cfg.audio_frame_samples, cfg.mixer_jitter_frames)
            sess = self._sessions[key] = _Session(name, password, mixer)
            log.info("session %r created (locked=%s)", name, sess.locked)
        pid = self._next_id
        self._next_id += 1
        token = secrets.token_hex(16)
        p = _Participant(pid, username, sess, token, sock, outbox)
        welcome = {
            "type": Msg.WELCOME,
            "you": {"id": pid, "username": username},
            "token": token,
            "session": sess.name,
            "participants": [m.as_dict() for m in sess.members.values()],
            "presenter": sess.presenter,
            "files": self.store.list_files(sess.name) if self.store else [],
            "chat": list(sess.history),
            "media": self._welcome_media,
        }
        sess.members[pid] = p
        sess.mixer.add(pid)
        self._by_token[token] = p
        p.writer = threading.Thread(target=self._write_loop, args=(p,), name=f"client-{pid}-writer")
        with self._conn_lock:
            self._threads.add(p.writer)
        p.writer.start()
        self._send_locked(p, welcome)
        self._broadcast_locked(
            sess, {"type": Msg.PARTICIPANT_JOINED, "participant": p.as_dict()}, skip=pid
        )
        return p

    # --- per-participant reader and writer -------------------------------------------

    def _serve_participant(self, p: _Participant) -> None:
        sock = p.sock
        sock.settimeout(self.config.heartbeat_timeout_s)
        reader = self._reader(sock)
        try:
            # No _stopping check here: stop() queues server_shutdown, and the writer then
            # shuts the socket down, which ends this loop.
            while not p.gone:
                try:
                    frame = reader.read()
                except utils.FrameTooLarge as exc:
                    log.info("participant %d: %s", p.id, exc)
                    self._send(p, utils.error_header(Err.FRAME_TOO_LARGE, str(exc)))
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
                    if not self._handle(p, frame):
                        break
                except utils.ProtocolError as exc:
                    self.count("bad_frames")
                    log.info("participant %d: %s", p.id, exc)
                    self._send(p, utils.error_header(exc.code, str(exc), re=frame.type))
        finally:
            self._leave(p)
            p.outbox.close()
            if p.writer is not None:
                p.writer.join(config_module.SERVER_THREAD_JOIN_TIMEOUT_S)
                with self._conn_lock:
                    self._threads.discard(p.writer)

    def _write_loop(self, p: _Participant) -> None:
        try:
            while True:
                data = p.outbox.get()
                if data is None:
                    break
                p.sock.sendall(data)
                self.count("tcp_bytes_out", len(data))
                self.count("frames_out")
        except OSError as exc:
            log.info("participant %d: send failed: %s", p.id, exc)
        finally:
            p.outbox.close()  # nothing more will be sent
            # Wakes the reader (if still reading) so that the participant is removed.
            _shutdown(p.sock)

    def _send_locked(self, p: _Participant, header: dict[str, Any]) -> None:
        """Queue a frame for one participant (caller may hold the server lock)."""
        self._put(p, utils.encode_frame(header))

    _send = _send_locked

    def _put(self, p: _Participant, data: bytes) -> None:
        if p.outbox.put(data) == _OVERFLOW:
            self._too_slow(p)

    def _too_slow(self, p: _Participant) -> None:
        # The queue was cleared and closed; the client is not reading, so the error
        # frame would only wait behind a full socket buffer: cut the connection now.
        log.warning("participant %d (%r) could not keep up: disconnected", p.id, p.username)
        self.count("clients_too_slow")
        _shutdown(p.sock)

    def _broadcast_locked(
        self, sess: _Session, header: dict[str, Any], skip: int | None = None
    ) -> None:
        """Queue one frame for every member (but ``skip``); caller holds the server lock."""
        data = utils.encode_frame(header)
        for m in list(sess.members.values()):
            if m.id != skip:
                self._put(m, data)

    # --- control messages ---------------------------------------------------------------

    def _handle(self, p: _Participant, frame: utils.Frame) -> bool:
        """Act on one validated control message; False ends the connection."""
        h = frame.header
        kind = frame.type
        if kind == Msg.CHAT:
            self._chat(p, h)
        elif kind == Msg.MEDIA:
            with self._lock:
                p.audio, p.video = h["audio"], h["video"]
                self._broadcast_locked(
                    p.session, {"type": Msg.PARTICIPANT_UPDATED, "participant": p.as_dict()}
                )
        elif kind == Msg.PRESENT_START:
            with self._lock:
                sess = p.session
                if sess.presenter not in (None, p.id):
                    self._send_locked(p, utils.error_header(Err.PRESENTER_BUSY, re=kind))
                elif sess.presenter == p.id:
                    self._send_locked(p, {"type": Msg.PRESENT_GRANTED})
                else:
                    self._set_presenter_locked(sess, p.id)
                    self._send_locked(p, {"type": Msg.PRESENT_GRANTED})
                    self._broadcast_locked(sess, {"type": Msg.PRESENTER_CHANGED, "presenter": p.id})
        elif kind == Msg.PRESENT_STOP:
            with self._lock:
                if p.session.presenter == p.id:
                    self._set_presenter_locked(p.session, None)
                    self._broadcast_locked(
                        p.session, {"type": Msg.PRESENTER_CHANGED, "presenter": None}
                    )
        elif kind == Msg.SCREEN_FRAME:
            self._screen_frame(p, frame)
        elif kind == Msg.FILE_OFFER:
            self._file_offer(p, h)
        elif kind == Msg.FILE_DELETE:
            self._file_delete(p, h)
        elif kind == Msg.PING:
            pong: dict[str, Any] = {"type": Msg.PONG}
            if "t" in h:
                pong["t"] = h["t"]
            try:
                data = utils.encode_frame(pong)
            except (ValueError, RecursionError):  # a hostile t, e.g. nested very deeply
                raise utils.ProtocolError("ping: 't' cannot be echoed") from None
            self._put(p, data)
        elif kind == Msg.BYE:
            log.info("participant %d said bye", p.id)
            return False
        else:  # list_sessions, hello, upload, download on a control connection
            raise utils.ProtocolError(f"{kind} is not allowed after joining")
        return True

    def _chat(self, p: _Participant, h: dict[str, Any]) -> None:
        message: str = h["message"]
        if not message.strip():
            raise utils.ProtocolError("chat: the message is empty")
        if len(message) > config_module.MAX_CHAT_CHARS:
            raise utils.ProtocolError(
                f"chat: the message has {len(message)} characters; the limit is "
                f"{config_module.MAX_CHAT_CHARS}"
            )
        if any(ord(c) < 32 and c not in _CHAT_ALLOWED_CONTROLS for c in message):
            raise utils.ProtocolError("chat: control characters are not allowed")
        to = h.get("to")
        with self._lock:
            sess = p.session
            if to is not None:
                if not to:
                    raise utils.ProtocolError("chat: 'to' must name at least one participant")
                unknown = sorted({i for i in to if i not in sess.members})
                if unknown:
                    self._send_locked(
                        p,
                        utils.error_header(
                            Err.NO_SUCH_PARTICIPANT,
                            f"No participant {unknown} in this session.",
                            re=Msg.CHAT,
                            ids=unknown,
                        ),
                    )
                    return
            # seq is assigned and the message queued under one lock hold, so every
            # member receives chat in the same (seq) order.
            sess.chat_seq += 1
            msg: dict[str, Any] = {
                "type": Msg.CHAT,
                "seq": sess.chat_seq,
                "from": p.id,
                "username": p.username,
                "message": message,
                "timestamp": time.time(),
            }
            if to is None:
                sess.history.append(msg)
                self._broadcast_locked(sess, msg)
            else:
                targets = sorted(set(to) | {p.id})
                msg["to"] = sorted(set(to))
                data = utils.encode_frame(msg)
                for pid in targets:
                    self._put(sess.members[pid], data)

    def _set_presenter_locked(self, sess: _Session, presenter: int | None) -> None:
        sess.presenter = presenter
        for m in sess.members.values():
            m.outbox.clear_screen()  # no stale frame after a change of presenter

    def _screen_frame(self, p: _Participant, frame: utils.Frame) -> None:
        h = frame.header
        with self._lock:
            sess = p.session
            if sess.presenter != p.id:
                self._send_locked(p, utils.error_header(Err.NOT_PRESENTER, re=Msg.SCREEN_FRAME))
                return
            out = {
                "type": Msg.SCREEN_FRAME,
                "from": p.id,
                "seq": h["seq"],
                "width": h["width"],
                "height": h["height"],
            }
            data = utils.encode_frame(out, frame.payload)
            replaced = sum(m.outbox.put_screen(data) for m in sess.members.values() if m.id != p.id)
        if replaced:
            self.count("screen_frames_replaced", replaced)

    def _file_offer(self, p: _Participant, h: dict[str, Any]) -> None:
        assert self.store is not None
        with self._lock:
            try:
                file_id = self.store.offer(p.session.name, p.id, p.username, h["name"], h["size"])
            except FileStoreError as exc:
                self._send_locked(p, utils.error_header(exc.code, exc.message, re=Msg.FILE_OFFER))
                return
            self._send_locked(p, {"type": Msg.UPLOAD_READY, "file_id": file_id})

    def _file_delete(self, p: _Participant, h: dict[str, Any]) -> None:
        assert self.store is not None
        with self._lock:
            try:
                self.store.delete(h["file_id"], p.session.name, p.id)
            except FileStoreError as exc:
                self._send_locked(p, utils.error_header(exc.code, exc.message, re=Msg.FILE_DELETE))
                return
            self._broadcast_locked(p.session, {"type": Msg.FILE_REMOVED, "file_id": h["file_id"]})

    # --- leaving ------------------------------------------------------------------------

    def _leave(self, p: _Participant) -> None:
        """Remove a participant (once): presenter released, others told, session ended."""
        with self._lock:
            if p.gone:
                return
            p.gone = True
            sess = p.session
            sess.members.pop(p.id, None)
            sess.mixer.remove(p.id)
            self._by_token.pop(p.token, None)
            if p.udp_addr is not None and self._by_addr.get(p.udp_addr) is p:
                del self._by_addr[p.udp_addr]
            if sess.presenter == p.id:
                self._set_presenter_locked(sess, None)
                self._broadcast_locked(sess, {"type": Msg.PRESENTER_CHANGED, "presenter": None})
            self._broadcast_locked(
                sess, {"type": Msg.PARTICIPANT_LEFT, "id": p.id, "username": p.username}
            )
            if not sess.members:
                key = sess.name.casefold()
                if self._sessions.get(key) is sess:
                    del self._sessions[key]
                if self.store is not None:
                    self.store.drop_session(sess.name)
                log.info("session %r ended", sess.name)
        log.info("%r (id %d) left %r", p.username, p.id, sess.name)

    # --- file data connections --------------------------------------------------------

    def _serve_file(self, sock: socket.socket, h: dict[str, Any]) -> None:
        assert self.store is not None
        kind = h["type"]
        with self._lock:
            p = self._by_token.get(h["token"].lower()) if len(h["token"]) == 32 else None
            session_name = p.session.name if p is not None else ""
        if p is None:
            log.info("%s with a bad token", kind)
            self._send_direct(sock, utils.error_header(Err.BAD_TOKEN, re=kind))
            return
        sock.settimeout(self.config.file_idle_timeout_s)
        try:
            if kind == Msg.UPLOAD:
                info = self.store.receive_upload(sock, h["file_id"], p.id)
                self._send_direct(
                    sock,
                    {"type": Msg.UPLOAD_DONE, "file_id": info["id"], "sha256": info["sha256"]},
                )
                with self._lock:
                    if not p.session.members:
                        return
                    self._broadcast_locked(p.session, {"type": Msg.FILE_ADDED, "file": info})
            else:
                offset = h.get("offset", 0)
                self.store.send_download(sock, h["file_id"], session_name, offset)
        except FileStoreError as exc:
            log.info("%s of %r by %d refused: %s", kind, h["file_id"], p.id, exc.code)
            self._send_direct(sock, utils.error_header(exc.code, exc.message, re=kind))

    # --- UDP ------------------------------------------------------------------------------

    def _udp_loop(self) -> None:
        assert self._udp is not None
        udp = self._udp
        period = self._frame_s
        max_lag = config_module.MIXER_MAX_LAG_FRAMES * period
        levels_every = config_module.LEVELS_INTERVAL_S
        now = time.monotonic()
        next_tick = now + period
        next_levels = now + levels_every
        bufsize = config_module.UDP_MAX_DATAGRAM_BYTES + 1
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self._mix_tick()
                next_tick += period
                if now - next_tick > max_lag:  # fell far behind: skip, never burst
                    self.count("mixer_ticks_skipped")
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
                self._on_datagram(data, addr)
            except Exception:  # a bug must not stop the media loop
                log.exception("datagram from %r", addr)
                self.count("datagrams_dropped")

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._udp is not None
        try:
            self._udp.sendto(data, addr)
        except OSError as exc:
            self.count("datagrams_send_failed")
            log.debug("udp send to %r: %s", addr, exc)
            return
        self.count("datagrams_out")
        self.count("udp_bytes_out", len(data))

    def _drop(self, why: str, addr: Any, detail: Any = "") -> None:
        self.count("datagrams_dropped")
        self.count(f"datagrams_{why}")
        log.debug("dropped datagram from %r: %s %r", addr, why, detail)

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count("datagrams_in")
        self.count("udp_bytes_in", len(data))
        try:
            dg = utils.Datagram.parse(data)
        except ValueError as exc:
            self._drop("malformed", addr, str(exc))
            return
        kind = dg.kind
        if kind == utils.KIND_REGISTER:
            try:
                token = utils.parse_register(dg.payload)
            except ValueError as exc:
                self._drop("malformed", addr, str(exc))
                return
            with self._lock:
                p = self._by_token.get(token)
                if p is None or p.gone:
                    p = None
                else:
                    if p.udp_addr is not None and self._by_addr.get(p.udp_addr) is p:
                        del self._by_addr[p.udp_addr]
                    other = self._by_addr.get(addr)
                    if other is not None and other is not p:
                        other.udp_addr = None
                    p.udp_addr = addr
                    self._by_addr[addr] = p
            if p is None:
                self._drop("bad_token", addr)
                return
            self._sendto(utils.pack_media(utils.KIND_REGISTER, 0, 0, utils.media_clock_ms()), addr)
            return
        if kind == utils.KIND_LEVELS:
            self._drop("malformed", addr, "levels come from the server only")
            return
        if kind == utils.KIND_AUDIO:
            if len(dg.payload) != self.config.audio_frame_samples * 2:
                self._drop("malformed", addr, f"audio payload of {len(dg.payload)} bytes")
                return
        elif kind == utils.KIND_VIDEO:
            try:
                utils.VideoFragment.parse(dg.payload)
            except ValueError as exc:
                self._drop("malformed", addr, str(exc))
                return
        targets: list[tuple[str, int]] = []
        with self._lock:
            p = self._by_addr.get(addr)
            if p is None or p.id != dg.sender:
                p = None
            elif kind == utils.KIND_AUDIO:
                p.session.mixer.push(p.id, dg.payload)
            elif kind == utils.KIND_VIDEO:
                targets = [
                    m.udp_addr
                    for m in p.session.members.values()
                    if m.id != p.id and m.udp_addr is not None
                ]
        if p is None:
            self._drop("unbound", addr, dg.sender)
            return
        for target in targets:
            self._sendto(data, target)  # forwarded unchanged

    def _mix_tick(self) -> None:
        sends: list[tuple[bytes, tuple[str, int]]] = []
        clock = utils.media_clock_ms()
        with self._lock:
            for sess in self._sessions.values():
                result = sess.mixer.tick()
                for pid, pcm in result.mixes.items():
                    m = sess.members.get(pid)
                    if m is None or m.udp_addr is None:
                        continue
                    m.mix_seq += 1
                    sends.append(
                        (utils.pack_media(utils.KIND_AUDIO, 0, m.mix_seq, clock, pcm), m.udp_addr)
                    )
        for data, addr in sends:
            self._sendto(data, addr)

    def _send_levels(self) -> None:
        sends: list[tuple[bytes, tuple[str, int]]] = []
        clock = utils.media_clock_ms()
        with self._lock:
            for sess in self._sessions.values():
                levels = sess.mixer.take_levels()
                nonzero = any(levels.values())
                if not nonzero and not sess.levels_were_nonzero:
                    continue
                sess.levels_were_nonzero = nonzero
                payload = utils.encode_levels(levels)
                for m in sess.members.values():
                    if m.udp_addr is not None:
                        m.levels_seq += 1
                        sends.append(
                            (
                                utils.pack_media(
                                    utils.KIND_LEVELS, 0, m.levels_seq, clock, payload
                                ),
                                m.udp_addr,
                            )
                        )
        for data, addr in sends:
            self._sendto(data, addr)


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


# --- command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The server's command line."""
    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog="server.py",
        description="FusionMeet LAN conferencing server (TCP control/files, UDP media).",
    )
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    p.add_argument(
        "--tcp-port",
        type=int,
        default=d.tcp_port,
        help=f"TCP port for control and file data; 0 lets the OS choose (default {d.tcp_port})",
    )
    p.add_argument(
        "--udp-port",
        type=int,
        default=d.udp_port,
        help=f"UDP port for audio/video; 0 lets the OS choose (default {d.udp_port})",
    )
    p.add_argument(
        "--storage",
        type=Path,
        default=d.storage_dir,
        help=f"folder for shared files; its server-made files are deleted at start and stop "
        f"(default {d.storage_dir})",
    )
    p.add_argument(
        "--max-file-mb",
        type=int,
        default=d.max_file_bytes // (1024 * 1024),
        help="largest file a participant may share, in MiB (default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging detail on stderr (default INFO)",
    )
    p.add_argument("--log-file", type=Path, help="also append the log to this file")
    p.add_argument(
        "--name",
        default=None,
        help="the name people see in the join dialog's server list (default: the host name)",
    )
    p.add_argument(
        "--no-announce",
        action="store_true",
        help="do not announce the server on the LAN (DNS-SD / mDNS)",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=config_module.SERVER_STATS_LOG_INTERVAL_S,
        help="seconds between one-line status reports; 0 turns them off (default %(default)s)",
    )
    return p


def banner(server: ConferenceServer, addresses: list[str]) -> str:
    """What the operator reads at start: the addresses to type and the ports to open."""
    if server.host in ("0.0.0.0", ""):
        shown = addresses or ["127.0.0.1"]
    else:
        shown = [server.host]
    port = "" if server.tcp_port == config_module.DEFAULT_TCP_PORT else f":{server.tcp_port}"
    lines = [
        f"{config_module.APP_NAME} server is running.",
        "  People join by typing one of these as the server address:",
        *(f"      {addr}{port}" for addr in shown),
        f"  Firewall: allow TCP {server.tcp_port} (control, files) "
        f"and UDP {server.udp_port} (audio, video).",
        "  Press Ctrl+C to stop.",
    ]
    return "\n".join(lines)


class StatusLine:
    """The periodic one-line status: sessions, participants, traffic in and out."""

    def __init__(self, server: ConferenceServer) -> None:
        self.server = server
        self._last = time.monotonic()
        self._last_in = self._last_out = 0

    def line(self) -> str:
        now = time.monotonic()
        st = self.server.snapshot_stats()
        span = max(now - self._last, 1e-6)
        rate_in = (st.get("bytes_in", 0) - self._last_in) * 8 / span / 1000
        rate_out = (st.get("bytes_out", 0) - self._last_out) * 8 / span / 1000
        self._last, self._last_in, self._last_out = (
            now,
            st.get("bytes_in", 0),
            st.get("bytes_out", 0),
        )
        sessions = self.server.list_sessions()
        people = sum(s["participants"] for s in sessions)
        return (
            f"status: sessions={len(sessions)} participants={people} "
            f"in={rate_in:.0f} kbit/s out={rate_out:.0f} kbit/s "
            f"dropped={st.get('datagrams_dropped', 0)}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; returns the exit status."""
    args = build_parser().parse_args(argv)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log_file is not None:
        try:
            handlers.append(logging.FileHandler(args.log_file, encoding="utf-8"))
        except OSError as exc:
            print(f"cannot open the log file: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        handlers=handlers,
    )
    if args.max_file_mb < 0:
        print("--max-file-mb must be >= 0", file=sys.stderr)
        return 2
    cfg = ServerConfig(
        host=args.host,
        tcp_port=args.tcp_port,
        udp_port=args.udp_port,
        storage_dir=args.storage,
        max_file_bytes=args.max_file_mb * 1024 * 1024,
    )
    server = ConferenceServer(cfg)
    try:
        server.start()
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(
        f"ready: tcp={server.host}:{server.tcp_port} udp={server.host}:{server.udp_port}",
        flush=True,
    )
    import discovery  # optional zeroconf inside; the server runs without it

    addresses = discovery.lan_addresses()
    print(banner(server, addresses), flush=True)
    announcer = None
    if not args.no_announce and not server.host.startswith("127."):
        wanted = addresses if server.host in ("0.0.0.0", "") else [server.host]
        announcer = discovery.ServerAnnouncer(
            server.tcp_port, server.udp_port, name=args.name, addresses=wanted
        )
        if not announcer.start():
            announcer = None
    status = StatusLine(server)
    interval = args.status_interval
    next_status = time.monotonic() + interval
    while not done.wait(0.5):
        if interval > 0 and time.monotonic() >= next_status:
            next_status += interval
            log.info("%s", status.line())
    if announcer is not None:
        announcer.stop()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
