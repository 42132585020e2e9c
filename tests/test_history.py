"""history: join state in bounded frames; chat exactly once across a reconnection."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import config
import history
import utils
from chat_module import ChatLog
from history import Deduper, JoinAssembler, Outbox, OutboxFull, chunk_for_header, plan_join

FOUR_BYTE = "\U0001f600"  # 4 bytes of UTF-8, written as is by utils.dump_json


def enc(obj) -> int:
    return len(utils.dump_json(obj))


# --- chunk_for_header -------------------------------------------------------------------


def test_chunks_are_greedy_and_exact_at_the_boundary() -> None:
    items = ["aaaa"] * 5  # each '"aaaa"' is 6 bytes; two in a list: 1 + 6 + 1 + 6 + 1 = 15
    assert chunk_for_header(items, 15) == [["aaaa", "aaaa"], ["aaaa", "aaaa"], ["aaaa"]]
    assert chunk_for_header(items, 14) == [["aaaa"]] * 5
    assert chunk_for_header(items, 36) == [items]  # 2 + 5 * 6 + 4 commas
    assert chunk_for_header(items, 35) == [items[:4], items[4:]]


def test_no_items_no_chunks_and_an_oversized_item_is_refused() -> None:
    assert chunk_for_header([], 100) == []
    assert chunk_for_header(iter(()), 100) == []
    with pytest.raises(ValueError, match="cannot fit"):
        chunk_for_header(["x" * 100], 50)
    with pytest.raises(ValueError):
        chunk_for_header(["x"], 1)


def test_sizes_are_those_of_the_wire_encoding() -> None:
    # dump_json writes non-ASCII as UTF-8 (ensure_ascii=False): a 4-byte character
    # costs 4 bytes, not the 12 of a "\ud83d\ude00" escape; quotes and backslashes 2.
    assert enc(FOUR_BYTE) == 6
    assert enc('"') == 4 and enc("\\") == 4 and enc("\n") == 4
    assert chunk_for_header([FOUR_BYTE] * 3, 2 + 3 * 6 + 2) == [[FOUR_BYTE] * 3]
    # A custom encoder is honoured (e.g. an ASCII-only one would cost 12 per character).
    ascii_json = lambda o: __import__("json").dumps(o, separators=(",", ":")).encode()  # noqa: E731
    assert len(ascii_json(FOUR_BYTE)) == 14
    assert chunk_for_header([FOUR_BYTE] * 3, 22, encode=ascii_json) == [[FOUR_BYTE]] * 3


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(max_size=40)
        | st.integers()
        | st.dictionaries(st.text(max_size=5), st.booleans(), max_size=3),
        max_size=60,
    ),
    st.integers(min_value=200, max_value=2000),
)
def test_chunking_keeps_order_and_every_chunk_fits(items: list, max_bytes: int) -> None:
    chunks = chunk_for_header(items, max_bytes)  # hypothesis text has no lone surrogates
    assert [x for c in chunks for x in c] == items
    for c in chunks:
        assert c and enc(c) <= max_bytes
    for a, b in itertools.pairwise(chunks):
        assert enc([*a, b[0]]) > max_bytes  # greedy: the next item did not fit


# --- plan_join ------------------------------------------------------------------------


def base_welcome(session: str = "Team") -> dict:
    return {
        "type": utils.Msg.WELCOME,
        "you": {"id": 65535, "username": FOUR_BYTE * config.MAX_USERNAME_CHARS},
        "token": "9f" * 16,
        "session": session,
        "participants": [],
        "presenter": None,
        "files": [],
        "chat": [],
        "media": {
            "udp_port": 65535,
            "audio": {"rate": 22050, "channels": 1, "sample_width": 2, "frame_samples": 441},
            "video": {"width": 320, "height": 240, "fps": 15, "max_datagram": 60000},
        },
    }


def chat_msg(seq: int, text: str) -> dict:
    return {
        "type": "chat",
        "seq": seq,
        "from": 65535,
        "username": FOUR_BYTE * config.MAX_USERNAME_CHARS,
        "message": text,
        "timestamp": 1799999999.123456,
    }


def worst_case_welcome() -> dict:
    """The largest welcome today's limits allow: full history, participants and files."""
    w = base_welcome(FOUR_BYTE * config.MAX_SESSION_NAME_CHARS)
    w["participants"] = [
        {
            "id": 65535 - i,
            "username": FOUR_BYTE * config.MAX_USERNAME_CHARS,
            "audio": False,
            "video": False,
            "presenting": False,
        }
        for i in range(config.MAX_PARTICIPANTS_PER_SESSION - 1)
    ]
    w["files"] = [
        {
            "id": f"f{i:016x}",
            "name": FOUR_BYTE * config.MAX_FILE_NAME_CHARS,
            "size": config.MAX_FILE_BYTES,
            "sha256": "ab" * 32,
            "owner": 65535,
            "username": FOUR_BYTE * config.MAX_USERNAME_CHARS,
            "timestamp": 1799999999.123456,
        }
        for i in range(config.MAX_FILES_PER_SESSION)
    ]
    w["chat"] = [
        chat_msg(10**9 + i, FOUR_BYTE * config.MAX_CHAT_CHARS)
        for i in range(config.CHAT_HISTORY_MESSAGES)
    ]
    return w


def test_a_small_welcome_is_sent_whole() -> None:
    w = base_welcome()
    w["participants"] = [
        {"id": 1, "username": "Bob", "audio": True, "video": False, "presenting": False}
    ]
    w["chat"] = [chat_msg(1, "hi"), chat_msg(2, "there")]
    plan = plan_join(w)
    assert plan.history == []
    assert plan.welcome == {**w, "history_frames": 0}


def test_the_worst_case_session_can_be_joined() -> None:
    # 500 messages x 4,000 four-byte characters, 49 others, 1,000 files of 255-character
    # names: today's welcome is ~10 MB, far over the header limit (the issue's
    # "header_len ... exceeds 65536" for every joiner).
    full = worst_case_welcome()
    assert enc(full) > 100 * config.MAX_HEADER_BYTES

    plan = plan_join(full)
    frames = plan.headers()
    assert 1 < len(frames) <= 1 + config.MAX_HISTORY_FRAMES
    assert plan.welcome["history_frames"] == len(plan.history)
    assembler = JoinAssembler()
    for i, header in enumerate(frames):
        data = utils.encode_frame(header)
        # Through the real codec, with the real limit: every frame is accepted.
        frame, used = utils.decode_frame(data, max_header=config.MAX_HEADER_BYTES)
        assert used == len(data)
        assert enc(header) <= config.MAX_HEADER_BYTES - config.HISTORY_HEADER_MARGIN_BYTES
        assert assembler.add(frame.header) is (i == len(frames) - 1)
    assert assembler.complete
    assert list(assembler.participants.values()) == full["participants"]
    assert list(assembler.files.values()) == full["files"]
    assert assembler.chat == full["chat"]
    assert "chat_dropped" not in plan.welcome
    # Participants come first and whole; the welcome keeps its other fields.
    assert plan.welcome["participants"] == full["participants"]
    assert plan.welcome["media"] == full["media"] and plan.welcome["token"] == full["token"]


def test_chat_in_the_welcome_is_the_newest() -> None:
    w = base_welcome()
    w["chat"] = [chat_msg(i, "x" * 1000) for i in range(1, 201)]  # ~200 KB
    plan = plan_join(w)
    in_welcome = [m["seq"] for m in plan.welcome["chat"]]
    assert in_welcome and in_welcome[-1] == 200 and in_welcome == sorted(in_welcome)
    later = [m["seq"] for h in plan.history for m in h["chat"]]
    assert later == list(range(1, in_welcome[0]))  # the older ones, oldest first
    assert all(set(h) == {"type", "part", "parts", "chat"} for h in plan.history)
    assert [h["part"] for h in plan.history] == list(range(1, len(plan.history) + 1))


def test_a_cut_list_sends_the_later_lists_in_history_frames() -> None:
    w = base_welcome()
    w["files"] = [{"id": f"f{i:016x}", "name": "n" * 250} for i in range(400)]  # ~110 KB
    w["chat"] = [chat_msg(1, "hello")]
    plan = plan_join(w)
    assert 0 < len(plan.welcome["files"]) < 400
    assert plan.welcome["chat"] == []
    kinds = [next(k for k in history.JOIN_LISTS if k in h) for h in plan.history]
    assert kinds[-1] == "chat" and set(kinds[:-1]) == {"files"}


def test_too_many_frames_drop_the_oldest_chat_and_say_so() -> None:
    w = base_welcome()
    w["chat"] = [chat_msg(i, "y" * 20000) for i in range(1, 41)]
    plan = plan_join(w, max_frames=3)
    assert len(plan.history) == 3
    kept = sorted(
        m["seq"] for m in plan.welcome["chat"] + [m for h in plan.history for m in h["chat"]]
    )
    assert kept == list(range(41 - len(kept), 41))  # the newest, contiguous
    assert plan.welcome["chat_dropped"] == 40 - len(kept)


def test_a_welcome_whose_fixed_part_is_too_big_is_a_bug() -> None:
    w = base_welcome(session="s" * 70000)
    with pytest.raises(ValueError):
        plan_join(w)


def test_one_chat_message_is_far_under_a_frame_by_construction() -> None:
    worst = chat_msg(2**53, FOUR_BYTE * config.MAX_CHAT_CHARS)
    worst["to"] = list(range(65535 - config.MAX_PARTICIPANTS_PER_SESSION, 65535))
    worst["cid"] = "c" * config.MAX_CHAT_CID_CHARS
    assert enc(worst) * 3 < config.MAX_HEADER_BYTES - config.HISTORY_HEADER_MARGIN_BYTES


def test_the_sessions_list_fits_one_header_at_today_s_limits() -> None:
    # The other answer that grows with the server: list_sessions. At MAX_SESSIONS and
    # 64 four-byte characters per name it still fits; raising MAX_SESSIONS past ~215
    # would need paging (this test then fails and says so).
    reply = {
        "type": "sessions",
        "sessions": [
            {"name": FOUR_BYTE * config.MAX_SESSION_NAME_CHARS, "participants": 50, "locked": True}
            for _ in range(config.MAX_SESSIONS)
        ],
    }
    assert enc(reply) <= config.MAX_HEADER_BYTES


# --- JoinAssembler --------------------------------------------------------------------


def test_assembler_merges_and_refuses_frames_out_of_order() -> None:
    welcome = {**base_welcome(), "history_frames": 2, "chat": [chat_msg(5, "e")]}
    a = JoinAssembler()
    assert a.add(welcome) is False
    with pytest.raises(utils.ProtocolError):
        a.add({"type": "history", "part": 2, "parts": 2, "chat": []})
    assert (
        a.add(
            {
                "type": "history",
                "part": 1,
                "parts": 2,
                "chat": [chat_msg(1, "a"), chat_msg(5, "dup")],
            }
        )
        is False
    )
    assert a.add({"type": "history", "part": 2, "parts": 2, "files": [{"id": "f1"}]}) is True
    assert [m["seq"] for m in a.chat] == [1, 5] and a.chat[1]["message"] == "e"
    assert list(a.files) == ["f1"]
    with pytest.raises(utils.ProtocolError):
        a.add({"type": "history", "part": 3, "parts": 2})
    # The merged chat goes into the client's ChatLog like a v1 welcome's would.
    log = ChatLog()
    assert log.merge_history(a.chat) == 2


@pytest.mark.parametrize(
    "first",
    [
        {"type": "history", "part": 1, "parts": 1},
        {"type": "welcome", "history_frames": -1},
        {"type": "welcome", "history_frames": True},
        {"type": "welcome", "history_frames": "2"},
    ],
)
def test_assembler_bad_starts(first: dict) -> None:
    with pytest.raises(utils.ProtocolError):
        JoinAssembler().add(first)


def test_assembler_accepts_a_v1_welcome_without_history_frames() -> None:
    a = JoinAssembler()
    assert a.add({**base_welcome(), "participants": [{"id": 3, "username": "C"}]}) is True
    assert list(a.participants) == [3]
    with pytest.raises(utils.ProtocolError):
        a.add({"type": "history", "part": 1, "parts": 1})
    with pytest.raises(utils.ProtocolError):
        JoinAssembler().add({"type": "welcome", "history_frames": 0, "chat": "nope"})


# --- Outbox and Deduper -----------------------------------------------------------------


def test_outbox_ids_are_unique_ordered_and_valid() -> None:
    box = Outbox(prefix="k3f9")
    headers = [box.add(f"m{i}") for i in range(3)]
    assert [h["cid"] for h in headers] == ["k3f9-1", "k3f9-2", "k3f9-3"]
    assert all(history.valid_cid(h["cid"]) for h in headers)
    assert box.pending() == headers
    private = box.add("psst", to=[4])
    assert private["to"] == [4] and private["type"] == "chat"
    assert Outbox().prefix != Outbox().prefix  # random per client


def test_outbox_confirm_by_echo_or_ack_and_drop_on_refusal() -> None:
    box = Outbox(prefix="p")
    a, b, c = (box.add(t) for t in "abc")
    echo = {"type": "chat", "seq": 7, "from": 3, "message": "a", "cid": a["cid"]}
    assert not box.confirm({**echo, "from": 9}, my_id=3)  # someone else's cid
    assert box.confirm(echo, my_id=3)
    assert not box.confirm(echo, my_id=3)  # twice: nothing left to confirm
    assert box.confirm({"type": "chat_ack", "cid": b["cid"], "seq": 8})
    assert box.drop(c["cid"]) == c  # rate_limited: not sent, given back to the caller
    assert box.drop(c["cid"]) is None
    assert len(box) == 0 and not box.confirm({"type": "chat"})


def test_outbox_is_bounded() -> None:
    box = Outbox(max_messages=2, prefix="p")
    box.add("1")
    box.add("2")
    with pytest.raises(OutboxFull):
        box.add("3")
    assert len(box) == 2


@pytest.mark.parametrize("prefix", ["", "has space", "x" * 60, "é"])
def test_outbox_refuses_a_prefix_that_makes_bad_ids(prefix: str) -> None:
    with pytest.raises(ValueError):
        Outbox(prefix=prefix)


@pytest.mark.parametrize(
    ("cid", "ok"),
    [
        ("a", True),
        ("A-9_z", True),
        ("c" * 64, True),
        ("c" * 65, False),
        ("", False),
        ("a b", False),
        ("é", False),
        (7, False),
        (None, False),
        ("a\n", False),
    ],
)
def test_valid_cid_table(cid, ok: bool) -> None:
    assert history.valid_cid(cid) is ok


def test_deduper_remembers_a_bounded_window_per_participant() -> None:
    d = Deduper(per_participant=3)
    for i in range(1, 5):
        d.record(1, f"c{i}", 100 + i)
    assert d.seen(1, "c1") is None  # forgotten: oldest first
    assert [d.seen(1, f"c{i}") for i in (2, 3, 4)] == [102, 103, 104]
    assert d.seen(2, "c4") is None  # per participant
    d.forget(1)
    assert d.seen(1, "c4") is None and len(d) == 0
    with pytest.raises(ValueError):
        Deduper(0)


def test_every_message_the_client_may_resend_is_still_remembered() -> None:
    assert config.CLIENT_CHAT_OUTBOX_MESSAGES <= config.CHAT_DEDUP_IDS


class ModelServer:
    """The server's chat path as it will be: dedupe by (participant, cid), then seq."""

    def __init__(self) -> None:
        self.dedup = Deduper()
        self.seq = 0
        self.history: list[dict] = []

    def on_chat(self, pid: int, h: dict) -> dict:
        """What the sender gets back: the echo (new) or a chat_ack (duplicate)."""
        seq = self.dedup.seen(pid, h["cid"])
        if seq is not None:
            return {"type": "chat_ack", "cid": h["cid"], "seq": seq}
        self.seq += 1
        msg = {"type": "chat", "seq": self.seq, "from": pid, "message": h["message"]}
        self.history.append(msg)
        self.dedup.record(pid, h["cid"], self.seq)
        return {**msg, "cid": h["cid"]}


def test_chat_is_delivered_exactly_once_across_a_cut() -> None:
    server, me = ModelServer(), 3
    box = Outbox(prefix="me")
    sent = [box.add(t) for t in ("one", "two", "three", "four")]
    # Connection 1: "one" and "two" reach the server, but their echoes are lost in
    # the cut; "three" is lost on the way; "four" was never sent before the cut.
    for h in sent[:2]:
        server.on_chat(me, h)
    # Resume: everything unconfirmed goes again, in order.
    replies = [server.on_chat(me, h) for h in box.pending()]
    assert [r["type"] for r in replies] == ["chat_ack", "chat_ack", "chat", "chat"]
    for r in replies:
        assert box.confirm(r, my_id=me)
    assert len(box) == 0
    assert [m["message"] for m in server.history] == ["one", "two", "three", "four"]
    assert [m["seq"] for m in server.history] == [1, 2, 3, 4]
    # A second resume with a stale copy changes nothing either.
    assert server.on_chat(me, sent[0])["type"] == "chat_ack"
    assert len(server.history) == 4
