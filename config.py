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
# Protocol 2: TLS on every TCP connection, sealed UDP media, VP8 video in two
# layers with subscriptions (docs/PROTOCOL.md).
PROTOCOL_VERSION = 2
SUPPORTED_PROTOCOLS = (2,)

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
# VP8 screen frames waiting for one receiver. When another arrives with the queue
# full, the queue is dropped and the receiver gets nothing until the next keyframe
# (which the server asks the presenter for): inter frames cannot be skipped.
SCREEN_QUEUE_FRAMES = 4
# The mixer keeps sending a listener its mix this long after the last talker stopped.
MIXER_HANGOVER_FRAMES = 5
# ...and then encodes silence until Opus DTX marks it quiet, at most this many frames more
# (libopus enters DTX after ~10 frames of silence): the listener then plays silence
# instead of concealing the missing packets.
MIXER_DTX_WAIT_FRAMES = 25
# While exactly one participant talks, its Opus packets go to the listeners unchanged
# (audio_forward.py); False: always decode, mix and re-encode.
MIXER_FORWARD_SINGLE_TALKER = True
# A participant counts as talking this many frames after its last packet with voice
# (the SILK VAD flag): a short pause does not flip the server between forwarding and mixing.
MIXER_TALK_HANGOVER_FRAMES = 25
# A listener gets a lone talker's packets forwarded while the path (talker -> server ->
# listener) loses less than this fraction of its datagrams (a leg not yet measured counts
# as clean, its packets repeated meanwhile) and the talker's leg jitters at most
# MIXER_FORWARD_MAX_JITTER_MS; beyond either the mix did better in docs/BENCHMARKS.md
# ("Issue 10, fourth pass"): each leg's jitter buffer, FEC and repeats take that leg's share.
MIXER_FORWARD_MAX_LOSS_FRACTION = 0.12
MIXER_FORWARD_MAX_JITTER_MS = 45.0
# ...and once above it, forwarding waits until the jitter is below this share of it:
# each switch between forwarding and mixing moves the listener's delay.
MIXER_FORWARD_JITTER_HYSTERESIS = 0.6
# The route to a listener (forwarded or mixed) changes only in a talker's pause: this many
# packets without voice in a row (the SILK VAD flag also drops between syllables).
MIXER_ROUTE_PAUSE_FRAMES = 5
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
# server.py logs its counters (sessions, participants, datagrams, drops) this often.
SERVER_STATS_LOG_INTERVAL_S = 60.0

# --- Audio --------------------------------------------------------------------
# Protocol 2 carries Opus at 48 kHz mono in 20 ms frames (PROTOCOL.md, "Audio");
# PCM frames handed to and taken from the codec are int16 at this rate.
AUDIO_RATE_HZ = 48000
AUDIO_CHANNELS = 1
AUDIO_SAMPLE_WIDTH_BYTES = 2
# 960 samples = 20 ms: one Opus frame.
AUDIO_FRAME_SAMPLES = 960
AUDIO_CODEC = "opus"
AUDIO_FRAME_MS = 1000 * AUDIO_FRAME_SAMPLES // AUDIO_RATE_HZ
# Jitter buffers (server per sender, client playback): the JB_* block below.
# A WAV file at another rate is resampled band-limited (FFT) up to this many samples
# (about 6 minutes at 44.1 kHz; 128 MiB of float64 work), linearly beyond.
AUDIO_RESAMPLE_FFT_MAX_SAMPLES = 1 << 24
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
# A visible tile at least this wide (pixels) shows, and subscribes to, the large layer.
GUI_LARGE_TILE_MIN_WIDTH_PX = 400
# Subscription changes (resize, scroll, joins) are coalesced into one ``subscribe`` per ...
GUI_SUBSCRIBE_DEBOUNCE_MS = 150
# A tile whose stream brought no new picture for this long (waiting for a keyframe)
# keeps its last good picture and shows a "Video paused" badge.
GUI_FROZEN_BADGE_MS = 1000
# The active-speaker view moves the stage to a new loudest talker at most this often.
GUI_SPEAKER_SWITCH_MIN_S = 2.0
# Speaker view: the thumbnail strip's height as a fraction of the stage's.
GUI_THUMB_STRIP_FRACTION = 0.2
# Our own camera picture is scaled to this width for the self view.
GUI_SELF_VIEW_WIDTH_PX = 640
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

# --- Reconnection (issue 13) ----------------------------------------------------
# The server keeps a participant whose control connection broke (without bye) this
# long, shown to the others as reconnecting, before announcing participant_left.
RESUME_GRACE_S = 60.0
# The accept thread looks for participants whose grace period ended this often.
RESUME_SWEEP_S = 0.5
# Bytes of randomness in the resume secret handed in welcome (hex: twice as many chars).
RESUME_SECRET_BYTES = 32
# A client whose connection broke tries again after a delay that starts here, doubles
# each failed try up to the maximum, and is spread by +/- RECONNECT_JITTER (a fraction)
# so that clients cut together do not all come back in the same instant.
# Small on purpose: a try costs one TCP connection on a LAN, and the target is audio
# back within 1 s of the network's return (bench/reconnect.py).
RECONNECT_BACKOFF_FIRST_S = 0.1
RECONNECT_BACKOFF_MAX_S = 0.3
RECONNECT_JITTER = 0.3
# A client gives up reconnecting (and reports the disconnection) after this long (a
# network outage longer than the grace period ends in a rejoin as a new participant).
RECONNECT_GIVE_UP_S = 300.0
# After a server_shutdown notice the client waits for a restart only for the grace
# period the server announced in welcome (resume_grace_s) plus this margin.
RECONNECT_AFTER_SHUTDOWN_MARGIN_S = 15.0
# Time allowed for one reconnect try (TCP connect plus resume/welcome).
RECONNECT_TRY_TIMEOUT_S = 3.0
# ... of which the TCP connect may take this long (a LAN answers in milliseconds; a
# short bound means a new SYN soon after the network returns, not the kernel's 1 s, 3 s
# retransmissions).
RECONNECT_CONNECT_TIMEOUT_S = 0.5
# The server's sessions, chat history and shared-file list at stop, in its storage
# folder (persistence.py); a start within RESUME_GRACE_S of the stop restores them
# (files verified against their SHA-256), unless --fresh. A restored session nobody
# rejoins within RESUME_GRACE_S of the start ends (its files deleted).
SERVER_STATE_FILE = "server-state.json"
# While running, the server writes that state again after a change that matters (a
# session made or ended, someone joined or left, chat, a file announced or deleted), at
# most once per STATE_SAVE_INTERVAL_S (a chat flood costs one write per interval), and
# never more than STATE_SAVE_MAX_BUSY_FRACTION of the time (a slow disk waits longer),
# so a crash (kill -9) loses only the changes of the last interval.
STATE_SAVE_INTERVAL_S = 1.0
STATE_SAVE_MAX_BUSY_FRACTION = 0.1
# While nothing changes, the saved state's file time is refreshed this often: after a
# crash, the server counts as stopped at that time (the grace period runs from it).
STATE_REFRESH_S = 10.0
# After a crash the last saved chat seq may be behind what was delivered: the restored
# session's seq goes on this far past it, so no seq a client holds is given twice.
CHAT_SEQ_AFTER_CRASH_GAP = 1_000_000
# A saved state file larger than this is not read (it cannot be the server's own:
# MAX_SESSIONS sessions of CHAT_HISTORY_MESSAGES messages of MAX_CHAT_CHARS characters).
STATE_MAX_BYTES = 2 * 1024 * 1024 * 1024
# The GUI's "Reconnecting…" bar updates its elapsed time this often.
GUI_RECONNECT_TICK_MS = 1000

# --- Files --------------------------------------------------------------------
MAX_FILE_BYTES = 500 * 1024 * 1024
MAX_FILE_NAME_CHARS = 255
FILE_CHUNK_BYTES = 256 * 1024
# A data connection that stalls this long is dropped (upload discarded).
FILE_IDLE_TIMEOUT_S = 30.0
MAX_FILES_PER_SESSION = 1000
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
# Server uploads: after this many bytes are written, their writeback to disk is started
# (Linux sync_file_range), so the fsync before the announcement only waits for the tail.
FILE_WRITEBACK_BYTES = 16 * 1024 * 1024


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
    video_width_px: int = VIDEO_WIDTH_PX
    video_height_px: int = VIDEO_HEIGHT_PX
    video_fps: int = VIDEO_FPS
    max_datagram_bytes: int = MAX_DATAGRAM_BYTES
    # --- fair limits (issue 13): every cap a test or an operator can raise; the
    # constants are defined in the "Fair limits" block below (read when a config is made).
    max_connections: int = SERVER_MAX_CONNECTIONS
    max_connections_per_address: int = field(default_factory=lambda: MAX_CONNECTIONS_PER_ADDRESS)
    unjoined_connection_max_s: float = field(default_factory=lambda: UNJOINED_CONNECTION_MAX_S)
    max_sessions: int = MAX_SESSIONS
    max_sessions_created_per_address: int = field(
        default_factory=lambda: MAX_SESSIONS_CREATED_PER_ADDRESS
    )
    session_create_window_s: float = field(default_factory=lambda: SESSION_CREATE_WINDOW_S)
    chat_rate_messages_per_s: float = field(default_factory=lambda: CHAT_RATE_MESSAGES_PER_S)
    chat_burst_messages: int = field(default_factory=lambda: CHAT_BURST_MESSAGES)
    chat_rate_bytes_per_s: float = field(default_factory=lambda: CHAT_RATE_BYTES_PER_S)
    chat_burst_bytes: int = field(default_factory=lambda: CHAT_BURST_BYTES)
    max_open_offers_per_participant: int = field(
        default_factory=lambda: MAX_OPEN_OFFERS_PER_PARTICIPANT
    )
    max_open_offers_per_session: int = field(default_factory=lambda: MAX_OPEN_OFFERS_PER_SESSION)
    max_open_offers_per_address: int = field(default_factory=lambda: MAX_OPEN_OFFERS_PER_ADDRESS)
    max_reserved_bytes_per_participant: int = field(
        default_factory=lambda: MAX_RESERVED_BYTES_PER_PARTICIPANT
    )
    max_reserved_bytes_per_session: int = field(
        default_factory=lambda: MAX_RESERVED_BYTES_PER_SESSION
    )
    max_reserved_bytes_per_address: int = field(
        default_factory=lambda: MAX_RESERVED_BYTES_PER_ADDRESS
    )
    file_offer_start_timeout_s: float = field(default_factory=lambda: FILE_OFFER_START_TIMEOUT_S)
    # Reconnection (issue 13): how long a lost participant's place is kept.
    resume_grace_s: float = RESUME_GRACE_S
    fresh: bool = False  # start empty: ignore (and delete) the state a stop saved
    # The folder holding the TLS key and certificate (None: security.default_identity_dir()).
    identity_dir: Path | None = None


@dataclass
class ClientConfig:
    """The client's settings: timing of heartbeat and UDP registration."""

    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    udp_register_retry_s: float = UDP_REGISTER_RETRY_S
    udp_keepalive_s: float = UDP_KEEPALIVE_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    video_reassembly_timeout_ms: int = VIDEO_REASSEMBLY_TIMEOUT_MS
    # Reconnection (issue 13): 0 turns automatic reconnection off.
    reconnect_give_up_s: float = RECONNECT_GIVE_UP_S
    reconnect_backoff_first_s: float = RECONNECT_BACKOFF_FIRST_S
    reconnect_backoff_max_s: float = RECONNECT_BACKOFF_MAX_S


# --- Fair limits (issue 13) ------------------------------------------------------
# Each limit below has an error code and a sentence (utils.Err, utils.ERROR_TEXT) and a
# row in docs/PROTOCOL.md section 8, and a ServerConfig field tests can raise. "Address"
# is the client's IP address as the server sees it: people behind one NAT share it.
#
# A whole first frame (prefix, header and payload) must arrive within
# FIRST_FRAME_TIMEOUT_S (10 s, above) of accept, however slowly its bytes trickle:
# one absolute deadline (limits.Deadline), never a per-recv timeout that each byte restarts.
# A connection that has neither joined (hello) nor started a transfer this long after
# accept is closed, however many list_sessions it sends.
UNJOINED_CONNECTION_MAX_S = 30.0
# TCP connections one address may hold at once (control, queries, file transfers).
MAX_CONNECTIONS_PER_ADDRESS = 16
# Sessions one address may create within SESSION_CREATE_WINDOW_S (a sliding window).
MAX_SESSIONS_CREATED_PER_ADDRESS = 5
SESSION_CREATE_WINDOW_S = 60.0
# Chat per participant, two token buckets: messages...
CHAT_RATE_MESSAGES_PER_S = 5.0
CHAT_BURST_MESSAGES = 20
# ...and UTF-8 bytes of message text (a burst holds four messages of 4000 4-byte chars).
CHAT_RATE_BYTES_PER_S = 8 * 1024
CHAT_BURST_BYTES = 64 * 1024
# File offers made and not yet stored (offered, or uploading), and the disk bytes they
# reserve, per participant, per session and per address.
MAX_OPEN_OFFERS_PER_PARTICIPANT = 4
MAX_OPEN_OFFERS_PER_SESSION = 16
MAX_OPEN_OFFERS_PER_ADDRESS = 8
MAX_RESERVED_BYTES_PER_PARTICIPANT = 1024 * 1024 * 1024
MAX_RESERVED_BYTES_PER_SESSION = 4 * 1024 * 1024 * 1024
MAX_RESERVED_BYTES_PER_ADDRESS = 2 * 1024 * 1024 * 1024
# An offer whose upload has not started this long after upload_ready is forgotten and
# its reservation released (and a cut resumable upload, this long after the cut); an
# upload that stalls for FILE_IDLE_TIMEOUT_S (30 s, above) is released too.
FILE_OFFER_START_TIMEOUT_S = 30.0
# Chat history and lists sent on join are split into frames whose header stays this far
# under max_header_bytes (room for the frame's other fields).
HISTORY_HEADER_MARGIN_BYTES = 4096
# Frames of history (chat, participants, files) after welcome, at most.
MAX_HISTORY_FRAMES = 256
# Client: chat messages waiting in the outbox for the server's echo (oldest kept; the
# newest is refused with a notice when full).
CLIENT_CHAT_OUTBOX_MESSAGES = 100
# Server: client message ids (cid) remembered per participant to drop a resent duplicate.
CHAT_DEDUP_IDS = 1000
# ... and of those, per member of a session, the last ones saved with the server's
# state (persistence.py), so a message resent after a restart is acknowledged, not
# stored twice: as many as a client's outbox can hold.
STATE_CHAT_IDS_PER_PARTICIPANT = CLIENT_CHAT_OUTBOX_MESSAGES
# Per session: the chat ids of this many departed members (by name) are kept, so a client
# that joins again with hello after its place expired is not delivered twice.
CHAT_DEPARTED_NAMES_KEPT = 200
# A client message id is 1-64 ASCII letters, digits, '-' or '_'.
MAX_CHAT_CID_CHARS = 64
# Client: data connections an upload opens again after a cut, each resuming from the
# bytes the server holds (upload "resume"), waiting FILE_RETRY_DELAY_S x attempt first.
FILE_UPLOAD_RETRIES = 3
# Client: after a failed TLS handshake, how long one plain probe connection waits for the
# plain error a server sends a connection it refuses at accept (too_many_connections).
PLAIN_REFUSAL_PROBE_S = 1.0

# ==============================================================================
# --- Security (issue 12: TLS, trust on first use, sealed media, password hashes)
# ==============================================================================
# Used by security.py, media_crypto.py, server.py, media_relay.py, client.py and
# file_sharing_module.py. Wire-format sizes (nonce, tag, counter) are fixed by
# docs/PROTOCOL.md section 9 and live in media_crypto.py, not here.

# Overrides the per-user data folder (server identity, trusted servers), e.g. in tests.
DATA_DIR_ENV = "FUSIONMEET_DATA_DIR"
# Server identity: an ECDSA P-256 key and a self-signed certificate, made on first start.
IDENTITY_DIR_NAME = "server-identity"
IDENTITY_KEY_FILE = "server-key.pem"
IDENTITY_CERT_FILE = "server-cert.pem"
# Clients pin the certificate's fingerprint, so expiry is never checked; 20 years.
IDENTITY_CERT_VALID_DAYS = 7300
# notBefore lies this far in the past, for peers whose clocks run behind.
IDENTITY_CERT_BACKDATE_S = 86400
# An identity file larger than this is corrupt (a PEM key or certificate is < 2 KiB).
IDENTITY_MAX_FILE_BYTES = 64 * 1024
# Short readable fingerprint: the first 16 bytes of the SHA-256, as 8 groups of 4 hex digits.
FINGERPRINT_SHORT_BYTES = 16
FINGERPRINT_GROUP_HEX_DIGITS = 4
# A TLS handshake (either side, including the server's first-byte sniff) must end within this.
TLS_HANDSHAKE_TIMEOUT_S = 10.0
# TLSStream reads the socket in blocks of this size (one buffer per connection)...
TLS_RECV_BLOCK_BYTES = 64 * 1024
# ...growing (doubling) up to this while reads keep filling it: a bulk transfer (a file)
# makes one system call per MiB, an idle control connection keeps the small buffer.
TLS_RECV_BLOCK_MAX_BYTES = 1024 * 1024
# ...and encrypts at most this much before writing it to the socket (bounds the copy).
TLS_SEND_BLOCK_BYTES = 256 * 1024
# A join re-verifies the password this many times if the session changes meanwhile.
JOIN_PASSWORD_RECHECKS = 3
# The client re-registers its UDP address after this long without any datagram from
# the server (its keepalives are answered every UDP_KEEPALIVE_S, so a live binding is
# never this quiet).
UDP_REBIND_SILENCE_S = 10.0
# Trust on first use: the client's file of pinned server fingerprints.
TRUST_STORE_FILE = "known_servers.json"
TRUST_STORE_MAX_SERVERS = 1000
TRUST_STORE_MAX_BYTES = 1024 * 1024
# Sealed media: counters accepted out of order behind the highest one seen (RFC 6479 style).
REPLAY_WINDOW_PACKETS = 1024
# Session passwords: the server keeps only an scrypt hash (RFC 7914 parameters).
PASSWORD_SCRYPT_N = 2**14
PASSWORD_SCRYPT_R = 8
PASSWORD_SCRYPT_P = 1
PASSWORD_SALT_BYTES = 16
PASSWORD_HASH_BYTES = 32
# verify_password refuses stored parameters that would need more memory than this.
PASSWORD_SCRYPT_MAXMEM_BYTES = 64 * 1024 * 1024


def default_data_dir() -> Path:
    """The per-user folder for FusionMeet's data (``FUSIONMEET_DATA_DIR`` overrides it).

    Linux and other Unix: ``$XDG_DATA_HOME/FusionMeet`` (``~/.local/share``); macOS:
    ``~/Library/Application Support/FusionMeet``; Windows: ``%LOCALAPPDATA%\\FusionMeet``
    (as ``default_storage_dir``).
    """
    import sys  # here, not at the top, so this block merges as one hunk

    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / APP_NAME


# --- Recording (issue 14) ------------------------------------------------------
# recorder.MeetingRecorder: the server writes a meeting (the "everyone" audio mix, the
# shared screen or else the active speaker, chat in a side file) to one WebM file.
# Only royalty-free, LGPL/BSD codecs: VP8 (libvpx) and Opus (libopus), never H.264/H.265.
RECORDING_CONTAINER_FORMAT = "webm"
RECORDING_FILE_SUFFIX = ".webm"
# Chat goes to "<name>.chat.txt" beside "<name>.webm" (plain UTF-8 lines, one per message).
RECORDING_CHAT_SUFFIX = ".chat.txt"
RECORDING_VIDEO_CODEC = "libvpx"
RECORDING_AUDIO_CODEC = "libopus"
# The fixed output picture: every input (screen or camera) is scaled and letterboxed to it.
RECORDING_VIDEO_WIDTH_PX = 1280
RECORDING_VIDEO_HEIGHT_PX = 720
# Fixed output frame rate; the last picture is repeated when no new one came.
RECORDING_FPS = 5
RECORDING_VIDEO_BITRATE_BPS = 1_000_000
# A keyframe at least this often: seeking, and a cut file plays from the last one.
RECORDING_KEYFRAME_INTERVAL_S = 2.0
# The muxer writes a cluster at most this long / large: a file cut short (power loss)
# keeps everything up to its last cluster, and finalising never needs more than this.
RECORDING_CLUSTER_TIME_LIMIT_MS = 2000
RECORDING_CLUSTER_SIZE_LIMIT_BYTES = 1024 * 1024
# libvpx speed: "realtime" deadline with cpu-used 8 is its fastest mode (the server's
# two cores also carry the mixer); 1 encoder thread so recording never takes both cores.
RECORDING_VP8_DEADLINE = "realtime"
RECORDING_VP8_CPU_USED = 8
# No look-ahead: a frame's packet comes out at once, so the muxer never waits for video.
RECORDING_VP8_LAG_IN_FRAMES = 0
RECORDING_ENCODER_THREADS = 1
# Opus accepts 8/12/16/24/48 kHz only; the 22.05 kHz mix is resampled to this.
RECORDING_AUDIO_RATE_HZ = 48000
# Samples per Opus frame at RECORDING_AUDIO_RATE_HZ (20 ms).
RECORDING_OPUS_FRAME_SAMPLES = 960
RECORDING_AUDIO_BITRATE_BPS = 48_000
# Items (audio chunks, pictures, chat lines) waiting for the recorder thread, and their
# bytes; at either limit queued pictures are dropped first, then the new item.
RECORDING_QUEUE_MAX_ITEMS = 256
RECORDING_QUEUE_MAX_BYTES = 32 * 1024 * 1024
# Audio more than this early or late against its timestamp is resynchronised:
# a gap is filled with silence, audio running ahead is dropped.
RECORDING_AUDIO_SYNC_TOLERANCE_MS = 60
# With nothing arriving, the timeline (silence, repeated pictures) is advanced to
# "now" minus this margin, so items still on their way are never behind it.
RECORDING_HOLD_MS = 300
# The recorder thread wakes at least this often (idle advance, disk check, stop).
RECORDING_IDLE_WAKE_S = 0.1
# Free space checked this often; below RECORDING_MIN_FREE_BYTES the recording stops.
RECORDING_DISK_CHECK_INTERVAL_S = 1.0
RECORDING_MIN_FREE_BYTES = 64 * 1024 * 1024
# A ballast file of this size is kept beside the recording and freed when a write fails
# with ENOSPC, so the file can still be finalised (last cluster, cues, duration).
RECORDING_FINALISE_RESERVE_BYTES = 4 * 1024 * 1024
# A JPEG picture claiming more pixels than this is not decoded.
RECORDING_DECODE_MAX_PIXELS = IMAGE_DECODE_MAX_PIXELS
# stop() waits this long for the recorder thread to finalise the file.
RECORDING_STOP_TIMEOUT_S = 30.0
# With nobody presenting, the recording shows the active speaker's camera (small layer,
# recording_feed.py): the loudest participant with a camera whose level (0-255, as in
# the ``l`` levels) is at least RECORDING_SPEAKING_LEVEL. Another talker takes the
# picture only after being the loudest for RECORDING_SPEAKER_HOLD_S (pauses shorter
# than that do not break the run), so the picture does not flicker between talkers.
RECORDING_SPEAKING_LEVEL = 90
RECORDING_SPEAKER_HOLD_S = 2.0

# === VP8 / simulcast (issue 11) ===================================================
# video_codec.py, simulcast.py and video_routing.py, wired in by video_module.py,
# screen_sharing_module.py, media_relay.py and sessions.py: docs/PROTOCOL.md section 10.


@dataclass(frozen=True)
class LayerSpec:
    """One simulcast layer: its name on the wire, its picture size and its bitrate ceiling."""

    name: str
    width_px: int
    height_px: int
    bitrate_bps: int


VIDEO_LAYER_SMALL = "small"
VIDEO_LAYER_LARGE = "large"
VIDEO_LAYERS = (VIDEO_LAYER_SMALL, VIDEO_LAYER_LARGE)
# ``keyframe_request`` names the shared screen with this layer name.
SCREEN_LAYER = "screen"
# Thumbnails: always encoded while the camera is on.
VIDEO_SMALL_LAYER = LayerSpec(VIDEO_LAYER_SMALL, 320, 180, 150_000)
# The large layer, only while someone shows this camera large: 640x360 ...
VIDEO_LARGE_LAYER_360P = LayerSpec(VIDEO_LAYER_LARGE, 640, 360, 650_000)
# ... or 1280x720 when the source delivers at least this height.
VIDEO_LARGE_LAYER_720P = LayerSpec(VIDEO_LAYER_LARGE, 1280, 720, 1_500_000)
VIDEO_LARGE_720P_MIN_SOURCE_HEIGHT_PX = 720
VIDEO_CAMERA_FPS = 15
# The test pattern "camera" renders at this size (16:9, gives the 720p large layer).
# A camera is asked for this mode (16:9 720p); one without it keeps its own size.
CAMERA_WANTED_WIDTH_PX = 1280
CAMERA_WANTED_HEIGHT_PX = 720
# The receiver's video-decoder thread wakes at least this often (timeouts, reports).
VIDEO_DECODER_IDLE_WAKE_S = 0.05
VIDEO_TEST_PATTERN_WIDTH_PX = 1280
VIDEO_TEST_PATTERN_HEIGHT_PX = 720

# Encoder (libvpx VP8, realtime). Camera: fastest speed; screen: slower, sharper.
VP8_CAMERA_CPU_USED = 8
VP8_SCREEN_CPU_USED = 6
# Camera quantizer range (0-63, lower = better); CBR picks within it.
VP8_CAMERA_QMIN = 4
VP8_CAMERA_QMAX = 56
# Screen: one fixed quantizer, so every keyframe and slide is equally sharp (rate
# control under a bitrate cap blurred the second slide to 35 dB); an unchanged
# screen still costs ~0.4 KB a frame. Under pressure the screen sender lowers its
# frame rate, not its quality. Static threshold: a 16x16 block whose change sums
# below this counts as unchanged (skipped).
VP8_SCREEN_QUANTIZER = 14
VP8_SCREEN_STATIC_THRESHOLD = 100
# Rate-control buffer of the camera's CBR encoder (how far frames may overshoot the mean).
VP8_CAMERA_RC_BUFFER_MS = 1000
# A keyframe is produced at least this often even when nobody asks (a safety net;
# requests from receivers are the normal way).
VP8_KEYFRAME_MAX_INTERVAL_S = 10.0
# Libvpx threads per encoder (1: simulcast layers and decoders already run side by side).
VP8_ENCODER_THREADS = 1
# A received VP8 keyframe claiming more pixels than this is not decoded.
VP8_DECODE_MAX_PIXELS = 1920 * 1088

# Screen sharing through VP8 (replaces JPEG with protocol v2).
SCREEN_VP8_MAX_WIDTH_PX = 1920
SCREEN_VP8_MAX_HEIGHT_PX = 1080
SCREEN_VP8_FPS = 10
SCREEN_VP8_BITRATE_BPS = 2_500_000
# A presenter whose sends back up lowers its frame rate, not below this.
SCREEN_VP8_MIN_FPS = 2
# A screen picture in which at least this fraction of 16x16 blocks changed (a new
# slide, a window switch) is sent as a keyframe: sharp in its first frame.
SCREEN_VP8_SCENE_CUT_FRACTION = 0.2
# ... where a block (VP8 macroblock size) counts as changed when its mean moved by
# more than this many 8-bit levels in any channel.
SCREEN_VP8_SCENE_CUT_BLOCK_PX = 16
SCREEN_VP8_SCENE_CUT_BLOCK_DIFF_LEVELS = 2

# Subscriptions (server): tiles one viewer may subscribe to at once, and how many of
# them large (stage, pins). A longer subscribe list is refused (bad_message).
SUBSCRIBE_MAX_TILES = GUI_MAX_VIDEO_TILES
# ``media.layers`` (PROTOCOL.md 10.4): announced layer sizes and nominal bitrates.
LAYER_MIN_SIDE_PX = 16
LAYER_MAX_SIDE_PX = 4096
LAYER_MIN_BPS = 10_000
LAYER_MAX_BPS = 10_000_000
# How often the server's bandwidth guard decides (and sends ``bitrate`` hints).
BW_TICK_INTERVAL_S = 1.0
SUBSCRIBE_MAX_LARGE_LAYERS = 4

# Keyframe requests: at most one per sender and layer in this interval (server and
# viewer alike); a request that comes sooner is coalesced and sent when it ends. 200 ms:
# a viewer still waiting when a loss burst ends has a clean keyframe within 200 ms plus
# one frame (bench/video_quality.py; at 300 ms one run of 3 took 343 ms).
KEYFRAME_REQUEST_MIN_INTERVAL_MS = 200

# v2 video datagrams (docs/PROTOCOL.md 10.3): at most this many bytes each, so
# none is IP-fragmented on a 1500-byte MTU; a frame has at most this many fragments.
VIDEO_V2_MAX_DATAGRAM_BYTES = 1200
VIDEO_V2_MAX_FRAGMENTS = 1024
# Receiver reassembly of v2 fragments: frames pending per layer stream.
VIDEO_V2_REASSEMBLY_MAX_FRAMES = 4
# Complete frames waiting for one stream's decoder; past it the queue is dropped and
# a keyframe requested (VP8 frames depend on each other: no "latest wins" here).
VIDEO_DECODE_QUEUE_FRAMES = 8

# Bandwidth guard (server): loss seen by a sender's viewers, per layer.
# Viewers report what they received and lost per sender and layer this often.
VIDEO_LOSS_REPORT_INTERVAL_S = 1.0
# A datagram this many places late still counts as received, not lost...
VIDEO_LOSS_REORDER_WINDOW_PACKETS = 64
# ...and a jump in seq larger than this is a restart, not loss.
VIDEO_LOSS_RESYNC_GAP_PACKETS = 1024
# Loss is judged over this window, from at least this many packets.
BW_LOSS_WINDOW_S = 2.0
BW_MIN_PACKETS = 20
# More loss than this lowers the bitrate (x BW_DECREASE_FACTOR, not below the floor),
# at most once per BW_DECREASE_INTERVAL_S.
BW_LOSS_HIGH_FRACTION = 0.02
BW_DECREASE_FACTOR = 0.7
BW_DECREASE_INTERVAL_S = 2.0
# Loss below this for BW_INCREASE_INTERVAL_S raises it again (x BW_INCREASE_FACTOR,
# up to the layer's bitrate), once per interval.
BW_LOSS_LOW_FRACTION = 0.005
BW_INCREASE_FACTOR = 1.1
BW_INCREASE_INTERVAL_S = 3.0
# The guard never asks a layer for less than this fraction of its LayerSpec bitrate...
BW_FLOOR_FRACTION = 0.25
# ...and never changes a bitrate by less than this (each change reopens the encoder).
BW_MIN_CHANGE_BPS = 10_000


# ==============================================================================
# --- Meeting controls (issue 14: host, lobby, hands, reactions, spotlight, recording)
# ==============================================================================
# Used by meeting.py (pure: times are passed in, seconds on a monotonic clock);
# server.py, client.py, headless.py and the GUI adopt them at integration. The wire
# is drafted in docs/PROTOCOL-v2-meeting.md.
#
# People waiting in one session's lobby at once; one more is refused (lobby_full).
MEETING_LOBBY_MAX_WAITING = 20
# A person no host admitted or declined within this long is sent away (timeout).
MEETING_LOBBY_MAX_WAIT_S = 600.0
# Removed names a session remembers; at the limit the oldest removal is forgotten.
MEETING_MAX_BANS = 200
# A host's reason for removing or declining someone, in characters (after cleaning).
MEETING_REASON_MAX_CHARS = 200
# The reactions a participant may send: single code points, no variation selectors or
# skin tones, so a byte-exact comparison is the whole check.
MEETING_REACTIONS = (
    "\U0001f44d",  # 👍 thumbs up
    "\U0001f44e",  # 👎 thumbs down
    "\U0001f44f",  # 👏 clapping hands
    "\U0001f602",  # 😂 face with tears of joy
    "\U0001f62e",  # 😮 face with open mouth
    "\U0001f389",  # 🎉 party popper
)
# Reactions per participant: a token bucket, this many per second...
MEETING_REACTIONS_PER_S = 1.0
# ...and at most this many in a burst; more are refused (rate_limited).
MEETING_REACTION_BURST = 5
# Hand raises per participant (lowering is never limited): a token bucket.
MEETING_HAND_RAISES_PER_S = 0.2
MEETING_HAND_RAISE_BURST = 3
# Client: a reaction floats over the sender's tile this long.
MEETING_REACTION_SHOW_MS = 4000
# Client: the participants panel shows a search box once it lists more people than this.
MEETING_PARTICIPANT_SEARCH_MIN = 12
# The participants panel shows the first this many people waiting in the lobby.
MEETING_LOBBY_ROWS_SHOWN = 3

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
# The loss an encoder plans its in-band FEC for until receivers' reports say otherwise
# (percent; audio_loss.py). 0: until then the packets are repeated
# (AUDIO_REPEAT_AT_START), and FEC bits would only take quality from the speech.
OPUS_EXPECTED_LOSS_PERCENT = 0
# Receiver-driven expected loss (audio_loss.py): each listener reports the frames its
# jitter buffer decoded and lost this often; the server tells each talker the loss its
# packets meet (``audio_loss``) and sets its mix encoders' from their listeners'.
AUDIO_LOSS_REPORT_INTERVAL_S = 1.0
# A loss estimate moves once this many frames were counted...
AUDIO_LOSS_MIN_FRAMES = 25
# ...by this fraction of the way toward the new figure (exponential smoothing).
AUDIO_LOSS_SMOOTHING = 0.5
# Below this loss the encoders plan no FEC (Opus spends FEC bits at any expected loss > 0).
AUDIO_LOSS_FEC_MIN_FRACTION = 0.005
# The most loss an encoder is told to plan for (percent).
AUDIO_LOSS_MAX_PERCENT = 20
# Repeat (audio_repeat.py, RFC 2198's idea without its payload format): while the loss
# a stream meets is at least this (percent of its datagrams), its sender sends
# each Opus packet a second time one frame later, same seq and bytes.
AUDIO_REPEAT_MIN_PERCENT = 1
# ...and keeps repeating until the measured loss falls below this (percent; hysteresis).
AUDIO_REPEAT_STOP_PERCENT = 0.5
# Repeat from the start, until the loss is measured: a talker until the server's first
# audio_loss, the server to each listener until that listener's reports were counted.
AUDIO_REPEAT_AT_START = True
# ...but at most this many frames of audio (5 s): a peer that never reports (or a server
# that never tells) is taken to be on a clean leg.
AUDIO_REPEAT_UNMEASURED_FRAMES = 250
# While repeating, the encoder's FEC plans for the loss left after repeats: that of both
# copies (fraction squared) times this (losses of consecutive datagrams go together).
AUDIO_REPEAT_RESIDUAL_FACTOR = 2.0
# The seqs of a talker's stream the server remembers having forwarded (a repeat of one of
# them is not forwarded again).
AUDIO_REPEAT_MEMORY_PACKETS = 16
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
# The server's per-sender buffers plan this much more: its 20 ms tick and a sender's
# 20 ms clock run unlocked, so a packet arriving a few ms after "its" tick is common.
MIXER_JB_MIN_EXTRA_DELAY_MS = 0
# Ceiling of the target delay; packets further ahead than JB_MAX_BUFFER_MS are dropped.
JB_MAX_TARGET_DELAY_MS = 300
JB_MAX_BUFFER_MS = 600
# Target growth is immediate; shrinking forgets old peaks with this half-life.
JB_SHRINK_HALF_LIFE_MS = 2000
# Playout this far below its plan (the target less a frame) stretches a frame; more than a
# frame plus this above it compresses one (jitter_buffer._adjust).
JB_ADJUST_HYSTERESIS_MS = 20
# Time-stretch output bounds for one 20 ms frame (WSOLA): 10-30 ms.
JB_STRETCH_MIN_MS = 10
JB_STRETCH_MAX_MS = 30
# Frames quieter than this RMS (int16) may be stretched whatever their shape.
JB_QUIET_RMS = 300.0
# A buffer above its target compresses only quiet frames, and speech too only when
# this much (ms) above it: a compression mid-word shifts the rest of the word.
JB_ACCELERATE_IN_SPEECH_MS = 60.0
# A louder frame is stretched only when two adjacent pitch periods correlate this well.
JB_STRETCH_MIN_CORRELATION = 0.6
# In DTX silence the playout is squared with the target plus this much (at most half the
# jitter the target covers, so none on a clean network): the target's quantile wanders and
# grows while its history fills, and silence held now saves an expand in the next word.
JB_SILENCE_MARGIN_MS = 15.0
# Pitch search range of the stretcher: a 20 ms frame holds two periods of 2.5-10 ms
# (100-400 Hz voices); a lower voice is cut at its best lag in range, joins still crossfaded.
JB_PITCH_MIN_MS = 2.5
JB_PITCH_MAX_MS = 10.0
# The pitch search runs on every 4th sample first, then refines at full rate.
JB_PITCH_DECIMATION = 4
# A loss in the last this many frames (10 s) keeps one extra frame in the target, so the
# packet after a lost one is there in time for its FEC.
JB_LOSS_MEMORY_FRAMES = 500
# A frame's datagrams are counted (copies_sent / copies_lost) this many frames after it
# played: its repeat, sent a frame after it, has come by then.
JB_COPY_COUNT_DELAY_FRAMES = 5
# Frames whose copies are remembered at most (frames skipped by an overflow are forgotten).
JB_COPY_MEMORY_FRAMES = 64
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

# Settings refreshes its input level meter this often.
SETTINGS_LEVEL_INTERVAL_MS = 100
# Settings' "Test microphone": seconds recorded, then played back.
MIC_TEST_SECONDS = 3.0
# Peak amplitude (int16) of Settings' "Play test sound" chime.
TEST_SOUND_AMPLITUDE = 9000
# Per-participant volume for me (audio_gain message): percent, 100 = unchanged.
AUDIO_GAIN_MIN_PERCENT = 0
AUDIO_GAIN_MAX_PERCENT = 200
# Server: a lobby connection checks for a host's answer (and the wait limit) this often,
# in seconds, between frames from the waiting client (ping, bye).
MEETING_LOBBY_POLL_S = 0.05
# Server: recordings are written in this folder of the server's storage folder.
RECORDINGS_DIR_NAME = "recordings"
