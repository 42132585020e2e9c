"""The logfail fixture of conftest.py, run on small tests in a separate pytest process."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

INNER_TESTS = """
import logging
import threading

import pytest

log = logging.getLogger("fusionmeet.inner")


def test_logged_error_fails():
    log.error("disk on fire")


def test_logged_exception_fails():
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("sum went wrong")


def test_exception_on_a_thread_fails():
    t = threading.Thread(target=lambda: 1 / 0, name="inner-worker")
    t.start()
    t.join()


def test_error_on_a_thread_fails():
    t = threading.Thread(target=lambda: log.error("from a worker"), name="inner-logger")
    t.start()
    t.join()


@pytest.fixture
def noisy_teardown():
    yield
    log.error("while stopping")


def test_error_in_teardown_fails(noisy_teardown):
    pass


def test_warning_passes():
    log.warning("only a warning")


@pytest.mark.allow_errors("the error is the point of this test")
def test_opted_out_error_passes():
    log.error("expected")
    t = threading.Thread(target=lambda: 1 / 0, name="inner-expected")
    t.start()
    t.join()


@pytest.mark.allow_errors
def test_opt_out_without_reason_is_refused():
    pass


def test_failing_test_reports_its_own_failure():
    log.error("context")
    assert 1 == 2
"""


def run_inner(tmp_path: Path) -> tuple[dict[str, str], str]:
    """Run INNER_TESTS with a copy of our conftest; return each test's outcome and the output."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    (tmp_path / "pytest.ini").write_text(
        textwrap.dedent(
            """\
            [pytest]
            markers =
                allow_errors(reason): expected errors
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    seen: dict[str, set[str]] = {}
    for m in re.finditer(r"^(PASSED|FAILED|ERROR) test_inner\.py::(\w+)", proc.stdout, re.M):
        seen.setdefault(m.group(2), set()).add(m.group(1))
    return {name: "+".join(sorted(how)) for name, how in seen.items()}, proc.stdout


def test_logfail_fails_errors_and_lets_opted_out_tests_pass(tmp_path: Path) -> None:
    outcomes, out = run_inner(tmp_path)
    assert outcomes == {
        "test_logged_error_fails": "FAILED",
        "test_logged_exception_fails": "FAILED",
        "test_exception_on_a_thread_fails": "FAILED",
        "test_error_on_a_thread_fails": "FAILED",
        "test_error_in_teardown_fails": "ERROR+PASSED",
        "test_warning_passes": "PASSED",
        "test_opted_out_error_passes": "PASSED",
        "test_opt_out_without_reason_is_refused": "ERROR",
        "test_failing_test_reports_its_own_failure": "FAILED",
    }, out
    assert "ERROR fusionmeet.inner [thread MainThread]: disk on fire" in out
    assert "ZeroDivisionError" in out
    assert "uncaught exception in thread inner-worker" in out
    assert "[thread inner-logger]: from a worker" in out
    assert "during teardown" in out and "while stopping" in out
    assert "allow_errors needs a reason" in out
    assert "assert 1 == 2" in out
