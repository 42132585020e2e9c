"""Repeat: each Opus packet sent a second time one frame later while the loss is high.

RFC 2198 (RED, as Meet and WebRTC use it) carries earlier frames in each packet; this
keeps the payload format and sends the earlier packet again instead: the same ``seq``
and bytes in a second sealed ``a`` datagram, right after the next frame's packet
(PROTOCOL.md section 5). A receiver's jitter buffer keeps the first copy, drops later
ones, and waits for packet N+1 anyway before it rebuilds a lost N from FEC, so the
repeat of N, arriving with N+1, plays N at full quality at no extra delay.

Repeating hides loss from the counts that drive it, so the loss that switches it is
that of *first copies*: a frame whose packet arrived only after the next frame's (its
repeat) counts as lost on the network, once the stream shows repeats (duplicates and
late copies); with hysteresis on top (``AUDIO_REPEAT_MIN_PERCENT`` /
``AUDIO_REPEAT_STOP_PERCENT``).

Pure: no sockets, no clock.
"""

from __future__ import annotations

from typing import Any

import config
from audio_loss import expected_loss_percent

Counts = tuple[int, int, int, int]  # (decoded, lost, reordered, extra copies)


def snapshot(stats: Any) -> Counts:
    """The counters ``first_copy_counts`` compares, from a ``JitterBufferStats``."""
    return (
        stats.decoded,
        stats.fec_used + stats.concealed,
        stats.reordered,
        stats.duplicate + stats.late,
    )


def first_copy_counts(before: Counts, now: Counts) -> tuple[int, int]:
    """(received, lost) frames between two snapshots, counting first copies.

    When at least ``AUDIO_REPEAT_SEEN_FRACTION`` of the frames came with a second
    copy, the sender repeats: a frame whose packet arrived after a later one (put in
    place: its repeat, the first copy lost) counts as lost.
    """
    decoded, lost, reordered, extra = (n - b for n, b in zip(now, before, strict=True))
    decoded, lost = max(0, decoded), max(0, lost)
    if extra > 0 and extra >= config.AUDIO_REPEAT_SEEN_FRACTION * (decoded + lost):
        moved = min(max(0, reordered), decoded)
        decoded, lost = decoded - moved, lost + moved
    return decoded, lost


def repeating(percent: float, was: bool) -> bool:
    """Whether to repeat at this measured loss (percent), given whether we did."""
    if was:
        return percent >= config.AUDIO_REPEAT_STOP_PERCENT
    return percent >= config.AUDIO_REPEAT_MIN_PERCENT


def encoder_percent(fraction: float, repeat: bool) -> int:
    """The expected loss an encoder plans FEC for: while repeating, the loss left after
    repeats (both copies lost), else the measured loss."""
    if repeat:
        fraction = config.AUDIO_REPEAT_RESIDUAL_FACTOR * fraction * fraction
    return expected_loss_percent(fraction)


class Repeater:
    """One stream's sends: each item, then (while ``on``) the previous item again."""

    def __init__(self) -> None:
        self.on = False
        self._pending: Any = None  # the last item sent once, to repeat

    def set_on(self, on: bool) -> None:
        self.on = on
        if not on:
            self._pending = None

    def send(self, item: Any) -> list[Any]:
        """The datagrams to send for a new packet: it, then the previous one's repeat."""
        out = [item, *self.flush()]
        if self.on:
            self._pending = item
        return out

    def flush(self) -> list[Any]:
        """A frame with nothing to send: the previous packet's repeat (if any) goes now."""
        p, self._pending = self._pending, None
        return [] if p is None else [p]
