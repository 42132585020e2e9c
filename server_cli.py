"""The server's command line: ``server.py`` options, the banner, the status line, ``main``.

``server.main`` calls ``main`` here; ``ConferenceServer`` (server.py) is the server itself.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import config
import security
from config import ServerConfig
from server import ConferenceServer

log = logging.getLogger("server")  # the server's log lines keep one logger name

config_module = config


def build_parser() -> argparse.ArgumentParser:
    """The server's command line."""
    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog="server.py",
        description="FusionMeet LAN conferencing server (TCP control/files, UDP media).",
    )
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    p.add_argument(
        "--tcp-port",
        type=int,
        default=d.tcp_port,
        help=f"TCP port for control and file data; 0 lets the OS choose (default {d.tcp_port})",
    )
    p.add_argument(
        "--udp-port",
        type=int,
        default=d.udp_port,
        help=f"UDP port for audio/video; 0 lets the OS choose (default {d.udp_port})",
    )
    p.add_argument(
        "--storage",
        type=Path,
        default=d.storage_dir,
        help=f"folder for shared files and the saved state (kept while running and at stop); "
        f"its server-made files are "
        f"deleted at start unless a restart within the grace period restores them "
        f"(default {d.storage_dir})",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start empty: forget the sessions, chat and shared files the last stop saved "
        "(by default a start within the grace period restores them)",
    )
    p.add_argument(
        "--max-file-mb",
        type=int,
        default=d.max_file_bytes // (1024 * 1024),
        help="largest file a participant may share, in MiB (default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging detail on stderr (default INFO)",
    )
    p.add_argument("--log-file", type=Path, help="also append the log to this file")
    p.add_argument(
        "--name",
        default=None,
        help="the name people see in the join dialog's server list (default: the host name)",
    )
    p.add_argument(
        "--no-announce",
        action="store_true",
        help="do not announce the server on the LAN (DNS-SD / mDNS)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder of the server's TLS identity (key and certificate, made on first "
        f"start); default: the user's data folder ({config_module.DATA_DIR_ENV} overrides it)",
    )
    p.add_argument(
        "--max-connections-per-address",
        type=int,
        default=d.max_connections_per_address,
        help="TCP connections one IP address may hold at once; raise it when many people "
        "share one address, e.g. behind NAT (default %(default)s)",
    )
    p.add_argument(
        "--max-sessions-per-address",
        type=int,
        default=d.max_sessions_created_per_address,
        help=f"sessions one IP address may create per {d.session_create_window_s:g} s "
        "(default %(default)s)",
    )
    p.add_argument(
        "--fingerprint",
        action="store_true",
        help="print the server's TLS fingerprint (full, then short) and exit; makes the "
        "identity if there is none yet",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=config_module.SERVER_STATS_LOG_INTERVAL_S,
        help="seconds between one-line status reports; 0 turns them off (default %(default)s)",
    )
    return p


def banner(server: ConferenceServer, addresses: list[str]) -> str:
    """What the operator reads at start: the addresses to type and the ports to open."""
    if server.host in ("0.0.0.0", ""):
        shown = addresses or ["127.0.0.1"]
    else:
        shown = [server.host]
    port = "" if server.tcp_port == config_module.DEFAULT_TCP_PORT else f":{server.tcp_port}"
    lines = [
        f"{config_module.APP_NAME} server is running.",
        "  People join by typing one of these as the server address:",
        *(f"      {addr}{port}" for addr in shown),
        f"  Firewall: allow TCP {server.tcp_port} (control, files) "
        f"and UDP {server.udp_port} (audio, video).",
        f"  Fingerprint: {short_fp(server.fingerprint)}",
        "    (people joining for the first time compare it with the one their app shows)",
        "  Press Ctrl+C to stop.",
    ]
    return "\n".join(lines)


class StatusLine:
    """The periodic one-line status: sessions, participants, traffic in and out."""

    def __init__(self, server: ConferenceServer) -> None:
        self.server = server
        self._last = time.monotonic()
        self._last_in = self._last_out = 0

    def line(self) -> str:
        now = time.monotonic()
        st = self.server.snapshot_stats()
        span = max(now - self._last, 1e-6)
        rate_in = (st.get("bytes_in", 0) - self._last_in) * 8 / span / 1000
        rate_out = (st.get("bytes_out", 0) - self._last_out) * 8 / span / 1000
        self._last, self._last_in, self._last_out = (
            now,
            st.get("bytes_in", 0),
            st.get("bytes_out", 0),
        )
        sessions = self.server.list_sessions()
        people = sum(s["participants"] for s in sessions)
        return (
            f"status: sessions={len(sessions)} participants={people} "
            f"in={rate_in:.0f} kbit/s out={rate_out:.0f} kbit/s "
            f"dropped={st.get('datagrams_dropped', 0)}"
        )


def short_fp(fingerprint: str) -> str:
    return security.short_fingerprint(fingerprint) if fingerprint else "(none)"


def identity_dir(data_dir: Path | None) -> Path | None:
    """The identity folder inside ``--data-dir`` (None: the default folder)."""
    return None if data_dir is None else Path(data_dir) / config_module.IDENTITY_DIR_NAME


def print_fingerprint(data_dir: Path | None) -> int:
    """``server.py --fingerprint``: the full fingerprint, then the short one; exit status."""
    try:
        ident = security.load_or_create_identity(identity_dir(data_dir))
    except security.SecurityError as exc:
        print(f"cannot read the server identity: {exc.message}", file=sys.stderr)
        return 1
    print(f"fingerprint: {ident.fingerprint}")
    print(f"short: {ident.short_fingerprint}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.fingerprint:
        return print_fingerprint(args.data_dir)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log_file is not None:
        try:
            handlers.append(logging.FileHandler(args.log_file, encoding="utf-8"))
        except OSError as exc:
            print(f"cannot open the log file: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        handlers=handlers,
    )
    if args.max_file_mb < 0:
        print("--max-file-mb must be >= 0", file=sys.stderr)
        return 2
    if min(args.max_connections_per_address, args.max_sessions_per_address) < 1:
        print("--max-connections/sessions-per-address must be >= 1", file=sys.stderr)
        return 2
    cfg = ServerConfig(
        host=args.host,
        tcp_port=args.tcp_port,
        udp_port=args.udp_port,
        storage_dir=args.storage,
        fresh=args.fresh,
        max_file_bytes=args.max_file_mb * 1024 * 1024,
        max_connections_per_address=args.max_connections_per_address,
        max_sessions_created_per_address=args.max_sessions_per_address,
        identity_dir=identity_dir(args.data_dir),
    )
    server = ConferenceServer(cfg)
    try:
        server.start()
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except security.SecurityError as exc:
        print(f"cannot start: {exc.message}", file=sys.stderr)
        return 1
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(
        f"ready: tcp={server.host}:{server.tcp_port} udp={server.host}:{server.udp_port}",
        flush=True,
    )
    import discovery  # optional zeroconf inside; the server runs without it

    addresses = discovery.lan_addresses()
    print(banner(server, addresses), flush=True)
    announcer = None
    if not args.no_announce and not server.host.startswith("127."):
        wanted = addresses if server.host in ("0.0.0.0", "") else [server.host]
        announcer = discovery.ServerAnnouncer(
            server.tcp_port,
            server.udp_port,
            name=args.name,
            addresses=wanted,
            fingerprint=server.fingerprint,
        )
        if not announcer.start():
            announcer = None
    status = StatusLine(server)
    interval = args.status_interval
    next_status = time.monotonic() + interval
    while not done.wait(0.5):
        if interval > 0 and time.monotonic() >= next_status:
            next_status += interval
            log.info("%s", status.line())
    if announcer is not None:
        announcer.stop()
    server.stop()
    return 0
