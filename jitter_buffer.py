"""Adaptive jitter buffer in the spirit of WebRTC's NetEq: pure, codec-agnostic.

No clock, no threads: the owner passes each packet with its arrival time
(``put``) and asks for the next frame of output when its playout period comes
(``get``). Packets are stored by sequence number (16- or 32-bit, wrapping) and
decoded through a ``FrameDecoder`` (``decode``, ``conceal``, ``decode_fec``), so
the server's per-sender queues and the client's playback share it.

Delay: the *target* is one frame plus a high quantile (``JB_DELAY_QUANTILE``) of
the recent arrival delays relative to the earliest one in the history (arrival
time minus the packet's place on the sender's timeline). It grows at once when
jitter appears and shrinks with a half-life when it goes. Where playout stands is
measured on the same scale: the owner's clock at each ``get`` less the frame's
place on the sender's timeline, less that earliest arrival (``_delay_ms``), so a
packet that came early (the first of a talk spurt, say) does not pass for a full
buffer. The buffer follows its target in DTX silence for free (frames of it
skipped or held) and by time-stretching decoded speech (a pitch period removed or
repeated, WSOLA-style, so a 20 ms frame plays as 10-30 ms), never by dropping or
inserting whole frames of speech; a packet missing at its turn sooner than the
target plans for is waited for with concealment (the delay grows by one frame,
as NetEq's expand), a lost frame whose successor is there is recovered from that
packet's FEC, else concealed. On a clean network the target is one frame: no
delay beyond the playout granularity.

Not thread-safe: the owner locks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

import config
from audio_codec import CodecError, FrameDecoder

_SAMPLE = np.dtype("<i2")


@dataclass
class JitterBufferStats:
    """What the buffer did: counters since creation, and its current delays."""

    received: int = 0
    decoded: int = 0  # frames decoded from their own packet
    fec_used: int = 0  # lost frames recovered from the next packet's FEC
    concealed: int = 0  # lost frames replaced by codec concealment
    expanded: int = 0  # frames concealed while waiting for a late packet (delay grew)
    late: int = 0  # packets that arrived after their turn (dropped)
    reordered: int = 0  # packets that arrived after a later one (put in place)
    duplicate: int = 0
    overflow: int = 0  # packets dropped because the buffer held more than JB_MAX_BUFFER_MS
    accelerated: int = 0  # frames compressed to lower the delay
    stretched: int = 0  # frames stretched to raise the delay
    silent: int = 0  # frames of silence (before start, or the stream paused)
    dtx: int = 0  # frames of silence because the sender said it went quiet (DTX)
    restarts: int = 0  # the sender's numbering jumped: started over
    corrupt: int = 0  # packets the decoder refused (concealed instead)
    # Datagrams of the frames played or lost (counted JB_COPY_COUNT_DELAY_FRAMES later):
    # each frame's sender sent one, or two while it repeats (audio_repeat.py), taken to
    # be so when that frame came twice, both its neighbours did, or it never came and a
    # neighbour did (_count_copies); and how many of those never came.
    copies_sent: int = 0
    copies_lost: int = 0
    target_delay_ms: float = 0.0
    buffer_delay_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# --- time stretching (pure functions) -----------------------------------------------


def _match(x: np.ndarray, p: int) -> float:
    """Normalised correlation of the two adjacent periods x[:p] and x[p:2p]."""
    a = x[:p]
    b = x[p : 2 * p]
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b)) / den if den > 0 else 1.0


def _best_period(x: np.ndarray, p_min: int, p_max: int) -> tuple[int, float]:
    """The lag p in [p_min, p_max] whose two adjacent periods x[:p], x[p:2p] match best.

    Returns the lag and its normalised correlation (1.0 = a perfect repeat). Searched
    on a 4x decimated copy, then refined at full rate (a server runs many of these).
    """
    step = config.JB_PITCH_DECIMATION
    coarse = x[::step]
    lo, hi = max(1, p_min // step), max(1, p_max // step)
    best = max(range(lo, hi + 1), key=lambda p: _match(coarse, p)) * step
    candidates = range(max(p_min, best - step), min(p_max, best + step) + 1)
    best_p = max(candidates, key=lambda p: _match(x, p))
    return best_p, _match(x, best_p)


def _crossfade(fade_out: np.ndarray, fade_in: np.ndarray) -> np.ndarray:
    n = len(fade_out)
    w = np.arange(n, dtype=np.float64) / n
    return fade_out * (1.0 - w) + fade_in * w


def _pitch_range(rate_hz: int, n: int, max_out: int, min_out: int) -> tuple[int, int]:
    p_min = max(1, int(rate_hz * config.JB_PITCH_MIN_MS / 1000))
    p_max = min(int(rate_hz * config.JB_PITCH_MAX_MS / 1000), n // 2)
    p_max = min(p_max, n - min_out, max_out - n)
    return p_min, p_max


def compress(frame: np.ndarray, rate_hz: int) -> np.ndarray:
    """The frame shortened by one pitch period (at most to ``JB_STRETCH_MIN_MS``).

    Two adjacent periods are replaced by their crossfade, so the waveform stays
    continuous at both joins and speech keeps its pitch.
    """
    x = frame.astype(np.float64)
    n = len(x)
    min_out = int(rate_hz * config.JB_STRETCH_MIN_MS / 1000)
    p_min, p_max = _pitch_range(rate_hz, n, 2 * n, min_out)
    if p_max < p_min:
        return frame.astype(_SAMPLE)
    p, _ = _best_period(x, p_min, p_max)
    out = np.concatenate([_crossfade(x[:p], x[p : 2 * p]), x[2 * p :]])
    return np.clip(np.round(out), -32768, 32767).astype(_SAMPLE)


def stretch(frame: np.ndarray, rate_hz: int) -> np.ndarray:
    """The frame lengthened by one pitch period (at most to ``JB_STRETCH_MAX_MS``).

    One period is played twice, the repeat crossfaded from the period that
    follows to the one it repeats, so both joins are continuous.
    """
    x = frame.astype(np.float64)
    n = len(x)
    max_out = int(rate_hz * config.JB_STRETCH_MAX_MS / 1000)
    p_min, p_max = _pitch_range(rate_hz, n, max_out, 0)
    if p_max < p_min:
        return frame.astype(_SAMPLE)
    p, _ = _best_period(x, p_min, p_max)
    out = np.concatenate([x[:p], _crossfade(x[p : 2 * p], x[:p]), x[p:]])
    return np.clip(np.round(out), -32768, 32767).astype(_SAMPLE)


def quiet(frame: np.ndarray) -> bool:
    """True for a frame below ``JB_QUIET_RMS``: a pause between words, or near it."""
    x = frame.astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) < config.JB_QUIET_RMS


def stretchable(frame: np.ndarray, rate_hz: int) -> bool:
    """True when a frame can be stretched or compressed without an audible seam.

    Periodic (voiced) frames and quiet frames can; a loud noise-like frame
    (a fricative, a click) waits for the next one, as NetEq does.
    """
    if quiet(frame):
        return True
    x = frame.astype(np.float64)
    p_min, p_max = _pitch_range(rate_hz, len(x), 2 * len(x), 0)
    if p_max < p_min:
        return False
    _, c = _best_period(x, p_min, p_max)
    return c >= config.JB_STRETCH_MIN_CORRELATION


# --- the buffer ----------------------------------------------------------------------


class AdaptiveJitterBuffer:
    """Per-stream adaptive jitter buffer: ``put(seq, packet, arrival_ms)``, ``get()``."""

    def __init__(
        self,
        decoder: FrameDecoder,
        rate_hz: int = config.OPUS_RATE_HZ,
        frame_ms: int = config.OPUS_FRAME_MS,
        seq_bits: int = 32,
        history_packets: int = config.JB_HISTORY_PACKETS,
        quantile: float = config.JB_DELAY_QUANTILE,
        max_target_ms: float = config.JB_MAX_TARGET_DELAY_MS,
        max_buffer_ms: float = config.JB_MAX_BUFFER_MS,
        shrink_half_life_ms: float = config.JB_SHRINK_HALF_LIFE_MS,
        hysteresis_ms: float = config.JB_ADJUST_HYSTERESIS_MS,
        max_conceal_frames: int = config.JB_MAX_CONCEAL_FRAMES,
        min_extra_ms: float = config.JB_MIN_EXTRA_DELAY_MS,
    ) -> None:
        if seq_bits not in (16, 32):
            raise ValueError("seq_bits must be 16 or 32")
        if not 0.5 <= quantile < 1.0:
            raise ValueError("quantile must be in [0.5, 1)")
        self.decoder = decoder
        self.rate_hz = rate_hz
        self.frame_ms = frame_ms
        self.frame_samples = rate_hz * frame_ms // 1000
        self._mod = 1 << seq_bits
        self.quantile = quantile
        self.max_target_ms = max_target_ms
        self.max_buffer_ms = max_buffer_ms
        self.shrink_half_life_ms = shrink_half_life_ms
        self.hysteresis_ms = hysteresis_ms
        self.max_conceal_frames = max_conceal_frames
        self.min_extra_ms = min_extra_ms
        self.stats = JitterBufferStats(target_delay_ms=frame_ms)
        self._packets: dict[int, bytes] = {}  # extended seq -> packet
        self._last_seq: int | None = None  # last raw seq received, to extend the next one
        self._last_ext = 0
        self._highest: int | None = None  # highest extended seq received
        self._next: int | None = None  # extended seq to play next; None while buffering
        self._floor: int | None = None  # last extended seq played: older packets are late
        self._history: deque[float] = deque(maxlen=history_packets)
        self._peak_ms = 0.0  # jitter the target covers (decays with the half-life)
        self._last_arrival_ms: float | None = None
        self._missing_run = 0
        self._in_dtx = False  # the last packet decoded said the sender went quiet
        self._is_dtx = getattr(decoder, "is_dtx", lambda packet: False)
        self._losses: deque[int] = deque()  # extended seqs of recent losses
        # Copies that arrived of each frame not yet counted in copies_sent / copies_lost.
        self._copies: dict[int, int] = {}
        self._to_count: deque[int] = deque()  # frames played or lost, not yet counted
        self._counted: int | None = None  # the last frame counted
        self._counted_copies = 0  # ...and how many copies of it arrived
        # The earliest arrival relative to the sender's timeline in the history (ms), and
        # the owner's clock at the current get(): where playout is against the arrivals.
        self._min_rel_ms: float | None = None
        self._clock_ms: float | None = None
        self._fifo = np.zeros(0, _SAMPLE)  # decoded (stretched) samples not yet handed out
        self._silence = np.zeros(self.frame_samples, _SAMPLE)

    # --- properties ------------------------------------------------------------------

    @property
    def target_delay_ms(self) -> float:
        """One frame plus the jitter the buffer currently plans for, in ms.

        After a recent loss one more frame is planned, so that the packet after a lost
        one is usually there in time for its FEC (none on a clean network).
        """
        extra = self.frame_ms if self._losses else 0
        return min(self.max_target_ms, self.frame_ms + self._peak_ms + extra)

    @property
    def jitter_ms(self) -> float:
        """The arrival jitter the target covers now (ms): recent peak spread, decaying."""
        return self._peak_ms

    @property
    def buffer_delay_ms(self) -> float:
        """Audio waiting: decoded samples not yet played plus packets up to the newest."""
        fifo_ms = 1000 * len(self._fifo) / self.rate_hz
        if self._next is None or self._highest is None:
            waiting = len(self._packets)
        else:
            waiting = max(0, self._highest - self._next + 1)
        return fifo_ms + waiting * self.frame_ms

    @property
    def playing(self) -> bool:
        return self._next is not None

    @property
    def last_played(self) -> int | None:
        """The seq (mod 2**seq_bits) of the last frame played or passed over; None before."""
        return None if self._floor is None else self._floor % self._mod

    def waiting(self) -> list[tuple[int, bytes]]:
        """The packets stored and not yet played, oldest first, with their seqs."""
        return [(ext % self._mod, self._packets[ext]) for ext in sorted(self._packets)]

    def _extend(self, seq: int) -> int:
        seq %= self._mod
        if self._last_seq is None:
            ext = seq
        else:
            d = (seq - self._last_seq) % self._mod
            if d >= self._mod // 2:
                d -= self._mod
            ext = self._last_ext + d
        return ext

    # --- input -----------------------------------------------------------------------

    def put(self, seq: int, packet: bytes, arrival_ms: float) -> bool:
        """Store a packet that arrived at ``arrival_ms`` (the owner's clock, in ms).

        False when it was dropped: late (its turn has passed), duplicate, or beyond
        the buffer's bound. An empty packet is ignored (DTX frames are not sent).
        """
        ext = self._extend(seq)
        if self._last_seq is not None and abs(ext - self._last_ext) > config.JB_RESTART_SEQ_GAP:
            self._restart()
            ext = seq % self._mod
        if self._last_seq is None or ext > self._last_ext:
            self._last_seq, self._last_ext = seq % self._mod, ext
        if self._counted is None or ext > self._counted:
            self._copies[ext] = self._copies.get(ext, 0) + 1
        if self._floor is not None and ext <= self._floor:
            # A packet whose frame was lost is jitter to plan for; a second copy of one
            # that played (a sender's repeat, audio_repeat.py) says nothing about it.
            if ext in self._losses:
                self._observe(ext, arrival_ms)
            self.stats.late += 1
            return False
        if ext in self._packets:
            self.stats.duplicate += 1
            return False
        self._observe(ext, arrival_ms)
        if self._highest is not None and ext < self._highest:
            self.stats.reordered += 1
        if self._highest is None or ext > self._highest:
            self._highest = ext
        self._packets[ext] = bytes(packet)
        self.stats.received += 1
        self._bound()
        return True

    def _restart(self) -> None:
        """The sender's numbering jumped far: forget the old stream's packets."""
        self.stats.restarts += 1
        self._packets.clear()
        self._last_seq = None
        self._last_ext = 0
        self._highest = None
        self._next = None
        self._floor = None
        self._history.clear()
        self._min_rel_ms = None
        self._copies.clear()
        self._to_count.clear()
        self._counted = None

    def _observe(self, ext: int, arrival_ms: float) -> None:
        """Arrival delay relative to the sender's timeline -> the jitter the target covers."""
        rel = arrival_ms - ext * self.frame_ms
        self._history.append(rel)
        hist = np.fromiter(self._history, np.float64)
        self._min_rel_ms = float(hist.min())
        spread = float(np.quantile(hist, self.quantile) - self._min_rel_ms)
        # Round up to whole ms so a clean network's sub-ms noise does not move the target.
        spread = max(0.0, math.floor(spread) + self.min_extra_ms)
        if self._last_arrival_ms is not None and arrival_ms > self._last_arrival_ms:
            dt = arrival_ms - self._last_arrival_ms
            decay = 0.5 ** (dt / self.shrink_half_life_ms)
            self._peak_ms = spread + (self._peak_ms - spread) * decay
        if spread > self._peak_ms:
            self._peak_ms = spread  # grow at once
        self._last_arrival_ms = arrival_ms
        self.stats.target_delay_ms = self.target_delay_ms

    def _bound(self) -> None:
        """Keep at most ``max_buffer_ms`` of packets: the oldest go first."""
        max_frames = max(1, int(self.max_buffer_ms // self.frame_ms))
        assert self._highest is not None
        start = self._next if self._next is not None else min(self._packets)
        if self._highest - start < max_frames:
            return
        new_start = self._highest - max_frames + 1
        for s in [s for s in self._packets if s < new_start]:
            del self._packets[s]
            self.stats.overflow += 1
        if self._next is not None:
            self._next = new_start
            self._floor = new_start - 1

    # --- output ----------------------------------------------------------------------

    def get(self, now_ms: float | None = None) -> np.ndarray:
        """The next ``frame_samples`` of output (int16), for this playout period.

        ``now_ms`` is the owner's clock (the one ``put`` is given) as this period starts
        to play. Without it the buffer counts one frame per call from the newest arrival.
        """
        if now_ms is not None:
            self._clock_ms = now_ms
        elif self._clock_ms is None:
            self._clock_ms = self._last_arrival_ms
        else:
            self._clock_ms = max(self._clock_ms + self.frame_ms, self._last_arrival_ms or 0.0)
        while len(self._fifo) < self.frame_samples:
            chunk = self._produce()
            if chunk is None:  # nothing to play: pad what is left with silence
                out = np.concatenate([self._fifo, self._silence])[: self.frame_samples]
                self._fifo = np.zeros(0, _SAMPLE)
                self.stats.silent += 1
                self._update_stats()
                return out
            self._fifo = np.concatenate([self._fifo, chunk])
        out, self._fifo = self._fifo[: self.frame_samples], self._fifo[self.frame_samples :]
        self._update_stats()
        return out

    def _update_stats(self) -> None:
        self.stats.target_delay_ms = self.target_delay_ms
        self.stats.buffer_delay_ms = self.buffer_delay_ms

    def _delay_ms(self, seq: int) -> float:
        """How much later than the fastest recent packet frame ``seq`` is decoded, in ms.

        The clock less the frame's place on the sender's timeline, less the earliest
        arrival on that timeline in the history: a packet that arrives later than this
        (after the fastest) is late for its turn. The buffer is on plan when this is at
        least ``_wanted_ms`` (and less than a frame more: the playout period's phase).
        """
        if self._clock_ms is None or self._min_rel_ms is None:
            return math.inf  # nothing measured yet: play what is there
        return self._clock_ms - seq * self.frame_ms - self._min_rel_ms

    @property
    def _wanted_ms(self) -> float:
        """The delay the target plans beyond the playout period itself."""
        return self.target_delay_ms - self.frame_ms

    def _waiting_after(self, seq: int) -> int:
        return 0 if self._highest is None else max(0, self._highest - seq)

    def _produce(self) -> np.ndarray | None:
        """Decode (or recover) the next frame, time-stretched toward the target; None = idle."""
        if self._next is None:
            if not self._packets:
                return None
            oldest = min(self._packets)
            if self._delay_ms(oldest) < self._wanted_ms:
                return None  # a packet as late as planned for could still come before it
            self._next = oldest
            self._missing_run = 0
        seq = self._next
        packet = self._packets.pop(seq, None)
        while self._losses and self._losses[0] < seq - config.JB_LOSS_MEMORY_FRAMES:
            self._losses.popleft()
        if packet is not None:
            try:
                frame = self.decoder.decode(packet)
                self.stats.decoded += 1
            except CodecError:  # a corrupt packet from the network: conceal it
                frame = self.decoder.conceal()
                self.stats.corrupt += 1
            self._missing_run = 0
            self._in_dtx = self._is_dtx(packet)
        elif self._in_dtx:
            # The sender said it went quiet: missing frames are silence, not loss, and the
            # timeline goes on. Silence is where the delay is squared with the target for
            # free: frames of it are skipped (up to the next packet) when playout is later
            # than planned, and held when it is earlier.
            margin = min(config.JB_SILENCE_MARGIN_MS, self._peak_ms / 2)
            excess = self._delay_ms(seq) - self._wanted_ms - margin
            if excess < 0:  # earlier than planned: hold the timeline for a frame
                self.stats.dtx += 1
                return self._silence.copy()
            skip = int(excess // self.frame_ms) if math.isfinite(excess) else 0
            if self._packets:
                skip = min(skip, min(self._packets) - seq)
            if skip and seq + skip in self._packets:  # the rest of the silence skipped
                self._next = seq + skip
                self._floor = self._next - 1
                return self._produce()
            self._next = seq + skip + 1
            self._floor = seq + skip
            self.stats.dtx += 1
            return self._silence.copy()
        elif self._waiting_after(seq) == 0 or (
            not (self._losses and seq + 1 in self._packets)
            and self._delay_ms(seq) < self._wanted_ms
        ):
            # Its turn came sooner than the jitter we plan for (or nothing after it has
            # come: the talker paused): the packet is probably late, not lost. Conceal
            # without moving on, so a late packet still plays: the delay grows by a frame,
            # as NetEq's expand. On a network that lost packets lately, the next packet's
            # FEC is taken instead.
            self._missing_run += 1
            if self._missing_run > self.max_conceal_frames:
                self._next = None  # paused (a gone sender): re-buffer when it resumes
                self._floor = seq - 1
                return None
            self.stats.expanded += 1
            return self.decoder.conceal()
        else:
            following = self._packets.get(seq + 1)
            frame = None
            if following is not None:
                try:
                    frame = self.decoder.decode_fec(following)
                    self.stats.fec_used += 1
                except CodecError:
                    frame = None
            if frame is None:
                frame = self.decoder.conceal()
                self.stats.concealed += 1
            self._losses.append(seq)
            self._missing_run = 0
        self._next = seq + 1
        self._floor = seq
        self._count_copies(seq)
        return self._adjust(frame, packet is not None)

    def _count_copies(self, seq: int) -> None:
        """Frame ``seq`` was played or lost: count the copies of those some frames older.

        Each is counted once its repeat (sent a frame later) has had time to arrive; it
        was sent twice when it came twice, when the frames before and after it did, or
        when it never came and one of them did.
        """
        self._to_count.append(seq)
        while self._to_count and self._to_count[0] <= seq - config.JB_COPY_COUNT_DELAY_FRAMES:
            k = self._to_count.popleft()
            got = self._copies.pop(k, 0)
            before, after = self._counted_copies, self._copies.get(k + 1, 0)
            # Sent twice: it came twice, or both neighbours did (a frame where repeating
            # starts or stops has one), or it never came and a neighbour came twice.
            twice = got >= 2 or min(before, after) >= 2 or (got == 0 and max(before, after) >= 2)
            sent = 2 if twice else 1
            self.stats.copies_sent += sent
            self.stats.copies_lost += max(0, sent - got)
            self._counted, self._counted_copies = k, got
        if len(self._copies) > config.JB_COPY_MEMORY_FRAMES:  # frames skipped: forget them
            oldest = self._to_count[0] if self._to_count else seq
            self._copies = {k: n for k, n in self._copies.items() if k >= oldest}

    def _adjust(self, frame: np.ndarray, real: bool) -> np.ndarray:
        """Compress or stretch the frame when its delay strays from the plan (``_delay_ms``).

        On plan is from ``_wanted_ms`` to a frame more (the playout period's phase);
        beyond that and the hysteresis a quiet frame is compressed, and speech only
        when far beyond; a frame more than the hysteresis early is stretched.
        """
        assert self._next is not None
        if not real:
            return frame
        # This frame's delay against the plan (frames are taken from the fifo's end).
        excess = self._delay_ms(self._next - 1) - self._wanted_ms
        # Too much delay: lowered in quiet frames (and for free in DTX silence), in speech
        # only when far above the target (each compression there shifts the talk).
        if excess > self.frame_ms + self.hysteresis_ms and (
            quiet(frame)
            or (excess > config.JB_ACCELERATE_IN_SPEECH_MS and stretchable(frame, self.rate_hz))
        ):
            self.stats.accelerated += 1
            return compress(frame, self.rate_hz)
        if excess < -self.hysteresis_ms and stretchable(frame, self.rate_hz):
            self.stats.stretched += 1
            return stretch(frame, self.rate_hz)
        return frame
