"""security.py: identity, TLS with pinning on loopback, trust store, sealed media, passwords."""

from __future__ import annotations

import json
import os
import random
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
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

import config
import security
from security import (
    CLIENT_SIDE,
    SERVER_SIDE,
    DatagramRejected,
    HandshakeError,
    IdentityError,
    MediaCipher,
    ReplayWindow,
    SecErr,
    SecurityError,
    TrustError,
    TrustStore,
    TrustStoreError,
)

# Every network wait in this file is bounded by this (seconds).
NET_TIMEOUT_S = 5.0
HEADER = struct.Struct("!BBHII")  # the 12-byte media header, as utils.MEDIA_HEADER
KEY = bytes(range(32))


def header(kind: str = "a", sender: int = 7, seq: int = 1, time_ms: int = 1000) -> bytes:
    return HEADER.pack(ord(kind), security.SEALED_VERSION, sender, seq, time_ms)


def pair(key: bytes = KEY) -> tuple[MediaCipher, MediaCipher]:
    return MediaCipher(key, CLIENT_SIDE), MediaCipher(key, SERVER_SIDE)


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


# --- sealed media: golden bytes ----------------------------------------------------------------

# Client -> server, key 00 01 .. 1f, kind 'a', sender 7, seq 1, time_ms 1000, counter 5,
# payload "hello". Layout: header(12) | counter u64 | AES-256-GCM(payload) | tag(16).
GOLDEN_C2S = bytes.fromhex(
    "6102000700000001000003e8"  # a, ver 2, sender 7, seq 1, time_ms 1000
    "0000000000000005"  # counter 5
    "d6c9e23d14"  # ciphertext of "hello"
    "55e3d107606b738fcb6d93bf4bb18734"  # tag
)


def _sealed_at(cipher: MediaCipher, counter: int, hdr: bytes, payload: bytes) -> bytes:
    while cipher.next_counter < counter:
        cipher.seal(hdr, b"")
    return cipher.seal(hdr, payload)


def test_nonce_layout():
    assert security.media_nonce(1, 7, 5) == bytes.fromhex("010000070000000000000005")
    assert security.media_nonce(2, 0x1234, 2**64 - 1) == b"\x02\x00\x12\x34" + b"\xff" * 8


def test_golden_datagram():
    client, server = pair()
    dg = _sealed_at(client, 5, header(), b"hello")
    # Built independently from the protocol text, with the AEAD alone:
    aad = header() + (5).to_bytes(8, "big")
    nonce = bytes([1, 0]) + (7).to_bytes(2, "big") + (5).to_bytes(8, "big")
    assert dg == aad + AESGCM(KEY).encrypt(nonce, b"hello", aad)
    assert dg == GOLDEN_C2S, dg.hex()
    assert server.open(dg) == (header(), b"hello")


def test_golden_server_to_client_differs_by_direction_only():
    client, server = pair()
    hdr = header("a", sender=0, seq=3, time_ms=0)
    dg = server.seal(hdr, b"mix")
    aad = hdr + bytes(8)
    nonce = bytes([2, 0, 0, 0]) + bytes(8)
    assert dg == aad + AESGCM(KEY).encrypt(nonce, b"mix", aad)
    assert dg.hex() == (
        "610200000000000300000000" "0000000000000000" "8b0793" "2e35e53ef46036272ef7165331b976d0"
    )
    assert client.open(dg) == (hdr, b"mix")


def test_golden_registration():
    client, server = pair()
    dg = client.seal(header("h", sender=7, seq=0, time_ms=1000), b"")
    assert dg.hex() == (
        "6802000700000000000003e8" "0000000000000000" "c9603276fdd7184ff6c9781dca270b03"
    )
    assert server.open_registration(dg) == (dg[:12], b"")


# --- sealed media: behaviour ----------------------------------------------------------------


def test_round_trip_every_size():
    client, server = pair(security.new_media_key())
    for size in (0, 1, 882, 5000, config.MAX_DATAGRAM_BYTES - 12):
        payload = os.urandom(size)
        dg = client.seal(header(seq=size), payload)
        assert len(dg) == 12 + security.SEAL_OVERHEAD_BYTES + size
        assert server.open(dg) == (header(seq=size), payload)
        back = server.seal(header(sender=0), payload)
        assert client.open(back) == (header(sender=0), payload)


def test_reflection_and_wrong_key_are_rejected():
    client, server = pair()
    dg = client.seal(header(), b"x")
    with pytest.raises(DatagramRejected) as e:
        client.open(dg)  # a client's own datagram sent back to it
    assert e.value.code == SecErr.BAD_TAG
    stranger = MediaCipher(bytes(reversed(KEY)), SERVER_SIDE)
    with pytest.raises(DatagramRejected) as e:
        stranger.open(dg)
    assert e.value.code == SecErr.BAD_TAG
    assert server.open(dg)[1] == b"x"  # failures above did not spend the counter


def test_every_tampered_byte_is_rejected():
    client, server = pair()
    payload = b"some audio samples" * 3
    dg = client.seal(header(), payload)
    for i in range(len(dg)):
        for flip in (0x01, 0x80):
            bad = bytearray(dg)
            bad[i] ^= flip
            with pytest.raises(DatagramRejected):
                server.open(bytes(bad))
    assert server.open(dg) == (header(), payload)  # forgeries never touched the window


def test_replays_and_the_window():
    client, server = pair()
    sealed = [client.seal(header(seq=i), b"p%d" % i) for i in range(2100)]
    server.open(sealed[2000])
    with pytest.raises(DatagramRejected) as e:
        server.open(sealed[2000])
    assert e.value.code == SecErr.REPLAYED
    # Out of order inside the window: accepted exactly once.
    for i in (1999, 1500, 2000 - config.REPLAY_WINDOW_PACKETS + 1):
        assert server.open(sealed[i])[1] == b"p%d" % i
        with pytest.raises(DatagramRejected) as e:
            server.open(sealed[i])
        assert e.value.code == SecErr.REPLAYED
    # Just beyond the window: too old, even though never seen.
    for i in (2000 - config.REPLAY_WINDOW_PACKETS, 3):
        with pytest.raises(DatagramRejected) as e:
            server.open(sealed[i])
        assert e.value.code == SecErr.TOO_OLD
    # A jump ahead slides the window.
    server.open(sealed[2099])
    assert server.open(sealed[2001])[1] == b"p2001"


def test_truncated_and_malformed():
    client, server = pair()
    dg = client.seal(header(), b"payload!")
    for n in range(security.MIN_SEALED_BYTES):
        with pytest.raises(DatagramRejected) as e:
            server.open(dg[:n])
        assert e.value.code == SecErr.TRUNCATED
    for n in range(security.MIN_SEALED_BYTES, len(dg)):
        with pytest.raises(DatagramRejected) as e:
            server.open(dg[:n])
        assert e.value.code == SecErr.BAD_TAG
    v1 = bytearray(dg)
    v1[1] = 1
    with pytest.raises(DatagramRejected) as e:
        server.open(bytes(v1))
    assert e.value.code == SecErr.BAD_VERSION
    with pytest.raises(DatagramRejected) as e:
        server.open(bytes(config.UDP_MAX_DATAGRAM_BYTES + 1))
    assert e.value.code == SecErr.TOO_LARGE
    assert server.open(dg)[1] == b"payload!"


@pytest.mark.parametrize("bad", [b"", b"a\x02" + bytes(9), b"a\x01" + bytes(10), bytes(13)])
def test_seal_refuses_a_bad_header(bad):
    with pytest.raises(SecurityError) as e:
        MediaCipher(KEY, CLIENT_SIDE).seal(bad, b"")
    assert e.value.code == SecErr.BAD_HEADER


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33), "0" * 32])
def test_bad_keys(key):
    with pytest.raises(SecurityError) as e:
        MediaCipher(key, CLIENT_SIDE)
    assert e.value.code == SecErr.BAD_KEY


def test_counter_exhaustion():
    c = MediaCipher(KEY, CLIENT_SIDE)
    c._next_counter = security.MAX_COUNTER
    c.seal(header(), b"")  # the very last counter is usable
    with pytest.raises(SecurityError) as e:
        c.seal(header(), b"")
    assert e.value.code == SecErr.COUNTER_EXHAUSTED


def test_counters_unique_across_threads():
    client, server = pair()
    out: list[bytes] = []
    lock = threading.Lock()

    def work():
        mine = [client.seal(header(), b"") for _ in range(500)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=work, name=f"test-seal-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(NET_TIMEOUT_S)
    counters = {struct.unpack_from("!Q", d, 12)[0] for d in out}
    assert counters == set(range(2000))


# --- registration ---------------------------------------------------------------------------


def test_registration_must_be_fresh():
    client, server = pair()
    h1 = client.seal(header("h", seq=0), b"")
    audio = client.seal(header("a"), b"\x00" * 882)
    h2 = client.seal(header("h", seq=1), b"")
    assert server.open_registration(h1) == (header("h", seq=0), b"")
    with pytest.raises(DatagramRejected) as e:
        server.open_registration(h1)  # recorded and replayed from elsewhere
    assert e.value.code in (SecErr.STALE_REGISTRATION, SecErr.REPLAYED)
    server.open(audio)
    h_old = h2  # counter 2 > 1: still newest
    assert server.open_registration(h_old)[0][0] == ord("h")
    # A registration sealed before a datagram already accepted cannot move the address.
    client2, server2 = pair()
    early_h = client2.seal(header("h"), b"")
    server2.open(client2.seal(header("a"), b""))
    with pytest.raises(DatagramRejected) as e:
        server2.open_registration(early_h)
    assert e.value.code == SecErr.STALE_REGISTRATION
    with pytest.raises(DatagramRejected) as e:
        server2.open_registration(client2.seal(header("a"), b""))
    assert e.value.code == SecErr.NOT_REGISTER
    forged = bytearray(client2.seal(header("h"), b""))
    forged[-1] ^= 1
    with pytest.raises(DatagramRejected) as e:
        server2.open_registration(bytes(forged))
    assert e.value.code == SecErr.BAD_TAG


def test_roam_to_a_new_address_with_a_fresh_registration():
    """The pure part of a Wi-Fi roam: a newer registration verifies; the old one does not."""
    client, server = pair()
    first = client.seal(header("h"), b"")
    server.open_registration(first)
    for _ in range(10):
        server.open(client.seal(header("a"), b""))
    roam = client.seal(header("h"), b"")
    server.open_registration(roam)  # the server then moves the binding
    with pytest.raises(DatagramRejected):
        server.open_registration(first)


# --- properties and the 100,000 ------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_datagram_rejected(data):
    _, server = pair()
    with pytest.raises(DatagramRejected):
        server.open(data)
    with pytest.raises(DatagramRejected):
        server.open_registration(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=security.MIN_SEALED_BYTES, max_size=300), st.sampled_from(b"havlk"))
def test_plausible_random_datagrams_only_raise_datagram_rejected(data, kind):
    _, server = pair()
    data = bytes([kind, security.SEALED_VERSION]) + data[2:]
    with pytest.raises(DatagramRejected):
        server.open(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=200), st.integers(1, 64))
def test_replay_window_matches_a_model(counters, size):
    window = ReplayWindow(size)
    seen: set[int] = set()
    highest = -1
    for c in counters:
        ok = c not in seen and c > highest - size
        try:
            window.accept(c)
            accepted = True
        except DatagramRejected:
            accepted = False
        assert accepted == ok, (c, highest)
        if ok:
            seen.add(c)
            highest = max(highest, c)
    assert window.highest == highest


def test_100000_forged_replayed_truncated_datagrams_deliver_nothing(capsys):
    client, server = pair(security.new_media_key())
    rng = random.Random(12)
    audio = bytes(882)
    genuine = [client.seal(header(seq=i), audio) for i in range(1000)]
    for dg in genuine:
        server.open(dg)
    fresh = [client.seal(header(seq=i), audio) for i in range(1000, 2000)]  # never delivered
    attacks: list[bytes] = []
    for i in range(100_000):
        kind = i % 4
        if kind == 0:  # replay of a delivered datagram
            attacks.append(genuine[rng.randrange(1000)])
        elif kind == 1:  # one flipped bit in a datagram the server has not seen
            bad = bytearray(fresh[rng.randrange(1000)])
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            attacks.append(bytes(bad))
        elif kind == 2:  # truncated
            dg = fresh[rng.randrange(1000)]
            attacks.append(dg[: rng.randrange(len(dg))])
        else:  # forged from scratch with a plausible header and a future counter
            attacks.append(
                header(seq=i)
                + (5000 + i).to_bytes(8, "big")
                + rng.randbytes(882 + security.TAG_BYTES)
            )
    accepted = 0
    codes: dict[str, int] = {}
    t0 = time.perf_counter()
    for dg in attacks:
        try:
            server.open(dg)
            accepted += 1
        except DatagramRejected as exc:
            codes[exc.code] = codes.get(exc.code, 0) + 1
    elapsed = time.perf_counter() - t0
    with capsys.disabled():
        print(
            f"\n100,000 hostile datagrams: {accepted} accepted, {elapsed:.2f} s "
            f"({elapsed / len(attacks) * 1e6:.1f} µs each), by code {codes}"
        )
    assert accepted == 0
    # The genuine, undelivered ones still open: the attack spent no counter.
    assert server.open(fresh[0])[1] == audio


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
