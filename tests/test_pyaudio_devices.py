"""The real PyAudio path: speakers and microphone through a PulseAudio null sink.

The test starts its own PulseAudio daemon (private socket, a null sink whose
monitor is the default source), so the microphone hears what the speakers play.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import audio_module as am
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("pulseaudio") is None or shutil.which("pactl") is None,
    reason="PulseAudio is not installed (scripts/bootstrap.sh test installs it)",
)
TONE_HZ = 1000.0


@pytest.fixture
def pulse(tmp_path_factory, monkeypatch) -> Iterator[str]:
    """A private PulseAudio daemon; PULSE_SERVER points this process at it."""
    runtime = tmp_path_factory.mktemp("pulse")
    sock = runtime / "native"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
    daemon = subprocess.Popen(
        [
            *("pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1"),
            "--use-pid-file=no",
            "--load=module-null-sink sink_name=fmtest",
            f"--load=module-native-protocol-unix socket={sock} auth-anonymous=1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for(lambda: Path(sock).exists() or daemon.poll() is not None, 10):
            pytest.fail("PulseAudio did not open its socket within 10 s")
        if daemon.poll() is not None:  # the machine cannot run it (no shm, no dbus...)
            pytest.skip(f"PulseAudio exited at start with status {daemon.returncode}")
        server = f"unix:{sock}"
        for args in (("set-default-sink", "fmtest"), ("set-default-source", "fmtest.monitor")):
            subprocess.run(["pactl", "--server", server, *args], check=True, env=env, timeout=10)
        monkeypatch.setenv("PULSE_SERVER", server)
        yield server
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def test_devices_are_listed(pulse) -> None:
    assert am.list_input_devices(), "no input device through PulseAudio"
    assert am.list_output_devices(), "no output device through PulseAudio"


def test_microphone_hears_what_the_speakers_play(pulse) -> None:
    fmt = am.AudioFormat()
    speakers = am.SpeakerSink(fmt)
    mic = am.MicrophoneSource(fmt)
    heard: list[bytes] = []

    def record() -> None:
        for _ in range(150):
            frame = mic.read()
            if frame:
                heard.append(frame)

    t = np.arange(fmt.frame_samples * 100) / fmt.rate_hz
    tone = (np.sin(2 * np.pi * TONE_HZ * t) * 12000).astype("<i2").tobytes()
    recorder = threading.Thread(target=record, name="test-recorder")
    try:
        recorder.start()
        for i in range(100):
            speakers.write(tone[i * fmt.frame_bytes : (i + 1) * fmt.frame_bytes])
        recorder.join(timeout=20)
    finally:
        speakers.close()
        mic.close()
    assert not recorder.is_alive()
    assert all(len(f) == fmt.frame_bytes for f in heard), "frames of the session's size"
    x = np.frombuffer(b"".join(heard), "<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(len(x), 1 / fmt.rate_hz)
    assert abs(freqs[spectrum.argmax()] - TONE_HZ) < 20
    assert np.sqrt(np.mean(x**2)) > 1000  # the tone, not a faint leak
