"""The recording's camera picture: the active speaker's small layer, fed to the recorder.

While a session records and nobody presents, the recording shows one participant's
camera (issue 14). ``SpeakerChoice`` (pure) picks whom: the loudest talker with a camera
on, by the mixer's levels, held for ``RECORDING_SPEAKER_HOLD_S`` so the picture does not
flicker; before anyone talks, the first host with a camera on, else the first
participant with one. ``RecordingFeed`` reassembles that participant's **small** layer
from the ``v`` datagrams the server already receives (``simulcast.LayerAssembler``: only
whole frames, from a keyframe on) and queues each frame on the recorder, which decodes
it on its own thread. On a change of speaker (and at the start) the sender is asked
for a keyframe through the session's keyframe-request throttle; until it comes the
recorder keeps the last picture. A presenter's screen takes precedence (server.py feeds
it); when the share stops, the speaker's camera comes back. With nobody to show the
picture turns black rather than freezing on a camera that was turned off.

Threads: everything here runs on the server's ``udp`` thread only (``MediaRelay``),
so the feeds need no lock of their own. Methods ending in ``_locked`` are called with
the server's session lock held (they read session state, and may queue a black
picture on the recorder, whose queue lock is a leaf: server.py's lock order);
``RecordingFeed.add`` is called without it and only touches the feed and the
recorder's queue.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

import config
import utils
from recorder import camera_source
from sessions import Participant, Send, Session, SessionTable

if TYPE_CHECKING:
    from simulcast import LayerAssembler

log = logging.getLogger(__name__)

__all__ = ["RecordingFeed", "RecordingFeeds", "SpeakerChoice", "camera_order"]

_SMALL = utils.LAYER_NUMBERS[config.VIDEO_LAYER_SMALL]
_SCREEN = "screen"  # RecordingFeed.showing while someone presents
# What the recording shows when there is nobody to show (limited-range black once scaled).
_BLACK = np.zeros(
    (config.VIDEO_SMALL_LAYER.height_px, config.VIDEO_SMALL_LAYER.width_px, 3), np.uint8
)


class SpeakerChoice:
    """Whom the recording shows: the loudest talker with a camera, held against flicker.

    Pure: ``update`` takes who has a camera on, the levels of the last interval (0-255
    per participant) and a monotonic time in seconds, and returns an id or None.
    A participant is talking at ``speaking_level`` or more. Before anyone talked, the
    picture is the first of ``cameras`` and the first talker takes it at once. After
    that another talker takes it once it has been the loudest for ``hold_s``: a pause
    shorter than ``hold_s`` does not break its run, the shown speaker talking loudest
    again does.
    """

    def __init__(
        self,
        hold_s: float = config.RECORDING_SPEAKER_HOLD_S,
        speaking_level: int = config.RECORDING_SPEAKING_LEVEL,
    ) -> None:
        self.hold_s = hold_s
        self.speaking_level = speaking_level
        self.current: int | None = None
        self._by_voice = False  # current was chosen because it talked (not by default)
        self._challenger: int | None = None
        self._since = 0.0  # the challenger has been the loudest since then...
        self._heard = 0.0  # ...and was last the loudest then

    def update(self, cameras: list[int], levels: dict[int, int], now: float) -> int | None:
        """The participant to show now; ``cameras`` in order of preference by default."""
        if self.current not in cameras:
            self.current = cameras[0] if cameras else None
            self._by_voice = False
        if self._challenger is not None and (
            self._challenger not in cameras or now - self._heard > self.hold_s
        ):
            self._challenger = None
        talking = [pid for pid in cameras if levels.get(pid, 0) >= self.speaking_level]
        if not talking:
            return self.current
        loudest = max(talking, key=lambda pid: levels[pid])  # ties: the earlier in cameras
        if loudest == self.current:
            self._challenger = None
        elif not self._by_voice:
            self.current, self._challenger = loudest, None
        else:
            if loudest != self._challenger:
                self._challenger, self._since = loudest, now
            self._heard = now
            if now - self._since >= self.hold_s:
                self.current, self._challenger = loudest, None
        self._by_voice = True
        return self.current


def camera_order(sess: Session) -> list[int]:
    """Who could be shown: members with a camera on (not stopped by a host, connection not
    broken), hosts first, then in join order."""
    m = sess.meeting
    on = [
        pid
        for pid, p in sess.members.items()
        if p.video and m.allows_video(pid) and not p.reconnecting
    ]
    hosts = [pid for pid in m.hosts if pid in on]
    return hosts + [pid for pid in on if pid not in hosts]


class RecordingFeed:
    """One recording's camera picture: whom it shows and the reassembly of that camera."""

    def __init__(self, rec: Any) -> None:
        self.rec = rec  # a recorder.MeetingRecorder
        self.choice = SpeakerChoice()
        self.sender: int | None = None  # whose small layer is reassembled (None: nobody's)
        self.assembler: LayerAssembler | None = None
        # What the recorder's picture comes from: a camera source, _SCREEN, or None (black).
        self.showing: str | None = None
        self.keyframe_wanted = False  # the assembler lost a frame (set without the lock)

    def add(self, frag: utils.VideoFragment, now: float) -> None:
        """A fragment of the shown camera's small layer: a whole frame goes to the recorder."""
        asm, sender = self.assembler, self.sender
        if asm is None or sender is None:
            return
        res = asm.add(
            frag.frame_id, frag.frag_index, frag.frag_count, frag.keyframe, frag.data, now
        )
        if res.request_keyframe:
            self.keyframe_wanted = True
        if res.frame is not None:
            source = camera_source(sender)
            self.rec.add_video(res.frame.data, keyframe=res.frame.keyframe, source=source)
            self.showing = source

    def tick_locked(
        self, table: SessionTable, sess: Session, levels: dict[int, int], now: float
    ) -> list[Send]:
        """Choose whom to show from the new levels; the keyframe requests that needs."""
        if sess.presenter is not None:  # the screen is recorded instead (server.py)
            self.sender, self.assembler, self.showing = None, None, _SCREEN
            return []
        speaker = self.choice.update(camera_order(sess), levels, now)
        if speaker is None:
            self.sender = self.assembler = None
            if self.showing is not None:
                self.rec.add_video(_BLACK)
                self.showing = None
            return []
        if speaker != self.sender:
            # Imported here: simulcast needs OpenCV, which a server that never records
            # does without (the packaged server leaves it out).
            from simulcast import LayerAssembler

            log.debug("recording of %r shows participant %d", sess.name, speaker)
            self.sender, self.assembler = speaker, LayerAssembler()
            ask = True
        else:
            # A frame lost on the way, or dropped or undecodable in the recorder.
            flowing = self.assembler is not None and not self.assembler.waiting_for_keyframe
            ask = self.keyframe_wanted or (
                flowing and self.rec.keyframe_wanted(camera_source(speaker))
            )
        self.keyframe_wanted = False
        return table.recording_keyframe(sess, speaker, now) if ask else []


class RecordingFeeds:
    """The camera feeds of every session being recorded; the ``udp`` thread's alone.

    Keyed weakly by session: a feed goes with its session, and is replaced when the
    session's recorder changes (a new recording) or dropped when it has none.
    """

    def __init__(self) -> None:
        self._feeds: weakref.WeakKeyDictionary[Session, RecordingFeed] = weakref.WeakKeyDictionary()

    def route_locked(self, p: Participant, layer: int) -> RecordingFeed | None:
        """The feed that wants this ``v`` datagram of ``p``'s, or None (most of them)."""
        if not self._feeds:
            return None
        sess = p.session
        feed = self._feeds.get(sess)
        if (
            feed is None
            or feed.sender != p.id
            or layer != _SMALL
            or sess.presenter is not None
            or feed.rec is not sess.recorder
        ):
            return None
        return feed

    def on_levels_locked(
        self, table: SessionTable, sess: Session, levels: dict[int, int], now: float
    ) -> list[Send]:
        """Every levels interval, per session: start, follow or end its recording's feed."""
        rec = sess.recorder
        if rec is None:
            self._feeds.pop(sess, None)
            return []
        feed = self._feeds.get(sess)
        if feed is None or feed.rec is not rec:
            feed = self._feeds[sess] = RecordingFeed(rec)
        return feed.tick_locked(table, sess, levels, now)
