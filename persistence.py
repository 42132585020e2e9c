"""The server's state on disk across a restart or a crash (issue 13): sessions, chat, files.

Pure file I/O, no sockets, no threads, no locks: ``Continuity`` takes a snapshot
under the server's session lock and writes it (``save``) after releasing it, while
the server runs (its ``state-saver`` thread, after changes, coalesced) and once more
at stop (``clean``); ``ConferenceServer.start`` reads it back (``load``) before
serving. The file is JSON (never pickle), written atomically (temporary file,
fsync, rename), readable by the server's user only, and consumed by the next start:
it is deleted once read (the restored server writes its own at once). A snapshot
older than the grace period, from another format version, too large or malformed
is ignored with a warning and the server starts empty; a malformed one is kept
beside as ``server-state.json.corrupt`` for a person to look at. ``--fresh``
ignores it and deletes it (and the files it names are then cleaned up by
``FileStore``). Every field read back is checked (types, lengths, counts) before
it is used: a damaged file can leave things out, never crash the start.

No password is ever written: a locked session is saved with the scrypt hash it
keeps (``security.hash_password``, ``scrypt$N$r$p$salt$hash``), and restored with
it, so the same passwords still open it after the restart.

Format (``STATE_FORMAT`` 2; a format-1 file, which held the password itself, is
ignored)::

    {"format": 2, "saved_at": <unix time, s>, "clean": <true at stop, false while running>,
     "sessions": [{"name", "password_hash" ("" = open), "chat_seq", "history": [chat...],
                   "files": [file...  as in welcome.files],
                   "chat_ids": {<username, case folded>: [[cid, seq], ...]},
                   "meeting": {"locked", "ask_to_join", "bans": [{"username", "address"}],
                               "members": [{"username", "host"}]}}]}

``clean``, ``chat_ids`` and ``meeting`` are optional (absent: a clean stop, no ids). After a
state that was not saved by a clean stop (a crash), ``saved_at`` is the later of
the field and the file's modification time (refreshed while the server runs,
``touch``), and each session's ``chat_seq`` goes on ``CHAT_SEQ_AFTER_CRASH_GAP``
past the saved one (what was delivered after the last save is unknown).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import config
import history
import names
import security
import utils

log = logging.getLogger(__name__)

STATE_FORMAT = 2
CORRUPT_SUFFIX = ".corrupt"

_FILE_ID = re.compile(r"f[0-9a-f]{16}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The fields of a chat message in the history, with their types (as the wire has them).
_CHAT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "type": str,
    "seq": int,
    "from": int,
    "username": str,
    "message": str,
    "timestamp": (int, float),
}


@dataclass
class SavedSession:
    """One session as it was when the server stopped (or last saved while running)."""

    name: str
    password_hash: str  # security.hash_password's text, "" for an open session
    chat_seq: int
    history: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    # The last client message ids of its members: case-folded username -> [(cid, seq)].
    chat_ids: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    # The meeting's lock, ask-to-join rule, bans and members (MeetingControl.saved()).
    meeting: dict[str, Any] = field(default_factory=dict)


def state_path(storage_dir: Path) -> Path:
    return Path(storage_dir) / config.SERVER_STATE_FILE


def save(
    storage_dir: Path, sessions: list[SavedSession], saved_at: float, clean: bool = True
) -> Path | None:
    """Write the snapshot atomically; the path, or None (logged) if it could not be written.

    ``clean`` is True for the save of a stop, False for the saves while running.
    """
    path = state_path(storage_dir)
    data = {
        "format": STATE_FORMAT,
        "saved_at": saved_at,
        "clean": clean,
        "sessions": [
            {
                "name": s.name,
                "password_hash": s.password_hash,
                "chat_seq": s.chat_seq,
                "history": s.history,
                "files": s.files,
                "chat_ids": {
                    user: [list(pair) for pair in ids] for user, ids in s.chat_ids.items()
                },
                "meeting": s.meeting,
            }
            for s in sessions
        ],
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not save the server state to %s: %s", path, exc)
        return None
    log.log(
        logging.INFO if clean else logging.DEBUG, "saved %d sessions to %s", len(sessions), path
    )
    return path


def touch(storage_dir: Path) -> None:
    """Mark the saved state as current now (the running server is alive; nothing changed)."""
    try:
        os.utime(state_path(storage_dir))
    except FileNotFoundError:
        pass  # nothing saved yet
    except OSError as exc:
        log.warning("could not refresh %s: %s", state_path(storage_dir), exc)


def discard(storage_dir: Path) -> None:
    """Delete a saved snapshot (``--fresh``, or once it was read)."""
    try:
        state_path(storage_dir).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not delete %s: %s", state_path(storage_dir), exc)


def load(storage_dir: Path, grace_s: float, now: float) -> list[SavedSession]:
    """The sessions saved at most ``grace_s`` before ``now`` (the file is consumed).

    Anything wrong with the file gives a warning and an empty start, never an exception.
    """
    path = state_path(storage_dir)
    try:
        stat = path.stat()
        if stat.st_size > config.STATE_MAX_BYTES:
            raise ValueError(f"{stat.st_size} bytes, more than {config.STATE_MAX_BYTES}")
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except (OSError, ValueError, MemoryError) as exc:
        log.warning("could not read the saved server state %s (%s): starting empty", path, exc)
        discard(storage_dir)
        return []
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"format {found!r}, expected {STATE_FORMAT}")
        clean = data.get("clean", True)
        saved_at = data["saved_at"]
        if not isinstance(clean, bool) or not _is_number(saved_at):
            raise TypeError("'clean' must be true or false and 'saved_at' a number")
        alive_at = saved_at if clean else max(saved_at, stat.st_mtime)
        sessions = data["sessions"]
        if not isinstance(sessions, list):
            raise TypeError("'sessions' must be a list")
        restored = _sessions(sessions, clean)
    except (ValueError, KeyError, TypeError, RecursionError, MemoryError) as exc:
        kept = path.with_name(path.name + CORRUPT_SUFFIX)
        log.warning(
            "ignoring a malformed saved server state %s (%s): starting empty; kept as %s",
            path,
            str(exc)[:200],
            kept.name,
        )
        try:
            os.replace(path, kept)
        except OSError:
            discard(storage_dir)
        return []
    discard(storage_dir)
    age = now - alive_at
    if not 0 <= age <= grace_s:
        log.info("saved server state is %.0f s old (grace %.0f s): starting empty", age, grace_s)
        return []
    if not clean:
        log.info("the last run did not stop cleanly: restoring its last saved state")
    return restored


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _sessions(items: list[Any], clean: bool) -> list[SavedSession]:
    """The saved sessions that make sense, at most ``MAX_SESSIONS`` (the rest: logged, left out)."""
    out: dict[str, SavedSession] = {}
    for item in items:
        s = _session(item, clean)
        if s is None:
            continue
        if len(out) >= config.MAX_SESSIONS:
            log.warning("saved server state has more than %d sessions: the rest left out", len(out))
            break
        out.setdefault(s.name.casefold(), s)
    return list(out.values())


def _session(s: Any, clean: bool) -> SavedSession | None:
    if not isinstance(s, dict):
        raise TypeError("a saved session must be an object")
    name, password_hash, seq = s["name"], s["password_hash"], s["chat_seq"]
    history_in, files_in = s.get("history", []), s.get("files", [])
    ids_in = s.get("chat_ids", {})
    if not (isinstance(name, str) and isinstance(password_hash, str) and _is_int(seq)):
        raise TypeError("a saved session has a name, a password_hash and a chat_seq")
    if password_hash and not password_hash.startswith(security.PASSWORD_SCHEME + "$"):
        raise ValueError("a saved session's password_hash is not a scrypt hash")
    if not (isinstance(history_in, list) and isinstance(files_in, list)):
        raise TypeError("a saved session's history and files are lists")
    if not isinstance(ids_in, dict):
        raise TypeError("a saved session's chat_ids is an object")
    clean_name = names.clean_display_name(name, config.MAX_SESSION_NAME_CHARS)
    if clean_name is None or clean_name != name:
        log.warning("saved session name %r is not a valid name: left out", name[:80])
        return None
    chat = [
        {k: m[k] for k in _CHAT_FIELDS}  # only the fields a chat message has (bounded)
        for m in history_in[-config.CHAT_HISTORY_MESSAGES :]
        if _chat_ok(m)
    ]
    files = [f for f in files_in[: config.MAX_FILES_PER_SESSION] if _file_ok(f)]
    dropped = len(history_in[-config.CHAT_HISTORY_MESSAGES :]) - len(chat)
    dropped += len(files_in[: config.MAX_FILES_PER_SESSION]) - len(files)
    if dropped:
        log.warning("saved session %r: %d malformed chat or file entries left out", name, dropped)
    seq = max([seq, 0, *(m["seq"] for m in chat)])
    if not clean:
        seq += config.CHAT_SEQ_AFTER_CRASH_GAP
    meeting = _meeting(s.get("meeting", {}))
    return SavedSession(name, password_hash, seq, chat, files, _chat_ids(ids_in), meeting)


def _meeting(m: Any) -> dict[str, Any]:
    """A saved ``MeetingControl.saved()``, checked and bounded; {} if unusable (logged)."""
    if not isinstance(m, dict):
        log.warning("a saved session's meeting is not an object: left out")
        return {}
    out: dict[str, Any] = {
        "locked": m.get("locked") is True,
        "ask_to_join": m.get("ask_to_join") is True,
        "bans": [],
        "members": [],
    }
    bans, members = m.get("bans", []), m.get("members", [])
    if not (isinstance(bans, list) and isinstance(members, list)):
        log.warning("a saved session's meeting bans or members are not lists: left out")
        return out
    for b in bans[-config.MEETING_MAX_BANS :]:
        if isinstance(b, dict) and _username_ok(b.get("username")):
            address = b.get("address")
            address = address if isinstance(address, str) and len(address) <= 64 else None
            out["bans"].append({"username": b["username"], "address": address})
    for p in members[: config.MAX_PARTICIPANTS_PER_SESSION]:
        if isinstance(p, dict) and _username_ok(p.get("username")):
            out["members"].append({"username": p["username"], "host": p.get("host") is True})
    return out


def _username_ok(name: Any) -> bool:
    return (
        isinstance(name, str) and names.clean_display_name(name, config.MAX_USERNAME_CHARS) == name
    )


def _chat_ok(m: Any) -> bool:
    """A public chat message as ``SessionTable.chat`` stores it (and a welcome sends it)."""
    if not isinstance(m, dict) or not all(
        isinstance(m.get(k), t) and not isinstance(m[k], bool) for k, t in _CHAT_FIELDS.items()
    ):
        return False
    return (
        m["type"] == utils.Msg.CHAT
        and m["seq"] >= 1
        and 1 <= m["from"] <= config.MAX_PARTICIPANT_ID
        and 1 <= len(m["username"]) <= config.MAX_USERNAME_CHARS
        and 1 <= len(m["message"]) <= config.MAX_CHAT_CHARS
        and math.isfinite(m["timestamp"])
    )


def _file_ok(f: Any) -> bool:
    """A complete file as ``welcome.files`` lists it (``FileStore.restore`` checks its bytes)."""
    return (
        isinstance(f, dict)
        and isinstance(f.get("id"), str)
        and _FILE_ID.fullmatch(f["id"]) is not None
        and isinstance(f.get("name"), str)
        and 1 <= len(f["name"]) <= config.MAX_FILE_NAME_CHARS
        and isinstance(f.get("username"), str)
        and 1 <= len(f["username"]) <= config.MAX_USERNAME_CHARS
        and _is_int(f.get("size"))
        and 0 <= f["size"] <= config.MAX_FILE_BYTES
        and _is_int(f.get("owner"))
        and isinstance(f.get("sha256"), str)
        and _SHA256.fullmatch(f["sha256"]) is not None
        and _is_number(f.get("timestamp"))
    )


def _chat_ids(ids_in: dict[Any, Any]) -> dict[str, list[tuple[str, int]]]:
    """Valid (cid, seq) pairs per username: at most the last ``STATE_CHAT_IDS_PER_PARTICIPANT``
    each, for at most ``MAX_PARTICIPANTS_PER_SESSION`` names."""
    out: dict[str, list[tuple[str, int]]] = {}
    for user, pairs in list(ids_in.items())[: config.MAX_PARTICIPANTS_PER_SESSION]:
        if not isinstance(user, str) or not 1 <= len(user) <= 4 * config.MAX_USERNAME_CHARS:
            continue
        if not isinstance(pairs, list):
            continue
        kept = [
            (pair[0], pair[1])
            for pair in pairs[-config.STATE_CHAT_IDS_PER_PARTICIPANT :]
            if isinstance(pair, list)
            and len(pair) == 2
            and history.valid_cid(pair[0])
            and _is_int(pair[1])
            and pair[1] >= 1
        ]
        if kept:
            out[user] = kept
    return out
