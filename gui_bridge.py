"""How other threads reach the GUI: client events as queued Qt signals, worker reports, frames.

Threads: the client's network threads never touch a widget. ``ClientBridge``
subscribes to ``client.on(...)`` and re-emits every event as a Qt signal
(queued into the GUI thread). Video and screen frames are not signalled at
all: camera video is assembled and VP8-decoded by the ``video-decoder`` thread
of a ``video_module.VideoReceiver``, which stores the latest good picture per
participant as a QImage (``LatestFrames.store_decoded``); the shared screen's
VP8 frames are decoded in order by a ``screen_sharing_module.ScreenReceiver``
on the client's tcp-receiver thread, stored the same way. A GUI timer repaints
from both, so the GUI never has a queue of frames. Worker threads (the join
dialog's, reconnection, file transfers) report through ``WorkerSignals``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from PyQt5.QtCore import QObject, pyqtSignal
from PyQt5.QtGui import QImage

import utils

log = logging.getLogger(__name__)


class ClientLike(Protocol):
    """What the GUI uses of ``client.ConferenceClient`` (tests may pass stand-ins)."""

    my_id: int
    username: str
    session: str
    participants: dict[int, dict]
    presenter: int | None
    files: dict[str, dict]
    chat: Any
    connected: bool
    rtt_s: float | None
    media_params: dict

    def on(self, event: str, callback: Callable[..., Any]) -> None: ...

    def send_chat(self, message: str, to: list[int] | None = None) -> None: ...

    def set_media(self, audio: bool, video: bool) -> None: ...

    def subscribe(self, streams: dict[int, str | None]) -> bool: ...

    def present_start(self) -> None: ...

    def set_audio_gain(self, participant_id: int, percent: int, muted: bool = False) -> None: ...

    def present_stop(self) -> None: ...

    def delete_file(self, file_id: str) -> None: ...

    def ping(self) -> None: ...

    def leave(self) -> None: ...


def error_code_and_message(exc: BaseException) -> tuple[str, str]:
    """The (code, message) of a JoinError-like error, or "unreachable" for socket errors."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code, str(getattr(exc, "message", "") or exc)
    if isinstance(exc, (OSError, TimeoutError)):
        return utils.LocalErr.UNREACHABLE, str(exc)
    return utils.LocalErr.UNEXPECTED, str(exc) or type(exc).__name__


class WorkerSignals(QObject):
    """A worker thread's reports to the GUI thread: emitted on the worker, delivered queued.

    ``job`` says what a report is about (a transfer, a join request, a list
    generation), so one receiver can tell its workers apart. Give it a parent
    that lives in the GUI thread so the slots run there.
    """

    progressed = pyqtSignal(object, object)  # job, what is known so far
    finished = pyqtSignal(object, object)  # job, result
    failed = pyqtSignal(object, str, str)  # job, code, message


class LatestFrames:
    """The newest decoded picture per key (participant id) as a QImage.

    Decoding threads ``store_decoded`` (a newer version replaces an older one);
    the GUI timer ``get``s it. So the GUI thread neither queues frames nor
    decodes them. ``_lock`` (taken briefly by both) guards ``_decoded``, which
    holds at most one entry per participant.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decoded: dict[int, tuple[int, float, QImage | None, Any]] = {}

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
            self._decoded.pop(key, None)


def bgr_to_qimage(image: Any) -> QImage:
    """A QImage (own copy) of a BGR numpy picture."""
    h, w = image.shape[:2]
    return QImage(image.data, w, h, image.strides[0], QImage.Format_BGR888).copy()


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
    # --- meeting controls (issue 14) ---
    meeting_changed = pyqtSignal(str)  # the message type; client.meeting is current
    mute_requested = pyqtSignal(str, bool)  # host's name, everyone
    video_stopped = pyqtSignal(str)  # host's name
    screen_stopped = pyqtSignal(str)  # host's name
    reaction = pyqtSignal(int, str)  # sender id, emoji
    recording_changed = pyqtSignal(bool, object)  # recording, message or None

    def __init__(self, client: ClientLike, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.video = LatestFrames()
        self.screen = LatestFrames()
        # Set when this bridge's client is replaced: late events of the old one are dropped.
        self._detached = threading.Event()
        self._subscribe()
        self.receiver: Any = None  # video_module.VideoReceiver: the video-decoder thread
        self.screen_receiver: Any = None
        try:
            import screen_sharing_module  # OpenCV and (for decoding) PyAV inside
            import video_module

            self.receiver = video_module.VideoReceiver(client, on_picture=self._on_picture)
            self.screen_receiver = screen_sharing_module.ScreenReceiver(
                client, on_picture=self._on_screen_picture
            )
        except Exception as exc:  # a broken OpenCV install: no remote video, no crash
            log.warning("received video cannot be shown: %s", exc)

    @property
    def decoder(self) -> Any:
        """The thread decoding remote video (``running`` tells whether it still runs)."""
        return self.receiver

    def _on_screen_picture(self, sender: int, version: int, image: Any) -> None:
        """On the tcp-receiver thread: the newest picture of the shared screen."""
        if not self._detached.is_set():
            h, w = image.shape[:2]
            entry = (version, time.monotonic(), bgr_to_qimage(image), (w, h))
            self.screen.store_decoded(int(sender), entry)

    def _on_picture(self, pid: int, version: int, image: Any) -> None:
        """On the video-decoder thread: the newest good picture of ``pid``."""
        if not self._detached.is_set():
            self.video.store_decoded(
                int(pid), (version, time.monotonic(), bgr_to_qimage(image), None)
            )

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
        self._on("meeting_changed", lambda kind, _by=None: self.meeting_changed.emit(str(kind)))
        self._on("mute_requested", lambda by, every=False: self.mute_requested.emit(by, every))
        self._on("video_stopped", lambda by: self.video_stopped.emit(str(by)))
        self._on("screen_stopped", lambda by: self.screen_stopped.emit(str(by)))
        self._on("reaction", lambda pid, emoji: self.reaction.emit(int(pid), str(emoji)))
        self._on("recording_changed", lambda on, msg=None: self.recording_changed.emit(on, msg))

    def _left(self, pid: int, name: str) -> None:
        self.video.forget(int(pid))
        self.screen.forget(int(pid))
        self.participant_left.emit(int(pid), str(name))

    def detach(self) -> None:
        """Stop relaying this client's events (it is being replaced or closed)."""
        self._detached.set()
        for receiver in (self.receiver, self.screen_receiver):
            if receiver is not None:
                receiver.close()
