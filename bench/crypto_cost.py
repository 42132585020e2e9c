"""Benchmark: what sealing and opening media datagrams costs (media_crypto.MediaCipher).

    .venv/bin/python bench/crypto_cost.py [--seconds 0.5]

Per datagram, for the sizes FusionMeet sends: a register/keepalive (empty), an
audio frame (882 bytes), a levels datagram (150 bytes for 50 people) and a
video datagram (up to MAX_DATAGRAM_BYTES). Also the cost of refusing a forged
datagram (authentication fails) and a replayed one (refused before decryption),
and an estimate of the server's added CPU at 20 participants.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import config  # noqa: E402
import media_crypto  # noqa: E402

HEADER = struct.Struct("!BBHII")
SIZES = {
    "keepalive": 0,
    "levels": 150,
    "audio": config.AUDIO_FRAME_SAMPLES * config.AUDIO_SAMPLE_WIDTH_BYTES,
    "video_8k": 8000,
    "video_max": config.MAX_DATAGRAM_BYTES - 12 - media_crypto.SEAL_OVERHEAD_BYTES,
}
# Traffic one participant causes per second at the server (protocol 1 figures):
# audio in and its N-1 mix out (50/s each way), levels out (5/s), one ~8 KB video
# datagram in at 15 fps, forwarded to N-1 others.
AUDIO_PER_S = 1000 // config.AUDIO_FRAME_MS
LEVELS_PER_S = round(1 / config.LEVELS_INTERVAL_S)


def per_call_us(fn, seconds: float) -> float:
    """Median-free, simple: calls ``fn`` for about ``seconds`` and returns µs per call."""
    n, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(100):
            fn()
        n += 100
        now = time.perf_counter()
        if now >= deadline:
            return (now - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = ap.parse_args(argv)
    key = media_crypto.new_media_key()
    results: dict[str, dict[str, float]] = {}
    hdr = HEADER.pack(ord("a"), media_crypto.SEALED_VERSION, 7, 1, 1000)
    for name, size in SIZES.items():
        payload = os.urandom(size)
        client = media_crypto.MediaCipher(key, media_crypto.CLIENT_SIDE)
        server = media_crypto.MediaCipher(key, media_crypto.SERVER_SIDE)
        seal_us = per_call_us(lambda p=payload, c=client: c.seal(hdr, p), args.seconds)
        # Open needs a fresh counter each time: pre-seal a batch, open it in order.
        batch = [client.seal(hdr, payload) for _ in range(20000 if size < 10000 else 3000)]
        t0 = time.perf_counter()
        for dg in batch:
            server.open(dg)
        open_us = (time.perf_counter() - t0) / len(batch) * 1e6
        forged = bytearray(client.seal(hdr, payload))
        forged[-1] ^= 1
        forged_b = bytes(forged)

        def refuse(d: bytes = forged_b, s: media_crypto.MediaCipher = server) -> None:
            try:
                s.open(d)
            except media_crypto.DatagramRejected:
                pass

        forged_us = per_call_us(refuse, args.seconds)
        replay_us = per_call_us(lambda d=batch[-1], s=server: refuse(d, s), args.seconds)
        results[name] = {
            "bytes": size,
            "seal_us": round(seal_us, 2),
            "open_us": round(open_us, 2),
            "refuse_forged_us": round(forged_us, 2),
            "refuse_replay_us": round(replay_us, 2),
        }
        print(
            f"{name:>10} {size:6d} B: seal {seal_us:6.2f} µs  open {open_us:6.2f} µs  "
            f"forged {forged_us:6.2f} µs  replayed {replay_us:5.2f} µs",
            flush=True,
        )
    n = 20
    a, v, lv = results["audio"], results["video_8k"], results["levels"]
    per_s_us = n * (
        AUDIO_PER_S * (a["open_us"] + a["seal_us"])
        + LEVELS_PER_S * lv["seal_us"]
        + config.VIDEO_FPS * (v["open_us"] + (n - 1) * v["seal_us"])
    )
    print(
        f"estimate, {n} participants (audio 50/s each way, levels 5/s, one 8 KB video "
        f"datagram at {config.VIDEO_FPS} fps resealed for {n - 1} others): "
        f"{per_s_us / 1e4:.2f} % of one core"
    )
    results["server_20_participants"] = {"cpu_percent_one_core": round(per_s_us / 1e4, 2)}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
