"""The stage: participants' video tiles (grid or active speaker) beside the shared screen.

``plan_subscriptions`` is the pure rule from what is on screen to the video
layers to receive; the grid reports every change of what it shows
(``VideoGrid.layout_changed``) and ``SubscriptionPlanner`` coalesces those into
one ``subscribe`` per ``GUI_SUBSCRIBE_DEBOUNCE_MS``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from PyQt5.QtCore import QObject, QRect, QRectF, Qt, QTimer, pyqtSignal
from PyQt5.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen
from PyQt5.QtWidgets import (
    QHBoxLayout,
    QMenu,
    QScrollBar,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

import config
from gui_bridge import LatestFrames
from gui_theme import ACCENT, MUTED, TEXT, avatar_colour, icon, initials

log = logging.getLogger(__name__)

GRID, SPEAKER = "grid", "speaker"


class TileView(NamedTuple):
    """What the screen shows of one remote participant's tile."""

    pid: int
    visible: bool  # on screen now (not hidden, not scrolled away, not beyond the limit)
    width_px: int
    on_stage: bool = False  # the speaker view's large tile
    pinned: bool = False


def plan_subscriptions(views: Iterable[TileView]) -> dict[int, str | None]:
    """The layer to receive of each participant, from what is on screen (pure).

    A visible tile on the stage, pinned, or at least ``GUI_LARGE_TILE_MIN_WIDTH_PX``
    wide gets the large layer (at most ``SUBSCRIBE_MAX_LARGE_LAYERS``: stage and pins
    first, then the widest); other visible tiles the small one; hidden or
    scrolled-away tiles, and any beyond ``SUBSCRIBE_MAX_TILES``, nothing (None).
    """
    shown = [v for v in views if v.visible]
    shown.sort(key=lambda v: (not v.on_stage, not v.pinned, -v.width_px, v.pid))
    plan: dict[int, str | None] = {v.pid: None for v in views}
    large = 0
    for i, v in enumerate(shown):
        if i >= config.SUBSCRIBE_MAX_TILES:
            break
        wants_large = v.on_stage or v.pinned or v.width_px >= config.GUI_LARGE_TILE_MIN_WIDTH_PX
        if wants_large and large < config.SUBSCRIBE_MAX_LARGE_LAYERS:
            plan[v.pid] = config.VIDEO_LAYER_LARGE
            large += 1
        else:
            plan[v.pid] = config.VIDEO_LAYER_SMALL
    return plan


class SubscriptionPlanner(QObject):
    """Sends ``subscribe`` for what the stage shows, at most once per debounce interval.

    ``request()`` (any layout change) restarts a single-shot timer; when it fires,
    ``views()`` is asked what is on screen and ``send(plan)`` gets the result (the
    client sends only when it changed). A drag-resize sends one ``subscribe``.
    """

    def __init__(
        self,
        views: Callable[[], list[TileView]],
        send: Callable[[dict[int, str | None]], Any],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.views = views
        self.send = send
        self.sent = 0
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(config.GUI_SUBSCRIBE_DEBOUNCE_MS)
        self.timer.timeout.connect(self.flush)

    def request(self) -> None:
        self.timer.start()

    def flush(self) -> None:
        self.timer.stop()
        plan = plan_subscriptions(self.views())
        try:
            self.send(plan)
            self.sent += 1
        except OSError as exc:
            log.info("subscribe not sent: %s", exc)


def grid_shape(n: int) -> tuple[int, int]:
    """(columns, rows) of the video grid for ``n`` tiles: cols = ceil(sqrt(n))."""
    if n <= 0:
        return 0, 0
    cols = math.ceil(math.sqrt(n))
    return cols, math.ceil(n / cols)


class VideoTile(QWidget):
    """One participant's rounded tile: video or initials, name, muted mark, speaking ring.

    Its context menu pins (or unpins) the participant: ``pin_toggled(pid)``.
    """

    RADIUS_PX = 14
    pin_toggled = pyqtSignal(int)

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
        self.pinned = False
        self.menu_provider: Callable[[int], QMenu] | None = None  # set by VideoGrid
        self.frozen = False  # the picture is the last good one; the stream waits
        self.setMinimumSize(96, 54)
        self.setAttribute(Qt.WA_OpaquePaintEvent, False)
        self._mic_off = icon("mic-off")
        # Meeting controls (issue 14): a hand mark (its place in the order raised) and
        # the latest reaction, shown until reaction_until (monotonic seconds).
        self.hand: int | None = None
        self.reaction = ""
        self.reaction_until = 0.0

    def set_hand(self, place: int | None) -> None:
        if place != self.hand:
            self.hand = place
            self.update()

    def show_reaction(self, emoji: str) -> None:
        """Float ``emoji`` over the tile for ``MEETING_REACTION_SHOW_MS``."""
        self.reaction = emoji
        self.reaction_until = time.monotonic() + config.MEETING_REACTION_SHOW_MS / 1000
        self.update()
        QTimer.singleShot(config.MEETING_REACTION_SHOW_MS + 50, self.update)

    def _paint_meeting_marks(self, p: QPainter, rect: QRectF) -> None:
        font = QFont(self.font())
        if self.hand is not None:
            font.setPixelSize(13)
            font.setWeight(QFont.DemiBold)
            p.setFont(font)
            badge = QRectF(rect.left() + 8, rect.top() + 8, 66, 26)
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(ACCENT))
            p.drawRoundedRect(badge, 13, 13)
            p.setPen(QColor("white"))
            p.drawText(badge, Qt.AlignCenter, f"Hand {self.hand}")
        if self.reaction and time.monotonic() < self.reaction_until:
            font.setPixelSize(max(24, int(min(rect.width(), rect.height()) * 0.22)))
            p.setFont(font)
            p.setPen(QColor("white"))
            box = QRectF(rect.right() - rect.width() * 0.35, rect.top() + 4, rect.width() * 0.33,
                         rect.height() * 0.4)  # fmt: skip
            p.drawText(box, Qt.AlignCenter, self.reaction)

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

    def set_frozen(self, frozen: bool) -> None:
        if frozen != self.frozen:
            self.frozen = frozen
            self.update()

    def label_text(self) -> str:
        name = f"{self.name} (You)" if self.is_self else self.name
        return f"📌 {name}" if self.pinned else name

    def pin_menu(self) -> QMenu:
        """The context menu: Pin / Unpin (not on our own tile)."""
        menu = QMenu(self)
        if not self.is_self:
            action = menu.addAction(f"Unpin {self.name}" if self.pinned else f"Pin {self.name}")
            action.triggered.connect(lambda: self.pin_toggled.emit(self.pid))
        return menu

    def contextMenuEvent(self, event: Any) -> None:
        provider = self.menu_provider
        menu = provider(self.pid) if provider is not None else None
        if menu is None:
            menu = self.pin_menu()
        if menu.actions():
            menu.exec_(event.globalPos())

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
        self._paint_meeting_marks(p, rect)
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
        if self.frozen and self.showing_video():
            font.setPixelSize(11)
            p.setFont(font)
            badge = QRectF(rect.left() + 8, rect.top() + 8, 104, 22)
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(0, 0, 0, 160))
            p.drawRoundedRect(badge, 11, 11)
            p.setPen(QColor("white"))
            p.drawText(badge, Qt.AlignCenter, "Video paused")
        if self.speaking:
            p.setBrush(Qt.NoBrush)
            p.setPen(QPen(QColor(ACCENT), 3))
            p.drawRoundedRect(rect.adjusted(1.5, 1.5, -1.5, -1.5), self.RADIUS_PX, self.RADIUS_PX)
        p.end()


class VideoGrid(QWidget):
    """Up to GUI_MAX_VIDEO_TILES tiles, as a grid or as the active-speaker view.

    Grid: cols = ceil(sqrt(n)), 16:9, centred. Speaker: one large stage tile (the
    pinned participant, else the active speaker) above a strip of thumbnails
    that scrolls sideways when they do not fit. ``layout_changed`` is emitted
    after every change of what is shown (the subscriptions follow it).
    """

    SPACING_PX = 10
    ASPECT = 16 / 9
    layout_changed = pyqtSignal()

    def __init__(self) -> None:
        super().__init__()
        self.tiles: dict[int, VideoTile] = {}
        self.order: list[int] = []
        self.mode = GRID
        self.stage_pid: int | None = None
        self.pinned: int | None = None
        self.spotlight: int | None = None  # a host's (issue 14); our pin beats it
        # The tiles' context menu (pid -> QMenu): the participants panel's person menu
        # (pin/unpin, spotlight, host actions) once wired; else the tile's own pin menu.
        self.menu_provider: Callable[[int], QMenu] | None = None
        self._shown: dict[int, bool] = {}
        self.strip_scroll = QScrollBar(Qt.Horizontal, self)
        self.strip_scroll.hide()
        self.strip_scroll.valueChanged.connect(self.on_strip_scrolled)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)

    def set_spotlight(self, pid: int | None) -> None:
        """A host's spotlight (issue 14): it fills the grid, or takes the stage in speaker
        view, unless we pinned someone (one pin: ``toggle_pin``)."""
        if pid != self.spotlight:
            self.spotlight = pid
            self.relayout()

    def set_menu_provider(self, provider: Callable[[int], QMenu] | None) -> None:
        """One context menu for every tile (pin/unpin, spotlight, host actions)."""
        self.menu_provider = provider
        for tile in self.tiles.values():
            tile.menu_provider = provider

    def add_tile(self, tile: VideoTile, first: bool = False) -> None:
        if tile.pid in self.tiles:
            return
        self.tiles[tile.pid] = tile
        if first:
            self.order.insert(0, tile.pid)
        else:
            self.order.append(tile.pid)
        tile.setParent(self)
        tile.pin_toggled.connect(self.toggle_pin)
        tile.menu_provider = self.menu_provider
        self.relayout()

    def remove_tile(self, pid: int) -> None:
        tile = self.tiles.pop(pid, None)
        if tile is None:
            return
        self.order.remove(pid)
        self._shown.pop(pid, None)
        if self.pinned == pid:
            self.pinned = None
        if self.stage_pid == pid:
            self.stage_pid = None
        tile.hide()
        tile.setParent(None)
        tile.deleteLater()
        self.relayout()

    def clear(self) -> None:
        for pid in list(self.order):
            self.remove_tile(pid)

    def visible_ids(self) -> list[int]:
        if self.mode == GRID and self.pinned is None and self.spotlight in self.tiles:
            return [self.spotlight]
        return self.order[: config.GUI_MAX_VIDEO_TILES]

    def on_strip_scrolled(self, _value: int) -> None:
        self.relayout()

    # --- modes, pin, speaker -----------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in (GRID, SPEAKER):
            raise ValueError(mode)
        if mode != self.mode:
            self.mode = mode
            self.relayout()

    def toggle_pin(self, pid: int) -> None:
        """Pin ``pid`` (or unpin it if pinned): it takes the stage and the large layer."""
        self.pinned = None if self.pinned == pid else pid
        for other, tile in self.tiles.items():
            tile.pinned = other == self.pinned
            tile.update()
        self.relayout()

    def set_speaker(self, pid: int | None) -> None:
        """The active speaker (the stage in speaker view unless someone is pinned)."""
        if pid != self.stage_pid and (pid is None or pid in self.tiles):
            self.stage_pid = pid
            if self.mode == SPEAKER and self.pinned is None:
                self.relayout()

    def on_stage(self) -> int | None:
        """Who has the large tile in speaker view: the pin, the speaker, else someone."""
        if self.mode != SPEAKER:
            return None
        for pid in (self.pinned, self.spotlight, self.stage_pid):
            if pid is not None and pid in self.tiles:
                return pid
        remote = [pid for pid in self.visible_ids() if not self.tiles[pid].is_self]
        return remote[0] if remote else (self.order[0] if self.order else None)

    def tile_views(self) -> list[TileView]:
        """What is on screen of every remote tile (for ``plan_subscriptions``)."""
        stage = self.on_stage()
        out = []
        for pid in self.order:
            tile = self.tiles[pid]
            if tile.is_self:
                continue
            visible = self._shown.get(pid, False) and self.isVisible() and tile.video_on
            out.append(TileView(pid, visible, tile.width(), pid == stage, pid == self.pinned))
        return out

    # --- layout -----------------------------------------------------------------------

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self.relayout()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self.layout_changed.emit()

    def hideEvent(self, event: Any) -> None:
        super().hideEvent(event)
        self.layout_changed.emit()

    def relayout(self) -> None:
        ids = self.visible_ids()
        shown: dict[int, bool] = {pid: False for pid in self.order}
        for pid in self.order:
            if pid not in ids:  # beyond the grid, or not the spotlight
                self.tiles[pid].hide()
        if ids:
            if self.mode == SPEAKER:
                self._layout_speaker(ids, shown)
            else:
                self.strip_scroll.hide()
                self._layout_grid(ids, shown)
        self._shown = shown
        self.layout_changed.emit()

    def _layout_grid(self, ids: list[int], shown: dict[int, bool]) -> None:
        cols, rows = grid_shape(len(ids))
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
            shown[pid] = True

    def _layout_speaker(self, ids: list[int], shown: dict[int, bool]) -> None:
        gap = self.SPACING_PX
        stage = self.on_stage()
        thumbs = [pid for pid in ids if pid != stage]
        strip_h = int(self.height() * config.GUI_THUMB_STRIP_FRACTION) if thumbs else 0
        bar_h = self.strip_scroll.sizeHint().height()
        thumb_w = int(strip_h * self.ASPECT)
        content_w = len(thumbs) * (thumb_w + gap) - gap
        overflow = max(0, content_w - self.width())
        stage_h = max(1, self.height() - (strip_h + gap + (bar_h if overflow else 0)))
        if stage is not None:
            w = min(self.width(), int(stage_h * self.ASPECT))
            h = int(w / self.ASPECT)
            tile = self.tiles[stage]
            tile.setGeometry((self.width() - w) // 2, (stage_h - h) // 2, w, h)
            tile.show()
            shown[stage] = True
        self.strip_scroll.blockSignals(True)
        self.strip_scroll.setRange(0, overflow)
        self.strip_scroll.setPageStep(max(1, self.width()))
        self.strip_scroll.setSingleStep(thumb_w + gap)
        self.strip_scroll.blockSignals(False)
        offset = self.strip_scroll.value() if overflow else 0
        if overflow:
            self.strip_scroll.setGeometry(0, self.height() - bar_h, self.width(), bar_h)
            self.strip_scroll.show()
            self.strip_scroll.raise_()
        else:
            self.strip_scroll.hide()
        left = max(0, (self.width() - content_w) // 2) if not overflow else 0
        y = stage_h + gap
        for i, pid in enumerate(thumbs):
            x = left + i * (thumb_w + gap) - offset
            tile = self.tiles[pid]
            if x + thumb_w <= 0 or x >= self.width():  # scrolled away
                tile.hide()
                continue
            tile.setGeometry(x, y, thumb_w, strip_h)
            tile.show()
            shown[pid] = True


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


class Stage(QWidget):
    """The video grid beside the shared screen; paints the newest frames and the speaker ring.

    A button above the tiles switches between the grid and the active-speaker view.
    """

    def __init__(self) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(12)
        column = QVBoxLayout()
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(6)
        self.view_button = QToolButton()
        self.view_button.setCheckable(True)
        self.view_button.setToolTip("Switch between the grid and the active-speaker view")
        self.view_button.toggled.connect(self.on_view_toggled)
        self.grid = VideoGrid()
        column.addWidget(self.view_button, 0, Qt.AlignRight)
        column.addWidget(self.grid, 1)
        self.screen_view = ScreenShareView()
        self.screen_view.hide()
        row.addLayout(column, 2)
        row.addWidget(self.screen_view, 5)
        self._speaking_until: dict[int, float] = {}
        self._speaker_since = float("-inf")
        self._label_view_button()

    def _label_view_button(self) -> None:
        speaker = self.grid.mode == SPEAKER
        self.view_button.setText("Grid view" if speaker else "Speaker view")

    def on_view_toggled(self, speaker: bool) -> None:
        self.grid.set_mode(SPEAKER if speaker else GRID)
        self._label_view_button()

    def set_mode(self, mode: str) -> None:
        self.view_button.setChecked(mode == SPEAKER)

    def show_person(self, pid: int, name: str, is_self: bool, p: dict) -> None:
        """Add or update ``pid``'s tile (our own comes first)."""
        if pid not in self.grid.tiles:
            self.grid.add_tile(VideoTile(pid, name, is_self), first=is_self)
        audio, video = bool(p.get("audio")), bool(p.get("video"))
        tile = self.grid.tiles[pid]
        camera_changed = tile.video_on != video
        tile.set_state(name, audio, video, bool(p.get("presenting")))
        if camera_changed:
            self.grid.layout_changed.emit()  # a camera coming on is subscribed to

    def set_marks(self, hosts: list[int], hands: list[int]) -> None:
        """Hand marks on the tiles, numbered in the order raised (issue 14)."""
        for pid, tile in self.grid.tiles.items():
            tile.set_hand(hands.index(pid) + 1 if pid in hands else None)

    def show_reaction(self, pid: int, emoji: str) -> None:
        tile = self.grid.tiles.get(pid)
        if tile is not None:
            tile.show_reaction(emoji)

    def show_remote_screen(self, name: str | None) -> None:
        """Show ``name``'s shared screen, or hide the view when nobody else presents (None)."""
        if name is None:
            self.screen_view.hide()
            self.screen_view.set_presenter("")
        else:
            self.screen_view.set_presenter(name)
            self.screen_view.show()

    def show_own_screen(self, on: bool, other_presents: bool) -> None:
        """We started (or stopped) presenting; the view stays for another presenter."""
        if on:
            self.screen_view.set_presenter("You", "Everyone can see your screen.")
            self.screen_view.show()
        elif not other_presents:
            self.screen_view.hide()

    def show_levels(self, levels: dict[int, int]) -> None:
        """Ring the loudest of those who spoke in the last GUI_SPEAKING_HOLD_MS."""
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
        self.follow_speaker(loudest, now)

    def follow_speaker(self, loudest: int | None, now: float) -> None:
        """Give the stage to the loudest remote talker, at most once per switch interval."""
        tile = self.grid.tiles.get(loudest) if loudest is not None else None
        if tile is None or tile.is_self or loudest == self.grid.stage_pid:
            return
        if now - self._speaker_since < config.GUI_SPEAKER_SWITCH_MIN_S:
            return
        self._speaker_since = now
        self.grid.set_speaker(loudest)

    def repaint_frames(
        self,
        video: LatestFrames,
        screen: LatestFrames,
        presenter: int | None,
        self_view: Callable[[], tuple[int, QImage] | None],
    ) -> None:
        """Show the newest frame of every visible tile and of ``presenter``'s screen."""
        now = time.monotonic()
        stale_s = config.GUI_FRAME_STALE_MS / 1000
        frozen_s = config.GUI_FROZEN_BADGE_MS / 1000
        for pid in self.grid.visible_ids():
            tile = self.grid.tiles[pid]
            if tile.is_self:
                latest = self_view()
                if latest is not None and latest[0] != tile.frame_version:
                    tile.set_image(latest[1], latest[0])
                continue
            entry = video.get(pid)
            if entry is None or not tile.video_on:
                if tile.image is not None and now - tile.frame_time > stale_s:
                    tile.set_image(None, tile.frame_version)
                continue
            version, arrived, image, _ = entry
            if version != tile.frame_version:
                tile.set_image(image, version)
            # A stream waiting for a keyframe keeps its last good picture (never a broken
            # one); after a while a badge says the picture is paused.
            tile.set_frozen(tile.image is not None and now - arrived > frozen_s)
        if presenter is not None:
            shot = screen.get(presenter)
            if shot is not None and shot[0] != self.screen_view.version:
                self.screen_view.set_image(shot[2], shot[0])
