"""LAN discovery: the server announces itself over DNS-SD (mDNS); clients browse for it.

Standard browsers see it too: ``avahi-browse -r _fusionmeet._tcp`` or
``dns-sd -B _fusionmeet._tcp``. ``zeroconf`` is optional: without it the server
runs unannounced and the login dialog lists nothing (typing an address works).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import config

log = logging.getLogger(__name__)

SERVICE_TYPE = "_fusionmeet._tcp.local."


@dataclass(frozen=True, slots=True)
class FoundServer:
    """A FusionMeet server seen on the LAN."""

    name: str
    host: str
    tcp_port: int
    udp_port: int
    # The TLS fingerprint it announced (TXT ``fp``, 64 hex), "" if none or malformed.
    # mDNS is not authenticated: the join dialog still asks on first use, and refuses
    # a server whose certificate differs from what it announced.
    fingerprint: str = ""

    @property
    def address(self) -> str:
        """What a user would type: ``host`` or ``host:port`` when not the default."""
        if self.tcp_port == config.DEFAULT_TCP_PORT:
            return self.host
        return f"{self.host}:{self.tcp_port}"


def _zeroconf() -> Any | None:
    try:
        import zeroconf
    except ImportError:
        return None
    return zeroconf


def lan_addresses() -> list[str]:
    """The host's IPv4 addresses other people on the LAN can reach (no loopback)."""
    found: list[str] = []
    try:
        import ifaddr  # comes with zeroconf

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and not ip.ip.startswith(("127.", "169.254.")):
                    found.append(ip.ip)
    except ImportError:
        try:
            found = [
                a
                for a in socket.gethostbyname_ex(socket.gethostname())[2]
                if not a.startswith("127.")
            ]
        except OSError:
            found = []
    return sorted(set(found), key=found.index)


def announced_properties(udp_port: int, fingerprint: str) -> dict[str, str]:
    """The DNS-SD TXT record: UDP port, protocol version and TLS fingerprint (``fp``)."""
    props = {"udp": str(udp_port), "protocol": str(config.PROTOCOL_VERSION)}
    if fingerprint:
        props["fp"] = fingerprint
    return props


def announced_fingerprint(props: dict[str, str]) -> str:
    """The full fingerprint of a TXT record (lowercase hex), or "" if absent or malformed."""
    import security

    fp = props.get("fp", "")
    try:
        fp = security.normalize_fingerprint(fp)
    except security.SecurityError:
        return ""
    return fp if len(fp) == security.FINGERPRINT_HEX_CHARS else ""


class ServerAnnouncer:
    """Publishes one server as a DNS-SD service on every LAN interface."""

    def __init__(
        self,
        tcp_port: int,
        udp_port: int,
        name: str | None = None,
        addresses: list[str] | None = None,
        fingerprint: str = "",
    ) -> None:
        self.tcp_port = tcp_port
        self.fingerprint = fingerprint
        self.udp_port = udp_port
        self.name = name or f"{config.APP_NAME} on {socket.gethostname()}"
        self.addresses = addresses
        self._zc: Any = None
        self._info: Any = None

    def start(self) -> bool:
        """Announce; False (with a log line) when zeroconf is missing or fails."""
        zc_mod = _zeroconf()
        if zc_mod is None:
            log.info("zeroconf is not installed: the server is not announced on the LAN")
            return False
        addresses = self.addresses if self.addresses is not None else lan_addresses()
        if not addresses:
            log.info("no LAN address found: the server is not announced")
            return False
        label = self.name.replace(".", " ")[:63]
        try:
            self._info = zc_mod.ServiceInfo(
                SERVICE_TYPE,
                f"{label}.{SERVICE_TYPE}",
                addresses=[socket.inet_aton(a) for a in addresses],
                port=self.tcp_port,
                properties=announced_properties(self.udp_port, self.fingerprint),
                server=f"{socket.gethostname().split('.')[0]}.local.",
            )
            self._zc = zc_mod.Zeroconf(interfaces=addresses)
            self._zc.register_service(self._info, allow_name_change=True)
        except (OSError, zc_mod.Error) as exc:
            log.warning("LAN announcement failed: %s", exc)
            self.stop()
            return False
        log.info("announced on the LAN as %r (%s)", self.name, ", ".join(addresses))
        return True

    def stop(self) -> None:
        """Withdraw the announcement and close the mDNS sockets."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            if self._info is not None:
                zc.unregister_service(self._info)
        except Exception as exc:  # a goodbye that fails must not block shutdown
            log.debug("unregister failed: %s", exc)
        zc.close()


class ServerBrowser:
    """Watches the LAN for FusionMeet servers; ``servers()`` is the current list.

    zeroconf calls back on its own thread; ``_lock`` (taken by that thread and
    by callers of ``servers()``) guards ``_found``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[str, FoundServer] = {}
        self._zc: Any = None
        self._browser: Any = None
        self.changed = threading.Event()

    def start(self) -> bool:
        """Begin browsing; False when zeroconf is missing or fails."""
        zc_mod = _zeroconf()
        if zc_mod is None:
            return False
        try:
            self._zc = zc_mod.Zeroconf()
            self._browser = zc_mod.ServiceBrowser(
                self._zc, SERVICE_TYPE, handlers=[self._on_change]
            )
        except OSError as exc:
            log.warning("LAN discovery unavailable: %s", exc)
            self.stop()
            return False
        return True

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change.name == "Removed":
            with self._lock:
                self._found.pop(name, None)
            self.changed.set()
            return
        info = zeroconf.get_service_info(service_type, name, timeout=2000)
        if info is None or not info.parsed_addresses():
            return
        props = {
            (k.decode("utf-8", "replace") if isinstance(k, bytes) else k): (
                v.decode("utf-8", "replace") if isinstance(v, bytes) else ""
            )
            for k, v in (info.properties or {}).items()
        }
        try:
            udp_port = int(props.get("udp", config.DEFAULT_UDP_PORT))
        except ValueError:
            udp_port = config.DEFAULT_UDP_PORT
        fingerprint = announced_fingerprint(props)
        ipv4 = [a for a in info.parsed_addresses() if ":" not in a]
        host = (ipv4 or info.parsed_addresses())[0]
        label = name[: -len(SERVICE_TYPE) - 1] if name.endswith(SERVICE_TYPE) else name
        with self._lock:
            self._found[name] = FoundServer(label, host, int(info.port or 0), udp_port, fingerprint)
        self.changed.set()

    def servers(self) -> list[FoundServer]:
        with self._lock:
            return sorted(self._found.values(), key=lambda s: (s.name, s.host))

    def stop(self) -> None:
        """Stop browsing and close the mDNS sockets."""
        if self._browser is not None:
            self._browser.cancel()
            self._browser = None
        if self._zc is not None:
            self._zc.close()
            self._zc = None


def browse(timeout_s: float = config.DISCOVERY_TIMEOUT_S) -> list[FoundServer]:
    """Look for servers for ``timeout_s`` seconds and return what was found."""
    browser = ServerBrowser()
    if not browser.start():
        return []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            browser.changed.wait(max(0.0, deadline - time.monotonic()))
            browser.changed.clear()
        return browser.servers()
    finally:
        browser.stop()
