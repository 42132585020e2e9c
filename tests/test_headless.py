"""The headless participant (``client.py --headless``) as a real process against a real server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

import audio_module as am
import config
import headless
import names
import security
from tests.helpers import wait_for
from tests.test_audio import espeak_wav, segment_nccs

ROOT = Path(__file__).resolve().parent.parent


def run_headless(server, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "client.py"),
            "--headless",
            "--server",
            f"127.0.0.1:{server.tcp_port}",
            "--fingerprint",
            security.short_fingerprint(server.fingerprint),
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wf:
        return np.frombuffer(wf.readframes(wf.getnframes()), "<i2")


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("10.0.0.5", "10.0.0.5", 5000),
        ("server.lan:6000", "server.lan", 6000),
        ("[::1]:7000", "::1", 7000),
        ("::1", "::1", 5000),
    ],
)
def test_parse_server(text, host, port):
    assert headless.parse_server(text) == (host, port)


@pytest.mark.parametrize("text", ["", ":5000", "host:0", "host:99999", "host:x"])
def test_parse_server_rejects(text):
    with pytest.raises(ValueError):
        headless.parse_server(text)


def test_default_devices_missing_participant_stays_for_chat(server, make_client):
    """Asked for the default mic, speakers and camera on a machine with none: clear
    messages, microphone and camera reported off, and chat still works."""
    if am.list_input_devices() or am.list_output_devices():
        pytest.skip("this machine has audio devices")
    watcher = make_client("Watcher", audio=False, video=False)
    joined = threading.Event()
    updates: list[dict] = []
    chats: list[str] = []
    watcher.on("participant_joined", lambda p: joined.set())
    watcher.on("participant_updated", lambda p: updates.append(dict(p)))
    watcher.on("chat", lambda m: chats.append(m["message"]))
    proc = run_headless(
        server,
        *("--name", "Nodevices", "--session", "Room"),
        *("--audio", "mic", "--video", "camera", "--speakers"),
        *("--chat", "hello without devices", "--duration", "3"),
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Microphone unavailable" in err and "microphone off" in err
    assert "Video unavailable: No camera at index 0" in err and "camera off" in err
    assert "No sound output" in err
    assert joined.is_set()
    assert "hello without devices" in chats
    mine = [u for u in updates if u["username"] == "Nodevices"]
    assert mine and mine[-1]["audio"] is False and mine[-1]["video"] is False


def test_join_refused_exits_2_with_message(server, make_client):
    make_client("Owner", session="Locked", password="secret", audio=False, video=False)  # noqa: S106
    proc = run_headless(
        server, "--name", "Guest", "--session", "Locked", "--password", "wrong", "--duration", "1"
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "could not join" in err and "wrong_password" in err


NAME_ARGS = ("--name", "A", "--session", "S")


def test_unreachable_server_exits_2():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "headless.py"), "--server", "127.0.0.1:1", *NAME_ARGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "could not join" in proc.stderr


def test_sigterm_leaves_cleanly(server, make_client):
    watcher = make_client("Watcher", audio=False, video=False)
    joined, left = threading.Event(), threading.Event()
    watcher.on("participant_joined", lambda p: joined.set())
    watcher.on("participant_left", lambda pid, name: left.set())
    proc = run_headless(server, "--name", "Temp", "--session", "Room", "--video", "pattern")
    try:
        assert joined.wait(15), "the headless participant never joined"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "left the session" in err
    assert left.wait(5)


def test_headless_speech_recorded_by_another_headless(server, tmp_path):
    """Two processes: A sends speech from a WAV, B records the mix; B's recording holds
    the speech, A's own recording does not (thresholds justified in test_audio)."""
    speech = tmp_path / "speech.wav"
    espeak_wav(speech, "Hello from the headless participant.")
    rec_a, rec_b = tmp_path / "a.wav", tmp_path / "b.wav"
    duration = len(read_wav(speech)) / 22050 + 3.0
    b = run_headless(
        server,
        *("--name", "B", "--session", "Talk", "--record", str(rec_b)),
        *("--duration", f"{duration + 2:.1f}", "--stats", str(tmp_path / "b.json")),
    )
    # B's join must come first so that it hears A from the start.
    assert wait_for(lambda: server_has(server, "Talk", 1), 15)
    a = run_headless(
        server,
        *("--name", "A", "--session", "Talk", "--audio", str(speech), "--record", str(rec_a)),
        *("--duration", f"{duration:.1f}", "--stats", str(tmp_path / "a.json")),
    )
    _, err_a = a.communicate(timeout=60)
    _, err_b = b.communicate(timeout=60)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    fmt = am.AudioFormat()
    reference = am.WavFileSource(speech, fmt, realtime=False).samples
    pieces_b = segment_nccs(reference, read_wav(rec_b), fmt.rate_hz)
    pieces_a = segment_nccs(reference, read_wav(rec_a), fmt.rate_hz)
    # Two Opus codecs in tandem are not waveform-exact: pieces measured 0.82-0.91.
    assert np.median(pieces_b) > 0.7, f"B did not record A's speech: {pieces_b}"
    assert max(pieces_a) < 0.3, f"A heard itself: {pieces_a}"
    # Codec statistics in --stats: what B's jitter buffer did, A's Opus bit rate.
    stats_b = json.loads((tmp_path / "b.json").read_text("utf-8"))
    stats_a = json.loads((tmp_path / "a.json").read_text("utf-8"))
    jb = stats_b["jitter"]
    for key in ("fec_used", "concealed", "expanded", "target_delay_ms", "buffer_delay_ms"):
        assert key in jb, jb
    assert jb["decoded"] > 0.8 * stats_a["audio_frames_sent"] - 50, (jb, stats_a)
    assert 0 < stats_a["audio_kbps"] <= 40, stats_a
    assert stats_a["audio_packets_sent"] <= stats_a["audio_frames_sent"]


def server_has(server, session: str, n: int) -> bool:
    from client import ConferenceClient

    sessions = ConferenceClient.list_sessions(
        "127.0.0.1", server.tcp_port, 2.0, expected_fingerprint=server.fingerprint
    )
    return any(s["name"] == session and s["participants"] >= n for s in sessions)


def test_headless_presents_an_image(server, make_client, tmp_path):
    import cv2

    from screen_sharing_module import ScreenReceiver

    img = np.zeros((300, 400, 3), np.uint8)
    img[:, :200] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "slide.png"), img)
    watcher = make_client("Watcher", audio=False, video=False)
    receiver = ScreenReceiver(watcher)
    proc = run_headless(
        server,
        *("--name", "Presenter", "--session", "Room"),
        *("--present", str(tmp_path / "slide.png"), "--duration", "3"),
    )
    try:
        assert wait_for(lambda: receiver.latest() is not None, 15), "no screen frame arrived"
        got = receiver.latest()
        assert got.shape == (300, 400, 3)
        assert got[150, 100, 2] > 200 and got[150, 300].max() < 40
        assert watcher.presenter is not None
    finally:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert wait_for(lambda: watcher.presenter is None, 5)


def test_headless_comes_back_after_a_server_restart(server_config):
    """server_shutdown then a restart on the same ports: the process stays and rejoins."""
    from dataclasses import replace

    from server import ConferenceServer

    first = ConferenceServer(server_config)
    first.start()
    same_ports = replace(server_config, tcp_port=first.tcp_port, udp_port=first.udp_port)
    proc = run_headless(first, "--name", "Hl", "--session", "Room", "--video", "none")
    second = None
    try:
        wait_for(lambda: server_has(first, "Room", 1), timeout=20, what="headless joined")
        first.stop()
        second = ConferenceServer(same_ports)
        second.start()
        wait_for(lambda: server_has(second, "Room", 1), timeout=20, what="headless back")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        first.stop()
        if second is not None:
            second.stop()
    assert proc.returncode == 0, err
    assert "reconnecting" in err and "reconnected: joined 'Room' again" in err, err


def test_headless_gives_up_with_exit_1_when_the_server_stays_away(server_config):
    from server import ConferenceServer

    srv = ConferenceServer(server_config)
    srv.start()
    proc = run_headless(srv, "--name", "Hl", "--session", "Room", "--reconnect-for", "1.5")
    try:
        wait_for(lambda: server_has(srv, "Room", 1), timeout=20, what="headless joined")
        srv.stop()
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.stop()
    assert proc.returncode == 1, err
    assert "connection lost: could not reconnect" in err, err


def test_meeting_controls_can_be_scripted(server, make_client):
    """A headless host locks, lets everyone in, mutes Bob and removes Carol; a headless
    participant raises a hand and reacts (issue 14)."""
    from client import JoinError
    from utils import Err

    host = run_headless(
        server,
        *("--name", "Host", "--session", "Room", "--audio", "none", "--video", "none"),
        *("--lock", "--admit", "all", "--mute", "Bob", "--remove", "Carol"),
        *("--duration", "20"),
    )
    try:
        wait_for(
            lambda: server.list_sessions() and server.list_sessions()[0]["lobby"],
            timeout=15,
            what="the headless host locked the meeting",
        )
        from client import ConferenceClient

        muted: list[tuple] = []
        bob = ConferenceClient(
            "127.0.0.1", server.tcp_port, expected_fingerprint=server.fingerprint
        )
        bob.on("mute_requested", lambda *a: muted.append(a))  # before joining: no race
        bob.connect("Bob", "Room", audio=True, video=False)  # waits, then is let in
        wait_for(lambda: muted, what="Bob asked to mute")
        assert muted[0][0] == "Host" and bob.media_on[0] is False
        carol = make_client("Carol", audio=False, video=False)
        wait_for(lambda: not carol.connected, what="Carol removed")
        with pytest.raises(JoinError) as info:
            make_client("Carol")
        assert info.value.code == Err.REMOVED
        hand = run_headless(
            server,
            *("--name", "Hand", "--session", "Room", "--audio", "none", "--video", "none"),
            *("--raise-hand", "--react", config.MEETING_REACTIONS[0], "--duration", "3"),
        )
        reactions: list[tuple] = []
        bob.on("reaction", lambda *a: reactions.append(a))
        wait_for(lambda: reactions, timeout=15, what="Hand's reaction")
        meeting = server.sessions.sessions[names.name_key("room")].meeting
        wait_for(lambda: len(meeting.hands) == 1, what="Hand's hand")
        _out, err = hand.communicate(timeout=30)
        assert hand.returncode == 0, err
    finally:
        host.terminate()
        _out, err = host.communicate(timeout=30)
        if "bob" in locals():
            bob.leave()
    assert "could not join" not in err


def test_headless_without_a_fingerprint_refuses_an_unknown_server(server, tmp_path):
    """Neither --fingerprint nor --trust-first-use: a clear refusal naming the short fingerprint;
    a wrong --fingerprint is refused too; --trust-first-use pins it for the next run."""
    known = tmp_path / "known.json"
    short = security.short_fingerprint(server.fingerprint)

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                *(sys.executable, str(ROOT / "client.py"), "--headless"),
                *("--server", f"127.0.0.1:{server.tcp_port}", "--known-servers", str(known)),
                *("--name", "T", "--session", "Room", "--duration", "0", *extra),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    res = run()
    assert res.returncode != 0 and "fingerprint_unknown" in res.stderr
    assert f"--fingerprint {short}" in res.stderr
    wrong = "0" * 32
    res = run("--fingerprint", wrong)
    assert res.returncode != 0 and "fingerprint_mismatch" in res.stderr
    res = run("--trust-first-use")
    assert res.returncode == 0, res.stderr
    res = run()  # remembered now
    assert res.returncode == 0, res.stderr


def test_plan_view_small_large_none_and_limits():
    people = {pid: {"id": pid, "video": pid != 3} for pid in range(1, 40)}
    small = headless.plan_view("small", people)
    assert 3 not in small and set(small.values()) == {"small"}
    assert len(small) == headless.config.SUBSCRIBE_MAX_TILES
    assert sorted(small)[:3] == [1, 2, 4]
    large = headless.plan_view("large", people)
    assert [large[p] for p in (1, 2, 4, 5, 6)] == ["large"] * 4 + ["small"]
    assert headless.plan_view("none", people) == {}


@pytest.mark.parametrize("view, layer", [("small", "small"), ("large", "large"), ("none", None)])
def test_headless_view_subscribes_and_stats_count_per_sender(server, tmp_path, view, layer):
    """A headless viewer subscribes to the camera at the --view layer; --stats counts it."""
    import json

    import video_module as vm
    from client import ConferenceClient

    cam = ConferenceClient("127.0.0.1", server.tcp_port, expected_fingerprint=server.fingerprint)
    cam.connect("Cam", "Room", audio=False, video=True)
    sender = vm.VideoSender(cam, lambda: vm.TestPatternSource("Cam")).start()
    stats = tmp_path / "stats.json"
    try:
        proc = run_headless(
            server,
            *("--name", "Viewer", "--session", "Room", "--view", view),
            *("--stats", str(stats), "--duration", "3"),
        )
        _, err = proc.communicate(timeout=30)
    finally:
        sender.stop()
        cam.leave()
    assert proc.returncode == 0, err
    got = json.loads(stats.read_text("utf-8"))
    per_sender = got["video_received"].get(str(cam.my_id))
    if layer is None:
        assert per_sender is None and got["video_frames_received"] == 0
        return
    assert per_sender["layers"] == [layer]
    assert per_sender["frames"] >= 10 and per_sender["bytes"] > 0
    assert per_sender["keyframes"] >= 1
