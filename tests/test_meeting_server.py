"""Meeting controls end to end (issue 14): real server, real ConferenceClients on loopback.

Every host action and its refusal for a non-host, removal and rejoin, host hand-over,
the lobby (admit, decline), hands in the order raised, reactions, spotlight, end meeting.
"""

from __future__ import annotations

import threading

import pytest

import config
import names
from client import ConferenceClient, JoinError
from limits import LimitErr
from tests.helpers import Recorder, tls_connect, wait_for
from utils import Err, Msg

THUMBS = config.MEETING_REACTIONS[0]


def errors_re(events: Recorder, kind: str) -> list[str]:
    return [code for code, _msg, re in events["error"] if re == kind]


def test_first_member_hosts_and_the_welcome_carries_the_meeting(make_client):
    alice = make_client("Alice")
    bob = make_client("Bob")
    assert alice.is_host and not bob.is_host
    assert bob.meeting["hosts"] == [alice.my_id]
    assert bob.meeting["recording"] is False and bob.meeting["hands"] == []
    assert "lobby" in alice.meeting and "lobby" not in bob.meeting  # hosts only


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        (lambda c, t: c.make_host(t), Msg.MAKE_HOST),
        (lambda c, t: c.ask_mute(t), Msg.ASK_MUTE),
        (lambda c, t: c.ask_mute(None), Msg.ASK_MUTE),
        (lambda c, t: c.stop_video(t), Msg.STOP_VIDEO),
        (lambda c, t: c.stop_screen(t), Msg.STOP_SCREEN),
        (lambda c, t: c.remove(t), Msg.REMOVE),
        (lambda c, t: c.unban("x"), Msg.UNBAN),
        (lambda c, t: c.lock(), Msg.LOCK),
        (lambda c, t: c.unlock(), Msg.UNLOCK),
        (lambda c, t: c.set_ask_to_join(True), Msg.SET_ASK_TO_JOIN),
        (lambda c, t: c.admit(1), Msg.ADMIT),
        (lambda c, t: c.decline(1), Msg.DECLINE),
        (lambda c, t: c.end_meeting(), Msg.END_MEETING),
        (lambda c, t: c.spotlight(t), Msg.SPOTLIGHT),
        (lambda c, t: c.start_recording(), Msg.START_RECORDING),
        (lambda c, t: c.stop_recording(), Msg.STOP_RECORDING),
        (lambda c, t: c.lower_hand(t), Msg.LOWER_HAND),
    ],
)
def test_every_host_action_is_refused_for_a_non_host(make_client, action, kind):
    alice = make_client("Alice")
    bob = make_client("Bob")
    ev = Recorder(bob, "error")
    action(bob, alice.my_id)
    wait_for(lambda: errors_re(ev, kind), what=f"{kind} refused")
    assert errors_re(ev, kind) == [Err.NOT_ALLOWED]
    assert alice.connected and bob.connected and alice.is_host and not bob.is_host


def test_make_host_and_ask_mute_turn_audio_off_and_hold_it(make_client, server):
    alice = make_client("Alice")
    bob = make_client("Bob")
    ev = Recorder(bob, "mute_requested", "video_stopped")
    alice.make_host(bob.my_id)
    wait_for(lambda: bob.is_host and alice.meeting["hosts"] == [alice.my_id, bob.my_id])
    alice.ask_mute(bob.my_id)
    wait_for(lambda: ev["mute_requested"], what="mute_requested")
    assert ev["mute_requested"] == [("Alice", False)]
    assert bob.media_on[0] is False  # the client turned its audio off itself
    wait_for(lambda: alice.participants[bob.my_id]["audio"] is False, what="bob shown muted")
    alice.stop_video(bob.my_id)
    wait_for(lambda: ev["video_stopped"] == [("Alice",)], what="video_stopped")
    assert bob.media_on == (False, False)
    session = server.sessions.sessions[names.name_key("room")]
    assert not session.meeting.allows_audio(bob.my_id)
    bob.set_media(True, False)  # only the person can turn it back on
    wait_for(lambda: session.meeting.allows_audio(bob.my_id), what="audio allowed again")


def test_stop_screen_releases_the_presenter(make_client):
    alice = make_client("Alice")
    bob = make_client("Bob")
    ev = Recorder(bob, "screen_stopped")
    bob.present_start()
    wait_for(lambda: alice.presenter == bob.my_id, what="bob presents")
    alice.stop_screen(bob.my_id)
    wait_for(lambda: alice.presenter is None and ev["screen_stopped"], what="screen stopped")


def test_a_removed_participant_cannot_rejoin_until_unbanned(server, make_client):
    alice = make_client("Alice")
    bob = make_client("Bob")
    ev = Recorder(bob, "error", "disconnected")
    alice.remove(bob.my_id, reason="spam")
    wait_for(lambda: ev["disconnected"], what="bob disconnected")
    assert [e[0] for e in ev["error"]] == [Err.REMOVED]
    assert "Reason: spam" in ev["error"][0][1]
    wait_for(lambda: bob.my_id not in alice.participants, what="bob gone at Alice")
    wait_for(lambda: alice.meeting.get("bans"), what="bans_changed")
    for name in ("Bob", "BOB", "B\u043eb"):  # case and a Cyrillic o: look-alikes
        with pytest.raises(JoinError) as info:
            make_client(name)
        assert info.value.code == Err.REMOVED
    # Another name from the removed person's address waits in the lobby for a host.
    got: list[JoinError | ConferenceClient] = []
    t = threading.Thread(target=lambda: got.append(_join_quietly(server, "Robert")))
    t.start()
    wait_for(lambda: alice.meeting.get("lobby"), what="Robert waits in the lobby")
    assert alice.meeting["lobby"][0]["from_removed_address"] is True
    alice.admit(alice.meeting["lobby"][0]["ticket"])
    t.join(10)
    assert isinstance(got[0], ConferenceClient) and got[0].connected
    got[0].leave()
    alice.unban(alice.meeting["bans"][0]["key"])
    wait_for(lambda: alice.meeting.get("bans") == [], what="unbanned")
    again = make_client("Bob")
    assert again.connected


def _join_quietly(server, name: str, **kw) -> JoinError | ConferenceClient:
    c = ConferenceClient("127.0.0.1", server.tcp_port, expected_fingerprint=server.fingerprint)
    try:
        c.connect(name, "Room", **kw)
    except JoinError as exc:
        return exc
    return c


def test_host_hand_over_when_the_host_leaves(make_client):
    alice = make_client("Alice")
    bob = make_client("Bob")
    carol = make_client("Carol")
    alice.leave()
    wait_for(lambda: bob.is_host, what="bob, the longest present, hosts")
    assert not carol.is_host
    wait_for(lambda: carol.meeting["hosts"] == [bob.my_id], what="carol told")
    assert "lobby" in bob.meeting  # the new host got the lobby and bans


def test_lobby_admit_and_decline(server, make_client):
    alice = make_client("Alice")
    ev = Recorder(alice, "meeting_changed")
    alice.lock()
    wait_for(lambda: alice.meeting.get("locked") is True, what="locked")
    assert server.list_sessions()[0]["lobby"] is True

    results: dict[str, object] = {}
    waiting: list[tuple] = []

    def join(name: str) -> None:
        c = ConferenceClient("127.0.0.1", server.tcp_port, expected_fingerprint=server.fingerprint)
        c.on("lobby_waiting", lambda *a: waiting.append((name, *a)))
        try:
            c.connect(name, "Room")
            results[name] = c
        except JoinError as exc:
            results[name] = exc

    threads = [threading.Thread(target=join, args=(n,)) for n in ("Dave", "Erin")]
    for t in threads:
        t.start()
    wait_for(lambda: len(alice.meeting.get("lobby", [])) == 2, what="both wait")
    assert sorted(w[0] for w in waiting) == ["Dave", "Erin"]
    assert all("Waiting for the host to let you in" in w[1] for w in waiting)
    lobby = {e["username"]: e["ticket"] for e in alice.meeting["lobby"]}
    alice.admit(lobby["Dave"])
    alice.decline(lobby["Erin"], reason="private meeting")
    for t in threads:
        t.join(10)
    dave, erin = results["Dave"], results["Erin"]
    assert isinstance(dave, ConferenceClient) and dave.connected
    assert dave.my_id in alice.participants or wait_for(lambda: dave.my_id in alice.participants)
    assert isinstance(erin, JoinError) and erin.code == Err.DECLINED
    assert "private meeting" in erin.message
    wait_for(lambda: alice.meeting.get("lobby") == [], what="lobby empty")
    assert any(kind == Msg.LOBBY_UPDATED for kind, _by in ev["meeting_changed"])
    dave.leave()


def test_a_lobby_newcomer_who_gives_up_leaves_the_list_and_end_sends_the_rest_away(
    server, make_client
):
    import utils

    alice = make_client("Alice")
    alice.set_ask_to_join(True)
    wait_for(lambda: alice.meeting.get("ask_to_join") is True, what="ask to join")
    with tls_connect(server.tcp_port) as raw:
        hello = {"type": "hello", "protocol": 2, "username": "Quitter", "session": "Room"}
        raw.sendall(utils.encode_frame(hello))
        reader = utils.FrameReader(raw)
        wait = reader.read().header
        assert wait["type"] == Msg.LOBBY_WAIT and wait["recording"] is False
        raw.sendall(utils.encode_frame({"type": "ping", "t": 1.5}))
        assert reader.read().header == {"type": Msg.PONG, "t": 1.5}  # answered while waiting
        wait_for(lambda: alice.meeting.get("lobby"), what="Quitter waits")
    wait_for(lambda: alice.meeting.get("lobby") == [], what="the closed one left the lobby")
    got: list = []
    t = threading.Thread(target=lambda: got.append(_join_quietly(server, "Zed")))
    t.start()
    wait_for(lambda: alice.meeting.get("lobby"), what="Zed waits")
    alice.end_meeting()
    t.join(10)
    assert isinstance(got[0], JoinError) and got[0].code == Err.MEETING_ENDED


def test_hands_are_listed_in_the_order_raised(make_client):
    alice = make_client("Alice")
    bob = make_client("Bob")
    carol = make_client("Carol")
    carol.raise_hand()
    wait_for(lambda: alice.meeting["hands"] == [carol.my_id], what="carol's hand")
    bob.raise_hand()
    wait_for(lambda: alice.meeting["hands"] == [carol.my_id, bob.my_id], what="in order")
    carol.lower_hand()
    wait_for(lambda: alice.meeting["hands"] == [bob.my_id], what="carol lowered")
    alice.lower_hand(bob.my_id)  # a host lowers anyone's
    wait_for(lambda: bob.meeting["hands"] == [], what="host lowered bob's")


def test_reactions_reach_everyone_and_a_flood_is_rate_limited(make_client):
    alice = make_client("Alice")
    bob = make_client("Bob")
    ev = Recorder(alice, "reaction")
    bev = Recorder(bob, "error")
    bob.react(THUMBS)
    wait_for(lambda: ev["reaction"] == [(bob.my_id, THUMBS)], what="reaction")
    for _ in range(config.MEETING_REACTION_BURST + 2):
        bob.react(THUMBS)
    wait_for(lambda: LimitErr.RATE_LIMITED in errors_re(bev, Msg.REACT), what="rate limited")
    bob.react("<b>x</b>")
    wait_for(lambda: Err.BAD_MESSAGE in errors_re(bev, Msg.REACT), what="unknown emoji refused")


def test_spotlight_and_end_meeting(make_client):
    alice = make_client("Alice")
    bob = make_client("Bob")
    ev = Recorder(bob, "error", "disconnected")
    alice.spotlight(bob.my_id)
    wait_for(lambda: bob.meeting.get("spotlight") == bob.my_id, what="spotlight")
    alice.spotlight(None)
    wait_for(lambda: bob.meeting.get("spotlight") is None, what="spotlight off")
    alice.end_meeting()
    wait_for(lambda: ev["disconnected"], what="bob disconnected")
    assert ev["error"][0][0] == Err.MEETING_ENDED
    wait_for(lambda: not alice.connected, what="alice disconnected too")


def test_a_version_1_hello_gets_unsupported_protocol(server):
    import socket

    import utils

    with socket.create_connection(("127.0.0.1", server.tcp_port), timeout=5) as s:
        s.sendall(
            utils.encode_frame({"type": "hello", "protocol": 1, "username": "A", "session": "S"})
        )
        h = utils.FrameReader(s).read().header
    assert h["code"] == Err.UNSUPPORTED_PROTOCOL and h["supported"] == [2]
    assert h["message"] == "This server speaks FusionMeet protocol 2; update FusionMeet."


@pytest.fixture
def server_config(tmp_path):
    """Short heartbeats, so the lobby's silence rules show in a second or two."""
    return config.ServerConfig(
        host="127.0.0.1",
        tcp_port=0,
        udp_port=0,
        storage_dir=tmp_path / "storage",
        heartbeat_timeout_s=1.0,
    )


def test_a_waiting_client_pings_and_a_silent_one_is_dropped(server, make_client):
    import time

    import utils

    quick = config.ClientConfig(heartbeat_interval_s=0.3)
    alice = ConferenceClient(
        "127.0.0.1", server.tcp_port, quick, expected_fingerprint=server.fingerprint
    )
    alice.connect("Alice", "Room")
    alice.lock()
    wait_for(lambda: alice.meeting.get("locked") is True, what="locked")
    patient = ConferenceClient(
        "127.0.0.1", server.tcp_port, quick, expected_fingerprint=server.fingerprint
    )
    got: list = []
    t = threading.Thread(target=lambda: got.append(patient.connect("Pat", "Room")))
    t.start()
    with tls_connect(server.tcp_port) as raw:
        raw.sendall(
            utils.encode_frame(
                {"type": "hello", "protocol": 2, "username": "Mute", "session": "Room"}
            )
        )
        reader = utils.FrameReader(raw)
        assert reader.read().type == Msg.LOBBY_WAIT
        assert reader.read().header["code"] == Err.TIMEOUT  # silent for 1 s: dropped
    t0 = time.monotonic()
    # Pat stays (pinging) through more than two heartbeat timeouts.
    wait_for(lambda: time.monotonic() - t0 > 2.5, what="time passing")
    names = [e["username"] for e in alice.meeting["lobby"]]
    assert names == ["Pat"]
    alice.admit(alice.meeting["lobby"][0]["ticket"])
    t.join(10)
    assert got and patient.connected
    patient.leave()
    alice.leave()


# --- breaks and resume (issues 13 and 14) ------------------------------------------------


def _resume_frame(welcome: dict, attempt: int) -> dict:
    return {
        "type": Msg.RESUME,
        "protocol": config.PROTOCOL_VERSION,
        "session": welcome["session"],
        "id": welcome["you"]["id"],
        "secret": welcome["resume_secret"],
        "attempt": attempt,
    }


def test_a_removed_participant_cannot_resume_its_place(server, make_client):
    """Removal is final: the place is given up at once, a resume of it is refused, and the
    removed client does not try to reconnect (PROTOCOL.md 12.1)."""
    from tests.test_server_protocol import Raw, join

    alice = make_client("Alice")
    bob_raw, bob_welcome = join(server.tcp_port, "Bob")
    wait_for(lambda: bob_welcome["you"]["id"] in alice.participants, what="bob joined")
    alice.remove(bob_welcome["you"]["id"])
    assert bob_raw.expect(Msg.ERROR).header["code"] == Err.REMOVED
    bob_raw.close()
    again = Raw(server.tcp_port)
    again.send(_resume_frame(bob_welcome, attempt=1))
    assert again.expect(Msg.ERROR).header["code"] == Err.RESUME_FAILED
    again.close()


def test_a_removed_client_ends_instead_of_reconnecting(make_client):
    alice = make_client("Alice")
    bob = make_client("Bob")
    ev = Recorder(bob, "reconnecting", "disconnected")
    alice.remove(bob.my_id, reason="spam")
    wait_for(lambda: ev["disconnected"], what="bob disconnected")
    assert ev["reconnecting"] == [] and not bob.reconnecting
    assert "Reason: spam" in ev["disconnected"][0][0]


def test_a_raised_hand_and_the_host_role_survive_a_break(server, make_client):
    """A broken connection keeps the place (issue 13), and with it the meeting roles: the
    resumed welcome's meeting still lists the hand, in its place, and the host."""
    from tests.test_server_protocol import Raw, join

    host_raw, host_welcome = join(server.tcp_port, "Hostess")
    hid = host_welcome["you"]["id"]
    bob = make_client("Bob")
    host_raw.send({"type": Msg.RAISE_HAND})
    wait_for(lambda: bob.meeting.get("hands") == [hid], what="the hand at Bob")
    bob.raise_hand()
    wait_for(lambda: bob.meeting.get("hands") == [hid, bob.my_id], what="both hands")
    host_raw.close()  # no bye: the place (and the roles) are kept
    wait_for(lambda: bob.participants[hid]["reconnecting"], what="Hostess away")
    assert bob.meeting["hosts"] == [hid] and bob.meeting["hands"] == [hid, bob.my_id]
    back = Raw(server.tcp_port)
    back.send(_resume_frame(host_welcome, attempt=1))
    welcome = back.expect(Msg.WELCOME).header
    assert welcome["resumed"] is True
    assert welcome["meeting"]["hosts"] == [hid]
    assert welcome["meeting"]["hands"] == [hid, bob.my_id]
    back.close()
