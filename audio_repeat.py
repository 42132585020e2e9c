"""Repeat: each Opus packet sent a second time one frame later while the loss is high.

RFC 2198 (RED, as Meet and WebRTC use it) carries earlier frames in each packet; this
keeps the payload format and sends the earlier packet again instead: the same ``seq``
and bytes in a second sealed ``a`` datagram, right after the next frame's packet
(PROTOCOL.md section 5). A receiver's jitter buffer keeps the first copy, drops later
ones, and waits for packet N+1 anyway before it rebuilds a lost N from FEC, so the
repeat of N, arriving with N+1, plays N at full quality at no extra delay.

Repeating would hide loss from frame counts, so the loss that switches it is that of
*datagrams*: the jitter buffer counts each frame's copies (one sent, or two while
repeated), with hysteresis on top (``AUDIO_REPEAT_MIN_PERCENT`` /
``AUDIO_REPEAT_STOP_PERCENT``). Repeats start on until the loss is measured
(``AUDIO_REPEAT_AT_START``).

Pure: no sockets, no clock.
"""

from __future__ import annotations

from typing import Any

import config
from audio_loss import expected_loss_percent

Counts = tuple[int, int]  # (datagrams sent, datagrams lost) of the frames counted


def snapshot(stats: Any) -> Counts:
    """The counters ``copy_counts`` compares, from a ``JitterBufferStats``."""
    return (stats.copies_sent, stats.copies_lost)


def copy_counts(before: Counts, now: Counts) -> tuple[int, int]:
    """(arrived, lost) datagrams of the frames counted between two snapshots.

    A frame counts one datagram, or two when its sender repeated it (as the jitter
    buffer's ``copies_sent`` judges from the copies that came), so a repeated stream's
    loss is that of datagrams: what repeats recover still counts, and does not hide the
    loss that keeps them on.
    """
    sent, lost = (max(0, n - b) for n, b in zip(now, before, strict=True))
    lost = min(lost, sent)
    return sent - lost, lost


def repeating(percent: float, was: bool) -> bool:
    """Whether to repeat at this measured loss (percent), given whether we did."""
    if was:
        return percent >= config.AUDIO_REPEAT_STOP_PERCENT
    return percent >= config.AUDIO_REPEAT_MIN_PERCENT


def residual(fraction: float, repeat: bool) -> float:
    """The loss a stream meets after repeats: while repeating, that of both copies (the
    fraction squared, times ``AUDIO_REPEAT_RESIDUAL_FACTOR``), else the fraction itself."""
    if repeat:
        return min(1.0, config.AUDIO_REPEAT_RESIDUAL_FACTOR * fraction * fraction)
    return fraction


def encoder_percent(fraction: float, repeat: bool) -> int:
    """The expected loss an encoder plans FEC for: while repeating, the loss left after
    repeats (both copies lost), else the measured loss."""
    return expected_loss_percent(residual(fraction, repeat))


class Repeater:
    """One stream's sends: each item, then (while ``on``) the previous item again.

    ``on`` at the start: repeating until the loss is measured (``set_on``), for at most
    ``AUDIO_REPEAT_UNMEASURED_FRAMES`` items; a stream whose loss is never measured is
    then taken to be clean.
    """

    def __init__(self, on: bool = False) -> None:
        self.on = on
        self._measured = False  # set_on was called: the loss is known
        self._unmeasured = 0  # items sent before that
        self._pending: Any = None  # the last item sent once, to repeat

    def set_on(self, on: bool) -> None:
        self._measured = True
        self.on = on
        if not on:
            self._pending = None

    def send(self, item: Any) -> list[Any]:
        """The datagrams to send for a new packet: it, then the previous one's repeat."""
        out = [item, *self.flush()]
        if self.on and not self._measured:
            self._unmeasured += 1
            if self._unmeasured > config.AUDIO_REPEAT_UNMEASURED_FRAMES:
                self.on = False  # never measured: no more repeats
        if self.on:
            self._pending = item
        return out

    def flush(self) -> list[Any]:
        """A frame with nothing to send: the previous packet's repeat (if any) goes now."""
        p, self._pending = self._pending, None
        return [] if p is None else [p]
