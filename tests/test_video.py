"""Video: sources and JPEG units; VP8 layers from A decoded at B through a real server; loss."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import config
import simulcast
import utils
import video_module as vm
from tests.helpers import wait_for

W, H = config.VIDEO_WIDTH_PX, config.VIDEO_HEIGHT_PX


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def moving_shapes(n: int, w: int = W, h: int = H) -> list[np.ndarray]:
    """Frames with a gradient, a moving square, a moving circle and the frame number."""
    frames = []
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], axis=2).astype(np.uint8)
    for i in range(n):
        img = base.copy()
        x = 10 + (i * 9) % (w - 70)
        cv2.rectangle(img, (x, 30), (x + 50, 80), (0, 0, 255), -1)
        cv2.circle(img, (w - 40 - (i * 7) % (w - 80), h - 60), 25, (255, 255, 0), -1)
        cv2.putText(
            img, f"{i:03d}", (20, h - 20), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2
        )
        frames.append(img)
    return frames


def make_video(path: Path, frames: list[np.ndarray], fps: int = 15) -> list[np.ndarray]:
    """Write an MJPG .avi; return the frames as they read back (what a sender sees)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for f in frames:
        writer.write(f)
    writer.release()
    src = vm.VideoFileSource(path, loop=False)
    out = []
    while (f := src.read()) is not None:
        out.append(f)
    src.close()
    assert len(out) == len(frames)
    return out


# --- Pure parts ----------------------------------------------------------------------


def test_jpeg_round_trip_and_size_header():
    img = moving_shapes(1)[0]
    jpeg = vm.encode_jpeg(img, 80)
    assert vm.jpeg_size(jpeg) == (W, H)
    back = vm.decode_jpeg(jpeg)
    assert back.shape == img.shape and psnr(back, img) > 30


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xd8", b"not a jpeg at all", b"\xff\xd8\xff\xe0\x00\x01", b"\x89PNG\r\n\x1a\n"],
)
def test_decode_rejects_garbage(data):
    assert vm.decode_jpeg(data) is None


def test_decode_refuses_huge_claimed_size():
    jpeg = bytearray(vm.encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    i = jpeg.index(b"\xff\xc0")
    jpeg[i + 5 : i + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    assert vm.jpeg_size(bytes(jpeg)) == (60000, 60000)
    assert vm.decode_jpeg(bytes(jpeg)) is None


def test_fit_frame_keeps_aspect_by_cropping():
    wide = np.zeros((100, 400, 3), np.uint8)
    wide[:, 150:250] = 255  # a white centre band survives the crop
    out = vm.fit_frame(wide, 320, 240)
    assert out.shape == (240, 320, 3)
    assert out[120, 160].min() > 200
    assert vm.fit_frame(np.zeros((480, 640, 3), np.uint8), 320, 240).shape == (240, 320, 3)


def test_test_pattern_changes_every_frame_and_is_720p_by_default():
    src = vm.TestPatternSource("Alice", W, H)
    a, b = src.read(), src.read()
    assert a.shape == (H, W, 3)
    assert np.count_nonzero(np.any(a != b, axis=2)) > 50  # ball and clock moved
    hd = vm.TestPatternSource("Alice")
    assert hd.size() == (1280, 720) and hd.read().shape == (720, 1280, 3)
    assert [x["width"] for x in vm.announced_layers(1280, 720)] == [320, 1280]
    assert [x["width"] for x in vm.announced_layers(640, 480)] == [320, 640]


def test_video_file_source_loops_and_missing_file(tmp_path):
    path = tmp_path / "v.avi"
    make_video(path, moving_shapes(4))
    src = vm.VideoFileSource(path, loop=True)
    assert all(src.read() is not None for _ in range(10))
    with pytest.raises(vm.DeviceError, match="does not exist"):
        vm.VideoFileSource(tmp_path / "missing.avi")
    (tmp_path / "junk.avi").write_bytes(b"junk" * 10)
    with pytest.raises(vm.DeviceError):
        src = vm.VideoFileSource(tmp_path / "junk.avi")
        if src.read() is None:
            raise vm.DeviceError("no frames")


def test_no_camera_is_a_clear_error():
    if vm.list_cameras():
        pytest.skip("this machine has a camera")
    with pytest.raises(vm.DeviceError, match="No camera at index 0"):
        vm.CameraSource(0)


# --- Through a real server -------------------------------------------------------------

pytest.importorskip("av", reason="VP8 needs PyAV (pip install av)")


def best_match(image: np.ndarray, sources: list[np.ndarray]) -> tuple[int, float, float]:
    """(index, PSNR, lead over the runner-up) of the source frame ``image`` shows."""
    h, w = image.shape[:2]
    scores = [psnr(image, simulcast.scale_to(s, w, h)) for s in sources]
    k = int(np.argmax(scores))
    return k, scores[k], scores[k] - sorted(scores)[-2]


def test_vp8_from_a_is_decoded_at_b_small_then_large(make_client, tmp_path):
    """B subscribes to A small, then large: each picture is one source frame, intact.

    Thresholds: VP8 of these synthetic frames measured 30-38 dB (small layer at
    150 kbit/s) against their source frame and at most 24 dB against the others
    (shapes move every frame), so > 26 dB with a 3 dB lead proves the right frame,
    never torn or built on a missing fragment.
    """
    source_frames = make_video(tmp_path / "shapes.avi", moving_shapes(30))
    a = make_client("Alice", audio=False, video=True)
    b = make_client("Bob", audio=False, video=False)
    assert a.wait_udp_registered(5) and b.wait_udp_registered(5)
    shown: list[tuple[str, np.ndarray]] = []
    receiver = vm.VideoReceiver(b, on_picture=lambda pid, v, img: shown.append(img))
    sender = vm.VideoSender(a, lambda: vm.VideoFileSource(tmp_path / "shapes.avi")).start()
    try:
        b.subscribe({a.my_id: "small"})
        assert wait_for(
            lambda: (receiver.info(a.my_id) or vm.FrameInfo(0, 0, 0, "", None)).count >= 20, 10
        ), "no small-layer video at B"
        assert receiver.latest(a.my_id).shape == (180, 320, 3)
        assert sender.layer_frames["large"] == 0, "the large layer was sent with nobody on it"
        b.subscribe({a.my_id: "large"})
        assert wait_for(lambda: receiver.info(a.my_id).layer == "large", 5)
        n_large = receiver.info(a.my_id).count
        assert wait_for(lambda: receiver.info(a.my_id).count >= n_large + 10, 5)
        assert receiver.latest(a.my_id).shape == (360, 640, 3)  # a 320x240 source: 360p
        b.subscribe({})
        assert wait_for(lambda: not sender.large_wanted, 5)
    finally:
        sender.stop()
        receiver.close()
    assert len(shown) >= 30
    for img in shown:
        _, score, lead = best_match(img, source_frames)
        assert score > 26 and lead > 3, f"a shown picture is not one source frame: {score:.1f}"


def test_receiver_forgets_a_participant_who_left(make_client):
    a = make_client("Alice", audio=False, video=True)
    b = make_client("Bob", audio=False, video=False)
    assert a.wait_udp_registered(5) and b.wait_udp_registered(5)
    receiver = vm.VideoReceiver(b)
    sender = vm.VideoSender(a, lambda: vm.TestPatternSource("Alice")).start()
    b.subscribe({a.my_id: "small"})
    try:
        assert wait_for(lambda: receiver.latest(a.my_id) is not None, 5)
    finally:
        sender.stop()
    left = threading.Event()
    b.on("participant_left", lambda pid, name: left.set())
    a_id = a.my_id
    a.leave()
    assert left.wait(5)
    assert wait_for(lambda: a_id not in receiver.senders(), 2)
    assert receiver.latest(a_id) is None
    receiver.close()


def test_camera_off_releases_device_and_on_reopens(make_client):
    a = make_client("Alice", audio=False, video=True)
    b = make_client("Bob", audio=False, video=False)
    assert a.wait_udp_registered(5) and b.wait_udp_registered(5)
    opened: list[vm.TestPatternSource] = []
    closed = threading.Event()

    class Tracked(vm.TestPatternSource):
        def close(self):
            closed.set()

    def opener():
        src = Tracked("Alice")
        opened.append(src)
        return src

    updates: list[dict] = []
    b.on("participant_updated", lambda p: updates.append(dict(p)))
    receiver = vm.VideoReceiver(b)
    sender = vm.VideoSender(a, opener).start()
    b.subscribe({a.my_id: "small"})

    def count() -> int:
        info = receiver.info(a.my_id)
        return 0 if info is None else info.count

    try:
        assert wait_for(lambda: count() > 3, 5)
        assert sender.set_camera(False, audio_on=False) is False
        assert closed.is_set(), "camera off did not release the device"
        assert wait_for(lambda: any(u["video"] is False for u in updates), 5)
        n_off = count()
        t_off = time.monotonic()
        assert wait_for(lambda: time.monotonic() - t_off > 0.5, 1)
        assert count() <= n_off + 1  # at most one frame in flight
        assert sender.set_camera(True, audio_on=False) is True
        assert len(opened) == 2
        assert wait_for(lambda: count() > n_off + 3, 5)
        assert updates[-1]["video"] is True and updates[-1]["layers"][1]["width"] == 1280
    finally:
        sender.stop()
        receiver.close()


def test_missing_camera_leaves_camera_off_and_session_working(make_client):
    if vm.list_cameras():
        pytest.skip("this machine has a camera")
    a = make_client("Alice", audio=False, video=True)
    b = make_client("Bob", audio=False, video=False)
    messages: list[str] = []
    sender = vm.VideoSender(a, lambda: vm.CameraSource(0), on_message=messages.append).start()
    updates: list[dict] = []
    b.on("participant_updated", lambda p: updates.append(dict(p)))
    try:
        assert not sender.camera_on
        assert messages and "No camera" in messages[0]
        assert sender.set_camera(True, audio_on=False) is False  # still none: a message again
        assert len(messages) == 2
        assert wait_for(lambda: any(u["video"] is False for u in updates), 5)
        got = threading.Event()
        b.on("chat", lambda m: got.set() if m["message"] == "still here" else None)
        a.send_chat("still here")
        assert got.wait(5)
    finally:
        sender.stop()


# --- Loss: a missing fragment means a keyframe request, never a broken picture ----------


class FakeClient:
    """What VideoReceiver uses of a client: events, keyframe requests and reports."""

    my_id = 1

    def __init__(self) -> None:
        self.handlers: dict[str, list] = {}
        self.requests: list[tuple[int, str]] = []
        self.reports: list[list[dict]] = []

    def on(self, event, fn):
        self.handlers.setdefault(event, []).append(fn)

    def off(self, event, fn):
        self.handlers.get(event, []).remove(fn)

    def emit(self, event, *args):
        for fn in list(self.handlers.get(event, [])):
            fn(*args)

    def request_keyframe(self, sender, layer):
        self.requests.append((sender, layer))

    def send_report(self, streams):
        self.reports.append(streams)


def test_lost_fragment_leads_to_keyframe_and_never_to_a_broken_picture():
    """Fragments of a real VP8 stream reach the receiver; one fragment of one inter frame
    is lost. The receiver asks for a keyframe, shows no picture built on the gap (the
    tile keeps the last good one), and resumes at the keyframe; every picture shown is
    its own source frame (> 26 dB and 3 dB ahead of every other source frame)."""
    client = FakeClient()
    shown: list[tuple[int, np.ndarray]] = []
    receiver = vm.VideoReceiver(client, on_picture=lambda pid, v, img: shown.append(img))
    sources = moving_shapes(40, 640, 360)
    encoder = simulcast.SimulcastEncoder(fps=15)
    encoder.set_large_wanted(True)
    seq = 0
    dropped_frame = 10
    keyed = False
    try:
        for i, img in enumerate(sources):
            if i == dropped_frame + 3:  # two inter frames came after the gap: none shown
                assert wait_for(lambda: (7, "large") in client.requests, 2), "no keyframe request"
                frozen = receiver.info(7)
                assert frozen.frame_id == dropped_frame - 1, "a picture past the gap was shown"
                assert frozen.frozen_since is not None
                encoder.force_keyframe("large")  # what the sender does when asked
                keyed = True
            assert i > dropped_frame or not client.requests, "a request before any loss"
            for lf in encoder.encode(img):
                if lf.layer != "large":
                    continue
                frags = utils.split_vp8_frame(
                    "large", lf.frame_id, lf.frame.keyframe, lf.frame.data
                )
                for k, payload in enumerate(frags):
                    seq += 1
                    if lf.frame_id == dropped_frame and k == 0:
                        assert len(frags) > 1, "the test needs a frame of several fragments"
                        continue  # lost on the way
                    client.emit("video_fragment", 7, seq, utils.VideoFragment.parse(payload))
            wait_for(receiver.idle, 5)
    finally:
        receiver.close()
        encoder.close()
    assert keyed, "the loss was never noticed"
    assert len(shown) >= 30, f"only {len(shown)} pictures: no recovery after the keyframe"
    for img in shown:
        k, score, lead = best_match(img, sources)
        assert score > 26 and lead > 3, f"a broken picture was shown ({score:.1f} dB)"


class FakeSenderClient(FakeClient):
    """What VideoSender uses of a client: events in, frames out."""

    def __init__(self) -> None:
        super().__init__()
        self.media_params = {"video": {"fps": 15}}
        self.frames: list[tuple[str, int, bool, int]] = []
        self.layers = None
        self.lock = threading.Lock()

    def set_video_layers(self, layers):
        self.layers = layers

    def set_media(self, audio, video):
        pass

    def send_video_frame(self, layer, frame_id, keyframe, data):
        with self.lock:
            self.frames.append((layer, frame_id, keyframe, len(data)))
        return len(data)

    def sent(self, layer):
        with self.lock:
            return [f for f in self.frames if f[0] == layer]


def test_sender_applies_large_wanted_keyframe_requests_and_bitrate_hints():
    """Requests arrive on a network thread; the sender thread applies them."""
    client = FakeSenderClient()
    sender = vm.VideoSender(client, vm.TestPatternSource("Alice")).start()
    try:
        assert [x["width"] for x in client.layers] == [320, 1280]  # announced with media
        assert wait_for(lambda: len(client.sent("small")) >= 5, 5)
        assert client.sent("small")[0][2] is True  # the first frame is a keyframe
        assert client.sent("large") == []  # nobody shows us large
        client.emit("video_layers", True)
        assert wait_for(lambda: len(client.sent("large")) >= 3, 5)
        assert client.sent("large")[0][2] is True  # a new large layer starts with a keyframe
        n = len(client.sent("small"))
        client.emit("keyframe_request", "small")
        assert wait_for(lambda: any(f[2] for f in client.sent("small")[n:]), 5)
        client.emit("bitrate", "large", 400_000)
        assert wait_for(lambda: sender.bitrates_applied.get("large") == 400_000, 5)
        client.emit("video_layers", False)
        assert wait_for(lambda: not sender.large_wanted, 5)
        m = len(client.sent("large"))
        k = len(client.sent("small"))
        assert wait_for(lambda: len(client.sent("small")) >= k + 5, 5)
        assert len(client.sent("large")) <= m + 1  # at most one in flight
    finally:
        sender.stop()
