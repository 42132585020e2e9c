"""The client's automatic reconnection (issue 13), split from client.py.

``ReconnectLink`` is a base of ``ConferenceClient``: when a link breaks (the
connection ends or is silent for ``heartbeat_timeout_s``) ``_link_lost`` starts
the ``reconnect-<id>`` thread, which tries ``resume`` first and then ``hello``
with backoff and jitter, starts a new set of link threads and sends the chat
outbox again. The attributes it uses are set by ``ConferenceClient.__init__``.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from typing import Any

import config as cfg
import security
import utils
from client_net import JoinError, NotConnected
from utils import Err, Msg

log = logging.getLogger("client")

# Refusals that another try cannot change: reconnecting stops.
_FINAL_JOIN_CODES = frozenset(
    {
        Err.WRONG_PASSWORD,
        Err.BAD_USERNAME,
        Err.BAD_SESSION,
        Err.UNSUPPORTED_PROTOCOL,
        # another certificate, or none we can trust: never retried (nothing was sent)
        security.SecErr.FINGERPRINT_MISMATCH,
        security.SecErr.FINGERPRINT_CHANGED,
        security.SecErr.FINGERPRINT_UNKNOWN,
    }
)


class ReconnectLink:
    """Reconnection for ``ConferenceClient`` (a mixin: the state lives in the client)."""

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        c = self.config
        silence_s = max(cfg.CLIENT_SERVER_SILENCE_S, 3 * c.heartbeat_interval_s)
        tick = min(
            c.heartbeat_interval_s, c.udp_register_retry_s, c.udp_keepalive_s, cfg.CLIENT_UDP_POLL_S
        )
        next_ping = time.monotonic() + c.heartbeat_interval_s
        next_udp = time.monotonic()
        reason = None
        while not stop.is_set():
            now = time.monotonic()
            if self._udp_registered.is_set() and now - self._last_udp_rx > cfg.UDP_REBIND_SILENCE_S:
                # No datagram, not even a keepalive answer: the server lost our binding
                # (it restarted the session, or another address took it). Register again.
                log.info(
                    "no UDP from the server for %.0f s: registering again", now - self._last_udp_rx
                )
                self._udp_registered.clear()
                self._last_udp_rx = now
                next_udp = now
            if now >= next_udp:
                registered = self._udp_registered.is_set()
                kind = utils.KIND_KEEPALIVE if registered else utils.KIND_REGISTER
                self._send_udp(kind, self._next_seq(kind), utils.media_clock_ms())
                next_udp = now + (c.udp_keepalive_s if registered else c.udp_register_retry_s)
            if now >= next_ping:
                try:
                    # Never wait behind a send the server does not drain: the silence
                    # check below must still run and shut the socket, which frees it.
                    self._send({"type": Msg.PING, "t": time.monotonic()}, lock_timeout=tick)
                except OSError as exc:
                    reason = f"the connection to the server was lost ({exc})"
                    break
                next_ping = now + c.heartbeat_interval_s
            if now - self._last_rx > silence_s:
                reason = f"the server was silent for {silence_s:.0f} s"
                break
            stop.wait(max(0.0, min(next_ping, next_udp, now + tick) - time.monotonic()))
        if reason is not None:
            self._link_lost(stop, reason)

    # --- Reconnecting (issue 13) ---------------------------------------------------

    def _link_lost(self, stop: threading.Event, reason: str) -> None:
        """A link thread noticed the link broke: reconnect, or shut down if that is off."""
        with self._close_lock:
            if stop.is_set() or self._closed:
                return  # leave(), or another thread of this link, got there first
            if self._final_reason is not None:  # removed, or the meeting ended
                keep, reason = False, self._final_reason
            elif self.config.reconnect_give_up_s <= 0 or not self._resume_secret:
                keep = False
            else:
                keep = True
                stop.set()
                self.connected = False
                self.reconnecting = True
                self.reconnect_started = time.monotonic()
                old_threads = [t for t in self._threads if t.is_alive()]
                old_socks = [self._tcp, self._udp]
                if self._tcp is not None:
                    try:
                        self._tcp.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed by the peer
                t = threading.Thread(
                    target=self._reconnect_loop,
                    args=(old_threads, old_socks, reason),
                    name=f"reconnect-{self.my_id}",
                    daemon=True,
                )
                self._reconnect_thread = t
                self._threads = [*old_threads, t]
                t.start()
        if not keep:
            self._shutdown(reason)
            return
        log.info("connection lost (%s); reconnecting", reason)
        self._emit("reconnecting", reason)

    def _reconnect_loop(
        self, old_threads: list[threading.Thread], old_socks: list[Any], reason: str
    ) -> None:
        me = threading.current_thread()
        for t in old_threads:
            if t is not me:
                t.join(cfg.CLIENT_THREAD_JOIN_TIMEOUT_S)
        for s in old_socks:
            if s is not None:
                s.close()
        c = self.config
        assert self.reconnect_started is not None
        give_up = c.reconnect_give_up_s
        if self._server_shut_down:
            give_up = min(give_up, self._grace_s + cfg.RECONNECT_AFTER_SHUTDOWN_MARGIN_S)
        deadline = self.reconnect_started + give_up
        delay = c.reconnect_backoff_first_s
        while not self._done.is_set():
            self._attempts += 1
            attempt = self._attempts
            left = deadline - time.monotonic()
            try:
                sock, welcome = self._rejoin(
                    attempt, max(0.1, min(cfg.RECONNECT_TRY_TIMEOUT_S, left))
                )
            except JoinError as exc:
                reason = str(exc)
                log.debug("reconnect try %d failed: %s", attempt, exc)
                if exc.code in _FINAL_JOIN_CODES:
                    break
            else:
                if self._resume_link(sock, welcome):
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            jitter = random.uniform(1 - cfg.RECONNECT_JITTER, 1 + cfg.RECONNECT_JITTER)
            if self._done.wait(min(left, delay * jitter)):
                return
            delay = min(delay * 2, c.reconnect_backoff_max_s)
        if not self._done.is_set():
            self._shutdown(f"could not reconnect within {give_up:.0f} s: {reason}")

    def _rejoin(self, attempt: int, timeout: float) -> tuple[socket.socket, dict[str, Any]]:
        """One try: ``resume`` the kept place; if it is gone, ``hello`` the same session."""
        assert self.session is not None and self.username is not None
        resume = {
            "type": Msg.RESUME,
            "protocol": cfg.PROTOCOL_VERSION,
            "session": self.session,
            "id": self.my_id,
            "secret": self._resume_secret or "",
            "last_seq": self.chat.last_seq or 0,
            "attempt": attempt,
        }
        try:
            return self._open_control(resume, timeout, cfg.RECONNECT_CONNECT_TIMEOUT_S)
        except JoinError as exc:
            if exc.code != Err.RESUME_FAILED:
                raise
        log.info("the server no longer keeps our place; joining %r again", self.session)
        hello = {
            "type": Msg.HELLO,
            "protocol": cfg.PROTOCOL_VERSION,
            "username": self.username,
            "session": self.session,
            "password": self._password,
        }
        return self._open_control(hello, timeout, cfg.RECONNECT_CONNECT_TIMEOUT_S)

    def _resume_link(self, sock: socket.socket, welcome: dict[str, Any]) -> bool:
        """Adopt the welcome of a successful try, start the link, resend the outbox.

        False if the new link failed at once (the caller tries again).
        """
        with self._state_lock:  # a hand we had up is raised again on a new server
            hand_up = self.my_id in self.meeting.get("hands", [])
        try:  # the new welcome's media key replaces the cipher; UDP registers again below
            self._adopt_welcome(welcome)  # emits the missed chat (no lock held)
        except JoinError as exc:
            log.info("the new welcome was unusable: %s", exc)
            sock.close()
            return False
        with self._close_lock:
            if self._closed:
                sock.close()
                return True
            self.reconnecting = False  # before the link starts: its first UDP register goes
            try:
                self._start_link(sock)
            except OSError as exc:
                log.info("the new connection failed at once: %s", exc)
                self.reconnecting, self.connected = True, False
                for s in (sock, self._udp):
                    if s is not None:
                        s.close()
                return False
            self.reconnect_started = None
            self.reconnects += 1
        with self._outbox_lock:
            pending = self.outbox.pending()
        for header in pending:
            try:
                self._send(header)
            except (OSError, NotConnected) as exc:
                log.debug("outbox resend stopped: %s", exc)
                break
        if hand_up and not welcome.get("resumed"):  # a resumed place kept its hand
            self._send({"type": Msg.RAISE_HAND})
        how = "resumed" if welcome.get("resumed") else f"rejoined as new (id {self.my_id})"
        log.info("reconnected to %r: %s", self.session, how)
        self._emit("reconnected", welcome)
        return True
