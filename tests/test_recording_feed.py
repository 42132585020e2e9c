"""recording_feed.py: whom a recording shows when nobody presents (issue 14), and the feed
that follows that speaker over pure session state with a fake recorder.

Pure: levels and times are given, no clock is read.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import config
import recorder
import utils
from recording_feed import RecordingFeeds, SpeakerChoice
from sessions import SessionTable
from tests.test_sessions import CFG, join

ROOT = Path(__file__).resolve().parent.parent
LOUD = 200  # a level (0-255) well above RECORDING_SPEAKING_LEVEL
QUIET = config.RECORDING_SPEAKING_LEVEL - 1
HOLD = config.RECORDING_SPEAKER_HOLD_S
STEP = config.LEVELS_INTERVAL_S


def run(choice: SpeakerChoice, cameras, levels, start: float, seconds: float) -> list:
    """Feed the same levels every levels interval for ``seconds``; whom it showed each time."""
    shown = []
    n = round(seconds / STEP)
    for i in range(n):
        shown.append(choice.update(cameras, levels, start + i * STEP))
    return shown


def test_before_anyone_talks_the_first_camera_then_the_first_talker_at_once() -> None:
    choice = SpeakerChoice()
    assert choice.update([], {}, 0.0) is None
    assert choice.update([3, 1, 2], {}, 0.2) == 3  # cameras come hosts first
    assert choice.update([3, 1, 2], {1: QUIET, 2: QUIET}, 0.4) == 3  # below speaking level
    assert choice.update([3, 1, 2], {2: LOUD, 4: 255}, 0.6) == 2  # 4 has no camera


def test_another_talker_takes_the_picture_only_after_the_hold_time() -> None:
    choice = SpeakerChoice()
    cams = [1, 2]
    assert run(choice, cams, {1: LOUD}, 0.0, 1.0) == [1] * 5
    shown = run(choice, cams, {1: 30, 2: LOUD}, 1.0, HOLD + 1.0)
    switched_at = shown.index(2)
    assert all(s == 1 for s in shown[:switched_at])
    assert all(s == 2 for s in shown[switched_at:])
    assert abs(switched_at * STEP - HOLD) <= STEP + 1e-9


def test_short_interjections_and_pauses() -> None:
    choice = SpeakerChoice()
    cams = [1, 2]
    run(choice, cams, {1: LOUD}, 0.0, 1.0)
    t = 1.0
    # 2 interjects for less than the hold time, again and again: 1 stays.
    for _ in range(5):
        assert set(run(choice, cams, {2: LOUD}, t, HOLD / 2)) == {1}
        t += HOLD / 2
        assert set(run(choice, cams, {1: LOUD}, t, STEP)) == {1}  # 1 answers: run broken
        t += STEP
    # 2 talks with pauses shorter than the hold time: its run goes on, and it takes over.
    shown = []
    while t < 40 and 2 not in shown:
        shown += run(choice, cams, {2: LOUD}, t, 0.6)
        t += 0.6
        shown += run(choice, cams, {}, t, 0.4)
        t += 0.4
    assert 2 in shown and t < 1.0 + 5 * (HOLD / 2 + STEP) + 2 * HOLD + 2
    # A pause longer than the hold time ends a challenger's run: it starts again.
    choice2 = SpeakerChoice()
    run(choice2, cams, {1: LOUD}, 0.0, 0.4)
    run(choice2, cams, {2: LOUD}, 0.4, HOLD - 2 * STEP)
    run(choice2, cams, {}, 0.4 + HOLD - 2 * STEP, HOLD + STEP)
    assert choice2.update(cams, {2: LOUD}, 0.4 + 2 * HOLD + 2 * STEP) == 1


def test_a_camera_turned_off_hands_the_picture_on() -> None:
    choice = SpeakerChoice()
    run(choice, [1, 2, 3], {2: LOUD}, 0.0, 1.0)
    assert choice.current == 2
    assert choice.update([1, 3], {}, 1.0) == 1  # 2's camera went off: the default
    assert choice.update([1, 3], {3: LOUD}, 1.2) == 3  # nobody chosen by voice: at once
    assert choice.update([], {3: LOUD}, 1.4) is None


class FakeRecorder:
    """What RecordingFeed needs of a recorder.MeetingRecorder: it keeps what was queued."""

    def __init__(self) -> None:
        self.pictures: list[tuple] = []

    def add_video(self, picture, time_ms=None, keyframe=None, source=recorder.SCREEN_SOURCE):
        self.pictures.append((picture, keyframe, source if keyframe is not None else None))
        return True

    def keyframe_wanted(self, source: str) -> bool:
        return False


def asked(sends) -> list[tuple[list[int], str]]:
    return [([m.id for m in to], h["layer"]) for to, h in sends if h["type"] == "keyframe_request"]


def test_the_feed_follows_the_speaker_yields_to_a_presenter_and_goes_black() -> None:
    table = SessionTable(CFG)
    alice, _ = join(table, "Alice")  # the host
    bob, _ = join(table, "Bob")
    sess = alice.session
    for p in (alice, bob):
        table.set_media(p, True, True)
    feeds, rec = RecordingFeeds(), FakeRecorder()
    small, large = utils.LAYER_NUMBERS["small"], utils.LAYER_NUMBERS["large"]
    assert feeds.on_levels_locked(table, sess, {}, 0.0) == []  # not recording
    sess.recorder = rec
    assert asked(feeds.on_levels_locked(table, sess, {}, 1.0)) == [([alice.id], "small")]
    assert feeds.route_locked(bob, small) is None and feeds.route_locked(alice, large) is None
    feed = feeds.route_locked(alice, small)
    assert feed is not None
    frame = b"\x10\x00\x00\x9d\x01\x2a" + bytes(3000)  # a (fake) keyframe, three fragments
    for payload in utils.split_vp8_frame("small", 7, True, frame):
        feed.add(utils.VideoFragment.parse(payload), 1.1)
    assert rec.pictures == [(frame, True, recorder.camera_source(alice.id))]

    assert asked(feeds.on_levels_locked(table, sess, {bob.id: LOUD}, 2.0)) == [([bob.id], "small")]
    assert feeds.route_locked(bob, small) is feed and feeds.route_locked(alice, small) is None
    table.present_start(alice)  # a shared screen takes the picture: no camera is fed
    assert feeds.on_levels_locked(table, sess, {bob.id: LOUD}, 3.0) == []
    assert feeds.route_locked(bob, small) is None
    table.present_stop(alice)  # the speaker's camera comes back, from a keyframe
    assert asked(feeds.on_levels_locked(table, sess, {}, 4.0)) == [([bob.id], "small")]
    for p in (alice, bob):
        table.set_media(p, True, False)
    assert feeds.on_levels_locked(table, sess, {}, 5.0) == []
    black, key, _ = rec.pictures[-1]
    assert key is None and isinstance(black, np.ndarray) and not black.any()
    sess.recorder = None  # stopped
    assert feeds.on_levels_locked(table, sess, {}, 6.0) == []
    assert feeds.route_locked(bob, small) is None


def test_the_server_imports_no_codec_or_opencv_for_the_feed() -> None:
    """The packaged server leaves OpenCV and PyAV out: the feed loads them only to record."""
    code = (
        "import sys, server; "
        "print(sorted(m for m in ('cv2', 'av', 'simulcast', 'video_codec') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
