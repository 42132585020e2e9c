"""The window's controllers with fake clients and transfers (pytest-qt, offscreen; no server).

Fakes report from their own threads, as the real transfers and connects do, so
every report crosses into the GUI thread through the queued signals.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("PyQt5")

from PyQt5.QtWidgets import QApplication  # noqa: E402

import utils  # noqa: E402
from gui_controllers import LocalMedia, ReconnectController, Roster, TransferTracker  # noqa: E402
from gui_media import MediaController  # noqa: E402
from login_dialog import JoinRequest  # noqa: E402

WAIT_MS = 3000


def on_thread(fn, *args) -> None:
    """Run ``fn`` on a short-lived thread, as a transfer or network thread would."""
    t = threading.Thread(target=fn, args=args, name="fake-worker")
    t.start()
    t.join()


class FakeTransfer:
    """A file_sharing_module.Transfer stand-in that the test drives."""

    def __init__(self, on_progress, on_done) -> None:
        self.on_progress = on_progress
        self.on_done = on_done
        self.error: str | None = None
        self.path: Path | None = None
        self.cancelled = False
        self.waited = False

    def progress(self, done: int, total: int) -> None:
        on_thread(self.on_progress, done, total)

    def finish(self, error: str | None = None, path: Path | None = None) -> None:
        self.error, self.path = error, path
        on_thread(self.on_done, self)

    def cancel(self) -> None:
        self.cancelled = True

    def wait(self, timeout: float | None = None) -> bool:
        self.waited = True
        return True


class FakeFiles:
    """upload()/download() stand-ins recording what was started."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str, FakeTransfer]] = []
        self.refuse: Exception | None = None

    def upload(self, client, path, on_progress=None, on_done=None) -> FakeTransfer:
        return self._start("upload", path, on_progress, on_done)

    def download(self, client, file_id, folder, on_progress=None, on_done=None) -> FakeTransfer:
        return self._start("download", file_id, on_progress, on_done)

    def _start(self, kind: str, what: str, on_progress, on_done) -> FakeTransfer:
        if self.refuse is not None:
            raise self.refuse
        t = FakeTransfer(on_progress, on_done)
        self.started.append((kind, what, t))
        return t


@pytest.fixture
def files() -> FakeFiles:
    return FakeFiles()


@pytest.fixture
def tracker(qtbot, files, tmp_path) -> TransferTracker:
    t = TransferTracker(tmp_path / "downloads", upload=files.upload, download=files.download)
    yield t
    t.close()


def make_files(tmp_path: Path, **sizes: int) -> list[str]:
    paths = []
    for name, size in sizes.items():
        p = tmp_path / f"{name}.bin"
        p.write_bytes(b"x" * size)
        paths.append(str(p))
    return paths


# --- TransferTracker ------------------------------------------------------------------


def test_uploads_report_together_until_the_last_finishes(qtbot, tracker, files, tmp_path):
    reports: list = []
    tracker.uploads_progressed.connect(lambda *a: reports.append(a))
    tracker.upload(make_files(tmp_path, a=1000, b=3000))
    assert reports[-1] == (["a.bin", "b.bin"], 0, 4000)  # shown at once, sizes known
    (_, _, ta), (_, _, tb) = files.started
    with qtbot.wait_signal(tracker.uploads_progressed) as got:
        ta.progress(500, 1000)
    assert got.args == [["a.bin", "b.bin"], 500, 4000]
    with qtbot.wait_signal(tracker.uploads_progressed) as got:
        ta.finish()
    assert got.args == [["b.bin"], 0, 3000]
    with qtbot.wait_signals([tracker.error_occurred, tracker.uploads_progressed]):
        tb.finish(error="The file is larger than the server accepts.")
    assert reports[-1] == ([], 0, 0)  # nothing running: the line goes away
    assert tracker.running == 0


def test_upload_errors_are_sentences(qtbot, tracker, files, tmp_path):
    errors: list[str] = []
    tracker.error_occurred.connect(errors.append)
    tracker.upload([str(tmp_path / "nowhere.txt")])
    assert errors == ["", "nowhere.txt is not a file."]
    files.refuse = OSError("no route to host")
    tracker.upload(make_files(tmp_path, c=10))
    assert errors[-1] == "Could not share c.bin: no route to host"
    files.refuse = None
    tracker.upload(make_files(tmp_path, d=10))
    with qtbot.wait_signal(tracker.error_occurred) as got:
        files.started[-1][2].finish(error="boom")
    assert got.args == ["Could not share d.bin: boom"]


def test_download_progress_and_finish(qtbot, tracker, files, tmp_path):
    shown: list = []
    tracker.download_progressed.connect(lambda *a: shown.append(a))
    tracker.download({"id": "f1", "name": "Roadmap.pdf", "size": 4096})
    assert shown == [("f1", 0, 4096)]
    assert (tmp_path / "downloads").is_dir()
    kind, fid, t = files.started[0]
    assert (kind, fid) == ("download", "f1")
    with qtbot.wait_signal(tracker.download_progressed) as got:
        t.progress(1024, 4096)
    assert got.args == ["f1", 1024, 4096]
    saved = tmp_path / "downloads" / "Roadmap.pdf"
    with qtbot.wait_signal(tracker.download_finished) as got:
        t.finish(path=saved)
    assert got.args == ["f1", saved]
    with qtbot.assert_not_emitted(tracker.download_progressed):
        t.progress(4096, 4096)  # a late report of a finished download
        QApplication.processEvents()  # the queued report, posted already, is handled


def test_download_failure_names_the_file(qtbot, tracker, files):
    tracker.download({"id": "f2", "name": "big.iso", "size": 10})
    with qtbot.wait_signal(tracker.download_failed) as got:
        files.started[0][2].finish(error="the connection was lost")
    assert got.args == ["f2", "Could not download big.iso: the connection was lost"]
    files.refuse = OSError("disk full")
    with qtbot.wait_signal(tracker.error_occurred) as got:
        tracker.download({"id": "f3", "name": "x.txt", "size": 1})
    assert got.args == ["Could not download x.txt: disk full"]


def test_close_cancels_and_waits_and_silences(qtbot, tracker, files, tmp_path):
    tracker.upload(make_files(tmp_path, a=10))
    tracker.download({"id": "f1", "name": "b", "size": 1})
    tracker.close()
    assert all(t.cancelled and t.waited for _, _, t in files.started)
    assert tracker.running == 0
    with qtbot.assert_not_emitted(tracker.error_occurred):
        files.started[0][2].finish(error="cancelled")
        QApplication.processEvents()


def test_delete_reports_a_failure(qtbot, tracker):
    class Offline:
        def delete_file(self, fid: str) -> None:
            raise OSError("not connected")

    tracker.client = Offline()
    with qtbot.wait_signal(tracker.error_occurred) as got:
        tracker.delete("f1")
    assert got.args == ["Could not delete: not connected"]


# --- ReconnectController ----------------------------------------------------------------


class FakeClient:
    def __init__(self, name: str = "old") -> None:
        self.name = name
        self.left = threading.Event()

    def leave(self) -> None:
        self.left.set()


REQUEST = JoinRequest("10.0.0.5", 6000, "Alice", "Standup", "", True, True)


@pytest.fixture
def reconnect_threads_end():
    yield
    assert not [t for t in threading.enumerate() if t.name == "gui-reconnect"]


def test_reconnect_leaves_the_old_client_and_reports_the_new(qtbot, reconnect_threads_end):
    new = FakeClient("new")
    seen: list[str] = []

    def connect(request):
        seen.append(threading.current_thread().name)
        return new, {"type": "welcome"}

    ctl = ReconnectController(connect)
    old = FakeClient()
    with qtbot.wait_signal(ctl.reconnect_started):
        with qtbot.wait_signal(ctl.reconnected, timeout=WAIT_MS) as got:
            ctl.reconnect(old, REQUEST)
    assert got.args == [new] and old.left.is_set() and seen == ["gui-reconnect"]
    ctl.close()
    assert not new.left.is_set()


class Refused(Exception):
    """A JoinError-like refusal: ``code`` and ``message``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code, self.message = code, "refused"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionRefusedError("refused"), "Could not reach the server at 10.0.0.5:6000."),
        (Refused(utils.Err.USERNAME_TAKEN), "Someone in this session is already called “Alice”."),
    ],
)
def test_reconnect_failure_is_explained(qtbot, reconnect_threads_end, error, expected):
    def connect(request):
        raise error

    ctl = ReconnectController(connect)
    with qtbot.wait_signal(ctl.reconnect_failed, timeout=WAIT_MS) as got:
        ctl.reconnect(FakeClient(), REQUEST)
    assert got.args[0].startswith(expected)
    ctl.close()


def test_one_reconnect_at_a_time_and_a_late_join_is_left(qtbot, reconnect_threads_end):
    release = threading.Event()
    made: list[FakeClient] = []

    def connect(request):
        release.wait(WAIT_MS / 1000)
        made.append(FakeClient("late"))
        return made[-1], {}

    ctl = ReconnectController(connect)
    tries: list = []
    ctl.reconnect_started.connect(lambda: tries.append(1))
    ctl.reconnect(FakeClient(), REQUEST)
    ctl.reconnect(FakeClient(), REQUEST)  # still running: ignored
    assert tries == [1] and ctl.running
    with qtbot.assert_not_emitted(ctl.reconnected):
        release.set()
        ctl.close()  # the window is closing while the join completes
        qtbot.waitUntil(lambda: bool(made) and made[0].left.is_set(), timeout=WAIT_MS)
    ctl.reconnect(FakeClient(), REQUEST)  # closed: no more tries
    assert not ctl.running


# --- Roster -------------------------------------------------------------------------------


@pytest.fixture
def roster(qtbot):
    r = Roster()
    r.shown: list = []
    r.notices: list = []
    r.person_shown.connect(lambda pid, name, me, p: r.shown.append((pid, name, me, p)))
    r.notice_issued.connect(r.notices.append)
    r.reset({"id": 1, "username": "Alice", "audio": True, "video": False})
    return r


def test_roster_join_update_leave(qtbot, roster):
    assert roster.shown[-1] == (
        1,
        "Alice",
        True,
        {"id": 1, "username": "Alice", "audio": True, "video": False, "presenting": False},
    )
    with qtbot.wait_signal(roster.recipients_changed) as others:
        roster.on_joined({"id": 2, "username": "Bob", "audio": False, "video": True})
    assert others.args == [[(2, "Bob")]] and roster.notices == ["Bob joined"]
    roster.on_joined({"id": 3, "username": "Chen"}, notice=False)
    roster.on_joined({"id": 1, "username": "Alice"})  # ourselves: not a newcomer
    roster.on_joined({"id": 0, "username": "nobody"})  # not a participant id
    assert sorted(roster.people) == [1, 2, 3] and roster.notices == ["Bob joined"]
    roster.on_updated({"id": 2, "audio": True})
    assert roster.shown[-1][3]["audio"] is True and roster.shown[-1][3]["username"] == "Bob"
    roster.on_updated({"id": 4, "username": "Dana"})  # unknown: a join
    assert roster.notices[-1] == "Dana joined"
    with qtbot.wait_signal(roster.person_left) as left:
        roster.on_left(2, "Bob")
    assert left.args == [2] and roster.notices[-1] == "Bob left"
    roster.on_left(2, "Bob")  # twice: once only
    assert roster.notices.count("Bob left") == 1
    assert roster.names() == {1: "Alice", 3: "Chen", 4: "Dana"}


def test_roster_presenter_changes(qtbot, roster):
    roster.on_joined({"id": 2, "username": "Bob"})
    screens: list = []
    roster.remote_presenter_changed.connect(screens.append)
    roster.on_presenter_changed(2)
    assert screens == ["Bob"] and roster.notices[-1] == "Bob started presenting"
    assert roster.shown[-1][0] == 2 and roster.shown[-1][3]["presenting"]
    roster.on_presenter_changed(None)
    assert screens == ["Bob", None] and roster.notices[-1] == "Bob stopped presenting"
    assert roster.shown[-1][0] == 2 and not roster.shown[-1][3]["presenting"]
    roster.on_presenter_changed(1)  # ourselves: no remote screen, no notice
    assert screens == ["Bob", None] and roster.shown[-1][:2] == (1, "Alice")
    roster.set_own(presenting=True, audio=False)
    assert roster.shown[-1][3]["presenting"] and roster.shown[-1][3]["audio"] is False


# --- LocalMedia -------------------------------------------------------------------------


class Devices(MediaController):
    """Devices that start unless told they are missing."""

    def __init__(self, missing: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.missing = missing
        self.running: set[str] = set()

    def _start(self, kind: str) -> str | None:
        if kind in self.missing:
            return f"No {kind} found."
        self.running.add(kind)
        return None

    def start_camera(self) -> str | None:
        return self._start("camera")

    def stop_camera(self) -> None:
        self.running.discard("camera")

    def start_mic(self) -> str | None:
        return self._start("mic")

    def stop_mic(self) -> None:
        self.running.discard("mic")

    def request_present(self) -> None:
        self.running.add("asked")

    def start_screen(self) -> str | None:
        return self._start("screen")


class MediaClient(FakeClient):
    connected = True

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[bool, bool]] = []

    def set_media(self, audio: bool, video: bool) -> None:
        self.sent.append((audio, video))

    def present_stop(self) -> None:
        self.sent.append(("present_stop",))


def test_local_media_toggles_and_tells_the_server(qtbot):
    devices, client = Devices(), MediaClient()
    local = LocalMedia(devices, audio=True, video=True)
    states: list = []
    local.media_changed.connect(lambda a, v: states.append((a, v)))
    local.attach(client)
    local.start()
    assert devices.running == {"mic", "camera"} and client.sent == [(True, True)]
    local.toggle_mic()
    assert states[-1] == (False, True) and client.sent[-1] == (False, True)
    local.go_offline()
    local.toggle_camera()  # the connection is lost: nothing happens
    assert client.sent[-1] == (False, True) and devices.running == set()
    local.attach(client)
    local.toggle_camera()
    assert client.sent[-1] == (False, False)


def test_local_media_missing_device_is_a_notice_and_stays_off(qtbot):
    devices = Devices(missing=("camera",))
    local = LocalMedia(devices, audio=True, video=True)
    local.attach(MediaClient())
    with qtbot.wait_signal(local.notice_issued) as said:
        local.start()
    assert said.args == ["No camera found."]
    assert local.audio_on and not local.video_on
    with qtbot.wait_signal(local.notice_issued):
        devices.events.device_failed.emit("mic", "unplugged")
    assert not local.audio_on and "mic" not in devices.running


def test_local_media_presenting(qtbot):
    devices, client = Devices(), MediaClient()
    local = LocalMedia(devices, audio=False, video=False)
    local.attach(client)
    with qtbot.wait_signal(local.present_requested):
        local.toggle_present()
    assert "asked" in devices.running and not local.presenting
    with qtbot.wait_signal(local.presenting_changed) as got:
        local.on_present_granted()
    assert got.args == [True] and local.presenting
    with qtbot.wait_signal(local.presenting_changed) as got:
        local.toggle_present()  # stop
    assert got.args == [False] and client.sent[-1] == ("present_stop",)
    with qtbot.wait_signal(local.notice_issued) as said:
        local.on_present_refused("Another user is presenting.")
    assert said.args == ["Another user is presenting."] and not local.presenting
