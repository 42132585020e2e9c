"""Shared fixtures: a real server on OS-chosen loopback ports, and real clients."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import config  # noqa: E402


@pytest.fixture
def server_config(tmp_path: Path) -> config.ServerConfig:
    """A config on loopback with OS-chosen ports and a private storage folder."""
    return config.ServerConfig(
        host="127.0.0.1", tcp_port=0, udp_port=0, storage_dir=tmp_path / "storage"
    )


@pytest.fixture
def server(server_config: config.ServerConfig):
    """A running ConferenceServer; stopped (threads joined, ports freed) afterwards."""
    from server import ConferenceServer

    srv = ConferenceServer(server_config)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_client(server):
    """Factory for connected ConferenceClients; every one is left at teardown."""
    from client import ConferenceClient

    made: list[ConferenceClient] = []

    def make(username: str, session: str = "Room", **kwargs) -> ConferenceClient:
        cl = ConferenceClient("127.0.0.1", server.tcp_port)
        made.append(cl)
        cl.connect(username, session, **kwargs)
        return cl

    yield make
    for cl in made:
        cl.leave()

