"""The server's state on disk across a restart (issue 13): sessions, chat, shared files.

Pure file I/O, no sockets, no threads, no locks: ``ConferenceServer.stop`` takes a
snapshot under its session lock (``snapshot``) and writes it (``save``) after
releasing it; ``ConferenceServer.start`` reads it back (``load``) before serving.
The file is JSON (never pickle), written atomically (temporary file, fsync,
rename), readable by the server's user only, and consumed by the next start: it
is deleted once read. A snapshot older than the grace period, from another
format version, or malformed is ignored with a warning; ``--fresh`` ignores it
and deletes it (and the files it names are then cleaned up by ``FileStore``).

No password is ever written: a locked session is saved with the scrypt hash it
keeps (``security.hash_password``, ``scrypt$N$r$p$salt$hash``), and restored with
it, so the same passwords still open it after the restart.

Format (``STATE_FORMAT`` 2; a format-1 file, which held the password itself, is
ignored)::

    {"format": 2, "saved_at": <unix time, s>,
     "sessions": [{"name", "password_hash" ("" = open), "chat_seq", "history": [chat...],
                   "files": [file...  as in welcome.files]}]}
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import config
import security

log = logging.getLogger(__name__)

STATE_FORMAT = 2


@dataclass
class SavedSession:
    """One session as it was when the server stopped."""

    name: str
    password_hash: str  # security.hash_password's text, "" for an open session
    chat_seq: int
    history: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)


def state_path(storage_dir: Path) -> Path:
    return Path(storage_dir) / config.SERVER_STATE_FILE


def save(storage_dir: Path, sessions: list[SavedSession], saved_at: float) -> Path | None:
    """Write the snapshot atomically; the path, or None (logged) if it could not be written."""
    path = state_path(storage_dir)
    data = {
        "format": STATE_FORMAT,
        "saved_at": saved_at,
        "sessions": [
            {
                "name": s.name,
                "password_hash": s.password_hash,
                "chat_seq": s.chat_seq,
                "history": s.history,
                "files": s.files,
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
    log.info("saved %d sessions to %s", len(sessions), path)
    return path


def discard(storage_dir: Path) -> None:
    """Delete a saved snapshot (``--fresh``, or once it was read)."""
    try:
        state_path(storage_dir).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not delete %s: %s", state_path(storage_dir), exc)


def load(storage_dir: Path, grace_s: float, now: float) -> list[SavedSession]:
    """The sessions saved by a stop at most ``grace_s`` ago (the file is consumed)."""
    path = state_path(storage_dir)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("could not read the saved server state %s: %s", path, exc)
        return []
    discard(storage_dir)
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {STATE_FORMAT}")
        age = now - float(data["saved_at"])
        if not 0 <= age <= grace_s:
            log.info(
                "saved server state is %.0f s old (grace %.0f s): starting empty", age, grace_s
            )
            return []
        return [_session(s) for s in data["sessions"]]
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring a malformed saved server state %s: %s", path, exc)
        return []


def _session(s: Any) -> SavedSession:
    if not isinstance(s, dict):
        raise TypeError("a saved session must be an object")
    name, password_hash, seq = s["name"], s["password_hash"], s["chat_seq"]
    history, files = s.get("history", []), s.get("files", [])
    if not (isinstance(name, str) and isinstance(password_hash, str) and isinstance(seq, int)):
        raise TypeError("a saved session has a name, a password_hash and a chat_seq")
    if password_hash and not password_hash.startswith(security.PASSWORD_SCHEME + "$"):
        raise ValueError("a saved session's password_hash is not a scrypt hash")
    if not (isinstance(history, list) and isinstance(files, list)):
        raise TypeError("a saved session's history and files are lists")
    history = [m for m in history if isinstance(m, dict) and isinstance(m.get("seq"), int)]
    files = [f for f in files if isinstance(f, dict)]
    return SavedSession(name, password_hash, seq, history, files)
