"""The server's audio mixing: a pure mix plan of arrays, and each session's Opus mixer.

``plan_mixes`` is a pure function of arrays (no codec, no clock, no threads): the
talkers' decoded frames in, one mix per *distinct* thing a listener can hear out:
one shared mix of every talker for the listeners who are not talking, one
``total - own`` per talker, and a mix of its own for each listener with custom
gains (per-participant volume or mute-for-me). K talkers make K+1 mixes however
many listen.

``AudioMixer`` wraps it for one session: per sender an adaptive jitter buffer over
an Opus decoder (late and reordered packets put in place, FEC for a lost frame
whose successor is there, concealment otherwise), and one Opus encoder per mix, so
each mix is encoded once per tick and its packet sent to every listener of it.
It has no clock either: the caller passes arrival times and ticks every 20 ms.

While exactly one participant talks (by the voice-activity flag of its packets, with
a hangover), its packets go to every listener who has no custom gain for it
unchanged, as they arrive (``take_forwards``), and those listeners get no mix; a
second talker brings the mix back (``audio_forward``). Every sender is still decoded
each tick, so levels and the everyone-mix (``MixResult.everyone``) never change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

import audio_repeat
import config
import utils
from audio_codec import OpusDecoder, OpusEncoder, is_one_20ms_mono_frame, voice_active
from audio_forward import ListenerStream
from audio_loss import LossMeter, combined, expected_loss_percent
from jitter_buffer import AdaptiveJitterBuffer

_INT16_MIN = -32768
_INT16_MAX = 32767

SHARED = "shared"  # key of the mix of every talker
OWN = "own"  # ("own", talker): every talker but that one
CUSTOM = "custom"  # ("custom", listener): that listener's gains applied


@dataclass
class MixPlan:
    """Each distinct mix (int16) and which one every listener hears."""

    mixes: dict[object, np.ndarray] = field(default_factory=dict)
    listens: dict[int, object] = field(default_factory=dict)


def plan_mixes(
    frames: dict[int, np.ndarray],
    listeners: list[int],
    gains: dict[int, dict[int, float]] | None = None,
) -> MixPlan:
    """The K+1 (+ custom) mixes of one tick for ``listeners``, from the talkers' ``frames``.

    ``gains[listener][talker]`` scales a talker for that listener only (0 = muted for
    me, 1 = unchanged, up to 2); a listener with any gain other than 1 gets a mix of
    its own. Sums are int32, clipped once to int16.
    """
    gains = gains or {}
    plan = MixPlan()
    if not frames:
        return plan
    talkers = list(frames)
    stacked = np.stack([frames[t] for t in talkers]).astype(np.int32)
    total = stacked.sum(axis=0)  # summed once
    shared: np.ndarray | None = None
    for listener in listeners:
        custom = {t: g for t, g in gains.get(listener, {}).items() if g != 1.0 and t in frames}
        if custom:
            acc = np.zeros(total.shape, np.float64)
            for i, t in enumerate(talkers):
                if t != listener:
                    acc += stacked[i] * custom.get(t, 1.0)
            key: object = (CUSTOM, listener)
            plan.mixes[key] = _clip(np.round(acc))
        elif listener in frames:
            key = (OWN, listener)
            if key not in plan.mixes:
                own = stacked[talkers.index(listener)]
                plan.mixes[key] = _clip(total - own)
        else:
            key = SHARED
            if shared is None:
                shared = plan.mixes[SHARED] = _clip(total)
        plan.listens[listener] = key
    return plan


def _clip(samples: np.ndarray) -> np.ndarray:
    """int32/float samples to int16, saturating instead of wrapping around."""
    return np.clip(samples, _INT16_MIN, _INT16_MAX).astype("<i2")


@dataclass
class MixResult:
    """What one tick produced: each listener's Opus packet, and who was heard this tick."""

    packets: dict[int, bytes] = field(default_factory=dict)
    seqs: dict[int, int] = field(default_factory=dict)  # the seq of each listener's packet
    active: set[int] = field(default_factory=set)
    encodes: int = 0  # mixes encoded this tick (K+1 for K talkers, plus custom ones)
    # Every talker summed (int16 PCM bytes): what a recording of the meeting hears; None
    # when nobody talked this tick.
    everyone: bytes | None = None
    # Packets sent again (audio_repeat.py): (listener, seq, packet), after ``packets``.
    repeats: list[tuple[int, int, bytes]] = field(default_factory=list)


class _Sender:
    """One participant's incoming stream: jitter buffer over its own Opus decoder."""

    def __init__(self) -> None:
        self.jb = AdaptiveJitterBuffer(
            OpusDecoder(), min_extra_ms=config.MIXER_JB_MIN_EXTRA_DELAY_MS
        )
        self.peak_rms = 0.0
        self.voice_until = -1  # the last tick it counts as talking (voice packets + hangover)
        self.stream = ListenerStream()  # what it is sent, as a listener
        self.up = LossMeter()  # its stream's loss at the server
        self.jittery = False  # its stream jitters too much to be forwarded
        # Its packets without voice since the last with (a pause: MIXER_ROUTE_PAUSE_FRAMES).
        self.quiet_run = config.MIXER_ROUTE_PAUSE_FRAMES
        # As a listener: whether each talker's path suits forwarding, as last judged
        # while that talker paused (the route changes only between talk spurts).
        self.route: dict[int, bool] = {}
        self.down = LossMeter()  # what it reports losing of what it is sent
        self.counted = audio_repeat.snapshot(self.jb.stats)  # when ``up`` last counted
        self.told: int | None = None  # the expected loss last told to it (percent)
        # It repeats its packets: from its start until it is told a low loss, as it will.
        self.repeats = config.AUDIO_REPEAT_AT_START
        # What it is sent, again while it loses (and from the start, until its leg is known).
        self.repeat = audio_repeat.Repeater(on=config.AUDIO_REPEAT_AT_START)
        # Its seqs forwarded lately: a repeat of one is not forwarded again.
        self.forwarded: deque[int] = deque(maxlen=config.AUDIO_REPEAT_MEMORY_PACKETS)


Forward = tuple[int, int, bytes]  # (listener, seq for that listener, the talker's packet)


class AudioMixer:
    """Opus N-1 mixer of one session: decode each sender, mix K+1 ways, encode each once."""

    def __init__(
        self,
        frame_samples: int = config.AUDIO_FRAME_SAMPLES,
        hangover_frames: int = config.MIXER_HANGOVER_FRAMES,
        forward: bool = config.MIXER_FORWARD_SINGLE_TALKER,
    ) -> None:
        if frame_samples <= 0 or hangover_frames < 0:
            raise ValueError("frame_samples must be > 0, hangover >= 0")
        self.frame_samples = frame_samples
        self.hangover_frames = hangover_frames
        self._senders: dict[int, _Sender] = {}
        # gains[listener][talker], only entries that differ from 1.0
        self._gains: dict[int, dict[int, float]] = {}
        self._encoders: dict[object, OpusEncoder] = {}
        self._hangover: dict[object, int] = {}  # frames each mix keeps going after silence
        self._last: dict[int, object] = {}  # the mix each listener heard last
        self.dropped = 0  # packets the jitter buffers refused (late, duplicate, overflow)
        self.forward = forward
        self._tick = 0  # ticks run so far: the next tick's number
        self._talked: set[int] = set()  # who was in the last tick's mixes
        self._outbox: list[Forward] = []  # forwarded packets not yet taken
        self.forwarded = 0  # packets forwarded (counted once per listener)

    # --- membership ---------------------------------------------------------------

    def add(self, pid: int) -> None:
        """Register a participant (a listener from now on, and a possible talker)."""
        if pid not in self._senders:
            self._senders[pid] = _Sender()

    def remove(self, pid: int) -> None:
        """Forget a participant, its stream, its gains and the gains others gave it."""
        self._senders.pop(pid, None)
        for other in self._senders.values():
            other.route.pop(pid, None)
        self._last.pop(pid, None)
        self._gains.pop(pid, None)
        for g in self._gains.values():
            g.pop(pid, None)
        for key in [k for k in self._encoders if isinstance(k, tuple) and k[1] == pid]:
            self._encoders.pop(key, None)
            self._hangover.pop(key, None)

    @property
    def participants(self) -> list[int]:
        return list(self._senders)

    def __len__(self) -> int:
        return len(self._senders)

    def set_gain(self, listener: int, talker: int, gain: float) -> None:
        """``listener`` hears ``talker`` at ``gain`` (0-2; 1 removes the entry)."""
        if listener not in self._senders or talker not in self._senders:
            return
        mine = self._gains.setdefault(listener, {})
        if gain == 1.0:
            mine.pop(talker, None)
            if not mine:
                del self._gains[listener]
        else:
            mine[talker] = max(0.0, min(2.0, float(gain)))

    def gains(self, listener: int) -> dict[int, float]:
        return dict(self._gains.get(listener, {}))

    def stats(self, pid: int) -> dict[str, float] | None:
        """The jitter-buffer statistics of one sender's stream."""
        s = self._senders.get(pid)
        return None if s is None else s.jb.stats.as_dict()

    # --- input --------------------------------------------------------------------

    def push(self, pid: int, seq: int, packet: bytes, arrival_ms: float) -> bool:
        """Put one Opus packet of ``pid`` in place; False when unknown or refused."""
        s = self._senders.get(pid)
        if s is None:
            return False
        ok = s.jb.put(seq, packet, arrival_ms)
        if not ok:
            self.dropped += 1
        # Too jittery to forward from above the limit, until well below it (hysteresis).
        limit = config.MIXER_FORWARD_MAX_JITTER_MS
        if s.jittery:
            limit *= config.MIXER_FORWARD_JITTER_HYSTERESIS
        s.jittery = s.jb.jitter_ms > limit
        if voice_active(packet):
            s.voice_until = self._tick + config.MIXER_TALK_HANGOVER_FRAMES
            s.quiet_run = 0
        else:
            s.quiet_run += 1
        # The first copy of each seq is forwarded (a repeat only when the first was lost).
        if self.forward and seq not in s.forwarded and is_one_20ms_mono_frame(packet):
            s.forwarded.append(seq)
            self._forward(pid, seq, packet)
        return ok

    def lone_talker(self) -> int | None:
        """The one participant talking now (voice in its last packets), or None."""
        talking = [pid for pid, s in self._senders.items() if s.voice_until >= self._tick]
        return talking[0] if len(talking) == 1 else None

    def _forwarded_to(self, listener: int, talker: int) -> bool:
        """Whether ``talker``'s packets go to ``listener`` as they are (while it talks alone).

        Not to itself, not to a listener with a gain for it; and while the path suits it
        (``_path_suits``), judged again only while the talker pauses: a change between
        forwarding and mixing moves the listener's delay, which costs nothing in a pause
        and an audible seam mid-word.
        """
        if listener == talker or talker not in self._senders:
            return False
        if talker in self._gains.get(listener, {}):
            return False
        route = self._senders[listener].route
        if (
            talker not in route
            or self._senders[talker].quiet_run >= config.MIXER_ROUTE_PAUSE_FRAMES
        ):
            route[talker] = self._path_suits(listener, talker)
        return route[talker]

    def _path_suits(self, listener: int, talker: int) -> bool:
        """The path is fit for forwarding: it loses less than
        ``MIXER_FORWARD_MAX_LOSS_FRACTION`` of its datagrams (a leg not yet measured counts
        as clean: it is repeated meanwhile) from a talker whose leg is not ``jittery``.
        Elsewhere the mix does better: each leg's jitter buffer, FEC and repeats take
        that leg's share."""
        if self._senders[talker].jittery:
            return False
        return self._path_loss(talker, listener) < config.MIXER_FORWARD_MAX_LOSS_FRACTION

    def _path_loss(self, talker: int, listener: int) -> float:
        """The datagram loss of ``talker``'s packets on their way to ``listener``."""
        return combined(self._senders[talker].up.fraction, self._senders[listener].down.fraction)

    # --- loss: receiver-driven expected loss (audio_loss.py) --------------------------

    def report_loss(self, listener: int, decoded: int, lost: int) -> dict[int, int]:
        """A listener's report of the frames it decoded and lost; the encoders follow it.

        Also counts every sender's own stream at the server. Sets each mix encoder's
        expected loss from its listeners', and returns the participants whose encoder
        should now plan for another loss: ``{participant: percent}`` to tell them.
        """
        s = self._senders.get(listener)
        if s is None:
            return {}
        st = s.stream
        if st.source is not None and st.source in self._senders:
            # It heard the talker's packets: its figure is both legs; keep its own leg
            # (of the talker's, what its repeats left).
            talker = self._senders[st.source]
            up = audio_repeat.residual(talker.up.fraction, talker.repeats)
            lost_own = max(0.0, 1.0 - (decoded / max(1, decoded + lost)) / (1.0 - up))
            total = decoded + lost
            lost = round(lost_own * total)
            decoded = total - lost
        s.down.add(decoded, lost)
        if s.down.known:
            s.repeat.set_on(audio_repeat.repeating(100 * s.down.fraction, s.repeat.on))
        for other in self._senders.values():
            now = audio_repeat.snapshot(other.jb.stats)
            other.up.add(*audio_repeat.copy_counts(other.counted, now))
            other.counted = now
        for key, enc in self._encoders.items():
            hearing = [self._senders[pid] for pid, k in self._last.items() if k == key]
            percent = max(
                (audio_repeat.encoder_percent(h.down.fraction, h.repeat.on) for h in hearing),
                default=0,
            )
            enc.set_expected_loss(percent)
        tell: dict[int, int] = {}
        lone = self.lone_talker() if self.forward else None
        for pid, talker in self._senders.items():
            worst = talker.up.fraction
            if pid == lone:  # only a lone talker's packets are forwarded
                for oid, other in self._senders.items():
                    if self._forwarded_to(oid, pid):
                        # Its leg, and what the server's repeats leave of the listener's.
                        down = audio_repeat.residual(other.down.fraction, other.repeat.on)
                        worst = max(worst, combined(talker.up.fraction, down))
            percent = expected_loss_percent(worst)
            if talker.up.known and percent != talker.told:
                talker.told = tell[pid] = percent
                talker.repeats = audio_repeat.repeating(percent, talker.repeats)  # as it will
        return tell

    def _forward(self, pid: int, seq: int, packet: bytes) -> None:
        """Queue ``pid``'s packet for every listener it goes to unchanged (if it talks alone)."""
        if self.lone_talker() != pid:
            return
        jb = self._senders[pid].jb
        for listener, s in self._senders.items():
            if not self._forwarded_to(listener, pid):
                continue
            st = s.stream
            if st.source == pid:
                out = st.forward_seq(seq)
                if out is not None:
                    self._outbox.append((listener, out, packet))
                continue
            # Start: after what the listener heard of pid in a mix (mid-speech), or from
            # the oldest packet waiting (a new talk spurt); the waiting ones go now.
            waiting = jb.waiting()
            played = jb.last_played
            if pid in self._talked and played is not None:
                first = played + 1
            else:
                first = waiting[0][0] if waiting else seq
            st.forward_from(pid, first, self._tick)
            self._last.pop(listener, None)  # no hangover of its old mix
            for wseq, wpacket in waiting or [(seq, packet)]:
                out = st.forward_seq(wseq)
                if out is not None:
                    self._outbox.append((listener, out, wpacket))

    def take_forwards(self) -> list[Forward]:
        """The packets forwarded since the last call: (listener, its seq, packet) each,
        each followed by the listener's previous one again while it repeats."""
        taken, self._outbox = self._outbox, []
        self.forwarded += len(taken)
        out: list[Forward] = []
        for listener, seq, packet in taken:
            s = self._senders.get(listener)
            if s is None:
                continue
            out.extend((listener, q, p) for q, p in s.repeat.send((seq, packet)))
        return out

    # --- output -------------------------------------------------------------------

    def tick(self, now_ms: float | None = None) -> MixResult:
        """Take 20 ms from every sender; encode each distinct mix once; a packet per listener.

        A listener gets nothing while nobody talks (after the hangover); a packet that
        the encoder's DTX leaves empty is not sent either. ``now_ms`` is the clock
        ``push`` is given, at this tick (the senders' buffers play against it).
        """
        frames: dict[int, np.ndarray] = {}
        for pid, s in self._senders.items():
            jb = s.jb
            if not jb.playing and jb.buffer_delay_ms == 0:
                continue  # idle: nothing buffered, nothing to play
            quiet_before = jb.stats.silent + jb.stats.dtx
            frame = jb.get(now_ms)
            if jb.stats.silent + jb.stats.dtx != quiet_before:
                continue  # silence or DTX: not a talker this tick
            frames[pid] = frame
            power = float(np.dot(frame.astype(np.float64), frame.astype(np.float64)))
            rms = (power / self.frame_samples) ** 0.5
            if rms > s.peak_rms:
                s.peak_rms = rms
        result = MixResult(active=set(frames))
        self._talked = set(frames)
        lone = self.lone_talker() if self.forward else None
        listeners = []
        for pid, s in self._senders.items():
            st = s.stream
            if st.source is not None and st.source == lone and self._forwarded_to(pid, lone):
                continue  # it hears the lone talker's own packets: no mix
            listeners.append(pid)
        plan = plan_mixes(frames, listeners, self._gains)
        if frames:
            result.everyone = _clip(
                np.stack(list(frames.values())).astype(np.int32).sum(axis=0)
            ).tobytes()
        silence = np.zeros(self.frame_samples, "<i2")
        packets: dict[object, bytes] = {}
        tick, self._tick = self._tick, self._tick + 1
        for listener in listeners:
            seq = self._senders[listener].stream.mix_seq(tick)  # counts sent or not
            key = plan.listens.get(listener)
            if key is None:  # nobody talks: keep the listener's last mix going a little
                key = self._last_key(listener)
                if key is None or not self._in_hangover(key):
                    continue
                mix = silence
            else:
                mix = plan.mixes[key]
            if key not in packets:
                if key in plan.mixes:
                    self._hangover[key] = self.hangover_frames
                else:
                    self._hangover[key] -= 1
                packets[key] = self._encoder(key).encode(mix)
                result.encodes += 1
            self._last[listener] = key
            if packets[key]:
                result.packets[listener] = packets[key]
                result.seqs[listener] = seq
        for listener in listeners:  # after each packet, the previous one again (repeats)
            rep = self._senders[listener].repeat
            if listener in result.packets:
                again = rep.send((result.seqs[listener], result.packets[listener]))[1:]
            else:
                again = rep.flush()
            result.repeats.extend((listener, q, p) for q, p in again)
        return result

    def _in_hangover(self, key: object) -> bool:
        """A mix keeps going for the hangover, then until its encoder said "quiet" (DTX).

        Without that marker a listener's jitter buffer would take the end of the mix
        for lost packets and conceal them.
        """
        left = self._hangover.get(key, 0)
        if left > 0:
            return True
        enc = self._encoders.get(key)
        return enc is not None and not enc.in_dtx and left > -config.MIXER_DTX_WAIT_FRAMES

    def _last_key(self, listener: int) -> object | None:
        return self._last.get(listener)

    def _encoder(self, key: object) -> OpusEncoder:
        enc = self._encoders.get(key)
        if enc is None:
            enc = self._encoders[key] = OpusEncoder()
        return enc

    def take_levels(self) -> dict[int, int]:
        """Each participant's level (0-255) since the last call, then reset to silence."""
        levels = {pid: utils.level_from_rms(s.peak_rms) for pid, s in self._senders.items()}
        for s in self._senders.values():
            s.peak_rms = 0.0
        return levels
