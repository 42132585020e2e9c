"""Audio through an impaired network (bench/netrelay.py in front of a real server).

The listener reaches the server through the relay (TCP and UDP on 127.0.0.2, the
server's UDP port number, as bench/pesq_audio.py does), so its mix suffers the
relay's loss and jitter; the talker is connected directly. What is checked is the
listener's adaptive jitter buffer: lost frames recovered from FEC or concealed, the
target delay growing under jitter and shrinking after it.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

import audio_module as am
from tests.helpers import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from netrelay import Impairment, TcpRelay, UdpRelay

RELAY_HOST = "127.0.0.2"
RELAY_MAX_S = 60.0


@pytest.fixture
def through_relay(server):
    """connect(name, down) -> a client whose server->client UDP suffers ``down``."""
    from client import ConferenceClient

    made: list = []

    def connect(name: str, down: Impairment, seed: int = 7):
        udp = UdpRelay(
            ("127.0.0.1", server.udp_port),
            None,
            down,
            seed,
            (RELAY_HOST, server.udp_port),
            RELAY_MAX_S,
        ).start()
        tcp = TcpRelay(
            ("127.0.0.1", server.tcp_port), None, None, seed, (RELAY_HOST, 0), RELAY_MAX_S
        ).start()
        made.extend([udp, tcp])
        # TLS runs end to end through the relay: the server's own fingerprint is pinned.
        cl = ConferenceClient(RELAY_HOST, tcp.address[1], expected_fingerprint=server.fingerprint)
        made.append(cl)
        cl.connect(name, "Room", audio=False, video=False)
        assert cl.wait_udp_registered(10)
        return cl, udp

    yield connect
    for thing in reversed(made):
        if hasattr(thing, "leave"):
            thing.leave()
        else:
            thing.stop()


class Talk:
    """A talker sending a tone through AudioCapture in real time until stopped."""

    def __init__(self, client) -> None:
        fmt = am.AudioFormat.from_media(client.media_params)
        self.capture = am.AudioCapture(client, am.ToneSource(fmt, freq_hz=300.0)).start()

    def stop(self) -> None:
        self.capture.stop()


def test_lost_packets_are_recovered_by_fec_or_concealed_end_to_end(make_client, through_relay):
    listener, relay = through_relay("Ear", Impairment(loss=0.1, delay_ms=5))
    talker = make_client("Mouth", audio=True, video=False)
    assert talker.wait_udp_registered(10)
    playback = am.AudioPlayback(listener, am.NullSink(am.AudioFormat())).start()
    talk = Talk(talker)
    try:
        wait_for(lambda: playback.stats()["decoded"] >= 150, timeout=20, what="150 frames")
    finally:
        talk.stop()
        playback.stop()
    stats = playback.stats()
    lost = relay.down_stats.lost
    assert lost >= 5, relay.down_stats
    # Once the listener reported its 10 % loss the server repeats each packet
    # (audio_repeat.py): a lost first copy is played from its repeat (put in place after
    # the next packet); before that, and when both copies are lost, from the next
    # packet's FEC or concealed.
    assert stats["duplicate"] + stats["late"] > 0, stats
    recovered = stats["fec_used"] + stats["concealed"] + stats["expanded"] + stats["reordered"]
    assert recovered >= 1, stats
    assert stats["fec_used"] + stats["concealed"] <= lost, stats
    assert stats["decoded"] >= 150


def test_buffer_grows_under_jitter_and_shrinks_after_it(make_client, through_relay):
    listener, relay = through_relay("Ear", Impairment(delay_ms=40, jitter_ms=30))
    talker = make_client("Mouth", audio=True, video=False)
    assert talker.wait_udp_registered(10)
    playback = am.AudioPlayback(listener, am.NullSink(am.AudioFormat())).start()
    talk = Talk(talker)
    peak = [0.0]
    done = threading.Event()

    def high() -> bool:
        peak[0] = max(peak[0], playback.stats()["target_delay_ms"])
        return peak[0] >= 50

    try:
        wait_for(high, timeout=20, what="the target delay to grow under jitter")
        # The network calms down: the target forgets the jitter (half-life 2 s).
        relay._down.imp = Impairment(delay_ms=40)
        wait_for(
            lambda: playback.stats()["target_delay_ms"] <= 0.5 * peak[0],
            timeout=20,
            what="the target delay to shrink",
        )
        done.set()
    finally:
        talk.stop()
        playback.stop()
    assert done.is_set()
    stats = playback.stats()
    # Few frames were rebuilt for lack of their packet in time (the network loses none).
    assert stats["fec_used"] + stats["concealed"] <= 0.1 * stats["decoded"], stats


def test_a_talker_on_a_clean_network_is_told_to_plan_no_fec(make_client):
    listener = make_client("Ear", audio=True, video=False)
    talker = make_client("Mouth", audio=True, video=False)
    assert listener.wait_udp_registered(10) and talker.wait_udp_registered(10)
    playback = am.AudioPlayback(listener, am.NullSink(am.AudioFormat())).start()
    talk = Talk(talker)
    try:
        # The listener reports what it decoded and lost each second; the server tells
        # the talker (audio_loss) and its encoder stops spending bits on FEC.
        wait_for(lambda: talker.audio_loss_told == 0, timeout=20, what="audio_loss 0")
        assert talker.audio_expected_loss == 0
        # It repeated its packets until then (audio_repeat.py), and stops on a clean one.
        assert talker.audio_repeat_bytes_sent > 0 and not talker.audio_repeating
    finally:
        talk.stop()
        playback.stop()
    assert playback.stats()["decoded"] > 0
