"""The server's meeting-control handlers (issue 14): one per message, and the lobby wait.

``ConferenceServer`` composes these: ``CONTROL_HANDLERS`` holds one function per
meeting message (``make_host``, ``remove``, ``raise_hand``...), each asking the
session's ``meeting.MeetingControl`` under the session lock and queueing what it
decided under the same hold. Events session state cannot carry out are done here:
``Disconnect`` (an error frame, then the connection closes: removal, end meeting)
and ``RecordingSwitch`` (the recorder is started and stopped *outside* the lock).

``wait_in_lobby`` serves a ``hello`` that must wait for a host: the connection
thread answers ``ping``, accepts ``bye`` and polls its ``LobbyWaiter`` for the
host's answer every ``MEETING_LOBBY_POLL_S``; the waiting limit is enforced by
``MeetingControl.expire_lobby``.

Lock order: as server.py's (session lock, then outboxes); the recorder's own thread
is never joined under the session lock.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import config
import meeting
import utils
from file_store import FileStoreError
from sessions import JoinRefused, LobbyWaiter, Participant, Session
from utils import Err, Msg

if TYPE_CHECKING:
    from server import ConferenceServer

log = logging.getLogger(__name__)

Call = Callable[[meeting.MeetingControl, Participant, dict[str, Any], float], list[meeting.Event]]


def run_events_locked(
    server: ConferenceServer, sess: Session, events: list[meeting.Event]
) -> list[meeting.RecordingSwitch]:
    """Carry out meeting events (session lock held); the recorder switches are returned."""
    sends, rest = server.sessions.apply_meeting(sess, events)
    server._deliver_locked(sends)
    switches: list[meeting.RecordingSwitch] = []
    queue = list(rest)
    while queue:
        e = queue.pop(0)
        if isinstance(e, meeting.Disconnect):
            member = sess.members.get(e.pid)
            if member is None:
                continue
            server._send(member, e.header())
            member.outbox.close()  # the writer sends the error, then closes the socket
            sends, ended = server.sessions.leave(member)
            server._deliver_locked(sends)
            if ended and server.store is not None:
                server.store.drop_session(sess.name)
            queue += server.sessions.take_pending()
        elif isinstance(e, meeting.RecordingSwitch):
            switches.append(e)
    return switches


def act(server: ConferenceServer, p: Participant, frame: utils.Frame, call: Call) -> None:
    """Ask the meeting model; a refusal becomes an error frame ``re`` the request."""
    sess = p.session
    with server._lock:
        try:
            events = call(sess.meeting, p, frame.header, time.monotonic())
        except meeting.MeetingError as exc:
            server._send(p, exc.header(re=frame.type))
            return
        switches = run_events_locked(server, sess, events)
    for switch in switches:
        switch_recording(server, sess, switch.on, p)


def _handler(call: Call) -> Callable[[ConferenceServer, Participant, utils.Frame], None]:
    def handle(server: ConferenceServer, p: Participant, frame: utils.Frame) -> None:
        act(server, p, frame, call)

    return handle


# --- recording ----------------------------------------------------------------------------


def recordings_dir(server: ConferenceServer) -> Path:
    return Path(server.config.storage_dir) / config.RECORDINGS_DIR_NAME


def _start_recording(
    m: meeting.MeetingControl, p: Participant, h: dict[str, Any], now: float
) -> list[meeting.Event]:
    if m.is_host(p.id):
        if m.recording:
            raise _AlreadyRecording()
        import recorder  # PyAV is imported lazily: a server without it still runs

        reason = recorder.recording_unavailable_reason()
        if reason is not None:
            raise _RecordingUnavailable(reason)
    return m.start_recording(p.id)  # NotAllowed for a non-host


class _AlreadyRecording(meeting.MeetingError):
    code = Err.ALREADY_RECORDING


class _RecordingUnavailable(meeting.MeetingError):
    code = Err.RECORDING_UNAVAILABLE


def switch_recording(
    server: ConferenceServer, sess: Session, on: bool, by: Participant | None
) -> None:
    """Start or stop ``sess``'s recorder, outside the session lock."""
    import recorder

    if not on:
        with server._lock:
            rec, sess.recorder = sess.recorder, None
        if rec is not None:
            rec.stop()  # joins the recorder thread; on_stopped offers the file
        return
    folder = recordings_dir(server)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() else "-" for c in sess.name)[:40] or "meeting"
    path = folder / f"{safe}-{stamp}.webm"
    made: list[Any] = []  # the recorder, for its on_stopped callback
    try:
        folder.mkdir(parents=True, exist_ok=True)
        rec = recorder.MeetingRecorder(
            path,
            audio_rate=server.config.audio_rate_hz,
            on_stopped=lambda reason: _recording_stopped(server, sess, made[0], reason),
        )
    except (OSError, recorder.RecordingError) as exc:
        log.warning("recording of %r could not start: %s", sess.name, exc)
        with server._lock:
            events = sess.meeting.recording_failed(f"The recording could not start: {exc}")
            run_events_locked(server, sess, events)
        return
    made.append(rec)
    with server._lock:
        kept = sess.meeting.recording and sess.recorder is None
        if kept:
            sess.recorder = rec
    if not kept:  # stopped meanwhile
        rec.stop()


def _recording_stopped(server: ConferenceServer, sess: Session, rec: Any, reason: str) -> None:
    """The recorder ended (its own thread, or in stop()): say why, offer the file to hosts."""
    import recorder

    with server._lock:
        if sess.recorder is rec:
            sess.recorder = None
        if reason != recorder.Reason.STOPPED:
            text = recorder.REASON_TEXT.get(reason, reason)
            run_events_locked(server, sess, sess.meeting.recording_failed(text))
        hosts = [sess.members[h] for h in sess.meeting.hosts if h in sess.members]
    result, store = rec.result, server.store
    if result is None or store is None or not hosts or not result.path.exists():
        return
    chat = result.chat_path  # the public chat of the recording, when anyone wrote
    paths = [result.path] + ([chat] if chat.exists() and chat.stat().st_size > 0 else [])
    infos = []
    for path in paths:
        try:  # hashing the file: outside the session lock
            infos.append(store.add_local(sess.name, path, path.name, 0, "Recording"))
        except FileStoreError as exc:  # the file stays on disk; the log says where
            log.warning("recording %s not shared: %s", path, exc)
    with server._lock:
        hosts = [sess.members[h] for h in sess.meeting.hosts if h in sess.members]
        server._deliver_locked([(hosts, {"type": Msg.FILE_ADDED, "file": i}) for i in infos])


# --- the lobby ------------------------------------------------------------------------------


def wait_in_lobby(
    server: ConferenceServer, sock: socket.socket, waiter: LobbyWaiter
) -> str | dict[str, Any] | None:
    """Hold a waiting connection until a host answers: "admit", an error header, or None.

    None: the newcomer left (bye, closed) or the server stops. Answers ``ping``.
    """
    sess = waiter.session
    reader = server._reader(sock)
    sock.settimeout(server.config.first_frame_timeout_s)  # once a frame has begun
    last_heard = time.monotonic()
    while not server._stopping.is_set():
        if time.monotonic() - last_heard > server.config.heartbeat_timeout_s:
            server._send_direct(sock, utils.error_header(Err.TIMEOUT))
            break
        with server._lock:
            if waiter.answer is None:
                events = sess.meeting.expire_lobby(time.monotonic())
                run_events_locked(server, sess, events)
            if waiter.answer is not None:
                return waiter.answer
        buffered = getattr(sock, "pending", None)  # TLS may hold bytes select cannot see
        if not (buffered is not None and buffered()):
            readable, _, _ = select.select([sock], [], [], config.MEETING_LOBBY_POLL_S)
            if not readable:
                continue
        try:
            frame = reader.read()
            utils.validate_client_message(frame.header)
        except utils.ProtocolError as exc:
            server._send_direct(sock, utils.error_header(exc.code, str(exc)))
            continue
        except (OSError, utils.ConnectionClosed):
            break
        last_heard = time.monotonic()
        if frame.type == Msg.PING:
            pong = {"type": Msg.PONG} | ({"t": frame.header["t"]} if "t" in frame.header else {})
            server._send_direct(sock, pong)
        elif frame.type == Msg.BYE:
            break
        else:
            server._send_direct(sock, utils.error_header(Err.NOT_JOINED, re=frame.type))
    with server._lock:
        if waiter.answer == "admit":
            return "admit"
        server._deliver_locked(server.sessions.leave_lobby(waiter))
    return None


def admit_from_lobby(
    server: ConferenceServer,
    waiter: LobbyWaiter,
    sock: Any,
    username: str,
    address: str,
    admit_locked: Callable[[], Participant],
) -> Participant:
    """For ``joining.Joining``: a newcomer sent to the lobby waits for a host, then joins
    by ``admit_locked`` (called with the session lock held). Raises ``JoinRefused``."""
    name = waiter.session.name
    with server._lock:
        wait = waiter.session.meeting.lobby_wait()
    log.info("%r waits in the lobby of %r", username, name)
    server._send_direct(sock, wait)
    answer = wait_in_lobby(server, sock, waiter)
    if answer is None:
        raise JoinRefused(Err.NOT_JOINED, "Left the lobby.", quiet=True)
    if answer != "admit":
        raise JoinRefused(answer["code"], answer.get("message"), lobby=answer)
    with server._lock:  # the password was right; the session may have changed
        stored = server.sessions.password_hash_of(name)
        server.sessions.check_join(name, username, True, stored, address, time.monotonic())
        return admit_locked()


# --- one handler per message ----------------------------------------------------------------


def _target(h: dict[str, Any]) -> int:
    return h["id"]


CONTROL_HANDLERS: dict[str, Callable[[ConferenceServer, Participant, utils.Frame], None]] = {
    Msg.MAKE_HOST: _handler(lambda m, p, h, now: m.make_host(p.id, _target(h))),
    Msg.ASK_MUTE: _handler(lambda m, p, h, now: m.ask_mute(p.id, meeting.mute_target(h))),
    Msg.STOP_VIDEO: _handler(lambda m, p, h, now: m.stop_video(p.id, _target(h))),
    Msg.STOP_SCREEN: _handler(lambda m, p, h, now: m.stop_screen(p.id, _target(h))),
    Msg.REMOVE: _handler(lambda m, p, h, now: m.remove(p.id, _target(h), h.get("reason"))),
    Msg.UNBAN: _handler(lambda m, p, h, now: m.unban(p.id, h["key"])),
    Msg.LOCK: _handler(lambda m, p, h, now: m.lock(p.id)),
    Msg.UNLOCK: _handler(lambda m, p, h, now: m.unlock(p.id)),
    Msg.SET_ASK_TO_JOIN: _handler(lambda m, p, h, now: m.set_ask_to_join(p.id, h["enabled"])),
    Msg.ADMIT: _handler(lambda m, p, h, now: m.admit(p.id, h["ticket"])),
    Msg.DECLINE: _handler(lambda m, p, h, now: m.decline(p.id, h["ticket"], h.get("reason"))),
    Msg.END_MEETING: _handler(lambda m, p, h, now: m.end_meeting(p.id)),
    Msg.SPOTLIGHT: _handler(lambda m, p, h, now: m.spotlight(p.id, h["id"])),
    Msg.START_RECORDING: _handler(_start_recording),
    Msg.STOP_RECORDING: _handler(lambda m, p, h, now: m.stop_recording(p.id)),
    Msg.RAISE_HAND: _handler(lambda m, p, h, now: m.raise_hand(p.id, now)),
    Msg.LOWER_HAND: _handler(lambda m, p, h, now: m.lower_hand(p.id, h.get("id"))),
    Msg.REACT: _handler(lambda m, p, h, now: m.react(p.id, h["emoji"], now)),
}
