"""Benchmark: mouth-to-ear audio latency with file-backed devices through a real server.

    .venv/bin/python bench/media_latency.py [--seconds 20] [--interval-ms 400] [--voiced]

The server runs in its own process (``server.py``, started by ``bench/common.py``) with
the default configuration. Two ConferenceClients run here with the defaults: A
plays a WAV file made of silence and single full-scale impulses (one every
``--interval-ms``, at random positions within a frame) through ``WavFileSource``
(clock-paced like a microphone) and ``AudioCapture``; B plays the N-1 mix through
``AudioPlayback`` (jitter buffer) into ``WavFileSink``. Each impulse's *mouth*
time is when its frame was due from the clock-paced source minus the samples that
followed it in the frame; its *ear* time is when B's playback wrote the frame
holding it into the recording plus its offset in that frame. Both are on this
process's monotonic clock; impulses are matched by time window.

With ``--voiced`` the bursts ride on a quiet voiced sound, so the talker counts as
talking (Opus's VAD flag) and, alone, has its packets forwarded by the server as a
speaking person does; bare bursts rarely set the flag.

The split, per impulse: *frame* = from the impulse to A's ``send_audio`` of its
frame (the capture accumulation, plus any lateness of the capture thread);
*network + server* = from A's send to B's receipt of the mix frame that holds it
(loopback, the server's mixer queue and tick); *jitter buffer + playback* = from
B's receipt to the moment the frame is played into the recording.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from common import start_server, stop_server  # noqa: E402

import audio_module as am  # noqa: E402
import config  # noqa: E402
from tests.helpers import identity_fingerprint  # noqa: E402

IMPULSE = 30000
DETECT = 12000
# Protocol 2 carries Opus (wideband): a single-sample click does not survive it, so an
# "impulse" is a 2.5 ms Hann-windowed 2 kHz burst; its time is its envelope's peak.
BURST_SAMPLES = 120
BURST_HZ = 2000.0
# --voiced: the peak of the voiced background under the bursts.
BACKGROUND_PEAK = 2000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- the measurement -------------------------------------------------------------------


class TimedSender:
    """Wraps a client: records when each audio frame holding an impulse was sent."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.sent: list[float] = []  # monotonic send time of each impulse frame, in order

    def send_audio(self, pcm: bytes, time_ms: int | None = None) -> bool:
        if np.max(np.abs(np.frombuffer(pcm, "<i2"))) > DETECT:
            self.sent.append(time.monotonic())
        return self.client.send_audio(pcm, time_ms)


class TimedSource(am.AudioSource):
    """Wraps the WAV source: the mouth time of each impulse it hands over.

    A frame is due when its last sample has been "captured" (the pacer's
    deadline); an impulse at offset ``i`` in it was spoken ``(n - i) / rate``
    earlier. A capture thread that wakes late therefore adds its lateness to the
    latency, as with a real microphone whose frames wait in the driver.
    """

    def __init__(self, src: am.WavFileSource) -> None:
        self.src = src
        self.fmt = src.fmt
        self.label = src.label
        self.mouths: list[float] = []
        self.late: list[float] = []

    def read(self) -> bytes | None:
        pcm = self.src.read()
        if pcm is None:
            return None
        x = np.abs(np.frombuffer(pcm, "<i2"))
        if np.max(x) > DETECT:
            due = self.src.frame_due
            assert due is not None
            i = int(np.argmax(x))
            self.mouths.append(due - (self.fmt.frame_samples - i) / self.fmt.rate_hz)
            self.late.append(time.monotonic() - due)
        return pcm


class TimedSink(am.AudioSink):
    """Wraps the WAV sink: the ear time of each impulse written (frame start + offset)."""

    def __init__(self, sink: am.WavFileSink) -> None:
        self.sink = sink
        self.fmt = sink.fmt
        self.paced = sink.paced
        self.ears: list[float] = []

    def write(self, pcm: bytes) -> None:
        x = np.abs(np.frombuffer(pcm, "<i2"))
        if np.max(x) > DETECT:
            self.ears.append(time.monotonic() + int(np.argmax(x)) / self.fmt.rate_hz)
        self.sink.write(pcm)

    def close(self) -> None:
        self.sink.close()


def voiced_background(n: int, rate_hz: int) -> np.ndarray:
    """A quiet syllabic voiced sound (150 Hz harmonics, 3 Hz envelope) under the bursts.

    With it the talker's packets carry Opus's voice-activity flag, as speech does, so the
    server treats it as a lone talker and forwards its packets; bare bursts in silence
    do not set the flag and are mixed. Peaks stay far below ``DETECT``.
    """
    t = np.arange(n) / rate_hz
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)
    wave_ = sum(np.sin(2 * np.pi * 150 * h * t + h) / h for h in range(1, 6))
    return np.round(BACKGROUND_PEAK * env * wave_ / np.max(np.abs(wave_))).astype(np.int16)


def impulse_wav(
    path: Path, fmt: am.AudioFormat, seconds: float, interval_s: float, voiced: bool = False
) -> list[int]:
    rng = np.random.default_rng(7)
    n = int(seconds * fmt.rate_hz)
    x = voiced_background(n, fmt.rate_hz) if voiced else np.zeros(n, np.int16)
    positions = []
    t = 1.0
    k = np.arange(BURST_SAMPLES)
    burst = IMPULSE * np.hanning(BURST_SAMPLES) * np.sin(2 * np.pi * BURST_HZ * k / fmt.rate_hz)
    while t < seconds - 1.0:
        # Within one frame, so the burst's frame is the one that carries its peak.
        start = int(t * fmt.rate_hz) // fmt.frame_samples * fmt.frame_samples
        i = start + int(rng.integers(0, fmt.frame_samples - BURST_SAMPLES))
        x[i : i + BURST_SAMPLES] = np.round(burst).astype(np.int16)
        positions.append(i + BURST_SAMPLES // 2)
        t += interval_s
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(fmt.rate_hz)
        wf.writeframes(x.tobytes())
    return positions


def first_after(times: list[float], t: float, window: float) -> float | None:
    return next((x for x in times if 0 <= x - t < window), None)


def run(seconds: float, interval_ms: int, voiced: bool = False) -> dict[str, Any]:
    from client import ConferenceClient

    tmp = Path(tempfile.mkdtemp(prefix="latency-"))
    proc, port, _ = start_server(tmp / "storage")
    try:
        a = ConferenceClient("127.0.0.1", port, expected_fingerprint=identity_fingerprint())
        b = ConferenceClient("127.0.0.1", port, expected_fingerprint=identity_fingerprint())
        a.connect("Mouth", "Latency", audio=True, video=False)
        b.connect("Ear", "Latency", audio=False, video=False)
        assert a.wait_udp_registered(5) and b.wait_udp_registered(5)
        fmt = am.AudioFormat.from_media(a.media_params)
        positions = impulse_wav(tmp / "impulses.wav", fmt, seconds, interval_ms / 1000, voiced)

        arrivals: list[float] = []

        from audio_codec import OpusDecoder

        probe = OpusDecoder()  # a second decoder of B's stream, in arrival order

        def on_audio(packet: bytes, seq: int, time_ms: int) -> None:
            if np.max(np.abs(probe.decode(packet))) > DETECT:
                arrivals.append(time.monotonic())

        b.on("audio", on_audio)
        sink = TimedSink(am.WavFileSink(tmp / "heard.wav", fmt))
        playback = am.AudioPlayback(b, sink).start()
        src = TimedSource(am.WavFileSource(tmp / "impulses.wav", fmt, loop=False))
        sender = TimedSender(a)
        done = threading.Event()
        capture = am.AudioCapture(sender, src, on_end=lambda _r: done.set()).start()
        done.wait(seconds + 30)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # let the tail play out
            time.sleep(0.05)
        capture.stop()
        playback.stop()
        jstats = playback.stats()
        a.leave()
        b.leave()
    finally:
        stop_server(proc)

    window = interval_ms / 1000
    total, capture_part, net_part, jb_part = [], [], [], []
    for mouth in src.mouths:
        ear = first_after(sink.ears, mouth, window)
        sent = first_after(sender.sent, mouth, window)
        if ear is None or sent is None:
            continue
        arrived = first_after(arrivals, sent, window)
        total.append((ear - mouth) * 1000)
        capture_part.append((sent - mouth) * 1000)
        if arrived is not None and arrived <= ear:
            net_part.append((arrived - sent) * 1000)
            jb_part.append((ear - arrived) * 1000)
    return {
        "impulses": len(positions),
        "found": len(total),
        "total": total,
        "capture": capture_part,
        "late": [x * 1000 for x in src.late],
        "net": net_part,
        "jb": jb_part,
        "jitter_stats": jstats,
        "fmt": fmt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval-ms", type=int, default=400)
    ap.add_argument(
        "--voiced",
        action="store_true",
        help="bursts over a quiet voiced sound: the talker counts as talking (speech), so "
        "the server forwards its packets; without it bare bursts are mixed",
    )
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat with a new server and clients (new clock phases); impulses are pooled",
    )
    args = ap.parse_args()
    keys = ("total", "capture", "late", "net", "jb")
    pooled: dict[str, list[float]] = {k: [] for k in keys}
    sent = heard = 0
    run_medians = []
    fmt = None
    for i in range(max(1, args.runs)):
        r = run(args.seconds, args.interval_ms, args.voiced)
        fmt = r["fmt"]
        sent += r["impulses"]
        heard += r["found"]
        for k in keys:
            pooled[k].extend(r[k])
        if r["total"]:
            run_medians.append(statistics.median(r["total"]))
        print(
            f"run {i + 1}: mouth-to-ear p50 {run_medians[-1] if r['total'] else float('nan'):.1f}"
            f" ms; jitter buffer {r['jitter_stats']}",
            flush=True,
        )
    assert fmt is not None
    print(
        f"frame {fmt.frame_samples} samples @ {fmt.rate_hz} Hz = {fmt.frame_s * 1000:.1f} ms; "
        f"Opus; adaptive jitter buffers (client and server), target one frame + the "
        f"{config.JB_DELAY_QUANTILE:.0%} quantile of arrival spread"
    )
    print(f"runs {max(1, args.runs)}, impulses sent {sent}, heard by B {heard}")
    print("| part | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|")
    for name, key in (
        ("mouth-to-ear (total)", "total"),
        ("frame: impulse -> frame sent (accumulation + thread wake-up)", "capture"),
        ("  of which capture thread woke late", "late"),
        ("network + server (sent -> B receives the mix)", "net"),
        ("jitter buffer + playback (B receives -> played)", "jb"),
    ):
        v = pooled[key]
        if v:
            print(
                f"| {name} | {statistics.median(v):.1f} | {percentile(v, 0.95):.1f} "
                f"| {max(v):.1f} |"
            )
    if len(run_medians) > 1:
        print("per-run p50s (ms): " + ", ".join(f"{m:.1f}" for m in run_medians))


if __name__ == "__main__":
    main()
