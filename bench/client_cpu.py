"""Benchmark: CPU share of one client sending 720p + 320x180 VP8 and decoding 24 thumbnails.

    .venv/bin/python bench/client_cpu.py [--senders 24] [--seconds 15]

Three kinds of process: the server (``server.py``, via ``bench/common.py``),
one process holding ``--senders`` senders (each a ConferenceClient + VideoSender
of a 320x180 test pattern, so each sends only the small layer; the first one
shows the measured client large, so that client encodes both layers:
``--child-senders`` mode of this script), and the measured client:
``client.py --headless --video pattern --decode`` (it sends its 1280x720 test
pattern as the 1280x720 and 320x180 layers, subscribes to every camera small
and decodes every thumbnail on its video-decoder thread, as the desktop
client does). The measured
process's CPU time (user + system, psutil) over ``--seconds`` after a warm-up,
divided by the wall time, is its share of one core. The GUI's painting is not
included (see bench/gui_responsiveness.py for the window).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from common import start_server, stop_server  # noqa: E402

from tests.helpers import identity_fingerprint  # noqa: E402

WARMUP_S = 3.0


def child_senders(port: int, n: int) -> None:
    """``n`` clients sending the test pattern until stdin closes."""
    from client import ConferenceClient
    from video_module import TestPatternSource, VideoSender

    clients, senders = [], []
    for i in range(n):
        c = ConferenceClient("127.0.0.1", port, expected_fingerprint=identity_fingerprint())
        c.connect(f"Sender {i + 1}", "CPU", audio=False, video=True)
        clients.append(c)
        source = TestPatternSource(f"Sender {i + 1}", 320, 180)
        senders.append(VideoSender(c, source).start())
        c.set_media(False, True)
    viewer = clients[0]

    def show_measured_large(p: dict) -> None:
        if p.get("username") == "Measured":
            viewer.subscribe({p["id"]: "large"})

    viewer.on("participant_joined", show_measured_large)
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        for s in senders:
            s.stop()
        for c in clients:
            c.leave()


def main() -> None:
    if "--child-senders" in sys.argv:
        child_senders(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--senders", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument(
        "--audio",
        action="store_true",
        help="the measured client also sends a tone and records the mix it hears",
    )
    args = ap.parse_args()
    import psutil

    server, port, _ = start_server(tempfile.mkdtemp(prefix="cpu-server-"))
    senders = subprocess.Popen(
        [sys.executable, __file__, "--child-senders", str(port), str(args.senders)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    stats_path = Path(tempfile.mkdtemp(prefix="cpu-")) / "stats.json"
    measured = None
    try:
        assert senders.stdout is not None
        if senders.stdout.readline().strip() != "ready":
            raise RuntimeError("the senders did not start")
        measured = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "client.py"),
                "--headless",
                *("--server", f"127.0.0.1:{port}", "--name", "Measured", "--session", "CPU"),
                *("--fingerprint", identity_fingerprint()),
                *("--video", "pattern", "--decode", "--stats", str(stats_path)),
                *("--duration", str(WARMUP_S + args.seconds + 2)),
                *(
                    ("--audio", "tone", "--record", str(stats_path.with_name("heard.wav")))
                    if args.audio
                    else ()
                ),
            ],
            cwd=ROOT,
        )
        proc = psutil.Process(measured.pid)
        time.sleep(WARMUP_S)  # a benchmark's fixed warm-up, not a synchronisation
        c0, t0 = proc.cpu_times(), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = proc.cpu_times(), time.monotonic()
        measured.wait(60)
    finally:
        if measured is not None and measured.poll() is None:
            measured.kill()
        if senders.stdin:
            senders.stdin.close()
        senders.wait(30)
        stop_server(server)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    share = cpu / (t1 - t0)
    stats = json.loads(stats_path.read_text())
    per_sender = stats.get("video_senders", {})
    total_s = WARMUP_S + args.seconds + 2
    window = t1 - t0
    print(f"senders: {args.senders}; measured window {window:.1f} s after {WARMUP_S:.0f} s warm-up")
    with_audio = " (with audio: tone sent, mix recorded)" if args.audio else ""
    print(f"measured client CPU{with_audio}: {share * 100:.1f}% of one core")
    print(f"frames sent by the measured client: {stats['video_frames_sent']} in ~{total_s:.0f} s")
    print(f"layer frames sent: {stats.get('video_layer_frames_sent')}")
    decoded = [v.get("frames_decoded", 0) for v in stats.get("video_received", {}).values()]
    print(f"pictures decoded by the measured client: {sum(decoded)} from {len(decoded)} senders")
    rates = [n / total_s for n in per_sender.values()]
    if rates:
        print(
            f"frames received per sender: {len(per_sender)} senders, "
            f"{min(rates):.1f}-{max(rates):.1f} fps over the whole run (incl. joining)"
        )


if __name__ == "__main__":
    main()
