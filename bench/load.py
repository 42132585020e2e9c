"""Load benchmark: N headless ConferenceClients in one session against a server process.

Every participant sends one audio frame per frame period and video at the
session fps as protocol-2 VP8 layers: a small layer of ``SMALL_FRAME_BYTES``
(the measured mean of a 320x180 VP8 frame at 150 kbit/s, random bytes: the
server never decodes) with a keyframe every ``KEYFRAME_EVERY`` frames; in
``--view speaker`` the first participant also sends a 720p large layer
(``LARGE_FRAME_BYTES``) and everyone shows it large. Every participant
subscribes as the GUI's grid would: everyone else small, at most 25 tiles.
Reported: the share of N-1 mix frames delivered at each listener, the share of
subscribed video frames delivered whole (every fragment), the video bytes the
server sent (counted where they arrived, with UDP/IP headers), one viewer's
video downlink, the server process's CPU, and the audio latency through the
server (an impulse sent by one client, timed where another client's mix
contains it).

    .venv/bin/python bench/load.py --participants 25 --duration 20 --view grid
    .venv/bin/python bench/load.py -n 40 --talkers 3 --no-video   # issue 10's audio target

With ``--talkers K`` only the first K participants speak; the others' microphones
send digital silence, which Opus DTX turns into (almost) no packets, as in a real
meeting. Audio is Opus (protocol 2): the probe's impulse is a loud 20 ms tone burst,
found by decoding the mix it receives.

The server runs in its own process (``server.py --tcp-port 0 --udp-port 0``);
clients run in ``--workers`` processes (default: one per 10 clients) so that no
Python process has to drive more than a few clients. Each worker reports its own
CPU and how late its send ticks were, so a saturated load generator shows up in
the output instead of passing for a slow server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import start_server, stop_server  # noqa: E402

import config  # noqa: E402
import utils  # noqa: E402
from client import ConferenceClient  # noqa: E402
from tests.helpers import identity_fingerprint  # noqa: E402

SESSION = "Load"
# Mean VP8 frame sizes at the layers' bitrates (docs/benchmarks/vp8.md): 150 kbit/s
# and 1.5 Mbit/s at 15 fps.
SMALL_FRAME_BYTES = 150_000 // 8 // 15
LARGE_FRAME_BYTES = 1_500_000 // 8 // 15
KEYFRAME_EVERY = 150  # the encoder's safety-net keyframe interval at 15 fps (10 s)
UDP_IP_HEADER_BYTES = 28
# Seconds of sending before the measured window opens (pipeline and jitter queues fill).
WARMUP_S = 1.0
# Seconds of sending after the window closes, so the window's tail is steady state.
TAIL_S = 0.3
# The probe client replaces one audio frame with a loud one this often.
IMPULSE_EVERY_S = 0.3
IMPULSE_LEVEL = 20000
BACKGROUND_LEVEL = 300
# A decoded mix frame whose RMS exceeds this contains the impulse (a tone burst of RMS
# IMPULSE_LEVEL / sqrt 2; the background of every talker together stays far below).
IMPULSE_DETECT_RMS = IMPULSE_LEVEL // 4
READY_TIMEOUT_S = 60.0


def udp_rcvbuf_errors() -> int:
    """This network namespace's count of UDP datagrams dropped for a full receive buffer."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    return int(udp[1][udp[0].index("RcvbufErrors")])


def udp_socket_drops(ports: set[int]) -> int:
    """Datagrams the kernel dropped on the UDP sockets bound to ``ports`` (/proc/net/udp)."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) in ports:
            total += int(fields[-1])
    return total


# --- Worker (a group of clients in one process) ---------------------------------------


class Participant:
    """One benchmark client and its receive counters (written only by its udp thread)."""

    def __init__(self, client: ConferenceClient) -> None:
        self.client = client
        self.audio_in_window = 0
        self.window = (math.inf, -math.inf)
        self.video_ids = (0, -1)
        # (sender, layer, frame_id) -> [fragments received, fragments in the frame]
        self.fragments: dict[tuple[int, int, int], list[int]] = {}
        self.video_bytes = 0  # whole datagrams with UDP/IP headers, in the window
        self.subscribed = 0  # streams this viewer subscribed to

    def on_audio(self, pcm: bytes, seq: int, time_ms: int) -> None:
        now = time.monotonic()
        if self.window[0] <= now < self.window[1]:
            self.audio_in_window += 1

    def on_fragment(self, sender: int, seq: int, frag: utils.VideoFragment) -> None:
        if self.video_ids[0] <= frag.frame_id <= self.video_ids[1]:
            entry = self.fragments.setdefault((sender, frag.layer, frag.frame_id), [0, 0])
            entry[0] += 1
            entry[1] = frag.frag_count
            size = utils.MEDIA_HEADER.size + utils.VIDEO_HEADER.size + len(frag.data)
            self.video_bytes += size + UDP_IP_HEADER_BYTES

    def whole_frames(self) -> int:
        return sum(1 for got, count in self.fragments.values() if got >= count > 0)


def run_worker(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.index)
    people: list[Participant] = []
    for i in range(args.clients):
        cl = ConferenceClient(
            "127.0.0.1", args.tcp_port, expected_fingerprint=identity_fingerprint()
        )
        cl.connect(f"user{args.first + i}", SESSION, audio=True, video=True, timeout=30)
        p = Participant(cl)
        cl.on("audio", p.on_audio)
        cl.on("video_fragment", p.on_fragment)
        people.append(p)
    for p in people:
        if not p.client.wait_udp_registered(30):
            raise SystemExit(f"worker {args.index}: UDP registration failed")
    audio = people[0].client.media_params["audio"]
    rate, n = audio["rate"], audio["frame_samples"]
    frame_s = n / rate
    fps = people[0].client.media_params["video"]["fps"]
    t = np.arange(n) / rate
    background = (BACKGROUND_LEVEL * np.sin(2 * np.pi * 300.0 * t)).astype("<i2").tobytes()
    impulse = (IMPULSE_LEVEL * np.sin(2 * np.pi * 1000.0 * t)).astype("<i2").tobytes()
    silence = bytes(2 * n)
    talkers = args.talkers or 1 << 30
    small = rng.integers(0, 256, SMALL_FRAME_BYTES, dtype=np.uint8).tobytes()
    large = rng.integers(0, 256, LARGE_FRAME_BYTES, dtype=np.uint8).tobytes()

    probe = args.index == 0 and len(people) >= 2
    impulses: list[float] = []  # send times (monotonic), appended by the sender thread
    latencies: list[float] = []
    in_server: list[float] = []  # impulse send -> the server's mix tick that carried it
    if probe:
        from audio_codec import OpusDecoder

        probe_decoder = OpusDecoder()

        def on_probe_audio(packet: bytes, seq: int, time_ms: int) -> None:
            pcm = probe_decoder.decode(packet).astype(np.float64)
            if np.sqrt(np.mean(pcm * pcm)) > IMPULSE_DETECT_RMS:
                now = time.monotonic()
                sent = [s for s in impulses[-3:] if s <= now]
                if sent and now - sent[-1] < IMPULSE_EVERY_S * 0.9:
                    latencies.append(now - sent[-1])
                    # The server stamps a mix with its media clock at the tick; on one host
                    # that is the same monotonic clock, so the latency splits in two parts.
                    tick_s = (time_ms - int(sent[-1] * 1000) % utils.U32) % utils.U32 / 1000
                    in_server.append(tick_s)

        people[1].client.on("audio", on_probe_audio)

    print("READY", flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "GO":
        raise SystemExit("worker: no GO")
    t0 = float(line[1])  # when sending starts (time.monotonic is system-wide on Linux)
    w_start = t0 + WARMUP_S
    w_end = w_start + args.duration
    stop_at = w_end + TAIL_S
    first_id = math.ceil(WARMUP_S * fps)
    last_id = math.floor((WARMUP_S + args.duration) * fps) - 1
    for p in people:
        p.window = (w_start, w_end)
        p.video_ids = (first_id, last_id)
    # Everyone has joined by now: subscribe as the grid would (speaker: user0 large).
    for p in people:
        others = sorted(p.client.participants_snapshot())
        speaker = min([*others, p.client.my_id])
        streams: dict[int, str | None] = {
            pid: "small" for pid in others[: config.SUBSCRIBE_MAX_TILES]
        }
        if args.view == "speaker" and speaker != p.client.my_id:
            streams[speaker] = "large"
        p.subscribed = len(streams)
        p.client.subscribe(streams)
    large_sender = args.view == "speaker" and args.first == 0

    lateness: list[float] = []
    sent = {"audio": 0, "audio_skipped": 0, "video": 0, "video_in_window": 0}

    def sender() -> None:
        k = 0
        next_video = 0
        next_impulse = t0 + IMPULSE_EVERY_S
        while True:
            due = t0 + k * frame_s
            if due >= stop_at:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            late = time.monotonic() - due
            lateness.append(late)
            if args.drop_late and late >= frame_s:
                # Like a capture device that overran: the missed frames are gone, no burst.
                skipped = int(late / frame_s)
                sent["audio_skipped"] += skipped * len(people)
                k += skipped
                due = t0 + k * frame_s
            loud = probe and due >= next_impulse
            for i, p in enumerate(people):
                if i == 0 and loud:
                    impulses.append(time.monotonic())
                    p.client.send_audio(impulse)
                    next_impulse += IMPULSE_EVERY_S
                elif args.first + i < talkers:
                    p.client.send_audio(background)
                else:
                    p.client.send_audio(silence)
                sent["audio"] += 1
            # Video frame j is due at t0 + j / fps for every sender in every worker.
            while not args.no_video and t0 + next_video / fps <= due:
                key = next_video % KEYFRAME_EVERY == 0
                for i, p in enumerate(people):
                    p.client.send_video_frame("small", next_video, key, small)
                    if large_sender and i == 0:
                        p.client.send_video_frame("large", next_video, key, large)
                    sent["video"] += 1
                    if first_id <= next_video <= last_id:
                        sent["video_in_window"] += 1
                next_video += 1
            k += 1

    me = psutil.Process()
    cpu0 = me.cpu_times()
    th = threading.Thread(target=sender, name="load-sender")
    th.start()
    th.join()
    time.sleep(0.5)  # let the last video frames of the window arrive
    cpu1 = me.cpu_times()
    wall = time.monotonic() - t0
    my_ports = {p.client._udp.getsockname()[1] for p in people if p.client._udp is not None}
    socket_drops = udp_socket_drops(my_ports)
    for p in people:
        p.client.leave()
    late = np.array(lateness) * 1000
    result = {
        "index": args.index,
        "audio_rx": [p.audio_in_window for p in people],
        "video_rx": [p.whole_frames() for p in people],
        "video_expected": [p.subscribed * (last_id - first_id + 1) for p in people],
        "video_bytes_rx": [p.video_bytes for p in people],
        "video_sent_in_window": sent["video_in_window"],
        "frames_per_window": args.duration / frame_s,
        "video_ids": last_id - first_id + 1,
        "cpu_pct": 100 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall,
        "tick_late_p50_ms": float(np.percentile(late, 50)),
        "tick_late_p99_ms": float(np.percentile(late, 99)),
        "tick_late_max_ms": float(late.max()),
        "udp_dropped": sum(p.client.udp_dropped for p in people),
        "audio_skipped": sent["audio_skipped"],
        "socket_drops": socket_drops,
        "latencies": latencies,
        "in_server": in_server,
        "impulses": len(impulses),
    }
    print("RESULT " + json.dumps(result), flush=True)


# --- Coordinator -------------------------------------------------------------------------


def pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def run(args: argparse.Namespace) -> dict:
    n = args.participants
    workers = args.workers or max(1, math.ceil(n / 10))
    sizes = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
    with tempfile.TemporaryDirectory(prefix="fm-load-") as storage:
        # Every participant connects from 127.0.0.1: lift the per-address fair limit.
        per_address = ("--max-connections-per-address", str(2 * n + 16))
        server, tcp_port, udp_port = start_server(storage, extra=per_address)
        srv_ps = psutil.Process(server.pid)
        procs = []
        try:
            first = 0
            for i, k in enumerate(sizes):
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--index",
                    str(i),
                    "--clients",
                    str(k),
                    "--first",
                    str(first),
                    "--tcp-port",
                    str(tcp_port),
                    "--duration",
                    str(args.duration),
                    *("--view", args.view),
                    *(["--drop-late"] if args.drop_late else []),
                    *(["--no-video"] if args.no_video else []),
                    *("--talkers", str(args.talkers)),
                ]
                first += k
                procs.append(
                    subprocess.Popen(
                        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
                    )
                )
                assert procs[-1].stdout is not None
                ready = procs[-1].stdout.readline().strip()
                if ready != "READY":
                    raise SystemExit(f"worker {i} failed to start: {ready!r}")
            drops0 = udp_rcvbuf_errors()
            t0 = time.monotonic() + 0.2
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(f"GO {t0}\n")
                p.stdin.flush()
            time.sleep(max(0.0, t0 + WARMUP_S - time.monotonic()))
            cpu0 = srv_ps.cpu_times()
            time.sleep(args.duration)
            cpu1 = srv_ps.cpu_times()
            results = []
            for p in procs:
                out, _ = p.communicate(timeout=60 + args.duration)
                line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
                if not line:
                    raise SystemExit(f"a worker failed: {out!r}")
                results.append(json.loads(line[-1][len("RESULT ") :]))
            drops = udp_rcvbuf_errors() - drops0
            server_drops = udp_socket_drops({udp_port})
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            stop_server(server)

    audio_rx = [x for r in results for x in r["audio_rx"]]
    video_rx = sum(x for r in results for x in r["video_rx"])
    frames = results[0]["frames_per_window"]
    video_expected = sum(x for r in results for x in r["video_expected"])
    video_bytes = [x for r in results for x in r["video_bytes_rx"]]
    lat = np.array([x for r in results for x in r["latencies"]]) * 1000
    impulses = sum(r["impulses"] for r in results)
    to_tick = np.array([x for r in results for x in r["in_server"]]) * 1000
    summary = {
        "participants": n,
        "workers": workers,
        "duration_s": args.duration,
        "audio_delivered_mean": float(np.mean(audio_rx)) / frames,
        "audio_delivered_min": float(np.min(audio_rx)) / frames,
        "view": args.view,
        "video_delivered": video_rx / video_expected if video_expected else 1.0,
        "video_egress_mbit_s": sum(video_bytes) * 8 / args.duration / 1e6,
        "viewer_downlink_mbit_s_max": max(video_bytes) * 8 / args.duration / 1e6,
        "viewer_downlink_mbit_s_median": float(np.median(video_bytes)) * 8 / args.duration / 1e6,
        "talkers": args.talkers or n,
        "server_cpu_pct": 100 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / args.duration,
        "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "latency_samples": len(lat),
        "send_to_mix_tick_p50_ms": pct(to_tick, 50),
        "send_to_mix_tick_p99_ms": pct(to_tick, 99),
        "mix_tick_to_receive_p50_ms": pct(lat - to_tick, 50),
        "mix_tick_to_receive_p99_ms": pct(lat - to_tick, 99),
        # Impulses are single frames of one talker: the share heard is that talker's
        # frame delivery through the mixer (a mix is sent every tick whatever is lost).
        "probe_frames_heard": len(lat) / impulses if impulses else None,
        "impulses_sent": impulses,
        "worker_cpu_pct": [round(r["cpu_pct"], 1) for r in results],
        "worker_tick_late_p99_ms": [round(r["tick_late_p99_ms"], 2) for r in results],
        "worker_tick_late_max_ms": [round(r["tick_late_max_ms"], 2) for r in results],
        "client_udp_dropped": sum(r["udp_dropped"] for r in results),
        "drop_late": args.drop_late,
        "audio_frames_skipped_by_senders": sum(r["audio_skipped"] for r in results),
        "kernel_udp_rcvbuf_errors": drops,
        "udp_drops_at_server_socket": server_drops,
        "udp_drops_at_client_sockets": sum(r["socket_drops"] for r in results),
        "load_avg_1min": os.getloadavg()[0],
    }
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", "-n", type=int, default=20)
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    ap.add_argument("--workers", type=int, default=0, help="client processes (0: one per 10)")
    ap.add_argument("--json", action="store_true", help="print only the JSON summary")
    ap.add_argument(
        "--view",
        choices=("grid", "speaker"),
        default="grid",
        help="grid: everyone shows everyone small; speaker: the first participant large too",
    )
    ap.add_argument(
        "--drop-late",
        action="store_true",
        help="a sender that wakes a frame late skips the missed frames instead of bursting them",
    )
    ap.add_argument("--talkers", type=int, default=0, help="only this many speak (0: everyone)")
    ap.add_argument("--no-video", action="store_true", help="audio only")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--clients", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tcp-port", type=int, default=config.DEFAULT_TCP_PORT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    s = run(args)
    if args.json:
        print(json.dumps(s))
        return
    print(json.dumps(s, indent=2))
    lat = (
        f"{s['latency_p50_ms']:.1f} / {s['latency_p99_ms']:.1f}"
        if s["latency_p50_ms"] is not None
        else "n/a"
    )
    print(
        f"| {s['participants']} | {100 * s['audio_delivered_mean']:.2f}% "
        f"(min {100 * s['audio_delivered_min']:.2f}%) | {100 * s['video_delivered']:.2f}% | "
        f"{s['video_egress_mbit_s']:.1f} | {s['viewer_downlink_mbit_s_max']:.2f} | "
        f"{s['server_cpu_pct']:.0f}% | {lat} | {100 * (s['probe_frames_heard'] or 0):.0f}% | "
        f"{s['worker_cpu_pct']} |"
    )


if __name__ == "__main__":
    main()
