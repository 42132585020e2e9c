"""Test signals made at test time: tones and a speech-like voice (no files in the repo)."""

from __future__ import annotations

import numpy as np

RATE_HZ = 48000
FRAME = 960


def tone(seconds: float, freq_hz: float = 440.0, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return np.round(amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def voice(seconds: float, seed: int = 1, amplitude: float = 6000.0) -> np.ndarray:
    """A voiced, speech-like signal: gliding pitch (110-170 Hz), 11 harmonics,
    syllable-rate envelope and a little breath noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / RATE_HZ
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.3 + 0.7 * np.sin(2 * np.pi * 2.5 * t) ** 2
    x = x * env + 0.02 * rng.standard_normal(n)
    return np.round(amplitude * x / 2).astype(np.int16)


def frames(x: np.ndarray, size: int = FRAME) -> list[np.ndarray]:
    usable = len(x) - len(x) % size
    return [x[i : i + size] for i in range(0, usable, size)]


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    err = ref - test.astype(np.float64)
    return 10 * np.log10(np.sum(ref * ref) / max(np.sum(err * err), 1e-9))


def best_lag(reference: np.ndarray, test: np.ndarray, max_lag: int) -> int:
    """The delay of ``test`` behind ``reference`` (0..max_lag samples) by cross-correlation."""
    ref = reference.astype(np.float64)
    tst = test.astype(np.float64)
    n = len(ref) - max_lag
    scores = [np.dot(ref[:n], tst[lag : lag + n]) for lag in range(max_lag + 1)]
    return int(np.argmax(scores))


def talker(seconds: float, seed: int = 1, rms: float = 2000.0) -> np.ndarray:
    """Speech-like syllables: 80-250 ms voiced bursts at random pitch (100-250 Hz, gliding)
    with random vowel-like resonances, separated by 30-300 ms pauses. Unlike ``voice`` it
    is not stationary, so a noise suppressor treats it as speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE_HZ)
    out = np.zeros(n)
    i = int(rng.uniform(0.0, 0.1) * RATE_HZ)
    while i < n:
        length = int(rng.uniform(0.08, 0.25) * RATE_HZ)
        f_start, f_end = rng.uniform(100, 250, 2)
        f0 = np.linspace(f_start, f_end, length)
        phase = 2 * np.pi * np.cumsum(f0) / RATE_HZ
        formants = rng.uniform([300, 900, 2200], [900, 2200, 3500])
        syllable = np.zeros(length)
        for k in range(1, 40):
            fk = k * f0
            gain = sum(np.exp(-(((fk - f) / 150.0) ** 2)) for f in formants) + 0.02
            syllable += gain * np.sin(k * phase) * (fk < RATE_HZ / 2 - 1000)
        syllable *= np.hanning(length)
        end = min(n, i + length)
        out[i:end] = syllable[: end - i]
        i = end + int(rng.uniform(0.03, 0.3) * RATE_HZ)
    out *= rms / max(np.sqrt(np.mean(out * out)), 1e-9)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)
