"""FusionMeet's meeting window (it builds the parts and wires them) and the GUI's entry point.

The parts live beside it: ``gui_video`` (tiles, grid, shared screen),
``gui_panels`` (participants, files, chat, controls, banner, status),
``gui_controllers`` (transfers, reconnection, our own devices), ``gui_bridge``
(client events and worker reports as queued Qt signals, frame decoding),
``gui_media`` (devices, Settings) and ``gui_theme`` (the look).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PyQt5.QtCore import QEvent, QSettings, QStandardPaths, Qt, QTimer
from PyQt5.QtGui import QKeySequence
from PyQt5.QtWidgets import (
    QApplication,
    QDialog,
    QMainWindow,
    QShortcut,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

import config
import gui_meeting
import utils
from gui_bridge import ClientBridge, ClientLike
from gui_controllers import (
    LocalMedia,
    MeetingControls,
    ReconnectController,
    Roster,
    TransferTracker,
)
from gui_media import DeviceMedia, MediaController, SettingsDialog
from gui_panels import (
    ChatPanel,
    ConnectionBanner,
    ControlBar,
    FilesPanel,
    StatusLine,
    Toast,
)
from gui_participants import ParticipantsPanel
from gui_theme import apply_theme, icon
from gui_video import Stage, SubscriptionPlanner
from login_dialog import JoinRequest, LoginDialog

log = logging.getLogger(__name__)


class MainWindow(QMainWindow):
    """The meeting window: stage (grid + shared screen), side panels, controls, status."""

    def __init__(
        self,
        client: ClientLike,
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
        download_dir = download_dir or Path(downloads or Path.home()) / config.APP_NAME
        self.client = client
        self.bridge: ClientBridge | None = None
        self.last_notice = ""
        self.last_chat_sent = ""
        self.leaving = False
        self.roster = Roster(self)
        self.meeting = MeetingControls(self)
        self.local = LocalMedia(self.media, request.audio, request.video, self)
        self.transfers = TransferTracker(download_dir, parent=self)
        self.reconnector = ReconnectController(parent=self)
        self.setWindowIcon(icon("app"))
        self.setAcceptDrops(True)
        self.resize(1440, 900)
        self._build()
        self._wire()
        repaint_ms, ping_ms = config.GUI_REPAINT_INTERVAL_MS, config.GUI_PING_INTERVAL_MS
        self.repaint_timer = interval_timer(self, repaint_ms, self.on_repaint_tick)
        self.ping_timer = interval_timer(self, ping_ms, self.on_ping_tick)
        self.media.load_choice(self.settings)
        self.attach_client(client)
        self.repaint_timer.start()
        self.ping_timer.start()

    def _build(self) -> None:
        root = QWidget()
        outer = QVBoxLayout(root)
        outer.setContentsMargins(14, 12, 14, 0)
        outer.setSpacing(10)
        self.banner = ConnectionBanner()
        outer.addWidget(self.banner)
        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.setHandleWidth(10)
        self.stage = Stage()
        self.grid, self.screen_view = self.stage.grid, self.stage.screen_view
        self.subscriptions = SubscriptionPlanner(self.grid.tile_views, self.send_subscribe, self)
        self.splitter.addWidget(self.stage)
        self.sidebar = QSplitter(Qt.Vertical)
        self.sidebar.setHandleWidth(10)
        self.participants_panel = ParticipantsPanel()
        self.files_panel = FilesPanel()
        self.chat_panel = ChatPanel()
        for part in (self.participants_panel, self.files_panel, self.chat_panel):
            self.sidebar.addWidget(part)
        self.sidebar.setSizes([250, 210, 400])
        self.sidebar.setMinimumWidth(320)
        self.splitter.addWidget(self.sidebar)
        self.splitter.setStretchFactor(0, 1)  # the sidebar (1) keeps its width
        self.splitter.setSizes([1040, 380])
        outer.addWidget(self.splitter, 1)
        self.controls = ControlBar()
        outer.addWidget(self.controls)
        self.setCentralWidget(root)
        self.toast = Toast(root, above=self.controls)
        self.status = StatusLine(self.statusBar())

    def _wire(self) -> None:
        c, local, files, roster = self.controls, self.local, self.files_panel, self.roster
        c.mic_button.clicked.connect(local.toggle_mic)
        c.camera_button.clicked.connect(local.toggle_camera)
        c.screen_button.clicked.connect(local.toggle_present)
        c.settings_button.clicked.connect(self.open_settings)
        c.leave_button.clicked.connect(self.close)
        c.people_button.toggled.connect(self.participants_panel.setVisible)
        c.files_button.toggled.connect(files.setVisible)
        c.chat_button.toggled.connect(self.on_chat_toggled)
        QShortcut(QKeySequence("Ctrl+D"), self, activated=local.toggle_mic)
        QShortcut(QKeySequence("Ctrl+E"), self, activated=local.toggle_camera)
        local.media_changed.connect(self.on_own_media_changed)
        local.present_requested.connect(lambda: c.set_presenting(True))  # undone if refused
        local.presenting_changed.connect(self.on_own_presenting_changed)
        local.notice_issued.connect(self.notify)
        self.grid.layout_changed.connect(self.subscriptions.request)
        roster.person_shown.connect(self.stage.show_person)
        roster.person_shown.connect(self.participants_panel.upsert)
        roster.person_left.connect(self.grid.remove_tile)
        roster.person_left.connect(self.participants_panel.remove)
        self.participants_panel.volume_changed.connect(local.set_volume)
        roster.recipients_changed.connect(self.chat_panel.set_recipients)
        roster.count_changed.connect(self._update_status)
        roster.notice_issued.connect(self.chat_panel.add_notice)
        roster.remote_presenter_changed.connect(self.on_remote_presenter_changed)
        files.upload_requested.connect(self.transfers.upload)
        files.download_requested.connect(self.transfers.download)
        files.delete_requested.connect(self.transfers.delete)
        self.transfers.uploads_progressed.connect(files.set_upload_progress)
        self.transfers.download_progressed.connect(files.set_download_progress)
        self.transfers.download_finished.connect(files.set_download_finished)
        self.transfers.download_failed.connect(files.set_download_failed)
        self.transfers.error_occurred.connect(files.show_error)
        self.chat_panel.send_requested.connect(self.send_chat)
        rc, bar = self.reconnector, self.banner
        bar.reconnect_requested.connect(lambda: rc.reconnect(self.client, self.request))
        rc.reconnect_started.connect(bar.show_reconnecting)
        rc.reconnect_failed.connect(bar.show_failed)
        rc.reconnected.connect(self.on_reconnected)
        rc.auto_started.connect(bar.show_auto_reconnecting)
        rc.auto_elapsed.connect(bar.set_elapsed)
        rc.auto_finished.connect(self.on_auto_reconnected)
        bar.leave_requested.connect(self.close)
        gui_meeting.wire(self)

    def attach_client(self, client: ClientLike) -> None:
        """Show ``client``'s session: subscribe first, then build from its state."""
        if self.bridge is not None:
            self.bridge.detach()
        self.client = self.transfers.client = client
        # No Qt parent: the client's callbacks keep the bridge alive for as long as its
        # network threads may emit, even if the window is destroyed first; Qt drops the
        # connections to a destroyed window by itself.
        bridge = self.bridge = ClientBridge(client)
        bridge.participant_joined.connect(self.roster.on_joined)
        bridge.participant_left.connect(self.roster.on_left)
        bridge.participant_updated.connect(self.roster.on_updated)
        bridge.chat_received.connect(self.on_chat_received)
        bridge.presenter_changed.connect(self.roster.on_presenter_changed)
        bridge.present_granted.connect(self.local.on_present_granted)
        bridge.levels_changed.connect(self.stage.show_levels)
        bridge.levels_changed.connect(self.participants_panel.set_levels)
        bridge.file_added.connect(self.on_file_added)
        bridge.file_removed.connect(self.files_panel.remove)
        bridge.error_received.connect(self.on_error_received)
        bridge.pong_received.connect(self._update_status)
        bridge.disconnected.connect(self.on_disconnected)
        gui_meeting.connect_bridge(bridge, self.meeting, self.stage)
        self.local.attach(client)
        self.reconnector.watch(client)
        self.meeting.attach(client)
        self._rebuild_from_client()
        self.subscriptions.request()  # a new client has no subscription yet
        self.local.start()
        if not getattr(client, "connected", True):
            self.on_disconnected("the connection closed")

    def _rebuild_from_client(self) -> None:
        client = self.client
        for part in (self.grid, self.participants_panel, self.files_panel, self.chat_panel):
            part.clear()
        self.screen_view.hide()
        audio, video = self.local.audio_on, self.local.video_on
        self.roster.reset(
            {"id": client.my_id, "username": client.username, "audio": audio, "video": video}
        )
        for p in list(dict(client.participants).values()):
            self.roster.on_joined(p, notice=False)
        for f in list(dict(client.files).values()):
            self.on_file_added(f)
        for msg in chat_history(client):
            self.chat_panel.add_message(msg, client.my_id, self.roster.names())
        self.roster.on_presenter_changed(client.presenter, notice=False)
        self.controls.set_session(client.session)
        self.setWindowTitle(f"{config.APP_NAME} - {client.session}")
        self.banner.hide()
        self._update_status()

    def _update_status(self, *_changed: object) -> None:
        connected = getattr(self.client, "connected", True) and not self.banner.isVisible()
        rtt = getattr(self.client, "rtt_s", None)
        count = len(self.roster.people)
        self.status.show_state(self.request.address, self.client.session, connected, rtt, count)
        self.controls.set_clock(time.strftime("%H:%M"))

    def on_own_media_changed(self, audio: bool, video: bool) -> None:
        self.controls.set_mic(audio)
        self.controls.set_camera(video)
        self.roster.set_own(audio=audio, video=video)

    def on_own_presenting_changed(self, on: bool) -> None:
        self.controls.set_presenting(on)
        presenter = self.roster.presenter
        self.stage.show_own_screen(on, presenter not in (None, self.client.my_id))
        self.roster.set_own(presenting=on)

    def on_remote_presenter_changed(self, name: str | None) -> None:
        self.stage.show_remote_screen(name)
        if self.local.presenting:
            self.local.stop_presenting(send=False)

    def on_chat_received(self, msg: dict) -> None:
        new = self.chat_panel.add_message(msg, self.client.my_id, self.roster.names())
        if new and msg.get("from") != self.client.my_id and not self.chat_visible():
            self.controls.set_unread(self.controls.unread + 1)

    def chat_visible(self) -> bool:
        return self.chat_panel.isVisible() and not self.isMinimized()

    def changeEvent(self, event: Any) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.WindowStateChange and self.chat_visible():
            self.controls.set_unread(0)

    def on_chat_toggled(self, shown: bool) -> None:
        self.chat_panel.setVisible(shown)
        if shown:
            self.controls.set_unread(0)
            self.chat_panel.focus_input()

    def on_file_added(self, f: dict) -> None:
        self.files_panel.upsert(f, mine=f.get("owner") == self.client.my_id)

    def on_error_received(self, code: str, message: str, re_: Any) -> None:
        route_server_error(self, code, message, re_)

    def on_disconnected(self, reason: str) -> None:
        if self.leaving:
            return
        self.local.go_offline()
        self.banner.show_lost(reason)
        self._update_status()

    def on_reconnected(self, client: ClientLike) -> None:
        self.attach_client(client)
        self.notify("Reconnected")

    def on_auto_reconnected(self, resumed: bool) -> None:
        self._rebuild_from_client()  # hides the bar; a new roster if the server restarted
        self.notify("Reconnected" if resumed else "Reconnected (joined the session again)")

    def send_subscribe(self, plan: dict[int, str | None]) -> None:
        """Receive exactly the video layers the stage shows (the client skips repeats)."""
        subscribe = getattr(self.client, "subscribe", None)
        if subscribe is not None and getattr(self.client, "connected", True):
            subscribe(plan)

    def on_repaint_tick(self) -> None:
        repaint_stage(self)

    def on_ping_tick(self) -> None:
        if getattr(self.client, "connected", False):
            try:
                self.client.ping()
            except OSError as exc:
                log.debug("ping failed: %s", exc)
        self._update_status()

    def notify(self, text: str) -> None:
        """A short notice over the stage (errors, missing devices, presenter busy)."""
        self.last_notice = text
        log.info("notice: %s", text)
        self.toast.show_text(text)

    def send_chat(self, text: str, to: list[int] | None) -> None:
        try:  # while reconnecting it waits in the client's outbox
            self.client.send_chat(text, to=to)
            self.last_chat_sent = text  # put back if the server refuses it (rate_limited)
        except (OSError, ValueError, utils.FusionError) as exc:
            self.notify(f"Could not send: {exc}")
            self.chat_panel.restore_draft(text)

    def open_settings(self) -> None:
        """Pick devices; the choice is remembered for next time."""
        if SettingsDialog(self.media, self).exec_() == QDialog.Accepted:
            self.media.save_choice(self.settings)

    def dragEnterEvent(self, event: Any) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: Any) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.transfers.upload(paths)

    def leave_session(self) -> None:
        """Stop media, say bye and join the client's threads (idempotent)."""
        if self.leaving:
            return
        self.leaving = True
        self.repaint_timer.stop()
        self.ping_timer.stop()
        self.toast.dismiss()
        self.local.close()
        if self.bridge is not None:
            self.bridge.detach()
        self.reconnector.close()
        self.transfers.close()
        self.client.leave()

    def closeEvent(self, event: Any) -> None:
        self.leave_session()
        super().closeEvent(event)


def route_server_error(win: MainWindow, code: str, message: str, re_: Any) -> None:
    """Show a server ``error`` where it belongs (notice, files panel, presenting, chat)."""
    log.info("server error %s (re %r): %r", code, re_, message)
    text = message or utils.ERROR_TEXT.get(code, code)
    if re_ in (utils.Msg.PRESENT_STOP, utils.Msg.FILE_OFFER):
        return  # already stopped; an upload's Transfer fails with this error itself
    if code == utils.Err.PRESENTER_BUSY or re_ == utils.Msg.PRESENT_START:
        win.local.on_present_refused(text)
    elif re_ == utils.Msg.FILE_DELETE:
        win.files_panel.show_error(message)
    elif code == utils.Err.RATE_LIMITED:
        win.notify(text)  # the message was not sent: give it back to be sent again
        if not win.chat_panel.input.text():
            win.chat_panel.restore_draft(win.last_chat_sent)
    else:
        win.notify(text)


def repaint_stage(win: MainWindow) -> None:
    """Paint the newest frame of every visible tile and the shared screen."""
    if win.bridge is not None:
        presenter = win.roster.presenter
        remote = None if presenter == win.client.my_id else presenter
        video, screen = win.bridge.video, win.bridge.screen
        win.stage.repaint_frames(video, screen, remote, win.local.self_view)


def interval_timer(parent: QWidget, interval_ms: int, slot: Callable[[], None]) -> QTimer:
    """A repeating timer calling ``slot`` (not started)."""
    timer = QTimer(parent)
    timer.setInterval(interval_ms)
    timer.timeout.connect(slot)
    return timer


def chat_history(client: ClientLike) -> list[dict]:
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


def build_parser() -> argparse.ArgumentParser:
    """The GUI's command line: what to fill into the join dialog."""
    p = argparse.ArgumentParser(
        prog="client.py",
        usage="client.py [--server HOST[:PORT]] [--name NAME] [--session SESSION] [Qt options]\n"
        "       client.py --headless --help",
        description="FusionMeet's desktop client: opens the join dialog, then the meeting.",
        epilog="Without a window: client.py --headless --help. "
        "Other arguments are passed to Qt (for example -platform offscreen).",
    )
    p.add_argument("--server", metavar="HOST[:PORT]", help="fill in the server's address")
    p.add_argument("--name", help="fill in your display name")
    p.add_argument("--session", help="fill in the session to join")
    return p


def main(argv: list[str] | None = None) -> int:
    """Open the join dialog, then the meeting window; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, qt_args = build_parser().parse_known_args(argv)
    except SystemExit as exc:  # --help (0) or a malformed flag (argparse said why)
        return 0 if exc.code in (0, None) else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = QApplication.instance() or QApplication([sys.argv[0], *qt_args])
    app.setApplicationName(config.APP_NAME)
    apply_theme(app)
    dialog = LoginDialog(server=args.server, name=args.name, session=args.session)
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
