"""The meeting window's panels on their own, fed plain dicts (pytest-qt, offscreen; no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("PyQt5")

from PyQt5.QtCore import Qt  # noqa: E402
from PyQt5.QtGui import QDesktopServices  # noqa: E402
from PyQt5.QtWidgets import QFileDialog, QStatusBar, QWidget  # noqa: E402

import gui_panels  # noqa: E402
import gui_video  # noqa: E402
from gui_panels import (  # noqa: E402
    ChatPanel,
    ConnectionBanner,
    ControlBar,
    FilesPanel,
    StatusLine,
    Toast,
)
from gui_participants import ParticipantsPanel  # noqa: E402


def person(pid: int, name: str, audio: bool = True, video: bool = True, **extra) -> dict:
    return {"id": pid, "username": name, "audio": audio, "video": video, **extra}


def shared(fid: str, name: str, size: int = 2048, owner: int = 2, username: str = "Bob") -> dict:
    return {"id": fid, "name": name, "size": size, "owner": owner, "username": username}


# --- participants ---------------------------------------------------------------------


def test_participants_panel_lists_us_first_with_state_and_count(qtbot) -> None:
    panel = ParticipantsPanel()
    qtbot.add_widget(panel)
    panel.upsert(2, "Bob", False, person(2, "Bob", audio=False))
    panel.upsert(1, "Alice", True, person(1, "Alice", presenting=True))
    assert panel.names() == ["Bob", "Alice (You)"]  # insertion order of the rows
    assert panel.list.itemWidget(panel.list.item(0)) is panel.rows[1]  # we are on top
    assert panel.count_label.text() == "2"
    bob = panel.rows[2]
    assert (bob.audio, bob.video, bob.presenting) == (False, True, False)
    assert bob.mic_icon.toolTip() == "Muted"
    assert panel.rows[1].presenting and not panel.rows[1].present_icon.isHidden()
    panel.upsert(2, "Bob", False, person(2, "Bob", video=False))  # an update, not a new row
    assert len(panel.rows) == 2 and panel.list.count() == 2
    assert bob.audio and not bob.video and bob.cam_icon.toolTip() == "Camera off"


def test_participants_panel_levels_remove_and_clear(qtbot) -> None:
    panel = ParticipantsPanel()
    qtbot.add_widget(panel)
    for pid, name in ((1, "Alice"), (2, "Bob"), (3, "Chen")):
        panel.upsert(pid, name, pid == 1, person(pid, name))
    panel.set_levels({2: 200, 3: 999})
    assert [panel.rows[i].level_bar.value() for i in (1, 2, 3)] == [0, 200, 255]
    panel.remove(2)
    panel.remove(42)  # unknown: nothing happens
    assert sorted(panel.rows) == [1, 3] and panel.list.count() == 2
    assert panel.count_label.text() == "2"
    panel.clear()
    assert not panel.rows and panel.list.count() == 0 and panel.count_label.text() == "0"


def test_peer_names_are_plain_text_everywhere(qtbot) -> None:
    panel = ParticipantsPanel()
    qtbot.add_widget(panel)
    panel.upsert(2, "<b>Bob</b>", False, person(2, "<b>Bob</b>"))
    assert panel.rows[2].name_label.textFormat() == Qt.PlainText
    assert panel.names() == ["<b>Bob</b>"]
    files = FilesPanel()
    qtbot.add_widget(files)
    row = files.upsert(shared("f1", "<i>x</i>.txt", username="<b>Eve</b>"), mine=False)
    assert row.name_label.textFormat() == Qt.PlainText
    assert row.detail_label.text() == "2.0 KB · shared by <b>Eve</b>"
    assert row.name_label.toolTip() == "&lt;i&gt;x&lt;/i&gt;.txt"  # tooltips are rich text


# --- files ----------------------------------------------------------------------------


def test_files_panel_rows_and_their_requests(qtbot) -> None:
    panel = FilesPanel()
    qtbot.add_widget(panel)
    panel.show()
    assert panel.empty_label.isVisible()
    theirs = shared("f1", "Roadmap.pdf", 3 * 1024 * 1024)
    mine = shared("f2", "notes.txt", 12, owner=1, username="Alice")
    row = panel.upsert(theirs, mine=False)
    assert panel.upsert(theirs, mine=False) is row  # the same file once
    own = panel.upsert(mine, mine=True)
    assert not panel.empty_label.isVisible()
    assert row.detail_label.text() == "3.0 MB · shared by Bob"
    assert own.detail_label.text() == "12 B · shared by you"
    assert not row.delete_button.isVisibleTo(row) and own.delete_button.isVisibleTo(own)
    with qtbot.wait_signal(panel.download_requested) as asked:
        qtbot.mouseClick(row.download_button, Qt.LeftButton)
    assert asked.args == [theirs]
    with qtbot.wait_signal(panel.delete_requested) as asked:
        qtbot.mouseClick(own.delete_button, Qt.LeftButton)
    assert asked.args == ["f2"]
    panel.remove("f1")
    panel.remove("f2")
    assert not panel.rows and panel.empty_label.isVisible()


def test_files_panel_upload_button_asks_for_files(qtbot, monkeypatch) -> None:
    panel = FilesPanel()
    qtbot.add_widget(panel)
    monkeypatch.setattr(
        QFileDialog, "getOpenFileNames", staticmethod(lambda *a, **k: (["/a", "/b"], ""))
    )
    with qtbot.wait_signal(panel.upload_requested) as asked:
        qtbot.mouseClick(panel.upload_button, Qt.LeftButton)
    assert asked.args == [["/a", "/b"]]
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", staticmethod(lambda *a, **k: ([], "")))
    with qtbot.assert_not_emitted(panel.upload_requested):
        qtbot.mouseClick(panel.upload_button, Qt.LeftButton)  # cancelled: nothing to share


def test_files_panel_upload_progress(qtbot) -> None:
    panel = FilesPanel()
    qtbot.add_widget(panel)
    panel.show()
    panel.set_upload_progress(["a.bin", "b.bin"], 512, 2048)
    assert panel.uploads_label.isVisible() and panel.upload_progress.isVisible()
    assert panel.uploads_label.text() == "Sharing a.bin, b.bin · 512 B of 2.0 KB"
    assert panel.upload_progress.value() == 250
    panel.set_upload_progress([], 0, 0)
    assert not panel.uploads_label.isVisible() and not panel.upload_progress.isVisible()


def test_files_panel_download_progress_finish_and_folder(qtbot, monkeypatch, tmp_path) -> None:
    panel = FilesPanel()
    qtbot.add_widget(panel)
    row = panel.upsert(shared("f1", "Roadmap.pdf", 4096), mine=False)
    panel.set_download_progress("f1", 0, 0)  # total unknown yet: the announced size
    assert not row.download_button.isEnabled() and not row.progress.isHidden()
    assert row.detail_label.text() == "0 B of 4.0 KB"
    panel.set_download_progress("f1", 1024, 4096)
    assert row.progress.value() == 250
    saved = tmp_path / "Roadmap.pdf"
    panel.set_download_finished("f1", saved)
    assert row.download_button.isEnabled() and row.progress.value() == 1000
    assert row.detail_label.text() == "Downloaded" and row.open_button.isVisibleTo(row)
    opened: list = []
    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(opened.append))
    qtbot.mouseClick(row.open_button, Qt.LeftButton)
    assert [Path(u.toLocalFile()) for u in opened] == [tmp_path]
    panel.set_download_progress("gone", 1, 2)  # a row removed meanwhile: ignored
    panel.set_download_finished("gone", saved)


def test_files_panel_download_failure_and_errors(qtbot) -> None:
    panel = FilesPanel()
    qtbot.add_widget(panel)
    panel.show()
    row = panel.upsert(shared("f1", "big.iso", 10), mine=False)
    panel.set_download_progress("f1", 5, 10)
    panel.set_download_failed("f1", "Could not download big.iso: the server went away")
    assert row.download_button.isEnabled() and row.progress.isHidden()
    assert row.detail_label.text() == "Download failed"
    assert panel.error_label.isVisible()
    assert panel.error_label.text() == "Could not download big.iso: the server went away"
    panel.show_error("")
    assert not panel.error_label.isVisible()
    panel.set_download_failed("gone", "Could not download gone: lost")  # no row: not shown
    assert not panel.error_label.isVisible()
    panel.clear()
    assert not panel.rows and panel.list.count() == 0


# --- chat -------------------------------------------------------------------------------


def chat(seq: int, sender: int, name: str, text: str, to=None) -> dict:
    msg = {"seq": seq, "from": sender, "username": name, "message": text, "timestamp": 0}
    if to is not None:
        msg["to"] = to
    return msg


def test_chat_panel_shows_peer_text_literally_with_links(qtbot) -> None:
    panel = ChatPanel()
    qtbot.add_widget(panel)
    assert panel.add_message(chat(1, 2, "<i>Bob</i>", "<b>hi</b> https://a.lan/x?y=1&z=2"), 1, {})
    text, html = panel.view.toPlainText(), panel.view.toHtml()
    assert "<i>Bob</i>" in text and "<b>hi</b>" in text
    assert "&lt;b&gt;hi&lt;/b&gt;" in html and "&lt;i&gt;Bob&lt;/i&gt;" in html
    assert 'href="https://a.lan/x?y=1&amp;z=2"' in html


def test_chat_panel_deduplicates_by_seq_and_marks_private(qtbot) -> None:
    panel = ChatPanel()
    qtbot.add_widget(panel)
    names = {1: "Alice", 2: "Bob", 3: "Chen"}
    assert panel.add_message(chat(5, 2, "Bob", "for you", to=[1]), 1, names)
    assert not panel.add_message(chat(5, 2, "Bob", "for you", to=[1]), 1, names)  # seen
    assert panel.add_message(chat(6, 1, "Alice", "for both", to=[2, 3]), 1, names)
    text = panel.view.toPlainText()
    assert text.count("for you") == 1 and "privately to you" in text
    assert "You" in text and "privately to Bob, Chen" in text
    assert panel.last_seq == 6
    panel.add_notice("<b>Dana</b> joined")
    assert "<b>Dana</b> joined" in panel.view.toPlainText()
    panel.clear()
    assert panel.view.toPlainText() == "" and panel.last_seq == 0
    assert panel.add_message(chat(5, 2, "Bob", "again"), 1, names)  # forgotten by clear


def test_chat_panel_sends_to_everyone_or_one_person(qtbot) -> None:
    panel = ChatPanel()
    qtbot.add_widget(panel)
    panel.set_recipients([(3, "chen"), (2, "Bob")])
    assert [panel.to_combo.itemText(i) for i in range(panel.to_combo.count())] == [
        "Everyone",
        "Bob",
        "chen",
    ]
    panel.input.setText("  hello  ")
    with qtbot.wait_signal(panel.send_requested) as sent:
        qtbot.keyClick(panel.input, Qt.Key_Return)
    assert sent.args == ["hello", None] and panel.input.text() == ""
    panel.to_combo.setCurrentIndex(panel.to_combo.findText("Bob"))
    panel.set_recipients([(2, "Bob"), (4, "Dana")])  # the choice survives a new list
    assert panel.to_combo.currentText() == "Bob"
    panel.input.setText("psst")
    with qtbot.wait_signal(panel.send_requested) as sent:
        qtbot.mouseClick(panel.send_button, Qt.LeftButton)
    assert sent.args == ["psst", [2]]
    with qtbot.assert_not_emitted(panel.send_requested):
        panel.send()  # nothing typed: nothing sent
    panel.restore_draft("not sent")
    assert panel.input.text() == "not sent"


# --- controls, banner, toast, status, stage ------------------------------------------------


def test_control_bar_states_and_unread_badge(qtbot) -> None:
    bar = ControlBar()
    qtbot.add_widget(bar)
    bar.show()
    bar.set_mic(False)
    assert bar.mic_button.property("alert") == "true"
    assert "Turn on microphone" in bar.mic_button.toolTip()
    bar.set_camera(True)
    assert bar.camera_button.property("alert") == "false"
    bar.set_presenting(True)
    assert bar.screen_button.toolTip() == "Stop presenting"
    bar.set_unread(3)
    assert bar.unread == 3 and bar.unread_badge.isVisible() and bar.unread_badge.text() == "3"
    bar.set_unread(120)
    assert bar.unread_badge.text() == "99+"
    bar.set_unread(0)
    assert not bar.unread_badge.isVisible()
    bar.set_session("<b>Standup</b>")
    assert bar.session_label.text() == "<b>Standup</b>"
    assert bar.session_label.textFormat() == Qt.PlainText


def test_connection_banner_cycle(qtbot) -> None:
    banner = ConnectionBanner()
    qtbot.add_widget(banner)
    assert banner.isHidden()
    banner.show_lost("timed out")
    assert banner.isVisible() and banner.label.text().endswith("(timed out).")
    with qtbot.wait_signal(banner.reconnect_requested):
        qtbot.mouseClick(banner.reconnect_button, Qt.LeftButton)
    banner.show_reconnecting()
    assert not banner.reconnect_button.isEnabled() and banner.label.text() == "Reconnecting…"
    banner.show_failed("Could not reach the server.")
    assert banner.reconnect_button.isEnabled()
    assert banner.label.text() == "Could not reach the server."


def test_toast_sits_above_the_bar_and_goes_away(qtbot) -> None:
    parent = QWidget()
    qtbot.add_widget(parent)
    parent.resize(800, 600)
    above = QWidget(parent)
    above.setFixedHeight(70)
    toast = Toast(parent, above)
    parent.show()
    toast.show_text("Camera stopped: unplugged")
    assert toast.isVisible() and toast.timer.isActive()
    assert toast.geometry().bottom() < 600 - 70
    assert abs(toast.geometry().center().x() - 400) <= 1
    parent.resize(1000, 700)  # follows its parent while it shows
    qtbot.waitUntil(lambda: abs(toast.geometry().center().x() - 500) <= 1, timeout=2000)
    toast.dismiss()
    assert not toast.isVisible() and not toast.timer.isActive()


def test_status_line(qtbot) -> None:
    bar = QStatusBar()
    qtbot.add_widget(bar)
    status = StatusLine(bar)
    status.show_state("10.0.0.5", "Standup", True, 0.0123, 1)
    assert status.server_label.text() == "Connected to 10.0.0.5 · session “Standup”"
    assert status.rtt_label.text() == "Round trip 12 ms"
    assert status.count_label.text() == "1 participant"
    status.show_state("10.0.0.5", "Standup", True, 0.0002, 3)
    assert status.rtt_label.text() == "Round trip < 1 ms"
    assert status.count_label.text() == "3 participants"
    status.show_state("10.0.0.5", "Standup", False, 0.01, 3)
    assert status.server_label.text() == "Disconnected from 10.0.0.5"
    assert status.rtt_label.text() == ""


def test_stage_rings_the_loudest_and_shows_people(qtbot) -> None:
    stage = gui_video.Stage()
    qtbot.add_widget(stage)
    stage.show_person(2, "Bob", False, person(2, "Bob", audio=False))
    stage.show_person(1, "Alice", True, person(1, "Alice", presenting=True))
    assert stage.grid.order == [1, 2]  # our own tile first
    assert stage.grid.tiles[1].presenting and not stage.grid.tiles[2].audio_on
    stage.show_levels({1: 120, 2: 200})
    assert stage.grid.tiles[2].speaking and not stage.grid.tiles[1].speaking
    stage.show_remote_screen("Bob")
    assert not stage.screen_view.isHidden() and stage.screen_view.presenter_name == "Bob"
    stage.show_remote_screen(None)
    assert stage.screen_view.isHidden()


def test_format_size_and_initials() -> None:
    from gui_theme import format_size, initials

    assert [format_size(n) for n in (0, 512, 52_326, 3_565_158)] == [
        "0 B",
        "512 B",
        "51.1 KB",
        "3.4 MB",
    ]
    assert [initials(n) for n in ("Bob Martin", "priya", "x", "  ", "chen.wei")] == [
        "BM",
        "PR",
        "X",
        "?",
        "CW",
    ]
    assert gui_panels.chat_text_to_html("a\nb") == "a<br>b"


def test_right_click_volume_and_mute_for_me_ask_the_server(qtbot) -> None:
    panel = ParticipantsPanel()
    qtbot.add_widget(panel)
    panel.upsert(1, "Me", True, person(1, "Me"))
    panel.upsert(2, "Bob", False, person(2, "Bob"))
    assert panel.volume_menu(1) is None  # no volume for oneself
    asked: list[tuple[int, int, bool]] = []
    panel.volume_changed.connect(lambda *a: asked.append(a))
    menu = panel.volume_menu(2)
    assert menu is not None
    assert (menu.slider.minimum(), menu.slider.maximum(), menu.slider.value()) == (0, 200, 100)
    menu.slider.setValue(150)
    assert asked[-1] == (2, 150, False)
    assert "150 %" in panel.rows[2].name_label.text()
    menu.mute_action.setChecked(True)
    assert asked[-1] == (2, 150, True)
    assert "muted for me" in panel.rows[2].name_label.text()
    # Reopened, the menu shows the choice; reset brings 100 % back.
    menu = panel.volume_menu(2)
    assert menu.slider.value() == 150 and menu.mute_action.isChecked()
    menu.mute_action.setChecked(False)
    menu.reset_action.trigger()
    assert asked[-1] == (2, 100, False)
    assert panel.rows[2].name_label.text() == "Bob"
    n = len(asked)
    menu.slider.setValue(100)  # unchanged: nothing sent
    assert len(asked) == n
