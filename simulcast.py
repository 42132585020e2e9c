"""Simulcast sending and loss-safe receiving of VP8 video layers (pure: no sockets, no threads).

``SimulcastEncoder`` turns one camera picture into a small layer (always) and a
large layer (only while someone shows it large), each with its own frame
numbers, keyframes and bitrate. ``LayerAssembler`` rebuilds one layer's frames
from fragments and lets through only frames that decode cleanly: a frame with
a missing fragment is never decoded; the stream then waits for a keyframe and
asks for one (throttled). ``LayerReceiver`` adds the decoder and keeps the last
good picture, which the tile shows while it waits.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

import config
from config import LayerSpec
from video_codec import EncodedFrame, Mode, Vp8Decoder, Vp8Encoder

log = logging.getLogger(__name__)

__all__ = [
    "AssembledFrame",
    "LayerAssembler",
    "LayerFrame",
    "LayerReceiver",
    "SimulcastEncoder",
    "large_layer_for",
    "scale_to",
]

SMALL = config.VIDEO_LAYER_SMALL
LARGE = config.VIDEO_LAYER_LARGE
_U32 = 1 << 32


def large_layer_for(source_width: int, source_height: int) -> LayerSpec:
    """The large layer a source of this size can fill: 1280x720 from 720p up, else 640x360."""
    if source_height >= config.VIDEO_LARGE_720P_MIN_SOURCE_HEIGHT_PX and source_width >= 1280:
        return config.VIDEO_LARGE_LAYER_720P
    return config.VIDEO_LARGE_LAYER_360P


def scale_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Exactly ``width`` x ``height``: the centre cropped to that aspect, then scaled."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    want = width / height
    if w / h > want + 1e-3:
        new_w = max(1, round(h * want))
        x0 = (w - new_w) // 2
        image = image[:, x0 : x0 + new_w]
    elif w / h < want - 1e-3:
        new_h = max(1, round(w / want))
        y0 = (h - new_h) // 2
        image = image[y0 : y0 + new_h]
    interp = cv2.INTER_AREA if image.shape[1] > width else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


# --- Sending -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerFrame:
    """One encoded frame of one layer, numbered within that layer (+1 a frame, u32)."""

    layer: str
    frame_id: int
    frame: EncodedFrame


class _Layer:
    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.encoder: Vp8Encoder | None = None
        self.bitrate_bps = spec.bitrate_bps
        self.next_id = 0
        self.force_key = False


class SimulcastEncoder:
    """Small layer always, large layer while ``set_large_wanted(True)``; one thread uses it.

    The large layer's size follows the source (``large_layer_for``) unless
    ``large`` is given. Encoders are opened lazily; switching the large layer
    off closes its encoder, and switching it on again starts with a keyframe.
    """

    def __init__(
        self,
        fps: int = config.VIDEO_CAMERA_FPS,
        small: LayerSpec = config.VIDEO_SMALL_LAYER,
        large: LayerSpec | None = None,
        mode: Mode = "camera",
    ) -> None:
        self.fps = fps
        self.mode: Mode = mode
        self._fixed_large = large
        self._layers = {SMALL: _Layer(small), LARGE: _Layer(large or config.VIDEO_LARGE_LAYER_360P)}
        self.large_wanted = False

    def layer_spec(self, layer: str) -> LayerSpec:
        return self._layers[layer].spec

    def bitrate(self, layer: str) -> int:
        return self._layers[layer].bitrate_bps

    def set_large_wanted(self, wanted: bool) -> None:
        """Encode the large layer (True) or stop encoding it (False) from the next picture."""
        self.large_wanted = bool(wanted)
        if not wanted:
            self._close_layer(self._layers[LARGE])

    def force_keyframe(self, layer: str) -> None:
        """The next frame of ``layer`` is a keyframe (a viewer lost something or just came)."""
        self._layers[layer].force_key = True

    def set_bitrate(self, layer: str, bitrate_bps: int) -> None:
        """Target bitrate of ``layer`` (clamped to its LayerSpec ceiling)."""
        st = self._layers[layer]
        bitrate_bps = max(1000, min(int(bitrate_bps), st.spec.bitrate_bps))
        st.bitrate_bps = bitrate_bps
        if st.encoder is not None:
            st.encoder.set_bitrate(bitrate_bps)

    def encode(self, image: np.ndarray) -> list[LayerFrame]:
        """Encode one BGR source picture into every active layer (small first)."""
        h, w = image.shape[:2]
        if self._fixed_large is None:
            spec = large_layer_for(w, h)
            large = self._layers[LARGE]
            if spec != large.spec:
                self._close_layer(large)
                large.spec = spec
                large.bitrate_bps = spec.bitrate_bps  # the guard lowers it again if need be
        active = [SMALL, LARGE] if self.large_wanted else [SMALL]
        out = []
        for name in active:
            st = self._layers[name]
            if st.encoder is None:
                st.encoder = Vp8Encoder(
                    st.spec.width_px, st.spec.height_px, self.fps, st.bitrate_bps, self.mode
                )
            if st.force_key:
                st.encoder.force_keyframe()
                st.force_key = False
            picture = scale_to(image, st.encoder.width, st.encoder.height)
            encoded = st.encoder.encode(picture)
            if encoded is None:
                continue
            out.append(LayerFrame(name, st.next_id, encoded))
            st.next_id = (st.next_id + 1) % _U32
        return out

    def _close_layer(self, st: _Layer) -> None:
        if st.encoder is not None:
            st.encoder.close()
            st.encoder = None

    def close(self) -> None:
        for st in self._layers.values():
            self._close_layer(st)


# --- Receiving -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssembledFrame:
    """A whole frame that may be decoded: a keyframe, or the next one after a decoded frame."""

    frame_id: int
    keyframe: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class AssemblyResult:
    """What one fragment (or a timeout check) produced."""

    frame: AssembledFrame | None = None
    request_keyframe: bool = False


_NOTHING = AssemblyResult()


class LayerAssembler:
    """Fragments of one sender's one layer -> frames that can be decoded cleanly.

    States: *waiting* (for a keyframe: at start, and after any loss) and
    *flowing*. While flowing, a frame goes out only if its ``frame_id`` follows
    the last one that went out; a gap, a frame whose fragments did not all
    arrive within ``timeout_s``, or ``mark_broken`` (the decoder failed) means
    loss: switch to waiting and ask for a keyframe. While waiting, only a whole
    keyframe goes out; inter frames are dropped and the keyframe request is
    repeated, at most once per ``retry_s`` (the first request after a recovery
    goes out at once; the server's ``KeyframeThrottle`` bounds the rest). A
    frame with a missing fragment is never returned. ``now`` is the caller's
    monotonic clock, in seconds.
    """

    def __init__(
        self,
        timeout_s: float = config.VIDEO_REASSEMBLY_TIMEOUT_MS / 1000,
        max_frames: int = config.VIDEO_V2_REASSEMBLY_MAX_FRAMES,
        retry_s: float = config.KEYFRAME_REQUEST_MIN_INTERVAL_MS / 1000,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_frames = max_frames
        self.retry_s = retry_s
        self.waiting_for_keyframe = True
        self._last_out: int | None = None
        # frame_id -> (first seen, frag_count, keyframe, {index: data})
        self._pending: OrderedDict[int, tuple[float, int, bool, dict[int, bytes]]] = OrderedDict()
        self._last_request = float("-inf")
        self.frames_out = 0
        self.frames_dropped = 0
        self.keyframe_requests = 0

    def _newer(self, a: int, b: int) -> bool:
        """a is after b in u32 sequence arithmetic."""
        return 0 < (a - b) % _U32 < _U32 // 2

    def _lost(self, now: float) -> bool:
        """Loss seen: wait for a keyframe; True if a request should go out now."""
        self.waiting_for_keyframe = True
        return self._ask(now)

    def _ask(self, now: float) -> bool:
        if now - self._last_request >= self.retry_s:
            self._last_request = now
            self.keyframe_requests += 1
            return True
        return False

    def mark_broken(self, now: float) -> bool:
        """The decoder failed on a frame: wait for a keyframe; True = request one now."""
        return self._lost(now)

    def add(
        self,
        frame_id: int,
        frag_index: int,
        frag_count: int,
        keyframe: bool,
        data: bytes,
        now: float,
    ) -> AssemblyResult:
        """Add one fragment; returns a frame to decode and/or a keyframe request."""
        if frag_count < 1 or not 0 <= frag_index < frag_count:
            raise ValueError(f"fragment {frag_index} of {frag_count} is impossible")
        request = self.poll(now)
        frame_id %= _U32
        if self._last_out is not None and not self._newer(frame_id, self._last_out):
            return AssemblyResult(None, request)  # late or duplicate: already past it
        entry = self._pending.get(frame_id)
        if entry is None:
            entry = (now, frag_count, keyframe, {})
            self._pending[frame_id] = entry
            while len(self._pending) > self.max_frames:
                self._pending.popitem(last=False)
                self.frames_dropped += 1
                request |= self._lost(now)
        _, count, key, parts = entry
        if count != frag_count or key != keyframe:
            return AssemblyResult(None, request)  # inconsistent fragment: ignore it
        parts[frag_index] = data
        if len(parts) < count:
            return AssemblyResult(None, request)
        del self._pending[frame_id]
        whole = b"".join(parts[i] for i in range(count))
        return self._complete(frame_id, keyframe, whole, now, request)

    def _complete(
        self, frame_id: int, keyframe: bool, data: bytes, now: float, request: bool
    ) -> AssemblyResult:
        follows = self._last_out is not None and frame_id == (self._last_out + 1) % _U32
        # Older unfinished frames can no longer be decoded in order: they are lost.
        for fid in [f for f in self._pending if self._newer(frame_id, f)]:
            del self._pending[fid]
            self.frames_dropped += 1
            if not keyframe:
                request |= self._lost(now)
        if keyframe or (follows and not self.waiting_for_keyframe):
            if self.waiting_for_keyframe:  # recovered: the next loss asks at once
                self._last_request = float("-inf")
            self.waiting_for_keyframe = False
            self._last_out = frame_id
            self.frames_out += 1
            return AssemblyResult(AssembledFrame(frame_id, keyframe, data), request)
        # A whole inter frame after a gap, or while waiting: never decoded.
        self.frames_dropped += 1
        if self.waiting_for_keyframe:
            request |= self._ask(now)
        else:
            request |= self._lost(now)
        self._last_out = frame_id
        return AssemblyResult(None, request)

    def poll(self, now: float) -> bool:
        """Expire frames whose fragments did not all arrive in time; True = request a keyframe."""
        request = False
        while self._pending:
            fid, (started, _, _, _) = next(iter(self._pending.items()))
            if now - started <= self.timeout_s:
                break
            del self._pending[fid]
            self.frames_dropped += 1
            request |= self._lost(now)
        return request


class LayerReceiver:
    """One tile's stream: assembler + VP8 decoder + the last good picture.

    ``picture`` is what the tile shows: the last frame that decoded cleanly,
    kept while the stream waits for a keyframe (so the tile freezes instead of
    showing a broken picture). ``add`` decodes at once; the real client runs it
    on its decoder thread, not the GUI's.
    """

    def __init__(self, decoder: Any | None = None, assembler: LayerAssembler | None = None) -> None:
        self.assembler = assembler or LayerAssembler()
        self.decoder = decoder if decoder is not None else Vp8Decoder()
        self.picture: np.ndarray | None = None
        self.picture_frame_id: int | None = None
        self.frozen_since: float | None = None  # when the stream stopped showing new frames

    def add(
        self,
        frame_id: int,
        frag_index: int,
        frag_count: int,
        keyframe: bool,
        data: bytes,
        now: float,
    ) -> bool:
        """Add a fragment; decode a frame it completes. True = send a keyframe request."""
        res = self.assembler.add(frame_id, frag_index, frag_count, keyframe, data, now)
        request = res.request_keyframe
        if self.assembler.waiting_for_keyframe and self.frozen_since is None:
            self.frozen_since = now
        if res.frame is not None:
            img = self.decoder.decode(res.frame.data, res.frame.frame_id)
            if img is None:
                if self.decoder.needs_keyframe:
                    request |= self.assembler.mark_broken(now)
                    if self.frozen_since is None:
                        self.frozen_since = now
            else:
                self.picture = img
                self.picture_frame_id = res.frame.frame_id
                self.frozen_since = None
        return request

    def poll(self, now: float) -> bool:
        """Check for timed-out fragments; True = send a keyframe request."""
        request = self.assembler.poll(now)
        if self.assembler.waiting_for_keyframe and self.frozen_since is None:
            self.frozen_since = now
        return request
