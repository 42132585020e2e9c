"""Client audio: sources and sinks behind small interfaces, jitter buffer, capture and playback.

A microphone, a WAV file, a tone or silence serve one ``AudioSource``; speakers,
a WAV writer or nothing serve one ``AudioSink``. PyAudio is imported only when
a real device is opened; a missing or busy device raises ``DeviceError`` with a
sentence a person can act on. The session format is mono signed 16-bit
little-endian PCM at the rate and frame size the server announced in
``welcome["media"]["audio"]``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import wave
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import config
import utils

log = logging.getLogger(__name__)

SAMPLE_DTYPE = np.dtype("<i2")


class DeviceError(RuntimeError):
    """A media device (or file standing in for one) is missing, busy or unusable."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """The session's audio format: mono int16 at ``rate_hz``, ``frame_samples`` per frame."""

    rate_hz: int = config.AUDIO_RATE_HZ
    frame_samples: int = config.AUDIO_FRAME_SAMPLES

    @property
    def frame_bytes(self) -> int:
        return self.frame_samples * config.AUDIO_SAMPLE_WIDTH_BYTES

    @property
    def frame_s(self) -> float:
        return self.frame_samples / self.rate_hz

    @classmethod
    def from_media(cls, media: dict[str, Any] | None) -> AudioFormat:
        """The format announced in ``welcome["media"]`` (defaults where absent)."""
        audio = (media or {}).get("audio") or {}
        rate = audio.get("rate", config.AUDIO_RATE_HZ)
        frame = audio.get("frame_samples", config.AUDIO_FRAME_SAMPLES)
        if not (isinstance(rate, int) and 1000 <= rate <= 192000):
            raise ValueError(f"server announced an impossible audio rate {rate!r}")
        if not (isinstance(frame, int) and 1 <= frame <= rate):
            raise ValueError(f"server announced an impossible frame size {frame!r}")
        return cls(rate, frame)


# --- Pure helpers ----------------------------------------------------------------


def to_mono_int16(raw: bytes, sample_width: int, channels: int) -> np.ndarray:
    """Convert interleaved PCM of any WAV sample width to mono int16 (channels averaged)."""
    if sample_width == 1:
        data = (np.frombuffer(raw, np.uint8).astype(np.int32) - 128) << 8
    elif sample_width == 2:
        data = np.frombuffer(raw, "<i2").astype(np.int32)
    elif sample_width == 3:
        b = np.frombuffer(raw[: len(raw) - len(raw) % 3], np.uint8).reshape(-1, 3)
        data = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8)) | (
            b[:, 2].astype(np.int8).astype(np.int32) << 16
        )
        data = data >> 8
    elif sample_width == 4:
        data = np.frombuffer(raw, "<i4").astype(np.int64) >> 16
    else:
        raise ValueError(f"unsupported sample width {sample_width} bytes")
    usable = len(data) - len(data) % channels
    data = data[:usable].reshape(-1, channels).mean(axis=1)
    return np.clip(np.round(data), -32768, 32767).astype(np.int16)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Linear-interpolation resampling of a whole int16 signal."""
    if rate_in == rate_out or len(samples) == 0:
        return samples.astype(np.int16, copy=False)
    n_out = int(round(len(samples) * rate_out / rate_in))
    positions = np.arange(n_out) * (rate_in / rate_out)
    out = np.interp(positions, np.arange(len(samples)), samples.astype(np.float64))
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


class StreamResampler:
    """Linear resampling of a stream given in chunks (keeps the phase between chunks)."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.step = rate_in / rate_out
        self._pos = 0.0  # position of the next output sample, relative to _prev's index 0
        self._prev = np.zeros(0, np.float64)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        data = np.concatenate([self._prev, chunk.astype(np.float64)])
        if len(data) < 2:
            self._prev = data
            return np.zeros(0, np.int16)
        last = len(data) - 1
        n = int(math.floor((last - self._pos) / self.step)) + 1 if self._pos <= last else 0
        positions = self._pos + np.arange(n) * self.step
        positions = positions[positions < last]
        out = np.interp(positions, np.arange(len(data)), data)
        self._pos += len(positions) * self.step
        keep_from = min(int(self._pos), last)
        self._prev = data[keep_from:]
        self._pos -= keep_from
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def rms(pcm: bytes) -> float:
    """Root mean square of int16 PCM."""
    if not pcm:
        return 0.0
    x = np.frombuffer(pcm, SAMPLE_DTYPE).astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def input_level(pcm: bytes) -> int:
    """The 0-255 meter level of a frame (same log scale as the server's ``l`` levels)."""
    return utils.level_from_rms(rms(pcm))


class ClockPacer:
    """Paces a file-backed device by the monotonic clock, one frame per ``period_s``.

    ``wait()`` returns at the end of the current frame's period, like a sound
    card that hands over a frame once it has been captured. A caller that falls
    more than ``max_lag_frames`` behind is resynchronised instead of bursting.
    """

    def __init__(
        self, period_s: float, max_lag_frames: int = config.AUDIO_PACER_MAX_LAG_FRAMES
    ) -> None:
        self.period_s = period_s
        self.max_lag_s = max_lag_frames * period_s
        self.start: float | None = None  # monotonic time of the first frame's start
        self.last_due: float | None = None  # when the frame just handed over was due
        self._deadline: float | None = None
        self.resyncs = 0

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Sleep until the current frame is due; False if ``stop`` was set meanwhile."""
        now = time.monotonic()
        if self._deadline is None:
            self.start = now
            self._deadline = now + self.period_s
        elif now - self._deadline > self.max_lag_s:
            self.resyncs += 1
            self._deadline = now + self.period_s
        delay = self._deadline - time.monotonic()
        if delay > 0:
            if stop is not None:
                if stop.wait(delay):
                    return False
            else:
                time.sleep(delay)
        self.last_due = self._deadline
        self._deadline += self.period_s
        return not (stop is not None and stop.is_set())


# --- Sources ---------------------------------------------------------------------


class AudioSource(ABC):
    """Something that yields frames of the session format: mono int16 LE bytes."""

    fmt: AudioFormat
    #: True when ``read`` blocks until the frame's time has come (device or clock).
    paced: bool = True
    #: A short description for messages ("microphone 'USB Mic'", "tone 440 Hz").
    label: str = "audio source"

    @abstractmethod
    def read(self) -> bytes | None:
        """The next frame (exactly ``fmt.frame_bytes``), or None when the source ended."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""

    def _pace(self) -> None:
        pacer: ClockPacer | None = getattr(self, "_pacer", None)
        if pacer is not None:
            pacer.wait()


class SilenceSource(AudioSource):
    """Digital silence, paced by the clock."""

    label = "silence"

    def __init__(self, fmt: AudioFormat | None = None, realtime: bool = True) -> None:
        self.fmt = fmt or AudioFormat()
        self.paced = realtime
        self._pacer = ClockPacer(self.fmt.frame_s) if realtime else None
        self._frame = bytes(self.fmt.frame_bytes)

    def read(self) -> bytes | None:
        self._pace()
        return self._frame


class ToneSource(AudioSource):
    """A sine tone (continuous phase across frames), paced by the clock."""

    def __init__(
        self,
        fmt: AudioFormat | None = None,
        freq_hz: float = 440.0,
        amplitude: float = 0.3,
        realtime: bool = True,
    ) -> None:
        self.fmt = fmt or AudioFormat()
        self.freq_hz = freq_hz
        self.amplitude = max(0.0, min(1.0, amplitude))
        self.paced = realtime
        self.label = f"tone {freq_hz:g} Hz"
        self._pacer = ClockPacer(self.fmt.frame_s) if realtime else None
        self._n = 0

    def read(self) -> bytes | None:
        self._pace()
        t = (self._n + np.arange(self.fmt.frame_samples)) / self.fmt.rate_hz
        self._n += self.fmt.frame_samples
        x = self.amplitude * 32767 * np.sin(2 * np.pi * self.freq_hz * t)
        return np.round(x).astype(SAMPLE_DTYPE).tobytes()


class WavFileSource(AudioSource):
    """A WAV file played as a microphone: converted to the session format, clock-paced.

    The file is loaded whole (at most ``AUDIO_FILE_MAX_BYTES``), mixed to mono,
    converted to int16 and resampled to the session rate. The last frame is
    padded with silence. With ``loop`` the file repeats; otherwise ``read``
    returns None after the end.
    """

    def __init__(
        self,
        path: str | Path,
        fmt: AudioFormat | None = None,
        loop: bool = False,
        realtime: bool = True,
        max_bytes: int = config.AUDIO_FILE_MAX_BYTES,
    ) -> None:
        self.fmt = fmt or AudioFormat()
        self.path = Path(path)
        self.loop = loop
        self.paced = realtime
        self.label = f"audio file {self.path.name!r}"
        try:
            size = self.path.stat().st_size
            if size > max_bytes:
                raise DeviceError(
                    f"Audio file {str(self.path)!r} is {size} bytes; at most {max_bytes} allowed."
                )
            with wave.open(str(self.path), "rb") as wf:
                channels, width, rate = wf.getnchannels(), wf.getsampwidth(), wf.getframerate()
                raw = wf.readframes(wf.getnframes())
        except FileNotFoundError:
            raise DeviceError(f"Audio file {str(self.path)!r} does not exist.") from None
        except (wave.Error, EOFError, OSError) as exc:
            raise DeviceError(f"Audio file {str(self.path)!r} is not a usable WAV: {exc}") from None
        try:
            mono = to_mono_int16(raw, width, channels)
        except ValueError as exc:
            raise DeviceError(f"Audio file {str(self.path)!r}: {exc}") from None
        self.source_rate_hz = rate
        self.samples = resample(mono, rate, self.fmt.rate_hz)
        pad = (-len(self.samples)) % self.fmt.frame_samples
        if pad or not len(self.samples):
            self.samples = np.concatenate(
                [self.samples, np.zeros(pad or self.fmt.frame_samples, np.int16)]
            )
        self._pcm = self.samples.astype(SAMPLE_DTYPE).tobytes()
        self._pos = 0
        self._pacer = ClockPacer(self.fmt.frame_s) if realtime else None

    @property
    def start_time(self) -> float | None:
        """Monotonic time at which the first frame began (clock-paced only)."""
        return self._pacer.start if self._pacer else None

    @property
    def frame_due(self) -> float | None:
        """Monotonic time at which the frame last returned was complete (clock-paced only)."""
        return self._pacer.last_due if self._pacer else None

    @property
    def frames_read(self) -> int:
        return self._pos // self.fmt.frame_bytes

    def read(self) -> bytes | None:
        if self._pos >= len(self._pcm):
            if not self.loop:
                return None
            self._pos = 0
        self._pace()
        frame = self._pcm[self._pos : self._pos + self.fmt.frame_bytes]
        self._pos += self.fmt.frame_bytes
        return frame


def _pyaudio():
    """Import PyAudio lazily; a missing module is a DeviceError."""
    try:
        import pyaudio
    except ImportError as exc:
        raise DeviceError(
            f"PyAudio is not installed ({exc}); real audio devices are off."
        ) from None
    return pyaudio


def _list_devices(kind: str) -> list[dict[str, Any]]:
    try:
        pyaudio = _pyaudio()
    except DeviceError:
        return []
    pa = pyaudio.PyAudio()
    try:
        out = []
        key = "maxInputChannels" if kind == "input" else "maxOutputChannels"
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            if info.get(key, 0) > 0:
                out.append(
                    {
                        "index": i,
                        "name": str(info.get("name", "")),
                        "channels": int(info.get(key, 0)),
                        "default_rate_hz": int(info.get("defaultSampleRate", 0) or 0),
                    }
                )
        return out
    finally:
        pa.terminate()


def list_input_devices() -> list[dict[str, Any]]:
    """Microphones PyAudio can see: dicts with index, name, channels, default_rate_hz."""
    return _list_devices("input")


def list_output_devices() -> list[dict[str, Any]]:
    """Speakers PyAudio can see: dicts with index, name, channels, default_rate_hz."""
    return _list_devices("output")


def _resolve_device(device: int | str | None, kind: str) -> int | None:
    """A device index from an index, a (part of a) name, or None for the default."""
    devices = _list_devices(kind)
    what = "microphone" if kind == "input" else "speaker"
    if not devices:
        raise DeviceError(f"No {what} found: the audio system lists no {kind} devices.")
    if device is None or device == "":
        return None
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        idx = int(device)
        if any(d["index"] == idx for d in devices):
            return idx
        raise DeviceError(f"No {what} with index {idx}; available: {_names(devices)}.")
    wanted = str(device).casefold()
    for d in devices:
        if d["name"].casefold() == wanted:
            return d["index"]
    matches = [d for d in devices if wanted in d["name"].casefold()]
    if len(matches) == 1:
        return matches[0]["index"]
    raise DeviceError(f"No single {what} named {device!r}; available: {_names(devices)}.")


def _names(devices: list[dict[str, Any]]) -> str:
    return ", ".join(f"{d['index']}: {d['name']!r}" for d in devices) or "none"


def _device_info(pa: Any, index: int | None, kind: str) -> dict:
    """PyAudio's description of device ``index``, or of the default ``kind`` device."""
    if index is not None:
        return pa.get_device_info_by_index(index)
    if kind == "input":
        return pa.get_default_input_device_info()
    return pa.get_default_output_device_info()


class MicrophoneSource(AudioSource):
    """A PyAudio input device (by index, name or default), paced by the device.

    Opens at the session rate; a device that refuses it is opened at its own
    default rate and resampled.
    """

    def __init__(self, fmt: AudioFormat | None = None, device: int | str | None = None) -> None:
        self.fmt = fmt or AudioFormat()
        pyaudio = _pyaudio()
        index = _resolve_device(device, "input")
        self._pa = pyaudio.PyAudio()
        self._resampler: StreamResampler | None = None
        self._pending = np.zeros(0, np.int16)
        try:
            info = _device_info(self._pa, index, "input")
            self.label = f"microphone {info.get('name', '?')!r}"
            try:
                self._rate_in = self.fmt.rate_hz
                self._stream = self._open(pyaudio, index, self._rate_in)
            except (OSError, ValueError):
                self._rate_in = int(info.get("defaultSampleRate") or self.fmt.rate_hz)
                self._stream = self._open(pyaudio, index, self._rate_in)
                self._resampler = StreamResampler(self._rate_in, self.fmt.rate_hz)
        except (OSError, ValueError) as exc:
            self._pa.terminate()
            raise DeviceError(
                f"Cannot open the microphone ({exc}); it may be missing or in use."
            ) from None
        self._chunk_in = max(1, round(self.fmt.frame_samples * self._rate_in / self.fmt.rate_hz))

    def _open(self, pyaudio: Any, index: int | None, rate: int) -> Any:
        return self._pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=rate,
            input=True,
            input_device_index=index,
            frames_per_buffer=max(1, round(self.fmt.frame_samples * rate / self.fmt.rate_hz)),
        )

    def read(self) -> bytes | None:
        n = self.fmt.frame_samples
        while len(self._pending) < n:
            try:
                raw = self._stream.read(self._chunk_in, exception_on_overflow=False)
            except OSError as exc:
                raise DeviceError(f"The microphone stopped working ({exc}).") from None
            chunk = np.frombuffer(raw, SAMPLE_DTYPE).astype(np.int16)
            if self._resampler is not None:
                chunk = self._resampler.process(chunk)
            self._pending = np.concatenate([self._pending, chunk])
        frame, self._pending = self._pending[:n], self._pending[n:]
        return frame.astype(SAMPLE_DTYPE).tobytes()

    def close(self) -> None:
        try:
            self._stream.stop_stream()
            self._stream.close()
        except OSError:
            pass
        self._pa.terminate()


# --- Sinks -----------------------------------------------------------------------


class AudioSink(ABC):
    """Something that plays (or stores) frames of the session format."""

    fmt: AudioFormat
    #: True when ``write`` blocks at the device's pace.
    paced: bool = False
    label: str = "audio sink"

    @abstractmethod
    def write(self, pcm: bytes) -> None:
        """Play or store one frame."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release the device."""


class NullSink(AudioSink):
    """Discards everything (a participant without speakers)."""

    label = "no speakers"

    def __init__(self, fmt: AudioFormat | None = None) -> None:
        self.fmt = fmt or AudioFormat()
        self.frames = 0

    def write(self, pcm: bytes) -> None:
        self.frames += 1


class WavFileSink(AudioSink):
    """Writes what would be played into a mono int16 WAV file at the session rate.

    ``start_time`` is the monotonic time of the first frame written, so the
    recording can be put on the same timeline as a source.
    """

    def __init__(self, path: str | Path, fmt: AudioFormat | None = None) -> None:
        self.fmt = fmt or AudioFormat()
        self.path = Path(path)
        self.label = f"recording {self.path.name!r}"
        try:
            self._wf = wave.open(str(self.path), "wb")  # closed in close()
        except OSError as exc:
            raise DeviceError(f"Cannot write the recording {str(self.path)!r}: {exc}") from None
        self._wf.setnchannels(1)
        self._wf.setsampwidth(config.AUDIO_SAMPLE_WIDTH_BYTES)
        self._wf.setframerate(self.fmt.rate_hz)
        self.start_time: float | None = None
        self.frames = 0
        self._closed = False

    def write(self, pcm: bytes) -> None:
        if self._closed:
            return
        if self.start_time is None:
            self.start_time = time.monotonic()
        self._wf.writeframes(pcm)
        self.frames += 1

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wf.close()


class SpeakerSink(AudioSink):
    """A PyAudio output device (by index, name or default); ``write`` blocks at its pace."""

    paced = True

    def __init__(self, fmt: AudioFormat | None = None, device: int | str | None = None) -> None:
        self.fmt = fmt or AudioFormat()
        pyaudio = _pyaudio()
        index = _resolve_device(device, "output")
        self._pa = pyaudio.PyAudio()
        try:
            info = _device_info(self._pa, index, "output")
            self.label = f"speakers {info.get('name', '?')!r}"
            self._stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=self.fmt.rate_hz,
                output=True,
                output_device_index=index,
                frames_per_buffer=self.fmt.frame_samples,
            )
        except (OSError, ValueError) as exc:
            self._pa.terminate()
            raise DeviceError(
                f"Cannot open the speakers ({exc}); they may be missing or in use."
            ) from None

    def write(self, pcm: bytes) -> None:
        try:
            self._stream.write(pcm)
        except OSError as exc:
            raise DeviceError(f"The speakers stopped working ({exc}).") from None

    def close(self) -> None:
        try:
            self._stream.stop_stream()
            self._stream.close()
        except OSError:
            pass
        self._pa.terminate()


# --- Jitter buffer (pure) --------------------------------------------------------

_HALF = utils.U32 // 2


def _seq_diff(a: int, b: int) -> int:
    """a - b on the u32 sequence circle, in (-2**31, 2**31]."""
    d = (a - b) % utils.U32
    return d - utils.U32 if d > _HALF else d


@dataclass
class JitterStats:
    """Counters of what the jitter buffer did with the frames it was given."""

    received: int = 0
    played: int = 0
    late: int = 0
    duplicate: int = 0
    bad_size: int = 0
    overflow: int = 0
    concealed: int = 0
    silent: int = 0
    drained: int = 0
    restarts: int = 0  # the sender's numbering started over


class JitterBuffer:
    """Orders frames by ``seq`` and hands one out per playback period.

    Playback starts once ``target_frames`` are buffered. Reordered frames are
    put in place; duplicates and frames whose turn has passed are dropped; the
    buffered span never exceeds ``max_frames`` (the oldest are skipped), which
    bounds the delay. A missing frame is concealed by repeating the last one,
    fading out, for ``conceal_frames`` periods, then silence; a buffer that
    has run dry that long starts over (re-buffers to the target) on the next
    talk spurt. A buffer that stayed above the target for ``drain_window``
    periods drops one frame, so the delay a burst added drains away.
    Not thread-safe: the owner locks.
    """

    def __init__(
        self,
        frame_bytes: int,
        target_frames: int = config.JITTER_TARGET_FRAMES,
        max_frames: int = config.JITTER_MAX_FRAMES,
        conceal_frames: int = config.CONCEAL_MAX_FRAMES,
        drain_window: int = config.JITTER_DRAIN_WINDOW_FRAMES,
    ) -> None:
        if not 1 <= target_frames <= max_frames:
            raise ValueError("need 1 <= target_frames <= max_frames")
        self.frame_bytes = frame_bytes
        self.target = target_frames
        self.max = max_frames
        self.conceal_max = conceal_frames
        self.drain_window = drain_window
        self.stats = JitterStats()
        self._window_pops = 0
        self._window_min = max_frames
        self._frames: dict[int, bytes] = {}
        self._next: int | None = None  # seq to play next; None while (re)buffering
        self._floor: int | None = None  # last seq played or skipped: older frames are late
        self._last: np.ndarray | None = None
        self._missing = 0
        self._late_run = 0
        self._last_played: int | None = None
        self._silence = bytes(frame_bytes)

    @property
    def depth(self) -> int:
        """Frames waiting."""
        return len(self._frames)

    @property
    def playing(self) -> bool:
        return self._next is not None

    def put(self, seq: int, pcm: bytes) -> bool:
        """Store a received frame; False if it was dropped (late, duplicate, bad size)."""
        seq %= utils.U32
        if len(pcm) != self.frame_bytes:
            self.stats.bad_size += 1
            return False
        if self._floor is not None and _seq_diff(seq, self._floor) <= 0:
            self.stats.late += 1
            self._late_run += 1
            if self._late_run <= 2 * self.max or self._frames:
                return False
            # A long run of "late" frames with nothing buffered: the sender restarted its
            # numbering. Start over from this frame instead of discarding the stream.
            self._floor = None
            self._next = None
            self.stats.restarts += 1
        self._late_run = 0
        if seq in self._frames:
            self.stats.duplicate += 1
            return False
        self.stats.received += 1
        self._frames[seq] = pcm
        self._trim()
        return True

    def _oldest(self) -> int:
        ref = next(iter(self._frames))
        return min(self._frames, key=lambda s: _seq_diff(s, ref))

    def _newest(self) -> int:
        ref = next(iter(self._frames))
        return max(self._frames, key=lambda s: _seq_diff(s, ref))

    def _trim(self) -> None:
        """Keep the span from the next frame to the newest within ``max`` frames."""
        newest = self._newest()
        start = self._next if self._next is not None else self._oldest()
        if _seq_diff(newest, start) < self.max:
            return
        new_start = (newest - self.max + 1) % utils.U32
        for s in [s for s in self._frames if _seq_diff(s, new_start) < 0]:
            del self._frames[s]
            self.stats.overflow += 1
        if self._next is not None:
            self._next = new_start
        self._floor = (new_start - 1) % utils.U32

    def _drain(self) -> None:
        """Drop the oldest waiting frame if the buffer never fell below target in a window.

        After a burst (a stalled sender or server catching up) the buffer holds more
        than it needs; without this the extra delay would last until the talker stops.
        """
        if self._next is None or self.drain_window <= 0:
            return
        depth = len(self._frames)
        self._window_min = min(self._window_min, depth)
        self._window_pops += 1
        if self._window_pops < self.drain_window:
            return
        excess = self._window_min >= self.target
        self._window_pops = 0
        self._window_min = self.max
        if excess and self._next in self._frames:
            del self._frames[self._next]
            self._floor = self._next
            self._next = (self._next + 1) % utils.U32
            self.stats.drained += 1

    def pop(self) -> bytes:
        """The frame for this playback period: real, concealed, or silence."""
        if self._next is None:
            if len(self._frames) < self.target:
                self.stats.silent += 1
                return self._silence
            self._next = self._oldest()
        seq = self._next
        self._next = (seq + 1) % utils.U32
        self._floor = seq
        pcm = self._frames.pop(seq, None)
        self._drain()
        if pcm is not None:
            self._missing = 0
            self._last_played = seq
            self._last = np.frombuffer(pcm, SAMPLE_DTYPE)
            self.stats.played += 1
            return pcm
        self._missing += 1
        if not self._frames and self._missing > self.conceal_max:
            # The talker stopped (or the stream died): re-buffer on the next spurt, which
            # may continue the numbering right after the last frame really played.
            self._next = None
            self._floor = self._last_played
        if self._last is not None and self._missing <= self.conceal_max:
            gain = (self.conceal_max + 1 - self._missing) / (self.conceal_max + 1)
            self.stats.concealed += 1
            return np.round(self._last * gain).astype(SAMPLE_DTYPE).tobytes()
        self._last = None
        self.stats.silent += 1
        return self._silence


# --- Threads ---------------------------------------------------------------------


class AudioCapture:
    """Thread ``audio-capture``: reads frames from a source and sends them (unless muted).

    ``level`` is the latest local input level (0-255) for the GUI meter, kept
    up to date while muted too. ``on_end`` runs (on the capture thread) when
    a non-looping source ends or the device fails.
    """

    def __init__(
        self,
        client: Any,
        source: AudioSource,
        muted: bool = False,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.source = source
        self.muted = muted
        self.on_end = on_end
        self.level = 0
        self.frames_sent = 0
        self.frames_read = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audio-capture", daemon=True)

    def start(self) -> AudioCapture:
        self._thread.start()
        return self

    def set_muted(self, muted: bool) -> None:
        """Muted: frames are still read (for the meter) but not sent."""
        self.muted = muted

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        reason = "stopped"
        try:
            while not self._stop.is_set():
                pcm = self.source.read()
                if pcm is None:
                    reason = f"{self.source.label} ended"
                    break
                self.frames_read += 1
                self.level = input_level(pcm)
                if self._stop.is_set():
                    break
                if not self.muted:
                    self.client.send_audio(pcm)
                    self.frames_sent += 1
        except DeviceError as exc:
            reason = str(exc)
            log.warning("audio capture stopped: %s", exc)
        except OSError as exc:  # the client's socket closed under us
            reason = f"sending failed: {exc}"
            log.info("audio capture stopped: %s", exc)
        except ValueError as exc:  # a source whose format is not the session's
            reason = f"the audio source does not match the session format: {exc}"
            log.error("audio capture stopped: %s", exc)
        finally:
            self.level = 0
        if self.on_end is not None and not self._stop.is_set():
            self.on_end(reason)

    def stop(self) -> None:
        """Stop reading, join the thread, release the device."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(config.MEDIA_THREAD_JOIN_TIMEOUT_S)
        self.source.close()


class AudioPlayback:
    """Thread ``audio-playback``: the server's N-1 mix through a jitter buffer to a sink.

    Frames arrive through the client's ``audio`` event (on its UDP thread) and
    are put in the jitter buffer; the playback thread takes one frame per
    period, paced by the sink's device or by the monotonic clock.
    """

    def __init__(
        self,
        client: Any,
        sink: AudioSink,
        fmt: AudioFormat | None = None,
        target_frames: int = config.JITTER_TARGET_FRAMES,
        max_frames: int = config.JITTER_MAX_FRAMES,
    ) -> None:
        self.client = client
        self.sink = sink
        self.fmt = fmt or sink.fmt
        self.jitter = JitterBuffer(self.fmt.frame_bytes, target_frames, max_frames)
        # Taken by the client's udp-receiver thread (put) and audio-playback (pop, stats);
        # guards self.jitter.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pacer = None if sink.paced else ClockPacer(self.fmt.frame_s)
        self.frames_played = 0
        self._thread = threading.Thread(target=self._run, name="audio-playback", daemon=True)
        client.on("audio", self._on_audio)

    def _on_audio(self, pcm: bytes, seq: int, time_ms: int) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            self.jitter.put(seq, pcm)

    def start(self) -> AudioPlayback:
        self._thread.start()
        return self

    def stats(self) -> JitterStats:
        with self._lock:
            return JitterStats(**vars(self.jitter.stats))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._pacer is not None and not self._pacer.wait(self._stop):
                    break
                with self._lock:
                    frame = self.jitter.pop()
                self.sink.write(frame)
                self.frames_played += 1
        except DeviceError as exc:
            log.warning("audio playback stopped: %s", exc)

    def stop(self) -> None:
        """Stop playing, join the thread, close the sink (a WAV file is finalised)."""
        self._stop.set()
        off = getattr(self.client, "off", None)
        if off is not None:
            off("audio", self._on_audio)
        if self._thread.is_alive():
            self._thread.join(config.MEDIA_THREAD_JOIN_TIMEOUT_S)
        self.sink.close()
