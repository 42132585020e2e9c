"""FusionMeet's desktop window: video grid, shared screen, people, files, chat and controls.

Threads: the client's network threads never touch a widget. ``ClientBridge``
subscribes to ``client.on(...)`` and re-emits every event as a Qt signal
(queued into the GUI thread). Video and screen frames are not signalled at
all: the bridge keeps only the latest JPEG per participant (``LatestFrames``)
and a GUI timer repaints from it, so the GUI never has a queue of frames.
"""

from __future__ import annotations

import html
import logging
import math
import re
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PyQt5.QtCore import (
    QEvent,
    QObject,
    QRect,
    QRectF,
    QSettings,
    QSize,
    QStandardPaths,
    Qt,
    QTimer,
    QUrl,
    pyqtSignal,
)
from PyQt5.QtGui import (
    QColor,
    QDesktopServices,
    QFont,
    QImage,
    QKeySequence,
    QPainter,
    QPainterPath,
    QPen,
)
from PyQt5.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QShortcut,
    QSizePolicy,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

import config
import utils
from login_dialog import (
    ICON_DIR,
    JoinRequest,
    LoginDialog,
    connect_client,
    error_code_and_message,
    icon,
)

log = logging.getLogger(__name__)

# --- Theme --------------------------------------------------------------------------

BG = "#141518"
SURFACE = "#1E1F24"
SURFACE_2 = "#272930"
BORDER = "#30333B"
TEXT = "#E8EAED"
MUTED = "#9AA0A6"
ACCENT = "#6C8CFF"
DANGER = "#EA4335"
SUCCESS = "#34C47C"
WARNING = "#F6AE2D"
# Avatar colours, picked per name so a person keeps their colour.
AVATAR_COLOURS = ["#5B8CFF", "#F06292", "#26A69A", "#FFA726", "#AB47BC", "#42A5F5", "#8D6E63"]

# Qt style sheets want forward slashes, also on Windows.
CHECK_ICON = (ICON_DIR / "check.svg").as_posix()
STYLE_SHEET = f"""
* {{ font-size: 10.5pt; }}
QWidget {{ background: {BG}; color: {TEXT}; }}
QDialog#LoginDialog, QDialog#SettingsDialog {{ background: {SURFACE}; }}
QDialog#LoginDialog QLabel, QDialog#SettingsDialog QLabel, QDialog#LoginDialog QCheckBox {{
    background: transparent; }}
QLabel#DialogTitle {{ font-size: 18pt; font-weight: 600; }}
QLabel#Muted, QLabel.Muted {{ color: {MUTED}; }}
QLabel#SectionTitle {{ font-weight: 600; color: {TEXT}; font-size: 11pt; }}
QLabel#ErrorText {{ color: #FFB4AB; background: #3A1E1E; border: 1px solid #6B2B2B;
    border-radius: 8px; padding: 8px 10px; }}
QFrame#Panel {{ background: {SURFACE}; border-radius: 14px; }}
QFrame#Panel QWidget {{ background: transparent; }}
QLineEdit, QComboBox {{ background: {SURFACE_2}; border: 1px solid {BORDER}; border-radius: 8px;
    padding: 7px 10px; selection-background-color: {ACCENT}; }}
QLineEdit:focus, QComboBox:focus {{ border: 1px solid {ACCENT}; }}
QComboBox::drop-down {{ border: none; width: 22px; }}
QComboBox QAbstractItemView {{ background: {SURFACE_2}; border: 1px solid {BORDER};
    selection-background-color: {ACCENT}; }}
QListWidget {{ background: transparent; border: none; outline: none; }}
QListWidget#SessionsList {{ background: {SURFACE_2}; border: 1px solid {BORDER};
    border-radius: 10px; padding: 4px; }}
QListWidget::item {{ border-radius: 8px; padding: 6px; }}
QListWidget::item:selected {{ background: #2E3A5C; }}
QListWidget::item:hover {{ background: #252831; }}
QPushButton {{ background: {SURFACE_2}; border: 1px solid {BORDER}; border-radius: 8px;
    padding: 7px 16px; }}
QPushButton:hover {{ background: #30333B; }}
QPushButton#PrimaryButton {{ background: {ACCENT}; border: none; color: white; font-weight: 600; }}
QPushButton#PrimaryButton:hover {{ background: #7F9BFF; }}
QPushButton#PrimaryButton:disabled {{ background: #3A4470; color: #B8C0E0; }}
QToolButton {{ background: transparent; border: none; border-radius: 8px; padding: 4px; }}
QToolButton:hover {{ background: #2C2F37; }}
QToolButton#ControlButton {{ background: #2B2E36; border-radius: 24px; padding: 0px; }}
QToolButton#ControlButton:hover {{ background: #363A44; }}
QToolButton#ControlButton:checked {{ background: #34406A; }}
QToolButton#ControlButton:checked:hover {{ background: #3E4C7C; }}
QToolButton#ControlButton[alert="true"] {{ background: {DANGER}; }}
QToolButton#ControlButton[active="true"] {{ background: #3D5AFE; }}
QToolButton#LeaveButton {{ background: {DANGER}; border-radius: 24px; padding: 0px 22px; }}
QToolButton#LeaveButton:hover {{ background: #F2564A; }}
QCheckBox {{ spacing: 8px; }}
QCheckBox::indicator {{ width: 16px; height: 16px; border-radius: 5px; border: 2px solid #5F6368;
    background: {SURFACE_2}; }}
QCheckBox::indicator:checked {{ background: {ACCENT}; border: 2px solid {ACCENT};
    image: url({CHECK_ICON}); }}
QProgressBar {{ background: {SURFACE_2}; border: none; border-radius: 3px; max-height: 6px; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 3px; }}
QProgressBar#LevelBar::chunk {{ background: {SUCCESS}; }}
QTextBrowser {{ background: transparent; border: none; }}
QSplitter::handle {{ background: {BG}; }}
QScrollBar:vertical {{ background: transparent; width: 8px; margin: 0; }}
QScrollBar::handle:vertical {{ background: #3A3D45; border-radius: 4px; min-height: 24px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ height: 0; }}
QStatusBar {{ background: {BG}; color: {MUTED}; }}
QStatusBar QLabel {{ color: {MUTED}; padding: 0 8px; }}
QFrame#Banner {{ background: #5C2B29; border-radius: 10px; }}
QFrame#Banner QLabel {{ background: transparent; color: #FFDAD6; font-weight: 600; }}
QLabel#Toast {{ background: #2F3137; color: {TEXT}; border: 1px solid #464A53;
    border-radius: 10px; padding: 10px 18px; }}
QLabel#Badge {{ background: {DANGER}; color: white; border-radius: 9px; font-size: 8pt;
    font-weight: 700; padding: 0px 4px; min-width: 10px; min-height: 18px; max-height: 18px; }}
QToolTip {{ background: #2F3137; color: {TEXT}; border: 1px solid #464A53; padding: 4px; }}
"""


def apply_theme(app: QApplication) -> None:
    """Give the application FusionMeet's dark look."""
    app.setStyle("Fusion")
    app.setStyleSheet(STYLE_SHEET)
    app.setWindowIcon(icon("app"))


def plain_label(text: str = "", name: str | None = None) -> QLabel:
    """A QLabel that never interprets its text as HTML (peer names are plain text)."""
    label = QLabel()
    label.setTextFormat(Qt.PlainText)
    label.setText(text)
    if name:
        label.setObjectName(name)
    return label


def initials(name: str) -> str:
    """One or two letters for a placeholder avatar."""
    words = re.split(r"[\s._-]+", name.strip())
    parts = ["".join(ch for ch in w if ch.isalnum()) for w in words]
    parts = [p for p in parts if p]
    if not parts:
        return "?"
    if len(parts) == 1:
        return parts[0][:2].upper() if len(parts[0]) > 1 else parts[0].upper()
    return (parts[0][0] + parts[-1][0]).upper()


def avatar_colour(name: str) -> QColor:
    """A stable colour for a name."""
    return QColor(AVATAR_COLOURS[zlib.crc32(name.casefold().encode()) % len(AVATAR_COLOURS)])


def format_size(n: int) -> str:
    """Bytes for people: 512 B, 51.1 KB, 3.4 MB, 1.2 GB."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


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


def grid_shape(n: int) -> tuple[int, int]:
    """(columns, rows) of the video grid for ``n`` tiles: cols = ceil(sqrt(n))."""
    if n <= 0:
        return 0, 0
    cols = math.ceil(math.sqrt(n))
    return cols, math.ceil(n / cols)


# --- Latest-frame store and bridge --------------------------------------------------


class LatestFrames:
    """The newest JPEG per key (participant id) and its newest decoded picture.

    Network threads ``put`` JPEGs (latest wins: an undecoded older one is simply
    replaced); the ``gui-frame-decoder`` thread turns them into QImages; the GUI
    timer ``get``s the decoded picture. So the GUI thread neither queues frames
    nor decodes them. ``_lock`` (taken briefly by all three) guards ``_pending``
    and ``_decoded``; both hold at most one entry per participant.
    """

    def __init__(self, wake: threading.Event | None = None) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[int, float, bytes, Any]] = {}
        self._decoded: dict[int, tuple[int, float, QImage | None, Any]] = {}
        self._version = 0
        self.wake = wake or threading.Event()

    def put(self, key: int, jpeg: bytes, extra: Any = None) -> None:
        with self._lock:
            self._version += 1
            self._pending[key] = (self._version, time.monotonic(), jpeg, extra)
        self.wake.set()

    def take_pending(self) -> dict[int, tuple[int, float, bytes, Any]]:
        """The JPEGs not decoded yet (and forget them)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def store_decoded(self, key: int, entry: tuple[int, float, QImage | None, Any]) -> None:
        with self._lock:
            known = self._decoded.get(key)
            if known is None or known[0] < entry[0]:
                self._decoded[key] = entry

    def get(self, key: int) -> tuple[int, float, QImage | None, Any] | None:
        """(version, arrival time, picture or None if undecodable, extra) or None."""
        with self._lock:
            return self._decoded.get(key)

    def forget(self, key: int) -> None:
        with self._lock:
            self._pending.pop(key, None)
            self._decoded.pop(key, None)


def decode_jpeg_image(jpeg: bytes) -> QImage | None:
    """A QImage from JPEG bytes, or None when they are not a picture."""
    image = QImage.fromData(jpeg, "JPG")
    return None if image.isNull() else image


class FrameDecoder:
    """Thread ``gui-frame-decoder``: decodes the newest JPEGs of some LatestFrames stores."""

    def __init__(self, stores: list[LatestFrames], wake: threading.Event) -> None:
        self.stores = stores
        self.wake = wake
        self.decoded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gui-frame-decoder", daemon=True)

    def start(self) -> FrameDecoder:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.wake.wait(config.GUI_DECODER_IDLE_WAKE_S)
            self.wake.clear()
            for store in self.stores:
                for key, (version, arrived, jpeg, extra) in store.take_pending().items():
                    if self._stop.is_set():
                        return
                    store.store_decoded(key, (version, arrived, decode_jpeg_image(jpeg), extra))
                    self.decoded += 1

    def stop(self) -> None:
        """Stop and join (at most one decode is in progress)."""
        self._stop.set()
        self.wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(config.MEDIA_THREAD_JOIN_TIMEOUT_S)


class ClientBridge(QObject):
    """Subscribes to a ConferenceClient's events and re-emits them as Qt signals.

    Create it without a parent: it must outlive any widget while the client's
    threads can still call it.
    """

    participant_joined = pyqtSignal(object)
    participant_left = pyqtSignal(int, str)
    participant_updated = pyqtSignal(object)
    chat_received = pyqtSignal(object)
    presenter_changed = pyqtSignal(object)
    present_granted = pyqtSignal()
    levels_changed = pyqtSignal(object)
    file_added = pyqtSignal(object)
    file_removed = pyqtSignal(str)
    error_received = pyqtSignal(str, str, object)
    pong_received = pyqtSignal(float)
    disconnected = pyqtSignal(str)
    udp_registered = pyqtSignal()

    def __init__(self, client: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = client
        wake = threading.Event()
        self.video = LatestFrames(wake)
        self.screen = LatestFrames(wake)
        self.decoder = FrameDecoder([self.video, self.screen], wake).start()
        # Set when this bridge's client is replaced: late events of the old one are dropped.
        self._detached = threading.Event()
        self._subscribe()

    def _on(self, event: str, fn: Callable[..., None]) -> None:
        def guarded(*args: Any) -> None:
            if not self._detached.is_set():
                fn(*args)

        self.client.on(event, guarded)

    def _subscribe(self) -> None:
        self._on("participant_joined", self.participant_joined.emit)
        self._on("participant_left", lambda pid, name: self._left(pid, name))
        self._on("participant_updated", self.participant_updated.emit)
        self._on("chat", self.chat_received.emit)
        self._on("presenter_changed", self.presenter_changed.emit)
        self._on("present_granted", self.present_granted.emit)
        self._on("levels", lambda levels: self.levels_changed.emit(dict(levels)))
        self._on("file_added", self.file_added.emit)
        self._on("file_removed", lambda fid: self.file_removed.emit(str(fid)))
        self._on("error", lambda code, msg, re_=None: self.error_received.emit(code, msg, re_))
        self._on("pong", lambda rtt: self.pong_received.emit(float(rtt)))
        self._on("disconnected", lambda reason="": self.disconnected.emit(str(reason)))
        self._on("udp_registered", self.udp_registered.emit)
        self._on(
            "video_frame",
            lambda sender, frame_id, jpeg: self.video.put(int(sender), bytes(jpeg)),
        )
        self._on(
            "screen_frame",
            lambda sender, seq, w, h, jpeg: self.screen.put(int(sender), bytes(jpeg), (w, h)),
        )

    def _left(self, pid: int, name: str) -> None:
        self.video.forget(int(pid))
        self.participant_left.emit(int(pid), str(name))

    def detach(self) -> None:
        """Stop relaying this client's events (it is being replaced or closed)."""
        self._detached.set()
        self.decoder.stop()


# --- Video tiles ---------------------------------------------------------------------


class VideoTile(QWidget):
    """One participant's rounded tile: video or initials, name, muted mark, speaking ring."""

    RADIUS_PX = 14

    def __init__(self, pid: int, name: str, is_self: bool = False) -> None:
        super().__init__()
        self.pid = pid
        self.name = name
        self.is_self = is_self
        self.audio_on = True
        self.video_on = True
        self.speaking = False
        self.presenting = False
        self.image: QImage | None = None
        self.frame_version = 0
        self.frame_time = 0.0
        self.setMinimumSize(96, 72)
        self.setAttribute(Qt.WA_OpaquePaintEvent, False)
        self._mic_off = icon("mic-off")

    def set_state(self, name: str, audio: bool, video: bool, presenting: bool = False) -> None:
        self.name, self.audio_on, self.video_on, self.presenting = name, audio, video, presenting
        if not video:
            self.image = None
        self.update()

    def set_speaking(self, speaking: bool) -> None:
        if speaking != self.speaking:
            self.speaking = speaking
            self.update()

    def set_image(self, image: QImage | None, version: int) -> None:
        self.image = image
        self.frame_version = version
        self.frame_time = time.monotonic()
        self.update()

    def label_text(self) -> str:
        return f"{self.name} (You)" if self.is_self else self.name

    def showing_video(self) -> bool:
        return self.video_on and self.image is not None and not self.image.isNull()

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.setRenderHint(QPainter.SmoothPixmapTransform)
        rect = QRectF(self.rect()).adjusted(2, 2, -2, -2)
        path = QPainterPath()
        path.addRoundedRect(rect, self.RADIUS_PX, self.RADIUS_PX)
        p.fillPath(path, QColor("#2A2C33"))
        p.save()
        p.setClipPath(path)
        if self.showing_video():
            assert self.image is not None
            img = self.image
            # Cover the tile, cropping the overflow, keeping the aspect ratio.
            scale = max(rect.width() / img.width(), rect.height() / img.height())
            w, h = img.width() * scale, img.height() * scale
            target = QRectF(rect.center().x() - w / 2, rect.center().y() - h / 2, w, h)
            if self.is_self:  # a self-view is mirrored, as people expect
                p.translate(target.center())
                p.scale(-1, 1)
                p.translate(-target.center())
            p.drawImage(target, img)
        else:
            d = min(min(rect.width(), rect.height()) * 0.36, 132.0)
            circle = QRectF(rect.center().x() - d / 2, rect.center().y() - d / 2 - 6, d, d)
            p.setPen(Qt.NoPen)
            p.setBrush(avatar_colour(self.name))
            p.drawEllipse(circle)
            font = QFont(self.font())
            font.setPixelSize(max(10, int(d * 0.38)))
            font.setWeight(QFont.DemiBold)
            p.setFont(font)
            p.setPen(QColor("white"))
            p.drawText(circle, Qt.AlignCenter, initials(self.name))
        p.restore()
        # Name pill, bottom left.
        font = QFont(self.font())
        font.setPixelSize(13)
        font.setWeight(QFont.Medium)
        p.setFont(font)
        fm = p.fontMetrics()
        text = fm.elidedText(self.label_text(), Qt.ElideRight, int(rect.width() - 60))
        pill_w = fm.horizontalAdvance(text) + 20 + (22 if not self.audio_on else 0)
        pill = QRectF(rect.left() + 8, rect.bottom() - 34, pill_w, 26)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor(0, 0, 0, 150))
        p.drawRoundedRect(pill, 13, 13)
        x = pill.left() + 10
        if not self.audio_on:
            self._mic_off.paint(p, QRect(int(x - 2), int(pill.top() + 4), 18, 18))
            x += 22
        p.setPen(QColor("white"))
        p.drawText(QRectF(x, pill.top(), pill.right() - x, pill.height()), Qt.AlignVCenter, text)
        if self.presenting:
            badge = QRectF(rect.right() - 94, rect.top() + 8, 86, 24)
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(ACCENT))
            p.drawRoundedRect(badge, 12, 12)
            p.setPen(QColor("white"))
            font.setPixelSize(11)
            p.setFont(font)
            p.drawText(badge, Qt.AlignCenter, "Presenting")
        if self.speaking:
            p.setBrush(Qt.NoBrush)
            p.setPen(QPen(QColor(ACCENT), 3))
            p.drawRoundedRect(rect.adjusted(1.5, 1.5, -1.5, -1.5), self.RADIUS_PX, self.RADIUS_PX)
        p.end()


class VideoGrid(QWidget):
    """Lays out up to GUI_MAX_VIDEO_TILES tiles, cols = ceil(sqrt(n)), 4:3, centred."""

    SPACING_PX = 10
    ASPECT = 4 / 3

    def __init__(self) -> None:
        super().__init__()
        self.tiles: dict[int, VideoTile] = {}
        self.order: list[int] = []
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)

    def add_tile(self, tile: VideoTile, first: bool = False) -> None:
        if tile.pid in self.tiles:
            return
        self.tiles[tile.pid] = tile
        if first:
            self.order.insert(0, tile.pid)
        else:
            self.order.append(tile.pid)
        tile.setParent(self)
        self.relayout()

    def remove_tile(self, pid: int) -> None:
        tile = self.tiles.pop(pid, None)
        if tile is None:
            return
        self.order.remove(pid)
        tile.hide()
        tile.setParent(None)
        tile.deleteLater()
        self.relayout()

    def clear(self) -> None:
        for pid in list(self.order):
            self.remove_tile(pid)

    def visible_ids(self) -> list[int]:
        return self.order[: config.GUI_MAX_VIDEO_TILES]

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self.relayout()

    def relayout(self) -> None:
        ids = self.visible_ids()
        for pid in self.order[len(ids) :]:
            self.tiles[pid].hide()
        cols, rows = grid_shape(len(ids))
        if not ids:
            return
        gap = self.SPACING_PX
        avail_w = max(1, self.width() - gap * (cols - 1))
        avail_h = max(1, self.height() - gap * (rows - 1))
        tile_w = avail_w / cols
        tile_h = tile_w / self.ASPECT
        if tile_h * rows > avail_h:
            tile_h = avail_h / rows
            tile_w = tile_h * self.ASPECT
        total_h = tile_h * rows + gap * (rows - 1)
        top = (self.height() - total_h) / 2
        for i, pid in enumerate(ids):
            row, col = divmod(i, cols)
            in_row = min(cols, len(ids) - row * cols)  # the last row is centred
            row_w = tile_w * in_row + gap * (in_row - 1)
            left = (self.width() - row_w) / 2
            x = left + col * (tile_w + gap)
            y = top + row * (tile_h + gap)
            tile = self.tiles[pid]
            tile.setGeometry(int(x), int(y), int(tile_w), int(tile_h))
            tile.show()


class ScreenShareView(QWidget):
    """The presenter's screen, scaled to fit keeping its aspect ratio, with their name."""

    def __init__(self) -> None:
        super().__init__()
        self.image: QImage | None = None
        self.version = 0
        self.presenter_name = ""
        self.waiting_text = "Waiting for the first picture…"
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)

    def set_presenter(
        self, name: str, waiting_text: str = "Waiting for the first picture…"
    ) -> None:
        self.presenter_name = name
        self.waiting_text = waiting_text
        self.image = None
        self.version = 0
        self.update()

    def set_image(self, image: QImage | None, version: int) -> None:
        self.image = image
        self.version = version
        self.update()

    def image_rect(self) -> QRectF:
        """Where the picture is drawn: fitted inside the area below the title."""
        area = QRectF(self.rect()).adjusted(0, 40, 0, 0)
        if self.image is None or self.image.isNull():
            return area
        scale = min(area.width() / self.image.width(), area.height() / self.image.height())
        w, h = self.image.width() * scale, self.image.height() * scale
        return QRectF(area.center().x() - w / 2, area.center().y() - h / 2, w, h)

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.setRenderHint(QPainter.SmoothPixmapTransform)
        bg = QPainterPath()
        bg.addRoundedRect(QRectF(self.rect()), 14, 14)
        p.fillPath(bg, QColor("#0E0F12"))
        font = QFont(self.font())
        font.setPixelSize(14)
        font.setWeight(QFont.DemiBold)
        p.setFont(font)
        p.setPen(QColor(TEXT))
        if self.presenter_name == "You":
            title = "You are presenting"
        elif self.presenter_name:
            title = f"{self.presenter_name} is presenting"
        else:
            title = "Presentation"
        title = p.fontMetrics().elidedText(title, Qt.ElideRight, self.width() - 40)
        icon("screen").paint(p, QRect(14, 10, 20, 20))
        p.drawText(QRectF(42, 0, self.width() - 50, 40), Qt.AlignVCenter, title)
        if self.image is None or self.image.isNull():
            p.setPen(QColor(MUTED))
            p.drawText(QRectF(self.rect()), Qt.AlignCenter, self.waiting_text)
        else:
            target = self.image_rect()
            p.drawImage(target, self.image)
        p.end()


# --- Side panels ---------------------------------------------------------------------


def panel(title: str) -> tuple[QFrame, QVBoxLayout, QHBoxLayout]:
    """A rounded side panel with a title row; returns (frame, body layout, title row)."""
    frame = QFrame()
    frame.setObjectName("Panel")
    outer = QVBoxLayout(frame)
    outer.setContentsMargins(14, 12, 14, 12)
    outer.setSpacing(8)
    head = QHBoxLayout()
    label = QLabel(title)
    label.setObjectName("SectionTitle")
    head.addWidget(label, 1)
    outer.addLayout(head)
    return frame, outer, head


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
        row = QHBoxLayout(self)
        row.setContentsMargins(2, 2, 2, 2)
        row.setSpacing(10)
        self.avatar = Avatar(name)
        row.addWidget(self.avatar)
        col = QVBoxLayout()
        col.setSpacing(3)
        self.name_label = plain_label(f"{name} (You)" if is_self else name)
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
        for w in (self.present_icon, self.cam_icon, self.mic_icon):
            row.addWidget(w)

    def set_state(self, audio: bool, video: bool, presenting: bool) -> None:
        self.mic_icon.setPixmap(icon("mic" if audio else "mic-off").pixmap(QSize(18, 18)))
        self.mic_icon.setToolTip("Microphone on" if audio else "Muted")
        self.cam_icon.setPixmap(icon("camera" if video else "camera-off").pixmap(QSize(18, 18)))
        self.cam_icon.setToolTip("Camera on" if video else "Camera off")
        self.present_icon.setVisible(presenting)
        self.audio, self.video, self.presenting = audio, video, presenting

    def set_level(self, level: int) -> None:
        self.level_bar.setValue(max(0, min(255, int(level))))


class ParticipantsPanel(QFrame):
    """Everyone in the session, you first, with mic/camera/presenting state and levels."""

    def __init__(self) -> None:
        super().__init__()
        frame, body, head = panel("Participants")
        self.setObjectName("Panel")
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(0, 0, 0, 0)
        self.layout().addWidget(frame)
        self.count_label = plain_label("", "Muted")
        head.addWidget(self.count_label)
        self.list = QListWidget()
        self.list.setSelectionMode(QListWidget.NoSelection)
        body.addWidget(self.list)
        self.rows: dict[int, ParticipantRow] = {}
        self.items: dict[int, QListWidgetItem] = {}

    def upsert(self, pid: int, name: str, is_self: bool, p: dict) -> None:
        row = self.rows.get(pid)
        if row is None:
            row = ParticipantRow(pid, name, is_self)
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
        self._count()

    def set_levels(self, levels: dict[int, int]) -> None:
        for pid, row in self.rows.items():
            row.set_level(levels.get(pid, 0))

    def names(self) -> list[str]:
        return [self.rows[pid].name_label.text() for pid in self.rows]

    def _count(self) -> None:
        self.count_label.setText(str(len(self.rows)))


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
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(5)
        self.progress.hide()
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
        self.progress.show()
        self.progress.setValue(int(1000 * done / total) if total > 0 else 1000)
        self.detail_label.setText(f"{format_size(done)} of {format_size(total)}")


class FilesPanel(QFrame):
    """The session's shared files; upload by button or drop, download with progress."""

    upload_requested = pyqtSignal(list)  # list[str] paths

    def __init__(self) -> None:
        super().__init__()
        frame, body, head = panel("Shared files")
        self.setObjectName("Panel")
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(0, 0, 0, 0)
        self.layout().addWidget(frame)
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
        self.upload_progress = QProgressBar()
        self.upload_progress.setRange(0, 1000)
        self.upload_progress.setTextVisible(False)
        self.upload_progress.setFixedHeight(5)
        self.upload_progress.hide()
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
        self.error_label.setText(text)
        self.error_label.setVisible(bool(text))


class ChatPanel(QFrame):
    """Chronological chat with sender and time, private messages, links, Enter to send."""

    send_requested = pyqtSignal(str, object)  # text, list of ids or None

    def __init__(self) -> None:
        super().__init__()
        frame, body, head = panel("Chat")
        self.setObjectName("Panel")
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(0, 0, 0, 0)
        self.layout().addWidget(frame)
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


# --- Controls ------------------------------------------------------------------------


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

    def set_unread(self, n: int) -> None:
        self.unread_badge.setText(str(n) if n < 100 else "99+")
        self.unread_badge.adjustSize()
        self.unread_badge.setVisible(n > 0)
        self.unread_badge.raise_()


class SettingsDialog(QDialog):
    """Camera, microphone and speaker selection from the devices the media modules list."""

    def __init__(self, media: MediaController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("SettingsDialog")
        self.setWindowTitle("Settings")
        self.setMinimumWidth(440)
        self.media = media
        outer = QVBoxLayout(self)
        outer.setContentsMargins(24, 20, 24, 20)
        title = plain_label("Devices", "DialogTitle")
        outer.addWidget(title)
        form = QFormLayout()
        form.setSpacing(10)
        self.camera_combo = QComboBox()
        self.mic_combo = QComboBox()
        self.speaker_combo = QComboBox()
        self.notes: list[str] = []
        for combo, kind, label in (
            (self.camera_combo, "camera", "Camera"),
            (self.mic_combo, "input", "Microphone"),
            (self.speaker_combo, "output", "Speaker"),
        ):
            devices, note = media.list_devices(kind)
            if devices:
                for dev_id, name in devices:
                    combo.addItem(name, dev_id)
                idx = combo.findData(media.selected.get(kind))
                combo.setCurrentIndex(max(0, idx))
            else:
                combo.addItem(note or f"No {label.lower()} found.", None)
                combo.setEnabled(False)
                self.notes.append(note or f"No {label.lower()} found.")
            form.addRow(label, combo)
        outer.addLayout(form)
        self.note_label = plain_label(
            "Plug a device in and open Settings again to see it."
            if self.notes
            else "Changes apply the next time a device starts.",
            "Muted",
        )
        self.note_label.setWordWrap(True)
        outer.addWidget(self.note_label)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.button(QDialogButtonBox.Ok).setObjectName("PrimaryButton")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        outer.addWidget(buttons)

    def accept(self) -> None:
        for combo, kind in (
            (self.camera_combo, "camera"),
            (self.mic_combo, "input"),
            (self.speaker_combo, "output"),
        ):
            if combo.isEnabled():
                self.media.selected[kind] = combo.currentData()
        super().accept()


# --- Media -----------------------------------------------------------------------------


class MediaEvents(QObject):
    """Media threads report a device that stopped (reason text) through this, queued."""

    device_failed = pyqtSignal(str, str)  # kind ("camera", "mic", "speaker", "screen"), reason


class MediaController:
    """Starts and stops the local camera, microphone, speaker and screen capture.

    This base class has no devices at all (every start answers why not); it is
    what the window uses when the media modules cannot be loaded, and what
    tests subclass. ``DeviceMedia`` drives the real devices. A missing device is
    an error string for the window to show, never an exception.
    """

    def __init__(self) -> None:
        self.client: Any = None
        self.selected: dict[str, Any] = {"camera": None, "input": None, "output": None}
        self.events = MediaEvents()

    def attach(self, client: Any) -> None:
        self.client = client

    def list_devices(self, kind: str) -> tuple[list[tuple[Any, str]], str]:
        """([(device id, name)], note when empty) for "camera", "input" or "output"."""
        return [], "No devices: the media modules are not available."

    def start_camera(self) -> str | None:
        return "No camera support in this build."

    def stop_camera(self) -> None:
        pass

    def start_mic(self) -> str | None:
        return "No microphone support in this build."

    def stop_mic(self) -> None:
        pass

    def start_speaker(self) -> str | None:
        return None

    def request_present(self) -> None:
        """Ask the server for the presenter lock (answered by present_granted or an error)."""
        self.client.present_start()

    def start_screen(self) -> str | None:
        """The lock was granted: start capturing, or say why not."""
        return "Screen capture is not available."

    def stop_screen(self, send: bool = True) -> None:
        """Stop capturing; ``send`` tells the server we stopped presenting."""
        if send and getattr(self.client, "connected", False):
            self.client.present_stop()

    def self_view(self) -> tuple[int, QImage] | None:
        """(version, image) of the local camera's latest frame, or None."""
        return None

    def mic_level(self) -> int:
        """The local microphone's input level, 0-255."""
        return 0

    def stop(self) -> None:
        """Stop every device and join their threads."""
        self.stop_camera()
        self.stop_mic()
        self.stop_screen(send=False)


class DeviceMedia(MediaController):
    """The real devices, through audio_module, video_module and screen_sharing_module."""

    def __init__(
        self,
        video_source_factory: Callable[[], Any] | None = None,
        screen_source_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        # Stand-ins for the camera / monitor (a test pattern, an image); None = real devices.
        self.video_source_factory = video_source_factory
        self.screen_source_factory = screen_source_factory
        self.capture: Any = None
        self.playback: Any = None
        self.camera: Any = None
        self.sharer: Any = None
        self._self_version = -1
        self._self_image: QImage | None = None

    def attach(self, client: Any) -> None:
        self.stop()
        self.client = client

    def _audio_format(self) -> Any:
        import audio_module

        return audio_module.AudioFormat.from_media(getattr(self.client, "media_params", None))

    def list_devices(self, kind: str) -> tuple[list[tuple[Any, str]], str]:
        try:
            if kind == "camera":
                import video_module

                cams = video_module.list_cameras()
                return [(c["index"], c["name"]) for c in cams], "No camera found."
            import audio_module

            found = (
                audio_module.list_input_devices()
                if kind == "input"
                else audio_module.list_output_devices()
            )
        except Exception as exc:  # a broken driver must not break the dialog
            log.info("listing %s devices failed: %s", kind, exc)
            return [], f"Could not list devices: {exc}"
        note = "No microphone found." if kind == "input" else "No speaker found."
        return [(d["index"], d["name"]) for d in found], note

    # --- microphone and speaker ---------------------------------------------------

    def start_mic(self) -> str | None:
        if self.capture is not None:
            return None
        try:
            import audio_module

            source = audio_module.MicrophoneSource(self._audio_format(), self.selected["input"])
        except Exception as exc:  # DeviceError, or PyAudio missing entirely
            return f"Microphone unavailable: {exc}"
        self.capture = audio_module.AudioCapture(
            self.client,
            source,
            on_end=lambda reason: self.events.device_failed.emit("mic", reason),
        ).start()
        return None

    def stop_mic(self) -> None:
        capture, self.capture = self.capture, None
        if capture is not None:
            capture.stop()

    def mic_level(self) -> int:
        return int(getattr(self.capture, "level", 0) or 0)

    def start_speaker(self) -> str | None:
        if self.playback is not None:
            return None
        try:
            import audio_module

            sink = audio_module.SpeakerSink(self._audio_format(), self.selected["output"])
        except Exception as exc:
            return f"No sound output: {exc}"
        self.playback = audio_module.AudioPlayback(self.client, sink).start()
        return None

    def stop_speaker(self) -> None:
        playback, self.playback = self.playback, None
        if playback is not None:
            playback.stop()

    # --- camera --------------------------------------------------------------------

    def _open_camera(self) -> Any:
        import video_module

        if self.video_source_factory is not None:
            return self.video_source_factory()
        index = self.selected["camera"]
        return video_module.CameraSource(int(index) if index is not None else 0)

    def start_camera(self) -> str | None:
        if self.camera is not None:
            return None
        try:
            import video_module
        except Exception as exc:  # OpenCV missing or broken
            return f"Camera unavailable: {exc}"
        messages: list[str] = []
        sender = video_module.VideoSender(
            self.client, self._open_camera, on_message=messages.append
        )
        if not sender.open():
            return messages[-1] if messages else "No camera found."
        self.camera = sender.start()
        return None

    def stop_camera(self) -> None:
        camera, self.camera = self.camera, None
        if camera is not None:
            camera.stop()

    def self_view(self) -> tuple[int, QImage] | None:
        camera = self.camera
        if camera is None or camera.last_jpeg is None:
            return None
        version = camera.frames_sent
        if version != self._self_version:
            image = QImage.fromData(camera.last_jpeg, "JPG")
            self._self_image = None if image.isNull() else image
            self._self_version = version
        return (version, self._self_image) if self._self_image is not None else None

    # --- screen ------------------------------------------------------------------------

    def request_present(self) -> None:
        try:
            import screen_sharing_module as ssm
        except Exception as exc:
            self.events.device_failed.emit("screen", f"Screen sharing unavailable: {exc}")
            return
        if self.sharer is None:
            self.sharer = ssm.ScreenSharer(
                self.client, self._open_screen, on_status=self._on_screen_status
            )
        self.sharer.start()

    def _open_screen(self) -> Any:
        import screen_sharing_module as ssm

        if self.screen_source_factory is not None:
            return self.screen_source_factory()
        return ssm.MonitorSource(1)

    def _on_screen_status(self, text: str) -> None:
        """Runs on the sharer's threads: only a capture failure is passed on (queued)."""
        sharer = self.sharer
        if sharer is not None and text == sharer.last_error and not sharer.refused.is_set():
            self.events.device_failed.emit("screen", text)

    def start_screen(self) -> str | None:
        return None  # the sharer starts its own sender thread on present_granted

    def stop_screen(self, send: bool = True) -> None:
        if self.sharer is not None:
            self.sharer.stop()  # sends present_stop itself when it was presenting

    def stop(self) -> None:
        super().stop()
        self.stop_speaker()
        if self.sharer is not None:
            self.sharer.close()
            self.sharer = None


# --- Main window -------------------------------------------------------------------------


class MainWindow(QMainWindow):
    """The meeting window: stage (grid + shared screen), side panels, controls, status."""

    def __init__(
        self,
        client: Any,
        request: JoinRequest,
        media: MediaController | None = None,
        settings: QSettings | None = None,
        download_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.request = request
        self.media = media or MediaController()
        self.settings = settings or QSettings(config.APP_NAME, "client")
        downloads = QStandardPaths.writableLocation(QStandardPaths.DownloadLocation)
        self.download_dir = download_dir or Path(downloads or Path.home()) / config.APP_NAME
        self.client: Any = None
        self.bridge: ClientBridge | None = None
        self.people: dict[int, dict] = {}
        self.presenter: int | None = None
        self.audio_on = request.audio
        self.video_on = request.video
        self.presenting = False
        self.unread = 0
        self.last_notice = ""
        self.leaving = False
        self.transfers: list[Any] = []
        self._speaking_until: dict[int, float] = {}
        self._reconnect_thread: threading.Thread | None = None
        self.setWindowTitle(f"{config.APP_NAME} - {request.session}")
        self.setWindowIcon(icon("app"))
        self.setAcceptDrops(True)
        self.resize(1440, 900)
        self._build()
        self._shortcuts()
        self.repaint_timer = QTimer(self)
        self.repaint_timer.setInterval(config.GUI_REPAINT_INTERVAL_MS)
        self.repaint_timer.timeout.connect(self.on_repaint_tick)
        self.ping_timer = QTimer(self)
        self.ping_timer.setInterval(config.GUI_PING_INTERVAL_MS)
        self.ping_timer.timeout.connect(self.on_ping_tick)
        self.toast_timer = QTimer(self)
        self.toast_timer.setSingleShot(True)
        self.toast_timer.timeout.connect(self.toast.hide)
        self.transfer_timer = QTimer(self)
        self.transfer_timer.setInterval(100)
        self.transfer_timer.timeout.connect(self.on_transfer_tick)
        self.media.events.device_failed.connect(self.on_device_failed)
        for kind in list(self.media.selected):
            value = self.settings.value(f"devices/{kind}")
            if value not in (None, ""):
                self.media.selected[kind] = int(value) if str(value).isdigit() else value
        self.attach_client(client)
        self.repaint_timer.start()
        self.ping_timer.start()

    # --- building -----------------------------------------------------------------

    def _build(self) -> None:
        root = QWidget()
        outer = QVBoxLayout(root)
        outer.setContentsMargins(14, 12, 14, 0)
        outer.setSpacing(10)

        self.banner = QFrame()
        self.banner.setObjectName("Banner")
        brow = QHBoxLayout(self.banner)
        brow.setContentsMargins(16, 8, 10, 8)
        self.banner_label = plain_label("Lost the connection to the server.")
        brow.addWidget(self.banner_label, 1)
        self.reconnect_button = QPushButton("Reconnect")
        self.reconnect_button.setObjectName("PrimaryButton")
        self.reconnect_button.clicked.connect(self.reconnect)
        brow.addWidget(self.reconnect_button)
        self.banner.hide()
        outer.addWidget(self.banner)

        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.setHandleWidth(10)
        self.stage = QWidget()
        stage_row = QHBoxLayout(self.stage)
        stage_row.setContentsMargins(0, 0, 0, 0)
        stage_row.setSpacing(12)
        self.grid = VideoGrid()
        self.screen_view = ScreenShareView()
        self.screen_view.hide()
        stage_row.addWidget(self.grid, 2)
        stage_row.addWidget(self.screen_view, 5)
        self.splitter.addWidget(self.stage)

        self.sidebar = QSplitter(Qt.Vertical)
        self.sidebar.setHandleWidth(10)
        self.participants_panel = ParticipantsPanel()
        self.files_panel = FilesPanel()
        self.chat_panel = ChatPanel()
        self.sidebar.addWidget(self.participants_panel)
        self.sidebar.addWidget(self.files_panel)
        self.sidebar.addWidget(self.chat_panel)
        self.sidebar.setSizes([250, 210, 400])
        self.sidebar.setMinimumWidth(320)
        self.splitter.addWidget(self.sidebar)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setSizes([1040, 380])
        outer.addWidget(self.splitter, 1)

        self.controls = ControlBar()
        outer.addWidget(self.controls)
        self.setCentralWidget(root)

        self.toast = plain_label("", "Toast")
        self.toast.setParent(root)
        self.toast.setWordWrap(True)
        self.toast.setAlignment(Qt.AlignCenter)
        self.toast.hide()

        self.status_server = plain_label()
        self.status_rtt = plain_label()
        self.status_count = plain_label()
        self.statusBar().addWidget(self.status_server)
        self.statusBar().addWidget(self.status_rtt)
        self.statusBar().addPermanentWidget(self.status_count)
        self.statusBar().setSizeGripEnabled(False)

        c = self.controls
        c.mic_button.clicked.connect(self.toggle_mic)
        c.camera_button.clicked.connect(self.toggle_camera)
        c.screen_button.clicked.connect(self.toggle_present)
        c.settings_button.clicked.connect(self.open_settings)
        c.leave_button.clicked.connect(self.close)
        c.people_button.toggled.connect(self.participants_panel.setVisible)
        c.files_button.toggled.connect(self.files_panel.setVisible)
        c.chat_button.toggled.connect(self.on_chat_toggled)
        self.files_panel.upload_requested.connect(self.upload_files)
        self.chat_panel.send_requested.connect(self.send_chat)
        c.set_mic(self.audio_on)
        c.set_camera(self.video_on)

    def _shortcuts(self) -> None:
        QShortcut(QKeySequence("Ctrl+D"), self, activated=self.toggle_mic)
        QShortcut(QKeySequence("Ctrl+E"), self, activated=self.toggle_camera)

    # --- client ---------------------------------------------------------------------

    def attach_client(self, client: Any) -> None:
        """Show ``client``'s session: subscribe first, then build from its state."""
        if self.bridge is not None:
            self.bridge.detach()
        self.client = client
        # No Qt parent: the client's callbacks keep the bridge alive for as long as its
        # network threads may emit, even if the window is destroyed first; Qt drops the
        # connections to a destroyed window by itself.
        bridge = ClientBridge(client)
        self.bridge = bridge
        bridge.participant_joined.connect(self.on_participant_joined)
        bridge.participant_left.connect(self.on_participant_left)
        bridge.participant_updated.connect(self.on_participant_updated)
        bridge.chat_received.connect(self.on_chat_received)
        bridge.presenter_changed.connect(self.on_presenter_changed)
        bridge.present_granted.connect(self.on_present_granted)
        bridge.levels_changed.connect(self.on_levels_changed)
        bridge.file_added.connect(self.on_file_added)
        bridge.file_removed.connect(self.on_file_removed)
        bridge.error_received.connect(self.on_error_received)
        bridge.pong_received.connect(self.on_pong_received)
        bridge.disconnected.connect(self.on_disconnected)
        self.media.attach(client)
        self._rebuild_from_client()
        speaker_err = self.media.start_speaker()
        self._apply_media(
            self.audio_on,
            self.video_on,
            initial=True,
            problems=[speaker_err] if speaker_err else [],
        )
        if not getattr(client, "connected", True):
            self.on_disconnected("the connection closed")

    def _rebuild_from_client(self) -> None:
        client = self.client
        self.grid.clear()
        self.participants_panel.clear()
        self.files_panel.clear()
        self.chat_panel.clear()
        self.people.clear()
        self.screen_view.hide()
        me = {
            "id": client.my_id,
            "username": client.username,
            "audio": self.audio_on,
            "video": self.video_on,
            "presenting": False,
        }
        self.people[client.my_id] = me
        self._show_person(me)
        for p in list(dict(client.participants).values()):
            self.on_participant_joined(p, notice=False)
        for f in list(dict(client.files).values()):
            self.on_file_added(f)
        for msg in chat_history(client):
            self.chat_panel.add_message(msg, client.my_id, self._names())
        self.on_presenter_changed(client.presenter, notice=False)
        self.controls.session_label.setText(client.session)
        self.setWindowTitle(f"{config.APP_NAME} - {client.session}")
        self.banner.hide()
        self._update_status()

    def _names(self) -> dict[int, str]:
        return {pid: str(p.get("username", "?")) for pid, p in self.people.items()}

    def _show_person(self, p: dict) -> None:
        pid = int(p["id"])
        name = str(p.get("username", "?"))
        is_self = pid == self.client.my_id
        tile = self.grid.tiles.get(pid)
        if tile is None:
            tile = VideoTile(pid, name, is_self)
            self.grid.add_tile(tile, first=is_self)
        presenting = pid == self.presenter or (is_self and self.presenting)
        tile.set_state(name, bool(p.get("audio")), bool(p.get("video")), presenting)
        self.participants_panel.upsert(pid, name, is_self, {**p, "presenting": presenting})
        self.chat_panel.set_recipients(
            (i, str(q.get("username", "?")))
            for i, q in self.people.items()
            if i != self.client.my_id
        )
        self._update_status()

    def _update_status(self) -> None:
        if self.client is None:
            return
        self.status_server.setText(
            f"Connected to {self.request.address} · session “{self.client.session}”"
            if getattr(self.client, "connected", True) and not self.banner.isVisible()
            else f"Disconnected from {self.request.address}"
        )
        rtt = getattr(self.client, "rtt_s", None)
        if rtt is None or self.banner.isVisible():
            self.status_rtt.setText("")
        else:
            ms = rtt * 1000
            self.status_rtt.setText("Round trip < 1 ms" if ms < 1 else f"Round trip {ms:.0f} ms")
        n = len(self.people)
        self.status_count.setText(f"{n} participant" + ("" if n == 1 else "s"))
        self.controls.clock_label.setText(time.strftime("%H:%M"))

    # --- slots: client events ------------------------------------------------------------

    def on_participant_joined(self, p: dict, notice: bool = True) -> None:
        pid = int(p.get("id", 0))
        if pid == self.client.my_id or pid <= 0:
            return
        new = pid not in self.people
        self.people[pid] = dict(p)
        self._show_person(self.people[pid])
        if new and notice:
            self.chat_panel.add_notice(f"{p.get('username', '?')} joined")

    def on_participant_left(self, pid: int, username: str) -> None:
        if self.people.pop(pid, None) is None:
            return
        self.grid.remove_tile(pid)
        self.participants_panel.remove(pid)
        self.chat_panel.set_recipients(
            (i, str(q.get("username", "?")))
            for i, q in self.people.items()
            if i != self.client.my_id
        )
        self.chat_panel.add_notice(f"{username} left")
        self._update_status()

    def on_participant_updated(self, p: dict) -> None:
        pid = int(p.get("id", 0))
        if pid == self.client.my_id:
            return  # our own state is what we set
        if pid not in self.people:
            self.on_participant_joined(p)
            return
        self.people[pid].update(p)
        self._show_person(self.people[pid])

    def on_chat_received(self, msg: dict) -> None:
        new = self.chat_panel.add_message(msg, self.client.my_id, self._names())
        if new and msg.get("from") != self.client.my_id and not self.chat_visible():
            self.unread += 1
            self.controls.set_unread(self.unread)

    def chat_visible(self) -> bool:
        return self.chat_panel.isVisible() and not self.isMinimized()

    def changeEvent(self, event: Any) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.WindowStateChange and self.chat_visible() and self.unread:
            self.unread = 0
            self.controls.set_unread(0)

    def on_chat_toggled(self, shown: bool) -> None:
        self.chat_panel.setVisible(shown)
        if shown:
            self.unread = 0
            self.controls.set_unread(0)
            self.chat_panel.input.setFocus()

    def on_presenter_changed(self, presenter: int | None, notice: bool = True) -> None:
        old = self.presenter
        self.presenter = presenter if isinstance(presenter, int) else None
        if old is not None and old in self.people:
            self._show_person(self.people[old])
        if self.presenter is None:
            self.screen_view.hide()
            self.screen_view.set_presenter("")
            if self.presenting:
                self._stop_presenting(send=False)
            if notice and old is not None and old != self.client.my_id and old in self.people:
                name = self.people[old].get("username", "Someone")
                self.chat_panel.add_notice(f"{name} stopped presenting")
        else:
            if self.presenter in self.people:
                self._show_person(self.people[self.presenter])
            if self.presenter != self.client.my_id:
                if self.presenting:
                    self._stop_presenting(send=False)
                name = self.people.get(self.presenter, {}).get("username", "Someone")
                self.screen_view.set_presenter(str(name))
                self.screen_view.show()
                if notice and old != self.presenter:
                    self.chat_panel.add_notice(f"{name} started presenting")

    def on_present_granted(self) -> None:
        err = self.media.start_screen()
        if err:
            self.notify(err)
            self._stop_presenting(send=True)
            return
        self.presenting = True
        self.controls.set_presenting(True)
        self.people[self.client.my_id]["presenting"] = True
        self._show_person(self.people[self.client.my_id])
        self.screen_view.set_presenter("You", "Everyone can see your screen.")
        self.screen_view.show()
        self.notify("You are presenting your screen")

    def on_levels_changed(self, levels: dict) -> None:
        now = time.monotonic()
        hold = config.GUI_SPEAKING_HOLD_MS / 1000
        for pid, level in levels.items():
            if level >= config.GUI_SPEAKING_LEVEL:
                self._speaking_until[pid] = now + hold
        loudest = max(
            (pid for pid in self._speaking_until if self._speaking_until[pid] > now),
            key=lambda pid: levels.get(pid, 0),
            default=None,
        )
        for pid, tile in self.grid.tiles.items():
            tile.set_speaking(pid == loudest)
        self.participants_panel.set_levels(levels)

    def on_file_added(self, f: dict) -> None:
        mine = f.get("owner") == self.client.my_id
        row = self.files_panel.upsert(f, mine)
        if not row.property("wired"):
            row.setProperty("wired", True)
            fid = str(f.get("id", ""))
            row.download_button.clicked.connect(lambda _=False, fid=fid: self.download_file(fid))
            row.delete_button.clicked.connect(lambda _=False, fid=fid: self.delete_file(fid))
            row.open_button.clicked.connect(lambda _=False, fid=fid: self.open_download(fid))

    def on_file_removed(self, fid: str) -> None:
        self.files_panel.remove(fid)

    def on_error_received(self, code: str, message: str, re_: Any) -> None:
        log.info("server error %s (re %r): %r", code, re_, message)
        if re_ == utils.Msg.PRESENT_STOP:
            return  # stopping when already stopped: nothing to tell anyone
        if code == utils.Err.PRESENTER_BUSY or re_ == utils.Msg.PRESENT_START:
            self.presenting = False
            self.controls.set_presenting(False)
            self.notify(message or utils.ERROR_TEXT.get(code, code))
            return
        if re_ == utils.Msg.FILE_OFFER:
            return  # the upload's Transfer fails with this error and reports it
        if re_ == utils.Msg.FILE_DELETE:
            self.files_panel.show_error(message)
            return
        self.notify(message or utils.ERROR_TEXT.get(code, code))

    def on_device_failed(self, kind: str, reason: str) -> None:
        """A device stopped under us (unplugged, busy): say so and show it as off."""
        if self.leaving:
            return
        self.notify(f"{kind.capitalize()} stopped: {reason}")
        if kind == "mic" and self.audio_on:
            self._apply_media(False, self.video_on)
        elif kind == "camera" and self.video_on:
            self._apply_media(self.audio_on, False)
        elif kind == "screen":
            self._stop_presenting(send=True)

    def on_pong_received(self, rtt: float) -> None:
        self._update_status()

    def on_disconnected(self, reason: str) -> None:
        if self.leaving:
            return
        self.media.stop()
        self.presenting = False
        self.controls.set_presenting(False)
        self.banner_label.setText(
            f"Lost the connection to the server ({reason})." if reason else "Lost the connection."
        )
        self.banner.show()
        self.reconnect_button.setEnabled(True)
        self._update_status()

    # --- slots: timers -------------------------------------------------------------------

    def on_repaint_tick(self) -> None:
        """Paint the newest frame of every visible tile and the shared screen."""
        if self.bridge is None:
            return
        now = time.monotonic()
        stale_s = config.GUI_FRAME_STALE_MS / 1000
        for pid in self.grid.visible_ids():
            tile = self.grid.tiles[pid]
            if tile.is_self:
                latest = self.media.self_view() if self.video_on else None
                if latest is not None and latest[0] != tile.frame_version:
                    tile.set_image(latest[1], latest[0])
                continue
            entry = self.bridge.video.get(pid)
            if entry is None or not tile.video_on:
                if tile.image is not None and now - tile.frame_time > stale_s:
                    tile.set_image(None, tile.frame_version)
                continue
            version, arrived, image, _ = entry
            if version != tile.frame_version:
                tile.set_image(image, version)
            elif tile.image is not None and now - arrived > stale_s:
                tile.set_image(None, version)
        if self.presenter is not None and self.presenter != self.client.my_id:
            entry = self.bridge.screen.get(self.presenter)
            if entry is not None and entry[0] != self.screen_view.version:
                self.screen_view.set_image(entry[2], entry[0])

    def on_ping_tick(self) -> None:
        if self.client is not None and getattr(self.client, "connected", False):
            try:
                self.client.ping()
            except OSError as exc:
                log.debug("ping failed: %s", exc)
        self._update_status()

    # --- actions ------------------------------------------------------------------------

    def notify(self, text: str) -> None:
        """A short notice over the stage (errors, missing devices, presenter busy)."""
        self.last_notice = text
        log.info("notice: %s", text)
        self.toast.setText(text)
        self.toast_timer.start(config.GUI_TOAST_MS)
        self._place_toast()

    def _place_toast(self) -> None:
        width = min(560, self.toast.fontMetrics().horizontalAdvance(self.toast.text()) + 48)
        self.toast.setFixedWidth(width)
        self.toast.setFixedHeight(self.toast.heightForWidth(width))
        parent = self.toast.parentWidget()
        self.toast.move(
            (parent.width() - self.toast.width()) // 2,
            parent.height() - self.controls.height() - self.toast.height() - 16,
        )
        self.toast.show()
        self.toast.raise_()

    def _apply_media(
        self, audio: bool, video: bool, initial: bool = False, problems: list[str] | None = None
    ) -> None:
        problems = list(problems or [])
        if video:
            err = self.media.start_camera()
            if err:
                problems.append(err)
                video = False
        else:
            self.media.stop_camera()
        if audio:
            err = self.media.start_mic()
            if err:
                problems.append(err)
                audio = False
        else:
            self.media.stop_mic()
        if problems:
            self.notify("\n".join(problems))
        changed = (audio, video) != (self.audio_on, self.video_on)
        self.audio_on, self.video_on = audio, video
        self.controls.set_mic(audio)
        self.controls.set_camera(video)
        me = self.people.get(self.client.my_id)
        if me is not None:
            me.update(audio=audio, video=video)
            self._show_person(me)
        if (changed or initial) and getattr(self.client, "connected", False):
            self.client.set_media(audio, video)

    def toggle_mic(self) -> None:
        if self.banner.isVisible():
            return
        self._apply_media(not self.audio_on, self.video_on)

    def toggle_camera(self) -> None:
        if self.banner.isVisible():
            return
        self._apply_media(self.audio_on, not self.video_on)

    def toggle_present(self) -> None:
        if self.banner.isVisible():
            return
        if self.presenting:
            self._stop_presenting(send=True)
            return
        self.controls.set_presenting(True)  # optimistic; undone by presenter_busy
        self.media.request_present()

    def _stop_presenting(self, send: bool) -> None:
        self.media.stop_screen(send=send and getattr(self.client, "connected", False))
        self.presenting = False
        self.controls.set_presenting(False)
        if self.presenter is None or self.presenter == self.client.my_id:
            self.screen_view.hide()
        if self.client.my_id in self.people:
            self.people[self.client.my_id]["presenting"] = False
            self._show_person(self.people[self.client.my_id])

    def send_chat(self, text: str, to: list[int] | None) -> None:
        if not getattr(self.client, "connected", False):
            self.notify("Not connected: the message was not sent.")
            self.chat_panel.input.setText(text)
            return
        try:
            self.client.send_chat(text, to=to)
        except (OSError, ValueError) as exc:
            self.notify(f"Could not send: {exc}")
            self.chat_panel.input.setText(text)

    def open_settings(self) -> None:
        """Pick devices; the choice is remembered for next time."""
        if SettingsDialog(self.media, self).exec_() == QDialog.Accepted:
            for kind, value in self.media.selected.items():
                self.settings.setValue(f"devices/{kind}", value)
            self.settings.sync()

    # --- files ----------------------------------------------------------------------------

    def upload_files(self, paths: list[str]) -> None:
        """Share each file (uploads run on their own threads; progress via the timer)."""
        import file_sharing_module as fsm

        self.files_panel.show_error("")
        for path in paths:
            p = Path(path)
            if not p.is_file():
                self.files_panel.show_error(f"{p.name} is not a file.")
                continue
            try:
                transfer = fsm.upload(self.client, str(p), None)
            except Exception as exc:
                self.files_panel.show_error(f"Could not share {p.name}: {exc}")
                continue
            self.transfers.append(("upload", p.name, None, transfer))
        self._transfer_tick_start()

    def download_file(self, fid: str) -> None:
        import file_sharing_module as fsm

        row = self.files_panel.rows.get(fid)
        if row is None:
            return
        try:
            self.download_dir.mkdir(parents=True, exist_ok=True)
            transfer = fsm.download(self.client, fid, str(self.download_dir), None)
        except Exception as exc:
            self.files_panel.show_error(f"Could not download {row.file.get('name')}: {exc}")
            return
        row.download_button.setEnabled(False)
        row.set_progress(0, int(row.file.get("size", 0)))
        self.transfers.append(("download", row.file.get("name", ""), fid, transfer))
        self._transfer_tick_start()

    def open_download(self, fid: str) -> None:
        row = self.files_panel.rows.get(fid)
        if row is not None and row.downloaded_path is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(row.downloaded_path.parent)))

    def delete_file(self, fid: str) -> None:
        try:
            self.client.delete_file(fid)
        except (OSError, ValueError) as exc:
            self.files_panel.show_error(f"Could not delete: {exc}")

    def _transfer_tick_start(self) -> None:
        if not self.transfer_timer.isActive():
            self.transfer_timer.start()

    def on_transfer_tick(self) -> None:
        """Show transfer progress; finished transfers report their result."""
        still: list[Any] = []
        up_done = up_total = 0
        uploading: list[str] = []
        for kind, name, fid, t in self.transfers:
            done, total = transfer_progress(t)
            finished = transfer_finished(t)
            if kind == "upload":
                if finished:
                    err = transfer_error(t)
                    if err:
                        self.files_panel.show_error(f"Could not share {name}: {err}")
                    continue
                up_done += done
                up_total += total
                uploading.append(name)
            else:
                row = self.files_panel.rows.get(fid)
                if finished:
                    err = transfer_error(t)
                    if row is not None:
                        row.download_button.setEnabled(True)
                        if err:
                            row.progress.hide()
                            row.detail_label.setText("Download failed")
                            self.files_panel.show_error(f"Could not download {name}: {err}")
                        else:
                            row.set_progress(1, 1)
                            row.downloaded_path = transfer_path(t)
                            row.detail_label.setText("Downloaded")
                            row.open_button.show()
                    continue
                if row is not None:
                    row.set_progress(done, total or int(row.file.get("size", 0)))
            still.append((kind, name, fid, t))
        self.transfers = still
        fp = self.files_panel
        if uploading:
            names = ", ".join(uploading)
            fp.uploads_label.setText(
                f"Sharing {names} · {format_size(up_done)} of {format_size(up_total)}"
            )
            fp.uploads_label.show()
            fp.upload_progress.show()
            fp.upload_progress.setValue(int(1000 * up_done / up_total) if up_total else 0)
        else:
            fp.uploads_label.hide()
            fp.upload_progress.hide()
        if not self.transfers:
            self.transfer_timer.stop()

    # --- drag and drop ----------------------------------------------------------------------

    def dragEnterEvent(self, event: Any) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: Any) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.upload_files(paths)

    # --- reconnect and leave ----------------------------------------------------------------

    def reconnect(self) -> None:
        """Join the same session again on a worker thread."""
        if self._reconnect_thread is not None and self._reconnect_thread.is_alive():
            return
        self.reconnect_button.setEnabled(False)
        self.banner_label.setText("Reconnecting…")
        signals = _ReconnectSignals(self)
        signals.done.connect(self.on_reconnected)
        signals.failed.connect(self.on_reconnect_failed)
        request = self.request
        old = self.client

        def work() -> None:
            try:
                old.leave()
            except Exception as exc:
                log.debug("leaving the old client: %s", exc)
            try:
                client, _welcome = connect_client(request)
            except Exception as exc:
                code, message = error_code_and_message(exc)
                signals.failed.emit(code, message)
                return
            signals.done.emit(client)

        self._reconnect_thread = threading.Thread(target=work, name="gui-reconnect", daemon=True)
        self._reconnect_thread.start()

    def on_reconnected(self, client: Any) -> None:
        if self.leaving:
            client.leave()
            return
        self.attach_client(client)
        self.notify("Reconnected")

    def on_reconnect_failed(self, code: str, message: str) -> None:
        from login_dialog import explain_join_error

        self.banner_label.setText(
            explain_join_error(
                code,
                message,
                address=self.request.address,
                username=self.request.username,
                session=self.request.session,
            )
        )
        self.reconnect_button.setEnabled(True)

    def leave_session(self) -> None:
        """Stop media, say bye and join the client's threads (idempotent)."""
        if self.leaving:
            return
        self.leaving = True
        for timer in (self.repaint_timer, self.ping_timer, self.transfer_timer, self.toast_timer):
            timer.stop()
        for _kind, _name, _fid, t in self.transfers:
            cancel = getattr(t, "cancel", None)
            if cancel is not None:
                cancel()
        self.media.stop()
        if self.bridge is not None:
            self.bridge.detach()
        if self._reconnect_thread is not None:
            self._reconnect_thread.join(config.CONNECT_TIMEOUT_S + 2)
        for _kind, _name, _fid, t in self.transfers:
            wait = getattr(t, "wait", None)
            if wait is not None:
                try:
                    wait(2.0)
                except Exception as exc:
                    log.debug("transfer wait: %s", exc)
        self.transfers = []
        if self.client is not None:
            self.client.leave()

    def closeEvent(self, event: Any) -> None:
        self.leave_session()
        super().closeEvent(event)

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        if self.toast_timer.isActive():
            self._place_toast()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self.toast_timer.isActive():
            self._place_toast()


class _ReconnectSignals(QObject):
    """Carries the reconnect worker's result into the GUI thread."""

    done = pyqtSignal(object)
    failed = pyqtSignal(str, str)


# --- Helpers over other modules' objects -----------------------------------------------


def chat_history(client: Any) -> list[dict]:
    """The chat messages the client already holds (history and early live ones)."""
    log_ = getattr(client, "chat", None)
    if log_ is None:
        return []
    for attr in ("messages", "history", "all"):
        value = getattr(log_, attr, None)
        if callable(value):
            value = value()
        if value is not None:
            return [m for m in list(value) if isinstance(m, dict)]
    try:
        return [m for m in list(log_) if isinstance(m, dict)]
    except TypeError:
        return []


def transfer_progress(t: Any) -> tuple[int, int]:
    """(bytes done, total bytes) of a file_sharing_module.Transfer."""
    return int(getattr(t, "bytes_done", 0) or 0), int(getattr(t, "total", 0) or 0)


def transfer_finished(t: Any) -> bool:
    return bool(getattr(t, "done", False))


def transfer_error(t: Any) -> str | None:
    err = getattr(t, "error", None)
    return str(err) if err else None


def transfer_path(t: Any) -> Path | None:
    path = getattr(t, "path", None)
    return Path(path) if path else None


# --- Entry ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Open the join dialog, then the meeting window; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = QApplication.instance() or QApplication([sys.argv[0], *argv])
    app.setApplicationName(config.APP_NAME)
    apply_theme(app)
    dialog = LoginDialog()
    if dialog.exec_() != QDialog.Accepted or dialog.client is None or dialog.request is None:
        return 0
    window = MainWindow(dialog.client, dialog.request, media=default_media())
    window.show()
    return app.exec_()


def default_media() -> MediaController:
    """The media controller for real devices."""
    return DeviceMedia()


if __name__ == "__main__":
    sys.exit(main())
