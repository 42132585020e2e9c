"""Connection security: identity, TLS with pinned fingerprints, trust store and passwords.

Pure pieces, no server or client state: the server's key and self-signed
certificate (``load_or_create_identity``), TLS 1.3 contexts and handshakes whose
trust is a pinned certificate fingerprint (``server_handshake``,
``client_handshake``), the client's trust-on-first-use file (``TrustStore``) and
salted password hashes (``hash_password``). The wire format is
docs/PROTOCOL.md section 8; the sealing of UDP media datagrams (section 9) is
``media_crypto``. Every failure is a ``SecurityError`` with a ``code`` from
``SecErr`` (the sealed-datagram codes included).

Locks: ``TrustStore._lock`` is a leaf (nothing else is taken while holding it).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import config

log = logging.getLogger(__name__)

# --- Errors ---------------------------------------------------------------------------


class SecErr:
    """Machine codes of every security failure (local codes, beside the protocol's)."""

    # identity (server)
    IDENTITY_UNREADABLE = "identity_unreadable"
    IDENTITY_CORRUPT = "identity_corrupt"
    IDENTITY_INCOMPLETE = "identity_incomplete"
    IDENTITY_INSECURE = "identity_insecure"
    # TLS handshakes
    TLS_TIMEOUT = "tls_timeout"
    TLS_FAILED = "tls_failed"
    NOT_TLS = "not_tls"
    NO_CERTIFICATE = "no_certificate"
    # pinning (client)
    FINGERPRINT_UNKNOWN = "fingerprint_unknown"
    FINGERPRINT_CHANGED = "fingerprint_changed"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    BAD_FINGERPRINT = "bad_fingerprint"
    # trust store (client)
    TRUST_STORE_UNREADABLE = "trust_store_unreadable"
    TRUST_STORE_CORRUPT = "trust_store_corrupt"
    # sealed datagrams
    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    BAD_VERSION = "bad_version"
    BAD_TAG = "bad_tag"
    REPLAYED = "replayed"
    TOO_OLD = "too_old"
    NOT_REGISTER = "not_register"
    STALE_REGISTRATION = "stale_registration"
    BAD_KEY = "bad_key"
    BAD_HEADER = "bad_header"
    COUNTER_EXHAUSTED = "counter_exhausted"
    # passwords
    BAD_PASSWORD_HASH = "bad_password_hash"


class SecurityError(Exception):
    """Base of every error here: ``code`` (a ``SecErr`` name) and a human ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class IdentityError(SecurityError):
    """The server's key or certificate cannot be used; it is never silently replaced."""


class TrustStoreError(SecurityError):
    """The file of trusted servers cannot be read or parsed; it is never silently emptied."""


class HandshakeError(SecurityError, ConnectionError):
    """A TLS connection could not be set up (timeout, not TLS, handshake failure)."""


class TrustError(HandshakeError):
    """The server's certificate is not (or no longer) the trusted one.

    ``fingerprint`` is the server's (full hex), ``old`` the pinned one for
    ``fingerprint_changed`` and the expected one for ``fingerprint_mismatch``,
    ``address`` the ``host:port`` it was checked for.
    """

    def __init__(
        self, code: str, message: str, address: str, fingerprint: str, old: str | None = None
    ) -> None:
        super().__init__(code, message)
        self.address = address
        self.fingerprint = fingerprint
        self.old = old


# --- Fingerprints -----------------------------------------------------------------------

FINGERPRINT_HEX_CHARS = 64
SHORT_FINGERPRINT_HEX_CHARS = 2 * config.FINGERPRINT_SHORT_BYTES
_HEX = frozenset("0123456789abcdef")
_SEPARATORS = str.maketrans("", "", ":- \t")


def fingerprint_of_der(der: bytes) -> str:
    """The fingerprint of a certificate: SHA-256 of its DER bytes, 64 lowercase hex digits."""
    return hashlib.sha256(der).hexdigest()


def short_fingerprint(fingerprint: str) -> str:
    """The readable form: the first 16 bytes as 8 groups of 4 uppercase hex digits.

    ``"7f3a91c2..."`` gives ``"7F3A-91C2-...."`` (39 characters).
    """
    fp = normalize_fingerprint(fingerprint)
    head = fp[:SHORT_FINGERPRINT_HEX_CHARS].upper()
    n = config.FINGERPRINT_GROUP_HEX_DIGITS
    return "-".join(head[i : i + n] for i in range(0, len(head), n))


def normalize_fingerprint(text: str) -> str:
    """Lowercase hex of a full (64) or short (32 hex digits) fingerprint.

    Accepts upper or lower case and ``:``, ``-`` or blanks between digits, as people
    copy them; raises ``SecurityError`` (``bad_fingerprint``) otherwise.
    """
    fp = text.translate(_SEPARATORS).lower()
    if len(fp) not in (FINGERPRINT_HEX_CHARS, SHORT_FINGERPRINT_HEX_CHARS) or not set(fp) <= _HEX:
        raise SecurityError(
            SecErr.BAD_FINGERPRINT,
            f"{text!r} is not a fingerprint: expected 32 or 64 hex digits "
            "(e.g. 7F3A-91C2-0B1D-44E8-A9C0-5D2E-6F17-8B3A).",
        )
    return fp


def fingerprint_matches(expected: str, actual: str) -> bool:
    """True when ``actual`` (full) is ``expected`` (full, or short: its first 16 bytes)."""
    want = normalize_fingerprint(expected)
    have = normalize_fingerprint(actual)
    return hmac.compare_digest(have[: len(want)], want)


# --- Server identity ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """The server's key and certificate files and the certificate's fingerprint (full hex)."""

    cert_path: Path
    key_path: Path
    fingerprint: str

    @property
    def short_fingerprint(self) -> str:
        return short_fingerprint(self.fingerprint)


def default_identity_dir() -> Path:
    return config.default_data_dir() / config.IDENTITY_DIR_NAME


def load_or_create_identity(folder: Path | str | None = None) -> Identity:
    """Load the server's identity from ``folder``, making it on first start.

    A new identity is an ECDSA P-256 key (file mode 0600) and a self-signed
    certificate, in a folder of mode 0700. An identity that is unreadable,
    corrupt, half present, or whose key file others may read raises
    ``IdentityError``: replacing it would silently change the fingerprint every
    client has pinned.
    """
    folder = Path(folder) if folder is not None else default_identity_dir()
    key_path = folder / config.IDENTITY_KEY_FILE
    cert_path = folder / config.IDENTITY_CERT_FILE
    have_key, have_cert = key_path.exists(), cert_path.exists()
    if not have_key and not have_cert:
        _create_identity(folder, key_path, cert_path)
    elif not (have_key and have_cert):
        present, missing = (key_path, cert_path) if have_key else (cert_path, key_path)
        raise IdentityError(
            SecErr.IDENTITY_INCOMPLETE,
            f"The server identity in {folder} is incomplete: {present.name} exists but "
            f"{missing.name} does not. Restore it from a backup, or delete {present} to make "
            "a new identity (every client will then see a changed fingerprint).",
        )
    return _load_identity(key_path, cert_path)


def _create_identity(folder: Path, key_path: Path, cert_path: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(
            SecErr.IDENTITY_UNREADABLE, f"Cannot create the identity folder {folder}: {exc}"
        ) from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{config.APP_NAME} server")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=config.IDENTITY_CERT_BACKDATE_S))
        .not_valid_after(now + datetime.timedelta(days=config.IDENTITY_CERT_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Key first: a crash in between leaves a key without certificate, which load
    # reports as incomplete (never a certificate whose key is lost).
    for path, data, mode in (
        (key_path, key_pem, 0o600),
        (cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644),
    ):
        try:
            _write_new_file(path, data, mode)
        except FileExistsError:
            return  # another process made it at the same moment: load theirs
        except OSError as exc:
            raise IdentityError(
                SecErr.IDENTITY_UNREADABLE, f"Cannot write the server identity {path}: {exc}"
            ) from None
    log.info("made a new server identity in %s", folder)


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all; FileExistsError if it already exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # unlike rename, never replaces an existing file
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _read_bounded(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(config.IDENTITY_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise IdentityError(
            SecErr.IDENTITY_UNREADABLE, f"Cannot read the server identity file {path}: {exc}"
        ) from None
    if len(data) > config.IDENTITY_MAX_FILE_BYTES:
        raise IdentityError(
            SecErr.IDENTITY_CORRUPT,
            f"The server identity file {path} is larger than "
            f"{config.IDENTITY_MAX_FILE_BYTES} bytes: it is not a key or certificate.",
        )
    return data


def _load_identity(key_path: Path, cert_path: Path) -> Identity:
    if os.name == "posix":
        mode = key_path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                SecErr.IDENTITY_INSECURE,
                f"The server key {key_path} can be read by other users (mode "
                f"{stat.S_IMODE(mode):o}). Run: chmod 600 {key_path}",
            )
    key_pem, cert_pem = _read_bounded(key_path), _read_bounded(cert_path)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(
            SecErr.IDENTITY_CORRUPT, f"The server key {key_path} is not a usable key: {exc}"
        ) from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise IdentityError(
            SecErr.IDENTITY_CORRUPT,
            f"The server certificate {cert_path} is not a certificate: {exc}",
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise IdentityError(
            SecErr.IDENTITY_CORRUPT,
            f"The server certificate {cert_path} does not belong to the key {key_path}.",
        )
    fp = fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))
    return Identity(cert_path=cert_path, key_path=key_path, fingerprint=fp)


# --- TLS ---------------------------------------------------------------------------------

# The first byte of a TLS record carrying a handshake (ClientHello). A protocol 1
# frame starts with header_len's high byte, 0x00, so the two never collide.
TLS_HANDSHAKE_RECORD = 0x16


def server_context(identity: Identity) -> ssl.SSLContext:
    """TLS 1.3 only, presenting the server's certificate; clients are not asked for one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise IdentityError(
            SecErr.IDENTITY_CORRUPT, f"TLS cannot use the server identity: {exc}"
        ) from None
    # No resumption: tickets are extra writes to clients that may already be gone.
    ctx.num_tickets = 0
    return ctx


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only, with no CA and no host name check: trust is the pinned fingerprint.

    Every connection made with it must go through ``client_handshake`` (or check
    ``peer_fingerprint`` itself) before a byte of application data is sent.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # pinned by fingerprint after the handshake
    return ctx


def peer_fingerprint(ssl_sock: ssl.SSLSocket | TLSStream) -> str:
    """The fingerprint (full hex) of the certificate the peer presented."""
    der = ssl_sock.getpeercert(binary_form=True)
    if not der:
        raise HandshakeError(SecErr.NO_CERTIFICATE, "The server presented no certificate.")
    return fingerprint_of_der(der)


def server_address(host: str, port: int) -> str:
    """The trust store's key for a server: ``host:port`` (``[v6]:port``), host lowercased."""
    host = host.strip().lower().strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_handshake(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    timeout: float = config.TLS_HANDSHAKE_TIMEOUT_S,
    plain_reply: bytes = b"",
) -> TLSStream:
    """Turn an accepted connection into TLS, within ``timeout`` seconds.

    The first byte is peeked: a peer that does not start a TLS handshake (a
    protocol 1 client) is sent ``plain_reply`` (the caller's plain error frame,
    best effort) and closed: ``HandshakeError`` ``not_tls``. Silence gives
    ``tls_timeout``; a failed handshake ``tls_failed``. On any error ``sock`` is
    closed; on success the returned socket owns it and has ``timeout`` set.
    """
    deadline = time.monotonic() + timeout
    try:
        sock.settimeout(timeout)
        first = sock.recv(1, socket.MSG_PEEK)
    except OSError as exc:  # TimeoutError included
        sock.close()
        raise _handshake_os_error(exc, timeout) from None
    if first != bytes([TLS_HANDSHAKE_RECORD]):
        if first and plain_reply:
            with contextlib.suppress(OSError):
                sock.sendall(plain_reply)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        what = "closed the connection" if not first else f"sent {first!r}"
        raise HandshakeError(SecErr.NOT_TLS, f"The peer {what} instead of a TLS handshake.")
    return _do_handshake(sock, ctx, True, deadline, timeout)


def client_handshake(
    sock: socket.socket,
    ctx: ssl.SSLContext,
    address: str,
    store: TrustStore | None,
    timeout: float = config.TLS_HANDSHAKE_TIMEOUT_S,
    expected_fingerprint: str | None = None,
    trust_first_use: bool = False,
) -> TLSStream:
    """TLS over a connected socket, then check the server's fingerprint for ``address``.

    - ``expected_fingerprint`` (full or short, e.g. from ``--fingerprint`` or the
      server's LAN announcement) must match, else ``fingerprint_mismatch``; when it
      matches it is pinned in ``store``, replacing any older pin.
    - Otherwise ``store`` decides: trusted passes; unknown raises
      ``fingerprint_unknown`` (with ``.fingerprint`` to show for comparison) unless
      ``trust_first_use``, which pins it; changed always raises
      ``fingerprint_changed`` (``.old``, ``.fingerprint``).

    Raises ``HandshakeError`` (``tls_timeout``, ``tls_failed``) or ``TrustError``;
    ``sock`` is closed on any error.
    """
    deadline = time.monotonic() + timeout
    ssock = _do_handshake(sock, ctx, False, deadline, timeout)
    try:
        fp = peer_fingerprint(ssock)
        _check_trust(address, fp, store, expected_fingerprint, trust_first_use)
    except BaseException:
        ssock.close()
        raise
    return ssock


def _check_trust(
    address: str,
    fp: str,
    store: TrustStore | None,
    expected: str | None,
    trust_first_use: bool,
) -> None:
    short = short_fingerprint(fp)
    if expected is not None:
        if not fingerprint_matches(expected, fp):
            raise TrustError(
                SecErr.FINGERPRINT_MISMATCH,
                f"The server at {address} presented fingerprint {short}, not the expected "
                f"{short_fingerprint(expected)}. Someone may be impersonating it; nothing "
                "was sent.",
                address,
                fp,
                old=normalize_fingerprint(expected),
            )
        if store is not None:
            store.trust(address, fp)
        return
    if store is None:
        raise TrustError(
            SecErr.FINGERPRINT_UNKNOWN,
            f"No fingerprint to check the server at {address} against (it shows {short}).",
            address,
            fp,
        )
    verdict = store.check(address, fp)
    if verdict == TRUSTED:
        return
    if verdict == UNKNOWN:
        if trust_first_use:
            store.trust(address, fp)
            log.info("trusting %s on first use: %s", address, short)
            return
        raise TrustError(
            SecErr.FINGERPRINT_UNKNOWN,
            f"This is the first connection to {address}. Its fingerprint is {short}: "
            "compare it with the one the server shows, then trust it.",
            address,
            fp,
        )
    old = store.fingerprint_for(address) or ""
    raise TrustError(
        SecErr.FINGERPRINT_CHANGED,
        f"The server at {address} now presents fingerprint {short}, but it showed "
        f"{short_fingerprint(old)} before. Either its identity was reset, or someone is "
        "impersonating it. Ask the person running the server before accepting the new one.",
        address,
        fp,
        old=old,
    )


def _do_handshake(
    sock: socket.socket, ctx: ssl.SSLContext, server_side: bool, deadline: float, timeout: float
) -> TLSStream:
    try:
        stream = TLSStream(sock, ctx, server_side)
    except (OSError, ValueError) as exc:
        sock.close()
        raise HandshakeError(SecErr.TLS_FAILED, f"TLS could not start: {exc}") from None
    try:
        stream.do_handshake(deadline)
        sock.settimeout(timeout)
    except BaseException as exc:
        stream.close()
        if isinstance(exc, (OSError, ValueError)):
            raise _handshake_os_error(exc, timeout) from None
        raise
    return stream


class TLSStream:
    """A TLS connection over a plain socket, through memory BIOs; used like a socket.

    Why not ``ssl.SSLSocket``: (1) an OpenSSL connection object must not be used
    by two threads at once, and FusionMeet reads each connection on one thread
    while another writes it; here the TLS state is behind a lock that is never
    held while waiting on the network. (2) ``SSLSocket`` makes one or two system
    calls per 16 KiB record; this reads and writes the socket in large blocks
    (bench/tls_throughput.py). Timeouts, ``shutdown`` and ``close`` are the plain
    socket's, so code that used a socket keeps working: ``recv_into``, ``recv``,
    ``sendall``, ``send``, ``sendfile`` (a copy loop: zero-copy is impossible
    under TLS), ``settimeout``, ``fileno``, ``getpeername``, ``getsockname``.

    At most one thread reads and any number write (writes are serialised). The
    peer's EOF, with or without a TLS ``close_notify``, reads as b"": the frame
    layer detects a truncated message itself.

    Lock order: ``_recv_lock`` -> ``_send_lock`` -> ``_tls_lock``.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._rbuf = bytearray(config.TLS_RECV_BLOCK_BYTES)  # grows on bulk reads
        # Taken by the reading thread around a whole recv; guards _rbuf and _eof.
        self._recv_lock = threading.Lock()
        # Taken by writers (and by the reader, without waiting, to flush TLS output a
        # read produced); keeps the bytes on the socket in the order TLS made them.
        self._send_lock = threading.Lock()
        # Taken by every thread for each call into _tls and the two BIOs; never held
        # while waiting on the network. A leaf lock.
        self._tls_lock = threading.Lock()
        self._eof = False

    # --- handshake

    def do_handshake(self, deadline: float) -> None:
        while True:
            with self._tls_lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                out = self._outgoing.read()
            if out:
                self.sock.settimeout(max(1e-3, deadline - time.monotonic()))
                self.sock.sendall(out)
            if done:
                return
            self.sock.settimeout(max(1e-3, deadline - time.monotonic()))
            n = self.sock.recv_into(self._rbuf)
            if n == 0:
                raise ConnectionError("the peer closed the connection during the TLS handshake")
            with self._tls_lock:
                self._incoming.write(memoryview(self._rbuf)[:n])

    # --- reading

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        """Read up to ``nbytes`` (default: the buffer's size) into ``buffer``; 0 at EOF."""
        view = memoryview(buffer).cast("B")
        want = nbytes or len(view)
        if want == 0:
            return 0
        with self._recv_lock:
            while True:
                got: int | None = 0
                with self._tls_lock:
                    try:
                        got = self._tls.read(want, view)
                        # One call returns at most one TLS record (16 KiB): take every
                        # record already received, without waiting, so a bulk
                        # reader makes one call per block, not one per record.
                        while 0 < got < want and self._incoming.pending:
                            more = self._tls.read(want - got, view[got:])
                            if not more:
                                break
                            got += more
                    except ssl.SSLWantReadError:
                        got = got or None
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        got = got or 0
                    pending = self._outgoing.pending
                if pending and not self._eof:
                    self._flush_nowait()
                if got is not None:
                    return got
                if self._eof:
                    return 0
                rbuf = self._rbuf
                n = self.sock.recv_into(rbuf)
                with self._tls_lock:
                    if n == 0:
                        self._eof = True
                        self._incoming.write_eof()
                    else:
                        self._incoming.write(memoryview(rbuf)[:n])
                if n == len(rbuf) < config.TLS_RECV_BLOCK_MAX_BYTES:  # a bulk transfer
                    self._rbuf = bytearray(min(2 * n, config.TLS_RECV_BLOCK_MAX_BYTES))

    def pending(self) -> bool:
        """Whether bytes already received wait in the TLS layer (``select`` cannot see them)."""
        with self._tls_lock:
            return bool(self._tls.pending() or self._incoming.pending)

    def recv(self, bufsize: int) -> bytes:
        buf = bytearray(bufsize)
        n = self.recv_into(buf)
        return bytes(buf[:n])

    def _flush_nowait(self) -> None:
        """Send TLS output a read produced (e.g. a key update), unless a writer is busy:
        its next ``sendall`` sends it, in order."""
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            with self._tls_lock:
                out = self._outgoing.read()
            if out:
                self.sock.sendall(out)
        except OSError as exc:  # a broken connection: the reader sees it next, or a writer
            log.debug("TLS flush after read: %s", exc)
        finally:
            self._send_lock.release()

    # --- writing

    def sendall(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        step = config.TLS_SEND_BLOCK_BYTES
        with self._send_lock:
            for start in range(0, max(len(view), 1), step):
                with self._tls_lock:
                    if len(view):
                        self._tls.write(view[start : start + step])
                    out = self._outgoing.read()
                if out:
                    self.sock.sendall(out)

    def send(self, data: Any) -> int:
        self.sendall(data)
        return memoryview(data).nbytes

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send ``count`` bytes (default: to the end) of ``file`` from ``offset``; as
        ``socket.sendfile``, returns the bytes sent and leaves the file position after them."""
        buf = bytearray(config.TLS_SEND_BLOCK_BYTES)
        view = memoryview(buf)
        file.seek(offset)
        sent = 0
        while count is None or sent < count:
            want = len(buf) if count is None else min(len(buf), count - sent)
            n = file.readinto(view[:want])
            if not n:
                break
            self.sendall(view[:n])
            sent += n
        return sent

    # --- the rest is the plain socket's

    def getpeercert(self, binary_form: bool = False) -> Any:
        with self._tls_lock:
            return self._tls.getpeercert(binary_form)

    def version(self) -> str | None:
        with self._tls_lock:
            return self._tls.version()

    def cipher(self) -> Any:
        with self._tls_lock:
            return self._tls.cipher()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

    def fileno(self) -> int:
        return self.sock.fileno()

    def getpeername(self) -> Any:
        return self.sock.getpeername()

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    @property
    def family(self) -> int:
        return self.sock.family

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TLSStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handshake_os_error(exc: BaseException, timeout: float) -> HandshakeError:
    if isinstance(exc, HandshakeError):
        return exc
    if isinstance(exc, TimeoutError):
        return HandshakeError(
            SecErr.TLS_TIMEOUT, f"The secure connection was not set up within {timeout:g} s."
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.__class__.__name__
        return HandshakeError(
            SecErr.TLS_FAILED,
            f"The secure (TLS 1.3) connection failed ({reason}). The other side may run an "
            "older FusionMeet without encryption.",
        )
    return HandshakeError(SecErr.TLS_FAILED, f"The connection closed during the TLS setup: {exc}")


def _full_fingerprint(text: str) -> str:
    fp = normalize_fingerprint(text)
    if len(fp) != FINGERPRINT_HEX_CHARS:
        raise SecurityError(
            SecErr.BAD_FINGERPRINT, "A full fingerprint (64 hex digits) is needed here."
        )
    return fp


# --- Trust on first use ---------------------------------------------------------------

TRUSTED = "trusted"
UNKNOWN = "unknown"
CHANGED = "changed"
TRUST_STORE_VERSION = 1


def default_trust_store_path() -> Path:
    return config.default_data_dir() / config.TRUST_STORE_FILE


class TrustStore:
    """The client's pinned server fingerprints, one per ``host:port``, like SSH's known_hosts.

    A JSON file (mode 0600), rewritten atomically on every change and read again
    for every question, so several clients of one user see each other's pins.
    An unreadable or corrupt file raises ``TrustStoreError``: emptying it would
    silently turn every pinned server back into a first use.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_trust_store_path()
        # Taken by any thread asking or changing trust; guards the read-modify-write
        # of the file within this process. Nothing else is taken while holding it.
        self._lock = threading.Lock()

    def check(self, address: str, fingerprint: str) -> str:
        """``TRUSTED``, ``UNKNOWN`` (never seen) or ``CHANGED`` (pinned to another one).

        ``fingerprint`` is the full one the server presented (a short form is refused).
        """
        fp = _full_fingerprint(fingerprint)
        with self._lock:
            entry = self._read().get(address)
        if entry is None:
            return UNKNOWN
        return TRUSTED if hmac.compare_digest(entry["fingerprint"], fp) else CHANGED

    def fingerprint_for(self, address: str) -> str | None:
        with self._lock:
            entry = self._read().get(address)
        return None if entry is None else entry["fingerprint"]

    def trust(self, address: str, fingerprint: str) -> None:
        """Pin ``fingerprint`` (full) for ``address``, replacing an older pin on purpose."""
        fp = _full_fingerprint(fingerprint)
        with self._lock:
            servers = self._read()
            servers.pop(address, None)
            servers[address] = {"fingerprint": fp, "added": time.time()}
            while len(servers) > config.TRUST_STORE_MAX_SERVERS:
                oldest = min(servers, key=lambda a: servers[a]["added"])
                del servers[oldest]
            self._write(servers)

    def forget(self, address: str) -> bool:
        """Remove the pin of ``address``; True if there was one."""
        with self._lock:
            servers = self._read()
            if servers.pop(address, None) is None:
                return False
            self._write(servers)
            return True

    def addresses(self) -> list[str]:
        with self._lock:
            return sorted(self._read())

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                raw = f.read(config.TRUST_STORE_MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TrustStoreError(
                SecErr.TRUST_STORE_UNREADABLE,
                f"Cannot read the trusted servers file {self.path}: {exc}",
            ) from None
        if len(raw) > config.TRUST_STORE_MAX_BYTES:
            raise self._corrupt(f"larger than {config.TRUST_STORE_MAX_BYTES} bytes")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self._corrupt(f"not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("version") != TRUST_STORE_VERSION:
            raise self._corrupt(f"not a version {TRUST_STORE_VERSION} trust file")
        servers = doc.get("servers")
        if not isinstance(servers, dict):
            raise self._corrupt("no 'servers' object")
        out: dict[str, dict[str, Any]] = {}
        for address, entry in servers.items():
            fp = entry.get("fingerprint") if isinstance(entry, dict) else None
            added = entry.get("added", 0) if isinstance(entry, dict) else None
            if (
                not isinstance(fp, str)
                or len(fp) != FINGERPRINT_HEX_CHARS
                or not set(fp) <= _HEX
                or not isinstance(added, (int, float))
                or isinstance(added, bool)
            ):
                raise self._corrupt(f"a bad entry for {address!r}")
            out[address] = {"fingerprint": fp, "added": float(added)}
        return out

    def _corrupt(self, why: str) -> TrustStoreError:
        return TrustStoreError(
            SecErr.TRUST_STORE_CORRUPT,
            f"The trusted servers file {self.path} is damaged ({why}). Fix or delete it; "
            "deleting it makes every server a first connection again.",
        )

    def _write(self, servers: dict[str, dict[str, Any]]) -> None:
        doc = {"version": TRUST_STORE_VERSION, "servers": servers}
        data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


# --- Passwords -----------------------------------------------------------------------

PASSWORD_SCHEME = "scrypt"


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt_hex$hash_hex`` of the UTF-8 password with a fresh random salt."""
    n, r, p = config.PASSWORD_SCRYPT_N, config.PASSWORD_SCRYPT_R, config.PASSWORD_SCRYPT_P
    salt = secrets.token_bytes(config.PASSWORD_SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p, config.PASSWORD_HASH_BYTES)
    return f"{PASSWORD_SCHEME}${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` hashes to ``stored`` (compared in constant time).

    A ``stored`` string that is not ``hash_password``'s format, or whose cost
    exceeds ``PASSWORD_SCRYPT_MAXMEM_BYTES``, raises ``SecurityError``.
    """
    parts = stored.split("$")
    try:
        if len(parts) != 6 or parts[0] != PASSWORD_SCHEME:
            raise ValueError("not scrypt$N$r$p$salt$hash")
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or not salt or not digest:
            raise ValueError("bad parameters")
        if 128 * r * (n + p + 2) > config.PASSWORD_SCRYPT_MAXMEM_BYTES:
            raise ValueError("cost above PASSWORD_SCRYPT_MAXMEM_BYTES")
    except ValueError as exc:
        raise SecurityError(SecErr.BAD_PASSWORD_HASH, f"not a password hash: {exc}") from None
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(digest)), digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=config.PASSWORD_SCRYPT_MAXMEM_BYTES + 1024 * 1024,
        dklen=dklen,
    )
