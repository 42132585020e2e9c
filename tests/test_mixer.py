"""The pure N-1 mixer: correctness, clipping, jitter queues, silence and levels."""

from __future__ import annotations

import numpy as np
import pytest

import utils
from audio_mixer import AudioMixer

N = 441


def frame(values) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


def const(v: int) -> bytes:
    return frame(np.full(N, v))


def samples(b: bytes) -> np.ndarray:
    return np.frombuffer(b, "<i2")


def test_n_minus_1_each_listener_hears_only_the_others():
    rng = np.random.default_rng(3)
    m = AudioMixer(N, jitter_frames=4, hangover_frames=0)
    voices = {pid: rng.integers(-8000, 8000, N).astype("<i2") for pid in (1, 2, 3)}
    for pid in (1, 2, 3, 4):
        m.add(pid)
    for pid, v in voices.items():
        assert m.push(pid, v.tobytes())
    result = m.tick()
    assert result.active == {1, 2, 3}
    assert set(result.mixes) == {1, 2, 3, 4}  # the silent listener 4 gets a mix too
    for listener in (1, 2, 3, 4):
        expected = sum(v.astype(np.int32) for pid, v in voices.items() if pid != listener)
        assert np.array_equal(samples(result.mixes[listener]), expected.astype("<i2"))


def test_single_talker_hears_silence_others_hear_it():
    m = AudioMixer(N, hangover_frames=0)
    m.add(1)
    m.add(2)
    m.push(1, const(1234))
    r = m.tick()
    assert not samples(r.mixes[1]).any()
    assert (samples(r.mixes[2]) == 1234).all()


def test_clipping_saturates_instead_of_wrapping():
    m = AudioMixer(N, hangover_frames=0)
    for pid in (1, 2, 3, 4):
        m.add(pid)
    m.push(1, const(30000))
    m.push(2, const(30000))
    m.push(3, const(-30000))
    m.push(4, const(-30000))
    r = m.tick()
    # listener 3 hears 30000 + 30000 - 30000 = 30000 (no intermediate wrap)
    assert (samples(r.mixes[3]) == 30000).all()
    m.push(1, const(30000))
    m.push(2, const(30000))
    m.push(3, const(20000))
    r = m.tick()
    assert (samples(r.mixes[4]) == 32767).all()  # 80000 clipped, not wrapped
    m.push(3, const(-32768))
    m.push(4, const(-32768))
    r = m.tick()
    assert (samples(r.mixes[1]) == -32768).all()


def test_jitter_queue_drops_the_oldest_when_full():
    m = AudioMixer(N, jitter_frames=3, hangover_frames=0)
    m.add(1)
    m.add(2)
    for v in range(1, 6):  # 5 frames into a queue of 3
        assert m.push(1, const(v))
    assert m.queued(1) == 3 and m.dropped == 2
    heard = [int(samples(m.tick().mixes[2])[0]) for _ in range(3)]
    assert heard == [3, 4, 5]  # the oldest two were dropped, order kept
    assert m.queued(1) == 0


def test_a_standing_queue_is_trimmed_once_per_window():
    m = AudioMixer(N, jitter_frames=4, hangover_frames=0, standing_queue_ticks=10)
    m.add(1)
    m.add(2)
    value = 0
    for _ in range(3):  # a burst: 3 frames waiting, then one frame per tick
        value += 1
        m.push(1, const(value))
    heard = []
    for _ in range(10):  # the first window (partial for new participants): not judged
        value += 1
        m.push(1, const(value))
        heard.append(int(samples(m.tick().mixes[2])[0]))
    assert m.trimmed == 0 and m.queued(1) == 3
    for _ in range(20):  # two full windows with frames always waiting
        value += 1
        m.push(1, const(value))
        heard.append(int(samples(m.tick().mixes[2])[0]))
    assert m.trimmed == 2 and m.queued(1) == 1  # 40 ms less delay
    assert heard == sorted(heard) and len(set(heard)) == len(heard)  # order kept
    assert int(samples(m.tick().mixes[2])[0]) == value  # the newest frame is next


def test_ordinary_jitter_is_not_trimmed():
    m = AudioMixer(N, jitter_frames=4, hangover_frames=0, standing_queue_ticks=10)
    m.add(1)
    m.add(2)
    for t in range(100):
        # Frames arrive in pairs every other tick: the queue empties every second tick.
        if t % 2 == 0:
            m.push(1, const(t + 1))
            m.push(1, const(t + 2))
        m.tick()
    assert m.trimmed == 0 and m.dropped == 0


def test_one_frame_per_participant_per_tick():
    m = AudioMixer(N, jitter_frames=4, hangover_frames=0)
    m.add(1)
    m.add(2)
    m.push(1, const(10))
    m.push(1, const(20))
    r = m.tick()
    assert r.active == {1} and samples(r.mixes[2])[0] == 10
    r = m.tick()
    assert r.active == {1} and samples(r.mixes[2])[0] == 20


def test_silence_sends_nothing_after_the_hangover():
    m = AudioMixer(N, hangover_frames=2)
    m.add(1)
    m.add(2)
    assert m.tick().mixes == {}  # nobody ever talked
    m.push(1, const(5))
    assert m.tick().mixes[2] == const(5)
    for _ in range(2):  # hangover: silence frames keep the stream going
        r = m.tick()
        assert r.active == set() and r.mixes[2] == const(0) and r.mixes[1] == const(0)
    assert m.tick().mixes == {}


@pytest.mark.parametrize("size", [0, 1, N * 2 - 1, N * 2 + 1, N * 4])
def test_wrong_sizes_and_unknown_ids_are_refused(size):
    m = AudioMixer(N)
    m.add(1)
    assert not m.push(1, b"\x00" * size)
    assert not m.push(99, const(1))
    assert m.queued(1) == 0


def test_add_remove():
    m = AudioMixer(N, hangover_frames=0)
    m.add(1)
    m.add(2)
    m.add(2)  # twice is harmless
    assert sorted(m.participants) == [1, 2] and len(m) == 2
    m.push(2, const(7))
    m.remove(2)
    m.remove(2)
    r = m.tick()
    assert r.mixes == {} and m.participants == [1]


def test_levels_follow_rms_and_reset():
    m = AudioMixer(N, hangover_frames=0)
    for pid in (1, 2, 3):
        m.add(pid)
    t = np.arange(N)
    loud = (20000 * np.sin(2 * np.pi * 440 * t / 22050)).astype("<i2")
    quiet = (loud // 100).astype("<i2")
    m.push(1, loud.tobytes())
    m.push(2, quiet.tobytes())
    m.tick()
    levels = m.take_levels()
    rms_loud = float(np.sqrt(np.mean(loud.astype(np.float64) ** 2)))
    assert levels[1] == utils.level_from_rms(rms_loud)
    assert levels[1] > levels[2] > levels[3] == 0
    assert m.take_levels() == {1: 0, 2: 0, 3: 0}


def test_bad_parameters():
    with pytest.raises(ValueError):
        AudioMixer(0)
    with pytest.raises(ValueError):
        AudioMixer(N, jitter_frames=0)
    with pytest.raises(ValueError):
        AudioMixer(N, standing_queue_ticks=0)
