"""Client video: sources (camera, file, test pattern), JPEG codec, sender thread, receiver.

A camera, a video file or a generated test pattern serve one ``VideoSource``.
Frames are scaled to the session size, JPEG-encoded with OpenCV and sent by the
``video-sender`` thread at the session rate. The receiver keeps only the latest
JPEG per participant and decodes it when the GUI (or a test) asks.
"""

from __future__ import annotations

import logging
import struct
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

log = logging.getLogger(__name__)

__all__ = [
    "CameraSource",
    "DeviceError",
    "TestPatternSource",
    "VideoFileSource",
    "VideoReceiver",
    "VideoSender",
    "VideoSource",
    "decode_jpeg",
    "encode_jpeg",
    "fit_frame",
    "jpeg_size",
    "list_cameras",
]


# --- Codec and scaling (pure) ------------------------------------------------------

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SEGMENT_LEN = struct.Struct(">H")
_SOF_DIMS = struct.Struct(">BHH")  # precision, height, width


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF segment without decoding; None if not found."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = _SEGMENT_LEN.unpack_from(data, i + 2)
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 4 + _SOF_DIMS.size > n:
                return None
            _, height, width = _SOF_DIMS.unpack_from(data, i + 4)
            return width, height
        if marker == 0xDA:  # start of scan before any SOF
            return None
        i += 2 + length
    return None


def encode_jpeg(image: np.ndarray, quality: int = config.VIDEO_JPEG_QUALITY) -> bytes:
    """A BGR image as JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes, max_pixels: int = config.IMAGE_DECODE_MAX_PIXELS) -> np.ndarray | None:
    """A peer's JPEG as a BGR image; None if it is not a JPEG or claims too many pixels."""
    size = jpeg_size(data)
    if size is None:
        log.debug("not a JPEG (%d bytes, starts %r)", len(data), data[:8])
        return None
    w, h = size
    if w == 0 or h == 0 or w * h > max_pixels:
        log.warning("refusing to decode a %dx%d JPEG (limit %d pixels)", w, h, max_pixels)
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return img


def fit_frame(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to exactly ``width`` x ``height``, cropping the centre to keep the aspect."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    want = width / height
    if w / h > want + 1e-3:  # too wide: crop the sides
        new_w = max(1, round(h * want))
        x0 = (w - new_w) // 2
        image = image[:, x0 : x0 + new_w]
    elif w / h < want - 1e-3:  # too tall: crop top and bottom
        new_h = max(1, round(w / want))
        y0 = (h - new_h) // 2
        image = image[y0 : y0 + new_h]
    interp = cv2.INTER_AREA if image.shape[1] > width else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Grey or BGRA images as 3-channel BGR."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


# --- Sources -------------------------------------------------------------------------


def list_cameras() -> list[dict[str, Any]]:
    """Cameras as dicts with ``index`` and ``name`` (empty when there are none).

    On Linux the V4L2 device list is read without opening anything; elsewhere the
    first ``CAMERA_PROBE_COUNT`` indices are probed.
    """
    sysfs = Path("/sys/class/video4linux")
    if sysfs.is_dir():
        found = []
        for dev in sorted(sysfs.glob("video*"), key=lambda p: int(p.name[5:] or 0)):
            try:
                name = (dev / "name").read_text(encoding="utf-8", errors="replace").strip()
                index = int(dev.name[5:])
            except (OSError, ValueError):
                continue
            found.append({"index": index, "name": name or dev.name})
        return found
    if Path("/dev").is_dir() and not list(Path("/dev").glob("video*")) and sysfs.parent.is_dir():
        return []  # Linux without any V4L2 device
    found = []
    for i in range(config.CAMERA_PROBE_COUNT):
        cap = cv2.VideoCapture(i)
        try:
            if cap.isOpened():
                found.append({"index": i, "name": f"Camera {i}"})
        finally:
            cap.release()
    return found


class VideoSource(ABC):
    """Something that yields BGR frames (any size; the sender scales them)."""

    label: str = "video source"

    @abstractmethod
    def read(self) -> np.ndarray | None:
        """The current frame, or None if none is available right now."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""


class CameraSource(VideoSource):
    """A camera through ``cv2.VideoCapture`` by index; a missing one is a DeviceError."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.label = f"camera {index}"
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            cap.release()
            raise DeviceError(f"No camera at index {index}: it is missing or in use.")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # we want the newest frame, not a backlog
        self._cap = cap
        # Taken by the video-sender thread (read) and whoever closes the camera; guards _cap.
        self._lock = threading.Lock()

    def read(self) -> np.ndarray | None:
        with self._lock:
            if self._cap is None:
                return None
            ok, img = self._cap.read()
        return as_bgr(img) if ok and img is not None else None

    def close(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None


class VideoFileSource(VideoSource):
    """A video file, one file frame per ``read``, looped at the end (or None once ended)."""

    def __init__(self, path: str | Path, loop: bool = True) -> None:
        self.path = Path(path)
        self.loop = loop
        self.label = f"video file {self.path.name!r}"
        if not self.path.is_file():
            raise DeviceError(f"Video file {str(self.path)!r} does not exist.")
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            self._cap.release()
            raise DeviceError(f"Video file {str(self.path)!r} cannot be opened as video.")
        self.frames_read = 0
        self.ended = False

    def read(self) -> np.ndarray | None:
        if self._cap is None or self.ended:
            return None
        ok, img = self._cap.read()
        if not ok or img is None:
            if not self.loop or self.frames_read == 0:
                self.ended = True
                return None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = self._cap.read()
            if not ok or img is None:
                self.ended = True
                return None
        self.frames_read += 1
        return as_bgr(img)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class TestPatternSource(VideoSource):
    """Colour bars, the participant's name, a moving ball and a running clock.

    The ball and the clock change every frame, so a frozen stream is visible.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        name: str,
        width: int = config.VIDEO_WIDTH_PX,
        height: int = config.VIDEO_HEIGHT_PX,
        fps: int = config.VIDEO_FPS,
    ) -> None:
        self.name = name
        self.width, self.height, self.fps = width, height, fps
        self.label = "test pattern"
        colours = [(192, 192, 192), (0, 192, 192), (192, 192, 0), (0, 192, 0)]
        colours += [(192, 0, 192), (0, 0, 192), (192, 0, 0), (40, 40, 40)]
        bars = np.zeros((height, width, 3), np.uint8)
        for i, c in enumerate(colours):
            bars[:, i * width // 8 : (i + 1) * width // 8] = c
        self._background = bars
        self._n = 0
        self._t0 = time.monotonic()

    def read(self) -> np.ndarray | None:
        img = self._background.copy()
        w, h = self.width, self.height
        self._n += 1
        period = max(1, 4 * self.fps)  # the ball crosses in about 4 s
        phase = (self._n % (2 * period)) / period
        x = int((phase if phase <= 1 else 2 - phase) * (w - 40)) + 20
        cv2.circle(img, (x, h // 2), max(6, h // 12), (255, 255, 255), -1)
        cv2.circle(img, (x, h // 2), max(6, h // 12), (0, 0, 0), 2)
        scale = max(0.4, w / 640)
        cv2.rectangle(img, (0, 0), (w, int(34 * scale) + 4), (0, 0, 0), -1)
        cv2.putText(
            img,
            self.name[:32],
            (6, int(26 * scale)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        elapsed = time.monotonic() - self._t0
        clock = f"{time.strftime('%H:%M:%S')}  t={elapsed:7.2f}s  #{self._n}"
        cv2.rectangle(img, (0, h - int(30 * scale)), (w, h), (0, 0, 0), -1)
        cv2.putText(
            img,
            clock,
            (6, h - int(10 * scale)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale * 0.8,
            (0, 255, 255),
            1,
            cv2.LINE_AA,
        )
        return img


# --- Sender --------------------------------------------------------------------------


class VideoSender:
    """Thread ``video-sender``: every 1/fps reads the source, scales, JPEG-encodes, sends.

    ``open_source`` makes the source; it is called again when the camera is
    switched back on (``set_camera(True, ...)``), after ``set_camera(False, ...)``
    released the device. A source that cannot be opened is reported through
    ``on_message`` and leaves the camera off.
    """

    def __init__(
        self,
        client: Any,
        open_source: Callable[[], VideoSource] | VideoSource,
        width: int | None = None,
        height: int | None = None,
        fps: int | None = None,
        quality: int = config.VIDEO_JPEG_QUALITY,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        video = (getattr(client, "media_params", None) or {}).get("video") or {}
        self.client = client
        self.width = int(width or video.get("width") or config.VIDEO_WIDTH_PX)
        self.height = int(height or video.get("height") or config.VIDEO_HEIGHT_PX)
        self.fps = max(1, int(fps or video.get("fps") or config.VIDEO_FPS))
        self.quality = quality
        self.on_message = on_message
        if isinstance(open_source, VideoSource):
            first = open_source
            self._open: Callable[[], VideoSource] | None = None
        else:
            first = None
            self._open = open_source
        # Taken by the video-sender thread and by set_camera()/stop() callers; guards
        # _source (the device is opened and released under it).
        self._lock = threading.Lock()
        self._source: VideoSource | None = first
        self.frames_sent = 0
        self.bytes_sent = 0
        self.encode_errors = 0
        self.last_jpeg: bytes | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="video-sender", daemon=True)

    @property
    def camera_on(self) -> bool:
        with self._lock:
            return self._source is not None

    def _message(self, text: str) -> None:
        log.warning("%s", text)
        if self.on_message is not None:
            self.on_message(text)

    def open(self) -> bool:
        """Open the source if there is none; False (and a message) if it cannot be opened."""
        with self._lock:
            if self._source is not None:
                return True
            if self._open is None:
                return False
            try:
                self._source = self._open()
            except DeviceError as exc:
                self._message(str(exc))
                return False
            return True

    def start(self) -> VideoSender:
        if self._source is None:
            self.open()
        self._thread.start()
        return self

    def set_camera(self, on: bool, audio_on: bool) -> bool:
        """Camera on (reopen the device) or off (release it), then send ``media``.

        Returns whether the camera is on afterwards. ``audio_on`` is the current
        microphone state, which the ``media`` message carries too.
        """
        if on:
            on = self.open()
        else:
            with self._lock:
                src, self._source = self._source, None
            if src is not None:
                src.close()
        try:
            self.client.set_media(audio_on, on)
        except OSError as exc:
            log.info("media state not sent: %s", exc)
        return on

    def _run(self) -> None:
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                src = self._source
                try:
                    img = src.read() if src is not None else None
                except (cv2.error, DeviceError, OSError) as exc:  # a device gone bad
                    img = None
                    self.encode_errors += 1
                    log.debug("video source read failed: %s", exc)
            if img is not None:
                try:
                    jpeg = encode_jpeg(fit_frame(img, self.width, self.height), self.quality)
                    self.client.send_video(jpeg)
                    self.frames_sent += 1
                    self.bytes_sent += len(jpeg)
                    self.last_jpeg = jpeg
                except (ValueError, cv2.error) as exc:
                    self.encode_errors += 1
                    log.debug("video frame not sent: %s", exc)
                except OSError as exc:
                    log.info("video sender stopped: %s", exc)
                    break
            next_t += period
            now = time.monotonic()
            if next_t < now - period:  # fell behind (busy machine): do not burst
                next_t = now
            self._stop.wait(max(0.0, next_t - now))

    def stop(self) -> None:
        """Stop sending, join the thread, release the device."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(config.MEDIA_THREAD_JOIN_TIMEOUT_S)
        with self._lock:
            src, self._source = self._source, None
        if src is not None:
            src.close()


# --- Receiver ------------------------------------------------------------------------


@dataclass
class _Latest:
    jpeg: bytes
    frame_id: int
    count: int
    received: float  # monotonic
    decoded: np.ndarray | None = None
    decoded_count: int = -1


@dataclass(frozen=True)
class FrameInfo:
    """What the receiver knows about one participant's stream."""

    count: int  # frames received so far
    frame_id: int  # id of the latest
    received: float  # monotonic time of the latest


class VideoReceiver:
    """Keeps the latest JPEG per participant (never a queue); decodes on demand.

    Subscribes to the client's ``video_frame`` and ``participant_left`` events;
    a participant who left is forgotten.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        # Taken by the client's udp-receiver thread (new frames), tcp-receiver thread
        # (participant_left) and readers (GUI timer, tests); guards _latest.
        self._lock = threading.Lock()
        self._latest: dict[int, _Latest] = {}
        self.decode_failures = 0
        client.on("video_frame", self._on_frame)
        client.on("participant_left", self._on_left)

    def _on_frame(self, sender: int, frame_id: int, jpeg: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            old = self._latest.get(sender)
            if old is None:
                if len(self._latest) >= config.MAX_PARTICIPANTS_PER_SESSION:
                    # More senders than a session can hold: forget the longest-silent one.
                    stalest = min(self._latest, key=lambda pid: self._latest[pid].received)
                    del self._latest[stalest]
                self._latest[sender] = _Latest(jpeg, frame_id, 1, now)
            else:
                old.jpeg, old.frame_id, old.received = jpeg, frame_id, now
                old.count += 1

    def _on_left(self, pid: int, username: str = "") -> None:
        self.forget(pid)

    def forget(self, pid: int) -> None:
        """Drop everything about ``pid``."""
        with self._lock:
            self._latest.pop(pid, None)

    def senders(self) -> list[int]:
        """Participants of whom a frame has been received."""
        with self._lock:
            return sorted(self._latest)

    def info(self, pid: int) -> FrameInfo | None:
        """Frame counter, latest id and arrival time for ``pid``."""
        with self._lock:
            e = self._latest.get(pid)
            return None if e is None else FrameInfo(e.count, e.frame_id, e.received)

    def latest_jpeg(self, pid: int) -> bytes | None:
        with self._lock:
            e = self._latest.get(pid)
            return None if e is None else e.jpeg

    def latest(self, pid: int) -> np.ndarray | None:
        """The latest frame of ``pid`` as a BGR image (decoded now, once per new frame)."""
        with self._lock:
            e = self._latest.get(pid)
            if e is None:
                return None
            if e.decoded_count == e.count:
                return e.decoded
            jpeg, count = e.jpeg, e.count
        img = decode_jpeg(jpeg)  # outside the lock: the UDP thread never waits for a decode
        if img is None:
            self.decode_failures += 1
        with self._lock:
            e = self._latest.get(pid)
            if e is not None and e.count == count:
                e.decoded, e.decoded_count = img, count
        return img

    def close(self) -> None:
        """Unsubscribe and forget everything."""
        off = getattr(self.client, "off", None)
        if off is not None:
            off("video_frame", self._on_frame)
            off("participant_left", self._on_left)
        with self._lock:
            self._latest.clear()
