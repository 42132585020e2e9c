"""Simulcast: layers, subscriptions, keyframe throttle, loss, bandwidth guard, receive rule."""

from __future__ import annotations

import importlib.util
import random
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import config
import simulcast as sc
from tests.video_media import camera_frames, psnr
from video_routing import (
    BandwidthGuard,
    KeyframeThrottle,
    LossCounter,
    SubscriptionChanges,
    SubscriptionTable,
)

SMALL, LARGE = config.VIDEO_LAYER_SMALL, config.VIDEO_LAYER_LARGE
INTERVAL_S = config.KEYFRAME_REQUEST_MIN_INTERVAL_MS / 1000


# --- Subscriptions ------------------------------------------------------------------------


def test_forwards_exactly_the_subscribed_layers():
    t = SubscriptionTable()
    t.set(10, {1: SMALL, 2: LARGE, 3: None})
    t.set(11, {1: LARGE, 2: LARGE})
    t.set(12, {})
    assert t.forward_targets(1, SMALL) == {10}
    assert t.forward_targets(1, LARGE) == {11}
    assert t.forward_targets(2, LARGE) == {10, 11}
    assert t.forward_targets(2, SMALL) == set()
    assert t.forward_targets(3, SMALL) == set() and t.forward_targets(3, LARGE) == set()
    assert t.forward_targets(99, SMALL) == set()  # nobody subscribed: forward to nobody
    # Exhaustively: a viewer gets (sender, layer) iff that is its subscription.
    subs = {10: t.subscriptions(10), 11: t.subscriptions(11), 12: t.subscriptions(12)}
    for sender in (1, 2, 3, 10, 11, 12):
        for layer in (SMALL, LARGE):
            want = {v for v, s in subs.items() if s.get(sender) == layer}
            assert t.forward_targets(sender, layer) == want


def test_new_subscriptions_ask_for_keyframes_and_large_wanted_follows():
    t = SubscriptionTable()
    ch = t.set(10, {1: SMALL, 2: SMALL})
    assert ch.keyframe_requests == {(1, SMALL), (2, SMALL)}
    assert ch.large_wanted == {}
    assert not t.large_wanted(1)
    # 1 moves to the stage: its large layer is new for this viewer, and now wanted.
    ch = t.set(10, {1: LARGE, 2: SMALL})
    assert ch.keyframe_requests == {(1, LARGE)}
    assert ch.large_wanted == {1: True}
    assert t.forward_targets(1, SMALL) == set()
    # Same list again: nothing new, nothing asked.
    assert t.set(10, {1: LARGE, 2: SMALL}) == SubscriptionChanges()
    # A second viewer of 1 large: no change of large_wanted.
    ch = t.set(11, {1: LARGE})
    assert ch.keyframe_requests == {(1, LARGE)} and ch.large_wanted == {}
    t.set(10, {2: SMALL})
    assert t.large_wanted(1)  # 11 still watches it large
    ch = t.set(11, {})
    assert ch.large_wanted == {1: False} and not t.large_wanted(1)
    assert ch.keyframe_requests == frozenset()


def test_subscription_limits_and_bad_input_change_nothing():
    t = SubscriptionTable(max_tiles=3, max_large=1)
    t.set(10, {1: SMALL})
    bad = [
        {1: "medium"},
        {10: SMALL},  # itself
        {1: SMALL, 2: SMALL, 3: SMALL, 4: SMALL},
        {1: LARGE, 2: LARGE},
    ]
    for subs in bad:
        with pytest.raises(ValueError):
            t.set(10, subs)
        assert t.subscriptions(10) == {1: SMALL}
    # None entries do not count against the tile cap.
    t.set(10, {1: SMALL, 2: SMALL, 3: LARGE, 4: None, 5: None})
    assert config.SUBSCRIBE_MAX_TILES == config.GUI_MAX_VIDEO_TILES == 25


def test_participant_leaving_is_forgotten_both_ways():
    t = SubscriptionTable()
    t.set(10, {1: LARGE, 2: SMALL})
    t.set(1, {10: SMALL, 2: LARGE})
    ch = t.remove_participant(1)
    assert ch.large_wanted == {2: False}
    assert t.forward_targets(1, LARGE) == set()
    assert t.forward_targets(10, SMALL) == set()
    assert t.subscriptions(10) == {2: SMALL}
    assert t.subscriptions(1) == {}


# --- Keyframe request throttle --------------------------------------------------------------


def test_keyframe_requests_are_throttled_and_coalesced():
    th = KeyframeThrottle(INTERVAL_S)
    key = (1, SMALL)
    assert th.request(key, 10.0)
    # Twenty viewers lose the same burst within 100 ms: one request went out.
    assert not any(th.request(key, 10.0 + i * 0.005) for i in range(20))
    assert th.request((1, LARGE), 10.05)  # another layer has its own budget
    assert th.request((2, SMALL), 10.05)  # and another sender
    assert th.due(10.0 + INTERVAL_S * 0.6) == []  # still inside the interval
    assert th.due(10.0 + INTERVAL_S + 1e-9) == [key]  # the coalesced ones: exactly once
    assert th.due(11.0) == []
    assert th.sent == 4
    # Over a long loss storm: at most one per interval.
    th2 = KeyframeThrottle(INTERVAL_S)
    t, sent = 0.0, 0
    while t < 3.0:
        sent += th2.request(key, t)
        sent += len(th2.due(t))
        t += 0.01
    assert sent <= int(3.0 / INTERVAL_S) + 1
    th2.forget_sender(1)
    assert th2.request(key, t)


# --- Loss counting ----------------------------------------------------------------------------


def test_loss_counter_gaps_reordering_duplicates_wrap():
    lc = LossCounter()
    for seq in [0, 1, 2, 5, 6]:
        lc.add(seq)
    assert lc.take() == (5, 2)
    lc.add(3)  # late: no longer lost
    lc.add(6)  # duplicate
    # A late packet after its gap was reported cannot be taken back from that report.
    assert lc.take() == (2, 0)
    lc2 = LossCounter()
    for seq in [(1 << 32) - 2, (1 << 32) - 1, 0, 2]:
        lc2.add(seq)
    assert lc2.take() == (4, 1)
    lc3 = LossCounter()
    for seq in [10, 11, 13, 12, 14]:
        lc3.add(seq)
    assert lc3.take() == (5, 0)


# --- Bandwidth guard --------------------------------------------------------------------------


def run_guard(guard, key, loss_fraction, start, seconds, viewers=3, pps=100):
    """Every viewer reports each second; the guard ticks every second. Returns changes."""
    changes = []
    for s in range(seconds):
        now = start + s
        for _ in range(viewers):
            lost = round(pps * loss_fraction)
            guard.report(key, pps - lost, lost, now)
        ch = guard.tick(now)
        if key in ch:
            changes.append((now, ch[key]))
    return changes


def test_bandwidth_guard_lowers_on_loss_and_recovers_slowly():
    ceiling = config.VIDEO_LARGE_LAYER_720P.bitrate_bps
    guard = BandwidthGuard({SMALL: 150_000, LARGE: ceiling})
    key = (7, LARGE)
    # Clean: stays at the ceiling.
    assert run_guard(guard, key, 0.0, 0, 5) == []
    # 10 % loss for 20 s: steps of x0.7, at most every 2 s, down to the floor.
    down = run_guard(guard, key, 0.10, 5, 20)
    rates = [r for _, r in down]
    assert rates[0] == int(ceiling * 0.7)
    assert all(b < a for a, b in pairwise(rates))
    assert rates[-1] == int(ceiling * config.BW_FLOOR_FRACTION)
    times = [t for t, _ in down]
    assert all(b - a >= config.BW_DECREASE_INTERVAL_S for a, b in pairwise(times))
    # Loss stops: up again by x1.1 every few seconds, never above the ceiling.
    up = run_guard(guard, key, 0.0, 25, 90)
    assert up, "no recovery"
    assert up[0][0] - 25 >= config.BW_INCREASE_INTERVAL_S - 1
    ups = [r for _, r in up]
    assert all(b > a for a, b in pairwise(ups))
    assert ups[-1] == ceiling
    up_times = [t for t, _ in up]
    assert all(b - a >= config.BW_INCREASE_INTERVAL_S for a, b in pairwise(up_times))


def test_bandwidth_guard_ignores_small_samples_and_one_lossy_viewer():
    guard = BandwidthGuard()
    key = (3, SMALL)
    for s in range(10):  # 1 lost of 5 packets: 20 %, but too few packets to judge
        guard.report(key, 4, 1, s)
        assert guard.tick(s) == {}
    guard2 = BandwidthGuard()
    for s in range(10):  # one viewer of 24 loses 10 %: the aggregate is 0.4 %
        for v in range(24):
            guard2.report(key, 90 if v == 0 else 100, 10 if v == 0 else 0, s)
        assert guard2.tick(s) == {}
    assert guard2.bitrate(key) == config.VIDEO_SMALL_LAYER.bitrate_bps
    with pytest.raises(ValueError):
        guard2.report(key, -1, 0, 0)
    guard2.forget_sender(3)
    assert list(guard2.streams()) == []


# --- Simulcast encoder ---------------------------------------------------------------------------

needs_av = pytest.mark.skipif(
    importlib.util.find_spec("av") is None, reason="PyAV is not installed (requirements.txt)"
)


@needs_av
def test_simulcast_small_always_large_on_request():
    enc = sc.SimulcastEncoder(fps=15)
    frames = camera_frames(640, 360, 12)
    out = enc.encode(frames[0])
    assert [(f.layer, f.frame_id, f.frame.keyframe) for f in out] == [(SMALL, 0, True)]
    assert (out[0].frame.width, out[0].frame.height) == (320, 180)
    enc.set_large_wanted(True)
    out = enc.encode(frames[1])
    assert [(f.layer, f.frame_id, f.frame.keyframe) for f in out] == [
        (SMALL, 1, False),
        (LARGE, 0, True),
    ]
    assert (out[1].frame.width, out[1].frame.height) == (640, 360)
    # Per-layer keyframe requests.
    enc.force_keyframe(LARGE)
    out = enc.encode(frames[2])
    assert [f.frame.keyframe for f in out] == [False, True]
    enc.force_keyframe(SMALL)
    out = enc.encode(frames[3])
    assert [f.frame.keyframe for f in out] == [True, False]
    # Large off: only small; back on: starts with a keyframe, its numbering goes on.
    enc.set_large_wanted(False)
    assert [f.layer for f in enc.encode(frames[4])] == [SMALL]
    enc.set_large_wanted(True)
    out = enc.encode(frames[5])
    assert [(f.layer, f.frame_id, f.frame.keyframe) for f in out] == [
        (SMALL, 5, False),
        (LARGE, 3, True),
    ]
    enc.close()


@needs_av
def test_simulcast_large_is_720p_when_the_source_gives_it():
    assert sc.large_layer_for(1280, 720) == config.VIDEO_LARGE_LAYER_720P
    assert sc.large_layer_for(1920, 1080) == config.VIDEO_LARGE_LAYER_720P
    assert sc.large_layer_for(640, 480) == config.VIDEO_LARGE_LAYER_360P
    enc = sc.SimulcastEncoder(fps=15)
    enc.set_large_wanted(True)
    out = enc.encode(camera_frames(1280, 720, 1)[0])
    assert [(f.frame.width, f.frame.height) for f in out] == [(320, 180), (1280, 720)]
    # A 4:3 source is centre-cropped, never stretched.
    out = enc.encode(np.zeros((480, 640, 3), np.uint8))
    assert [(f.frame.width, f.frame.height) for f in out] == [(320, 180), (640, 360)]


@needs_av
def test_simulcast_bitrate_is_clamped_to_the_layer():
    enc = sc.SimulcastEncoder(fps=15)
    enc.set_bitrate(SMALL, 10_000_000)
    assert enc.bitrate(SMALL) == config.VIDEO_SMALL_LAYER.bitrate_bps
    enc.set_bitrate(SMALL, 60_000)
    assert enc.bitrate(SMALL) == 60_000
    assert enc.encode(camera_frames(320, 180, 1)[0])[0].frame.keyframe


# --- Receive rule: a frame with a missing fragment is never decoded ----------------------------


def fragments(frame_id, keyframe, data, size=300):
    parts = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return [(frame_id, i, len(parts), keyframe, p) for i, p in enumerate(parts)]


def test_assembler_state_machine():
    asm = sc.LayerAssembler(timeout_s=0.2, retry_s=INTERVAL_S)
    # Waiting at start: an inter frame is dropped and a keyframe asked for.
    r = asm.add(0, 0, 1, False, b"p0", now=0.0)
    assert r.frame is None and r.request_keyframe and asm.waiting_for_keyframe
    r = asm.add(1, 0, 1, True, b"k1", now=0.01)
    assert r.frame == sc.AssembledFrame(1, True, b"k1") and not asm.waiting_for_keyframe
    r = asm.add(2, 1, 2, False, b"b", now=0.02)
    assert r.frame is None
    r = asm.add(2, 0, 2, False, b"a", now=0.03)
    assert r.frame == sc.AssembledFrame(2, False, b"ab")
    # Frame 3 loses a fragment; frame 4 arrives whole: 4 must not be decoded.
    asm.add(3, 0, 2, False, b"x", now=0.04)
    r = asm.add(4, 0, 1, False, b"p4", now=0.1)
    assert r.frame is None and r.request_keyframe and asm.waiting_for_keyframe
    # More inter frames: still nothing, and no new request within the interval.
    r = asm.add(5, 0, 1, False, b"p5", now=0.15)
    assert r.frame is None and not r.request_keyframe
    # The late fragment of 3 changes nothing (it is behind).
    assert asm.add(3, 1, 2, False, b"y", now=0.16).frame is None
    # Still waiting after the interval: asked again (the first request may be lost).
    r = asm.add(6, 0, 1, False, b"p6", now=0.1 + INTERVAL_S)
    assert r.frame is None and r.request_keyframe
    r = asm.add(7, 0, 1, True, b"k7", now=0.5)
    assert r.frame == sc.AssembledFrame(7, True, b"k7") and not asm.waiting_for_keyframe
    # A frame whose fragments never all come: dropped by the timeout, keyframe asked.
    asm.add(8, 0, 3, False, b"a", now=1.0)
    assert asm.poll(1.1) is False
    assert asm.poll(1.25) is True and asm.waiting_for_keyframe
    # A gap in frame ids (a frame lost whole): the next is not decoded.
    asm.add(9, 0, 1, True, b"k9", now=2.0)
    r = asm.add(11, 0, 1, False, b"p11", now=2.1)
    assert r.frame is None and r.request_keyframe
    with pytest.raises(ValueError):
        asm.add(12, 3, 3, False, b"", now=2.2)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.booleans(), min_size=5, max_size=40),
    st.randoms(use_true_random=False),
    st.floats(0, 0.3),
)
def test_assembler_never_lets_through_an_undecodable_frame(keys, rnd, loss):
    """Whatever is lost or reordered, every frame out is a keyframe or the next in line."""
    asm = sc.LayerAssembler(timeout_s=0.2)
    datagrams = []
    for fid, key in enumerate(keys):
        data = bytes([fid % 256]) * rnd.randint(1, 1500)
        datagrams += [(fid * 0.066, f) for f in fragments(fid, key or fid == 0, data)]
    datagrams = [d for d in datagrams if rnd.random() >= loss]
    # Reorder a little: swap some neighbours.
    for i in range(len(datagrams) - 1):
        if rnd.random() < 0.1:
            datagrams[i], datagrams[i + 1] = datagrams[i + 1], datagrams[i]
    last = None
    sent = {fid: bytes([fid % 256]) for fid in range(len(keys))}
    for t, (fid, idx, count, key, data) in datagrams:
        frame = asm.add(fid, idx, count, key, data, now=t).frame
        if frame is None:
            continue
        assert frame.keyframe or (last is not None and frame.frame_id == last + 1)
        assert set(frame.data) == set(sent[frame.frame_id])  # whole, from one frame only
        last = frame.frame_id


@needs_av
def test_receiver_keeps_last_good_picture_and_recovers_on_keyframe():
    frames = camera_frames(320, 180, 30)
    enc = sc.SimulcastEncoder(fps=15)
    rx = sc.LayerReceiver()
    requests: list[int] = []  # frame index at which the receiver asked
    shown = []  # (frame index, id of the picture shown, its PSNR against that frame)
    lose = {(8, 0)}  # frame 8 loses its first fragment
    for i, img in enumerate(frames):
        now = i / 15
        if requests and requests[-1] == i - 2:  # the request reaches the sender 2 frames on
            enc.force_keyframe(SMALL)
        (lf,) = enc.encode(img)
        for fid, idx, count, key, data in fragments(lf.frame_id, lf.frame.keyframe, lf.frame.data):
            if (fid, idx) in lose:
                continue
            if rx.add(fid, idx, count, key, data, now):
                requests.append(i)
        if rx.picture is not None:
            fid = rx.picture_frame_id
            shown.append((i, fid, psnr(frames[fid], rx.picture)))
    assert [fid for i, fid, _ in shown[:8]] == list(range(8))
    # From frame 8 on the tile stays on frame 7 (the last good one) until the keyframe.
    frozen = [i for i, fid, _ in shown if fid == 7 and i > 7]
    assert frozen == [8, 9, 10]
    assert requests == [9]  # one request, on the first whole frame after the loss
    recovered = min(i for i, fid, _ in shown if fid > 8)
    assert recovered == 11 and shown[recovered][1] == 11
    assert (recovered - 8) / 15 <= 0.3  # frozen <= 300 ms
    # Never garbled: every picture shown is a clean decode of the frame it claims to be.
    assert all(p > 28 for _, _, p in shown)
    assert rx.frozen_since is None


@needs_av
def test_receiver_random_loss_never_shows_a_broken_picture():
    rnd = random.Random(5)
    frames = camera_frames(320, 180, 60)
    enc = sc.SimulcastEncoder(fps=15)
    clean = {}
    rx = sc.LayerReceiver()
    pending_request = None
    for i, img in enumerate(frames):
        now = i / 15
        if pending_request is not None and now - pending_request >= 0.1:
            enc.force_keyframe(SMALL)
            pending_request = None
        (lf,) = enc.encode(img)
        clean[lf.frame_id] = img
        for fid, idx, count, key, data in fragments(
            lf.frame_id, lf.frame.keyframe, lf.frame.data, 1000
        ):
            if rnd.random() < 0.05:
                continue
            if rx.add(fid, idx, count, key, data, now) and pending_request is None:
                pending_request = now
        if rx.picture is not None:
            # The picture is a clean decode of the frame it says it is.
            assert psnr(clean[rx.picture_frame_id], rx.picture) > 25
    assert rx.assembler.keyframe_requests >= 1
    assert rx.decoder.frames_decoded > 20
