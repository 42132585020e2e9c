"""The test kit: waiting for a condition, and making test files, for tests and benchmarks alike.

One home for what the tests and the benchmarks both need, so neither keeps its own copy:

- ``wait_for(pred, timeout)`` polls ``pred`` until it returns something truthy and returns
  that value; after ``timeout`` seconds it raises ``WaitTimeout`` (an ``AssertionError``,
  so pytest reports a failure that names the condition and where it was written).
  There is no "return False" variant: a condition that never came true is a failure,
  and a caller that wants the value (``frame = wait_for(lambda: rec.get("frame"))``)
  gets it back.
- ``make_file(path, size, seed)`` writes pseudo-random bytes made now (the repository
  carries no binaries, STYLE 13) and returns their SHA-256.

Why here and not elsewhere: this module uses the standard library only (no pytest,
no project modules), so a benchmark script imports it (``from tests.helpers import
make_file``; bench/ already puts the project root on ``sys.path``) without pulling in
the test runner. The dependency runs one way, benchmarks -> test kit: the tests never
import ``bench/``, whose sibling modules import each other by bare name and start
processes. A top-level module was the other candidate; it would sit among the
application's own modules (the flat layout PyInstaller packages from), so it was not
chosen.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

WAIT_S = 20.0  # generous: a passing wait returns as soon as its condition holds
POLL_S = 0.01  # polling interval of the deadline loop, not a synchronisation
_MIB = 1024 * 1024


class WaitTimeout(AssertionError):
    """A ``wait_for`` condition did not come true in time."""


def _describe(pred: Callable[[], object]) -> str:
    """Where ``pred`` was written and its source line, for the failure message."""
    code = getattr(pred, "__code__", None)
    if code is None:
        return repr(pred)
    line = linecache.getline(code.co_filename, code.co_firstlineno).strip()
    return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}: {line}"


def wait_for(pred: Callable[[], T], timeout: float = WAIT_S, what: str | None = None) -> T:
    """Poll ``pred`` until it returns a truthy value and return that value.

    Raises ``WaitTimeout`` when ``timeout`` seconds pass first (``pred`` is asked one
    last time at the deadline). ``what`` names the condition in the failure message;
    without it the message quotes the line where ``pred`` was written.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout:g} s waiting for {what or _describe(pred)}"
            )
        time.sleep(POLL_S)


def make_file(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes to ``path``; return their SHA-256 (hex).

    The same ``seed`` gives the same bytes. Every MiB differs (its number up front),
    so a block written at the wrong offset changes the hash.
    """
    base = random.Random(seed).randbytes(_MIB)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        done = 0
        while done < size:
            chunk = ((done // _MIB).to_bytes(8, "big") + base[8:])[: size - done]
            f.write(chunk)
            digest.update(chunk)
            done += len(chunk)
    return digest.hexdigest()


# --- Protocol 2 plumbing for raw-socket tests and benchmarks ---------------------------
# These import project modules (security, utils) inside the functions, so importing this
# module stays standard-library only.

LOOPBACK = "127.0.0.1"


# The line ``server.py`` prints once it serves (a contract: scripts read it).
READY_LINE = r"ready: tcp=(\S+):(\d+) udp=(\S+):(\d+)"


def start_server_py(
    storage: Path, tcp_port: int = 0, udp_port: int = 0, *extra: str, timeout: float = 10.0
):
    """Run ``server.py`` on 127.0.0.1 until its ``ready:`` line; ``(proc, tcp, udp)``.

    ``extra``: more options. stdout and stderr are pipes (the caller reads or
    ``communicate``s them); no ready line within ``timeout`` fails with the output.
    """
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [
            *(sys.executable, str(root / "server.py"), "--host", LOOPBACK),
            *("--tcp-port", str(tcp_port), "--udp-port", str(udp_port)),
            *("--storage", str(storage), "--log-level", "WARNING"),
            *extra,
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    m = re.search(READY_LINE, ready[0]) if ready else None
    if m is None:
        proc.kill()
        out, err = proc.communicate(timeout=timeout)
        raise AssertionError(f"no ready line: {ready!r} {out!r} {err!r}")
    assert m.group(1) == m.group(3) == LOOPBACK
    return proc, int(m.group(2)), int(m.group(4))


def identity_fingerprint() -> str:
    """The fingerprint of the identity every server of this run uses by default.

    Servers started without ``identity_dir`` (and ``server.py`` without ``--data-dir``)
    use the identity in ``FUSIONMEET_DATA_DIR``, which tests/conftest.py points at one
    temporary folder per run (benchmarks: bench/common.py), so this is their fingerprint.
    """
    import security

    return security.load_or_create_identity().fingerprint


def tls_connect(
    port: int,
    host: str = LOOPBACK,
    timeout: float = 5.0,
    rcvbuf: int | None = None,
    fingerprint: str | None = None,
    source: str | None = None,
    tls: bool = True,
):
    """A TLS connection to a server (what every TCP connection is in protocol 2).

    Returns a ``security.TLSStream`` (sendall, recv, recv_into, settimeout, shutdown,
    close): a drop-in for the plain socket a raw-socket test used. The server must
    present ``fingerprint`` (default: ``identity_fingerprint()``). ``source``: the local
    address to connect from (another loopback address is another client address);
    ``tls=False`` returns the plain socket (a connection refused at accept, or a
    hostile one that never does the handshake).
    """
    import socket

    import security

    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if source is not None:
            raw.bind((source, 0))
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect((host, port))
    except BaseException:
        raw.close()
        raise
    if not tls:
        return raw
    return security.client_handshake(
        raw,
        security.client_context(),
        security.server_address(host, port),
        None,
        timeout,
        expected_fingerprint=fingerprint or identity_fingerprint(),
    )


class Talker:
    """Sends a 440 Hz tone from ``client`` one 20 ms frame at a time, on its own thread,
    until ``close()``; a frame that cannot go (reconnecting) is skipped: media is lossy."""

    def __init__(self, client: Any, name: str = "talker") -> None:
        import numpy as np

        import config

        n = config.AUDIO_FRAME_SAMPLES
        tone = 8000 * np.sin(2 * np.pi * 440 * np.arange(n) / config.AUDIO_RATE_HZ)
        self.pcm = tone.astype("<i2").tobytes()
        self.period_s = config.AUDIO_FRAME_MS / 1000
        self.client = client
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.period_s):
            try:
                self.client.send_audio(self.pcm)
            except Exception:  # not connected for a moment: media is lossy
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2.0)


class Recorder:
    """Collects the events of one client (thread-safe): ``get(event)`` or ``rec[event]``
    is the list of argument tuples so far."""

    def __init__(self, client: Any, *events: str) -> None:
        self.lock = threading.Lock()
        self.events: dict[str, list[tuple]] = {e: [] for e in events}
        for e in events:
            client.on(e, lambda *args, _e=e: self._record(_e, args))

    def _record(self, event: str, args: tuple) -> None:
        with self.lock:
            self.events[event].append(args)

    def get(self, event: str) -> list[tuple]:
        with self.lock:
            return list(self.events[event])

    __getitem__ = get


def _wire() -> Any:
    """The project's ``utils`` (imported when first used: see the module's docstring)."""
    import utils

    return utils


class Raw:
    """A raw control connection to a server on loopback, speaking frames through utils.

    TLS by default (protocol 2); ``source`` connects from another loopback address,
    ``tls=False`` stays plain (see ``tls_connect``).
    """

    MAX_PAYLOAD = 64 * 1024 * 1024  # big enough for any frame a test reads

    def __init__(
        self,
        port: int,
        source: str | None = None,
        tls: bool = True,
        rcvbuf: int | None = None,
        timeout: float = WAIT_S,
    ) -> None:
        self.sock: Any = tls_connect(port, LOOPBACK, timeout, rcvbuf, None, source, tls)
        self.reader = _wire().FrameReader(self.sock, max_payload=self.MAX_PAYLOAD)

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.sock.sendall(_wire().encode_frame(header, payload))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Any:
        return self.reader.read()

    def expect(self, kind: str, limit: int = 100_000) -> Any:
        """Read frames until one of ``kind`` arrives (others are skipped)."""
        for _ in range(limit):
            frame = self.read()
            if frame.type == kind:
                return frame
        raise AssertionError(f"no {kind} within {limit} frames")

    def expect_error(self, code: str) -> dict[str, Any]:
        h = self.expect(_wire().Msg.ERROR).header
        assert h["code"] == code, h
        assert isinstance(h["message"], str) and h["message"]
        return h

    def closed(self) -> bool:
        """True when the server closes the connection (frames before that are skipped)."""
        try:
            for _ in range(100_000):
                self.read()
        except (_wire().ConnectionClosed, ConnectionResetError):
            return True
        except TimeoutError:
            return False
        return False

    def ping_roundtrip(self, t: Any = 42) -> None:
        self.send({"type": _wire().Msg.PING, "t": t})
        assert self.expect(_wire().Msg.PONG).header["t"] == t

    def close(self) -> None:
        self.sock.close()


class MediaSocket:
    """A UDP media socket of one participant that seals what it sends and opens what it gets.

    ``send(plain)`` takes protocol-2 plaintext (``utils.pack_media(...)``: the 12-byte
    header and the payload) and sends it sealed with the participant's key from
    ``welcome``; ``recv()`` returns the opened plaintext (header + payload) of the next
    authentic datagram; ``send_raw`` sends bytes as they are (forgeries, probes). With
    a ``welcome``, the socket registers (a sealed ``h``) at once.
    """

    def __init__(
        self,
        port: int,
        welcome: dict | None = None,
        host: str = LOOPBACK,
        timeout: float = 5.0,
        register: bool = True,
    ) -> None:
        import socket

        import media_crypto

        self.addr = (host, port)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(timeout)
        self.cipher = None
        self.sender = 0
        if welcome is not None:
            key = bytes.fromhex(welcome["media"]["key"])
            self.cipher = media_crypto.MediaCipher(key, media_crypto.CLIENT_SIDE)
            self.sender = welcome["you"]["id"]
            if register:
                self.register()

    def register(self) -> None:
        """Send a sealed ``h`` and wait for the server's sealed answer."""
        import utils

        self.send(utils.pack_media(utils.KIND_REGISTER, self.sender, 0, 0))
        self.recv_kind(utils.KIND_REGISTER)

    def seal(self, plain: bytes) -> bytes:
        assert self.cipher is not None, "no welcome: no key to seal with"
        return self.cipher.seal(plain[:12], plain[12:])

    def send(self, plain: bytes) -> None:
        self.sock.sendto(self.seal(plain), self.addr)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def recv_raw(self, timeout: float | None = None) -> bytes:
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        return self.sock.recv(70000)

    def recv(self, timeout: float | None = None) -> bytes:
        """The plaintext (header + payload) of the next datagram that opens."""
        import media_crypto

        assert self.cipher is not None, "no welcome: no key to open with"
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            data = self.recv_raw(max(0.001, deadline - time.monotonic()))
            try:
                header, payload = self.cipher.open(data)
            except media_crypto.DatagramRejected:
                continue
            return header + payload

    def recv_kind(self, kind: int, limit: int = 1000):
        """The next opened datagram of ``kind``, as a ``utils.Datagram``."""
        import utils

        for _ in range(limit):
            dg = utils.Datagram.parse(self.recv())
            if dg.kind == kind:
                return dg
        raise AssertionError(f"no datagram of kind {kind}")

    def close(self) -> None:
        self.sock.close()


class CuttingProxy:
    """A TCP relay to a server that cuts its first connection after ``cut_bytes``.

    ``direction`` "down" counts the bytes the server sends (a cut download), "up" the
    bytes the client sends (a cut upload). At the cut the client's side is reset, so its
    next send fails at once (a mere shutdown lets Linux keep accepting bytes, and a
    sender that never reads would wait for an answer that cannot come). Later
    connections are relayed whole.
    """

    def __init__(self, upstream_port: int, cut_bytes: int, direction: str = "down") -> None:
        import socket

        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
        self.upstream_port = upstream_port
        self.cut_bytes = cut_bytes
        self.direction = direction
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.socks: list = []
        self.accepter = threading.Thread(target=self._accept, name="test-proxy-accept")
        self.accepter.start()

    def _accept(self) -> None:
        import socket

        while not self.stop.is_set() and self.connections < 10:
            try:
                down, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            up = socket.create_connection((LOOPBACK, self.upstream_port), timeout=WAIT_S)
            self.socks += [down, up]
            limit = self.cut_bytes if self.connections == 1 else None
            limits = (limit, None) if self.direction == "up" else (None, limit)
            for src, dst, lim in ((down, up, limits[0]), (up, down, limits[1])):
                t = threading.Thread(
                    target=self._pump, args=(src, dst, lim, down), name="test-proxy-pump"
                )
                t.start()
                self.threads.append(t)

    def _pump(self, src: Any, dst: Any, limit: int | None, client_side: Any) -> None:
        import socket
        import struct

        moved = 0
        src.settimeout(WAIT_S)
        try:
            while limit is None or moved < limit:
                data = src.recv(65536 if limit is None else min(65536, limit - moved))
                if not data:
                    break
                dst.sendall(data)
                moved += len(data)
        except OSError:
            pass
        cut = limit is not None and moved >= limit
        if cut:  # SO_LINGER 0: the close below resets the client's connection
            client_side.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if cut:
            client_side.close()

    def close(self) -> None:
        self.stop.set()
        self.accepter.join(WAIT_S)
        for t in self.threads:
            t.join(WAIT_S)
        for sock in self.socks:
            sock.close()
        self.listener.close()
