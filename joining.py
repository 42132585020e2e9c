"""Joining a session by ``hello``: the password check outside the lock, then admission.

``Joining`` is the part of ``ConferenceServer`` that turns a validated ``hello``
into a participant (PROTOCOL.md section 3): the password is verified against the
session's scrypt hash (or hashed, for a new locked session) *without* the session
lock, since scrypt takes tens of milliseconds; under the lock ``check_join``
confirms the hash is still the session's, the participant is admitted, its writer
thread started and its ``welcome`` queued, and a namesake who is reconnecting
(issue 13: the same person, whose app restarted) gives up its kept place. It has
no thread of its own: the ``conn-<n>`` threads call ``join``, and ``Continuity``
uses ``files_of`` and ``start_writer_locked`` for a resume. Like ``Continuity``
it takes the server's session lock (``server._lock``) and follows server.py's
lock order; methods ending in ``_locked`` need that lock held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import config
import meeting_handlers
import security
import utils
from sessions import JoinRefused, Participant, PasswordStale, clean_hello
from utils import Err, Msg

if TYPE_CHECKING:
    from server import ConferenceServer

log = logging.getLogger(__name__)


class Joining:
    """``hello`` -> a participant, for one ``ConferenceServer``."""

    def __init__(self, server: ConferenceServer, new_outbox: Callable[[], Any]) -> None:
        self.server = server
        self.new_outbox = new_outbox  # a participant's outgoing queue (server._Outbox)

    def join(self, sock: Any, hello: dict[str, Any], addr: Any) -> Participant | None:
        """The participant this ``hello`` made, or None after an ``error`` was sent.

        A newcomer a host must let in waits in the lobby first
        (``meeting_handlers.admit_from_lobby``); one who gave up is not answered.
        """
        try:
            name, username, password = clean_hello(hello)
            p = self._checked(name, username, password, sock, addr[0], hello)
        except JoinRefused as exc:  # the error is sent after the lock is released
            log.info("hello from %r refused: %s", addr, exc.code)
            extra = dict(exc.extra)
            if extra.pop("quiet", False):  # a newcomer who left the lobby: nothing to say
                return None
            header = extra.pop("lobby", None) or utils.error_header(
                exc.code, exc.message, re=Msg.HELLO, **extra
            )
            self.server._send_direct(sock, header)
            return None
        log.info("%r (id %d) joined %r from %r", username, p.id, p.session.name, addr)
        return p

    def _checked(
        self,
        name: str,
        username: str,
        password: str,
        sock: Any,
        address: str,
        hello: dict[str, Any],
    ) -> Participant:
        """Check the password outside the session lock (scrypt), then join under it.

        The password is verified against the session's stored hash (or, for a new
        session, hashed) without the lock; under the lock ``check_join`` confirms the
        hash it was checked against is still the session's, else the check is redone.
        """
        srv = self.server
        outbox = self.new_outbox()
        ask = bool(hello.get("ask_to_join", False))
        for _ in range(config.JOIN_PASSWORD_RECHECKS):
            with srv._lock:
                stored = srv.sessions.password_hash_of(name)
            ok, new_hash = True, ""
            if stored:
                ok = security.verify_password(password, stored)
            elif stored is None and password:
                new_hash = security.hash_password(password)
            with srv._lock:
                if srv._stopping.is_set():  # stop() may already have told everyone
                    raise JoinRefused(Err.SERVER_SHUTDOWN)
                try:
                    now = time.monotonic()
                    srv.sessions.check_join(name, username, ok, stored, address, now)
                except PasswordStale:
                    continue  # the session was made or ended meanwhile: check again
                waiter, sends = srv.sessions.lobby_request(name, username, address, now)
                if waiter is None:
                    return self.admit_locked(name, username, new_hash, sock, outbox, address, ask)
                srv._deliver_locked(sends)
            return meeting_handlers.admit_from_lobby(
                srv,
                waiter,
                sock,
                username,
                address,
                lambda h=new_hash: self.admit_locked(name, username, h, sock, outbox, address, ask),
            )
        raise JoinRefused(Err.SERVER_FULL, "The session kept changing while joining; try again.")

    def admit_locked(
        self,
        name: str,
        username: str,
        password_hash: str,
        sock: Any,
        outbox: Any,
        address: str,
        ask_to_join: bool = False,
    ) -> Participant:
        """Add a checked participant, start its writer, queue welcome and tell the others.

        A namesake who is reconnecting (the same person, whose app restarted) gives up
        its kept place. ``ask_to_join`` is hello's: read when this join creates the session.
        """
        srv = self.server
        p, sends = srv.sessions.admit(
            name,
            username,
            password_hash,
            outbox,
            self.files_of,
            srv._welcome_media,
            address,
            time.monotonic(),
            ask_to_join,
        )
        p.sock = sock
        srv.continuity.adopt_chat_ids_locked(p)  # after a restart: its resent chat is known
        self.start_writer_locked(p)
        srv._deliver_locked(sends)
        for ghost in srv.sessions.namesakes_away(p):  # e.g. their app restarted
            srv._deliver_locked(srv.sessions.leave(ghost)[0])
        return p

    def files_of(self, name: str) -> list[dict[str, Any]]:
        """The complete shared files of session ``name`` (a welcome's ``files``)."""
        store = self.server.store
        return store.list_files(name) if store is not None else []

    def start_writer_locked(self, p: Participant) -> None:
        """Start ``p``'s writer thread on its current socket and outbox."""
        srv = self.server
        p.writer = threading.Thread(
            target=p.outbox.write_to,
            args=(p.sock, srv.count, f"participant {p.id}"),
            name=f"client-{p.id}-writer",
        )
        srv._conns.add_thread(p.writer)
        p.writer.start()
