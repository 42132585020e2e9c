"""Acoustic echo cancellation, noise suppression and automatic gain for the microphone.

speexdsp's echo canceller (MDF adaptive filter) and preprocessor (noise
suppression, residual echo suppression, AGC), called through ctypes on the
system's ``libspeexdsp`` (Debian ``libspeexdsp1``; no build step). The
canceller is fed the exact frames sent to the speakers (``playback``) and the
microphone frames (``capture``), which it returns cleaned.

A missing library is not a crash: ``EchoCanceller`` then passes frames through
unchanged, ``available`` is False and ``unavailable_reason`` says why in a
sentence a person can act on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections import deque

import numpy as np

import config

log = logging.getLogger(__name__)

_SAMPLE = np.dtype("<i2")

# speex_echo.h / speex_preprocess.h request codes.
_SPEEX_ECHO_SET_SAMPLING_RATE = 24
_PP_SET_DENOISE = 0
_PP_SET_AGC = 2
_PP_SET_AGC_LEVEL = 6
_PP_SET_NOISE_SUPPRESS = 18
_PP_SET_ECHO_SUPPRESS = 20
_PP_SET_ECHO_SUPPRESS_ACTIVE = 22
_PP_SET_ECHO_STATE = 24


class EchoUnavailable(RuntimeError):
    """libspeexdsp cannot be loaded on this machine."""


_lock = threading.Lock()  # taken by whichever thread first loads the library; guards _lib
_lib: ctypes.CDLL | None = None


def load_speexdsp() -> ctypes.CDLL:
    """The speexdsp library with its functions typed; ``EchoUnavailable`` if missing."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        path = os.environ.get(config.AEC_LIBRARY_ENV) or ctypes.util.find_library("speexdsp")
        if not path:
            raise EchoUnavailable(
                "Echo cancellation is off: the speexdsp library is not installed "
                "(Debian/Ubuntu: apt install libspeexdsp1; macOS: brew install speexdsp)."
            )
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise EchoUnavailable(
                f"Echo cancellation is off: the speexdsp library {path!r} cannot be loaded "
                f"({exc})."
            ) from None
        vp, i16p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16)
        lib.speex_echo_state_init.restype = vp
        lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_echo_state_destroy.argtypes = [vp]
        lib.speex_echo_cancellation.argtypes = [vp, i16p, i16p, i16p]
        lib.speex_echo_ctl.argtypes = [vp, ctypes.c_int, vp]
        lib.speex_echo_state_reset.argtypes = [vp]
        lib.speex_preprocess_state_init.restype = vp
        lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_preprocess_state_destroy.argtypes = [vp]
        lib.speex_preprocess_run.argtypes = [vp, i16p]
        lib.speex_preprocess_ctl.argtypes = [vp, ctypes.c_int, vp]
        _lib = lib
        return lib


def echo_available() -> bool:
    """True when libspeexdsp loads on this machine."""
    try:
        load_speexdsp()
    except EchoUnavailable:
        return False
    return True


def _ptr(a: np.ndarray) -> ctypes._Pointer:
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))


class EchoCanceller:
    """Echo canceller + preprocessor for one microphone: ``playback(frame)``, ``capture(frame)``.

    ``playback`` is given each frame as it goes to the speakers; ``capture`` pairs
    each microphone frame with the oldest playback frame not yet used (the device
    delay between the two is learnt by the adaptive filter, up to
    ``filter_length_ms``). Frames are int16 arrays or bytes of ``frame_samples``.
    Not thread-safe: the owner locks (playback and capture run on two threads).
    """

    def __init__(
        self,
        rate_hz: int = config.AEC_RATE_HZ,
        frame_samples: int = config.AEC_FRAME_SAMPLES,
        block_samples: int = config.AEC_BLOCK_SAMPLES,
        filter_length_ms: int = config.AEC_FILTER_LENGTH_MS,
        echo: bool = True,
        denoise: bool = config.AEC_DENOISE_ENABLED,
        agc: bool = config.AEC_AGC_ENABLED,
        agc_level: float = config.AEC_AGC_LEVEL,
        noise_suppress_db: int = config.AEC_NOISE_SUPPRESS_DB,
        echo_suppress_db: int = config.AEC_ECHO_SUPPRESS_DB,
        echo_suppress_active_db: int = config.AEC_ECHO_SUPPRESS_ACTIVE_DB,
        max_queued_frames: int = config.AEC_PLAYBACK_QUEUE_FRAMES,
    ) -> None:
        if block_samples <= 0 or frame_samples % block_samples:
            raise ValueError("frame_samples must be a multiple of block_samples")
        self.rate_hz = rate_hz
        self.frame_samples = frame_samples
        self.block_samples = block_samples
        # What the preprocessor adds to the microphone path (one block), in ms.
        self.delay_ms = 1000 * block_samples / rate_hz
        self.echo_enabled = echo
        self.available = False
        self.unavailable_reason = ""
        self._echo: int | None = None
        self._pre: int | None = None
        self._queue: deque[np.ndarray] = deque(maxlen=max_queued_frames)
        self._silence = np.zeros(frame_samples, _SAMPLE)
        self.frames = 0
        self.playback_dropped = 0  # playback frames never matched by a capture (queue full)
        try:
            self._lib = load_speexdsp()
        except EchoUnavailable as exc:
            self.unavailable_reason = str(exc)
            log.warning("%s", exc)
            return
        lib = self._lib
        self._pre = lib.speex_preprocess_state_init(block_samples, rate_hz)
        if not self._pre:
            self.unavailable_reason = "speexdsp could not create a preprocessor"
            return
        if echo:
            taps = max(block_samples, rate_hz * filter_length_ms // 1000)
            self._echo = lib.speex_echo_state_init(block_samples, taps)
            if not self._echo:
                self.unavailable_reason = "speexdsp could not create an echo canceller"
                return
            rate = ctypes.c_int(rate_hz)
            lib.speex_echo_ctl(self._echo, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
            lib.speex_preprocess_ctl(self._pre, _PP_SET_ECHO_STATE, ctypes.c_void_p(self._echo))
            self._pp_int(_PP_SET_ECHO_SUPPRESS, echo_suppress_db)
            self._pp_int(_PP_SET_ECHO_SUPPRESS_ACTIVE, echo_suppress_active_db)
        self._pp_int(_PP_SET_DENOISE, 1 if denoise else 0)
        self._pp_int(_PP_SET_NOISE_SUPPRESS, noise_suppress_db)
        self._pp_int(_PP_SET_AGC, 1 if agc else 0)
        if agc:
            level = ctypes.c_float(agc_level)
            lib.speex_preprocess_ctl(self._pre, _PP_SET_AGC_LEVEL, ctypes.byref(level))
        self.available = True

    def _pp_int(self, request: int, value: int) -> None:
        v = ctypes.c_int(int(value))
        self._lib.speex_preprocess_ctl(self._pre, request, ctypes.byref(v))

    def _frame(self, frame: bytes | np.ndarray) -> np.ndarray:
        if isinstance(frame, bytes | bytearray | memoryview):
            a = np.frombuffer(frame, _SAMPLE)
        else:
            a = np.asarray(frame)
        if a.shape != (self.frame_samples,):
            raise ValueError(f"a frame is {self.frame_samples} samples, got {a.shape}")
        return np.ascontiguousarray(a, dtype=_SAMPLE)

    def playback(self, frame: bytes | np.ndarray) -> None:
        """A frame just sent to the speakers (the far end the microphone may hear)."""
        if not self.available or self._echo is None:
            return
        if len(self._queue) == self._queue.maxlen:
            self.playback_dropped += 1
        self._queue.append(self._frame(frame).copy())

    def capture(self, frame: bytes | np.ndarray) -> np.ndarray:
        """The microphone frame with echo, noise removed and gain set (int16 array)."""
        mic = self._frame(frame)
        if not self.available:
            return mic.copy()
        self.frames += 1
        out = mic.copy()
        far = None
        if self._echo is not None:
            far = self._queue.popleft() if self._queue else self._silence
        b = self.block_samples
        for i in range(0, self.frame_samples, b):
            block = np.ascontiguousarray(out[i : i + b])
            if far is not None:
                cleaned = np.empty(b, _SAMPLE)
                near_ptr, far_ptr = _ptr(block), _ptr(np.ascontiguousarray(far[i : i + b]))
                self._lib.speex_echo_cancellation(self._echo, near_ptr, far_ptr, _ptr(cleaned))
                block = cleaned
            self._lib.speex_preprocess_run(self._pre, _ptr(block))
            out[i : i + b] = block
        return out

    def reset(self) -> None:
        """Forget the learnt echo path (a new output device)."""
        self._queue.clear()
        if self.available and self._echo is not None:
            self._lib.speex_echo_state_reset(self._echo)

    def close(self) -> None:
        """Free the speexdsp states (also done when the object is collected)."""
        # The preprocessor points at the echo state: it goes first.
        if self._pre is not None:
            self._lib.speex_preprocess_state_destroy(self._pre)
            self._pre = None
        if self._echo is not None:
            self._lib.speex_echo_state_destroy(self._echo)
            self._echo = None
        self.available = False

    def __del__(self) -> None:
        if getattr(self, "_lib", None) is not None:
            self.close()
