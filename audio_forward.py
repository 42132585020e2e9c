"""Single-talker forwarding: one listener's audio stream, mixed or forwarded, in seq order.

While exactly one participant talks, the server passes that talker's Opus packets to
each listener unchanged (no decode, mix and re-encode: no second encode's loss or
look-ahead, no server buffering), as SFUs do; when a second talker starts it mixes
again. To the listener both are one stream: sender 0 and the server's own seq, which
``ListenerStream`` numbers so the listener's jitter buffer sees one timeline.

- A mix of tick ``T`` carries ``T + offset``.
- Forwarding talker X starts right after the last seq this listener was given (or at
  the current tick's, after silence); X's packet ``s`` then carries ``start + (s - first)``
  (mod 2**32 deltas, so X's own wrap-around is harmless), where ``first`` is the
  first of X's frames the listener has not yet heard in a mix. Packets of X older
  than ``first`` are not sent (their audio was in the mix, or is too late).
- Back to mixing, the timeline moves forward past every forwarded seq (``offset``
  grows), so seqs never go back and never name two different packets.

Pure: no codec, no clock, no sockets; ``audio_mixer.AudioMixer`` drives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import utils

_HALF = utils.U32 // 2


def seq_delta(a: int, b: int) -> int:
    """``a - b`` for 32-bit wrapping seqs, in [-2**31, 2**31)."""
    d = (a - b) % utils.U32
    return d - utils.U32 if d >= _HALF else d


@dataclass
class ListenerStream:
    """The seq numbering of one listener's stream from the server (sender 0)."""

    offset: int = 0  # a mix of tick T carries T + offset
    last: int | None = None  # the highest seq given to this listener so far
    source: int | None = None  # the talker forwarded to this listener; None while mixing
    start: int = 0  # the seq the first forwarded packet of ``source`` carries
    first: int = 0  # that packet's own seq (the talker's)

    def mix_seq(self, tick: int) -> int:
        """The seq of this listener's mix at ``tick`` (counted whether sent or not).

        Ends forwarding: the timeline skips past every seq already forwarded.
        """
        self.source = None
        seq = tick + self.offset
        if self.last is not None and seq <= self.last:
            self.offset += self.last + 1 - seq
            seq = self.last + 1
        self.last = seq
        return seq

    def forward_from(self, talker: int, first: int, tick: int) -> None:
        """From now on forward ``talker``'s packets, its seq ``first`` being the next heard.

        ``tick`` is the tick the mixer runs next: the first forwarded packet takes the
        seq that tick's mix would have had, or the one after the last seq given.
        """
        start = tick + self.offset
        if self.last is not None and start <= self.last:
            start = self.last + 1
        self.source, self.start, self.first = talker, start, first % utils.U32

    def forward_seq(self, seq: int) -> int | None:
        """The seq a forwarded packet of the talker's ``seq`` carries; None: do not send it."""
        d = seq_delta(seq, self.first)
        if d < 0:
            return None  # heard already in a mix, or older than where forwarding began
        out = self.start + d
        if self.last is None or out > self.last:
            self.last = out
        return out
