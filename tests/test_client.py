"""ConferenceClient against a real server on loopback: join, chat, presenting, media, leave."""

from __future__ import annotations

import socket
import sys
import threading
import time

import numpy as np
import pytest

import config
import utils
from audio_codec import OpusDecoder
from client import ConferenceClient, JoinError, RequestError
from tests.helpers import Recorder, wait_for
from utils import LocalErr

WAIT_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Joining -------------------------------------------------------------------------


def test_welcome_fills_the_client_state(make_client) -> None:
    alice = make_client("Alice")
    bob = make_client("Bob")
    assert alice.connected and bob.connected
    assert bob.my_id != alice.my_id
    assert alice.my_id in bob.participants
    assert bob.participants[alice.my_id]["username"] == "Alice"
    assert len(bob.token) == 32
    assert bob.media_params["audio"]["frame_samples"] == config.AUDIO_FRAME_SAMPLES
    wait_for(lambda: bob.my_id in alice.participants, what="participant_joined at Alice")


def test_duplicate_username_is_refused_case_insensitively(server, make_client) -> None:
    make_client("Alice")
    other = ConferenceClient("127.0.0.1", server.tcp_port, expected_fingerprint=server.fingerprint)
    with pytest.raises(JoinError) as info:
        other.connect("  aLiCe ", "Room")
    assert info.value.code == "username_taken"
    assert info.value.message
    other.leave()
    # The same name in another session is fine.
    make_client("alice", session="Other room")


@pytest.mark.parametrize("name", ["", "   ", "x" * 33, "bad\x00name"])
def test_bad_usernames_are_refused(server, name: str) -> None:
    cl = ConferenceClient("127.0.0.1", server.tcp_port, expected_fingerprint=server.fingerprint)
    with pytest.raises(JoinError) as info:
        cl.connect(name, "Room")
    assert info.value.code == "bad_username"
    cl.leave()


def test_unreachable_server_is_a_join_error() -> None:
    cl = ConferenceClient("127.0.0.1", free_port())
    with pytest.raises(JoinError) as info:
        cl.connect("Alice", "Room", timeout=2.0)
    assert info.value.code == LocalErr.UNREACHABLE
    assert "127.0.0.1" in info.value.message
    cl.leave()
    assert not cl.connected


def test_list_sessions(server, make_client) -> None:
    make_client("Alice", session="Standup")
    sessions = ConferenceClient.list_sessions("127.0.0.1", server.tcp_port)
    assert {"name": "Standup", "participants": 1}.items() <= sessions[0].items()
    with pytest.raises(JoinError) as info:
        ConferenceClient.list_sessions("127.0.0.1", free_port(), timeout=2.0)
    assert info.value.code == LocalErr.UNREACHABLE


# --- Chat ----------------------------------------------------------------------------


@pytest.mark.allow_errors("Carol's chat callback raises on purpose; client.py logs each one")
def test_chat_from_two_senders_arrives_in_one_seq_order_everywhere(make_client) -> None:
    alice, bob, carol = make_client("Alice"), make_client("Bob"), make_client("Carol")
    # A callback that raises must not stop the receiver thread.
    carol.on("chat", lambda m: 1 / 0)
    recs = [Recorder(c, "chat") for c in (alice, bob, carol)]

    def talk(cl: ConferenceClient) -> None:
        for i in range(10):
            cl.send_chat(f"{cl.username} {i}")

    senders = [threading.Thread(target=talk, args=(c,), name="talk") for c in (alice, bob)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(WAIT_S)
    for r in recs:
        wait_for(lambda r=r: len(r.get("chat")) >= 20, what="20 chat messages")
    orders = [[m[0]["seq"] for m in r.get("chat")] for r in recs]
    texts = [[m[0]["message"] for m in r.get("chat")] for r in recs]
    assert orders[0] == orders[1] == orders[2]
    assert orders[0] == sorted(orders[0]) and len(set(orders[0])) == 20
    assert texts[0] == texts[1] == texts[2]
    for name in ("Alice", "Bob"):  # each sender's own order is kept
        assert [t for t in texts[0] if t.startswith(name)] == [f"{name} {i}" for i in range(10)]
    assert [m["seq"] for m in carol.chat.messages()] == orders[0]
    first = recs[0].get("chat")[0][0]
    assert isinstance(first["timestamp"], float) and first["from"] in (alice.my_id, bob.my_id)


def test_late_joiner_gets_the_history_but_not_private_messages(make_client) -> None:
    alice, bob = make_client("Alice"), make_client("Bob")
    for i in range(3):
        alice.send_chat(f"before {i}")
    alice.send_chat("just for Bob", to=[bob.my_id])
    alice.send_chat("last")
    wait_for(lambda: len(bob.chat) == 5, what="5 messages at Bob")
    late = make_client("Late")
    history = [m["message"] for m in late.chat.messages()]
    assert history == ["before 0", "before 1", "before 2", "last"]


def test_private_message_reaches_only_its_target_and_the_sender(make_client) -> None:
    alice, bob, carol = make_client("Alice"), make_client("Bob"), make_client("Carol")
    alice.send_chat("secret", to=[bob.my_id])
    alice.send_chat("public")
    for c in (alice, bob, carol):
        wait_for(lambda c=c: any(m["message"] == "public" for m in c.chat), what="public msg")
    for c in (alice, bob):
        (secret,) = c.chat.private_messages()
        assert secret["message"] == "secret" and secret["to"] == [bob.my_id]
    assert carol.chat.private_messages() == []
    assert [m["message"] for m in carol.chat] == ["public"]


def test_chat_input_is_checked_before_sending(make_client) -> None:
    alice = make_client("Alice")
    with pytest.raises(ValueError):
        alice.send_chat("")
    with pytest.raises(ValueError):
        alice.send_chat("x" * (config.MAX_CHAT_CHARS + 1))


# --- Presenting ----------------------------------------------------------------------


def test_second_presenter_gets_presenter_busy(make_client) -> None:
    alice, bob = make_client("Alice"), make_client("Bob")
    ra, rb = Recorder(alice, "present_granted"), Recorder(bob, "error", "presenter_changed")
    alice.present_start()
    wait_for(lambda: ra.get("present_granted"), what="present_granted")
    wait_for(lambda: bob.presenter == alice.my_id, what="presenter at Bob")
    bob.present_start()
    (code, message, re), *_ = wait_for(lambda: rb.get("error"), what="error at Bob")
    assert code == "presenter_busy" and re == "present_start"
    assert message == "Another user is presenting"
    alice.present_stop()
    wait_for(lambda: (None,) in rb.get("presenter_changed"), what="presenter_changed null")
    assert bob.presenter is None


def test_screen_frames_reach_the_others(make_client) -> None:
    alice, bob = make_client("Alice"), make_client("Bob")
    rb = Recorder(bob, "screen_frame")
    ra = Recorder(alice, "present_granted")
    alice.present_start()
    wait_for(lambda: ra.get("present_granted"), what="present_granted")
    key = b"\x10\x00\x00\x9d\x01\x2a\x80\x02\xe0\x01fake vp8"  # a 640x480 keyframe header
    alice.send_screen_frame(key, 640, 480, True)
    sender, seq, w, h, data, keyframe = wait_for(lambda: rb.get("screen_frame"), what="frame")[0]
    assert (sender, w, h, data, keyframe) == (alice.my_id, 640, 480, key, True)


def test_presenter_that_vanishes_is_released_and_resumes(make_client) -> None:
    alice, bob = make_client("Alice"), make_client("Bob")
    rb = Recorder(bob, "presenter_changed", "participant_left", "participant_updated")
    ra = Recorder(alice, "present_granted", "disconnected", "reconnecting", "reconnected")
    alice.present_start()
    wait_for(lambda: ra.get("present_granted"), what="present_granted")
    wait_for(lambda: bob.presenter == alice.my_id, what="presenter at Bob")
    old_id = alice.my_id
    # Like a network cut: the socket closes without a bye.
    alice._tcp.shutdown(socket.SHUT_RDWR)
    wait_for(lambda: (None,) in rb.get("presenter_changed"), what="presenter released")
    wait_for(lambda: ra.get("reconnected"), what="Alice resumed")
    assert ra.get("reconnecting") and ra.get("reconnected")[0][0]["resumed"] is True
    assert alice.my_id == old_id and alice.connected and not alice.reconnecting
    wait_for(
        lambda: any(
            p["id"] == old_id and not p["reconnecting"] for (p,) in rb.get("participant_updated")
        ),
        what="Bob sees Alice back",
    )
    assert rb.get("participant_left") == [] and old_id in bob.participants
    assert bob.presenter is None and ra.get("disconnected") == []


def test_presenter_that_vanishes_without_reconnection_is_reported_left(server) -> None:
    server.config.resume_grace_s = 0.0  # the version-1 behaviour: no place kept
    off = config.ClientConfig(reconnect_give_up_s=0.0)
    fp = server.fingerprint
    alice = ConferenceClient("127.0.0.1", server.tcp_port, off, expected_fingerprint=fp)
    bob = ConferenceClient("127.0.0.1", server.tcp_port, expected_fingerprint=fp)
    try:
        alice.connect("Alice", "Room")
        bob.connect("Bob", "Room")
        rb = Recorder(bob, "presenter_changed", "participant_left")
        ra = Recorder(alice, "present_granted", "disconnected")
        alice.present_start()
        wait_for(lambda: ra.get("present_granted"), what="present_granted")
        wait_for(lambda: bob.presenter == alice.my_id, what="presenter at Bob")
        alice._tcp.shutdown(socket.SHUT_RDWR)
        wait_for(lambda: (None,) in rb.get("presenter_changed"), what="presenter released")
        wait_for(lambda: rb.get("participant_left"), what="participant_left")
        assert rb.get("participant_left")[0][0] == alice.my_id
        wait_for(lambda: ra.get("disconnected"), what="disconnected at Alice")
        alice.leave()
        assert len(ra.get("disconnected")) == 1
    finally:
        alice.leave()
        bob.leave()


class TestHeartbeatTimeout:
    """A client that stays silent is removed once the server's heartbeat timeout passes."""

    @pytest.fixture
    def server_config(self, tmp_path):
        return config.ServerConfig(
            host="127.0.0.1",
            tcp_port=0,
            udp_port=0,
            storage_dir=tmp_path / "storage",
            heartbeat_timeout_s=1.0,
            resume_grace_s=0.0,
        )

    def test_silent_client_is_removed(self, server) -> None:
        lively = config.ClientConfig(heartbeat_interval_s=0.2)
        silent = config.ClientConfig(
            heartbeat_interval_s=1000.0, udp_keepalive_s=1000.0, reconnect_give_up_s=0.0
        )
        watcher = ConferenceClient(
            "127.0.0.1", server.tcp_port, lively, expected_fingerprint=server.fingerprint
        )
        mute = ConferenceClient(
            "127.0.0.1", server.tcp_port, silent, expected_fingerprint=server.fingerprint
        )
        try:
            watcher.connect("Watcher", "Room")
            rw = Recorder(watcher, "participant_left")
            mute.connect("Mute", "Room")
            rm = Recorder(mute, "disconnected")
            wait_for(lambda: mute.my_id in watcher.participants, what="Mute joined")
            wait_for(lambda: rw.get("participant_left"), timeout=6.0, what="Mute removed")
            assert rw.get("participant_left")[0][0] == mute.my_id
            wait_for(lambda: rm.get("disconnected"), what="Mute told it is disconnected")
            assert not mute.connected
            # The lively client, pinging every 0.2 s, survives several timeouts.
            time.sleep(2.5)  # not synchronisation: the client must NOT be removed in this time
            assert watcher.connected
        finally:
            mute.leave()
            watcher.leave()


def test_ping_gives_rtt(make_client) -> None:
    alice = make_client("Alice")
    ra = Recorder(alice, "pong")
    alice.ping()
    (rtt,) = wait_for(lambda: ra.get("pong"), what="pong")[0]
    assert 0.0 <= rtt < 1.0
    assert alice.rtt_s == rtt


# --- Media -----------------------------------------------------------------------------


def tone(freq_hz: float, rate: int, n: int, start: int, amplitude: float = 8000.0) -> bytes:
    t = (np.arange(n) + start) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes()


def talk_in_real_time(cl: ConferenceClient, freq_hz: float, seconds: float) -> None:
    a = cl.media_params["audio"]
    rate, n = a["rate"], a["frame_samples"]
    frame_s = n / rate
    start = time.monotonic()
    for i in range(int(seconds / frame_s)):
        cl.send_audio(tone(freq_hz, rate, n, i * n))
        # Pacing, not synchronisation: one frame per frame period, like a microphone.
        delay = start + (i + 1) * frame_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def band_energy(pcm: bytes, rate: int, freq_hz: float) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    band = (freqs > freq_hz - 20) & (freqs < freq_hz + 20)
    return float((spec[band] ** 2).sum())


def test_n_minus_1_mixing_end_to_end(make_client) -> None:
    t440, t1000, listener = make_client("T440"), make_client("T1000"), make_client("Listener")
    for c in (t440, t1000, listener):
        assert c.wait_udp_registered(WAIT_S)
    got: dict[str, list[tuple[int, bytes]]] = {"T440": [], "T1000": [], "Listener": []}
    for c in (t440, t1000, listener):
        c.on("audio", lambda pkt, seq, t, _n=c.username: got[_n].append((seq, pkt)))
    rate = t440.media_params["audio"]["rate"]
    talkers = [
        threading.Thread(target=talk_in_real_time, args=(t440, 440.0, 1.5), name="talk-440"),
        threading.Thread(target=talk_in_real_time, args=(t1000, 1000.0, 1.5), name="talk-1000"),
    ]
    for t in talkers:
        t.start()
    for t in talkers:
        t.join(10)
    frames_s = 1.5 / (config.AUDIO_FRAME_MS / 1000)
    for name in got:
        wait_for(lambda name=name: len(got[name]) >= 0.8 * frames_s, what=f"mix at {name}")
    energy = {}
    for name, packets in got.items():  # each listener's Opus stream, decoded in seq order
        dec = OpusDecoder()
        pcm = b"".join(dec.decode(p).tobytes() for _, p in sorted(packets))
        energy[name] = (band_energy(pcm, rate, 440), band_energy(pcm, rate, 1000))
    e440, e1000 = energy["Listener"]
    assert e440 > 0 and e1000 > 0 and 0.2 < e440 / e1000 < 5  # hears both
    e440, e1000 = energy["T440"]
    assert e1000 > 1000 * e440  # hears only the other talker
    e440, e1000 = energy["T1000"]
    assert e440 > 1000 * e1000


def test_levels_arrive_for_a_talker(make_client) -> None:
    talker, listener = make_client("Talker"), make_client("Listener")
    assert talker.wait_udp_registered(WAIT_S) and listener.wait_udp_registered(WAIT_S)
    rl = Recorder(listener, "levels")
    t = threading.Thread(target=talk_in_real_time, args=(talker, 440.0, 1.0), name="talk")
    t.start()
    try:
        wait_for(
            lambda: any(lv.get(talker.my_id, 0) > 100 for (lv,) in rl.get("levels")),
            what="a high level for the talker",
        )
    finally:
        t.join(10)


def test_video_frames_go_out_as_fragments_of_at_most_1200_bytes(make_client) -> None:
    """A subscribed viewer gets every fragment of every frame, with per-layer seq."""
    alice, bob = make_client("Alice"), make_client("Bob")
    assert alice.wait_udp_registered(WAIT_S) and bob.wait_udp_registered(WAIT_S)
    rb = Recorder(bob, "video_fragment")
    kr = Recorder(alice, "keyframe_request")
    assert bob.subscribe({alice.my_id: "small"}) is True
    assert bob.subscribe({alice.my_id: "small", 999: None}) is False  # unchanged: not sent
    assert bob.subscriptions == {alice.my_id: "small"}
    wait_for(lambda: kr.get("keyframe_request") == [("small",)], what="a keyframe request")
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, 2500, dtype=np.uint8).tobytes() for _ in range(3)]
    for i, f in enumerate(frames):
        sent = alice.send_video_frame("small", i, i == 0, f)
        per_datagram = utils.MEDIA_HEADER.size + utils.SEAL_OVERHEAD_BYTES + utils.VIDEO_HEADER.size
        assert sent == len(f) + 3 * per_datagram
    alice.send_video_frame("large", 0, True, b"not subscribed")
    wait_for(lambda: len(rb.get("video_fragment")) >= 9, what="9 fragments")
    got = rb.get("video_fragment")
    assert [seq for _, seq, _ in got] == list(range(9))  # +1 per datagram, per layer
    for i, f in enumerate(frames):
        parts = sorted((g.frag_index, g.data) for _, _, g in got if g.frame_id == i)
        assert b"".join(d for _, d in parts) == f
    assert all(g.layer_name == "small" and g.keyframe == (g.frame_id == 0) for _, _, g in got)


# --- Requests and state ---------------------------------------------------------------


def test_offer_file_returns_an_id_or_raises_request_error(make_client) -> None:
    alice = make_client("Alice")
    file_id = alice.offer_file("Report.pdf", 1234)
    assert isinstance(file_id, str) and file_id
    with pytest.raises(RequestError) as info:
        alice.offer_file("huge.bin", 10**15)
    assert info.value.code == "file_too_large"
    with pytest.raises(RequestError) as info:
        alice.offer_file("///", 10)
    assert info.value.code == "bad_name"
    # Answers keep matching their offers after errors.
    assert alice.offer_file("Second.txt", 5) not in ("", file_id)


def test_media_flags_reach_the_others(make_client) -> None:
    alice = make_client("Alice", audio=False, video=True)
    bob = make_client("Bob")
    # Alice's first `media` may be handled after Bob's hello: then it arrives as an update.
    wait_for(lambda: bob.participants[alice.my_id]["audio"] is False, what="Alice muted")
    rb = Recorder(bob, "participant_updated")
    alice.set_media(audio=True, video=False)
    want = (alice.my_id, True, False)
    wait_for(
        lambda: any(
            (u["id"], u["audio"], u["video"]) == want for (u,) in rb.get("participant_updated")
        ),
        what="participant_updated for Alice",
    )
    p = bob.participants[alice.my_id]
    assert (p["audio"], p["video"]) == (True, False)


def test_state_is_updated_before_the_event_fires(make_client) -> None:
    alice = make_client("Alice")
    seen: list[tuple] = []
    alice.on("participant_joined", lambda p: seen.append(("joined", p["id"] in alice.participants)))
    alice.on("chat", lambda m: seen.append(("chat", m["seq"] == alice.chat.last_seq)))
    alice.on("participant_left", lambda pid, n: seen.append(("left", pid in alice.participants)))
    bob = make_client("Bob")
    bob.send_chat("hello")
    wait_for(lambda: len(seen) >= 2, what="joined and chat events")
    bob.leave()
    wait_for(lambda: len(seen) >= 3, what="left event")
    assert seen == [("joined", True), ("chat", True), ("left", False)]


def test_datagrams_not_from_the_server_are_dropped(make_client) -> None:
    import utils

    alice = make_client("Alice")
    assert alice.wait_udp_registered(WAIT_S)
    ra = Recorder(alice, "audio")
    frame = bytes(2 * alice.media_params["audio"]["frame_samples"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
        intruder.bind(("127.0.0.1", 0))
        for seq in range(5):
            dg = utils.pack_media(utils.KIND_AUDIO, 0, seq, 0, frame)
            intruder.sendto(dg, alice._udp.getsockname())
        intruder.sendto(b"garbage", alice._udp.getsockname())
    wait_for(lambda: alice.udp_dropped >= 6, what="6 dropped datagrams")
    assert ra.get("audio") == []


def test_unknown_event_names_are_refused(make_client) -> None:
    alice = make_client("Alice")
    with pytest.raises(ValueError):
        alice.on("chat_message", print)


def test_leave_from_inside_a_callback(make_client) -> None:
    alice, bob = make_client("Alice"), make_client("Bob")
    left = threading.Event()

    def on_chat(msg: dict) -> None:
        alice.leave()  # runs on alice's tcp-receiver thread: must not deadlock
        left.set()

    alice.on("chat", on_chat)
    bob.send_chat("bye Alice")
    assert left.wait(WAIT_S)
    names = {f"{n}-{alice.my_id}" for n in ("tcp-receiver", "udp-receiver", "heartbeat")}
    wait_for(lambda: not names & {t.name for t in threading.enumerate()}, what="threads ended")
    wait_for(lambda: alice.my_id not in bob.participants, what="Alice left at Bob")


# --- Leaving ---------------------------------------------------------------------------


def test_leave_joins_every_thread_and_is_idempotent(make_client) -> None:
    alice, bob = make_client("Alice"), make_client("Bob")
    rb = Recorder(bob, "participant_left")
    ra = Recorder(alice, "disconnected")
    names = {f"{n}-{alice.my_id}" for n in ("tcp-receiver", "udp-receiver", "heartbeat")}
    assert names <= {t.name for t in threading.enumerate()}
    alice.leave()
    alice.leave()
    assert not alice.connected
    assert not names & {t.name for t in threading.enumerate()}
    wait_for(lambda: rb.get("participant_left"), what="participant_left at Bob")
    assert ra.get("disconnected") == []  # leaving on purpose is not a disconnection
    with pytest.raises(ConnectionError):
        alice.send_chat("too late")


def test_server_going_away_fires_disconnected_once(server, make_client) -> None:
    alice = make_client("Alice", config=config.ClientConfig(reconnect_give_up_s=0.0))
    ra = Recorder(alice, "disconnected")
    server.stop()
    wait_for(lambda: ra.get("disconnected"), what="disconnected")
    wait_for(lambda: not alice.connected, what="not connected")
    alice.leave()
    assert len(ra.get("disconnected")) == 1
    names = {f"{n}-{alice.my_id}" for n in ("tcp-receiver", "udp-receiver", "heartbeat")}
    assert not names & {t.name for t in threading.enumerate()}


# --- Program entry -----------------------------------------------------------------------


def test_entry_point_reports_a_missing_front_end(monkeypatch, capsys) -> None:
    import client

    monkeypatch.setitem(sys.modules, "gui", None)  # importing it now raises ImportError
    monkeypatch.setitem(sys.modules, "headless", None)
    assert client.main([]) == 2
    assert "cannot start the gui client" in capsys.readouterr().err
    assert client.main(["--headless", "--name", "x"]) == 2
    assert "cannot start the headless client" in capsys.readouterr().err


def test_entry_point_passes_the_remaining_arguments(monkeypatch) -> None:
    import types

    import client

    seen: list[list[str]] = []
    fake = types.ModuleType("headless")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "headless", fake)
    assert client.main(["--headless", "--name", "Bot"]) == 0
    assert seen == [["--name", "Bot"]]


def test_per_participant_volume_and_mute_for_me_are_applied_by_the_server(make_client) -> None:
    """Loud hears the talker at 200 %, Muted hears nothing of it, Plain at 100 %."""
    talker = make_client("Talker")
    loud, muted, plain = make_client("Loud"), make_client("Muted"), make_client("Plain")
    for c in (talker, loud, muted, plain):
        assert c.wait_udp_registered(WAIT_S)
    pongs = [Recorder(c, "pong") for c in (loud, muted)]
    loud.set_audio_gain(talker.my_id, 200)
    muted.set_audio_gain(talker.my_id, 100, muted=True)
    # The gains travel on TCP: a ping answered after them means the server has them.
    for c in (loud, muted):
        c.ping()
    got: dict[str, list[tuple[int, bytes]]] = {"Loud": [], "Muted": [], "Plain": []}
    for c in (loud, muted, plain):
        c.on("audio", lambda pkt, seq, t, _n=c.username: got[_n].append((seq, pkt)))
    wait_for(lambda: all(r.get("pong") for r in pongs), what="pongs")
    talk_in_real_time(talker, 700.0, 1.2)
    wait_for(lambda: len(got["Plain"]) >= 40, what="the mix at Plain")
    rate = talker.media_params["audio"]["rate"]
    energy = {}
    for name, packets in got.items():
        dec = OpusDecoder()
        pcm = b"".join(dec.decode(p).tobytes() for _, p in sorted(packets)[-30:])
        energy[name] = band_energy(pcm, rate, 700) if pcm else 0.0
    ratio = (energy["Loud"] / energy["Plain"]) ** 0.5  # amplitude ratio
    assert 1.6 < ratio < 2.4, energy
    assert energy["Muted"] < 1e-4 * energy["Plain"], energy


def test_audio_gain_refusals(make_client) -> None:
    a, b = make_client("A"), make_client("B")
    errors = Recorder(a, "error")
    a.set_audio_gain(a.my_id, 50)  # oneself
    a.set_audio_gain(9999, 50)  # nobody
    a._send({"type": "audio_gain", "id": b.my_id, "percent": 201})
    wait_for(lambda: len(errors.get("error")) >= 3, what="three refusals")
    codes = [e[0] for e in errors.get("error")]
    assert codes == ["no_such_participant", "no_such_participant", "bad_message"], codes
    assert a.connected
