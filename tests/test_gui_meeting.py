"""GUI meeting controls (issue 14): the controller, the panel marks, the tiles, the bar."""

from __future__ import annotations

import pytest

pytest.importorskip("PyQt5")

from PyQt5.QtCore import Qt  # noqa: E402

import config  # noqa: E402
from gui_controllers import MeetingControls  # noqa: E402
from gui_panels import ControlBar  # noqa: E402
from gui_participants import ParticipantsPanel  # noqa: E402
from gui_video import Stage  # noqa: E402


class FakeClient:
    def __init__(self) -> None:
        self.my_id = 2
        self.connected = True
        self.meeting = {"hosts": [1], "hands": [], "recording": False}
        self.sent: list[str] = []

    def raise_hand(self) -> None:
        self.sent.append("raise_hand")

    def lower_hand(self) -> None:
        self.sent.append("lower_hand")


def test_controller_reports_marks_hand_recording_and_host_requests(qtbot):
    client = FakeClient()
    m = MeetingControls()
    got: dict[str, list] = {k: [] for k in ("marks", "hand", "rec", "notice", "mic", "cam")}
    m.marks_changed.connect(lambda hosts, hands: got["marks"].append((hosts, hands)))
    m.hand_changed.connect(got["hand"].append)
    m.recording_changed.connect(got["rec"].append)
    m.notice_issued.connect(got["notice"].append)
    m.mic_off_requested.connect(lambda: got["mic"].append(True))
    m.camera_off_requested.connect(lambda: got["cam"].append(True))
    m.attach(client)
    assert got["marks"][-1] == ([1], []) and got["hand"][-1] is False
    m.toggle_hand()
    assert client.sent == ["raise_hand"]
    client.meeting["hands"] = [3, 2]
    m.refresh("hands_changed")
    assert got["marks"][-1] == ([1], [3, 2]) and got["hand"][-1] is True
    m.toggle_hand()
    assert client.sent[-1] == "lower_hand"
    m.on_mute_requested("Alice", False)
    assert got["mic"] == [True] and got["notice"][-1] == "Alice asked you to mute"
    m.on_video_stopped("Alice")
    assert got["cam"] == [True] and "camera off" in got["notice"][-1]
    m.on_recording_changed(True, None)
    assert got["rec"][-1] is True and got["notice"][-1] == "This meeting is being recorded"


def test_panel_marks_hosts_and_hands_in_order_and_bar_shows_recording(qtbot):
    panel = ParticipantsPanel()
    qtbot.add_widget(panel)
    for pid, name in ((1, "Alice"), (2, "Bob <b>x</b>"), (3, "Carol")):
        panel.upsert(pid, name, pid == 2, {"audio": True, "video": False})
    panel.set_meeting([1], [3, 2])
    rows = panel.rows
    assert not rows[1].host_label.isHidden() and rows[2].host_label.isHidden()
    assert rows[3].hand_label.text() == "Hand 1" and rows[2].hand_label.text() == "Hand 2"
    assert rows[1].hand_label.isHidden()
    assert rows[2].name_label.textFormat() == Qt.PlainText  # peer text, never HTML
    bar = ControlBar()
    qtbot.add_widget(bar)
    bar.set_recording(True)
    assert not bar.recording_label.isHidden() and "Recording" in bar.recording_label.text()
    bar.set_hand(True)
    assert bar.hand_button.isChecked() and "Lower hand" in bar.hand_button.toolTip()


def test_reactions_float_over_the_sender_tile_and_hands_mark_tiles(qtbot):
    stage = Stage()
    qtbot.add_widget(stage)
    stage.show_person(1, "Alice", False, {"audio": True, "video": False})
    stage.show_person(2, "Bob", True, {"audio": True, "video": False})
    stage.show_reaction(1, config.MEETING_REACTIONS[0])
    stage.show_reaction(99, config.MEETING_REACTIONS[0])  # someone gone: ignored
    tile = stage.grid.tiles[1]
    assert tile.reaction == config.MEETING_REACTIONS[0] and tile.reaction_until > 0
    assert stage.grid.tiles[2].reaction == ""
    stage.set_marks([1], [2])
    assert stage.grid.tiles[2].hand == 1 and stage.grid.tiles[1].hand is None
    tile.resize(320, 180)
    tile.grab()  # paints the marks without error


def test_lobby_rows_admit_and_decline_with_one_click(qtbot):
    """Hosts see who waits, each with Admit and Decline; a name is plain text."""
    panel = ParticipantsPanel()
    qtbot.addWidget(panel)
    panel.show()
    answers: list[tuple[int, bool]] = []
    panel.lobby_answer.connect(lambda t, a: answers.append((t, a)))
    waiting = [
        {"ticket": 7, "username": "<b>Erin</b>"},
        {"ticket": 9, "username": "Frank", "from_removed_address": True},
    ]
    panel.set_lobby(waiting)
    assert not panel.lobby_box.isVisible()  # not a host: nothing shown
    panel.set_host_mode(True, False, False, False)
    panel.set_lobby(waiting)
    assert panel.lobby_box.isVisible() and panel.lobby_label.text() == "Waiting to join (2)"
    erin, frank = panel.lobby_rows[7], panel.lobby_rows[9]
    assert erin.name_label.textFormat() == Qt.PlainText and erin.name_label.text() == "<b>Erin</b>"
    assert frank.name_label.toolTip()  # from a removed person's address
    qtbot.mouseClick(erin.admit_button, Qt.LeftButton)
    qtbot.mouseClick(frank.decline_button, Qt.LeftButton)
    assert answers == [(7, True), (9, False)]
    assert not erin.isEnabled() and not frank.isEnabled()  # until lobby_updated
    panel.set_lobby([])
    assert not panel.lobby_box.isVisible()
