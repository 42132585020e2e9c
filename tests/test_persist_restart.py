"""The server's state across a restart and a crash (issue 13): chat ids, saves while
running, kill -9, and damaged state files.

Real servers on loopback ports the OS chose (in-process, or ``server.py`` as a
subprocess killed with SIGKILL); every wait is bounded.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

import config
import persistence
from client import ConferenceClient
from server import ConferenceServer
from tests.helpers import Recorder, identity_fingerprint, make_file, start_server_py, wait_for
from tests.test_server_protocol import join
from utils import Msg

ROOT = Path(__file__).resolve().parent.parent
FP = identity_fingerprint()
PROC_WAIT_S = 10.0  # a server.py start or exit


def _chat(text: str, cid: str) -> dict:
    return {"type": Msg.CHAT, "message": text, "cid": cid}


# --- 1. a chat resent after a restart is acknowledged, not stored twice ---------------------


def test_a_chat_resent_after_a_restart_is_acknowledged_not_stored_twice(server_config) -> None:
    first = ConferenceServer(server_config)
    first.start()
    second: ConferenceServer | None = None
    try:
        a, _ = join(first.tcp_port, "Alice")
        b, _ = join(first.tcp_port, "Bob")
        a.send(_chat("sent just before the stop", "a1b2c3d4-1"))
        assert b.expect(Msg.CHAT).header["seq"] == 1
        # Alice's echo is lost as the server goes down: her outbox still holds the message.
        first.stop()
        a.close()
        b.close()
        second = ConferenceServer(replace(server_config, tcp_port=0, udp_port=0))
        second.start()
        a, wa = join(second.tcp_port, "alice")  # the rejoin: same session, same name (any case)
        assert [m["message"] for m in wa["chat"]] == ["sent just before the stop"]
        a.send(_chat("sent just before the stop", "a1b2c3d4-1"))  # the outbox sends it again
        ack = a.expect(Msg.CHAT_ACK).header
        assert ack == {"type": Msg.CHAT_ACK, "cid": "a1b2c3d4-1", "seq": 1}
        a.send(_chat("a new one", "a1b2c3d4-2"))
        echo = a.expect(Msg.CHAT).header
        assert (echo["seq"], echo["cid"]) == (2, "a1b2c3d4-2")
        b, wb = join(second.tcp_port, "Bob")
        texts = [m["message"] for m in wb["chat"]]
        assert texts == ["sent just before the stop", "a new one"]  # once each
        # Another name does not inherit Alice's ids: the same cid from Carol is new.
        c, _ = join(second.tcp_port, "Carol")
        c.send(_chat("mine", "a1b2c3d4-1"))
        assert c.expect(Msg.CHAT).header["seq"] == 3
        for r in (a, b, c):
            r.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_saved_chat_ids_are_bounded_per_member(tmp_path: Path) -> None:
    n = config.STATE_CHAT_IDS_PER_PARTICIPANT
    ids = {"alice": [(f"x-{i}", i) for i in range(1, 3 * n)]}
    s = persistence.SavedSession("Room", "", 3 * n, [], [], ids)
    persistence.save(tmp_path, [s], saved_at=1000.0)
    (back,) = persistence.load(tmp_path, grace_s=60.0, now=1001.0)
    assert back.chat_ids["alice"] == ids["alice"][-n:]


# --- 2. the state on disk stays current while running; a crash keeps it --------------------


def _start_server_py(storage: Path, tcp_port: int = 0, udp_port: int = 0):
    extra = ("--no-announce", "--status-interval", "0")
    return start_server_py(storage, tcp_port, udp_port, *extra, timeout=PROC_WAIT_S)


def _end(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=PROC_WAIT_S)
    return err


def _saved_text(storage: Path) -> str:
    try:
        return persistence.state_path(storage).read_text(encoding="utf-8")
    except OSError:  # not written yet, or being replaced
        return ""


def test_kill_9_then_restart_brings_back_the_session_chat_and_files(tmp_path: Path) -> None:
    import file_sharing_module as fsm

    storage = tmp_path / "storage"
    proc, tcp_port, udp_port = _start_server_py(storage)
    again = None
    alice = ConferenceClient("127.0.0.1", tcp_port, expected_fingerprint=FP)
    rec = Recorder(alice, "reconnected", "disconnected")
    try:
        alice.connect("Alice", "Room", password="pw")  # noqa: S106 - a test session's
        alice.send_chat("said before the crash")
        wait_for(lambda: len(alice.chat) == 1, what="the echo")
        src = tmp_path / "notes.bin"
        sha = make_file(src, 200_000)
        up = fsm.upload(alice, src)
        assert up.wait(60) and up.ok, up.error
        # The running server writes its state by itself (no stop): wait for it on disk.
        wait_for(
            lambda: up.file_id in (t := _saved_text(storage)) and "said before the crash" in t,
            what="the state saved while running",
        )
        proc.send_signal(signal.SIGKILL)  # no server_shutdown, no save at stop
        assert proc.wait(PROC_WAIT_S) == -signal.SIGKILL
        again, *_ = _start_server_py(storage, tcp_port, udp_port)
        wait_for(lambda: rec.get("reconnected"), what="Alice back after the crash")
        assert rec.get("reconnected")[0][0].get("resumed") is not True  # joined anew
        assert alice.session == "Room"
        assert [m["message"] for m in alice.chat.messages()] == ["said before the crash"]
        assert list(alice.files) == [up.file_id] and alice.files[up.file_id]["sha256"] == sha
        alice.send_chat("said after the crash")
        wait_for(lambda: len(alice.chat) == 2, what="new chat")
        seqs = [m["seq"] for m in alice.chat.messages()]
        assert seqs[1] > config.CHAT_SEQ_AFTER_CRASH_GAP  # no seq given twice
        (tmp_path / "dl").mkdir()
        down = fsm.download(alice, up.file_id, tmp_path / "dl")
        assert down.wait(60) and down.ok, down.error
        assert down.sha256 == sha
        assert rec.get("disconnected") == []
    finally:
        alice.leave()
        err = _end(proc)
        if again is not None:
            err += _end(again)
    assert "Traceback" not in err, err


def test_the_saved_state_is_written_off_the_session_lock(server, monkeypatch) -> None:
    """A write stuck on a slow disk holds no lock: chat (and media) go on meanwhile."""
    writing, release = threading.Event(), threading.Event()
    real_save = persistence.save

    def slow_save(*args, **kwargs):
        writing.set()
        release.wait(30)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(persistence, "save", slow_save)
    a, _ = join(server.tcp_port, "Alice")
    b, _ = join(server.tcp_port, "Bob")
    try:
        assert writing.wait(10), "no save after a join"
        t0 = time.monotonic()
        a.send(_chat("while the disk is slow", "s-1"))
        assert b.expect(Msg.CHAT).header["message"] == "while the disk is slow"
        assert time.monotonic() - t0 < 5.0
        assert server.list_sessions()[0]["participants"] == 2  # the session lock is free
    finally:
        release.set()
        a.close()
        b.close()


def test_a_chat_flood_is_written_once_per_interval_not_per_message() -> None:
    from continuity import StateSaver

    writes: list[float] = []
    refreshed = threading.Event()
    saver = StateSaver(
        lambda: writes.append(time.monotonic()), refreshed.set, interval_s=0.2, refresh_s=0.3
    )
    saver.start()
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:  # a change every millisecond for a second
            saver.changed()
            time.sleep(0.001)
        wait_for(lambda: writes and writes[-1] > t0 + 0.8, what="the last change written")
        assert 3 <= len(writes) <= 7, len(writes)  # ~1 s / 0.2 s, never per change
        gaps = [b - a for a, b in itertools.pairwise(writes)]
        assert min(gaps) >= 0.19, gaps
        assert refreshed.wait(5), "no refresh while idle"
    finally:
        saver.stop()
    assert saver._thread is not None and not saver._thread.is_alive()


def test_a_state_saved_while_running_counts_from_its_last_refresh(tmp_path: Path) -> None:
    s = persistence.SavedSession("Room", "", 7, [], [])
    persistence.save(tmp_path, [s], saved_at=time.time() - 600, clean=False)
    persistence.touch(tmp_path)  # the server was alive until now
    (back,) = persistence.load(tmp_path, grace_s=60.0, now=time.time())
    assert back.chat_seq == 7 + config.CHAT_SEQ_AFTER_CRASH_GAP
    persistence.save(tmp_path, [s], saved_at=time.time() - 600, clean=True)
    persistence.touch(tmp_path)  # a clean stop's time is its own
    assert persistence.load(tmp_path, grace_s=60.0, now=time.time()) == []


# --- 3. a damaged state file: a clear log line and an empty start ---------------------------


def _valid(now: float) -> dict:
    return {
        "format": 2,
        "saved_at": now,
        "clean": True,
        "sessions": [
            {
                "name": "Room",
                "password_hash": "",
                "chat_seq": 1,
                "history": [
                    {
                        "type": "chat",
                        "seq": 1,
                        "from": 1,
                        "username": "Bob",
                        "message": "hi",
                        "timestamp": now,
                    }
                ],
                "files": [],
            }
        ],
    }


def _text(now: float, **change) -> bytes:
    return json.dumps(_valid(now) | change).encode()


DAMAGED = {
    "empty": lambda now: b"",
    "truncated": lambda now: _text(now)[: len(_text(now)) // 2],
    "not utf-8": lambda now: b'{"format": 2, "saved_at": \xff\xfe}',
    "deeply nested": lambda now: b"[" * 200_000,
    "null": lambda now: b"null",
    "a list": lambda now: b"[1, 2, 3]",
    "saved_at text": lambda now: _text(now, saved_at="yesterday"),
    "saved_at nan": lambda now: _text(now).replace(str(now).encode(), b"NaN", 1),
    "clean not a bool": lambda now: _text(now, clean="yes"),
    "sessions an object": lambda now: _text(now, sessions={"Room": 1}),
    "a session a number": lambda now: _text(now, sessions=[5]),
    "chat_seq text": lambda now: _text(
        now, sessions=[{**_valid(now)["sessions"][0], "chat_seq": "1"}]
    ),
}


@pytest.mark.parametrize("make", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_state_file_gives_a_clear_warning_and_an_empty_start(
    server_config, make, caplog
) -> None:
    path = persistence.state_path(server_config.storage_dir)
    path.parent.mkdir(parents=True)
    path.write_bytes(make(time.time()))
    srv = ConferenceServer(server_config)
    srv.start()  # no exception
    try:
        assert srv.list_sessions() == []
        assert "starting empty" in caplog.text
        r, w = join(srv.tcp_port, "Alice")  # and it serves
        assert w["chat"] == []
        r.close()
    finally:
        srv.stop()


BAD_ENTRIES = {
    "a file id that is a list": {"files": [{"id": ["f"], "name": "x"}]},
    "a file without a hash": {"files": [{"id": "f0123456789abcdef", "name": "x", "size": 1}]},
    "a chat message far too long": {
        "history": [
            {
                "type": "chat",
                "seq": 2,
                "from": 1,
                "username": "Bob",
                "message": "x" * 100_000,
                "timestamp": 1.0,
            }
        ]
    },
    "a chat message without text": {"history": [{"type": "chat", "seq": 2}]},
    "chat ids of the wrong shape": {"chat_ids": {"alice": [["bad cid!", 1], [5, 5], "x"]}},
}


@pytest.mark.parametrize("change", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_bad_entries_of_a_saved_session_are_left_out_and_the_session_is_joinable(
    server_config, change, caplog
) -> None:
    now = time.time()
    data = _valid(now)
    data["sessions"][0] |= change
    path = persistence.state_path(server_config.storage_dir)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    srv = ConferenceServer(server_config)
    srv.start()
    try:
        assert [s["name"] for s in srv.list_sessions()] == ["Room"]
        r, w = join(srv.tcp_port, "Alice")
        assert all(len(m["message"]) <= config.MAX_CHAT_CHARS for m in w["chat"])
        assert w["files"] == []
        r.close()
    finally:
        srv.stop()


def test_a_corrupt_state_file_is_kept_aside_for_a_person_to_read(tmp_path: Path, caplog) -> None:
    persistence.state_path(tmp_path).write_bytes(b'{"format": 2, "sav')
    assert persistence.load(tmp_path, grace_s=60.0, now=time.time()) == []
    assert "malformed" in caplog.text and "starting empty" in caplog.text
    kept = tmp_path / (config.SERVER_STATE_FILE + persistence.CORRUPT_SUFFIX)
    assert kept.read_bytes() == b'{"format": 2, "sav'
    assert not persistence.state_path(tmp_path).exists()


def test_a_locked_meeting_keeps_its_lock_bans_and_hosts_across_a_restart(server_config) -> None:
    """The meeting state is saved with the session (issue 14 + 13): after a restart the
    lock and the bans hold, the people who were in come back on their own without waiting
    in the lobby, and the host is host again."""
    first = ConferenceServer(server_config)
    first.start()
    same_ports = replace(server_config, tcp_port=first.tcp_port, udp_port=first.udp_port)
    alice = ConferenceClient("127.0.0.1", first.tcp_port, expected_fingerprint=FP)
    bob = ConferenceClient("127.0.0.1", first.tcp_port, expected_fingerprint=FP)
    ra, rb = Recorder(alice, "reconnected"), Recorder(bob, "reconnected")
    second: ConferenceServer | None = None
    try:
        alice.connect("Alice", "Room", audio=False, video=False)
        bob.connect("Bob", "Room", audio=False, video=False)
        carol, _ = join(first.tcp_port, "Carol")
        wait_for(lambda: len(alice.participants) == 2, what="Bob and Carol in the room")
        carol_id = next(i for i, p in alice.participants.items() if p["username"] == "Carol")
        alice.lock()
        alice.remove(carol_id)
        wait_for(lambda: alice.meeting.get("locked") and alice.meeting.get("bans"), what="ban")
        carol.close()
        first.stop()
        second = ConferenceServer(same_ports)
        second.start()
        wait_for(lambda: ra.get("reconnected") and rb.get("reconnected"), what="both back")
        wait_for(lambda: bob.my_id in alice.participants, what="Bob back in, not in a lobby")
        wait_for(lambda: alice.meeting.get("hosts") == [alice.my_id], what="Alice hosts")
        assert alice.meeting["locked"] is True
        assert [b["username"] for b in alice.meeting["bans"]] == ["Carol"]
        from tests.helpers import Raw
        from tests.test_server_protocol import hello

        again = Raw(second.tcp_port)
        again.send(hello("Carol"))
        again.expect_error("removed")
        again.close()
    finally:
        alice.leave()
        bob.leave()
        first.stop()
        if second is not None:
            second.stop()


def test_a_chat_resent_after_the_place_expired_is_acknowledged_not_stored_twice(
    server_config,
) -> None:
    """A client back by hello after its grace period ran out (the server stayed up) resends
    its outbox: the message it had sent is acknowledged, not delivered a second time."""
    srv = ConferenceServer(replace(server_config, resume_grace_s=0.3))
    srv.start()
    try:
        a, _ = join(srv.tcp_port, "Alice")
        b, _ = join(srv.tcp_port, "Bob")  # keeps the session alive
        a.send(_chat("said before the cut", "feedc0de-1"))
        assert b.expect(Msg.CHAT).header["seq"] == 1
        a.close()  # no bye: the place is kept for 0.3 s, then given up
        b.expect(Msg.PARTICIPANT_LEFT)
        a, welcome = join(srv.tcp_port, "ALICE")  # a new participant with the same name
        assert [m["message"] for m in welcome["chat"]] == ["said before the cut"]
        a.send(_chat("said before the cut", "feedc0de-1"))  # from the outbox, again
        ack = a.expect(Msg.CHAT_ACK).header
        assert (ack["cid"], ack["seq"]) == ("feedc0de-1", 1)
        a.send(_chat("and a new one", "feedc0de-2"))
        assert b.expect(Msg.CHAT).header["message"] == "and a new one"  # not the old one
        for r in (a, b):
            r.close()
    finally:
        srv.stop()
