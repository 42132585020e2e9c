"""The server's audio mixing: the pure K+1 mix plan, and the session's Opus mixer.

The plan is checked sample for sample; the Opus path by what each listener's decoder
hears (FFT: a talker's own tone is absent from its mix, every other talker's is there,
scaled by the listener's gains).
"""

from __future__ import annotations

import numpy as np
import pytest

import utils
from audio_codec import OpusDecoder, OpusEncoder
from audio_mixer import CUSTOM, OWN, SHARED, AudioMixer, plan_mixes

N = 960  # 20 ms at 48 kHz
RATE = 48000
# Tones on exact FFT bins of a 20 ms frame (50 Hz apart), well inside wideband Opus.
TONES = {1: 400, 2: 700, 3: 1100, 4: 1500, 5: 1900}


def tone(freq: float, k: int, amp: float = 6000.0) -> np.ndarray:
    t = (np.arange(N) + k * N) / RATE
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype("<i2")


def const(v: int) -> np.ndarray:
    return np.full(N, v, "<i2")


# --- the pure plan ----------------------------------------------------------------


def test_plan_each_listener_hears_exactly_the_others():
    rng = np.random.default_rng(3)
    frames = {pid: rng.integers(-8000, 8000, N).astype("<i2") for pid in (1, 2, 3)}
    plan = plan_mixes(frames, [1, 2, 3, 4, 5])
    for listener in (1, 2, 3, 4, 5):
        expected = sum(v.astype(np.int32) for pid, v in frames.items() if pid != listener)
        heard = plan.mixes[plan.listens[listener]]
        assert np.array_equal(heard, np.clip(expected, -32768, 32767).astype("<i2"))


def test_plan_k_talkers_make_k_plus_1_mixes_for_40_listeners():
    frames = {pid: const(100 * pid) for pid in (7, 8, 9)}
    plan = plan_mixes(frames, [*range(100, 140), 7, 8, 9])
    assert len(plan.mixes) == 4
    assert set(plan.mixes) == {SHARED, (OWN, 7), (OWN, 8), (OWN, 9)}
    assert all(plan.listens[p] == SHARED for p in range(100, 140))
    assert plan.listens[8] == (OWN, 8)
    assert (plan.mixes[SHARED] == 2400).all() and (plan.mixes[(OWN, 8)] == 1600).all()


def test_plan_custom_gains_get_their_own_mix():
    frames = {1: const(1000), 2: const(2000)}
    gains = {3: {1: 2.0}, 4: {2: 0.0}, 5: {1: 1.0}}  # 5's gain is neutral
    plan = plan_mixes(frames, [1, 2, 3, 4, 5], gains)
    assert plan.listens[3] == (CUSTOM, 3) and (plan.mixes[(CUSTOM, 3)] == 4000).all()
    assert plan.listens[4] == (CUSTOM, 4) and (plan.mixes[(CUSTOM, 4)] == 1000).all()
    assert plan.listens[5] == SHARED and (plan.mixes[SHARED] == 3000).all()
    assert len(plan.mixes) == 5  # shared, own 1, own 2, custom 3, custom 4


def test_plan_a_talker_with_gains_still_does_not_hear_itself():
    frames = {1: const(1000), 2: const(2000)}
    plan = plan_mixes(frames, [1, 2], {1: {2: 0.5}})
    assert (plan.mixes[plan.listens[1]] == 1000).all()


def test_plan_clips_instead_of_wrapping():
    frames = {1: const(30000), 2: const(30000), 3: const(-30000), 4: const(-30000)}
    plan = plan_mixes(frames, [1, 2, 3, 4, 5])
    assert (plan.mixes[plan.listens[3]] == 30000).all()  # no intermediate wrap
    plan = plan_mixes({1: const(30000), 2: const(30000), 3: const(20000)}, [4])
    assert (plan.mixes[plan.listens[4]] == 32767).all()
    plan = plan_mixes({1: const(30000)}, [2], {2: {1: 2.0}})
    assert (plan.mixes[plan.listens[2]] == 32767).all()


def test_plan_of_nobody_talking_is_empty():
    plan = plan_mixes({}, [1, 2])
    assert plan.mixes == {} and plan.listens == {}


# --- the Opus mixer ---------------------------------------------------------------


class Talkers:
    """Opus encoders sending tones into a mixer, one packet per tick."""

    def __init__(self, mixer: AudioMixer, talkers: list[int]) -> None:
        self.mixer = mixer
        self.enc = {pid: OpusEncoder() for pid in talkers}
        self.k = 0

    def step(self, skip: set[int] = frozenset()) -> None:
        for pid, enc in self.enc.items():
            packet = enc.encode(tone(TONES[pid], self.k))
            if packet and pid not in skip:
                assert self.mixer.push(pid, self.k, packet, 20.0 * self.k)
        self.k += 1


def spectrum(pcm: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))


def level_at(spec: np.ndarray, freq: float, rate: int, n: int) -> float:
    b = int(round(freq * n / rate))
    return float(spec[b - 2 : b + 3].max())


def run_mixer(listeners: list[int], talkers: list[int], gains=None, ticks: int = 40):
    m = AudioMixer(hangover_frames=0, forward=False)
    for pid in listeners:
        m.add(pid)
    for listener, g in (gains or {}).items():
        for talker, v in g.items():
            m.set_gain(listener, talker, v)
    src = Talkers(m, talkers)
    dec = {pid: OpusDecoder() for pid in listeners}
    heard: dict[int, list[np.ndarray]] = {pid: [] for pid in listeners}
    encodes = []
    for _ in range(ticks):
        src.step()
        r = m.tick()
        encodes.append(r.encodes)
        for pid in listeners:
            if pid in r.packets:
                heard[pid].append(dec[pid].decode(r.packets[pid]))
    return m, {p: np.concatenate(v[-20:]) for p, v in heard.items() if v}, encodes


def test_every_listener_hears_every_other_talker_and_not_itself():
    listeners = [1, 2, 3, 10, 11, 12]
    m, heard, encodes = run_mixer(listeners, [1, 2, 3])
    assert max(encodes) == 4  # K + 1 for K = 3 talkers, however many listen
    n = len(heard[10])
    for listener in listeners:
        spec = spectrum(heard[listener])
        floor = float(np.median(spec))
        levels = {t: level_at(spec, TONES[t], RATE, n) for t in (1, 2, 3)}
        others = [lv for t, lv in levels.items() if t != listener]
        assert min(others) > 1000 * floor, (listener, levels)
        if listener in levels:  # its own voice: at least 40 dB below the others
            assert levels[listener] < 0.01 * min(others), (listener, levels)


def test_forty_participants_three_talking_encode_four_mixes():
    listeners = list(range(1, 41))
    _, heard, encodes = run_mixer(listeners, [1, 2, 3], ticks=10)
    assert encodes[-1] == 4
    assert len(heard) == 40


def test_listener_gains_are_applied_by_the_server():
    # Listener 10 hears talker 1 at 200 % and mutes talker 2; listener 11 has no gains.
    _, heard, encodes = run_mixer([1, 2, 10, 11], [1, 2], gains={10: {1: 2.0, 2: 0.0}})
    assert max(encodes) == 4  # shared, own 1, own 2, custom 10
    n = len(heard[10])
    s10, s11 = spectrum(heard[10]), spectrum(heard[11])
    ratio1 = level_at(s10, TONES[1], RATE, n) / level_at(s11, TONES[1], RATE, n)
    assert 1.7 < ratio1 < 2.3
    assert level_at(s10, TONES[2], RATE, n) < 0.03 * level_at(s11, TONES[2], RATE, n)


def test_gains_reset_to_neutral_and_removed_with_the_participant():
    m = AudioMixer(forward=False)
    for pid in (1, 2, 3):
        m.add(pid)
    m.set_gain(1, 2, 0.5)
    m.set_gain(1, 3, 0.0)
    m.set_gain(1, 99, 0.5)  # unknown: ignored
    assert m.gains(1) == {2: 0.5, 3: 0.0}
    m.set_gain(1, 2, 1.0)
    assert m.gains(1) == {3: 0.0}
    m.remove(3)
    assert m.gains(1) == {}


def test_a_lost_packet_is_recovered_from_fec_and_reordered_ones_put_in_place():
    m = AudioMixer(hangover_frames=0, forward=False)
    m.add(1)
    m.add(2)
    enc = OpusEncoder()
    packets = [enc.encode(tone(TONES[1], k)) for k in range(60)]
    for k in range(30):  # warm up: a clean stream
        m.push(1, k, packets[k], 20.0 * k)
        m.tick()
    # Packet 31 arrives before 30 (reordered); 40 is lost with 41 already there.
    m.push(1, 31, packets[31], 20.0 * 30)
    m.push(1, 30, packets[30], 20.0 * 30 + 1)
    m.tick()
    for k in range(32, 60):
        if k != 40:
            m.push(1, k, packets[k], 20.0 * (k - 1))
        m.tick()
    stats = m.stats(1)
    assert stats["reordered"] == 1 and stats["late"] == 0
    assert stats["fec_used"] + stats["concealed"] >= 1
    assert stats["decoded"] >= 57


def test_silence_sends_nothing_after_the_hangover():
    m = AudioMixer(hangover_frames=3, forward=False)
    m.add(1)
    m.add(2)
    src = Talkers(m, [1])
    for _ in range(5):
        src.step()
        assert 2 in m.tick().packets
    counts, last = [], None
    for _ in range(60):  # talker stops sending
        r = m.tick()
        counts.append(len(r.packets))
        last = r.packets.get(2, last)
    assert counts[-10:] == [0] * 10
    # The mix ended with the encoder's "went quiet" marker: the listener plays silence.
    assert last is not None and OpusDecoder().is_dtx(last)


def test_push_refuses_unknown_ids_and_duplicates():
    m = AudioMixer(forward=False)
    m.add(1)
    packet = OpusEncoder().encode(tone(400, 0))
    assert not m.push(99, 0, packet, 0.0)
    assert m.push(1, 0, packet, 0.0)
    assert not m.push(1, 0, packet, 1.0)


def test_a_corrupt_packet_is_concealed_not_raised():
    m = AudioMixer(hangover_frames=0, forward=False)
    m.add(1)
    m.add(2)
    enc = OpusEncoder()
    for k in range(5):
        m.push(1, k, enc.encode(tone(400, k)) if k != 2 else b"\xff\xff\xff\xff", 20.0 * k)
        m.tick()
    assert m.stats(1)["corrupt"] == 1


def test_levels_follow_the_talkers_and_reset():
    m = AudioMixer(hangover_frames=0, forward=False)
    for pid in (1, 2):
        m.add(pid)
    src = Talkers(m, [1])
    for _ in range(5):
        src.step()
        m.tick()
    levels = m.take_levels()
    assert levels[1] > 100 and levels[2] == 0
    assert m.take_levels() == {1: 0, 2: 0}
    assert utils.level_from_rms(0) == 0


def test_add_remove():
    m = AudioMixer(forward=False)
    m.add(1)
    m.add(1)
    m.add(2)
    assert sorted(m.participants) == [1, 2] and len(m) == 2
    m.remove(1)
    m.remove(1)
    assert m.participants == [2]


def test_bad_parameters():
    with pytest.raises(ValueError):
        AudioMixer(0)
    with pytest.raises(ValueError):
        AudioMixer(hangover_frames=-1)
