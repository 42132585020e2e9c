"""ChatLog: seq order, history merge without duplicates, private marks, bound, threads."""

from __future__ import annotations

import threading

import pytest

import config
from chat_module import ChatLog


def msg(seq: int, text: str = "hi", sender: int = 1, to: list[int] | None = None) -> dict:
    m = {"type": "chat", "seq": seq, "from": sender, "username": "Bob", "message": text}
    m["timestamp"] = 1699000000.0 + seq
    if to is not None:
        m["to"] = to
    return m


def seqs(log: ChatLog) -> list[int]:
    return [m["seq"] for m in log.messages()]


def test_messages_come_out_in_seq_order_whatever_the_arrival_order() -> None:
    log = ChatLog()
    for s in (5, 1, 3, 2, 4):
        assert log.add(msg(s)) is True
    assert seqs(log) == [1, 2, 3, 4, 5]
    assert log.last_seq == 5
    assert len(log) == 5


def test_history_merged_with_live_messages_without_duplicates() -> None:
    log = ChatLog()
    # Live messages can arrive while the welcome's history is still being merged.
    log.add(msg(3, "live"))
    log.add(msg(4, "live2"))
    added = log.merge_history([msg(1), msg(2), msg(3, "history copy")])
    assert added == 2
    assert seqs(log) == [1, 2, 3, 4]
    assert log.messages()[2]["message"] == "live"  # the first copy is kept
    assert log.add(msg(4)) is False


def test_private_messages_are_marked_with_their_recipients() -> None:
    log = ChatLog()
    log.add(msg(1, "public"))
    log.add(msg(2, "secret", to=[7, 9]))
    public, private = log.messages()
    assert public["private"] is False and "to" not in public
    assert private["private"] is True and private["to"] == [7, 9]
    assert [m["message"] for m in log.private_messages()] == ["secret"]


def test_bounded_dropping_the_oldest() -> None:
    log = ChatLog(max_messages=10)
    for s in range(1, 26):
        log.add(msg(s))
    assert seqs(log) == list(range(16, 26))
    # Something older than everything kept is not re-added by a late history merge.
    assert log.add(msg(3)) is False
    assert seqs(log) == list(range(16, 26))


def test_default_bound_is_the_named_constant() -> None:
    assert ChatLog().max_messages == config.CLIENT_CHAT_LOG_MESSAGES
    assert config.CLIENT_CHAT_LOG_MESSAGES >= config.CHAT_HISTORY_MESSAGES


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "text",
        {},
        {"seq": "1", "message": "x"},
        {"seq": True, "message": "x"},
        {"seq": -1, "message": "x"},
        {"seq": 1},
        {"seq": 1, "message": 5},
        {"seq": 1, "message": "x", "to": "everyone"},
        {"seq": 1, "message": "x", "to": [1, "2"]},
    ],
)
def test_malformed_messages_are_refused_and_nothing_is_lost(bad: object) -> None:
    log = ChatLog()
    log.add(msg(1))
    assert log.add(bad) is False  # type: ignore[arg-type]
    assert seqs(log) == [1]
    assert log.rejected == 1


def test_stored_messages_are_copies() -> None:
    log = ChatLog()
    original = msg(1, "a")
    log.add(original)
    original["message"] = "changed"
    snapshot = log.messages()
    snapshot[0]["message"] = "changed too"
    assert log.messages()[0]["message"] == "a"


def test_concurrent_adds_and_reads_are_safe() -> None:
    log = ChatLog(max_messages=1000)
    errors: list[BaseException] = []

    def writer(start: int) -> None:
        try:
            for s in range(start, 4000, 4):
                log.add(msg(s))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(200):
                got = seqs(log)
                assert got == sorted(got) and len(got) == len(set(got)) <= 1000
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,), name=f"w{i}") for i in range(4)]
    threads.append(threading.Thread(target=reader, name="reader"))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert seqs(log) == list(range(3000, 4000))


def test_clear_and_iteration() -> None:
    log = ChatLog()
    log.merge_history([msg(1), msg(2)])
    assert [m["seq"] for m in log] == [1, 2]
    log.clear()
    assert log.messages() == [] and log.last_seq is None
