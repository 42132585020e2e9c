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

import audio_repeat
import config
import utils
from audio_codec import CodecUnavailable

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
    """Resampling of a whole int16 signal: band-limited (FFT) up to a size, else linear.

    Linear interpolation dulls the top of the speech band (-3 dB near 7 kHz from
    22.05 kHz), which Opus wideband then carries faithfully: PESQ notices.
    """
    if rate_in == rate_out or len(samples) == 0:
        return samples.astype(np.int16, copy=False)
    if len(samples) <= config.AUDIO_RESAMPLE_FFT_MAX_SAMPLES:
        n_out = int(round(len(samples) * rate_out / rate_in))
        spec = np.fft.rfft(samples.astype(np.float64))
        bins = n_out // 2 + 1
        spec = spec[:bins] if len(spec) >= bins else np.pad(spec, (0, bins - len(spec)))
        out = np.fft.irfft(spec, n_out) * n_out / len(samples)
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)
    return resample_linear(samples, rate_in, rate_out)


def resample_linear(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Linear-interpolation resampling of a whole int16 signal (cheap, dulls the top)."""
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


# --- Microphone processing --------------------------------------------------------


class VoiceProcessing:
    """The microphone path's echo canceller, noise suppressor and gain control, switchable.

    Shared by capture (``capture``) and playback (``playback``: every frame sent to the
    speakers, so the canceller knows the far end). Settings call ``configure``. Without
    libspeexdsp it passes audio through and says why in ``unavailable_reason``.
    """

    def __init__(
        self,
        frame_samples: int = config.AUDIO_FRAME_SAMPLES,
        rate_hz: int = config.AUDIO_RATE_HZ,
        echo: bool = True,
        denoise: bool = config.AEC_DENOISE_ENABLED,
        agc: bool = config.AEC_AGC_ENABLED,
    ) -> None:
        self.frame_samples = frame_samples
        self.rate_hz = rate_hz
        # Taken by audio-capture (capture), audio-playback (playback) and the GUI thread
        # (configure); guards the canceller, which is not thread-safe.
        self._lock = threading.Lock()
        self._aec: Any = None
        self.echo = self.denoise = self.agc = False
        self.unavailable_reason = ""
        self.configure(echo, denoise, agc)

    def configure(self, echo: bool, denoise: bool, agc: bool) -> None:
        """Switch each stage on or off (a new canceller: it relearns the echo path)."""
        aec = None
        reason = ""
        if echo or denoise or agc:
            from echo_canceller import EchoCanceller  # lazily: ctypes + libspeexdsp

            aec = EchoCanceller(
                rate_hz=self.rate_hz,
                frame_samples=self.frame_samples,
                echo=echo,
                denoise=denoise,
                agc=agc,
            )
            if not aec.available:
                reason = aec.unavailable_reason or "libspeexdsp is missing"
                aec = None
        with self._lock:
            old, self._aec = self._aec, aec
            self.echo, self.denoise, self.agc = echo, denoise, agc
            self.unavailable_reason = reason
        if old is not None:
            old.close()

    @property
    def active(self) -> bool:
        return self._aec is not None

    def capture(self, pcm: bytes) -> bytes:
        with self._lock:
            if self._aec is None:
                return pcm
            return self._aec.capture(pcm).tobytes()

    def playback(self, pcm: bytes) -> None:
        with self._lock:
            if self._aec is not None:
                self._aec.playback(pcm)

    def close(self) -> None:
        with self._lock:
            old, self._aec = self._aec, None
        if old is not None:
            old.close()


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
        voice: VoiceProcessing | None = None,
    ) -> None:
        self.client = client
        self.source = source
        self.muted = muted
        self.on_end = on_end
        self.voice = voice  # echo canceller / noise suppressor / AGC, or None
        self.level = 0
        self.packets_sent = 0
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
                if self.voice is not None:
                    pcm = self.voice.capture(pcm)
                self.level = input_level(pcm)
                if self._stop.is_set():
                    break
                if not self.muted:
                    if self.client.send_audio(pcm):
                        self.packets_sent += 1
                    self.frames_sent += 1
        except DeviceError as exc:
            reason = str(exc)
            log.warning("audio capture stopped: %s", exc)
        except OSError as exc:  # the client's socket closed under us
            reason = f"sending failed: {exc}"
            log.info("audio capture stopped: %s", exc)
        except CodecUnavailable as exc:
            reason = f"no Opus codec: {exc}"
            log.warning("audio capture stopped: %s", exc)
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
    """Thread ``audio-playback``: the server's Opus mix through an adaptive jitter buffer.

    Packets arrive through the client's ``audio`` event (on its UDP thread) and are
    put in place by ``seq`` with their arrival time; the playback thread takes 20 ms
    per period (decoded, FEC-recovered or concealed, time-stretched toward the
    buffer's target), paced by the sink's device or by the monotonic clock, writes
    it to the sink and hands the same frame to the echo canceller. Raises
    ``CodecUnavailable`` when libopus cannot be loaded.
    """

    def __init__(
        self,
        client: Any,
        sink: AudioSink,
        fmt: AudioFormat | None = None,
        voice: VoiceProcessing | None = None,
    ) -> None:
        from audio_codec import OpusDecoder
        from jitter_buffer import AdaptiveJitterBuffer

        self.client = client
        self.sink = sink
        self.fmt = fmt or sink.fmt
        self.voice = voice
        self.jitter = AdaptiveJitterBuffer(
            OpusDecoder(), rate_hz=self.fmt.rate_hz, frame_ms=round(1000 * self.fmt.frame_s)
        )
        # Taken by the client's udp-receiver thread (put) and audio-playback (get, stats);
        # guards self.jitter.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pacer = None if sink.paced else ClockPacer(self.fmt.frame_s)
        self.frames_played = 0
        # The buffer's counts at the last loss report (send_audio_report).
        self._reported = audio_repeat.snapshot(self.jitter.stats)
        self._report_every = max(1, round(config.AUDIO_LOSS_REPORT_INTERVAL_S / self.fmt.frame_s))
        self._thread = threading.Thread(target=self._run, name="audio-playback", daemon=True)
        client.on("audio", self._on_audio)

    def _on_audio(self, packet: bytes, seq: int, time_ms: int) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            self.jitter.put(seq, packet, 1000.0 * time.monotonic())

    def start(self) -> AudioPlayback:
        self._thread.start()
        return self

    def stats(self) -> dict[str, float]:
        """The jitter buffer's counters: FEC used, concealed frames, delays (ms), ..."""
        with self._lock:
            out = self.jitter.stats.as_dict()
        out["played"] = self.frames_played
        return out

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._pacer is not None and not self._pacer.wait(self._stop):
                    break
                with self._lock:
                    frame = self.jitter.get(1000.0 * time.monotonic()).tobytes()
                self.sink.write(frame)
                if self.voice is not None:
                    self.voice.playback(frame)
                self.frames_played += 1
                if self.frames_played % self._report_every == 0:
                    self._report_loss()
        except DeviceError as exc:
            log.warning("audio playback stopped: %s", exc)

    def _report_loss(self) -> None:
        """Tell the server the frames decoded and lost (FEC or concealment) since last time,
        so the encoders plan their FEC for it (PROTOCOL.md section 4, ``report``).

        The counts are datagrams (audio_repeat.py): two a frame while the server repeats,
        so a frame played from its repeat still counts the first copy lost, and
        repeating does not hide the loss that keeps it on."""
        with self._lock:
            now = audio_repeat.snapshot(self.jitter.stats)
        received, lost = audio_repeat.copy_counts(self._reported, now)
        self._reported = now
        send = getattr(self.client, "send_audio_report", None)
        if send is not None and received + lost > 0:
            try:
                send(received, lost)
            except (OSError, utils.FusionError) as exc:  # not connected: the next one will do
                log.debug("audio report not sent: %s", exc)

    def stop(self) -> None:
        """Stop playing, join the thread, close the sink (a WAV file is finalised)."""
        self._stop.set()
        off = getattr(self.client, "off", None)
        if off is not None:
            off("audio", self._on_audio)
        if self._thread.is_alive():
            self._thread.join(config.MEDIA_THREAD_JOIN_TIMEOUT_S)
        self.sink.close()


# --- Settings: microphone test and test sound -------------------------------------


def chime(fmt: AudioFormat | None = None) -> list[bytes]:
    """A short two-note chime (E5 then A5, ~0.6 s with a fade), in frames of ``fmt``."""
    fmt = fmt or AudioFormat()
    notes = ((659.25, 0.25), (880.0, 0.35))
    parts = []
    for freq, seconds in notes:
        t = np.arange(int(seconds * fmt.rate_hz)) / fmt.rate_hz
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-t * 6.0)
        parts.append(config.TEST_SOUND_AMPLITUDE * envelope * np.sin(2 * np.pi * freq * t))
    x = np.concatenate(parts)
    x = np.concatenate([x, np.zeros(-len(x) % fmt.frame_samples)])
    pcm = np.round(x).astype(SAMPLE_DTYPE)
    n = fmt.frame_samples
    return [pcm[i : i + n].tobytes() for i in range(0, len(pcm), n)]


class MicTest:
    """Thread ``mic-test``: Settings' "Test microphone", like Meet's.

    Records ``MIC_TEST_SECONDS`` from ``source`` (state ``recording``, ``level`` is the
    input level) and plays it back on ``sink`` (``playing``), then ``idle``. Without a
    source (the microphone is in a call) it only shows the call's ``level()``: playing
    it back would send the echo into the meeting. Owns and closes source and sink.
    """

    def __init__(
        self,
        source: AudioSource | None,
        sink: AudioSink,
        level: Callable[[], int] | None = None,
        seconds: float = config.MIC_TEST_SECONDS,
    ) -> None:
        self.source = source
        self.sink = sink
        self._level_of = level
        self.seconds = seconds
        self.state = "idle"
        self._level = 0
        self.recorded: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mic-test", daemon=True)

    @property
    def level(self) -> int:
        if self.source is None and self._level_of is not None:
            return self._level_of()
        return self._level

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> MicTest:
        self.state = "recording"
        self._thread.start()
        return self

    def _run(self) -> None:
        fmt = self.sink.fmt
        frames = max(1, int(self.seconds / fmt.frame_s))
        pacer = ClockPacer(fmt.frame_s)
        try:
            for _ in range(frames):
                if self._stop.is_set():
                    return
                if self.source is None:
                    pacer.wait(self._stop)
                    continue
                pcm = self.source.read()
                if pcm is None:
                    break
                self._level = input_level(pcm)
                self.recorded.append(pcm)
            self._level = 0
            self.state = "playing"
            for pcm in self.recorded:
                if self._stop.is_set():
                    return
                self.sink.write(pcm)
        except DeviceError as exc:
            log.warning("microphone test stopped: %s", exc)
        finally:
            self.state = "idle"
            self._level = 0
            if self.source is not None:
                self.source.close()
            self.sink.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(config.MEDIA_THREAD_JOIN_TIMEOUT_S)


def play_chime(sink: AudioSink) -> threading.Thread:
    """Play ``chime()`` on ``sink`` on thread ``test-sound`` (0.6 s), then close the sink."""

    def run() -> None:
        try:
            for pcm in chime(sink.fmt):
                sink.write(pcm)
        except DeviceError as exc:
            log.warning("test sound stopped: %s", exc)
        finally:
            sink.close()

    thread = threading.Thread(target=run, name="test-sound", daemon=True)
    thread.start()
    return thread
