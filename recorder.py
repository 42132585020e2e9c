"""Server-side meeting recorder: the "everyone" mix, one picture stream and chat, one file.

``MeetingRecorder`` writes a WebM file (VP8 video through libvpx, Opus audio through
libopus; both BSD-licensed, never H.264/H.265) with PyAV, plus the chat as plain
text lines in a side file ``<name>.chat.txt``. A side file rather than a subtitle
track: each line is on disk when written (a cut recording keeps its chat), anyone can
read it, and a sparse subtitle stream would make the muxer hold back the interleaving
of audio and video. Callers (the server's udp thread for
audio and video, control threads for the screen and chat) only put items in a
bounded queue; decoding, scaling and encoding run on the ``recorder`` thread.

Time: every item carries a time in milliseconds on the recorder's clock (by default
``time.monotonic()``, the clock the server's mixer tick runs on); ``None`` means "now".
The file's timeline starts at the recorder's start: audio is placed by its time and
gaps are filled with silence, the picture is sampled at a fixed frame rate (the last
picture repeats when none came), so audio and video stay in sync.

A full disk (ENOSPC on a write, or free space below a reserve, checked periodically)
ends the recording cleanly: a ballast file kept beside the recording is freed so the
file can be finalised, and ``on_stopped("disk_full")`` is called.

PyAV is imported lazily: without it the server runs, and a recorder cannot be made
(``RecordingError`` with code ``recording_unavailable``).

Locks: one, the queue condition's lock; nothing else is taken while holding it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

import config

log = logging.getLogger(__name__)

__all__ = [
    "REASON_TEXT",
    "SCREEN_SOURCE",
    "AudioTimeline",
    "MeetingRecorder",
    "Reason",
    "RecordingError",
    "RecordingResult",
    "VideoTimeline",
    "camera_source",
    "letterbox_rect",
    "recording_unavailable_reason",
]


class Reason:
    """Why a recording ended or could not start (sent to clients as codes)."""

    STOPPED = "stopped"  # stop() was called
    DISK_FULL = "disk_full"
    WRITE_ERROR = "recording_write_error"
    FAILED = "recording_failed"
    UNAVAILABLE = "recording_unavailable"


REASON_TEXT: dict[str, str] = {
    Reason.STOPPED: "The recording was stopped.",
    Reason.DISK_FULL: "The server's disk is full: the recording was stopped and saved.",
    Reason.WRITE_ERROR: "The recording could not be written and was stopped.",
    Reason.FAILED: "The recording failed and was stopped.",
    Reason.UNAVAILABLE: "Recording is not available on this server (PyAV with VP8 and Opus "
    "is not installed).",
}


class RecordingError(Exception):
    """A recording that cannot start; ``code`` is one of ``Reason``."""

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.message = message or REASON_TEXT.get(code, code)
        super().__init__(f"{code}: {self.message}")


@dataclass(frozen=True)
class RecordingResult:
    """A finished recording: the file, its length and size, and why it ended."""

    path: Path
    duration_s: float
    bytes: int
    chat_path: Path
    reason: str = Reason.STOPPED
    stats: dict[str, int] = field(default_factory=dict)


# --- PyAV, lazily ----------------------------------------------------------------------


def _import_av() -> Any:
    """PyAV with the two encoders the recorder needs, or RecordingError(unavailable)."""
    try:
        import av
    except ImportError as exc:
        raise RecordingError(
            Reason.UNAVAILABLE, f"Recording needs PyAV (pip install av): {exc}"
        ) from exc
    for name in (config.RECORDING_VIDEO_CODEC, config.RECORDING_AUDIO_CODEC):
        try:
            av.codec.Codec(name, "w")
        except Exception as exc:
            raise RecordingError(
                Reason.UNAVAILABLE, f"This PyAV has no {name} encoder: {exc}"
            ) from exc
    return av


def recording_unavailable_reason() -> str | None:
    """None if recording works here, else a sentence saying why not."""
    try:
        _import_av()
    except RecordingError as exc:
        return exc.message
    return None


# --- Pure parts ------------------------------------------------------------------------


def letterbox_rect(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a ``src`` picture scaled to fit ``dst`` whole, centred.

    Every value is even, as 4:2:0 chroma needs; bars fill the rest.
    """
    if min(src_w, src_h, dst_w, dst_h) <= 0:
        raise ValueError("sizes must be positive")
    scale = min(dst_w / src_w, dst_h / src_h)
    w = min(dst_w, max(2, round(src_w * scale / 2) * 2))
    h = min(dst_h, max(2, round(src_h * scale / 2) * 2))
    x = (dst_w - w) // 4 * 2
    y = (dst_h - h) // 4 * 2
    return x, y, w, h


class AudioTimeline:
    """Where each audio chunk goes in the file: silence before it, or drop it.

    Positions are in samples from the start; a chunk is placed at its timestamp
    unless it is within ``tolerance_ms`` of where the audio already is.
    """

    def __init__(
        self, rate_hz: int, tolerance_ms: float = config.RECORDING_AUDIO_SYNC_TOLERANCE_MS
    ) -> None:
        self.rate_hz = rate_hz
        self.tolerance = round(tolerance_ms * rate_hz / 1000)
        self.written = 0  # samples placed so far (audio and silence)

    def _index(self, time_ms: float) -> int:
        return max(0, round(time_ms * self.rate_hz / 1000))

    def place(self, time_ms: float, samples: int) -> int | None:
        """Silence samples to write before a chunk at ``time_ms``; None: drop the chunk."""
        diff = self._index(time_ms) - self.written
        if diff < -self.tolerance:
            return None  # running ahead of its clock: dropping resynchronises
        silence = diff if diff > self.tolerance else 0
        self.written += silence + samples
        return silence

    def fill_to(self, time_ms: float) -> int:
        """Silence samples that bring the audio up to ``time_ms`` (0 if already there)."""
        silence = max(0, self._index(time_ms) - self.written)
        self.written += silence
        return silence

    @property
    def position_ms(self) -> float:
        return self.written * 1000 / self.rate_hz


class VideoTimeline:
    """Output frame ``n`` shows at ``n / fps`` s: which frames are due before a time."""

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self.next_index = 0

    def due(self, time_ms: float) -> range:
        """The frames whose time is before ``time_ms`` and that were not yet taken."""
        end = max(0, math.ceil(time_ms * self.fps / 1000 - 1e-9))
        start = self.next_index
        self.next_index = max(start, end)
        return range(start, self.next_index)

    @property
    def position_ms(self) -> float:
        return self.next_index * 1000 / self.fps


# --- Files that survive a full disk ----------------------------------------------------


class _Ballast:
    """A file holding ``size`` bytes of disk, given back when a write hits ENOSPC."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.present = False
        if size <= 0:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o600)
        self.present = True
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except (AttributeError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise
                chunk = bytes(min(size, 1024 * 1024))
                left = size
                while left > 0:
                    left -= os.write(fd, chunk[: min(left, len(chunk))])
        except BaseException:
            os.close(fd)
            self.release()
            raise
        os.close(fd)

    def release(self) -> bool:
        """Free the space; True if there was any to free."""
        if not self.present:
            return False
        self.present = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return True


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class _GuardedFile:
    """A write-only file for PyAV's custom I/O; on ENOSPC the ballast is freed once.

    ``disk_full`` then tells the recorder to finish: the space freed is what the
    muxer needs to write its last cluster, cues and duration.
    """

    _os_write = staticmethod(os.write)  # tests replace it to simulate a full disk

    def __init__(self, path: Path, ballast: _Ballast) -> None:
        self.path = path
        self._ballast = ballast
        self.disk_full = False
        # O_EXCL: a recording never overwrites an existing file.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)

    def discard(self) -> None:
        """Close and delete the file (a recording that never started)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        total = len(view)
        while view:
            try:
                n = self._os_write(self._fd, view)
            except OSError as exc:
                if exc.errno == errno.ENOSPC and self._ballast.release():
                    self.disk_full = True
                    continue
                raise
            view = view[n:]
        return total

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


# --- The encoding side (one thread) ----------------------------------------------------

_AUDIO, _VIDEO, _CHAT = "audio", "video", "chat"
_Y_BLACK, _C_NEUTRAL = 16, 128  # limited-range YUV black

# VP8 streams the picture comes from: the shared screen, or one participant's camera.
SCREEN_SOURCE = "screen"


def camera_source(pid: int) -> str:
    """The VP8 source name of participant ``pid``'s camera (its small layer)."""
    return f"camera:{pid}"


@dataclass(slots=True, eq=False)
class _Vp8:
    """One VP8 frame (PROTOCOL.md 10) of ``source``: decoded in order on the recorder thread.

    ``gap`` is set when an earlier VP8 frame was dropped from the queue: the decoder
    then waits for a keyframe and the last good picture holds meanwhile. A frame of
    another source than the previous one starts a new decoder, which also waits for a
    keyframe: two streams' frames never meet in one decoder.
    """

    data: bytes
    keyframe: bool
    source: str = SCREEN_SOURCE
    gap: bool = False


@dataclass(slots=True, eq=False)  # identity: items may hold arrays
class _Item:
    kind: str
    time_ms: float  # from the recording's start
    data: Any
    nbytes: int


class _RecordingWriter:
    """Container, encoders, current picture and chat file; driven by one thread only."""

    def __init__(
        self,
        av: Any,
        path: Path,
        chat_path: Path,
        ballast: _Ballast,
        audio_rate: int,
        size: tuple[int, int],
        fps: int,
    ) -> None:
        self._av = av
        self.width, self.height = size
        self.fps = fps
        self.audio_rate = audio_rate
        self.stats = {
            "video_frames": 0,
            "pictures_decoded": 0,
            "picture_errors": 0,
            "audio_chunks": 0,
            "audio_dropped_ahead": 0,
            "silence_samples": 0,
            "chat_lines": 0,
        }
        self.file = _GuardedFile(path, ballast)
        try:
            self.chat = _GuardedFile(chat_path, ballast)
        except BaseException:
            self.file.discard()
            raise
        try:
            self._open_container(av)
        except BaseException:
            self.file.discard()
            self.chat.discard()
            raise
        self.audio_tl = AudioTimeline(audio_rate)
        self.video_tl = VideoTimeline(fps)
        self._pending: Any = None  # the newest picture, not yet decoded
        self._vp8: Any = None  # a video_codec.Vp8Decoder once a VP8 frame comes
        self._vp8_source: str | None = None  # the source _vp8 decodes
        self.wants_keyframe = True  # no VP8 picture yet, or lost one: read by other threads
        self._black = self._yuv_frame(*self._canvas())
        self._frame = self._black

    def _open_container(self, av: Any) -> None:
        self.container = av.open(
            self.file,
            "w",
            format=config.RECORDING_CONTAINER_FORMAT,
            options={
                "cluster_time_limit": str(config.RECORDING_CLUSTER_TIME_LIMIT_MS),
                "cluster_size_limit": str(config.RECORDING_CLUSTER_SIZE_LIMIT_BYTES),
            },
        )
        vs = self.container.add_stream(
            config.RECORDING_VIDEO_CODEC,
            rate=self.fps,
            options={
                "deadline": config.RECORDING_VP8_DEADLINE,
                "cpu-used": str(config.RECORDING_VP8_CPU_USED),
                "lag-in-frames": str(config.RECORDING_VP8_LAG_IN_FRAMES),
            },
        )
        vs.width, vs.height, vs.pix_fmt = self.width, self.height, "yuv420p"
        vs.bit_rate = config.RECORDING_VIDEO_BITRATE_BPS
        vs.codec_context.gop_size = max(1, round(self.fps * config.RECORDING_KEYFRAME_INTERVAL_S))
        vs.codec_context.time_base = Fraction(1, self.fps)
        vs.thread_count = config.RECORDING_ENCODER_THREADS
        aus = self.container.add_stream(
            config.RECORDING_AUDIO_CODEC, rate=config.RECORDING_AUDIO_RATE_HZ, layout="mono"
        )
        aus.bit_rate = config.RECORDING_AUDIO_BITRATE_BPS
        self.vstream, self.astream = vs, aus
        self._resampler = av.AudioResampler(
            format="s16",
            layout="mono",
            rate=config.RECORDING_AUDIO_RATE_HZ,
            frame_size=config.RECORDING_OPUS_FRAME_SAMPLES,
        )
        self._audio_pts = 0
        self._jpeg = av.CodecContext.create("mjpeg", "r")
        self._jpeg.options = {"max_pixels": str(config.RECORDING_DECODE_MAX_PIXELS)}
        self._jpeg.thread_count = 1

    @property
    def disk_full(self) -> bool:
        return self.file.disk_full or self.chat.disk_full

    @property
    def position_ms(self) -> float:
        return max(self.audio_tl.position_ms, self.video_tl.position_ms)

    # --- items ----------------------------------------------------------------------

    def handle(self, item: _Item) -> None:
        if item.kind == _AUDIO:
            self.advance_video(item.time_ms)
            self.write_audio(item.data, item.time_ms)
        elif item.kind == _VIDEO:
            self.advance_video(item.time_ms)
            if isinstance(item.data, _Vp8):
                self._decode_vp8(item.data)
            else:
                self._pending = item.data
        else:
            self.write_chat(item.time_ms, *item.data)

    def advance(self, time_ms: float) -> None:
        """Repeat the picture and fill silence up to ``time_ms``."""
        self.advance_video(time_ms)
        self._write_silence(self.audio_tl.fill_to(time_ms))

    # --- audio ------------------------------------------------------------------------

    def write_audio(self, pcm: bytes, time_ms: float) -> None:
        samples = np.frombuffer(pcm, dtype="<i2")
        silence = self.audio_tl.place(time_ms, len(samples))
        if silence is None:
            self.stats["audio_dropped_ahead"] += 1
            return
        self._write_silence(silence)
        self._encode_pcm(samples)
        self.stats["audio_chunks"] += 1

    def _write_silence(self, samples: int) -> None:
        self.stats["silence_samples"] += samples
        while samples > 0:
            n = min(samples, self.audio_rate)
            self._encode_pcm(np.zeros(n, dtype="<i2"))
            samples -= n

    def _encode_pcm(self, samples: np.ndarray) -> None:
        frame = self._av.AudioFrame.from_ndarray(
            samples.astype("<i2", copy=False).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.audio_rate
        for out in self._resampler.resample(frame):
            self._encode_audio_frame(out)

    def _encode_audio_frame(self, frame: Any) -> None:
        frame.pts = self._audio_pts
        self._audio_pts += frame.samples
        for packet in self.astream.encode(frame):
            self.container.mux(packet)

    # --- video ------------------------------------------------------------------------

    def advance_video(self, time_ms: float) -> None:
        for n in self.video_tl.due(time_ms):
            if self._pending is not None:
                data, self._pending = self._pending, None
                frame = self._picture(data)
                if frame is not None:
                    self._frame = frame
            self._frame.pts = n
            for packet in self.vstream.encode(self._frame):
                self.container.mux(packet)
            self.stats["video_frames"] += 1

    def _decode_vp8(self, item: _Vp8) -> None:
        """Every VP8 frame is decoded in order; the newest good picture becomes pending.

        A new source gets a new decoder: until its first keyframe the last picture holds.
        """
        if self._vp8 is None or item.source != self._vp8_source:
            import video_codec  # PyAV is loaded already (the recorder needs it)

            if self._vp8 is not None:
                self._vp8.close()
                self.stats["vp8_source_switches"] = self.stats.get("vp8_source_switches", 0) + 1
            self._vp8 = video_codec.Vp8Decoder(config.RECORDING_DECODE_MAX_PIXELS)
            self._vp8_source = item.source
        if item.gap:
            self._vp8.mark_lost()
        picture = self._vp8.decode(item.data)
        self.wants_keyframe = self._vp8.needs_keyframe
        if picture is not None:
            self._pending = picture
        elif not item.keyframe and self._vp8.needs_keyframe:
            self.stats["vp8_skipped"] = self.stats.get("vp8_skipped", 0) + 1
        else:
            self.stats["picture_errors"] += 1

    def _picture(self, data: Any) -> Any:
        """A BGR array or JPEG bytes as a letterboxed yuv420p frame; None if unusable."""
        av = self._av
        try:
            if isinstance(data, np.ndarray):
                src = av.VideoFrame.from_ndarray(data, format="bgr24")
            else:
                decoded = self._jpeg.decode(av.Packet(data))
                if not decoded:
                    raise ValueError("no picture in the JPEG")
                src = decoded[-1]
            x, y, w, h = letterbox_rect(src.width, src.height, self.width, self.height)
            kwargs: dict[str, Any] = {}
            if src.format.name.startswith("yuvj") or src.color_range == 2:  # full range
                kwargs = {"src_color_range": "JPEG", "dst_color_range": "MPEG"}
            shrink = w < src.width or h < src.height
            fitted = src.reformat(
                width=w,
                height=h,
                format="yuv420p",
                interpolation="AREA" if shrink else "BILINEAR",
                **kwargs,
            )
        except (ValueError, av.FFmpegError) as exc:
            self.stats["picture_errors"] += 1
            log.debug("picture not usable: %s", exc)
            return None
        self.stats["pictures_decoded"] += 1
        if (w, h) == (self.width, self.height):
            # A decoded JPEG is marked I (intra): the encoder would make every frame a keyframe.
            fitted.pict_type = av.video.frame.PictureType.NONE
            return fitted
        flat = fitted.to_ndarray().ravel()
        ys, cs = w * h, w * h // 4
        yp, up, vp = self._canvas()
        yp[y : y + h, x : x + w] = flat[:ys].reshape(h, w)
        up[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = flat[ys : ys + cs].reshape(
            h // 2, w // 2
        )
        vp[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = flat[ys + cs :].reshape(h // 2, w // 2)
        return self._yuv_frame(yp, up, vp)

    def _canvas(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Black Y, U and V planes of the output size."""
        w, h = self.width, self.height
        return (
            np.full((h, w), _Y_BLACK, np.uint8),
            np.full((h // 2, w // 2), _C_NEUTRAL, np.uint8),
            np.full((h // 2, w // 2), _C_NEUTRAL, np.uint8),
        )

    def _yuv_frame(self, yp: np.ndarray, up: np.ndarray, vp: np.ndarray) -> Any:
        flat = np.concatenate([yp.ravel(), up.ravel(), vp.ravel()])
        return self._av.VideoFrame.from_ndarray(
            flat.reshape(self.height * 3 // 2, self.width), format="yuv420p"
        )

    # --- chat ---------------------------------------------------------------------------

    def write_chat(self, time_ms: float, sender: str, text: str) -> None:
        self.chat.write(format_chat_line(time_ms, sender, text).encode("utf-8"))
        self.stats["chat_lines"] += 1

    # --- the end ------------------------------------------------------------------------

    def finish(self, end_ms: float) -> None:
        """Bring both streams to ``end_ms``, flush the encoders and finalise the file."""
        try:
            self.advance(end_ms)
            for out in self._resampler.resample(None):
                self._encode_audio_frame(out)
            for stream in (self.vstream, self.astream):
                for packet in stream.encode(None):
                    self.container.mux(packet)
        finally:
            try:
                self.container.close()  # writes the trailer, closes self.file
            finally:
                self.file.close()
                self.chat.close()


def format_chat_line(time_ms: float, sender: str, text: str) -> str:
    """``[hh:mm:ss] Name: text``; further lines of a message are indented."""
    secs = max(0, int(time_ms // 1000))
    stamp = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    name = " ".join(sender.split()) or "?"
    body = "\n    ".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return f"[{stamp}] {name}: {body}\n"


# --- The recorder (thread + bounded queue) ---------------------------------------------


class MeetingRecorder:
    """Records one meeting to ``path`` on its own ``recorder`` thread.

    ``add_audio``, ``add_video`` and ``add_chat`` never block: they queue the item
    (bounded by ``RECORDING_QUEUE_MAX_ITEMS`` / ``_BYTES``; at the limit queued
    pictures are dropped first, then the new item) and return whether it was taken.
    ``on_stopped(reason)`` is called once, on the recorder thread, after the file is
    finalised, whatever ended the recording (``stop()`` gives ``"stopped"``); keep it short.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        audio_rate: int = config.AUDIO_RATE_HZ,
        video_size: tuple[int, int] = (
            config.RECORDING_VIDEO_WIDTH_PX,
            config.RECORDING_VIDEO_HEIGHT_PX,
        ),
        fps: int = config.RECORDING_FPS,
        on_stopped: Callable[[str], None] | None = None,
        clock: Callable[[], float] | None = None,
        start_ms: float | None = None,
        min_free_bytes: int = config.RECORDING_MIN_FREE_BYTES,
        finalise_reserve_bytes: int = config.RECORDING_FINALISE_RESERVE_BYTES,
        disk_check_interval_s: float = config.RECORDING_DISK_CHECK_INTERVAL_S,
        queue_max_items: int = config.RECORDING_QUEUE_MAX_ITEMS,
        queue_max_bytes: int = config.RECORDING_QUEUE_MAX_BYTES,
        thread_name: str = "recorder",
    ) -> None:
        width, height = video_size
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"video_size must be positive and even, not {video_size!r}")
        if fps <= 0 or audio_rate <= 0:
            raise ValueError("fps and audio_rate must be positive")
        if queue_max_items <= 0 or queue_max_bytes <= 0:
            raise ValueError("queue limits must be positive")
        av = _import_av()
        self.path = Path(path)
        self.chat_path = self.path.with_name(self.path.stem + config.RECORDING_CHAT_SUFFIX)
        self._on_stopped = on_stopped
        self._clock = clock or (lambda: time.monotonic() * 1000)
        self.start_ms = self._clock() if start_ms is None else start_ms
        self.min_free_bytes = min_free_bytes
        self._disk_check_interval_s = disk_check_interval_s
        self._max_items, self._max_bytes = queue_max_items, queue_max_bytes

        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(folder).free
        except OSError as exc:
            raise RecordingError(Reason.WRITE_ERROR, f"Cannot use {str(folder)!r}: {exc}") from exc
        if free < min_free_bytes + finalise_reserve_bytes:
            raise RecordingError(Reason.DISK_FULL, "Not enough free disk space to record.")
        ballast_path = self.path.with_name(self.path.name + ".reserve")
        try:
            self._ballast = _Ballast(ballast_path, finalise_reserve_bytes)
            self._writer = _RecordingWriter(
                av, self.path, self.chat_path, self._ballast, audio_rate, video_size, fps
            )
        except Exception as exc:
            with contextlib.suppress(AttributeError):
                self._ballast.release()
            if not isinstance(exc, OSError):
                raise RecordingError(Reason.FAILED, f"Cannot start recording: {exc}") from exc
            code = Reason.DISK_FULL if exc.errno == errno.ENOSPC else Reason.WRITE_ERROR
            raise RecordingError(code, f"Cannot create {str(self.path)!r}: {exc}") from exc

        # The queue lock (inside _cond). Taken by every add_* caller (server udp and control
        # threads), stop() and the recorder thread. Guards _queue, _queued_bytes, _closed,
        # _stop_ms and the drop counters. Nothing else is taken while holding it.
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._queued_bytes = 0
        self._closed = False
        self._stop_ms: float | None = None
        self.dropped = {"video": 0, "audio": 0, "chat": 0}
        self._vp8_gap = False  # a VP8 frame was dropped: the next one is marked (_Vp8.gap)
        self._vp8_source: str | None = None  # the source of the last VP8 frame queued
        self._result: RecordingResult | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    # --- input (any thread, never blocks) ---------------------------------------------

    def add_audio(self, pcm: bytes, time_ms: float | None = None) -> bool:
        """Queue int16 LE mono PCM at ``audio_rate`` that starts at ``time_ms``."""
        data = bytes(pcm)
        if len(data) % 2:
            raise ValueError("PCM must be whole int16 samples")
        return self._put(_AUDIO, time_ms, data, len(data))

    def add_video(
        self,
        picture: np.ndarray | bytes,
        time_ms: float | None = None,
        keyframe: bool | None = None,
        source: str = SCREEN_SOURCE,
    ) -> bool:
        """Queue a picture (BGR uint8 array, kept by reference, or JPEG bytes) from ``time_ms``.

        With ``keyframe`` (True or False) the bytes are one VP8 frame of ``source``: the
        shared screen (``screen_frame.keyframe``) or a camera (``camera_source(pid)``).
        Frames are decoded in order on the recorder thread; a change of source waits for
        that source's keyframe, holding the last picture.
        """
        if keyframe is not None:
            frame = _Vp8(bytes(picture), bool(keyframe), str(source))
            return self._put(_VIDEO, time_ms, frame, len(frame.data))
        if isinstance(picture, np.ndarray):
            if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
                raise ValueError("a picture array must be BGR uint8 of shape (h, w, 3)")
            return self._put(_VIDEO, time_ms, picture, picture.nbytes)
        data = bytes(picture)
        return self._put(_VIDEO, time_ms, data, len(data))

    def add_chat(self, sender_name: str, text: str, time_ms: float | None = None) -> bool:
        """Queue one chat message for the side file."""
        return self._put(_CHAT, time_ms, (str(sender_name), str(text)), len(text) + 64)

    def _put(self, kind: str, time_ms: float | None, data: Any, nbytes: int) -> bool:
        t = (self._clock() if time_ms is None else time_ms) - self.start_ms
        item = _Item(kind, max(0.0, t), data, nbytes)
        with self._cond:
            if self._closed:
                return False
            while self._queue and (
                len(self._queue) >= self._max_items or self._queued_bytes + nbytes > self._max_bytes
            ):
                victim = next((q for q in self._queue if q.kind == _VIDEO), None)
                if victim is None:
                    break
                self._queue.remove(victim)
                self._queued_bytes -= victim.nbytes
                self.dropped["video"] += 1
                if isinstance(victim.data, _Vp8):
                    self._mark_vp8_gap()
            if len(self._queue) >= self._max_items or self._queued_bytes + nbytes > self._max_bytes:
                self.dropped[kind] += 1
                if isinstance(data, _Vp8):
                    self._vp8_gap = True
                return False
            if isinstance(data, _Vp8):
                data.gap, self._vp8_gap = data.gap or self._vp8_gap, False
                self._vp8_source = data.source
            self._queue.append(item)
            self._queued_bytes += nbytes
            self._cond.notify()
        return True

    def _mark_vp8_gap(self) -> None:
        """A VP8 frame was dropped: the next one (queued or to come) starts with a gap."""
        later = next((q.data for q in self._queue if isinstance(q.data, _Vp8)), None)
        if later is not None:
            later.gap = True
        else:
            self._vp8_gap = True

    @property
    def wants_keyframe(self) -> bool:
        """True while VP8 screen frames cannot be decoded (start, after a drop or error):
        the server asks the presenter for a keyframe (throttled)."""
        return self.keyframe_wanted(SCREEN_SOURCE)

    def keyframe_wanted(self, source: str) -> bool:
        """True while VP8 frames of ``source`` cannot be decoded: nothing decoded yet, the
        last frame queued was of another source, or a frame was dropped or failed.

        Read without the queue lock (callers may hold the server's session lock): a stale
        answer costs one throttled keyframe request, or one a moment later.
        """
        return self._vp8_source != source or self._vp8_gap or self._writer.wants_keyframe

    # --- control ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True until the recording has ended (stopped, disk full or failed)."""
        return not self._done.is_set()

    @property
    def result(self) -> RecordingResult | None:
        """The finished recording, once it has ended."""
        return self._result

    def elapsed_ms(self) -> float:
        """Milliseconds since the recording started, on the recorder's clock."""
        return self._clock() - self.start_ms

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the recorder thread has taken every queued item (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and not self._done.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = config.RECORDING_STOP_TIMEOUT_S) -> RecordingResult:
        """End the recording (idempotent), wait for the file to be finalised, return it."""
        with self._cond:
            if self._stop_ms is None and not self._closed:
                self._stop_ms = self.elapsed_ms()
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._result is None:
            raise RecordingError(Reason.FAILED, "The recorder did not finish in time.")
        return self._result

    # --- the recorder thread ------------------------------------------------------------

    def _take(self, timeout: float) -> tuple[_Item | None | bool, float]:
        """The next item (None on timeout, True when stopped and nothing is left) and the
        time up to which the timeline may be advanced without overtaking a queued item.
        """
        with self._cond:
            if not self._queue:
                if self._stop_ms is not None:
                    return True, 0.0
                self._cond.wait(timeout)
            horizon = self.elapsed_ms() - config.RECORDING_HOLD_MS
            if not self._queue:
                return (True if self._stop_ms is not None else None), horizon
            item = self._queue.popleft()
            self._queued_bytes -= item.nbytes
            if self._queue:
                horizon = min(horizon, self._queue[0].time_ms)
            else:
                self._cond.notify_all()  # wait_drained
            return item, horizon

    def _run(self) -> None:
        reason = Reason.FAILED
        try:
            reason = self._loop()
        except OSError as exc:
            reason = Reason.DISK_FULL if exc.errno == errno.ENOSPC else Reason.WRITE_ERROR
            log.warning("recording %s stopped: %s", self.path.name, exc)
        except Exception:
            log.exception("recording %s failed", self.path.name)
        self._finish(reason)

    def _loop(self) -> str:
        writer = self._writer
        wake_s = config.RECORDING_IDLE_WAKE_S
        now = time.monotonic()
        next_advance = now + wake_s
        next_disk_check = now + self._disk_check_interval_s
        while True:
            item, horizon = self._take(wake_s)
            if item is True:
                return Reason.STOPPED
            if isinstance(item, _Item):
                writer.handle(item)
            now = time.monotonic()
            if item is None or now >= next_advance:
                # Silence and repeated pictures up to a little before now (never past a
                # queued item), so both streams advance even when one has no input.
                writer.advance(horizon)
                next_advance = now + wake_s
            if writer.disk_full:
                log.warning("recording %s stopped: the disk is full", self.path.name)
                return Reason.DISK_FULL
            if now >= next_disk_check:
                next_disk_check = now + self._disk_check_interval_s
                free = shutil.disk_usage(self.path.parent).free
                if free < self.min_free_bytes:
                    log.warning(
                        "recording %s stopped: %d bytes free, below the reserve of %d",
                        self.path.name,
                        free,
                        self.min_free_bytes,
                    )
                    return Reason.DISK_FULL

    def _finish(self, reason: str) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
            stop_ms = self._stop_ms
        writer = self._writer
        if reason != Reason.STOPPED or stop_ms is None:
            # Ended by itself: no more padding than it takes to line the streams up.
            self._ballast.release()
            end_ms = writer.position_ms
        else:
            end_ms = max(stop_ms, writer.position_ms)
        try:
            writer.finish(end_ms)
        except Exception as exc:
            log.warning("recording %s: finalising failed: %s", self.path.name, exc)
            if reason == Reason.STOPPED:
                is_full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
                reason = Reason.DISK_FULL if is_full or writer.disk_full else Reason.WRITE_ERROR
        if reason == Reason.STOPPED and writer.disk_full:
            reason = Reason.DISK_FULL
        self._ballast.release()
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        duration_s = max(
            writer.audio_tl.written / writer.audio_rate, writer.stats["video_frames"] / writer.fps
        )
        with self._cond:
            stats = {**writer.stats, **{f"dropped_{k}": v for k, v in self.dropped.items()}}
        self._result = RecordingResult(
            path=self.path,
            duration_s=duration_s,
            bytes=size,
            chat_path=self.chat_path,
            reason=reason,
            stats=stats,
        )
        self._done.set()
        log.info(
            "recording %s ended (%s): %.1f s, %d bytes", self.path.name, reason, duration_s, size
        )
        if self._on_stopped is not None:
            try:
                self._on_stopped(reason)
            except Exception:
                log.exception("on_stopped callback of recording %s", self.path.name)
