"""The pure meeting-control model (issue 14): hosts, host actions, lobby, hands, reactions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import config
import utils
from meeting import (
    ALL,
    MEETING_CLIENT_FIELDS,
    MEETING_ERROR_OPTIONAL,
    MEETING_SERVER_FIELDS,
    MEETING_STATE_FIELDS,
    Broadcast,
    Disconnect,
    LobbyAdmit,
    LobbyFull,
    LobbyRefuse,
    MeetingControl,
    MeetingEnded,
    MeetingErr,
    MeetingError,
    MeetingMsg,
    NoSuchParticipant,
    NotAllowed,
    RateLimited,
    RecordingSwitch,
    Removed,
    SendTo,
    StopPresenting,
    UsernameTaken,
    mute_target,
)

THUMBS = "\U0001f44d"
PARTY = "\U0001f389"


def meeting(*pids: int, **kwargs: Any) -> MeetingControl:
    """A meeting whose members joined in the order given, named P<id>, at t = 0, 1, 2..."""
    m = MeetingControl(**kwargs)
    for t, pid in enumerate(pids):
        assert m.join(pid, f"P{pid}", float(t), address=f"10.0.0.{pid}") == []
    return m


def of_type(events: list, kind: str) -> list[dict[str, Any]]:
    """The wire messages of ``kind`` among Broadcast and SendTo events."""
    return [e.msg for e in events if isinstance(e, (Broadcast, SendTo)) and e.msg["type"] == kind]


def sent_to(events: list, pid: int, kind: str) -> list[dict[str, Any]]:
    return [
        e.msg for e in events if isinstance(e, SendTo) and e.pid == pid and e.msg["type"] == kind
    ]


# --- roles ------------------------------------------------------------------------------


def test_creator_is_host_and_later_joiners_are_not():
    m = meeting(1, 2, 3)
    assert m.hosts == [1]
    assert m.is_host(1) and not m.is_host(2)
    assert m.members == [1, 2, 3]
    assert m.snapshot(2) == {
        "hosts": [1],
        "hands": [],
        "locked": False,
        "ask_to_join": False,
        "spotlight": None,
        "recording": False,
    }


def test_make_host_broadcasts_and_briefs_the_new_host():
    m = meeting(1, 2, 3)
    events = m.make_host(1, 3)
    assert m.hosts == [1, 3]
    assert of_type(events, MeetingMsg.HOSTS_CHANGED) == [
        {"type": "hosts_changed", "hosts": [1, 3], "by": 1}
    ]
    assert isinstance(events[0], Broadcast)
    assert sent_to(events, 3, MeetingMsg.LOBBY_UPDATED) == [{"type": "lobby_updated", "lobby": []}]
    assert sent_to(events, 3, MeetingMsg.BANS_CHANGED) == [{"type": "bans_changed", "bans": []}]
    assert m.make_host(3, 1) == []  # already a host: nothing to say
    assert m.make_host(3, 2)  # a co-host may make hosts too
    assert m.hosts == [1, 2, 3]


def test_make_host_of_someone_absent_is_no_such_participant():
    m = meeting(1, 2)
    with pytest.raises(NoSuchParticipant) as exc:
        m.make_host(1, 99)
    assert exc.value.code == "no_such_participant"
    assert exc.value.extra == {"ids": [99]}


def test_last_host_leaving_hands_over_to_the_longest_present():
    # Join order, not id order, decides: 10 joined first, then 5, then 7.
    m = meeting(10, 5, 7)
    events = m.leave(10)
    assert m.hosts == [5]
    assert of_type(events, MeetingMsg.HOSTS_CHANGED) == [
        {"type": "hosts_changed", "hosts": [5], "by": 0}
    ]
    assert sent_to(events, 5, MeetingMsg.LOBBY_UPDATED)
    assert sent_to(events, 5, MeetingMsg.BANS_CHANGED)
    m.leave(5)
    assert m.hosts == [7]


def test_co_host_keeps_the_meeting_when_the_creator_leaves():
    m = meeting(1, 2, 3)
    m.make_host(1, 3)
    events = m.leave(1)
    assert m.hosts == [3]  # 2 is longer present but 3 already hosts: no promotion
    assert of_type(events, MeetingMsg.HOSTS_CHANGED) == [
        {"type": "hosts_changed", "hosts": [3], "by": 0}
    ]
    assert not [e for e in events if isinstance(e, SendTo)]  # nobody new to brief


def test_a_non_host_leaving_changes_no_roles():
    m = meeting(1, 2, 3)
    assert m.leave(2) == []
    assert m.leave(2) == []  # twice is harmless
    assert m.hosts == [1]


# --- refusals for non-hosts ---------------------------------------------------------------

NON_HOST_ACTIONS = [
    ("make_host", (3,)),
    ("ask_mute", (3,)),
    ("ask_mute", (ALL,)),
    ("stop_video", (3,)),
    ("stop_screen", (3,)),
    ("remove", (3, "no")),
    ("unban", ("p3",)),
    ("lock", ()),
    ("unlock", ()),
    ("set_ask_to_join", (True,)),
    ("admit", (1,)),
    ("decline", (1, None)),
    ("end_meeting", ()),
    ("spotlight", (3,)),
    ("spotlight", (None,)),
    ("start_recording", ()),
    ("stop_recording", ()),
]


@pytest.mark.parametrize(("method", "args"), NON_HOST_ACTIONS)
def test_host_actions_from_a_non_host_are_not_allowed(method, args):
    m = meeting(1, 2, 3)
    before = m.snapshot(1)
    with pytest.raises(NotAllowed) as exc:
        getattr(m, method)(2, *args)
    assert exc.value.code == "not_allowed" == MeetingErr.NOT_ALLOWED
    assert exc.value.message.startswith("Only a host can ")
    assert m.snapshot(1) == before
    assert m.members == [1, 2, 3]
    header = exc.value.header(re=method)
    assert header == {
        "type": "error",
        "code": "not_allowed",
        "message": exc.value.message,
        "re": method,
    }


@pytest.mark.parametrize(("method", "args"), NON_HOST_ACTIONS)
def test_host_actions_from_someone_no_longer_present_are_not_allowed(method, args):
    m = meeting(1, 2, 3)
    m.remove(1, 2)  # a removed host's frames may still be in flight
    with pytest.raises(NotAllowed, match="no longer in this meeting"):
        getattr(m, method)(2, *args)


def test_a_removed_co_host_loses_host_at_once():
    m = meeting(1, 2, 3)
    m.make_host(1, 2)
    events = m.remove(1, 2)
    assert m.hosts == [1]
    assert of_type(events, MeetingMsg.HOSTS_CHANGED)[0]["hosts"] == [1]
    with pytest.raises(NotAllowed):
        m.remove(2, 1)


# --- mute, camera, screen ---------------------------------------------------------------------


def test_ask_one_to_mute_tells_only_them_and_who_asked():
    m = meeting(1, 2, 3)
    events = m.ask_mute(1, 2)
    assert events == [
        SendTo(2, {"type": "mute_requested", "by": 1, "username": "P1", "everyone": False})
    ]
    assert not m.allows_audio(2) and m.allows_audio(3)
    m.media_changed(2, audio=False, video=False)  # the client's confirmation
    assert not m.allows_audio(2)
    m.media_changed(2, audio=True, video=False)  # the person unmutes themself
    assert m.allows_audio(2)


def test_ask_everyone_to_mute_spares_the_asking_host():
    m = meeting(1, 2, 3)
    m.make_host(1, 3)
    events = m.ask_mute(1, ALL)
    assert events == [
        Broadcast({"type": "mute_requested", "by": 1, "username": "P1", "everyone": True}, skip=1)
    ]
    assert m.allows_audio(1)
    assert not m.allows_audio(2) and not m.allows_audio(3)  # a co-host too


def test_mute_of_someone_absent_is_no_such_participant():
    m = meeting(1, 2)
    with pytest.raises(NoSuchParticipant):
        m.ask_mute(1, 42)


def test_stop_video_tells_the_person_and_gates_their_video():
    m = meeting(1, 2)
    events = m.stop_video(1, 2)
    assert events == [SendTo(2, {"type": "video_stopped", "by": 1, "username": "P1"})]
    assert not m.allows_video(2) and m.allows_audio(2)
    m.media_changed(2, audio=True, video=True)
    assert m.allows_video(2)
    with pytest.raises(NoSuchParticipant):
        m.stop_video(1, 9)


def test_stop_screen_asks_the_server_to_release_the_presenter():
    m = meeting(1, 2)
    events = m.stop_screen(1, 2)
    assert events == [StopPresenting(2, {"type": "screen_stopped", "by": 1, "username": "P1"})]
    with pytest.raises(NoSuchParticipant):
        m.stop_screen(1, 9)


# --- remove and ban -----------------------------------------------------------------------


def test_remove_disconnects_first_with_reason_and_tells_hosts_the_ban():
    m = meeting(1, 2, 3)
    m.make_host(1, 3)
    events = m.remove(1, 2, "  Please\n stop   shouting \u202e ")
    first = events[0]
    assert isinstance(first, Disconnect)
    assert first.pid == 2 and first.code == "removed"
    assert first.extra == {"by": 1, "reason": "Please stop shouting"}
    assert first.message == "P1 removed you from the meeting. Reason: Please stop shouting"
    assert first.header()["code"] == "removed"
    assert m.members == [1, 3]
    bans = [{"key": "p2", "username": "P2"}]
    assert sent_to(events, 1, MeetingMsg.BANS_CHANGED) == [{"type": "bans_changed", "bans": bans}]
    assert sent_to(events, 3, MeetingMsg.BANS_CHANGED) == [{"type": "bans_changed", "bans": bans}]
    assert m.leave(2) == []  # the connection's end, later, changes nothing more


def test_remove_without_reason_and_of_yourself():
    m = meeting(1, 2)
    d = m.remove(1, 2)[0]
    assert isinstance(d, Disconnect)
    assert d.extra == {"by": 1}
    m2 = meeting(1, 2)
    with pytest.raises(NotAllowed, match="yourself"):
        m2.remove(1, 1)
    with pytest.raises(NoSuchParticipant):
        m2.remove(1, 7)
    with pytest.raises(utils.ProtocolError) as exc:
        m2.remove(1, 2, "x" * (config.MEETING_REASON_MAX_CHARS + 1))
    assert exc.value.code == "bad_message"
    assert m2.members == [1, 2]  # a refused removal removes nobody


@pytest.mark.parametrize(
    "name",
    [
        "Mallory",
        "mallory",
        " MALLORY ",
        "Маllory",  # Cyrillic capital Em and small a
        "МАLLORY",  # Cyrillic capitals
        "Ma\u200bllory",  # a zero-width space
        "Ｍａｌｌｏｒｙ",  # fullwidth
        "Ma11ory",  # digit one for l
    ],
)
def test_a_removed_participant_rejoining_is_refused_under_any_spelling(name):
    m = meeting(1)
    m.join(2, "Mallory", 1.0, address="10.0.0.2")
    m.remove(1, 2)
    with pytest.raises(Removed) as exc:
        m.request_join(name, 10.0, address="10.0.0.99")
    assert exc.value.code == "removed"
    assert "cannot rejoin" in exc.value.message


def test_unban_lets_the_removed_name_back():
    m = meeting(1, 2)
    m.remove(1, 2)
    [ban] = m.bans
    events = m.unban(1, ban.key)
    assert sent_to(events, 1, MeetingMsg.BANS_CHANGED) == [{"type": "bans_changed", "bans": []}]
    assert m.request_join("P2", 20.0, address="10.0.0.2") == (None, [])
    assert m.unban(1, ban.key) == []  # an unknown key is harmless


def test_another_name_from_a_removed_address_waits_for_a_host():
    m = meeting(1, 2)
    m.remove(1, 2)
    ticket, events = m.request_join("Innocent", 5.0, address="10.0.0.2")
    assert ticket is not None and ticket.from_removed_address
    assert sent_to(events, 1, MeetingMsg.LOBBY_UPDATED) == [
        {
            "type": "lobby_updated",
            "lobby": [
                {"ticket": ticket.ticket, "username": "Innocent", "from_removed_address": True}
            ],
        }
    ]
    # Someone else, from another address, still walks in: the meeting is not locked.
    assert m.request_join("Visitor", 5.0, address="10.0.0.50") == (None, [])
    # The address is unknown (None): never treated as a removed one.
    assert m.request_join("Ghost", 5.0) == (None, [])


def test_bans_are_bounded_oldest_forgotten():
    m = meeting(1, 2, 3, 4, max_bans=2)
    for pid in (2, 3, 4):
        m.remove(1, pid)
    assert [b.username for b in m.bans] == ["P3", "P4"]
    assert m.request_join("P2", 9.0, address="10.0.0.77") == (None, [])
    with pytest.raises(Removed):
        m.request_join("P3", 9.0)


# --- lobby ------------------------------------------------------------------------------------


def test_lock_and_unlock_broadcast_access_and_are_idempotent():
    m = meeting(1, 2)
    assert m.lock(1) == [
        Broadcast({"type": "access_changed", "locked": True, "ask_to_join": False, "by": 1})
    ]
    assert m.lock(1) == []
    assert m.listing() == {"lobby": True, "recording": False}
    assert m.unlock(1)[0].msg["locked"] is False
    assert m.unlock(1) == []
    assert m.set_ask_to_join(1, True)[0].msg == {
        "type": "access_changed",
        "locked": False,
        "ask_to_join": True,
        "by": 1,
    }
    assert m.lobby_active


def test_locked_meeting_puts_newcomers_in_the_lobby_and_tells_every_host():
    m = meeting(1, 2, 3)
    m.make_host(1, 2)
    m.lock(1)
    ticket, events = m.request_join("Newcomer", 100.0, address="10.0.0.9")
    assert ticket is not None and not ticket.from_removed_address
    assert {e.pid for e in events if isinstance(e, SendTo)} == {1, 2}  # hosts only
    assert m.snapshot(1)["lobby"] == [
        {"ticket": ticket.ticket, "username": "Newcomer", "from_removed_address": False}
    ]
    assert "lobby" not in m.snapshot(3)  # not for a non-host
    assert "bans" not in m.snapshot(3)


def test_ask_to_join_from_creation_puts_the_second_person_in_the_lobby():
    m = MeetingControl(ask_to_join=True)
    assert m.request_join("Creator", 0.0) == (None, [])  # nobody to ask yet
    m.join(1, "Creator", 0.0)
    ticket, _ = m.request_join("Second", 1.0)
    assert ticket is not None


def test_admit_lets_the_waiting_person_join_and_updates_hosts():
    m = meeting(1, 2)
    m.lock(1)
    ticket, _ = m.request_join("Dana", 1.0)
    events = m.admit(1, ticket.ticket)
    assert events[0] == LobbyAdmit(ticket.ticket, "Dana")
    assert sent_to(events, 1, MeetingMsg.LOBBY_UPDATED) == [{"type": "lobby_updated", "lobby": []}]
    assert m.lobby == []
    m.join(5, "Dana", 2.0)
    assert m.members == [1, 2, 5]
    assert m.admit(1, ticket.ticket) == []  # twice: harmless


def test_decline_sends_a_plain_message_with_the_reason():
    m = meeting(1)
    m.lock(1)
    ticket, _ = m.request_join("Eve", 1.0)
    events = m.decline(1, ticket.ticket, "Invite only")
    refuse = events[0]
    assert isinstance(refuse, LobbyRefuse)
    assert refuse.code == "declined"
    assert refuse.message == "A host did not let you in to this meeting. Reason: Invite only"
    assert refuse.header() == {
        "type": "error",
        "code": "declined",
        "message": refuse.message,
        "re": "hello",
        "reason": "Invite only",
    }
    assert sent_to(events, 1, MeetingMsg.LOBBY_UPDATED)
    ticket2, _ = m.request_join("Eve", 2.0)  # declined is not banned: she may ask again
    plain = m.decline(1, ticket2.ticket)[0]
    assert plain.message == "A host did not let you in to this meeting." and plain.extra == {}


def test_admit_or_decline_after_the_waiting_person_left_is_harmless():
    m = meeting(1)
    m.lock(1)
    t1, _ = m.request_join("Gone", 1.0)
    t2, _ = m.request_join("AlsoGone", 1.0)
    assert sent_to(m.leave_lobby(t1.ticket), 1, MeetingMsg.LOBBY_UPDATED)
    assert m.leave_lobby(t1.ticket) == []
    assert m.admit(1, t1.ticket) == []
    m.leave_lobby(t2.ticket)
    assert m.decline(1, t2.ticket, "late") == []
    assert m.admit(1, 12345) == []  # a ticket that never existed


def test_lobby_is_bounded():
    m = meeting(1, lobby_max=2)
    m.lock(1)
    m.request_join("A", 1.0)
    m.request_join("B", 1.0)
    with pytest.raises(LobbyFull) as exc:
        m.request_join("C", 1.0)
    assert exc.value.code == "lobby_full" and exc.value.extra == {"limit": 2}
    assert [t.username for t in m.lobby] == ["A", "B"]


def test_the_same_name_cannot_wait_twice():
    m = meeting(1)
    m.set_ask_to_join(1, True)
    m.request_join("Frank", 1.0)
    for lookalike in ("FRANK", "Frаnk"):  # the second with a Cyrillic a
        with pytest.raises(UsernameTaken) as exc:
            m.request_join(lookalike, 1.0)
        assert exc.value.code == "username_taken"
    assert m.request_join("Frankie", 1.0)[0] is not None


def test_lobby_waits_expire():
    m = meeting(1, lobby_max_wait_s=60.0)
    m.lock(1)
    early, _ = m.request_join("Early", 0.0)
    late, _ = m.request_join("Late", 30.0)
    assert m.expire_lobby(59.0) == []
    events = m.expire_lobby(60.0)
    assert events[0] == LobbyRefuse(
        early.ticket, "timeout", "No host let you in within 1 minutes; please try again later."
    )
    assert [t.ticket for t in m.lobby] == [late.ticket]
    assert sent_to(events, 1, MeetingMsg.LOBBY_UPDATED)


def test_unlocking_leaves_people_waiting_for_a_host():
    m = meeting(1)
    m.lock(1)
    ticket, _ = m.request_join("Gina", 1.0)
    m.unlock(1)
    assert [t.ticket for t in m.lobby] == [ticket.ticket]
    assert m.request_join("Hal", 2.0) == (None, [])  # later ones walk in


def test_last_member_leaving_sends_the_lobby_away_and_ends():
    m = meeting(1)
    m.lock(1)
    ticket, _ = m.request_join("Ivy", 1.0)
    m.start_recording(1)
    events = m.leave(1)
    assert RecordingSwitch(False) in events
    [refuse] = [e for e in events if isinstance(e, LobbyRefuse)]
    assert refuse.ticket == ticket.ticket and refuse.code == "meeting_ended"
    assert m.ended
    with pytest.raises(MeetingEnded):
        m.request_join("Late", 2.0)


# --- hands ------------------------------------------------------------------------------------


def test_hands_are_listed_in_the_order_raised():
    m = meeting(1, 2, 3, 4)
    assert m.raise_hand(3, 1.0) == [Broadcast({"type": "hands_changed", "hands": [3], "by": 3})]
    m.raise_hand(2, 2.0)
    m.raise_hand(4, 3.0)
    assert m.raise_hand(3, 4.0) == []  # already raised: keeps its place
    assert m.hands == [3, 2, 4]
    assert m.snapshot(4)["hands"] == [3, 2, 4]


def test_hand_lowered_by_self_and_by_host_but_not_by_others():
    m = meeting(1, 2, 3)
    m.raise_hand(2, 0.0)
    m.raise_hand(3, 0.0)
    with pytest.raises(NotAllowed, match="lower someone else's hand"):
        m.lower_hand(3, 2)
    assert m.hands == [2, 3]
    assert m.lower_hand(2) == [Broadcast({"type": "hands_changed", "hands": [3], "by": 2})]
    assert m.lower_hand(1, 3) == [Broadcast({"type": "hands_changed", "hands": [], "by": 1})]
    assert m.lower_hand(2) == []  # not raised: nothing to say
    with pytest.raises(NoSuchParticipant):
        m.lower_hand(1, 99)


def test_leaving_lowers_the_hand():
    m = meeting(1, 2, 3)
    m.raise_hand(2, 0.0)
    m.raise_hand(3, 0.0)
    events = m.leave(2)
    assert of_type(events, MeetingMsg.HANDS_CHANGED) == [
        {"type": "hands_changed", "hands": [3], "by": 0}
    ]


def test_hand_raises_are_rate_limited_lowering_is_not():
    m = meeting(1, 2, hand_raises_per_s=0.5, hand_raise_burst=2)  # 2 joined at t = 1
    m.raise_hand(2, 1.0)
    m.lower_hand(2)
    m.raise_hand(2, 1.0)
    m.lower_hand(2)
    with pytest.raises(RateLimited) as exc:
        m.raise_hand(2, 1.0)
    assert exc.value.code == "rate_limited" and exc.value.extra == {"retry_after_s": 2.0}
    assert m.hands == []
    m.raise_hand(2, 3.0)
    assert m.hands == [2]


def test_raise_hand_from_someone_absent():
    m = meeting(1)
    with pytest.raises(NotAllowed):
        m.raise_hand(5, 0.0)


# --- reactions --------------------------------------------------------------------------------


def test_reaction_is_broadcast_to_everyone_including_the_sender():
    m = meeting(1, 2)
    for i, emoji in enumerate(config.MEETING_REACTIONS):
        events = m.react(2, emoji, 10.0 * (i + 1))
        assert events == [Broadcast({"type": "reaction", "from": 2, "emoji": emoji})]


@pytest.mark.parametrize(
    "emoji",
    ["", "x", THUMBS + THUMBS, THUMBS + "\U0001f3fd", "\u2764\ufe0f", "\u2764", " " + PARTY],
)
def test_reactions_outside_the_allowed_set_are_bad_messages(emoji):
    m = meeting(1, 2)
    with pytest.raises(utils.ProtocolError) as exc:
        m.react(2, emoji, 0.0)
    assert exc.value.code == "bad_message"


def test_reactions_are_rate_limited_per_participant():
    m = meeting(1, 2, reactions_per_s=1.0, reaction_burst=3)
    for _ in range(3):
        m.react(2, THUMBS, 10.0)
    with pytest.raises(RateLimited) as exc:
        m.react(2, THUMBS, 10.0)
    assert exc.value.extra == {"retry_after_s": 1.0}
    m.react(1, PARTY, 10.0)  # someone else's allowance is their own
    m.react(2, THUMBS, 11.0)  # refilled


# --- spotlight ----------------------------------------------------------------------------------


def test_spotlight_pins_for_everyone_and_clears():
    m = meeting(1, 2, 3)
    assert m.spotlight(1, 3) == [Broadcast({"type": "spotlight_changed", "spotlight": 3, "by": 1})]
    assert m.snapshot(2)["spotlight"] == 3
    assert m.spotlight(1, 3) == []
    assert m.spotlight(1, None)[0].msg["spotlight"] is None
    with pytest.raises(NoSuchParticipant):
        m.spotlight(1, 77)


def test_spotlit_participant_leaving_clears_the_spotlight():
    m = meeting(1, 2, 3)
    m.spotlight(1, 2)
    events = m.leave(2)
    assert of_type(events, MeetingMsg.SPOTLIGHT_CHANGED) == [
        {"type": "spotlight_changed", "spotlight": None, "by": 0}
    ]
    assert m.spotlit is None


# --- recording ----------------------------------------------------------------------------------


def test_recording_flag_is_host_only_and_visible_to_joiners():
    m = meeting(1, 2)
    events = m.start_recording(1)
    assert events == [
        RecordingSwitch(True),
        Broadcast({"type": "recording_changed", "recording": True, "by": 1}),
    ]
    assert m.start_recording(1) == []
    assert m.snapshot(2)["recording"] is True
    assert m.listing() == {"lobby": False, "recording": True}
    assert m.stop_recording(1) == [
        RecordingSwitch(False),
        Broadcast({"type": "recording_changed", "recording": False, "by": 1}),
    ]
    assert m.stop_recording(1) == []


def test_recording_failure_clears_the_mark_and_says_why():
    m = meeting(1, 2)
    m.start_recording(1)
    events = m.recording_failed("The server's disk is full; the recording stopped.")
    assert events == [
        Broadcast(
            {
                "type": "recording_changed",
                "recording": False,
                "by": 0,
                "message": "The server's disk is full; the recording stopped.",
            }
        )
    ]
    assert m.recording_failed("again") == []


# --- end meeting ----------------------------------------------------------------------------------


def test_end_meeting_disconnects_everyone_and_the_lobby():
    m = meeting(1, 2, 3)
    m.start_recording(1)
    m.lock(1)
    ticket, _ = m.request_join("Waiting", 1.0)
    events = m.end_meeting(1)
    assert events[0] == RecordingSwitch(False)
    [refuse] = [e for e in events if isinstance(e, LobbyRefuse)]
    assert refuse.ticket == ticket.ticket and refuse.code == "meeting_ended"
    disconnects = [e for e in events if isinstance(e, Disconnect)]
    assert [d.pid for d in disconnects] == [1, 2, 3]  # the host who ended it too
    assert {d.code for d in disconnects} == {"meeting_ended"}
    assert disconnects[0].message == "P1 ended the meeting for everyone."
    assert disconnects[0].extra == {"by": 1}
    assert m.ended and m.members == [] and not m.recording
    assert m.leave(2) == []
    with pytest.raises(MeetingEnded):
        m.request_join("Late", 2.0)
    with pytest.raises(MeetingEnded):
        m.raise_hand(2, 2.0)
    with pytest.raises(MeetingEnded):
        m.lock(1)
    assert m.recording_failed("late") == []


# --- wire: field tables, messages, errors ---------------------------------------------------------


def test_meeting_wire_is_the_one_definition_in_utils():
    assert MeetingMsg is utils.Msg and MeetingErr is utils.Err
    for kind, spec in MEETING_CLIENT_FIELDS.items():
        assert utils.CLIENT_FIELDS[kind] is spec
    for kind, spec in MEETING_SERVER_FIELDS.items():
        assert utils.SERVER_FIELDS[kind] is spec
    assert set(MEETING_CLIENT_FIELDS).isdisjoint(MEETING_SERVER_FIELDS)
    new_codes = {MeetingErr.NOT_ALLOWED, MeetingErr.REMOVED, MeetingErr.DECLINED}
    new_codes |= {MeetingErr.LOBBY_FULL, MeetingErr.MEETING_ENDED}
    assert all(code in utils.ERROR_TEXT for code in new_codes)


def _every_event_of_a_busy_meeting() -> list:
    m = meeting(1, 2, 3, 4)
    events = []
    events += m.make_host(1, 2)
    events += m.ask_mute(1, 3) + m.ask_mute(1, ALL)
    events += m.stop_video(1, 3) + m.stop_screen(1, 3)
    events += m.lock(1) + m.set_ask_to_join(1, True)
    t, news = m.request_join("Zed", 1.0)
    events += news + m.admit(1, t.ticket)
    t, news = m.request_join("Yan", 1.0)
    events += news + m.decline(1, t.ticket, "no")
    events += m.raise_hand(3, 1.0) + m.raise_hand(4, 1.0) + m.lower_hand(1, 4)
    events += m.react(3, THUMBS, 1.0) + m.spotlight(1, 4)
    events += m.start_recording(1) + m.recording_failed("disk full")
    events += m.remove(1, 4, "bye") + m.leave(1)
    return events + m.end_meeting(2)


def test_every_server_message_the_model_makes_matches_the_field_table():
    kinds = set()
    for e in _every_event_of_a_busy_meeting():
        msg = getattr(e, "msg", None)
        if msg is None:
            continue
        kinds.add(msg["type"])
        utils._validate(msg, MEETING_SERVER_FIELDS)
        assert len(utils.encode_frame(msg)) < config.MAX_HEADER_BYTES
    assert kinds == set(MEETING_SERVER_FIELDS) - {MeetingMsg.LOBBY_WAIT}
    utils._validate(MeetingControl().lobby_wait(), MEETING_SERVER_FIELDS)


def test_golden_bytes_of_a_reaction_and_a_lobby_wait():
    m = meeting(1, 2)
    [event] = m.react(2, THUMBS, 5.0)
    assert utils.encode_frame(event.msg) == (
        b"\x00\x00\x00\x2b\x00\x00\x00\x00"
        b'{"type":"reaction","from":2,"emoji":"\xf0\x9f\x91\x8d"}'
    )
    m.start_recording(1)
    assert m.lobby_wait() == {
        "type": "lobby_wait",
        "message": "Waiting for the host to let you in.",
        "recording": True,
    }


def test_snapshots_match_the_welcome_meeting_fields():
    m = meeting(1, 2)
    m.lock(1)
    m.request_join("W", 0.0)
    m.remove(1, 2)
    for pid in (1, 2, None):
        assert utils._fields_error(m.snapshot(pid), MEETING_STATE_FIELDS) is None


def test_error_frames_carry_only_known_extra_fields():
    errors: list[dict[str, Any]] = []
    for e in _every_event_of_a_busy_meeting():
        if isinstance(e, (Disconnect, LobbyRefuse)):
            errors.append(e.header())
    m = meeting(1, 2, reaction_burst=1, lobby_max=0)
    m.react(2, THUMBS, 0.0)
    m.lock(1)
    for call in (
        lambda: m.react(2, THUMBS, 0.0),
        lambda: m.remove(2, 1),
        lambda: m.remove(1, 9),
        lambda: m.request_join("Q", 0.0),
    ):
        with pytest.raises(MeetingError) as exc:
            call()
        assert isinstance(exc.value, utils.FusionError)
        errors.append(exc.value.header(re="x"))
    spec = utils.SERVER_FIELDS[utils.Msg.ERROR]
    table = {"error": utils.Fields(spec.required, {**spec.optional, **MEETING_ERROR_OPTIONAL})}
    for header in errors:
        utils._validate(header, table)
        assert set(header) <= {"type", "code", "message", "re", *table["error"].optional}


GOOD_CLIENT_MESSAGES = [
    {"type": "make_host", "id": 2},
    {"type": "ask_mute", "id": 2},
    {"type": "ask_mute", "everyone": True},
    {"type": "stop_video", "id": 2},
    {"type": "stop_screen", "id": 2},
    {"type": "remove", "id": 2},
    {"type": "remove", "id": 2, "reason": "spam"},
    {"type": "unban", "key": "p2"},
    {"type": "lock"},
    {"type": "unlock"},
    {"type": "set_ask_to_join", "enabled": False},
    {"type": "admit", "ticket": 1},
    {"type": "decline", "ticket": 1, "reason": "sorry"},
    {"type": "end_meeting"},
    {"type": "spotlight", "id": 3},
    {"type": "spotlight", "id": None},
    {"type": "start_recording"},
    {"type": "stop_recording"},
    {"type": "raise_hand"},
    {"type": "lower_hand"},
    {"type": "lower_hand", "id": 3},
    {"type": "react", "emoji": THUMBS},
]

BAD_CLIENT_MESSAGES = [
    {"type": "make_host"},
    {"type": "make_host", "id": "2"},
    {"type": "make_host", "id": True},
    {"type": "make_host", "id": 2.0},
    {"type": "ask_mute", "everyone": 1},
    {"type": "remove", "id": 2, "reason": 5},
    {"type": "unban", "key": None},
    {"type": "set_ask_to_join"},
    {"type": "set_ask_to_join", "enabled": "yes"},
    {"type": "admit", "ticket": "1"},
    {"type": "decline"},
    {"type": "spotlight"},
    {"type": "spotlight", "id": "3"},
    {"type": "lower_hand", "id": None},
    {"type": "react"},
    {"type": "react", "emoji": ["x"]},
]


def test_the_client_field_table_covers_every_client_message():
    assert {h["type"] for h in GOOD_CLIENT_MESSAGES} == set(MEETING_CLIENT_FIELDS)
    for header in GOOD_CLIENT_MESSAGES:
        utils._validate(header, MEETING_CLIENT_FIELDS)


@pytest.mark.parametrize("header", BAD_CLIENT_MESSAGES, ids=repr)
def test_the_client_field_table_refuses_hostile_fields(header):
    with pytest.raises(utils.ProtocolError) as exc:
        utils._validate(header, MEETING_CLIENT_FIELDS)
    assert exc.value.code == "bad_message"


def test_mute_target_needs_exactly_one_of_id_and_everyone():
    assert mute_target({"type": "ask_mute", "id": 4}) == 4
    assert mute_target({"type": "ask_mute", "everyone": True}) == ALL
    for bad in (
        {"type": "ask_mute"},
        {"type": "ask_mute", "everyone": False},
        {"type": "ask_mute", "id": 4, "everyone": True},
    ):
        with pytest.raises(utils.ProtocolError):
            mute_target(bad)
    assert mute_target({"type": "ask_mute", "id": 4, "everyone": False}) == 4


# --- invariants under any sequence of requests ------------------------------------------------

_OPS = st.tuples(
    st.sampled_from(
        [
            "join",
            "leave",
            "make_host",
            "ask_mute",
            "stop_video",
            "remove",
            "unban",
            "lock",
            "unlock",
            "ask",
            "request",
            "leave_lobby",
            "admit",
            "decline",
            "expire",
            "raise",
            "lower",
            "react",
            "spotlight",
            "record",
            "end",
        ]
    ),
    st.integers(1, 8),
    st.integers(1, 8),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_OPS, max_size=60))
def test_any_sequence_keeps_the_meeting_consistent(ops):
    m = MeetingControl(lobby_max=3, max_bans=3, reaction_burst=2, hand_raise_burst=2)
    now = 0.0
    next_pid = 1
    waiting: list[int] = []
    for op, a, b in ops:
        now += 0.5
        try:
            if op == "join":
                ticket, _ = m.request_join(f"N{a}", now, address=f"10.0.0.{a}")
                if ticket is None:
                    m.join(next_pid, f"N{a}", now, address=f"10.0.0.{a}")
                    next_pid += 1
                else:
                    waiting.append(ticket.ticket)
            elif op == "leave":
                m.leave(a)
            elif op == "make_host":
                m.make_host(a, b)
            elif op == "ask_mute":
                m.ask_mute(a, ALL if b == 8 else b)
            elif op == "stop_video":
                m.stop_video(a, b)
            elif op == "remove":
                m.remove(a, b, "r")
            elif op == "unban":
                bans = m.bans
                if bans:
                    m.unban(a, bans[b % len(bans)].key)
            elif op == "lock":
                m.lock(a)
            elif op == "unlock":
                m.unlock(a)
            elif op == "ask":
                m.set_ask_to_join(a, b % 2 == 0)
            elif op == "request":
                ticket, _ = m.request_join(f"W{b}", now)
                if ticket is not None:
                    waiting.append(ticket.ticket)
            elif op == "leave_lobby" and waiting:
                m.leave_lobby(waiting[b % len(waiting)])
            elif op == "admit" and waiting:
                for e in m.admit(a, waiting[b % len(waiting)]):
                    if isinstance(e, LobbyAdmit):
                        m.join(next_pid, e.username, now)
                        next_pid += 1
            elif op == "decline" and waiting:
                m.decline(a, waiting[b % len(waiting)])
            elif op == "expire":
                m.expire_lobby(now + 1000.0 * b)
            elif op == "raise":
                m.raise_hand(a, now)
            elif op == "lower":
                m.lower_hand(a, b)
            elif op == "react":
                m.react(a, THUMBS, now)
            elif op == "spotlight":
                m.spotlight(a, None if b == 8 else b)
            elif op == "record":
                (m.start_recording if b % 2 else m.stop_recording)(a)
            elif op == "end":
                m.end_meeting(a)
        except (MeetingError, utils.ProtocolError):
            pass
        members = m.members
        assert set(m.hosts) <= set(members)
        assert bool(m.hosts) == bool(members)  # a meeting with people always has a host
        assert set(m.hands) <= set(members)
        assert m.spotlit is None or m.spotlit in members
        assert len(m.lobby) <= 3 and len(m.bans) <= 3
        if m.ended:
            assert not members and not m.lobby and not m.recording


# --- a server restart (persistence.py keeps MeetingControl.saved()) ----------------------


def test_saved_meeting_restores_lock_bans_and_lets_its_members_back_past_the_lobby():
    m = meeting(1, 2, 3)
    m.make_host(1, 2)
    m.lock(1)
    m.remove(1, 3)  # P3 is banned
    saved = m.saved()
    assert saved["locked"] is True and [b["username"] for b in saved["bans"]] == ["P3"]
    assert saved["members"] == [{"username": "P1", "host": True}, {"username": "P2", "host": True}]
    again = MeetingControl()
    again.restore_saved(saved, returning_until=100.0)
    with pytest.raises(Removed):
        again.request_join("p3", 1.0)  # the ban holds, look-alikes included
    assert again.request_join("P2", 1.0) == (None, [])  # first back: nobody could admit
    again.join(10, "P2", 1.0)
    assert again.request_join("p1", 2.0) == (None, [])  # a member before: past the lobby
    again.join(11, "P1", 2.0)
    assert again.hosts == [10, 11] and again.locked
    ticket, _ = again.request_join("Newcomer", 3.0)
    assert ticket is not None  # locked: a newcomer still waits for a host
    late = MeetingControl()
    late.restore_saved(saved, returning_until=100.0)
    late.join(20, "P2", 1.0)
    ticket, _ = late.request_join("P1", 150.0)  # after the grace period: asks like anyone
    assert ticket is not None
