"""The server's state across a restart and a crash (issue 13): chat ids, saves while
running, kill -9, and damaged state files.

Real servers on loopback ports the OS chose (in-process, or ``server.py`` as a
subprocess killed with SIGKILL); every wait is bounded.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

import config
import persistence
from server import ConferenceServer
from tests.helpers import identity_fingerprint
from tests.test_server_protocol import join
from utils import Msg

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"ready: tcp=(\S+):(\d+) udp=(\S+):(\d+)")
FP = identity_fingerprint()
PROC_WAIT_S = 10.0  # a server.py start or exit


def _chat(text: str, cid: str) -> dict:
    return {"type": Msg.CHAT, "message": text, "cid": cid}


def test_saved_chat_ids_are_bounded_per_member(tmp_path: Path) -> None:
    n = config.STATE_CHAT_IDS_PER_PARTICIPANT
    ids = {"alice": [(f"x-{i}", i) for i in range(1, 3 * n)]}
    s = persistence.SavedSession("Room", "", 3 * n, [], [], ids)
    persistence.save(tmp_path, [s], saved_at=1000.0)
    (back,) = persistence.load(tmp_path, grace_s=60.0, now=1001.0)
    assert back.chat_ids["alice"] == ids["alice"][-n:]


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
