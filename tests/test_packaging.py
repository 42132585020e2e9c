"""The one-file server executable: built with PyInstaller, it starts and serves a client."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys

import pytest

import config
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
                    {
                        "type": Msg.HELLO,
                        "protocol": config.PROTOCOL_VERSION,
                        "username": "Packaged",
                        "session": "S",
                    }
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


# A stub is ~15 KB; the real libx264 and libx265 are several MB.
GPL_STUB_MAX_BYTES = 64 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the GPL stubs are Linux-only")
def test_client_executable_has_no_gpl_encoders_and_still_sends_vp8(server, tmp_path) -> None:
    """The client bundle's libx264/libx265 are the stubs, and its VP8 still encodes."""
    import json

    from PyInstaller.archive.readers import CArchiveReader

    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_executables.py"), "client", "--dist", dist],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    exe = dist / "FusionMeet_Client"
    toc = CArchiveReader(str(exe)).toc
    gpl = {name: entry[2] for name, entry in toc.items() if re.search(r"libx26[45]-", name)}
    assert gpl, "PyAV's libavcodec needs libx264/libx265: stand-ins must be bundled"
    assert all(size <= GPL_STUB_MAX_BYTES for size in gpl.values()), gpl
    stats = tmp_path / "stats.json"
    run = subprocess.run(
        [
            exe,
            "--headless",
            *("--server", f"127.0.0.1:{server.tcp_port}", "--name", "Bundled", "--session", "S"),
            *("--video", "pattern", "--audio", "none", "--duration", "3", "--stats", stats),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(stats.read_text("utf-8"))["video_frames_sent"] >= 10, run.stderr[-3000:]
