"""The test kit: waiting for a condition, and making test files, for tests and benchmarks alike.

One home for what the tests and the benchmarks both need, so neither keeps its own copy:

- ``wait_for(pred, timeout)`` polls ``pred`` until it returns something truthy and returns
  that value; after ``timeout`` seconds it raises ``WaitTimeout`` (an ``AssertionError``,
  so pytest reports a failure that names the condition and where it was written).
  There is no "return False" variant: a condition that never came true is a failure,
  and a caller that wants the value (``frame = wait_for(lambda: rec.get("frame"))``)
  gets it back.
- ``make_file(path, size, seed)`` writes pseudo-random bytes made now (the repository
  carries no binaries, STYLE 13) and returns their SHA-256.

Why here and not elsewhere: this module uses the standard library only (no pytest,
no project modules), so a benchmark script imports it (``from tests.helpers import
make_file``; bench/ already puts the project root on ``sys.path``) without pulling in
the test runner. The dependency runs one way, benchmarks -> test kit: the tests never
import ``bench/``, whose sibling modules import each other by bare name and start
processes. A top-level module was the other candidate; it would sit among the
application's own modules (the flat layout PyInstaller packages from), so it was not
chosen.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

WAIT_S = 20.0  # generous: a passing wait returns as soon as its condition holds
POLL_S = 0.01  # polling interval of the deadline loop, not a synchronisation
_MIB = 1024 * 1024


class WaitTimeout(AssertionError):
    """A ``wait_for`` condition did not come true in time."""


def _describe(pred: Callable[[], object]) -> str:
    """Where ``pred`` was written and its source line, for the failure message."""
    code = getattr(pred, "__code__", None)
    if code is None:
        return repr(pred)
    line = linecache.getline(code.co_filename, code.co_firstlineno).strip()
    return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}: {line}"


def wait_for(pred: Callable[[], T], timeout: float = WAIT_S, what: str | None = None) -> T:
    """Poll ``pred`` until it returns a truthy value and return that value.

    Raises ``WaitTimeout`` when ``timeout`` seconds pass first (``pred`` is asked one
    last time at the deadline). ``what`` names the condition in the failure message;
    without it the message quotes the line where ``pred`` was written.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout:g} s waiting for {what or _describe(pred)}"
            )
        time.sleep(POLL_S)


def make_file(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes to ``path``; return their SHA-256 (hex).

    The same ``seed`` gives the same bytes. Every MiB differs (its number up front),
    so a block written at the wrong offset changes the hash.
    """
    base = random.Random(seed).randbytes(_MIB)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        done = 0
        while done < size:
            chunk = ((done // _MIB).to_bytes(8, "big") + base[8:])[: size - done]
            f.write(chunk)
            digest.update(chunk)
            done += len(chunk)
    return digest.hexdigest()
