"""Fair limits per client: pure rate and quota primitives, the clock passed in.

Nothing here reads a clock, opens a socket or starts a thread (``DeadlineSocket``
wraps a socket it is given, with a clock it is given). Times are seconds on a
monotonic clock (``time.monotonic()`` in the server, numbers in the tests).
None of the classes lock: the server calls them under the lock that guards
what they count (its ``_lock`` for sessions, chat and offers, its
``_conn_lock`` for connections).

A refused request gets a ``Refusal``: an error code, a sentence naming the
real reason, and extra fields for the ``error`` frame (``retry_after_s``,
``limit``, ``reason``). The codes are listed in ``LimitErr`` until they move
into ``utils.Err`` when issue 13 is integrated (utils.py is the one
definition of the wire; it is being restructured elsewhere right now).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import config
import utils

# --- Error codes (move into utils.Err / utils.ERROR_TEXT at integration) -----------


class LimitErr:
    """Machine codes of the fair-limit refusals (defined in utils.Err; aliases here)."""

    RATE_LIMITED = utils.Err.RATE_LIMITED
    TOO_MANY_CONNECTIONS = utils.Err.TOO_MANY_CONNECTIONS
    TOO_MANY_SESSIONS = utils.Err.TOO_MANY_SESSIONS
    TOO_MANY_OFFERS = utils.Err.TOO_MANY_OFFERS
    QUOTA_EXCEEDED = utils.Err.QUOTA_EXCEEDED
    SERVER_FULL = utils.Err.SERVER_FULL  # unchanged code; ``reason`` says which limit
    TIMEOUT = utils.Err.TIMEOUT


class FullReason:
    """The ``reason`` field of a ``server_full`` error: which server-wide limit was hit."""

    CONNECTIONS = "connections"
    SESSIONS = "sessions"
    IDS = "ids"
    DISK = "disk"


class Scope:
    """What a per-key limit counts by (the ``scope`` field of an error)."""

    PARTICIPANT = "participant"
    SESSION = "session"
    ADDRESS = "address"


# The default sentence of each code (utils.ERROR_TEXT is the one definition).
LIMIT_ERROR_TEXT: dict[str, str] = {
    code: utils.ERROR_TEXT[code]
    for code in (
        LimitErr.RATE_LIMITED,
        LimitErr.TOO_MANY_CONNECTIONS,
        LimitErr.TOO_MANY_SESSIONS,
        LimitErr.TOO_MANY_OFFERS,
        LimitErr.QUOTA_EXCEEDED,
    )
}

SERVER_FULL_TEXT: dict[str, str] = {
    FullReason.CONNECTIONS: "The server is serving as many connections as it can.",
    FullReason.SESSIONS: "The server has as many sessions as it can hold.",
    FullReason.IDS: "The server has used every participant id; restart it.",
    FullReason.DISK: "The server's disk has no room for this file.",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: an error code, a sentence, extra error-frame fields."""

    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, re: str | None = None) -> dict[str, Any]:
        """The ``error`` frame header for this refusal (``re`` = the refused message type)."""
        return utils.error_header(self.code, self.message, re=re, **self.extra)


def server_full(reason: str, limit: int | None = None) -> Refusal:
    """A ``server_full`` refusal that names the limit really reached."""
    extra: dict[str, Any] = {"reason": reason}
    if limit is not None:
        extra["limit"] = limit
    return Refusal(LimitErr.SERVER_FULL, SERVER_FULL_TEXT[reason], extra)


def _retry_after(seconds: float) -> float:
    # Rounded up to 0.1 s so a client that waits exactly this long is served.
    return math.ceil(max(0.0, seconds) * 10) / 10


# --- Token bucket ---------------------------------------------------------------------


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate_per_s``; a request takes ``n``.

    Starts full. A clock that steps backwards refills nothing (and is not an
    error). A request for more than ``burst`` can never succeed.
    """

    def __init__(self, rate_per_s: float, burst: float, now: float = 0.0) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate_per_s and burst must be positive")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
            self._last = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now``."""
        self._refill(now)
        return self._tokens

    def can_take(self, now: float, n: float = 1) -> bool:
        """Whether ``take(now, n)`` would succeed (takes nothing)."""
        return self.tokens(now) >= n

    def take(self, now: float, n: float = 1) -> bool:
        """Take ``n`` tokens if there are that many; True if taken."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if not self.can_take(now, n):
            return False
        self._tokens -= n
        return True

    def retry_after(self, now: float, n: float = 1) -> float:
        """Seconds until ``n`` tokens are there (0 if now; ``inf`` if more than ``burst``)."""
        if n > self.burst:
            return math.inf
        missing = n - self.tokens(now)
        return max(0.0, missing / self.rate_per_s)


class ChatLimiter:
    """One participant's chat allowance: a bucket of messages and a bucket of bytes.

    A message is sent only if both buckets have room; then both are charged, so
    a refused message costs nothing.
    """

    def __init__(
        self,
        now: float = 0.0,
        messages_per_s: float = config.CHAT_RATE_MESSAGES_PER_S,
        burst_messages: int = config.CHAT_BURST_MESSAGES,
        bytes_per_s: float = config.CHAT_RATE_BYTES_PER_S,
        burst_bytes: int = config.CHAT_BURST_BYTES,
    ) -> None:
        self.messages = TokenBucket(messages_per_s, burst_messages, now)
        self.bytes = TokenBucket(bytes_per_s, burst_bytes, now)

    def check(self, now: float, nbytes: int) -> Refusal | None:
        """Charge one message of ``nbytes`` UTF-8 bytes, or say why it must wait."""
        if self.messages.can_take(now) and self.bytes.can_take(now, nbytes):
            self.messages.take(now)
            self.bytes.take(now, nbytes)
            return None
        wait = max(self.messages.retry_after(now), self.bytes.retry_after(now, nbytes))
        return Refusal(
            LimitErr.RATE_LIMITED,
            LIMIT_ERROR_TEXT[LimitErr.RATE_LIMITED],
            {"retry_after_s": _retry_after(wait)},
        )


# --- Concurrent things per key --------------------------------------------------------


class PerKeyCounter:
    """How many of something each key holds at once (e.g. connections per address).

    ``acquire`` fails at ``cap``; ``release`` gives one back. Keys at zero are
    forgotten, so memory follows what is held, not every address ever seen.
    """

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self._held: dict[Hashable, int] = {}

    def acquire(self, key: Hashable) -> bool:
        """Take one for ``key``; False (nothing taken) if it already holds ``cap``."""
        held = self._held.get(key, 0)
        if held >= self.cap:
            return False
        self._held[key] = held + 1
        return True

    def release(self, key: Hashable) -> None:
        """Give one back; releasing what was never acquired is a bug (``ValueError``)."""
        held = self._held.get(key, 0)
        if held <= 0:
            raise ValueError(f"release of {key!r}, which holds nothing")
        if held == 1:
            del self._held[key]
        else:
            self._held[key] = held - 1

    def count(self, key: Hashable) -> int:
        return self._held.get(key, 0)

    @property
    def total(self) -> int:
        return sum(self._held.values())

    def __len__(self) -> int:
        """Keys holding at least one."""
        return len(self._held)


class ConnectionLimiter:
    """Connections open: at most ``max_total`` on the server, ``per_address`` per address.

    ``acquire`` answers with the real reason when it refuses: the whole server
    full (``server_full``, reason ``connections``) or this address over its
    share (``too_many_connections``).
    """

    def __init__(
        self,
        max_total: int = config.SERVER_MAX_CONNECTIONS,
        per_address: int = config.MAX_CONNECTIONS_PER_ADDRESS,
    ) -> None:
        self.max_total = max_total
        self._per_address = PerKeyCounter(per_address)
        self._total = 0

    def acquire(self, address: str) -> Refusal | None:
        if self._per_address.count(address) >= self._per_address.cap:
            return Refusal(
                LimitErr.TOO_MANY_CONNECTIONS,
                LIMIT_ERROR_TEXT[LimitErr.TOO_MANY_CONNECTIONS],
                {"limit": self._per_address.cap},
            )
        if self._total >= self.max_total:
            return server_full(FullReason.CONNECTIONS, self.max_total)
        self._per_address.acquire(address)
        self._total += 1
        return None

    def release(self, address: str) -> None:
        self._per_address.release(address)
        self._total -= 1

    def count(self, address: str) -> int:
        return self._per_address.count(address)

    @property
    def total(self) -> int:
        return self._total


# --- Events per key per time window ---------------------------------------------------


class SlidingWindowCounter:
    """At most ``limit`` events per key within any ``window_s`` seconds.

    ``allowed`` asks, ``record`` counts one (only events that happened are
    recorded: a refused session creation does not count against the next
    minute). Per key at most ``limit`` times are kept; keys whose events all
    left the window are dropped at most once per window.
    """

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = float(window_s)
        self._events: dict[Hashable, deque[float]] = {}
        self._next_prune: float | None = None

    def _live(self, key: Hashable, now: float) -> deque[float] | None:
        times = self._events.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._events[key]
            return None
        return times

    def count(self, key: Hashable, now: float) -> int:
        """Events of ``key`` within the window ending at ``now``."""
        times = self._live(key, now)
        return len(times) if times else 0

    def allowed(self, key: Hashable, now: float) -> bool:
        return self.count(key, now) < self.limit

    def record(self, key: Hashable, now: float) -> None:
        """Count one event (even over the limit: the caller decided it happened)."""
        self.prune(now)
        times = self._events.setdefault(key, deque(maxlen=self.limit))
        times.append(now)

    def hit(self, key: Hashable, now: float) -> bool:
        """``allowed`` then ``record``; False (nothing recorded) when over the limit."""
        if not self.allowed(key, now):
            return False
        self.record(key, now)
        return True

    def retry_after(self, key: Hashable, now: float) -> float:
        """Seconds until ``key`` may have one more event (0 if now)."""
        times = self._live(key, now)
        if not times or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window_s - now)

    def prune(self, now: float) -> None:
        """Forget keys with no event in the window (done at most once per window)."""
        if self._next_prune is not None and now < self._next_prune:
            return
        self._next_prune = now + self.window_s
        for key in list(self._events):
            self._live(key, now)

    def __len__(self) -> int:
        """Keys remembered (some may have expired since the last prune)."""
        return len(self._events)


class SessionCreationLimiter:
    """Sessions created per address per window (``too_many_sessions`` when over)."""

    def __init__(
        self,
        limit: int = config.MAX_SESSIONS_CREATED_PER_ADDRESS,
        window_s: float = config.SESSION_CREATE_WINDOW_S,
    ) -> None:
        self.window = SlidingWindowCounter(limit, window_s)

    def check(self, address: str, now: float) -> Refusal | None:
        """None if ``address`` may create a session now (call ``created`` when it does)."""
        if self.window.allowed(address, now):
            return None
        return Refusal(
            LimitErr.TOO_MANY_SESSIONS,
            LIMIT_ERROR_TEXT[LimitErr.TOO_MANY_SESSIONS],
            {
                "limit": self.window.limit,
                "window_s": self.window.window_s,
                "retry_after_s": _retry_after(self.window.retry_after(address, now)),
            },
        )

    def created(self, address: str, now: float) -> None:
        self.window.record(address, now)


# --- File offers and the disk they reserve --------------------------------------------


@dataclass(slots=True)
class _Reservation:
    offer_id: str
    keys: dict[str, Hashable]  # scope -> participant id, session key, address
    size: int
    deadline: float
    started: bool = False


@dataclass(frozen=True, slots=True)
class ReservationCaps:
    """Offers and reserved bytes allowed per scope (None: no cap for that scope)."""

    offers: dict[str, int | None]
    bytes: dict[str, int | None]

    @classmethod
    def default(cls) -> ReservationCaps:
        return cls(
            offers={
                Scope.PARTICIPANT: config.MAX_OPEN_OFFERS_PER_PARTICIPANT,
                Scope.SESSION: config.MAX_OPEN_OFFERS_PER_SESSION,
                Scope.ADDRESS: config.MAX_OPEN_OFFERS_PER_ADDRESS,
            },
            bytes={
                Scope.PARTICIPANT: config.MAX_RESERVED_BYTES_PER_PARTICIPANT,
                Scope.SESSION: config.MAX_RESERVED_BYTES_PER_SESSION,
                Scope.ADDRESS: config.MAX_RESERVED_BYTES_PER_ADDRESS,
            },
        )


def reservation_ledger(cfg: config.ServerConfig) -> ReservationLedger:
    """The ledger a server with ``cfg`` uses: its caps, start and stall timeouts."""
    caps = ReservationCaps(
        offers={
            Scope.PARTICIPANT: cfg.max_open_offers_per_participant,
            Scope.SESSION: cfg.max_open_offers_per_session,
            Scope.ADDRESS: cfg.max_open_offers_per_address,
        },
        bytes={
            Scope.PARTICIPANT: cfg.max_reserved_bytes_per_participant,
            Scope.SESSION: cfg.max_reserved_bytes_per_session,
            Scope.ADDRESS: cfg.max_reserved_bytes_per_address,
        },
    )
    return ReservationLedger(caps, cfg.file_offer_start_timeout_s, cfg.file_idle_timeout_s)


_SCOPE_WORDS = {
    Scope.PARTICIPANT: "you have",
    Scope.SESSION: "this session has",
    Scope.ADDRESS: "your address has",
}


class ReservationLedger:
    """File offers not yet stored, and the bytes they reserve, per participant/session/address.

    An offer reserves its size from ``reserve`` until ``release`` (upload
    stored, failed, cancelled, the participant left or the session ended) or
    until it stalls: not started within ``start_timeout_s`` of the offer, or no
    byte for ``stall_timeout_s`` once started (``progress`` pushes that on).
    ``expire(now)`` releases the stalled ones and names them, so the caller can
    cancel them in the file store. ``total_bytes`` is what the disk check must
    keep free.
    """

    def __init__(
        self,
        caps: ReservationCaps | None = None,
        start_timeout_s: float = config.FILE_OFFER_START_TIMEOUT_S,
        stall_timeout_s: float = config.FILE_IDLE_TIMEOUT_S,
    ) -> None:
        self.caps = caps or ReservationCaps.default()
        self.start_timeout_s = start_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self._by_id: dict[str, _Reservation] = {}
        # (scope, key) -> [offers, bytes]; entries at zero are deleted.
        self._usage: dict[tuple[str, Hashable], list[int]] = {}
        self.total_bytes = 0

    def usage(self, scope: str, key: Hashable) -> tuple[int, int]:
        """(offers, bytes) reserved under ``key`` in ``scope``."""
        offers, nbytes = self._usage.get((scope, key), (0, 0))
        return offers, nbytes

    def reserve(
        self,
        offer_id: str,
        *,
        participant: Hashable,
        session: Hashable,
        address: Hashable,
        size: int,
        now: float,
    ) -> Refusal | None:
        """Reserve ``size`` bytes for a new offer, or say which cap it would pass.

        Call ``expire(now)`` first (and cancel the offers it names in the file
        store), so stalled offers do not count against this one.
        """
        if offer_id in self._by_id:
            raise ValueError(f"offer {offer_id!r} is already reserved")
        if size < 0:
            raise ValueError("size must be >= 0")
        keys = {Scope.PARTICIPANT: participant, Scope.SESSION: session, Scope.ADDRESS: address}
        for scope, key in keys.items():
            offers, nbytes = self.usage(scope, key)
            cap = self.caps.offers.get(scope)
            if cap is not None and offers + 1 > cap:
                return Refusal(
                    LimitErr.TOO_MANY_OFFERS,
                    f"{_SCOPE_WORDS[scope].capitalize()} {offers} files waiting to be "
                    f"uploaded; the limit is {cap}.",
                    {"scope": scope, "limit": cap},
                )
            cap = self.caps.bytes.get(scope)
            if cap is not None and nbytes + size > cap:
                return Refusal(
                    LimitErr.QUOTA_EXCEEDED,
                    f"Files waiting to be uploaded: {_SCOPE_WORDS[scope]} "
                    f"{_human(nbytes)} reserved of {_human(cap)}; this one needs {_human(size)}.",
                    {"scope": scope, "limit": cap},
                )
        self._by_id[offer_id] = _Reservation(offer_id, keys, size, now + self.start_timeout_s)
        self._add(keys, 1, size)
        return None

    def _add(self, keys: dict[str, Hashable], offers: int, nbytes: int) -> None:
        for scope, key in keys.items():
            entry = self._usage.setdefault((scope, key), [0, 0])
            entry[0] += offers
            entry[1] += nbytes
            if entry[0] == 0:
                del self._usage[(scope, key)]
        self.total_bytes += nbytes

    def started(self, offer_id: str, now: float) -> bool:
        """The upload began: from now on it must not stall. False if not reserved (expired)."""
        res = self._by_id.get(offer_id)
        if res is None:
            return False
        res.started = True
        res.deadline = now + self.stall_timeout_s
        return True

    def progress(self, offer_id: str, now: float) -> bool:
        """Bytes arrived: the stall deadline moves on. False if not reserved any more."""
        res = self._by_id.get(offer_id)
        if res is None or not res.started:
            return False
        res.deadline = now + self.stall_timeout_s
        return True

    def release(self, offer_id: str) -> bool:
        """End a reservation (stored, failed or cancelled); False if it was not held."""
        res = self._by_id.pop(offer_id, None)
        if res is None:
            return False
        self._add(res.keys, -1, -res.size)
        return True

    def release_where(self, scope: str, key: Hashable) -> list[str]:
        """End every reservation of a participant, session or address; their ids."""
        ids = [r.offer_id for r in self._by_id.values() if r.keys[scope] == key]
        for offer_id in ids:
            self.release(offer_id)
        return ids

    def expire(self, now: float) -> list[str]:
        """Release offers not started in time and uploads that stalled; their ids."""
        ids = [r.offer_id for r in self._by_id.values() if now >= r.deadline]
        for offer_id in ids:
            self.release(offer_id)
        return ids

    def __contains__(self, offer_id: object) -> bool:
        return offer_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    raise AssertionError(n)


# --- Absolute deadlines for socket reads ----------------------------------------------


class DeadlineExpired(TimeoutError):
    """The deadline passed before the whole frame arrived."""


@dataclass(slots=True)
class Deadline:
    """A moment computed once (e.g. at accept) that every later read must beat.

    The pattern for blocking reads: before *each* ``recv``, set the socket's
    timeout to what is left, ``remaining = deadline - now``; when nothing is
    left, stop. A peer trickling one byte every 4 s is then cut at 10 s, where
    ``settimeout(10)`` once would have let each byte restart the wait::

        deadline = Deadline.after(time.monotonic(), config.FIRST_FRAME_TIMEOUT_S)
        while need:
            sock.settimeout(deadline.timeout(time.monotonic()))  # DeadlineExpired at 0
            got = sock.recv_into(view, need)

    ``DeadlineSocket`` does exactly this for ``utils.FrameReader``.
    """

    expires: float

    @classmethod
    def after(cls, now: float, seconds: float) -> Deadline:
        return cls(now + seconds)

    def remaining(self, now: float) -> float:
        """Seconds left (0 when passed)."""
        return max(0.0, self.expires - now)

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def timeout(self, now: float) -> float:
        """The socket timeout for the next read; ``DeadlineExpired`` if none is left.

        Never 0: ``settimeout(0)`` would make the socket non-blocking, not expired.
        """
        left = self.expires - now
        if left <= 0:
            raise DeadlineExpired(f"deadline passed {-left:.3f} s ago")
        return left


def first_frame_deadline(
    accepted_at: float, timeout_s: float = config.FIRST_FRAME_TIMEOUT_S
) -> Deadline:
    """The moment a new connection's whole first frame must have arrived by."""
    return Deadline.after(accepted_at, timeout_s)


class DeadlineSocket:
    """A socket whose every ``recv_into`` must finish before one ``Deadline``.

    Give it to ``utils.FrameReader`` for the first frame (``reader.read()``
    then raises ``DeadlineExpired``, a ``TimeoutError``, however the bytes
    trickle), then use the bare socket (and the heartbeat timeout) once joined.
    ``clock`` is ``time.monotonic`` in the server, a fake in tests.
    """

    def __init__(self, sock: Any, deadline: Deadline, clock: Callable[[], float]) -> None:
        self.sock = sock
        self.deadline = deadline
        self.clock = clock

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        self.sock.settimeout(self.deadline.timeout(self.clock()))
        try:
            return self.sock.recv_into(buf, nbytes)
        except TimeoutError:  # socket.timeout is TimeoutError
            raise DeadlineExpired("no complete frame before the deadline") from None
