"""Join state in bounded frames, and chat sent exactly once across reconnections.

Pure: no sockets, no clock, no threads, no locks (the caller holds its own).

* ``chunk_for_header`` packs JSON items greedily into lists whose encoding fits
  a byte budget; ``plan_join`` uses it to cut a ``welcome`` whose lists
  (participants, files, chat) would pass the 65,536-byte header limit into a
  ``welcome`` that carries what fits and ``history`` frames with the rest;
  ``JoinAssembler`` puts them back together on the client.
* ``Outbox`` (client) holds chat messages with client-made ids (``cid``) until
  the server's echo confirms them, and gives them back, in order, to resend
  after a resume; ``Deduper`` (server) remembers recent ``cid`` per participant
  so a resent message is delivered once.

The wire is in docs/PROTOCOL.md (sections 3, 4 and 8).
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import config
import utils

# The message type of the frames after a welcome (moves into utils.Msg at integration).
HISTORY = "history"
# The lists of a welcome that grow with the session, in the order they fill the welcome.
JOIN_LISTS = ("participants", "files", "chat")

Encoder = Callable[[Any], bytes]


# --- Packing items under a byte budget ----------------------------------------------


def chunk_for_header(
    items: Iterable[Any], max_bytes: int, encode: Encoder = utils.dump_json
) -> list[list[Any]]:
    """Split ``items`` into lists whose JSON encoding is at most ``max_bytes`` each.

    Greedy and order-preserving: each list takes items while ``encode(list)``
    stays within the budget (``[`` and ``]``, one ``,`` between items, and each
    item's own encoded size, which is how ``utils.dump_json`` writes a list).
    No items, no lists. An item that alone cannot fit raises ``ValueError``:
    callers size their budgets so that this cannot happen (a chat message is at
    most ``MAX_CHAT_CHARS`` characters of at most 4 UTF-8 bytes, far under a
    header).
    """
    if max_bytes < 2:
        raise ValueError("max_bytes leaves no room for a list")
    chunks: list[list[Any]] = []
    current: list[Any] = []
    used = 2  # "[]"
    for item in items:
        size = len(encode(item))
        if 2 + size > max_bytes:
            raise ValueError(f"one item of {size} bytes cannot fit in {max_bytes} bytes")
        cost = size + (1 if current else 0)
        if used + cost > max_bytes:
            chunks.append(current)
            current, used, cost = [], 2, size
        current.append(item)
        used += cost
    if current:
        chunks.append(current)
    return chunks


def _list_cost(items: Sequence[Any], encode: Encoder) -> list[int]:
    return [len(encode(item)) for item in items]


# --- Cutting a welcome ----------------------------------------------------------------


@dataclass
class JoinPlan:
    """A welcome that fits one header, and the ``history`` frames that complete it."""

    welcome: dict[str, Any]
    history: list[dict[str, Any]]

    def headers(self) -> list[dict[str, Any]]:
        """Every header in the order they are queued (under one lock hold)."""
        return [self.welcome, *self.history]


def plan_join(
    welcome: dict[str, Any],
    max_header_bytes: int = config.MAX_HEADER_BYTES,
    margin_bytes: int = config.HISTORY_HEADER_MARGIN_BYTES,
    max_frames: int = config.MAX_HISTORY_FRAMES,
    encode: Encoder = utils.dump_json,
) -> JoinPlan:
    """Cut a complete ``welcome`` so every header stays under ``max_header_bytes - margin``.

    The welcome keeps its fields and gets ``history_frames`` (how many
    ``history`` frames follow, 0 when everything fit). Its lists are filled in
    ``JOIN_LISTS`` order: participants and files from the oldest, chat with
    the *newest* messages (what a joiner reads first); once a list is cut, the
    later lists wait for the history frames. Each ``history`` frame is
    ``{"type":"history","part":i,"parts":n,<list>:[...]}`` with one list,
    oldest first within a frame. If more than ``max_frames`` would be needed,
    the oldest chat is left out and ``chat_dropped`` says how many messages
    (not reachable with the limits in config.py; tested).
    """
    budget = max_header_bytes - margin_bytes
    lists = {name: list(welcome.get(name) or []) for name in JOIN_LISTS}
    # Measure with the widest numbers the plan may write, so filling them in cannot overflow.
    base = {
        **welcome,
        **{name: [] for name in JOIN_LISTS},
        "history_frames": max_frames,
        "chat_dropped": len(lists["chat"]),
    }
    room = budget - len(encode(base))
    if room < 0:
        raise ValueError("the welcome's fixed fields alone pass the header budget")

    in_welcome: dict[str, list[Any]] = {name: [] for name in JOIN_LISTS}
    rest: dict[str, list[Any]] = {name: [] for name in JOIN_LISTS}
    cut = False
    for name in JOIN_LISTS:
        items = lists[name]
        if cut:
            rest[name] = items
            continue
        sizes = _list_cost(items, encode)
        order = range(len(items) - 1, -1, -1) if name == "chat" else range(len(items))
        taken = 0
        for i in order:
            cost = sizes[i] + (1 if taken else 0)
            if cost > room:
                cut = True
                break
            room -= cost
            taken += 1
        if name == "chat":
            in_welcome[name] = items[len(items) - taken :]
            rest[name] = items[: len(items) - taken]
        else:
            in_welcome[name] = items[:taken]
            rest[name] = items[taken:]

    chunks: list[tuple[str, list[Any]]] = []
    for name in JOIN_LISTS:
        if not rest[name]:
            continue
        envelope = {"type": HISTORY, "part": max_frames, "parts": max_frames, name: []}
        list_budget = budget - len(encode(envelope)) + 2  # "[]" counted by the chunker
        chunks.extend((name, chunk) for chunk in chunk_for_header(rest[name], list_budget, encode))

    dropped = 0
    while len(chunks) > max_frames:
        first_chat = next((i for i, (name, _) in enumerate(chunks) if name == "chat"), None)
        if first_chat is None:
            raise ValueError(f"{len(chunks)} history frames needed without chat; max {max_frames}")
        dropped += len(chunks.pop(first_chat)[1])  # the oldest chat goes first

    out = {**welcome, **in_welcome, "history_frames": len(chunks)}
    if dropped:
        out["chat_dropped"] = dropped
    history = [
        {"type": HISTORY, "part": i, "parts": len(chunks), name: chunk}
        for i, (name, chunk) in enumerate(chunks, start=1)
    ]
    return JoinPlan(out, history)


class JoinAssembler:
    """The client's side of ``plan_join``: a welcome, then its history frames, merged.

    ``add`` takes the welcome first, then each ``history`` frame; ``complete``
    turns True after the last one. Participants and files are merged by
    ``id``; chat by ``seq`` (as ``chat_module.ChatLog`` does). Frames out of
    order, too many, or malformed raise ``utils.ProtocolError``.
    """

    def __init__(self) -> None:
        self.welcome: dict[str, Any] | None = None
        self.expected = 0
        self.received = 0
        self.participants: dict[int, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self._chat: dict[int, dict[str, Any]] = {}

    @property
    def complete(self) -> bool:
        return self.welcome is not None and self.received == self.expected

    @property
    def chat(self) -> list[dict[str, Any]]:
        """Every chat message received, oldest (lowest seq) first."""
        return [self._chat[s] for s in sorted(self._chat)]

    def add(self, header: dict[str, Any]) -> bool:
        """Take the next header; True when the join state is complete."""
        if self.welcome is None:
            if header.get("type") != utils.Msg.WELCOME:
                raise utils.ProtocolError(f"expected welcome, got {header.get('type')!r}")
            frames = header.get("history_frames", 0)
            if not isinstance(frames, int) or isinstance(frames, bool) or frames < 0:
                raise utils.ProtocolError("welcome: history_frames must be an int >= 0")
            self.welcome = header
            self.expected = frames
            self._merge(header)
            return self.complete
        if header.get("type") != HISTORY:
            raise utils.ProtocolError(f"expected history, got {header.get('type')!r}")
        if self.received >= self.expected:
            raise utils.ProtocolError("more history frames than the welcome announced")
        if header.get("part") != self.received + 1 or header.get("parts") != self.expected:
            raise utils.ProtocolError(
                f"history part {header.get('part')!r} of {header.get('parts')!r}; expected "
                f"{self.received + 1} of {self.expected}"
            )
        self.received += 1
        self._merge(header)
        return self.complete

    def _merge(self, header: dict[str, Any]) -> None:
        for name in JOIN_LISTS:
            items = header.get(name)
            if items is None:
                continue
            if not isinstance(items, list):
                raise utils.ProtocolError(f"{header['type']}: {name} must be a list")
            for item in items:
                if not isinstance(item, dict):
                    continue
                if name == "participants" and isinstance(item.get("id"), int):
                    self.participants[item["id"]] = item
                elif name == "files" and isinstance(item.get("id"), str):
                    self.files[item["id"]] = item
                elif name == "chat" and isinstance(item.get("seq"), int):
                    self._chat.setdefault(item["seq"], item)


# --- Exactly-once chat across reconnections -------------------------------------------

_CID = re.compile(r"[A-Za-z0-9_-]+")


def valid_cid(value: Any) -> bool:
    """A client message id: 1-64 ASCII letters, digits, ``-`` or ``_``."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= config.MAX_CHAT_CID_CHARS
        and _CID.fullmatch(value) is not None
    )


class OutboxFull(Exception):
    """The outbox already holds ``CLIENT_CHAT_OUTBOX_MESSAGES`` unconfirmed messages."""


class Outbox:
    """Chat the client wrote and the server has not confirmed yet, in writing order.

    ``add`` gives each message a ``cid`` (``<prefix>-<n>``: the prefix is random
    per client, so ids never repeat for one participant, also across resumes).
    A message stays until its echo (a ``chat`` from me carrying its ``cid``)
    or a ``chat_ack`` arrives (``confirm``), or it is refused (``drop``: e.g.
    ``rate_limited``, which means *not sent*). After a resume, ``pending()``
    is everything still held, to send again in order: the server's ``Deduper``
    delivers each ``cid`` once, whichever copy arrives.
    """

    def __init__(
        self, max_messages: int = config.CLIENT_CHAT_OUTBOX_MESSAGES, prefix: str | None = None
    ) -> None:
        self.max_messages = max_messages
        self.prefix = secrets.token_hex(4) if prefix is None else prefix
        if not valid_cid(self.prefix) or not valid_cid(f"{self.prefix}-{2**63}"):
            raise ValueError(f"prefix {self.prefix!r} does not make valid cids")
        self._pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._next = 1

    def add(self, message: str, to: list[int] | None = None) -> dict[str, Any]:
        """Queue a message; the ``chat`` header to send (with its new ``cid``)."""
        if len(self._pending) >= self.max_messages:
            raise OutboxFull(f"{len(self._pending)} chat messages are waiting to be sent")
        cid = f"{self.prefix}-{self._next}"
        self._next += 1
        header: dict[str, Any] = {"type": utils.Msg.CHAT, "message": message, "cid": cid}
        if to is not None:
            header["to"] = list(to)
        self._pending[cid] = header
        return dict(header)

    def pending(self) -> list[dict[str, Any]]:
        """Every unconfirmed message, oldest first: after a resume all of them go again."""
        return [dict(h) for h in self._pending.values()]

    def confirm(self, header: dict[str, Any], my_id: int | None = None) -> bool:
        """Handle an echo (``chat`` with ``cid``) or a ``chat_ack``; True if it confirmed one.

        With ``my_id``, a ``chat`` from someone else never confirms (a cid is
        only unique per participant).
        """
        cid = header.get("cid")
        if not isinstance(cid, str) or cid not in self._pending:
            return False
        if header.get("type") == utils.Msg.CHAT and my_id is not None:
            if header.get("from") != my_id:
                return False
        del self._pending[cid]
        return True

    def drop(self, cid: str) -> dict[str, Any] | None:
        """Give up one message (refused by the server); its header, or None."""
        return self._pending.pop(cid, None)

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, cid: object) -> bool:
        return cid in self._pending


class Deduper:
    """The server's memory of recent client message ids: (participant, cid) -> seq.

    ``seen`` answers the seq a ``cid`` was delivered under (a resent duplicate:
    answer ``chat_ack``, deliver nothing) or None (new: deliver, then
    ``record``). At most ``per_participant`` ids are kept per participant,
    oldest forgotten first; the client's outbox is smaller
    (``CLIENT_CHAT_OUTBOX_MESSAGES`` <= ``CHAT_DEDUP_IDS``), so any message it
    can still resend is remembered. ``forget`` when the participant is gone
    for good (after the grace period), not when its connection drops. Across a
    server restart ``recent`` ids are saved and ``record``-ed again for whoever
    rejoins under the same name (``continuity.Continuity``).
    """

    def __init__(self, per_participant: int = config.CHAT_DEDUP_IDS) -> None:
        if per_participant < 1:
            raise ValueError("per_participant must be at least 1")
        self.per_participant = per_participant
        self._ids: dict[Hashable, OrderedDict[str, int]] = {}

    def seen(self, participant: Hashable, cid: str) -> int | None:
        ids = self._ids.get(participant)
        return None if ids is None else ids.get(cid)

    def record(self, participant: Hashable, cid: str, seq: int) -> None:
        ids = self._ids.setdefault(participant, OrderedDict())
        ids[cid] = seq
        ids.move_to_end(cid)
        while len(ids) > self.per_participant:
            ids.popitem(last=False)

    def forget(self, participant: Hashable) -> None:
        self._ids.pop(participant, None)

    def recent(self, participant: Hashable, n: int) -> list[tuple[str, int]]:
        """The last ``n`` (cid, seq) of a participant, oldest first (saved for a restart)."""
        ids = self._ids.get(participant)
        if not ids or n <= 0:
            return []
        return list(itertools.islice(reversed(ids.items()), n))[::-1]

    def __len__(self) -> int:
        """Participants remembered."""
        return len(self._ids)
