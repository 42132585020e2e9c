"""The window's controllers (transfers, reconnection, our devices, roster), reporting by signals.

None of them holds a widget: each says what happened through its Qt signals
and the window connects those to panel methods. Work on other threads (the
transfers' own threads, ``gui-reconnect``) reports through ``WorkerSignals``,
connected queued, so every slot here runs on the GUI thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PyQt5.QtCore import QObject, Qt, QTimer, pyqtSignal

import config
import file_sharing_module
from gui_bridge import ClientLike, WorkerSignals, error_code_and_message
from gui_media import MediaController
from login_dialog import JoinRequest, connect_client, explain_join_error

log = logging.getLogger(__name__)

# How long closing waits for each cancelled transfer's thread.
TRANSFER_JOIN_TIMEOUT_S = 2.0
# How long closing waits for the reconnect worker (it ends within its connect timeout).
RECONNECT_JOIN_TIMEOUT_S = config.CONNECT_TIMEOUT_S + 2


@dataclass(eq=False)
class _Job:
    """One running transfer as the tracker knows it (only the GUI thread touches it)."""

    kind: str  # "upload" or "download"
    name: str
    file_id: str = ""
    done: int = 0
    total: int = 0
    transfer: Any = None  # file_sharing_module.Transfer


class TransferTracker(QObject):
    """Starts uploads and downloads (each on its own thread) and reports them as signals."""

    uploads_progressed = pyqtSignal(list, int, int)  # names of running uploads, done, total
    download_progressed = pyqtSignal(str, int, int)  # file id, bytes done, total (0: unknown)
    download_finished = pyqtSignal(str, object)  # file id, saved Path or None
    download_failed = pyqtSignal(str, str)  # file id, what to tell the person
    error_occurred = pyqtSignal(str)  # what to tell the person ("" clears it)

    def __init__(
        self,
        download_dir: Path,
        upload: Callable[..., Any] = file_sharing_module.upload,
        download: Callable[..., Any] = file_sharing_module.download,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.client: ClientLike | None = None
        self.download_dir = download_dir
        self._upload = upload
        self._download = download
        self._jobs: list[_Job] = []
        self._closed = threading.Event()
        # Queued even when a transfer reports on the GUI thread: a job is listed before
        # any report about it is handled.
        self._reports = WorkerSignals(self)
        self._reports.progressed.connect(self._on_progressed, Qt.QueuedConnection)
        self._reports.finished.connect(self._on_finished, Qt.QueuedConnection)

    @property
    def running(self) -> int:
        return len(self._jobs)

    def _callbacks(self, job: _Job) -> dict[str, Callable[..., None]]:
        """The transfer's on_progress/on_done, run on its thread: they only emit."""

        def progressed(done: int, total: int) -> None:
            if not self._closed.is_set():
                self._reports.progressed.emit(job, (int(done), int(total)))

        def finished(transfer: Any) -> None:
            if not self._closed.is_set():
                self._reports.finished.emit(job, transfer)

        return {"on_progress": progressed, "on_done": finished}

    def upload(self, paths: list[str]) -> None:
        """Share each file."""
        self.error_occurred.emit("")
        for path in paths:
            p = Path(path)
            if not p.is_file():
                self.error_occurred.emit(f"{p.name} is not a file.")
                continue
            job = _Job("upload", p.name, total=p.stat().st_size)
            try:
                job.transfer = self._upload(self.client, str(p), **self._callbacks(job))
            except Exception as exc:
                self.error_occurred.emit(f"Could not share {p.name}: {exc}")
                continue
            self._jobs.append(job)
        self._report_uploads()

    def download(self, file: dict) -> None:
        """Fetch a shared file (a dict as in ``file_added``) into the download folder."""
        fid, name = str(file.get("id", "")), str(file.get("name"))
        job = _Job("download", name, fid)
        try:
            self.download_dir.mkdir(parents=True, exist_ok=True)
            job.transfer = self._download(
                self.client, fid, str(self.download_dir), **self._callbacks(job)
            )
        except Exception as exc:
            self.error_occurred.emit(f"Could not download {name}: {exc}")
            return
        self._jobs.append(job)
        self.download_progressed.emit(fid, 0, int(file.get("size", 0)))

    def delete(self, fid: str) -> None:
        """Delete one of our shared files for everyone."""
        try:
            self.client.delete_file(fid)
        except (OSError, ValueError) as exc:
            self.error_occurred.emit(f"Could not delete: {exc}")

    def _on_progressed(self, job: _Job, progress: tuple[int, int]) -> None:
        if job not in self._jobs:
            return  # a late report of a finished transfer
        job.done, job.total = progress[0], progress[1] or job.total
        if job.kind == "upload":
            self._report_uploads()
        else:
            self.download_progressed.emit(job.file_id, job.done, job.total)

    def _on_finished(self, job: _Job, transfer: Any) -> None:
        if job not in self._jobs:
            return
        self._jobs.remove(job)
        err = str(transfer.error) if getattr(transfer, "error", None) else None
        if job.kind == "upload":
            if err:
                self.error_occurred.emit(f"Could not share {job.name}: {err}")
            self._report_uploads()
        elif err:
            self.download_failed.emit(job.file_id, f"Could not download {job.name}: {err}")
        else:
            path = getattr(transfer, "path", None)
            self.download_finished.emit(job.file_id, Path(path) if path else None)

    def _report_uploads(self) -> None:
        uploads = [j for j in self._jobs if j.kind == "upload"]
        self.uploads_progressed.emit(
            [j.name for j in uploads], sum(j.done for j in uploads), sum(j.total for j in uploads)
        )

    def close(self) -> None:
        """Cancel every transfer and wait for their threads (bounded)."""
        self._closed.set()
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.transfer.cancel()
        for job in jobs:
            try:
                job.transfer.wait(TRANSFER_JOIN_TIMEOUT_S)
            except Exception as exc:
                log.debug("transfer wait: %s", exc)


class ReconnectController(QObject):
    """Reconnection as the person sees it, automatic and by hand.

    Automatic (issue 13): ``watch(client)`` follows the client's own reconnect
    thread (its ``reconnecting``/``reconnected``/``disconnected`` events) and says
    ``auto_started``, ``auto_elapsed`` once a second, and ``auto_finished``. By
    hand (the Reconnect button after the client gave up): ``reconnect`` joins the
    same session again on the ``gui-reconnect`` thread.
    """

    reconnect_started = pyqtSignal()
    reconnected = pyqtSignal(object)  # the new, connected client
    reconnect_failed = pyqtSignal(str)  # what to tell the person
    auto_started = pyqtSignal(str)  # why the connection broke
    auto_elapsed = pyqtSignal(int)  # whole seconds since it broke
    auto_finished = pyqtSignal(bool)  # back: True resumed the same place, False joined anew

    def __init__(
        self,
        connect: Callable[[JoinRequest], tuple[ClientLike, dict]] = connect_client,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._connect = connect
        self._thread: threading.Thread | None = None
        # Set by close(): a join that succeeds afterwards is left at once.
        self._closed = threading.Event()
        self._reports = WorkerSignals(self)
        self._reports.finished.connect(self._on_finished, Qt.QueuedConnection)
        self._reports.failed.connect(self._on_failed, Qt.QueuedConnection)
        # The watched client's events, from its network threads, delivered queued.
        self._auto = WorkerSignals(self)
        self._auto.progressed.connect(self._on_auto_event, Qt.QueuedConnection)
        self._watched: ClientLike | None = None
        self._since: float | None = None
        self._ticker = QTimer(self)
        self._ticker.setInterval(config.GUI_RECONNECT_TICK_MS)
        self._ticker.timeout.connect(self._tick)

    def watch(self, client: ClientLike) -> None:
        """Follow ``client``'s automatic reconnection (events of earlier clients are dropped)."""
        self._watched = client
        self._stop_ticker()
        if not hasattr(client, "on"):
            return
        for event in ("reconnecting", "reconnected", "disconnected"):
            client.on(
                event, lambda arg=None, _e=event: self._auto.progressed.emit(client, (_e, arg))
            )

    @property
    def auto_running(self) -> bool:
        return self._since is not None

    def _on_auto_event(self, client: ClientLike, what: tuple[str, Any]) -> None:
        if client is not self._watched or self._closed.is_set():
            return
        event, arg = what
        if event == "reconnecting":
            self._since = time.monotonic()
            self._ticker.start()
            self.auto_started.emit(str(arg or ""))
            self.auto_elapsed.emit(0)
        elif event == "reconnected":
            self._stop_ticker()
            self.auto_finished.emit(bool(isinstance(arg, dict) and arg.get("resumed")))
        else:  # disconnected: the client gave up; the window shows the Reconnect button
            self._stop_ticker()

    def _tick(self) -> None:
        if self._since is not None:
            self.auto_elapsed.emit(int(time.monotonic() - self._since))

    def _stop_ticker(self) -> None:
        self._since = None
        self._ticker.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def reconnect(self, old: ClientLike, request: JoinRequest) -> None:
        """Leave ``old`` and join ``request`` again (no-op while a try is running)."""
        if self.running or self._closed.is_set():
            return
        self.reconnect_started.emit()
        self._thread = threading.Thread(
            target=self._work, args=(old, request), name="gui-reconnect", daemon=True
        )
        self._thread.start()

    def _work(self, old: ClientLike, request: JoinRequest) -> None:
        try:
            old.leave()
        except Exception as exc:
            log.debug("leaving the old client: %s", exc)
        try:
            client, _welcome = self._connect(request)
        except Exception as exc:
            code, message = error_code_and_message(exc)
            self._reports.failed.emit(request, code, message)
            return
        self._reports.finished.emit(request, client)

    def _on_finished(self, request: JoinRequest, client: ClientLike) -> None:
        if self._closed.is_set():
            client.leave()
            return
        self.reconnected.emit(client)

    def _on_failed(self, request: JoinRequest, code: str, message: str) -> None:
        self.reconnect_failed.emit(
            explain_join_error(
                code,
                message,
                address=request.address,
                username=request.username,
                session=request.session,
            )
        )

    def close(self) -> None:
        """No more tries; wait for a running one (it ends within its connect timeout)."""
        self._closed.set()
        self._stop_ticker()
        if self._thread is not None:
            self._thread.join(RECONNECT_JOIN_TIMEOUT_S)


class LocalMedia(QObject):
    """Our microphone, camera and screen: starts and stops the devices and tells the server."""

    media_changed = pyqtSignal(bool, bool)  # microphone on, camera on
    present_requested = pyqtSignal()  # asked the server for the presenter lock
    presenting_changed = pyqtSignal(bool)
    notice_issued = pyqtSignal(str)  # what to tell the person

    def __init__(
        self, media: MediaController, audio: bool, video: bool, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.media = media
        self.client: ClientLike | None = None
        self.audio_on, self.video_on, self.presenting = audio, video, False
        self.offline = False  # the connection is lost: the toggles do nothing
        self.closed = False  # leaving: a device stopping is no longer news
        media.events.device_failed.connect(self.on_device_failed)

    def _connected(self) -> bool:
        return bool(getattr(self.client, "connected", False))

    def attach(self, client: ClientLike) -> None:
        self.client = client
        self.offline = False
        self.media.attach(client)

    def set_volume(self, pid: int, percent: int, muted: bool) -> None:
        """What I hear of ``pid`` (0-200 %, or muted for me): the server mixes it for me."""
        setter = getattr(self.client, "set_audio_gain", None)
        if setter is None or not self._connected():
            return
        try:
            setter(pid, percent, muted)
        except OSError as exc:  # the connection is going: the banner says so
            log.info("volume not sent: %s", exc)

    def start(self) -> None:
        """Start the speaker and the wanted devices, and tell the server our media."""
        speaker_err = self.media.start_speaker()
        self.apply(self.audio_on, self.video_on, True, [speaker_err] if speaker_err else [])

    def apply(
        self, audio: bool, video: bool, initial: bool = False, problems: list[str] | None = None
    ) -> None:
        """Turn the devices on or off; a device that cannot start stays off, with a notice."""
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
            self.notice_issued.emit("\n".join(problems))
        changed = (audio, video) != (self.audio_on, self.video_on)
        self.audio_on, self.video_on = audio, video
        self.media_changed.emit(audio, video)
        if (changed or initial) and self._connected():
            self.client.set_media(audio, video)

    def toggle_mic(self) -> None:
        if not self.offline:
            self.apply(not self.audio_on, self.video_on)

    def toggle_camera(self) -> None:
        if not self.offline:
            self.apply(self.audio_on, not self.video_on)

    def toggle_present(self) -> None:
        if self.offline:
            return
        if self.presenting:
            self.stop_presenting(send=True)
            return
        self.present_requested.emit()
        self.media.request_present()

    def on_present_granted(self) -> None:
        err = self.media.start_screen()
        if err:
            self.notice_issued.emit(err)
            self.stop_presenting(send=True)
            return
        self._set_presenting(True)
        self.notice_issued.emit("You are presenting your screen")

    def on_present_refused(self, text: str) -> None:
        self._set_presenting(False)
        self.notice_issued.emit(text)

    def stop_presenting(self, send: bool) -> None:
        self.media.stop_screen(send=send and self._connected())
        self._set_presenting(False)

    def _set_presenting(self, on: bool) -> None:
        self.presenting = on
        self.presenting_changed.emit(on)

    def on_device_failed(self, kind: str, reason: str) -> None:
        """A device stopped under us (unplugged, busy): say so and show it as off."""
        if self.closed:
            return
        self.notice_issued.emit(f"{kind.capitalize()} stopped: {reason}")
        if kind == "mic" and self.audio_on:
            self.apply(False, self.video_on)
        elif kind == "camera" and self.video_on:
            self.apply(self.audio_on, False)
        elif kind == "screen":
            self.stop_presenting(send=True)

    def self_view(self) -> Any:
        """(version, image) of our camera's latest frame while it is on, else None."""
        return self.media.self_view() if self.video_on else None

    def go_offline(self) -> None:
        """The connection is lost: stop every device."""
        self.offline = True
        self.media.stop()
        self._set_presenting(False)

    def close(self) -> None:
        self.closed = True
        self.media.stop()


class Roster(QObject):
    """Who is in the session and who presents, from the client's events; says what changed.

    People are dicts as on the wire (``id``, ``username``, ``audio``, ``video``);
    ``person_shown`` carries a copy with ``presenting`` filled in.
    """

    person_shown = pyqtSignal(int, str, bool, object)  # id, name, is it us, person dict
    person_left = pyqtSignal(int)
    notice_issued = pyqtSignal(str)  # a line for the chat ("Bob joined")
    recipients_changed = pyqtSignal(object)  # [(id, name)] of the others
    count_changed = pyqtSignal(int)
    # Someone else presents (their name) or nobody does any more (None).
    remote_presenter_changed = pyqtSignal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.people: dict[int, dict] = {}
        self.my_id: int | None = None
        self.presenter: int | None = None
        self.self_presenting = False

    def reset(self, me: dict) -> None:
        """A new session view: only us, nobody presenting."""
        self.people = {int(me["id"]): dict(me)}
        self.my_id = int(me["id"])
        self.presenter = None
        self._show(self.my_id)

    def names(self) -> dict[int, str]:
        return {pid: str(p.get("username", "?")) for pid, p in self.people.items()}

    def _show(self, pid: int) -> None:
        p = self.people[pid]
        is_self = pid == self.my_id
        presenting = pid == self.presenter or (is_self and self.self_presenting)
        name = str(p.get("username", "?"))
        self.person_shown.emit(pid, name, is_self, {**p, "presenting": presenting})
        self._others_changed()

    def _others_changed(self) -> None:
        others = self.names()
        others.pop(self.my_id, None)
        self.recipients_changed.emit(list(others.items()))
        self.count_changed.emit(len(self.people))

    def on_joined(self, p: dict, notice: bool = True) -> None:
        pid = int(p.get("id", 0))
        if pid == self.my_id or pid <= 0:
            return
        new = pid not in self.people
        self.people[pid] = dict(p)
        self._show(pid)
        if new and notice:
            self.notice_issued.emit(f"{p.get('username', '?')} joined")

    def on_left(self, pid: int, username: str) -> None:
        if self.people.pop(pid, None) is None:
            return
        self.person_left.emit(pid)
        self._others_changed()
        self.notice_issued.emit(f"{username} left")

    def on_updated(self, p: dict) -> None:
        pid = int(p.get("id", 0))
        if pid == self.my_id:
            return  # our own state is what we set
        if pid not in self.people:
            self.on_joined(p)
            return
        self.people[pid].update(p)
        self._show(pid)

    def set_own(self, **state: Any) -> None:
        """Our own audio/video (or, with presenting=, our presenting) changed."""
        if "presenting" in state:
            self.self_presenting = bool(state.pop("presenting"))
        if self.my_id in self.people:
            self.people[self.my_id].update(state)
            self._show(self.my_id)

    def on_presenter_changed(self, presenter: int | None, notice: bool = True) -> None:
        old, self.presenter = self.presenter, presenter if isinstance(presenter, int) else None
        if old is not None and old in self.people:
            self._show(old)
        if self.presenter is None:
            self.remote_presenter_changed.emit(None)
            if notice and old is not None and old != self.my_id and old in self.people:
                name = self.people[old].get("username", "Someone")
                self.notice_issued.emit(f"{name} stopped presenting")
            return
        if self.presenter in self.people:
            self._show(self.presenter)
        if self.presenter != self.my_id:
            name = str(self.people.get(self.presenter, {}).get("username", "Someone"))
            self.remote_presenter_changed.emit(name)
            if notice and old != self.presenter:
                self.notice_issued.emit(f"{name} started presenting")


class MeetingControls(QObject):
    """Meeting controls (issue 14) for the window: our hand, the marks, the host's toasts.

    Reads ``client.meeting`` when the bridge says it changed and reports by signals;
    it never touches a panel's widgets.
    """

    marks_changed = pyqtSignal(object, object)  # hosts, hands (in the order raised)
    hand_changed = pyqtSignal(bool)  # our own hand
    recording_changed = pyqtSignal(bool)
    notice_issued = pyqtSignal(str)  # a toast ("Alice asked you to mute")
    mic_off_requested = pyqtSignal()  # a host asked us to mute: turn the device off
    camera_off_requested = pyqtSignal()
    screen_off_requested = pyqtSignal()
    host_mode_changed = pyqtSignal(bool, bool, bool, bool)  # host, locked, ask, recording
    lobby_changed = pyqtSignal(object)  # [{ticket, username, from_removed_address}]
    spotlight_changed = pyqtSignal(object)
    pin_requested = pyqtSignal(int)  # the one pin (client-only): VideoGrid.toggle_pin

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client: Any = None

    def attach(self, client: Any) -> None:
        self.client = client
        self.refresh()

    def refresh(self, _kind: str = "") -> None:
        meeting = dict(getattr(self.client, "meeting", None) or {})
        hosts, hands = list(meeting.get("hosts", [])), list(meeting.get("hands", []))
        self.marks_changed.emit(hosts, hands)
        self.hand_changed.emit(getattr(self.client, "my_id", None) in hands)
        self.recording_changed.emit(bool(meeting.get("recording", False)))
        me = getattr(self.client, "my_id", None)
        self.host_mode_changed.emit(
            me in hosts,
            bool(meeting.get("locked")),
            bool(meeting.get("ask_to_join")),
            bool(meeting.get("recording")),
        )
        self.lobby_changed.emit(list(meeting.get("lobby", [])) if me in hosts else [])
        self.spotlight_changed.emit(meeting.get("spotlight"))

    def on_person_action(self, action: str, pid: int) -> None:
        """The participants panel's context menu (host actions are checked by the server)."""
        c = self.client
        if action == "pin":
            self.pin_requested.emit(pid)
            return
        if c is None or not getattr(c, "connected", False):
            return
        if action == "spotlight":
            c.spotlight(None if c.meeting.get("spotlight") == pid else pid)
        elif action == "mute":
            c.ask_mute(pid)
        else:  # stop_video, stop_screen, make_host, lower_hand, remove
            getattr(c, action)(pid)

    def on_meeting_action(self, action: str) -> None:
        c = self.client
        if c is None or not getattr(c, "connected", False):
            return
        if action == "mute_all":
            c.ask_mute(None)
        elif action in ("ask_on", "ask_off"):
            c.set_ask_to_join(action == "ask_on")
        else:  # lock, unlock, start_recording, stop_recording, end_meeting
            getattr(c, action)()

    def on_lobby_answer(self, ticket: int, admit: bool) -> None:
        c = self.client
        if c is not None and getattr(c, "connected", False):
            (c.admit if admit else c.decline)(ticket)

    def toggle_hand(self) -> None:
        c = self.client
        if c is None or not getattr(c, "connected", False):
            return
        if c.my_id in c.meeting.get("hands", []):
            c.lower_hand()
        else:
            c.raise_hand()

    def on_mute_requested(self, by: str, everyone: bool) -> None:
        self.mic_off_requested.emit()
        who = "everyone" if everyone else "you"
        self.notice_issued.emit(f"{by} asked {who} to mute")

    def on_video_stopped(self, by: str) -> None:
        self.camera_off_requested.emit()
        self.notice_issued.emit(f"{by} turned your camera off")

    def on_screen_stopped(self, by: str) -> None:
        self.screen_off_requested.emit()
        self.notice_issued.emit(f"{by} stopped your screen share")

    def on_recording_changed(self, on: bool, message: object) -> None:
        self.recording_changed.emit(bool(on))
        text = "This meeting is being recorded" if on else "Recording stopped"
        self.notice_issued.emit(f"{text}: {message}" if message else text)
