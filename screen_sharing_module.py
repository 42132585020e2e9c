"""Screen sharing: sources (a monitor through mss, an image file), presenter flow, receiver.

``ScreenSharer`` asks the server for the presenter lock, and once granted runs
the ``screen-sender`` thread at ``SCREEN_VP8_FPS``, encoding the screen as VP8
tuned for text (up to 1920x1080; a new slide is a keyframe, a still screen
costs almost nothing); it stops when asked or when the lock is lost.
``ScreenReceiver`` decodes every frame in order and keeps the latest picture; a
gap or a decode error asks the presenter for a keyframe. mss is imported only
when a monitor is captured; no display is a ``DeviceError`` with a clear message.
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
import video_codec
from audio_module import DeviceError
from utils import Err, Msg
from video_module import as_bgr

log = logging.getLogger(__name__)

PRESENTER_BUSY_TEXT = "Another user is presenting"


def fit_within(
    image: np.ndarray,
    max_w: int = config.SCREEN_VP8_MAX_WIDTH_PX,
    max_h: int = config.SCREEN_VP8_MAX_HEIGHT_PX,
    even: bool = False,
) -> np.ndarray:
    """Scale down (never up) to fit ``max_w`` x ``max_h``, keeping the aspect ratio.

    With ``even``, both sides are made even (VP8 needs it), cropping one pixel.
    """
    h, w = image.shape[:2]
    scale = min(max_w / w, max_h / h, 1.0)
    if scale < 1.0:
        size = (max(2, round(w * scale)), max(2, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if even:
        h, w = image.shape[:2]
        image = image[: h - h % 2, : w - w % 2]
    return image


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
        fps: float = config.SCREEN_VP8_FPS,
        max_w: int = config.SCREEN_VP8_MAX_WIDTH_PX,
        max_h: int = config.SCREEN_VP8_MAX_HEIGHT_PX,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self._open = open_source
        self.fps = fps
        self.max_w, self.max_h = max_w, max_h
        self.on_status = on_status
        self.frames_sent = 0
        self.keyframes_sent = 0
        self.bytes_sent = 0
        self.capture_times: dict[int, float] = {}  # seq -> monotonic capture time (last 64)
        self._keyframe_wanted = threading.Event()  # set by the tcp-receiver thread
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
            ("keyframe_request", self._on_keyframe_request),
        ]

    def _on_keyframe_request(self, layer: str) -> None:
        if layer == config.SCREEN_LAYER:
            self._keyframe_wanted.set()

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
        try:
            video_codec.load_av()
        except video_codec.CodecUnavailable as exc:
            source.close()
            self.last_error = f"Screen sharing needs the VP8 codec: {exc}"
            self._status(self.last_error)
            self.stopped.set()
            try:
                self.client.present_stop()
            except OSError:
                pass
            return
        period = 1.0 / self.fps
        next_t = time.monotonic()
        encoder: video_codec.Vp8Encoder | None = None
        seq = 0
        try:
            while not stop.is_set():
                try:
                    img = source.grab()
                    captured = time.monotonic()
                    frame = None
                    if img is not None:
                        img = fit_within(img, self.max_w, self.max_h, even=True)
                        h, w = img.shape[:2]
                        if encoder is None or (encoder.width, encoder.height) != (w, h):
                            if encoder is not None:
                                encoder.close()
                            encoder = video_codec.Vp8Encoder(
                                w, h, round(self.fps), config.SCREEN_VP8_BITRATE_BPS, "screen"
                            )
                        if self._keyframe_wanted.is_set():
                            self._keyframe_wanted.clear()
                            encoder.force_keyframe()
                        frame = encoder.encode(img)
                except (ValueError, cv2.error) as exc:
                    log.warning("screen frame skipped: %s", exc)
                    frame = None
                if frame is not None:
                    seq += 1
                    try:
                        self.client.send_screen_frame(
                            frame.data, frame.width, frame.height, frame.keyframe
                        )
                    except OSError as exc:
                        log.info("screen sender stopped: %s", exc)
                        break
                    self.capture_times[seq] = captured
                    self.capture_times.pop(seq - 64, None)
                    self.frames_sent += 1
                    self.keyframes_sent += frame.keyframe
                    self.bytes_sent += len(frame.data)
                next_t += period
                now = time.monotonic()
                if next_t < now - period:
                    next_t = now
                stop.wait(max(0.0, next_t - now))
        finally:
            if encoder is not None:
                encoder.close()
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
    """The latest shared screen frame as received (its VP8 bytes)."""

    sender: int
    seq: int
    width: int
    height: int
    data: bytes
    keyframe: bool
    count: int
    received: float  # monotonic


class ScreenReceiver:
    """Decodes the presenter's VP8 frames in order; keeps the latest good picture.

    Runs on the client's tcp-receiver thread (frames arrive there, in order). A
    gap in ``seq`` or a decode error means nothing is shown until the next
    keyframe, which is requested from the presenter (the server throttles it).
    Cleared when the presenter changes. ``on_picture(sender, version, image)``
    (optional) is called for every new picture.
    """

    def __init__(
        self, client: Any, on_picture: Callable[[int, int, np.ndarray], None] | None = None
    ) -> None:
        self.client = client
        self.on_picture = on_picture
        # Taken by the client's tcp-receiver thread (new frames, presenter changes) and
        # readers (GUI, tests); guards _frame, _picture and the counters. A leaf lock.
        self._lock = threading.Lock()
        self._frame: ScreenFrame | None = None
        self._picture: np.ndarray | None = None
        self._picture_seq: int | None = None
        self._count = 0
        self.pictures = 0
        self.decode_failures = 0
        self.codec_error: str | None = None
        self._decoder: Any = None  # used by the tcp-receiver thread only
        self._decoder_sender: int | None = None
        self.picture_times: dict[int, float] = {}  # seq -> monotonic time shown (last 64)
        client.on("screen_frame", self._on_frame)
        client.on("presenter_changed", self._on_presenter_changed)

    def _on_frame(
        self, sender: int, seq: int, width: int, height: int, data: bytes, keyframe: bool = False
    ) -> None:
        with self._lock:
            self._count += 1
            self._frame = ScreenFrame(
                sender, seq, width, height, data, keyframe, self._count, time.monotonic()
            )
        image = self._decode(sender, seq, data)
        if image is None:
            return
        now = time.monotonic()
        with self._lock:
            self._picture, self._picture_seq = image, seq
            self.pictures += 1
            version = self.pictures
            self.picture_times[seq] = now
            self.picture_times.pop(seq - 64, None)
        if self.on_picture is not None:
            self.on_picture(sender, version, image)

    def _decode(self, sender: int, seq: int, data: bytes) -> np.ndarray | None:
        if self.codec_error is not None:
            return None
        if self._decoder is None or self._decoder_sender != sender:
            try:
                self._decoder = video_codec.Vp8Decoder()
            except video_codec.CodecUnavailable as exc:
                self.codec_error = str(exc)
                log.warning("the shared screen cannot be shown: %s", exc)
                return None
            self._decoder_sender = sender
        image = self._decoder.decode(data, seq)
        if image is None and self._decoder.needs_keyframe:
            self.decode_failures += 1
            try:
                self.client.request_keyframe(sender, config.SCREEN_LAYER)
            except (OSError, AttributeError) as exc:
                log.debug("screen keyframe request not sent: %s", exc)
        return image

    def _on_presenter_changed(self, presenter: int | None) -> None:
        with self._lock:
            if self._frame is not None and self._frame.sender != presenter:
                self._frame = None
                self._picture = None
                self._decoder = None

    @property
    def frame(self) -> ScreenFrame | None:
        """The latest frame's metadata and bytes (None when nobody is presenting)."""
        with self._lock:
            return self._frame

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def latest(self) -> np.ndarray | None:
        """The latest good picture of the shared screen (BGR), or None."""
        with self._lock:
            return self._picture

    def close(self) -> None:
        """Unsubscribe and forget the frame."""
        off = getattr(self.client, "off", None)
        if off is not None:
            off("screen_frame", self._on_frame)
            off("presenter_changed", self._on_presenter_changed)
        with self._lock:
            self._frame = None
            self._picture = None
