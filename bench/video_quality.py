"""Benchmark: VP8 through a real server on loopback: screen-share sharpness and slide latency,
and recovery of a camera stream after a loss burst.

    .venv/bin/python bench/video_quality.py [--runs 3] [--json]

Screen: a presenter shares 1920x1080 text slides (tests/video_media.text_slide)
through ``ScreenSharer`` -> server -> ``ScreenReceiver``; a new slide every
``SLIDE_EVERY_S``. Reported: PSNR of every shown picture against the slide it
shows, and for each slide change the time from capture (the sender's clock
just after grabbing the picture) to the decoded picture at the viewer (same
host, same monotonic clock).

Recovery: a sender encodes the camera test scene (tests/video_media.camera_frames)
as both layers at 15 fps (``SimulcastEncoder``, sent by ``send_video_frame``);
the viewer subscribes to the large layer. The viewer's datagrams pass a loss
gate in front of its ``VideoReceiver`` (the client's socket edge): for
``BURST_S`` it drops ``LOSS_FRACTION`` of them at random, otherwise none.
Reported: the longest freeze (a stream waiting for a keyframe until a picture
decodes again), the time from the end of the burst to the next good picture,
and corrupted pictures: every shown picture is compared with the source
picture of its frame id (PSNR below ``CORRUPT_DB`` counts as corrupted).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import config  # noqa: E402
import screen_sharing_module as ssm  # noqa: E402
import simulcast  # noqa: E402
import video_module as vm  # noqa: E402
from client import ConferenceClient  # noqa: E402
from server import ConferenceServer  # noqa: E402
from tests.video_media import camera_frames, psnr, text_slide  # noqa: E402

SLIDE_EVERY_S = 1.0
SLIDES = 6
BURST_S = 1.0
LOSS_FRACTION = 0.05
RECOVERY_RUN_S = 6.0
BURST_AT_S = 2.0
CORRUPT_DB = 20.0  # a picture built on a lost fragment measures far below; good ones > 30
WAIT_S = 10.0


def wait(pred, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)  # a benchmark's polling, bounded by the deadline
    return pred()


class Slides(ssm.ScreenSource):
    """A new text slide every SLIDE_EVERY_S; remembers which one each grab returned."""

    def __init__(self) -> None:
        self.pictures = [text_slide(i) for i in range(SLIDES)]
        self.t0 = time.monotonic()
        self.shown: list[int] = []

    def grab(self) -> np.ndarray:
        k = min(SLIDES - 1, int((time.monotonic() - self.t0) / SLIDE_EVERY_S))
        self.shown.append(k)
        return self.pictures[k]


def screen_run(port: int) -> dict:
    a = ConferenceClient("127.0.0.1", port)
    a.connect("Presenter", "Q", audio=False, video=False)
    b = ConferenceClient("127.0.0.1", port)
    b.connect("Viewer", "Q", audio=False, video=False)
    shown: list[tuple[int, np.ndarray, float]] = []
    b_seq = [0]  # the seq of the frame being decoded (this handler runs first)
    b.on("screen_frame", lambda s, seq, w, h, d, k: b_seq.__setitem__(0, seq))
    receiver = ssm.ScreenReceiver(
        b, on_picture=lambda s, v, img: shown.append((b_seq[0], img, time.monotonic()))
    )
    source = Slides()
    sharer = ssm.ScreenSharer(a, lambda: source)
    try:
        sharer.start()
        assert sharer.granted.wait(WAIT_S)
        wait(lambda: sharer.frames_sent >= SLIDES * SLIDE_EVERY_S * config.SCREEN_VP8_FPS)
        sharer.stop()
    finally:
        sharer.close()
        receiver.close()
        a.leave()
        b.leave()
    # Which slide each frame shows: the grab order is the frame order (seq from 1).
    slide_of = {seq: source.shown[seq - 1] for seq, _, _ in shown if seq - 1 < len(source.shown)}
    scores = [psnr(img, source.pictures[slide_of[seq]]) for seq, img, _ in shown if seq in slide_of]
    latencies = []
    previous = None
    for seq, _, t in shown:
        k = slide_of.get(seq)
        if k is not None and k != previous and previous is not None:
            latencies.append((t - sharer.capture_times.get(seq, t)) * 1000)
        previous = k
    return {
        "frames": len(shown),
        "psnr_min_db": min(scores),
        "psnr_median_db": statistics.median(scores),
        "slide_change_ms": latencies,
        "keyframes": sharer.keyframes_sent,
        "bytes_per_frame": sharer.bytes_sent / max(1, sharer.frames_sent),
    }


class LossGate:
    """The viewer's client as VideoReceiver sees it, dropping datagrams during a burst."""

    def __init__(self, client: ConferenceClient, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.burst = (float("inf"), float("inf"))
        self.dropped = 0
        self.passed = 0
        self.my_id = client.my_id

    def on(self, event, fn):
        if event == "video_fragment":
            self.client.on(event, lambda *args: self._gate(fn, *args))
        else:
            self.client.on(event, fn)

    def _gate(self, fn, *args) -> None:
        now = time.monotonic()
        if self.burst[0] <= now < self.burst[1] and self.rng.random() < LOSS_FRACTION:
            self.dropped += 1
            return
        self.passed += 1
        fn(*args)

    def request_keyframe(self, sender, layer):
        self.client.request_keyframe(sender, layer)

    def send_report(self, streams):
        self.client.send_report(streams)


def recovery_run(port: int, seed: int) -> dict:
    a = ConferenceClient("127.0.0.1", port)
    a.connect("Camera", "R", audio=False, video=True)
    b = ConferenceClient("127.0.0.1", port)
    b.connect("Viewer", "R", audio=False, video=False)
    gate = LossGate(b, random.Random(seed))
    sources = camera_frames(1280, 720, 90, seed=seed)
    sent_pictures: dict[int, np.ndarray] = {}
    checked: list[float] = []
    lock = threading.Lock()

    def on_picture(pid, version, img):
        info = receiver.info(pid)
        if info is None or info.layer != "large":
            return
        with lock:
            ref = sent_pictures.get(info.frame_id)
        if ref is not None:
            checked.append(psnr(img, simulcast.scale_to(ref, img.shape[1], img.shape[0])))
        times.append(time.monotonic())

    times: list[float] = []
    receiver = vm.VideoReceiver(gate, on_picture=on_picture)
    encoder = simulcast.SimulcastEncoder(fps=15)
    requests: list[str] = []
    large = threading.Event()
    a.on("keyframe_request", requests.append)  # on the tcp thread; applied below
    a.on("video_layers", lambda on: large.set() if on else large.clear())
    b.subscribe({a.my_id: "large"})
    t0 = time.monotonic()
    gate.burst = (t0 + BURST_AT_S, t0 + BURST_AT_S + BURST_S)
    k = 0
    try:
        while time.monotonic() - t0 < RECOVERY_RUN_S:
            if large.is_set() != encoder.large_wanted:
                encoder.set_large_wanted(large.is_set())
            while requests:
                encoder.force_keyframe(requests.pop())
            picture = sources[k % len(sources)]
            for lf in encoder.encode(picture):
                if lf.layer == "large":
                    with lock:
                        sent_pictures[lf.frame_id] = picture
                a.send_video_frame(lf.layer, lf.frame_id, lf.frame.keyframe, lf.frame.data)
            k += 1
            time.sleep(max(0.0, t0 + k / 15 - time.monotonic()))  # the 15 fps send clock
        wait(receiver.idle, 2.0)
    finally:
        stats = receiver.stats().get(a.my_id, {})
        receiver.close()
        encoder.close()
        a.leave()
        b.leave()
    burst_end = gate.burst[1]
    after = [t for t in times if t >= burst_end]
    before_end = [t for t in times if t < burst_end]
    gaps = [(y - x) * 1000 for x, y in itertools.pairwise(times)]
    return {
        "datagrams_dropped": gate.dropped,
        "datagrams_passed": gate.passed,
        "pictures": len(times),
        "longest_freeze_ms": stats.get("longest_freeze_ms"),
        "longest_gap_between_pictures_ms": max(gaps) if gaps else None,
        "burst_end_to_next_picture_ms": (after[0] - max(burst_end, before_end[-1])) * 1000
        if after and before_end
        else None,
        "corrupted_pictures": sum(1 for db in checked if db < CORRUPT_DB),
        "checked_pictures": len(checked),
        "psnr_min_db": min(checked) if checked else None,
        "keyframes": stats.get("keyframes"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = {"screen": [], "recovery": []}
    with tempfile.TemporaryDirectory() as storage:
        cfg = config.ServerConfig(host="127.0.0.1", tcp_port=0, udp_port=0, storage_dir=storage)
        srv = ConferenceServer(cfg)
        srv.start()
        try:
            for i in range(args.runs):
                results["screen"].append(screen_run(srv.tcp_port))
                results["recovery"].append(recovery_run(srv.tcp_port, seed=i + 1))
        finally:
            srv.stop()
    if args.json:
        print(json.dumps(results))
        return
    for r in results["screen"]:
        lat = ", ".join(f"{x:.0f}" for x in r["slide_change_ms"])
        print(
            f"screen: {r['frames']} pictures, PSNR min {r['psnr_min_db']:.1f} / median "
            f"{r['psnr_median_db']:.1f} dB, slide change capture->shown [{lat}] ms, "
            f"{r['bytes_per_frame']:.0f} B/frame, {r['keyframes']} keyframes"
        )
    for r in results["recovery"]:
        print(
            f"recovery: dropped {r['datagrams_dropped']} of "
            f"{r['datagrams_dropped'] + r['datagrams_passed']} datagrams; longest freeze "
            f"{r['longest_freeze_ms']} ms; burst end -> next picture "
            f"{r['burst_end_to_next_picture_ms']} ms; longest gap "
            f"{r['longest_gap_between_pictures_ms']:.0f} ms; corrupted "
            f"{r['corrupted_pictures']} of {r['checked_pictures']} (min {r['psnr_min_db']:.1f} dB)"
        )


if __name__ == "__main__":
    main()
