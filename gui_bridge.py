"""How other threads reach the GUI: client events as queued Qt signals, worker reports, frames.

Threads: the client's network threads never touch a widget. ``ClientBridge``
subscribes to ``client.on(...)`` and re-emits every event as a Qt signal
(queued into the GUI thread). Video and screen frames are not signalled at
all: the bridge keeps only the latest JPEG per participant (``LatestFrames``),
the ``gui-frame-decoder`` thread decodes them and a GUI timer repaints from
them, so the GUI never has a queue of frames. Worker threads (the join
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

import config
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

    def present_start(self) -> None: ...

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
        self._on("meeting_changed", lambda kind, _by=None: self.meeting_changed.emit(str(kind)))
        self._on("mute_requested", lambda by, every=False: self.mute_requested.emit(by, every))
        self._on("video_stopped", lambda by: self.video_stopped.emit(str(by)))
        self._on("screen_stopped", lambda by: self.screen_stopped.emit(str(by)))
        self._on("reaction", lambda pid, emoji: self.reaction.emit(int(pid), str(emoji)))
        self._on("recording_changed", lambda on, msg=None: self.recording_changed.emit(on, msg))
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
