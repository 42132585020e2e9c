"""The window's meeting-controls wiring (issue 14), kept out of ``MainWindow``.

``wire`` connects the control bar, the participants panel and the stage to the
window's ``MeetingControls`` controller; ``connect_bridge`` connects a client's
bridge to it. Nothing here touches a widget's contents: panels have methods.
"""

from __future__ import annotations

from typing import Any

from PyQt5.QtGui import QKeySequence
from PyQt5.QtWidgets import QShortcut

from gui_bridge import ClientBridge
from gui_controllers import MeetingControls
from gui_video import Stage


def wire(window: Any) -> None:
    """Meeting controls (issue 14): hand button, marks, Recording, host toasts."""
    m, c, local = window.meeting, window.controls, window.local
    c.hand_button.clicked.connect(m.toggle_hand)
    QShortcut(QKeySequence("Ctrl+Alt+H"), window, activated=m.toggle_hand)
    m.marks_changed.connect(window.participants_panel.set_meeting)
    m.marks_changed.connect(window.stage.set_marks)
    panel = window.participants_panel
    panel.person_action.connect(m.on_person_action)
    panel.meeting_action.connect(m.on_meeting_action)
    panel.lobby_answer.connect(m.on_lobby_answer)
    m.host_mode_changed.connect(panel.set_host_mode)
    m.lobby_changed.connect(panel.set_lobby)
    m.spotlight_changed.connect(lambda pid: setattr(panel, "spotlight", pid))
    grid = window.stage.grid
    m.spotlight_changed.connect(grid.set_spotlight)
    m.pin_requested.connect(grid.toggle_pin)
    panel.pinned_of = lambda: grid.pinned
    grid.set_menu_provider(lambda pid: panel.person_menu(pid) if pid in panel.rows else None)
    m.hand_changed.connect(c.set_hand)
    m.recording_changed.connect(c.set_recording)
    m.notice_issued.connect(window.notify)
    m.mic_off_requested.connect(lambda: local.apply(False, local.video_on))
    m.camera_off_requested.connect(lambda: local.apply(local.audio_on, False))
    m.screen_off_requested.connect(lambda: local.stop_presenting(send=False))
    window.roster.person_shown.connect(lambda *_: m.refresh())


def connect_bridge(bridge: ClientBridge, m: MeetingControls, stage: Stage) -> None:
    """A new client's meeting events to the controller and the stage."""
    bridge.meeting_changed.connect(m.refresh)
    bridge.mute_requested.connect(m.on_mute_requested)
    bridge.video_stopped.connect(m.on_video_stopped)
    bridge.screen_stopped.connect(m.on_screen_stopped)
    bridge.recording_changed.connect(m.on_recording_changed)
    bridge.reaction.connect(stage.show_reaction)
