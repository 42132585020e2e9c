"""Screen sharing: scaling, presenter flow through a real server, and a real Xvfb screen via mss."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import config
import screen_sharing_module as ssm
from tests.helpers import wait_for


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def slide(w: int = 1920, h: int = 1080) -> np.ndarray:
    """A slide-like picture: background, a title bar, boxes and text."""
    img = np.full((h, w, 3), 235, np.uint8)
    cv2.rectangle(img, (0, 0), (w, h // 8), (120, 60, 20), -1)
    cv2.putText(
        img, "Quarterly review", (40, h // 12), cv2.FONT_HERSHEY_SIMPLEX, 2.5, (255,) * 3, 4
    )
    for i, colour in enumerate([(0, 0, 200), (0, 160, 0), (200, 100, 0)]):
        x = 100 + i * w // 3
        cv2.rectangle(img, (x, h // 3), (x + w // 5, h // 3 + h // 3), colour, -1)
    return img


# --- Pure parts ----------------------------------------------------------------------


def test_fit_within_keeps_aspect_and_never_upscales():
    out = ssm.fit_within(np.zeros((1080, 1920, 3), np.uint8), 1280, 720)
    assert out.shape == (720, 1280, 3)
    assert ssm.fit_within(np.zeros((2160, 3840, 3), np.uint8)).shape == (1080, 1920, 3)
    assert ssm.fit_within(np.zeros((601, 801, 3), np.uint8), even=True).shape == (600, 800, 3)
    tall = ssm.fit_within(np.zeros((2000, 1000, 3), np.uint8), 1280, 720)
    assert tall.shape == (720, 360, 3)
    small = np.zeros((100, 200, 3), np.uint8)
    assert ssm.fit_within(small, 1280, 720) is small


def test_image_source_missing_and_monitor_without_display(tmp_path):
    with pytest.raises(ssm.DeviceError, match="does not exist or is not an image"):
        ssm.ImageSource(tmp_path / "nope.png")
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        with pytest.raises(ssm.DeviceError, match="No screen to capture"):
            ssm.MonitorSource()


# --- Through a real server -------------------------------------------------------------


def test_image_presented_by_a_is_seen_by_b_and_lock_is_exclusive(make_client, tmp_path):
    """A presents an image; B sees it (VP8, up to the limit); C is told someone presents.

    PSNR threshold: the 2560x1440 slide scaled to 1920x1080 and VP8-encoded in screen
    mode measures 40-45 dB against the scaled original; a black frame, the slide upside
    down or its plain background measure 2-10 dB, so 35 dB proves B sees the slide
    sharp (the issue asks >= 38 dB for text: see bench/screen_share.py).
    """
    path = tmp_path / "slide.png"
    cv2.imwrite(str(path), slide(2560, 1440))
    a = make_client("Alice", audio=False, video=False)
    b = make_client("Bob", audio=False, video=False)
    c = make_client("Carol", audio=False, video=False)
    receiver = ssm.ScreenReceiver(b)
    status_a: list[str] = []
    status_c: list[str] = []
    sharer = ssm.ScreenSharer(a, lambda: ssm.ImageSource(path), on_status=status_a.append)
    other = ssm.ScreenSharer(c, lambda: ssm.ImageSource(path), on_status=status_c.append)
    changed = []
    b.on("presenter_changed", changed.append)
    try:
        sharer.start()
        assert sharer.granted.wait(5), f"not granted: {status_a}"
        assert wait_for(lambda: receiver.count >= 2, 5), "B got no screen frames"
        img = receiver.latest()
        frame = receiver.frame
        assert frame.sender == a.my_id and (frame.width, frame.height) == (1920, 1080)
        assert img.shape == (1080, 1920, 3)
        expected = ssm.fit_within(slide(2560, 1440))
        assert psnr(img, expected) > 35
        assert sharer.keyframes_sent >= 1
        assert sharer.bytes_sent / sharer.frames_sent < 30_000, "a still screen is not cheap"

        rate_t0, rate_n0 = time.monotonic(), receiver.count
        other.start()
        assert other.refused.wait(5)
        assert status_c[-1] == "Another user is presenting"
        assert not other.sharing

        assert wait_for(lambda: time.monotonic() - rate_t0 >= 2.0, 3)
        rate = (receiver.count - rate_n0) / (time.monotonic() - rate_t0)
        assert abs(rate - config.SCREEN_VP8_FPS) <= 0.25 * config.SCREEN_VP8_FPS, rate

        sharer.stop()
        assert sharer.stopped.wait(5) and not sharer.sharing
        assert wait_for(lambda: None in changed, 5)
        assert wait_for(lambda: receiver.frame is None, 2)  # cleared when presenting ends

        other.start()  # the lock is free again
        assert other.granted.wait(5)
        assert wait_for(lambda: receiver.frame is not None and receiver.frame.sender == c.my_id, 5)
    finally:
        sharer.close()
        other.close()


def test_sharing_stops_when_presenter_lock_is_lost(make_client, tmp_path):
    """A sharer told the lock moved stops; a presenter whose connection ends stops
    sending and the server frees the lock for everyone."""
    path = tmp_path / "slide.png"
    cv2.imwrite(str(path), slide(640, 360))
    a = make_client("Alice", audio=False, video=False)
    b = make_client("Bob", audio=False, video=False)
    sharer = ssm.ScreenSharer(a, lambda: ssm.ImageSource(path))
    changed = []
    b.on("presenter_changed", changed.append)
    try:
        sharer.start()
        assert sharer.granted.wait(5)
        assert wait_for(lambda: a.my_id in changed or b.presenter == a.my_id, 5)
        # The protocol has no revocation message; this is the handler the client's
        # presenter_changed event would call if the lock moved away from A.
        sharer._on_presenter_changed(None)
        assert sharer.stopped.wait(5) and not sharer.sharing
        a.present_stop()  # the server still holds A's lock: give it back before retrying
        assert wait_for(lambda: b.presenter is None, 5)
        sharer.start()
        assert sharer.granted.wait(5)
        assert wait_for(lambda: b.presenter == a.my_id, 5)
        a.leave()  # the presenter's connection ends while it is sharing
        assert sharer.stopped.wait(5), "the sender kept running without a connection"
        assert wait_for(lambda: b.presenter is None, 5)
    finally:
        sharer.close()


# --- A real X screen through mss ---------------------------------------------------


def free_display() -> int:
    for n in range(90, 190):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    pytest.skip("no free X display number")


DRAW = r"""
import sys
from PyQt5.QtCore import QTimer
from PyQt5.QtGui import QColor, QPainter
from PyQt5.QtWidgets import QApplication, QWidget

app = QApplication(sys.argv)


class Board(QWidget):
    def paintEvent(self, event):
        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w // 2, h, QColor(220, 30, 30))
        p.fillRect(w // 2, 0, w - w // 2, h, QColor(30, 30, 220))
        p.fillRect(w // 4 - 50, h // 2 - 50, 100, 100, QColor(30, 220, 30))


board = Board()
board.setGeometry(0, 0, int(sys.argv[1]), int(sys.argv[2]))
board.showFullScreen()
QTimer.singleShot(300, lambda: print("drawn", flush=True))
app.exec_()
"""


@pytest.mark.xvfb
def test_real_screen_through_mss_on_xvfb(make_client, tmp_path):
    """A window drawn on a private Xvfb screen is captured by mss and seen at B."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed (scripts/bootstrap.sh test installs it)")
    n = free_display()
    w, h = 800, 600
    server = subprocess.Popen(
        [xvfb, f":{n}", "-screen", "0", f"{w}x{h}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    painter = None
    try:
        assert wait_for(lambda: Path(f"/tmp/.X11-unix/X{n}").exists(), 10), "Xvfb did not start"
        script = tmp_path / "draw.py"
        script.write_text(DRAW)
        env = dict(os.environ, DISPLAY=f":{n}", QT_QPA_PLATFORM="xcb")
        painter = subprocess.Popen(
            [sys.executable, str(script), str(w), str(h)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert painter.stdout.readline().strip() == "drawn", "the window was not drawn"

        a = make_client("Alice", audio=False, video=False)
        b = make_client("Bob", audio=False, video=False)
        receiver = ssm.ScreenReceiver(b)
        sharer = ssm.ScreenSharer(a, lambda: ssm.MonitorSource(1, display=f":{n}"))

        def looks_right() -> bool:
            img = receiver.latest()
            if img is None or img.shape != (h, w, 3):
                return False
            red = img[h // 8, w // 2 - 60].astype(int)  # BGR
            blue = img[h // 8, w - 60].astype(int)
            green = img[h // 2, w // 4].astype(int)
            return (
                red[2] > 180 and red[0] < 80 and red[1] < 80
                and blue[0] > 180 and blue[2] < 80 and blue[1] < 80
                and green[1] > 180 and green[0] < 80 and green[2] < 80
            )  # fmt: skip

        try:
            sharer.start()
            assert sharer.granted.wait(5)
            assert wait_for(looks_right, 10), f"B did not see the drawn screen: {sharer.last_error}"
            assert (receiver.frame.width, receiver.frame.height) == (w, h)
            # The whole picture, not just three pixels: VP8 (screen mode) of these flat
            # blocks measures over 40 dB against the drawing; a screen without the
            # window (black) or with the halves swapped measures 4-6 dB.
            expected = np.zeros((h, w, 3), np.uint8)
            expected[:, : w // 2] = (30, 30, 220)
            expected[:, w // 2 :] = (220, 30, 30)
            expected[h // 2 - 50 : h // 2 + 50, w // 4 - 50 : w // 4 + 50] = (30, 220, 30)
            assert psnr(receiver.latest(), expected) > 30
        finally:
            sharer.close()
    finally:
        if painter is not None:
            painter.terminate()
            painter.wait(5)
        server.terminate()
        server.wait(5)


def test_late_joiner_gets_a_keyframe_at_once_and_a_gap_asks_for_one(make_client, tmp_path):
    """A still slide is all inter frames after the first; a viewer joining later still
    sees it within a few frame times (the server asks the presenter for a keyframe)."""
    path = tmp_path / "slide.png"
    cv2.imwrite(str(path), slide(1280, 720))
    a = make_client("Alice", audio=False, video=False)
    sharer = ssm.ScreenSharer(a, lambda: ssm.ImageSource(path))
    try:
        sharer.start()
        assert sharer.granted.wait(5)
        assert wait_for(lambda: sharer.frames_sent >= 10, 5)
        keys_before = sharer.keyframes_sent
        t0 = time.monotonic()
        late = make_client("Late", audio=False, video=False)
        receiver = ssm.ScreenReceiver(late)
        assert wait_for(lambda: receiver.latest() is not None, 5), "the late joiner saw nothing"
        waited = time.monotonic() - t0
        assert sharer.keyframes_sent > keys_before, "no keyframe was made for the late joiner"
        assert waited < 1.0, f"the late joiner waited {waited:.2f} s"
        assert psnr(receiver.latest(), slide(1280, 720)) > 35
        # A frame lost on the way (here: dropped before the decoder): the receiver
        # shows nothing built on the gap and asks for a keyframe.
        shown = receiver.pictures
        frame = receiver.frame
        receiver._decoder.mark_lost()
        keys = sharer.keyframes_sent
        receiver._on_frame(frame.sender, frame.seq + 1, 1280, 720, b"\x31\x00\x00", False)
        assert receiver.pictures == shown and receiver.decode_failures == 1
        assert wait_for(lambda: sharer.keyframes_sent > keys, 5), "no keyframe after the gap"
        assert wait_for(lambda: receiver.pictures > shown, 5)
    finally:
        sharer.close()
