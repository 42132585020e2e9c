"""Single-talker forwarding: a lone talker's packets reach listeners byte for byte.

The pure seq numbering (``audio_forward.ListenerStream``) is checked seq by seq; the
mixer by what it hands out: forwarded packets identical to the talker's, no mix for
the listeners they go to, the mix back when a second talker starts, and one strictly
new seq for every packet a listener is sent, in the order it is sent.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

import config
import utils
from audio_codec import OpusEncoder, voice_active
from audio_forward import ListenerStream, seq_delta
from audio_mixer import AudioMixer

N = config.AUDIO_FRAME_SAMPLES
RATE = config.AUDIO_RATE_HZ


def tone(freq: float, k: int, amp: float = 6000.0) -> np.ndarray:
    """A voiced tone in syllables (3 Hz envelope): a steady tone loses the SILK VAD flag."""
    t = (np.arange(N) + k * N) / RATE
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)
    wave = np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(4 * np.pi * freq * t + 1)
    return np.round(amp * env * wave / 1.5).astype("<i2")


# --- the pure numbering --------------------------------------------------------------


def test_mix_seq_counts_every_tick():
    st = ListenerStream()
    assert [st.mix_seq(t) for t in (0, 1, 2, 5)] == [0, 1, 2, 5]


def test_forwarding_continues_right_after_the_last_mix_and_mixing_skips_past_it():
    st = ListenerStream()
    for t in range(10):
        st.mix_seq(t)  # seqs 0..9
    st.forward_from(talker=7, first=1000, tick=10)
    assert [st.forward_seq(s) for s in (1000, 1001, 1003, 1002)] == [10, 11, 13, 12]
    assert st.forward_seq(999) is None  # before where forwarding began: not sent
    assert st.mix_seq(11) == 14  # back to mixing: past every forwarded seq
    assert st.source is None
    assert st.mix_seq(12) == 15


def test_forwarding_after_silence_starts_at_the_current_tick():
    st = ListenerStream()
    st.mix_seq(3)
    st.forward_from(talker=7, first=50, tick=40)
    assert st.forward_seq(50) == 40


def test_forwarding_across_the_talkers_seq_wrap():
    st = ListenerStream()
    st.forward_from(talker=7, first=utils.U32 - 2, tick=100)
    assert [st.forward_seq(s) for s in (utils.U32 - 2, utils.U32 - 1, 0, 1)] == [
        100,
        101,
        102,
        103,
    ]
    assert seq_delta(1, utils.U32 - 1) == 2 and seq_delta(utils.U32 - 1, 1) == -2


# --- voice activity ------------------------------------------------------------------


def test_voice_active_tells_speech_from_dtx_and_comfort_noise():
    enc = OpusEncoder()
    speech = [enc.encode(tone(400, k)) for k in range(10)]
    assert all(voice_active(p) for p in speech[2:])
    quiet = [enc.encode(np.zeros(N, "<i2")) for _ in range(60)]
    sent = [p for p in quiet if p]
    assert any(len(p) <= 2 for p in sent)  # the DTX marker
    assert any(len(p) > 2 for p in sent[3:])  # comfort-noise updates
    assert not any(voice_active(p) for p in sent[-5:])
    assert not voice_active(b"") and not voice_active(b"\x48")


# --- the mixer -----------------------------------------------------------------------


class Call:
    """A mixer with participants; talkers send tones; what every listener is sent."""

    def __init__(self, pids: list[int], known_clean: bool = True, **kw) -> None:
        self.m = AudioMixer(**kw)
        for pid in pids:
            self.m.add(pid)
            if known_clean:  # as if every leg had been measured loss-free (test_audio_loss)
                sender = self.m._senders[pid]
                sender.up.known = sender.down.known = True
                sender.repeats = False  # ...so nothing is repeated any more
                sender.repeat.set_on(False)
        self.enc = {pid: OpusEncoder() for pid in pids}
        self.k = 0
        self.sent: dict[int, list[tuple[int, bytes, str]]] = {pid: [] for pid in pids}
        self.talker_packets: dict[int, dict[int, bytes]] = {pid: {} for pid in pids}
        self.played_before: list[int | None] = []  # talker 1's last frame mixed, each step
        self.step_of: dict[tuple[int, int], int] = {}  # (listener, seq) -> step forwarded

    def step(self, talkers: set[int], freq: dict[int, float] | None = None) -> None:
        freq = freq or {}
        self.played_before.append(self.m._senders[1].jb.last_played)
        for pid, enc in self.enc.items():
            pcm = tone(freq.get(pid, 300 + 200 * pid), self.k) if pid in talkers else None
            packet = enc.encode(pcm if pcm is not None else np.zeros(N, "<i2"))
            if packet:
                self.talker_packets[pid][self.k] = packet
                self.m.push(pid, self.k, packet, 20.0 * self.k)
                for listener, seq, p in self.m.take_forwards():
                    self.sent[listener].append((seq, p, "forward"))
                    self.step_of[listener, seq] = self.k
        r = self.m.tick()
        for listener, packet in r.packets.items():
            self.sent[listener].append((r.seqs[listener], packet, "mix"))
        self.k += 1


def strictly_increasing(seqs: list[int]) -> bool:
    return all(b > a for a, b in pairwise(seqs))


def test_a_lone_talker_s_packets_are_forwarded_byte_for_byte():
    call = Call([1, 2, 3])
    for _ in range(30):
        call.step({1})
    for listener in (2, 3):
        sent = call.sent[listener]
        assert sent and all(how == "forward" for _, _, how in sent)
        talker = set(call.talker_packets[1].values())
        assert all(p in talker for _, p, _ in sent)  # the talker's own bytes
        assert len(sent) == len(call.talker_packets[1])  # every one of them
        assert strictly_increasing([s for s, _, _ in sent])
    assert all(how == "mix" for _, _, how in call.sent[1])  # never its own voice back
    assert call.m.forwarded == 2 * len(call.talker_packets[1])


def test_a_second_talker_brings_the_mix_back_with_seqs_still_increasing():
    call = Call([1, 2, 3])
    for _ in range(20):
        call.step({1})
    forwarded = len(call.sent[3])
    for _ in range(20):
        call.step({1, 2})
    after = call.sent[3][forwarded:]
    assert after and after[-1][2] == "mix"
    assert sum(how == "forward" for _, _, how in after) <= 1  # at most the one in flight
    assert call.m.lone_talker() is None
    seqs = [s for s, _, _ in call.sent[3]]
    assert strictly_increasing(seqs)
    # The listener's seqs keep the 20 ms timeline: no jump at the switch.
    assert max(b - a for a, b in pairwise(seqs)) <= 2


def test_back_to_forwarding_when_the_second_talker_stops():
    call = Call([1, 2, 3])
    for _ in range(10):
        call.step({1, 2})
    for _ in range(config.MIXER_TALK_HANGOVER_FRAMES + 30):
        call.step({1})
    assert call.m.lone_talker() == 1
    tail = call.sent[3][-10:]
    assert all(how == "forward" for _, _, how in tail)
    seqs = [s for s, _, _ in call.sent[3]]
    assert strictly_increasing(seqs)


def test_the_switch_to_forwarding_continues_where_the_mix_left_the_talker():
    call = Call([1, 2, 3])
    for _ in range(10):
        call.step({1, 2})
    for _ in range(config.MIXER_TALK_HANGOVER_FRAMES + 5):
        call.step({1})
    sent = call.sent[3]
    i = next(i for i in range(1, len(sent)) if sent[i][2] == "forward" and sent[i - 1][2] == "mix")
    last_mix_seq, first_fwd_seq = sent[i - 1][0], sent[i][0]
    assert first_fwd_seq == last_mix_seq + 1
    # That first forwarded packet is talker 1's frame right after the last one mixed.
    talker_seq = next(k for k, p in call.talker_packets[1].items() if p == sent[i][1])
    assert talker_seq == call.played_before[call.step_of[3, first_fwd_seq]] + 1
    assert all(b == a + 1 for a, b in pairwise(s for s, _, _ in sent[i:]))


def test_a_listener_with_a_gain_for_the_talker_gets_a_mix():
    call = Call([1, 2, 3])
    call.m.set_gain(3, 1, 0.5)
    for _ in range(20):
        call.step({1})
    assert call.sent[3] and all(how == "mix" for _, _, how in call.sent[3])
    assert call.sent[2] and all(how == "forward" for _, _, how in call.sent[2])


def test_comfort_noise_from_silent_participants_does_not_stop_forwarding():
    call = Call([1, 2, 3, 4])
    for _ in range(80):  # 2, 3 and 4 are silent: DTX markers and comfort-noise updates
        call.step({1})
    assert call.m.lone_talker() == 1
    assert all(how == "forward" for _, _, how in call.sent[2][5:])


def test_without_forwarding_everyone_gets_the_mix():
    call = Call([1, 2, 3], forward=False)
    for _ in range(20):
        call.step({1})
    assert call.m.forwarded == 0
    assert call.sent[2] and all(how == "mix" for _, _, how in call.sent[2])


def test_the_everyone_mix_is_still_made_while_forwarding():
    m = AudioMixer(hangover_frames=1)
    for pid in (1, 2):
        m.add(pid)
        m._senders[pid].up.known = m._senders[pid].down.known = True
    enc = OpusEncoder()
    everyone = []
    for k in range(20):
        m.push(1, k, enc.encode(tone(400, k)), 20.0 * k)
        m.take_forwards()
        everyone.append(m.tick().everyone)
    assert m.forwarded > 0 and everyone[-1] is not None


def test_only_one_mono_20ms_frame_is_forwarded():
    from audio_codec import is_one_20ms_mono_frame

    enc = OpusEncoder()
    assert all(is_one_20ms_mono_frame(enc.encode(tone(400, k))) for k in range(5))
    silk_20, silk_40, celt_20 = 1 << 3, 2 << 3, 31 << 3
    assert is_one_20ms_mono_frame(bytes([silk_20, 0x80]))
    assert is_one_20ms_mono_frame(bytes([celt_20, 0x80]))
    assert not is_one_20ms_mono_frame(bytes([silk_40, 0x80]))  # 40 ms
    assert not is_one_20ms_mono_frame(bytes([silk_20 | 4, 0x80]))  # stereo
    assert not is_one_20ms_mono_frame(bytes([silk_20 | 1, 0x80]))  # two frames
    assert not is_one_20ms_mono_frame(b"")
    call = Call([1, 2])
    call.m.push(1, 0, bytes([silk_40, 0x80, 1, 2, 3]), 0.0)
    assert call.m.take_forwards() == []
