"""Client video: sources (camera, file, test pattern), the VP8 simulcast sender, the receiver.

A camera, a video file or a generated test pattern serve one ``VideoSource``.
The ``video-sender`` thread encodes each picture into VP8 layers (simulcast.py)
and sends them as ``v`` datagrams; the receiver assembles and checks layers and
decodes them on one ``video-decoder`` thread, keeping the latest good picture
per participant. JPEG helpers remain for still images (screen sharing).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import config
import simulcast
import video_codec
from audio_module import DeviceError
from video_routing import LossCounter

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

    def size(self) -> tuple[int, int] | None:
        """(width, height) of the pictures this source gives, if known before reading."""
        return None


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
        # Ask for the camera's 16:9 720p mode; a camera without it keeps its own size,
        # which we read back (the large layer follows it: 640x360 below 720 lines).
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, config.CAMERA_WANTED_WIDTH_PX)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, config.CAMERA_WANTED_HEIGHT_PX)
        self._size = (
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        )
        self._cap = cap
        # Taken by the video-sender thread (read) and whoever closes the camera; guards _cap.
        self._lock = threading.Lock()

    def size(self) -> tuple[int, int] | None:
        return self._size if min(self._size) > 0 else None

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
        w = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        h = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self._size = (w, h) if w > 0 and h > 0 else None

    def size(self) -> tuple[int, int] | None:
        return self._size

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
        width: int = config.VIDEO_TEST_PATTERN_WIDTH_PX,
        height: int = config.VIDEO_TEST_PATTERN_HEIGHT_PX,
        fps: int = config.VIDEO_CAMERA_FPS,
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

    def size(self) -> tuple[int, int] | None:
        return self.width, self.height

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


def announced_layers(source_width: int, source_height: int) -> list[dict[str, int | str]]:
    """The ``media.layers`` a source of this size sends (small always, large when wanted)."""
    large = simulcast.large_layer_for(source_width, source_height)
    return [
        {"layer": spec.name, "width": spec.width_px, "height": spec.height_px}
        | {"bps": spec.bitrate_bps}
        for spec in (config.VIDEO_SMALL_LAYER, large)
    ]


class VideoSender:
    """Thread ``video-sender``: every 1/fps reads the source, VP8-encodes its layers, sends.

    The small layer (320x180) is always sent; the large one (640x360, or 1280x720
    from a 720p source) only while the server says someone shows it large
    (``video_layers``). ``keyframe_request`` and ``bitrate`` from the server set
    flags that this thread applies before its next encode (the encoder is not
    thread-safe). ``open_source`` makes the source; it is called again when the
    camera is switched back on. A source that cannot be opened, or a missing VP8
    codec, is reported through ``on_message`` and leaves the camera off.
    """

    def __init__(
        self,
        client: Any,
        open_source: Callable[[], VideoSource] | VideoSource,
        fps: int | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        video = (getattr(client, "media_params", None) or {}).get("video") or {}
        self.client = client
        self.fps = max(1, int(fps or video.get("fps") or config.VIDEO_CAMERA_FPS))
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
        # Taken by the client's tcp-receiver thread (requests) and the video-sender thread
        # (applies them); guards the three request fields below. A leaf lock.
        self._flags_lock = threading.Lock()
        self._large_wanted = False
        self._keyframes: set[str] = set()
        self._bitrates: dict[str, int] = {}
        self.frames_sent = 0  # pictures encoded (small layer frames)
        self.bytes_sent = 0
        self.layer_frames: dict[str, int] = {name: 0 for name in config.VIDEO_LAYERS}
        self.keyframes_sent = 0
        self.bitrates_applied: dict[str, int] = {}  # the last bitrate hint applied per layer
        self.encode_errors = 0
        self.last_picture: np.ndarray | None = None  # the newest source picture (self view)
        self.codec_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="video-sender", daemon=True)
        for event, fn in self._events():
            client.on(event, fn)

    def _events(self) -> list[tuple[str, Callable[..., None]]]:
        return [
            ("keyframe_request", self.on_keyframe_request),
            ("video_layers", self.on_video_layers),
            ("bitrate", self.on_bitrate),
        ]

    # --- requests from the server (any thread) ---------------------------------------

    def on_keyframe_request(self, layer: str) -> None:
        if layer in config.VIDEO_LAYERS:
            with self._flags_lock:
                self._keyframes.add(layer)

    def on_video_layers(self, large: bool) -> None:
        with self._flags_lock:
            self._large_wanted = bool(large)

    def on_bitrate(self, layer: str, bps: int) -> None:
        if layer in config.VIDEO_LAYERS:
            with self._flags_lock:
                self._bitrates[layer] = int(bps)

    @property
    def large_wanted(self) -> bool:
        with self._flags_lock:
            return self._large_wanted

    # --- camera ------------------------------------------------------------------------

    @property
    def camera_on(self) -> bool:
        with self._lock:
            return self._source is not None

    def _message(self, text: str) -> None:
        log.warning("%s", text)
        if self.on_message is not None:
            self.on_message(text)

    def open(self) -> bool:
        """Open the source if there is none; False (and a message) if it cannot be used."""
        try:
            video_codec.load_av()
        except video_codec.CodecUnavailable as exc:
            self.codec_error = str(exc)
            self._message(f"Video cannot be sent: {exc}")
            return False
        with self._lock:
            if self._source is not None:
                self._announce(self._source)
                return True
            if self._open is None:
                return False
            try:
                self._source = self._open()
            except DeviceError as exc:
                self._message(str(exc))
                return False
            self._announce(self._source)
            return True

    def _announce(self, source: VideoSource) -> None:
        """Tell the client which layers this source gives (sent with ``media``)."""
        w, h = source.size() or (config.VIDEO_TEST_PATTERN_WIDTH_PX, 360)
        remember = getattr(self.client, "set_video_layers", None)
        if remember is not None:
            remember(announced_layers(w, h))

    def start(self) -> VideoSender:
        self.open()  # opens the source if needed and announces its layers
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

    # --- the video-sender thread ----------------------------------------------------------

    def _apply_requests(self, encoder: simulcast.SimulcastEncoder) -> None:
        with self._flags_lock:
            large, keys, rates = self._large_wanted, self._keyframes, self._bitrates
            self._keyframes, self._bitrates = set(), {}
        if large != encoder.large_wanted:
            encoder.set_large_wanted(large)
        for layer in keys:
            encoder.force_keyframe(layer)
        for layer, bps in rates.items():
            encoder.set_bitrate(layer, bps)
            self.bitrates_applied[layer] = encoder.bitrate(layer)

    def _run(self) -> None:
        period = 1.0 / self.fps
        next_t = time.monotonic()
        encoder = simulcast.SimulcastEncoder(fps=self.fps)
        try:
            while not self._stop.is_set():
                with self._lock:
                    src = self._source
                    try:
                        img = src.read() if src is not None else None
                    except (cv2.error, DeviceError, OSError) as exc:  # a device gone bad
                        img = None
                        self.encode_errors += 1
                        log.debug("video source read failed: %s", exc)
                if img is not None and not self._send_picture(encoder, img):
                    break
                next_t += period
                now = time.monotonic()
                if next_t < now - period:  # fell behind (busy machine): do not burst
                    next_t = now
                self._stop.wait(max(0.0, next_t - now))
        finally:
            encoder.close()

    def _send_picture(self, encoder: simulcast.SimulcastEncoder, img: np.ndarray) -> bool:
        """Encode and send one picture; False when sending must stop."""
        self.last_picture = img
        self._apply_requests(encoder)
        try:
            frames = encoder.encode(img)
        except video_codec.CodecUnavailable as exc:
            self.codec_error = str(exc)
            self._message(f"Video cannot be sent: {exc}")
            return False
        except (ValueError, cv2.error) as exc:
            self.encode_errors += 1
            log.debug("video frame not encoded: %s", exc)
            return True
        for lf in frames:
            try:
                self.bytes_sent += self.client.send_video_frame(
                    lf.layer, lf.frame_id, lf.frame.keyframe, lf.frame.data
                )
            except ValueError as exc:
                self.encode_errors += 1
                log.debug("video frame not sent: %s", exc)
                continue
            except OSError as exc:
                log.info("video sender stopped: %s", exc)
                return False
            self.layer_frames[lf.layer] += 1
            self.keyframes_sent += lf.frame.keyframe
        if frames:
            self.frames_sent += 1
        return True

    def stop(self) -> None:
        """Stop sending, join the thread, release the device."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(config.MEDIA_THREAD_JOIN_TIMEOUT_S)
        off = getattr(self.client, "off", None)
        if off is not None:
            for event, fn in self._events():
                off(event, fn)
        with self._lock:
            src, self._source = self._source, None
        if src is not None:
            src.close()


# --- Receiver ------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameInfo:
    """What the receiver knows about one participant's video."""

    count: int  # pictures decoded so far
    frame_id: int  # layer frame id of the latest picture
    received: float  # monotonic time of the latest picture
    layer: str  # the layer of the latest picture
    frozen_since: float | None  # set while the stream waits for a keyframe


@dataclass
class _Stream:
    """One (sender, layer) stream: loss counting and assembly (udp thread), decoding."""

    assembler: simulcast.LayerAssembler
    loss: LossCounter
    queue: deque[simulcast.AssembledFrame]
    decoder: Any = None  # a Vp8Decoder, made and used by the decoder thread only
    frames: int = 0  # whole frames assembled
    bytes: int = 0
    datagrams: int = 0
    lost: int = 0
    keyframes: int = 0
    decoded: int = 0
    report_frames: int = 0
    report_bytes: int = 0
    frozen_since: float | None = None
    frozen_ms: float = 0.0
    longest_freeze_ms: float = 0.0
    decode_overflows: int = 0


@dataclass
class _Picture:
    image: np.ndarray
    frame_id: int
    layer: str
    received: float
    count: int


class VideoReceiver:
    """Assembles, checks and decodes everyone's VP8 layers; keeps the latest good picture.

    The client's ``udp-receiver`` thread counts loss and assembles fragments
    (cheap); whole frames go to a bounded queue per stream; one
    ``video-decoder-<id>`` thread decodes them and keeps the latest good picture
    per participant (never a queue for the GUI). A stream with a missing
    fragment or frame decodes nothing until a keyframe: the picture stays the
    last good one (``frozen_since`` is set) and a keyframe request goes out
    (from the decoder thread, so the udp thread never waits on TCP). Every
    ``VIDEO_LOSS_REPORT_INTERVAL_S`` the decoder thread sends ``report``.

    ``on_picture(pid, version, image)`` (optional) is called on the decoder thread
    for every new picture. Without PyAV nothing is decoded and ``codec_error``
    says why.
    """

    def __init__(
        self,
        client: Any,
        on_picture: Callable[[int, int, np.ndarray], None] | None = None,
        decode: bool = True,
    ) -> None:
        self.client = client
        self.on_picture = on_picture
        self.decode_enabled = decode
        self.codec_error: str | None = None
        if decode:
            try:
                video_codec.load_av()
            except video_codec.CodecUnavailable as exc:
                self.codec_error = str(exc)
                log.warning("received video cannot be shown: %s", exc)
        # Lock order: _lock is a leaf. Taken by the client's udp-receiver thread
        # (fragments), tcp-receiver thread (participant_left), the video-decoder thread
        # and readers (GUI timer, tests); guards _streams, _pictures, _requests.
        self._lock = threading.Lock()
        self._streams: dict[tuple[int, str], _Stream] = {}
        self._pictures: dict[int, _Picture] = {}
        self._requests: set[tuple[int, str]] = set()
        self._version = 0
        self.decode_failures = 0
        self.fragments_refused = 0
        self.frames_assembled = 0  # whole frames queued for decoding (under _lock)
        self.frames_handled = 0  # of those, decoded, skipped or dropped (under _lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        suffix = getattr(client, "my_id", None)
        name = "video-decoder" if suffix is None else f"video-decoder-{suffix}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        client.on("video_fragment", self._on_fragment)
        client.on("participant_left", self._on_left)
        self._thread.start()

    # --- udp-receiver thread --------------------------------------------------------------

    def _on_fragment(self, sender: int, seq: int, frag: Any) -> None:
        now = time.monotonic()
        key = (int(sender), frag.layer_name)
        with self._lock:
            st = self._streams.get(key)
            if st is None:
                if len(self._streams) >= 2 * config.MAX_PARTICIPANTS_PER_SESSION:
                    self.fragments_refused += 1
                    return
                st = self._streams[key] = _Stream(
                    simulcast.LayerAssembler(), LossCounter(), deque()
                )
            st.loss.add(seq)
            st.datagrams += 1
            st.bytes += len(frag.data)
            st.report_bytes += len(frag.data)
            try:
                res = st.assembler.add(
                    frag.frame_id, frag.frag_index, frag.frag_count, frag.keyframe, frag.data, now
                )
            except ValueError:
                self.fragments_refused += 1
                return
            if res.frame is not None:
                st.frames += 1
                st.report_frames += 1
                st.keyframes += res.frame.keyframe
                self.frames_assembled += 1
                if len(st.queue) >= config.VIDEO_DECODE_QUEUE_FRAMES:
                    # The decoder cannot keep up: drop the backlog, wait for a keyframe.
                    self.frames_handled += len(st.queue) + 1
                    st.queue.clear()
                    st.decode_overflows += 1
                    if st.assembler.mark_broken(now):
                        self._requests.add(key)
                else:
                    st.queue.append(res.frame)
            if res.request_keyframe:
                self._requests.add(key)
            self._note_frozen(st, now)
        self._wake.set()

    @staticmethod
    def _note_frozen(st: _Stream, now: float) -> None:
        if st.assembler.waiting_for_keyframe and st.frozen_since is None and st.decoded:
            st.frozen_since = now

    def _on_left(self, pid: int, username: str = "") -> None:
        self.forget(pid)

    # --- video-decoder thread ------------------------------------------------------------

    def _run(self) -> None:
        interval = config.VIDEO_LOSS_REPORT_INTERVAL_S
        next_report = time.monotonic() + interval
        while not self._stop.is_set():
            self._wake.wait(config.VIDEO_DECODER_IDLE_WAKE_S)
            self._wake.clear()
            try:
                self._decode_pending()
                now = time.monotonic()
                self._poll(now)
                self._send_requests()
                if now >= next_report:
                    next_report = now + interval
                    self._send_report()
            except OSError as exc:  # the connection closed under us
                log.debug("video receiver: %s", exc)

    def _decode_pending(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                work = [(k, st, st.queue.popleft()) for k, st in self._streams.items() if st.queue]
            if not work:
                return
            for key, st, frame in work:
                self._decode_one(key, st, frame)

    def _decode_one(self, key: tuple[int, str], st: _Stream, frame: Any) -> None:
        try:
            self._decode(key, st, frame)
        finally:
            with self._lock:
                self.frames_handled += 1

    def _decode(self, key: tuple[int, str], st: _Stream, frame: Any) -> None:
        if not self.decode_enabled or self.codec_error is not None:
            return
        if st.decoder is None:
            st.decoder = video_codec.Vp8Decoder()
        image = st.decoder.decode(frame.data, frame.frame_id)
        now = time.monotonic()
        with self._lock:
            if self._streams.get(key) is not st:
                return  # forgotten meanwhile
            if image is None:
                if st.decoder.needs_keyframe:
                    self.decode_failures += 1
                    if st.assembler.mark_broken(now):
                        self._requests.add(key)
                    self.frames_handled += len(st.queue)
                    st.queue.clear()
                    self._note_frozen(st, now)
                return
            st.decoded += 1
            if st.frozen_since is not None:
                frozen = (now - st.frozen_since) * 1000
                st.frozen_ms += frozen
                st.longest_freeze_ms = max(st.longest_freeze_ms, frozen)
                st.frozen_since = None
            self._version += 1
            version = self._version
            old = self._pictures.get(key[0])
            count = 1 if old is None else old.count + 1
            self._pictures[key[0]] = _Picture(image, frame.frame_id, key[1], now, count)
        if self.on_picture is not None:
            self.on_picture(key[0], version, image)

    def _poll(self, now: float) -> None:
        with self._lock:
            for key, st in self._streams.items():
                if st.assembler.poll(now):
                    self._requests.add(key)
                self._note_frozen(st, now)

    def _send_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, set()
        for sender, layer in sorted(requests):
            self.client.request_keyframe(sender, layer)

    def _send_report(self) -> None:
        entries = []
        with self._lock:
            for (sender, layer), st in sorted(self._streams.items()):
                received, lost = st.loss.take()
                st.lost += lost
                if received == 0 and lost == 0:
                    continue
                entries.append(
                    {"sender": sender, "layer": layer, "received": received, "lost": lost}
                    | {"frames": st.report_frames, "bytes": st.report_bytes}
                )
                st.report_frames = st.report_bytes = 0
        if entries:
            self.client.send_report(entries)

    # --- readers (any thread) ------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the video-decoder thread still runs."""
        return self._thread.is_alive()

    def idle(self) -> bool:
        """Every assembled frame has been decoded (or dropped): for tests and benchmarks."""
        with self._lock:
            return self.frames_handled >= self.frames_assembled

    def forget(self, pid: int) -> None:
        """Drop everything about ``pid``."""
        with self._lock:
            for key in [k for k in self._streams if k[0] == pid]:
                self.frames_handled += len(self._streams[key].queue)
                del self._streams[key]
            self._pictures.pop(pid, None)

    def senders(self) -> list[int]:
        """Participants of whom a picture has been decoded."""
        with self._lock:
            return sorted(self._pictures)

    def info(self, pid: int) -> FrameInfo | None:
        """Pictures decoded, latest frame id, time, layer and freeze state of ``pid``."""
        with self._lock:
            pic = self._pictures.get(pid)
            if pic is None:
                return None
            frozen = [
                st.frozen_since
                for (s, layer), st in self._streams.items()
                if s == pid and layer == pic.layer and st.frozen_since is not None
            ]
            return FrameInfo(
                pic.count, pic.frame_id, pic.received, pic.layer, frozen[0] if frozen else None
            )

    def latest(self, pid: int) -> np.ndarray | None:
        """The latest good picture of ``pid`` (BGR), or None."""
        with self._lock:
            pic = self._pictures.get(pid)
            return None if pic is None else pic.image

    def stats(self) -> dict[int, dict[str, Any]]:
        """Per sender: frames, bytes, datagrams received and lost, keyframes, frozen ms."""
        out: dict[int, dict[str, Any]] = {}
        with self._lock:
            for (sender, layer), st in sorted(self._streams.items()):
                d = out.setdefault(
                    sender,
                    {
                        "frames": 0,
                        "frames_decoded": 0,
                        "bytes": 0,
                        "datagrams": 0,
                        "lost": 0,
                        "keyframes": 0,
                        "frozen_ms": 0.0,
                        "longest_freeze_ms": 0.0,
                        "layers": [],
                    },
                )
                d["frames"] += st.frames
                d["frames_decoded"] += st.decoded
                d["bytes"] += st.bytes
                d["datagrams"] += st.datagrams
                d["lost"] += st.lost + st.loss.lost
                d["keyframes"] += st.keyframes
                d["frozen_ms"] = round(d["frozen_ms"] + st.frozen_ms, 1)
                d["longest_freeze_ms"] = round(max(d["longest_freeze_ms"], st.longest_freeze_ms), 1)
                d["layers"].append(layer)
        return out

    def close(self) -> None:
        """Stop the decoder thread, unsubscribe and forget everything."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(config.MEDIA_THREAD_JOIN_TIMEOUT_S)
        off = getattr(self.client, "off", None)
        if off is not None:
            off("video_fragment", self._on_fragment)
            off("participant_left", self._on_left)
        with self._lock:
            self._streams.clear()
            self._pictures.clear()
