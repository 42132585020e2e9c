"""Issue 12's targets, end to end: nothing secret crosses the wire in clear, a server with
another certificate is refused, and hostile datagrams at a live server deliver nothing.

The capture test puts a userspace relay between the clients and the server (TCP and
UDP on 127.0.0.2, the server on 127.0.0.1, so the UDP relay can take the server's UDP
port number and the clients' media goes through it too) and records every byte in
both directions while a session with a password, chat, private messages, a file
upload and download, audio, video and a screen share runs. Then it searches the
capture for the known plaintexts.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

import config
import file_sharing_module as fsm
import media_crypto
import security
import utils
from client import ConferenceClient, JoinError
from server import ConferenceServer
from tests.helpers import MediaSocket, make_file, wait_for
from tests.test_server_protocol import fake_vp8

RELAY_HOST = "127.0.0.2"
SERVER_HOST = "127.0.0.1"
WAIT_S = 20.0
PASSWORD = "Corridor-Must-Not-Hear-7731"
PUBLIC_CHAT = "quarterly figures: revenue 48213 and the Zanzibar acquisition"
PRIVATE_CHAT = "just between us: the codename is BLUEHERON"


# --- a recording relay -------------------------------------------------------------------


class Capture:
    """Every byte the relay moved: TCP per connection and direction, UDP per datagram."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: dict[tuple[int, str], bytearray] = {}
        self.datagrams: list[bytes] = []

    def tcp(self, conn: int, direction: str, data: bytes) -> None:
        with self.lock:
            self.streams.setdefault((conn, direction), bytearray()).extend(data)

    def udp(self, data: bytes) -> None:
        with self.lock:
            self.datagrams.append(bytes(data))

    def blobs(self) -> list[bytes]:
        with self.lock:
            return [bytes(s) for s in self.streams.values()] + list(self.datagrams)

    def contains(self, needle: bytes) -> bool:
        return any(needle in blob for blob in self.blobs())


class RecordingRelay:
    """TCP ``RELAY_HOST:tcp_port`` and UDP ``RELAY_HOST:<server's udp port>`` -> the server."""

    def __init__(self, server: ConferenceServer, capture: Capture) -> None:
        self.server = server
        self.capture = capture
        self.stop = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((RELAY_HOST, 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.tcp_port = self.listener.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((RELAY_HOST, server.udp_port))  # the port number the welcome names
        self.udp.setblocking(False)
        self.upstream: dict[tuple[str, int], socket.socket] = {}
        self.socks: list[socket.socket] = []
        self.threads = [
            threading.Thread(target=self._accept, name="relay-accept"),
            threading.Thread(target=self._udp_loop, name="relay-udp"),
        ]
        for t in self.threads:
            t.start()

    def _accept(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                down, _ = self.listener.accept()
            except TimeoutError:
                continue
            up = socket.create_connection((SERVER_HOST, self.server.tcp_port), timeout=5)
            n += 1
            self.socks += [down, up]
            for src, dst, way in ((down, up, "c2s"), (up, down, "s2c")):
                t = threading.Thread(target=self._pump, args=(src, dst, n, way), name="relay-tcp")
                self.threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: int, way: str) -> None:
        src.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = src.recv(256 * 1024)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            self.capture.tcp(conn, way, data)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _udp_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ, None)
        while not self.stop.is_set():
            for key, _ in sel.select(0.1):
                while True:
                    try:
                        data, addr = key.fileobj.recvfrom(70000)
                    except BlockingIOError:
                        break
                    self.capture.udp(data)
                    if key.data is None:  # from a client: on to the server
                        up = self.upstream.get(addr)
                        if up is None:
                            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            up.bind((SERVER_HOST, 0))
                            up.setblocking(False)
                            self.upstream[addr] = up
                            sel.register(up, selectors.EVENT_READ, addr)
                        up.sendto(data, (SERVER_HOST, self.server.udp_port))
                    else:  # from the server: back to that client
                        self.udp.sendto(data, key.data)
        sel.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for s in [self.listener, self.udp, *self.socks, *self.upstream.values()]:
            s.close()


@pytest.fixture
def relay(server):
    capture = Capture()
    r = RecordingRelay(server, capture)
    try:
        yield r
    finally:
        r.close()


def relayed_client(server, relay) -> ConferenceClient:
    return ConferenceClient(RELAY_HOST, relay.tcp_port, expected_fingerprint=server.fingerprint)


# --- the capture ---------------------------------------------------------------------------


def test_capture_of_a_whole_session_holds_no_secret(server, relay, tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)  # every log line of server and clients, to search too
    alice, bob = relayed_client(server, relay), relayed_client(server, relay)
    try:
        alice.connect("Alice", "Board", PASSWORD)
        bob.connect("Bob", "Board", PASSWORD)
        assert alice.wait_udp_registered(WAIT_S) and bob.wait_udp_registered(WAIT_S)
        heard: list[dict] = []
        bob.on("chat", heard.append)
        screens: list[bytes] = []
        bob.on("screen_frame", lambda *a: screens.append(a[4]))  # (from, seq, w, h, vp8, key)
        slices: list[bytes] = []  # the VP8 bytes of each video fragment Bob receives
        bob.on("video_fragment", lambda _pid, _seq, frag: slices.append(frag.data))
        assert bob.subscribe({alice.my_id: "small"})

        alice.send_chat(PUBLIC_CHAT)
        alice.send_chat(PRIVATE_CHAT, to=[bob.my_id])
        wait_for(lambda: len(heard) >= 2, WAIT_S)
        assert {m["message"] for m in heard} == {PUBLIC_CHAT, PRIVATE_CHAT}

        src = tmp_path / "minutes.bin"
        sha = make_file(src, 3 * 1024 * 1024, seed=12)
        up = fsm.upload(alice, src)
        assert up.wait(WAIT_S) and up.ok, up.error
        wait_for(lambda: up.file_id in bob.files, WAIT_S)
        dest = tmp_path / "dl"
        dest.mkdir()
        down = fsm.download(bob, up.file_id, dest)
        assert down.wait(WAIT_S) and down.ok, down.error
        assert down.sha256 == sha

        rng = np.random.default_rng(7)
        frame_bytes = config.AUDIO_FRAME_SAMPLES * config.AUDIO_SAMPLE_WIDTH_BYTES
        pcm = [rng.integers(-8000, 8000, frame_bytes // 2).astype("<i2").tobytes()]
        before = bob.audio_frames_received
        for _ in range(25):
            alice.send_audio(pcm[0])
        wait_for(lambda: bob.audio_frames_received > before, WAIT_S)

        camera = os.urandom(30_000)  # stands for a VP8 frame: incompressible, easy to search
        first_slice = camera[: utils.VIDEO_SLICE_BYTES]
        ids = iter(range(1, 1_000_000))
        wait_for(
            lambda: alice.send_video_frame("small", next(ids), True, camera)
            and first_slice in slices,
            WAIT_S,
        )

        alice.present_start()
        wait_for(lambda: bob.presenter == alice.my_id, WAIT_S)
        # A VP8 keyframe header (the server checks it) then random bytes, easy to search.
        slide = fake_vp8(True, 64, 48, size=10) + os.urandom(20_000)
        wait_for(lambda: alice.send_screen_frame(slide, 64, 48, True) or slide in screens, WAIT_S)
    finally:
        alice.leave()
        bob.leave()

    blobs = relay.capture.blobs()
    assert sum(map(len, blobs)) > 3 * 1024 * 1024  # the file really went through the relay
    assert relay.capture.datagrams, "no media went through the relay"
    assert any(b[:1] == b"\x16" for b in blobs)  # TLS records, captured
    secrets_in_clear = {
        "password": PASSWORD.encode(),
        "public chat": PUBLIC_CHAT.encode(),
        "private chat": PRIVATE_CHAT.encode(),
        "file bytes": src.read_bytes()[1_000_000:1_000_064],
        "alice's token": alice.token.encode(),
        "bob's token": bob.token.encode(),
        "alice's token (binary)": bytes.fromhex(alice.token),
        "alice's media key": alice.media_params["key"].encode(),
        "alice's media key (binary)": bytes.fromhex(alice.media_params["key"]),
        "audio": pcm[0][100:164],
        "video": camera[5000:5064],
        "screen": slide[5000:5064],
    }
    found = [name for name, needle in secrets_in_clear.items() if relay.capture.contains(needle)]
    assert found == [], f"in clear on the wire: {found}"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged  # the search below looks at something
    for name in ("password", "alice's token", "bob's token", "alice's media key"):
        assert secrets_in_clear[name].decode() not in logged, f"{name} in a log line"
    stored = [p.name for p in Path(server.config.storage_dir).rglob("*")]
    assert not any(alice.token in n or bob.token in n for n in stored)  # nor a file name
    # Control: the search does find what really travels in clear (the datagram header).
    header = utils.MEDIA_HEADER.pack(utils.KIND_REGISTER, utils.MEDIA_VERSION, alice.my_id, 0, 0)
    assert any(d[:4] == header[:4] for d in relay.capture.datagrams)


# --- another certificate -------------------------------------------------------------------


def test_a_server_with_another_certificate_is_refused_and_hears_nothing(server_config, tmp_path):
    store = security.TrustStore(tmp_path / "known.json")
    first = ConferenceServer(server_config)
    first.start()
    port = first.tcp_port
    try:
        c = ConferenceClient(SERVER_HOST, port, trust_store=store, trust_first_use=True)
        c.connect("Alice", "Room", PASSWORD)
        c.leave()
    finally:
        first.stop()
    assert store.fingerprint_for(security.server_address(SERVER_HOST, port)) == first.fingerprint
    # An impostor on the same address: a fresh identity (another key and certificate).
    server_config.tcp_port = port
    server_config.identity_dir = tmp_path / "impostor-identity"
    impostor = ConferenceServer(server_config)
    impostor.start()
    try:
        assert impostor.fingerprint != first.fingerprint
        for kwargs in ({"trust_first_use": True}, {}):
            c = ConferenceClient(SERVER_HOST, port, trust_store=store, **kwargs)
            with pytest.raises(JoinError) as info:
                c.connect("Alice", "Room", PASSWORD)
            assert info.value.code == security.SecErr.FINGERPRINT_CHANGED
            assert info.value.fingerprint == impostor.fingerprint
            assert info.value.old == first.fingerprint
            assert "impersonating" in info.value.message
        c = ConferenceClient(SERVER_HOST, port, expected_fingerprint=first.fingerprint)
        with pytest.raises(JoinError) as info:
            c.connect("Alice", "Room", PASSWORD)
        assert info.value.code == security.SecErr.FINGERPRINT_MISMATCH
        with pytest.raises(JoinError):
            ConferenceClient.list_sessions(SERVER_HOST, port, 5.0, trust_store=store)
        # Nothing was sent: not one frame (no hello, no password) reached the impostor.
        assert impostor.snapshot_stats().get("frames_in", 0) == 0
        assert store.fingerprint_for(security.server_address(SERVER_HOST, port)) == (
            first.fingerprint
        )  # still the first one: trust_first_use never replaces a pin
    finally:
        impostor.stop()


# --- hostile datagrams at a live server ----------------------------------------------------

HOSTILE_TOTAL = 100_000


def test_100k_forged_replayed_and_truncated_datagrams_deliver_nothing(server, make_client):
    from tests.test_server_protocol import join, subscribe

    a, wa = join(server.tcp_port, "Alice")
    b, wb = join(server.tcp_port, "Bob")
    ua, ub = MediaSocket(server.udp_port, wa), MediaSocket(server.udp_port, wb)
    stranger = MediaSocket(server.udp_port)
    ida = wa["you"]["id"]
    subscribe(b, {ida: "small"})

    def video(seq: int, tag: bytes) -> bytes:
        frag = utils.split_vp8_frame("small", seq, True, tag)[0]
        return ua.seal(utils.pack_media(utils.KIND_VIDEO, ida, seq, 0, frag))

    legit = [video(i, b"legit-%d" % i) for i in range(5)]
    for d in legit:
        ua.send_raw(d)
    got = [utils.Datagram.parse(ub.recv()) for _ in legit]
    assert sorted(g.seq for g in got) == list(range(5))

    rng = np.random.default_rng(3)
    header = utils.MEDIA_HEADER.pack(utils.KIND_VIDEO, utils.MEDIA_VERSION, ida, 9, 0)
    kinds = {"replayed": 0, "forged": 0, "truncated": 0}
    for i in range(HOSTILE_TOTAL):
        sock = ua if i % 2 else stranger  # from Alice's own address, and from elsewhere
        r = i % 5
        if r < 2:
            data, kind = legit[i % len(legit)], "replayed"
        elif r < 4:  # a well-formed header, a plausible counter, a body that is not sealed
            data = header + int(rng.integers(0, 2**40)).to_bytes(8, "big") + rng.bytes(64)
            kind = "forged"
        else:
            data, kind = rng.bytes(int(rng.integers(0, media_crypto.MIN_SEALED_BYTES))), "truncated"
        sock.send_raw(data)
        kinds[kind] += 1
    probe = video(99, b"probe")
    ua.send_raw(probe)
    # The server handles datagrams in order: once the probe arrives, all the rest was seen.
    arrived = [utils.Datagram.parse(ub.recv(WAIT_S))]
    while arrived[-1].seq != 99:
        arrived.append(utils.Datagram.parse(ub.recv(WAIT_S)))
    assert [d.seq for d in arrived] == [99], "a hostile datagram was delivered"
    with pytest.raises(TimeoutError):
        ub.recv(0.3)
    stats = server.snapshot_stats()
    dropped = sum(
        stats.get(f"datagrams_{why}", 0)
        for why in ("replayed", "bad_tag", "truncated", "unbound", "too_old", "bad_version")
    )
    hostile_arrived = stats["datagrams_in"] - 2 - len(legit) - 1  # minus the 2 h, legit, probe
    assert dropped == stats["datagrams_dropped"] == hostile_arrived  # every one dropped
    assert stats["datagrams_dropped"] > HOSTILE_TOTAL // 2  # most arrived (loopback)
    assert stats.get("datagrams_replayed", 0) > 0 and stats.get("datagrams_bad_tag", 0) > 0
    assert stats.get("datagrams_truncated", 0) > 0 and stats.get("datagrams_unbound", 0) > 0
    # And media goes on: a real client still hears the other.
    a.ping_roundtrip()
    ua.send_raw(video(100, b"after"))
    assert utils.Datagram.parse(ub.recv()).seq == 100


# --- the client's binding -----------------------------------------------------------------


def test_client_registers_again_when_its_binding_dies(server, make_client, monkeypatch):
    """The server forgets a client's UDP address (e.g. another sealed h moved it): the
    client's keepalives go unanswered, so after UDP_REBIND_SILENCE_S it registers again."""
    monkeypatch.setattr(config, "UDP_REBIND_SILENCE_S", 0.5)
    fast = config.ClientConfig(udp_keepalive_s=0.1)
    alice = make_client("Alice", audio=False, video=False)
    bob = ConferenceClient(
        SERVER_HOST, server.tcp_port, fast, expected_fingerprint=server.fingerprint
    )
    try:
        bob.connect("Bob", "Room", audio=False, video=False)
        assert bob.wait_udp_registered(WAIT_S)
        with server._lock:  # the binding dies on the server's side
            p = server.sessions.by_id[bob.my_id]
            del server.sessions.by_addr[p.udp_addr]
            p.udp_addr = None
        wait_for(lambda: not bob.udp_registered, WAIT_S, "bob notices the silence")
        wait_for(lambda: bob.udp_registered, WAIT_S, "bob registers again")
        with server._lock:
            assert server.sessions.by_id[bob.my_id].udp_addr is not None
        slices: list[bytes] = []
        bob.on("video_fragment", lambda _pid, _seq, frag: slices.append(frag.data))
        assert bob.subscribe({alice.my_id: "small"})
        frame = os.urandom(3000)
        ids = iter(range(1, 1_000_000))
        wait_for(
            lambda: alice.send_video_frame("small", next(ids), True, frame)
            and frame[: utils.VIDEO_SLICE_BYTES] in slices,
            WAIT_S,
        )
    finally:
        bob.leave()
