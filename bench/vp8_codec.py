"""Benchmark: VP8 (PyAV/libvpx) encode and decode cost per frame, and a client's CPU for simulcast.

    .venv/bin/python bench/vp8_codec.py [--seconds 4] [--json]

Per size: the camera-like test scene (tests/video_media.py: panning texture,
moving ball, counter) encoded in camera mode at the layer's bitrate and 15 fps,
and a 1920x1080 text slide in screen mode (a new slide every 2 s, unchanged in
between, 10 fps). Reports encode and decode p50/p95 in ms (decode includes the
conversion to BGR the GUI needs) and bytes per frame.

Then the client CPU of issue 11's target, "send 720p + 320x180, decode 24
thumbnails": per second of media, 15 camera pictures of 1280x720 scaled and
encoded as the large (1280x720) and small (320x180) layers, plus 24 x 15 small
frames decoded; measured as process CPU time over media time (1.0 = one core).
Everything runs on one thread, as in the client (one sender thread, one
decoder thread).
"""

from __future__ import annotations

import argparse
import json
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
from simulcast import SimulcastEncoder  # noqa: E402
from tests.video_media import camera_frames, psnr, text_slide  # noqa: E402
from video_codec import Vp8Decoder, Vp8Encoder  # noqa: E402

CAMERA_FPS = config.VIDEO_CAMERA_FPS
THUMBNAILS = 24
CAMERA_SIZES = [
    config.VIDEO_SMALL_LAYER,
    config.VIDEO_LARGE_LAYER_360P,
    config.VIDEO_LARGE_LAYER_720P,
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(frames: list[np.ndarray], enc: Vp8Encoder) -> dict[str, float]:
    dec = Vp8Decoder()
    enc_ms, dec_ms, sizes, scores = [], [], [], []
    for i, img in enumerate(frames):
        t0 = time.perf_counter()
        out = enc.encode(img)
        t1 = time.perf_counter()
        picture = dec.decode(out.data, i)
        t2 = time.perf_counter()
        enc_ms.append((t1 - t0) * 1000)
        dec_ms.append((t2 - t1) * 1000)
        sizes.append(len(out.data))
        scores.append(psnr(img, picture))
    return {
        "encode_p50_ms": statistics.median(enc_ms),
        "encode_p95_ms": percentile(enc_ms, 0.95),
        "decode_p50_ms": statistics.median(dec_ms),
        "decode_p95_ms": percentile(dec_ms, 0.95),
        "bytes_per_frame": statistics.fmean(sizes),
        "keyframe_bytes": sizes[0],
        "psnr_db": statistics.fmean(scores),
        "keyframes": enc.keyframes_out,
    }


def camera_rows(seconds: float) -> list[dict]:
    rows = []
    for spec in CAMERA_SIZES:
        frames = camera_frames(spec.width_px, spec.height_px, int(seconds * CAMERA_FPS))
        enc = Vp8Encoder(spec.width_px, spec.height_px, CAMERA_FPS, spec.bitrate_bps)
        row = measure(frames, enc)
        t0 = time.perf_counter()
        enc.set_bitrate(spec.bitrate_bps * 7 // 10)
        reopen_ms = (time.perf_counter() - t0) * 1000
        row |= {
            "reopen_ms": reopen_ms,
            "what": f"camera {spec.width_px}x{spec.height_px} @ {spec.bitrate_bps // 1000} kbit/s",
            "kbit_s": row["bytes_per_frame"] * 8 * CAMERA_FPS / 1000,
        }
        rows.append(row)
    return rows


def screen_row(seconds: float) -> dict:
    fps = config.SCREEN_VP8_FPS
    w, h = config.SCREEN_VP8_MAX_WIDTH_PX, config.SCREEN_VP8_MAX_HEIGHT_PX
    slides = [text_slide(n, w, h) for n in range(1, 4)]
    n = int(seconds * fps)
    frames = [slides[(i // (2 * fps)) % len(slides)] for i in range(n)]
    enc = Vp8Encoder(w, h, fps, config.SCREEN_VP8_BITRATE_BPS, "screen")
    row = measure(frames, enc)
    static = [len(enc.encode(frames[-1]).data) for _ in range(5)]
    row |= {
        "what": f"screen {w}x{h} text slides @ {fps} fps, new slide every 2 s",
        "kbit_s": row["bytes_per_frame"] * 8 * fps / 1000,
        "static_bytes_per_frame": statistics.fmean(static),
    }
    return row


def client_cpu(seconds: float) -> dict:
    """CPU of one client sending 720p + 320x180 and decoding 24 thumbnails."""
    n = int(seconds * CAMERA_FPS)
    source = camera_frames(1280, 720, n, seed=2)
    thumbs_enc = Vp8Encoder(320, 180, CAMERA_FPS, config.VIDEO_SMALL_LAYER.bitrate_bps)
    thumb_stream = [thumbs_enc.encode(f).data for f in camera_frames(320, 180, n, seed=3)]
    sender = SimulcastEncoder(CAMERA_FPS)
    sender.set_large_wanted(True)
    decoders = [Vp8Decoder() for _ in range(THUMBNAILS)]
    send_cpu = recv_cpu = 0.0
    wall0 = time.perf_counter()
    for i in range(n):
        t0 = time.process_time()
        layers = sender.encode(source[i])
        t1 = time.process_time()
        for dec in decoders:
            dec.decode(thumb_stream[i], i)
        t2 = time.process_time()
        send_cpu += t1 - t0
        recv_cpu += t2 - t1
        assert len(layers) == 2
    wall = time.perf_counter() - wall0
    media_s = n / CAMERA_FPS
    return {
        "media_seconds": media_s,
        "send_cores": send_cpu / media_s,
        "decode_cores": recv_cpu / media_s,
        "total_cores": (send_cpu + recv_cpu) / media_s,
        "wall_per_media_second": wall / media_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="media seconds per measurement")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    rows = [*camera_rows(args.seconds), screen_row(max(args.seconds, 6.0))]
    cpu = client_cpu(args.seconds)
    if args.json:
        print(json.dumps({"codec": rows, "client_cpu": cpu}, indent=1))
        return
    print(
        "| what | encode p50/p95 ms | decode p50/p95 ms | bytes/frame | keyframe bytes "
        "| kbit/s | PSNR dB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['what']} | {r['encode_p50_ms']:.1f} / {r['encode_p95_ms']:.1f} "
            f"| {r['decode_p50_ms']:.2f} / {r['decode_p95_ms']:.2f} "
            f"| {r['bytes_per_frame']:.0f} | {r['keyframe_bytes']} "
            f"| {r['kbit_s']:.0f} | {r['psnr_db']:.1f} |"
        )
    reopen = ", ".join(f"{r['reopen_ms']:.1f}" for r in rows if "reopen_ms" in r)
    print(f"\nset_bitrate (encoder reopened) ms, per camera size: {reopen}")
    static = rows[-1]["static_bytes_per_frame"]
    print(f"\nscreen: an unchanged slide costs {static:.0f} bytes/frame")
    print(
        f"\nclient CPU, send 1280x720 + 320x180 @ {CAMERA_FPS} fps and decode {THUMBNAILS} "
        f"thumbnails @ {CAMERA_FPS} fps: {cpu['total_cores'] * 100:.0f} % of one core "
        f"(send {cpu['send_cores'] * 100:.0f} %, decode {cpu['decode_cores'] * 100:.0f} %)"
    )


if __name__ == "__main__":
    main()
