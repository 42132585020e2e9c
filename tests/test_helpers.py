"""The test kit in tests/helpers.py: wait_for and make_file."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import WaitTimeout, make_file, wait_for


def test_wait_for_returns_the_truthy_value_once_it_comes() -> None:
    box: list[str] = []
    timer = threading.Timer(0.05, box.append, args=("ready",))
    timer.start()
    try:
        assert wait_for(lambda: box, timeout=5) == ["ready"]
    finally:
        timer.cancel()


def test_wait_for_fails_naming_the_condition() -> None:
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"after 0\.1 s waiting for the moon"):
        wait_for(lambda: None, timeout=0.1, what="the moon")
    assert time.monotonic() - t0 >= 0.1
    with pytest.raises(AssertionError, match=r"test_helpers\.py:\d+: .*lambda: 0 == 1"):
        wait_for(lambda: 0 == 1, timeout=0)


def test_make_file_is_reproducible_and_returns_the_sha(tmp_path: Path) -> None:
    size = 2 * 1024 * 1024 + 3
    sha = make_file(tmp_path / "a.bin", size, seed=7)
    data = (tmp_path / "a.bin").read_bytes()
    assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
    assert make_file(tmp_path / "b.bin", size, seed=7) == sha
    assert make_file(tmp_path / "c.bin", size, seed=8) != sha
    mib = 1024 * 1024
    assert data[:mib] != data[mib : 2 * mib]  # every MiB differs
