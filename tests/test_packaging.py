"""The one-file server executable: built with PyInstaller, it starts and serves a client."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys

import pytest

import utils
from tests.conftest import ROOT
from tests.helpers import tls_connect
from utils import Msg

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("PyInstaller") is None,
        reason="PyInstaller is not installed (requirements-dev.txt has it)",
    ),
]
READY = re.compile(r"ready: tcp=127\.0\.0\.1:(\d+) udp=127\.0\.0\.1:(\d+)")


def test_server_executable_starts_and_serves_a_client(tmp_path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_executables.py"), "server", "--dist", dist],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    exe = dist / ("FusionMeet_Server.exe" if sys.platform == "win32" else "FusionMeet_Server")
    assert exe.is_file()
    proc = subprocess.Popen(
        [exe, "--host", "127.0.0.1", "--tcp-port", "0", "--udp-port", "0", "--storage", tmp_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        m = READY.search(proc.stdout.readline())
        assert m is not None, proc.stderr.read() if proc.poll() is not None else "no ready line"
        # The packaged server speaks TLS (cryptography bundled) with the run's identity.
        with tls_connect(int(m.group(1)), timeout=10) as sock:
            sock.sendall(
                utils.encode_frame(
                    {"type": Msg.HELLO, "protocol": 2, "username": "Packaged", "session": "S"}
                )
            )
            welcome = utils.FrameReader(sock).read().header
        assert welcome["type"] == Msg.WELCOME
        assert welcome["media"]["udp_port"] == int(m.group(2))
        assert len(bytes.fromhex(welcome["media"]["key"])) == 32
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.communicate(timeout=5)
