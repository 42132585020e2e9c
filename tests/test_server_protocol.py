"""The server against raw sockets and utils only: joining, control messages, UDP media, limits."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import config
import media_crypto
import security
import utils
from audio_codec import OpusDecoder, OpusEncoder
from server import ConferenceServer
from tests.helpers import MediaSocket, Raw, wait_for
from utils import Err, Msg

HOST = "127.0.0.1"
WAIT_S = 5.0


# --- helpers ---------------------------------------------------------------------------


def hello(username: str, session: str = "Room", password: str = "", **kw: Any) -> dict[str, Any]:
    h = {
        "type": Msg.HELLO,
        "protocol": config.PROTOCOL_VERSION,
        "username": username,
        "session": session,
    }
    h["password"] = password
    h.update(kw)
    return h


def join(port: int, username: str, session: str = "Room", password: str = "") -> tuple[Raw, dict]:
    c = Raw(port)
    c.send(hello(username, session, password))
    frame = c.read()
    assert frame.type == Msg.WELCOME, frame.header
    return c, frame.header


class Udp(MediaSocket):
    """A participant's UDP media socket (sealed), registered with the server."""

    def __init__(self, port: int, welcome: dict[str, Any] | None = None) -> None:
        super().__init__(port, welcome, HOST, WAIT_S)


@contextlib.contextmanager
def running(cfg: config.ServerConfig) -> Iterator[ConferenceServer]:
    srv = ConferenceServer(cfg)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def vfrag(frame_id: int, data: bytes, layer: str = "small", key: bool = True) -> bytes:
    """The first ``v`` payload of a (fake) VP8 frame."""
    return utils.split_vp8_frame(layer, frame_id, key, data)[0]


def fake_vp8(key: bool, width: int = 640, height: int = 480, size: int = 64) -> bytes:
    """Bytes whose VP8 header (RFC 6386 9.1) says keyframe or inter frame; not decodable."""
    if not key:
        return b"\x11\x00\x00" + b"\x00" * max(0, size - 3)
    head = b"\x10\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return head + b"\x00" * max(0, size - len(head))


def screen(seq: int, key: bool, width: int = 640, height: int = 480) -> dict[str, Any]:
    return {"type": Msg.SCREEN_FRAME, "seq": seq, "width": width, "height": height, "keyframe": key}


def subscribe(c: Raw, streams: dict[int, str]) -> None:
    """Subscribe and wait until the server has handled it (a ping behind it came back)."""
    entries = [{"sender": s, "layer": layer} for s, layer in streams.items()]
    c.send({"type": Msg.SUBSCRIBE, "streams": entries})
    c.ping_roundtrip()


def pcm(value: int, samples: int = config.AUDIO_FRAME_SAMPLES) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


# --- connection roles and joining -----------------------------------------------------


def test_list_sessions_then_hello_on_the_same_connection(server):
    q = Raw(server.tcp_port)
    q.send({"type": Msg.LIST_SESSIONS})
    assert q.read().header == {"type": Msg.SESSIONS, "sessions": []}
    a, _ = join(server.tcp_port, "Alice", "Team Meeting", password="pw")  # noqa: S106
    q.send({"type": Msg.LIST_SESSIONS})
    sessions = q.read().header["sessions"]
    assert sessions == [
        {
            "name": "Team Meeting",
            "participants": 1,
            "locked": True,
            "lobby": False,
            "recording": False,
        }
    ]
    q.send(hello("Bob", "Team Meeting", "pw"))
    assert q.read().type == Msg.WELCOME
    assert a.expect(Msg.PARTICIPANT_JOINED).header["participant"]["username"] == "Bob"


def test_first_frame_other_than_a_role_is_not_joined(server):
    c = Raw(server.tcp_port)
    c.send({"type": Msg.CHAT, "message": "hi"})
    h = c.expect_error(Err.NOT_JOINED)
    assert h["re"] == Msg.CHAT
    assert c.closed()


@pytest.mark.parametrize(
    ("hello_fields", "code"),
    [
        ({"protocol": 1}, Err.UNSUPPORTED_PROTOCOL),
        ({"protocol": 3}, Err.UNSUPPORTED_PROTOCOL),
        ({"username": ""}, Err.BAD_USERNAME),
        ({"username": "   "}, Err.BAD_USERNAME),
        ({"username": "x" * 33}, Err.BAD_USERNAME),
        ({"username": "x" * 10_000}, Err.BAD_USERNAME),
        ({"username": "a\x00b"}, Err.BAD_USERNAME),
        ({"username": "a\nb"}, Err.BAD_USERNAME),
        ({"session": ""}, Err.BAD_SESSION),
        ({"session": "s" * 65}, Err.BAD_SESSION),
        ({"session": "a\x1bb"}, Err.BAD_SESSION),
        ({"username": 5}, Err.BAD_MESSAGE),
        ({"protocol": "1"}, Err.BAD_MESSAGE),
        ({"password": "p" * (config.MAX_PASSWORD_CHARS + 1)}, Err.BAD_MESSAGE),
    ],
)
def test_hello_refused_then_closed(server, hello_fields, code):
    c = Raw(server.tcp_port)
    c.send(hello("Alice") | hello_fields)
    h = c.expect_error(code)
    assert h["re"] == Msg.HELLO
    if code == Err.UNSUPPORTED_PROTOCOL:
        assert h["supported"] == [2]
        assert "protocol 2" in h["message"] and "update FusionMeet" in h["message"]
    assert c.closed()


def test_wrong_password_and_username_taken_case_insensitive(server):
    a, _ = join(server.tcp_port, "Alice", "Locked", password="secret")  # noqa: S106
    c = Raw(server.tcp_port)
    c.send(hello("Bob", "Locked", "wrong"))
    c.expect_error(Err.WRONG_PASSWORD)
    assert c.closed()
    c = Raw(server.tcp_port)
    c.send(hello("Bob", "Locked"))  # no password for a locked session
    c.expect_error(Err.WRONG_PASSWORD)
    c = Raw(server.tcp_port)
    c.send(hello("  ALICE ", "locked", "secret"))  # session names match case-insensitively too
    c.expect_error(Err.USERNAME_TAKEN)
    assert c.closed()
    b, welcome = join(server.tcp_port, "Bob", "LOCKED", password="secret")  # noqa: S106
    assert welcome["session"] == "Locked"  # the creator's spelling


def test_session_full(server_config):
    with running(replace(server_config, max_participants=2)) as srv:
        keep = [join(srv.tcp_port, "A"), join(srv.tcp_port, "B")]
        c = Raw(srv.tcp_port)
        c.send(hello("C"))
        c.expect_error(Err.SESSION_FULL)
        assert c.closed()
        assert len(keep) == 2


def test_welcome_fields(server):
    a, wa = join(server.tcp_port, "Alice")
    a.send({"type": Msg.MEDIA, "audio": True, "video": False})
    a.send({"type": Msg.CHAT, "message": "first"})
    a.send({"type": Msg.CHAT, "message": "secret", "to": [wa["you"]["id"]]})
    a.send({"type": Msg.CHAT, "message": "second"})
    for _ in range(3):
        a.expect(Msg.CHAT)
    b, wb = join(server.tcp_port, "Bob")
    assert wb["you"]["username"] == "Bob" and wb["you"]["id"] > wa["you"]["id"] >= 1
    assert len(wb["token"]) == 32 and int(wb["token"], 16) >= 0
    assert wb["token"] != wa["token"]
    assert wb["session"] == "Room"
    assert wb["participants"] == [
        {"id": wa["you"]["id"], "username": "Alice", "audio": True, "video": False,
         "presenting": False, "reconnecting": False}
    ]  # fmt: skip
    assert wb["presenter"] is None
    assert wb["files"] == []
    assert [m["message"] for m in wb["chat"]] == ["first", "second"]  # private not kept
    assert [m["seq"] for m in wb["chat"]] == [1, 3]
    key_a, key_b = wa["media"].pop("key"), wb["media"].pop("key")
    assert len(bytes.fromhex(key_b)) == 32 and key_a != key_b  # one key per participant
    assert wb["media"] == {
        "udp_port": server.udp_port,
        "cipher": "aes-256-gcm",
        "audio": {
            "codec": "opus",
            "rate": 48000,
            "channels": 1,
            "sample_width": 2,
            "frame_samples": 960,
            "frame_ms": 20,
            "fec": True,
            "dtx": True,
            "max_packet": 1275,
        },
        "video": {
            "codec": "vp8",
            "fps": 15,
            "max_datagram": 1200,
            "layers": {
                "small": {"width": 320, "height": 180, "bps": 150000},
                "large": {"width": 1280, "height": 720, "bps": 1500000},
            },
            "max_tiles": 25,
            "max_large": 4,
            "keyframe_min_interval_ms": 200,
            "report_interval_s": 1.0,
        },
    }
    joined = a.expect(Msg.PARTICIPANT_JOINED).header["participant"]
    assert joined == {"id": wb["you"]["id"], "username": "Bob", "audio": False, "video": False,
                      "presenting": False, "reconnecting": False}  # fmt: skip


def test_stats_count_control_bytes_exactly(server):
    c = Raw(server.tcp_port)
    hello_frame = utils.encode_frame(hello("Alice"))
    c.send_raw(hello_frame)
    welcome = c.read().header
    out = len(utils.encode_frame(welcome))
    wait_for(lambda: server.snapshot_stats().get("tcp_bytes_out") == out, what="bytes out")
    stats = server.snapshot_stats()
    assert stats["tcp_bytes_in"] == len(hello_frame) == stats["bytes_in"]
    assert stats["frames_in"] == 1 and stats["frames_out"] == 1 and stats["bytes_out"] == out


def test_chat_history_is_bounded(server_config):
    cfg = server_config
    cfg.chat_burst_messages = 1000  # 505 messages at once: not what this test is about
    with running(cfg) as srv:
        a, _ = join(srv.tcp_port, "A")
        n = config.CHAT_HISTORY_MESSAGES + 5
        for i in range(n):
            a.send({"type": Msg.CHAT, "message": f"m{i}"})
        for _ in range(n):
            a.expect(Msg.CHAT)
        _, wb = join(srv.tcp_port, "B")
        assert len(wb["chat"]) == config.CHAT_HISTORY_MESSAGES
        assert wb["chat"][0]["message"] == "m5" and wb["chat"][-1]["message"] == f"m{n - 1}"


# --- control messages -----------------------------------------------------------------------


def test_chat_seq_order_and_fields(server):
    a, wa = join(server.tcp_port, "Alice")
    b, wb = join(server.tcp_port, "Bob")
    a.send({"type": Msg.CHAT, "message": "hello <b>x</b>"})
    b.send({"type": Msg.CHAT, "message": "yo"})
    got_a = [a.expect(Msg.CHAT).header for _ in range(2)]
    got_b = [b.expect(Msg.CHAT).header for _ in range(2)]
    assert got_a == got_b
    assert [m["seq"] for m in got_a] == [1, 2]
    by_text = {m["message"]: m for m in got_a}
    assert by_text["hello <b>x</b>"]["from"] == wa["you"]["id"]
    assert by_text["yo"]["username"] == "Bob"
    assert abs(by_text["yo"]["timestamp"] - time.time()) < 60


def test_private_chat_and_unknown_recipient(server):
    a, wa = join(server.tcp_port, "Alice")
    b, wb = join(server.tcp_port, "Bob")
    c, wc = join(server.tcp_port, "Carol")
    a.send({"type": Msg.CHAT, "message": "psst", "to": [wb["you"]["id"]]})
    for conn in (a, b):
        m = conn.expect(Msg.CHAT).header
        assert m["message"] == "psst" and m["to"] == [wb["you"]["id"]]
    a.send({"type": Msg.CHAT, "message": "x", "to": [9999, wb["you"]["id"]]})
    h = a.expect_error(Err.NO_SUCH_PARTICIPANT)
    assert h["re"] == Msg.CHAT
    a.send({"type": Msg.CHAT, "message": "all"})
    assert a.expect(Msg.CHAT).header["message"] == "all"
    assert b.expect(Msg.CHAT).header["message"] == "all"
    m = c.expect(Msg.CHAT).header
    assert m["message"] == "all"  # Carol never saw the private one


@pytest.mark.parametrize(
    "message",
    ["", "   ", "x" * (config.MAX_CHAT_CHARS + 1), "\x07\u202e\u200b"],  # only invisibles
)
def test_bad_chat_is_refused_and_the_connection_stays(server, message):
    a, _ = join(server.tcp_port, "Alice")
    a.send({"type": Msg.CHAT, "message": message})
    assert a.expect_error(Err.BAD_MESSAGE)["re"] == Msg.CHAT
    a.send({"type": Msg.CHAT, "message": "x" * config.MAX_CHAT_CHARS})
    assert len(a.expect(Msg.CHAT).header["message"]) == config.MAX_CHAT_CHARS


def test_media_broadcasts_participant_updated(server):
    a, wa = join(server.tcp_port, "Alice")
    b, _ = join(server.tcp_port, "Bob")
    a.send({"type": Msg.MEDIA, "audio": True, "video": True})
    p = b.expect(Msg.PARTICIPANT_UPDATED).header["participant"]
    assert p == {"id": wa["you"]["id"], "username": "Alice", "audio": True, "video": True,
                 "presenting": False, "reconnecting": False}  # fmt: skip


def test_presenter_busy_and_release_on_disconnect(server):
    a, wa = join(server.tcp_port, "Alice")
    b, wb = join(server.tcp_port, "Bob")
    a.send({"type": Msg.PRESENT_START})
    a.expect(Msg.PRESENT_GRANTED)
    assert b.expect(Msg.PRESENTER_CHANGED).header["presenter"] == wa["you"]["id"]
    b.send({"type": Msg.PRESENT_START})
    h = b.expect_error(Err.PRESENTER_BUSY)
    assert h["message"] == "Another user is presenting" and h["re"] == Msg.PRESENT_START
    b.send(screen(1, True, 2, 2), fake_vp8(True, 2, 2))
    assert b.expect_error(Err.NOT_PRESENTER)["re"] == Msg.SCREEN_FRAME
    _, wc = join(server.tcp_port, "Carol")
    assert wc["presenter"] == wa["you"]["id"]
    assert {p["username"]: p["presenting"] for p in wc["participants"]} == {
        "Alice": True,
        "Bob": False,
    }
    a.close()  # disconnect without bye: the place is kept, the presentation released
    assert b.expect(Msg.PRESENTER_CHANGED).header["presenter"] is None
    away = b.expect(Msg.PARTICIPANT_UPDATED).header["participant"]
    assert away["id"] == wa["you"]["id"] and away["reconnecting"] is True
    b.send({"type": Msg.PRESENT_START})
    b.expect(Msg.PRESENT_GRANTED)
    assert b.expect(Msg.PRESENTER_CHANGED).header["presenter"] == wb["you"]["id"]
    b.send({"type": Msg.PRESENT_STOP})
    assert b.expect(Msg.PRESENTER_CHANGED).header["presenter"] is None


def test_screen_frame_forwarded_to_the_others_from_a_keyframe_on(server):
    a, wa = join(server.tcp_port, "Alice")
    b, _ = join(server.tcp_port, "Bob")
    a.send({"type": Msg.PRESENT_START})
    a.expect(Msg.PRESENT_GRANTED)
    a.send(screen(6, False), fake_vp8(False))  # Bob has no keyframe yet: not sent to him
    assert a.expect(Msg.KEYFRAME_REQUEST).header == {
        "type": Msg.KEYFRAME_REQUEST,
        "layer": "screen",
    }
    key = fake_vp8(True)
    a.send(screen(7, True), key)
    f = b.expect(Msg.SCREEN_FRAME)
    assert f.header == {"type": Msg.SCREEN_FRAME, "from": wa["you"]["id"], "seq": 7,
                        "width": 640, "height": 480, "keyframe": True}  # fmt: skip
    assert f.payload == key
    a.send(screen(8, False), fake_vp8(False))
    assert b.expect(Msg.SCREEN_FRAME).header["seq"] == 8
    a.ping_roundtrip()  # the presenter gets no copy of its own frame
    a.send({"type": Msg.PING, "t": "after"})
    assert a.read().header == {"type": Msg.PONG, "t": "after"}


@pytest.mark.parametrize(
    ("header", "payload", "why"),
    [
        (screen(1, True), fake_vp8(False), "does not match"),
        (screen(1, False), fake_vp8(True), "does not match"),
        (screen(1, True), fake_vp8(True, 320, 240), "a 320x240 keyframe said 640x480"),
        (screen(1, True, 4000, 480), fake_vp8(True, 4000, 480), "over 1920x1080"),
        (screen(1, True), b"\xff\xd8jpeg", "not a VP8 frame"),
        (screen(1, True), b"", "not a VP8 frame"),
    ],
)
def test_bad_screen_frames_are_refused(server, header, payload, why):
    a, _ = join(server.tcp_port, "Alice")
    a.send({"type": Msg.PRESENT_START})
    a.expect(Msg.PRESENT_GRANTED)
    a.send(header, payload)
    h = a.expect_error(Err.BAD_MESSAGE)
    assert h["re"] == Msg.SCREEN_FRAME and why in h["message"]


def test_screen_resync_for_a_slow_receiver_and_late_joiner_keyframe(server):
    """A receiver that lags has its queue dropped and gets nothing until a keyframe;
    the presenter is asked for one; chat is never dropped."""
    p, _ = join(server.tcp_port, "Presenter")
    slow = Raw(server.tcp_port, rcvbuf=4096)
    slow.send(hello("Slow"))
    assert slow.read().type == Msg.WELCOME
    talker, _ = join(server.tcp_port, "Talker")
    p.send({"type": Msg.PRESENT_START})
    p.expect(Msg.PRESENT_GRANTED)
    big = 256 * 1024
    p.send(screen(0, True), fake_vp8(True, size=big))
    sent = 60
    for seq in range(1, sent):
        key = seq == sent - 1  # the last one a keyframe: the slow receiver resyncs on it
        p.send(screen(seq, key), fake_vp8(key, size=big))
        if seq % 10 == 0:
            talker.send({"type": Msg.CHAT, "message": f"chat {seq}"})
    p.ping_roundtrip()  # every frame has been handled by the server
    talker.ping_roundtrip()
    assert server.snapshot_stats().get("screen_resyncs", 0) >= 1
    seqs, keys, chats = [], [], []
    while not seqs or seqs[-1] != sent - 1:
        f = slow.read()
        if f.type == Msg.SCREEN_FRAME:
            seqs.append(f.header["seq"])
            keys.append(f.header["keyframe"])
        elif f.type == Msg.CHAT:
            chats.append(f.header["message"])
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and len(seqs) < sent
    # Never a gap without a keyframe after it: what arrives decodes.
    for before, after, key in zip(seqs, seqs[1:], keys[1:], strict=False):
        assert after == before + 1 or key, f"frame {after} follows {before} without a keyframe"
    # Every chat was queued before talker's ping came back; one may follow the last frame.
    while len(chats) < (sent - 1) // 10:
        f = slow.read()
        if f.type == Msg.CHAT:
            chats.append(f.header["message"])
    assert chats == [f"chat {i}" for i in range(10, sent, 10)]  # control never dropped
    # A late joiner: the presenter is asked for a keyframe (at once, or coalesced at the
    # end of the throttle interval). First read what the presenter was sent so far.
    interval = config.KEYFRAME_REQUEST_MIN_INTERVAL_MS / 1000
    drain_until = time.monotonic() + interval
    while (left := drain_until - time.monotonic()) > 0:
        p.sock.settimeout(left)
        try:
            p.read()
        except TimeoutError:
            break
    control_seen = []
    late, _ = join(server.tcp_port, "Late")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not control_seen:
        p.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            f = p.read()
        except TimeoutError:
            break
        if f.type == Msg.KEYFRAME_REQUEST:
            control_seen.append(f.header)
    assert control_seen == [{"type": Msg.KEYFRAME_REQUEST, "layer": "screen"}]
    assert late is not None


def test_too_slow_client_is_disconnected_others_fine(server_config):
    # 1 MiB: small enough to overflow quickly, large enough that the healthy readers
    # (Python threads in this busy process) never come near it.
    cfg = replace(server_config, client_queue_max_bytes=1024 * 1024, resume_grace_s=0.0)
    cfg.chat_burst_messages = cfg.chat_burst_bytes = 10**9  # the talker is not the point
    with running(cfg) as srv:
        slow = Raw(srv.tcp_port, rcvbuf=4096)
        slow.send(hello("Slow"))
        wslow = slow.read().header
        talker, _ = join(srv.tcp_port, "Talker")
        other, _ = join(srv.tcp_port, "Other")
        lefts: list[dict] = []
        other_chats = [0]
        stop = threading.Event()

        def drain_other() -> None:
            with contextlib.suppress(OSError, utils.ConnectionClosed):
                while not stop.is_set():
                    f = other.read()
                    if f.type == Msg.CHAT:
                        other_chats[0] += 1

        drainer = threading.Thread(target=drain_other, name="drain-other")
        drainer.start()
        text = "x" * config.MAX_CHAT_CHARS
        sent = 0
        # The talker waits for its own echo each time (a healthy client); the slow one
        # never reads, so its queue grows until the server cuts it off.
        while not lefts and sent < 20000:
            talker.send({"type": Msg.CHAT, "message": text})
            sent += 1
            while True:
                f = talker.read()
                if f.type == Msg.CHAT:
                    break
                if f.type == Msg.PARTICIPANT_LEFT:
                    lefts.append(f.header)
        assert lefts[0]["id"] == wslow["you"]["id"]
        assert srv.snapshot_stats()["clients_too_slow"] == 1
        assert sent * len(text) > cfg.client_queue_max_bytes
        wait_for(lambda: other_chats[0] == sent, what="every chat at the other client")
        assert slow.closed()
        talker.ping_roundtrip()
        stop.set()
        other.send({"type": Msg.BYE})
        drainer.join(WAIT_S)
        assert not drainer.is_alive()


def test_heartbeat_timeout_removes_a_silent_client(server_config):
    with running(replace(server_config, heartbeat_timeout_s=0.5, resume_grace_s=0.0)) as srv:
        quiet, wq = join(srv.tcp_port, "Quiet")
        alive, _ = join(srv.tcp_port, "Alive")

        def keep_alive() -> dict:
            # Alive pings while waiting, so only Quiet is silent.
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                alive.send({"type": Msg.PING})
                alive.sock.settimeout(0.1)
                with contextlib.suppress(TimeoutError):
                    while True:
                        f = alive.read()
                        if f.type == Msg.PARTICIPANT_LEFT:
                            return f.header
            raise AssertionError("no participant_left")

        left = keep_alive()
        assert left["id"] == wq["you"]["id"]
        quiet.expect_error(Err.TIMEOUT)
        assert quiet.closed()


def test_bye_closes_and_others_are_told(server):
    a, wa = join(server.tcp_port, "Alice")
    b, _ = join(server.tcp_port, "Bob")
    a.send({"type": Msg.BYE})
    assert a.closed()
    assert b.expect(Msg.PARTICIPANT_LEFT).header["id"] == wa["you"]["id"]


def test_session_ends_with_its_last_participant(server):
    a, _ = join(server.tcp_port, "Alice", "Locked", password="pw")  # noqa: S106
    a.send({"type": Msg.CHAT, "message": "old"})
    a.expect(Msg.CHAT)
    a.send({"type": Msg.BYE})
    assert a.closed()
    wait_for(lambda: server.list_sessions() == [], what="the session to end")
    _, w = join(server.tcp_port, "Bob", "Locked")  # a new, unlocked session
    assert w["chat"] == [] and w["participants"] == []


# --- bad input ----------------------------------------------------------------------------------

FRAMED_BAD = [
    pytest.param(struct.pack("!II", 9, 0) + b"not json!", Err.BAD_MESSAGE, id="broken-json"),
    pytest.param(struct.pack("!II", 2, 0) + b"[]", Err.BAD_MESSAGE, id="json-array"),
    pytest.param(struct.pack("!II", 2, 0) + b"{}", Err.BAD_MESSAGE, id="no-type"),
    pytest.param(struct.pack("!II", 10, 0) + b'{"type":1}', Err.BAD_MESSAGE, id="int-type"),
    pytest.param(struct.pack("!II", 2, 0) + b"\xff\xfe", Err.BAD_MESSAGE, id="not-utf8"),
    pytest.param(
        struct.pack("!II", 65536, 0) + b"[" * 65536, Err.BAD_MESSAGE, id="nested-65536-deep"
    ),
    pytest.param(utils.encode_frame({"type": "warp_drive"}), Err.UNKNOWN_TYPE, id="unknown"),
    pytest.param(
        utils.encode_frame({"type": Msg.CHAT, "message": 5}), Err.BAD_MESSAGE, id="int-message"
    ),
    pytest.param(
        utils.encode_frame({"type": Msg.CHAT, "message": "x", "to": "all"}),
        Err.BAD_MESSAGE,
        id="to-string",
    ),
    pytest.param(
        utils.encode_frame({"type": Msg.MEDIA, "audio": 1, "video": True}),
        Err.BAD_MESSAGE,
        id="media-int",
    ),
    pytest.param(
        utils.encode_frame({"type": Msg.SCREEN_FRAME, "seq": "1", "width": 1, "height": 1}),
        Err.BAD_MESSAGE,
        id="screen-str-seq",
    ),
    pytest.param(utils.encode_frame({"type": Msg.FILE_OFFER}), Err.BAD_MESSAGE, id="offer-empty"),
    pytest.param(utils.encode_frame(hello("Again")), Err.BAD_MESSAGE, id="second-hello"),
]


@pytest.mark.parametrize(("data", "code"), FRAMED_BAD)
def test_bad_well_framed_message_keeps_the_connection(server, data, code):
    a, _ = join(server.tcp_port, "Alice")
    a.send_raw(data)
    a.expect_error(code)
    a.ping_roundtrip()
    a.send({"type": Msg.CHAT, "message": "still here"})
    assert a.expect(Msg.CHAT).header["message"] == "still here"


@pytest.mark.parametrize(
    "prefix",
    [
        struct.pack("!II", 0xFFFFFFFF, 0),
        struct.pack("!II", 10, 0xFFFFFFFF),
        struct.pack("!II", config.MAX_HEADER_BYTES + 1, 0),
    ],  # fmt: skip
    ids=["4GB-header", "4GB-payload", "header-limit+1"],
)
def test_frame_too_large_closes(server, prefix):
    a, _ = join(server.tcp_port, "Alice")
    b, _ = join(server.tcp_port, "Bob")
    a.send_raw(prefix)
    a.expect_error(Err.FRAME_TOO_LARGE)
    assert a.closed()
    assert b.expect(Msg.PARTICIPANT_LEFT).header["username"] == "Alice"
    q = Raw(server.tcp_port)  # as a first frame too
    q.send_raw(prefix)
    q.expect_error(Err.FRAME_TOO_LARGE)
    assert q.closed()


def test_hostile_connections_then_the_server_still_serves(server):
    rng = np.random.default_rng(7)
    hostile = [
        rng.bytes(4096),
        struct.pack("!II", 0xFFFFFFFF, 0xFFFFFFFF),
        struct.pack("!II", 9, 0) + b"not json!",
        struct.pack("!II", 2, 0) + b"[]",
        utils.encode_frame({"type": "x" * 1000}),
        utils.encode_frame(hello("u" * 10_000)),
        utils.encode_frame({"type": Msg.HELLO, "protocol": config.PROTOCOL_VERSION}),
        utils.encode_frame({"type": Msg.UPLOAD, "file_id": "f1", "token": "0" * 32}),
        utils.encode_frame({"type": Msg.DOWNLOAD, "file_id": "f1", "token": 7}),
        struct.pack("!II", 100, 0) + b"{",  # truncated, then the peer closes
        b"",
    ]
    for data in hostile:
        c = Raw(server.tcp_port)
        if data:
            c.send_raw(data)
        # The server may already have closed a connection it refused: then there is
        # nothing left to shut down on this side.
        with contextlib.suppress(OSError):
            c.sock.shutdown(socket.SHUT_WR)
        assert c.closed()
        c.close()
    a, _ = join(server.tcp_port, "Alice")
    a.ping_roundtrip()


def test_junk_datagrams_are_counted_and_media_goes_on(server):
    a, wa = join(server.tcp_port, "Alice")
    b, wb = join(server.tcp_port, "Bob")
    ua = Udp(server.udp_port, wa)
    ub = Udp(server.udp_port, wb)
    junk = Udp(server.udp_port)
    rng = np.random.default_rng(1)
    before = server.snapshot_stats().get("datagrams_dropped", 0)
    n = 20_000
    kinds = [b"h", b"a", b"v", b"l", b"k", b"z"]
    for i in range(n):
        size = int(rng.integers(0, 64))
        data = kinds[i % len(kinds)] + rng.bytes(size)
        if i % 3 == 0 and size >= 11:  # a valid header with bad contents
            data = kinds[i % len(kinds)] + b"\x01" + rng.bytes(size)
        junk.send_raw(data)
    # The server handles datagrams in order, so once a later probe is answered, all
    # junk has been processed (some may be lost in the kernel: count what arrived).
    ua.register()
    stats = server.snapshot_stats()
    assert stats["datagrams_dropped"] - before == stats["datagrams_in"] - 3  # all but the 3 h
    assert stats["datagrams_dropped"] - before > n // 2
    subscribe(b, {wa["you"]["id"]: "small"})
    data = utils.pack_media(utils.KIND_VIDEO, wa["you"]["id"], 1, 0) + vfrag(1, b"vp8")
    ua.send(data)
    assert ub.recv_kind(utils.KIND_VIDEO).payload.endswith(b"vp8")
    a.ping_roundtrip()


# --- UDP media ------------------------------------------------------------------------------


def test_udp_register_and_rebind(server):
    a, wa = join(server.tcp_port, "Alice")
    b, wb = join(server.tcp_port, "Bob")
    ub = Udp(server.udp_port, wb)
    u1 = Udp(server.udp_port, wa)
    u2 = Udp(server.udp_port)  # same participant (same key and counter), a new address
    u2.cipher, u2.sender = u1.cipher, u1.sender
    recorded_h = u2.seal(utils.pack_media(utils.KIND_REGISTER, u1.sender, 0, 0))
    u2.send_raw(recorded_h)
    u2.recv_kind(utils.KIND_REGISTER)
    subscribe(b, {wa["you"]["id"]: "small"})
    frag = vfrag(5, b"frame")
    u1.send(utils.pack_media(utils.KIND_VIDEO, wa["you"]["id"], 1, 0, frag))  # old address
    u2.send(utils.pack_media(utils.KIND_VIDEO, wa["you"]["id"], 2, 0, frag))
    assert utils.Datagram.parse(ub.recv()).seq == 2  # only the bound address is heard
    stats = server.snapshot_stats()
    assert stats["datagrams_unbound"] == 1
    bad = Udp(server.udp_port)
    bad.send_raw(utils.pack_media(utils.KIND_REGISTER, 999, 0, 0, b"0" * 32))  # nobody's id
    bad.send_raw(utils.pack_media(utils.KIND_REGISTER, 0, 0, 0, b"zz"))  # too short to be sealed
    # The token in clear proves nothing any more; a sealed h under another key neither.
    bad.send_raw(utils.pack_media(utils.KIND_REGISTER, u1.sender, 0, 0, wa["token"].encode()))
    bad.send_raw(recorded_h)  # a recorded registration replayed from another address
    wait_for(lambda: server.snapshot_stats().get("datagrams_bad_token") == 1, what="bad id")
    wait_for(lambda: server.snapshot_stats().get("datagrams_truncated") == 1, what="truncated")
    wait_for(lambda: server.snapshot_stats().get("datagrams_bad_tag") == 1, what="forged h")
    wait_for(
        lambda: server.snapshot_stats().get("datagrams_stale_registration") == 1, what="replay"
    )
    u2.send(utils.pack_media(utils.KIND_VIDEO, wa["you"]["id"], 3, 0, frag))
    assert utils.Datagram.parse(ub.recv()).seq == 3  # the binding did not move to ``bad``


def test_spoofed_sender_is_dropped_and_counted(server):
    a, wa = join(server.tcp_port, "Alice")
    b, wb = join(server.tcp_port, "Bob")
    ua = Udp(server.udp_port, wa)
    ub = Udp(server.udp_port, wb)
    stranger = Udp(server.udp_port)  # seals under a key of its own: still not Alice
    stranger.cipher = media_crypto.MediaCipher(
        media_crypto.new_media_key(), media_crypto.CLIENT_SIDE
    )
    subscribe(a, {wb["you"]["id"]: "small"})
    subscribe(b, {wa["you"]["id"]: "small"})
    frag = vfrag(1, b"fake")
    stranger.send(utils.pack_media(utils.KIND_VIDEO, wa["you"]["id"], 1, 0, frag))
    ub.send(utils.pack_media(utils.KIND_VIDEO, wa["you"]["id"], 1, 0, frag))  # Bob claims Alice
    stranger.send(utils.pack_media(utils.KIND_AUDIO, wa["you"]["id"], 1, 0, b"\x08" * 40))
    wait_for(lambda: server.snapshot_stats().get("datagrams_unbound") == 3, what="3 drops")
    real = vfrag(2, b"real")
    ub.send(utils.pack_media(utils.KIND_VIDEO, wb["you"]["id"], 1, 0, real))
    assert ua.recv_kind(utils.KIND_VIDEO).payload == real  # the fakes never arrived first


def test_video_forwarded_unchanged_to_the_subscribed_others_only(server):
    conns = [join(server.tcp_port, name) for name in ("A", "B", "C")]
    udps = [Udp(server.udp_port, w) for _, w in conns]
    _, other_session = join(server.tcp_port, "D", "Elsewhere")
    ud = Udp(server.udp_port, other_session)
    sender_id = conns[0][1]["you"]["id"]
    for c, _ in conns[1:]:
        subscribe(c, {sender_id: "small"})
    vp8 = os.urandom(3000)  # three fragments
    datagrams = [
        utils.pack_media(utils.KIND_VIDEO, sender_id, i, 1234, frag)
        for i, frag in enumerate(utils.split_vp8_frame("small", 9, True, vp8))
    ]
    assert len(datagrams) == 3
    # The counter follows the send, so the last h reply may still be uncounted.
    wait_for(lambda: server.snapshot_stats().get("datagrams_out") == 4, what="4 h replies")
    out_before = 4
    for d in datagrams:
        udps[0].send(d)
    for u in udps[1:]:
        got = [u.recv() for _ in datagrams]
        assert sorted(got) == sorted(datagrams)  # byte for byte
    wait_for(lambda: server.snapshot_stats()["datagrams_out"] - out_before >= 6, what="forwards")
    assert server.snapshot_stats()["datagrams_out"] - out_before == 6  # not to A, not to D
    for u in (udps[0], ud):
        with pytest.raises(TimeoutError):
            u.recv(timeout=0.3)


def tone_frame(freq: float, k: int, amp: float) -> np.ndarray:
    n = config.AUDIO_FRAME_SAMPLES
    t = (np.arange(n) + k * n) / config.AUDIO_RATE_HZ
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype("<i2")


def band(pcm: np.ndarray, freq: float) -> float:
    x = pcm.astype(np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / config.AUDIO_RATE_HZ)
    return float((spec[(freqs > freq - 20) & (freqs < freq + 20)] ** 2).sum())


def test_n_minus_1_mix_over_raw_udp(server):
    """Raw datagrams as an independent client would send them: one Opus packet each."""
    (a, wa), (b, wb), (c, wc) = (join(server.tcp_port, n) for n in ("A", "B", "C"))
    assert wa["media"]["audio"]["codec"] == "opus" and wa["media"]["audio"]["rate"] == 48000
    ua, ub, uc = (Udp(server.udp_port, w) for w in (wa, wb, wc))
    ida, idb = wa["you"]["id"], wb["you"]["id"]
    enc_a, enc_b = OpusEncoder(), OpusEncoder()
    got: dict[str, list[tuple[int, bytes]]] = {"a": [], "b": [], "c": []}
    start = time.monotonic()
    for seq in range(60):  # 1.2 s, paced like a microphone
        ua.send(
            utils.pack_media(
                utils.KIND_AUDIO, ida, seq, seq * 20, enc_a.encode(tone_frame(400, seq, 8000))
            )
        )
        ub.send(
            utils.pack_media(
                utils.KIND_AUDIO, idb, seq, seq * 20, enc_b.encode(tone_frame(1000, seq, 8000))
            )
        )
        for key, u in (("a", ua), ("b", ub), ("c", uc)):
            with contextlib.suppress(TimeoutError):
                while True:
                    dg = utils.Datagram.parse(u.recv(timeout=0.001))
                    if dg.kind != utils.KIND_AUDIO:
                        continue
                    assert dg.sender == 0
                    got[key].append((dg.seq, utils.AudioPacket.parse(dg.payload).opus))
        delay = start + (seq + 1) * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing, not synchronisation
    heard = {}
    for key, packets in got.items():
        assert len(packets) > 20, (key, len(packets))
        dec = OpusDecoder()
        heard[key] = np.concatenate([dec.decode(p) for _, p in sorted(packets)[-25:]])
    e = {k: (band(v, 400), band(v, 1000)) for k, v in heard.items()}
    # Each hears only the others: never its own voice in the mix.
    assert e["a"][1] > 1000 * e["a"][0], e
    assert e["b"][0] > 1000 * e["b"][1], e
    assert e["c"][0] > 0 and e["c"][1] > 0 and 0.2 < e["c"][0] / e["c"][1] < 5, e


def test_mix_is_loud_without_wrapping_and_levels_are_sent(server):
    (a, wa), (b, wb), (c, wc) = (join(server.tcp_port, n) for n in ("A", "B", "C"))
    ua, ub, uc = (Udp(server.udp_port, w) for w in (wa, wb, wc))
    ida, idb = wa["you"]["id"], wb["you"]["id"]
    enc_a, enc_b = OpusEncoder(), OpusEncoder()
    packets: list[tuple[int, bytes]] = []
    levels = None
    deadline = time.monotonic() + 10
    seq = 0
    while time.monotonic() < deadline and (len(packets) < 30 or not levels):
        # Two talkers in phase at 25000 each: the sum (50000) must clip, not wrap.
        frame = tone_frame(500, seq, 25000)
        ua.send(utils.pack_media(utils.KIND_AUDIO, ida, seq, 0, enc_a.encode(frame)))
        ub.send(utils.pack_media(utils.KIND_AUDIO, idb, seq, 0, enc_b.encode(frame)))
        seq += 1
        with contextlib.suppress(TimeoutError):
            while True:
                dg = utils.Datagram.parse(uc.recv(timeout=0.02))
                if dg.kind == utils.KIND_AUDIO:
                    packets.append((dg.seq, dg.payload))
                elif dg.kind == utils.KIND_LEVELS:
                    lv = utils.parse_levels(dg.payload)
                    if lv.get(ida, 0) > 200 and lv.get(idb, 0) > 200:
                        levels = lv
    dec = OpusDecoder()
    pcm = np.concatenate([dec.decode(p) for _, p in sorted(packets)])
    # Clipped: louder than one talker; wrapped around it would have cancelled out.
    assert np.abs(pcm).max() > 28000
    assert levels is not None and levels[wc["you"]["id"]] == 0


def test_audio_of_the_wrong_size_is_dropped(server):
    a, wa = join(server.tcp_port, "A")
    ua = Udp(server.udp_port, wa)
    big = b"\x00" * (config.OPUS_MAX_PACKET_BYTES + 1)  # more than one Opus packet
    ua.send(utils.pack_media(utils.KIND_AUDIO, wa["you"]["id"], 1, 0, big))
    ua.send(utils.pack_media(utils.KIND_KEEPALIVE, wa["you"]["id"], 1, 0))
    wait_for(lambda: server.snapshot_stats().get("datagrams_malformed") == 1, what="drop")
    assert server.snapshot_stats()["datagrams_dropped"] == 1


# --- files (glue only; file_store is tested by its own tests) -----------------------------


def test_file_offer_upload_download_and_delete(server):
    a, wa = join(server.tcp_port, "Alice")
    b, wb = join(server.tcp_port, "Bob")
    content = os.urandom(100_000)
    a.send({"type": Msg.FILE_OFFER, "name": "../../etc/Report.pdf", "size": len(content)})
    file_id = a.expect(Msg.UPLOAD_READY).header["file_id"]
    up = Raw(server.tcp_port)
    up.send({"type": Msg.UPLOAD, "file_id": file_id, "token": wa["token"]})
    up.send_raw(content)
    done = up.read().header
    assert done["type"] == Msg.UPLOAD_DONE and done["file_id"] == file_id
    import hashlib

    assert done["sha256"] == hashlib.sha256(content).hexdigest()
    assert up.closed()
    info = b.expect(Msg.FILE_ADDED).header["file"]
    assert info["id"] == file_id and "/" not in info["name"] and info["owner"] == wa["you"]["id"]
    down = Raw(server.tcp_port)
    down.send({"type": Msg.DOWNLOAD, "file_id": file_id, "token": wb["token"], "offset": 10})
    start = down.read().header
    assert start["type"] == Msg.DOWNLOAD_START and start["size"] == len(content)
    assert utils.recv_exact(down.sock, len(content) - 10) == content[10:]
    _, wc = join(server.tcp_port, "Carol")
    assert [f["id"] for f in wc["files"]] == [file_id]
    b.send({"type": Msg.FILE_DELETE, "file_id": file_id})
    assert b.expect_error(Err.NOT_OWNER)["re"] == Msg.FILE_DELETE
    a.send({"type": Msg.FILE_DELETE, "file_id": file_id})
    assert b.expect(Msg.FILE_REMOVED).header["file_id"] == file_id


def test_file_errors(server_config):
    with running(replace(server_config, max_file_bytes=1000)) as srv:
        a, wa = join(srv.tcp_port, "Alice")
        a.send({"type": Msg.FILE_OFFER, "name": "big.bin", "size": 1001})
        assert a.expect_error(Err.FILE_TOO_LARGE)["re"] == Msg.FILE_OFFER
        a.send({"type": Msg.FILE_OFFER, "name": "///", "size": 10})
        assert a.expect_error(Err.BAD_NAME)["re"] == Msg.FILE_OFFER
        for first in (
            {"type": Msg.UPLOAD, "file_id": "f1", "token": "0" * 32},
            {"type": Msg.DOWNLOAD, "file_id": "f1", "token": "nope", "offset": 0},
        ):
            c = Raw(srv.tcp_port)
            c.send(first)
            assert c.expect_error(Err.BAD_TOKEN)["re"] == first["type"]
            assert c.closed()
        c = Raw(srv.tcp_port)
        c.send({"type": Msg.DOWNLOAD, "file_id": "f1", "token": wa["token"], "offset": 0})
        c.expect_error(Err.NO_SUCH_FILE)
        assert c.closed()
        a.ping_roundtrip()


# --- lifecycle ----------------------------------------------------------------------------------


def test_stop_tells_clients_and_leaves_no_thread_or_port(server_config):
    before = {t.ident for t in threading.enumerate()}
    srv = ConferenceServer(server_config)
    srv.start()
    a, _ = join(srv.tcp_port, "Alice")
    q = Raw(srv.tcp_port)  # a connection still deciding its role
    ua = Udp(srv.udp_port)
    tcp_port, udp_port = srv.tcp_port, srv.udp_port
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 2.0
    a.expect_error(Err.SERVER_SHUTDOWN)
    assert a.closed() and q.closed()
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert left == []
    for kind, port in ((socket.SOCK_STREAM, tcp_port), (socket.SOCK_DGRAM, udp_port)):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            s.bind((HOST, port))  # the port is free again
    ua.close()
    srv.stop()  # idempotent


@pytest.mark.parametrize("server_config", [{"max_connections": 2}], indirect=True)
def test_connections_over_the_cap_are_refused(server):
    a, _ = join(server.tcp_port, "Alice")
    q = Raw(server.tcp_port)
    q.send({"type": Msg.LIST_SESSIONS})
    assert q.read().type == Msg.SESSIONS  # two connections are being served
    # Refused by the accept thread before any TLS (it never blocks on a handshake): the
    # plain server_full frame it sends ends the client's handshake at once, no hang.
    with pytest.raises(security.HandshakeError):
        Raw(server.tcp_port)
    q.close()
    a.ping_roundtrip()

    def third_accepted() -> bool:
        try:
            c = Raw(server.tcp_port)
        except security.HandshakeError:
            return False
        c.send({"type": Msg.LIST_SESSIONS})
        try:
            return c.read().type == Msg.SESSIONS
        except (utils.ConnectionClosed, ConnectionResetError):
            return False
        finally:
            c.close()

    wait_for(third_accepted, what="a free connection slot after one closed")


def test_mixes_stop_after_the_hangover_when_nobody_talks(server):
    (a, wa), (b, wb) = (join(server.tcp_port, n) for n in ("A", "B"))
    ua, ub = (Udp(server.udp_port, w) for w in (wa, wb))
    talked = 3
    enc = OpusEncoder()
    for seq in range(talked):
        packet = enc.encode(tone_frame(500, seq, 8000))
        ua.send(utils.pack_media(utils.KIND_AUDIO, wa["you"]["id"], seq, 0, packet))
    seqs = []
    with contextlib.suppress(TimeoutError):
        while True:  # ends when nothing arrives for 0.5 s (25 frame periods)
            dg = utils.Datagram.parse(ub.recv(timeout=0.5))
            if dg.kind == utils.KIND_AUDIO:
                seqs.append(dg.seq)
    # The three frames, then concealment while the buffer waits for more (a paused
    # stream), then the hangover and silence until the encoder's DTX marker; then
    # nothing. seq counts the server's ticks.
    most = (
        talked
        + config.JB_MAX_CONCEAL_FRAMES
        + config.MIXER_HANGOVER_FRAMES
        + config.MIXER_DTX_WAIT_FRAMES
    )
    # B never reports its loss, so the server repeats to it (at most
    # AUDIO_REPEAT_UNMEASURED_FRAMES): each packet, then the previous one again.
    firsts = list(dict.fromkeys(seqs))
    assert talked <= len(firsts) <= most, seqs
    assert firsts == sorted(firsts) and len(seqs) <= 2 * len(firsts)
