"""The one definition of FusionMeet's wire: TCP frames, UDP datagrams, names, codes.

No other module calls ``struct.pack`` or ``json.dumps`` for the network. Untrusted
bytes become typed objects here (``parse`` raises ``ValueError`` subclasses with
a clear message); everything behind this edge works on typed objects.
"""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import config
import media_crypto

# --- Message types ------------------------------------------------------------


class Msg:
    """Names of every TCP message type (PROTOCOL.md sections 2-6)."""

    # client -> server
    LIST_SESSIONS = "list_sessions"
    HELLO = "hello"
    CHAT = "chat"
    MEDIA = "media"
    PRESENT_START = "present_start"
    PRESENT_STOP = "present_stop"
    SCREEN_FRAME = "screen_frame"
    FILE_OFFER = "file_offer"
    FILE_DELETE = "file_delete"
    SUBSCRIBE = "subscribe"
    KEYFRAME_REQUEST = "keyframe_request"  # both directions (different fields)
    REPORT = "report"
    PING = "ping"
    AUDIO_GAIN = "audio_gain"
    BYE = "bye"
    UPLOAD = "upload"
    DOWNLOAD = "download"
    # --- reconnection (issue 13) ---
    RESUME = "resume"
    # server -> client
    SESSIONS = "sessions"
    WELCOME = "welcome"
    PARTICIPANT_JOINED = "participant_joined"
    PARTICIPANT_LEFT = "participant_left"
    PARTICIPANT_UPDATED = "participant_updated"
    PRESENT_GRANTED = "present_granted"
    PRESENTER_CHANGED = "presenter_changed"
    FILE_ADDED = "file_added"
    FILE_REMOVED = "file_removed"
    UPLOAD_READY = "upload_ready"
    UPLOAD_DONE = "upload_done"
    DOWNLOAD_START = "download_start"
    PONG = "pong"
    ERROR = "error"
    # --- meeting controls (issue 14) ---
    # client -> server: host actions (refused with not_allowed for non-hosts)
    MAKE_HOST = "make_host"
    ASK_MUTE = "ask_mute"
    STOP_VIDEO = "stop_video"
    STOP_SCREEN = "stop_screen"
    REMOVE = "remove"
    UNBAN = "unban"
    LOCK = "lock"
    UNLOCK = "unlock"
    SET_ASK_TO_JOIN = "set_ask_to_join"
    ADMIT = "admit"
    DECLINE = "decline"
    END_MEETING = "end_meeting"
    SPOTLIGHT = "spotlight"
    START_RECORDING = "start_recording"
    STOP_RECORDING = "stop_recording"
    # client -> server: anyone
    RAISE_HAND = "raise_hand"
    LOWER_HAND = "lower_hand"
    REACT = "react"
    # server -> client
    LOBBY_WAIT = "lobby_wait"
    HOSTS_CHANGED = "hosts_changed"
    MUTE_REQUESTED = "mute_requested"
    VIDEO_STOPPED = "video_stopped"
    SCREEN_STOPPED = "screen_stopped"
    ACCESS_CHANGED = "access_changed"
    LOBBY_UPDATED = "lobby_updated"
    BANS_CHANGED = "bans_changed"
    HANDS_CHANGED = "hands_changed"
    REACTION = "reaction"
    SPOTLIGHT_CHANGED = "spotlight_changed"
    RECORDING_CHANGED = "recording_changed"
    VIDEO_LAYERS = "video_layers"
    BITRATE = "bitrate"
    AUDIO_LOSS = "audio_loss"  # server -> client: the loss its Opus encoder plans FEC for
    # --- fair limits and history (issue 13) ---
    HISTORY = "history"  # server -> client: the rest of a welcome's lists
    CHAT_ACK = "chat_ack"  # server -> client: a chat whose cid was already delivered


class Err:
    """Machine codes of ``error`` frames."""

    FRAME_TOO_LARGE = "frame_too_large"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    NOT_JOINED = "not_joined"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    BAD_USERNAME = "bad_username"
    USERNAME_TAKEN = "username_taken"
    BAD_SESSION = "bad_session"
    WRONG_PASSWORD = "wrong_password"
    SESSION_FULL = "session_full"
    PRESENTER_BUSY = "presenter_busy"
    NOT_PRESENTER = "not_presenter"
    FILE_TOO_LARGE = "file_too_large"
    BAD_NAME = "bad_name"
    BAD_TOKEN = "bad_token"
    NO_SUCH_FILE = "no_such_file"
    BAD_OFFSET = "bad_offset"
    NOT_OWNER = "not_owner"
    NO_SUCH_PARTICIPANT = "no_such_participant"
    STORAGE_ERROR = "storage_error"
    SERVER_FULL = "server_full"
    TOO_SLOW = "too_slow"
    SERVER_SHUTDOWN = "server_shutdown"
    TIMEOUT = "timeout"
    # --- meeting controls (issue 14) ---
    NOT_ALLOWED = "not_allowed"  # a host action from a non-host (or from someone gone)
    REMOVED = "removed"  # you were removed / your name is banned from this session
    DECLINED = "declined"  # a host did not let you in from the lobby
    LOBBY_FULL = "lobby_full"  # MEETING_LOBBY_MAX_WAITING people already wait
    MEETING_ENDED = "meeting_ended"  # a host ended the meeting (or it ended while you waited)
    # rate_limited (reactions, hand raises) is issue 13's code: limits.LimitErr.RATE_LIMITED
    ALREADY_RECORDING = "already_recording"  # start_recording while a recording runs
    RECORDING_UNAVAILABLE = "recording_unavailable"  # no PyAV/codec: the server cannot record
    # --- fair limits and history (issue 13) ---
    RATE_LIMITED = "rate_limited"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_SESSIONS = "too_many_sessions"
    TOO_MANY_OFFERS = "too_many_offers"
    QUOTA_EXCEEDED = "quota_exceeded"
    # --- reconnection (issue 13) ---
    RESUME_FAILED = "resume_failed"


class LocalErr:
    """Codes of failures noticed on this side; never sent on the wire (beside ``Err``)."""

    UNREACHABLE = "unreachable"  # no connection to the server could be made
    CONNECTION_LOST = "connection_lost"  # a connection broke in the middle of a transfer
    NOT_CONNECTED = "not_connected"  # a send on a client that is not connected
    BUSY = "busy"  # the same file is already being downloaded to that folder
    CANCELLED = "cancelled"  # the user cancelled a transfer
    EXISTS = "exists"  # no free local file name was left
    LOCAL_ERROR = "local_error"  # a local file could not be read or written
    CHECKSUM_MISMATCH = "checksum_mismatch"  # the bytes differ from the server's SHA-256
    OFFER_FAILED = "offer_failed"  # a file offer failed without an error code
    INTERNAL = "internal"  # a bug: an unexpected exception ended the operation
    UNEXPECTED = "error"  # an exception that carries no code at all


# A human sentence for each code (the default ``message`` of an error frame).
ERROR_TEXT: dict[str, str] = {
    Err.FRAME_TOO_LARGE: "A frame exceeded the size limit; closing the connection.",
    Err.BAD_MESSAGE: "The message was malformed.",
    Err.UNKNOWN_TYPE: "Unknown message type.",
    Err.NOT_JOINED: "Send hello, list_sessions, upload or download first.",
    Err.UNSUPPORTED_PROTOCOL: (
        f"This server speaks FusionMeet protocol {config.PROTOCOL_VERSION}; update FusionMeet."
    ),
    Err.BAD_USERNAME: "Usernames are 1-32 characters with no control characters.",
    Err.USERNAME_TAKEN: "That username is already taken in this session.",
    Err.BAD_SESSION: "Session names are 1-64 characters with no control characters.",
    Err.WRONG_PASSWORD: "Wrong password for this session.",
    Err.SESSION_FULL: "This session is full.",
    Err.PRESENTER_BUSY: "Another user is presenting",
    Err.NOT_PRESENTER: "Only the presenter can send screen frames.",
    Err.FILE_TOO_LARGE: "The file is larger than the server allows.",
    Err.BAD_NAME: "That file name cannot be used.",
    Err.BAD_TOKEN: "The token is not valid.",
    Err.NO_SUCH_FILE: "No such file in this session.",
    Err.BAD_OFFSET: "The offset is outside the file.",
    Err.NOT_OWNER: "Only the person who shared a file can delete it.",
    Err.NO_SUCH_PARTICIPANT: "A private message named someone not in the session.",
    Err.STORAGE_ERROR: "The server could not store the file.",
    Err.SERVER_FULL: "The server has no room for another session.",
    Err.TOO_SLOW: "The connection could not keep up and was closed.",
    Err.SERVER_SHUTDOWN: "The server is shutting down.",
    Err.TIMEOUT: "The connection was silent for too long.",
    # --- meeting controls (issue 14) ---
    Err.NOT_ALLOWED: "Only a host can do that.",
    Err.REMOVED: "A host removed you from this meeting; you cannot rejoin it.",
    Err.DECLINED: "A host did not let you in to this meeting.",
    Err.LOBBY_FULL: "Too many people are already waiting to join this meeting.",
    Err.MEETING_ENDED: "The meeting has ended.",
    Err.ALREADY_RECORDING: "This meeting is already being recorded.",
    Err.RECORDING_UNAVAILABLE: "This server cannot record (no video/audio encoder).",
    # --- fair limits and history (issue 13) ---
    Err.RATE_LIMITED: "You are sending chat too fast; this message was not sent.",
    Err.TOO_MANY_CONNECTIONS: "Your address has too many connections open to this server.",
    Err.TOO_MANY_SESSIONS: "Your address created too many sessions recently; try later.",
    Err.TOO_MANY_OFFERS: "Too many file offers are waiting to be uploaded.",
    Err.QUOTA_EXCEEDED: "Files waiting to be uploaded already reserve too much space.",
    # --- reconnection (issue 13) ---
    Err.RESUME_FAILED: "That place in the session is no longer kept; join again with hello.",
}


# --- Errors ------------------------------------------------------------------------


class FusionError(Exception):
    """Base of FusionMeet's errors: a machine ``code`` (``Err`` or ``LocalErr``) and a sentence.

    Without a ``message``, the code's sentence from ``ERROR_TEXT`` (or the code itself).
    ``str(error)`` is the ``message`` unless a subclass says otherwise.
    """

    code: str = LocalErr.INTERNAL

    def __init__(self, code: str | None = None, message: str | None = None) -> None:
        if code is not None:
            self.code = code
        self.message = ERROR_TEXT.get(self.code, self.code) if message is None else message
        super().__init__(self.message)


class ProtocolError(FusionError, ValueError):
    """Untrusted bytes or fields that break the protocol; ``code`` says which rule."""

    code = Err.BAD_MESSAGE

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(code, message)


class FrameTooLarge(ProtocolError):
    """A length prefix over the limit: framing can no longer be trusted."""

    code = Err.FRAME_TOO_LARGE


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (possibly in the middle of a frame)."""


# --- TCP frames -----------------------------------------------------------------

FRAME_PREFIX = struct.Struct("!II")


@dataclass(slots=True)
class Frame:
    """One TCP frame: a JSON header object with a string ``type``, and a payload."""

    header: dict[str, Any]
    payload: bytes = b""

    @property
    def type(self) -> str:
        return self.header["type"]

    def __bytes__(self) -> bytes:
        return encode_frame(self.header, self.payload)


def dump_json(obj: Any) -> bytes:
    """The compact UTF-8 JSON used on the wire."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Build the bytes of one frame."""
    raw = dump_json(header)
    return FRAME_PREFIX.pack(len(raw), len(payload)) + raw + payload


def check_lengths(
    header_len: int,
    payload_len: int,
    max_header: int = config.MAX_HEADER_BYTES,
    max_payload: int = config.MAX_PAYLOAD_BYTES,
) -> None:
    """Refuse a length prefix over the limits, before anything is allocated."""
    if header_len > max_header:
        raise FrameTooLarge(f"header_len {header_len} exceeds {max_header}")
    if payload_len > max_payload:
        raise FrameTooLarge(f"payload_len {payload_len} exceeds {max_payload}")


def parse_header(raw: bytes) -> dict[str, Any]:
    """Decode a frame header: a UTF-8 JSON object with a string ``type``."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON: {exc}") from None
    except RecursionError:  # e.g. 65536 nested "[": still just a bad header
        raise ProtocolError("header is not UTF-8 JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("header is not a JSON object")
    if not isinstance(obj.get("type"), str):
        raise ProtocolError("header has no string 'type'")
    # JSON may spell a lone UTF-16 surrogate ("\\ud800"): not text, and it could never be
    # encoded again (a chat message holding one would break every later welcome).
    if b"\\u" in raw and _has_lone_surrogate(obj):
        raise ProtocolError("header holds a lone UTF-16 surrogate, which is not text")
    return obj


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _has_lone_surrogate(obj: Any) -> bool:
    """True if any string (key or value) in a parsed JSON value holds a surrogate code point."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def decode_frame(
    data: bytes,
    max_header: int = config.MAX_HEADER_BYTES,
    max_payload: int = config.MAX_PAYLOAD_BYTES,
) -> tuple[Frame, int]:
    """Parse one frame from the start of ``data``; returns it and the bytes used.

    Raises ``ProtocolError`` (or ``FrameTooLarge``) for bad input, ``ValueError``
    mentioning "truncated" when ``data`` holds only part of a frame.
    """
    if len(data) < FRAME_PREFIX.size:
        raise ValueError("frame truncated: prefix incomplete")
    header_len, payload_len = FRAME_PREFIX.unpack_from(data)
    check_lengths(header_len, payload_len, max_header, max_payload)
    end = FRAME_PREFIX.size + header_len + payload_len
    if len(data) < end:
        raise ValueError("frame truncated: body incomplete")
    start = FRAME_PREFIX.size
    header = parse_header(bytes(data[start : start + header_len]))
    payload = bytes(data[start + header_len : end])
    return Frame(header, payload), end


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes, or raise ``ConnectionClosed``."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionClosed(f"peer closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


class FrameReader:
    """Reads whole frames from a blocking socket, never past the frame's end.

    Reading exactly one frame at a time means the raw bytes that follow an
    ``upload`` or ``download_start`` frame stay in the socket for the caller.
    """

    def __init__(
        self,
        sock: socket.socket,
        max_header: int = config.MAX_HEADER_BYTES,
        max_payload: int = config.MAX_PAYLOAD_BYTES,
    ) -> None:
        self.sock = sock
        self.max_header = max_header
        self.max_payload = max_payload

    def read(self) -> Frame:
        """Return the next frame; raises ``ConnectionClosed`` or ``ProtocolError``.

        A ``ProtocolError`` that is not ``FrameTooLarge`` leaves the stream in
        step (the whole frame was consumed), so the connection may go on.
        """
        prefix = recv_exact(self.sock, FRAME_PREFIX.size)
        header_len, payload_len = FRAME_PREFIX.unpack(prefix)
        check_lengths(header_len, payload_len, self.max_header, self.max_payload)
        raw = recv_exact(self.sock, header_len)
        payload = recv_exact(self.sock, payload_len) if payload_len else b""
        return Frame(parse_header(raw), payload)


def error_header(
    code: str, message: str | None = None, re: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The header of an ``error`` frame: code, human sentence, optional ``re``."""
    header: dict[str, Any] = {
        "type": Msg.ERROR,
        "code": code,
        "message": message or ERROR_TEXT.get(code, code),
    }
    if re is not None:
        header["re"] = re
    header.update(extra)
    return header


# --- Field validation -------------------------------------------------------------

# The fields of every message, with their JSON types: ``Fields(required, optional)``,
# each a dict from field name to a kind. A kind is one of the names below, a nested
# ``Fields`` (a JSON object with those fields; others are ignored) or ``ListOf(kind)``.
# ``bool`` is checked exactly (JSON true is not an int here).
_INT = "int"
_FLOAT = "number"
_STR = "str"
_BOOL = "bool"
_IDS = "ids"
_ANY = "any"
_LIST = "list"
_INT_OR_NULL = "int or null"
_PORT = "a port (1-65535)"


class Fields(NamedTuple):
    """The required and optional fields of a message or of an object inside one."""

    required: dict[str, Any]
    optional: dict[str, Any]


class ListOf(NamedTuple):
    """A JSON list whose every item is of ``item``'s kind."""

    item: Any


# A layer as a sender announces it in ``media`` (PROTOCOL.md 10.4).
LAYER_INFO_FIELDS = Fields({"layer": _STR, "width": _INT, "height": _INT, "bps": _INT}, {})
STREAM_FIELDS = Fields({"sender": _INT, "layer": _STR}, {})
STREAM_REPORT_FIELDS = Fields(
    {"sender": _INT, "layer": _STR, "received": _INT, "lost": _INT},
    {"frames": _INT, "bytes": _INT},
)
# ``report``'s audio entry: frames of the server's audio stream decoded and lost.
AUDIO_REPORT_FIELDS = Fields({"received": _INT, "lost": _INT}, {})

CLIENT_FIELDS: dict[str, Fields] = {
    Msg.LIST_SESSIONS: Fields({}, {}),
    Msg.HELLO: Fields({"protocol": _INT, "username": _STR, "session": _STR}, {"password": _STR}),
    Msg.CHAT: Fields({"message": _STR}, {"to": _IDS}),
    Msg.MEDIA: Fields({"audio": _BOOL, "video": _BOOL}, {"layers": ListOf(LAYER_INFO_FIELDS)}),
    Msg.PRESENT_START: Fields({}, {}),
    Msg.PRESENT_STOP: Fields({}, {}),
    Msg.SCREEN_FRAME: Fields({"seq": _INT, "width": _INT, "height": _INT, "keyframe": _BOOL}, {}),
    Msg.FILE_OFFER: Fields({"name": _STR, "size": _INT}, {}),
    Msg.FILE_DELETE: Fields({"file_id": _STR}, {}),
    Msg.SUBSCRIBE: Fields({"streams": ListOf(STREAM_FIELDS)}, {}),
    Msg.KEYFRAME_REQUEST: Fields({"sender": _INT, "layer": _STR}, {}),
    Msg.REPORT: Fields({"streams": ListOf(STREAM_REPORT_FIELDS)}, {"audio": AUDIO_REPORT_FIELDS}),
    Msg.PING: Fields({}, {"t": _ANY}),
    Msg.AUDIO_GAIN: Fields({"id": _INT, "percent": _INT}, {"muted": _BOOL}),
    Msg.BYE: Fields({}, {}),
    Msg.UPLOAD: Fields({"file_id": _STR, "token": _STR}, {}),
    Msg.DOWNLOAD: Fields({"file_id": _STR, "token": _STR}, {"offset": _INT}),
    # --- reconnection (issue 13) ---
    Msg.RESUME: Fields(
        {"protocol": _INT, "session": _STR, "id": _INT, "secret": _STR},
        {"last_seq": _INT, "attempt": _INT},
    ),
    # --- meeting controls (issue 14) ---
    Msg.MAKE_HOST: Fields({"id": _INT}, {}),
    Msg.ASK_MUTE: Fields({}, {"id": _INT, "everyone": _BOOL}),  # exactly one of them
    Msg.STOP_VIDEO: Fields({"id": _INT}, {}),
    Msg.STOP_SCREEN: Fields({"id": _INT}, {}),
    Msg.REMOVE: Fields({"id": _INT}, {"reason": _STR}),
    Msg.UNBAN: Fields({"key": _STR}, {}),
    Msg.LOCK: Fields({}, {}),
    Msg.UNLOCK: Fields({}, {}),
    Msg.SET_ASK_TO_JOIN: Fields({"enabled": _BOOL}, {}),
    Msg.ADMIT: Fields({"ticket": _INT}, {}),
    Msg.DECLINE: Fields({"ticket": _INT}, {"reason": _STR}),
    Msg.END_MEETING: Fields({}, {}),
    Msg.SPOTLIGHT: Fields({"id": _INT_OR_NULL}, {}),
    Msg.START_RECORDING: Fields({}, {}),
    Msg.STOP_RECORDING: Fields({}, {}),
    Msg.RAISE_HAND: Fields({}, {}),
    Msg.LOWER_HAND: Fields({}, {"id": _INT}),
    Msg.REACT: Fields({"emoji": _STR}, {}),
}
# --- meeting controls (issue 14) ---: hello's ask_to_join, read when it creates the session
CLIENT_FIELDS[Msg.HELLO].optional["ask_to_join"] = _BOOL
CLIENT_FIELDS[Msg.CHAT].optional["cid"] = _STR  # a client message id (PROTOCOL.md 3.2, 4)
CLIENT_FIELDS[Msg.UPLOAD].optional["resume"] = _BOOL  # answer upload_ready with the offset


# Objects inside server messages (PROTOCOL.md sections 3, 4 and 6).
PARTICIPANT_FIELDS = Fields(
    {"id": _INT},
    {
        "username": _STR,
        "audio": _BOOL,
        "video": _BOOL,
        "presenting": _BOOL,
        "layers": ListOf(LAYER_INFO_FIELDS),
        # --- reconnection (issue 13) ---
        "reconnecting": _BOOL,
    },
)
FILE_FIELDS = Fields(
    {"id": _STR},
    {
        "name": _STR,
        "size": _INT,
        "sha256": _STR,
        "owner": _INT,
        "username": _STR,
        "timestamp": _FLOAT,
    },
)
SESSION_INFO_FIELDS = Fields(
    {"name": _STR, "participants": _INT, "locked": _BOOL},
    {"lobby": _BOOL, "recording": _BOOL},  # meeting controls (issue 14)
)
# --- meeting controls (issue 14) ---
LOBBY_ENTRY_FIELDS = Fields({"ticket": _INT, "username": _STR}, {"from_removed_address": _BOOL})
BAN_FIELDS = Fields({"key": _STR, "username": _STR}, {})
MEETING_STATE_FIELDS = Fields(  # welcome's ``meeting``
    {"hosts": ListOf(_INT)},
    {
        "hands": ListOf(_INT),
        "locked": _BOOL,
        "ask_to_join": _BOOL,
        "spotlight": _INT_OR_NULL,
        "recording": _BOOL,
        "lobby": ListOf(LOBBY_ENTRY_FIELDS),
        "bans": ListOf(BAN_FIELDS),
    },
)
MEDIA_FIELDS = Fields(
    {"udp_port": _PORT, "key": _STR, "cipher": _STR},
    {
        "audio": Fields(
            {},
            {
                "codec": _STR,
                "rate": _INT,
                "channels": _INT,
                "sample_width": _INT,
                "frame_samples": _INT,
                "frame_ms": _INT,
                "fec": _BOOL,
                "dtx": _BOOL,
                "max_packet": _INT,
            },
        ),
        "video": Fields(
            {},
            {
                "codec": _STR,
                "fps": _INT,
                "max_datagram": _INT,
                "layers": _ANY,
                "max_tiles": _INT,
                "max_large": _INT,
                "keyframe_min_interval_ms": _INT,
                "report_interval_s": _FLOAT,
            },
        ),
    },
)

# Every server -> client message. A chat's own fields are checked by the client's
# chat model (chat_module.ChatLog), which also sorts and de-duplicates history.
SERVER_FIELDS: dict[str, Fields] = {
    Msg.SESSIONS: Fields({"sessions": ListOf(SESSION_INFO_FIELDS)}, {}),
    Msg.WELCOME: Fields(
        {
            "you": Fields({"id": _INT, "username": _STR}, {}),
            "token": _STR,
            "media": MEDIA_FIELDS,
        },
        {
            "session": _STR,
            "participants": ListOf(PARTICIPANT_FIELDS),
            "presenter": _INT_OR_NULL,
            "files": ListOf(FILE_FIELDS),
            "chat": _LIST,
            # --- reconnection (issue 13) ---
            "resume_secret": _STR,
            "resumed": _BOOL,
            "resume_grace_s": _FLOAT,
            "meeting": MEETING_STATE_FIELDS,  # meeting controls (issue 14)
        },
    ),
    # --- reconnection (issue 13) ---
    Msg.CHAT_ACK: Fields({"cid": _STR, "seq": _INT}, {}),
    Msg.PARTICIPANT_JOINED: Fields({"participant": PARTICIPANT_FIELDS}, {}),
    Msg.PARTICIPANT_LEFT: Fields({"id": _INT}, {"username": _STR}),
    Msg.PARTICIPANT_UPDATED: Fields({"participant": PARTICIPANT_FIELDS}, {}),
    Msg.CHAT: Fields({}, {}),
    Msg.PRESENT_GRANTED: Fields({}, {}),
    Msg.PRESENTER_CHANGED: Fields({"presenter": _INT_OR_NULL}, {}),
    Msg.SCREEN_FRAME: Fields(
        {"from": _INT, "seq": _INT, "width": _INT, "height": _INT, "keyframe": _BOOL}, {}
    ),
    Msg.FILE_ADDED: Fields({"file": FILE_FIELDS}, {}),
    Msg.FILE_REMOVED: Fields({"file_id": _STR}, {}),
    Msg.UPLOAD_READY: Fields({"file_id": _STR}, {}),
    Msg.UPLOAD_DONE: Fields({"file_id": _STR, "sha256": _STR}, {}),
    Msg.DOWNLOAD_START: Fields({"file_id": _STR, "size": _INT, "sha256": _STR}, {"offset": _INT}),
    Msg.PONG: Fields({}, {"t": _FLOAT}),
    Msg.KEYFRAME_REQUEST: Fields({"layer": _STR}, {}),
    Msg.VIDEO_LAYERS: Fields({"large": _BOOL}, {}),
    Msg.BITRATE: Fields({"layer": _STR, "bps": _INT}, {}),
    Msg.AUDIO_LOSS: Fields({"percent": _INT}, {}),
    Msg.ERROR: Fields(
        {"code": _STR},
        {"message": _STR, "re": _STR, "supported": ListOf(_INT), "ids": ListOf(_INT)},
    ),
    # --- meeting controls (issue 14) ---
    Msg.LOBBY_WAIT: Fields({}, {"message": _STR, "recording": _BOOL}),
    Msg.HOSTS_CHANGED: Fields({"hosts": ListOf(_INT)}, {"by": _INT}),
    Msg.MUTE_REQUESTED: Fields({"by": _INT}, {"username": _STR, "everyone": _BOOL}),
    Msg.VIDEO_STOPPED: Fields({"by": _INT}, {"username": _STR}),
    Msg.SCREEN_STOPPED: Fields({"by": _INT}, {"username": _STR}),
    Msg.ACCESS_CHANGED: Fields({"locked": _BOOL, "ask_to_join": _BOOL}, {"by": _INT}),
    Msg.LOBBY_UPDATED: Fields({"lobby": ListOf(LOBBY_ENTRY_FIELDS)}, {}),
    Msg.BANS_CHANGED: Fields({"bans": ListOf(BAN_FIELDS)}, {}),
    Msg.HANDS_CHANGED: Fields({"hands": ListOf(_INT)}, {"by": _INT}),
    Msg.REACTION: Fields({"from": _INT, "emoji": _STR}, {}),
    Msg.SPOTLIGHT_CHANGED: Fields({"spotlight": _INT_OR_NULL}, {"by": _INT}),
    Msg.RECORDING_CHANGED: Fields({"recording": _BOOL}, {"by": _INT, "message": _STR}),
    # --- fair limits and history (issue 13) ---
    Msg.HISTORY: Fields(
        {"part": _INT, "parts": _INT},
        {"participants": ListOf(PARTICIPANT_FIELDS), "files": ListOf(FILE_FIELDS), "chat": _LIST},
    ),
    Msg.CHAT_ACK: Fields({"cid": _STR, "seq": _INT}, {}),
}
SERVER_FIELDS[Msg.WELCOME].optional["history_frames"] = _INT
SERVER_FIELDS[Msg.WELCOME].optional["chat_dropped"] = _INT
SERVER_FIELDS[Msg.ERROR].optional.update(
    {"reason": _STR, "limit": _INT, "scope": _STR, "window_s": _FLOAT, "retry_after_s": _FLOAT}
)
SERVER_FIELDS[Msg.ERROR].optional.update({"like": _STR, "cid": _STR})
SERVER_FIELDS[Msg.ERROR].optional["by"] = _INT  # --- meeting controls (issue 14) ---
SERVER_FIELDS[Msg.UPLOAD_READY].optional["offset"] = _INT  # bytes held (a resumed upload)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind_error(value: Any, kind: Any) -> str | None:
    """Why ``value`` is not of ``kind`` (a sentence fragment), or None if it is."""
    if isinstance(kind, Fields):
        if not isinstance(value, dict):
            return "must be an object"
        why = _fields_error(value, kind)
        return None if why is None else f"is wrong: {why}"
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            return "must be a list"
        for i, item in enumerate(value):
            why = _kind_error(item, kind.item)
            if why is not None:
                return f"item {i} {why}"
        return None
    return None if _type_ok(value, kind) else f"must be {kind}"


def _fields_error(obj: dict[str, Any], spec: Fields) -> str | None:
    for name, want in spec.required.items():
        if name not in obj:
            return f"missing field {name!r}"
        why = _kind_error(obj[name], want)
        if why is not None:
            return f"field {name!r} {why}"
    for name, want in spec.optional.items():
        if name in obj:
            why = _kind_error(obj[name], want)
            if why is not None:
                return f"field {name!r} {why}"
    return None


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _ANY:
        return True
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return _is_int(value)
    if kind == _INT_OR_NULL:
        return value is None or _is_int(value)
    if kind == _PORT:
        return _is_int(value) and 0 < value < 65536
    if kind == _FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _LIST:
        return isinstance(value, list)
    if kind == _IDS:
        return (
            isinstance(value, list)
            and len(value) <= config.MAX_PARTICIPANTS_PER_SESSION
            and all(_is_int(v) for v in value)
        )
    raise AssertionError(kind)


def _validate(header: dict[str, Any], table: dict[str, Fields]) -> None:
    kind = header["type"]
    spec = table.get(kind)
    if spec is None:
        raise ProtocolError(f"unknown message type {kind!r}", Err.UNKNOWN_TYPE)
    why = _fields_error(header, spec)
    if why is not None:
        raise ProtocolError(f"{kind}: {why}")


def validate_client_message(header: dict[str, Any]) -> None:
    """Check a client message's fields; raise ``ProtocolError`` (unknown_type or bad_message)."""
    _validate(header, CLIENT_FIELDS)


def validate_server_message(header: dict[str, Any]) -> None:
    """Check a server message's fields; raise ``ProtocolError`` (unknown_type or bad_message)."""
    _validate(header, SERVER_FIELDS)


def check_handlers(where: str, fields: dict[str, Fields], *tables: Mapping[str, Any]) -> None:
    """Raise ``RuntimeError`` unless each type in ``fields`` has exactly one handler.

    ``tables`` map message types to handlers; together they must cover every type
    of ``fields`` once, and name no type that ``fields`` lacks.
    """
    seen = Counter(kind for table in tables for kind in table)
    missing = sorted(set(fields) - set(seen))
    twice = sorted(kind for kind, n in seen.items() if n > 1)
    unknown = sorted(set(seen) - set(fields))
    if missing or twice or unknown:
        raise RuntimeError(
            f"{where}: the message handlers do not match the field table: "
            f"no handler for {missing}, two handlers for {twice}, not in the table {unknown}"
        )


# --- UDP datagrams ------------------------------------------------------------------

MEDIA_HEADER = struct.Struct("!BBHII")
LEVEL_ENTRY = struct.Struct("!HB")
# Protocol 2: every datagram is sealed (media_crypto.MediaCipher, PROTOCOL.md section 9);
# these classes describe the plaintext (header, payload) before sealing / after opening.
MEDIA_VERSION = media_crypto.SEALED_VERSION
SEAL_OVERHEAD_BYTES = media_crypto.SEAL_OVERHEAD_BYTES  # counter + tag after the header
U32 = 1 << 32

KIND_REGISTER = ord("h")
KIND_AUDIO = ord("a")
KIND_VIDEO = ord("v")
KIND_LEVELS = ord("l")
KIND_KEEPALIVE = ord("k")
KINDS = frozenset({KIND_REGISTER, KIND_AUDIO, KIND_VIDEO, KIND_LEVELS, KIND_KEEPALIVE})
TOKEN_HEX_CHARS = 32


@dataclass(slots=True)
class Datagram:
    """One UDP media datagram: the 12-byte header and its payload."""

    kind: int
    sender: int
    seq: int
    time_ms: int
    payload: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> Datagram:
        if len(data) < MEDIA_HEADER.size:
            raise ValueError(f"datagram truncated: {len(data)} bytes < {MEDIA_HEADER.size}")
        kind, ver, sender, seq, time_ms = MEDIA_HEADER.unpack_from(data)
        if ver != MEDIA_VERSION:
            raise ValueError(f"datagram version {ver} is not {MEDIA_VERSION}")
        if kind not in KINDS:
            raise ValueError(f"unknown datagram kind {kind}")
        return cls(kind, sender, seq, time_ms, bytes(data[MEDIA_HEADER.size :]))

    def __bytes__(self) -> bytes:
        return (
            MEDIA_HEADER.pack(
                self.kind, MEDIA_VERSION, self.sender, self.seq % U32, self.time_ms % U32
            )
            + self.payload
        )


@dataclass(frozen=True, slots=True)
class AudioPacket:
    """The payload of an ``a`` datagram (protocol 2): exactly one Opus packet of one 20 ms frame.

    1 to ``config.OPUS_MAX_PACKET_BYTES`` bytes; a frame with nothing to say (DTX) is
    not sent at all, so an empty payload is malformed.
    """

    opus: bytes

    @classmethod
    def parse(cls, payload: bytes) -> AudioPacket:
        if not payload:
            raise ValueError("audio datagram with an empty Opus packet")
        if len(payload) > config.OPUS_MAX_PACKET_BYTES:
            raise ValueError(
                f"Opus packet of {len(payload)} bytes > {config.OPUS_MAX_PACKET_BYTES}"
            )
        return cls(bytes(payload))

    def __bytes__(self) -> bytes:
        return self.opus


def pack_media(kind: int, sender: int, seq: int, time_ms: int, payload: bytes = b"") -> bytes:
    """Build a datagram's bytes without an intermediate object (hot path)."""
    return MEDIA_HEADER.pack(kind, MEDIA_VERSION, sender, seq % U32, time_ms % U32) + payload


def media_clock_ms() -> int:
    """The sender's media clock (milliseconds, wraps at 2**32)."""
    return int(time.monotonic() * 1000) % U32


# ``v`` payload after the base header: layer u8, flags u8, frame_id u32, index u16, count u16.
VIDEO_HEADER = struct.Struct("!BBIHH")
VIDEO_FLAG_KEYFRAME = 0x01
# Layer names on the TCP wire <-> layer numbers in ``v`` datagrams.
LAYER_NUMBERS = {config.VIDEO_LAYER_SMALL: 0, config.VIDEO_LAYER_LARGE: 1}
LAYER_NAMES = {n: name for name, n in LAYER_NUMBERS.items()}
# Bytes of VP8 in every fragment but the last (PROTOCOL.md 10.3).
# Every fragment but a frame's last is exactly this long, so that the whole sealed
# datagram (header, counter, video header, slice, tag) is VIDEO_V2_MAX_DATAGRAM_BYTES.
VIDEO_SLICE_BYTES = (
    config.VIDEO_V2_MAX_DATAGRAM_BYTES - MEDIA_HEADER.size - SEAL_OVERHEAD_BYTES - VIDEO_HEADER.size
)


@dataclass(slots=True)
class VideoFragment:
    """The payload of a ``v`` datagram: one slice of one VP8 frame of one layer."""

    layer: int
    keyframe: bool
    frame_id: int
    frag_index: int
    frag_count: int
    data: bytes

    @property
    def layer_name(self) -> str:
        return LAYER_NAMES[self.layer]

    @classmethod
    def parse(cls, payload: bytes) -> VideoFragment:
        """Raise ``ValueError`` for every rule of PROTOCOL.md 10.3 a fragment breaks."""
        if len(payload) < VIDEO_HEADER.size:
            raise ValueError(f"video fragment truncated: {len(payload)} bytes")
        layer, flags, frame_id, index, count = VIDEO_HEADER.unpack_from(payload)
        if layer not in LAYER_NAMES:
            raise ValueError(f"video layer {layer} is unknown")
        if count == 0 or count > config.VIDEO_V2_MAX_FRAGMENTS or index >= count:
            raise ValueError(f"video fragment {index} of {count} is impossible")
        size = len(payload) - VIDEO_HEADER.size
        if size == 0:
            raise ValueError("video fragment has no data")
        if size > VIDEO_SLICE_BYTES:
            raise ValueError(f"video fragment of {size} bytes; at most {VIDEO_SLICE_BYTES}")
        if index < count - 1 and size != VIDEO_SLICE_BYTES:
            raise ValueError(f"video fragment {index} of {count} is {size} bytes, not a full slice")
        return cls(
            layer,
            bool(flags & VIDEO_FLAG_KEYFRAME),
            frame_id,
            index,
            count,
            bytes(payload[VIDEO_HEADER.size :]),
        )

    def __bytes__(self) -> bytes:
        flags = VIDEO_FLAG_KEYFRAME if self.keyframe else 0
        head = VIDEO_HEADER.pack(
            self.layer, flags, self.frame_id % U32, self.frag_index, self.frag_count
        )
        return head + self.data


def split_vp8_frame(layer: str, frame_id: int, keyframe: bool, data: bytes) -> list[bytes]:
    """Cut one VP8 frame into ``v`` payloads (without the base header), each datagram <= 1200."""
    if not data:
        raise ValueError("an empty video frame cannot be sent")
    room = VIDEO_SLICE_BYTES
    count = -(-len(data) // room)
    if count > config.VIDEO_V2_MAX_FRAGMENTS:
        raise ValueError(f"video frame of {len(data)} bytes needs {count} fragments")
    number = LAYER_NUMBERS[layer]
    return [
        bytes(VideoFragment(number, keyframe, frame_id, i, count, data[i * room : (i + 1) * room]))
        for i in range(count)
    ]


# --- VP8 bitstream header (RFC 6386 section 9.1), parsed without decoding ----------

_VP8_START_CODE = b"\x9d\x01\x2a"


@dataclass(frozen=True, slots=True)
class Vp8FrameInfo:
    """What a VP8 frame's first bytes say: keyframe or not, and a keyframe's size."""

    keyframe: bool
    width: int  # 0 for an inter frame (only keyframes carry the size)
    height: int


def parse_vp8_frame(data: bytes) -> Vp8FrameInfo:
    """Read the frame tag (and a keyframe's start code and size); ``ValueError`` if bad."""
    if len(data) < 3:
        raise ValueError(f"VP8 frame truncated: {len(data)} bytes")
    tag = data[0] | (data[1] << 8) | (data[2] << 16)
    keyframe = not tag & 1
    if (tag >> 1) & 7 > 3:
        raise ValueError(f"VP8 version {(tag >> 1) & 7} does not exist")
    first_partition = tag >> 5
    if not keyframe:
        if len(data) < 3 + first_partition:
            raise ValueError("VP8 frame truncated: first partition incomplete")
        return Vp8FrameInfo(False, 0, 0)
    if len(data) < 10:
        raise ValueError(f"VP8 keyframe truncated: {len(data)} bytes")
    if data[3:6] != _VP8_START_CODE:
        raise ValueError("VP8 keyframe without its start code")
    width = (data[6] | (data[7] << 8)) & 0x3FFF
    height = (data[8] | (data[9] << 8)) & 0x3FFF
    if width == 0 or height == 0:
        raise ValueError(f"VP8 keyframe of {width}x{height} pixels")
    if len(data) < 10 + first_partition:
        raise ValueError("VP8 keyframe truncated: first partition incomplete")
    return Vp8FrameInfo(True, width, height)


def encode_levels(levels: dict[int, int]) -> bytes:
    """The payload of an ``l`` datagram: (id u16, level u8) repeated."""
    return b"".join(LEVEL_ENTRY.pack(pid, max(0, min(255, lvl))) for pid, lvl in levels.items())


def parse_levels(payload: bytes) -> dict[int, int]:
    if len(payload) % LEVEL_ENTRY.size:
        raise ValueError(f"levels payload of {len(payload)} bytes is not a multiple of 3")
    return {pid: lvl for pid, lvl in LEVEL_ENTRY.iter_unpack(payload)}


def level_from_rms(rms: float) -> int:
    """Map an int16 RMS to 0-255 on a log scale (-60 dBFS .. 0 dBFS)."""
    if rms <= 0:
        return 0
    db = 20 * math.log10(rms / 32768.0)
    return int(max(0.0, min(1.0, (db + 60.0) / 60.0)) * 255)
