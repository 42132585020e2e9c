"""sessions.py and media_relay.py driven directly: no sockets to the server, no threads."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import config
import media_crypto
import security
import utils
from audio_codec import OpusEncoder
from media_relay import MediaRelay
from sessions import JoinRefused, PasswordStale, SessionTable, clean_hello, media_params
from utils import Err, Msg

CFG = config.ServerConfig(max_participants=3)


class FakeOutbox:
    def __init__(self) -> None:
        self.screens_cleared = 0

    def clear_screen(self) -> None:
        self.screens_cleared += 1


def join(table: SessionTable, username: str, session: str = "Team", password: str = ""):
    # As the server does: the password is checked (or hashed) outside the lock.
    stored = table.password_hash_of(session)
    ok = security.verify_password(password, stored) if stored else True
    new_hash = security.hash_password(password) if stored is None and password else ""
    table.check_join(session, username, ok, stored)
    return table.admit(session, username, new_hash, FakeOutbox(), lambda _s: [], {"udp_port": 9})


def addressed(sends) -> list[tuple[list[int], str]]:
    return [([m.id for m in who], header["type"]) for who, header in sends]


def test_admit_welcomes_the_newcomer_and_tells_the_others():
    table = SessionTable(CFG)
    a, _ = join(table, "Alice")
    b, sends = join(table, "Bob", "team")  # case-insensitive session name
    assert addressed(sends) == [([b.id], Msg.WELCOME), ([a.id], Msg.PARTICIPANT_JOINED)]
    welcome = sends[0][1]
    assert welcome["session"] == "Team" and welcome["participants"] == [a.as_dict()]
    utils.validate_server_message(welcome)
    media = dict(welcome["media"])
    key = media.pop("key")
    assert media == {"udp_port": 9, "cipher": "aes-256-gcm"} and welcome["files"] == []
    assert b.cipher is not None and len(bytes.fromhex(key)) == 32
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
        table.check_join("Team", username, True, table.password_hash_of("Team"))
    assert info.value.code == code


def test_only_the_creators_password_locks_a_session():
    table = SessionTable(CFG)
    join(table, "Alice", password="pw")  # noqa: S106
    stored = table.password_hash_of("team")
    assert stored.startswith("scrypt$") and "pw" not in stored.split("$")  # only the hash
    with pytest.raises(JoinRefused, match="Wrong password"):
        table.check_join("team", "Bob", security.verify_password("nope", stored), stored)
    table.check_join("team", "Bob", security.verify_password("pw", stored), stored)
    with pytest.raises(PasswordStale):  # checked against a hash that is not the session's
        table.check_join("team", "Bob", True, "")


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
    assert info.value.extra == {"supported": [2]} == {"supported": list(config.SUPPORTED_PROTOCOLS)}
    assert info.value.message == "This server speaks FusionMeet protocol 2; update FusionMeet."


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
    for bad in ("  ", "\x07\u202e", "x" * (config.MAX_CHAT_CHARS + 1)):  # only invisibles
        with pytest.raises(utils.ProtocolError):
            table.chat(a, bad, None, 4.0)
    with pytest.raises(utils.ProtocolError, match="at least one"):
        table.chat(a, "x", [], 4.0)


def test_udp_binding_moves_and_one_address_has_one_participant():
    table = SessionTable(CFG)
    a, _ = join(table, "Alice")
    b, _ = join(table, "Bob")
    assert table.registering(a.id) is a and table.registering(999) is None
    assert table.bind_udp(a, ("h", 1)) is a
    assert table.bind_udp(a, ("h", 2)) is a  # moved: the old address is unbound
    assert table.media_sender(("h", 1), a.id) is None
    assert table.bind_udp(b, ("h", 2)) is b  # the latest h wins the address
    assert a.udp_addr is None and table.media_sender(("h", 2), b.id) is b
    assert table.media_sender(("h", 2), a.id) is None  # claims another sender id
    table.leave(b)
    assert table.bind_udp(b, ("h", 3)) is None and table.registering(b.id) is None


class FakeUdp:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def client_cipher(welcome_sends) -> media_crypto.MediaCipher:
    key = bytes.fromhex(welcome_sends[0][1]["media"]["key"])
    return media_crypto.MediaCipher(key, media_crypto.CLIENT_SIDE)


def test_media_relay_routes_without_a_thread():
    table = SessionTable(CFG)
    a, sends_a = join(table, "Alice")
    b, sends_b = join(table, "Bob")
    ca, cb = client_cipher(sends_a), client_cipher(sends_b)
    udp = FakeUdp()
    counts: dict[str, int] = {}

    def count(name: str, n: int = 1) -> None:
        counts[name] = counts.get(name, 0) + n

    def sealed(cipher, kind, sender, payload=b""):
        plain = utils.pack_media(kind, sender, 0, 0, payload)
        return cipher.seal(plain[:12], plain[12:])

    delivered: list = []
    relay = MediaRelay(
        udp, table, threading.Lock(), count, CFG, threading.Event(), delivered.extend
    )  # type: ignore[arg-type]
    for p, c, port in ((a, ca, 1), (b, cb, 2)):
        relay.on_datagram(sealed(c, utils.KIND_REGISTER, p.id), ("h", port))
    assert [addr for _, addr in udp.sent] == [("h", 1), ("h", 2)]  # h answered
    assert ca.open(udp.sent[0][0])[0][0] == utils.KIND_REGISTER  # sealed for Alice
    frag = utils.split_vp8_frame("small", 1, True, b"vp8-frame")[0]
    relay.on_datagram(sealed(ca, utils.KIND_VIDEO, a.id, frag), ("h", 1))
    assert len(udp.sent) == 2 and counts["video_unsubscribed"] == 1  # nobody subscribed
    sends = table.subscribe(b, [{"sender": a.id, "layer": "small"}], now=0.0)
    assert addressed(sends) == [([a.id], Msg.KEYFRAME_REQUEST)]
    video = sealed(ca, utils.KIND_VIDEO, a.id, frag)
    relay.on_datagram(video, ("h", 1))
    data, addr = udp.sent[-1]
    assert addr == ("h", 2) and b"vp8-frame" not in data  # not back to Alice; sealed
    header, payload = cb.open(data)  # resealed under Bob's key, header kept
    assert header == video[:12] and payload == frag
    relay.on_datagram(video, ("h", 1))  # the same datagram again: a replay
    assert counts["datagrams_replayed"] == 1 and udp.sent[-1][0] == data
    t = np.arange(CFG.audio_frame_samples) / CFG.audio_rate_hz
    pcm = np.round(8000 * np.sin(2 * np.pi * 700 * t)).astype("<i2")
    packet = OpusEncoder().encode(pcm)
    relay.on_datagram(sealed(ca, utils.KIND_AUDIO, a.id, packet), ("h", 1))
    relay._mix_tick()
    to_bob = [data for data, addr in udp.sent if addr == ("h", 2)][-1]  # forwarded: she talks
    mix = utils.Datagram.parse(b"".join(cb.open(to_bob)))
    assert mix.kind == utils.KIND_AUDIO and mix.sender == 0
    relay.on_datagram(sealed(ca, utils.KIND_AUDIO, b.id, packet), ("h", 1))  # wrong id
    relay.on_datagram(b"\x00", ("h", 1))
    relay.on_datagram(sealed(ca, utils.KIND_AUDIO, a.id, b""), ("h", 1))  # no Opus packet
    forged = bytearray(sealed(ca, utils.KIND_AUDIO, a.id, packet))
    forged[-1] ^= 1
    relay.on_datagram(bytes(forged), ("h", 1))
    assert counts["datagrams_unbound"] == 1 and counts["datagrams_truncated"] == 1
    assert counts["datagrams_bad_tag"] == 1 and counts["datagrams_malformed"] == 1
    assert counts["datagrams_dropped"] == 5


def test_media_params_are_the_welcome_media():
    utils.validate_server_message(
        {
            "type": Msg.WELCOME,
            "you": {"id": 1, "username": "A"},
            "token": "t",
            "media": media_params(CFG, 5001) | {"key": "00" * 32, "cipher": "aes-256-gcm"},
        }
    )
