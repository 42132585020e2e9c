"""Benchmark: chat latency (send to own echo) while a large download runs.

    .venv/bin/python bench/chat_during_download.py [--mb 300] [--samples 400]

The server runs in a child process (see bench/file_transfer.py). One client
shares a file; a second client downloads it again and again while it sends a
chat message every ``--interval-ms`` and times each echo. Only messages sent
while a download was running count. A baseline with no download is measured first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from file_transfer import MB, start_child, stop_child  # noqa: E402

from tests.helpers import identity_fingerprint, make_file  # noqa: E402

WAIT_S = 600.0
ECHO_TIMEOUT_S = 5.0
MAX_ROUNDS = 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class EchoTimer:
    """Sends numbered chat messages and times each one's echo."""

    def __init__(self, client) -> None:
        self.client = client
        self.sent: dict[str, float] = {}
        self.latencies_ms: list[float] = []
        self.n = 0
        # Taken by the bench thread (send) and the client's tcp-receiver (echo); guards sent.
        self.lock = threading.Lock()
        self.echoed = threading.Event()
        client.on("chat", self._on_chat)

    def _on_chat(self, msg: dict) -> None:
        now = time.perf_counter()
        with self.lock:
            t0 = self.sent.pop(msg.get("message"), None)
        if t0 is not None:
            self.latencies_ms.append((now - t0) * 1000)
            self.echoed.set()

    def ping(self) -> None:
        """Send one message and wait for its echo (bounded)."""
        self.n += 1
        text = f"bench {self.n}"
        self.echoed.clear()
        with self.lock:
            self.sent[text] = time.perf_counter()
        self.client.send_chat(text)
        if not self.echoed.wait(ECHO_TIMEOUT_S):
            raise RuntimeError(f"no echo for {text!r} within {ECHO_TIMEOUT_S} s")


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(max(values), 2),
    }


def run(mb: int, samples: int, interval_ms: float) -> dict:
    import file_sharing_module as fsm
    from client import ConferenceClient

    work = Path(tempfile.mkdtemp(prefix="fm-bench-chat-"))
    server, port = start_child("server", str(work / "storage"))
    alice = ConferenceClient("127.0.0.1", port, expected_fingerprint=identity_fingerprint())
    bob = ConferenceClient("127.0.0.1", port, expected_fingerprint=identity_fingerprint())
    try:
        alice.connect("Alice", "Bench", audio=False, video=False)
        bob.connect("Bob", "Bench", audio=False, video=False)
        src = work / "payload.bin"
        make_file(src, mb * MB)
        up = fsm.upload(alice, src)
        assert up.wait(WAIT_S) and up.ok, up.error
        deadline = time.monotonic() + 10
        while up.file_id not in bob.files and time.monotonic() < deadline:
            time.sleep(0.01)
        timer = EchoTimer(bob)
        for _ in range(min(samples, 200)):  # baseline: no transfer running
            timer.ping()
            time.sleep(interval_ms / 1000)
        baseline = list(timer.latencies_ms)
        timer.latencies_ms.clear()
        dest = work / "dl"
        dest.mkdir()
        rounds, bytes_moved, busy_s = 0, 0, 0.0
        while len(timer.latencies_ms) < samples and rounds < MAX_ROUNDS:
            rounds += 1
            t0 = time.perf_counter()
            down = fsm.download(bob, up.file_id, dest)
            while not down.done:
                before = len(timer.latencies_ms)
                timer.ping()
                if down.done:  # the echo may have come after the transfer ended
                    del timer.latencies_ms[before:]
                    break
                time.sleep(interval_ms / 1000)
            assert down.wait(WAIT_S) and down.ok, down.error
            busy_s += time.perf_counter() - t0
            bytes_moved += down.total
            down.path.unlink()
        during = timer.latencies_ms
    finally:
        alice.leave()
        bob.leave()
        stop_child(server)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "file_mb": mb,
        "downloads": rounds,
        "download_mb_s": round(bytes_moved / MB / busy_s, 1),
        "interval_ms": interval_ms,
        "baseline": summary(baseline),
        "during_download": summary(during),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="file size in MiB (default 300)")
    parser.add_argument("--samples", type=int, default=400, help="chat messages timed")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="pause between messages")
    args = parser.parse_args()
    result = run(args.mb, args.samples, args.interval_ms)
    print("RESULT " + json.dumps(result), flush=True)
    ok = result["during_download"]["p99_ms"] < 50
    print("target (p99 < 50 ms during the download):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
