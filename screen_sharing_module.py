"""Screen sharing: sources (a monitor through mss, an image file), presenter flow, receiver.

``ScreenSharer`` asks the server for the presenter lock, and once granted runs
the ``screen-sender`` thread at ``SCREEN_FPS``; it stops when asked or when the
lock is lost. ``ScreenReceiver`` keeps only the latest shared frame and decodes
it on demand. mss is imported only when a monitor is captured; no display is a
``DeviceError`` with a clear message.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import config
from audio_module import DeviceError
from utils import Err, Msg
from video_module import as_bgr, decode_jpeg, encode_jpeg

log = logging.getLogger(__name__)

PRESENTER_BUSY_TEXT = "Another user is presenting"


def fit_within(
    image: np.ndarray,
    max_w: int = config.SCREEN_MAX_WIDTH_PX,
    max_h: int = config.SCREEN_MAX_HEIGHT_PX,
) -> np.ndarray:
    """Scale down (never up) to fit ``max_w`` x ``max_h``, keeping the aspect ratio."""
    h, w = image.shape[:2]
    scale = min(max_w / w, max_h / h, 1.0)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class ScreenSource(ABC):
    """Something that yields pictures of a screen as BGR images."""

    label: str = "screen"

    @abstractmethod
    def grab(self) -> np.ndarray | None:
        """The current picture, or None if none is available."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class ImageSource(ScreenSource):
    """A still image file shown as the shared screen."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.label = f"image {self.path.name!r}"
        img = cv2.imread(str(self.path), cv2.IMREAD_COLOR) if self.path.is_file() else None
        if img is None:
            raise DeviceError(f"Image {str(self.path)!r} does not exist or is not an image.")
        self.image = img

    def grab(self) -> np.ndarray | None:
        return self.image


class MonitorSource(ScreenSource):
    """A monitor captured with mss (default the primary; 0 = all together).

    ``display`` (X11 only) names another X display than ``$DISPLAY``.
    """

    def __init__(self, monitor: int | None = None, display: str | None = None) -> None:
        try:
            import mss
            import mss.exception
        except ImportError as exc:
            raise DeviceError(
                f"mss is not installed ({exc}); the screen cannot be shared."
            ) from None
        self._mss_error = mss.exception.ScreenShotError
        factory = getattr(mss, "MSS", None) or mss.mss
        try:
            self._sct = factory(display=display) if display else factory()
        except Exception as exc:  # mss raises ScreenShotError or OS errors without a display
            raise DeviceError(f"No screen to capture: {exc}") from None
        monitors = self._sct.monitors
        if monitor is None:  # the primary monitor when mss knows it, else the first
            primary = [i for i, m in enumerate(monitors) if i and m.get("is_primary")]
            monitor = primary[0] if primary else 1
        if not 0 <= monitor < len(monitors):
            self._sct.close()
            raise DeviceError(
                f"No monitor {monitor}: this display has {len(monitors) - 1} monitor(s)."
            )
        self.monitor = monitors[monitor]
        self.label = f"monitor {monitor}"
        self._owner = threading.get_ident()

    def grab(self) -> np.ndarray | None:
        try:
            shot = self._sct.grab(self.monitor)
        except self._mss_error as exc:
            log.warning("screen capture failed: %s", exc)
            return None
        return as_bgr(np.asarray(shot))

    def close(self) -> None:
        try:
            self._sct.close()
        except Exception as exc:  # closing from another thread may fail on some platforms
            log.debug("mss close: %s", exc)


class ScreenSharer:
    """The presenter flow: request the lock, send frames while holding it, stop.

    ``start()`` sends ``present_start``. On ``present_granted`` the
    ``screen-sender`` thread starts (the source is opened on that thread, since
    mss handles are per thread). ``presenter_busy`` is reported through
    ``on_status`` as "Another user is presenting". Losing the lock (a
    ``presenter_changed`` naming someone else or nobody) stops the sender.
    ``stop()`` sends ``present_stop`` and joins the thread.
    """

    def __init__(
        self,
        client: Any,
        open_source: Callable[[], ScreenSource],
        fps: float = config.SCREEN_FPS,
        quality: int = config.SCREEN_JPEG_QUALITY,
        max_w: int = config.SCREEN_MAX_WIDTH_PX,
        max_h: int = config.SCREEN_MAX_HEIGHT_PX,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self._open = open_source
        self.fps = fps
        self.quality = quality
        self.max_w, self.max_h = max_w, max_h
        self.on_status = on_status
        self.frames_sent = 0
        self.last_error: str | None = None
        self.granted = threading.Event()
        self.refused = threading.Event()
        self.stopped = threading.Event()  # the sender ended (asked, lock lost, or failure)
        # Taken by the caller of start()/stop() and the client's tcp-receiver thread
        # (grant, refusal, lock lost); guards _thread and _stop (one sender at a time).
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._requested = False
        for event, fn in self._handlers():
            client.on(event, fn)

    def _handlers(self) -> list[tuple[str, Callable[..., None]]]:
        return [
            ("present_granted", self._on_granted),
            ("error", self._on_error),
            ("presenter_changed", self._on_presenter_changed),
        ]

    def _status(self, text: str) -> None:
        log.info("screen sharing: %s", text)
        if self.on_status is not None:
            self.on_status(text)

    @property
    def sharing(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Ask the server for the presenter lock (answered through events)."""
        self.granted.clear()
        self.refused.clear()
        self.stopped.clear()
        self.last_error = None
        with self._lock:
            self._requested = True
        self.client.present_start()

    def _on_granted(self) -> None:
        with self._lock:
            if not self._requested or (self._thread is not None and self._thread.is_alive()):
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="screen-sender", daemon=True
            )
            self._thread.start()
        self.granted.set()
        self._status("You are presenting")

    def _on_error(self, code: str, message: str, re: str | None = None) -> None:
        if re == Msg.PRESENT_START or code == Err.PRESENTER_BUSY:
            with self._lock:
                self._requested = False
            self.last_error = PRESENTER_BUSY_TEXT if code == Err.PRESENTER_BUSY else message
            self.refused.set()
            self._status(self.last_error)
        elif code == Err.NOT_PRESENTER:
            self._halt()
            self._status("Screen sharing stopped: you are no longer the presenter")

    def _on_presenter_changed(self, presenter: int | None) -> None:
        if presenter != getattr(self.client, "my_id", None) and self.sharing:
            self._halt()
            self._status("Screen sharing stopped: the presenter lock was lost")

    def _halt(self) -> threading.Thread | None:
        """Stop the sender (without joining when called from a network thread)."""
        with self._lock:
            self._requested = False
            self._stop.set()
            t = self._thread
        return t

    def _run(self, stop: threading.Event) -> None:
        try:
            source = self._open()
        except DeviceError as exc:
            self.last_error = str(exc)
            self._status(str(exc))
            self.stopped.set()
            try:
                self.client.present_stop()
            except OSError:
                pass
            return
        period = 1.0 / self.fps
        next_t = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    img = source.grab()
                    if img is not None:
                        img = fit_within(img, self.max_w, self.max_h)
                        jpeg = encode_jpeg(img, self.quality)
                except (ValueError, cv2.error) as exc:
                    log.warning("screen frame skipped: %s", exc)
                    img = None
                if img is not None:
                    h, w = img.shape[:2]
                    try:
                        self.client.send_screen_frame(jpeg, w, h)
                    except OSError as exc:
                        log.info("screen sender stopped: %s", exc)
                        break
                    self.frames_sent += 1
                next_t += period
                now = time.monotonic()
                if next_t < now - period:
                    next_t = now
                stop.wait(max(0.0, next_t - now))
        finally:
            source.close()
            self.stopped.set()

    def stop(self) -> None:
        """Stop presenting: ``present_stop`` to the server, then join the sender."""
        with self._lock:
            was = self._requested or (self._thread is not None and self._thread.is_alive())
        t = self._halt()
        if was:
            try:
                self.client.present_stop()
            except OSError as exc:
                log.info("present_stop not sent: %s", exc)
        if t is not None and t is not threading.current_thread():
            t.join(config.MEDIA_THREAD_JOIN_TIMEOUT_S)

    def close(self) -> None:
        """Stop and unsubscribe from the client's events."""
        self.stop()
        off = getattr(self.client, "off", None)
        if off is not None:
            for event, fn in self._handlers():
                off(event, fn)


@dataclass
class ScreenFrame:
    """The latest shared screen frame as received."""

    sender: int
    seq: int
    width: int
    height: int
    jpeg: bytes
    count: int
    received: float  # monotonic


class ScreenReceiver:
    """Keeps only the latest shared-screen frame; decodes it on demand.

    Cleared when the presenter changes (or stops presenting).
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        # Taken by the client's tcp-receiver thread (new frames, presenter changes) and
        # readers (GUI timer, tests); guards _frame and the decode cache.
        self._lock = threading.Lock()
        self._frame: ScreenFrame | None = None
        self._count = 0
        self._decoded: np.ndarray | None = None
        self._decoded_count = -1
        self.decode_failures = 0
        client.on("screen_frame", self._on_frame)
        client.on("presenter_changed", self._on_presenter_changed)

    def _on_frame(self, sender: int, seq: int, width: int, height: int, jpeg: bytes) -> None:
        with self._lock:
            self._count += 1
            self._frame = ScreenFrame(
                sender, seq, width, height, jpeg, self._count, time.monotonic()
            )

    def _on_presenter_changed(self, presenter: int | None) -> None:
        with self._lock:
            if self._frame is not None and self._frame.sender != presenter:
                self._frame = None
                self._decoded = None

    @property
    def frame(self) -> ScreenFrame | None:
        """The latest frame's metadata and JPEG (None when nobody is presenting)."""
        with self._lock:
            return self._frame

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def latest(self) -> np.ndarray | None:
        """The latest shared screen as a BGR image (decoded once per new frame)."""
        with self._lock:
            f = self._frame
            if f is None:
                return None
            if self._decoded_count == f.count:
                return self._decoded
        img = decode_jpeg(f.jpeg)
        if img is None:
            self.decode_failures += 1
        with self._lock:
            if self._frame is f:
                self._decoded, self._decoded_count = img, f.count
        return img

    def close(self) -> None:
        """Unsubscribe and forget the frame."""
        off = getattr(self.client, "off", None)
        if off is not None:
            off("screen_frame", self._on_frame)
            off("presenter_changed", self._on_presenter_changed)
        with self._lock:
            self._frame = None
