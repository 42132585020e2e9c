"""The client's network edge: its errors and the TLS control connection (split from client.py).

``open_secure`` makes every TCP connection of the client (control, and the
reconnect thread's), checked against the trust store or pinned to a known
fingerprint; a refusal at accept (plain ``too_many_connections`` /
``server_full`` before TLS) is reported with its code. ``JoinError``,
``RequestError`` and ``NotConnected`` are re-exported by client.py.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import config as cfg
import history
import media_crypto
import security
import utils
from utils import Err, FusionError, LocalErr, Msg

log = logging.getLogger("client")


class JoinError(FusionError):
    """Joining failed: ``code`` is the server's error code, ``LocalErr.UNREACHABLE`` or a
    ``security.SecErr`` code (TLS or trust). For ``fingerprint_unknown``,
    ``fingerprint_changed`` and ``fingerprint_mismatch``: ``address`` (``host:port``),
    ``fingerprint`` (full hex, what the server presented) and ``old`` (what was pinned
    or expected), so the caller can show them and pin the new one on purpose.
    """

    def __init__(
        self,
        code: str | None = None,
        message: str | None = None,
        *,
        address: str = "",
        fingerprint: str = "",
        old: str = "",
    ) -> None:
        super().__init__(code, message)
        self.address, self.fingerprint, self.old = address, fingerprint, old

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class RequestError(FusionError):
    """A request (e.g. ``file_offer``) was answered with an ``error`` frame."""

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotConnected(FusionError, ConnectionError):
    """A send was attempted on a client that is not (or no longer) connected."""

    def __init__(self, message: str = "not connected to a server") -> None:
        super().__init__(LocalErr.NOT_CONNECTED, message)


def _joined_welcome(joined: history.JoinAssembler) -> dict[str, Any]:
    """The welcome with the lists its ``history`` frames completed (PROTOCOL.md 3)."""
    assert joined.welcome is not None
    return {
        **joined.welcome,
        "participants": list(joined.participants.values()),
        "files": list(joined.files.values()),
        "chat": joined.chat,
    }


_TLS_CONTEXT: Any = None  # security.client_context(), made once on first use


def open_secure(
    host: str,
    port: int,
    timeout: float,
    store: security.TrustStore | None,
    expected_fingerprint: str | None = None,
    trust_first_use: bool = False,
    connect_timeout: float | None = None,
) -> security.TLSStream:
    """A TLS connection to ``host:port`` whose certificate passed the trust check.

    Every TCP connection of a client (control, resume, list_sessions, file data) is made
    here. ``connect_timeout`` (default ``timeout``) bounds the TCP connect alone.
    Raises ``JoinError``: ``LocalErr.UNREACHABLE``, a TLS failure (``tls_failed``,
    ``tls_timeout``) or a trust verdict (``fingerprint_unknown``, ``fingerprint_changed``,
    ``fingerprint_mismatch``, with ``address``, ``fingerprint`` and ``old``).
    """
    global _TLS_CONTEXT
    if _TLS_CONTEXT is None:
        _TLS_CONTEXT = security.client_context()
    try:
        raw = socket.create_connection(
            (host, port), timeout=timeout if connect_timeout is None else connect_timeout
        )
    except OSError as exc:
        raise JoinError(LocalErr.UNREACHABLE, _unreachable_text(host, port, exc)) from None
    address = security.server_address(host, port)
    try:
        return security.client_handshake(
            raw, _TLS_CONTEXT, address, store, timeout, expected_fingerprint, trust_first_use
        )
    except security.TrustError as exc:  # before HandshakeError: it is one
        raise JoinError(
            exc.code,
            exc.message,
            address=exc.address,
            fingerprint=exc.fingerprint,
            old=exc.old or "",
        ) from None
    except security.HandshakeError as exc:
        refusal = _plain_refusal(host, port)
        if refusal is not None:  # refused at accept (PROTOCOL.md 11): say why
            raise JoinError(refusal.get("code", exc.code), refusal.get("message", "")) from None
        raise JoinError(
            exc.code,
            f"No secure connection to the server at {host}:{port}: {exc.message} "
            "(an older FusionMeet server cannot be used: update it).",
        ) from None
    except security.TrustStoreError as exc:
        raise JoinError(exc.code, exc.message) from None


def _media_cipher(media: dict[str, Any]) -> media_crypto.MediaCipher:
    """The client's cipher for the media key a welcome gives (JoinError if unusable)."""
    if media.get("cipher") != media_crypto.CIPHER_NAME:
        raise JoinError(Err.BAD_MESSAGE, f"unknown media cipher {media.get('cipher')!r}")
    try:
        return media_crypto.MediaCipher(bytes.fromhex(media["key"]), media_crypto.CLIENT_SIDE)
    except (KeyError, TypeError, ValueError, security.SecurityError) as exc:
        raise JoinError(Err.BAD_MESSAGE, f"the welcome's media key is unusable: {exc}") from None


def _plain_refusal(host: str, port: int) -> dict[str, Any] | None:
    """After a failed TLS handshake: the plain ``error`` a server gives a connection it
    refuses at accept (``too_many_connections``, ``server_full``), or None.

    One more connection, read for at most ``cfg.PLAIN_REFUSAL_PROBE_S``; a server that
    accepts it waits for TLS and sends nothing, so the probe just ends.
    """
    try:
        with socket.create_connection((host, port), timeout=cfg.PLAIN_REFUSAL_PROBE_S) as s:
            s.settimeout(cfg.PLAIN_REFUSAL_PROBE_S)
            frame = utils.FrameReader(s).read()
            utils.validate_server_message(frame.header)
    except (OSError, utils.ConnectionClosed, utils.ProtocolError):
        return None
    if frame.type != Msg.ERROR or frame.header["code"] not in _REFUSED_AT_ACCEPT:
        return None
    return frame.header


_REFUSED_AT_ACCEPT = frozenset({Err.TOO_MANY_CONNECTIONS, Err.SERVER_FULL})


def _unreachable_text(host: str, port: int, exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        why = "it did not answer in time"
    elif isinstance(exc, ConnectionRefusedError):
        why = "nothing is listening on that port"
    elif isinstance(exc, socket.gaierror):
        why = "that host name is unknown"
    elif isinstance(exc, utils.ConnectionClosed):
        why = "it closed the connection"
    else:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"Could not reach the server at {host}:{port}: {why}."


def list_sessions(
    host: str,
    tcp_port: int = cfg.DEFAULT_TCP_PORT,
    timeout: float = cfg.CONNECT_TIMEOUT_S,
    trust_store: security.TrustStore | None = None,
    expected_fingerprint: str | None = None,
    trust_first_use: bool = False,
) -> list[dict[str, Any]]:
    """Ask a server for its sessions (over TLS, trust checked as ``connect`` does).

    Raises JoinError(LocalErr.UNREACHABLE, ...), or a TLS/trust JoinError.
    """
    store = trust_store if trust_store is not None else security.TrustStore()
    tls = open_secure(host, tcp_port, timeout, store, expected_fingerprint, trust_first_use)
    try:
        with tls as sock:
            sock.settimeout(timeout)
            sock.sendall(utils.encode_frame({"type": Msg.LIST_SESSIONS}))
            frame = utils.FrameReader(sock).read()
    except (OSError, utils.ProtocolError) as exc:
        raise JoinError(LocalErr.UNREACHABLE, _unreachable_text(host, tcp_port, exc)) from None
    try:
        utils.validate_server_message(frame.header)
    except utils.ProtocolError as exc:
        raise JoinError(Err.BAD_MESSAGE, f"unexpected answer {frame.header!r}: {exc}") from None
    if frame.type == Msg.ERROR:
        raise JoinError(frame.header["code"], frame.header.get("message", ""))
    if frame.type != Msg.SESSIONS:
        raise JoinError(Err.BAD_MESSAGE, f"unexpected answer {frame.header!r}")
    return frame.header["sessions"]


def handshake(
    sock: Any,
    hello: dict[str, Any],
    timeout: float,
    ping_interval_s: float,
    emit: Callable[..., None],
    host: str,
    port: int,
) -> dict[str, Any]:
    """Send ``hello`` (or ``resume``) and read the welcome and its history frames.

    In a lobby (``lobby_wait``, PROTOCOL.md 12.2.3) ``emit("lobby_waiting", message,
    recording)`` is called and the wait pings every ``ping_interval_s`` until a host
    answers, for up to ``MEETING_LOBBY_MAX_WAIT_S``. Raises ``JoinError``.
    """
    deadline = time.monotonic() + timeout
    reader = utils.FrameReader(sock)
    joined = history.JoinAssembler()
    try:
        sock.sendall(utils.encode_frame(hello))
        waiting = False  # in a lobby: ping every heartbeat interval while waiting
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no welcome in time")
            buffered = getattr(sock, "pending", None)  # bytes TLS holds, unseen by select
            if waiting and not (buffered is not None and buffered()):
                ready, _, _ = select.select([sock], [], [], ping_interval_s)
                if not ready:
                    sock.sendall(utils.encode_frame({"type": Msg.PING}))
                    continue
            sock.settimeout(left)
            frame = reader.read()
            if frame.type == Msg.LOBBY_WAIT:
                waiting = True  # a host must let us in: wait longer
                utils.validate_server_message(frame.header)
                deadline = time.monotonic() + cfg.MEETING_LOBBY_MAX_WAIT_S + timeout
                h = frame.header
                emit("lobby_waiting", h.get("message", ""), h.get("recording", False))
                continue
            wanted = (Msg.WELCOME, Msg.ERROR) if joined.welcome is None else (Msg.HISTORY,)
            if frame.type not in wanted:
                log.debug("ignoring %r before the join completes", frame.type)
                continue
            utils.validate_server_message(frame.header)
            if frame.type == Msg.ERROR:
                code = frame.header["code"]
                raise JoinError(code, frame.header.get("message") or code)
            if joined.add(frame.header):
                return _joined_welcome(joined)
            deadline = time.monotonic() + timeout  # each history frame has its own time
    except utils.ProtocolError as exc:
        raise JoinError(Err.BAD_MESSAGE, f"The server's answer was malformed: {exc}") from None
    except (OSError, utils.ConnectionClosed) as exc:
        raise JoinError(LocalErr.UNREACHABLE, _unreachable_text(host, port, exc)) from None
