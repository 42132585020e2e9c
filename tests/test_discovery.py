"""LAN discovery over DNS-SD, between two network namespaces made by the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

import config
import discovery
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2",
)

NET = "10.231.{}.{}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str, str, str]]:
    """Two namespaces joined by a veth pair: (ns_a, addr_a, ns_b, addr_b)."""
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"fmA{tag}", f"fmB{tag}"
    dev_a, dev_b = f"fa{tag}", f"fb{tag}"
    subnet = int(tag[:2], 16)
    addr_a, addr_b = NET.format(subnet, 1), NET.format(subnet, 2)
    try:
        _ip("netns", "add", ns_a)
    except subprocess.CalledProcessError as exc:  # e.g. a container without CAP_NET_ADMIN
        pytest.skip(f"cannot create network namespaces here: {exc.stderr!r}")
    _ip("netns", "add", ns_b)
    try:
        _ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        yield ns_a, addr_a, ns_b, addr_b
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _in_ns(ns: str, code: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", code]


def _server_in_ns(ns: str, tmp_path, *options: str) -> tuple[subprocess.Popen, int]:
    """server.py on 0.0.0.0 (so it announces itself) inside ``ns``; returns it and its TCP port."""
    server = subprocess.Popen(
        [
            *("ip", "netns", "exec", ns, sys.executable, str(ROOT / "server.py")),
            *("--tcp-port", "0", "--udp-port", "0", "--storage", str(tmp_path / "files")),
            *options,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    ready = server.stdout.readline()
    if "ready: tcp=0.0.0.0:" not in ready:
        server.kill()
        raise AssertionError(f"no ready line: {ready!r}")
    return server, int(ready.split("tcp=0.0.0.0:")[1].split()[0])


def test_found_server_address_omits_default_port() -> None:
    assert discovery.FoundServer("x", "10.0.0.5", config.DEFAULT_TCP_PORT, 5001).address == (
        "10.0.0.5"
    )
    assert discovery.FoundServer("x", "10.0.0.5", 6000, 6001).address == "10.0.0.5:6000"


def test_browser_in_another_namespace_finds_the_announced_server(netns_pair) -> None:
    ns_a, addr_a, ns_b, _ = netns_pair
    announcer = subprocess.Popen(
        _in_ns(
            ns_a,
            "import discovery, sys\n"
            "a = discovery.ServerAnnouncer(6123, 6124, name='Lab server')\n"
            "print('announced', a.start(), discovery.lan_addresses(), flush=True)\n"
            "sys.stdin.read()\n"
            "a.stop()\n",
        ),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = announcer.stdout.readline()
        assert line.startswith("announced True"), line
        assert addr_a in line  # the banner's LAN address, not 0.0.0.0 or loopback
        out = subprocess.run(
            _in_ns(
                ns_b,
                "import discovery\n"
                "for s in discovery.browse(4.0): print(s.name, s.host, s.tcp_port, s.udp_port)\n",
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert f"Lab server {addr_a} 6123 6124" in out.stdout, out.stdout + out.stderr
    finally:
        announcer.communicate("", timeout=10)


def test_browse_without_zeroconf_returns_nothing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "zeroconf", None)
    assert discovery.browse(0.1) == []
    assert discovery.ServerAnnouncer(1, 2).start() is False


def test_real_server_is_announced_with_its_lan_address(netns_pair, tmp_path) -> None:
    """server.py on 0.0.0.0 in one namespace: its banner and DNS-SD name the veth address."""
    ns_a, addr_a, ns_b, _ = netns_pair
    server, tcp_port = _server_in_ns(ns_a, tmp_path, "--name", "Room 4")
    try:
        banner = [server.stdout.readline() for _ in range(5)]
        assert any(line.strip() == f"{addr_a}:{tcp_port}" for line in banner), banner
        out = subprocess.run(
            _in_ns(
                ns_b,
                "import discovery\n"
                "for s in discovery.browse(4.0): print(s.name, s.host, s.tcp_port)\n",
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert f"Room 4 {addr_a} {tcp_port}" in out.stdout, out.stdout + out.stderr
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0
        server.communicate(timeout=5)


DIALOG_PROBE = """
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PyQt5.QtCore import QSettings, QTimer
from PyQt5.QtWidgets import QApplication
import login_dialog
app = QApplication([])
settings = QSettings(sys.argv[1], QSettings.IniFormat)
dialog = login_dialog.LoginDialog(settings=settings, discover=True)
box = dialog.address_edit
def check():
    items = [box.itemText(i) for i in range(box.count())]
    if any(":" in item for item in items):
        print("found", *items, flush=True)
        dialog.reject()
        app.quit()
QTimer.singleShot(15000, app.quit)
timer = QTimer(); timer.timeout.connect(check); timer.start(100)
app.exec_()
"""


def test_join_dialog_lists_the_server_found_on_the_lan(netns_pair, tmp_path) -> None:
    """The join dialog in one namespace offers server.py announced in the other."""
    ns_a, addr_a, ns_b, _ = netns_pair
    server, tcp_port = _server_in_ns(ns_a, tmp_path)
    try:
        out = subprocess.run(
            [*_in_ns(ns_b, DIALOG_PROBE), str(tmp_path / "settings.ini")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"{addr_a}:{tcp_port}" in out.stdout.split(), out.stdout + out.stderr[-2000:]
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0
        server.communicate(timeout=5)


def test_txt_record_carries_the_fingerprint_and_bad_ones_are_ignored():
    import discovery

    fp = "0123456789abcdef" * 4
    props = discovery.announced_properties(5001, fp)
    assert props == {"udp": "5001", "protocol": "2", "fp": fp}
    assert discovery.announced_fingerprint(props) == fp
    assert discovery.announced_fingerprint({"fp": fp.upper()}) == fp
    for bad in ("", "zz" * 32, fp[:32], fp + "00"):  # short ones cannot be pinned
        assert discovery.announced_fingerprint({"fp": bad}) == ""
    assert "fp" not in discovery.announced_properties(5001, "")
