"""VP8 through PyAV (libvpx inside the wheel): a realtime encoder and a never-garbled decoder.

Only VP8 is used (``libvpx`` to encode, FFmpeg's native ``vp8`` to decode); the
GPL encoders the PyAV wheel also carries (libx264, libx265) are never opened, and
the PyInstaller build replaces them (docs/ARCHITECTURE.md, "Packaging").
PyAV is imported lazily: without it every constructor raises ``CodecUnavailable``
with a sentence saying what to install.

The decoder keeps a "needs keyframe" state: it decodes nothing until a keyframe,
and goes back to that state after a decode error or a gap in the frame sequence,
so a picture it returns is never built on a missing reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType
from typing import Any, Literal

import cv2
import numpy as np

import config
import utils

log = logging.getLogger(__name__)

__all__ = [
    "CodecUnavailable",
    "EncodedFrame",
    "Vp8Decoder",
    "Vp8Encoder",
    "Vp8FrameInfo",
    "load_av",
    "parse_vp8_frame",
]

Mode = Literal["camera", "screen"]
_SEQ_MOD = 1 << 32


class CodecUnavailable(RuntimeError):
    """PyAV (or its VP8 codec) is missing: video cannot be encoded or decoded."""


_av: ModuleType | None = None


def load_av() -> ModuleType:
    """Import PyAV once; ``CodecUnavailable`` with a clear sentence if it is missing."""
    global _av
    if _av is None:
        try:
            import av
        except ImportError as exc:
            raise CodecUnavailable(
                f"PyAV is not installed ({exc}); install it with "
                "'python -m pip install av' to send or show VP8 video."
            ) from None
        for name in ("libvpx", "vp8"):
            if name not in av.codecs_available:
                raise CodecUnavailable(f"This PyAV build has no {name!r} codec (VP8).")
        _av = av
    return _av


# The VP8 header parser lives with the wire (utils.py) so the server checks keyframe
# flags without a codec; re-exported here for the codec's users.
Vp8FrameInfo = utils.Vp8FrameInfo
parse_vp8_frame = utils.parse_vp8_frame


# --- Encoder -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One VP8 frame as it leaves the encoder."""

    data: bytes
    keyframe: bool
    width: int
    height: int


def _even(n: int) -> int:
    return max(2, n - n % 2)


class Vp8Encoder:
    """A realtime VP8 encoder for one picture size (libvpx through PyAV).

    ``mode="camera"``: fastest speed (``VP8_CAMERA_CPU_USED``), error-resilient,
    CBR at ``bitrate_bps``. ``mode="screen"``: one fixed low quantizer so text
    stays sharp (``bitrate_bps`` is only nominal), an unchanged screen costs a
    few hundred bytes a frame, and a picture where most blocks changed (a new
    slide) is sent as a keyframe, sharp in its first frame. Both: no lag (one packet
    out per picture in), no alt-ref frames, a keyframe at least every
    ``VP8_KEYFRAME_MAX_INTERVAL_S`` and whenever ``force_keyframe()`` asked.
    Not thread-safe: one thread encodes.
    """

    def __init__(
        self,
        width: int,
        height: int,
        fps: int,
        bitrate_bps: int,
        mode: Mode = "camera",
    ) -> None:
        if mode not in ("camera", "screen"):
            raise ValueError(f"mode must be 'camera' or 'screen', not {mode!r}")
        if width < 2 or height < 2 or fps < 1 or bitrate_bps < 1000:
            raise ValueError(f"impossible encoder settings {width}x{height} {fps} fps")
        self._av = load_av()
        self.width, self.height = _even(width), _even(height)
        self.fps = int(fps)
        self.mode: Mode = mode
        self.bitrate_bps = int(bitrate_bps)
        self.frames_in = 0
        self.frames_out = 0
        self.keyframes_out = 0
        self.bytes_out = 0
        self._pts = 0
        self._force_key = False
        self._previous: np.ndarray | None = None  # screen mode: last picture, for cuts
        self.scene_cuts = 0
        self._ctx: Any = None
        self._open()

    def _options(self) -> dict[str, str]:
        """libvpx and rate-control options (FFmpeg names) for this mode and bitrate."""
        opts = {
            "deadline": "realtime",
            "lag-in-frames": "0",  # one packet out per picture in, no look-ahead delay
            "auto-alt-ref": "0",  # no hidden frames
            "max-intra-rate": "0",  # a keyframe may be as large as it needs to be
        }
        if self.mode == "camera":
            buffer_bits = self.bitrate_bps * config.VP8_CAMERA_RC_BUFFER_MS // 1000
            opts |= {
                "cpu-used": str(config.VP8_CAMERA_CPU_USED),
                "error-resilient": "1",
                # minrate == maxrate == bitrate: libvpxenc runs CBR, as live video wants.
                "minrate": str(self.bitrate_bps),
                "maxrate": str(self.bitrate_bps),
                "bufsize": str(buffer_bits),
                "undershoot-pct": "100",
                "overshoot-pct": "15",
                "qmin": str(config.VP8_CAMERA_QMIN),
                "qmax": str(config.VP8_CAMERA_QMAX),
            }
        else:
            # One fixed quantizer (qmin == qmax == crf): deterministic sharpness for
            # text, and unchanged blocks cost nothing. Error-resilient mode is off:
            # it resets the entropy context every frame, which made static text lose
            # ~3 dB; receivers never decode past a loss anyway (they wait for a
            # keyframe), so it buys nothing here.
            q = str(config.VP8_SCREEN_QUANTIZER)
            opts |= {
                "cpu-used": str(config.VP8_SCREEN_CPU_USED),
                "error-resilient": "0",
                "crf": q,
                "qmin": q,
                "qmax": q,
                "static-thresh": str(config.VP8_SCREEN_STATIC_THRESHOLD),
            }
        return opts

    def _open(self) -> None:
        av = self._av
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.width, ctx.height = self.width, self.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, self.fps)
        ctx.framerate = Fraction(self.fps, 1)
        ctx.bit_rate = self.bitrate_bps
        ctx.gop_size = max(1, round(config.VP8_KEYFRAME_MAX_INTERVAL_S * self.fps))
        ctx.thread_count = config.VP8_ENCODER_THREADS
        ctx.options = self._options()
        try:
            ctx.open()
        except Exception as exc:  # av.error.FFmpegError: bad settings for this libvpx
            raise CodecUnavailable(f"the VP8 encoder cannot be opened: {exc}") from None
        self._ctx = ctx
        self._pts = 0

    def force_keyframe(self) -> None:
        """Make the next encoded frame a keyframe."""
        self._force_key = True

    def set_bitrate(self, bitrate_bps: int) -> None:
        """Change the target bitrate; libvpx through FFmpeg needs the encoder reopened.

        The reopened encoder starts with a keyframe.
        """
        bitrate_bps = int(bitrate_bps)
        if bitrate_bps < 1000:
            raise ValueError(f"bitrate {bitrate_bps} bit/s is too low")
        if bitrate_bps == self.bitrate_bps:
            return
        self.bitrate_bps = bitrate_bps
        if self._ctx is not None:  # a closed encoder stays closed
            self._close_ctx()
            self._open()

    def encode(self, image: np.ndarray) -> EncodedFrame | None:
        """Encode one BGR picture of exactly the encoder's size.

        Returns None only if libvpx dropped the frame (it does not with these settings).
        """
        if self._ctx is None:
            raise ValueError("encoder is closed")
        h, w = image.shape[:2]
        if (w, h) != (self.width, self.height) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"picture is {image.shape}, encoder wants {self.width}x{self.height}")
        if self.mode == "screen" and self._is_scene_cut(image):
            self._force_key = True
            self.scene_cuts += 1
        av = self._av
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = self._pts
        frame.time_base = self._ctx.time_base
        self._pts += 1
        if self._force_key:
            frame.pict_type = av.video.frame.PictureType.I
            self._force_key = False
        self.frames_in += 1
        packets = self._ctx.encode(frame)
        if not packets:
            return None
        # lag-in-frames 0: one packet per picture; join defensively if ever more.
        data = b"".join(bytes(p) for p in packets)
        key = any(p.is_keyframe for p in packets)
        self.frames_out += 1
        self.keyframes_out += key
        self.bytes_out += len(data)
        return EncodedFrame(data, key, self.width, self.height)

    def _is_scene_cut(self, image: np.ndarray) -> bool:
        """Most of the screen changed (a new slide): a keyframe codes it sharpest.

        An inter frame is held to the bitrate cap and arrives blurred (measured:
        luma 36.7 dB against 40.8 dB for the keyframe of the same slide).
        """
        block = config.SCREEN_VP8_SCENE_CUT_BLOCK_PX
        size = (max(1, self.width // block), max(1, self.height // block))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        previous, self._previous = self._previous, small
        if previous is None:
            return False
        diff = np.abs(small.astype(np.int16) - previous).max(axis=2)
        changed = diff > config.SCREEN_VP8_SCENE_CUT_BLOCK_DIFF_LEVELS
        return float(changed.mean()) >= config.SCREEN_VP8_SCENE_CUT_FRACTION

    def _close_ctx(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            try:
                ctx.close()
            except (AttributeError, ValueError):  # older PyAV has no close(); GC frees it
                pass

    def close(self) -> None:
        """Release libvpx; the encoder cannot be used afterwards."""
        self._close_ctx()


# --- Decoder -------------------------------------------------------------------------


class Vp8Decoder:
    """Decodes one VP8 stream to BGR pictures; never returns a picture built on a gap.

    Starts in the "needs keyframe" state; a keyframe leaves it. A decode error, a
    frame that cannot be parsed, a gap in ``seq`` (when given) or ``mark_lost()``
    return to it. While in it, inter frames are skipped (None). Not thread-safe.
    """

    def __init__(self, max_pixels: int = config.VP8_DECODE_MAX_PIXELS) -> None:
        self._av = load_av()
        self.max_pixels = max_pixels
        self.needs_keyframe = True
        self.frames_decoded = 0
        self.frames_skipped = 0  # inter frames dropped while waiting for a keyframe
        self.errors = 0
        self._last_seq: int | None = None
        self._ctx: Any = None
        self._open()

    def _open(self) -> None:
        ctx = self._av.CodecContext.create("vp8", "r")
        ctx.thread_count = 1  # frame threads would delay every picture by a frame
        self._ctx = ctx

    def mark_lost(self) -> None:
        """A frame of this stream was lost: decode nothing until the next keyframe."""
        self.needs_keyframe = True

    def decode(self, data: bytes, seq: int | None = None) -> np.ndarray | None:
        """The picture of one whole VP8 frame, or None (skipped, error, or nothing shown).

        ``seq`` is the frame's per-layer number (+1 a frame); a jump means lost frames.
        """
        if seq is not None:
            if self._last_seq is not None and seq != (self._last_seq + 1) % _SEQ_MOD:
                self.needs_keyframe = True
            self._last_seq = seq % _SEQ_MOD
        try:
            info = parse_vp8_frame(data)
        except ValueError as exc:
            log.debug("VP8 frame refused: %s", exc)
            self.errors += 1
            self.needs_keyframe = True
            return None
        if info.keyframe and info.width * info.height > self.max_pixels:
            log.warning(
                "refusing to decode a %dx%d VP8 keyframe (limit %d pixels)",
                info.width,
                info.height,
                self.max_pixels,
            )
            self.errors += 1
            self.needs_keyframe = True
            return None
        if self.needs_keyframe and not info.keyframe:
            self.frames_skipped += 1
            return None
        av = self._av
        try:
            frames = self._ctx.decode(av.Packet(data))
        except av.error.FFmpegError as exc:
            log.debug("VP8 decode error: %s", exc)
            self.errors += 1
            self.needs_keyframe = True
            if info.keyframe:  # a broken keyframe may leave the context unusable
                self._open()
            return None
        if not frames:
            return None
        self.needs_keyframe = False
        self.frames_decoded += 1
        return frames[-1].to_ndarray(format="bgr24")

    def close(self) -> None:
        """Release the decoder."""
        self._ctx = None
