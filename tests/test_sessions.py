"""sessions.py and media_relay.py driven directly: no sockets to the server, no threads."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import config
import utils
from media_relay import MediaRelay
from sessions import JoinRefused, SessionTable, clean_hello, media_params
from utils import Err, Msg

CFG = config.ServerConfig(max_participants=3)


class FakeOutbox:
    def __init__(self) -> None:
        self.screens_cleared = 0

    def clear_screen(self) -> None:
        self.screens_cleared += 1


def join(table: SessionTable, username: str, session: str = "Team", password: str = ""):
    table.check_join(session, username, password)
    return table.admit(session, username, password, FakeOutbox(), lambda _s: [], {"udp_port": 9})


def addressed(sends) -> list[tuple[list[int], str]]:
    return [([m.id for m in who], header["type"]) for who, header in sends]


def test_admit_welcomes_the_newcomer_and_tells_the_others():
    table = SessionTable(CFG)
    a, _ = join(table, "Alice")
    b, sends = join(table, "Bob", "team")  # case-insensitive session name
    assert addressed(sends) == [([b.id], Msg.WELCOME), ([a.id], Msg.PARTICIPANT_JOINED)]
    welcome = sends[0][1]
    assert welcome["session"] == "Team" and welcome["participants"] == [a.as_dict()]
    assert welcome["media"] == {"udp_port": 9} and welcome["files"] == []
    utils.validate_server_message(welcome)
    assert table.list() == [
        {"name": "Team", "participants": 2, "locked": False, "lobby": False, "recording": False}
    ]
    assert welcome["meeting"]["hosts"] == [a.id]
    assert table.with_token(b.token.upper()) is b and table.with_token("short") is None


@pytest.mark.parametrize(
    ("setup", "username", "password", "code"),
    [
        (["Alice"], "ALICE", "", Err.USERNAME_TAKEN),
        (["A", "B", "C"], "D", "", Err.SESSION_FULL),
    ],
)
def test_check_join_refusals(setup, username, password, code):
    table = SessionTable(CFG)
    for name in setup:
        join(table, name)
    with pytest.raises(JoinRefused) as info:
        table.check_join("Team", username, password)
    assert info.value.code == code


def test_only_the_creators_password_locks_a_session():
    table = SessionTable(CFG)
    join(table, "Alice", password="pw")  # noqa: S106
    with pytest.raises(JoinRefused, match="Wrong password"):
        table.check_join("team", "Bob", "nope")
    table.check_join("team", "Bob", "pw")


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        ({"protocol": 1, "username": "A", "session": "S"}, Err.UNSUPPORTED_PROTOCOL),
        ({"protocol": 2, "username": " ", "session": "S"}, Err.BAD_USERNAME),
        ({"protocol": 2, "username": "A", "session": "\x00"}, Err.BAD_SESSION),
        ({"protocol": 2, "username": "A", "session": "S", "password": "p" * 129}, Err.BAD_MESSAGE),
    ],
)
def test_clean_hello_refusals(hello, code):
    with pytest.raises(JoinRefused) as info:
        clean_hello(hello)
    assert info.value.code == code
    assert isinstance(info.value, utils.FusionError)


def test_clean_hello_trims_and_protocol_mismatch_names_the_supported():
    assert clean_hello({"protocol": 2, "username": " Al ", "session": " S "}) == ("S", "Al", "")
    with pytest.raises(JoinRefused) as info:
        clean_hello({"protocol": 9, "username": "A", "session": "S"})
    assert info.value.extra == {"supported": list(config.SUPPORTED_PROTOCOLS)}


def test_presenter_changes_clear_queued_screens_and_leave_releases_it():
    table = SessionTable(CFG)
    a, _ = join(table, "Alice")
    b, _ = join(table, "Bob")
    assert addressed(table.present_start(a)) == [
        ([a.id], Msg.PRESENT_GRANTED),
        ([a.id, b.id], Msg.PRESENTER_CHANGED),
    ]
    assert a.outbox.screens_cleared == b.outbox.screens_cleared == 1
    assert addressed(table.present_start(a)) == [([a.id], Msg.PRESENT_GRANTED)]  # again
    busy = table.present_start(b)
    assert busy[0][1]["code"] == Err.PRESENTER_BUSY
    assert table.present_stop(b) == []  # not the presenter: ignored
    assert table.screen_viewers(a) == [b] and table.screen_viewers(b) is None
    sends, ended = table.leave(a)
    assert not ended
    assert addressed(sends) == [
        ([b.id], Msg.PRESENTER_CHANGED),
        ([b.id], Msg.PARTICIPANT_LEFT),
        ([b.id], Msg.HOSTS_CHANGED),  # the host left: Bob hosts now
        ([b.id], Msg.LOBBY_UPDATED),  # and learns the lobby and the bans
        ([b.id], Msg.BANS_CHANGED),
    ]
    assert table.leave(a) == ([], False)  # once only
    assert table.leave(b) == (
        [([], {"type": Msg.PARTICIPANT_LEFT, "id": b.id, "username": "Bob"})],
        True,
    )
    assert table.list() == []


def test_chat_is_stamped_in_order_and_private_chat_is_addressed():
    table = SessionTable(CFG)
    a, _ = join(table, "Alice")
    b, _ = join(table, "Bob")
    c, _ = join(table, "Carol")
    first = table.chat(a, "hi", None, 1.0)
    private = table.chat(a, "psst", [c.id, c.id], 2.0)
    assert addressed(first) == [([a.id, b.id, c.id], Msg.CHAT)]
    assert [m.id for m in private[0][0]] == [a.id, c.id]
    assert private[0][1]["to"] == [c.id] and private[0][1]["seq"] == 2
    assert list(a.session.history) == [first[0][1]]  # private messages are not kept
    unknown = table.chat(a, "x", [99], 3.0)
    assert unknown[0][1]["code"] == Err.NO_SUCH_PARTICIPANT and unknown[0][1]["ids"] == [99]
    for bad in ("  ", "a\x07b", "x" * (config.MAX_CHAT_CHARS + 1)):
        with pytest.raises(utils.ProtocolError):
            table.chat(a, bad, None, 4.0)
    with pytest.raises(utils.ProtocolError, match="at least one"):
        table.chat(a, "x", [], 4.0)


def test_udp_binding_moves_and_one_address_has_one_participant():
    table = SessionTable(CFG)
    a, _ = join(table, "Alice")
    b, _ = join(table, "Bob")
    assert table.bind_udp(a.token, ("h", 1)) is a
    assert table.bind_udp(a.token, ("h", 2)) is a  # moved: the old address is unbound
    assert table.media_sender(("h", 1), a.id) is None
    assert table.bind_udp(b.token, ("h", 2)) is b  # the latest h wins the address
    assert a.udp_addr is None and table.media_sender(("h", 2), b.id) is b
    assert table.media_sender(("h", 2), a.id) is None  # claims another sender id
    assert table.bind_udp("0" * 32, ("h", 3)) is None


class FakeUdp:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def test_media_relay_routes_without_a_thread():
    table = SessionTable(CFG)
    a, _ = join(table, "Alice")
    b, _ = join(table, "Bob")
    udp = FakeUdp()
    counts: dict[str, int] = {}

    def count(name: str, n: int = 1) -> None:
        counts[name] = counts.get(name, 0) + n

    relay = MediaRelay(udp, table, threading.Lock(), count, CFG, threading.Event())  # type: ignore[arg-type]
    for p, port in ((a, 1), (b, 2)):
        relay.on_datagram(
            utils.pack_media(utils.KIND_REGISTER, 0, 0, 0, p.token.encode()), ("h", port)
        )
    assert [addr for _, addr in udp.sent] == [("h", 1), ("h", 2)]  # h answered
    video = utils.pack_media(utils.KIND_VIDEO, a.id, 0, 0, utils.split_video_frame(1, b"jpeg")[0])
    relay.on_datagram(video, ("h", 1))
    assert udp.sent[-1] == (video, ("h", 2))  # forwarded unchanged, not back to Alice
    pcm = np.full(CFG.audio_frame_samples, 700, "<i2").tobytes()
    relay.on_datagram(utils.pack_media(utils.KIND_AUDIO, a.id, 0, 0, pcm), ("h", 1))
    relay._mix_tick()
    mix = utils.Datagram.parse(udp.sent[-1][0])
    assert udp.sent[-1][1] == ("h", 2) and mix.kind == utils.KIND_AUDIO and mix.sender == 0
    relay.on_datagram(utils.pack_media(utils.KIND_AUDIO, b.id, 0, 0, pcm), ("h", 1))  # wrong id
    relay.on_datagram(b"\x00", ("h", 1))
    assert counts["datagrams_unbound"] == 1 and counts["datagrams_malformed"] == 1
    assert counts["datagrams_dropped"] == 2


def test_media_params_are_the_welcome_media():
    utils.validate_server_message(
        {
            "type": Msg.WELCOME,
            "you": {"id": 1, "username": "A"},
            "token": "t",
            "media": media_params(CFG, 5001),
        }
    )
