"""Benchmark: what one participant's microphone costs on the wire (Opus, protocol 2).

    .venv/bin/python bench/audio_bitrate.py [--seconds 20]

espeak-ng speech (the same sentences as bench/pesq_audio.py) and digital silence
(a participant whose microphone is on in a quiet room) through the client's own
encoder path, ``ConferenceClient.send_audio``'s ``OpusEncoder`` with FusionMeet's
settings, 20 ms at a time: packets sent, Opus payload kbit/s, and kbit/s on the
wire with the 12-byte FusionMeet header and IPv4 + UDP headers (28 bytes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

import config  # noqa: E402
import utils  # noqa: E402
from audio_codec import OpusEncoder  # noqa: E402
from audio_module import AudioFormat, WavFileSource  # noqa: E402

IP_UDP_BYTES = 28


def measure(pcm: np.ndarray) -> dict[str, float]:
    enc = OpusEncoder()
    n = config.AUDIO_FRAME_SAMPLES
    frames = len(pcm) // n
    packets = payload = 0
    for k in range(frames):
        p = enc.encode(pcm[k * n : (k + 1) * n])
        if p:
            packets += 1
            payload += len(p)
    seconds = frames * n / config.AUDIO_RATE_HZ
    wire = payload + packets * (utils.MEDIA_HEADER.size + IP_UDP_BYTES)
    return {
        "seconds": seconds,
        "packets_per_s": packets / seconds,
        "opus_kbps": 8 * payload / seconds / 1000,
        "wire_kbps": 8 * wire / seconds / 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    from pesq_audio import make_speech

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        make_speech(wav, args.seconds)
        speech = WavFileSource(wav, AudioFormat(), realtime=False).samples
    silence = np.zeros(int(args.seconds * config.AUDIO_RATE_HZ), np.int16)
    print("| input | packets/s | Opus kbit/s | on the wire kbit/s |")
    print("|---|---|---|---|")
    for name, pcm in (("speech (espeak-ng, pauses included)", speech), ("silence", silence)):
        r = measure(pcm)
        print(
            f"| {name}, {r['seconds']:.1f} s | {r['packets_per_s']:.1f} | {r['opus_kbps']:.1f} "
            f"| {r['wire_kbps']:.1f} |"
        )


if __name__ == "__main__":
    main()
