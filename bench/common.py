"""What the benchmarks share: ``server.py`` started in its own process on loopback."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_READY = re.compile(r"ready: tcp=\S*:(\d+) udp=\S*:(\d+)")


def start_server(
    storage: str | Path, tcp_port: int = 0, udp_port: int = 0, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, int, int]:
    """Run ``server.py`` on 127.0.0.1 (ports: 0 lets the OS choose); returns it and its ports.

    The server's output is drained on a thread so it never blocks on a full pipe.
    """
    proc = subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1"),
            *("--tcp-port", str(tcp_port), "--udp-port", str(udp_port)),
            *("--storage", str(storage)),
            *("--log-level", "WARNING", "--no-announce"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"server exited with {proc.wait()}")
        m = _READY.search(line)
        if m:
            threading.Thread(
                target=_drain, args=(proc.stdout,), name="server-log", daemon=True
            ).start()
            return proc, int(m.group(1)), int(m.group(2))
    proc.kill()
    raise SystemExit("server did not print its ports in time")


def _drain(stream) -> None:
    for _ in stream:
        pass


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, then kill if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT_S)
