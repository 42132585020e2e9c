"""Running a meeting, pure: hosts, removals, lobby, hands, reactions, spotlight, recording flag.

Issue 14. ``MeetingControl`` is one session's meeting state. It has no sockets, no
threads and no clock: every time is passed in (seconds on a monotonic clock). Each
method checks who may do what and returns the *events* the server must carry out
(``Broadcast``, ``SendTo``, ``Disconnect``, ...), or raises a ``MeetingError`` whose
``code`` and ``message`` go into an ``error`` frame. It is not thread-safe: the server
calls it under its session lock and queues the returned frames under the same hold,
so every member sees one order.

The wire is drafted in docs/PROTOCOL-v2-meeting.md. Until integration, the message
names (``MeetingMsg``), error codes (``MeetingErr``) and field tables
(``MEETING_CLIENT_FIELDS``, ``MEETING_SERVER_FIELDS``) live here; they then move into
utils.py (``Msg``, ``Err``, ``CLIENT_FIELDS``, ``SERVER_FIELDS``), the one definition
of the wire.

Decisions worth knowing:

- Removal bans the removed person's *name* for the rest of the session, unless a host
  unbans it: every name that ``names.is_lookalike`` says could pass for it (case,
  width, invisible characters and look-alike letters folded) is refused. A ban is
  named on the wire by its key, ``names.name_key`` of the removed name. The server
  cannot know a person who comes back under another name. What it can see is the
  address: a newcomer from the address of a removed person (whatever the name) is
  never let straight in but waits in the lobby, marked ``from_removed_address`` for
  the hosts, who decide. Addresses are shared (NAT, one machine for several people,
  loopback in tests), so the address alone never refuses anyone.
- Pin is client-only: a participant's own choice of large tile has no server state.
  Spotlight is the host's pin for everyone and lives here.
- The host cannot unmute anyone or turn a camera on: ``ask_mute`` and ``stop_video``
  tell the person's client to turn it off, and the server stops relaying that
  audio or video (``allows_audio``/``allows_video``) until the person turns it on
  again themselves (a ``media`` message, ``media_changed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import config
import names
import utils
from limits import LimitErr, TokenBucket
from utils import Err, Fields, Msg

# --- Wire names: defined in utils.py (Msg, Err: "meeting controls (issue 14)" blocks) ---

MeetingMsg = Msg  # the meeting's message names are utils.Msg's
MeetingErr = Err  # and its error codes utils.Err's

# The sentence of each meeting refusal: utils.ERROR_TEXT's, and meeting wording of shared codes.
MEETING_ERROR_TEXT: dict[str, str] = {
    **{
        code: utils.ERROR_TEXT[code]
        for code in (
            Err.NOT_ALLOWED,
            Err.REMOVED,
            Err.DECLINED,
            Err.LOBBY_FULL,
            Err.MEETING_ENDED,
        )
    },
    LimitErr.RATE_LIMITED: "You are doing that too often; try again in a moment.",
    MeetingErr.NO_SUCH_PARTICIPANT: "No such participant in this meeting.",
    MeetingErr.USERNAME_TAKEN: "Someone with that name is already in or waiting to join.",
    MeetingErr.TIMEOUT: "No host let you in; please try again later.",
}

LOBBY_WAIT_TEXT = "Waiting for the host to let you in."

# ``ask_mute``'s target meaning every participant but the host who asks.
ALL: Final = "all"
Target = int | Literal["all"]

# --- Errors -----------------------------------------------------------------------------


class MeetingError(utils.FusionError):
    """A refused meeting request: ``code``, ``message`` and extra fields for the frame."""

    code = MeetingErr.NOT_ALLOWED

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        super().__init__(self.code, message or MEETING_ERROR_TEXT.get(self.code))
        self.extra = extra

    def header(self, re: str | None = None) -> dict[str, Any]:
        """The ``error`` frame for this refusal (``re`` = the refused message type)."""
        return utils.error_header(self.code, self.message, re=re, **self.extra)


class NotAllowed(MeetingError):
    """A host action from someone who is not a host (or no longer in the meeting)."""

    code = MeetingErr.NOT_ALLOWED


class Removed(MeetingError):
    """A join under a name a host removed from this session."""

    code = MeetingErr.REMOVED


class LobbyFull(MeetingError):
    """The lobby already holds ``MEETING_LOBBY_MAX_WAITING`` people."""

    code = MeetingErr.LOBBY_FULL


class MeetingEnded(MeetingError):
    """A request to a meeting that a host ended (or whose last member left)."""

    code = MeetingErr.MEETING_ENDED


class RateLimited(MeetingError):
    """Reactions or hand raises faster than their token bucket allows (``retry_after_s``)."""

    code = LimitErr.RATE_LIMITED  # issue 13's code


class NoSuchParticipant(MeetingError):
    """A target id that is not in the meeting (``ids`` lists it)."""

    code = MeetingErr.NO_SUCH_PARTICIPANT


class UsernameTaken(MeetingError):
    """A lobby request under a name (key) someone already waits with."""

    code = MeetingErr.USERNAME_TAKEN


# --- Events: what the server carries out -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Queue ``msg`` for every joined member of the session (but ``skip``)."""

    msg: dict[str, Any]
    skip: int | None = None


@dataclass(frozen=True, slots=True)
class SendTo:
    """Queue ``msg`` for one joined member."""

    pid: int
    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Queue an ``error`` frame (``code``, ``message``, ``extra``) for ``pid``, then close.

    Nothing queued for ``pid`` after this event is sent; the participant's leave is
    then told to the others as usual (``participant_left``).
    """

    pid: int
    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        return utils.error_header(self.code, self.message, **self.extra)


@dataclass(frozen=True, slots=True)
class LobbyAdmit:
    """Let the waiting connection of ``ticket`` join now (checks, welcome, joined)."""

    ticket: int
    username: str


@dataclass(frozen=True, slots=True)
class LobbyRefuse:
    """Send the waiting connection of ``ticket`` an ``error`` frame (``re: hello``), close it."""

    ticket: int
    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        return utils.error_header(self.code, self.message, re="hello", **self.extra)


@dataclass(frozen=True, slots=True)
class StopPresenting:
    """If ``pid`` presents: release the presenter (as ``present_stop``) and send it ``msg``.

    If ``pid`` does not present, nothing happens (the server owns the presenter).
    """

    pid: int
    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RecordingSwitch:
    """Start (``on``) or stop the session's recorder."""

    on: bool


Event = (
    Broadcast | SendTo | Disconnect | LobbyAdmit | LobbyRefuse | StopPresenting | RecordingSwitch
)


# --- State records -------------------------------------------------------------------------


@dataclass(slots=True)
class LobbyTicket:
    """One person waiting in the lobby (their connection is held open by the server)."""

    ticket: int
    username: str
    key: str  # names.name_key(username)
    since: float
    lookalike: tuple[str, str, str]  # names.lookalike_keys(username)
    address: str | None = None
    from_removed_address: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "ticket": self.ticket,
            "username": self.username,
            "from_removed_address": self.from_removed_address,
        }


@dataclass(slots=True)
class Ban:
    """A removal: the name refused for the session's life, and where it came from."""

    key: str  # names.name_key(username): how hosts name the ban (unban)
    username: str
    address: str | None
    by: int
    lookalike: tuple[str, str, str] = field(init=False)  # names.lookalike_keys(username)

    def __post_init__(self) -> None:
        self.lookalike = names.lookalike_keys(self.username)

    def matches(self, keys: tuple[str, str, str]) -> bool:
        """Whether a name with these ``lookalike_keys`` could pass for the removed one."""
        return _same_name(keys, self.lookalike)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "username": self.username}


@dataclass(slots=True)
class _Member:
    pid: int
    username: str
    joined_at: float
    address: str | None
    reactions: TokenBucket
    raises: TokenBucket


def clean_reason(reason: str | None) -> str | None:
    """A host's reason as shown: invisible tricks gone, whitespace runs one space; None if empty.

    Raises ``utils.ProtocolError`` (bad_message) when longer than ``MEETING_REASON_MAX_CHARS``.
    """
    if reason is None:
        return None
    text = " ".join(names.clean_chat_text(reason).split())
    if len(text) > config.MEETING_REASON_MAX_CHARS:
        raise utils.ProtocolError(
            f"reason: {len(text)} characters; the limit is {config.MEETING_REASON_MAX_CHARS}"
        )
    return text or None


def mute_target(header: dict[str, Any]) -> Target:
    """The target of a validated ``ask_mute``: its ``id``, or ``ALL`` for ``everyone: true``."""
    has_id = "id" in header
    everyone = header.get("everyone", False)
    if has_id == bool(everyone):
        raise utils.ProtocolError("ask_mute: give either 'id' or 'everyone': true")
    return header["id"] if has_id else ALL


# --- The model ---------------------------------------------------------------------------


class MeetingControl:
    """One session's meeting state: who hosts, who waits, hands, spotlight, recording."""

    def __init__(
        self,
        *,
        ask_to_join: bool = False,
        lobby_max: int = config.MEETING_LOBBY_MAX_WAITING,
        lobby_max_wait_s: float = config.MEETING_LOBBY_MAX_WAIT_S,
        max_bans: int = config.MEETING_MAX_BANS,
        reactions: tuple[str, ...] = config.MEETING_REACTIONS,
        reactions_per_s: float = config.MEETING_REACTIONS_PER_S,
        reaction_burst: int = config.MEETING_REACTION_BURST,
        hand_raises_per_s: float = config.MEETING_HAND_RAISES_PER_S,
        hand_raise_burst: int = config.MEETING_HAND_RAISE_BURST,
    ) -> None:
        self.lobby_max = lobby_max
        self.lobby_max_wait_s = lobby_max_wait_s
        self.max_bans = max_bans
        self.reactions = frozenset(reactions)
        self._reaction_rate = (reactions_per_s, reaction_burst)
        self._raise_rate = (hand_raises_per_s, hand_raise_burst)
        self.locked = False
        self.ask_to_join = ask_to_join
        self.spotlit: int | None = None
        self.recording = False
        self.ended = False
        self._members: dict[int, _Member] = {}  # in join order: the first is longest present
        self._hosts: set[int] = set()
        self._hands: dict[int, float] = {}  # in the order raised -> when
        self._lobby: dict[int, LobbyTicket] = {}  # in arrival order
        self._next_ticket = 1
        self._bans: dict[str, Ban] = {}  # name key -> ban, oldest first
        # After a server restart (restore_saved): the names that were in the meeting, which
        # come back past the lobby until ``_returning_until`` (name key -> was a host).
        self._returning: dict[str, bool] = {}
        self._returning_until = 0.0
        self._audio_stopped: set[int] = set()
        self._video_stopped: set[int] = set()

    # --- reading -----------------------------------------------------------------------

    @property
    def members(self) -> list[int]:
        """Participant ids in join order."""
        return list(self._members)

    @property
    def hosts(self) -> list[int]:
        """Host ids in join order."""
        return [pid for pid in self._members if pid in self._hosts]

    @property
    def hands(self) -> list[int]:
        """Raised hands, in the order raised."""
        return list(self._hands)

    @property
    def lobby(self) -> list[LobbyTicket]:
        """People waiting, in arrival order."""
        return list(self._lobby.values())

    @property
    def bans(self) -> list[Ban]:
        """Removals still in force, oldest first."""
        return list(self._bans.values())

    @property
    def lobby_active(self) -> bool:
        """Whether newcomers wait for a host (locked, or ask to join)."""
        return self.locked or self.ask_to_join

    def is_host(self, pid: int) -> bool:
        return pid in self._hosts

    def allows_audio(self, pid: int) -> bool:
        """False after a host asked ``pid`` to mute, until ``pid`` turns audio on itself."""
        return pid not in self._audio_stopped

    def allows_video(self, pid: int) -> bool:
        """False after a host stopped ``pid``'s camera, until ``pid`` turns video on itself."""
        return pid not in self._video_stopped

    def snapshot(self, for_pid: int | None = None) -> dict[str, Any]:
        """The welcome's ``meeting`` object; ``lobby`` and ``bans`` only for a host."""
        state: dict[str, Any] = {
            "hosts": self.hosts,
            "hands": self.hands,
            "locked": self.locked,
            "ask_to_join": self.ask_to_join,
            "spotlight": self.spotlit,
            "recording": self.recording,
        }
        if for_pid is not None and for_pid in self._hosts:
            state["lobby"] = [t.as_dict() for t in self._lobby.values()]
            state["bans"] = [b.as_dict() for b in self._bans.values()]
        return state

    def lobby_wait(self) -> dict[str, Any]:
        """The frame that tells a newcomer it waits in the lobby (answering its ``hello``)."""
        return {
            "type": MeetingMsg.LOBBY_WAIT,
            "message": LOBBY_WAIT_TEXT,
            "recording": self.recording,
        }

    def listing(self) -> dict[str, Any]:
        """Fields this session adds to its ``sessions`` entry (told before joining)."""
        return {"lobby": self.lobby_active, "recording": self.recording}

    # --- joining and leaving -----------------------------------------------------------

    def saved(self) -> dict[str, Any]:
        """What a server restart keeps (persistence.py): the lock, the ask-to-join rule,
        the bans, and who was in the meeting (by name; ids do not survive a restart)."""
        return {
            "locked": self.locked,
            "ask_to_join": self.ask_to_join,
            "bans": [{"username": b.username, "address": b.address} for b in self._bans.values()],
            "members": [
                {"username": m.username, "host": m.pid in self._hosts}
                for m in self._members.values()
            ],
        }

    def restore_saved(self, saved: dict[str, Any], returning_until: float) -> None:
        """Take back ``saved()`` after a restart (a new, empty meeting). Its members' names
        join past the lobby until ``returning_until`` (monotonic), hosts as hosts again."""
        self.locked = bool(saved.get("locked", False))
        self.ask_to_join = bool(saved.get("ask_to_join", False))
        for b in list(saved.get("bans", []))[-self.max_bans :]:
            key = names.name_key(b["username"])
            self._bans.pop(key, None)
            self._bans[key] = Ban(key, b["username"], b.get("address"), 0)
        self._returning = {
            names.name_key(m["username"]): bool(m.get("host")) for m in saved.get("members", [])
        }
        self._returning_until = returning_until

    def request_join(
        self, username: str, now: float, address: str | None = None
    ) -> tuple[LobbyTicket | None, list[Event]]:
        """Ask to come in: ``(None, [])`` means join now; a ticket means wait in the lobby.

        Raises ``Removed`` (a removed name), ``MeetingEnded``, ``UsernameTaken`` (the
        name already waits) or ``LobbyFull``. The server checks password, size and
        names among members (sessions.py) before calling this.
        """
        self._require_live()
        keys = names.lookalike_keys(username)
        if any(ban.matches(keys) for ban in self._bans.values()):
            raise Removed()
        if not self._members:
            return None, []  # nobody could let them in
        if now < self._returning_until and names.name_key(username) in self._returning:
            return None, []  # in the meeting before the server restarted: let in already
        flagged = address is not None and any(b.address == address for b in self._bans.values())
        if not (self.lobby_active or flagged):
            return None, []
        if any(_same_name(keys, t.lookalike) for t in self._lobby.values()):
            raise UsernameTaken()
        if len(self._lobby) >= self.lobby_max:
            raise LobbyFull(limit=self.lobby_max)
        key = names.name_key(username)
        ticket = LobbyTicket(self._next_ticket, username, key, now, keys, address, flagged)
        self._next_ticket += 1
        self._lobby[ticket.ticket] = ticket
        return ticket, self._lobby_news()

    def leave_lobby(self, ticket: int) -> list[Event]:
        """The waiting person gave up (closed, ``bye``, timed out on the socket)."""
        if self._lobby.pop(ticket, None) is None:
            return []
        return self._lobby_news()

    def expire_lobby(self, now: float) -> list[Event]:
        """Send away everyone who waited ``lobby_max_wait_s`` without an answer."""
        late = [t for t in self._lobby.values() if now - t.since >= self.lobby_max_wait_s]
        if not late:
            return []
        minutes = round(self.lobby_max_wait_s / 60)
        events: list[Event] = []
        for t in late:
            del self._lobby[t.ticket]
            events.append(
                LobbyRefuse(
                    t.ticket,
                    MeetingErr.TIMEOUT,
                    f"No host let you in within {minutes} minutes; please try again later.",
                )
            )
        return events + self._lobby_news()

    def join(self, pid: int, username: str, now: float, address: str | None = None) -> list[Event]:
        """Record a participant the server has just joined; the first one is host.

        Call ``request_join`` first (except for a session's creator); put
        ``snapshot(pid)`` in the welcome.
        """
        self._require_live()
        if pid in self._members:
            return []
        rate, burst = self._reaction_rate
        raise_rate, raise_burst = self._raise_rate
        self._members[pid] = _Member(
            pid,
            username,
            now,
            address,
            TokenBucket(rate, burst, now),
            TokenBucket(raise_rate, raise_burst, now),
        )
        was_host = self._returning.pop(names.name_key(username), False)
        if not self._hosts or was_host:
            self._hosts.add(pid)
        return []

    def leave(self, pid: int) -> list[Event]:
        """A participant left (bye, closed, timed out): hands, spotlight, host hand-over."""
        if self.ended:
            return []
        return self._drop(pid)

    def media_changed(self, pid: int, audio: bool, video: bool) -> None:
        """``pid`` sent ``media``: turning audio or video on lifts a host's stop."""
        if audio:
            self._audio_stopped.discard(pid)
        if video:
            self._video_stopped.discard(pid)

    # --- host actions ------------------------------------------------------------------

    def make_host(self, actor: int, target: int) -> list[Event]:
        """Make ``target`` a host too (co-hosts are equal); no-op if it already is one."""
        self._require_host(actor, "make someone a host")
        self._require_member(target)
        if target in self._hosts:
            return []
        self._hosts.add(target)
        return [self._hosts_news(actor), *self._host_briefing(target)]

    def ask_mute(self, actor: int, target: Target) -> list[Event]:
        """Ask one participant, or everyone but the actor (``ALL``), to mute."""
        self._require_host(actor, "ask someone to mute")
        who = self._members[actor].username
        if target == ALL:
            msg = {
                "type": MeetingMsg.MUTE_REQUESTED,
                "by": actor,
                "username": who,
                "everyone": True,
            }
            others = [pid for pid in self._members if pid != actor]
            self._audio_stopped.update(others)
            return [Broadcast(msg, skip=actor)]
        self._require_member(target)
        self._audio_stopped.add(target)
        msg = {"type": MeetingMsg.MUTE_REQUESTED, "by": actor, "username": who, "everyone": False}
        return [SendTo(target, msg)]

    def stop_video(self, actor: int, target: int) -> list[Event]:
        """Turn ``target``'s camera off (its client does; the server stops relaying it)."""
        self._require_host(actor, "stop someone's camera")
        self._require_member(target)
        self._video_stopped.add(target)
        msg = {
            "type": MeetingMsg.VIDEO_STOPPED,
            "by": actor,
            "username": self._members[actor].username,
        }
        return [SendTo(target, msg)]

    def stop_screen(self, actor: int, target: int) -> list[Event]:
        """End ``target``'s screen share, if it is presenting."""
        self._require_host(actor, "stop someone's screen share")
        self._require_member(target)
        msg = {
            "type": MeetingMsg.SCREEN_STOPPED,
            "by": actor,
            "username": self._members[actor].username,
        }
        return [StopPresenting(target, msg)]

    def remove(self, actor: int, target: int, reason: str | None = None) -> list[Event]:
        """Disconnect ``target`` and ban its name key for the session's life (until unban)."""
        self._require_host(actor, "remove a participant")
        self._require_member(target)
        if target == actor:
            raise NotAllowed("You cannot remove yourself; leave the meeting instead.")
        reason = clean_reason(reason)
        gone = self._members[target]
        key = names.name_key(gone.username)
        self._bans.pop(key, None)  # re-added as the newest
        self._bans[key] = Ban(key, gone.username, gone.address, actor)
        while len(self._bans) > self.max_bans:
            del self._bans[next(iter(self._bans))]
        extra: dict[str, Any] = {"by": actor}
        message = f"{self._members[actor].username} removed you from the meeting."
        if reason:
            extra["reason"] = reason
            message += f" Reason: {reason}"
        events: list[Event] = [Disconnect(target, MeetingErr.REMOVED, message, extra)]
        events += self._drop(target)
        return events + self._bans_news()

    def unban(self, actor: int, key: str) -> list[Event]:
        """Let a removed name (its key, as in ``bans_changed``) join again; unknown keys: no-op."""
        self._require_host(actor, "let a removed participant back")
        if self._bans.pop(key, None) is None:
            return []
        return self._bans_news()

    def lock(self, actor: int) -> list[Event]:
        """Newcomers wait in the lobby until a host admits them."""
        self._require_host(actor, "lock the meeting")
        return self._set_access(actor, locked=True, ask_to_join=self.ask_to_join)

    def unlock(self, actor: int) -> list[Event]:
        """Newcomers join directly again (unless ask-to-join is on); the lobby stays as is."""
        self._require_host(actor, "unlock the meeting")
        return self._set_access(actor, locked=False, ask_to_join=self.ask_to_join)

    def set_ask_to_join(self, actor: int, enabled: bool) -> list[Event]:
        """The standing rule that every newcomer asks (survives lock/unlock)."""
        self._require_host(actor, "change who may join")
        return self._set_access(actor, locked=self.locked, ask_to_join=enabled)

    def admit(self, actor: int, ticket: int) -> list[Event]:
        """Let a waiting person in; harmless (no events) if they already left."""
        self._require_host(actor, "let someone in")
        t = self._lobby.pop(ticket, None)
        if t is None:
            return []
        return [LobbyAdmit(t.ticket, t.username), *self._lobby_news()]

    def decline(self, actor: int, ticket: int, reason: str | None = None) -> list[Event]:
        """Send a waiting person away with a plain message; harmless if they already left."""
        self._require_host(actor, "turn someone away")
        reason = clean_reason(reason)
        t = self._lobby.pop(ticket, None)
        if t is None:
            return []
        message = MEETING_ERROR_TEXT[MeetingErr.DECLINED]
        extra: dict[str, Any] = {}
        if reason:
            extra["reason"] = reason
            message += f" Reason: {reason}"
        return [LobbyRefuse(t.ticket, MeetingErr.DECLINED, message, extra), *self._lobby_news()]

    def end_meeting(self, actor: int) -> list[Event]:
        """End the meeting for everyone: the recorder stops, the lobby and every member go."""
        self._require_host(actor, "end the meeting")
        name = self._members[actor].username
        events: list[Event] = []
        if self.recording:
            events.append(RecordingSwitch(False))
        for t in self._lobby.values():
            events.append(
                LobbyRefuse(
                    t.ticket,
                    MeetingErr.MEETING_ENDED,
                    "The meeting ended before a host let you in.",
                )
            )
        message = f"{name} ended the meeting for everyone."
        for pid in self._members:
            events.append(Disconnect(pid, MeetingErr.MEETING_ENDED, message, {"by": actor}))
        self._end()
        return events

    def spotlight(self, actor: int, target: int | None) -> list[Event]:
        """Show ``target`` large for everyone (None: nobody); no-op if unchanged."""
        self._require_host(actor, "spotlight a participant")
        if target is not None:
            self._require_member(target)
        if target == self.spotlit:
            return []
        self.spotlit = target
        return [Broadcast({"type": MeetingMsg.SPOTLIGHT_CHANGED, "spotlight": target, "by": actor})]

    def start_recording(self, actor: int) -> list[Event]:
        """Start the recorder; everyone sees the mark, joiners are told before joining."""
        self._require_host(actor, "start recording")
        if self.recording:
            return []
        self.recording = True
        return [RecordingSwitch(True), self._recording_news(actor)]

    def stop_recording(self, actor: int) -> list[Event]:
        """Stop the recorder (the server then offers the file to the hosts)."""
        self._require_host(actor, "stop recording")
        if not self.recording:
            return []
        self.recording = False
        return [RecordingSwitch(False), self._recording_news(actor)]

    def recording_failed(self, message: str) -> list[Event]:
        """The recorder stopped by itself (disk full...): clear the mark and say why."""
        if not self.recording or self.ended:
            return []
        self.recording = False
        return [self._recording_news(0, message)]

    # --- anyone ------------------------------------------------------------------------

    def raise_hand(self, pid: int, now: float) -> list[Event]:
        """Raise ``pid``'s hand (last in the order); no-op if already raised."""
        m = self._require_present(pid)
        if pid in self._hands:
            return []
        if not m.raises.take(now):
            raise RateLimited(retry_after_s=_retry_after(m.raises.retry_after(now)))
        self._hands[pid] = now
        return [self._hands_news(pid)]

    def lower_hand(self, actor: int, target: int | None = None) -> list[Event]:
        """Lower a hand: one's own, or (a host) anyone's; no-op if it is not raised."""
        self._require_present(actor)
        target = actor if target is None else target
        if target != actor and actor not in self._hosts:
            raise NotAllowed("Only a host can lower someone else's hand.")
        self._require_member(target)
        if self._hands.pop(target, None) is None:
            return []
        return [self._hands_news(actor)]

    def react(self, pid: int, emoji: str, now: float) -> list[Event]:
        """Broadcast a reaction (one of ``reactions``) to everyone, the sender included."""
        m = self._require_present(pid)
        if emoji not in self.reactions:
            raise utils.ProtocolError(
                f"react: {emoji!r} is not one of the allowed reactions "
                f"{' '.join(sorted(self.reactions))}"
            )
        if not m.reactions.take(now):
            raise RateLimited(retry_after_s=_retry_after(m.reactions.retry_after(now)))
        return [Broadcast({"type": MeetingMsg.REACTION, "from": pid, "emoji": emoji})]

    # --- internals -----------------------------------------------------------------------

    def _require_live(self) -> None:
        if self.ended:
            raise MeetingEnded()

    def _require_present(self, pid: int) -> _Member:
        self._require_live()
        m = self._members.get(pid)
        if m is None:
            raise NotAllowed("You are no longer in this meeting.")
        return m

    def _require_host(self, actor: int, what: str) -> None:
        self._require_present(actor)
        if actor not in self._hosts:
            raise NotAllowed(f"Only a host can {what}.")

    def _require_member(self, pid: int) -> None:
        if pid not in self._members:
            raise NoSuchParticipant(f"No participant {pid} in this meeting.", ids=[pid])

    def _drop(self, pid: int) -> list[Event]:
        """Forget ``pid``: its hand, spotlight and host role (handed over if it was the last)."""
        if self._members.pop(pid, None) is None:
            return []
        self._audio_stopped.discard(pid)
        self._video_stopped.discard(pid)
        events: list[Event] = []
        if not self._members:
            if self.recording:
                events.append(RecordingSwitch(False))
            for t in self._lobby.values():
                events.append(
                    LobbyRefuse(
                        t.ticket,
                        MeetingErr.MEETING_ENDED,
                        "Everyone left the meeting before a host let you in.",
                    )
                )
            self._end()
            return events
        if self._hands.pop(pid, None) is not None:
            events.append(self._hands_news(0))
        if self.spotlit == pid:
            self.spotlit = None
            events.append(
                Broadcast({"type": MeetingMsg.SPOTLIGHT_CHANGED, "spotlight": None, "by": 0})
            )
        if pid in self._hosts:
            self._hosts.discard(pid)
            promoted = None
            if not self._hosts:
                promoted = next(iter(self._members))  # the longest present
                self._hosts.add(promoted)
            events.append(self._hosts_news(0))
            if promoted is not None:
                events += self._host_briefing(promoted)
        return events

    def _end(self) -> None:
        self.ended = True
        self.recording = False
        self.spotlit = None
        self._members.clear()
        self._hosts.clear()
        self._hands.clear()
        self._lobby.clear()
        self._audio_stopped.clear()
        self._video_stopped.clear()

    def _set_access(self, actor: int, *, locked: bool, ask_to_join: bool) -> list[Event]:
        if (locked, ask_to_join) == (self.locked, self.ask_to_join):
            return []
        self.locked, self.ask_to_join = locked, ask_to_join
        msg = {
            "type": MeetingMsg.ACCESS_CHANGED,
            "locked": locked,
            "ask_to_join": ask_to_join,
            "by": actor,
        }
        return [Broadcast(msg)]

    def _hosts_news(self, by: int) -> Broadcast:
        return Broadcast({"type": MeetingMsg.HOSTS_CHANGED, "hosts": self.hosts, "by": by})

    def _hands_news(self, by: int) -> Broadcast:
        return Broadcast({"type": MeetingMsg.HANDS_CHANGED, "hands": self.hands, "by": by})

    def _recording_news(self, by: int, message: str | None = None) -> Broadcast:
        msg: dict[str, Any] = {
            "type": MeetingMsg.RECORDING_CHANGED,
            "recording": self.recording,
            "by": by,
        }
        if message is not None:
            msg["message"] = message
        return Broadcast(msg)

    def _lobby_msg(self) -> dict[str, Any]:
        return {
            "type": MeetingMsg.LOBBY_UPDATED,
            "lobby": [t.as_dict() for t in self._lobby.values()],
        }

    def _bans_msg(self) -> dict[str, Any]:
        return {"type": MeetingMsg.BANS_CHANGED, "bans": [b.as_dict() for b in self._bans.values()]}

    def _lobby_news(self) -> list[Event]:
        msg = self._lobby_msg()
        return [SendTo(pid, msg) for pid in self.hosts]

    def _bans_news(self) -> list[Event]:
        msg = self._bans_msg()
        return [SendTo(pid, msg) for pid in self.hosts]

    def _host_briefing(self, pid: int) -> list[Event]:
        """What a new host needs and did not get in its welcome: the lobby and the bans."""
        return [SendTo(pid, self._lobby_msg()), SendTo(pid, self._bans_msg())]


def _same_name(a: tuple[str, str, str], b: tuple[str, str, str]) -> bool:
    """``names.is_lookalike`` on precomputed ``lookalike_keys``: any slot alike."""
    return any(x == y for x, y in zip(a, b, strict=True))


def _retry_after(seconds: float) -> float:
    # Rounded up to 0.1 s, as issue 13's rate_limited, so a client waiting that long is served.
    return math.ceil(max(0.0, seconds) * 10) / 10


# --- Field tables: utils.CLIENT_FIELDS / SERVER_FIELDS hold them; these name the meeting's ---

MEETING_CLIENT_TYPES = (
    Msg.MAKE_HOST, Msg.ASK_MUTE, Msg.STOP_VIDEO, Msg.STOP_SCREEN, Msg.REMOVE, Msg.UNBAN,
    Msg.LOCK, Msg.UNLOCK, Msg.SET_ASK_TO_JOIN, Msg.ADMIT, Msg.DECLINE, Msg.END_MEETING,
    Msg.SPOTLIGHT, Msg.START_RECORDING, Msg.STOP_RECORDING, Msg.RAISE_HAND, Msg.LOWER_HAND,
    Msg.REACT,
)  # fmt: skip
MEETING_SERVER_TYPES = (
    Msg.LOBBY_WAIT, Msg.HOSTS_CHANGED, Msg.MUTE_REQUESTED, Msg.VIDEO_STOPPED,
    Msg.SCREEN_STOPPED, Msg.ACCESS_CHANGED, Msg.LOBBY_UPDATED, Msg.BANS_CHANGED,
    Msg.HANDS_CHANGED, Msg.REACTION, Msg.SPOTLIGHT_CHANGED, Msg.RECORDING_CHANGED,
)  # fmt: skip
MEETING_CLIENT_FIELDS: dict[str, Fields] = {t: utils.CLIENT_FIELDS[t] for t in MEETING_CLIENT_TYPES}
MEETING_SERVER_FIELDS: dict[str, Fields] = {t: utils.SERVER_FIELDS[t] for t in MEETING_SERVER_TYPES}
MEETING_HELLO_OPTIONAL: dict[str, str] = {"ask_to_join": "bool"}
LOBBY_ENTRY_FIELDS = utils.LOBBY_ENTRY_FIELDS
BAN_FIELDS = utils.BAN_FIELDS
MEETING_STATE_FIELDS = utils.MEETING_STATE_FIELDS
MEETING_WELCOME_OPTIONAL: dict[str, Any] = {"meeting": MEETING_STATE_FIELDS}
MEETING_SESSION_INFO_OPTIONAL: dict[str, str] = {"lobby": "bool", "recording": "bool"}
MEETING_ERROR_OPTIONAL: dict[str, str] = {
    "by": "int",
    "reason": "str",
    "limit": "int",
    "retry_after_s": "number",
}
