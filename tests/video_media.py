"""Test media for the VP8 tests and benchmarks, made at run time (no binaries in the repo).

``camera_frames``: a camera-like scene (smooth multi-scale texture, gradients)
panning slowly, with a moving ball and a frame counter. ``text_slide``: a
presentation slide with a title bar and bullet lines drawn with cv2.putText.
"""

from __future__ import annotations

import cv2
import numpy as np

_MARGIN_PX = 100


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit pictures over all channels, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _texture(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    big_h, big_w = h + 2 * _MARGIN_PX, w + 2 * _MARGIN_PX
    acc = np.zeros((big_h, big_w, 3), np.float32)
    for sigma, amplitude in ((3, 20.0), (9, 17.0), (31, 20.0)):
        noise = rng.normal(0, 1, (big_h, big_w, 3)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
        acc += amplitude * noise / (noise.std() + 1e-6)
    yy, xx = np.mgrid[0:big_h, 0:big_w]
    acc += np.stack([xx * 120.0 / big_w, yy * 120.0 / big_h, np.full_like(xx, 60.0)], 2) + 60
    return np.clip(acc, 0, 255).astype(np.uint8)


def camera_frames(w: int, h: int, n: int, seed: int = 1) -> list[np.ndarray]:
    """``n`` BGR frames of a textured scene panning about, a moving ball, a counter."""
    tex = _texture(w, h, seed)
    out = []
    for i in range(n):
        dx = int(_MARGIN_PX + 60 * np.sin(i / 15))
        dy = int(_MARGIN_PX + 40 * np.cos(i / 20))
        img = tex[dy : dy + h, dx : dx + w].copy()
        cv2.circle(img, (int((i * w / 60) % w), h // 2), max(4, h // 8), (255, 255, 255), -1)
        cv2.putText(
            img,
            f"frame {i}",
            (10, h - 15),
            cv2.FONT_HERSHEY_SIMPLEX,
            h / 360,
            (0, 255, 255),
            2,
            cv2.LINE_AA,
        )
        out.append(img)
    return out


def text_slide(number: int, w: int = 1920, h: int = 1080) -> np.ndarray:
    """A white slide: a blue title bar and 14 bullet lines; each ``number`` reads differently."""
    img = np.full((h, w, 3), 255, np.uint8)
    scale = w / 1920
    cv2.rectangle(img, (0, 0), (w, int(140 * scale)), (120, 60, 20), -1)
    cv2.putText(
        img,
        f"Quarterly review, part {number}",
        (int(60 * scale), int(100 * scale)),
        cv2.FONT_HERSHEY_SIMPLEX,
        2.2 * scale,
        (255, 255, 255),
        max(1, int(4 * scale)),
        cv2.LINE_AA,
    )
    rng = np.random.default_rng(number)
    words = ["latency", "loss", "budget", "roadmap", "hiring", "uptime", "VP8", "layers"]
    for i in range(14):
        picked = " ".join(rng.choice(words, 4))
        line = f"- {number}.{i + 1}: {picked} {rng.integers(1, 999)} ms / {rng.integers(0, 99)} %"
        cv2.putText(
            img,
            line,
            (int(90 * scale), int((220 + i * 60) * scale)),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.2 * scale,
            (30, 30, 30),
            max(1, int(2 * scale)),
            cv2.LINE_AA,
        )
    return img


def luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of the luma (BT.601 Y) of two BGR pictures, in dB: what VP8 codes at full size."""
    ya = cv2.cvtColor(a, cv2.COLOR_BGR2YUV)[:, :, 0]
    yb = cv2.cvtColor(b, cv2.COLOR_BGR2YUV)[:, :, 0]
    return psnr(ya, yb)
