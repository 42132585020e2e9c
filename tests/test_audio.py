"""Audio: format conversion, jitter buffer and concealment units; speech through a real server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import audio_module as am
from tests.helpers import wait_for

FMT = am.AudioFormat(48000, 960)
FB = FMT.frame_bytes


def frame(value: int) -> bytes:
    """A frame whose every sample is ``value`` (tells frames apart)."""
    return np.full(FMT.frame_samples, value, "<i2").tobytes()


def value_of(pcm: bytes) -> int:
    return int(np.frombuffer(pcm, "<i2")[0])


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1, width: int = 2):
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(width)
        wf.setframerate(rate)
        wf.writeframes(samples.tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wf:
        assert wf.getnchannels() == 1 and wf.getsampwidth() == 2
        return np.frombuffer(wf.readframes(wf.getnframes()), "<i2"), wf.getframerate()


# --- Conversion, sources, sinks -----------------------------------------------------


def test_wav_source_converts_stereo_8bit_and_44k_to_session_format(tmp_path):
    rate = 44100
    t = np.arange(rate // 2) / rate
    tone = np.sin(2 * np.pi * 300 * t)
    stereo = np.stack([tone, tone], axis=1)
    u8 = np.round(stereo * 100 + 128).astype(np.uint8)
    path = tmp_path / "s.wav"
    write_wav(path, u8, rate, channels=2, width=1)
    src = am.WavFileSource(path, FMT, realtime=False)
    frames = []
    while (f := src.read()) is not None:
        assert len(f) == FB
        frames.append(f)
    x = np.frombuffer(b"".join(frames), "<i2").astype(float)
    assert abs(len(frames) - round(0.5 / FMT.frame_s)) <= 1
    peak_bin = np.argmax(np.abs(np.fft.rfft(x)))
    assert abs(peak_bin * FMT.rate_hz / len(x) - 300) < 5
    assert 100 * 256 * 0.8 < np.max(np.abs(x)) < 100 * 256 * 1.2


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_to_mono_int16_every_wav_sample_width(width):
    x16 = np.array([0, 1000, -1000, 32767, -32768, 256, -256], np.int32)
    if width == 1:
        raw = ((x16 >> 8) + 128).astype(np.uint8).tobytes()
        want = (x16 >> 8) << 8
    elif width == 2:
        raw, want = x16.astype("<i2").tobytes(), x16
    elif width == 3:
        x24 = x16 << 8
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in x24)
        want = x16
    else:
        raw, want = (x16 << 16).astype("<i4").tobytes(), x16
    stereo = am.to_mono_int16(raw + raw, width, 1)
    assert stereo.tolist() == np.concatenate([want, want]).tolist()
    # two identical channels average to the same mono signal
    inter = np.frombuffer(raw, np.uint8).reshape(-1, width)
    both = np.concatenate([inter, inter], axis=1).tobytes()
    assert am.to_mono_int16(both, width, 2).tolist() == want.tolist()
    with pytest.raises(ValueError):
        am.to_mono_int16(raw, 5, 1)


def test_wav_source_loop_and_missing_file(tmp_path):
    path = tmp_path / "short.wav"
    write_wav(path, np.arange(441, dtype="<i2"), 22050)
    src = am.WavFileSource(path, FMT, loop=True, realtime=False)
    assert src.read() == src.read()
    with pytest.raises(am.DeviceError, match="does not exist"):
        am.WavFileSource(tmp_path / "nope.wav", FMT)
    (tmp_path / "bad.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(am.DeviceError, match="not a usable WAV"):
        am.WavFileSource(tmp_path / "bad.wav", FMT)


def test_clock_paced_source_runs_at_real_time():
    src = am.ToneSource(FMT, realtime=True)
    n = 15
    t0 = time.monotonic()
    for _ in range(n):
        src.read()
    elapsed = time.monotonic() - t0
    assert elapsed >= (n - 1) * FMT.frame_s
    assert elapsed < n * FMT.frame_s + 0.25


def test_stream_resampler_matches_whole_signal_resampling():
    x = (np.sin(np.arange(4800) / 7) * 10000).astype(np.int16)
    r = am.StreamResampler(48000, 22050)
    parts = [r.process(x[i : i + 480]) for i in range(0, len(x), 480)]
    streamed = np.concatenate(parts)
    whole = am.resample_linear(x, 48000, 22050)
    n = min(len(streamed), len(whole))
    assert abs(len(streamed) - len(whole)) <= 2
    assert np.max(np.abs(streamed[:n].astype(int) - whole[:n])) <= 2


def test_wav_sink_writes_session_format(tmp_path):
    sink = am.WavFileSink(tmp_path / "o.wav", FMT)
    sink.write(frame(5))
    sink.write(frame(6))
    sink.close()
    data, rate = read_wav(tmp_path / "o.wav")
    assert rate == 48000 and len(data) == 1920 and data[0] == 5 and data[-1] == 6


def test_input_level_scale():
    assert am.input_level(bytes(FB)) == 0
    assert am.input_level(frame(32767)) >= 250
    assert 0 < am.input_level(frame(300)) < 128


def test_missing_devices_are_clear_errors():
    """On this machine PyAudio lists no devices: opening is a message, not a crash."""
    if am.list_input_devices():
        pytest.skip("this machine has a microphone")
    with pytest.raises(am.DeviceError, match="[Nn]o microphone|[Cc]annot open the microphone"):
        am.MicrophoneSource(FMT)
    if not am.list_output_devices():
        with pytest.raises(am.DeviceError, match="[Nn]o speaker|[Cc]annot open the speakers"):
            am.SpeakerSink(FMT)


class FakeStream:
    """A PyAudio stream: reads a 1 kHz sine at its rate, records what is written."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.n = 0
        self.written: list[bytes] = []
        self.closed = False

    def read(self, frames: int, exception_on_overflow: bool = True) -> bytes:
        t = (self.n + np.arange(frames)) / self.rate
        self.n += frames
        return np.round(10000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def stop_stream(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakePyAudioModule:
    """Stands in for the pyaudio module: two devices; the mic only accepts 48 kHz."""

    paInt16 = 8
    DEVICES: ClassVar[list[dict]] = [
        {
            "name": "USB Mic",
            "maxInputChannels": 1,
            "maxOutputChannels": 0,
            "defaultSampleRate": 48000,
        },
        {
            "name": "Speakers",
            "maxInputChannels": 0,
            "maxOutputChannels": 2,
            "defaultSampleRate": 44100,
        },
    ]
    streams: ClassVar[list[FakeStream]] = []

    class PyAudio:
        def get_device_count(self):
            return len(FakePyAudioModule.DEVICES)

        def get_device_info_by_index(self, i):
            return dict(FakePyAudioModule.DEVICES[i], index=i)

        def get_default_input_device_info(self):
            return self.get_device_info_by_index(0)

        def get_default_output_device_info(self):
            return self.get_device_info_by_index(1)

        def open(self, format, channels, rate, input=False, output=False, **kw):
            if input and rate != 48000:
                raise OSError(-9997, "Invalid sample rate")
            stream = FakeStream(rate)
            FakePyAudioModule.streams.append(stream)
            return stream

        def terminate(self):
            pass


def test_microphone_by_name_resampled_from_device_rate(monkeypatch):
    """A device that refuses the session rate is opened at its own and resampled."""
    monkeypatch.setitem(sys.modules, "pyaudio", FakePyAudioModule)
    assert [d["name"] for d in am.list_input_devices()] == ["USB Mic"]
    assert [d["index"] for d in am.list_output_devices()] == [1]
    mic = am.MicrophoneSource(FMT, "usb")  # a unique part of the name
    assert mic.label == "microphone 'USB Mic'"
    x = np.frombuffer(b"".join(mic.read() for _ in range(50)), "<i2").astype(float)
    mic.close()
    assert len(x) == 50 * FMT.frame_samples
    peak_hz = np.argmax(np.abs(np.fft.rfft(x))) * FMT.rate_hz / len(x)
    assert abs(peak_hz - 1000) < 5  # still 1 kHz after 48 kHz -> 22.05 kHz
    with pytest.raises(am.DeviceError, match="No single microphone named 'webcam'"):
        am.MicrophoneSource(FMT, "webcam")
    with pytest.raises(am.DeviceError, match="No microphone with index 1"):
        am.MicrophoneSource(FMT, 1)
    sink = am.SpeakerSink(FMT, "Speakers")
    sink.write(frame(3))
    sink.close()
    assert FakePyAudioModule.streams[-1].written == [frame(3)]


# --- Through a real server ---------------------------------------------------------


def espeak_wav(path: Path, text: str) -> None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (scripts/bootstrap.sh test installs it)")
    subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True, timeout=30)


def best_ncc(reference: np.ndarray, recording: np.ndarray) -> tuple[float, int]:
    """Peak normalised cross-correlation of ``reference`` sliding over ``recording``.

    Computed by FFT; each window of the recording is normalised by its own energy,
    so the value is a cosine similarity in [-1, 1] (1 = the same waveform, scaled).
    """
    ref = reference.astype(np.float64)
    rec = recording.astype(np.float64)
    n, m = len(rec), len(ref)
    if n < m:
        rec = np.concatenate([rec, np.zeros(m - n)])
        n = m
    size = 1 << int(np.ceil(np.log2(n + m)))
    corr = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)[: n - m + 1]
    csum = np.concatenate([[0.0], np.cumsum(rec * rec)])
    win_energy = csum[m:] - csum[: n - m + 1]
    denom = np.sqrt(np.maximum(win_energy, 1e-9) * np.dot(ref, ref))
    ncc = corr / denom
    ncc[win_energy < 1e-3 * np.dot(ref, ref)] = 0.0  # near-silent windows say nothing
    i = int(np.argmax(ncc))
    return float(ncc[i]), i


def segment_nccs(
    reference: np.ndarray, recording: np.ndarray, rate: int, seg_s: float = 0.5
) -> list[float]:
    """Peak NCC of each voiced ``seg_s`` piece of ``reference`` within ``recording``.

    Scoring pieces separately keeps one lost or concealed frame (which shifts or
    damages a few milliseconds) from hiding that everything else arrived intact.
    """
    n = int(seg_s * rate)
    energy = float(np.mean(reference.astype(np.float64) ** 2))
    out = []
    for start in range(0, len(reference) - n + 1, n):
        piece = reference[start : start + n]
        if np.mean(piece.astype(np.float64) ** 2) < 0.1 * energy:
            continue  # a pause in the speech: nothing to recognise
        out.append(best_ncc(piece, recording)[0])
    return out


def test_speech_from_a_is_recorded_by_b_and_not_by_a(make_client, tmp_path):
    """Speech sent by A as a WAV source reaches B's recording; A's own recording lacks it.

    Thresholds: the recording is the speech after Opus -> server decode, mix, Opus
    encode -> decode (two codecs in tandem, band-limited to wideband 8 kHz), so the
    waveform does not arrive exactly: the normalised cross-correlation (NCC) of a
    0.5 s piece of speech with the recording measured 0.82-0.91; the same piece
    against the rest of the utterance (other speech by the same voice) measured
    0.22-0.52, and silence scores 0.
    A frame stretched or concealed on a busy machine damages only the pieces it falls
    in, so the test asks for a median piece NCC above 0.7 and at least 60 % of the
    pieces above 0.6 (scoring the whole utterance at once would let one stretched
    frame in the middle shift half of it out of alignment).
    """
    speech = tmp_path / "speech.wav"
    espeak_wav(
        speech,
        "FusionMeet testing one two three. The quick brown fox jumps over the lazy dog, "
        "and the meeting carries on.",
    )
    a = make_client("Alice", audio=True, video=False)
    b = make_client("Bob", audio=False, video=False)
    assert a.wait_udp_registered(5) and b.wait_udp_registered(5)
    fmt = am.AudioFormat.from_media(a.media_params)
    src = am.WavFileSource(speech, fmt, loop=False)
    reference = src.samples.copy()
    rec_a, rec_b = tmp_path / "a.wav", tmp_path / "b.wav"
    play_a = am.AudioPlayback(a, am.WavFileSink(rec_a, fmt)).start()
    play_b = am.AudioPlayback(b, am.WavFileSink(rec_b, fmt)).start()
    ended = threading.Event()
    cap = am.AudioCapture(a, src, on_end=lambda reason: ended.set()).start()
    duration = len(reference) / fmt.rate_hz
    try:
        assert ended.wait(duration + 10), "the source never ended"
        # Let the tail (server tick + jitter buffer) reach B's recording.
        n_done = play_b.frames_played + 25
        assert wait_for(lambda: play_b.frames_played >= n_done, 5)
    finally:
        cap.stop()
        play_a.stop()
        play_b.stop()
    got_b, _ = read_wav(rec_b)
    got_a, _ = read_wav(rec_a)
    stats = play_b.stats()
    ncc_b, _ = best_ncc(reference, got_b)
    pieces_b = segment_nccs(reference, got_b, fmt.rate_hz)
    pieces_a = segment_nccs(reference, got_a, fmt.rate_hz)
    detail = f"whole {ncc_b:.3f}, pieces {np.round(pieces_b, 3).tolist()}, jitter {stats}"
    assert len(pieces_b) >= 6
    assert np.median(pieces_b) > 0.7, f"B's recording lacks A's speech: {detail}"
    assert np.mean(np.array(pieces_b) > 0.6) >= 0.6, f"too much of the speech damaged: {detail}"
    assert max(pieces_a) < 0.3, f"A hears itself ({max(pieces_a):.3f}): N-1 mixing broken"
    assert np.max(np.abs(got_a)) < 100, "A's recording is not silent"
    assert stats["played"] >= 0.9 * len(reference) / fmt.frame_samples, detail


def test_mute_stops_sending_but_keeps_the_meter(make_client):
    a = make_client("Alice", audio=True, video=False)
    b = make_client("Bob", audio=False, video=False)
    assert a.wait_udp_registered(5) and b.wait_udp_registered(5)
    fmt = am.AudioFormat.from_media(a.media_params)
    cap = am.AudioCapture(a, am.ToneSource(fmt, amplitude=0.5)).start()
    try:
        assert wait_for(lambda: b.audio_frames_received >= 10, 5), "B hears nothing"
        assert cap.level > 200  # a -6 dBFS tone on the 0-255 meter
        cap.set_muted(True)
        sent = cap.frames_sent
        # The server stops sending B a mix shortly after the last frame (its hangover).
        assert wait_for(lambda: cap.frames_read >= sent + 50, 5)
        assert cap.frames_sent == sent, "muted capture kept sending"
        heard = b.audio_frames_received
        assert wait_for(lambda: cap.frames_read >= sent + 75, 5)
        assert b.audio_frames_received == heard, "B still receives audio while A is muted"
        assert cap.level > 200  # the meter still moves while muted
        cap.set_muted(False)
        assert wait_for(lambda: b.audio_frames_received > heard + 10, 5)
    finally:
        cap.stop()
    assert not cap.running


class _SendsPcm:
    """A client stand-in that records what AudioCapture sends and AudioPlayback gets."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.handlers: dict[str, list] = {}

    def send_audio(self, pcm: bytes) -> bool:
        self.sent.append(pcm)
        return True

    def on(self, event: str, fn) -> None:
        self.handlers.setdefault(event, []).append(fn)

    def off(self, event: str, fn) -> None:
        self.handlers.get(event, []).remove(fn)


class _SpyVoice:
    def __init__(self) -> None:
        self.played: list[bytes] = []

    def playback(self, pcm: bytes) -> None:
        self.played.append(pcm)

    def capture(self, pcm: bytes) -> bytes:
        return bytes(len(pcm))  # "cleaned" to silence: tells the path was taken


class _ListSink(am.AudioSink):
    paced = False

    def __init__(self) -> None:
        self.fmt = FMT
        self.frames: list[bytes] = []

    def write(self, pcm: bytes) -> None:
        self.frames.append(pcm)


def test_capture_sends_the_processed_frame_and_playback_feeds_the_canceller():
    client = _SendsPcm()
    voice = _SpyVoice()
    src = am.ToneSource(FMT, realtime=False)
    cap = am.AudioCapture(client, src, voice=voice).start()
    assert wait_for(lambda: len(client.sent) >= 3, 5)
    cap.stop()
    assert all(not any(p) for p in client.sent)  # what was sent is voice.capture's output
    sink = _ListSink()
    play = am.AudioPlayback(client, sink, voice=voice)
    play.start()
    assert wait_for(lambda: len(sink.frames) >= 5, 5)
    play.stop()
    n = len(sink.frames)
    assert voice.played[:n] == sink.frames[: len(voice.played[:n])]  # the exact frames


def test_mic_test_records_then_plays_back_and_the_chime_fits_frames():
    src = am.ToneSource(FMT, realtime=False)
    sink = _ListSink()
    test = am.MicTest(src, sink, seconds=0.2).start()
    assert wait_for(lambda: not test.running, 5)
    assert test.state == "idle"
    assert len(test.recorded) == 10 and sink.frames == test.recorded
    frames_ = am.chime(FMT)
    assert all(len(f) == FMT.frame_bytes for f in frames_)
    peak = max(int(np.abs(np.frombuffer(f, "<i2")).max()) for f in frames_)
    assert 3000 < peak <= 32767
