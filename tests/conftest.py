"""Shared fixtures: a real server on OS-chosen loopback ports, real clients, and logfail.

logfail (STYLE 21, after qutebrowser's ``tests/helpers/logfail.py``): a test fails when
the code logs an ERROR-or-worse record, or a thread dies of an uncaught exception,
while the test runs. Where that error is the point of the test, mark the test
``@pytest.mark.allow_errors("why the error is expected")``. Helpers for tests
(``wait_for``, ``make_file``) live in ``tests/helpers.py``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import config  # noqa: E402

# One private data folder per test run: every server's TLS identity (so all share one
# fingerprint, tests/helpers.test_fingerprint) and every client's trust store live here,
# never in the user's folder. Subprocesses (server.py, client.py --headless) inherit it.
os.environ[config.DATA_DIR_ENV] = tempfile.mkdtemp(prefix="fusionmeet-test-data-")
atexit.register(shutil.rmtree, os.environ[config.DATA_DIR_ENV], True)


@pytest.fixture
def server_config(tmp_path: Path, request: pytest.FixtureRequest) -> config.ServerConfig:
    """A config on loopback with OS-chosen ports and a private storage folder.

    Other fields from ``@pytest.mark.parametrize("server_config", [{...}], indirect=True)``.
    """
    return config.ServerConfig(
        host="127.0.0.1",
        tcp_port=0,
        udp_port=0,
        storage_dir=tmp_path / "storage",
        **getattr(request, "param", {}),
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
        cl = ConferenceClient("127.0.0.1", server.tcp_port, expected_fingerprint=server.fingerprint)
        made.append(cl)
        cl.connect(username, session, **kwargs)
        return cl

    yield make
    for cl in made:
        cl.leave()


# --- logfail: an error logged by the code, or a thread's traceback, fails the test ----------

LOGFAIL_LEVEL = logging.ERROR  # records at this level or worse fail the test
LOGFAIL_MAX_SHOWN = 10  # problems quoted in one failure message


class _ErrorRecords(logging.Handler):
    """A root-logger handler that keeps ERROR-or-worse records, formatted, in ``sink``."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=LOGFAIL_LEVEL)
        self.sink = sink
        self.setFormatter(
            logging.Formatter("%(levelname)s %(name)s [thread %(threadName)s]: %(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        # only keep it: failing here would raise inside the code under test
        self.sink.append(self.format(record))


class LogFail:
    """Collects, from every thread, the ERROR records and thread tracebacks of one test."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.problems: list[str] = []  # appended from any thread; list.append is atomic
        self.handler = _ErrorRecords(self.problems)

    def excepthook(
        self, prev: Callable[[threading.ExceptHookArgs], object]
    ) -> Callable[[threading.ExceptHookArgs], object]:
        """A ``threading.excepthook`` that records the traceback, then calls ``prev``."""

        def hook(args: threading.ExceptHookArgs) -> object:
            if not issubclass(args.exc_type, SystemExit):
                name = args.thread.name if args.thread is not None else "<unknown>"
                tb = "".join(
                    traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
                )
                self.problems.append(f"uncaught exception in thread {name}:\n{tb.rstrip()}")
            return prev(args)

        return hook

    def take(self) -> list[str]:
        """The problems so far, forgotten once taken."""
        n = len(self.problems)  # a thread may append meanwhile: keep what came after
        taken = self.problems[:n]
        del self.problems[:n]
        return taken

    def fail_if_any(self, when: str) -> None:
        problems = self.take()
        if self.allowed or not problems:
            return
        shown = "\n\n".join(problems[:LOGFAIL_MAX_SHOWN])
        more = len(problems) - LOGFAIL_MAX_SHOWN
        pytest.fail(
            f"logfail: the code logged {len(problems)} unexpected error(s) during {when}; "
            'if the error is the point of the test, mark it @pytest.mark.allow_errors("why")'
            f"\n\n{shown}" + (f"\n\n... and {more} more" if more > 0 else ""),
            pytrace=False,
        )


_LOGFAIL = pytest.StashKey[LogFail]()


@pytest.fixture(autouse=True)
def logfail(request: pytest.FixtureRequest) -> Iterator[LogFail]:
    """Watch the root logger and ``threading.excepthook`` for the whole test.

    Autouse, so it is set up before (and torn down after) the test's other fixtures:
    errors logged while a server stops count too. Problems seen up to the end of the
    test body fail the test itself; those seen during teardown fail its teardown.
    A thread left running by an earlier test that logs now is reported here, with its
    thread name in the message.
    """
    marker = request.node.get_closest_marker("allow_errors")
    if marker is not None and not (marker.args or marker.kwargs.get("reason")):
        pytest.fail('@pytest.mark.allow_errors needs a reason: allow_errors("why")', pytrace=False)
    watch = LogFail(allowed=marker is not None)
    root = logging.getLogger()
    prev_hook = threading.excepthook
    root.addHandler(watch.handler)
    threading.excepthook = watch.excepthook(prev_hook)
    request.node.stash[_LOGFAIL] = watch
    try:
        yield watch
    finally:
        threading.excepthook = prev_hook
        root.removeHandler(watch.handler)
    watch.fail_if_any("teardown")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """After the test body: fail a passing test that logged an unexpected error."""
    watch = item.stash.get(_LOGFAIL, None)
    try:
        result = yield
    except BaseException:
        if watch is not None:
            watch.take()  # the test failed anyway; its captured log shows the records
        raise
    if watch is not None:
        watch.fail_if_any("the test")
    return result
