"""Every FusionMeet default and limit, as a named constant with its unit.

The server's command line overrides the values an operator would change
(see ``ServerConfig`` and ``server.py --help``); tests build their own
``ServerConfig`` / ``ClientConfig`` with shorter timeouts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

APP_NAME = "FusionMeet"

# --- Protocol -----------------------------------------------------------------
PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = (1,)

# --- Network ------------------------------------------------------------------
DEFAULT_HOST = "0.0.0.0"
DEFAULT_TCP_PORT = 5000
DEFAULT_UDP_PORT = 5001
CONNECT_TIMEOUT_S = 5.0
# How long a new TCP connection may take to send its first frame.
FIRST_FRAME_TIMEOUT_S = 10.0
LISTEN_BACKLOG = 64
# How long the login dialog listens for DNS-SD announcements of servers.
DISCOVERY_TIMEOUT_S = 2.0

# --- TCP framing --------------------------------------------------------------
MAX_HEADER_BYTES = 65536
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024

# --- Names, chat --------------------------------------------------------------
MAX_USERNAME_CHARS = 32
MAX_SESSION_NAME_CHARS = 64
MAX_PASSWORD_CHARS = 128
MAX_CHAT_CHARS = 4000
CHAT_HISTORY_MESSAGES = 500
# Chat messages one client keeps (history plus live); the lowest seq is dropped first.
CLIENT_CHAT_LOG_MESSAGES = 5000
# How long ConferenceClient.offer_file waits for upload_ready (or an error).
FILE_OFFER_REPLY_TIMEOUT_S = 10.0
# ConferenceClient.leave waits this long for each of its threads to end.
CLIENT_THREAD_JOIN_TIMEOUT_S = 5.0
# The client's UDP receive loop wakes this often to notice leave().
CLIENT_UDP_POLL_S = 0.2
# A client that has heard nothing from the server for this long (while pinging) gives up.
CLIENT_SERVER_SILENCE_S = 15.0
# leave() waits at most this long for a blocked send to finish before skipping its bye.
CLIENT_BYE_TIMEOUT_S = 1.0
MAX_PARTICIPANTS_PER_SESSION = 50
MAX_SESSIONS = 200
# Ids are u16 on the wire; 0 is the server.
MAX_PARTICIPANT_ID = 65535

# --- Heartbeat ----------------------------------------------------------------
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TIMEOUT_S = 15.0
UDP_REGISTER_RETRY_S = 1.0
UDP_KEEPALIVE_S = 5.0

# --- Server queues --------------------------------------------------------------
# Non-droppable bytes (control, chat) queued for one client before it is cut off.
CLIENT_QUEUE_MAX_BYTES = 32 * 1024 * 1024
# Screen frames waiting for one receiver: latest wins, older ones are dropped.
SCREEN_QUEUE_FRAMES = 1
# Audio frames the mixer holds per participant; at the limit the oldest is dropped.
MIXER_JITTER_FRAMES = 4
# The mixer keeps sending a listener its mix this long after the last talker stopped.
MIXER_HANGOVER_FRAMES = 5
LEVELS_INTERVAL_S = 0.2
UDP_RECV_BUFFER_BYTES = 4 * 1024 * 1024
UDP_MAX_DATAGRAM_BYTES = 65507
# TCP connections the server serves at once (participants, queries, file transfers).
SERVER_MAX_CONNECTIONS = 512
# The server's accept loop wakes this often to notice stop().
SERVER_ACCEPT_POLL_S = 0.2
# stop() lets writers flush the server_shutdown notice this long before cutting sockets.
SERVER_STOP_FLUSH_S = 0.5
# stop() waits at most this long for each server thread.
SERVER_THREAD_JOIN_TIMEOUT_S = 1.0
# The mixer clock skips ahead (rather than bursting) when this many frames behind.
MIXER_MAX_LAG_FRAMES = 5
# A jitter queue that never emptied during this many ticks (1 s) holds a standing delay:
# the mixer then drops its oldest frame (20 ms less latency per second).
MIXER_STANDING_QUEUE_TICKS = 50
# server.py logs its counters (sessions, participants, datagrams, drops) this often.
SERVER_STATS_LOG_INTERVAL_S = 60.0

# --- Audio --------------------------------------------------------------------
AUDIO_RATE_HZ = 22050
AUDIO_CHANNELS = 1
AUDIO_SAMPLE_WIDTH_BYTES = 2
# 441 samples = 20 ms: the seed's 2048 samples is 93 ms before a sound even leaves.
AUDIO_FRAME_SAMPLES = 441
AUDIO_FRAME_MS = 1000 * AUDIO_FRAME_SAMPLES // AUDIO_RATE_HZ
# Client playback jitter buffer, in frames.
JITTER_TARGET_FRAMES = 2
JITTER_MAX_FRAMES = 6
# Loss concealment: repeat the last frame this many times, fading, then silence.
CONCEAL_MAX_FRAMES = 3
# A jitter buffer that stayed above its target for this many periods drops one frame,
# so a burst's extra delay drains away instead of lasting the whole talk spurt.
JITTER_DRAIN_WINDOW_FRAMES = 25
# A WAV file used as a microphone is loaded whole; larger files are refused.
AUDIO_FILE_MAX_BYTES = 256 * 1024 * 1024
# A clock-paced source or sink that falls this many frames behind resyncs
# (skips ahead) instead of bursting to catch up.
AUDIO_PACER_MAX_LAG_FRAMES = 5
# How long stop() waits for a media thread (capture, playback, senders) to end.
MEDIA_THREAD_JOIN_TIMEOUT_S = 3.0

# --- Video --------------------------------------------------------------------
VIDEO_WIDTH_PX = 320
VIDEO_HEIGHT_PX = 240
VIDEO_FPS = 15
VIDEO_JPEG_QUALITY = 60
MAX_DATAGRAM_BYTES = 60000
VIDEO_REASSEMBLY_TIMEOUT_MS = 200
# Frames being reassembled at once per sender; older ones are dropped.
VIDEO_REASSEMBLY_MAX_FRAMES = 8
# A received JPEG (video or screen) claiming more pixels than this is not decoded.
IMAGE_DECODE_MAX_PIXELS = 4096 * 4096
# Where no device list exists (not Linux), camera indices 0..N-1 are probed by opening them.
CAMERA_PROBE_COUNT = 4

# --- Screen sharing -----------------------------------------------------------
SCREEN_MAX_WIDTH_PX = 1280
SCREEN_MAX_HEIGHT_PX = 720
SCREEN_FPS = 5
SCREEN_JPEG_QUALITY = 70

# --- Desktop GUI ----------------------------------------------------------------
# Video tiles and the shared screen are repainted this often from the latest frames.
GUI_REPAINT_INTERVAL_MS = 66
# Tiles the grid shows at once (5 x 5); further participants are listed, not drawn.
GUI_MAX_VIDEO_TILES = 25
# A tile with no new frame for this long falls back to the initials placeholder.
GUI_FRAME_STALE_MS = 2000
# A participant whose level is at least this (0-255) counts as speaking...
GUI_SPEAKING_LEVEL = 90
# ...and stays highlighted this long after the level drops.
GUI_SPEAKING_HOLD_MS = 600
# Chat lines (messages and notices) kept in the chat view; older ones scroll away.
GUI_CHAT_VIEW_MAX_LINES = 2000
# How long a notice (toast) stays on screen.
GUI_TOAST_MS = 4000
# The status bar's round-trip time is refreshed (a ping is sent) this often.
GUI_PING_INTERVAL_MS = 2000
# The GUI's frame-decoder thread wakes at least this often to notice it was stopped.
GUI_DECODER_IDLE_WAKE_S = 0.5

# --- Files --------------------------------------------------------------------
MAX_FILE_BYTES = 500 * 1024 * 1024
MAX_FILE_NAME_CHARS = 255
FILE_CHUNK_BYTES = 256 * 1024
# A data connection that stalls this long is dropped (upload discarded).
FILE_IDLE_TIMEOUT_S = 30.0
MAX_FILES_PER_SESSION = 1000
# An offer whose upload has not started within this is forgotten.
FILE_OFFER_TTL_S = 120.0
# Free disk space the server never fills with uploads.
FILE_DISK_RESERVE_BYTES = 64 * 1024 * 1024
# Client: progress callbacks at most this often (plus one at the end).
FILE_PROGRESS_INTERVAL_S = 0.1
# Client: reconnections (resuming at the partial file's size) before a download fails.
FILE_DOWNLOAD_RETRIES = 3
FILE_RETRY_DELAY_S = 0.5
# Client: "Report (1).pdf" ... "Report (N).pdf" are tried before a download gives up.
FILE_UNIQUE_NAME_TRIES = 1000
# Chunks of FILE_CHUNK_BYTES one transfer may have waiting for its hashing thread.
FILE_HASH_BUFFERS = 8
# Client uploads: bytes per sendfile call (progress, cancel and server errors are seen between).
FILE_SENDFILE_BLOCK_BYTES = 4 * 1024 * 1024


def default_storage_dir() -> Path:
    """A per-user folder for the server's uploaded files."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA", base)
    return Path(base) / "FusionMeet" / "server-files"


@dataclass
class ServerConfig:
    """The server's settings: defaults from the constants above, overridable."""

    host: str = DEFAULT_HOST
    tcp_port: int = DEFAULT_TCP_PORT
    udp_port: int = DEFAULT_UDP_PORT
    storage_dir: Path = field(default_factory=default_storage_dir)
    max_header_bytes: int = MAX_HEADER_BYTES
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_file_bytes: int = MAX_FILE_BYTES
    max_participants: int = MAX_PARTICIPANTS_PER_SESSION
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
    client_queue_max_bytes: int = CLIENT_QUEUE_MAX_BYTES
    first_frame_timeout_s: float = FIRST_FRAME_TIMEOUT_S
    file_idle_timeout_s: float = FILE_IDLE_TIMEOUT_S
    audio_rate_hz: int = AUDIO_RATE_HZ
    audio_frame_samples: int = AUDIO_FRAME_SAMPLES
    mixer_jitter_frames: int = MIXER_JITTER_FRAMES
    video_width_px: int = VIDEO_WIDTH_PX
    video_height_px: int = VIDEO_HEIGHT_PX
    video_fps: int = VIDEO_FPS
    max_datagram_bytes: int = MAX_DATAGRAM_BYTES


@dataclass
class ClientConfig:
    """The client's settings: timing of heartbeat and UDP registration."""

    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    udp_register_retry_s: float = UDP_REGISTER_RETRY_S
    udp_keepalive_s: float = UDP_KEEPALIVE_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    video_reassembly_timeout_ms: int = VIDEO_REASSEMBLY_TIMEOUT_MS


# --- Opus / jitter buffer / echo canceller (issue 10) ---------------------------
# Kept together at the end of the file so this block merges cleanly.
# Opus codec: 48 kHz mono, 20 ms frames, VOIP application.
OPUS_RATE_HZ = 48000
OPUS_CHANNELS = 1
OPUS_FRAME_MS = 20
OPUS_FRAME_SAMPLES = OPUS_RATE_HZ * OPUS_FRAME_MS // 1000
# Audio band the encoder may use: wideband (0-8 kHz, SILK). Measured on espeak-ng speech
# (bench/pesq_audio.py): SILK wideband at a 40 kbit/s target settles at ~31 kbit/s actual
# and scores PESQ-WB 4.0-4.1, while letting Opus pick super-wideband hybrid at 28-32 kbit/s
# spends the bits above 8 kHz and scores 3.0-3.7.
OPUS_MAX_BANDWIDTH = "wideband"  # one of narrowband, mediumband, wideband, superwideband, fullband
# Encoder target bitrate (VBR); with OPUS_MAX_BANDWIDTH the stream averages ~31 kbit/s on
# espeak-ng speech (39 kbit/s on the tests' harmonic-rich synthetic voice), never over 40.
OPUS_BITRATE_BPS = 40000
OPUS_MIN_BITRATE_BPS = 24000
OPUS_MAX_BITRATE_BPS = 40000
# Encoder complexity 0-10 (10 = best quality; a 20 ms frame still encodes in < 1 ms).
OPUS_COMPLEXITY = 10
# The loss the encoder plans its in-band FEC for (percent). 5 % keeps FEC in every voiced
# packet; 10 % takes so many bits for it that clean quality drops (PESQ-WB 3.9 vs 4.0).
OPUS_EXPECTED_LOSS_PERCENT = 5
# The largest encoded packet we accept or produce (Opus's own limit is 1275 bytes a frame).
OPUS_MAX_PACKET_BYTES = 1275
# Environment variable naming a libopus file to load (a frozen build ships its own).
OPUS_LIBRARY_ENV = "FUSIONMEET_LIBOPUS"

# Adaptive jitter buffer (jitter_buffer.py), in the spirit of WebRTC's NetEq.
# Inter-arrival deviations remembered for the quantile (2 s of 20 ms packets).
JB_HISTORY_PACKETS = 100
# The target delay covers this quantile of recent arrival-delay deviations.
JB_DELAY_QUANTILE = 0.95
# Floor of the target, over one frame: the playout granularity (one period of the caller).
JB_MIN_EXTRA_DELAY_MS = 0
# Ceiling of the target delay; packets further ahead than JB_MAX_BUFFER_MS are dropped.
JB_MAX_TARGET_DELAY_MS = 300
JB_MAX_BUFFER_MS = 600
# Target growth is immediate; shrinking forgets old peaks with this half-life.
JB_SHRINK_HALF_LIFE_MS = 2000
# Buffer level this far above / below the target triggers compression / stretching.
JB_ADJUST_HYSTERESIS_MS = 20
# Time-stretch output bounds for one 20 ms frame (WSOLA): 10-30 ms.
JB_STRETCH_MIN_MS = 10
JB_STRETCH_MAX_MS = 30
# Frames quieter than this RMS (int16) may be stretched whatever their shape.
JB_QUIET_RMS = 300.0
# A louder frame is stretched only when two adjacent pitch periods correlate this well.
JB_STRETCH_MIN_CORRELATION = 0.6
# Weight of the newest buffer-level sample in the filtered level (1/8: ~160 ms memory).
JB_LEVEL_FILTER = 0.125
# Pitch search range of the stretcher: a 20 ms frame holds two periods of 2.5-10 ms
# (100-400 Hz voices); a lower voice is cut at its best lag in range, joins still crossfaded.
JB_PITCH_MIN_MS = 2.5
JB_PITCH_MAX_MS = 10.0
# The pitch search runs on every 4th sample first, then refines at full rate.
JB_PITCH_DECIMATION = 4
# A loss in the last this many frames (10 s) keeps one extra frame in the target, so the
# packet after a lost one is there in time for its FEC.
JB_LOSS_MEMORY_FRAMES = 500
# Concealed frames in a row before the stream counts as paused (silence, re-buffer).
JB_MAX_CONCEAL_FRAMES = 5
# A packet this many sequence numbers away from the expected one restarts the stream.
JB_RESTART_SEQ_GAP = 500

# Echo canceller + preprocessor (speexdsp through ctypes, echo_canceller.py).
AEC_RATE_HZ = 48000
AEC_FRAME_MS = 20
AEC_FRAME_SAMPLES = AEC_RATE_HZ * AEC_FRAME_MS // 1000
# speexdsp works on 10 ms blocks (two per frame): its preprocessor delays by one block,
# so 10 ms rather than 20 ms are added to the microphone path.
AEC_BLOCK_MS = 10
AEC_BLOCK_SAMPLES = AEC_RATE_HZ * AEC_BLOCK_MS // 1000
# Echo tail the adaptive filter models (room reverberation plus device latency).
AEC_FILTER_LENGTH_MS = 200
AEC_NOISE_SUPPRESS_DB = -25
AEC_ECHO_SUPPRESS_DB = -40
AEC_ECHO_SUPPRESS_ACTIVE_DB = -15
AEC_AGC_ENABLED = True
AEC_AGC_LEVEL = 24000
AEC_DENOISE_ENABLED = True
# Speaker frames waiting for their microphone frame; at the limit the oldest is dropped.
AEC_PLAYBACK_QUEUE_FRAMES = 10
# Environment variable naming a libspeexdsp file to load (a frozen build ships its own).
AEC_LIBRARY_ENV = "FUSIONMEET_LIBSPEEXDSP"

# Network impairment relay (bench/netrelay.py), for benchmarks and tests on loopback.
# A relay stops by itself after this long, whatever it was asked.
NETRELAY_MAX_DURATION_S = 600.0
# Datagrams held back (delayed) at once; beyond it new ones are dropped (counted).
NETRELAY_MAX_QUEUE_PACKETS = 10000
# Distinct UDP clients (source addresses) one relay serves.
NETRELAY_MAX_CLIENTS = 256
# The relay threads wake at least this often to notice stop() and the time bound.
NETRELAY_POLL_S = 0.05
NETRELAY_JOIN_TIMEOUT_S = 2.0
# Datagrams read from one socket per wake-up before the queue is served again.
NETRELAY_MAX_READS_PER_WAKE = 64
NETRELAY_TCP_CHUNK_BYTES = 65536
