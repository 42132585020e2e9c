"""security.py: identity, TLS with pinning on loopback, trust store, passwords."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import stat
import struct
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import config
import security
from security import (
    HandshakeError,
    IdentityError,
    SecErr,
    SecurityError,
    TrustError,
    TrustStore,
    TrustStoreError,
)

# Every network wait in this file is bounded by this (seconds).
NET_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def identity(tmp_path_factory) -> security.Identity:
    return security.load_or_create_identity(tmp_path_factory.mktemp("id") / "server-identity")


@pytest.fixture(scope="module")
def other_identity(tmp_path_factory) -> security.Identity:
    return security.load_or_create_identity(tmp_path_factory.mktemp("id2") / "server-identity")


# --- identity ------------------------------------------------------------------------------


def test_identity_made_once_with_private_modes(tmp_path):
    folder = tmp_path / "data" / "server-identity"
    ident = security.load_or_create_identity(folder)
    assert ident.key_path == folder / config.IDENTITY_KEY_FILE
    assert ident.cert_path == folder / config.IDENTITY_CERT_FILE
    if os.name == "posix":
        assert stat.S_IMODE(ident.key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    cert = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    import hashlib

    assert ident.fingerprint == hashlib.sha256(der).hexdigest()
    again = security.load_or_create_identity(folder)
    assert again == ident  # loaded, not remade


def test_short_fingerprint_form(identity):
    short = identity.short_fingerprint
    assert re.fullmatch(r"([0-9A-F]{4}-){7}[0-9A-F]{4}", short)
    assert short.replace("-", "").lower() == identity.fingerprint[:32]
    assert security.short_fingerprint("ab" * 32) == "ABAB-" * 7 + "ABAB"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("ab" * 32, True),
        ("AB" * 32, True),
        (":".join(["ab"] * 32), True),
        ("ABAB-" * 7 + "ABAB", True),
        ("ab" * 16, True),
        ("ab" * 31, False),
        ("ab" * 33, False),
        ("zz" * 32, False),
        ("", False),
        ("0x" + "ab" * 31, False),
    ],
)
def test_normalize_fingerprint(text, ok):
    if ok:
        assert security.normalize_fingerprint(text) in ("ab" * 32, "ab" * 16)
    else:
        with pytest.raises(SecurityError) as e:
            security.normalize_fingerprint(text)
        assert e.value.code == SecErr.BAD_FINGERPRINT


def test_fingerprint_matches_full_and_short(identity, other_identity):
    fp = identity.fingerprint
    assert security.fingerprint_matches(fp, fp)
    assert security.fingerprint_matches(identity.short_fingerprint, fp)
    assert not security.fingerprint_matches(other_identity.short_fingerprint, fp)
    assert not security.fingerprint_matches(other_identity.fingerprint, fp)


def _copy_identity(src: security.Identity, folder: Path) -> Path:
    folder.mkdir(mode=0o700)
    for p in (src.key_path, src.cert_path):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / src.key_path.name).chmod(0o600)
    return folder


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        ("key_garbage", SecErr.IDENTITY_CORRUPT),
        ("cert_garbage", SecErr.IDENTITY_CORRUPT),
        ("key_empty", SecErr.IDENTITY_CORRUPT),
        ("key_huge", SecErr.IDENTITY_CORRUPT),
        ("key_other", SecErr.IDENTITY_CORRUPT),
        ("key_missing", SecErr.IDENTITY_INCOMPLETE),
        ("cert_missing", SecErr.IDENTITY_INCOMPLETE),
        ("key_dir", SecErr.IDENTITY_UNREADABLE),
    ],
)
def test_damaged_identity_is_an_error_never_replaced(
    tmp_path, identity, other_identity, damage, code
):
    folder = _copy_identity(identity, tmp_path / "ident")
    key, cert = folder / config.IDENTITY_KEY_FILE, folder / config.IDENTITY_CERT_FILE
    if damage == "key_garbage":
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    elif damage == "cert_garbage":
        cert.write_bytes(b"not a certificate")
    elif damage == "key_empty":
        key.write_bytes(b"")
    elif damage == "key_huge":
        key.write_bytes(b"A" * (config.IDENTITY_MAX_FILE_BYTES + 1))
    elif damage == "key_other":
        key.write_bytes(other_identity.key_path.read_bytes())
    elif damage == "key_missing":
        key.unlink()
    elif damage == "cert_missing":
        cert.unlink()
    elif damage == "key_dir":
        key.unlink()
        key.mkdir(mode=0o700)
    before = {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}
    with pytest.raises(IdentityError) as e:
        security.load_or_create_identity(folder)
    assert e.value.code == code
    assert str(folder) in e.value.message
    after = {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}
    assert after == before


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_key_readable_by_others_is_refused(tmp_path, identity):
    folder = _copy_identity(identity, tmp_path / "ident")
    (folder / config.IDENTITY_KEY_FILE).chmod(0o644)
    with pytest.raises(IdentityError) as e:
        security.load_or_create_identity(folder)
    assert e.value.code == SecErr.IDENTITY_INSECURE
    assert "chmod 600" in e.value.message


def test_default_folders_follow_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path / "d"))
    assert security.default_identity_dir() == tmp_path / "d" / config.IDENTITY_DIR_NAME
    assert security.default_trust_store_path() == tmp_path / "d" / config.TRUST_STORE_FILE
    monkeypatch.delenv(config.DATA_DIR_ENV)
    if os.name == "posix" and os.uname().sysname == "Linux":
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        assert config.default_data_dir() == tmp_path / "xdg" / config.APP_NAME


# --- TLS on loopback ---------------------------------------------------------------------------


class OneShotServer:
    """Accepts one connection on 127.0.0.1 and runs ``handler(sock)`` on a named thread."""

    def __init__(self, handler) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(NET_TIMEOUT_S)
        self.port = self.listener.getsockname()[1]
        self.handler = handler
        self.error: BaseException | None = None
        self.result = None
        self.thread = threading.Thread(target=self._run, name="test-tls-server", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            self.result = self.handler(conn)
        except BaseException as exc:
            self.error = exc

    def address(self) -> str:
        return security.server_address("127.0.0.1", self.port)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=NET_TIMEOUT_S)

    def join(self) -> None:
        self.thread.join(NET_TIMEOUT_S)
        assert not self.thread.is_alive()
        self.listener.close()


def tls_echo(identity: security.Identity):
    """A server handler: TLS handshake, echo one line, close."""
    ctx = security.server_context(identity)

    def handler(conn: socket.socket):
        ssock = security.server_handshake(conn, ctx, timeout=NET_TIMEOUT_S)
        with ssock:
            line = ssock.recv(100)
            ssock.sendall(b"echo:" + line)
        return "ok"

    return handler


def tls_handshake_only(identity: security.Identity, timeout: float = NET_TIMEOUT_S):
    """A server handler that returns the HandshakeError (or 'ok') instead of raising."""
    ctx = security.server_context(identity)

    def handler(conn: socket.socket):
        try:
            ssock = security.server_handshake(
                conn, ctx, timeout=timeout, plain_reply=b"PLAIN-REPLY"
            )
        except HandshakeError as exc:
            return exc
        ssock.close()
        return "ok"

    return handler


def test_tls_first_use_then_trusted(tmp_path, identity):
    store = TrustStore(tmp_path / "known.json")
    srv = OneShotServer(tls_handshake_only(identity))
    with pytest.raises(TrustError) as e:
        security.client_handshake(srv.connect(), security.client_context(), srv.address(), store)
    srv.join()
    assert e.value.code == SecErr.FINGERPRINT_UNKNOWN
    assert e.value.fingerprint == identity.fingerprint
    assert identity.short_fingerprint in e.value.message
    assert store.check(srv.address(), identity.fingerprint) == security.UNKNOWN

    srv = OneShotServer(tls_echo(identity))
    ssock = security.client_handshake(
        srv.connect(), security.client_context(), srv.address(), store, trust_first_use=True
    )
    with ssock:
        assert ssock.version() == "TLSv1.3"
        assert security.peer_fingerprint(ssock) == identity.fingerprint
        ssock.sendall(b"hi")
        assert ssock.recv(100) == b"echo:hi"
    srv.join()
    assert srv.error is None and srv.result == "ok"
    assert store.check(srv.address(), identity.fingerprint) == security.TRUSTED

    srv2 = OneShotServer(tls_echo(identity))
    store.trust(srv2.address(), identity.fingerprint)
    with security.client_handshake(
        srv2.connect(), security.client_context(), srv2.address(), store
    ) as ssock:
        ssock.sendall(b"again")
        assert ssock.recv(100) == b"echo:again"
    srv2.join()


def test_tls_other_certificate_is_refused(tmp_path, identity, other_identity):
    store = TrustStore(tmp_path / "known.json")
    srv = OneShotServer(tls_handshake_only(other_identity))
    store.trust(srv.address(), identity.fingerprint)
    for tofu in (False, True):  # trust on first use never accepts a change
        if tofu:
            srv = OneShotServer(tls_handshake_only(other_identity))
            store.trust(srv.address(), identity.fingerprint)
        with pytest.raises(TrustError) as e:
            security.client_handshake(
                srv.connect(),
                security.client_context(),
                srv.address(),
                store,
                trust_first_use=tofu,
            )
        srv.join()
        assert e.value.code == SecErr.FINGERPRINT_CHANGED
        assert e.value.old == identity.fingerprint
        assert e.value.fingerprint == other_identity.fingerprint
        assert store.fingerprint_for(srv.address()) == identity.fingerprint


def test_tls_expected_fingerprint(tmp_path, identity, other_identity):
    store = TrustStore(tmp_path / "known.json")
    srv = OneShotServer(tls_handshake_only(identity))
    with pytest.raises(TrustError) as e:
        security.client_handshake(
            srv.connect(),
            security.client_context(),
            srv.address(),
            store,
            expected_fingerprint=other_identity.short_fingerprint,
        )
    srv.join()
    assert e.value.code == SecErr.FINGERPRINT_MISMATCH
    assert store.addresses() == []

    srv = OneShotServer(tls_handshake_only(identity))
    ssock = security.client_handshake(
        srv.connect(),
        security.client_context(),
        srv.address(),
        store,
        expected_fingerprint=identity.short_fingerprint,
    )
    ssock.close()
    srv.join()
    assert store.check(srv.address(), identity.fingerprint) == security.TRUSTED


def test_tls12_client_is_refused(tmp_path, identity):
    srv = OneShotServer(tls_handshake_only(identity))
    old = security.client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(HandshakeError) as e:
        security.client_handshake(srv.connect(), old, srv.address(), None)
    srv.join()
    assert e.value.code == SecErr.TLS_FAILED
    assert isinstance(srv.result, HandshakeError) and srv.result.code == SecErr.TLS_FAILED


def test_plain_client_to_tls_server_gets_a_clean_close(identity):
    srv = OneShotServer(tls_handshake_only(identity))
    t0 = time.monotonic()
    with srv.connect() as sock:
        # What a protocol 1 client sends first: a frame whose prefix starts with 0x00.
        sock.sendall(b"\x00\x00\x00\x18\x00\x00\x00\x00" + b'{"type":"list_sessions"}')
        got = b""
        while chunk := sock.recv(100):
            got += chunk
    srv.join()
    assert time.monotonic() - t0 < NET_TIMEOUT_S
    assert got == b"PLAIN-REPLY"
    assert isinstance(srv.result, HandshakeError) and srv.result.code == SecErr.NOT_TLS


def test_silent_client_is_closed_after_the_handshake_timeout(identity):
    srv = OneShotServer(tls_handshake_only(identity, timeout=0.3))
    t0 = time.monotonic()
    with srv.connect() as sock:
        assert sock.recv(100) == b""  # EOF, not a hang
    srv.join()
    assert time.monotonic() - t0 < NET_TIMEOUT_S
    assert isinstance(srv.result, HandshakeError) and srv.result.code == SecErr.TLS_TIMEOUT


def test_tls_client_to_plain_server_is_a_clear_error():
    def plain_v1(conn: socket.socket):
        # A protocol 1 server: reads the 8-byte prefix, finds it too large, says so, closes.
        with conn:
            conn.settimeout(NET_TIMEOUT_S)
            conn.recv(8)
            body = b'{"type":"error","code":"frame_too_large","message":"x"}'
            conn.sendall(struct.pack("!II", len(body), 0) + body)

    srv = OneShotServer(plain_v1)
    t0 = time.monotonic()
    with pytest.raises(HandshakeError) as e:
        security.client_handshake(
            srv.connect(), security.client_context(), srv.address(), None, timeout=NET_TIMEOUT_S
        )
    srv.join()
    assert time.monotonic() - t0 < NET_TIMEOUT_S
    assert e.value.code == SecErr.TLS_FAILED
    assert "older FusionMeet" in e.value.message or "closed" in e.value.message


def test_tls_client_to_silent_server_times_out():
    gate = threading.Event()

    def silent(conn: socket.socket):
        with conn:
            gate.wait(NET_TIMEOUT_S)

    srv = OneShotServer(silent)
    t0 = time.monotonic()
    with pytest.raises(HandshakeError) as e:
        security.client_handshake(
            srv.connect(), security.client_context(), srv.address(), None, timeout=0.3
        )
    gate.set()
    srv.join()
    assert e.value.code == SecErr.TLS_TIMEOUT
    assert time.monotonic() - t0 < NET_TIMEOUT_S


def tls_pair(identity: security.Identity):
    """A connected (client, server) pair of TLSStreams on loopback."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    lst.settimeout(NET_TIMEOUT_S)
    box: dict = {}

    def serve():
        conn, _ = lst.accept()
        box["server"] = security.server_handshake(conn, security.server_context(identity))

    t = threading.Thread(target=serve, name="test-tls-accept")
    t.start()
    client = security.client_handshake(
        socket.create_connection(lst.getsockname(), timeout=NET_TIMEOUT_S),
        security.client_context(),
        "test",
        None,
        expected_fingerprint=identity.fingerprint,
    )
    t.join(NET_TIMEOUT_S)
    lst.close()
    return client, box["server"]


def test_tls_stream_carries_frames(identity):
    import utils

    client, server = tls_pair(identity)
    with client, server:
        assert client.cipher()[1] == "TLSv1.3"
        payload = os.urandom(3 * config.TLS_SEND_BLOCK_BYTES + 17)
        client.sendall(utils.encode_frame({"type": "chat", "message": "secret"}, payload))
        client.sendall(utils.encode_frame({"type": "ping"}))
        reader = utils.FrameReader(server)
        first = reader.read()
        assert first.header == {"type": "chat", "message": "secret"}
        assert first.payload == payload
        assert reader.read().type == "ping"
        client.close()
        assert server.recv(10) == b""  # EOF without close_notify reads as EOF


def test_tls_stream_reader_and_writer_threads_at_once(identity):
    """Each end writes 8 MiB while its own reader thread reads the other's 8 MiB."""
    import hashlib

    client, server = tls_pair(identity)
    size = 8 * 1024 * 1024
    data = {"client": os.urandom(size), "server": os.urandom(size)}
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def write(name, stream):
        try:
            view = memoryview(data[name])
            for i in range(0, size, 100_000):  # odd sizes, many calls
                stream.sendall(view[i : i + 100_000])
        except BaseException as exc:
            errors.append(exc)

    def read(name, stream):
        try:
            h, left, buf = hashlib.sha256(), size, bytearray(70_000)
            while left:
                n = stream.recv_into(buf, min(len(buf), left))
                assert n
                h.update(memoryview(buf)[:n])
                left -= n
            got[name] = h.hexdigest()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=("client", client), name="test-w-client"),
        threading.Thread(target=write, args=("server", server), name="test-w-server"),
        threading.Thread(target=read, args=("server", server), name="test-r-server"),
        threading.Thread(target=read, args=("client", client), name="test-r-client"),
    ]
    with client, server:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert got["server"] == hashlib.sha256(data["client"]).hexdigest()
    assert got["client"] == hashlib.sha256(data["server"]).hexdigest()


def test_tls_stream_sendfile_timeout_and_shutdown(identity, tmp_path):
    client, server = tls_pair(identity)
    with client, server:
        path = tmp_path / "f.bin"
        body = os.urandom(1_000_000)
        path.write_bytes(body)
        with path.open("rb") as f:
            assert client.sendfile(f, 10, 500_000) == 500_000
            assert f.tell() == 500_010
        buf = bytearray(500_000)
        view, got = memoryview(buf), 0
        while got < len(buf):
            got += server.recv_into(view[got:])
        assert bytes(buf) == body[10:500_010]
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.recv(1)
        # shutdown from another thread wakes a blocked reader (how leave() works)
        server.settimeout(NET_TIMEOUT_S)
        timer = threading.Timer(0.2, server.shutdown, (socket.SHUT_RDWR,))
        timer.start()
        t0 = time.monotonic()
        assert server.recv(1) == b""
        assert time.monotonic() - t0 < NET_TIMEOUT_S
        timer.join()


# --- trust store ---------------------------------------------------------------------------

FP_A = "a1" * 32
FP_B = "b2" * 32


def test_trust_store_check_trust_forget(tmp_path):
    path = tmp_path / "sub" / "known.json"
    store = TrustStore(path)
    addr = security.server_address("192.168.1.10", 5000)
    assert store.check(addr, FP_A) == security.UNKNOWN
    assert not path.exists()  # asking writes nothing
    store.trust(addr, FP_A.upper())
    assert store.check(addr, FP_A) == security.TRUSTED
    assert store.check(addr, FP_B) == security.CHANGED
    assert store.check("192.168.1.10:5001", FP_A) == security.UNKNOWN
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["servers"][addr]["fingerprint"] == FP_A
    # A second store on the same file (another client of the same user) sees it.
    assert TrustStore(path).check(addr, FP_A) == security.TRUSTED
    store.trust(addr, FP_B)  # accepting a changed one on purpose
    assert store.check(addr, FP_B) == security.TRUSTED
    assert store.forget(addr) is True
    assert store.forget(addr) is False
    assert store.check(addr, FP_B) == security.UNKNOWN
    assert [p.name for p in path.parent.iterdir()] == ["known.json"]  # no temp files


def test_server_address_forms():
    assert security.server_address("Host.LAN", 5000) == "host.lan:5000"
    assert security.server_address("fe80::1", 5000) == "[fe80::1]:5000"
    assert security.server_address("[FE80::1]", 7) == "[fe80::1]:7"


def test_trust_store_only_full_fingerprints(tmp_path):
    store = TrustStore(tmp_path / "k.json")
    for call in (lambda: store.trust("h:1", "ab" * 16), lambda: store.check("h:1", "ab" * 16)):
        with pytest.raises(SecurityError) as e:
            call()
        assert e.value.code == SecErr.BAD_FINGERPRINT


def test_trust_store_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "TRUST_STORE_MAX_SERVERS", 3)
    store = TrustStore(tmp_path / "k.json")
    for i in range(5):
        store.trust(f"h{i}:1", FP_A)
    assert store.addresses() == ["h2:1", "h3:1", "h4:1"]


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"version": 2, "servers": {}}',
        b'{"version": 1}',
        b'{"version": 1, "servers": {"h:1": "ab"}}',
        b'{"version": 1, "servers": {"h:1": {"fingerprint": "xyz"}}}',
        b'{"version": 1, "servers": {"h:1": {"fingerprint": "'
        + b"a1" * 32
        + b'", "added": true}}}',
        b"[" * 100000,
        b" " * (config.TRUST_STORE_MAX_BYTES + 1),
    ],
)
def test_corrupt_trust_store_is_an_error_never_emptied(tmp_path, content):
    path = tmp_path / "k.json"
    path.write_bytes(content)
    store = TrustStore(path)
    for call in (lambda: store.check("h:1", FP_A), lambda: store.trust("h:1", FP_A)):
        with pytest.raises(TrustStoreError) as e:
            call()
        assert e.value.code == SecErr.TRUST_STORE_CORRUPT
        assert str(path) in e.value.message
    assert path.read_bytes() == content


def test_unreadable_trust_store(tmp_path):
    (tmp_path / "k.json").mkdir()
    with pytest.raises(TrustStoreError) as e:
        TrustStore(tmp_path / "k.json").check("h:1", FP_A)
    assert e.value.code == SecErr.TRUST_STORE_UNREADABLE


# --- passwords ------------------------------------------------------------------------------


def test_password_hash_round_trip():
    stored = security.hash_password("corridor secret ü")
    assert stored.startswith(
        f"scrypt${config.PASSWORD_SCRYPT_N}${config.PASSWORD_SCRYPT_R}${config.PASSWORD_SCRYPT_P}$"
    )
    assert "corridor" not in stored
    assert security.verify_password("corridor secret ü", stored)
    assert not security.verify_password("corridor secret u", stored)
    assert not security.verify_password("", stored)
    assert security.hash_password("corridor secret ü") != stored  # fresh salt each time


def test_password_hash_uses_named_costs(monkeypatch):
    monkeypatch.setattr(config, "PASSWORD_SCRYPT_N", 2**4)
    stored = security.hash_password("pw")
    n, r, p, salt, digest = stored.split("$")[1:]
    assert (int(n), int(r), int(p)) == (16, config.PASSWORD_SCRYPT_R, config.PASSWORD_SCRYPT_P)
    assert len(bytes.fromhex(salt)) == config.PASSWORD_SALT_BYTES
    assert len(bytes.fromhex(digest)) == config.PASSWORD_HASH_BYTES
    assert security.verify_password("pw", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "pw",
        "bcrypt$16$8$1$00$00",
        "scrypt$16$8$1$zz$00",
        "scrypt$15$8$1$00$00",
        "scrypt$16$0$1$00$00",
        "scrypt$16$8$1$$00",
        "scrypt$16$8$1$00$",
        f"scrypt${2**30}$8$1$00$00",
        "scrypt$16$8$1$00$00$extra",
    ],
)
def test_bad_stored_password_hash(stored):
    with pytest.raises(SecurityError) as e:
        security.verify_password("pw", stored)
    assert e.value.code == SecErr.BAD_PASSWORD_HASH


def test_tls_stream_read_buffer_grows_for_bulk_only(tmp_path):
    """A bulk transfer reads the socket in blocks up to TLS_RECV_BLOCK_MAX_BYTES; a small
    exchange keeps TLS_RECV_BLOCK_BYTES (idle control connections stay small)."""
    import socket as socket_mod
    import threading as threading_mod

    ident = security.load_or_create_identity(tmp_path / "id")
    a, b = socket_mod.socketpair()
    box: dict = {}
    t = threading_mod.Thread(
        target=lambda: box.update(s=security.server_handshake(b, security.server_context(ident)))
    )
    t.start()
    client = security.client_handshake(
        a, security.client_context(), "x:1", None, expected_fingerprint=ident.fingerprint
    )
    t.join(10)
    server = box["s"]
    client.sendall(b"ping")
    buf = bytearray(1 << 20)
    assert server.recv_into(buf) == 4 and len(server._rbuf) == config.TLS_RECV_BLOCK_BYTES
    data = os.urandom(8 << 20)
    sender = threading_mod.Thread(target=client.sendall, args=(data,))
    sender.start()
    got = bytearray()
    while len(got) < len(data):
        n = server.recv_into(buf)
        assert n > 0
        got += buf[:n]
    sender.join(10)
    assert got == data
    assert config.TLS_RECV_BLOCK_BYTES < len(server._rbuf) <= config.TLS_RECV_BLOCK_MAX_BYTES
    client.close()
    server.close()
