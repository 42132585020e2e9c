"""Benchmark: upload and download throughput over loopback against a plain socket copy.

    .venv/bin/python bench/file_transfer.py [--mb 500] [--repeat 3]

The FusionMeet server runs in a child process (its RSS is sampled with psutil);
the client (file_sharing_module over a real ConferenceClient) runs here. The
ceiling is the same bytes moved file -> socket -> file between this process and
a child, with no protocol and no hashing (sendfile on the sending side). Each
repetition runs the four copies back to back so they see the same machine load.

Besides MB/s it reports the CPU seconds each FileStore transfer cost, server and
client processes together (``upload_cpu_s``, ``download_cpu_s``): on a shared
machine the MB/s follow the other work's load, the CPU seconds hardly do, and
CPU seconds per second of transfer is the number of cores the transfer needs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import config  # noqa: E402
from tests.helpers import identity_fingerprint, make_file  # noqa: E402

MB = 1024 * 1024
RSS_SAMPLE_S = 0.01
WAIT_S = 600.0


# --- child processes ---------------------------------------------------------------


def _child_server(storage: Path) -> None:
    from server import ConferenceServer

    srv = ConferenceServer(
        config.ServerConfig(host="127.0.0.1", tcp_port=0, udp_port=0, storage_dir=storage)
    )
    srv.start()
    print(srv.tcp_port, flush=True)
    try:
        sys.stdin.read()  # runs until the parent closes our stdin
    finally:
        srv.stop()


def _child_listen() -> socket.socket:
    lst = socket.create_server(("127.0.0.1", 0))
    print(lst.getsockname()[1], flush=True)
    conn, _ = lst.accept()
    lst.close()
    return conn


def _child_plain_recv(path: Path, size: int) -> None:
    conn = _child_listen()
    buf = bytearray(config.FILE_CHUNK_BYTES)
    view = memoryview(buf)
    got = 0
    with conn, open(path, "wb", buffering=0) as out:
        while got < size:
            k = conn.recv_into(view, min(len(buf), size - got))
            if not k:
                break
            out.write(view[:k])
            got += k
        conn.sendall(b"k")  # the sender's clock stops when every byte is written


def _child_plain_send(path: Path) -> None:
    conn = _child_listen()
    with conn, open(path, "rb") as f:
        conn.sendfile(f)


def start_child(*args: str) -> tuple[subprocess.Popen, int]:
    """Run this script in ``--child`` mode; returns the process and the port it printed."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"child {args} did not start: {line!r}")
    return proc, int(line)


def stop_child(proc: subprocess.Popen) -> None:
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


# --- measurements -------------------------------------------------------------------


class RssSampler:
    """Samples a process's RSS on a named thread; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def reset(self) -> int:
        rss = self.proc.memory_info().rss
        self.peak = rss
        return rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def plain_upload(src: Path, size: int, work: Path) -> float:
    dest = work / "plain-up.bin"
    proc, port = start_child("plain-recv", str(dest), str(size))
    try:
        with socket.create_connection(("127.0.0.1", port)) as s, open(src, "rb") as f:
            t0 = time.perf_counter()
            s.sendfile(f)
            assert s.recv(1) == b"k"
            elapsed = time.perf_counter() - t0
    finally:
        stop_child(proc)
    assert dest.stat().st_size == size
    dest.unlink()
    return elapsed


def plain_download(src: Path, size: int, work: Path) -> float:
    dest = work / "plain-down.bin"
    proc, port = start_child("plain-send", str(src))
    try:
        buf = bytearray(config.FILE_CHUNK_BYTES)
        view = memoryview(buf)
        with socket.create_connection(("127.0.0.1", port)) as s:
            t0 = time.perf_counter()
            got = 0
            with open(dest, "wb", buffering=0) as out:
                while got < size:
                    k = s.recv_into(view)
                    if not k:
                        break
                    out.write(view[:k])
                    got += k
            elapsed = time.perf_counter() - t0
    finally:
        stop_child(proc)
    assert dest.stat().st_size == size
    dest.unlink()
    return elapsed


def cpu_seconds(proc) -> float:
    """User + system CPU seconds of a psutil.Process so far (every thread)."""
    t = proc.cpu_times()
    return t.user + t.system


def settle() -> None:
    """Flush dirty pages so the next timed copy does not pay for the previous one."""
    if hasattr(os, "sync"):
        os.sync()


def run(mb: int, repeat: int, base_dir: str | None = None) -> dict:
    import psutil

    import file_sharing_module as fsm
    from client import ConferenceClient

    size = mb * MB
    work = Path(tempfile.mkdtemp(prefix="fm-bench-files-", dir=base_dir))
    rows = []
    try:
        src = work / "payload.bin"
        sha = make_file(src, size)
        server, port = start_child("server", str(work / "storage"))
        sampler = RssSampler(server.pid)
        me = psutil.Process()

        def both_cpu() -> float:
            return cpu_seconds(sampler.proc) + cpu_seconds(me)

        client = ConferenceClient("127.0.0.1", port, expected_fingerprint=identity_fingerprint())
        try:
            client.connect("Bench", "Bench", audio=False, video=False)
            for rep in range(repeat):
                row: dict = {}
                state: dict = {}

                def ours_up(row=row, state=state) -> None:
                    base_rss = sampler.reset()
                    c0, t0 = both_cpu(), time.perf_counter()
                    up = fsm.upload(client, src)
                    assert up.wait(WAIT_S) and up.ok, up.error
                    row["up_s"] = time.perf_counter() - t0
                    row["up_cpu_s"] = both_cpu() - c0
                    row["up_rss_growth_mb"] = (sampler.peak - base_rss) / MB
                    assert up.sha256 == sha
                    state["file_id"] = up.file_id

                def ours_down(row=row, state=state) -> None:
                    dest = work / "dl"
                    dest.mkdir(exist_ok=True)
                    base_rss = sampler.reset()
                    c0, t0 = both_cpu(), time.perf_counter()
                    down = fsm.download(client, state["file_id"], dest)
                    assert down.wait(WAIT_S) and down.ok, down.error
                    row["down_s"] = time.perf_counter() - t0
                    row["down_cpu_s"] = both_cpu() - c0
                    row["down_rss_growth_mb"] = (sampler.peak - base_rss) / MB
                    assert down.sha256 == sha
                    down.path.unlink()

                def plain_up(row=row) -> None:
                    row["plain_up_s"] = plain_upload(src, size, work)

                def plain_down(row=row) -> None:
                    row["plain_down_s"] = plain_download(src, size, work)

                # Alternate who goes first, so a trend in the machine's load hits both.
                order = (
                    [plain_up, ours_up, plain_down, ours_down]
                    if rep % 2 == 0
                    else [ours_up, plain_up, ours_down, plain_down]
                )
                for step in order:
                    settle()
                    step()
                client.delete_file(state["file_id"])
                rows.append(row)
                print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
            server_rss_mb = sampler.proc.memory_info().rss / MB
        finally:
            client.leave()
            sampler.stop()
            stop_child(server)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def rate(seconds: float) -> float:
        return mb / seconds

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {
        "file_mb": mb,
        "repeat": repeat,
        "upload_mb_s": round(rate(med["up_s"]), 1),
        "plain_upload_mb_s": round(rate(med["plain_up_s"]), 1),
        "upload_vs_ceiling": round(med["plain_up_s"] / med["up_s"], 3),
        "upload_cpu_s": round(med["up_cpu_s"], 2),
        "download_mb_s": round(rate(med["down_s"]), 1),
        "plain_download_mb_s": round(rate(med["plain_down_s"]), 1),
        "download_vs_ceiling": round(med["plain_down_s"] / med["down_s"], 3),
        "download_cpu_s": round(med["down_cpu_s"], 2),
        "server_rss_growth_mb_max": round(
            max(max(r["up_rss_growth_mb"], r["down_rss_growth_mb"]) for r in rows), 1
        ),
        "server_rss_end_mb": round(server_rss_mb, 1),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, args = sys.argv[2], sys.argv[3:]
        if mode == "server":
            _child_server(Path(args[0]))
        elif mode == "plain-recv":
            _child_plain_recv(Path(args[0]), int(args[1]))
        elif mode == "plain-send":
            _child_plain_send(Path(args[0]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="file size in MiB (default 500)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument(
        "--dir", default=None, help="folder for the files (default: the system temp folder)"
    )
    args = parser.parse_args()
    result = run(args.mb, args.repeat, args.dir)
    result["dir"] = args.dir or tempfile.gettempdir()
    print("RESULT " + json.dumps(result), flush=True)
    ok = (
        result["upload_vs_ceiling"] >= 0.6
        and result["download_vs_ceiling"] >= 0.6
        and result["server_rss_growth_mb_max"] < 32
    )
    print("targets (>= 60% of ceiling each way, RSS growth < 32 MB):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
