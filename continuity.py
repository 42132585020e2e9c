"""Keeping the meeting going (issue 13): grace periods, resume, and state across a restart.

``Continuity`` is the part of ``ConferenceServer`` that keeps a participant's
place when its control connection breaks, gives it back on ``resume``, ends
the grace periods that ran out, and saves / restores sessions, chat and files
around a restart (through ``persistence``). It has no thread: the server's
reader threads (``lost``), ``conn-<n>`` threads (``resume``), the ``accept``
thread (``expire``) and ``start``/``stop`` call it. It takes the session lock
(``server._lock``) like the server's own methods, and follows server.py's lock
order; methods ending in ``_locked`` are not used here.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import config
import persistence
import utils
from sessions import JoinRefused, Participant, clean_hello
from utils import Err, Msg

if TYPE_CHECKING:
    from server import ConferenceServer

log = logging.getLogger(__name__)


class Continuity:
    """Grace periods, ``resume`` and restart state for one ``ConferenceServer``."""

    def __init__(self, server: ConferenceServer, new_outbox: Callable[[], Any]) -> None:
        self.server = server
        self.new_outbox = new_outbox  # a participant's outgoing queue (server._Outbox)
        self._next_sweep = 0.0  # monotonic; only the accept thread reads and writes it

    def tick(self) -> None:
        """From the accept loop: every ``RESUME_SWEEP_S``, end what ran out (``expire``)."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + config.RESUME_SWEEP_S
            self.expire()

    @staticmethod
    def on_resume(
        srv: ConferenceServer, sock: socket.socket, frame: Any, addr: Any, n: int
    ) -> bool:
        """The ``resume`` first-frame handler (server.FIRST_FRAME_HANDLERS): serve it on."""
        p = srv.continuity.resume(sock, frame.header, addr)
        if p is not None:
            threading.current_thread().name = f"client-{p.id}-reader"
            srv._serve_participant(p)
        return False  # the connection is done (served, or refused)

    # --- restart ----------------------------------------------------------------------

    @staticmethod
    def load(cfg: config.ServerConfig) -> tuple[list[persistence.SavedSession], frozenset[str]]:
        """What a stop saved (nothing with ``fresh``), and the ids of the files to keep."""
        if cfg.fresh:
            persistence.discard(Path(cfg.storage_dir))
        saved = persistence.load(Path(cfg.storage_dir), cfg.resume_grace_s, time.time())
        keep = frozenset(f.get("id") for s in saved for f in s.files)
        return saved, keep

    def restore(self, saved: list[persistence.SavedSession]) -> None:
        """Sessions, chat and files a stop saved (before any connection is served)."""
        srv = self.server
        assert srv.store is not None
        for s in saved:
            with srv._lock:
                srv.sessions.restore(
                    s.name, s.password_hash, s.chat_seq, s.history, time.monotonic()
                )
            srv.store.restore(s.name, s.files)
        if saved:
            log.info("restored %d sessions from the last run", len(saved))

    def save(self) -> None:
        """Write the sessions, chat and file list for a restart (persistence.py)."""
        srv = self.server
        assert srv.store is not None
        with srv._lock:
            snap = srv.sessions.snapshot()
            files = {name: srv.store.list_files(name) for name, *_ in snap}
        sessions = [
            persistence.SavedSession(name, password_hash, seq, history, files[name])
            for name, password_hash, seq, history in snap
        ]
        persistence.save(Path(srv.config.storage_dir), sessions, time.time())

    # --- grace period and resume ----------------------------------------------------------

    def lost(self, p: Participant, connection: int) -> None:
        """A control connection ended: without bye, keep the place for the grace period."""
        srv = self.server
        with srv._lock:
            if p.gone or p.connection != connection:  # left, or resumed on a newer one
                return
            if srv.config.resume_grace_s > 0 and not srv._stopping.is_set():
                srv._deliver_locked(srv.sessions.suspend(p, time.monotonic()))
                log.info("participant %d lost its connection; place kept", p.id)
                return
        srv._leave(p)

    def expire(self) -> None:
        """Announce the leave of everyone whose grace period is over; end unclaimed sessions."""
        srv = self.server
        with srv._lock:
            expired = srv.sessions.expired(time.monotonic())
            for sess in srv.sessions.expired_empty(time.monotonic()):
                log.info("restored session %r: nobody came back in time", sess.name)
                if srv.store is not None:
                    srv.store.drop_session(sess.name)
        for p in expired:
            log.info("participant %d did not come back in time", p.id)
            srv._leave(p)

    def resume(self, sock: socket.socket, h: dict[str, Any], addr: Any) -> Participant | None:
        """``resume`` (PROTOCOL.md 3.1): the participant whose place this connection took back.

        Its new writer runs and its ``welcome`` is queued; None after an ``error``.
        """
        srv = self.server
        attempt, last_seq = h.get("attempt", 0), h.get("last_seq", 0)
        outbox = self.new_outbox()
        try:
            if h["protocol"] not in config.SUPPORTED_PROTOCOLS:
                clean_hello({"protocol": h["protocol"], "username": "", "session": ""})
            with srv._lock:
                if srv._stopping.is_set():
                    raise JoinRefused(Err.SERVER_SHUTDOWN)
                p = srv.sessions.check_resume(h["session"], h["id"], h["secret"], attempt)
                old_sock, old_outbox = p.sock, p.outbox
                p.sock = sock
                sends = srv.sessions.resume(
                    p, outbox, last_seq, attempt, srv.joining.files_of, srv._welcome_media
                )
                srv.joining.start_writer_locked(p)
                srv._deliver_locked(sends)
        except JoinRefused as exc:
            log.info("resume from %r refused: %s", addr, exc.code)
            header = utils.error_header(exc.code, exc.message, re=Msg.RESUME, **exc.extra)
            srv._send_direct(sock, header)
            return None
        old_outbox.close()  # a half-dead old connection: its reader ends and leaves p alone
        if old_sock is not None:
            try:
                old_sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        log.info("%r (id %d) resumed in %r from %r", p.username, p.id, p.session.name, addr)
        return p
