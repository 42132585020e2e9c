"""server.py as a program: ready line, a real hello, clean exit on SIGTERM/SIGINT, lean imports."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import security
import utils
from tests.helpers import READY_LINE, identity_fingerprint, start_server_py, tls_connect
from utils import Msg

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(READY_LINE)


def start_server(tmp_path: Path) -> tuple[subprocess.Popen, int, int]:
    return start_server_py(tmp_path / "files")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ready_line_hello_and_clean_exit(tmp_path, sig):
    proc, tcp_port, udp_port = start_server(tmp_path)
    try:
        assert tcp_port > 0 and udp_port > 0
        with tls_connect(tcp_port, timeout=5) as sock:
            sock.sendall(
                utils.encode_frame(
                    {"type": Msg.HELLO, "protocol": 2, "username": "Cli", "session": "S"}
                )
            )
            reader = utils.FrameReader(sock)
            welcome = reader.read().header
            assert welcome["type"] == Msg.WELCOME
            assert welcome["media"]["udp_port"] == udp_port
            t0 = time.monotonic()
            proc.send_signal(sig)
            notice = reader.read().header  # the client is told before the server goes
            assert notice["type"] == Msg.ERROR and notice["code"] == "server_shutdown"
            assert proc.wait(timeout=5) == 0
            assert time.monotonic() - t0 < 2.0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


def test_help_explains_every_option():
    out = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for opt in ("--host", "--tcp-port", "--udp-port", "--storage", "--max-file-mb", "--log-level"):
        assert opt in out
    assert "0 lets the OS choose" in out


def test_port_in_use_is_a_message_not_a_traceback(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run(
            [
                *(sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1"),
                *("--tcp-port", str(port), "--udp-port", "0", "--storage", str(tmp_path / "f")),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert res.returncode == 1
    assert "cannot start" in res.stderr and "Traceback" not in res.stderr


def test_import_server_without_gui_or_device_libraries():
    code = (
        "import sys\n"
        "for name in ('PyQt5', 'cv2', 'pyaudio', 'mss', 'PIL'):\n"
        "    sys.modules[name] = None\n"
        "import server\n"
        "srv = server.ConferenceServer()\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('PyQt5', 'cv2', 'pyaudio', 'mss', 'PIL') and sys.modules[m] is not None]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_banner_status_line_and_log_file(tmp_path):
    """The console names the address to type and the ports to open, then reports status."""
    log_file = tmp_path / "server.log"
    proc = subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1"),
            *("--tcp-port", "0", "--udp-port", "0", "--storage", str(tmp_path / "files")),
            *("--status-interval", "0.5", "--log-file", str(log_file)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        m = READY.search(proc.stdout.readline())
        assert m is not None
        tcp, udp = m.group(2), m.group(4)
        banner = [proc.stdout.readline() for _ in range(7)]
        short = security.short_fingerprint(identity_fingerprint())
        assert any(line.strip() == f"Fingerprint: {short}" for line in banner), banner
        assert any(line.strip() == f"127.0.0.1:{tcp}" for line in banner), banner
        assert any(f"TCP {tcp}" in line and f"UDP {udp}" in line for line in banner), banner
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "status: sessions=0" not in log_file.read_text():
            time.sleep(0.1)
        text = log_file.read_text()
        assert "status: sessions=0 participants=0 in=" in text
        assert "kbit/s out=" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        proc.communicate(timeout=5)


def test_fingerprint_flag_makes_the_identity_once_and_prints_it(tmp_path):
    """``server.py --fingerprint --data-dir X``: full and short, the same every time, key 0600."""

    def run() -> list[str]:
        res = subprocess.run(
            [sys.executable, str(ROOT / "server.py"), "--fingerprint", "--data-dir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout.split()

    first = run()
    assert first[0] == "fingerprint:" and len(first[1]) == 64 and first[2] == "short:"
    assert first[3] == security.short_fingerprint(first[1])
    assert run() == first  # made once, then read
    key = tmp_path / "server-identity" / "server-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert security.load_or_create_identity(tmp_path / "server-identity").fingerprint == first[1]


def test_plain_protocol_1_client_gets_a_clear_error_then_a_clean_close(tmp_path):
    """No TLS (an old client): one plain unsupported_protocol frame, then EOF, at once."""
    proc, tcp_port, _ = start_server(tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as sock:
            hello = {"type": Msg.HELLO, "protocol": 1, "username": "Old", "session": "S"}
            t0 = time.monotonic()
            sock.sendall(utils.encode_frame(hello))
            reader = utils.FrameReader(sock)
            h = reader.read().header
            assert h["type"] == Msg.ERROR and h["code"] == "unsupported_protocol"
            assert h["supported"] == [2]
            assert h["message"] == "This server speaks FusionMeet protocol 2; update FusionMeet."
            with pytest.raises(utils.ConnectionClosed):
                reader.read()
            assert time.monotonic() - t0 < 2.0  # never a hang
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        proc.communicate(timeout=5)
