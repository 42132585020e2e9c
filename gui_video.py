"""The stage: participants' video tiles in a grid beside the presenter's shared screen."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from PyQt5.QtCore import QRect, QRectF, Qt, QTimer
from PyQt5.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen
from PyQt5.QtWidgets import QHBoxLayout, QSizePolicy, QWidget

import config
from gui_bridge import LatestFrames
from gui_theme import ACCENT, MUTED, TEXT, avatar_colour, icon, initials


def grid_shape(n: int) -> tuple[int, int]:
    """(columns, rows) of the video grid for ``n`` tiles: cols = ceil(sqrt(n))."""
    if n <= 0:
        return 0, 0
    cols = math.ceil(math.sqrt(n))
    return cols, math.ceil(n / cols)


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
        # Pin (ours) or spotlight (a host's): that one tile fills the grid (issue 14).
        self.focus: int | None = None
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)

    def set_focus(self, pid: int | None) -> None:
        self.focus = pid
        self.relayout()

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
        if self.focus in self.tiles:
            return [self.focus]
        return self.order[: config.GUI_MAX_VIDEO_TILES]

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self.relayout()

    def relayout(self) -> None:
        ids = self.visible_ids()
        for pid in self.order:
            if pid not in ids:
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


class Stage(QWidget):
    """The video grid beside the shared screen; paints the newest frames and the speaker ring."""

    def __init__(self) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(12)
        self.grid = VideoGrid()
        self.screen_view = ScreenShareView()
        self.screen_view.hide()
        row.addWidget(self.grid, 2)
        row.addWidget(self.screen_view, 5)
        self._speaking_until: dict[int, float] = {}

    def show_person(self, pid: int, name: str, is_self: bool, p: dict) -> None:
        """Add or update ``pid``'s tile (our own comes first)."""
        if pid not in self.grid.tiles:
            self.grid.add_tile(VideoTile(pid, name, is_self), first=is_self)
        audio, video = bool(p.get("audio")), bool(p.get("video"))
        self.grid.tiles[pid].set_state(name, audio, video, bool(p.get("presenting")))

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
            elif tile.image is not None and now - arrived > stale_s:
                tile.set_image(None, version)
        if presenter is not None:
            shot = screen.get(presenter)
            if shot is not None and shot[0] != self.screen_view.version:
                self.screen_view.set_image(shot[2], shot[0])
