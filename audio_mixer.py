"""Pure N-1 audio mixer: per-participant jitter queues, one int32 total, ``total - own``.

No sockets, no clock, no threads: the server's UDP thread pushes frames as they
arrive and calls ``tick()`` once per frame period.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

import config
import utils

_INT16_MIN = -32768
_INT16_MAX = 32767


@dataclass
class MixResult:
    """What one tick produced: each listener's N-1 mix, and who was heard this tick."""

    mixes: dict[int, bytes] = field(default_factory=dict)
    active: set[int] = field(default_factory=set)
    # Every talker summed (clipped): what a recording of the meeting hears; None when
    # nobody talked this tick.
    everyone: bytes | None = None


class AudioMixer:
    """N-1 mixer of one session: each listener gets the sum of every *other* talker."""

    def __init__(
        self,
        frame_samples: int = config.AUDIO_FRAME_SAMPLES,
        jitter_frames: int = config.MIXER_JITTER_FRAMES,
        hangover_frames: int = config.MIXER_HANGOVER_FRAMES,
        standing_queue_ticks: int = config.MIXER_STANDING_QUEUE_TICKS,
    ) -> None:
        if frame_samples <= 0 or jitter_frames <= 0 or hangover_frames < 0:
            raise ValueError("frame_samples and jitter_frames must be > 0, hangover >= 0")
        if standing_queue_ticks <= 0:
            raise ValueError("standing_queue_ticks must be > 0")
        self.frame_samples = frame_samples
        self.frame_bytes = frame_samples * 2
        self.jitter_frames = jitter_frames
        self.hangover_frames = hangover_frames
        self._queues: dict[int, deque[bytes]] = {}
        # Highest RMS of each participant's frames since the last take_levels().
        self._peak_rms: dict[int, float] = {}
        self._hangover_left = 0
        self.dropped = 0  # frames dropped because a jitter queue was full
        # Standing-delay control: the smallest depth each queue had after a tick in the
        # current window of standing_queue_ticks ticks.
        self.standing_queue_ticks = standing_queue_ticks
        self._min_depth: dict[int, int] = {}
        self._window_ticks = 0
        self.trimmed = 0  # frames dropped because a queue never emptied for a whole window
        self._silence = bytes(self.frame_bytes)

    # --- membership ---------------------------------------------------------------

    def add(self, pid: int) -> None:
        """Register a participant (a listener from now on, and a possible talker)."""
        if pid not in self._queues:
            self._queues[pid] = deque()
            self._peak_rms[pid] = 0.0
            self._min_depth[pid] = 0  # not judged on a partial window

    def remove(self, pid: int) -> None:
        """Forget a participant and its queued audio."""
        self._queues.pop(pid, None)
        self._peak_rms.pop(pid, None)
        self._min_depth.pop(pid, None)

    @property
    def participants(self) -> list[int]:
        return list(self._queues)

    def __len__(self) -> int:
        return len(self._queues)

    def queued(self, pid: int) -> int:
        """Frames waiting in a participant's jitter queue."""
        q = self._queues.get(pid)
        return len(q) if q is not None else 0

    # --- input --------------------------------------------------------------------

    def push(self, pid: int, pcm: bytes) -> bool:
        """Queue one frame of int16 LE PCM; False (ignored) for unknown ids or wrong sizes.

        When the queue is full the oldest frame is dropped: late audio is worth less
        than fresh audio.
        """
        q = self._queues.get(pid)
        if q is None or len(pcm) != self.frame_bytes:
            return False
        if len(q) >= self.jitter_frames:
            q.popleft()
            self.dropped += 1
        q.append(bytes(pcm))
        return True

    # --- output -------------------------------------------------------------------

    def tick(self) -> MixResult:
        """Take at most one frame per participant and return every listener's N-1 mix.

        While nobody is talking (after the hangover) the result has no mixes: the
        server then sends nothing.
        """
        talkers: list[int] = []
        frames: list[np.ndarray] = []
        for pid, q in self._queues.items():
            if q:
                frame = np.frombuffer(q.popleft(), dtype="<i2")
                talkers.append(pid)
                frames.append(frame)
        self._control_standing_delay()
        result = MixResult(active=set(talkers))
        if talkers:
            self._hangover_left = self.hangover_frames
        elif self._hangover_left > 0:
            self._hangover_left -= 1
        else:
            return result
        if not self._queues:
            return result

        if frames:
            stacked = np.stack(frames).astype(np.int32)  # (talkers, samples)
            total = stacked.sum(axis=0)  # summed once, O(N)
            power = np.einsum("ij,ij->i", stacked, stacked, dtype=np.float64)
            for pid, p in zip(talkers, power.tolist(), strict=True):
                rms = (p / self.frame_samples) ** 0.5
                if rms > self._peak_rms.get(pid, 0.0):
                    self._peak_rms[pid] = rms
            # Each talker hears total - own; clipped for all talkers in one operation.
            own_mixes = np.clip(total - stacked, _INT16_MIN, _INT16_MAX).astype("<i2")
            # Listeners who did not talk all hear the same total: clipped once, shared.
            shared = _clip(total)
            result.everyone = shared
            for pid in self._queues:
                result.mixes[pid] = shared
            for pid, row in zip(talkers, own_mixes, strict=True):
                result.mixes[pid] = row.tobytes()
        else:
            for pid in self._queues:
                result.mixes[pid] = self._silence
        return result

    def _control_standing_delay(self) -> None:
        """Drop one frame from each queue that never emptied during the last window.

        A sender whose clock runs fast, or a burst after a stall, leaves frames
        waiting at every tick: pure added latency that the jitter bound alone
        would keep for good.
        """
        min_depth = self._min_depth
        for pid, q in self._queues.items():
            if len(q) < min_depth[pid]:
                min_depth[pid] = len(q)
        self._window_ticks += 1
        if self._window_ticks < self.standing_queue_ticks:
            return
        self._window_ticks = 0
        for pid, q in self._queues.items():
            if min_depth[pid] > 0 and q:
                q.popleft()
                self.trimmed += 1
            min_depth[pid] = self.jitter_frames + 1

    def take_levels(self) -> dict[int, int]:
        """Each participant's level (0-255) since the last call, then reset to silence."""
        levels = {pid: utils.level_from_rms(rms) for pid, rms in self._peak_rms.items()}
        for pid in self._peak_rms:
            self._peak_rms[pid] = 0.0
        return levels


def _clip(samples: np.ndarray) -> bytes:
    """int32 samples to int16 LE bytes, saturating instead of wrapping around."""
    return np.clip(samples, _INT16_MIN, _INT16_MAX).astype("<i2").tobytes()
