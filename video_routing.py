"""Pure video routing for simulcast: subscriptions, keyframe-request throttle, loss, bitrate.

The server uses ``SubscriptionTable`` (who gets which layer of whom),
``KeyframeThrottle`` (at most one keyframe request per sender and layer per
``KEYFRAME_REQUEST_MIN_INTERVAL_MS``) and ``BandwidthGuard`` (loss reported by
viewers lowers, and later raises, a sender's bitrate). Clients use
``LossCounter`` (packets received and lost per stream, from the datagram
sequence numbers) and the throttle too. No sockets, no clock (``now`` is passed
in, in seconds), no threads, no codec: the server imports this without PyAV.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import config

__all__ = [
    "BandwidthGuard",
    "KeyframeThrottle",
    "LossCounter",
    "StreamKey",
    "SubscriptionChanges",
    "SubscriptionTable",
]

SMALL = config.VIDEO_LAYER_SMALL
LARGE = config.VIDEO_LAYER_LARGE
_U32 = 1 << 32

# (sender id, layer name)
StreamKey = tuple[int, str]


# --- Subscriptions -------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionChanges:
    """What one ``SubscriptionTable`` update asks the server to do."""

    # Streams that gained a viewer: each needs a keyframe (throttled by the caller).
    keyframe_requests: frozenset[StreamKey] = frozenset()
    # Senders whose "someone wants my large layer" state changed -> the new state.
    large_wanted: Mapping[int, bool] = field(default_factory=dict)


class SubscriptionTable:
    """viewer -> {sender: layer}; answers "who gets this datagram" in O(1).

    A viewer's subscription is replaced whole by ``set`` (the ``subscribe``
    message carries the full list). Layer None (or an absent sender) means
    nothing is forwarded. Not thread-safe: the server calls it under its lock.
    """

    def __init__(
        self,
        max_tiles: int = config.SUBSCRIBE_MAX_TILES,
        max_large: int = config.SUBSCRIBE_MAX_LARGE_LAYERS,
    ) -> None:
        self.max_tiles = max_tiles
        self.max_large = max_large
        self._by_viewer: dict[int, dict[int, str]] = {}
        self._targets: dict[StreamKey, set[int]] = {}

    def set(self, viewer: int, subscriptions: Mapping[int, str | None]) -> SubscriptionChanges:
        """Replace ``viewer``'s subscriptions; ``ValueError`` (nothing changed) if invalid.

        Invalid: an unknown layer name, the viewer itself as a sender, more than
        ``max_tiles`` layers or more than ``max_large`` large ones.
        """
        wanted: dict[int, str] = {}
        for sender, layer in subscriptions.items():
            if layer is None:
                continue
            if layer not in config.VIDEO_LAYERS:
                raise ValueError(f"unknown layer {layer!r}")
            if sender == viewer:
                raise ValueError("a viewer cannot subscribe to itself")
            wanted[sender] = layer
        if len(wanted) > self.max_tiles:
            raise ValueError(f"{len(wanted)} subscriptions; at most {self.max_tiles}")
        large = sum(1 for layer in wanted.values() if layer == LARGE)
        if large > self.max_large:
            raise ValueError(f"{large} large layers; at most {self.max_large}")
        old = self._by_viewer.get(viewer, {})
        touched = {s for s, layer in old.items() if layer == LARGE}
        touched |= {s for s, layer in wanted.items() if layer == LARGE}
        before = {s: self.large_wanted(s) for s in touched}
        for sender, layer in old.items():
            if wanted.get(sender) != layer:
                self._remove_target((sender, layer), viewer)
        new_streams = set()
        for sender, layer in wanted.items():
            if old.get(sender) != layer:
                key = (sender, layer)
                self._targets.setdefault(key, set()).add(viewer)
                new_streams.add(key)
        if wanted:
            self._by_viewer[viewer] = wanted
        else:
            self._by_viewer.pop(viewer, None)
        return SubscriptionChanges(frozenset(new_streams), self._large_changes(before))

    def _remove_target(self, key: StreamKey, viewer: int) -> None:
        viewers = self._targets.get(key)
        if viewers is not None:
            viewers.discard(viewer)
            if not viewers:
                del self._targets[key]

    def _large_changes(self, before: Mapping[int, bool]) -> dict[int, bool]:
        return {s: now for s, was in before.items() if (now := self.large_wanted(s)) != was}

    def remove_participant(self, pid: int) -> SubscriptionChanges:
        """``pid`` left: forget it as a viewer and as a sender."""
        changes = self.set(pid, {})
        for viewer in list(self._by_viewer):
            subs = self._by_viewer[viewer]
            if pid in subs:
                self._remove_target((pid, subs.pop(pid)), viewer)
                if not subs:
                    del self._by_viewer[viewer]
        large = {s: v for s, v in changes.large_wanted.items() if s != pid}
        keys = frozenset(k for k in changes.keyframe_requests if k[0] != pid)
        return SubscriptionChanges(keys, large)

    def subscriptions(self, viewer: int) -> dict[int, str]:
        """A copy of what ``viewer`` is subscribed to."""
        return dict(self._by_viewer.get(viewer, {}))

    def forward_targets(self, sender: int, layer: str) -> frozenset[int]:
        """The viewers that get ``sender``'s ``layer`` (empty: forward to nobody)."""
        return frozenset(self._targets.get((sender, layer), ()))

    def large_wanted(self, sender: int) -> bool:
        """Whether anyone shows ``sender`` large (so it should encode the large layer)."""
        return bool(self._targets.get((sender, LARGE)))


# --- Keyframe request throttle ---------------------------------------------------------


class KeyframeThrottle:
    """At most one keyframe request per stream per ``interval_s``; later ones coalesce.

    ``request`` says whether to send now; a request refused because one went out
    recently is remembered and comes back from ``due`` once the interval has
    passed, so nobody who asked is forgotten and a burst of losses costs one
    keyframe per interval.
    """

    def __init__(self, interval_s: float = config.KEYFRAME_REQUEST_MIN_INTERVAL_MS / 1000) -> None:
        self.interval_s = interval_s
        self._last_sent: dict[StreamKey, float] = {}
        self._pending: set[StreamKey] = set()
        self.sent = 0
        self.coalesced = 0

    def request(self, key: StreamKey, now: float) -> bool:
        """A keyframe is wanted for ``key``: True if the request should go out now."""
        last = self._last_sent.get(key)
        if last is None or now - last >= self.interval_s:
            self._last_sent[key] = now
            self._pending.discard(key)
            self.sent += 1
            return True
        self._pending.add(key)
        self.coalesced += 1
        return False

    def due(self, now: float) -> list[StreamKey]:
        """Coalesced requests whose interval has passed (now marked as sent), sorted."""
        out = sorted(k for k in self._pending if now - self._last_sent[k] >= self.interval_s)
        for key in out:
            self._pending.discard(key)
            self._last_sent[key] = now
            self.sent += 1
        return out

    def forget_sender(self, sender: int) -> None:
        """Drop all state of a sender who left."""
        for key in [k for k in self._last_sent if k[0] == sender]:
            del self._last_sent[key]
            self._pending.discard(key)


# --- Loss counting (viewer side) --------------------------------------------------------


class LossCounter:
    """Packets received and lost on one stream, from its datagram ``seq`` (u32, +1 each).

    A gap counts its missing packets as lost; a late packet that fills a gap
    within ``reorder_window`` is taken back out of the lost count. ``take``
    returns and resets the counts since the last report.
    """

    def __init__(
        self,
        reorder_window: int = config.VIDEO_LOSS_REORDER_WINDOW_PACKETS,
        resync_gap: int = config.VIDEO_LOSS_RESYNC_GAP_PACKETS,
    ) -> None:
        self.reorder_window = reorder_window
        self.resync_gap = resync_gap
        self._highest: int | None = None
        self._missing: deque[int] = deque()
        self._missing_set: set[int] = set()
        self.received = 0
        self.lost = 0

    def add(self, seq: int) -> None:
        seq %= _U32
        self.received += 1
        if self._highest is None:
            self._highest = seq
            return
        ahead = (seq - self._highest) % _U32
        if ahead == 0:
            return  # duplicate
        if ahead < _U32 // 2:  # newer
            gap = ahead - 1
            if gap > self.resync_gap:  # a restart or a long outage: resync
                gap = 0
            for i in range(1, gap + 1):
                self._note_missing((self._highest + i) % _U32)
            self.lost += gap
            self._highest = seq
        elif seq in self._missing_set:  # late: it was counted lost
            self._missing_set.discard(seq)
            self.lost = max(0, self.lost - 1)

    def _note_missing(self, seq: int) -> None:
        self._missing.append(seq)
        self._missing_set.add(seq)
        while len(self._missing) > self.reorder_window:
            self._missing_set.discard(self._missing.popleft())

    def take(self) -> tuple[int, int]:
        """(received, lost) since the last call; resets both."""
        out = (self.received, self.lost)
        self.received = self.lost = 0
        return out


# --- Bandwidth guard (server side) --------------------------------------------------------


@dataclass
class _StreamRate:
    ceiling_bps: int
    bitrate_bps: int
    reports: deque[tuple[float, int, int]] = field(default_factory=deque)  # (t, recv, lost)
    last_change: float = float("-inf")
    last_high_loss: float = float("-inf")


class BandwidthGuard:
    """Turns viewers' loss reports into bitrate hints for each sender's layers.

    Loss is the sum over all viewers of a stream, over the last
    ``BW_LOSS_WINDOW_S``: congestion at the sender shows up at every viewer,
    while one viewer on bad Wi-Fi moves the aggregate little. Above
    ``BW_LOSS_HIGH_FRACTION`` the bitrate drops by ``BW_DECREASE_FACTOR`` (not
    below the floor, at most every ``BW_DECREASE_INTERVAL_S``); after
    ``BW_INCREASE_INTERVAL_S`` without loss above ``BW_LOSS_LOW_FRACTION`` it
    rises by ``BW_INCREASE_FACTOR`` up to the layer's ceiling. A window with
    fewer than ``BW_MIN_PACKETS`` packets decides nothing.
    """

    def __init__(
        self,
        ceilings_bps: Mapping[str, int] | None = None,
        *,
        window_s: float = config.BW_LOSS_WINDOW_S,
        min_packets: int = config.BW_MIN_PACKETS,
        high_loss: float = config.BW_LOSS_HIGH_FRACTION,
        low_loss: float = config.BW_LOSS_LOW_FRACTION,
        decrease_factor: float = config.BW_DECREASE_FACTOR,
        increase_factor: float = config.BW_INCREASE_FACTOR,
        decrease_interval_s: float = config.BW_DECREASE_INTERVAL_S,
        increase_interval_s: float = config.BW_INCREASE_INTERVAL_S,
        floor_fraction: float = config.BW_FLOOR_FRACTION,
        min_change_bps: int = config.BW_MIN_CHANGE_BPS,
    ) -> None:
        self.ceilings_bps = dict(
            ceilings_bps
            or {
                SMALL: config.VIDEO_SMALL_LAYER.bitrate_bps,
                LARGE: config.VIDEO_LARGE_LAYER_720P.bitrate_bps,
            }
        )
        self.window_s = window_s
        self.min_packets = min_packets
        self.high_loss = high_loss
        self.low_loss = low_loss
        self.decrease_factor = decrease_factor
        self.increase_factor = increase_factor
        self.decrease_interval_s = decrease_interval_s
        self.increase_interval_s = increase_interval_s
        self.floor_fraction = floor_fraction
        self.min_change_bps = min_change_bps
        self._streams: dict[StreamKey, _StreamRate] = {}

    def set_ceiling(self, key: StreamKey, ceiling_bps: int) -> None:
        """A sender announced its layer's nominal bitrate (e.g. a 720p large layer)."""
        st = self._stream(key)
        st.ceiling_bps = ceiling_bps
        st.bitrate_bps = min(st.bitrate_bps, ceiling_bps)

    def _stream(self, key: StreamKey) -> _StreamRate:
        st = self._streams.get(key)
        if st is None:
            ceiling = self.ceilings_bps.get(key[1], config.VIDEO_SMALL_LAYER.bitrate_bps)
            st = self._streams[key] = _StreamRate(ceiling, ceiling)
        return st

    def bitrate(self, key: StreamKey) -> int:
        """The bitrate the guard currently wants for ``key``."""
        return self._stream(key).bitrate_bps

    def report(self, key: StreamKey, received: int, lost: int, now: float) -> None:
        """One viewer saw ``received`` packets and ``lost`` missing on ``key``."""
        if received < 0 or lost < 0:
            raise ValueError("negative packet counts")
        st = self._stream(key)
        st.reports.append((now, received, lost))
        while st.reports and st.reports[0][0] <= now - self.window_s:  # bounded by the window
            st.reports.popleft()

    def loss(self, key: StreamKey, now: float) -> tuple[float, int]:
        """(lost fraction, packets) over the window ending ``now``."""
        st = self._stream(key)
        while st.reports and st.reports[0][0] <= now - self.window_s:
            st.reports.popleft()
        recv = sum(r[1] for r in st.reports)
        lost = sum(r[2] for r in st.reports)
        total = recv + lost
        return (lost / total if total else 0.0), total

    def tick(self, now: float) -> dict[StreamKey, int]:
        """Decide; returns the streams whose bitrate changed -> the new bitrate."""
        changed: dict[StreamKey, int] = {}
        for key, st in self._streams.items():
            fraction, packets = self.loss(key, now)
            if packets < self.min_packets:
                continue
            floor = max(1000, int(st.ceiling_bps * self.floor_fraction))
            new = st.bitrate_bps
            if fraction > self.high_loss:
                st.last_high_loss = now
                if now - st.last_change >= self.decrease_interval_s:
                    new = max(floor, int(st.bitrate_bps * self.decrease_factor))
            elif fraction <= self.low_loss:
                quiet = min(now - st.last_change, now - st.last_high_loss)
                if quiet >= self.increase_interval_s:
                    new = min(st.ceiling_bps, int(st.bitrate_bps * self.increase_factor))
                    if st.ceiling_bps - new < self.min_change_bps:
                        new = st.ceiling_bps
            if new != st.bitrate_bps and (
                abs(new - st.bitrate_bps) >= self.min_change_bps or new in (floor, st.ceiling_bps)
            ):
                st.bitrate_bps = new
                st.last_change = now
                changed[key] = new
        return changed

    def forget_sender(self, sender: int) -> None:
        """Drop every stream of a sender who left."""
        for key in [k for k in self._streams if k[0] == sender]:
            del self._streams[key]

    def streams(self) -> Iterable[StreamKey]:
        return list(self._streams)
