"""The adaptive jitter buffer: delay follows jitter, order, FEC, concealment, stretching."""

from __future__ import annotations

import numpy as np
import pytest

import audio_codec
import config
import jitter_buffer as jbm
from jitter_buffer import AdaptiveJitterBuffer
from tests.signals import FRAME, RATE_HZ, frames, voice

FRAME_MS = 20


class ScriptDecoder:
    """A FrameDecoder whose packet k decodes to frame k of a known signal; logs every call."""

    frame_samples = FRAME

    def __init__(self, signal: np.ndarray | None = None) -> None:
        self.signal = signal
        self.calls: list[tuple[str, int | None]] = []

    def _frame(self, k: int) -> np.ndarray:
        if self.signal is None:
            return np.full(FRAME, k % 30000, np.int16)
        return self.signal[k * FRAME : (k + 1) * FRAME]

    def decode(self, packet: bytes) -> np.ndarray:
        if self.is_dtx(packet):
            self.calls.append(("decode", None))
            return np.zeros(FRAME, np.int16)
        k = int.from_bytes(packet, "big")
        self.calls.append(("decode", k))
        return self._frame(k)

    def is_dtx(self, packet: bytes) -> bool:
        return len(packet) == 1  # this decoder's "I went quiet" marker

    def conceal(self) -> np.ndarray:
        self.calls.append(("conceal", None))
        return np.zeros(FRAME, np.int16)

    def decode_fec(self, next_packet: bytes) -> np.ndarray:
        k = int.from_bytes(next_packet, "big")
        self.calls.append(("fec", k))
        return self._frame(k - 1)


def packet(k: int) -> bytes:
    return k.to_bytes(4, "big")


def play(
    buf: AdaptiveJitterBuffer,
    arrivals: list[tuple[float, int]],
    until_ms: float,
    phase_ms: float = 7.0,
    seq_of=lambda k: k,
    period_ms: float = FRAME_MS,
    quiet_markers: frozenset[int] = frozenset(),
) -> tuple[np.ndarray, list[float]]:
    """Deliver (arrival_ms, k) in time order while pulling one frame every ``period_ms``
    of the same clock (the sender's frames are 20 ms); a k in ``quiet_markers`` is sent as
    the decoder's "I went quiet" (DTX) packet."""
    arrivals = sorted(arrivals)
    out, targets, i, t = [], [], 0, phase_ms
    while t < until_ms:
        while i < len(arrivals) and arrivals[i][0] <= t:
            at, k = arrivals[i]
            buf.put(seq_of(k), b"D" if k in quiet_markers else packet(k), at)
            i += 1
        out.append(buf.get(t))
        targets.append(buf.target_delay_ms)
        t += period_ms
    return np.concatenate(out), targets


def steady(
    n: int, jitter_ms: float = 0.0, seed: int = 0, start: int = 0
) -> list[tuple[float, int]]:
    rng = np.random.default_rng(seed)
    return [((start + k) * FRAME_MS + rng.uniform(0, jitter_ms), start + k) for k in range(n)]


def decoded_order(dec: ScriptDecoder) -> list[int]:
    return [k for name, k in dec.calls if name == "decode"]


def test_clean_network_adds_no_delay():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    out, targets = play(buf, steady(100), until_ms=100 * FRAME_MS)
    assert max(targets) == FRAME_MS  # one frame: the playout granularity only
    # Packet 0 arrives at 0 ms and is played at the first pull (7 ms): nothing waits longer.
    assert out[0] == 0 and out[FRAME] == 1
    assert decoded_order(dec) == list(range(100))
    s = buf.stats
    assert (s.accelerated, s.stretched, s.concealed, s.expanded, s.late) == (0, 0, 0, 0, 0)


def test_target_grows_under_jitter_and_shrinks_after():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    jittery = steady(250, jitter_ms=60, seed=1)  # 5 s of 0-60 ms extra delay
    calm = steady(750, start=250)  # then 15 s of a clean network
    _, targets = play(buf, jittery + calm, until_ms=1010 * FRAME_MS)
    at_5s = targets[249]
    assert 60 <= at_5s <= 100, at_5s
    assert targets[-1] <= FRAME_MS + 5, targets[-1]
    # Grows quickly: within 0.5 s of the first jitter the target covers most of it.
    assert targets[25] >= 50
    # Shrinks slowly: still well above one frame 1 s after the jitter ended.
    assert targets[300] > 40
    # Followed by time-stretching, not by dropping or inserting frames. Only in the first
    # half second, before the jitter was measured, may a packet be given up as lost (and
    # recovered from the next one's FEC).
    order = decoded_order(dec)
    assert order == sorted(order) and set(range(25, 1000)) <= set(order)
    assert len(order) >= 990
    assert buf.stats.accelerated > 0
    assert buf.stats.buffer_delay_ms <= 2 * FRAME_MS


def test_reordered_packets_play_in_order():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    arrivals = steady(200, jitter_ms=30, seed=2)
    # Swap neighbours: each odd packet arrives 5 ms before its even predecessor.
    swapped = [
        (arrivals[k + 1][0] - 5 if k % 2 == 0 else arrivals[k - 1][0], k) for k in range(200)
    ]
    _, _ = play(buf, swapped, until_ms=220 * FRAME_MS)
    # In order, every one; only in the first half second, while the jitter is measured,
    # may a packet be given up as lost (and its frame taken from the next one's FEC).
    order = decoded_order(dec)
    assert order == sorted(order) and set(range(25, 200)) <= set(order)
    fec = [k - 1 for name, k in dec.calls if name == "fec"]
    assert set(order) | set(fec) == set(range(200))
    assert buf.stats.reordered >= 80 and buf.stats.late <= 4


@pytest.mark.parametrize("bits", [16, 32])
def test_sequence_wraps_around(bits):
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec, seq_bits=bits)
    mod = 1 << bits
    start = mod - 50
    play(buf, steady(100), until_ms=110 * FRAME_MS, seq_of=lambda k: (start + k) % mod)
    assert decoded_order(dec) == list(range(100))
    assert buf.stats.restarts == 0 and buf.stats.late == 0


def test_lost_frame_is_recovered_by_fec_when_the_next_packet_is_there():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    arrivals = [a for a in steady(50) if a[1] != 20]
    play(buf, arrivals, until_ms=60 * FRAME_MS)
    i = dec.calls.index(("fec", 21))
    assert dec.calls[i + 1] == ("decode", 21)
    assert buf.stats.fec_used == 1 and buf.stats.concealed == 0


def test_two_lost_frames_conceal_then_fec():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    arrivals = [a for a in steady(50, jitter_ms=40, seed=3) if a[1] not in (20, 21)]
    play(buf, arrivals, until_ms=60 * FRAME_MS)
    after_19 = dec.calls[dec.calls.index(("decode", 19)) + 1 :]
    fec = after_19.index(("fec", 22))
    # Frame 20: its successor is lost too, so concealment; frame 21: FEC from packet 22.
    assert ("conceal", None) in after_19[:fec]
    assert after_19[fec + 1] == ("decode", 22)
    assert buf.stats.fec_used == 1 and buf.stats.concealed >= 1
    assert decoded_order(dec) == [k for k in range(50) if k not in (20, 21)]


def test_late_packet_is_dropped_and_counted():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    arrivals = steady(40)
    arrivals[10] = (arrivals[10][0] + 200, 10)  # 200 ms late: 11, 12, ... came first
    play(buf, arrivals, until_ms=50 * FRAME_MS)
    assert buf.stats.late == 1
    assert 10 not in decoded_order(dec)


def test_a_late_packet_while_nothing_newer_came_is_waited_for():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    arrivals = steady(40)
    for k in range(10, 40):  # a 30 ms stall: every later packet is delayed too
        arrivals[k] = (arrivals[k][0] + 30, k)
    play(buf, arrivals, until_ms=50 * FRAME_MS)
    assert decoded_order(dec) == list(range(40))  # nothing lost: the buffer expanded
    assert buf.stats.expanded >= 1 and buf.stats.late == 0


def test_pause_then_resume_after_dtx_gap():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    arrivals = steady(20) + steady(20, start=100)  # 1.6 s without packets (DTX)
    out, _ = play(buf, arrivals, until_ms=130 * FRAME_MS)
    assert decoded_order(dec) == [*range(20), *range(100, 120)]
    # Waiting for the late packet is bounded at each pause (the gap and the end).
    assert buf.stats.expanded <= 2 * config.JB_MAX_CONCEAL_FRAMES
    assert buf.stats.late == 0 and buf.stats.silent > 50


def test_dtx_silence_keeps_the_timeline_and_is_not_concealed():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    arrivals = [*steady(20), (20 * FRAME_MS, 20), *steady(20, start=50)]
    out = []
    delivered = sorted(arrivals)
    i, t = 0, 7.0
    while t < 80 * FRAME_MS:
        while i < len(delivered) and delivered[i][0] <= t:
            at, k = delivered[i]
            buf.put(k, b"D" if k == 20 else packet(k), at)  # 20: the quiet marker
            i += 1
        out.append(int(buf.get()[0]))
        t += FRAME_MS
    assert ("conceal", None) not in dec.calls[: dec.calls.index(("decode", 69))]
    assert buf.stats.dtx >= 25
    # The talk spurt after the silence plays at the delay the stream had before it.
    assert out.index(50) - out.index(10) == 40


def test_an_early_packet_after_silence_does_not_cut_the_delay():
    """Silence squares the delay with the spread of the arrivals, not with the newest
    packet: a talk spurt whose first packet comes early must not make the buffer skip
    the silence to it, then conceal while the rest come as late as before."""
    rng = np.random.default_rng(5)

    def jittered(ks, most_ms):
        return [(k * FRAME_MS + rng.uniform(0, most_ms), k) for k in ks]

    arrivals = [
        *jittered(range(100), 80),  # 2 s of talk 0-80 ms late: the target covers ~75
        (100 * FRAME_MS + 80, 100),  # the quiet marker, as late as any
        (150 * FRAME_MS, 150),  # the next spurt's first packet: the earliest possible
        *jittered(range(151, 250), 60),  # the rest within what the target covers
    ]
    play(
        AdaptiveJitterBuffer(dec := ScriptDecoder()),
        arrivals,
        270 * FRAME_MS,
        quiet_markers=frozenset({100}),
    )
    spurt = dec.calls[dec.calls.index(("decode", 150)) : dec.calls.index(("decode", 249)) + 1]
    assert [k for name, k in spurt if name == "decode"] == list(range(150, 250))
    assert [c for c in spurt if c[0] != "decode"] == []  # no expand, no FEC, no concealment


def test_silence_holds_playout_a_margin_above_the_plan():
    """After a pause the next talk spurt plays JB_SILENCE_MARGIN_MS (at most half the
    jitter) later than the bare plan, however early its packets come; on a clean
    network there is no margin."""
    rng = np.random.default_rng(3)
    talk = [(k * FRAME_MS + rng.uniform(0, 60), k) for k in range(100)]
    arrivals = [*talk, (100 * FRAME_MS, 100), *steady(50, start=150)]  # then on time
    buf = AdaptiveJitterBuffer(ScriptDecoder())
    seen = {}
    real_get = buf.get

    def get(now_ms):
        out = real_get(now_ms)
        if 150 in out and 150 not in seen:  # frame k decodes to the value k
            seen[150] = (now_ms, buf._wanted_ms, buf.jitter_ms, buf._min_rel_ms)
        return out

    buf.get = get
    play(buf, arrivals, 200 * FRAME_MS, quiet_markers=frozenset({100}))
    now, wanted, jitter, min_rel = seen[150]
    delay = now - 150 * FRAME_MS - min_rel
    margin = min(config.JB_SILENCE_MARGIN_MS, jitter / 2)
    assert margin == config.JB_SILENCE_MARGIN_MS
    assert wanted + margin <= delay < wanted + margin + FRAME_MS

    clean = AdaptiveJitterBuffer(dec := ScriptDecoder())
    out, _ = play(
        clean,
        [*steady(20), (20 * FRAME_MS, 20), *steady(20, start=50)],
        80 * 20,
        quiet_markers=frozenset({20}),
    )
    assert decoded_order(dec)[-1] == 69
    assert int(out[50 * FRAME]) == 50  # played at its first pull: no margin


def test_a_slow_playout_clock_does_not_fill_the_buffer():
    """The owner's clock tells the buffer where playout is: a sound card 2 % slower than
    the sender's drops the difference in the silences (no overflow, no growing delay)."""
    arrivals, markers = [], set()
    for spurt in range(30):  # 60 s: 1.6 s of talk, then 0.4 s of DTX silence
        first = 100 * spurt
        arrivals += steady(80, start=first)
        markers.add(first + 79)
    buf = AdaptiveJitterBuffer(dec := ScriptDecoder())
    play(
        buf, arrivals, 3000 * FRAME_MS, period_ms=1.02 * FRAME_MS, quiet_markers=frozenset(markers)
    )
    assert buf.stats.overflow == 0 and buf.stats.late == 0
    assert set(decoded_order(dec)) >= {k for _, k in arrivals if k < 2900} - markers
    assert buf.stats.dtx < 30 * 20  # silence frames were dropped to catch up


def test_restart_when_the_numbering_jumps():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec)
    far = 10**6
    arrivals = steady(20) + [(400 + a[0], far + a[1]) for a in steady(20)]
    play(buf, arrivals, until_ms=50 * FRAME_MS)
    assert buf.stats.restarts == 1
    assert decoded_order(dec)[-1] == far + 19


def test_buffer_is_bounded():
    dec = ScriptDecoder()
    buf = AdaptiveJitterBuffer(dec, max_buffer_ms=200)
    for k in range(100):  # a burst with nobody pulling
        buf.put(k, packet(k), 0.0)
    assert len(buf._packets) <= 10
    assert buf.stats.overflow == 90


def test_duplicates_ignored():
    buf = AdaptiveJitterBuffer(ScriptDecoder())
    assert buf.put(1, packet(1), 0.0)
    assert not buf.put(1, packet(1), 1.0)
    assert buf.stats.duplicate == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_time_stretch_lengths_and_continuity(seed):
    x = voice(1.0, seed=seed)
    step = float(np.max(np.abs(np.diff(x.astype(np.int32)))))
    for f in frames(x)[5:45]:
        short = jbm.compress(f, RATE_HZ)
        long = jbm.stretch(f, RATE_HZ)
        assert RATE_HZ * config.JB_STRETCH_MIN_MS // 1000 <= len(short) < len(f)
        assert len(f) < len(long) <= RATE_HZ * config.JB_STRETCH_MAX_MS // 1000
        for y in (short, long):
            # The frame's edges are kept, so it joins its neighbours as before.
            assert y[0] == f[0] and abs(int(y[-1]) - int(f[-1])) <= step
            assert np.max(np.abs(np.diff(y.astype(np.int32)))) <= 1.5 * step


def test_stretched_stream_has_no_clicks():
    """Through the buffer, with jitter making it stretch and compress, the output stays
    as smooth as the voice itself (no jump larger than the signal's own)."""
    x = voice(12.0, seed=4)
    dec = ScriptDecoder(x)
    buf = AdaptiveJitterBuffer(dec)
    n = len(x) // FRAME
    arrivals = steady(n // 2, jitter_ms=80, seed=5) + steady(n - n // 2, start=n // 2)
    out, _ = play(buf, arrivals, until_ms=(n + 20) * FRAME_MS)
    assert buf.stats.accelerated > 0 and buf.stats.stretched + buf.stats.expanded > 0
    step = float(np.max(np.abs(np.diff(x.astype(np.int32)))))
    voiced = out[np.abs(out) > 0]
    assert len(voiced) > 0.9 * len(x)
    jumps = np.abs(np.diff(out.astype(np.int32)))
    # Concealment here is silence (ScriptDecoder); only joins between real frames count.
    real = (out[:-1] != 0) & (out[1:] != 0)
    assert np.max(jumps[real]) <= 1.5 * step


def test_with_opus_fec_and_jitter_keeps_the_voice():
    if not audio_codec.opus_available():
        pytest.skip("libopus is not installed")
    x = voice(6.0, seed=6)
    enc, dec = audio_codec.OpusEncoder(), audio_codec.OpusDecoder()
    packets = [enc.encode(f) for f in frames(x)]
    rng = np.random.default_rng(7)
    buf = AdaptiveJitterBuffer(dec)
    t, i, out = 3.0, 0, []
    arrivals = sorted(
        (k * FRAME_MS + rng.uniform(0, 40), k) for k in range(len(packets)) if rng.random() > 0.05
    )
    while t < len(packets) * FRAME_MS + 200:
        while i < len(arrivals) and arrivals[i][0] <= t:
            buf.put(arrivals[i][1], packets[arrivals[i][1]], arrivals[i][0])
            i += 1
        out.append(buf.get())
        t += FRAME_MS
    s = buf.stats
    assert s.fec_used > 0 and s.late == 0
    assert s.decoded == len(arrivals)
    y = np.concatenate(out)
    rms_in = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    rms_out = np.sqrt(np.mean(y.astype(np.float64) ** 2))
    assert 0.7 < rms_out / rms_in < 1.3


def test_bad_arguments():
    with pytest.raises(ValueError):
        AdaptiveJitterBuffer(ScriptDecoder(), seq_bits=8)
    with pytest.raises(ValueError):
        AdaptiveJitterBuffer(ScriptDecoder(), quantile=1.0)


def _accelerated_with(frames_ahead: int, amp: float) -> int:
    """Compressions of a tone at ``amp`` while the buffer holds ``frames_ahead`` frames
    more than its one-frame target (capped there, so only the level moves)."""
    from tests.test_audio_forward import tone

    enc = audio_codec.OpusEncoder()
    jb = AdaptiveJitterBuffer(audio_codec.OpusDecoder(), max_target_ms=20)
    packets = [enc.encode(tone(300, k, amp)) for k in range(80)]
    for k in range(frames_ahead):
        jb.put(k, packets[k], 0.0)
    for k in range(frames_ahead, 80):
        jb.put(k, packets[k], 20.0 * (k - frames_ahead))
        jb.get()
    return jb.stats.accelerated


def test_speech_is_compressed_only_far_above_the_target():
    """A compression mid-word shifts the rest of the word: a buffer a little above its
    target waits for a quiet frame; far above (JB_ACCELERATE_IN_SPEECH_MS) it compresses
    speech too."""
    frames_far = int(config.JB_ACCELERATE_IN_SPEECH_MS // 20) + 3
    assert _accelerated_with(3, 6000) == 0  # 60 ms ahead of a 20 ms target: speech waits
    assert _accelerated_with(frames_far, 6000) > 0
    assert _accelerated_with(3, 150) > 0  # quiet frames: compressed
