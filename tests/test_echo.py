"""The echo canceller: a known 60 ms echo path removed, near-end speech kept, fallbacks."""

from __future__ import annotations

import logging
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

import config
import echo_canceller
from audio_module import resample
from tests.signals import FRAME, RATE_HZ, frames, talker

pytestmark = pytest.mark.skipif(
    not echo_canceller.echo_available(),
    reason="libspeexdsp is not installed (apt install libspeexdsp1)",
)

ECHO_DELAY_MS = 60
FAR_ONLY_S = 8


def echo_path(seed: int = 0) -> np.ndarray:
    """A loudspeaker-to-microphone path: 60 ms of travel and device delay, the direct
    sound at -6 dB, then 30 ms of decaying reflections."""
    rng = np.random.default_rng(seed)
    d = RATE_HZ * ECHO_DELAY_MS // 1000
    tail = RATE_HZ * 30 // 1000
    h = np.zeros(d + tail)
    h[d] = 0.5
    decay = np.exp(-np.arange(tail - 1) / (0.005 * RATE_HZ))
    h[d + 1 :] = rng.standard_normal(tail - 1) * decay * 0.05
    return h


def scene(far: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Far end alone for FAR_ONLY_S, then double talk. Returns far, near-at-mic, mic."""
    far = far.astype(np.float64)
    n = len(far)
    near_at_mic = np.zeros(n)
    start = FAR_ONLY_S * RATE_HZ
    m = min(len(near), n - start)
    near_at_mic[start : start + m] = near[:m]
    noise = np.random.default_rng(1).standard_normal(n) * 30
    mic = np.convolve(far, echo_path())[:n] + near_at_mic + noise
    return far.astype(np.int16), near_at_mic, np.clip(np.round(mic), -32768, 32767)


def run(canceller: echo_canceller.EchoCanceller, far: np.ndarray, mic: np.ndarray) -> np.ndarray:
    out = []
    for f, m in zip(frames(far), frames(mic.astype(np.int16)), strict=True):
        canceller.playback(f)
        out.append(canceller.capture(m))
    return np.concatenate(out).astype(np.float64)


def erle_db(mic: np.ndarray, out: np.ndarray) -> float:
    """Echo return loss enhancement over the far-end-only part after 4 s of convergence."""
    seg = slice(4 * RATE_HZ, FAR_ONLY_S * RATE_HZ)
    return float(10 * np.log10(np.sum(mic[seg] ** 2) / np.sum(out[seg] ** 2)))


def near_end_loss_db(near: np.ndarray, out: np.ndarray, delay_samples: int) -> float:
    """How much quieter the near-end speech is in the output during double talk: the
    least-squares gain of the near-end signal in the output (echo does not correlate)."""
    seg = slice(FAR_ONLY_S * RATE_HZ + RATE_HZ // 2, len(near) - RATE_HZ)
    ref = near[seg]
    got = out[seg.start + delay_samples : seg.stop + delay_samples]
    return float(-20 * np.log10(abs(np.dot(got, ref) / np.dot(ref, ref))))


def canceller_delay(c: echo_canceller.EchoCanceller) -> int:
    # One block of the preprocessor, less the few samples of speex's pre-emphasis.
    return int(c.delay_ms * RATE_HZ / 1000) - 4


def espeak(tmp: Path, name: str, text: str, voice: str) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (scripts/bootstrap.sh test installs it)")
    path = tmp / f"{name}.wav"
    subprocess.run([exe, "-v", voice, "-w", str(path), text], check=True, timeout=30)
    with wave.open(str(path)) as wf:
        raw, rate = wf.readframes(wf.getnframes()), wf.getframerate()
    x = resample(np.frombuffer(raw, "<i2"), rate, RATE_HZ).astype(np.float64)
    return x


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    tmp = tmp_path_factory.mktemp("speech")
    far = espeak(
        tmp,
        "far",
        "The quick brown fox jumps over the lazy dog. A journey of a thousand miles "
        "begins with a single step. Please call Stella and ask her to bring these things.",
        "en-us",
    )
    near = espeak(
        tmp,
        "near",
        "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a "
        "snack for her brother Bob.",
        "en-gb+f3",
    )
    far = np.concatenate([far, far])[: 16 * RATE_HZ]
    far *= 3000 / np.sqrt(np.mean(far**2))
    near *= 2000 / np.sqrt(np.mean(near**2))
    return far, near


def test_speech_echo_removed_and_near_end_kept(speech):
    far_sig, near_sig = speech
    far, near, mic = scene(far_sig, near_sig)
    c = echo_canceller.EchoCanceller(agc=False)  # AGC would change the level on purpose
    out = run(c, far, mic)
    erle = erle_db(mic, out)
    loss = near_end_loss_db(near, out, canceller_delay(c))
    # Measured: ERLE ~32 dB, near-end loss ~1.7 dB.
    assert erle >= 25, erle
    assert loss <= 3, loss


def test_synthetic_echo_removed_far_end_only():
    far, _, mic = scene(talker(FAR_ONLY_S, seed=21, rms=3000), np.zeros(0))
    c = echo_canceller.EchoCanceller(agc=False)
    out = run(c, far, mic)
    assert erle_db(mic, out) >= 25


def test_no_far_end_keeps_the_voice_and_adds_one_block_of_delay(speech):
    near = speech[1][: 4 * RATE_HZ]
    c = echo_canceller.EchoCanceller(agc=False)
    silence = np.zeros(len(near), np.int16)
    out = run(c, silence, near)
    assert c.delay_ms == config.AEC_BLOCK_MS
    d = canceller_delay(c)
    seg = slice(RATE_HZ, 3 * RATE_HZ)
    gain = np.dot(out[seg.start + d : seg.stop + d], near[seg]) / np.dot(near[seg], near[seg])
    assert -20 * np.log10(gain) <= 3


def test_noise_is_suppressed():
    rng = np.random.default_rng(3)
    noise = np.round(rng.standard_normal(4 * RATE_HZ) * 300).astype(np.int16)
    c = echo_canceller.EchoCanceller(echo=False, agc=False)
    out = run(c, np.zeros(len(noise), np.int16), noise)
    tail = slice(2 * RATE_HZ, None)
    reduction = 10 * np.log10(np.sum(noise[tail].astype(np.float64) ** 2) / np.sum(out[tail] ** 2))
    assert reduction >= 10


def test_frames_as_bytes_and_wrong_sizes():
    c = echo_canceller.EchoCanceller()
    out = c.capture(bytes(2 * FRAME))
    assert out.dtype == np.int16 and len(out) == FRAME
    c.playback(bytes(2 * FRAME))
    with pytest.raises(ValueError):
        c.capture(bytes(10))
    with pytest.raises(ValueError):
        c.playback(np.zeros(FRAME + 1, np.int16))
    with pytest.raises(ValueError):
        echo_canceller.EchoCanceller(frame_samples=960, block_samples=700)


def test_playback_queue_is_bounded():
    c = echo_canceller.EchoCanceller()
    for _ in range(config.AEC_PLAYBACK_QUEUE_FRAMES + 5):
        c.playback(np.zeros(FRAME, np.int16))
    assert len(c._queue) == config.AEC_PLAYBACK_QUEUE_FRAMES
    assert c.playback_dropped == 5
    c.close()
    c.close()  # idempotent


def test_missing_library_passes_frames_through(monkeypatch, caplog):
    monkeypatch.setattr(echo_canceller, "_lib", None)
    monkeypatch.setenv(config.AEC_LIBRARY_ENV, "/nonexistent/libspeexdsp.so.1")
    with caplog.at_level(logging.WARNING, logger="echo_canceller"):
        c = echo_canceller.EchoCanceller()
    assert not c.available
    assert "Echo cancellation is off" in c.unavailable_reason
    assert "Echo cancellation is off" in caplog.text
    frame = talker(0.02, seed=9)[:FRAME]
    c.playback(frame)
    assert np.array_equal(c.capture(frame), frame)
