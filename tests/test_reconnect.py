"""Automatic reconnection and the server's grace period (issue 13), end to end.

Network cuts go through bench/netrelay.py (a userspace TCP + UDP relay on
127.0.0.2 in front of the server, with blackouts): the client under test talks
to the relay, the others to the server directly. Every wait is bounded.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

import config
from client import ConferenceClient
from server import ConferenceServer
from tests.helpers import Recorder, Talker, identity_fingerprint, make_file, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from netrelay import Impairment, TcpRelay, UdpRelay

RELAY_HOST = "127.0.0.2"
# The cut starts this long after the relays (time enough to join on a busy machine).
CUT_START_S = 4.0


# Every server of this run has the one test identity (conftest): clients pin it, and a
# restarted server (same data folder) still presents it.
FP = identity_fingerprint()


class Cut:
    """A server, and relays in front of it that go dark at CUT_START_S for ``seconds``."""

    def __init__(self, server: ConferenceServer, seconds: float) -> None:
        imp = Impairment(blackouts=[(CUT_START_S, seconds)])
        bound = CUT_START_S + seconds + 120.0
        server_udp = ("127.0.0.1", server.udp_port)
        self.udp = UdpRelay(server_udp, imp, imp, 1, (RELAY_HOST, server.udp_port), bound)
        self.tcp = TcpRelay(("127.0.0.1", server.tcp_port), imp, imp, 1, (RELAY_HOST, 0), bound)
        self.udp.start()
        self.tcp.start()
        self.end = self.tcp.t0 + CUT_START_S + seconds

    def close(self) -> None:
        self.tcp.stop()
        self.udp.stop()


@pytest.fixture
def relay_server(server_config):
    srv = ConferenceServer(server_config)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _texts(client: ConferenceClient) -> list[str]:
    return [m["message"] for m in client.chat.messages()]


def _outage(srv: ConferenceServer, seconds: float):
    """Alice behind a cut relay, Bob direct, Bob talking; returns what the test needs."""
    cut = Cut(srv, seconds)
    alice = ConferenceClient(RELAY_HOST, cut.tcp.address[1], expected_fingerprint=FP)
    bob = ConferenceClient("127.0.0.1", srv.tcp_port, expected_fingerprint=FP)
    alice.connect("Alice", "Room", audio=True, video=False)
    bob.connect("Bob", "Room", audio=True, video=False)
    talker = Talker(bob, "test-talker")
    alice.send_chat("before the cut")
    wait_for(lambda: "before the cut" in _texts(bob), what="chat before the cut")
    wait_for(lambda: alice.audio_frames_received > 10, what="audio before the cut")
    assert wait_for(lambda: alice.udp_registered, what="registered")
    return cut, alice, bob, talker


def test_30_s_outage_resumes_the_same_place_with_chat_exactly_once(relay_server) -> None:
    srv = relay_server
    cut, alice, bob, talker = _outage(srv, 30.0)
    ra = Recorder(alice, "reconnecting", "reconnected", "disconnected", "chat")
    rb = Recorder(bob, "participant_left", "participant_updated")
    try:
        old_id = alice.my_id
        wait_for(lambda: cut.tcp.stats()["up"].blacked_out > 0, timeout=CUT_START_S + 10)
        bob.send_chat("while Alice is away 1")
        # Alice's own message written during the cut: the outbox delivers it once.
        alice.send_chat("written during the cut")
        bob.send_chat("while Alice is away 2")
        wait_for(lambda: ra.get("reconnecting"), timeout=30.0, what="Alice notices the cut")
        away = wait_for(
            lambda: [p for (p,) in rb.get("participant_updated") if p.get("reconnecting")],
            timeout=30.0,
            what="Bob sees Alice reconnecting",
        )
        assert away[0]["id"] == old_id
        wait_for(lambda: ra.get("reconnected"), timeout=40.0, what="Alice back")
        welcome = ra.get("reconnected")[0][0]
        assert welcome["resumed"] is True and alice.my_id == old_id
        heard = alice.audio_frames_received
        wait_for(lambda: alice.audio_frames_received > heard + 10, what="audio flows again")
        wait_for(lambda: "written during the cut" in _texts(bob), what="outbox delivered")
        wait_for(lambda: len(alice.outbox) == 0, what="outbox confirmed")
        for c in (alice, bob):
            texts = _texts(c)
            for t in ("before the cut", "while Alice is away 1", "while Alice is away 2"):
                assert texts.count(t) == 1, (t, texts)
            assert texts.count("written during the cut") == 1, texts
        seqs = [m["seq"] for m in alice.chat.messages()]
        assert seqs == sorted(set(seqs)) == list(range(1, len(seqs) + 1))  # no gaps
        missed = [h["message"] for (h,) in ra.get("chat")]
        assert missed.count("while Alice is away 1") == 1  # delivered once, as events too
        assert rb.get("participant_left") == [] and ra.get("disconnected") == []
        wait_for(lambda: not bob.participants[old_id]["reconnecting"], what="Bob sees Alice back")
    finally:
        talker.close()
        alice.leave()
        bob.leave()
        cut.close()


@pytest.fixture
def short_grace_config(server_config):
    return replace(server_config, resume_grace_s=20.0)


def test_120_s_outage_after_the_grace_period_rejoins_as_new(short_grace_config) -> None:
    srv = ConferenceServer(short_grace_config)
    srv.start()
    cut, alice, bob, talker = _outage(srv, 120.0)
    ra = Recorder(alice, "reconnecting", "reconnected", "disconnected")
    rb = Recorder(bob, "participant_left", "participant_joined")
    try:
        old_id = alice.my_id
        wait_for(lambda: cut.tcp.stats()["up"].blacked_out > 0, timeout=CUT_START_S + 10)
        bob.send_chat("Alice has gone quiet")
        # The server drops Alice's place after its heartbeat timeout plus the grace period.
        wait_for(lambda: rb.get("participant_left"), timeout=60.0, what="Alice announced left")
        assert rb.get("participant_left")[0][0] == old_id
        assert ra.get("disconnected") == []  # the client keeps trying through the cut
        wait_for(lambda: ra.get("reconnected"), timeout=120.0, what="Alice back after the cut")
        welcome = ra.get("reconnected")[0][0]
        assert not welcome.get("resumed") and alice.my_id != old_id
        assert alice.session == "Room" and alice.username == "Alice"
        wait_for(lambda: rb.get("participant_joined"), what="Bob sees Alice join again")
        texts = _texts(alice)
        assert texts.count("before the cut") == 1 and texts.count("Alice has gone quiet") == 1
        heard = alice.audio_frames_received
        wait_for(lambda: alice.audio_frames_received > heard + 10, what="audio flows again")
        assert ra.get("disconnected") == []
    finally:
        talker.close()
        alice.leave()
        bob.leave()
        cut.close()
        srv.stop()


def test_client_gives_up_after_its_limit_and_reports_disconnected(relay_server) -> None:
    quick = config.ClientConfig(reconnect_give_up_s=1.5)
    alice = ConferenceClient("127.0.0.1", relay_server.tcp_port, quick, expected_fingerprint=FP)
    ra = Recorder(alice, "reconnecting", "disconnected")
    try:
        alice.connect("Alice", "Room")
        relay_server.stop()
        wait_for(lambda: ra.get("reconnecting"), what="reconnecting")
        wait_for(lambda: ra.get("disconnected"), what="gave up")
        assert "could not reconnect" in ra.get("disconnected")[0][0]
        assert not alice.connected and not alice.reconnecting
    finally:
        alice.leave()


def test_server_restart_two_clients_come_back_with_chat_and_files(
    server_config, tmp_path: Path
) -> None:
    import file_sharing_module as fsm

    first = ConferenceServer(server_config)
    first.start()
    same_ports = replace(server_config, tcp_port=first.tcp_port, udp_port=first.udp_port)
    alice = ConferenceClient("127.0.0.1", first.tcp_port, expected_fingerprint=FP)
    bob = ConferenceClient("127.0.0.1", first.tcp_port, expected_fingerprint=FP)
    ra = Recorder(alice, "reconnected", "disconnected")
    rb = Recorder(bob, "reconnected", "disconnected")
    second: ConferenceServer | None = None
    try:
        alice.connect("Alice", "Room", password="pw")  # noqa: S106 - a test session's
        bob.connect("Bob", "Room", password="pw")  # noqa: S106
        alice.send_chat("hello before the restart")
        wait_for(lambda: len(bob.chat) == 1, what="Alice's chat at Bob")
        bob.send_chat("hi Alice")
        wait_for(lambda: len(alice.chat) == 2 and len(bob.chat) == 2, what="chat")
        src = tmp_path / "notes.bin"
        sha = make_file(src, 300_000)
        up = fsm.upload(alice, src)
        assert up.wait(60) and up.ok, up.error
        wait_for(lambda: up.file_id in bob.files, what="file announced")
        bob.raise_hand()
        wait_for(lambda: alice.meeting.get("hands") == [bob.my_id], what="Bob's hand")
        first.stop()  # server_shutdown to both; the state is saved
        second = ConferenceServer(same_ports)
        second.start()
        wait_for(lambda: ra.get("reconnected") and rb.get("reconnected"), what="both back")
        assert not ra.get("reconnected")[0][0].get("resumed")  # a new server: joined anew
        assert alice.session == bob.session == "Room"
        wait_for(lambda: bob.my_id in alice.participants and alice.my_id in bob.participants)
        wait_for(lambda: alice.meeting.get("hands") == [bob.my_id], what="Bob's hand again")
        for c in (alice, bob):
            texts = [m["message"] for m in c.chat.messages()]
            assert texts == ["hello before the restart", "hi Alice"], texts
            assert list(c.files) == [up.file_id] and c.files[up.file_id]["sha256"] == sha
        bob.send_chat("after the restart")  # seq goes on from the saved history
        wait_for(lambda: len(alice.chat) == 3, what="new chat")
        assert [m["seq"] for m in alice.chat.messages()] == [1, 2, 3]
        (tmp_path / "dl").mkdir()
        down = fsm.download(bob, up.file_id, tmp_path / "dl")
        assert down.wait(60) and down.ok, down.error
        assert down.sha256 == sha and down.path.read_bytes() == src.read_bytes()
        assert ra.get("disconnected") == [] and rb.get("disconnected") == []
    finally:
        alice.leave()
        bob.leave()
        first.stop()
        if second is not None:
            second.stop()


def _share_one_file(srv: ConferenceServer, name: str, src: Path, stop_while_in: bool) -> str:
    """``name`` joins Room (no reconnecting), shares ``src``; the server stops with them
    still in (``stop_while_in``) or after they left. Returns the file id."""
    import file_sharing_module as fsm

    client = ConferenceClient(
        "127.0.0.1",
        srv.tcp_port,
        config.ClientConfig(reconnect_give_up_s=0),
        expected_fingerprint=FP,
    )
    try:
        client.connect(name, "Room")
        make_file(src, 1000)
        up = fsm.upload(client, src)
        assert up.wait(60) and up.ok, up.error
        wait_for(lambda: up.file_id in client.files)
        if stop_while_in:
            srv.stop()
    finally:
        client.leave()
        srv.stop()
    return up.file_id


def test_a_saved_file_that_changed_on_disk_is_not_restored(server_config, tmp_path) -> None:
    first = ConferenceServer(server_config)
    first.start()
    _share_one_file(first, "Alice", tmp_path / "a.bin", stop_while_in=False)
    # Nobody was left in the session at stop, so nothing of it is saved.
    second = ConferenceServer(server_config)
    second.start()
    try:
        assert second.store.list_files("Room") == []
    finally:
        second.stop()
    third = ConferenceServer(server_config)
    third.start()
    file_id = _share_one_file(third, "Carol", tmp_path / "b.bin", stop_while_in=True)
    data = server_config.storage_dir / f"{file_id}.data"
    assert data.exists()
    data.write_bytes(b"tampered" + data.read_bytes()[8:])
    fourth = ConferenceServer(server_config)
    fourth.start()
    try:
        assert "Room" in [s["name"] for s in fourth.list_sessions()]  # the session is back
        assert fourth.store.list_files("Room") == []  # ... but not the altered file
        assert not data.exists()
    finally:
        fourth.stop()


def test_two_breaks_in_a_row_resume_the_same_place_each_time(server, make_client) -> None:
    import socket

    alice, bob = make_client("Alice"), make_client("Bob")
    ra = Recorder(alice, "reconnected")
    rb = Recorder(bob, "participant_left")
    old_id = alice.my_id
    for n in (1, 2):
        alice._tcp.shutdown(socket.SHUT_RDWR)  # the link breaks, no bye
        wait_for(lambda n=n: len(ra.get("reconnected")) == n, what=f"back after break {n}")
        assert ra.get("reconnected")[-1][0]["resumed"] is True and alice.my_id == old_id
    alice.send_chat("still me")
    wait_for(lambda: any(m["message"] == "still me" for m in bob.chat.messages()))
    assert [m["from"] for m in bob.chat.messages()] == [old_id]
    assert rb.get("participant_left") == []


def test_new_command_line_flags() -> None:
    import headless
    import server_cli

    assert server_cli.build_parser().parse_args(["--fresh"]).fresh is True
    assert server_cli.build_parser().parse_args([]).fresh is False
    need = ["--server", "h", "--name", "A", "--session", "S"]
    args = headless.build_parser().parse_args([*need, "--reconnect-for", "5"])
    assert args.reconnect_for == 5.0
    assert headless.build_parser().parse_args(need).reconnect_for == config.RECONNECT_GIVE_UP_S


def test_saved_state_too_old_or_malformed_is_ignored(tmp_path: Path, caplog) -> None:
    import persistence

    s = persistence.SavedSession("Room", "", 3, [{"type": "chat", "seq": 3}], [])
    assert persistence.save(tmp_path, [s], saved_at=1000.0) is not None
    assert persistence.load(tmp_path, grace_s=60.0, now=1030.0)[0].chat_seq == 3
    assert persistence.load(tmp_path, grace_s=60.0, now=1030.0) == []  # consumed once
    persistence.save(tmp_path, [s], saved_at=1000.0)
    assert persistence.load(tmp_path, grace_s=60.0, now=1061.0) == []  # older than grace
    persistence.state_path(tmp_path).write_text('{"format": 1, "saved_at": "x"}')
    assert persistence.load(tmp_path, grace_s=60.0, now=0.0) == []
    assert "malformed" in caplog.text
    assert not persistence.state_path(tmp_path).exists()


def _resume(w: dict, **change) -> dict:
    from utils import Msg

    h = {
        "type": Msg.RESUME,
        "protocol": config.PROTOCOL_VERSION,
        "session": w["session"],
        "id": w["you"]["id"],
        "secret": w["resume_secret"],
        "last_seq": 0,
        "attempt": 5,
    }
    return h | change


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"secret": "0" * 64}, "resume_failed"),
        ({"secret": ""}, "resume_failed"),
        ({"secret": "é" * 64}, "resume_failed"),
        ({"id": 999}, "resume_failed"),
        ({"session": "Elsewhere"}, "resume_failed"),
        ({"attempt": 5}, "resume_failed"),  # not above the attempt already accepted
        ({"protocol": 1}, "unsupported_protocol"),
        ({"secret": 5}, "bad_message"),
        ({"last_seq": "x"}, "bad_message"),
    ],
)
def test_bad_resume_is_refused_and_the_place_stays(server, change, code) -> None:
    from tests.test_server_protocol import Raw, join
    from utils import Msg

    a, wa = join(server.tcp_port, "Alice")
    b, _ = join(server.tcp_port, "Bob")
    a.close()  # without bye: the place is kept
    away = b.expect(Msg.PARTICIPANT_UPDATED).header["participant"]
    assert away["reconnecting"] is True
    first = Raw(server.tcp_port)
    first.send(_resume(wa))  # attempt 5 accepted
    assert first.expect(Msg.WELCOME).header["resumed"] is True
    first.close()
    b.expect(Msg.PARTICIPANT_UPDATED)  # back, then away again
    b.expect(Msg.PARTICIPANT_UPDATED)
    bad = Raw(server.tcp_port)
    bad.send(_resume(wa, **change))
    assert bad.expect_error(code)["re"] == Msg.RESUME
    good = Raw(server.tcp_port)
    good.send(_resume(wa, attempt=6))
    w = good.expect(Msg.WELCOME).header
    assert w["resumed"] is True and w["you"] == wa["you"] and w["token"] == wa["token"]
    back = b.expect(Msg.PARTICIPANT_UPDATED).header["participant"]
    assert back["id"] == wa["you"]["id"] and back["reconnecting"] is False


def test_resume_delivers_only_the_chat_after_last_seq(server) -> None:
    from tests.test_server_protocol import Raw, join
    from utils import Msg

    a, wa = join(server.tcp_port, "Alice")
    b, _ = join(server.tcp_port, "Bob")
    for text in ("one", "two"):
        b.send({"type": Msg.CHAT, "message": text})
        assert a.expect(Msg.CHAT).header["message"] == text
    a.close()
    b.expect(Msg.PARTICIPANT_UPDATED)
    for text in ("three", "four"):
        b.send({"type": Msg.CHAT, "message": text})
    b.send({"type": Msg.CHAT, "message": "private", "to": [wa["you"]["id"]]})
    again = Raw(server.tcp_port)
    again.send(_resume(wa, last_seq=2))
    w = again.expect(Msg.WELCOME).header
    assert [(m["seq"], m["message"]) for m in w["chat"]] == [(3, "three"), (4, "four")]
    assert [p["username"] for p in w["participants"]] == ["Bob"]


def test_a_new_join_with_the_name_of_someone_reconnecting_replaces_them(server) -> None:
    """Alice's app crashed and she starts it again: she gets in at once, the old place goes."""
    from tests.test_server_protocol import Raw, hello, join
    from utils import Err, Msg

    a, wa = join(server.tcp_port, "Alice")
    b, _ = join(server.tcp_port, "Bob")
    dup = Raw(server.tcp_port)
    dup.send(hello("ALICE"))
    dup.expect_error(Err.USERNAME_TAKEN)  # while she is connected, the name is hers
    a.close()
    assert b.expect(Msg.PARTICIPANT_UPDATED).header["participant"]["reconnecting"] is True
    _, wa2 = join(server.tcp_port, "Alice")
    assert wa2["you"]["id"] != wa["you"]["id"]
    assert b.expect(Msg.PARTICIPANT_JOINED).header["participant"]["id"] == wa2["you"]["id"]
    assert b.expect(Msg.PARTICIPANT_LEFT).header["id"] == wa["you"]["id"]
    old = Raw(server.tcp_port)
    old.send(_resume(wa))
    old.expect_error("resume_failed")


def test_a_resume_brings_a_new_media_key_and_registers_udp_again(server, make_client) -> None:
    import socket

    alice, bob = make_client("Alice"), make_client("Bob")
    ra = Recorder(alice, "reconnected")
    assert alice.wait_udp_registered(10)
    old_cipher, old_key = alice._cipher, alice.media_params["key"]
    alice._tcp.shutdown(socket.SHUT_RDWR)  # the link breaks, no bye
    wait_for(lambda: ra.get("reconnected"), what="resumed")
    assert ra.get("reconnected")[0][0]["resumed"] is True
    assert alice.media_params["key"] != old_key and alice._cipher is not old_cipher
    assert alice.wait_udp_registered(10)  # a sealed h under the new key was accepted
    heard = bob.audio_frames_received
    pcm = b"\x01\x00" * int(alice.media_params["audio"]["frame_samples"])
    for _ in range(60):
        alice.send_audio(pcm)
    wait_for(lambda: bob.audio_frames_received > heard, what="Bob hears Alice again")


def test_a_reconnect_to_a_server_with_another_certificate_is_refused(
    server_config, tmp_path: Path
) -> None:
    first = ConferenceServer(server_config)
    first.start()
    other_identity = replace(
        server_config,
        tcp_port=first.tcp_port,
        udp_port=first.udp_port,
        identity_dir=tmp_path / "other-identity",
        fresh=True,
    )
    alice = ConferenceClient(
        "127.0.0.1",
        first.tcp_port,
        config.ClientConfig(reconnect_give_up_s=60),
        expected_fingerprint=FP,
    )
    ra = Recorder(alice, "reconnecting", "reconnected", "disconnected")
    second = None
    try:
        alice.connect("Alice", "Room")
        first.stop()
        wait_for(lambda: ra.get("reconnecting"), what="reconnecting")
        second = ConferenceServer(other_identity)
        second.start()
        assert second.fingerprint != FP
        wait_for(lambda: ra.get("disconnected"), what="refused, gave up at once")
        assert "fingerprint" in ra.get("disconnected")[0][0]
        assert ra.get("reconnected") == [] and second.list_sessions() == []
    finally:
        alice.leave()
        first.stop()
        if second is not None:
            second.stop()


def test_restart_state_holds_the_password_hash_never_the_password(server_config) -> None:
    import persistence

    first = ConferenceServer(server_config)
    first.start()
    same_ports = replace(server_config, tcp_port=first.tcp_port, udp_port=first.udp_port)
    alice = ConferenceClient(
        "127.0.0.1",
        first.tcp_port,
        config.ClientConfig(reconnect_give_up_s=0),
        expected_fingerprint=FP,
    )
    try:
        alice.connect("Alice", "Locked", password="sesame-7731")  # noqa: S106 - a test's
        first.stop()
        text = persistence.state_path(server_config.storage_dir).read_text(encoding="utf-8")
        assert "sesame-7731" not in text and '"password_hash": "scrypt$' in text
    finally:
        alice.leave()
        first.stop()
    second = ConferenceServer(same_ports)
    second.start()
    try:
        assert second.fingerprint == FP  # same data folder: the same identity
        from client import JoinError

        wrong = ConferenceClient("127.0.0.1", second.tcp_port, expected_fingerprint=FP)
        with pytest.raises(JoinError) as err:
            wrong.connect("Bob", "Locked", password="nope")  # noqa: S106
        assert err.value.code == "wrong_password"
        right = ConferenceClient("127.0.0.1", second.tcp_port, expected_fingerprint=FP)
        right.connect("Bob", "Locked", password="sesame-7731")  # noqa: S106
        right.leave()
    finally:
        second.stop()
