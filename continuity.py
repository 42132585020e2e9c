"""Keeping the meeting going (issue 13): grace periods, resume, and state across a restart.

``Continuity`` is the part of ``ConferenceServer`` that keeps a participant's
place when its control connection breaks, gives it back on ``resume``, ends
the grace periods that ran out, and saves / restores sessions, chat, files and
the members' last chat ids around a restart or a crash (through
``persistence``). The server's reader threads (``lost``), ``conn-<n>`` threads
(``resume``, and ``adopt_chat_ids_locked`` from a join), the ``accept`` thread
(``expire``) and ``start``/``stop`` call it. It takes the session lock
(``server._lock``) like the server's own methods, and follows server.py's lock
order; methods ending in ``_locked`` are called with that lock held.

Its one thread, ``state-saver`` (``StateSaver``), keeps the saved state current
while the server runs: ``changed_locked`` (from ``_deliver_locked``, for the
frames that change what is saved) only sets an event; the saver takes a snapshot
under the session lock (copies, no I/O) and writes it with the lock released, at
most once per ``STATE_SAVE_INTERVAL_S``. Disk I/O never happens under the session
lock, and the udp thread never waits for it.
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
from sessions import JoinRefused, Participant, Send, Session, clean_hello
from utils import Err, Msg

if TYPE_CHECKING:
    from server import ConferenceServer

log = logging.getLogger(__name__)

# The frames whose sending means the saved state changed: a session made (its first
# welcome) or ended (the last participant_left), members, chat, files.
STATE_EVENTS = frozenset(
    {
        Msg.WELCOME,
        Msg.PARTICIPANT_JOINED,
        Msg.PARTICIPANT_LEFT,
        Msg.CHAT,
        Msg.FILE_ADDED,
        Msg.FILE_REMOVED,
        Msg.ACCESS_CHANGED,  # the meeting's lock and ask-to-join rule (issue 14)
        Msg.BANS_CHANGED,
        Msg.HOSTS_CHANGED,
    }
)


class StateSaver:
    """The ``state-saver`` thread: ``write()`` after ``changed()``, coalesced and throttled.

    The first change after a quiet spell is written at once; later ones wait until
    ``interval_s`` after the last write began (a flood costs one write per interval),
    and longer if writing is slow (at most ``max_busy`` of the time). With no change
    for ``refresh_s``, ``refresh()`` runs instead (the file's time says we are alive).
    """

    def __init__(
        self,
        write: Callable[[], None],
        refresh: Callable[[], None],
        interval_s: float = config.STATE_SAVE_INTERVAL_S,
        refresh_s: float = config.STATE_REFRESH_S,
        max_busy: float = config.STATE_SAVE_MAX_BUSY_FRACTION,
    ) -> None:
        self._write, self._refresh = write, refresh
        self.interval_s, self.refresh_s, self.max_busy = interval_s, refresh_s, max_busy
        self._changed = threading.Event()  # set by any thread (changed), cleared by the saver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0  # how many times the state was written (tests, statistics)

    def changed(self) -> None:
        """Something saved changed (cheap: any thread, any lock held)."""
        self._changed.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="state-saver")
        self._thread.start()

    def stop(self) -> None:
        """End the thread (a write in progress finishes first) and join it."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(config.SERVER_THREAD_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the state-saver thread did not stop in time")

    def _run(self) -> None:
        next_write = 0.0  # monotonic: no write before this
        while not self._stop.is_set():
            if not self._changed.wait(self.refresh_s):
                self._refresh()
                continue
            delay = next_write - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if self._stop.is_set():
                break
            self._changed.clear()  # a change from now on is written next time
            began = time.monotonic()
            try:
                self._write()
            except Exception:
                log.exception("saving the server state failed")
            took = time.monotonic() - began
            self.writes += 1
            next_write = began + max(self.interval_s, took / self.max_busy)


class Continuity:
    """Grace periods, ``resume`` and restart state for one ``ConferenceServer``."""

    def __init__(self, server: ConferenceServer, new_outbox: Callable[[], Any]) -> None:
        self.server = server
        self.new_outbox = new_outbox  # a participant's outgoing queue (server._Outbox)
        self._next_sweep = 0.0  # monotonic; only the accept thread reads and writes it
        # Chat ids a restart brought back, per restored session and case-folded username,
        # until that name joins it (adopt_chat_ids_locked). Guarded by the session lock.
        self._restored_ids: dict[Session, dict[str, list[tuple[str, int]]]] = {}
        self.saver = StateSaver(self._write_running, self._refresh)
        # Taken by the state-saver thread and by stop() (its last save), around the write
        # only (never with the session lock held): one writer of the file at a time.
        # Guards _written: the newest snapshot written, so an older one (a write that
        # was slow to get the lock) never replaces a newer one.
        self._write_lock = threading.Lock()
        self._written = 0
        self._snapshots = 0  # snapshots taken; guarded by the session lock

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
        """Sessions, chat, files and chat ids saved (before any connection is served).

        What was restored is written again at once (the file was consumed), and the
        ``state-saver`` thread starts.
        """
        srv = self.server
        assert srv.store is not None
        for s in saved:
            with srv._lock:
                sess = srv.sessions.restore(
                    s.name, s.password_hash, s.chat_seq, s.history, time.monotonic(), s.meeting
                )
                if s.chat_ids:
                    self._restored_ids[sess] = dict(s.chat_ids)
            srv.store.restore(s.name, s.files)
        if saved:
            log.info("restored %d sessions from the last run", len(saved))
            self._write_running()
        self.saver.start()

    def save(self) -> None:
        """At stop: end the ``state-saver`` and write the state a restart restores (clean)."""
        self.saver.stop()
        self._write(clean=True)

    def changed_locked(self, sends: list[Send]) -> None:
        """From ``_deliver_locked``: if these frames change the saved state, save it soon."""
        if any(header.get("type") in STATE_EVENTS for _, header in sends):
            self.saver.changed()

    def adopt_chat_ids_locked(self, p: Participant) -> None:
        """A join: the chat ids its name had before the restart become ``p``'s (PROTOCOL 3.3)."""
        folded = p.username.casefold()
        by_name = self._restored_ids.get(p.session)
        pairs = by_name.pop(folded, None) if by_name is not None else None
        left = p.session.departed_ids.pop(folded, None)  # its place expired (3.2)
        for cid, seq in [*(pairs or ()), *(left or ())]:
            self.server.sessions.chat_ids.record(p.id, cid, seq)

    def _write_running(self) -> None:
        self._write(clean=False)

    def _refresh(self) -> None:
        with self._write_lock:
            persistence.touch(Path(self.server.config.storage_dir))

    def _write(self, clean: bool) -> None:
        """Snapshot under the session lock (copies only), then write with it released."""
        srv = self.server
        assert srv.store is not None
        with srv._lock:
            snap = srv.sessions.snapshot()
            files = {name: srv.store.list_files(name) for name, *_ in snap}
            ids = self._chat_ids_locked()
            self._snapshots += 1
            number = self._snapshots
        sessions = [
            persistence.SavedSession(
                name, password_hash, seq, history, files[name], ids.get(name, {}), meeting
            )
            for name, password_hash, seq, history, meeting in snap
        ]
        with self._write_lock:
            if number < self._written:
                return  # a newer snapshot is on disk already
            self._written = number
            persistence.save(Path(srv.config.storage_dir), sessions, time.time(), clean)

    def _chat_ids_locked(self) -> dict[str, dict[str, list[tuple[str, int]]]]:
        """Per session name, its members' last chat ids by case-folded username (and the
        restored ones nobody claimed yet), at most ``STATE_CHAT_IDS_PER_PARTICIPANT`` each."""
        srv = self.server
        live = set(srv.sessions.sessions.values())
        self._restored_ids = {s: v for s, v in self._restored_ids.items() if s in live and v}
        n = config.STATE_CHAT_IDS_PER_PARTICIPANT
        out: dict[str, dict[str, list[tuple[str, int]]]] = {}
        for sess in live:
            by_name = {
                user: list(pairs)
                for user, pairs in [
                    *self._restored_ids.get(sess, {}).items(),
                    *sess.departed_ids.items(),
                ]
            }
            for m in sess.members.values():
                recent = srv.sessions.chat_ids.recent(m.id, n)
                if recent:  # two members of one name: one is a ghost of the other
                    pairs = by_name.setdefault(m.username.casefold(), [])
                    pairs[:] = sorted({*pairs, *recent}, key=lambda pair: pair[1])[-n:]
            if by_name:
                out[sess.name] = by_name
        return out

    # --- grace period and resume ----------------------------------------------------------

    def lost(self, p: Participant, connection: int) -> None:
        """A control connection ended: without bye, keep the place for the grace period."""
        srv = self.server
        with srv._lock:
            if p.gone or p.connection != connection:  # left, or resumed on a newer one
                return
            if srv._stopping.is_set():  # everyone was told; the stop saves the place as is
                return
            if srv.config.resume_grace_s > 0:
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
                self._restored_ids.pop(sess, None)
                self.saver.changed()
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
