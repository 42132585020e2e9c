"""Benchmark: others' chat latency while one participant floods chat (issue 13).

    .venv/bin/python bench/chat_flood.py [--messages 10000] [--chars 3980] [--runs 3]

``server.py`` runs in its own process with its default limits. A flooder (its own
process, a raw socket) sends ``--messages`` chat messages of ``--chars`` characters
as fast as it can, reading its answers (echoes and ``rate_limited``) on a thread.
Meanwhile ``--senders`` others take turns sending a short message every
``--interval-ms`` (each stays under its own chat limit: 5 messages/s) and the time
from a send to Carol's receipt is measured: the latency the *others* see. Only
messages sent while the flood runs count. Each run is a fresh server; the JSON
line gives each run and the median of the runs' p50 and p99.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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

from common import start_server, stop_server  # noqa: E402

from tests.helpers import identity_fingerprint, tls_connect  # noqa: E402

WAIT_S = 120.0  # one run's flood must end within this
RECEIPT_TIMEOUT_S = 5.0


def flood(port: int, messages: int, chars: int, out: multiprocessing.Queue) -> None:
    """The flooder's process: join, send as fast as possible, count the answers."""
    import config
    import utils

    sock = tls_connect(port, timeout=WAIT_S)
    reader = utils.FrameReader(sock)
    hello = {"type": "hello", "protocol": config.PROTOCOL_VERSION, "username": "Flooder"}
    sock.sendall(utils.encode_frame(hello | {"session": "Bench"}))
    assert reader.read().type == "welcome"
    counts = {"echoed": 0, "rate_limited": 0}
    done = threading.Event()

    def drain() -> None:
        try:
            while counts["echoed"] + counts["rate_limited"] < messages:
                frame = reader.read()
                if frame.type == "error" and frame.header["code"] == "rate_limited":
                    counts["rate_limited"] += 1
                elif frame.type == "chat" and frame.header["username"] == "Flooder":
                    counts["echoed"] += 1
        except (OSError, utils.ConnectionClosed):
            pass
        done.set()

    threading.Thread(target=drain, name="flood-drain", daemon=True).start()
    data = utils.encode_frame({"type": "chat", "message": "f" * chars})
    t0 = time.perf_counter()
    for _ in range(messages):
        sock.sendall(data)
    sent_s = time.perf_counter() - t0
    done.wait(WAIT_S)
    out.put({"sent_s": round(sent_s, 2), "answered_s": round(time.perf_counter() - t0, 2)} | counts)
    sock.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_run(messages: int, chars: int, interval_ms: float, senders: int) -> dict:
    from client import ConferenceClient

    server, port, _udp = start_server(tempfile.mkdtemp(prefix="fm-bench-flood-"))
    fp = identity_fingerprint()
    bobs = [ConferenceClient("127.0.0.1", port, expected_fingerprint=fp) for _ in range(senders)]
    carol = ConferenceClient("127.0.0.1", port, expected_fingerprint=fp)
    try:
        for i, bob in enumerate(bobs):
            bob.connect(f"Bob {i}", "Bench", audio=False, video=False)
        carol.connect("Carol", "Bench", audio=False, video=False)
        sent: dict[str, float] = {}
        latencies: list[float] = []
        lock = threading.Lock()  # bench thread (send) and Carol's tcp-receiver (receipt)
        got = threading.Event()

        def on_chat(msg: dict) -> None:
            now = time.perf_counter()
            with lock:
                t0 = sent.pop(msg.get("message"), None)
            if t0 is not None:
                latencies.append((now - t0) * 1000)
                got.set()

        carol.on("chat", on_chat)
        out: multiprocessing.Queue = multiprocessing.Queue()
        flooder = multiprocessing.Process(target=flood, args=(port, messages, chars, out))
        flooder.start()
        n = 0
        deadline = time.monotonic() + WAIT_S
        while flooder.is_alive() and time.monotonic() < deadline:
            n += 1
            text = f"bob {n}"
            got.clear()
            with lock:
                sent[text] = time.perf_counter()
            bobs[n % senders].send_chat(text)
            if not got.wait(RECEIPT_TIMEOUT_S):
                raise RuntimeError(f"Carol did not get {text!r} within {RECEIPT_TIMEOUT_S} s")
            time.sleep(interval_ms / 1000)  # the pace of Bob's typing, not a synchronisation
        flooder.join(WAIT_S)
        result = out.get(timeout=RECEIPT_TIMEOUT_S)
        result |= {
            "samples": len(latencies),
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "max_ms": round(max(latencies), 2),
        }
        return result
    finally:
        for bob in bobs:
            bob.leave()
        carol.leave()
        stop_server(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--chars", type=int, default=3980)
    ap.add_argument("--interval-ms", type=float, default=25.0)
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    runs = [
        one_run(args.messages, args.chars, args.interval_ms, args.senders) for _ in range(args.runs)
    ]
    print(
        json.dumps(
            {
                "runs": runs,
                "median_p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "median_p99_ms": statistics.median(r["p99_ms"] for r in runs),
            }
        )
    )


if __name__ == "__main__":
    main()
