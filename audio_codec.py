"""Opus voice codec: 48 kHz mono, 20 ms frames, VOIP, in-band FEC and DTX.

A thin, typed layer over ``opuslib`` (ctypes over the system's libopus:
``libopus0`` on Debian, ``opus.dll`` on Windows, ``libopus.0.dylib`` on macOS).
A frozen build ships its own copy and points ``FUSIONMEET_LIBOPUS`` (or the
bundle folder, ``sys._MEIPASS``) at it; see ``load_opus``. A missing library is
a ``CodecUnavailable`` with a sentence a person can act on, never a crash at
import time.

The decoder side implements the interface the jitter buffer calls
(``decode``, ``conceal``, ``decode_fec``), so the server's per-sender queues
and the client's playback share one buffer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import threading
from typing import Any, Protocol

import numpy as np

import config

_SAMPLE = np.dtype("<i2")


class CodecUnavailable(RuntimeError):
    """libopus (or opuslib) cannot be loaded on this machine."""


class CodecError(ValueError):
    """A packet libopus refused (corrupt or truncated), or a frame of the wrong size."""


def is_dtx_packet(packet: bytes) -> bool:
    """True for Opus's "the talker went quiet" packet (a TOC byte with no audio)."""
    return 0 < len(packet) <= 2


class FrameDecoder(Protocol):
    """What the jitter buffer needs from a codec: one frame of int16 PCM per call.

    ``is_dtx(packet)`` tells a packet after which the sender sends nothing until it
    speaks again (the missing frames are silence, not loss).
    """

    frame_samples: int

    def is_dtx(self, packet: bytes) -> bool: ...

    def decode(self, packet: bytes) -> np.ndarray: ...

    def conceal(self) -> np.ndarray: ...

    def decode_fec(self, next_packet: bytes) -> np.ndarray: ...


def voice_active(packet: bytes) -> bool:
    """True when a packet carries speech, by the SILK voice-activity flag where there is one.

    A SILK or hybrid packet of one frame (TOC config < 16, code 0) starts its range-coded
    data with the frame's VAD flag, coded with probability 1/2: it is the top bit of the
    byte after the TOC. Comfort-noise updates sent during DTX have it clear. Any other
    packet (CELT, several frames) counts as speech unless it is a DTX marker.
    """
    if len(packet) <= 2:
        return False
    toc = packet[0]
    if toc >> 3 < 16 and toc & 3 == 0:
        return bool(packet[1] & 0x80)
    return True


def is_one_20ms_mono_frame(packet: bytes) -> bool:
    """True when the packet's TOC says: one frame (code 0), mono, 20 ms.

    What protocol 2's ``a`` datagram promises a listener; the server forwards nothing else.
    """
    if not packet:
        return False
    toc = packet[0]
    config_id, stereo, code = toc >> 3, (toc >> 2) & 1, toc & 3
    if stereo or code != 0:
        return False
    if config_id < 12:  # SILK: 10, 20, 40, 60 ms
        return config_id % 4 == 1
    if config_id < 16:  # hybrid: 10, 20 ms
        return config_id % 2 == 1
    return config_id % 4 == 3  # CELT: 2.5, 5, 10, 20 ms


# --- loading -------------------------------------------------------------------------

_lock = threading.Lock()  # taken by whichever thread first loads opuslib; guards _opuslib
_opuslib: Any = None


def _bundled_library() -> str | None:
    """A libopus shipped with the program: the env variable, else beside a frozen build."""
    explicit = os.environ.get(config.OPUS_LIBRARY_ENV)
    if explicit:
        return explicit
    base = getattr(sys, "_MEIPASS", None)
    if base:
        for pattern in ("opus.dll", "libopus-0.dll", "libopus.0.dylib", "libopus.so.0"):
            found = glob.glob(os.path.join(base, "**", pattern), recursive=True)
            if found:
                return found[0]
    return None


def load_opus() -> Any:
    """Import ``opuslib`` once (with a bundled libopus if one is shipped); the module.

    opuslib resolves the library with ``ctypes.util.find_library("opus")`` at import
    and raises a bare ``Exception`` when it finds none; a shipped copy is handed to it
    by answering that one lookup with the copy's path.
    """
    global _opuslib
    with _lock:
        if _opuslib is not None:
            return _opuslib
        bundled = _bundled_library()
        original = ctypes.util.find_library
        if bundled:
            ctypes.util.find_library = lambda name: bundled if name == "opus" else original(name)
        try:
            import opuslib
            import opuslib.api.ctl
            import opuslib.api.decoder
            import opuslib.api.encoder
        except ImportError as exc:
            raise CodecUnavailable(
                f"The Opus codec is not installed ({exc}): pip install opuslib."
            ) from None
        except Exception as exc:  # opuslib raises a bare Exception when libopus is missing
            raise CodecUnavailable(
                f"The Opus library cannot be loaded ({exc}). Install libopus "
                "(Debian/Ubuntu: apt install libopus0; macOS: brew install opus; "
                f"Windows: put opus.dll beside the program) or set {config.OPUS_LIBRARY_ENV}."
            ) from None
        finally:
            ctypes.util.find_library = original
        _opuslib = opuslib
        return opuslib


def opus_available() -> bool:
    """True when libopus loads on this machine."""
    try:
        load_opus()
    except CodecUnavailable:
        return False
    return True


def opus_version() -> str:
    """libopus's version string, e.g. ``libopus 1.3.1``."""
    lib = load_opus().api.libopus
    fn = lib.opus_get_version_string
    fn.restype = ctypes.c_char_p
    return fn().decode("ascii", "replace")


# --- encoder / decoder ---------------------------------------------------------------


_BANDWIDTHS = {
    "narrowband": "BANDWIDTH_NARROWBAND",
    "mediumband": "BANDWIDTH_MEDIUMBAND",
    "wideband": "BANDWIDTH_WIDEBAND",
    "superwideband": "BANDWIDTH_SUPERWIDEBAND",
    "fullband": "BANDWIDTH_FULLBAND",
}


class OpusEncoder:
    """Encodes 20 ms frames of int16 PCM (48 kHz mono) into Opus packets.

    VOIP application, VBR at ``bitrate_bps`` within ``max_bandwidth``, in-band FEC planned for
    ``expected_loss_percent``, DTX: in silence the encoder emits a 1-2 byte
    packet about every 400 ms and otherwise nothing (``encode`` returns ``b""``
    for a frame that needs no packet: the caller sends nothing; the first
    silent frame of a run is sent as a 1-2 byte marker, see ``is_dtx_packet``).
    """

    def __init__(
        self,
        rate_hz: int = config.OPUS_RATE_HZ,
        frame_samples: int = config.OPUS_FRAME_SAMPLES,
        bitrate_bps: int = config.OPUS_BITRATE_BPS,
        expected_loss_percent: int = config.OPUS_EXPECTED_LOSS_PERCENT,
        fec: bool = True,
        dtx: bool = True,
        complexity: int = config.OPUS_COMPLEXITY,
        max_bandwidth: str = config.OPUS_MAX_BANDWIDTH,
    ) -> None:
        opuslib = load_opus()
        api = opuslib.api
        self.rate_hz = rate_hz
        self.frame_samples = frame_samples
        self._api = api
        self._error = opuslib.OpusError
        try:
            self._state = api.encoder.create_state(
                rate_hz, config.OPUS_CHANNELS, opuslib.APPLICATION_VOIP
            )
        except opuslib.OpusError as exc:
            raise CodecError(f"cannot create an Opus encoder: {exc}") from None
        # opuslib's Encoder.inband_fec setter drops its value, so every ctl is set here.
        ctl = api.ctl
        enc_ctl = api.encoder.encoder_ctl
        enc_ctl(self._state, ctl.set_bitrate, int(bitrate_bps))
        enc_ctl(self._state, ctl.set_complexity, int(complexity))
        enc_ctl(self._state, ctl.set_signal, opuslib.SIGNAL_VOICE)
        enc_ctl(self._state, ctl.set_inband_fec, 1 if fec else 0)
        enc_ctl(self._state, ctl.set_packet_loss_perc, int(expected_loss_percent))
        enc_ctl(self._state, ctl.set_dtx, 1 if dtx else 0)
        try:
            bandwidth = _BANDWIDTHS[max_bandwidth]
        except KeyError:
            raise ValueError(f"unknown Opus bandwidth {max_bandwidth!r}") from None
        enc_ctl(self._state, ctl.set_max_bandwidth, getattr(opuslib, bandwidth))
        self.bitrate_bps = enc_ctl(self._state, ctl.get_bitrate)
        self.fec = bool(enc_ctl(self._state, ctl.get_inband_fec))
        self.dtx = bool(enc_ctl(self._state, ctl.get_dtx))
        self.frames = 0
        self.bytes_out = 0
        self._dtx_run = 0  # DTX frames in a row

    @property
    def in_dtx(self) -> bool:
        """The last frame was DTX silence (its "went quiet" marker has been returned)."""
        return self._dtx_run > 0

    def set_bitrate(self, bitrate_bps: int) -> None:
        """Change the target bitrate (clamped to the configured range)."""
        bps = max(config.OPUS_MIN_BITRATE_BPS, min(config.OPUS_MAX_BITRATE_BPS, int(bitrate_bps)))
        self._api.encoder.encoder_ctl(self._state, self._api.ctl.set_bitrate, bps)
        self.bitrate_bps = bps

    def set_expected_loss(self, percent: int) -> None:
        """Tell the encoder how much loss to plan FEC for (0-100)."""
        percent = max(0, min(100, int(percent)))
        self._api.encoder.encoder_ctl(self._state, self._api.ctl.set_packet_loss_perc, percent)

    def encode(self, pcm: bytes | np.ndarray) -> bytes:
        """One frame of int16 PCM (bytes or array) to a packet; ``b""`` for a DTX frame."""
        data = pcm.astype(_SAMPLE, copy=False).tobytes() if isinstance(pcm, np.ndarray) else pcm
        if len(data) != 2 * self.frame_samples:
            raise CodecError(f"a frame is {2 * self.frame_samples} bytes, got {len(data)}")
        try:
            packet = self._api.encoder.encode(
                self._state, data, self.frame_samples, config.OPUS_MAX_PACKET_BYTES
            )
        except self._error as exc:  # pragma: no cover - libopus refuses only bad arguments
            raise CodecError(f"Opus encoding failed: {exc}") from None
        self.frames += 1
        packet = bytes(packet)
        if self.dtx and is_dtx_packet(packet):
            # A 1-2 byte packet means "silence, nothing new". The first of a run is sent
            # so the receiver knows the talker went quiet (and plays silence, not
            # concealment); the rest are not worth a datagram. (WebRTC does the same.)
            self._dtx_run += 1
            if self._dtx_run > 1:
                return b""
        else:
            self._dtx_run = 0
        self.bytes_out += len(packet)
        return packet

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            self._api.encoder.destroy(state)
            self._state = None


class OpusDecoder:
    """Decodes Opus packets to 20 ms frames of int16 PCM; conceals and recovers losses.

    Implements ``FrameDecoder``: ``decode(packet)`` for a packet that arrived,
    ``conceal()`` for a frame whose packet is missing (libopus's PLC), and
    ``decode_fec(next_packet)`` for a missing frame whose *next* packet has
    arrived (the in-band FEC copy it carries). Every call returns exactly
    ``frame_samples`` int16 samples, so the decoder's state follows the stream.
    """

    def __init__(
        self,
        rate_hz: int = config.OPUS_RATE_HZ,
        frame_samples: int = config.OPUS_FRAME_SAMPLES,
    ) -> None:
        opuslib = load_opus()
        self._api = opuslib.api
        self._error = opuslib.OpusError
        self.rate_hz = rate_hz
        self.frame_samples = frame_samples
        try:
            self._state = self._api.decoder.create_state(rate_hz, config.OPUS_CHANNELS)
        except opuslib.OpusError as exc:
            raise CodecError(f"cannot create an Opus decoder: {exc}") from None
        self.decoded = 0
        self.concealed = 0
        self.fec_decoded = 0

    def _run(self, packet: bytes, fec: bool) -> np.ndarray:
        if len(packet) > config.OPUS_MAX_PACKET_BYTES:
            raise CodecError(f"an Opus packet of {len(packet)} bytes is too long")
        try:
            pcm = self._api.decoder.decode(
                self._state, packet, len(packet), self.frame_samples, fec, channels=1
            )
        except self._error as exc:
            raise CodecError(f"Opus decoding failed: {exc}") from None
        out = np.frombuffer(bytes(pcm), _SAMPLE)
        if len(out) != self.frame_samples:  # a packet of another duration: keep the clock
            out = np.resize(out, self.frame_samples) if len(out) else self._silence()
        return out

    def _silence(self) -> np.ndarray:
        return np.zeros(self.frame_samples, _SAMPLE)

    def decode(self, packet: bytes) -> np.ndarray:
        """The frame carried by ``packet`` (an empty packet is concealed, as libopus does)."""
        if not packet:
            return self.conceal()
        out = self._run(packet, fec=False)
        self.decoded += 1
        return out

    def conceal(self) -> np.ndarray:
        """A stand-in for a lost frame (packet loss concealment; fades over repeated calls)."""
        out = self._run(b"", fec=False)
        self.concealed += 1
        return out

    def is_dtx(self, packet: bytes) -> bool:
        """True for a DTX marker: the sender is silent until its next packet."""
        return is_dtx_packet(packet)

    def decode_fec(self, next_packet: bytes) -> np.ndarray:
        """The lost frame before ``next_packet``, from the FEC copy it carries.

        A packet without FEC data gives libopus's concealment instead. Decode
        ``next_packet`` itself normally afterwards.
        """
        if not next_packet:
            return self.conceal()
        out = self._run(next_packet, fec=True)
        self.fec_decoded += 1
        return out

    def reset(self) -> None:
        """Forget the stream's history (a new talker or a restarted stream)."""
        self._api.decoder.decoder_ctl(self._state, self._api.ctl.reset_state)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            self._api.decoder.destroy(state)
            self._state = None


def has_fec(packet: bytes) -> bool:
    """True when an Opus packet carries in-band FEC (LBRR) for the previous frame.

    Only SILK and hybrid packets can; ``opus_packet_has_lbrr`` is libopus >= 1.5,
    so older libraries answer by the packet's mode (SILK/hybrid frames of 10+ ms).
    """
    if not packet:
        return False
    lib = load_opus().api.libopus
    fn = getattr(lib, "opus_packet_has_lbrr", None)
    if fn is not None:
        fn.restype = ctypes.c_int
        return fn(packet, ctypes.c_int32(len(packet))) == 1
    toc = packet[0]
    config_id = toc >> 3
    return config_id < 16  # SILK-only (0-11) or hybrid (12-15)
