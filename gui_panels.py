"""The meeting window's parts: participants, files and chat panels, control bar, banner, status."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PyQt5.QtCore import QEvent, QObject, QRectF, QSize, Qt, QTimer, QUrl, pyqtSignal
from PyQt5.QtGui import QColor, QDesktopServices, QFont, QPainter
from PyQt5.QtWidgets import (
    QAction,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QProgressBar,
    QPushButton,
    QSlider,
    QStatusBar,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
    QWidgetAction,
)

import config
from gui_theme import (
    ACCENT,
    MUTED,
    WARNING,
    avatar_colour,
    format_size,
    icon,
    initials,
    plain_label,
)


class SidePanel(QFrame):
    """A rounded side panel with a title row: subclasses fill ``head`` and ``body``."""

    def __init__(self, title: str) -> None:
        super().__init__()
        self.setObjectName("Panel")
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(0, 0, 0, 0)
        frame = QFrame()
        frame.setObjectName("Panel")
        self.layout().addWidget(frame)
        self.body = QVBoxLayout(frame)
        self.body.setContentsMargins(14, 12, 14, 12)
        self.body.setSpacing(8)
        self.head = QHBoxLayout()
        label = QLabel(title)
        label.setObjectName("SectionTitle")
        self.head.addWidget(label, 1)
        self.body.addLayout(self.head)


def thin_progress_bar() -> QProgressBar:
    """A thin bar for transfers, 0-1000 (per mille), hidden until a transfer runs."""
    bar = QProgressBar()
    bar.setRange(0, 1000)
    bar.setTextVisible(False)
    bar.setFixedHeight(5)
    bar.hide()
    return bar


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
        self.lobby_list = QListWidget()
        self.lobby_list.setMaximumHeight(110)
        for w in (self.lobby_label, self.lobby_list):
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
        """People waiting for a host (hosts only); double-click or the menu to answer."""
        self.lobby_list.clear()
        for e in entries:
            mark = "  (from a removed person's address)" if e.get("from_removed_address") else ""
            item = QListWidgetItem(f"{e['username']}{mark}")  # plain text item
            item.setData(Qt.UserRole, e["ticket"])
            self.lobby_list.addItem(item)
        n = len(entries)
        self.lobby_label.setText(f"Waiting to join ({n}): right-click to admit or decline")
        for w in (self.lobby_label, self.lobby_list):
            w.setVisible(n > 0 and self.i_host)
        self.lobby_list.setContextMenuPolicy(Qt.CustomContextMenu)
        try:
            self.lobby_list.customContextMenuRequested.disconnect()
        except TypeError:
            pass
        self.lobby_list.customContextMenuRequested.connect(self._lobby_menu)

    def _lobby_menu(self, pos: Any) -> None:
        item = self.lobby_list.itemAt(pos)
        if item is None:
            return
        ticket = int(item.data(Qt.UserRole))
        menu = self.last_menu = QMenu(self)
        menu.addAction("Admit", lambda: self.lobby_answer.emit(ticket, True))
        menu.addAction("Decline", lambda: self.lobby_answer.emit(ticket, False))
        menu.popup(self.lobby_list.mapToGlobal(pos))

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


class FileRow(QWidget):
    """One shared file: name, size and owner, download/progress/open folder/delete."""

    def __init__(self, file: dict, mine: bool) -> None:
        super().__init__()
        self.file = file
        self.file_id = str(file.get("id", ""))
        self.downloaded_path: Path | None = None
        row = QHBoxLayout(self)
        row.setContentsMargins(2, 2, 2, 2)
        row.setSpacing(8)
        glyph = QLabel()
        glyph.setPixmap(icon("files").pixmap(QSize(22, 22)))
        row.addWidget(glyph)
        col = QVBoxLayout()
        col.setSpacing(2)
        self.name_label = plain_label(str(file.get("name", "")))
        self.name_label.setToolTip(html.escape(str(file.get("name", ""))))
        owner = "you" if mine else str(file.get("username", "?"))
        self.detail_label = plain_label(
            f"{format_size(int(file.get('size', 0)))} · shared by {owner}", "Muted"
        )
        self.progress = thin_progress_bar()
        col.addWidget(self.name_label)
        col.addWidget(self.detail_label)
        col.addWidget(self.progress)
        row.addLayout(col, 1)
        self.download_button = QToolButton()
        self.download_button.setIcon(icon("download"))
        self.download_button.setToolTip("Download")
        self.open_button = QToolButton()
        self.open_button.setIcon(icon("folder"))
        self.open_button.setToolTip("Show in folder")
        self.open_button.hide()
        self.delete_button = QToolButton()
        self.delete_button.setIcon(icon("delete"))
        self.delete_button.setToolTip("Delete for everyone")
        self.delete_button.setVisible(mine)
        for b in (self.download_button, self.open_button, self.delete_button):
            b.setIconSize(QSize(18, 18))
            row.addWidget(b)

    def set_progress(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` bytes under the name."""
        self.progress.show()
        self.progress.setValue(int(1000 * done / total) if total > 0 else 1000)
        self.detail_label.setText(f"{format_size(done)} of {format_size(total)}")


class FilesPanel(SidePanel):
    """The session's shared files; upload by button or drop, download with progress."""

    upload_requested = pyqtSignal(list)  # list[str] paths
    download_requested = pyqtSignal(object)  # the file dict
    delete_requested = pyqtSignal(str)  # file id

    def __init__(self) -> None:
        super().__init__("Shared files")
        body, head = self.body, self.head
        self.upload_button = QToolButton()
        self.upload_button.setIcon(icon("upload"))
        self.upload_button.setText("Upload")
        self.upload_button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.upload_button.setToolTip("Share a file with everyone (or drop files on the window)")
        self.upload_button.clicked.connect(self._pick_files)
        head.addWidget(self.upload_button)
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.NoSelection)
        body.addWidget(self.list)
        self.uploads_label = plain_label("", "Muted")
        self.uploads_label.hide()
        body.addWidget(self.uploads_label)
        self.upload_progress = thin_progress_bar()
        body.addWidget(self.upload_progress)
        self.empty_label = plain_label("No files yet. Drop a file here to share it.", "Muted")
        self.empty_label.setAlignment(Qt.AlignCenter)
        self.empty_label.setWordWrap(True)
        body.addWidget(self.empty_label)
        self.error_label = plain_label("", "ErrorText")
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        body.addWidget(self.error_label)
        self.rows: dict[str, FileRow] = {}
        self.items: dict[str, QListWidgetItem] = {}

    def _pick_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Share files")
        if paths:
            self.upload_requested.emit(list(paths))

    def upsert(self, file: dict, mine: bool) -> FileRow:
        fid = str(file.get("id", ""))
        if fid in self.rows:
            return self.rows[fid]
        row = FileRow(file, mine)
        row.download_button.clicked.connect(lambda _=False: self.download_requested.emit(file))
        row.delete_button.clicked.connect(lambda _=False: self.delete_requested.emit(fid))
        row.open_button.clicked.connect(lambda _=False: self.open_folder(fid))
        item = QListWidgetItem()
        item.setSizeHint(QSize(100, 56))
        self.list.addItem(item)
        self.list.setItemWidget(item, row)
        self.rows[fid] = row
        self.items[fid] = item
        self.empty_label.hide()
        return row

    def remove(self, fid: str) -> None:
        item = self.items.pop(fid, None)
        self.rows.pop(fid, None)
        if item is not None:
            self.list.takeItem(self.list.row(item))
        self.empty_label.setVisible(not self.rows)

    def clear(self) -> None:
        self.list.clear()
        self.rows.clear()
        self.items.clear()
        self.empty_label.show()

    def show_error(self, text: str) -> None:
        """Say what went wrong under the list ("" hides it)."""
        self.error_label.setText(text)
        self.error_label.setVisible(bool(text))

    def set_upload_progress(self, names: list[str], done: int, total: int) -> None:
        """The running uploads together: their names and bytes; no names hides the line."""
        if names:
            self.uploads_label.setText(
                f"Sharing {', '.join(names)} · {format_size(done)} of {format_size(total)}"
            )
            self.upload_progress.setValue(int(1000 * done / total) if total else 0)
        self.uploads_label.setVisible(bool(names))
        self.upload_progress.setVisible(bool(names))

    def set_download_progress(self, fid: str, done: int, total: int) -> None:
        """A download of ``fid`` is running (``total`` 0: the file's announced size)."""
        row = self.rows.get(fid)
        if row is not None:
            row.download_button.setEnabled(False)
            row.set_progress(done, total or int(row.file.get("size", 0)))

    def set_download_finished(self, fid: str, path: Path | None) -> None:
        """The download of ``fid`` is saved at ``path``: offer "Show in folder"."""
        row = self.rows.get(fid)
        if row is not None:
            row.download_button.setEnabled(True)
            row.set_progress(1, 1)
            row.downloaded_path = path
            row.detail_label.setText("Downloaded")
            row.open_button.show()

    def set_download_failed(self, fid: str, text: str) -> None:
        """The download of ``fid`` ended without the file; ``text`` says why."""
        row = self.rows.get(fid)
        if row is not None:
            row.download_button.setEnabled(True)
            row.progress.hide()
            row.detail_label.setText("Download failed")
            self.show_error(text)

    def open_folder(self, fid: str) -> None:
        """Show the folder of ``fid``'s downloaded copy in the desktop's file manager."""
        row = self.rows.get(fid)
        if row is not None and row.downloaded_path is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(row.downloaded_path.parent)))


URL_RE = re.compile(r"\b(https?://[^\s<>\"']+|www\.[^\s<>\"']+)", re.IGNORECASE)


def chat_text_to_html(text: str) -> str:
    """Peer text as safe HTML: escaped first, then URLs made into links, newlines kept."""
    escaped = html.escape(text, quote=True)

    def link(match: re.Match[str]) -> str:
        url = match.group(0)
        trail = ""
        while url and url[-1] in ".,;:!?)":
            trail = url[-1] + trail
            url = url[:-1]
        href = url if url.lower().startswith("http") else "http://" + url
        return f'<a href="{href}" style="color:{ACCENT}">{url}</a>{trail}'

    return URL_RE.sub(link, escaped).replace("\n", "<br>")


class ChatPanel(SidePanel):
    """Chronological chat with sender and time, private messages, links, Enter to send."""

    send_requested = pyqtSignal(str, object)  # text, list of ids or None

    def __init__(self) -> None:
        super().__init__("Chat")
        body = self.body
        self.view = QTextBrowser()
        self.view.setOpenExternalLinks(True)
        self.view.document().setMaximumBlockCount(config.GUI_CHAT_VIEW_MAX_LINES)
        self.view.document().setDefaultStyleSheet(f"a {{ color: {ACCENT}; }}")
        body.addWidget(self.view, 1)
        to_row = QHBoxLayout()
        to_label = plain_label("To:", "Muted")
        self.to_combo = QComboBox()
        self.to_combo.addItem("Everyone", None)
        self.to_combo.setToolTip("Send to everyone, or privately to one person")
        to_row.addWidget(to_label)
        to_row.addWidget(self.to_combo, 1)
        body.addLayout(to_row)
        send_row = QHBoxLayout()
        self.input = QLineEdit()
        self.input.setPlaceholderText("Send a message")
        self.input.setMaxLength(config.MAX_CHAT_CHARS)
        self.input.returnPressed.connect(self.send)
        self.send_button = QToolButton()
        self.send_button.setIcon(icon("send"))
        self.send_button.setToolTip("Send (Enter)")
        self.send_button.clicked.connect(self.send)
        send_row.addWidget(self.input, 1)
        send_row.addWidget(self.send_button)
        body.addLayout(send_row)
        self.seen_seqs: set[int] = set()
        self.last_seq = 0

    def send(self) -> None:
        text = self.input.text().strip()
        if not text:
            return
        target = self.to_combo.currentData()
        self.send_requested.emit(text, [int(target)] if target is not None else None)
        self.input.clear()

    def focus_input(self) -> None:
        self.input.setFocus()

    def restore_draft(self, text: str) -> None:
        """Put back a message that could not be sent."""
        self.input.setText(text)

    def set_recipients(self, people: Iterable[tuple[int, str]]) -> None:
        current = self.to_combo.currentData()
        self.to_combo.blockSignals(True)
        self.to_combo.clear()
        self.to_combo.addItem("Everyone", None)
        for pid, name in sorted(people, key=lambda x: x[1].casefold()):
            self.to_combo.addItem(name, pid)
        idx = self.to_combo.findData(current)
        self.to_combo.setCurrentIndex(max(0, idx))
        self.to_combo.blockSignals(False)

    def add_message(self, msg: dict, my_id: int | None, names: dict[int, str]) -> bool:
        """Show a chat message once (deduplicated by seq); True if it was new."""
        seq = msg.get("seq")
        if isinstance(seq, int):
            if seq in self.seen_seqs:
                return False
            self.seen_seqs.add(seq)
            if len(self.seen_seqs) > config.GUI_CHAT_VIEW_MAX_LINES * 2:
                self.seen_seqs = {
                    s for s in self.seen_seqs if s > seq - config.GUI_CHAT_VIEW_MAX_LINES
                }
            self.last_seq = max(self.last_seq, seq)
        mine = msg.get("from") == my_id
        sender = "You" if mine else str(msg.get("username", "?"))
        when = time.strftime("%H:%M", time.localtime(float(msg.get("timestamp") or time.time())))
        private = ""
        to = msg.get("to")
        if isinstance(to, list) and to:
            if mine:
                who = ", ".join(names.get(int(i), "?") for i in to if isinstance(i, int))
                private = f"privately to {who}"
            else:
                private = "privately to you"
        colour = ACCENT if mine else "#E8EAED"
        parts = [
            f'<span style="color:{colour}; font-weight:600">{html.escape(sender)}</span>',
            f'&nbsp;<span style="color:{MUTED}; font-size:9pt">{when}</span>',
        ]
        if private:
            parts.append(
                f'&nbsp;<span style="color:{WARNING}; font-size:9pt">'
                f"{html.escape(private)}</span>"
            )
        body = chat_text_to_html(str(msg.get("message", "")))
        self._append(
            f'<p style="margin-top:8px; margin-bottom:0px">{"".join(parts)}<br>'
            f'<span style="color:#DADCE0">{body}</span></p>'
        )
        return True

    def add_notice(self, text: str) -> None:
        """A join/leave or similar line, muted and centred."""
        self._append(
            f'<p align="center" style="margin-top:8px; color:{MUTED}; font-size:9pt">'
            f"{html.escape(text)}</p>"
        )

    def _append(self, fragment: str) -> None:
        bar = self.view.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        self.view.append(fragment)
        if at_end:
            bar.setValue(bar.maximum())

    def clear(self) -> None:
        self.view.clear()
        self.seen_seqs.clear()
        self.last_seq = 0


def control_button(icon_name: str, tip: str, checkable: bool = False) -> QToolButton:
    """A round control-bar button with an icon and a tooltip."""
    b = QToolButton()
    b.setObjectName("ControlButton")
    b.setIcon(icon(icon_name))
    b.setIconSize(QSize(22, 22))
    b.setFixedSize(48, 48)
    b.setToolTip(tip)
    b.setCheckable(checkable)
    b.setCursor(Qt.PointingHandCursor)
    return b


def set_prop(widget: QWidget, name: str, value: bool) -> None:
    """Set a dynamic property the style sheet reacts to, and re-polish."""
    widget.setProperty(name, "true" if value else "false")
    widget.style().unpolish(widget)
    widget.style().polish(widget)


class ControlBar(QWidget):
    """Camera, microphone, screen share, files, chat, settings and leave."""

    def __init__(self) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(16, 10, 16, 12)
        row.setSpacing(12)
        self.session_label = plain_label("", "SectionTitle")
        self.clock_label = plain_label("", "Muted")
        left = QHBoxLayout()
        left.addWidget(self.clock_label)
        left.addWidget(self.session_label)
        row.addLayout(left, 1)
        self.mic_button = control_button("mic", "Turn off microphone (Ctrl+D)")
        self.camera_button = control_button("camera", "Turn off camera (Ctrl+E)")
        self.screen_button = control_button("screen", "Present your screen")
        self.settings_button = control_button("settings", "Settings: camera, microphone, speaker")
        self.hand_button = control_button("people", "Raise hand (Ctrl+Alt+H)", True)
        self.recording_label = plain_label("\u25cf Recording", "Recording")
        self.recording_label.setStyleSheet("color: #d93025; font-weight: bold;")
        self.recording_label.hide()
        left.addWidget(self.recording_label)
        self.leave_button = QToolButton()
        self.leave_button.setObjectName("LeaveButton")
        self.leave_button.setIcon(icon("leave"))
        self.leave_button.setIconSize(QSize(26, 26))
        self.leave_button.setFixedHeight(48)
        self.leave_button.setToolTip("Leave the meeting")
        self.leave_button.setCursor(Qt.PointingHandCursor)
        for b in (
            self.mic_button,
            self.camera_button,
            self.screen_button,
            self.hand_button,
            self.settings_button,
            self.leave_button,
        ):
            row.addWidget(b)
        right = QHBoxLayout()
        right.addStretch(1)
        self.people_button = control_button("people", "Show or hide participants", True)
        self.files_button = control_button("files", "Show or hide shared files", True)
        self.chat_button = control_button("chat", "Show or hide the chat", True)
        for b in (self.people_button, self.files_button, self.chat_button):
            b.setChecked(True)
            right.addWidget(b)
        self.unread_badge = plain_label("", "Badge")
        self.unread_badge.setAlignment(Qt.AlignCenter)
        self.unread_badge.setParent(self.chat_button)
        self.unread_badge.move(30, 0)
        self.unread_badge.hide()
        self.unread = 0
        row.addLayout(right, 1)

    def set_mic(self, on: bool) -> None:
        self.mic_button.setIcon(icon("mic" if on else "mic-off"))
        self.mic_button.setToolTip(
            "Turn off microphone (Ctrl+D)" if on else "Turn on microphone (Ctrl+D)"
        )
        set_prop(self.mic_button, "alert", not on)

    def set_camera(self, on: bool) -> None:
        self.camera_button.setIcon(icon("camera" if on else "camera-off"))
        self.camera_button.setToolTip(
            "Turn off camera (Ctrl+E)" if on else "Turn on camera (Ctrl+E)"
        )
        set_prop(self.camera_button, "alert", not on)

    def set_presenting(self, on: bool) -> None:
        self.screen_button.setToolTip("Stop presenting" if on else "Present your screen")
        set_prop(self.screen_button, "active", on)

    def set_session(self, name: str) -> None:
        self.session_label.setText(name)

    def set_hand(self, raised: bool) -> None:
        self.hand_button.setChecked(raised)
        self.hand_button.setToolTip(
            "Lower hand (Ctrl+Alt+H)" if raised else "Raise hand (Ctrl+Alt+H)"
        )

    def set_recording(self, on: bool) -> None:
        """The red "Recording" mark, for everyone while the meeting is recorded."""
        self.recording_label.setVisible(on)

    def set_clock(self, text: str) -> None:
        self.clock_label.setText(text)

    def set_unread(self, n: int) -> None:
        """Show ``n`` unread chat messages on the chat button (0 hides the badge)."""
        self.unread = n
        self.unread_badge.setText(str(n) if n < 100 else "99+")
        self.unread_badge.adjustSize()
        self.unread_badge.setVisible(n > 0)
        self.unread_badge.raise_()


class ConnectionBanner(QFrame):
    """The bar over the stage while the connection is lost: Reconnecting… with the time
    elapsed and a Leave button, or (once the client gave up) a Reconnect button."""

    reconnect_requested = pyqtSignal()
    leave_requested = pyqtSignal()

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("Banner")
        row = QHBoxLayout(self)
        row.setContentsMargins(16, 8, 10, 8)
        self.label = plain_label("Lost the connection to the server.")
        row.addWidget(self.label, 1)
        self.reconnect_button = QPushButton("Reconnect")
        self.reconnect_button.setObjectName("PrimaryButton")
        self.reconnect_button.clicked.connect(self.reconnect_requested)
        row.addWidget(self.reconnect_button)
        self.leave_button = QPushButton("Leave")
        self.leave_button.clicked.connect(self.leave_requested)
        row.addWidget(self.leave_button)
        self._reason = ""
        self.hide()

    def show_lost(self, reason: str) -> None:
        self.label.setText(
            f"Lost the connection to the server ({reason})." if reason else "Lost the connection."
        )
        self.show()
        self.reconnect_button.show()
        self.reconnect_button.setEnabled(True)

    def show_auto_reconnecting(self, reason: str) -> None:
        """The client is reconnecting by itself: no Reconnect button, Leave stays."""
        self._reason = reason
        self.reconnect_button.hide()
        self.set_elapsed(0)
        self.show()

    def set_elapsed(self, seconds: int) -> None:
        m, s = divmod(max(0, int(seconds)), 60)
        elapsed = f"{m}:{s:02d}" if m else f"{s} s"
        why = f" — {self._reason}" if self._reason else ""
        self.label.setText(f"Reconnecting… {elapsed}{why}")

    def show_reconnecting(self) -> None:
        self.reconnect_button.setEnabled(False)
        self.label.setText("Reconnecting…")

    def show_failed(self, text: str) -> None:
        self.label.setText(text)
        self.reconnect_button.setEnabled(True)


class Toast(QLabel):
    """A short notice over the bottom of its parent, above ``above``, for GUI_TOAST_MS."""

    def __init__(self, parent: QWidget, above: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("Toast")
        self.setTextFormat(Qt.PlainText)
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignCenter)
        self.above = above
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.hide)
        parent.installEventFilter(self)
        self.hide()

    def show_text(self, text: str) -> None:
        self.setText(text)
        self.timer.start(config.GUI_TOAST_MS)
        self.place()

    def dismiss(self) -> None:
        self.timer.stop()
        self.hide()

    def place(self) -> None:
        """Centred, just above the ``above`` widget (the control bar)."""
        width = min(560, self.fontMetrics().horizontalAdvance(self.text()) + 48)
        self.setFixedWidth(width)
        self.setFixedHeight(self.heightForWidth(width))
        parent = self.parentWidget()
        self.move(
            (parent.width() - self.width()) // 2,
            parent.height() - self.above.height() - self.height() - 16,
        )
        self.show()
        self.raise_()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() in (QEvent.Resize, QEvent.Show) and self.timer.isActive():
            self.place()
        return False


class StatusLine:
    """The status bar's items: server and session, round-trip time, head count."""

    def __init__(self, bar: QStatusBar) -> None:
        self.server_label = plain_label()
        self.rtt_label = plain_label()
        self.count_label = plain_label()
        bar.addWidget(self.server_label)
        bar.addWidget(self.rtt_label)
        bar.addPermanentWidget(self.count_label)
        bar.setSizeGripEnabled(False)

    def show_state(
        self, address: str, session: str, connected: bool, rtt_s: float | None, count: int
    ) -> None:
        self.server_label.setText(
            f"Connected to {address} · session “{session}”"
            if connected
            else f"Disconnected from {address}"
        )
        if rtt_s is None or not connected:
            self.rtt_label.setText("")
        else:
            ms = rtt_s * 1000
            self.rtt_label.setText("Round trip < 1 ms" if ms < 1 else f"Round trip {ms:.0f} ms")
        self.count_label.setText(f"{count} participant" + ("" if count == 1 else "s"))
