"""How much loss each Opus encoder plans FEC for, from the loss each leg measures.

Opus 1.3 spends bits on in-band FEC (LBRR) as soon as its expected loss is above 0:
on espeak-ng speech at a 40 kbit/s wideband target, one encode scores PESQ-WB 4.40
with 0 %, 4.16 with 1 % and 4.05 with 5 % (docs/AUDIO.md). So, as WebRTC does, the
encoders plan for the loss the receivers report, and for none on a clean network:

- the server measures each sender's stream (its jitter buffer: frames recovered by
  FEC or concealed, against frames decoded);
- each listener reports what its own buffer recovered or concealed (``report``'s
  ``audio``, PROTOCOL.md section 4);
- a talker is told (``audio_loss``) the loss its packets meet: its own leg and, when
  the server forwards them, the worst forwarded listener's leg after it.

Pure: counts in, fractions and percents out.
"""

from __future__ import annotations

import math

import config


def combined(*fractions: float) -> float:
    """The loss of a path whose legs lose these fractions independently."""
    keep = 1.0
    for f in fractions:
        keep *= 1.0 - f
    return 1.0 - keep


def expected_loss_percent(fraction: float) -> int:
    """The encoder's packet-loss percentage for a measured loss fraction.

    Below ``AUDIO_LOSS_FEC_MIN_FRACTION`` none (no FEC bits on a clean network), else the
    loss rounded up, at most ``AUDIO_LOSS_MAX_PERCENT``.
    """
    if fraction < config.AUDIO_LOSS_FEC_MIN_FRACTION:
        return 0
    return min(config.AUDIO_LOSS_MAX_PERCENT, math.ceil(round(100 * fraction, 6)))


class LossMeter:
    """A smoothed loss fraction from (received, lost) frame counts."""

    def __init__(self) -> None:
        self.fraction = 0.0
        self.known = False  # enough frames were counted to say anything
        self._received = 0
        self._lost = 0

    def add(self, received: int, lost: int) -> None:
        """Count more frames; the fraction moves once ``AUDIO_LOSS_MIN_FRAMES`` are in."""
        self._received += max(0, received)
        self._lost += max(0, lost)
        n = self._received + self._lost
        if n < config.AUDIO_LOSS_MIN_FRAMES:
            return
        f = self._lost / n
        if self.known:
            self.fraction += config.AUDIO_LOSS_SMOOTHING * (f - self.fraction)
        else:
            self.fraction, self.known = f, True
        self._received = self._lost = 0
