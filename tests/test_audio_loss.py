"""Receiver-driven expected loss: encoders plan FEC for the loss receivers report.

The pure figures (``audio_loss``), the mixer's decisions from reports (what a talker
is told, the mix encoders' setting, forwarding stopped on a lossy path), and the
whole loop through a real server: a talker on a clean network is told 0 %.
"""

from __future__ import annotations

from itertools import pairwise

import pytest

import audio_repeat
import config
from audio_loss import LossMeter, combined, expected_loss_percent
from tests.test_audio_forward import Call


def test_combined_loss_of_two_legs():
    assert combined(0.0, 0.0) == 0.0
    assert combined(0.02, 0.02) == pytest.approx(0.0396)
    assert combined(0.1) == pytest.approx(0.1)


def test_expected_loss_is_none_on_a_clean_network_and_capped():
    assert expected_loss_percent(0.0) == 0
    assert expected_loss_percent(config.AUDIO_LOSS_FEC_MIN_FRACTION / 2) == 0
    assert expected_loss_percent(0.021) == 3
    assert expected_loss_percent(0.9) == config.AUDIO_LOSS_MAX_PERCENT


def test_loss_meter_waits_for_enough_frames_then_smooths():
    m = LossMeter()
    m.add(10, 0)
    assert not m.known
    m.add(config.AUDIO_LOSS_MIN_FRAMES, 10)
    assert m.known and m.fraction == pytest.approx(10 / (10 + config.AUDIO_LOSS_MIN_FRAMES + 10))
    before = m.fraction
    m.add(100, 0)
    assert m.fraction == pytest.approx(before * (1 - config.AUDIO_LOSS_SMOOTHING))
    m.add(-5, -5)  # nonsense counts change nothing
    assert m.fraction == pytest.approx(before * (1 - config.AUDIO_LOSS_SMOOTHING))


def talking(call: Call, frames: int = 40) -> None:
    for _ in range(frames):
        call.step({1})


def test_a_talker_on_a_clean_network_is_told_to_plan_no_fec():
    call = Call([1, 2, 3], known_clean=False)
    talking(call)
    tell = call.m.report_loss(2, 50, 0)
    assert tell == {1: 0}  # the talker; the silent ones' streams are not yet known
    assert call.m.report_loss(3, 50, 0) == {}  # unchanged: nothing more to tell


def test_a_forwarded_talker_is_told_the_loss_of_both_legs():
    call = Call([1, 2, 3])
    talking(call)
    call.m._senders[1].up.fraction = 0.002  # its own leg
    for _ in range(4):
        call.m.report_loss(2, 999, 1)  # 0.1 % on 2's leg (of both: 0.3 %)
    assert call.m._forwarded_to(2, 1)  # below MIXER_FORWARD_MAX_LOSS_FRACTION
    assert call.m._path_loss(1, 2) > call.m._senders[1].up.fraction


def test_a_listener_losing_2_percent_is_repeated_and_still_forwarded_to():
    call = Call([1, 2, 3])
    talking(call)
    told = [call.m.report_loss(2, 98, 2).get(1) for _ in range(4)]  # 2 % on 2's leg
    assert call.m._senders[2].repeat.on  # the server repeats 2's stream...
    assert call.m._forwarded_to(2, 1) and call.m._forwarded_to(3, 1)  # ...forwarded still
    # The talker's own leg lost nothing and repeats leave 0.08 % of 2's: no FEC, no repeats.
    assert all(t in (None, 0) for t in told) and not call.m._senders[1].repeats
    n = len(call.sent[2])
    talking(call, 10)
    seqs = [s for s, _, how in call.sent[2][n:] if how == "forward"]
    assert len(set(seqs)) == 10 and len(seqs) >= 19  # each packet, then again


def test_a_lossy_listener_gets_the_mix_repeated_and_its_encoder_plans_fec():
    call = Call([1, 2, 3])
    talking(call)
    for _ in range(4):
        call.m.report_loss(2, 75, 25)  # 25 % on 2's leg: too much to forward
    for _ in range(config.MIXER_ROUTE_PAUSE_FRAMES + 1):
        call.step(set())  # the route changes in the talker's next pause
    assert not call.m._forwarded_to(2, 1) and call.m._forwarded_to(3, 1)
    n = len(call.sent[2])
    talking(call, 10)
    assert call.sent[2][n:] and all(how == "mix" for _, _, how in call.sent[2][n:])
    firsts = list(dict.fromkeys(s for s, _, _ in call.sent[2]))  # repeats aside
    assert all(b > a for a, b in pairwise(firsts))
    call.m.report_loss(2, 75, 25)
    enc = next(e for k, e in call.m._encoders.items() if call.m._last.get(2) == k)
    from audio_codec import load_opus

    api = load_opus().api
    # 2 repeats its packets (audio_repeat.py): FEC plans for what both copies lose.
    down = call.m._senders[2].down.fraction
    assert call.m._senders[2].repeat.on and down >= 0.10
    want = audio_repeat.encoder_percent(down, True)
    assert want > 0 and api.encoder.encoder_ctl(enc._state, api.ctl.get_packet_loss_perc) == want


def test_unknown_listener_reports_nothing():
    call = Call([1, 2])
    assert call.m.report_loss(99, 10, 1) == {}


def test_a_report_s_audio_counts_are_checked_and_answered_with_audio_loss(server):
    from tests.test_video_server import control, join
    from utils import Err, Msg

    (a, _), (b, _) = join(server.tcp_port, "A"), join(server.tcp_port, "B")
    b.send({"type": Msg.REPORT, "streams": [], "audio": {"received": 10, "lost": -1}})
    assert "negative" in b.expect_error(Err.BAD_MESSAGE)["message"]
    b.send({"type": Msg.REPORT, "streams": [], "audio": {"received": "x", "lost": 1}})
    b.expect_error(Err.BAD_MESSAGE)
    # Nobody has sent audio: the server knows no stream's loss yet, so tells nobody.
    b.send({"type": Msg.REPORT, "streams": [], "audio": {"received": 50, "lost": 0}})
    assert control(a, {Msg.AUDIO_LOSS}, 0.5) == []
