"""The client's chat model: messages in server ``seq`` order, history merged, privates marked."""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import config

log = logging.getLogger(__name__)


class ChatLog:
    """A bounded, thread-safe list of chat messages ordered by the server's ``seq``.

    Pure: no sockets, no clock. The network thread calls ``add`` (and
    ``merge_history`` with the welcome's ``chat``); the GUI thread reads
    ``messages()``. A message already held (same ``seq``) is not added twice,
    so history and early live messages can overlap freely. Each stored message
    is a copy of the wire dict plus ``private`` (True when it had a ``to`` list;
    ``to`` holds the recipient ids).
    """

    def __init__(self, max_messages: int = config.CLIENT_CHAT_LOG_MESSAGES) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.max_messages = max_messages
        # Taken by the tcp-receiver thread (add/merge) and by readers (GUI, tests);
        # guards _seqs and _by_seq, which always hold the same keys.
        self._lock = threading.Lock()
        self._seqs: list[int] = []
        self._by_seq: dict[int, dict[str, Any]] = {}
        self.rejected = 0

    @staticmethod
    def _normalise(msg: Any) -> dict[str, Any] | None:
        """A stored copy of a wire chat dict, or None if it is unusable."""
        if not isinstance(msg, dict):
            return None
        seq = msg.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            return None
        if not isinstance(msg.get("message"), str):
            return None
        out = dict(msg)
        to = msg.get("to")
        if to is not None:
            if not isinstance(to, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in to
            ):
                return None
            out["to"] = list(to)
        out["private"] = to is not None
        return out

    def add(self, msg: dict[str, Any]) -> bool:
        """Store one message; True if it was new (False for duplicates and bad input)."""
        stored = self._normalise(msg)
        if stored is None:
            self.rejected += 1
            log.warning("ignoring malformed chat message %r", msg)
            return False
        seq = stored["seq"]
        with self._lock:
            if seq in self._by_seq:
                return False
            if len(self._seqs) >= self.max_messages and seq < self._seqs[0]:
                return False  # older than everything kept: it would be dropped at once
            if not self._seqs or seq > self._seqs[-1]:
                self._seqs.append(seq)  # the usual case: live messages arrive in order
            else:
                bisect.insort(self._seqs, seq)
            self._by_seq[seq] = stored
            while len(self._seqs) > self.max_messages:
                del self._by_seq[self._seqs.pop(0)]
            return True

    def merge_history(self, history: Iterable[dict[str, Any]]) -> int:
        """Add the messages of a welcome's ``chat`` list; returns how many were new."""
        return sum(1 for msg in history if self.add(msg))

    def messages(self) -> list[dict[str, Any]]:
        """A snapshot of every message held, oldest (lowest seq) first."""
        with self._lock:
            return [dict(self._by_seq[s]) for s in self._seqs]

    def private_messages(self) -> list[dict[str, Any]]:
        """Only the private messages, oldest first."""
        return [m for m in self.messages() if m["private"]]

    @property
    def last_seq(self) -> int | None:
        """The highest seq held, or None when empty."""
        with self._lock:
            return self._seqs[-1] if self._seqs else None

    def clear(self) -> None:
        """Forget everything (a new session)."""
        with self._lock:
            self._seqs.clear()
            self._by_seq.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._seqs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.messages())
