"""The meeting window's parts: the side panel frame, files and chat panels, control bar,
banner, status (the participants panel is in gui_participants.py)."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterable
from pathlib import Path

from PyQt5.QtCore import QEvent, QObject, QSize, Qt, QTimer, QUrl, pyqtSignal
from PyQt5.QtGui import QDesktopServices
from PyQt5.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QStatusBar,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

import config
from gui_theme import (
    ACCENT,
    MUTED,
    WARNING,
    format_size,
    icon,
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
