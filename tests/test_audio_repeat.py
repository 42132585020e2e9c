"""Repeat (audio_repeat.py): each Opus packet sent again one frame later on a lossy leg.

The pure parts (the repeater, the datagram loss count, the hysteresis), the client
that repeats when told a loss at or above the threshold, the server's mixer that
repeats a lossy listener's packets, a jitter buffer that plays a frame from its repeat,
and the loop that keeps repeating: repeats must not hide the loss that switches them.
"""

from __future__ import annotations

import random
from itertools import pairwise

import numpy as np

import audio_repeat
import config
import utils
from audio_codec import OpusDecoder, OpusEncoder
from audio_mixer import AudioMixer
from audio_repeat import Repeater, copy_counts, repeating
from client import ConferenceClient
from jitter_buffer import AdaptiveJitterBuffer
from tests.test_audio_forward import Call, N, tone
from tests.test_client import free_port


def test_the_repeater_sends_the_previous_packet_after_each_one_only_while_on():
    r = Repeater()
    assert r.send("a") == ["a"] and r.send("b") == ["b"]  # off: nothing extra
    r.set_on(True)
    assert r.send("c") == ["c"]
    assert r.send("d") == ["d", "c"]
    assert r.flush() == ["d"]  # a frame with nothing to send: the repeat goes alone
    assert r.flush() == []
    r.send("e")
    r.set_on(False)
    assert r.send("f") == ["f"]


def test_repeating_starts_at_the_threshold_and_stops_below_the_lower_one():
    assert not repeating(config.AUDIO_REPEAT_MIN_PERCENT - 0.01, False)
    assert repeating(config.AUDIO_REPEAT_MIN_PERCENT, False)
    assert repeating(config.AUDIO_REPEAT_STOP_PERCENT, True)  # hysteresis
    assert not repeating(config.AUDIO_REPEAT_STOP_PERCENT - 0.01, True)
    assert not repeating(0, True)


def test_copy_counts_are_datagrams_of_the_frames_counted():
    assert copy_counts((0, 0), (100, 5)) == (95, 5)
    assert copy_counts((100, 5), (300, 9)) == (196, 4)
    assert copy_counts((10, 1), (10, 1)) == (0, 0)


def _played(pattern: list[tuple[int, int]], repeats: bool) -> AdaptiveJitterBuffer:
    """A buffer fed 40 frames, each sent once (twice with ``repeats``), the copies in
    ``pattern`` ((seq, which copy: 0 first, 1 repeat)) lost; all played."""
    enc = OpusEncoder()
    jb = AdaptiveJitterBuffer(OpusDecoder())
    rep = Repeater(on=repeats)
    lost = set(pattern)
    for k in range(40):
        copy = {}
        for seq, pkt in rep.send((k, enc.encode(tone(300, k)))):
            n = copy[seq] = copy.get(seq, -1) + 1
            if (seq, n if seq == k else 1) not in lost:
                jb.put(seq, pkt, 20.0 * k)
        jb.get()
    for _ in range(10):
        jb.get()
    return jb


def test_the_jitter_buffer_counts_each_frame_s_datagrams():
    # Not repeated: one datagram a frame; two frames lost. The last few frames are
    # counted once later ones play (their repeats could still come).
    counted = 40 - config.JB_COPY_COUNT_DELAY_FRAMES
    s = _played([(10, 0), (20, 0)], repeats=False).stats
    assert (s.copies_sent, s.copies_lost) == (counted, 2)
    # Repeated: two a frame. A first copy lost (played from its repeat), a repeat lost,
    # and both copies of frame 30: four datagrams lost, one frame.
    s = _played([(10, 0), (15, 1), (30, 0), (30, 1)], repeats=True).stats
    assert s.copies_sent == 2 * counted and s.copies_lost == 4
    assert s.fec_used + s.concealed == 1
    # Reordering is not loss: a frame that comes after the next one, both copies.
    enc = OpusEncoder()
    jb = AdaptiveJitterBuffer(OpusDecoder())
    packets = [enc.encode(tone(300, k)) for k in range(40)]
    order = list(range(40))
    order[10], order[11] = 11, 10
    for k, seq in enumerate(order):
        jb.put(seq, packets[seq], 20.0 * k)
        jb.put(seq, packets[seq], 20.0 * k + 1)  # its repeat
        if k > 2:
            jb.get()
    for _ in range(10):
        jb.get()
    assert jb.stats.copies_lost == 0 and jb.stats.copies_sent == 2 * counted
    # Repeats switched on and off on a clean network: nothing is lost.
    enc = OpusEncoder()
    jb = AdaptiveJitterBuffer(OpusDecoder())
    rep = Repeater()
    for k in range(60):
        rep.set_on(10 <= k < 20 or 30 <= k < 40)
        for seq, pkt in rep.send((k, enc.encode(tone(300, k)))):
            jb.put(seq, pkt, 20.0 * k)
        jb.get()
    assert jb.stats.copies_lost == 0 and jb.stats.fec_used + jb.stats.concealed == 0


def test_while_repeating_the_encoder_plans_for_the_loss_both_copies_meet():
    assert audio_repeat.encoder_percent(0.05, False) == 5
    assert audio_repeat.encoder_percent(0.02, True) == 0
    assert audio_repeat.encoder_percent(0.10, True) == 2


def _client(monkeypatch) -> tuple[ConferenceClient, list[tuple[int, bytes]]]:
    cl = ConferenceClient("127.0.0.1", free_port())
    cl.my_id = 7
    sent: list[tuple[int, bytes]] = []
    monkeypatch.setattr(cl, "_send_udp", lambda kind, seq, t, p=b"": sent.append((seq, p)) or 1)
    return cl, sent


def _tell(cl: ConferenceClient, percent: int) -> None:
    cl._on_audio_loss(utils.Frame({"type": utils.Msg.AUDIO_LOSS, "percent": percent}))


def test_the_client_repeats_when_told_a_loss_at_the_threshold_and_not_below(monkeypatch):
    cl, sent = _client(monkeypatch)
    try:
        _tell(cl, 0)
        for k in range(10):
            cl.send_audio(tone(300, k).tobytes())
        seqs = [s for s, _ in sent]
        assert seqs and len(seqs) == len(set(seqs))  # clean: each packet once
        _tell(cl, config.AUDIO_REPEAT_MIN_PERCENT)
        assert cl.audio_expected_loss == 0  # one copy of two lost: FEC not needed
        n = len(sent)
        for k in range(10, 20):
            cl.send_audio(tone(300, k).tobytes())
        after = sent[n:]
        # Each packet, then the previous one again: same seq, same bytes.
        expected = [10] + [s for k in range(11, 20) for s in (k, k - 1)]
        assert [s for s, _ in after] == expected
        first = {s: p for s, p in after[::-1]}
        assert all(first[s] == p for s, p in after)
        _tell(cl, 0)
        n = len(sent)
        for k in range(20, 30):
            cl.send_audio(tone(300, k).tobytes())
        assert [s for s, _ in sent[n:]] == list(range(20, 30))
    finally:
        cl.leave()


def test_the_server_repeats_a_lossy_listener_s_mix_and_not_a_clean_one_s():
    call = Call([1, 2, 3], forward=False)
    for _ in range(10):
        call.step({1})
    for _ in range(2):
        call.m.report_loss(2, 90, 10)  # 10 % on 2's leg
        call.m.report_loss(3, 100, 0)
    assert call.m._senders[2].repeat.on and not call.m._senders[3].repeat.on
    results = []
    tick = call.m.tick
    call.m.tick = lambda: results.append(tick()) or results[-1]
    for _ in range(5):
        call.step({1})
    for prev, r in pairwise(results):
        assert [(q, p) for who, q, p in r.repeats if who == 2] == [(prev.seqs[2], prev.packets[2])]
        assert all(who != 3 for who, _, _ in r.repeats)


def test_forwarded_packets_queued_for_a_listener_that_repeats_are_repeated():
    call = Call([1, 2, 3])
    call.m._senders[2].repeat.set_on(True)
    call.m._outbox = [(2, 100, b"a"), (3, 100, b"a"), (2, 101, b"b")]
    assert call.m.take_forwards() == [
        (2, 100, b"a"),
        (3, 100, b"a"),
        (2, 101, b"b"),
        (2, 100, b"a"),
    ]
    assert call.m.forwarded == 3


def test_a_repeat_of_a_forwarded_packet_is_not_forwarded_again():
    call = Call([1, 2, 3])
    for _ in range(10):
        call.step({1})
    n = call.m.forwarded
    packet = call.talker_packets[1][9]
    call.m.push(1, 9, packet, 200.0)  # the talker's repeat of a packet that arrived
    assert call.m.take_forwards() == [] and call.m.forwarded == n


def test_the_jitter_buffer_plays_a_frame_from_its_repeat_when_the_first_copy_was_lost():
    enc = OpusEncoder()
    packets = [enc.encode(tone(300, k)) for k in range(20)]
    jb = AdaptiveJitterBuffer(OpusDecoder())
    rep = Repeater()
    rep.set_on(True)
    for k, p in enumerate(packets):
        for i, (seq, pkt) in enumerate(rep.send((k, p))):
            if seq == 6 and i == 0:
                continue  # the first copy of frame 6 is lost; its repeat comes after 7
            jb.put(seq, pkt, 20.0 * k)
        jb.get()
    s = jb.stats
    assert s.fec_used == 0 and s.concealed == 0  # frame 6 was decoded from its repeat
    assert s.decoded >= 10 and s.reordered == 1 and s.duplicate + s.late >= 9
    # ...and the loss report still says one datagram was lost.
    received, lost = copy_counts((0, 0), audio_repeat.snapshot(s))
    assert lost == 1 and received >= 2 * 10 - 1


def test_repeats_do_not_hide_the_loss_that_keeps_them_on():
    """A talker on a 5 % leg: told to repeat, it keeps repeating (no oscillation)."""
    m = AudioMixer(forward=False)
    m.add(1)
    m.add(2)
    enc = OpusEncoder()
    rep = Repeater()
    rng = random.Random(3)
    on: list[bool] = []
    residual = 0
    k = 0
    for _ in range(16):
        for _ in range(50):
            packet = enc.encode(tone(300, k))
            for seq, p in rep.send((k, packet)) if packet else rep.flush():
                if rng.random() >= 0.05:
                    m.push(1, seq, p, 20.0 * k)
            m.tick()
            k += 1
        tell = m.report_loss(2, 50, 0)
        if 1 in tell:
            rep.set_on(repeating(tell[1], rep.on))
        on.append(rep.on)
    first = on.index(True)
    assert first <= 3 and all(on[first:])
    assert 0.02 <= m._senders[1].up.fraction <= 0.10  # the datagrams lost, seen
    stats = m._senders[1].jb.stats
    residual = stats.fec_used + stats.concealed
    assert residual < 0.02 * k  # what the repeats left lost: far below 5 %


def test_a_clean_stream_is_never_repeated():
    call = Call([1, 2])
    for _ in range(60):
        call.step({1})
        if call.k % 25 == 0:
            call.m.report_loss(2, 25, 0)
    assert not call.m._senders[2].repeat.on and call.m._senders[1].told == 0
    assert not call.m._senders[1].repeats
    assert np.all([how == "forward" for _, _, how in call.sent[2][-10:]])
    assert N == config.AUDIO_FRAME_SAMPLES


def test_repeats_do_not_raise_the_jitter_buffer_s_delay():
    """A repeat arrives a frame after its first copy: it is not jitter to plan for."""
    enc = OpusEncoder()
    jb = AdaptiveJitterBuffer(OpusDecoder())
    rep = Repeater()
    rep.set_on(True)
    for k in range(60):
        for seq, pkt in rep.send((k, enc.encode(tone(300, k)))):
            jb.put(seq, pkt, 20.0 * k)
        jb.get()
    assert jb.stats.duplicate + jb.stats.late >= 55
    assert jb.target_delay_ms == jb.frame_ms and jb.stats.expanded == 0


def test_a_repeated_leg_suits_forwarding_unless_the_path_is_too_lossy_or_jittery():
    """Forwarding goes on over repeated legs (no second encode); a path losing more than
    MIXER_FORWARD_MAX_LOSS_FRACTION of its datagrams, or a talker whose leg jitters more
    than MIXER_FORWARD_MAX_JITTER_MS, gets the mix: each leg's buffer, FEC and repeats."""
    call = Call([1, 2, 3])
    for _ in range(10):
        call.step({1})
    talker, two = call.m._senders[1], call.m._senders[2]
    suits = call.m._path_suits
    assert suits(2, 1)
    two.down.fraction = 0.02
    two.repeat.set_on(True)  # 2 % on 2's leg, repeated: still forwarded
    assert suits(2, 1) and suits(3, 1)
    two.down.fraction = 0.15  # beyond the limit: 2 gets the mix, 3 the packets
    assert not suits(2, 1) and suits(3, 1)
    talker.up.fraction = 0.15  # the talker's own leg: nobody is forwarded to
    assert not suits(3, 1)
    talker.up.fraction = two.down.fraction = 0.0
    limit = config.MIXER_FORWARD_MAX_JITTER_MS
    for peak, fits in [
        (limit + 5, False),  # a jittery talker's leg: everyone gets the mix...
        (0.9 * limit, False),  # ...until its jitter is well below the limit
        (0.9 * limit * config.MIXER_FORWARD_JITTER_HYSTERESIS, True),
        (0.9 * limit, True),
    ]:
        talker.jb._peak_ms = peak
        call.step({1})  # its next packet
        assert suits(2, 1) is fits and suits(3, 1) is fits


def test_the_route_changes_only_while_the_talker_pauses():
    """A switch between forwarding and mixing moves the listener's delay: mid-word it is
    an audible seam, in a pause it costs nothing."""
    call = Call([1, 2, 3])
    for _ in range(10):
        call.step({1})
    assert call.m._forwarded_to(2, 1)
    call.m._senders[2].down.fraction = 0.20  # 2's leg turns lossy while 1 talks
    for _ in range(5):
        call.step({1})
    assert call.m._forwarded_to(2, 1) and call.sent[2][-1][2] == "forward"
    for _ in range(config.MIXER_ROUTE_PAUSE_FRAMES + 1):
        call.step(set())  # a pause: the route is judged again
    assert not call.m._forwarded_to(2, 1) and call.m._forwarded_to(3, 1)
    n = len(call.sent[2])
    for _ in range(5):
        call.step({1})
    assert call.sent[2][n:] and all(how == "mix" for _, _, how in call.sent[2][n:])
    assert all(how == "forward" for _, _, how in call.sent[3][-5:])


def test_every_leg_is_repeated_from_the_start_until_it_is_measured_clean():
    """Before any loss is measured the talker repeats and the server repeats to each
    listener, so a lossy network's first second is covered; a clean one stops both."""
    call = Call([1, 2], known_clean=False)
    assert call.m._senders[1].repeats and call.m._senders[2].repeat.on
    for _ in range(5):
        call.step({1})
    assert call.m._forwarded_to(2, 1)  # not yet measured: forwarded, and repeated
    pairs = [(seq, how) for seq, _, how in call.sent[2]]
    seqs = [seq for seq, _ in pairs]
    assert len(seqs) > len(set(seqs)) and all(how == "forward" for _, how in pairs)
    for _ in range(config.AUDIO_LOSS_MIN_FRAMES + 5):
        call.step({1})
    tell = call.m.report_loss(2, config.AUDIO_LOSS_MIN_FRAMES, 0)
    assert tell == {1: 0} and not call.m._senders[1].repeats
    assert not call.m._senders[2].repeat.on
    n = len(call.sent[2])
    for _ in range(10):
        call.step({1})
    seqs = [seq for seq, _, _ in call.sent[2][n:]]
    assert len(seqs) == len(set(seqs)) == 10  # each packet once


def test_a_new_client_repeats_until_the_server_measures_its_leg(monkeypatch):
    cl, sent = _client(monkeypatch)
    try:
        assert cl.audio_expected_loss == 0  # repeats cover the start: no FEC bits yet
        for k in range(5):
            cl.send_audio(tone(300, k).tobytes())
        assert [s for s, _ in sent] == [0, 1, 0, 2, 1, 3, 2, 4, 3]
        _tell(cl, 0)
        n = len(sent)
        for k in range(5, 10):
            cl.send_audio(tone(300, k).tobytes())
        assert [s for s, _ in sent[n:]] == [5, 6, 7, 8, 9]
    finally:
        cl.leave()


def test_repeats_at_the_start_end_when_the_loss_is_never_measured():
    """A peer that never reports (or a server that never tells) is taken to be clean."""
    r = Repeater(on=True)
    limit = config.AUDIO_REPEAT_UNMEASURED_FRAMES
    sends = [r.send(k) for k in range(limit + 5)]
    assert all(len(s) == 2 for s in sends[1:limit])  # each packet, then the previous again
    assert sends[-1] == [limit + 4] and not r.on
    measured = Repeater(on=True)
    measured.set_on(True)  # told a loss: repeats for as long as it lasts
    measured.send(0)
    assert all(len(measured.send(k)) == 2 for k in range(1, limit + 5))


def test_the_server_stops_repeating_to_a_listener_that_never_reports():
    call = Call([1, 2], known_clean=False)
    for _ in range(config.AUDIO_REPEAT_UNMEASURED_FRAMES + 20):
        call.step({1})
    n = len(call.sent[2])
    for _ in range(10):
        call.step({1})
    seqs = [seq for seq, _, _ in call.sent[2][n:]]
    assert len(seqs) == len(set(seqs)) == 10 and not call.m._senders[2].repeat.on
