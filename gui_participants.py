"""The participants panel: everyone in the session, with levels, volume, hands and host tools.

``ParticipantsPanel`` (a ``gui_panels.SidePanel``) lists the people, you first,
with microphone/camera/presenting state and level bars; one context menu per
person (volume for me, pin, host actions); the host's menu, the lobby list and
a search box over ``MEETING_PARTICIPANT_SEARCH_MIN`` people. It never talks to
the client: it emits signals that ``gui.MainWindow`` / ``gui_meeting`` connect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PyQt5.QtCore import QRectF, QSize, Qt, pyqtSignal
from PyQt5.QtGui import QColor, QFont, QPainter
from PyQt5.QtWidgets import (
    QAction,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QProgressBar,
    QPushButton,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
    QWidgetAction,
)

import config
from gui_panels import SidePanel
from gui_theme import avatar_colour, icon, initials, plain_label


class Avatar(QWidget):
    """A small initials circle."""

    def __init__(self, name: str, size_px: int = 30) -> None:
        super().__init__()
        self.name = name
        self.setFixedSize(size_px, size_px)

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.setPen(Qt.NoPen)
        p.setBrush(avatar_colour(self.name))
        p.drawEllipse(QRectF(self.rect()))
        font = QFont(self.font())
        font.setPixelSize(max(9, self.height() * 2 // 5))
        font.setWeight(QFont.DemiBold)
        p.setFont(font)
        p.setPen(QColor("white"))
        p.drawText(QRectF(self.rect()), Qt.AlignCenter, initials(self.name))
        p.end()


class ParticipantRow(QWidget):
    """One person in the participants panel: avatar, name, state icons, level bar."""

    def __init__(self, pid: int, name: str, is_self: bool) -> None:
        super().__init__()
        self.pid = pid
        self.is_self = is_self
        row = QHBoxLayout(self)
        row.setContentsMargins(2, 2, 2, 2)
        row.setSpacing(10)
        self.avatar = Avatar(name)
        row.addWidget(self.avatar)
        col = QVBoxLayout()
        col.setSpacing(3)
        self.name = f"{name} (You)" if is_self else name
        self.name_label = plain_label(self.name)
        self.reconnecting = False
        self.volume = (100, False)  # what I hear of them: percent, muted for me
        col.addWidget(self.name_label)
        self.level_bar = QProgressBar()
        self.level_bar.setObjectName("LevelBar")
        self.level_bar.setRange(0, 255)
        self.level_bar.setTextVisible(False)
        self.level_bar.setFixedHeight(4)
        col.addWidget(self.level_bar)
        row.addLayout(col, 1)
        self.present_icon = QLabel()
        self.present_icon.setPixmap(icon("screen").pixmap(QSize(18, 18)))
        self.present_icon.setToolTip("Presenting")
        self.cam_icon = QLabel()
        self.mic_icon = QLabel()
        self.hand_label = plain_label("Hand", "Badge")  # raised hand (issue 14)
        self.hand_label.setToolTip("Hand raised")
        self.hand_label.hide()
        self.host_label = plain_label("Host", "Muted")
        self.host_label.hide()
        for w in (
            self.hand_label,
            self.host_label,
            self.present_icon,
            self.cam_icon,
            self.mic_icon,
        ):
            row.addWidget(w)

    def set_meeting(self, host: bool, hand: int | None) -> None:
        """Host badge, and the hand mark with its place in the order raised (1 = first)."""
        self.host_label.setVisible(host)
        self.hand_label.setVisible(hand is not None)
        if hand is not None:
            self.hand_label.setText(f"Hand {hand}")
            self.hand_label.setToolTip(f"Hand raised ({hand} in the order raised)")

    def set_state(self, audio: bool, video: bool, presenting: bool) -> None:
        self.mic_icon.setPixmap(icon("mic" if audio else "mic-off").pixmap(QSize(18, 18)))
        self.mic_icon.setToolTip("Microphone on" if audio else "Muted")
        self.cam_icon.setPixmap(icon("camera" if video else "camera-off").pixmap(QSize(18, 18)))
        self.cam_icon.setToolTip("Camera on" if video else "Camera off")
        self.present_icon.setVisible(presenting)
        self.audio, self.video, self.presenting = audio, video, presenting

    def set_level(self, level: int) -> None:
        self.level_bar.setValue(max(0, min(255, int(level))))

    def set_reconnecting(self, on: bool) -> None:
        """Their connection broke and the server keeps their place (issue 13)."""
        self.reconnecting = on
        self._show_name()
        self.setEnabled(not on)  # greyed out meanwhile

    def set_volume(self, percent: int, muted: bool) -> None:
        """Show what I hear of this person: the name says "muted for me" or the volume."""
        self.volume = (percent, muted)
        self._show_name()

    def _show_name(self) -> None:
        text = self.name
        percent, muted = self.volume
        if muted:
            text += "  ·  muted for me"
        elif percent != 100:
            text += f"  ·  {percent} %"
        if self.reconnecting:
            text += "  ·  reconnecting…"
        self.name_label.setText(text)


class VolumeMenu(QMenu):
    """Right-click menu of a participant: a 0-200 % volume slider and "Mute for me"."""

    def __init__(self, name: str, percent: int, muted: bool, parent: QWidget | None = None):
        super().__init__(parent)
        box = QWidget()
        col = QVBoxLayout(box)
        col.setContentsMargins(12, 8, 12, 8)
        self.label = plain_label("")
        col.addWidget(self.label)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(config.AUDIO_GAIN_MIN_PERCENT, config.AUDIO_GAIN_MAX_PERCENT)
        self.slider.setSingleStep(5)
        self.slider.setPageStep(25)
        self.slider.setValue(percent)
        self.slider.setMinimumWidth(180)
        self.slider.setAccessibleName(f"Volume of {name}")
        col.addWidget(self.slider)
        slider_action = QWidgetAction(self)
        slider_action.setDefaultWidget(box)
        self.addAction(slider_action)
        self.mute_action = QAction("Mute for me", self)
        self.mute_action.setCheckable(True)
        self.mute_action.setChecked(muted)
        self.addAction(self.mute_action)
        self.reset_action = QAction("Reset volume", self)
        self.addAction(self.reset_action)
        self.name = name
        self.slider.valueChanged.connect(self._show)
        self.reset_action.triggered.connect(lambda: self.slider.setValue(100))
        self._show(percent)

    def _show(self, percent: int) -> None:
        self.label.setText(f"Volume for {self.name}: {percent} %")


class LobbyRow(QWidget):
    """One person waiting in the lobby (hosts see it): name, Admit, Decline."""

    def __init__(self, username: str, from_removed_address: bool) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 2, 2, 2)
        row.setSpacing(6)
        self.name_label = plain_label(username)  # plain text: a peer's name
        self.name_label.setToolTip(
            "Joins from the address of someone a host removed" if from_removed_address else ""
        )
        row.addWidget(self.name_label, 1)
        if from_removed_address:
            row.addWidget(plain_label("removed address", "Muted"))
        self.admit_button = QPushButton("Admit")
        self.admit_button.setObjectName("PrimaryButton")
        self.decline_button = QPushButton("Decline")
        for b in (self.admit_button, self.decline_button):
            b.setAccessibleName(f"{b.text()} {username}")
            row.addWidget(b)


class ParticipantsPanel(SidePanel):
    """Everyone in the session, you first, with mic/camera/presenting state and levels.

    Right-click someone (the list or their video tile) for one menu: their volume
    (0-200 %) and "Mute for me", applied by the server to my mix (``volume_changed``);
    Pin; and for hosts, spotlight and the host actions (``person_action``). Hosts also
    get the header's host menu (``meeting_action``) and the lobby list (``lobby_answer``).
    """

    volume_changed = pyqtSignal(int, int, bool)  # participant id, percent, muted for me

    person_action = pyqtSignal(str, int)  # (pin, spotlight, mute, stop_video, ...), id
    meeting_action = pyqtSignal(str)  # the host menu: lock, mute_all, end_meeting, ...
    lobby_answer = pyqtSignal(int, bool)  # ticket, admit

    def __init__(self) -> None:
        super().__init__("Participants")
        body, head = self.body, self.head
        self.count_label = plain_label("", "Muted")
        head.addWidget(self.count_label)
        # Meeting controls (issue 14): the host's menu, a lobby list, a search box.
        self.host_menu_button = QToolButton()
        self.host_menu_button.setText("Host \u25be")
        self.host_menu_button.setToolTip("Host controls: lock, mute everyone, record, end")
        self.host_menu_button.setPopupMode(QToolButton.InstantPopup)
        self.host_menu = QMenu(self.host_menu_button)
        self.host_menu_button.setMenu(self.host_menu)
        self.host_menu_button.hide()
        head.insertWidget(1, self.host_menu_button)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search people")
        self.search.textChanged.connect(self._filter)
        self.search.hide()
        body.addWidget(self.search)
        self.lobby_label = plain_label("", "Muted")
        self.lobby_box = QWidget()  # a LobbyRow per waiting person (the first few)
        lobby_col = QVBoxLayout(self.lobby_box)
        lobby_col.setContentsMargins(0, 0, 0, 0)
        lobby_col.setSpacing(2)
        self.lobby_rows: dict[int, LobbyRow] = {}  # ticket -> row
        for w in (self.lobby_label, self.lobby_box):
            w.hide()
            body.addWidget(w)
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.NoSelection)
        self.list.setContextMenuPolicy(Qt.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        body.addWidget(self.list)
        self.rows: dict[int, ParticipantRow] = {}
        self.items: dict[int, QListWidgetItem] = {}
        self.self_id: int | None = None
        self.volumes: dict[int, tuple[int, bool]] = {}  # pid -> (percent, muted for me)
        self.i_host = False
        self.hands: list[int] = []
        self.spotlight: int | None = None
        self.pinned_of: Callable[[], int | None] = lambda: None  # the video grid's pin
        self.last_menu: QMenu | None = None  # for tests and screenshots

    def volume_menu(self, pid: int) -> VolumeMenu | None:
        """The volume part of someone else's menu (None for oneself or nobody)."""
        row = self.rows.get(pid)
        if row is None or pid == self.self_id:
            return None
        percent, muted = self.volumes.get(pid, (100, False))
        menu = VolumeMenu(row.name, percent, muted, self)
        menu.slider.valueChanged.connect(
            lambda v, _p=pid: self.set_volume(_p, v, self.volumes.get(_p, (100, False))[1])
        )
        menu.mute_action.toggled.connect(
            lambda m, _p=pid: self.set_volume(_p, self.volumes.get(_p, (100, False))[0], m)
        )
        self.last_menu = menu
        return menu

    def set_volume(self, pid: int, percent: int, muted: bool) -> None:
        """Remember and show a volume choice, and ask for it (``volume_changed``)."""
        if self.volumes.get(pid, (100, False)) == (percent, muted):
            return
        self.volumes[pid] = (percent, muted)
        row = self.rows.get(pid)
        if row is not None:
            row.set_volume(percent, muted)
        self.volume_changed.emit(pid, percent, muted)

    def upsert(self, pid: int, name: str, is_self: bool, p: dict) -> None:
        row = self.rows.get(pid)
        if row is None:
            row = ParticipantRow(pid, name, is_self)
            if is_self:
                self.self_id = pid
            elif pid in self.volumes:
                row.set_volume(*self.volumes[pid])
            item = QListWidgetItem()
            item.setSizeHint(QSize(100, 42))
            if is_self:
                self.list.insertItem(0, item)
            else:
                self.list.addItem(item)
            self.list.setItemWidget(item, row)
            self.rows[pid] = row
            self.items[pid] = item
        row.set_state(bool(p.get("audio")), bool(p.get("video")), bool(p.get("presenting")))
        row.set_reconnecting(bool(p.get("reconnecting")))
        self._count()

    def remove(self, pid: int) -> None:
        item = self.items.pop(pid, None)
        self.rows.pop(pid, None)
        if item is not None:
            self.list.takeItem(self.list.row(item))
        self._count()

    def clear(self) -> None:
        self.list.clear()
        self.rows.clear()
        self.items.clear()
        self.volumes.clear()  # a new meeting: the server forgot them too
        self._count()

    def set_levels(self, levels: dict[int, int]) -> None:
        for pid, row in self.rows.items():
            row.set_level(levels.get(pid, 0))

    def names(self) -> list[str]:
        return [self.rows[pid].name_label.text() for pid in self.rows]

    def set_meeting(self, hosts: list[int], hands: list[int]) -> None:
        """Host badges and hand marks numbered in the order the hands were raised."""
        self.hands = list(hands)
        for pid, row in self.rows.items():
            row.set_meeting(pid in hosts, hands.index(pid) + 1 if pid in hands else None)

    def _count(self) -> None:
        self.count_label.setText(str(len(self.rows)))
        self.search.setVisible(len(self.rows) > config.MEETING_PARTICIPANT_SEARCH_MIN)

    def _filter(self, text: str) -> None:
        needle = text.strip().casefold()
        for pid, row in self.rows.items():
            hidden = bool(needle) and needle not in row.name_label.text().casefold()
            self.items[pid].setHidden(hidden)

    # --- meeting controls (issue 14) --------------------------------------------------

    def set_host_mode(self, host: bool, locked: bool, ask: bool, recording: bool) -> None:
        """Our own role: hosts get the header menu and a context menu per person."""
        self.i_host = host
        self.host_menu_button.setVisible(host)
        m = self.host_menu
        m.clear()
        lock = ("Unlock meeting", "unlock") if locked else ("Lock meeting (lobby)", "lock")
        ask = ("Stop asking to join", "ask_off") if ask else ("Ask to join (lobby)", "ask_on")
        rec = ("Stop recording", "stop_recording")
        if not recording:
            rec = ("Start recording", "start_recording")
        for text, action in (
            ("Mute everyone", "mute_all"),
            lock,
            ask,
            rec,
            ("End meeting for everyone", "end_meeting"),
        ):
            m.addAction(text, lambda a=action: self.meeting_action.emit(a))

    def set_lobby(self, entries: list[dict]) -> None:
        """People waiting for a host (hosts only), each with Admit and Decline buttons."""
        for row in self.lobby_rows.values():
            row.setParent(None)
            row.deleteLater()
        self.lobby_rows = {}
        for e in entries[: config.MEETING_LOBBY_ROWS_SHOWN]:
            ticket = int(e["ticket"])
            row = LobbyRow(str(e["username"]), bool(e.get("from_removed_address")))
            row.admit_button.clicked.connect(lambda _=False, t=ticket: self.answer_lobby(t, True))
            row.decline_button.clicked.connect(
                lambda _=False, t=ticket: self.answer_lobby(t, False)
            )
            self.lobby_box.layout().addWidget(row)
            self.lobby_rows[ticket] = row
        n = len(entries)
        more = n - len(self.lobby_rows)  # the first ones first: answered, the next show
        self.lobby_label.setText(
            f"Waiting to join ({n})" + (f": {more} more after these" if more else "")
        )
        for w in (self.lobby_label, self.lobby_box):
            w.setVisible(n > 0 and self.i_host)

    def answer_lobby(self, ticket: int, admit: bool) -> None:
        """A host's answer to one waiting person (``lobby_answer``); their row goes grey."""
        row = self.lobby_rows.get(ticket)
        if row is not None:
            row.setEnabled(False)  # until the server's lobby_updated drops it
        self.lobby_answer.emit(ticket, admit)

    def person_menu(self, pid: int) -> QMenu:
        """The context menu of one person: their volume and pin; host actions for hosts."""
        row = self.rows[pid]
        menu = self.volume_menu(pid) or QMenu(self)  # no volume for oneself
        self.last_menu = menu
        if not row.is_self:  # the one pin (client-only), as on the video tile
            menu.addSeparator()
            pin = "Unpin" if self.pinned_of() == pid else "Pin"
            menu.addAction(f"{pin} {row.avatar.name}", lambda: self.person_action.emit("pin", pid))
        if self.i_host:
            spot = "Remove spotlight" if self.spotlight == pid else "Spotlight for everyone"
            menu.addAction(spot, lambda: self.person_action.emit("spotlight", pid))
            if not row.is_self:
                menu.addSeparator()
                if getattr(row, "audio", False):
                    menu.addAction("Ask to mute", lambda: self.person_action.emit("mute", pid))
                if getattr(row, "video", False):
                    menu.addAction(
                        "Stop camera", lambda: self.person_action.emit("stop_video", pid)
                    )
                if getattr(row, "presenting", False):
                    menu.addAction(
                        "Stop screen share", lambda: self.person_action.emit("stop_screen", pid)
                    )
                menu.addAction("Make host", lambda: self.person_action.emit("make_host", pid))
                if pid in self.hands:
                    menu.addAction("Lower hand", lambda: self.person_action.emit("lower_hand", pid))
                menu.addSeparator()
                menu.addAction(
                    "Remove from meeting\u2026", lambda: self.person_action.emit("remove", pid)
                )
        return menu

    def _context_menu(self, pos: Any) -> None:
        item = self.list.itemAt(pos)
        pid = next((p for p, it in self.items.items() if it is item), None)
        if pid is not None:
            self.person_menu(pid).popup(self.list.mapToGlobal(pos))
