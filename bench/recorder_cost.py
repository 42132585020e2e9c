"""Benchmark: CPU cost of recording a meeting (recorder.MeetingRecorder), as a fraction of one core.

    .venv/bin/python bench/recorder_cost.py [--seconds 20] [--scenario screen|speaker|all]

Two scenarios, each fed in real time on the recorder's real clock, as the server would:
- ``screen``: the 20 ms "everyone" mix plus a shared screen, 1280x720 JPEG slides at
  5 fps (a counter that changes every second, a moving pointer, a new slide every
  5 s), recorded at 1280x720, 5 fps;
- ``speaker``: the mix plus an active speaker's camera, 320x240 JPEG at 15 fps (the
  moving test pattern with mild noise), recorded letterboxed at 640x360, 15 fps.

Reports the ``recorder`` thread's CPU (from /proc via psutil) and the whole process's
CPU over wall time (the feeding loop only hands over pre-made bytes), the output
bitrate and any dropped items. Encoders are single-threaded (RECORDING_ENCODER_THREADS).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

import config  # noqa: E402
import video_module as vm  # noqa: E402
from recorder import MeetingRecorder  # noqa: E402

RATE = config.AUDIO_RATE_HZ
CHUNK = config.AUDIO_FRAME_SAMPLES


def speech_like(seconds: float) -> list[bytes]:
    """20 ms chunks of voiced harmonics under a syllable envelope (a talker's mix)."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    pcm = (6000 * env * voiced).astype("<i2")
    return [pcm[i : i + CHUNK].tobytes() for i in range(0, n - CHUNK + 1, CHUNK)]


def screen_jpegs(seconds: float, fps: int) -> list[bytes]:
    out = []
    for i in range(int(seconds * fps)):
        img = np.full((720, 1280, 3), 245, np.uint8)
        cv2.rectangle(img, (0, 0), (1280, 90), (120, 60, 20), -1)
        cv2.putText(img, f"Slide {i // (5 * fps) + 1}", (20, 65), 0, 1.6, (255, 255, 255), 3)
        for row in range(6):
            y = 170 + row * 70
            cv2.putText(img, f"- point {row + 1} of slide {i // (5 * fps) + 1}", (60, y), 0, 1.2, 0)
        cv2.putText(img, f"{i // fps:03d}", (900, 650), 0, 4, (30, 30, 200), 8)
        x = 100 + (i * 37) % 1000
        cv2.rectangle(img, (x, 600), (x + 20, 630), (0, 0, 0), -1)  # the pointer
        out.append(vm.encode_jpeg(img, config.SCREEN_JPEG_QUALITY))
    return out


def camera_jpegs(seconds: float, fps: int) -> list[bytes]:
    src = vm.TestPatternSource("Speaker", 320, 240, fps)
    rng = np.random.default_rng(1)
    out = []
    for _ in range(int(seconds * fps)):
        img = src.read().astype(np.int16) + rng.integers(-6, 7, (240, 320, 3), dtype=np.int16)
        out.append(vm.encode_jpeg(np.clip(img, 0, 255).astype(np.uint8)))
    return out


SCENARIOS = {
    "screen": {"size": (1280, 720), "fps": 5, "in_fps": 5, "frames": screen_jpegs},
    "speaker": {"size": (640, 360), "fps": 15, "in_fps": 15, "frames": camera_jpegs},
}


def thread_cpu_s(proc: psutil.Process, native_id: int | None) -> float:
    for t in proc.threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    return 0.0


def run(name: str, seconds: float, folder: Path) -> dict[str, float]:
    sc = SCENARIOS[name]
    audio = speech_like(seconds)
    frames = sc["frames"](seconds, sc["in_fps"])
    proc = psutil.Process()
    rec = MeetingRecorder(folder / f"{name}.webm", video_size=sc["size"], fps=sc["fps"])
    rec_thread = next(t for t in threading.enumerate() if t.name == "recorder")
    cpu0, wall0 = time.process_time(), time.monotonic()
    rec_cpu0 = thread_cpu_s(proc, rec_thread.native_id)
    frame_s = 1 / sc["in_fps"]
    a = v = 0
    end = wall0 + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if a < len(audio) and now >= wall0 + a * CHUNK / RATE:
            rec.add_audio(audio[a])
            a += 1
            continue
        if v < len(frames) and now >= wall0 + v * frame_s:
            rec.add_video(frames[v])
            v += 1
            continue
        next_due = min(wall0 + a * CHUNK / RATE, wall0 + v * frame_s, end)
        time.sleep(max(0.0, next_due - time.monotonic()))
    rec_cpu = thread_cpu_s(proc, rec_thread.native_id) - rec_cpu0
    result = rec.stop()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {
        "recorder_thread_core": rec_cpu / seconds,
        "process_core": cpu / wall,
        "kbit_s": result.bytes * 8 / 1000 / result.duration_s,
        "duration_s": result.duration_s,
        "dropped": sum(v for k, v in result.stats.items() if k.startswith("dropped_")),
        "pictures": result.stats["pictures_decoded"],
        "video_frames": result.stats["video_frames"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    args = ap.parse_args()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    print(f"{args.seconds:.0f} s each, real time; load average {os.getloadavg()[0]:.1f}")
    print("| scenario | recorder thread, core | process, core | kbit/s | frames | dropped |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="recorder-bench-") as tmp:
        for name in names:
            r = run(name, args.seconds, Path(tmp))
            sc = SCENARIOS[name]
            label = f"{name} {sc['size'][0]}x{sc['size'][1]} @ {sc['fps']} fps"
            print(
                f"| {label} | {r['recorder_thread_core']:.3f} | {r['process_core']:.3f} | "
                f"{r['kbit_s']:.0f} | {r['video_frames']:.0f} | {r['dropped']:.0f} |"
            )


if __name__ == "__main__":
    main()
