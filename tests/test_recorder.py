"""recorder.py: pure timeline parts, a 10 s recording checked by decoding it, the queue's
drop policy, stop(), a full disk (simulated ENOSPC, a real tmpfs, the free-space reserve)
and running without PyAV."""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import wave
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

import config
import recorder
from recorder import (
    AudioTimeline,
    MeetingRecorder,
    Reason,
    RecordingError,
    VideoTimeline,
    format_chat_line,
    letterbox_rect,
)

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parent.parent
RATE = config.AUDIO_RATE_HZ
CHUNK = config.AUDIO_FRAME_SAMPLES  # 20 ms, as the server's mixer tick
CHUNK_MS = 1000 * CHUNK / RATE
DRAIN_S = 20.0


class FakeClock:
    """The recorder's clock, moved by the test (milliseconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def no_warnings(caplog):
    """Fails the test if anything logs a WARNING or worse."""
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not bad, [r.getMessage() for r in bad]


def recorder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "recorder"]


# --- test media ---------------------------------------------------------------------


def speech(seconds: float, tmp_path: Path) -> np.ndarray:
    """``seconds`` of int16 speech at RATE: espeak-ng if installed, else speech-like noise."""
    n = int(seconds * RATE)
    out = np.zeros(n, np.int16)
    espeak = shutil.which("espeak-ng")
    if espeak:
        wav = tmp_path / "speech.wav"
        text = (
            "Good morning everyone. Welcome to the weekly meeting. Today we look at the "
            "recording of meetings, the lobby, and raised hands. Please mute when you are "
            "not speaking. Let us begin with the shared screen."
        )
        subprocess.run(
            [espeak, "-s", "170", "-w", str(wav), text], check=True, capture_output=True, timeout=60
        )
        with wave.open(str(wav)) as w:
            assert w.getsampwidth() == 2 and w.getnchannels() == 1
            data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
            if w.getframerate() != RATE:
                x = np.arange(0, len(data), w.getframerate() / RATE)
                data = np.interp(x, np.arange(len(data)), data).astype(np.int16)
    else:  # voiced harmonics under a syllable-rate envelope, with noise bursts
        rng = np.random.default_rng(1)
        t = np.arange(n) / RATE
        f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
        env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
        data = (6000 * env * voiced + 800 * env * rng.standard_normal(n)).astype(np.int16)
    out[: min(n, len(data))] = data[:n]
    return out


def slide(counter: int, width: int = 1280, height: int = 720) -> np.ndarray:
    """A slide with a title and a big frame counter."""
    img = np.full((height, width, 3), 245, np.uint8)
    cv2.rectangle(img, (0, 0), (width, height // 8), (120, 60, 20), -1)
    cv2.putText(img, "Quarterly review", (20, height // 10), 0, height / 500, (255, 255, 255), 2)
    cv2.putText(
        img, f"{counter:03d}", (width // 6, height * 3 // 4), 0, height / 80, (30, 30, 200), 20
    )
    return img


def jpeg(img: np.ndarray, quality: int = config.SCREEN_JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def decode_video(path: Path) -> list[tuple[float, np.ndarray]]:
    """(time in s, BGR picture) of every video frame in the file."""
    with av.open(str(path)) as c:
        return [(float(f.time), f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]


def decode_audio(path: Path) -> np.ndarray:
    """The file's audio as int16 mono at RATE."""
    res = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    parts = []
    with av.open(str(path)) as c:
        for frame in c.decode(audio=0):
            parts += [f.to_ndarray().ravel() for f in res.resample(frame)]
    parts += [f.to_ndarray().ravel() for f in res.resample(None)]
    return np.concatenate(parts).astype(np.int16)


def best_ncc(ref: np.ndarray, got: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Highest normalised cross-correlation over lags in [-max_lag, max_lag], and the lag.

    Normalised by the energy of both whole signals: never more than the overlap's NCC.
    """
    x = ref.astype(np.float64)
    y = got.astype(np.float64)
    size = 1 << (len(x) + len(y) - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size)), size)
    lags = np.arange(-max_lag, max_lag + 1)
    values = corr[lags % size] / np.sqrt(np.dot(x, x) * np.dot(y, y))
    i = int(np.argmax(values))
    return float(values[i]), int(lags[i])


def duration_s(path: Path) -> float:
    with av.open(str(path)) as c:
        return c.duration / 1_000_000


# --- pure parts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst", "rect"),
    [
        ((1280, 720), (1280, 720), (0, 0, 1280, 720)),
        ((640, 360), (1280, 720), (0, 0, 1280, 720)),
        ((320, 240), (640, 360), (80, 0, 480, 360)),
        ((1920, 1200), (1280, 720), (64, 0, 1152, 720)),
        ((720, 1280), (1280, 720), (438, 0, 404, 720)),
        ((2560, 720), (1280, 720), (0, 180, 1280, 360)),
        ((1, 1), (16, 16), (0, 0, 16, 16)),
    ],
)
def test_letterbox_rect_fits_centred_and_even(src, dst, rect) -> None:
    got = letterbox_rect(*src, *dst)
    assert got == rect
    x, y, w, h = got
    assert all(v % 2 == 0 for v in got)
    assert x + w <= dst[0] and y + h <= dst[1]


def test_letterbox_rect_refuses_empty_sizes() -> None:
    with pytest.raises(ValueError):
        letterbox_rect(0, 10, 10, 10)


def test_audio_timeline_fills_gaps_and_drops_audio_running_ahead() -> None:
    tl = AudioTimeline(1000, tolerance_ms=60)  # 1 sample per ms
    assert tl.place(0, 20) == 0
    assert tl.place(20, 20) == 0
    assert tl.place(75, 20) == 0  # 35 ms late: within tolerance, kept contiguous
    assert tl.written == 60
    assert tl.place(200, 20) == 140  # a gap: silence up to its time
    assert tl.written == 220
    assert tl.place(100, 20) is None  # 120 ms ahead of its clock: dropped
    assert tl.written == 220
    assert tl.fill_to(200) == 0
    assert tl.fill_to(500) == 280
    assert tl.position_ms == 500


def test_video_timeline_frames_due_before_a_time() -> None:
    tl = VideoTimeline(5)  # a frame every 200 ms
    assert list(tl.due(0)) == []
    assert list(tl.due(1)) == [0]
    assert list(tl.due(200)) == []  # frame 1 is at 200 ms: not before 200
    assert list(tl.due(401)) == [1, 2]
    assert list(tl.due(300)) == []  # time going back takes nothing
    assert tl.position_ms == 600


def test_chat_line_format() -> None:
    assert format_chat_line(3_723_456, "Alice", "hi") == "[01:02:03] Alice: hi\n"
    assert format_chat_line(0, "Bob\nX", "a\r\nb") == "[00:00:00] Bob X: a\n    b\n"


# --- a 10 s recording, decoded and compared with its source -------------------------


def test_ten_second_recording_plays_back_in_sync(tmp_path: Path, clock, no_warnings) -> None:
    seconds, fps = 10, config.RECORDING_FPS
    source = speech(seconds, tmp_path)
    gap = (int(5.6 * RATE) // CHUNK, int(6.6 * RATE) // CHUNK)  # the mixer sent nothing here
    source[gap[0] * CHUNK : gap[1] * CHUNK] = 0
    slides = [slide(i) for i in range(seconds * fps)]
    stopped: list[str] = []
    rec = MeetingRecorder(
        tmp_path / "meeting.webm", clock=clock, start_ms=0.0, on_stopped=stopped.append
    )
    assert [t.name for t in recorder_threads()] == ["recorder"]
    frame_ms = 1000 / fps
    next_slide = 0
    for k in range(len(source) // CHUNK):
        clock.now = k * CHUNK_MS
        while next_slide < len(slides) and next_slide * frame_ms <= clock.now:
            assert rec.add_video(jpeg(slides[next_slide]), next_slide * frame_ms)
            next_slide += 1
            assert rec.wait_drained(DRAIN_S)
        if not gap[0] <= k < gap[1]:
            assert rec.add_audio(source[k * CHUNK : (k + 1) * CHUNK].tobytes(), clock.now)
        if k == 100:
            assert rec.add_chat("Alice", "Can everyone see my screen?", clock.now)
        if k == 300:
            assert rec.add_chat("Bob", "Yes.\nLooks good.", clock.now)
    clock.now = seconds * 1000
    result = rec.stop()

    assert stopped == [Reason.STOPPED]
    assert recorder_threads() == []
    assert result.reason == Reason.STOPPED
    assert result.path == tmp_path / "meeting.webm"
    assert result.bytes == result.path.stat().st_size > 0
    assert abs(result.duration_s - seconds) <= 0.2
    assert sum(v for k, v in result.stats.items() if k.startswith("dropped_")) == 0
    assert not list(tmp_path.glob("*.reserve"))

    with av.open(str(result.path)) as c:  # a standard demuxer sees VP8 + Opus
        assert c.format.name.startswith("matroska")
        assert sorted(s.codec_context.name for s in c.streams) == ["opus", "vp8"]
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    # A keyframe every RECORDING_KEYFRAME_INTERVAL_S, not one per picture (JPEGs are intra).
    assert sum(keys) == math.ceil(len(keys) / (fps * config.RECORDING_KEYFRAME_INTERVAL_S))
    assert abs(duration_s(result.path) - seconds) <= 0.2

    got = decode_audio(result.path)
    assert abs(len(got) / RATE - seconds) <= 0.2
    ncc, lag = best_ncc(source, got, max_lag=RATE // 10)
    assert ncc >= 0.8, (ncc, lag)
    assert abs(lag) <= RATE * 0.05  # in sync within 50 ms
    quiet = got[gap[0] * CHUNK + RATE // 20 : gap[1] * CHUNK - RATE // 20]
    assert np.abs(quiet.astype(np.int32)).max() < 300  # the gap became silence

    frames = decode_video(result.path)
    assert len(frames) == seconds * fps
    worst = 99.0
    for n, (t, img) in enumerate(frames):
        assert abs(t - n / fps) < 1e-3
        near = range(max(0, n - 2), min(len(slides), n + 3))
        scores = {i: psnr(img, slides[i]) for i in near}
        assert scores[n] >= 25, (n, scores)
        assert max(scores, key=scores.get) == n  # the counter reads n, not a neighbour
        worst = min(worst, scores[n])
    print(f"audio NCC {ncc:.3f} at lag {lag} samples; worst slide PSNR {worst:.1f} dB")

    lines = result.chat_path.read_text(encoding="utf-8").splitlines()
    assert lines == [
        "[00:00:02] Alice: Can everyone see my screen?",
        "[00:00:06] Bob: Yes.",
        "    Looks good.",
    ]


def test_pictures_are_letterboxed_held_and_bad_ones_skipped(
    tmp_path: Path, clock, no_warnings
) -> None:
    """A 4:3 camera array into a 16:9 output, black before it, held after it."""
    fps, size = 15, (640, 360)
    cam = np.zeros((240, 320, 3), np.uint8)
    cam[:, :, 1] = np.linspace(40, 220, 320, dtype=np.uint8)[None, :]
    cv2.circle(cam, (160, 120), 60, (0, 0, 255), -1)
    rec = MeetingRecorder(
        tmp_path / "cam.webm", clock=clock, start_ms=0.0, video_size=size, fps=fps
    )
    clock.now = 1000
    assert rec.add_video(cam, 1000)
    clock.now = 1500
    assert rec.add_video(b"not a jpeg at all", 1500)  # ignored: the last picture holds
    clock.now = 3000
    result = rec.stop()
    assert result.stats["picture_errors"] == 1
    frames = decode_video(result.path)
    assert len(frames) == 3 * fps
    x, y, w, h = letterbox_rect(320, 240, *size)
    want = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    for n, (_t, img) in enumerate(frames):
        if n < fps:  # before the first picture: black
            assert img.mean() < 20, n
            continue
        assert psnr(img[y : y + h, x : x + w], want) >= 25, n
        assert img[:, :x].mean() < 20 and img[:, x + w :].mean() < 20  # the bars
    assert abs(duration_s(result.path) - 3) <= 0.2


def test_real_clock_keeps_audio_and_picture_together(tmp_path: Path, no_warnings) -> None:
    """Items stamped "now" on the real clock, as the server sends them: a tone and a
    white picture start together at about 1 s and appear together in the file."""
    fps = 5
    rec = MeetingRecorder(tmp_path / "live.webm", video_size=(320, 180), fps=fps)
    silence = bytes(2 * CHUNK)
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(CHUNK) / RATE)).astype("<i2").tobytes()
    white = np.full((180, 320, 3), 255, np.uint8)
    sent_tone_ms = sent_white_ms = None
    k = 0
    deadline = time.monotonic() + 10  # bounded even on a loaded machine
    while rec.elapsed_ms() < 2000 and time.monotonic() < deadline:
        due = k * CHUNK_MS
        if rec.elapsed_ms() < due:
            time.sleep((due - rec.elapsed_ms()) / 1000)
            continue
        if due >= 1000 and sent_tone_ms is None:
            sent_white_ms = rec.elapsed_ms()
            rec.add_video(white)
            sent_tone_ms = rec.elapsed_ms()
        rec.add_audio(tone if sent_tone_ms is not None else silence)
        k += 1
    result = rec.stop()
    assert sent_tone_ms is not None and sent_white_ms is not None
    got = decode_audio(result.path)
    onset_ms = np.flatnonzero(np.abs(got.astype(np.int32)) > 2000)[0] * 1000 / RATE
    assert abs(onset_ms - sent_tone_ms) <= config.RECORDING_AUDIO_SYNC_TOLERANCE_MS + 10
    frames = decode_video(result.path)
    first_white = next(n for n, (_t, img) in enumerate(frames) if img.mean() > 200)
    assert first_white == math.ceil(sent_white_ms * fps / 1000 - 1e-9)
    assert abs(duration_s(result.path) - result.duration_s) <= 0.2


def test_audio_only_recording_has_repeated_black_video(tmp_path: Path, clock) -> None:
    rec = MeetingRecorder(tmp_path / "a.webm", clock=clock, start_ms=0.0, video_size=(320, 180))
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(CHUNK) / RATE)).astype("<i2").tobytes()
    for k in range(100):
        clock.now = k * CHUNK_MS
        rec.add_audio(tone, clock.now)
    clock.now = 2000
    result = rec.stop()
    assert abs(duration_s(result.path) - 2) <= 0.2
    assert len(decode_video(result.path)) == 2 * config.RECORDING_FPS


# --- queue, stop, threads -------------------------------------------------------------


def test_full_queue_drops_pictures_first_and_never_blocks(tmp_path: Path, clock) -> None:
    release = threading.Event()
    rec = MeetingRecorder(
        tmp_path / "q.webm", clock=clock, start_ms=0.0, video_size=(64, 48), queue_max_items=4
    )
    real_handle = rec._writer.handle

    def slow_handle(item):
        release.wait(10)
        real_handle(item)

    rec._writer.handle = slow_handle  # the recorder thread stalls on its first item
    pcm = bytes(2 * CHUNK)
    pic = np.zeros((48, 64, 3), np.uint8)
    try:
        assert rec.add_audio(pcm, 0)
        assert rec.wait_drained(5)  # taken by the stalled thread
        t0 = time.monotonic()
        assert rec.add_video(pic, 10)
        assert rec.add_audio(pcm, 20)
        assert rec.add_video(pic, 30)
        assert rec.add_audio(pcm, 40)  # queue full now: [V, A, V, A]
        assert rec.add_audio(pcm, 60)  # drops the oldest picture
        assert rec.add_video(pic, 70)  # drops the other picture
        assert rec.add_audio(pcm, 80)  # drops the newest picture
        assert not rec.add_video(pic, 90)  # nothing droppable: the new picture goes
        assert not rec.add_chat("A", "x", 95)
        assert not rec.add_audio(pcm, 100)
        assert time.monotonic() - t0 < 0.5
        assert rec.dropped == {"video": 4, "audio": 1, "chat": 1}
        assert [(i.kind, i.time_ms) for i in rec._queue] == [
            ("audio", 20),
            ("audio", 40),
            ("audio", 60),
            ("audio", 80),
        ]
    finally:
        release.set()
        clock.now = 500
        result = rec.stop()
    assert result.stats["dropped_video"] == 4


def test_queue_byte_limit_drops_pictures(tmp_path: Path, clock) -> None:
    release = threading.Event()
    rec = MeetingRecorder(
        tmp_path / "b.webm", clock=clock, start_ms=0.0, video_size=(64, 48), queue_max_bytes=20_000
    )
    real_handle = rec._writer.handle
    rec._writer.handle = lambda item: (release.wait(10), real_handle(item))
    try:
        assert rec.add_audio(bytes(2 * CHUNK), 0)
        assert rec.wait_drained(5)
        assert rec.add_video(np.zeros((60, 80, 3), np.uint8), 10)  # 14400 bytes
        assert rec.add_video(np.zeros((60, 80, 3), np.uint8), 20)  # replaces it
        assert rec.dropped["video"] == 1
        assert not rec.add_video(np.zeros((100, 100, 3), np.uint8), 30)  # 30000: never fits
    finally:
        release.set()
        rec.stop()


def test_bad_input_is_refused(tmp_path: Path, clock) -> None:
    rec = MeetingRecorder(tmp_path / "x.webm", clock=clock, start_ms=0.0, video_size=(64, 48))
    try:
        with pytest.raises(ValueError):
            rec.add_audio(b"\x00\x01\x02")
        with pytest.raises(ValueError):
            rec.add_video(np.zeros((4, 4), np.uint8))
        with pytest.raises(ValueError):
            rec.add_video(np.zeros((4, 4, 3), np.float32))
    finally:
        rec.stop()
    with pytest.raises(ValueError):
        MeetingRecorder(tmp_path / "y.webm", video_size=(641, 360))


def test_stop_is_idempotent_and_joins_the_thread(tmp_path: Path, clock, no_warnings) -> None:
    calls: list[str] = []
    rec = MeetingRecorder(
        tmp_path / "s.webm", clock=clock, start_ms=0.0, video_size=(64, 48), on_stopped=calls.append
    )
    assert rec.running
    clock.now = 1000
    first = rec.stop()
    assert not rec.running
    assert recorder_threads() == []
    assert rec.stop() is first
    assert rec.result is first
    assert calls == [Reason.STOPPED]
    assert not rec.add_audio(bytes(2 * CHUNK))
    assert not rec.add_video(b"\xff\xd8")
    assert not rec.add_chat("A", "late")
    assert abs(first.duration_s - 1) <= 0.2
    assert abs(duration_s(first.path) - 1) <= 0.2


# --- a full disk ------------------------------------------------------------------------


def _feed_noise_until_stopped(rec: MeetingRecorder, clock, done: threading.Event, max_s: float):
    """Noisy pictures (many bytes) and audio until the recorder stops itself."""
    rng = np.random.default_rng(7)
    k = 0
    while not done.is_set() and k * CHUNK_MS < max_s * 1000:
        clock.now = k * CHUNK_MS
        rec.add_audio(rng.integers(-8000, 8000, CHUNK, dtype=np.int16).tobytes(), clock.now)
        if k % 10 == 0:
            rec.add_video(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), clock.now)
            rec.wait_drained(DRAIN_S)
        k += 1
    assert done.wait(DRAIN_S)


def _assert_playable(result) -> None:
    frames = decode_video(result.path)
    assert len(frames) >= 2
    assert abs(duration_s(result.path) - result.duration_s) <= 0.2
    assert len(decode_audio(result.path)) / RATE >= result.duration_s - 0.3


def test_enospc_stops_cleanly_with_a_playable_file(tmp_path: Path, clock, monkeypatch) -> None:
    """A write fails with ENOSPC once: the ballast is freed, the file is finalised."""
    written = {"n": 0, "failed": 0}
    real_write = os.write

    def write(fd, data):
        if written["n"] > 400_000 and not written["failed"]:
            written["failed"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        written["n"] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(recorder._GuardedFile, "_os_write", staticmethod(write))
    reasons: list[str] = []
    done = threading.Event()
    rec = MeetingRecorder(
        tmp_path / "full.webm",
        clock=clock,
        start_ms=0.0,
        video_size=(320, 240),
        finalise_reserve_bytes=256 * 1024,
        on_stopped=lambda r: (reasons.append(r), done.set()),
    )
    assert (tmp_path / "full.webm.reserve").stat().st_size == 256 * 1024
    _feed_noise_until_stopped(rec, clock, done, max_s=120)
    assert reasons == [Reason.DISK_FULL]
    assert written["failed"] == 1
    result = rec.stop()
    assert result.reason == Reason.DISK_FULL
    assert recorder_threads() == []
    assert not (tmp_path / "full.webm.reserve").exists()
    assert not rec.add_audio(bytes(2 * CHUNK))
    _assert_playable(result)


def test_enospc_with_nothing_left_to_free_still_ends(tmp_path: Path, clock, monkeypatch) -> None:
    """No ballast (or it was not enough): the recording ends, the thread is joined."""
    real_write = os.write
    written = {"n": 0}

    def write(fd, data):
        if written["n"] > 200_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        written["n"] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(recorder._GuardedFile, "_os_write", staticmethod(write))
    done = threading.Event()
    reasons: list[str] = []
    rec = MeetingRecorder(
        tmp_path / "nothing.webm",
        clock=clock,
        start_ms=0.0,
        video_size=(320, 240),
        finalise_reserve_bytes=0,
        on_stopped=lambda r: (reasons.append(r), done.set()),
    )
    _feed_noise_until_stopped(rec, clock, done, max_s=120)
    result = rec.stop()
    assert reasons == [Reason.DISK_FULL] and result.reason == Reason.DISK_FULL
    assert recorder_threads() == []
    with av.open(str(result.path)) as c:  # cut short, but a demuxer still opens it
        assert any(True for _ in c.decode(video=0))


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """An 8 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def test_real_full_disk_stops_cleanly(tiny_disk: Path, clock) -> None:
    done = threading.Event()
    reasons: list[str] = []
    rec = MeetingRecorder(
        tiny_disk / "meeting.webm",
        clock=clock,
        start_ms=0.0,
        video_size=(320, 240),
        min_free_bytes=0,
        # More than a cluster (RECORDING_CLUSTER_SIZE_LIMIT_BYTES): the muxer holds one.
        finalise_reserve_bytes=2 * 1024 * 1024,
        on_stopped=lambda r: (reasons.append(r), done.set()),
    )
    rec.add_chat("Alice", "before the disk fills", 0)
    _feed_noise_until_stopped(rec, clock, done, max_s=120)
    result = rec.stop()
    assert reasons == [Reason.DISK_FULL] and result.reason == Reason.DISK_FULL
    assert not (tiny_disk / "meeting.webm.reserve").exists()
    assert result.bytes > 4_000_000
    assert "before the disk fills" in result.chat_path.read_text(encoding="utf-8")
    _assert_playable(result)


def test_free_space_below_the_reserve_stops_the_recording(
    tmp_path: Path, clock, monkeypatch
) -> None:
    usage = namedtuple("usage", "total used free")
    disk = {"free": 10**12}
    monkeypatch.setattr(recorder.shutil, "disk_usage", lambda _p: usage(0, 0, disk["free"]))
    done = threading.Event()
    results = []

    def on_stopped(reason: str) -> None:
        results.append((reason, rec.stop()))  # stop() from the callback: no deadlock
        done.set()

    rec = MeetingRecorder(
        tmp_path / "r.webm",
        clock=clock,
        start_ms=0.0,
        video_size=(64, 48),
        min_free_bytes=10**9,
        disk_check_interval_s=0.05,
        on_stopped=on_stopped,
    )
    for k in range(100):  # 2 s of audio
        clock.now = k * CHUNK_MS
        rec.add_audio(bytes(2 * CHUNK), clock.now)
    assert rec.wait_drained(DRAIN_S)
    disk["free"] = 10**8
    assert done.wait(10)
    reason, result = results[0]
    assert reason == Reason.DISK_FULL and result.reason == Reason.DISK_FULL
    assert rec.stop() is result
    assert recorder_threads() == []
    assert 1.8 <= duration_s(result.path) <= 2.2


def test_too_little_free_space_refuses_to_start(tmp_path: Path, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(recorder.shutil, "disk_usage", lambda _p: usage(0, 0, 1000))
    with pytest.raises(RecordingError) as e:
        MeetingRecorder(tmp_path / "n.webm")
    assert e.value.code == Reason.DISK_FULL
    assert not list(tmp_path.iterdir())
    assert recorder_threads() == []


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "old.webm").write_bytes(b"an earlier recording")
    with pytest.raises(RecordingError) as e:
        MeetingRecorder(tmp_path / "old.webm")
    assert e.value.code == Reason.WRITE_ERROR
    assert (tmp_path / "old.webm").read_bytes() == b"an earlier recording"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.webm"]
    (tmp_path / "new.chat.txt").write_text("chat of an earlier recording")
    with pytest.raises(RecordingError):
        MeetingRecorder(tmp_path / "new.webm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.chat.txt", "old.webm"]
    assert recorder_threads() == []


def test_the_mixer_gives_the_recorder_everyone_s_mix() -> None:
    from audio_codec import OpusEncoder
    from audio_mixer import AudioMixer

    mixer = AudioMixer(hangover_frames=1)
    for pid in (1, 2, 3):
        mixer.add(pid)
    n = config.AUDIO_FRAME_SAMPLES
    t = np.arange(n) / config.AUDIO_RATE_HZ
    tones = {1: 400.0, 2: 1000.0}
    encoders = {pid: OpusEncoder() for pid in tones}
    result = None
    for k in range(10):
        for pid, f in tones.items():
            pcm = np.round(8000 * np.sin(2 * np.pi * f * (t + k * n / config.AUDIO_RATE_HZ)))
            mixer.push(pid, k, encoders[pid].encode(pcm.astype("<i2")), 20.0 * k)
        result = mixer.tick()
    assert result is not None and result.everyone is not None
    everyone = np.frombuffer(result.everyone, "<i2").astype(np.float64)
    spec = np.abs(np.fft.rfft(everyone * np.hanning(n)))
    for f in tones.values():  # both talkers are in the recording's mix
        assert spec[int(f * n / config.AUDIO_RATE_HZ)] > 100 * np.median(spec)
    for _ in range(10):  # the talkers stopped: the buffers run dry, then no one talks
        last = mixer.tick()
    assert last.everyone is None


# --- without PyAV ---------------------------------------------------------------------


def test_without_pyav_recording_is_refused_with_a_reason(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # "import av" raises ImportError
    assert "PyAV" in (recorder.recording_unavailable_reason() or "")
    with pytest.raises(RecordingError) as e:
        MeetingRecorder(tmp_path / "n.webm")
    assert e.value.code == Reason.UNAVAILABLE == "recording_unavailable"
    assert not list(tmp_path.iterdir())


def test_recorder_imports_without_pyav() -> None:
    code = (
        "import sys; sys.modules['av'] = None; import recorder; "
        "print(recorder.recording_unavailable_reason() is not None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_vp8_screen_frames_are_decoded_in_order_and_a_gap_waits_for_a_keyframe(
    tmp_path: Path, clock
) -> None:
    """Shared-screen VP8 (screen_frame.keyframe): decoded on the recorder thread; a lost
    inter frame (dropped from the queue) holds the last good picture until a keyframe."""
    import video_codec

    fps, size = 10, (640, 360)
    slide = np.full((360, 640, 3), 40, np.uint8)
    cv2.rectangle(slide, (100, 80), (540, 280), (0, 200, 255), -1)
    enc = video_codec.Vp8Encoder(640, 360, fps, 1_000_000, mode="screen")
    rec = MeetingRecorder(
        tmp_path / "vp8.webm", clock=clock, start_ms=0.0, video_size=size, fps=fps
    )
    assert rec.wants_keyframe  # nothing decoded yet: the server asks the presenter
    frames = []
    for n in range(5):
        out = enc.encode(slide if n < 3 else 255 - slide)
        if out is not None:
            frames.append(out)
    assert frames[0].keyframe
    for n, f in enumerate(frames[:2]):
        clock.now = 100 * n
        assert rec.add_video(f.data, 100 * n, keyframe=f.keyframe)
    assert rec.wait_drained(DRAIN_S)
    assert not rec.wants_keyframe
    with rec._cond:  # as if an inter frame had been dropped from a full queue
        rec._mark_vp8_gap()
    assert rec.wants_keyframe
    enc.force_keyframe()
    key = enc.encode(255 - slide)
    assert key is not None and key.keyframe
    clock.now = 500
    assert rec.add_video(key.data, 500, keyframe=True)
    assert rec.wait_drained(DRAIN_S)
    assert not rec.wants_keyframe
    clock.now = 1500
    result = rec.stop()
    enc.close()
    assert result.stats["pictures_decoded"] >= 2
    last = decode_video(result.path)[-1][1]
    assert psnr(last, 255 - slide) >= 25  # the keyframe's picture is what the file ends on


def test_camera_and_screen_sources_switch_cleanly_and_a_small_camera_fills_the_picture(
    tmp_path: Path, clock, no_warnings
) -> None:
    """Two cameras (320x180, the small layer) and a screen (640x360), each its own VP8
    stream: a new source's inter frames are never decoded on another stream's pictures
    (the last picture holds until its keyframe), and a 16:9 camera is scaled to fill the
    1280x720 picture, not garbled or boxed."""
    import video_codec

    fps = 5
    red, blue, green = (0, 0, 220), (220, 60, 0), (40, 200, 40)  # BGR

    def stream(width: int, height: int, colour, n: int, mode: str = "camera"):
        enc = video_codec.Vp8Encoder(width, height, 15, 300_000, mode=mode)
        img = np.full((height, width, 3), colour, np.uint8)
        out = [enc.encode(img) for _ in range(n)]
        enc.close()
        return [f for f in out if f is not None]

    cam1, cam2 = stream(320, 180, red, 4), stream(320, 180, blue, 4)
    screen = stream(640, 360, green, 3, mode="screen")
    assert cam2[0].keyframe and not any(f.keyframe for f in cam2[1:])
    rec = MeetingRecorder(tmp_path / "sources.webm", clock=clock, start_ms=0.0, fps=fps)
    one, two = recorder.camera_source(1), recorder.camera_source(2)
    assert rec.keyframe_wanted(one) and rec.wants_keyframe  # nothing decoded yet
    t = 0

    def feed(frames, source: str, skip_key: bool = False) -> None:
        nonlocal t
        for f in frames[1:] if skip_key else frames:
            clock.now = t
            assert rec.add_video(f.data, t, keyframe=f.keyframe, source=source)
            t += 100

    feed(cam1, one)  # 0-400 ms: red
    assert rec.wait_drained(DRAIN_S)
    assert not rec.keyframe_wanted(one) and rec.keyframe_wanted(two) and rec.wants_keyframe
    t = 1000
    feed(cam2, two, skip_key=True)  # 1.0-1.3 s: blue's inter frames only: red holds
    assert rec.wait_drained(DRAIN_S)
    assert rec.keyframe_wanted(two) and rec.keyframe_wanted(one)  # decoding one ended
    t = 2000
    feed(cam2, two)  # 2.0-2.3 s: blue from its keyframe
    t = 3000
    feed(screen, recorder.SCREEN_SOURCE)  # 3.0-3.2 s: the screen, green
    t = 4000
    feed(cam1[1:], one)  # back to camera 1 without a keyframe: green holds
    clock.now = 5000
    result = rec.stop()
    assert result.stats["vp8_source_switches"] == 3  # to 2, to the screen, back to 1
    frames = decode_video(result.path)

    def colour_at(sec: float) -> np.ndarray:
        _, img = min(frames, key=lambda tf: abs(tf[0] - sec))
        assert img.shape[:2] == (720, 1280)
        return img

    for sec, want in ((0.6, red), (1.6, red), (2.6, blue), (3.6, green), (4.6, green)):
        img = colour_at(sec)
        for y, x in ((10, 10), (360, 640), (710, 1270)):  # corners too: scaled to fill
            assert np.abs(img[y, x].astype(int) - want).max() < 40, (sec, (y, x), img[y, x])
