"""Benchmark: JPEG encode and decode time per frame (OpenCV) at the video and screen sizes.

    .venv/bin/python bench/jpeg_codec.py [--frames 200] [--quality 60]

Frames are the test pattern (bars, text, a moving ball: a camera-like mix of flat
areas and edges) plus mild noise, made at each size. Reports the median and p95 time
per frame and the mean JPEG size. Single-threaded OpenCV (cv2.setNumThreads(1)) so
the number is per core, as in the video-sender thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import config  # noqa: E402
import video_module as vm  # noqa: E402

SIZES = [(320, 240), (640, 480), (1280, 720)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def frames_for(w: int, h: int, n: int) -> list[np.ndarray]:
    src = vm.TestPatternSource("Benchmark", w, h)
    rng = np.random.default_rng(1)
    out = []
    for _ in range(min(n, 30)):
        img = src.read().astype(np.int16) + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--quality", type=int, default=config.VIDEO_JPEG_QUALITY)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    print(f"JPEG quality {args.quality}, {args.frames} frames per size, cv2 {cv2.__version__}")
    print("| size | encode p50 ms | encode p95 ms | decode p50 ms | decode p95 ms | KiB/frame |")
    print("|---|---|---|---|---|---|")
    for w, h in SIZES:
        imgs = frames_for(w, h, args.frames)
        enc, dec, sizes = [], [], []
        for i in range(args.frames):
            img = imgs[i % len(imgs)]
            t0 = time.perf_counter()
            jpeg = vm.encode_jpeg(img, args.quality)
            t1 = time.perf_counter()
            back = vm.decode_jpeg(jpeg)
            t2 = time.perf_counter()
            assert back is not None and back.shape == img.shape
            enc.append((t1 - t0) * 1000)
            dec.append((t2 - t1) * 1000)
            sizes.append(len(jpeg))
        print(
            f"| {w}x{h} | {statistics.median(enc):.2f} | {percentile(enc, 0.95):.2f} | "
            f"{statistics.median(dec):.2f} | {percentile(dec, 0.95):.2f} | "
            f"{statistics.mean(sizes) / 1024:.1f} |"
        )


if __name__ == "__main__":
    main()
