"""Benchmark of the session's Opus mixer: time of one 20 ms tick for N participants, K talking.

    .venv/bin/python bench/mixer.py --participants 10 40 --talkers 1 3 --ticks 500

Every talker's Opus packet (pre-encoded speech-like tones) is pushed into the mixer
each tick, then ``tick()`` decodes every talker's jitter buffer, makes the K+1
mixes and encodes each once. Reported per (N, K): median and 99th percentile tick
time (push + tick, microseconds), the encodes per tick, and the share of the 20 ms
period on one core: the server's audio CPU without sockets.
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
from audio_codec import OpusEncoder  # noqa: E402
from audio_mixer import AudioMixer  # noqa: E402


def talker_packets(k: int, count: int) -> list[bytes]:
    n, rate = config.AUDIO_FRAME_SAMPLES, config.AUDIO_RATE_HZ
    enc = OpusEncoder()
    f0 = 110.0 + 23 * k
    out = []
    for i in range(count):
        t = (np.arange(n) + i * n) / rate
        x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 12))
        x *= 6000 * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))  # syllable-like envelope
        out.append(enc.encode(np.round(x).astype("<i2")) or b"\x08")
    return out


def run(n: int, k: int, ticks: int) -> tuple[float, float, int]:
    streams = {pid: talker_packets(pid, ticks) for pid in range(1, k + 1)}
    m = AudioMixer()
    for pid in range(1, n + 1):
        m.add(pid)
    times, encodes = [], 0
    for t in range(ticks):
        t0 = time.perf_counter()
        for pid, packets in streams.items():
            m.push(pid, t, packets[t], 20.0 * t)
        result = m.tick()
        times.append(time.perf_counter() - t0)
        encodes = max(encodes, result.encodes)
    us = np.array(times[ticks // 10 :]) * 1e6
    return float(np.median(us)), float(np.percentile(us, 99)), encodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--talkers", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--ticks", type=int, default=500)
    args = ap.parse_args()
    period_us = 1e6 * config.AUDIO_FRAME_SAMPLES / config.AUDIO_RATE_HZ
    print(
        "| participants | talkers | encodes/tick | median tick (us) | p99 tick (us) "
        "| share of 20 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.participants:
        for k in args.talkers:
            med, p99, enc = run(n, k, args.ticks)
            print(f"| {n} | {k} | {enc} | {med:.0f} | {p99:.0f} | {100 * med / period_us:.1f} % |")


if __name__ == "__main__":
    main()
