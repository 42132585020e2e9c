"""limits: token buckets, per-address counters, sliding windows, reservations, deadlines.

Every test drives the clock itself: times are plain numbers, nothing sleeps.
"""

from __future__ import annotations

import math
import socket

import pytest

import config
import limits
import utils
from limits import (
    ChatLimiter,
    ConnectionLimiter,
    Deadline,
    DeadlineExpired,
    DeadlineSocket,
    FullReason,
    LimitErr,
    PerKeyCounter,
    ReservationCaps,
    ReservationLedger,
    Scope,
    SessionCreationLimiter,
    SlidingWindowCounter,
    TokenBucket,
)

# --- TokenBucket ----------------------------------------------------------------------


def test_bucket_starts_full_and_refuses_past_the_burst() -> None:
    b = TokenBucket(rate_per_s=4, burst=3, now=100.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert b.retry_after(100.0) == 0.25


def test_bucket_refills_at_its_rate_and_never_above_the_burst() -> None:
    b = TokenBucket(rate_per_s=4, burst=3, now=0.0)
    for _ in range(3):
        assert b.take(0.0)
    assert not b.take(0.125)  # half a token
    assert b.take(0.25)  # one token
    assert not b.take(0.25)
    assert b.tokens(1000.0) == 3  # a long pause refills to the burst, no more
    assert [b.take(1000.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_takes_n_at_once_or_nothing() -> None:
    b = TokenBucket(rate_per_s=1, burst=10, now=0.0)
    assert b.take(0.0, 7)
    assert not b.take(0.0, 4)  # refused: nothing taken
    assert b.tokens(0.0) == 3
    assert b.take(0.0, 3)
    assert b.take(0.0, 0)  # zero always fits


def test_bucket_request_over_the_burst_never_succeeds() -> None:
    b = TokenBucket(rate_per_s=1, burst=5, now=0.0)
    assert not b.take(1e9, 6)
    assert b.retry_after(0.0, 6) == math.inf


def test_bucket_clock_stepping_back_refills_nothing() -> None:
    b = TokenBucket(rate_per_s=1, burst=2, now=10.0)
    assert b.take(10.0) and b.take(10.0)
    assert not b.take(5.0)  # earlier than last seen
    assert not b.take(10.5)
    assert b.take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 5)])
def test_bucket_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError):
        TokenBucket(1, 1).take(0.0, -1)


# --- ChatLimiter ------------------------------------------------------------------------


def test_chat_limiter_allows_the_burst_then_refuses_with_rate_limited() -> None:
    lim = ChatLimiter(
        now=0.0, messages_per_s=2, burst_messages=3, bytes_per_s=1000, burst_bytes=10**6
    )
    assert [lim.check(0.0, 10) for _ in range(3)] == [None, None, None]
    refusal = lim.check(0.0, 10)
    assert refusal is not None
    assert refusal.code == LimitErr.RATE_LIMITED == "rate_limited"
    assert refusal.extra == {"retry_after_s": 0.5}
    header = refusal.header(re=utils.Msg.CHAT)
    assert header["type"] == "error" and header["re"] == "chat"
    assert header["retry_after_s"] == 0.5 and "too fast" in header["message"]
    assert lim.check(0.5, 10) is None  # one message refilled


def test_chat_limiter_counts_bytes_and_a_refusal_costs_nothing() -> None:
    lim = ChatLimiter(
        now=0.0, messages_per_s=100, burst_messages=100, bytes_per_s=1000, burst_bytes=4000
    )
    assert lim.check(0.0, 3000) is None
    refusal = lim.check(0.0, 2000)  # 1000 bytes left
    assert refusal is not None and refusal.extra["retry_after_s"] == 1.0
    assert lim.messages.tokens(0.0) == 99  # the refused message took no message token
    assert lim.check(0.0, 1000) is None  # a smaller one still fits


def test_chat_flood_is_held_to_the_configured_rate() -> None:
    # 10,000 messages of 3,980 characters (the issue's flood) over 10 simulated seconds.
    lim = ChatLimiter(now=0.0)
    nbytes = 3980
    sent = sum(lim.check(i / 1000, nbytes) is None for i in range(10_000))
    allowed_bytes = config.CHAT_BURST_BYTES + 10 * config.CHAT_RATE_BYTES_PER_S
    allowed_msgs = config.CHAT_BURST_MESSAGES + 10 * config.CHAT_RATE_MESSAGES_PER_S
    assert 0 < sent <= min(allowed_bytes // nbytes + 1, allowed_msgs)
    # while a person typing a line every 2 s is never refused
    person = ChatLimiter(now=0.0)
    assert all(person.check(t * 2.0, 200) is None for t in range(100))


def test_worst_case_message_fits_the_byte_burst() -> None:
    worst = len(("\U0001f600" * config.MAX_CHAT_CHARS).encode("utf-8"))
    assert worst * 4 <= config.CHAT_BURST_BYTES
    lim = ChatLimiter(now=0.0)
    assert lim.check(0.0, worst) is None


# --- PerKeyCounter, ConnectionLimiter ---------------------------------------------------


def test_per_key_counter_caps_each_key_and_forgets_keys_at_zero() -> None:
    c = PerKeyCounter(cap=2)
    assert c.acquire("10.0.0.1") and c.acquire("10.0.0.1")
    assert not c.acquire("10.0.0.1")
    assert c.acquire("10.0.0.2")
    assert (c.count("10.0.0.1"), c.total, len(c)) == (2, 3, 2)
    c.release("10.0.0.1")
    assert c.acquire("10.0.0.1")
    for _ in range(2):
        c.release("10.0.0.1")
    c.release("10.0.0.2")
    assert (c.total, len(c)) == (0, 0)
    with pytest.raises(ValueError):
        c.release("10.0.0.2")
    with pytest.raises(ValueError):
        PerKeyCounter(0)


def test_connection_limiter_names_the_real_reason() -> None:
    lim = ConnectionLimiter(max_total=5, per_address=3)
    assert [lim.acquire("a") for _ in range(3)] == [None, None, None]
    mine = lim.acquire("a")
    assert mine is not None and mine.code == "too_many_connections"
    assert mine.extra == {"limit": 3}
    assert lim.acquire("b") is None and lim.acquire("c") is None
    full = lim.acquire("d")
    assert full is not None and full.code == "server_full"
    assert full.extra == {"reason": FullReason.CONNECTIONS, "limit": 5}
    assert "connections" in full.message and "session" not in full.message
    lim.release("a")
    assert lim.acquire("d") is None
    assert (lim.total, lim.count("a"), lim.count("d")) == (5, 2, 1)


def test_trickling_address_cannot_take_every_slot() -> None:
    # 512 connections from one address (the issue's trickle): only the per-address
    # share is taken, and a real user at another address still gets in.
    lim = ConnectionLimiter()
    taken = sum(lim.acquire("192.0.2.66") is None for _ in range(512))
    assert taken == config.MAX_CONNECTIONS_PER_ADDRESS
    assert lim.acquire("192.0.2.7") is None


# --- SlidingWindowCounter, SessionCreationLimiter ---------------------------------------


def test_sliding_window_allows_limit_per_window_per_key() -> None:
    w = SlidingWindowCounter(limit=3, window_s=60)
    assert [w.hit("a", t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert w.hit("b", 3.0)  # another key is not affected
    assert w.retry_after("a", 3.0) == 57.0
    assert not w.hit("a", 59.9)
    assert w.hit("a", 60.0)  # the event at 0.0 left the window
    assert w.count("a", 60.0) == 3
    assert w.retry_after("a", 60.0) == 1.0


def test_sliding_window_refused_hits_are_not_recorded() -> None:
    w = SlidingWindowCounter(limit=1, window_s=10)
    assert w.hit("a", 0.0)
    for t in range(1, 10):
        assert not w.hit("a", float(t))
    assert w.hit("a", 10.0)  # refusals did not push the window on


def test_sliding_window_forgets_idle_keys() -> None:
    w = SlidingWindowCounter(limit=2, window_s=10)
    for i in range(1000):
        w.record(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(w) == 1000
    w.record("x", 20.0)
    assert len(w) == 1
    assert w.count("10.0.0.0", 20.0) == 0


def test_session_creation_limiter_refuses_the_loop_and_serves_others() -> None:
    lim = SessionCreationLimiter()
    made = 0
    for i in range(200):  # the issue's loop: 200 creations in 0.3 s
        now = i * 0.0015
        if lim.check("192.0.2.66", now) is None:
            lim.created("192.0.2.66", now)
            made += 1
    assert made == config.MAX_SESSIONS_CREATED_PER_ADDRESS
    refusal = lim.check("192.0.2.66", 0.3)
    assert refusal is not None and refusal.code == "too_many_sessions"
    assert refusal.extra["limit"] == config.MAX_SESSIONS_CREATED_PER_ADDRESS
    assert 59.0 < refusal.extra["retry_after_s"] <= config.SESSION_CREATE_WINDOW_S
    assert lim.check("192.0.2.7", 0.3) is None  # the next real meeting
    assert lim.check("192.0.2.66", 0.3 + config.SESSION_CREATE_WINDOW_S) is None


def test_server_full_variants_each_name_their_reason() -> None:
    texts = set()
    for reason in (FullReason.CONNECTIONS, FullReason.SESSIONS, FullReason.IDS, FullReason.DISK):
        r = limits.server_full(reason)
        assert r.code == utils.Err.SERVER_FULL
        assert r.header()["reason"] == reason
        texts.add(r.message)
    assert len(texts) == 4


# --- ReservationLedger ------------------------------------------------------------------

GIB = 1 << 30


def caps(**kw: int | None) -> ReservationCaps:
    return ReservationCaps(
        offers={
            Scope.PARTICIPANT: kw.get("p_offers", 4),
            Scope.SESSION: kw.get("s_offers", 16),
            Scope.ADDRESS: kw.get("a_offers", None),
        },
        bytes={
            Scope.PARTICIPANT: kw.get("p_bytes", GIB),
            Scope.SESSION: kw.get("s_bytes", 4 * GIB),
            Scope.ADDRESS: kw.get("a_bytes", None),
        },
    )


def reserve(
    led: ReservationLedger,
    oid: str,
    p: int = 1,
    s: str = "room",
    a: str = "a",
    size: int = 10,
    now: float = 0.0,
):
    return led.reserve(oid, participant=p, session=s, address=a, size=size, now=now)


def test_ledger_caps_offers_per_participant_and_names_the_scope() -> None:
    led = ReservationLedger(caps(p_offers=2))
    assert reserve(led, "f1") is None and reserve(led, "f2") is None
    r = reserve(led, "f3")
    assert r is not None and r.code == "too_many_offers"
    assert r.extra == {"scope": "participant", "limit": 2}
    assert r.message.startswith("You have 2 files waiting")
    assert reserve(led, "f3", p=2) is None  # someone else in the session
    assert led.usage(Scope.SESSION, "room") == (3, 30)
    assert "f3" in led and len(led) == 3


def test_ledger_caps_bytes_per_session_and_per_address() -> None:
    led = ReservationLedger(caps(p_offers=None, s_offers=None, s_bytes=100, a_bytes=150))
    assert reserve(led, "f1", p=1, size=60) is None
    r = reserve(led, "f2", p=2, size=50)
    assert r is not None and r.code == "quota_exceeded"
    assert r.extra == {"scope": "session", "limit": 100}
    assert "this session has 60 bytes reserved" in r.message
    assert reserve(led, "f2", p=2, size=40) is None
    assert reserve(led, "f3", p=3, s="other", size=60) is not None  # address: 100 + 60 > 150
    assert reserve(led, "f3", p=3, s="other", a="b", size=60) is None
    assert led.total_bytes == 160


def test_the_issue_s_offer_flood_leaves_room_for_a_real_upload() -> None:
    # 151 offers of 500 MB from one participant, never uploaded.
    led = ReservationLedger()
    taken = sum(
        reserve(led, f"f{i}", p=66, s="flood", a="192.0.2.66", size=config.MAX_FILE_BYTES) is None
        for i in range(151)
    )
    assert taken * config.MAX_FILE_BYTES <= config.MAX_RESERVED_BYTES_PER_PARTICIPANT
    assert led.total_bytes <= config.MAX_RESERVED_BYTES_PER_ADDRESS
    assert reserve(led, "real", p=7, s="meeting", a="192.0.2.7", size=config.MAX_FILE_BYTES) is None


def test_ledger_release_on_done_cancel_or_leave() -> None:
    led = ReservationLedger(caps(p_offers=2))
    reserve(led, "f1")
    reserve(led, "f2")
    assert led.release("f1") is True  # upload stored
    assert led.release("f1") is False  # idempotent
    assert reserve(led, "f3") is None
    assert sorted(led.release_where(Scope.PARTICIPANT, 1)) == ["f2", "f3"]  # left
    assert led.usage(Scope.PARTICIPANT, 1) == (0, 0)
    assert (led.total_bytes, len(led)) == (0, 0)
    reserve(led, "f4", s="gone")
    assert led.release_where(Scope.SESSION, "gone") == ["f4"]  # session ended
    assert led._usage == {}


def test_ledger_offer_not_started_in_time_is_released() -> None:
    led = ReservationLedger(caps(), start_timeout_s=30, stall_timeout_s=10)
    reserve(led, "f1", now=0.0)
    assert led.expire(29.9) == []
    assert led.expire(30.0) == ["f1"]
    assert led.started("f1", 30.0) is False  # too late: the upload is refused
    assert led.total_bytes == 0


def test_ledger_stalled_upload_is_released_but_progress_keeps_it() -> None:
    led = ReservationLedger(caps(), start_timeout_s=30, stall_timeout_s=10)
    reserve(led, "f1", size=100, now=0.0)
    assert led.progress("f1", 5.0) is False  # not started: progress means nothing yet
    assert led.started("f1", 20.0)
    for t in (25.0, 34.0, 43.0):  # a byte every 9 s: alive
        assert led.expire(t) == []
        assert led.progress("f1", t)
    assert led.expire(52.9) == []
    assert led.expire(53.0) == ["f1"]  # 10 s without a byte
    assert led.usage(Scope.ADDRESS, "a") == (0, 0)


def test_ledger_rejects_bad_calls() -> None:
    led = ReservationLedger(caps())
    reserve(led, "f1")
    with pytest.raises(ValueError):
        reserve(led, "f1")
    with pytest.raises(ValueError):
        reserve(led, "f2", size=-1)


def test_default_caps_come_from_config() -> None:
    d = ReservationCaps.default()
    assert d.offers[Scope.PARTICIPANT] == config.MAX_OPEN_OFFERS_PER_PARTICIPANT
    assert d.bytes[Scope.SESSION] == config.MAX_RESERVED_BYTES_PER_SESSION
    assert config.MAX_RESERVED_BYTES_PER_PARTICIPANT >= config.MAX_FILE_BYTES


# --- Deadline, DeadlineSocket -----------------------------------------------------------


def test_deadline_is_absolute() -> None:
    d = limits.first_frame_deadline(100.0)
    assert d.expires == 100.0 + config.FIRST_FRAME_TIMEOUT_S
    assert d.timeout(104.0) == 6.0
    assert d.remaining(112.0) == 0.0
    assert not d.expired(109.99) and d.expired(110.0)
    with pytest.raises(DeadlineExpired):
        d.timeout(110.0)  # never settimeout(0): that would mean non-blocking
    assert issubclass(DeadlineExpired, TimeoutError)


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class TricklingSocket:
    """Gives ``data`` one byte per recv; each byte takes ``gap_s`` on the fake clock.

    A byte that would arrive after the timeout set by ``settimeout`` is not
    given: the recv raises ``TimeoutError`` as a real socket would.
    """

    def __init__(self, data: bytes, clock: FakeClock, gap_s: float) -> None:
        self.data = data
        self.clock = clock
        self.gap_s = gap_s
        self.timeouts: list[float | None] = []

    def settimeout(self, t: float | None) -> None:
        self.timeouts.append(t)

    def recv_into(self, buf, nbytes: int = 0) -> int:
        timeout = self.timeouts[-1]
        if timeout is not None and self.gap_s > timeout:
            self.clock.t += timeout
            raise TimeoutError("timed out")
        self.clock.t += self.gap_s
        if not self.data:
            return 0
        buf[0] = self.data[0]
        self.data = self.data[1:]
        return 1


def test_trickled_first_frame_is_cut_at_the_deadline_not_restarted_per_byte() -> None:
    frame = utils.encode_frame({"type": "list_sessions"})
    clock = FakeClock(1000.0)
    sock = TricklingSocket(frame, clock, gap_s=4.0)  # one byte every 4 s
    # The old pattern, one settimeout(10) before the frame, would read every byte
    # (each gap is under 10 s) and take len(frame) * 4 s; the deadline stops it.
    reader = utils.FrameReader(DeadlineSocket(sock, limits.first_frame_deadline(clock()), clock))
    with pytest.raises(DeadlineExpired):
        reader.read()
    assert clock.t - 1000.0 <= config.FIRST_FRAME_TIMEOUT_S
    assert sock.timeouts[:3] == [10.0, 6.0, 2.0]  # what is left, before each recv


def test_a_prompt_first_frame_is_read_whole() -> None:
    frame = utils.encode_frame(
        {"type": "hello", "protocol": config.PROTOCOL_VERSION, "username": "A", "session": "R"}
    )
    clock = FakeClock(0.0)
    sock = TricklingSocket(frame, clock, gap_s=0.01)
    reader = utils.FrameReader(DeadlineSocket(sock, limits.first_frame_deadline(0.0), clock))
    assert reader.read().header["username"] == "A"
    assert clock.t < config.FIRST_FRAME_TIMEOUT_S


def test_deadline_socket_on_a_real_socket_pair() -> None:
    # A real socket whose peer sends nothing: with the deadline already 50 ms away
    # the read ends in DeadlineExpired (bounded: the socket timeout is 0.05 s).
    a, b = socket.socketpair()
    try:
        clock = FakeClock(0.0)
        ds = DeadlineSocket(a, Deadline.after(0.0, 0.05), clock)
        with pytest.raises(DeadlineExpired):
            ds.recv_into(bytearray(4), 4)
        clock.t = 1.0
        with pytest.raises(DeadlineExpired):  # passed: no recv at all
            ds.recv_into(bytearray(4), 4)
    finally:
        a.close()
        b.close()


# --- error texts ------------------------------------------------------------------------


def test_every_new_code_has_a_sentence_and_no_clash_with_utils() -> None:
    new = [
        LimitErr.RATE_LIMITED,
        LimitErr.TOO_MANY_CONNECTIONS,
        LimitErr.TOO_MANY_SESSIONS,
        LimitErr.TOO_MANY_OFFERS,
        LimitErr.QUOTA_EXCEEDED,
    ]
    existing = {v for k, v in vars(utils.Err).items() if not k.startswith("_")}
    for code in new:
        assert code in existing  # one definition of the wire: utils.Err
        assert limits.LIMIT_ERROR_TEXT[code] == utils.ERROR_TEXT[code]
        assert limits.LIMIT_ERROR_TEXT[code].endswith(".")
