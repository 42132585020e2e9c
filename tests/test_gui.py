"""The desktop GUI against a real server on loopback, with real clients (pytest-qt, offscreen)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("PyQt5")

from PyQt5.QtCore import QSettings, Qt  # noqa: E402
from PyQt5.QtGui import QDesktopServices  # noqa: E402
from PyQt5.QtWidgets import QDialog, QFileDialog  # noqa: E402

import config  # noqa: E402
import gui  # noqa: E402
import gui_media  # noqa: E402
import gui_panels  # noqa: E402
import gui_video  # noqa: E402
import login_dialog  # noqa: E402
from login_dialog import JoinRequest, LoginDialog  # noqa: E402

WAIT_MS = 5000


class WorkingDevices(gui_media.MediaController):
    """Devices that always start (the test machine has no camera or microphone)."""

    def __init__(self) -> None:
        super().__init__()
        self.running: set[str] = set()

    def start_camera(self) -> str | None:
        self.running.add("camera")
        return None

    def stop_camera(self) -> None:
        self.running.discard("camera")

    def start_mic(self) -> str | None:
        self.running.add("mic")
        return None

    def stop_mic(self) -> None:
        self.running.discard("mic")

    def start_screen(self) -> str | None:
        self.running.add("screen")
        return None

    def stop_screen(self, send: bool = True) -> None:
        self.running.discard("screen")
        super().stop_screen(send)


@pytest.fixture(autouse=True)
def no_gui_threads_left():
    """Every thread the GUI starts (decoder, reconnect, dialog workers) ends with its owner."""
    yield
    import time

    deadline = time.monotonic() + 3

    def ours() -> list[str]:
        return [
            t.name
            for t in threading.enumerate()
            if t.name.startswith(("gui-", "login-")) and t.is_alive()
        ]

    while ours() and time.monotonic() < deadline:
        time.sleep(0.02)  # bounded wait for threads that are finishing
    assert ours() == []


@pytest.fixture
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)


@pytest.fixture
def open_window(qtbot, make_client, tmp_path):
    """Opens meeting windows; each is closed (leaving its session) before the clients go."""
    windows: list[gui.MainWindow] = []

    def open_(client, media=None) -> gui.MainWindow:
        window = _open_window(qtbot, client, tmp_path, media)
        windows.append(window)
        return window

    yield open_
    for window in windows:
        window.close()


def _open_window(qtbot, client, tmp_path: Path, media=None) -> gui.MainWindow:
    request = JoinRequest(
        "127.0.0.1", client_port(client), client.username, client.session, "", True, True
    )
    window = gui.MainWindow(
        client,
        request,
        media=media or WorkingDevices(),
        settings=QSettings(str(tmp_path / f"{client.username}.ini"), QSettings.IniFormat),
        download_dir=tmp_path / f"downloads-{client.username}",
    )
    qtbot.add_widget(window)
    window.show()
    return window


def client_port(client) -> int:
    return int(getattr(client, "tcp_port", config.DEFAULT_TCP_PORT))


def events(client, name: str) -> list:
    """Record a client's events of one kind (appended on its network thread)."""
    seen: list = []
    client.on(name, lambda *args: seen.append(args))
    return seen


# --- pure helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "shape"), [(1, (1, 1)), (2, (2, 1)), (4, (2, 2)), (5, (3, 2)), (9, (3, 3)), (25, (5, 5))]
)
def test_grid_shape(n: int, shape: tuple[int, int]) -> None:
    assert gui_video.grid_shape(n) == shape


def test_chat_html_escapes_then_links() -> None:
    out = gui_panels.chat_text_to_html('<b>x</b> see https://a.lan/?q=1&r="2" now.')
    assert "<b>" not in out and "&lt;b&gt;x&lt;/b&gt;" in out
    assert '<a href="https://a.lan/?q=1&amp;r=' in out
    assert '"2"' not in out  # quotes cannot end the href attribute


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5", ("10.0.0.5", config.DEFAULT_TCP_PORT)),
        ("host:6000", ("host", 6000)),
        ("[::1]:7000", ("::1", 7000)),
        (" server.lan ", ("server.lan", config.DEFAULT_TCP_PORT)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert login_dialog.parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:0", "host:99999", "host:abc", "[::1", "a b"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        login_dialog.parse_address(text)


def test_grid_lays_out_tiles_without_overlap(qtbot) -> None:
    grid = gui_video.VideoGrid()
    qtbot.add_widget(grid)
    grid.resize(1000, 700)
    grid.show()
    for i in range(1, 10):
        grid.add_tile(gui_video.VideoTile(i, f"P{i}"))
    rects = [grid.tiles[i].geometry() for i in grid.visible_ids()]
    assert len(rects) == 9
    assert len({r.top() for r in rects}) == 3  # 3 rows of 3
    for a in range(len(rects)):
        assert grid.rect().contains(rects[a])
        for b in range(a + 1, len(rects)):
            assert not rects[a].intersects(rects[b])


def test_shared_screen_fits_keeping_its_aspect_ratio(qtbot) -> None:
    from PyQt5.QtGui import QImage

    view = gui_video.ScreenShareView()
    qtbot.add_widget(view)
    view.resize(800, 640)
    view.set_presenter("Bob")
    view.set_image(QImage(1280, 720, QImage.Format_RGB32), 1)
    r = view.image_rect()
    assert abs(r.width() / r.height() - 1280 / 720) < 0.01
    assert r.width() == pytest.approx(800) and r.top() >= 40  # fits the width, below the title
    view.resize(400, 900)  # tall and narrow: still the whole picture, centred
    r = view.image_rect()
    assert r.width() == pytest.approx(400) and r.center().y() == pytest.approx(40 + 860 / 2)


def test_settings_dialog_says_when_there_are_no_devices(qtbot) -> None:
    dialog = gui_media.SettingsDialog(gui_media.MediaController())
    qtbot.add_widget(dialog)
    for combo in (dialog.camera_combo, dialog.mic_combo, dialog.speaker_combo):
        assert not combo.isEnabled() and "No devices" in combo.currentText()
    assert "Plug a device in" in dialog.note_label.text()


def test_settings_dialog_lists_devices_and_keeps_the_choice(qtbot) -> None:
    class TwoMics(gui_media.MediaController):
        def list_devices(self, kind):
            if kind == "input":
                return [(3, "USB headset"), (5, "Built-in mic")], ""
            return [], f"No {kind} found."

    media = TwoMics()
    dialog = gui_media.SettingsDialog(media)
    qtbot.add_widget(dialog)
    assert dialog.mic_combo.isEnabled() and dialog.mic_combo.count() == 2
    dialog.mic_combo.setCurrentIndex(1)
    dialog.accept()
    assert media.selected["input"] == 5


def test_device_choice_is_remembered(qtbot, open_window, make_client, monkeypatch):
    class TwoMics(gui_media.MediaController):
        def list_devices(self, kind):
            return ([(3, "USB headset"), (5, "Built-in mic")], "") if kind == "input" else ([], "")

    def choose_second(dialog_self):
        dialog_self.mic_combo.setCurrentIndex(1)
        dialog_self.accept()
        return QDialog.Accepted

    monkeypatch.setattr(gui_media.SettingsDialog, "exec_", choose_second)
    wa = open_window(make_client("Alice"), media=TwoMics())
    qtbot.mouseClick(wa.controls.settings_button, Qt.LeftButton)
    assert wa.media.selected["input"] == 5
    again = gui.MainWindow(wa.client, wa.request, media=TwoMics(), settings=wa.settings)
    qtbot.add_widget(again)
    assert again.media.selected["input"] == 5
    # It shares Alice's client with the first window: stop only its own parts.
    again.leaving = True
    again.bridge.detach()
    assert not again.bridge.decoder.running


def test_the_real_client_has_all_the_gui_uses(make_client) -> None:
    """ClientLike lists what the GUI uses of ConferenceClient; the real one has all of it."""
    import gui_bridge

    client = make_client("Alice")
    proto = gui_bridge.ClientLike
    names = set(proto.__annotations__) | {n for n in vars(proto) if not n.startswith("_")}
    assert {"my_id", "participants", "on", "send_chat", "leave"} <= names
    assert sorted(n for n in names if not hasattr(client, n)) == []


# --- login dialog -------------------------------------------------------------------


def fill_dialog(dialog: LoginDialog, address: str, name: str, session: str) -> None:
    dialog.address_edit.setEditText(address)
    dialog.username_edit.setText(name)
    dialog.session_edit.setText(session)


def test_login_through_dialog_lists_sessions_and_joins(qtbot, server, make_client, settings):
    host = make_client("Host", "Standup")
    dialog = LoginDialog(settings=settings, discover=False)
    qtbot.add_widget(dialog)
    dialog.show()
    fill_dialog(dialog, f"127.0.0.1:{server.tcp_port}", "Alice", "")
    dialog.refresh_sessions()
    qtbot.waitUntil(lambda: dialog.sessions_list.count() == 1, timeout=WAIT_MS)
    item = dialog.sessions_list.item(0)
    assert "Standup" in item.text() and "1 person" in item.text()
    dialog.sessions_list.setCurrentItem(item)  # picking a session fills the name
    assert dialog.session_edit.text() == "Standup"
    dialog.camera_check.setChecked(False)
    with qtbot.wait_signal(dialog.accepted, timeout=WAIT_MS):
        qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    try:
        assert dialog.client is not None and dialog.client.connected
        assert dialog.request is not None and dialog.request.video is False
        qtbot.waitUntil(lambda: dialog.client.my_id in _ids(host), timeout=WAIT_MS)
        # Remembered for next time.
        again = LoginDialog(settings=settings, discover=False)
        qtbot.add_widget(again)
        assert again.username_edit.text() == "Alice"
        assert again.address_edit.currentText() == f"127.0.0.1:{server.tcp_port}"
        assert not again.camera_check.isChecked()
        again.reject()
    finally:
        dialog.client.leave()


def test_first_join_asks_to_compare_the_fingerprint_then_remembers_it(
    qtbot, server, settings, tmp_path
):
    import security

    store = security.TrustStore(tmp_path / "known.json")
    dialog = LoginDialog(settings=settings, discover=False, trust_store=store)
    qtbot.add_widget(dialog)
    asked: list[login_dialog.TrustQuestion] = []
    dialog.ask_trust = lambda q: asked.append(q) or True  # the person compares and agrees
    dialog.show()
    fill_dialog(dialog, f"127.0.0.1:{server.tcp_port}", "Alice", "Room")
    with qtbot.wait_signal(dialog.accepted, timeout=WAIT_MS):
        qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    try:
        assert [q.code for q in asked] == [security.SecErr.FINGERPRINT_UNKNOWN]
        text = login_dialog.trust_question_text(asked[0])
        assert security.short_fingerprint(server.fingerprint) in text
        assert "server's screen" in text
        address = security.server_address("127.0.0.1", server.tcp_port)
        assert store.fingerprint_for(address) == server.fingerprint
    finally:
        dialog.client.leave()
    again = LoginDialog(settings=settings, discover=False, trust_store=store)
    qtbot.add_widget(again)
    again.ask_trust = lambda q: pytest.fail("a trusted server is not asked about again")
    fill_dialog(again, f"127.0.0.1:{server.tcp_port}", "Alice", "Room")
    with qtbot.wait_signal(again.accepted, timeout=WAIT_MS):
        qtbot.mouseClick(again.join_button, Qt.LeftButton)
    again.client.leave()


def test_changed_fingerprint_is_refused_unless_accepted_on_purpose(
    qtbot, server, settings, tmp_path
):
    import security

    store = security.TrustStore(tmp_path / "known.json")
    address = security.server_address("127.0.0.1", server.tcp_port)
    store.trust(address, "ab" * 32)  # what the server showed "before"
    dialog = LoginDialog(settings=settings, discover=False, trust_store=store)
    qtbot.add_widget(dialog)
    answers = [False, True]
    asked: list[login_dialog.TrustQuestion] = []
    dialog.ask_trust = lambda q: asked.append(q) or answers.pop(0)
    dialog.show()
    fill_dialog(dialog, f"127.0.0.1:{server.tcp_port}", "Alice", "Room")
    qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: dialog.error_label.isVisible(), timeout=WAIT_MS)
    assert "different fingerprint" in dialog.error_label.text()
    assert dialog.client is None and store.fingerprint_for(address) == "ab" * 32
    q = asked[0]
    assert q.code == security.SecErr.FINGERPRINT_CHANGED and q.old == "ab" * 32
    text = login_dialog.trust_question_text(q)
    assert security.short_fingerprint("ab" * 32) in text and "Nothing has been sent" in text
    with qtbot.wait_signal(dialog.accepted, timeout=WAIT_MS):  # accepted on purpose
        qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    try:
        assert store.fingerprint_for(address) == server.fingerprint
    finally:
        dialog.client.leave()


def test_discovered_server_with_another_fingerprint_is_refused_without_asking(
    qtbot, server, settings, tmp_path
):
    import security
    from discovery import FoundServer

    store = security.TrustStore(tmp_path / "known.json")
    dialog = LoginDialog(settings=settings, discover=False, trust_store=store)
    qtbot.add_widget(dialog)
    dialog.ask_trust = lambda q: pytest.fail("an announced mismatch is never a question")
    dialog.on_servers_found([FoundServer("office", "127.0.0.1", server.tcp_port, 1, "cd" * 32)])
    dialog.show()
    fill_dialog(dialog, f"127.0.0.1:{server.tcp_port}", "Alice", "Room")
    qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: dialog.error_label.isVisible(), timeout=WAIT_MS)
    assert "not the one announced" in dialog.error_label.text()
    assert dialog.client is None
    # A matching announcement still asks (mDNS is not authenticated) and says it matches.
    dialog.on_servers_found(
        [FoundServer("office", "127.0.0.1", server.tcp_port, 1, server.fingerprint)]
    )
    asked: list[login_dialog.TrustQuestion] = []
    dialog.ask_trust = lambda q: asked.append(q) or True
    with qtbot.wait_signal(dialog.accepted, timeout=WAIT_MS):
        qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    dialog.client.leave()
    assert asked[0].matches_announcement
    assert "matches the fingerprint the server announced" in (
        login_dialog.trust_question_text(asked[0])
    )


def _ids(client) -> set[int]:
    return set(dict(client.participants))


def test_refused_username_is_shown_and_dialog_stays_open(qtbot, server, make_client, settings):
    make_client("Alice", "Room")
    dialog = LoginDialog(settings=settings, discover=False)
    qtbot.add_widget(dialog)
    dialog.show()
    fill_dialog(dialog, f"127.0.0.1:{server.tcp_port}", "alice", "Room")
    qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: dialog.error_label.isVisible(), timeout=WAIT_MS)
    assert "already called" in dialog.error_label.text()
    assert "alice" in dialog.error_label.text()
    assert dialog.isVisible() and dialog.client is None
    assert dialog.join_button.isEnabled()
    # Correcting the name then works.
    dialog.username_edit.setText("Alice 2")
    with qtbot.wait_signal(dialog.accepted, timeout=WAIT_MS):
        qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    dialog.client.leave()


def test_wrong_password_and_unreachable_server(qtbot, server, make_client, settings):
    make_client("Owner", "Locked", password="s3cret")  # noqa: S106
    dialog = LoginDialog(settings=settings, discover=False)
    qtbot.add_widget(dialog)
    dialog.show()
    fill_dialog(dialog, f"127.0.0.1:{server.tcp_port}", "Bob", "Locked")
    dialog.password_edit.setText("guess")
    qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: dialog.error_label.isVisible(), timeout=WAIT_MS)
    assert "password is not right" in dialog.error_label.text()

    # A port nobody listens on: a plain-words error, not a hang.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dialog.error_label.hide()
    dialog.address_edit.setEditText(f"127.0.0.1:{dead_port}")
    qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: dialog.error_label.isVisible(), timeout=WAIT_MS * 2)
    assert "Could not reach the server" in dialog.error_label.text()
    assert dialog.client is None


def test_connecting_does_not_block_the_gui_thread(qtbot, settings):
    """A slow connect runs on a worker: the dialog keeps processing events meanwhile."""
    release = threading.Event()

    class SlowClient:
        def __init__(self, host: str, port: int, **trust) -> None:
            pass

        def connect(self, *args, **kwargs):
            release.wait(5)
            raise ConnectionRefusedError("refused")

        def leave(self) -> None:
            pass

    dialog = LoginDialog(settings=settings, discover=False, client_factory=SlowClient)
    qtbot.add_widget(dialog)
    dialog.show()
    fill_dialog(dialog, "127.0.0.1:1", "Alice", "Room")
    qtbot.mouseClick(dialog.join_button, Qt.LeftButton)
    assert not dialog.join_button.isEnabled()  # busy, and we got control back at once
    ticks = []
    qtbot.waitUntil(lambda: ticks.append(1) or len(ticks) > 3, timeout=1000)
    release.set()
    qtbot.waitUntil(lambda: dialog.error_label.isVisible(), timeout=WAIT_MS)
    assert "Could not reach" in dialog.error_label.text()


# --- meeting window ----------------------------------------------------------------


def test_two_windows_chat_with_plain_text_and_private_messages(
    qtbot, open_window, make_client, tmp_path
):
    alice = make_client("Alice")
    bob = make_client("Bob")
    carol = make_client("Carol")
    carol_chat = events(carol, "chat")
    wa = open_window(alice)
    wb = open_window(bob)

    wa.chat_panel.input.setText("<b>x</b> see https://example.lan/a?b=1&c=2")
    qtbot.keyClick(wa.chat_panel.input, Qt.Key_Return)
    qtbot.waitUntil(lambda: "<b>x</b>" in wb.chat_panel.view.toPlainText(), timeout=WAIT_MS)
    html_b = wb.chat_panel.view.toHtml()
    assert "&lt;b&gt;x&lt;/b&gt;" in html_b  # shown literally, never as bold
    assert 'href="https://example.lan/a?b=1&amp;c=2"' in html_b  # and the link is clickable
    assert "Alice" in wb.chat_panel.view.toPlainText()
    qtbot.waitUntil(lambda: "You" in wa.chat_panel.view.toPlainText(), timeout=WAIT_MS)
    assert wa.chat_panel.input.text() == ""

    # Private to Bob: Bob sees it marked, Carol never gets it.
    idx = wa.chat_panel.to_combo.findText("Bob")
    assert idx > 0
    wa.chat_panel.to_combo.setCurrentIndex(idx)
    wa.chat_panel.input.setText("just for you")
    qtbot.keyClick(wa.chat_panel.input, Qt.Key_Return)
    qtbot.waitUntil(lambda: "just for you" in wb.chat_panel.view.toPlainText(), timeout=WAIT_MS)
    assert "privately to you" in wb.chat_panel.view.toPlainText()
    qtbot.waitUntil(lambda: "privately to Bob" in wa.chat_panel.view.toPlainText(), timeout=WAIT_MS)
    # Carol got the public one; the private one was never delivered to her.
    qtbot.waitUntil(lambda: len(carol_chat) >= 1, timeout=WAIT_MS)
    assert all("just for you" not in m[0]["message"] for m in carol_chat)


def test_unread_count_when_chat_hidden(qtbot, open_window, make_client, tmp_path):
    alice = make_client("Alice")
    bob = make_client("Bob")
    wa = open_window(alice)
    wa.controls.chat_button.setChecked(False)
    assert not wa.chat_panel.isVisible()
    bob.send_chat("one")
    bob.send_chat("two")
    qtbot.waitUntil(lambda: wa.controls.unread == 2, timeout=WAIT_MS)
    assert wa.controls.unread_badge.text() == "2" and wa.controls.unread_badge.isVisible()
    wa.controls.chat_button.setChecked(True)
    assert wa.controls.unread == 0 and not wa.controls.unread_badge.isVisible()


def test_join_and_leave_notices_and_participants(qtbot, open_window, make_client, tmp_path):
    alice = make_client("Alice")
    wa = open_window(alice)
    assert wa.participants_panel.names() == ["Alice (You)"]
    bob = make_client("Bob", audio=False, video=False)
    qtbot.waitUntil(lambda: len(wa.grid.tiles) == 2, timeout=WAIT_MS)
    assert "Bob joined" in wa.chat_panel.view.toPlainText()
    qtbot.waitUntil(lambda: wa.status.count_label.text() == "2 participants", timeout=WAIT_MS)
    bob_row = wa.participants_panel.rows[bob.my_id]
    qtbot.waitUntil(lambda: not bob_row.audio and not bob_row.video, timeout=WAIT_MS)
    assert not wa.grid.tiles[bob.my_id].showing_video()
    bob.leave()
    qtbot.waitUntil(lambda: bob.my_id not in wa.grid.tiles, timeout=WAIT_MS)
    assert "Bob left" in wa.chat_panel.view.toPlainText()
    assert wa.status.count_label.text() == "1 participant"
    # The round-trip time from ping/pong reaches the status bar.
    qtbot.waitUntil(lambda: "Round trip" in wa.status.rtt_label.text(), timeout=WAIT_MS)
    assert "Connected to 127.0.0.1" in wa.status.server_label.text()


def test_toggles_send_media_and_other_side_sees_it(qtbot, open_window, make_client, tmp_path):
    alice = make_client("Alice")
    bob = make_client("Bob")
    updates = events(bob, "participant_updated")
    devices = WorkingDevices()
    wa = open_window(alice, media=devices)
    wb = open_window(bob)
    assert devices.running == {"camera", "mic"}

    def bob_sees(audio: bool, video: bool) -> bool:
        return any(
            u[0]["id"] == alice.my_id and u[0]["audio"] is audio and u[0]["video"] is video
            for u in updates
        )

    qtbot.mouseClick(wa.controls.mic_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: bob_sees(False, True), timeout=WAIT_MS)
    assert "mic" not in devices.running
    row = wb.participants_panel.rows[alice.my_id]
    qtbot.waitUntil(lambda: row.audio is False, timeout=WAIT_MS)
    assert wb.grid.tiles[alice.my_id].audio_on is False  # the muted mark on the tile

    qtbot.mouseClick(wa.controls.camera_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: bob_sees(False, False), timeout=WAIT_MS)
    assert "camera" not in devices.running

    # The shortcuts do the same: Ctrl+D microphone, Ctrl+E camera.
    wa.activateWindow()
    qtbot.waitUntil(wa.isActiveWindow, timeout=WAIT_MS)
    qtbot.keyClick(wa, Qt.Key_D, Qt.ControlModifier)
    qtbot.waitUntil(lambda: bob_sees(True, False), timeout=WAIT_MS)
    qtbot.keyClick(wa, Qt.Key_E, Qt.ControlModifier)
    qtbot.waitUntil(lambda: bob_sees(True, True), timeout=WAIT_MS)


def test_missing_camera_is_a_notice_not_a_crash(qtbot, open_window, make_client, tmp_path):
    alice = make_client("Alice")
    bob = make_client("Bob")
    updates = events(bob, "participant_updated")
    wa = open_window(alice, media=gui_media.MediaController())  # no devices at all
    assert wa.last_notice  # told, not crashed
    assert not wa.local.video_on and not wa.local.audio_on
    qtbot.waitUntil(
        lambda: any(u[0]["id"] == alice.my_id and not u[0]["video"] for u in updates),
        timeout=WAIT_MS,
    )
    qtbot.mouseClick(wa.controls.camera_button, Qt.LeftButton)
    assert not wa.local.video_on and "camera" in wa.last_notice.lower()


def test_denied_presenter_sees_the_servers_message(qtbot, open_window, make_client, tmp_path):
    alice = make_client("Alice")
    bob = make_client("Bob")
    granted = threading.Event()
    bob.on("present_granted", granted.set)
    wa = open_window(alice)
    bob.present_start()
    assert granted.wait(5)
    qtbot.waitUntil(lambda: wa.screen_view.isVisible(), timeout=WAIT_MS)
    assert "Bob is presenting" in wa.screen_view.presenter_name + " is presenting"
    qtbot.mouseClick(wa.controls.screen_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: "Another user is presenting" in wa.last_notice, timeout=WAIT_MS)
    assert wa.local.presenting is False
    # When Bob stops, Alice can present.
    bob.present_stop()
    qtbot.waitUntil(lambda: not wa.screen_view.isVisible(), timeout=WAIT_MS)
    qtbot.mouseClick(wa.controls.screen_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: wa.local.presenting, timeout=WAIT_MS)
    assert "screen" in wa.media.running


def test_upload_shows_progress_and_reaches_the_other_client(
    qtbot, open_window, make_client, tmp_path, monkeypatch
):
    alice = make_client("Alice")
    bob = make_client("Bob")
    wa = open_window(alice)
    wb = open_window(bob)
    data = bytes(range(256)) * (24 * 1024)  # 6 MiB
    src = tmp_path / "Quarterly <report>.bin"
    src.write_bytes(data)

    # The Upload button's file chooser, answered as a person would.
    monkeypatch.setattr(
        QFileDialog, "getOpenFileNames", staticmethod(lambda *a, **k: ([str(src)], ""))
    )
    qtbot.mouseClick(wa.files_panel.upload_button, Qt.LeftButton)
    assert wa.files_panel.uploads_label.isVisible()
    assert "Sharing Quarterly <report>.bin" in wa.files_panel.uploads_label.text()

    qtbot.waitUntil(lambda: len(wb.files_panel.rows) == 1, timeout=WAIT_MS * 2)
    row_b = next(iter(wb.files_panel.rows.values()))
    assert row_b.name_label.text() == "Quarterly <report>.bin"
    assert "shared by Alice" in row_b.detail_label.text()
    assert not row_b.delete_button.isVisibleTo(row_b)  # not Bob's to delete
    qtbot.waitUntil(lambda: not wa.files_panel.uploads_label.isVisible(), timeout=WAIT_MS)
    # The upload's end (its data connection) and file_added (the control connection)
    # arrive independently: wait for the row too.
    qtbot.waitUntil(lambda: len(wa.files_panel.rows) == 1, timeout=WAIT_MS)
    row_a = next(iter(wa.files_panel.rows.values()))
    assert row_a.delete_button.isVisibleTo(row_a)

    qtbot.mouseClick(row_b.download_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: row_b.open_button.isVisibleTo(row_b), timeout=WAIT_MS * 2)
    assert row_b.progress.value() == 1000
    assert row_b.downloaded_path is not None
    assert row_b.downloaded_path.read_bytes() == data
    opened: list = []
    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(opened.append))
    qtbot.mouseClick(row_b.open_button, Qt.LeftButton)  # "Show in folder"
    assert [u.toLocalFile() for u in opened] == [str(row_b.downloaded_path.parent)]

    # The owner deletes it; it disappears at Bob's.
    qtbot.mouseClick(row_a.delete_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not wb.files_panel.rows, timeout=WAIT_MS)


def test_video_frames_reach_the_tiles(qtbot, open_window, make_client, tmp_path):
    """Bob's camera (a red picture) appears on Alice's tile: the tile subscribed by itself."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("av")
    import video_module

    class Red(video_module.VideoSource):
        def read(self):
            img = np.zeros((360, 640, 3), np.uint8)
            img[:, :, 2] = 255  # red in BGR
            return img

    alice = make_client("Alice")
    bob = make_client("Bob")
    assert bob.wait_udp_registered(5) and alice.wait_udp_registered(5)
    wa = open_window(alice)
    sender = video_module.VideoSender(bob, Red()).start()
    try:
        qtbot.waitUntil(lambda: bob.my_id in wa.grid.tiles, timeout=WAIT_MS)
        tile = wa.grid.tiles[bob.my_id]
        qtbot.waitUntil(lambda: alice.subscriptions.get(bob.my_id) is not None, timeout=WAIT_MS)
        qtbot.waitUntil(tile.showing_video, timeout=WAIT_MS)
    finally:
        sender.stop()
    colour = tile.image.pixelColor(tile.image.width() // 2, tile.image.height() // 2)
    assert colour.red() > 200 and colour.green() < 60


def test_leaving_closes_cleanly_and_others_see_it(qtbot, open_window, make_client, tmp_path):
    alice = make_client("Alice")
    bob = make_client("Bob")
    wa = open_window(alice)
    wb = open_window(bob)
    qtbot.mouseClick(wa.controls.leave_button, Qt.LeftButton)
    assert not wa.isVisible()
    assert not alice.connected
    assert not wa.repaint_timer.isActive()
    assert wa.media.running == set()
    assert not wa.bridge.decoder.running  # the window's own thread is joined too
    qtbot.waitUntil(lambda: alice.my_id not in wb.grid.tiles, timeout=WAIT_MS)
    assert "Alice left" in wb.chat_panel.view.toPlainText()


def test_losing_the_server_shows_a_banner(qtbot, open_window, server, make_client, tmp_path):
    alice = make_client("Alice", config=NO_AUTO_RECONNECT)
    wa = open_window(alice)
    server.stop()
    qtbot.waitUntil(lambda: wa.banner.isVisible(), timeout=WAIT_MS * 2)
    assert wa.banner.reconnect_button.isEnabled()
    assert "Disconnected" in wa.status.server_label.text()
    # Reconnecting to a dead server reports it in the banner; nothing freezes.
    qtbot.mouseClick(wa.banner.reconnect_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: wa.banner.reconnect_button.isEnabled(), timeout=WAIT_MS * 3)
    assert "Could not reach" in wa.banner.label.text()


def test_dropping_a_file_on_the_window_shares_it(qtbot, open_window, make_client, tmp_path):
    from PyQt5.QtCore import QMimeData, QPoint, QUrl
    from PyQt5.QtGui import QDropEvent

    alice = make_client("Alice")
    bob = make_client("Bob")
    added = events(bob, "file_added")
    wa = open_window(alice)
    src = tmp_path / "notes.txt"
    src.write_text("dropped")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(src))])
    drop = QDropEvent(QPoint(10, 10), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    wa.dropEvent(drop)
    qtbot.waitUntil(lambda: len(added) == 1, timeout=WAIT_MS)
    assert added[0][0]["name"] == "notes.txt" and added[0][0]["size"] == 7


def test_reconnect_after_the_server_comes_back(qtbot, open_window, server, make_client, tmp_path):
    from server import ConferenceServer

    alice = make_client("Alice", config=NO_AUTO_RECONNECT)
    wa = open_window(alice)
    port = server.tcp_port
    server.stop()
    qtbot.waitUntil(lambda: wa.banner.isVisible(), timeout=WAIT_MS * 2)
    cfg = config.ServerConfig(
        host="127.0.0.1", tcp_port=port, udp_port=0, storage_dir=tmp_path / "storage2"
    )
    again = ConferenceServer(cfg)
    try:
        again.start()
    except OSError as exc:
        pytest.skip(f"the old port cannot be bound again yet: {exc}")
    try:
        qtbot.mouseClick(wa.banner.reconnect_button, Qt.LeftButton)
        qtbot.waitUntil(lambda: not wa.banner.isVisible(), timeout=WAIT_MS * 2)
        assert wa.client is not alice and wa.client.connected
        assert wa.last_notice == "Reconnected"
        assert "Connected to" in wa.status.server_label.text()
        bob = make_client("Bob")  # the session works again: Bob appears in the window
        qtbot.waitUntil(lambda: bob.my_id in wa.grid.tiles, timeout=WAIT_MS)
    finally:
        wa.close()
        again.stop()


NO_AUTO_RECONNECT = config.ClientConfig(reconnect_give_up_s=0.0)


def test_reconnecting_bar_counts_the_time_and_goes_when_back(
    qtbot, open_window, server, make_client, tmp_path
):
    """The client reconnects by itself: a bar with the time elapsed and Leave, then gone."""
    from server import ConferenceServer

    alice = make_client("Alice")
    wa = open_window(alice)
    bar = wa.banner
    assert not bar.isVisible()
    same_ports = replace(server.config, tcp_port=server.tcp_port, udp_port=server.udp_port)
    server.stop()
    qtbot.waitUntil(lambda: bar.isVisible(), timeout=WAIT_MS)
    assert bar.label.text().startswith("Reconnecting…")
    assert bar.leave_button.isVisible() and not bar.reconnect_button.isVisible()
    qtbot.waitUntil(lambda: "Reconnecting… 1 s" in bar.label.text(), timeout=WAIT_MS)
    wa.chat_panel.send_requested.emit("typed while away", None)  # waits in the outbox
    assert wa.controls.isEnabled()  # non-blocking: the window still works
    again = ConferenceServer(same_ports)
    try:
        again.start()
    except OSError as exc:
        pytest.skip(f"the old port cannot be bound again yet: {exc}")
    try:
        qtbot.waitUntil(lambda: not bar.isVisible(), timeout=WAIT_MS * 2)
        assert wa.client is alice and alice.connected
        assert wa.last_notice.startswith("Reconnected")
        qtbot.waitUntil(
            lambda: "typed while away" in wa.chat_panel.view.toPlainText(), timeout=WAIT_MS
        )
    finally:
        wa.close()
        again.stop()


def test_leave_on_the_reconnecting_bar_leaves(qtbot, open_window, server, make_client):
    alice = make_client("Alice")
    wa = open_window(alice)
    server.stop()
    qtbot.waitUntil(lambda: wa.banner.leave_button.isVisible(), timeout=WAIT_MS)
    qtbot.mouseClick(wa.banner.leave_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not wa.isVisible(), timeout=WAIT_MS)
    assert wa.leaving and not alice.reconnecting and not alice.connected


class TestFileErrors:
    """Upload errors are shown in the files panel, in words."""

    @pytest.fixture
    def server_config(self, tmp_path: Path) -> config.ServerConfig:
        return config.ServerConfig(
            host="127.0.0.1",
            tcp_port=0,
            udp_port=0,
            storage_dir=tmp_path / "storage",
            max_file_bytes=1000,
        )

    def test_too_large_and_missing_files_are_reported(
        self, qtbot, open_window, make_client, tmp_path
    ):
        wa = open_window(make_client("Alice"))
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 5000)
        wa.transfers.upload([str(big)])
        qtbot.waitUntil(lambda: wa.files_panel.error_label.isVisible(), timeout=WAIT_MS)
        text = wa.files_panel.error_label.text()
        assert text.startswith("Could not share big.bin:") and "1000 bytes" in text
        assert not wa.files_panel.rows
        wa.transfers.upload([str(tmp_path / "nowhere.txt")])
        assert "nowhere.txt is not a file" in wa.files_panel.error_label.text()


def test_main_without_joining_exits_cleanly(qtbot, monkeypatch):
    """``python client.py`` runs gui.main: cancelling the join dialog ends with status 0."""
    opened = []

    class Cancelled:
        client = None
        request = None

        def __init__(self, *args, **kwargs) -> None:
            opened.append(self)

        def exec_(self) -> int:
            return 0  # QDialog.Rejected

    monkeypatch.setattr(gui, "LoginDialog", Cancelled)
    assert gui.main([]) == 0
    assert len(opened) == 1


def test_device_media_streams_camera_and_screen(qtbot, open_window, make_client, tmp_path):
    """The real media controller, with a test pattern for the camera and an image for the screen."""
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    import video_module

    slide = tmp_path / "slide.png"
    cv2.imwrite(str(slide), np.full((360, 640, 3), 200, np.uint8))

    def open_screen():
        import screen_sharing_module

        return screen_sharing_module.ImageSource(slide)

    alice = make_client("Alice")
    bob = make_client("Bob")
    assert alice.wait_udp_registered(5) and bob.wait_udp_registered(5)
    screens = events(bob, "screen_frame")
    media = gui_media.DeviceMedia(
        video_source_factory=lambda: video_module.TestPatternSource("Alice"),
        screen_source_factory=open_screen,
    )
    wa = open_window(alice, media=media)
    assert wa.local.video_on  # the pattern "camera" opened
    qtbot.waitUntil(lambda: wa.grid.tiles[alice.my_id].showing_video(), timeout=WAIT_MS)
    bob.subscribe({alice.my_id: "small"})
    qtbot.waitUntil(lambda: bob.video_datagrams_received > 5, timeout=WAIT_MS)
    if not wa.local.audio_on:  # no microphone on this machine: said in the window
        assert "Microphone" in wa.last_notice

    qtbot.mouseClick(wa.controls.screen_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(screens) >= 2, timeout=WAIT_MS)
    assert wa.local.presenting and screens[0][2:4] == (640, 360)
    qtbot.mouseClick(wa.controls.screen_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: bob.presenter is None, timeout=WAIT_MS)
    assert not wa.local.presenting

    qtbot.mouseClick(wa.controls.camera_button, Qt.LeftButton)  # camera off: device released
    assert media.camera is None and not wa.grid.tiles[alice.my_id].showing_video()
    wa.close()
    assert media.camera is None and media.capture is None and media.sharer is None


def test_lan_servers_found_fill_the_address_box(qtbot, settings):
    from discovery import FoundServer

    dialog = LoginDialog(settings=settings, discover=False, client_factory=_NoSessions)
    qtbot.add_widget(dialog)
    dialog.on_servers_found([FoundServer("office", "192.168.1.20", 5000, 5001)])
    dialog.on_servers_found([FoundServer("lab", "10.0.0.7", 6000, 6001)])
    items = [dialog.address_edit.itemText(i) for i in range(dialog.address_edit.count())]
    assert items == ["192.168.1.20", "10.0.0.7:6000"]
    assert dialog.address_edit.currentText() == "192.168.1.20"  # the box was empty


class _NoSessions:
    @staticmethod
    def list_sessions(host, port, timeout, **trust):
        return []


# --- command line -------------------------------------------------------------------


def test_client_help_exits_0_without_a_display() -> None:
    """``client.py --help`` prints the usage and opens no window (no display needed)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "QT_QPA_PLATFORM")}
    env.pop("WAYLAND_DISPLAY", None)
    done = subprocess.run(
        [sys.executable, str(root / "client.py"), "--help"],
        env=env,
        cwd=str(root),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--server", "--name", "--session", "--headless"):
        assert flag in done.stdout
    assert "display" not in done.stderr.lower()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--server", "127.0.0.1:1", "--name", "Ann", "--session", "Standup"],
            ("127.0.0.1:1", "Ann", "Standup"),
        ),
        (["--name", "Ann"], ("127.0.0.1:2", "Ann", "Remembered room")),  # the rest remembered
    ],
)
def test_command_line_fills_in_the_join_dialog(qtbot, monkeypatch, settings, argv, expected):
    settings.setValue("server", "127.0.0.1:2")
    settings.setValue("username", "Someone")
    settings.setValue("session", "Remembered room")
    seen: list[tuple[str, str, str]] = []

    class Dialog(LoginDialog):
        def __init__(self, **kwargs) -> None:
            super().__init__(settings=settings, discover=False, **kwargs)
            qtbot.add_widget(self)

        def exec_(self) -> int:
            seen.append(
                (
                    self.address_edit.currentText(),
                    self.username_edit.text(),
                    self.session_edit.text(),
                )
            )
            self.reject()  # cancel: joins the dialog's workers
            return QDialog.Rejected

    monkeypatch.setattr(gui, "LoginDialog", Dialog)
    assert gui.main(argv) == 0
    assert seen == [expected]


def test_others_see_someone_reconnecting_in_the_participants_panel(qtbot, open_window, make_client):
    import socket

    bob = make_client("Bob")
    alice = make_client("Alice", config=NO_AUTO_RECONNECT)  # stays away: her place is kept
    wb = open_window(bob)
    panel = wb.participants_panel
    qtbot.waitUntil(lambda: alice.my_id in panel.rows, timeout=WAIT_MS)
    row = panel.rows[alice.my_id]
    assert row.name_label.text() == "Alice" and row.isEnabled()
    alice._tcp.shutdown(socket.SHUT_RDWR)  # her network goes, no bye
    qtbot.waitUntil(lambda: row.reconnecting, timeout=WAIT_MS)
    assert row.name_label.text() == "Alice  ·  reconnecting…" and not row.isEnabled()
    assert alice.my_id in wb.grid.tiles  # still in the meeting, not "left"


def test_settings_sound_section_switches_and_tests(qtbot) -> None:
    calls: list[tuple] = []

    class Sound(gui_media.MediaController):
        def set_voice(self, echo: bool, denoise: bool, agc: bool) -> str | None:
            calls.append(("voice", echo, denoise, agc))
            return super().set_voice(echo, denoise, agc)

        def start_mic_test(self) -> str | None:
            calls.append(("mic_test",))
            return None

        def mic_test_state(self) -> tuple[str, int]:
            return "recording", 200

        def play_test_sound(self) -> str | None:
            calls.append(("sound",))
            return None

    media = Sound()
    dialog = gui_media.SettingsDialog(media)
    qtbot.add_widget(dialog)
    assert dialog.echo_box.isChecked() and dialog.denoise_box.isChecked()
    assert dialog.agc_box.isChecked()  # all on by default
    dialog.mic_test_button.click()
    dialog.sound_button.click()
    assert ("mic_test",) in calls and ("sound",) in calls
    qtbot.wait_until(lambda: dialog.level_bar.value() == 200, timeout=2000)
    assert not dialog.mic_test_button.isEnabled()  # a test is running
    dialog.echo_box.setChecked(False)
    dialog.accept()
    assert ("voice", False, True, True) in calls
    assert media.voice == {"echo": False, "denoise": True, "agc": True}


def test_settings_without_sound_devices_say_why(qtbot) -> None:
    dialog = gui_media.SettingsDialog(gui_media.MediaController())
    qtbot.add_widget(dialog)
    dialog.mic_test_button.click()
    assert "No microphone" in dialog.sound_status.text()
    dialog.sound_button.click()
    assert "No sound output" in dialog.sound_status.text()
    dialog.reject()
