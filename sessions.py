"""The server's session state: sessions, participants, tokens, UDP bindings, join and leave.

Pure: no sockets and no threads. ``SessionTable`` decides and records; it returns
the frames to send as ``Send`` pairs (recipients, header) and the caller queues
them. It is not thread-safe: ``ConferenceServer`` calls every method while
holding its session lock (see the lock order at the top of server.py), and
queues the returned frames under the same hold, so every member of a session
sees one order (chat ``seq`` order in particular).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import config
import history
import limits
import media_crypto
import meeting as meeting_model
import names
import utils
from audio_mixer import AudioMixer
from config import ServerConfig
from meeting import MeetingControl
from utils import Err, Msg
from video_routing import BandwidthGuard, KeyframeThrottle, SubscriptionTable

log = logging.getLogger(__name__)

_CHAT_ALLOWED_CONTROLS = frozenset("\n\t\r")


class Outbox(Protocol):
    """What session state needs of a participant's outgoing queue (server.py's ``Outbox``)."""

    def clear_screen(self) -> None: ...


@dataclass(eq=False)
class Participant:
    """A joined participant: identity, media flags, outgoing queue, UDP address.

    ``sock`` and ``writer`` belong to the server's TCP plumbing; this module never
    touches them.
    """

    id: int
    username: str
    session: Session
    token: str
    outbox: Any  # an Outbox
    sock: Any = None
    writer: Any = None
    audio: bool = False
    video: bool = False
    udp_addr: tuple[str, int] | None = None
    address: str = ""  # the TCP peer's IP address (fair limits count by it)
    chat_limiter: limits.ChatLimiter | None = None
    # Seals what the server sends this participant and opens what it sends (its key is
    # in the welcome, over TLS). None only in tests of pure session state.
    cipher: media_crypto.MediaCipher | None = None
    levels_seq: int = 0
    gone: bool = False
    # Reconnection (issue 13): the secret a ``resume`` must show (never logged), whether
    # the control connection is lost and since when (monotonic), the highest resume
    # ``attempt`` accepted, and which connection is current (bumped by each resume).
    secret: str = ""
    reconnecting: bool = False
    away_since: float = 0.0
    resume_attempt: int = 0
    connection: int = 0
    layers: list[dict[str, Any]] | None = None  # as announced in ``media`` (checked)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "username": self.username,
            "audio": self.audio,
            "video": self.video,
            "presenting": self.session.presenter == self.id,
            "reconnecting": self.reconnecting,
        }
        if self.video and self.layers:
            out["layers"] = [dict(layer) for layer in self.layers]
        return out


@dataclass(eq=False)
class Session:
    """A live session: its members, password hash, chat history, presenter and mixer."""

    name: str
    password_hash: str  # security.hash_password of the creator's password; "" = open
    mixer: AudioMixer
    members: dict[int, Participant] = field(default_factory=dict)
    chat_seq: int = 0
    history: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=config.CHAT_HISTORY_MESSAGES)
    )
    presenter: int | None = None
    levels_were_nonzero: bool = False
    # Restored after a restart (issue 13): kept while empty until then (monotonic).
    keep_until: float | None = None
    # The last chat ids of members who left (issue 13: a client back by hello after its
    # place expired resends its outbox): case-folded username -> [(cid, seq)], adopted by
    # the next join under that name (continuity.adopt_chat_ids_locked). Oldest first.
    departed_ids: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    # Meeting controls (issue 14): hosts, lobby, hands, spotlight, recording flag; and the
    # lobby connections waiting for a host's answer (ticket -> LobbyWaiter).
    meeting: MeetingControl = field(default_factory=MeetingControl)
    waiting: dict[int, LobbyWaiter] = field(default_factory=dict)
    recorder: Any = None  # a recorder.MeetingRecorder while recording (server.py drives it)
    # Video routing (PROTOCOL.md 10): who gets which layer of whom, the keyframe-request
    # throttle and the bandwidth guard. ``routes`` maps (sender, layer number) to the
    # (key, bound address) of each viewer, to reseal the datagram for it; it is
    # replaced whole (never changed in place) by ``SessionTable.publish_routes`` so the
    # udp thread can keep a reference to it.
    subs: SubscriptionTable = field(default_factory=SubscriptionTable)
    throttle: KeyframeThrottle = field(default_factory=KeyframeThrottle)
    guard: BandwidthGuard = field(default_factory=BandwidthGuard)
    routes: dict[tuple[int, int], tuple[Route, ...]] = field(default_factory=dict)

    @property
    def locked(self) -> bool:
        return bool(self.password_hash)

    def everyone(self, skip: int | None = None) -> list[Participant]:
        """Every member but ``skip``, as a list (safe to keep while members change)."""
        return [m for m in self.members.values() if m.id != skip]


# One frame for several recipients: queued (and encoded) once by the caller.
Send = tuple[list[Participant], dict[str, Any]]
# A video viewer as the udp thread needs it: its media key and its bound UDP address.
Route = tuple[media_crypto.MediaCipher, tuple[str, int]]


@dataclass(eq=False)
class LobbyWaiter:
    """A ``hello`` waiting in a session's lobby; ``answer`` is set by a host (or the rules).

    ``answer`` is None while waiting, ``"admit"``, or the ``error`` header to send.
    Read and written under the session lock.
    """

    ticket: int
    session: Session
    answer: str | dict[str, Any] | None = None


class PasswordStale(Exception):
    """The session's password hash changed between the caller's check and ``check_join``."""


class JoinRefused(utils.FusionError):
    """A ``hello`` that cannot join: ``code``, ``message``, and ``extra`` fields for the frame."""

    def __init__(self, code: str, message: str | None = None, **extra: Any) -> None:
        super().__init__(code, message)
        self.extra = extra


def clean_hello(hello: dict[str, Any]) -> tuple[str, str, str]:
    """The session name, username and password of a validated ``hello``, or ``JoinRefused``.

    Checked in the order PROTOCOL.md gives: protocol, username, session, password.
    """
    if hello["protocol"] not in config.SUPPORTED_PROTOCOLS:
        raise JoinRefused(
            Err.UNSUPPORTED_PROTOCOL,
            utils.ERROR_TEXT[Err.UNSUPPORTED_PROTOCOL],
            supported=list(config.SUPPORTED_PROTOCOLS),
        )
    username = names.clean_display_name(hello["username"], config.MAX_USERNAME_CHARS)
    if username is None:
        raise JoinRefused(Err.BAD_USERNAME)
    name = names.clean_display_name(hello["session"], config.MAX_SESSION_NAME_CHARS)
    if name is None:
        raise JoinRefused(Err.BAD_SESSION)
    password = hello.get("password", "")
    if len(password) > config.MAX_PASSWORD_CHARS:
        raise JoinRefused(
            Err.BAD_MESSAGE, f"Passwords are at most {config.MAX_PASSWORD_CHARS} characters."
        )
    return name, username, password


def media_params(cfg: ServerConfig, udp_port: int) -> dict[str, Any]:
    """The welcome's ``media``: where to send UDP and the session's audio/video format.

    ``admit`` adds each participant's own ``key`` and the ``cipher``.
    """
    return {
        "udp_port": udp_port,
        "audio": {
            "codec": config.AUDIO_CODEC,
            "rate": cfg.audio_rate_hz,
            "channels": config.AUDIO_CHANNELS,
            "sample_width": config.AUDIO_SAMPLE_WIDTH_BYTES,
            "frame_samples": cfg.audio_frame_samples,
            "frame_ms": 1000 * cfg.audio_frame_samples // cfg.audio_rate_hz,
            "fec": True,
            "dtx": True,
            "max_packet": config.OPUS_MAX_PACKET_BYTES,
        },
        "video": {
            "codec": "vp8",
            "fps": config.VIDEO_CAMERA_FPS,
            "max_datagram": config.VIDEO_V2_MAX_DATAGRAM_BYTES,
            "layers": {
                spec.name: {"width": spec.width_px, "height": spec.height_px}
                | {"bps": spec.bitrate_bps}
                for spec in (config.VIDEO_SMALL_LAYER, config.VIDEO_LARGE_LAYER_720P)
            },
            "max_tiles": config.SUBSCRIBE_MAX_TILES,
            "max_large": config.SUBSCRIBE_MAX_LARGE_LAYERS,
            "keyframe_min_interval_ms": config.KEYFRAME_REQUEST_MIN_INTERVAL_MS,
            "report_interval_s": config.VIDEO_LOSS_REPORT_INTERVAL_S,
        },
    }


class SessionTable:
    """Every live session and the indexes over their participants (caller holds the lock)."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.config = cfg
        # Meeting events only the server can carry out (Disconnect, RecordingSwitch) that
        # ``leave`` met; the server takes them (take_pending) under the same lock hold.
        self.pending: list[meeting_model.Event] = []
        self.sessions: dict[str, Session] = {}  # names.name_key(name) -> session
        self.by_token: dict[str, Participant] = {}
        self.by_id: dict[int, Participant] = {}
        self.by_addr: dict[tuple[str, int], Participant] = {}
        self._next_id = 1
        self.creations = limits.SessionCreationLimiter(
            cfg.max_sessions_created_per_address, cfg.session_create_window_s
        )
        self.chat_ids = history.Deduper(config.CHAT_DEDUP_IDS)

    # --- reading -----------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every live session: name, participant count, locked (the ``sessions`` message)."""
        return [
            {"name": s.name, "participants": len(s.members), "locked": s.locked}
            | s.meeting.listing()
            for s in self.sessions.values()
        ]

    def participants(self) -> list[Participant]:
        return [p for s in self.sessions.values() for p in s.members.values()]

    def participant_count(self) -> int:
        return sum(len(s.members) for s in self.sessions.values())

    def with_token(self, token: str) -> Participant | None:
        """The joined participant a file data connection's token belongs to."""
        return self.by_token.get(token.lower()) if len(token) == utils.TOKEN_HEX_CHARS else None

    # --- joining and leaving -------------------------------------------------------------

    def password_hash_of(self, name: str) -> str | None:
        """The stored password hash of session ``name`` ("" if open), None if it does not exist.

        The caller verifies the password against it outside the lock (scrypt takes
        tens of milliseconds), then passes ``checked`` and the verdict to ``check_join``.
        """
        sess = self.sessions.get(names.name_key(name))
        return None if sess is None else sess.password_hash

    def check_join(
        self,
        name: str,
        username: str,
        password_ok: bool,
        checked: str | None = None,
        address: str = "",
        now: float = 0.0,
    ) -> None:
        """Raise ``JoinRefused`` if this cleaned hello cannot join now.

        ``password_ok`` is the verdict of the password against ``checked``, the value
        ``password_hash_of`` gave; if the session changed since (``PasswordStale``),
        the caller checks again. ``address`` (the client's IP) and ``now`` (monotonic
        seconds) count the sessions it creates (``too_many_sessions``).
        """
        sess = self.sessions.get(names.name_key(name))
        if (None if sess is None else sess.password_hash) != checked:
            raise PasswordStale()
        if sess is not None:
            if sess.locked and not password_ok:
                raise JoinRefused(Err.WRONG_PASSWORD)
            if len(sess.members) >= self.config.max_participants:
                raise JoinRefused(Err.SESSION_FULL)
            folded = username.casefold()
            others = [  # a namesake who is away is replaced (``namesakes_away``)
                m.username
                for m in sess.members.values()
                if not (m.reconnecting and m.username.casefold() == folded)
            ]
            like = names.is_lookalike(username, others)
            if like is not None:
                same = like.casefold() == username.casefold()  # taken, not just similar
                text = None if same else f"That name looks like {like}, who is in this session."
                raise JoinRefused(Err.USERNAME_TAKEN, text, like=like)
        else:
            like = names.is_lookalike(name, [s.name for s in self.sessions.values()])
            if like is not None:
                raise JoinRefused(
                    Err.BAD_SESSION,
                    f"That session name looks like {like}, another session.",
                    like=like,
                )
            refused = self.creations.check(address, now)
            if refused is not None:
                raise JoinRefused(refused.code, refused.message, **refused.extra)
            if len(self.sessions) >= self.config.max_sessions:
                full = limits.server_full(limits.FullReason.SESSIONS, self.config.max_sessions)
                raise JoinRefused(full.code, full.message, **full.extra)
        if self._next_id > config.MAX_PARTICIPANT_ID:
            full = limits.server_full(limits.FullReason.IDS)
            raise JoinRefused(full.code, full.message, **full.extra)

    def lobby_request(
        self, name: str, username: str, address: str | None, now: float
    ) -> tuple[LobbyWaiter | None, list[Send]]:
        """After ``check_join``, the meeting's rules: a ``LobbyWaiter`` means wait for a host.

        Raises ``JoinRefused`` (removed, meeting_ended, lobby_full, username_taken...).
        """
        sess = self.sessions.get(names.name_key(name))
        if sess is None:
            return None, []
        try:
            ticket, events = sess.meeting.request_join(username, now, address)
        except meeting_model.MeetingError as exc:
            raise JoinRefused(exc.code, exc.message, **exc.extra) from None
        if ticket is None:
            return None, []
        waiter = sess.waiting[ticket.ticket] = LobbyWaiter(ticket.ticket, sess)
        sends, rest = self.apply_meeting(sess, events)
        assert not rest  # request_join only tells the hosts
        return waiter, sends

    def leave_lobby(self, waiter: LobbyWaiter) -> list[Send]:
        """A waiting connection gave up (bye, closed): the hosts' lobby list shrinks."""
        sess = waiter.session
        if sess.waiting.pop(waiter.ticket, None) is None:
            return []
        sends, _ = self.apply_meeting(sess, sess.meeting.leave_lobby(waiter.ticket))
        return sends

    def admit(
        self,
        name: str,
        username: str,
        password_hash: str,
        outbox: Any,
        files_of: Callable[[str], list[dict[str, Any]]],
        media: dict[str, Any],
        address: str = "",
        now: float = 0.0,
        ask_to_join: bool = False,
    ) -> tuple[Participant, list[Send]]:
        """Add a participant ``check_join`` allowed: its ``welcome``, and news for the others.

        ``password_hash`` locks the session if this join creates it ("" leaves it open).
        ``files_of(session_name)`` and ``media`` fill the welcome's ``files`` and ``media``;
        the participant gets a fresh media key (``media.key``) and its ``cipher``.
        With ``now`` (the server's monotonic clock), a presenter is asked for a screen
        keyframe for the newcomer.
        A welcome that would pass the header limit is cut into the welcome and
        ``history`` frames (``history.plan_join``), queued together.
        """
        cfg = self.config
        key = names.name_key(name)
        sess = self.sessions.get(key)
        if sess is None:
            mixer = AudioMixer(cfg.audio_frame_samples)
            sess = self.sessions[key] = Session(name, password_hash, mixer)
            self.creations.created(address, now)
            sess.meeting.ask_to_join = ask_to_join
            log.info("session %r created (locked=%s)", name, sess.locked)
        pid = self._next_id
        self._next_id += 1
        token = secrets.token_hex(16)
        p = Participant(pid, username, sess, token, outbox, address=address)
        p.secret = secrets.token_hex(config.RESUME_SECRET_BYTES)
        sess.meeting.join(pid, username, now, address or None)
        p.chat_limiter = limits.ChatLimiter(
            now,
            cfg.chat_rate_messages_per_s,
            cfg.chat_burst_messages,
            cfg.chat_rate_bytes_per_s,
            cfg.chat_burst_bytes,
        )
        welcome = self._welcome(p, files_of, media, list(sess.history))
        sess.members[pid] = p
        sess.keep_until = None
        sess.mixer.add(pid)
        self.by_token[token] = p
        self.by_id[pid] = p
        joined = {"type": Msg.PARTICIPANT_JOINED, "participant": p.as_dict()}
        plan = history.plan_join(welcome, cfg.max_header_bytes)
        sends: list[Send] = [*(([p], h) for h in plan.headers()), (sess.everyone(skip=pid), joined)]
        presenter = sess.members.get(sess.presenter) if sess.presenter is not None else None
        if presenter is not None:  # a late joiner sees the screen at once
            sends += self.screen_keyframe(presenter, now)
        return p, sends

    def _welcome(
        self,
        p: Participant,
        files_of: Callable[[str], list[dict[str, Any]]],
        media: dict[str, Any],
        chat: list[dict[str, Any]],
    ) -> dict[str, Any]:
        sess = p.session
        return {
            "type": Msg.WELCOME,
            "you": {"id": p.id, "username": p.username},
            "token": p.token,
            "session": sess.name,
            "participants": [m.as_dict() for m in sess.members.values() if m is not p],
            "presenter": sess.presenter,
            "files": files_of(sess.name),
            "chat": chat,
            "media": self._new_media_key(p, media),
            "resume_secret": p.secret,
            "resume_grace_s": float(self.config.resume_grace_s),
            "meeting": sess.meeting.snapshot(p.id),
        }

    @staticmethod
    def _new_media_key(p: Participant, media: dict[str, Any]) -> dict[str, Any]:
        """A fresh media key for ``p`` (every welcome, a resume's too): its cipher is replaced
        and the welcome's ``media`` names the key and the ``cipher``."""
        key = media_crypto.new_media_key()
        p.cipher = media_crypto.MediaCipher(key, media_crypto.SERVER_SIDE)
        return {**media, "key": key.hex(), "cipher": media_crypto.CIPHER_NAME}

    # --- reconnection (issue 13) ---------------------------------------------------------

    def suspend(self, p: Participant, now: float) -> list[Send]:
        """``p``'s control connection broke: keep its place, tell the others it is reconnecting.

        Its UDP binding is dropped (the client registers again after the resume) and
        its presentation released (no frames can come meanwhile).
        """
        if p.gone or p.reconnecting:
            return []
        p.reconnecting = True
        p.away_since = now
        if p.udp_addr is not None and self.by_addr.get(p.udp_addr) is p:
            del self.by_addr[p.udp_addr]
        p.udp_addr = None
        sends: list[Send] = []
        if p.session.presenter == p.id:
            sends += self._set_presenter(p.session, None)
        update = {"type": Msg.PARTICIPANT_UPDATED, "participant": p.as_dict()}
        return [*sends, (p.session.everyone(skip=p.id), update)]

    def expired(self, now: float) -> list[Participant]:
        """Reconnecting participants whose grace period is over (the caller calls ``leave``)."""
        grace = self.config.resume_grace_s
        return [p for p in self.participants() if p.reconnecting and now - p.away_since >= grace]

    def restore(
        self,
        name: str,
        password_hash: str,
        chat_seq: int,
        history: list[dict[str, Any]],
        now: float,
        meeting: dict[str, Any] | None = None,
    ) -> Session:
        """Recreate a session a stopped server saved (no members; kept for the grace period).

        ``password_hash`` is the scrypt hash the session was locked with ("" = open);
        ``meeting`` is ``MeetingControl.saved()`` (lock, ask to join, bans, who was there).
        """
        mixer = AudioMixer(self.config.audio_frame_samples)
        sess = Session(name, password_hash, mixer, chat_seq=chat_seq)
        sess.history.extend(sorted(history, key=lambda m: m["seq"]))
        sess.keep_until = now + self.config.resume_grace_s
        if meeting:
            sess.meeting.restore_saved(meeting, sess.keep_until)
        self.sessions[names.name_key(name)] = sess
        return sess

    def expired_empty(self, now: float) -> list[Session]:
        """Restored sessions nobody rejoined in time; removed here (the caller drops files)."""
        gone = [
            s
            for s in self.sessions.values()
            if not s.members and s.keep_until is not None and now >= s.keep_until
        ]
        for s in gone:
            del self.sessions[names.name_key(s.name)]
        return gone

    def snapshot(self) -> list[tuple[str, str, int, list[dict[str, Any]], dict[str, Any]]]:
        """Every session as (name, password hash, chat_seq, public history, meeting) for
        persistence (``meeting``: ``MeetingControl.saved()``)."""
        return [
            (s.name, s.password_hash, s.chat_seq, list(s.history), s.meeting.saved())
            for s in self.sessions.values()
        ]

    def namesakes_away(self, p: Participant) -> list[Participant]:
        """Reconnecting members named like ``p`` (the same person, back by a new join)."""
        folded = p.username.casefold()
        return [
            m
            for m in p.session.everyone(skip=p.id)
            if m.reconnecting and m.username.casefold() == folded
        ]

    def check_resume(self, name: str, pid: int, secret: str, attempt: int) -> Participant:
        """The participant a ``resume`` may take back, or ``JoinRefused(resume_failed)``."""
        sess = self.sessions.get(names.name_key(name))
        p = sess.members.get(pid) if sess is not None else None
        if p is None or p.gone or not p.secret:
            raise JoinRefused(Err.RESUME_FAILED)
        if not hmac.compare_digest(p.secret.encode("ascii"), secret.encode("utf-8", "replace")):
            raise JoinRefused(Err.RESUME_FAILED)
        if attempt and attempt <= p.resume_attempt:
            raise JoinRefused(Err.RESUME_FAILED, "A newer resume of this place was accepted.")
        return p

    def resume(
        self,
        p: Participant,
        outbox: Any,
        last_seq: int,
        attempt: int,
        files_of: Callable[[str], list[dict[str, Any]]],
        media: dict[str, Any],
    ) -> list[Send]:
        """Give ``p`` its new connection's queue: a ``welcome`` with the chat after ``last_seq``."""
        p.outbox = outbox
        p.connection += 1
        p.resume_attempt = max(p.resume_attempt, attempt)
        was_away = p.reconnecting
        p.reconnecting = False
        missed = [m for m in p.session.history if m["seq"] > last_seq]
        welcome = self._welcome(p, files_of, media, missed)
        welcome["resumed"] = True
        plan = history.plan_join(welcome, self.config.max_header_bytes)
        sends: list[Send] = [([p], h) for h in plan.headers()]
        if was_away:
            update = {"type": Msg.PARTICIPANT_UPDATED, "participant": p.as_dict()}
            sends.append((p.session.everyone(skip=p.id), update))
        return sends

    def leave(self, p: Participant) -> tuple[list[Send], bool]:
        """Remove ``p`` (once): presenter released, others told; True if its session ended."""
        if p.gone:
            return [], False
        p.gone = True
        sess = p.session
        sess.members.pop(p.id, None)
        stats = sess.mixer.stats(p.id)
        if stats and stats["received"]:
            log.info("participant %d audio in: %s", p.id, stats)
        sess.mixer.remove(p.id)
        self.by_token.pop(p.token, None)
        recent = self.chat_ids.recent(p.id, config.STATE_CHAT_IDS_PER_PARTICIPANT)
        if recent:  # kept for a comeback under the same name (bounded: oldest names go)
            departed = sess.departed_ids
            departed.pop(p.username.casefold(), None)
            departed[p.username.casefold()] = recent
            while len(departed) > config.CHAT_DEPARTED_NAMES_KEPT:
                del departed[next(iter(departed))]
        self.chat_ids.forget(p.id)
        self.by_id.pop(p.id, None)
        if p.udp_addr is not None and self.by_addr.get(p.udp_addr) is p:
            del self.by_addr[p.udp_addr]
        sends: list[Send] = self._large_sends(sess, sess.subs.remove_participant(p.id).large_wanted)
        sess.throttle.forget_sender(p.id)
        sess.guard.forget_sender(p.id)
        self.publish_routes(sess)
        if sess.presenter == p.id:
            sends += self._set_presenter(sess, None)
        left = {"type": Msg.PARTICIPANT_LEFT, "id": p.id, "username": p.username}
        sends.append((sess.everyone(), left))
        meeting_sends, rest = self.apply_meeting(sess, sess.meeting.leave(p.id))
        sends += meeting_sends
        self.pending += rest
        if sess.members:
            return sends, False
        key = names.name_key(sess.name)
        if self.sessions.get(key) is sess:
            del self.sessions[key]
        log.info("session %r ended", sess.name)
        return sends, True

    # --- control messages ----------------------------------------------------------------

    def apply_meeting(
        self, sess: Session, events: list[meeting_model.Event]
    ) -> tuple[list[Send], list[meeting_model.Event]]:
        """Carry out the meeting events session state can: frames to send, lobby answers,
        presenter stops. The rest (Disconnect, RecordingSwitch) is returned for the server.
        """
        sends: list[Send] = []
        rest: list[meeting_model.Event] = []
        for e in events:
            if isinstance(e, meeting_model.Broadcast):
                sends.append((sess.everyone(skip=e.skip), e.msg))
            elif isinstance(e, meeting_model.SendTo):
                if e.pid in sess.members:
                    sends.append(([sess.members[e.pid]], e.msg))
            elif isinstance(e, meeting_model.LobbyAdmit | meeting_model.LobbyRefuse):
                waiter = sess.waiting.pop(e.ticket, None)
                if waiter is not None:
                    admitted = isinstance(e, meeting_model.LobbyAdmit)
                    waiter.answer = "admit" if admitted else e.header()
            elif isinstance(e, meeting_model.StopPresenting):
                member = sess.members.get(e.pid)
                if member is not None and sess.presenter == e.pid:
                    sends += self.present_stop(member)
                    sends.append(([member], e.msg))
            else:
                rest.append(e)
        return sends, rest

    def take_pending(self) -> list[meeting_model.Event]:
        events, self.pending = self.pending, []
        return events

    def set_media(
        self,
        p: Participant,
        audio: bool,
        video: bool,
        layers: list[dict[str, Any]] | None = None,
    ) -> list[Send]:
        """Record media flags and announced layers; ``ProtocolError`` for bad layers."""
        if layers is not None:
            check_layers(layers)
            p.layers = [
                {k: layer[k] for k in ("layer", "width", "height", "bps")} for layer in layers
            ]
            for layer in p.layers:
                p.session.guard.set_ceiling((p.id, layer["layer"]), layer["bps"])
        p.session.meeting.media_changed(p.id, audio, video)
        p.audio, p.video = audio, video
        sends: list[Send] = [
            (p.session.everyone(), {"type": Msg.PARTICIPANT_UPDATED, "participant": p.as_dict()})
        ]
        if video and p.session.subs.large_wanted(p.id):  # a camera coming on: tell it at once
            sends.append(([p], {"type": Msg.VIDEO_LAYERS, "large": True}))
        return sends

    # --- video routing (PROTOCOL.md 10) -----------------------------------------------------

    def subscribe(self, p: Participant, streams: list[dict[str, Any]], now: float) -> list[Send]:
        """Replace ``p``'s subscription; raises ``ProtocolError`` (nothing changes) if invalid."""
        sess = p.session
        wanted: dict[int, str] = {}
        for entry in streams:
            sender, layer = entry["sender"], entry["layer"]
            if layer not in config.VIDEO_LAYERS:
                raise utils.ProtocolError(f"subscribe: unknown layer {layer!r}")
            if sender == p.id:
                raise utils.ProtocolError("subscribe: a participant cannot subscribe to itself")
            if sender in wanted:
                raise utils.ProtocolError(f"subscribe: sender {sender} is named twice")
            wanted[sender] = layer
        if len(wanted) > sess.subs.max_tiles:
            raise utils.ProtocolError(
                f"subscribe: {len(wanted)} streams; at most {sess.subs.max_tiles}"
            )
        present = {s: layer for s, layer in wanted.items() if s in sess.members}
        try:
            changes = sess.subs.set(p.id, present)
        except ValueError as exc:
            raise utils.ProtocolError(f"subscribe: {exc}") from None
        self.publish_routes(sess)
        sends: list[Send] = []
        for key in sorted(changes.keyframe_requests):
            if sess.throttle.request(key, now):
                sends += self._keyframe_send(sess, key)
        return sends + self._large_sends(sess, changes.large_wanted)

    def keyframe_request(self, p: Participant, sender: int, layer: str, now: float) -> list[Send]:
        """A viewer lost something: ask the sender (throttled); ignored unless subscribed."""
        sess = p.session
        if layer == config.SCREEN_LAYER:
            presenter = sess.members.get(sender)
            if sess.presenter != sender or presenter is None or sender == p.id:
                return []
            return self.screen_keyframe(presenter, now)
        if layer not in config.VIDEO_LAYERS:
            raise utils.ProtocolError(f"keyframe_request: unknown layer {layer!r}")
        key = (sender, layer)
        if p.id not in sess.subs.forward_targets(sender, layer):
            return []
        return self._keyframe_send(sess, key) if sess.throttle.request(key, now) else []

    def report(
        self,
        p: Participant,
        streams: list[dict[str, Any]],
        now: float,
        audio: dict[str, int] | None = None,
    ) -> list[Send]:
        """A viewer's loss counts feed the bandwidth guard, a listener's its mixer's
        expected loss (``audio_loss`` to the talkers it changes); ``ProtocolError`` if bad."""
        sess = p.session
        if audio is not None and min(audio["received"], audio["lost"]) < 0:
            raise utils.ProtocolError("report: counts cannot be negative")
        if len(streams) > 2 * config.SUBSCRIBE_MAX_TILES:
            raise utils.ProtocolError(f"report: {len(streams)} streams is too many")
        for entry in streams:
            if entry["layer"] not in config.VIDEO_LAYERS:
                raise utils.ProtocolError(f"report: unknown layer {entry['layer']!r}")
            if min(entry["received"], entry["lost"]) < 0:
                raise utils.ProtocolError("report: counts cannot be negative")
        for entry in streams:
            key = (entry["sender"], entry["layer"])
            if p.id in sess.subs.forward_targets(*key):  # only streams it actually gets
                sess.guard.report(key, entry["received"], entry["lost"], now)
        if audio is None:
            return []
        tell = sess.mixer.report_loss(p.id, audio["received"], audio["lost"])
        return [
            ([m], {"type": Msg.AUDIO_LOSS, "percent": percent})
            for pid, percent in sorted(tell.items())
            if (m := sess.members.get(pid)) is not None
        ]

    def video_tick(self, now: float, guard: bool) -> list[Send]:
        """Coalesced keyframe requests now due; with ``guard``, the bandwidth guard's hints."""
        sends: list[Send] = []
        for sess in self.sessions.values():
            for key in sess.throttle.due(now):
                sends += self._keyframe_send(sess, key)
            if guard:
                for (sender, layer), bps in sorted(sess.guard.tick(now).items()):
                    m = sess.members.get(sender)
                    if m is not None:
                        sends.append(([m], {"type": Msg.BITRATE, "layer": layer, "bps": bps}))
        return sends

    def publish_routes(self, sess: Session) -> None:
        """Rebuild ``sess.routes`` (a new dict: readers may still hold the old one)."""
        routes: dict[tuple[int, int], tuple[Route, ...]] = {}
        for sender in sess.members:
            for name, number in utils.LAYER_NUMBERS.items():
                addrs = tuple(
                    (m.cipher, addr)
                    for viewer in sorted(sess.subs.forward_targets(sender, name))
                    if (m := sess.members.get(viewer)) is not None
                    and (addr := m.udp_addr) is not None
                    and m.cipher is not None
                )
                if addrs:
                    routes[(sender, number)] = addrs
        sess.routes = routes

    @staticmethod
    def _keyframe_send(sess: Session, key: tuple[int, str]) -> list[Send]:
        m = sess.members.get(key[0])
        if m is None:
            return []
        return [([m], {"type": Msg.KEYFRAME_REQUEST, "layer": key[1]})]

    @staticmethod
    def _large_sends(sess: Session, large: Any) -> list[Send]:
        return [
            ([sess.members[s]], {"type": Msg.VIDEO_LAYERS, "large": bool(on)})
            for s, on in sorted(large.items())
            if s in sess.members
        ]

    def set_audio_gain(
        self, p: Participant, target: int, percent: int, muted: bool = False
    ) -> list[Send]:
        """``p`` hears ``target`` at ``percent`` (0-200 %) or, muted, not at all (its mix)."""
        lo, hi = config.AUDIO_GAIN_MIN_PERCENT, config.AUDIO_GAIN_MAX_PERCENT
        if not lo <= percent <= hi:
            msg = f"percent must be {lo}-{hi}, got {percent!r}."
            return [([p], utils.error_header(Err.BAD_MESSAGE, msg, re=Msg.AUDIO_GAIN))]
        if target == p.id or target not in p.session.members:
            msg = f"No other participant {target!r} in this session."
            return [([p], utils.error_header(Err.NO_SUCH_PARTICIPANT, msg, re=Msg.AUDIO_GAIN))]
        p.session.mixer.set_gain(p.id, target, 0.0 if muted else percent / 100.0)
        return []

    def present_start(self, p: Participant) -> list[Send]:
        sess = p.session
        if sess.presenter not in (None, p.id):
            return [([p], utils.error_header(Err.PRESENTER_BUSY, re=Msg.PRESENT_START))]
        granted: list[Send] = [([p], {"type": Msg.PRESENT_GRANTED})]
        if sess.presenter == p.id:
            return granted
        return granted + self._set_presenter(sess, p.id)

    def present_stop(self, p: Participant) -> list[Send]:
        """Release the presenter; from anyone but the presenter, nothing happens."""
        if p.session.presenter != p.id:
            return []
        return self._set_presenter(p.session, None)

    def _set_presenter(self, sess: Session, presenter: int | None) -> list[Send]:
        sess.presenter = presenter
        for m in sess.members.values():
            m.outbox.clear_screen()  # no stale frame after a change of presenter
        return [(sess.everyone(), {"type": Msg.PRESENTER_CHANGED, "presenter": presenter})]

    def screen_keyframe(self, presenter: Participant, now: float) -> list[Send]:
        """Ask the presenter for a screen keyframe (throttled as camera requests are)."""
        key = (presenter.id, config.SCREEN_LAYER)
        if presenter.session.throttle.request(key, now):
            return [([presenter], {"type": Msg.KEYFRAME_REQUEST, "layer": config.SCREEN_LAYER})]
        return []

    def recording_keyframe(self, sess: Session, sender: int, now: float) -> list[Send]:
        """The recording needs a keyframe of ``sender``'s small layer: ask it (throttled and
        coalesced with the viewers' requests for the same stream)."""
        key = (sender, config.VIDEO_LAYER_SMALL)
        return self._keyframe_send(sess, key) if sess.throttle.request(key, now) else []

    def screen_viewers(self, p: Participant) -> list[Participant] | None:
        """Who gets ``p``'s screen frame: the others, or None when ``p`` is not presenting."""
        if p.session.presenter != p.id:
            return None
        return p.session.everyone(skip=p.id)

    def chat(
        self,
        p: Participant,
        message: str,
        to: list[int] | None,
        timestamp: float,
        cid: str | None = None,
        now: float = 0.0,
    ) -> list[Send]:
        """Stamp and address one chat message; raises ``ProtocolError`` for bad input.

        The text is cleaned first (bidi controls and other invisibles removed). A
        ``cid`` already delivered gets ``chat_ack`` and nothing else; a participant
        over its chat allowance (``now``: monotonic seconds) gets ``rate_limited``
        and the message is neither stored nor delivered.
        """
        if cid is not None and not history.valid_cid(cid):
            raise utils.ProtocolError(
                f"chat: 'cid' must be 1-{config.MAX_CHAT_CID_CHARS} of A-Z a-z 0-9 - _"
            )
        if cid is not None:
            seq = self.chat_ids.seen(p.id, cid)
            if seq is not None:
                return [([p], {"type": Msg.CHAT_ACK, "cid": cid, "seq": seq})]
        # Charged on the text as sent, before any work on it: a flood costs little.
        if p.chat_limiter is not None:
            refused = p.chat_limiter.check(now, len(message.encode("utf-8")))
            if refused is not None:
                extra = dict(refused.extra, **({"cid": cid} if cid is not None else {}))
                return [
                    ([p], utils.error_header(refused.code, refused.message, re=Msg.CHAT, **extra))
                ]
        message = names.clean_chat_text(message)
        check_chat_text(message)
        sess = p.session
        if to is not None:
            if not to:
                raise utils.ProtocolError("chat: 'to' must name at least one participant")
            unknown = sorted({i for i in to if i not in sess.members})
            if unknown:
                error = utils.error_header(
                    Err.NO_SUCH_PARTICIPANT,
                    f"No participant {unknown} in this session.",
                    re=Msg.CHAT,
                    ids=unknown,
                )
                return [([p], error)]
        sess.chat_seq += 1
        if cid is not None:
            self.chat_ids.record(p.id, cid, sess.chat_seq)
        msg: dict[str, Any] = {
            "type": Msg.CHAT,
            "seq": sess.chat_seq,
            "from": p.id,
            "username": p.username,
            "message": message,
            "timestamp": timestamp,
        }
        if to is None:
            sess.history.append(msg)
            recipients = sess.everyone()
        else:
            msg["to"] = sorted(set(to))
            recipients = [sess.members[pid] for pid in sorted(set(to) | {p.id})]
        if cid is None:
            return [(recipients, msg)]
        # Only the sender's echo carries its cid (the outbox confirms by it).
        others = [m for m in recipients if m is not p]
        return [(others, msg), ([p], {**msg, "cid": cid})]

    # --- UDP addresses -------------------------------------------------------------------

    def registering(self, sender: int) -> Participant | None:
        """The participant an ``h`` datagram names (its key opens the datagram), if joined."""
        p = self.by_id.get(sender)
        return None if p is None or p.gone else p

    def bind_udp(self, p: Participant, addr: tuple[str, int]) -> Participant | None:
        """Bind ``addr`` to ``p``, whose sealed ``h`` was opened (the latest ``h`` wins)."""
        if p.gone:
            return None
        if p.udp_addr is not None and self.by_addr.get(p.udp_addr) is p:
            del self.by_addr[p.udp_addr]
        other = self.by_addr.get(addr)
        if other is not None and other is not p:
            other.udp_addr = None
        p.udp_addr = addr
        self.by_addr[addr] = p
        self.publish_routes(p.session)
        if other is not None and other is not p and other.session is not p.session:
            self.publish_routes(other.session)
        return p

    def media_sender(self, addr: tuple[str, int], sender: int) -> Participant | None:
        """The participant bound to ``addr``, if it is the ``sender`` the datagram names."""
        p = self.by_addr.get(addr)
        return p if p is not None and p.id == sender else None


def check_layers(layers: list[dict[str, Any]]) -> None:
    """Refuse a ``media.layers`` list breaking PROTOCOL.md 10.4 (``ProtocolError``)."""
    if len(layers) > len(config.VIDEO_LAYERS):
        most = len(config.VIDEO_LAYERS)
        raise utils.ProtocolError(f"media: {len(layers)} layers; at most {most}")
    names = [layer["layer"] for layer in layers]
    if len(set(names)) != len(names) or not set(names) <= set(config.VIDEO_LAYERS):
        raise utils.ProtocolError(f"media: layers {names!r} must be distinct small/large")
    for layer in layers:
        for side in (layer["width"], layer["height"]):
            if not config.LAYER_MIN_SIDE_PX <= side <= config.LAYER_MAX_SIDE_PX or side % 2:
                raise utils.ProtocolError(
                    f"media: layer size {side} must be even and "
                    f"{config.LAYER_MIN_SIDE_PX}-{config.LAYER_MAX_SIDE_PX}"
                )
        if not config.LAYER_MIN_BPS <= layer["bps"] <= config.LAYER_MAX_BPS:
            raise utils.ProtocolError(
                f"media: layer bps {layer['bps']} must be "
                f"{config.LAYER_MIN_BPS}-{config.LAYER_MAX_BPS}"
            )


def check_chat_text(message: str) -> None:
    """Refuse an empty, too long or control-character chat message (``ProtocolError``)."""
    if not message.strip():
        raise utils.ProtocolError("chat: the message is empty")
    if len(message) > config.MAX_CHAT_CHARS:
        raise utils.ProtocolError(
            f"chat: the message has {len(message)} characters; the limit is "
            f"{config.MAX_CHAT_CHARS}"
        )
    if any(ord(c) < 32 and c not in _CHAT_ALLOWED_CONTROLS for c in message):
        raise utils.ProtocolError("chat: control characters are not allowed")
