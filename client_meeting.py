"""The client's meeting controls (issue 14), split from client.py.

``MeetingActions`` is a base of ``ConferenceClient``: one method per meeting
action a participant or a host sends (PROTOCOL.md section 12.3; the server
refuses host actions from non-hosts with ``error`` ``not_allowed``, which
arrives as the ``error`` event), and the handlers of the server's meeting
messages, which keep ``client.meeting`` current and emit the meeting events
(``meeting_changed``, ``mute_requested``, ``video_stopped``, ``screen_stopped``,
``reaction``, ``recording_changed``). ``client._HANDLERS`` maps the message
types to these handlers. The attributes used (``meeting``, ``_state_lock``,
``my_id``, ``media_on``, ``_send``, ``_emit``, ``set_media``) are
``ConferenceClient``'s.
"""

from __future__ import annotations

import utils
from utils import Msg


class MeetingActions:
    """Meeting actions and meeting-message handlers (a mixin: the state lives in the client)."""

    # --- actions: host ones are refused by the server with error not_allowed ---------

    @property
    def is_host(self) -> bool:
        with self._state_lock:
            return self.my_id in self.meeting.get("hosts", [])

    def make_host(self, pid: int) -> None:
        self._send({"type": Msg.MAKE_HOST, "id": pid})

    def ask_mute(self, pid: int | None = None) -> None:
        """Ask ``pid`` (None: everyone but us) to mute; they cannot be unmuted by a host."""
        target = {"everyone": True} if pid is None else {"id": pid}
        self._send({"type": Msg.ASK_MUTE} | target)

    def stop_video(self, pid: int) -> None:
        self._send({"type": Msg.STOP_VIDEO, "id": pid})

    def stop_screen(self, pid: int) -> None:
        self._send({"type": Msg.STOP_SCREEN, "id": pid})

    def remove(self, pid: int, reason: str | None = None) -> None:
        self._send({"type": Msg.REMOVE, "id": pid} | ({"reason": reason} if reason else {}))

    def unban(self, key: str) -> None:
        self._send({"type": Msg.UNBAN, "key": key})

    def lock(self) -> None:
        self._send({"type": Msg.LOCK})

    def unlock(self) -> None:
        self._send({"type": Msg.UNLOCK})

    def set_ask_to_join(self, enabled: bool) -> None:
        self._send({"type": Msg.SET_ASK_TO_JOIN, "enabled": bool(enabled)})

    def admit(self, ticket: int) -> None:
        self._send({"type": Msg.ADMIT, "ticket": ticket})

    def decline(self, ticket: int, reason: str | None = None) -> None:
        self._send({"type": Msg.DECLINE, "ticket": ticket} | ({"reason": reason} if reason else {}))

    def end_meeting(self) -> None:
        self._send({"type": Msg.END_MEETING})

    def spotlight(self, pid: int | None) -> None:
        self._send({"type": Msg.SPOTLIGHT, "id": pid})

    def start_recording(self) -> None:
        self._send({"type": Msg.START_RECORDING})

    def stop_recording(self) -> None:
        self._send({"type": Msg.STOP_RECORDING})

    def raise_hand(self) -> None:
        self._send({"type": Msg.RAISE_HAND})

    def lower_hand(self, pid: int | None = None) -> None:
        self._send({"type": Msg.LOWER_HAND} | ({} if pid is None else {"id": pid}))

    def react(self, emoji: str) -> None:
        self._send({"type": Msg.REACT, "emoji": emoji})

    # --- handlers of the server's meeting messages (see client._HANDLERS) -----------

    def _on_meeting_state(self, frame: utils.Frame) -> None:
        """hosts_changed, hands_changed, access_changed, spotlight_changed, lobby_updated,
        bans_changed: the fields replace client.meeting's."""
        h = frame.header
        with self._state_lock:
            for key in ("hosts", "hands", "locked", "ask_to_join", "spotlight", "lobby", "bans"):
                if key in h:
                    self.meeting[key] = h[key]
        self._emit("meeting_changed", frame.type, h.get("by"))

    def _on_mute_requested(self, frame: utils.Frame) -> None:
        h = frame.header
        self.set_media(False, self.media_on[1])  # the device layer follows the event
        self._emit("mute_requested", h.get("username", ""), h.get("everyone", False))

    def _on_video_stopped(self, frame: utils.Frame) -> None:
        self.set_media(self.media_on[0], False)
        self._emit("video_stopped", frame.header.get("username", ""))

    def _on_screen_stopped(self, frame: utils.Frame) -> None:
        self._emit("screen_stopped", frame.header.get("username", ""))

    def _on_reaction(self, frame: utils.Frame) -> None:
        self._emit("reaction", frame.header["from"], frame.header["emoji"])

    def _on_recording_changed(self, frame: utils.Frame) -> None:
        h = frame.header
        with self._state_lock:
            self.meeting["recording"] = h["recording"]
        self._emit("recording_changed", h["recording"], h.get("message"))
