"""The server's video routing (PROTOCOL.md 10) against raw sockets: subscriptions, keyframe
requests and their throttle, the bandwidth guard, and the checks on each new message."""

from __future__ import annotations

import itertools
import time

import pytest

import config
import utils
from tests.helpers import wait_for
from tests.test_server_protocol import Raw, Udp, join, subscribe, vfrag
from utils import Err, Msg


def vdg(sender: int, seq: int, layer: str, frame_id: int = 1, data: bytes = b"vp8") -> bytes:
    return utils.pack_media(utils.KIND_VIDEO, sender, seq, 0, vfrag(frame_id, data, layer))


def no_datagram(u: Udp, timeout: float = 0.3) -> bool:
    """True if nothing but levels arrives within ``timeout`` (never a video datagram)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            dg = utils.Datagram.parse(u.recv(timeout=left))
        except TimeoutError:
            return True
        if dg.kind == utils.KIND_VIDEO:
            return False
    return True


def control(c: Raw, kinds: set[str], timeout: float) -> list[dict]:
    """Every frame of ``kinds`` that arrives within ``timeout`` seconds."""
    got = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        c.sock.settimeout(left)
        try:
            frame = c.read()
        except TimeoutError:
            break
        if frame.type in kinds:
            got.append(frame.header)
    c.sock.settimeout(5.0)
    return got


def test_server_forwards_exactly_the_subscribed_layers(server):
    (a, wa), (b, wb), (c, wc), (d, wd) = (join(server.tcp_port, n) for n in "ABCD")
    ua, ub, uc, ud = (Udp(server.udp_port, w) for w in (wa, wb, wc, wd))
    aid = wa["you"]["id"]
    subscribe(b, {aid: "small"})
    subscribe(c, {aid: "large"})
    # D subscribes to nothing at all.
    ua.send(vdg(aid, 0, "small", data=b"small"))
    ua.send(vdg(aid, 0, "large", data=b"large"))
    assert utils.Datagram.parse(ub.recv()).payload.endswith(b"small")
    assert utils.Datagram.parse(uc.recv()).payload.endswith(b"large")
    assert no_datagram(ub) and no_datagram(uc) and no_datagram(ud) and no_datagram(ua)
    # Switching B to large and C to nothing moves the streams at once.
    subscribe(b, {aid: "large"})
    subscribe(c, {})
    before = server.snapshot_stats().get("video_unsubscribed", 0)
    ua.send(vdg(aid, 1, "small", 2, b"small2"))
    ua.send(vdg(aid, 1, "large", 2, b"large2"))
    assert utils.Datagram.parse(ub.recv()).payload.endswith(b"large2")
    assert no_datagram(ub) and no_datagram(uc) and no_datagram(ud)
    wait_for(lambda: server.snapshot_stats().get("video_unsubscribed", 0) == before + 1)


def test_subscription_tells_the_sender_large_wanted_and_asks_keyframes(server):
    (a, wa), (b, _) = join(server.tcp_port, "A"), join(server.tcp_port, "B")
    aid = wa["you"]["id"]
    subscribe(b, {aid: "large"})
    got = control(a, {Msg.VIDEO_LAYERS, Msg.KEYFRAME_REQUEST}, 0.5)
    assert {"type": Msg.VIDEO_LAYERS, "large": True} in got
    assert {"type": Msg.KEYFRAME_REQUEST, "layer": "large"} in got
    subscribe(b, {aid: "small"})
    got = control(a, {Msg.VIDEO_LAYERS, Msg.KEYFRAME_REQUEST}, 0.5)
    assert {"type": Msg.VIDEO_LAYERS, "large": False} in got
    assert {"type": Msg.KEYFRAME_REQUEST, "layer": "small"} in got
    # B leaving while it watched A large is not needed to stop it: already small; but a
    # large viewer who leaves turns A's large layer off.
    subscribe(b, {aid: "large"})
    control(a, {Msg.VIDEO_LAYERS}, 0.3)
    b.send({"type": Msg.BYE})
    got = control(a, {Msg.VIDEO_LAYERS}, 1.0)
    assert {"type": Msg.VIDEO_LAYERS, "large": False} in got


def test_keyframe_requests_are_throttled_and_coalesced(server):
    (a, wa), (b, wb), (c, wc) = (join(server.tcp_port, n) for n in "ABC")
    aid = wa["you"]["id"]
    subscribe(b, {aid: "small"})
    subscribe(c, {aid: "small"})
    control(a, {Msg.KEYFRAME_REQUEST}, 0.5)  # the subscriptions' own requests
    interval = config.KEYFRAME_REQUEST_MIN_INTERVAL_MS / 1000
    t0 = time.monotonic()
    for _ in range(20):  # a loss burst seen by two viewers
        for v in (b, c):
            v.send({"type": Msg.KEYFRAME_REQUEST, "sender": aid, "layer": "small"})
    got_at = []
    deadline = t0 + 3 * interval + 0.2
    while (left := deadline - time.monotonic()) > 0:
        a.sock.settimeout(left)
        try:
            frame = a.read()
        except TimeoutError:
            break
        if frame.type == Msg.KEYFRAME_REQUEST:
            got_at.append(time.monotonic() - t0)
    # At most one per interval: the burst costs the sender one or two keyframes, and
    # the coalesced one still comes (nobody who asked is forgotten).
    assert 1 <= len(got_at) <= 2, got_at
    assert all(b - a >= interval * 0.9 for a, b in itertools.pairwise(got_at))


def test_keyframe_request_ignored_unless_subscribed(server):
    (a, wa), (b, _) = join(server.tcp_port, "A"), join(server.tcp_port, "B")
    b.send({"type": Msg.KEYFRAME_REQUEST, "sender": wa["you"]["id"], "layer": "small"})
    b.ping_roundtrip()
    assert control(a, {Msg.KEYFRAME_REQUEST}, 0.5) == []


@pytest.mark.parametrize(
    "streams, why",
    [
        ([{"sender": 99, "layer": "huge"}], "unknown layer"),
        ([{"sender": "1", "layer": "small"}], "must be int"),
        ([{"sender": 1, "layer": "small"}, {"sender": 1, "layer": "large"}], "twice"),
        ([{"sender": 1000 + i, "layer": "small"} for i in range(26)], "at most 25"),
        ("all", "must be a list"),
    ],
)
def test_bad_subscribe_is_refused_and_the_old_one_stays(server, streams, why):
    (_a, wa), (b, wb) = join(server.tcp_port, "A"), join(server.tcp_port, "B")
    ua, ub = Udp(server.udp_port, wa), Udp(server.udp_port, wb)
    aid = wa["you"]["id"]
    subscribe(b, {aid: "small"})
    b.send({"type": Msg.SUBSCRIBE, "streams": streams})
    h = b.expect_error(Err.BAD_MESSAGE)
    assert h["re"] == Msg.SUBSCRIBE and why in h["message"]
    ua.send(vdg(aid, 0, "small"))
    assert utils.Datagram.parse(ub.recv()).kind == utils.KIND_VIDEO


def test_subscribe_to_self_and_too_many_large_refused_unknown_ids_ignored(server):
    conns = [join(server.tcp_port, n) for n in "ABCDEF"]
    (a, wa) = conns[0]
    ids = [w["you"]["id"] for _, w in conns]
    a.send({"type": Msg.SUBSCRIBE, "streams": [{"sender": ids[0], "layer": "small"}]})
    assert "itself" in a.expect_error(Err.BAD_MESSAGE)["message"]
    five = [{"sender": i, "layer": "large"} for i in ids[1:]]
    a.send({"type": Msg.SUBSCRIBE, "streams": five})
    assert "large layers; at most 4" in a.expect_error(Err.BAD_MESSAGE)["message"]
    subscribe(a, {ids[1]: "small", 4242: "large"})  # 4242 is nobody: ignored, no error


def test_report_feeds_the_bandwidth_guard_which_lowers_the_bitrate(server):
    (a, wa), (b, _) = join(server.tcp_port, "A"), join(server.tcp_port, "B")
    aid = wa["you"]["id"]
    a.send({"type": Msg.MEDIA, "audio": False, "video": True, "layers": [
        {"layer": "small", "width": 320, "height": 180, "bps": 150000},
        {"layer": "large", "width": 640, "height": 360, "bps": 650000},
    ]})  # fmt: skip
    updated = b.expect(Msg.PARTICIPANT_UPDATED).header["participant"]
    assert updated["layers"][1] == {"layer": "large", "width": 640, "height": 360, "bps": 650000}
    subscribe(b, {aid: "small"})
    lossy = {"sender": aid, "layer": "small", "received": 90, "lost": 10}
    b.send({"type": Msg.REPORT, "streams": [lossy | {"frames": 15, "bytes": 20000}]})
    got = control(a, {Msg.BITRATE}, config.BW_TICK_INTERVAL_S + 0.5)
    assert got == [{"type": Msg.BITRATE, "layer": "small", "bps": int(150000 * 0.7)}]
    # A report on a stream B does not receive changes nothing.
    b.send({"type": Msg.REPORT, "streams": [lossy | {"layer": "large"}]})
    b.send({"type": Msg.REPORT, "streams": [lossy | {"lost": -1}]})
    assert "negative" in b.expect_error(Err.BAD_MESSAGE)["message"]


@pytest.mark.parametrize(
    "layers, why",
    [
        ([{"layer": "small", "width": 321, "height": 180, "bps": 150000}], "even"),
        ([{"layer": "small", "width": 320, "height": 8, "bps": 150000}], "16-4096"),
        ([{"layer": "small", "width": 320, "height": 180, "bps": 10**9}], "bps"),
        ([{"layer": "big", "width": 320, "height": 180, "bps": 150000}], "small/large"),
    ],
)
def test_bad_media_layers_refused(server, layers, why):
    a, _ = join(server.tcp_port, "A")
    a.send({"type": Msg.MEDIA, "audio": False, "video": True, "layers": layers})
    h = a.expect_error(Err.BAD_MESSAGE)
    assert h["re"] == Msg.MEDIA and why in h["message"]
