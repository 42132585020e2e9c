"""Benchmark of the pure N-1 mixer: time of one tick for N talking participants.

    .venv/bin/python bench/mixer.py --participants 2 5 10 25 50 --ticks 2000

Every participant pushes one random 441-sample frame per tick, then ``tick()``
mixes. Reported per N: median and 99th percentile tick time (push + tick, in
microseconds) and the share of the 20 ms frame period it uses on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import config  # noqa: E402
from audio_mixer import AudioMixer  # noqa: E402


def run(n: int, ticks: int) -> tuple[float, float]:
    rng = np.random.default_rng(n)
    frames = [
        rng.integers(-8000, 8000, config.AUDIO_FRAME_SAMPLES).astype("<i2").tobytes()
        for _ in range(16)
    ]
    m = AudioMixer(config.AUDIO_FRAME_SAMPLES)
    for pid in range(1, n + 1):
        m.add(pid)
    times = []
    for t in range(ticks):
        t0 = time.perf_counter()
        for pid in range(1, n + 1):
            m.push(pid, frames[(t + pid) % len(frames)])
        result = m.tick()
        times.append(time.perf_counter() - t0)
        assert len(result.mixes) == n
    us = np.array(times) * 1e6
    return float(np.median(us)), float(np.percentile(us, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, nargs="+", default=[2, 5, 10, 25, 50])
    ap.add_argument("--ticks", type=int, default=2000)
    args = ap.parse_args()
    period_us = 1e6 * config.AUDIO_FRAME_SAMPLES / config.AUDIO_RATE_HZ
    print("| participants | median tick (us) | p99 tick (us) | share of 20 ms period |")
    print("|---:|---:|---:|---:|")
    for n in args.participants:
        med, p99 = run(n, args.ticks)
        print(f"| {n} | {med:.0f} | {p99:.0f} | {100 * med / period_us:.2f} % |")


if __name__ == "__main__":
    main()
