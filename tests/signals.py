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
