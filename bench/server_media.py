"""Server media benchmark: N raw UDP participants against ``server.py`` in its own process.

    .venv/bin/python bench/server_media.py --participants 10 --duration 10 [--video]
        [--screen] [--record]

Each participant joins over TLS (raw frames via utils), registers its UDP
address with a sealed ``h`` (tests/helpers.MediaSocket) and sends one audio
frame every 20 ms (all talk at once: the worst case for the mixer); with
``--video`` each also sends a 12 KB video datagram at 15 fps, which the server
forwards to the N-1 others. Reported over the measured window: the N-1 mixes
each listener received per second (50 is every frame), their inter-arrival
times (the server's tick regularity plus loopback and this generator's
scheduling), video datagrams delivered, and the server process's CPU and
memory (psutil). The generator's own lateness is reported so that an
overloaded generator is not mistaken for a slow server.
"""

from __future__ import annotations

import argparse
import selectors
import socket
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
from tests.helpers import MediaSocket, tls_connect  # noqa: E402

VIDEO_BYTES = 12 * 1024
WARMUP_S = 1.0


class Participant:
    def __init__(self, name: str, tcp_port: int, udp_port: int) -> None:
        self.tcp = tls_connect(tcp_port, timeout=5)
        self.tcp.sendall(
            utils.encode_frame(
                {
                    "type": "hello",
                    "protocol": config.PROTOCOL_VERSION,
                    "username": name,
                    "session": "Bench",
                }
            )
        )
        welcome = utils.FrameReader(self.tcp).read().header
        assert welcome["type"] == "welcome", welcome
        self.id = welcome["you"]["id"]
        self.media = MediaSocket(udp_port, welcome, timeout=5)  # registered: a sealed h
        self.udp = self.media.sock
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.server = ("127.0.0.1", udp_port)
        self.udp.setblocking(False)
        self.audio_times: list[float] = []
        self.video_received = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=10)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--video", action="store_true")
    ap.add_argument(
        "--record", action="store_true", help="the first participant (host) records the meeting"
    )
    ap.add_argument(
        "--screen", action="store_true", help="the first participant presents a 1280x720 slide"
    )
    args = ap.parse_args()
    n = args.participants
    with tempfile.TemporaryDirectory() as storage:
        # Every participant comes from 127.0.0.1: lift the per-address connection limit.
        limit = ("--max-connections-per-address", str(2 * n + 8))
        proc, tcp_port, udp_port = start_server(storage, extra=limit)
        server_ps = psutil.Process(proc.pid)
        try:
            people = [Participant(f"p{i}", tcp_port, udp_port) for i in range(n)]
            host = people[0].tcp  # the first to join hosts the meeting
            if args.screen:
                host.sendall(utils.encode_frame({"type": "present_start"}))
            if args.record:
                host.sendall(utils.encode_frame({"type": "start_recording"}))
            result = run(people, args.duration, args.video, server_ps, args.screen)
        finally:
            stop_server(proc)
    report(n, args, result)


def slide_vp8_frames(count: int) -> list[tuple[bytes, bool]]:
    """A 1280x720 slide through the screen-mode VP8 encoder: a keyframe, then the
    (tiny) frames of an unchanged screen, as a presenter's client sends them."""
    import cv2  # only for --screen

    from video_codec import Vp8Encoder

    img = np.full((720, 1280, 3), 240, np.uint8)
    cv2.rectangle(img, (0, 0), (1280, 120), (150, 60, 20), -1)
    cv2.putText(img, "Quarterly review", (30, 90), 0, 2.5, (255, 255, 255), 4)
    enc = Vp8Encoder(1280, 720, config.SCREEN_FPS, config.SCREEN_VP8_BITRATE_BPS, mode="screen")
    frames = []
    for _ in range(count):
        out = enc.encode(img)
        if out is not None:
            frames.append((out.data, out.keyframe))
    enc.close()
    return frames


def run(
    people: list[Participant], duration: float, video: bool, server_ps, screen: bool = False
) -> dict:
    stop = threading.Event()
    window = [0.0, 0.0]
    sent = {"video": 0}
    lateness: list[float] = []
    rng = np.random.default_rng(1)
    # Protocol 2: one Opus packet of noise-like "speech", sent every frame period.
    from audio_codec import OpusEncoder

    noise = rng.integers(-3000, 3000, config.AUDIO_FRAME_SAMPLES).astype("<i2")
    pcm = [OpusEncoder().encode(noise) or b"\x08"]
    jpeg = rng.bytes(VIDEO_BYTES)
    by_sock = {p.udp.fileno(): p for p in people}

    def receive() -> None:
        sel = selectors.DefaultSelector()
        for p in people:
            sel.register(p.udp, selectors.EVENT_READ, p)
        while not stop.is_set():
            for key, _ in sel.select(0.1):
                p = key.data
                while True:
                    try:
                        data = p.udp.recv(70000)
                    except BlockingIOError:
                        break
                    now = time.monotonic()
                    if data[0] == utils.KIND_AUDIO:
                        p.audio_times.append(now)
                    elif data[0] == utils.KIND_VIDEO and window[0] <= now < window[1]:
                        p.video_received += 1
        sel.close()

    def keepalive() -> None:
        while not stop.wait(3.0):
            for p in people:
                p.tcp.sendall(utils.encode_frame({"type": "ping"}))

    def drain_tcp() -> None:  # the server's control frames (file_added, pongs...) are read
        sel = selectors.DefaultSelector()
        for p in people:
            sel.register(p.tcp, selectors.EVENT_READ, p)
        while not stop.is_set():
            for key, _ in sel.select(0.1):
                try:
                    key.fileobj.recv(1 << 16)  # readable: TLS returns what has arrived
                except OSError:  # includes a timeout
                    pass
        sel.close()

    def present() -> None:
        slides = slide_vp8_frames(int(config.SCREEN_FPS * (duration + 10)))
        seq = 0
        while not stop.wait(1 / config.SCREEN_FPS) and seq < len(slides):
            data, key = slides[seq]
            seq += 1
            frame = {"type": "screen_frame", "seq": seq, "width": 1280, "height": 720}
            frame["keyframe"] = key
            people[0].tcp.sendall(utils.encode_frame(frame, data))

    threads = [
        threading.Thread(target=receive, name="bench-receive"),
        threading.Thread(target=keepalive, name="bench-keepalive"),
        threading.Thread(target=drain_tcp, name="bench-drain"),
    ]
    if screen:
        threads.append(threading.Thread(target=present, name="bench-present"))
    for t in threads:
        t.start()
    period = config.AUDIO_FRAME_SAMPLES / config.AUDIO_RATE_HZ
    video_period = 1 / config.VIDEO_FPS
    start = time.monotonic()
    window[:] = [start + WARMUP_S, start + WARMUP_S + duration]
    next_audio, next_video, seq, vseq = start, start, 0, 0
    cpu_start = None
    while True:
        now = time.monotonic()
        if now >= window[1] + 0.2:
            break
        if cpu_start is None and now >= window[0]:
            cpu_start = (server_ps.cpu_times(), now)
        if now >= next_audio:
            lateness.append(now - next_audio)
            seq += 1
            for p in people:
                plain = utils.pack_media(utils.KIND_AUDIO, p.id, seq, seq * 20, pcm[0])
                p.udp.sendto(p.media.seal(plain), p.server)
            next_audio += period
        if video and now >= next_video:
            vseq += 1
            for p in people:
                # One small-layer fragment per frame (protocol 2); nobody subscribes here,
                # so the server drops it after checking: this measures the check's cost.
                frag = utils.split_vp8_frame("small", vseq, vseq == 1, jpeg[:1000])[0]
                plain = utils.pack_media(utils.KIND_VIDEO, p.id, vseq, 0, frag)
                p.udp.sendto(p.media.seal(plain), p.server)
                if window[0] <= now < window[1]:
                    sent["video"] += 1
            next_video += video_period
        time.sleep(
            max(0.0, min(next_audio, next_video if video else next_audio) - time.monotonic())
        )
    end_cpu = server_ps.cpu_times()
    cpu_s = (end_cpu.user + end_cpu.system) - (cpu_start[0].user + cpu_start[0].system)
    cpu_pct = 100 * cpu_s / (time.monotonic() - cpu_start[1])
    rss = server_ps.memory_info().rss
    stop.set()
    for t in threads:
        t.join(5)
    del by_sock
    lo, hi = window
    rates, gaps = [], []
    for p in people:
        ts = np.array([t for t in p.audio_times if lo <= t < hi])
        rates.append(len(ts) / (hi - lo))
        if len(ts) > 1:
            gaps.extend(np.diff(ts) * 1000)
    video_expected = sent["video"] * (len(people) - 1)
    r_video = sum(p.video_received for p in people)
    late = np.array(lateness) * 1000
    return {
        "rate_min": min(rates),
        "rate_mean": float(np.mean(rates)),
        "gap_p50": float(np.percentile(gaps, 50)) if gaps else float("nan"),
        "gap_p99": float(np.percentile(gaps, 99)) if gaps else float("nan"),
        "gap_max": float(np.max(gaps)) if gaps else float("nan"),
        "video": (r_video, video_expected),
        "late_p99": float(np.percentile(late, 99)),
        "cpu_pct": cpu_pct,
        "rss_mb": rss / 2**20,
    }


def report(n: int, args, r: dict) -> None:
    print(
        f"participants: {n}, all talking; video: {'on' if args.video else 'off'}; "
        f"window: {args.duration:.0f} s"
    )
    print(
        f"N-1 mixes per listener per second: mean {r['rate_mean']:.1f}, "
        f"min {r['rate_min']:.1f} (50 = every frame)"
    )
    print(
        f"mix inter-arrival ms: p50 {r['gap_p50']:.1f}, p99 {r['gap_p99']:.1f}, "
        f"max {r['gap_max']:.1f}"
    )
    if args.video:
        got, want = r["video"]
        print(f"video datagrams delivered: {got}/{want} ({100 * got / max(1, want):.1f} %)")
    print(f"server CPU: {r['cpu_pct']:.1f} % of one core; server RSS: {r['rss_mb']:.0f} MiB")
    print(f"generator send lateness p99: {r['late_p99']:.1f} ms")


if __name__ == "__main__":
    main()
