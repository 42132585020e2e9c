"""Screenshots of the real windows under Xvfb, for people to look at in docs/screenshots/.

A normal run saves them in the test's temporary folder (and checks them);
``FM_UPDATE_SCREENSHOTS=1`` saves them over docs/screenshots/.

The test starts Xvfb on a free display, a real server (fixture) and three
headless participants that stream generated test-pattern video, a tone and a
shared "slide", then runs this file as a child process on the xcb platform
(Qt cannot switch platform inside the offscreen test process). The child
opens the join dialog and the meeting window and saves PNGs.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import config  # noqa: E402

SHOTS = ROOT / "docs" / "screenshots"
# FM_UPDATE_SCREENSHOTS=1 saves the shots over docs/screenshots/ (after looking at them).
UPDATE_ENV = "FM_UPDATE_SCREENSHOTS"
SESSION = "Design Review"
SCREEN_SIZE = "1600x1000x24"
CHILD_TIMEOUT_S = 90


def free_display() -> int:
    for n in range(57, 200):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


@pytest.fixture
def xvfb():
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb): no screenshots taken")
    n = free_display()
    proc = subprocess.Popen(
        [exe, f":{n}", "-screen", "0", SCREEN_SIZE, "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"Xvfb did not start on :{n}")
        time.sleep(0.05)  # polling for the socket file, bounded by the deadline
    try:
        yield f":{n}"
    finally:
        proc.terminate()
        proc.wait(10)


# --- generated media -----------------------------------------------------------------


def person_frames(index: int, count: int = 30) -> list[bytes]:
    """A looping 'person' on a coloured backdrop, gently moving: test-pattern video."""
    import cv2
    import numpy as np

    w, h = 320, 240
    backdrops = [(92, 78, 64), (70, 96, 84), (96, 72, 98), (64, 84, 110)]
    skins = [(150, 180, 225), (110, 140, 190), (170, 200, 235), (90, 120, 160)]
    shirts = [(160, 110, 60), (70, 140, 90), (80, 80, 180), (40, 150, 200)]
    frames = []
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(count):
        img = np.zeros((h, w, 3), np.uint8)
        shade = (0.75 + 0.25 * (yy / h))[..., None]
        img[:] = (np.array(backdrops[index % 4]) * shade).astype(np.uint8)
        cv2.rectangle(
            img, (210, 40), (300, 130), tuple(int(c * 1.2) for c in backdrops[index % 4]), -1
        )
        dx = int(6 * math.sin(2 * math.pi * i / count))
        cx, cy = w // 2 + dx, 112
        cv2.ellipse(img, (cx, h + 20), (95, 85), 0, 180, 360, shirts[index % 4], -1)
        cv2.rectangle(img, (cx - 16, cy + 30), (cx + 16, cy + 60), skins[index % 4], -1)
        cv2.ellipse(img, (cx, cy), (38, 48), 0, 0, 360, skins[index % 4], -1)
        cv2.ellipse(img, (cx, cy - 30), (42, 26), 0, 180, 360, (40, 40, 50), -1)
        for ex in (-14, 14):
            cv2.circle(img, (cx + ex, cy - 4), 4, (40, 40, 40), -1)
        cv2.ellipse(img, (cx, cy + 20), (12, 5), 0, 0, 180, (60, 60, 120), 2)
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        frames.append(jpg.tobytes())
    return frames


def slide_jpeg() -> tuple[bytes, int, int]:
    """A presentation slide, 1280x720."""
    import cv2
    import numpy as np

    w, h = 1280, 720
    img = np.full((h, w, 3), 250, np.uint8)
    cv2.rectangle(img, (0, 0), (w, 110), (120, 70, 40), -1)
    cv2.putText(
        img, "Q3 Product Review", (60, 75), cv2.FONT_HERSHEY_DUPLEX, 1.8, (255, 255, 255), 3
    )
    bullets = [
        "Latency down 38% on the LAN build",
        "Screen sharing in VP8, up to 1920x1080",
        "Files up to 500 MB, resumable",
    ]
    for i, text in enumerate(bullets):
        y = 200 + i * 70
        cv2.circle(img, (80, y - 12), 8, (120, 70, 40), -1)
        cv2.putText(img, text, (110, y), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (50, 50, 50), 2)
    bars = [180, 240, 210, 320, 380]
    for i, b in enumerate(bars):
        x = 760 + i * 90
        cv2.rectangle(
            img, (x, 640 - b), (x + 60, 640), (200, 140, 70) if i < 4 else (80, 170, 60), -1
        )
    cv2.line(img, (740, 640), (1220, 640), (90, 90, 90), 2)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return jpg.tobytes(), w, h


class Streamer:
    """Headless participants sending test-pattern video (VP8, 15 fps), a tone for one talker."""

    def __init__(self, clients: list, talker: int) -> None:
        import numpy as np

        import video_module

        self.clients = clients
        self.talker = talker
        self.stop = threading.Event()
        t = np.arange(config.AUDIO_FRAME_SAMPLES) / config.AUDIO_RATE_HZ
        self.tone = (9000 * np.sin(2 * math.pi * 330 * t)).astype("<i2").tobytes()
        self.thread = threading.Thread(target=self.run, name="screenshot-streamer")
        self.senders = [
            video_module.VideoSender(cl, frames_source(person_frames(i + 1)))
            for i, (cl, video) in enumerate(clients)
            if video
        ]

    def run(self) -> None:
        frame_s = config.AUDIO_FRAME_MS / 1000
        nxt = time.monotonic()
        while not self.stop.is_set():
            self.clients[self.talker][0].send_audio(self.tone)
            nxt += frame_s
            self.stop.wait(max(0.0, nxt - time.monotonic()))

    def __enter__(self) -> Streamer:
        for s in self.senders:
            s.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.senders:
            s.stop()


def frames_source(jpegs: list[bytes]):
    """A VideoSource looping over decoded JPEG frames, upscaled to 1280x720."""
    import cv2
    import numpy as np

    import video_module

    pictures = [
        cv2.resize(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), (1280, 720))
        for j in jpegs
    ]

    class _Frames(video_module.VideoSource):
        def __init__(self) -> None:
            self.k = 0

        def size(self):
            return 1280, 720

        def read(self):
            self.k += 1
            return pictures[self.k % len(pictures)]

    return _Frames()


@pytest.mark.xvfb
@pytest.mark.slow
def test_screenshots(xvfb, server, make_client, tmp_path):
    pytest.importorskip("cv2")
    import file_sharing_module

    make_client("Dana", "Board Room", password="board-only")  # noqa: S106 - a locked session
    bob = make_client("Bob Martin", SESSION, audio=True, video=True)
    priya = make_client("Priya Natarajan", SESSION, audio=False, video=True)
    chen = make_client("Chen Wei", SESSION, audio=True, video=False)
    for cl in (bob, priya, chen):
        assert cl.wait_udp_registered(5)
    for cl, text in (
        (bob, "Morning! Slides are up, agenda: https://wiki.lan/q3-review"),
        (priya, "Thanks Bob. I'll share the budget sheet in a minute."),
        (chen, "My camera is off today, <b>bad</b> lighting here :)"),
    ):
        echoed = threading.Event()
        cl.on("chat", lambda msg, e=echoed, t=text: msg.get("message") == t and e.set())
        cl.send_chat(text)
        assert echoed.wait(5)  # in this order in everyone's history
    for name, size in (("Q3 budget.xlsx", 48_213), ("Roadmap 2027.pdf", 2_304_117)):
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        t = file_sharing_module.upload(priya if "budget" in name else bob, path)
        assert t.wait(10) and t.ok, t.error
    import cv2
    import numpy as np

    import screen_sharing_module

    slide_path = tmp_path / "slide.png"
    jpeg, _, _ = slide_jpeg()
    cv2.imwrite(str(slide_path), cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
    sharer = screen_sharing_module.ScreenSharer(
        bob, lambda: screen_sharing_module.ImageSource(slide_path)
    )
    sharer.start()
    assert sharer.granted.wait(5)

    # docs/screenshots/ is rewritten only on request; otherwise the shots go to tmp_path.
    out = SHOTS if os.environ.get(UPDATE_ENV) == "1" else tmp_path / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    env = dict(os.environ, DISPLAY=xvfb, QT_QPA_PLATFORM="xcb")
    env.pop("WAYLAND_DISPLAY", None)
    clients = [(bob, True), (priya, True), (chen, False)]
    with Streamer(clients, talker=0):
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "127.0.0.1",
                str(server.tcp_port),
                str(out),
                str(tmp_path / "settings.ini"),
            ],
            env=env,
            cwd=str(ROOT),
        )
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        stopped = marked = locked = False
        waiting: list = []
        while child.poll() is None and time.monotonic() < deadline:
            if not stopped and (out / "main-presenting.png").exists():
                sharer.close()  # the child then takes the grid-only shot
                stopped = True
            if not marked and (out / "main-grid.png").exists():
                chen.raise_hand()  # meeting controls (issue 14): two hands, in this order,
                priya.raise_hand()
                bob.start_recording()  # and Bob, the host, records
                priya.react(config.MEETING_REACTIONS[0])  # a thumbs up over Priya's tile
                marked = True
            if not locked and (out / "meeting-hands-recording.png").exists():
                alice = next(i for i, p in bob.participants.items() if p["username"] == "Alice")
                bob.make_host(alice)  # Alice (the window) hosts too, and sees the lobby
                bob.lock()
                erin = threading.Thread(
                    target=_wait_in_lobby,
                    args=(server.tcp_port, server.fingerprint, "Erin Okafor"),
                    daemon=True,
                )
                erin.start()
                waiting.append(erin)
                locked = True
            time.sleep(0.2)  # polling the child's progress, bounded by the deadline
        sharer.close()
        if child.poll() is None:
            child.kill()
            pytest.fail("the screenshot child did not finish in time")
        for entry in bob.meeting.get("lobby", []):
            bob.decline(entry["ticket"])  # Erin (and the window's second join) go away
        for t in waiting:
            t.join(10)
    assert child.returncode == 0
    for name in ("settings.png", "volume-menu.png"):
        assert (out / name).exists() and (out / name).stat().st_size > 5_000, name
    for name in (
        "login.png",
        "main-presenting.png",
        "main-grid.png",
        "main-speaker.png",
        "meeting-hands-recording.png",
    ):
        png = out / name
        assert png.exists() and png.stat().st_size > 20_000, name


def _wait_in_lobby(port: int, fingerprint: str, name: str) -> None:
    from client import ConferenceClient, JoinError

    c = ConferenceClient("127.0.0.1", port, expected_fingerprint=fingerprint)
    try:
        c.connect(name, SESSION, audio=False, video=False)
    except JoinError:
        return  # declined at the end
    c.leave()


# --- the child: runs under Xvfb with the xcb platform ------------------------------------


def _child(host: str, port: int, out: Path, settings_path: str) -> int:
    import numpy as np
    from PyQt5.QtCore import QSettings, QTimer
    from PyQt5.QtGui import QImage
    from PyQt5.QtWidgets import QApplication

    import gui
    import gui_media
    import gui_theme
    from login_dialog import LoginDialog, connect_client

    app = QApplication([sys.argv[0]])
    gui_theme.apply_theme(app)

    def pump_until(cond, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            app.processEvents()
            if cond():
                return True
            loop_wait(0.02)
        return cond()

    def loop_wait(s: float) -> None:
        from PyQt5.QtCore import QEventLoop

        loop = QEventLoop()
        QTimer.singleShot(int(s * 1000), loop.quit)
        loop.exec_()

    settings = QSettings(settings_path, QSettings.IniFormat)
    settings.setValue("server", f"{host}:{port}")
    settings.setValue("username", "Alice")
    settings.setValue("session", SESSION)
    dialog = LoginDialog(settings=settings, discover=False)
    dialog.show()
    pump_until(lambda: dialog.sessions_list.count() > 1, 10)
    for row in range(dialog.sessions_list.count()):
        if SESSION in dialog.sessions_list.item(row).text():
            dialog.sessions_list.setCurrentRow(row)
    loop_wait(0.3)
    dialog.grab().save(str(out / "login.png"))
    request = dialog.request_from_form()
    dialog.reject()

    class PatternCamera(gui_media.MediaController):
        """A self-view from a generated pattern (there is no camera under Xvfb)."""

        def __init__(self) -> None:
            super().__init__()
            import cv2

            frames = person_frames(0)
            self.images = [
                cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) for f in frames
            ]
            self.k = 0
            self.on = False

        def start_camera(self):
            self.on = True
            return None

        def stop_camera(self):
            self.on = False

        def start_mic(self):
            return None

        def self_view(self):
            if not self.on:
                return None
            self.k += 1
            bgr = self.images[(self.k // 2) % len(self.images)]
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            h, w, _ = rgb.shape
            return self.k // 2, QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888).copy()

    client, _welcome = connect_client(request)
    window = gui.MainWindow(client, request, media=PatternCamera(), settings=settings)
    window.resize(1600, 960)
    window.show()

    def all_video() -> bool:
        tiles = window.grid.tiles.values()
        return all(t.showing_video() or not t.video_on for t in tiles) and len(tiles) == 4

    pump_until(lambda: all_video() and window.screen_view.image is not None, 15)
    window.local.toggle_present()  # Bob presents already: the server's refusal shows as a notice
    pump_until(lambda: "Another user" in window.last_notice, 5)
    loop_wait(1.0)
    window.grab().save(str(out / "main-presenting.png"))
    pump_until(lambda: not window.screen_view.isVisible(), 15)
    window.toast.dismiss()  # the earlier notice would otherwise still cover a tile
    window.chat_panel.input.setText("Looks great, thanks everyone")
    window.chat_panel.send()
    loop_wait(1.0)
    window.grab().save(str(out / "main-grid.png"))
    window.stage.set_mode("speaker")  # Bob talks (the tone): he takes the large stage
    pump_until(lambda: window.grid.on_stage() is not None and all_video(), 10)
    speaker = window.grid.tiles[window.grid.on_stage()]
    pump_until(lambda: speaker.image is not None and speaker.image.width() >= 640, 10)
    loop_wait(1.0)
    window.grab().save(str(out / "main-speaker.png"))
    # Right-click someone: volume for me and "Mute for me" (issue 10).
    panel = window.participants_panel
    other = next(pid for pid in panel.rows if pid != panel.self_id)
    menu = panel.volume_menu(other)
    menu.slider.setValue(140)
    menu.popup(panel.mapToGlobal(panel.rect().center()))
    loop_wait(0.5)
    # A popup's grab under Xvfb has an alpha channel: flatten it onto the window colour.
    from PyQt5.QtGui import QColor, QPainter, QPixmap

    shot = menu.grab()
    flat = QPixmap(shot.size())
    flat.fill(QColor("#272930"))
    painter = QPainter(flat)
    painter.drawPixmap(0, 0, shot)
    painter.end()
    flat.save(str(out / "volume-menu.png"))
    menu.close()
    from gui_media import SettingsDialog

    dialog = SettingsDialog(window.media, window)
    dialog.show()
    dialog.level_bar.setValue(150)  # what a voice shows on the input meter
    dialog.level_timer.stop()
    loop_wait(0.5)
    dialog.grab().save(str(out / "settings.png"))
    dialog.reject()
    window.stage.set_mode("grid")  # back to the grid for the meeting shots
    rows = window.participants_panel.rows

    def marked() -> bool:
        hands = [r.hand_label.text() for r in rows.values() if r.hand_label.isVisible()]
        return window.controls.recording_label.isVisible() and sorted(hands) == [
            "Hand 1",
            "Hand 2",
        ]

    if not pump_until(marked, 15):
        return 3
    tiles = window.grid.tiles.values()
    if not pump_until(lambda: any(t.reaction for t in tiles), 10):
        return 4
    loop_wait(0.5)
    window.grab().save(str(out / "meeting-hands-recording.png"))
    # The host's side of the lobby, and the host's menu on a person (issue 14).
    panel = window.participants_panel
    if not pump_until(lambda: len(panel.lobby_rows) == 1 and panel.i_host, 15):
        return 5
    window.toast.dismiss()
    loop_wait(0.5)
    window.grab().save(str(out / "meeting-lobby-host.png"))
    chen = next(pid for pid, r in panel.rows.items() if "Chen" in r.name_label.text())
    menu = panel.person_menu(chen)
    row = panel.rows[chen]
    menu.popup(row.mapToGlobal(row.rect().center()))
    loop_wait(0.5)
    app.primaryScreen().grabWindow(0).copy(window.frameGeometry()).save(
        str(out / "meeting-host-menu.png")
    )
    menu.close()
    # The newcomer's side: a second join dialog waits for a host.
    settings.setValue("username", "Frank Miller")
    waiting = LoginDialog(settings=settings, discover=False)
    waiting.show()
    waiting.join()
    if not pump_until(lambda: waiting.lobby_label.isVisible(), 15):
        return 6
    loop_wait(0.3)
    waiting.grab().save(str(out / "meeting-lobby-waiting.png"))
    waiting.reject()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]))
