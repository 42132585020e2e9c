"""The Opus codec layer: round trip, DTX, FEC against concealment, bitrate, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

import audio_codec
import config
from tests.signals import FRAME, best_lag, frames, snr_db, tone, voice

pytestmark = pytest.mark.skipif(
    not audio_codec.opus_available(), reason="libopus is not installed (apt install libopus0)"
)


def encode_all(x: np.ndarray, **kwargs) -> list[bytes]:
    enc = audio_codec.OpusEncoder(**kwargs)
    return [enc.encode(f) for f in frames(x)]


def test_encoder_settings_are_the_configured_ones():
    enc = audio_codec.OpusEncoder()
    assert enc.bitrate_bps == config.OPUS_BITRATE_BPS
    assert config.OPUS_MIN_BITRATE_BPS <= enc.bitrate_bps <= config.OPUS_MAX_BITRATE_BPS
    assert enc.fec and enc.dtx
    assert enc.frame_samples == config.OPUS_FRAME_SAMPLES == 960
    enc.set_bitrate(10**6)
    assert enc.bitrate_bps == config.OPUS_MAX_BITRATE_BPS


def test_tone_survives_encode_decode():
    x = tone(1.0, 440.0)
    dec = audio_codec.OpusDecoder()
    y = np.concatenate([dec.decode(p) for p in encode_all(x)])
    assert len(y) == len(x)
    lag = best_lag(x[FRAME:], y[FRAME:], 600)  # the codec's look-ahead delays the output
    ref, out = x[FRAME : len(x) - lag], y[FRAME + lag :]
    assert np.corrcoef(ref, out)[0, 1] > 0.99
    assert snr_db(ref, out) > 15


def test_dtx_makes_silence_almost_free():
    silent = np.zeros(48000 * 5, np.int16)
    packets = encode_all(silent)
    kbps = sum(len(p) for p in packets) * 8 / 5 / 1000
    assert kbps <= 2.0
    # Most silent frames need no packet at all; the few updates are small.
    assert sum(1 for p in packets if p) < len(packets) / 5


def test_first_silent_frame_is_sent_as_a_dtx_marker():
    x = np.concatenate([voice(1.0), np.zeros(48000, np.int16)])
    packets = encode_all(x)
    markers = [i for i, p in enumerate(packets) if audio_codec.is_dtx_packet(p)]
    assert markers, "the talker going quiet is announced"
    first = markers[0]
    assert all(packets[first - 5 : first])  # speech (and its tail) before it
    assert not any(packets[first + 1 : first + 10])  # then nothing for a while
    assert audio_codec.OpusDecoder().is_dtx(packets[first])


def test_speech_bitrate_within_limit():
    packets = encode_all(voice(5.0))
    kbps = sum(len(p) for p in packets) * 8 / 5 / 1000
    assert 12 <= kbps <= 40
    assert all(packets), "voiced frames are never DTX"


def test_fec_recovers_a_lost_frame_better_than_concealment():
    x = voice(4.0, seed=2)
    packets = encode_all(x, expected_loss_percent=5)  # as when told a 5 % loss
    assert audio_codec.has_fec(packets[20])
    full = audio_codec.OpusDecoder()
    reference = [full.decode(p) for p in packets]
    fec_snr, plc_snr = [], []
    for lost in range(10, len(packets) - 2, 17):
        with_fec, with_plc = audio_codec.OpusDecoder(), audio_codec.OpusDecoder()
        for i in range(lost):
            with_fec.decode(packets[i])
            with_plc.decode(packets[i])
        fec_snr.append(snr_db(reference[lost], with_fec.decode_fec(packets[lost + 1])))
        plc_snr.append(snr_db(reference[lost], with_plc.conceal()))
    assert np.median(fec_snr) > np.median(plc_snr) + 3
    assert np.median(fec_snr) > 3


def test_conceal_keeps_the_frame_size_and_fades():
    dec = audio_codec.OpusDecoder()
    for p in encode_all(voice(0.4)):
        dec.decode(p)
    energies = []
    for _ in range(10):
        out = dec.conceal()
        assert out.dtype == np.int16 and len(out) == FRAME
        energies.append(float(np.mean(out.astype(np.float64) ** 2)))
    assert energies[-1] < energies[0]
    assert dec.concealed == 10


def test_empty_packet_is_concealment_and_bad_input_is_codec_error():
    dec = audio_codec.OpusDecoder()
    assert len(dec.decode(b"")) == FRAME
    with pytest.raises(audio_codec.CodecError):
        dec.decode(b"\xff" * (config.OPUS_MAX_PACKET_BYTES + 1))
    with pytest.raises(audio_codec.CodecError):
        audio_codec.OpusEncoder().encode(b"\x00" * 10)


@pytest.mark.parametrize("packet", [b"\x03", b"\x0b\xff", b"\xfc" + b"\xff" * 3])
def test_hostile_packets_never_crash(packet):
    dec = audio_codec.OpusDecoder()
    try:
        out = dec.decode(packet)
    except audio_codec.CodecError:
        return
    assert len(out) == FRAME


def test_encode_and_decode_are_fast():
    x = voice(2.0)
    enc, dec = audio_codec.OpusEncoder(), audio_codec.OpusDecoder()
    enc_s, dec_s = [], []
    for f in frames(x):
        t0 = time.perf_counter()
        p = enc.encode(f)
        t1 = time.perf_counter()
        dec.decode(p)
        enc_s.append(t1 - t0)
        dec_s.append(time.perf_counter() - t1)
    # Generous bounds for a shared 2-core machine; the typical figures are ~0.3 / ~0.05 ms.
    assert np.median(enc_s) < 0.005 and np.median(dec_s) < 0.002


def test_missing_library_is_codec_unavailable(monkeypatch):
    monkeypatch.setattr(audio_codec, "_opuslib", None)
    monkeypatch.setenv(config.OPUS_LIBRARY_ENV, "/nonexistent/libopus.so.0")
    import sys

    for name in [m for m in sys.modules if m == "opuslib" or m.startswith("opuslib.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(audio_codec.CodecUnavailable, match="Opus library"):
        audio_codec.OpusEncoder()
    assert not audio_codec.opus_available()
