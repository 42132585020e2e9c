"""The headless participant (``client.py --headless``): joins, streams files, records, leaves.

For demos, tests and benchmarks. Needs no Qt. Usage::

    python client.py --headless --server HOST[:PORT] --name NAME --session S
        [--password P] [--video FILE|pattern|camera[:INDEX]|none]
        [--audio FILE|tone|mic[:DEVICE]|none] [--record FILE.wav] [--speakers]
        [--present IMAGE|screen[:MONITOR]] [--duration SECONDS] [--chat TEXT]
        [--view small|large|none] [--decode] [--stats FILE.json]

Exit codes: 0 left normally (duration over, SIGINT/SIGTERM); 1 the connection
was lost; 2 bad arguments or the server refused the join (the message says why).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import config
from audio_codec import CodecUnavailable, opus_available
from audio_module import (
    AudioCapture,
    AudioFormat,
    AudioPlayback,
    AudioSource,
    DeviceError,
    MicrophoneSource,
    SpeakerSink,
    ToneSource,
    VoiceProcessing,
    WavFileSink,
    WavFileSource,
)
from screen_sharing_module import ImageSource, MonitorSource, ScreenReceiver, ScreenSharer
from video_module import (
    CameraSource,
    TestPatternSource,
    VideoFileSource,
    VideoReceiver,
    VideoSender,
)

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_LOST = 1
EXIT_REFUSED = 2
VIEWS = ("small", "large", "none")


def plan_view(view: str, participants: dict[int, dict[str, Any]]) -> dict[int, str]:
    """What a headless participant subscribes to: every camera (at most the tile limit).

    ``small``: every camera small; ``large``: the first SUBSCRIBE_MAX_LARGE_LAYERS
    large and the rest small; ``none``: nothing. Cameras in id order.
    """
    if view == "none":
        return {}
    cams = sorted(pid for pid, p in participants.items() if p.get("video"))
    cams = cams[: config.SUBSCRIBE_MAX_TILES]
    large = config.SUBSCRIBE_MAX_LARGE_LAYERS if view == "large" else 0
    return {
        pid: config.VIDEO_LAYER_LARGE if i < large else config.VIDEO_LAYER_SMALL
        for i, pid in enumerate(cams)
    }


def parse_server(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (IPv6 as ``[addr]:port``) into host and port."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not port:
        return host, config.DEFAULT_TCP_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="client.py --headless",
        description="A FusionMeet participant without a window: streams files, records audio.",
    )
    p.add_argument("--server", required=True, metavar="HOST[:PORT]")
    p.add_argument("--name", required=True, help="your display name")
    p.add_argument("--session", required=True, help="session to join (created if new)")
    p.add_argument("--password", default="", help="session password")
    p.add_argument(
        "--fingerprint",
        metavar="FP",
        help="the server's TLS fingerprint (full, or the short XXXX-XXXX-... form its "
        "banner and 'server.py --fingerprint' print); must match, and is then remembered",
    )
    p.add_argument(
        "--trust-first-use",
        action="store_true",
        help="trust a server never seen before without checking its fingerprint (a "
        "remembered server whose fingerprint changed is still refused)",
    )
    p.add_argument(
        "--known-servers",
        metavar="FILE.json",
        help="the file of remembered server fingerprints (default: the user's)",
    )
    p.add_argument(
        "--video",
        default="none",
        metavar="FILE|pattern|camera[:INDEX]|none",
        help="what to send as video (a file loops; default none)",
    )
    p.add_argument(
        "--audio",
        default="none",
        metavar="FILE|tone|mic[:DEVICE]|none",
        help="what to send as the microphone (a WAV file plays once unless --loop)",
    )
    p.add_argument("--loop", action="store_true", help="loop the --audio WAV file")
    p.add_argument(
        "--voice-processing",
        choices=("auto", "on", "off"),
        default="auto",
        help="echo cancellation, noise suppression and gain control on the microphone"
        " (auto: on for mic, off for files and tones)",
    )
    p.add_argument("--record", metavar="FILE.wav", help="record what you hear (the N-1 mix)")
    p.add_argument("--speakers", nargs="?", const="", metavar="DEVICE", help="play to speakers")
    p.add_argument("--present", metavar="IMAGE|screen[:MONITOR]", help="share an image or screen")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="leave after this long")
    p.add_argument("--chat", action="append", default=[], metavar="TEXT", help="send a message")
    p.add_argument(
        "--decode",
        action="store_true",
        help="decode received video like the GUI does (for CPU measurements)",
    )
    # --- meeting controls (issue 14) ---
    p.add_argument("--raise-hand", action="store_true", help="raise your hand after joining")
    p.add_argument("--react", action="append", default=[], metavar="EMOJI", help="send a reaction")
    p.add_argument("--ask-to-join", action="store_true", help="new session: newcomers ask")
    p.add_argument("--lock", action="store_true", help="(host) lock: newcomers wait")
    p.add_argument(
        "--admit",
        choices=("all", "none"),
        default="none",
        help="(host) let everyone waiting in the lobby in (all), or leave them (none)",
    )
    p.add_argument(
        "--mute", action="append", default=[], metavar="NAME|everyone",
        help="(host) ask this participant (when present) or everyone to mute",
    )  # fmt: skip
    p.add_argument(
        "--remove", action="append", default=[], metavar="NAME",
        help="(host) remove this participant when present",
    )  # fmt: skip
    p.add_argument(
        "--record-meeting", action="store_true", help="(host) record the meeting on the server"
    )
    p.add_argument(
        "--view",
        choices=VIEWS,
        default="small",
        help="which video layer to receive of every camera: small (default; thumbnails), "
        f"large (the first {config.SUBSCRIBE_MAX_LARGE_LAYERS} large, the rest small) or none",
    )
    p.add_argument(
        "--stats",
        metavar="FILE.json",
        help="write counters here when leaving (per sender: frames and bytes received)",
    )
    p.add_argument(
        "--reconnect-for",
        type=float,
        default=config.RECONNECT_GIVE_UP_S,
        metavar="SECONDS",
        help="when the connection breaks, keep reconnecting this long, then exit 1; 0 exits "
        "at once; after a server_shutdown at most the server's grace period "
        "(default %(default)s)",
    )
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default)")
    return p


def say(text: str) -> None:
    """A message for the person running the participant (stderr, one line)."""
    print(f"headless: {text}", file=sys.stderr, flush=True)


class HeadlessParticipant:
    """A joined client plus the media threads the options asked for."""

    def __init__(self, client: Any, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args
        self.messages: list[str] = []
        self.fmt = AudioFormat.from_media(client.media_params)
        self.audio_on = False
        self.video_on = False
        self.capture: AudioCapture | None = None
        self.playbacks: list[AudioPlayback] = []
        self.sender: VideoSender | None = None
        self.receiver = VideoReceiver(client, decode=args.decode)
        self.screen_receiver = ScreenReceiver(client)
        self.sharer: ScreenSharer | None = None
        self.audio_ended = threading.Event()
        self.voice: VoiceProcessing | None = None

    def note(self, text: str) -> None:
        self.messages.append(text)
        say(text)

    # --- opening devices ------------------------------------------------------------

    def _open_audio(self, spec: str) -> AudioSource | None:
        if spec == "none":
            return None
        if spec == "tone":
            return ToneSource(self.fmt)
        if spec == "mic" or spec.startswith("mic:"):
            device = spec[4:] or None
            return MicrophoneSource(self.fmt, device)
        return WavFileSource(spec, self.fmt, loop=self.args.loop)

    def _video_opener(self, spec: str):
        if spec == "none":
            return None
        if spec == "pattern":
            return lambda: TestPatternSource(self.client.username or self.args.name)
        if spec == "camera" or spec.startswith("camera:"):
            index = int(spec[7:] or 0)
            return lambda: CameraSource(index)
        return lambda: VideoFileSource(spec, loop=True)

    def start(self) -> None:
        a = self.args
        try:
            source = self._open_audio(a.audio)
        except DeviceError as exc:
            self.note(f"Microphone unavailable: {exc} Continuing with the microphone off.")
            source = None
        vp = a.voice_processing
        if vp == "on" or (vp == "auto" and a.audio.split(":")[0] == "mic"):
            self.voice = VoiceProcessing(self.fmt.frame_samples, self.fmt.rate_hz)
            if self.voice.unavailable_reason:
                self.note(f"No echo cancellation: {self.voice.unavailable_reason}")
        if source is not None:
            if not opus_available():
                self.note(
                    "No Opus codec (libopus is missing): cannot send audio. Install libopus"
                    " (Debian: apt install libopus0). Continuing with the microphone off."
                )
                source.close()
            else:
                self.capture = AudioCapture(
                    self.client, source, on_end=self._on_audio_end, voice=self.voice
                ).start()
                self.audio_on = True
        opener = self._video_opener(a.video)
        if opener is not None:
            self.sender = VideoSender(self.client, opener, on_message=self._camera_message)
            self.sender.start()
            self.video_on = self.sender.camera_on
        if a.record:
            try:
                self.playbacks.append(
                    AudioPlayback(self.client, WavFileSink(a.record, self.fmt)).start()
                )
            except DeviceError as exc:
                self.note(f"Cannot record: {exc}")
            except CodecUnavailable as exc:
                self.note(f"Cannot record: no Opus codec ({exc}).")
        if a.speakers is not None:
            try:
                sink = SpeakerSink(self.fmt, a.speakers or None)
                self.playbacks.append(AudioPlayback(self.client, sink, voice=self.voice).start())
            except DeviceError as exc:
                self.note(f"No sound output: {exc} Continuing without speakers.")
            except CodecUnavailable as exc:
                self.note(f"No sound output: no Opus codec ({exc}).")
        self.client.set_media(self.audio_on, self.video_on)
        if a.present:
            self.sharer = ScreenSharer(
                self.client, self._screen_opener(a.present), on_status=self.note
            )
            self.sharer.start()
        for text in a.chat:
            self.client.send_chat(text)
        self._start_meeting_controls()
        for event in ("participant_joined", "participant_updated", "participant_left"):
            self.client.on(event, self._resubscribe)
        self._resubscribe()

    def _resubscribe(self, *_: Any) -> None:
        """Subscribe to what ``--view`` asks of the cameras now in the session."""
        people = self.client.participants_snapshot()
        try:
            self.client.subscribe(plan_view(self.args.view, people))
        except OSError as exc:
            log.info("subscribe not sent: %s", exc)

    # --- meeting controls (issue 14) -----------------------------------------------------

    def _start_meeting_controls(self) -> None:
        a, c = self.args, self.client
        c.on("mute_requested", self._on_mute_requested)
        c.on("video_stopped", self._on_video_stopped)
        c.on("screen_stopped", self._on_screen_stopped)
        c.on("meeting_changed", lambda kind, _by: self._host_duties())
        c.on("participant_joined", lambda _p: self._host_duties())
        c.on("error", lambda code, msg, re: self.note(f"{re or 'server'}: {msg} ({code})"))
        c.on("recording_changed", self._on_recording_changed)
        self._done: set[tuple[str, str]] = set()
        if a.raise_hand:
            c.raise_hand()
        for emoji in a.react:
            c.react(emoji)
        if a.lock:
            c.lock()
        if a.record_meeting:
            c.start_recording()
        self._host_duties()

    def _host_duties(self) -> None:
        """As host: --admit all, --mute and --remove those present (each once)."""
        a, c = self.args, self.client
        if not c.is_host:
            return
        with c._state_lock:
            lobby = list(c.meeting.get("lobby", []))
            people = {p["username"].casefold(): pid for pid, p in c.participants.items()}
        if a.admit == "all":
            for entry in lobby:
                if ("admit", str(entry["ticket"])) not in self._done:
                    self._done.add(("admit", str(entry["ticket"])))
                    c.admit(entry["ticket"])
        for name in a.mute:
            if name == "everyone" and ("mute", name) not in self._done:
                self._done.add(("mute", name))
                c.ask_mute(None)
            elif name.casefold() in people and ("mute", name) not in self._done:
                self._done.add(("mute", name))
                c.ask_mute(people[name.casefold()])
        for name in a.remove:
            if name.casefold() in people and ("remove", name) not in self._done:
                self._done.add(("remove", name))
                c.remove(people[name.casefold()])

    def _on_mute_requested(self, by: str, everyone: bool) -> None:
        self.note(f"{by} asked you to mute; microphone off")
        if self.capture is not None:
            self.capture.stop()
            self.capture = None
        self.audio_on = False

    def _on_video_stopped(self, by: str) -> None:
        self.note(f"{by} turned your camera off")
        if self.sender is not None:
            self.sender.stop()
            self.sender = None
        self.video_on = False

    def _on_screen_stopped(self, by: str) -> None:
        self.note(f"{by} stopped your screen share")
        if self.sharer is not None:
            self.sharer.close()
            self.sharer = None

    def _on_recording_changed(self, recording: bool, message: str | None) -> None:
        self.note(("recording started" if recording else "recording stopped") + (
            f": {message}" if message else ""
        ))  # fmt: skip

    def _screen_opener(self, spec: str):
        if spec == "screen" or spec.startswith("screen:"):
            monitor = int(spec[7:]) if spec[7:] else None
            return lambda: MonitorSource(monitor)
        return lambda: ImageSource(spec)

    def _camera_message(self, text: str) -> None:
        self.note(f"Video unavailable: {text} Continuing with the camera off.")

    def _on_audio_end(self, reason: str) -> None:
        """The WAV file ended or the microphone failed: tell everyone the mic is off."""
        self.audio_ended.set()
        self.audio_on = False
        say(f"audio source finished ({reason}); microphone off")
        try:
            self.client.set_media(False, self.video_on)
        except OSError as exc:
            log.info("media state not sent: %s", exc)

    def decode_tick(self) -> int:
        """Decode the latest frame of every sender, as the GUI's repaint timer does."""
        n = 0
        for pid in self.receiver.senders():
            if self.receiver.latest(pid) is not None:
                n += 1
        if self.screen_receiver.frame is not None:
            self.screen_receiver.latest()
        return n

    def stats(self) -> dict[str, Any]:
        received = self.receiver.stats()
        out: dict[str, Any] = {
            "audio_frames_sent": self.capture.frames_sent if self.capture else 0,
            "video_frames_sent": self.sender.frames_sent if self.sender else 0,
            "video_layer_frames_sent": dict(self.sender.layer_frames) if self.sender else {},
            "audio_frames_received": getattr(self.client, "audio_frames_received", 0),
            "video_frames_received": sum(v["frames"] for v in received.values()),
            "video_senders": {str(pid): v["frames"] for pid, v in received.items()},
            "video_received": {str(pid): v for pid, v in received.items()},
            "screen_frames_sent": self.sharer.frames_sent if self.sharer else 0,
            "screen_frames_received": self.screen_receiver.count,
            "messages": self.messages,
        }
        if self.capture is not None:
            sent = self.capture.frames_sent
            out["audio_packets_sent"] = self.capture.packets_sent
            out["audio_bytes_sent"] = getattr(self.client, "audio_bytes_sent", 0)
            # Opus payload bit rate over the frames sent (20 ms each), in kbit/s: first
            # copies, the stream's own rate.
            frame_s = self.fmt.frame_s
            out["audio_kbps"] = (
                round(8 * out["audio_bytes_sent"] / (sent * frame_s) / 1000, 2) if sent else 0.0
            )
            # Repeats (audio_repeat.py): bytes sent again, and whether it still repeats.
            out["audio_repeat_bytes_sent"] = getattr(self.client, "audio_repeat_bytes_sent", 0)
            out["audio_repeating"] = getattr(self.client, "audio_repeating", False)
            # The loss our encoder plans FEC for, as the server last said (audio_loss).
            out["audio_expected_loss"] = getattr(self.client, "audio_expected_loss", None)
        if self.playbacks:
            # The codec and jitter buffer of what we hear: fec_used, concealed, expanded,
            # target_delay_ms, buffer_delay_ms, ... (jitter_buffer.JitterBufferStats).
            out["jitter"] = self.playbacks[0].stats()
        out["voice_processing"] = bool(self.voice is not None and self.voice.active)
        return out

    def stop(self) -> None:
        """Stop every media thread (the client is left by the caller)."""
        if self.args.record_meeting and self.client.connected and self.client.is_host:
            self.client.stop_recording()  # the server offers the file to the hosts
        if self.sharer is not None:
            self.sharer.close()
        if self.capture is not None:
            self.capture.stop()
        if self.sender is not None:
            self.sender.stop()
        for p in self.playbacks:
            p.stop()
        if self.voice is not None:
            self.voice.close()
        self.receiver.close()
        self.screen_receiver.close()


def main(argv: list[str] | None = None) -> int:
    """Run a headless participant; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return EXIT_REFUSED if exc.code else EXIT_OK
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        host, port = parse_server(args.server)
    except ValueError as exc:
        say(f"--server: {exc}")
        return EXIT_REFUSED
    if args.duration is not None and args.duration < 0:
        say("--duration must not be negative")
        return EXIT_REFUSED

    from client import ConferenceClient, JoinError  # the client core; no Qt

    # Installed before joining, so a signal that arrives while joining still leaves cleanly.
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    import security

    expected = None
    if args.fingerprint:
        try:
            expected = security.normalize_fingerprint(args.fingerprint)
        except security.SecurityError as exc:
            say(f"--fingerprint: {exc.message}")
            return EXIT_REFUSED
    client = ConferenceClient(
        host,
        port,
        config.ClientConfig(reconnect_give_up_s=max(0.0, args.reconnect_for)),
        trust_store=security.TrustStore(args.known_servers) if args.known_servers else None,
        expected_fingerprint=expected,
        trust_first_use=args.trust_first_use,
    )
    client.on("lobby_waiting", lambda message, _recording: say(message))
    try:
        client.connect(
            args.name,
            args.session,
            args.password,
            audio=args.audio != "none",
            video=args.video != "none",
            ask_to_join=args.ask_to_join,
        )
    except JoinError as exc:
        say(f"could not join: {exc.message} ({exc.code})")
        if exc.code == security.SecErr.FINGERPRINT_UNKNOWN and exc.fingerprint:
            short = security.short_fingerprint(exc.fingerprint)
            say(
                f"check that {short} is the fingerprint the server shows, then run again "
                f"with --fingerprint {short} (or --trust-first-use)"
            )
        return EXIT_REFUSED
    say(f"joined {client.session!r} as {client.username!r} (id {client.my_id})")

    lost: list[str] = []

    def on_disconnected(reason: str) -> None:
        lost.append(reason)
        stop.set()

    client.on("disconnected", on_disconnected)
    client.on("reconnecting", lambda reason: say(f"connection lost ({reason}); reconnecting..."))
    client.on("reconnected", lambda welcome: say(_reconnected_text(client, welcome)))

    participant = HeadlessParticipant(client, args)
    code = EXIT_OK
    try:
        participant.start()
        deadline = None if args.duration is None else time.monotonic() + args.duration
        tick = config.GUI_REPAINT_INTERVAL_MS / 1000 if args.decode else 0.5
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if args.decode:
                participant.decode_tick()
            wait = tick if deadline is None else min(tick, deadline - time.monotonic())
            stop.wait(max(0.0, wait))
    except OSError as exc:
        lost.append(str(exc))
    finally:
        final_stats = participant.stats()  # before stop(): the receivers forget on close
        participant.stop()
        client.leave()
    if lost:
        say(f"connection lost: {lost[0]}")
        code = EXIT_LOST
    else:
        say("left the session")
    if args.stats:
        try:
            Path(args.stats).write_text(json.dumps(final_stats, indent=1), "utf-8")
        except OSError as exc:
            say(f"cannot write --stats: {exc}")
    return code


def _reconnected_text(client: Any, welcome: dict[str, Any]) -> str:
    if welcome.get("resumed"):
        return f"reconnected: back in {client.session!r} as id {client.my_id}"
    return f"reconnected: joined {client.session!r} again as id {client.my_id}"


if __name__ == "__main__":
    sys.exit(main())
