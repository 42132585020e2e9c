"""Benchmark: bulk transfer over loopback, plain TCP (sendfile) against TLS 1.3, each way.

    .venv/bin/python bench/tls_throughput.py [--mb 500] [--repeat 3] [--chunks 16,256,1024,4096]

A child process plays the server (it holds a fresh identity made with
security.py and uses ``server_handshake``); this process is the client
(``client_handshake`` pinned to the child's fingerprint). "upload" moves the
file client -> server, "download" server -> client. The sender reads a file (in
the page cache) and the receiver discards the bytes into one reused buffer, so
the figures are the transport's ceiling, without FusionMeet's hashing or disk
writes. Modes:

- ``plain-sendfile``: ``socket.sendfile`` (zero copy), what protocol 1 does;
- ``plain-send``: ``sendall`` of CHUNK bytes read with ``readinto``;
- ``sslsocket-send``: ``sendall`` of CHUNK bytes through an ``ssl.SSLSocket``, which
  makes one or two system calls per 16 KiB TLS record;
- ``sslsocket-sendfile``: ``SSLSocket.sendfile`` (Python falls back to send());
- ``tls-send``: ``security.TLSStream`` (what FusionMeet uses: memory BIOs, the socket
  read in ``TLS_RECV_BLOCK_BYTES`` and written in ``TLS_SEND_BLOCK_BYTES`` blocks);
- ``tls-sendfile``: ``TLSStream.sendfile`` (a readinto/sendall loop).

Timing runs from the end of the handshake to the receiver's last byte (an upload
ends when the server's one-byte acknowledgement arrives).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import security  # noqa: E402

MB = 1024 * 1024
KIB = 1024
FILE_BLOCK_BYTES = 4 * MB
WAIT_S = 300.0
RECV_BUFFER_BYTES = 1 * MB
ACK = b"!"


def make_file(path: Path, size: int) -> None:
    block = os.urandom(FILE_BLOCK_BYTES)
    with path.open("wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def send_file(sock: socket.socket, path: Path, method: str, chunk: int) -> None:
    with path.open("rb") as f:
        if method == "sendfile":
            sock.sendfile(f)
            return
        buf = bytearray(chunk)
        view = memoryview(buf)
        while n := f.readinto(buf):
            sock.sendall(view[:n])


def receive(sock: socket.socket, size: int) -> None:
    buf = bytearray(RECV_BUFFER_BYTES)
    got = 0
    while got < size:
        n = sock.recv_into(buf, min(len(buf), size - got))
        if n == 0:
            raise ConnectionError(f"closed after {got} of {size} bytes")
        got += n


# --- child: the server side ---------------------------------------------------------


def child(path: Path, size: int) -> int:
    ident = security.load_or_create_identity(Path(tempfile.mkdtemp()) / "identity")
    ctx = security.server_context(ident)
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    lst.settimeout(WAIT_S)
    print(json.dumps({"port": lst.getsockname()[1], "fingerprint": ident.fingerprint}), flush=True)
    for line in sys.stdin:
        op, mode, chunk = line.split()
        conn, _ = lst.accept()
        conn.settimeout(WAIT_S)
        sock = conn
        if mode.startswith("sslsocket"):
            sock = ctx.wrap_socket(conn, server_side=True)
        elif mode.startswith("tls"):
            sock = security.server_handshake(conn, ctx, timeout=WAIT_S)
        with sock:
            if op == "recv":
                receive(sock, size)
                sock.sendall(ACK)
            else:
                method = "sendfile" if mode.endswith("sendfile") else "send"
                send_file(sock, path, method, int(chunk))
                sock.recv(1)  # wait for the client's EOF/ack before closing
        print("done", flush=True)
    return 0


# --- parent: the client side -------------------------------------------------------------


def run_one(proc, port: int, fp: str, path: Path, size: int, way: str, mode: str, chunk: int):
    op = "recv" if way == "upload" else "send"
    proc.stdin.write(f"{op} {mode} {chunk}\n")
    proc.stdin.flush()
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    if mode.startswith("sslsocket"):
        sock = security.client_context().wrap_socket(sock)
        if not security.fingerprint_matches(fp, security.peer_fingerprint(sock)):
            raise RuntimeError("fingerprint")
    elif mode.startswith("tls"):
        sock = security.client_handshake(
            sock,
            security.client_context(),
            f"127.0.0.1:{port}",
            None,
            timeout=WAIT_S,
            expected_fingerprint=fp,
        )
    with sock:
        t0 = time.perf_counter()
        if way == "upload":
            send_file(sock, path, "sendfile" if mode.endswith("sendfile") else "send", chunk)
            if sock.recv(1) != ACK:
                raise ConnectionError("no acknowledgement")
        else:
            receive(sock, size)
            sock.sendall(ACK)
        elapsed = time.perf_counter() - t0
    if proc.stdout.readline().strip() != "done":
        raise RuntimeError("child failed")
    return size / MB / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunks", default="16,256,1024,4096", help="TLS write sizes in KiB")
    ap.add_argument("--child", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    size = args.mb * MB
    if args.child:
        return child(Path(args.child), size)
    chunks = [int(c) * KIB for c in args.chunks.split(",")]
    cases = [("plain-sendfile", 256 * KIB), ("plain-send", 256 * KIB)]
    cases += [("sslsocket-send", c) for c in chunks]
    cases += [("sslsocket-sendfile", 256 * KIB)]
    cases += [("tls-send", c) for c in chunks]
    cases += [("tls-sendfile", 256 * KIB)]
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        path = Path(tmp) / "payload.bin"
        make_file(path, size)
        proc = subprocess.Popen(
            [sys.executable, __file__, "--mb", str(args.mb), "--child", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            hello = json.loads(proc.stdout.readline())
            for _ in range(args.repeat):  # rounds, so every case sees the same load
                for mode, chunk in cases:
                    for way in ("upload", "download"):
                        rate = run_one(
                            proc, hello["port"], hello["fingerprint"], path, size, way, mode, chunk
                        )
                        results.setdefault(f"{way} {mode} {chunk // KIB}KiB", []).append(rate)
        finally:
            proc.stdin.close()
            proc.wait(WAIT_S)
    print(f"{args.mb} MB over loopback, median of {args.repeat} (MB/s, MB = 2**20 bytes):")
    summary = {}
    for name, rates in results.items():
        med = statistics.median(rates)
        summary[name] = round(med)
        print(f"  {name:<32} {med:8.0f}   ({', '.join(f'{r:.0f}' for r in rates)})")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
