"""Benchmark: speech quality (PESQ-WB) through a real server over an impaired network.

    .venv/bin/python bench/pesq_audio.py [--conditions clean,loss5] [--runs 3] [--seconds 12]

espeak-ng speaks at least ``--seconds`` of sentences into a WAV file. For each run
``server.py`` starts on 127.0.0.1 (``bench/common.py``) and ``bench/netrelay.py``
stands in front of it on 127.0.0.2: TCP on a port the OS chose, UDP on the server's
own UDP port number, so the port announced in ``welcome`` leads the clients to the
relay without any change to the protocol (Linux answers on all of 127/8; elsewhere
add the alias first, e.g. macOS ``ifconfig lo0 alias 127.0.0.2``). Two
``client.py --headless`` participants join through the relay: the listener
records what it hears (``--record``), then the talker sends the speech file as
its microphone. The recording and the source are resampled to 16 kHz, aligned
by cross-correlation, and scored with PESQ wideband (ITU-T P.862.2, pip
``pesq``, mode ``wb``). Each condition reports the median of ``--runs`` runs (a
new server, relay seed and clients each run).

Conditions (each direction of both legs, talker->server and server->listener):
clean, delay20 (20 +- 10 ms), loss2 / loss5 / loss10 (that loss with 20 +- 10 ms),
jitter40 (40 +- 30 ms, reordering, no loss).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
from common import start_server, stop_server  # noqa: E402
from netrelay import Impairment, LossModel, TcpRelay, UdpRelay, _Direction  # noqa: E402

from audio_module import to_mono_int16  # noqa: E402
from tests.helpers import identity_fingerprint  # noqa: E402

PESQ_RATE_HZ = 16000
RELAY_HOST = "127.0.0.2"
# How long the participants get beyond the speech: joining, buffering, the tail.
EXTRA_S = 4.0
JOIN_TIMEOUT_S = 20.0
# The listener's jitter buffer counters --verbose prints for a real run.
VERBOSE_STATS = (
    "fec_used",
    "concealed",
    "expanded",
    "late",
    "reordered",
    "accelerated",
    "stretched",
    "dtx",
    "target_delay_ms",
)
# The recording must hold the speech somewhere within this much delay.
MAX_ALIGN_S = 3.0

SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
]

CONDITIONS: dict[str, Impairment] = {
    "clean": Impairment(),
    "delay20": Impairment(delay_ms=20, jitter_ms=10),
    "loss2": Impairment(loss=0.02, delay_ms=20, jitter_ms=10),
    "loss5": Impairment(loss=0.05, delay_ms=20, jitter_ms=10),
    "loss10": Impairment(loss=0.10, delay_ms=20, jitter_ms=10),
    "jitter40": Impairment(delay_ms=40, jitter_ms=30),
}


# --- signals -------------------------------------------------------------------------


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wf:
        raw = wf.readframes(wf.getnframes())
        return to_mono_int16(raw, wf.getsampwidth(), wf.getnchannels()), wf.getframerate()


def write_wav(path: Path, samples: np.ndarray, rate_hz: int) -> None:
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(rate_hz)
        wf.writeframes(samples.astype("<i2").tobytes())


def make_speech(path: Path, min_seconds: float = 12.0) -> float:
    """espeak-ng sentences (with short pauses) until ``min_seconds``; returns the length."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed (apt install espeak-ng)")
    parts: list[np.ndarray] = []
    rate = 0
    total = 0.0
    with tempfile.TemporaryDirectory(prefix="speech-") as tmp:
        i = 0
        while total < min_seconds:
            sentence = SENTENCES[i % len(SENTENCES)]
            out = Path(tmp) / f"s{i}.wav"
            subprocess.run(
                [exe, "-v", "en-us", "-s", "150", "-w", str(out), sentence],
                check=True,
                capture_output=True,
                timeout=30,
            )
            x, rate = read_wav(out)
            parts += [x, np.zeros(rate // 4, np.int16)]
            total += len(x) / rate + 0.25
            i += 1
    lead = np.zeros(rate // 2, np.int16)
    write_wav(path, np.concatenate([lead, *parts]), rate)
    return total + 0.5


def to_16k(x: np.ndarray, rate_hz: int) -> np.ndarray:
    """Band-limited resampling to 16 kHz (polyphase, scipy if present, else FFT)."""
    if rate_hz == PESQ_RATE_HZ:
        return x.astype(np.float64)
    try:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(rate_hz, PESQ_RATE_HZ)
        return resample_poly(x.astype(np.float64), PESQ_RATE_HZ // g, rate_hz // g)
    except ImportError:
        n = int(round(len(x) * PESQ_RATE_HZ / rate_hz))
        spec = np.fft.rfft(x.astype(np.float64))
        keep = n // 2 + 1
        out = np.fft.irfft(spec[:keep] if len(spec) >= keep else spec, n)
        return out * n / len(x)


def align(reference: np.ndarray, recording: np.ndarray, max_lag: int) -> np.ndarray:
    """The part of ``recording`` that lines up with ``reference`` (FFT cross-correlation)."""
    n = len(reference) + max_lag
    rec = np.concatenate([recording, np.zeros(max(0, n - len(recording)))])[:n]
    size = 1 << int(np.ceil(np.log2(len(rec) + len(reference))))
    corr = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(np.argmax(corr[: max_lag + 1]))
    return rec[lag : lag + len(reference)]


def pesq_wb(reference: np.ndarray, ref_rate: int, recording: np.ndarray, rec_rate: int) -> float:
    from pesq import pesq

    ref = to_16k(reference, ref_rate)
    rec = to_16k(recording, rec_rate)
    deg = align(ref, rec, int(MAX_ALIGN_S * PESQ_RATE_HZ))
    return float(pesq(PESQ_RATE_HZ, ref, deg, "wb"))


# --- one run through the system --------------------------------------------------------


def _wait_line(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    proc.kill()
    raise SystemExit(f"participant did not print {needle!r}: {''.join(seen)}")


def headless(port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "client.py"), "--headless"),
            *("--server", f"{RELAY_HOST}:{port}", "--session", "Pesq"),
            *("--fingerprint", identity_fingerprint()),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def run_once(
    speech: Path, seconds: float, imp: Impairment, seed: int, tmp: Path
) -> tuple[float, dict]:
    """One server, relay and pair of participants: the PESQ-WB of what the listener heard,
    and the listener's jitter buffer stats (``--stats``)."""
    proc, tcp_port, udp_port = start_server(tmp / "storage")
    relays = []
    procs: list[subprocess.Popen] = []
    try:
        bound = seconds + EXTRA_S + 30
        udp = UdpRelay(
            ("127.0.0.1", udp_port), imp, imp, seed, (RELAY_HOST, udp_port), bound
        ).start()
        tcp = TcpRelay(("127.0.0.1", tcp_port), None, None, seed, (RELAY_HOST, 0), bound).start()
        relays = [udp, tcp]
        recording = tmp / f"heard-{seed}.wav"
        stats_file = tmp / f"ear-{seed}.json"
        duration = f"{seconds + EXTRA_S:.1f}"
        listener = headless(
            tcp.address[1],
            *("--name", "Ear", "--record", str(recording), "--duration", duration),
            *("--stats", str(stats_file)),
        )
        procs.append(listener)
        _wait_line(listener, "joined", JOIN_TIMEOUT_S)
        talker = headless(
            tcp.address[1], "--name", "Mouth", "--audio", str(speech), "--duration", duration
        )
        procs.append(talker)
        _wait_line(talker, "joined", JOIN_TIMEOUT_S)
        for p in procs:
            p.wait(seconds + EXTRA_S + JOIN_TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for r in relays:
            r.stop()
        stop_server(proc)
    ref, ref_rate = read_wav(speech)
    rec, rec_rate = read_wav(recording)
    try:
        jitter = json.loads(stats_file.read_text("utf-8")).get("jitter", {})
    except (OSError, ValueError):
        jitter = {}
    return pesq_wb(ref, ref_rate, rec, rec_rate), jitter


# --- the issue-10 pipeline, simulated from its pure parts ---------------------------------


def _resample_fft(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    n = int(round(len(x) * rate_out / rate_in))
    spec = np.fft.rfft(x.astype(np.float64))
    out_bins = n // 2 + 1
    spec = spec[:out_bins] if len(spec) >= out_bins else np.pad(spec, (0, out_bins - len(spec)))
    return np.fft.irfft(spec, n) * n / len(x)


_FRAME_S = 0.020  # one Opus frame, for the simulated repeats


class _Leg:
    """One impaired network direction carrying 20 ms Opus packets, in simulated time."""

    def __init__(self, imp: Impairment, seed: int) -> None:
        import random

        self.dir = _Direction(imp, random.Random(seed), 0.0)
        self.dir.loss = LossModel(imp, self.dir.rng)
        self.in_flight: list[tuple[float, int, bytes]] = []

    def send(self, t_s: float, seq: int, packet: bytes) -> None:
        fate = self.dir.schedule(t_s, len(packet), lossy=True)
        if fate is not None:
            self.in_flight.append((fate[0], seq, packet))

    def forward(self, then: _Leg, t_s: float, seen: set[int], repeats: list | None) -> None:
        """Hand what has arrived by ``t_s`` on to the next leg (a forwarding server): the
        first copy of each seq, and with ``repeats`` that copy again a frame later."""
        due = sorted(p for p in self.in_flight if p[0] <= t_s)
        self.in_flight = [p for p in self.in_flight if p[0] > t_s]
        for arrival, seq, packet in due:
            if seq in seen:
                continue
            seen.add(seq)
            then.send(arrival, seq, packet)
            if repeats is not None:
                repeats.append((arrival + _FRAME_S, seq, packet))
        if repeats:
            for item in [r for r in repeats if r[0] <= t_s]:
                repeats.remove(item)
                then.send(*item)

    def deliver_until(self, t_s: float, buffer) -> None:
        due = sorted(p for p in self.in_flight if p[0] <= t_s)
        self.in_flight = [p for p in self.in_flight if p[0] > t_s]
        for arrival, seq, packet in due:
            buffer.put(seq, packet, arrival * 1000)


def simulate_pipeline(
    speech: Path, imp: Impairment, seed: int, forward: bool = False
) -> tuple[float, dict]:
    """PESQ-WB of the planned path, from its pure parts and in simulated time: Opus
    (audio_codec) talker -> impaired leg -> the server's adaptive jitter buffer, decode,
    re-encode (as the server's mixer will) -> impaired leg -> the listener's buffer.

    With ``forward`` the server passes the talker's packets on as they are (a single
    talker needs no mixing): both legs' loss and jitter reach the listener's buffer. On a
    lossy network (``imp.loss``) the talker and the forwarding server send each packet
    twice, the copy a frame later, as they do on a leg losing >= 1 % (audio_repeat.py)."""
    import audio_codec
    import config
    from jitter_buffer import AdaptiveJitterBuffer

    ref, ref_rate = read_wav(speech)
    rate = config.OPUS_RATE_HZ
    n = config.OPUS_FRAME_SAMPLES
    x = np.clip(np.round(_resample_fft(ref, ref_rate, rate)), -32768, 32767).astype(np.int16)
    x = np.concatenate([x, np.zeros(n * 25 - len(x) % n, np.int16)])
    frame_s = config.OPUS_FRAME_MS / 1000
    talker, mixer_enc = audio_codec.OpusEncoder(), audio_codec.OpusEncoder()
    server_jb = AdaptiveJitterBuffer(audio_codec.OpusDecoder())
    client_jb = AdaptiveJitterBuffer(audio_codec.OpusDecoder())
    up, down = _Leg(imp, 2 * seed), _Leg(imp, 2 * seed + 1)
    out = []
    frames = len(x) // n
    # The server ticks 7 ms and the listener 13 ms after the talker's frame clock.
    repeat = forward and imp.loss > 0
    previous, seen, repeats = None, set(), [] if repeat else None
    for k in range(frames + 50):
        t = k * frame_s
        if k < frames:
            packet = talker.encode(x[k * n : (k + 1) * n])
            if packet:
                up.send(t, k, packet)
            if repeat and previous is not None:
                up.send(t, k - 1, previous)
            previous = packet or None
        if forward:
            up.forward(down, t + 0.007, seen, repeats)
        else:
            up.deliver_until(t + 0.007, server_jb)
            packet = mixer_enc.encode(server_jb.get(1000 * (t + 0.007)))
            if packet:
                down.send(t + 0.007, k, packet)
        down.deliver_until(t + 0.013, client_jb)
        out.append(client_jb.get(1000 * (t + 0.013)))
    y = np.concatenate(out)
    score = pesq_wb(ref, ref_rate, y, rate)
    return score, {"server": server_jb.stats.as_dict(), "client": client_jb.stats.as_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conditions", default="clean,loss5", help=",".join(CONDITIONS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=12.0, help="at least this much speech")
    ap.add_argument(
        "--pipeline",
        action="store_true",
        help="score the issue-10 path simulated from its pure parts (Opus, adaptive jitter "
        "buffers at server and listener) instead of today's system through a server",
    )
    ap.add_argument(
        "--forward",
        action="store_true",
        help="with --pipeline: the server forwards the single talker's packets (no tandem)",
    )
    ap.add_argument("--verbose", action="store_true", help="print the jitter buffer stats")
    args = ap.parse_args()
    names = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise SystemExit(f"unknown conditions {unknown}; known: {', '.join(CONDITIONS)}")
    tmp = Path(tempfile.mkdtemp(prefix="pesq-"))
    speech = tmp / "speech.wav"
    seconds = make_speech(speech, args.seconds)
    print(f"speech: {seconds:.1f} s of espeak-ng; runs per condition: {args.runs}", flush=True)
    print("| network (each direction) | PESQ-WB median | runs |")
    print("|---|---|---|")
    for name in names:
        scores = []
        for seed in range(1, max(1, args.runs) + 1):
            if args.pipeline:
                score, stats = simulate_pipeline(speech, CONDITIONS[name], seed, args.forward)
                jitter = stats["client"]
            else:
                score, jitter = run_once(speech, seconds, CONDITIONS[name], seed, tmp)
            if args.verbose:
                shown = {k: v for k, v in jitter.items() if k in VERBOSE_STATS}
                print(f"  {name} seed {seed}: {score:.2f} listener {shown}", flush=True)
            scores.append(score)
        runs = ", ".join(f"{s:.2f}" for s in scores)
        print(f"| {name} | {statistics.median(scores):.2f} | {runs} |", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
