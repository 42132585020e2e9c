"""A userspace network impairment relay (this machine's kernel has no netem).

UDP and TCP relays that sit between clients and a server on loopback and add
loss (random or bursty, Gilbert-Elliott), delay, jitter (with reordering for
UDP), and blackouts, each direction on its own, from a seeded random generator,
for a bounded time. As a library::

    relay = UdpRelay(("127.0.0.1", server_udp_port),
                     up=Impairment(loss=0.05, delay_ms=20, jitter_ms=10),
                     down=Impairment(loss=0.05, delay_ms=20, jitter_ms=10), seed=1)
    relay.start()          # relay.address: where clients send instead of the server
    ...
    relay.stop()           # threads joined, sockets closed; relay.stats() per direction

From the command line (stops by itself after --duration)::

    python bench/netrelay.py --udp-upstream 127.0.0.1:5001 --tcp-upstream 127.0.0.1:5000 \\
        --listen-host 127.0.0.2 --loss 0.05 --burst-frames 3 --delay-ms 20 --jitter-ms 10 \\
        --blackout 5:1 --seed 1 --duration 60

Each UDP client (source address) gets its own upstream socket, so the server sees
one address per client; its answers are impaired on the way down and sent from
the listening socket. TCP is relayed byte for byte in order (delay, jitter as
extra delay, blackouts stall the stream; TCP has no loss of its own).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import selectors
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import config  # noqa: E402

Address = tuple[str, int]


@dataclass
class Impairment:
    """What one direction suffers. Times in ms from the relay's start (blackouts: s)."""

    loss: float = 0.0  # random loss probability (Bernoulli), or the mean loss when bursty
    burst_frames: float = 0.0  # > 1: Gilbert-Elliott with this mean burst length (packets)
    delay_ms: float = 0.0  # fixed one-way delay
    jitter_ms: float = 0.0  # uniform extra delay in [-jitter, +jitter] (clamped at 0)
    reorder: bool = True  # UDP: a packet may overtake an earlier one with more delay
    blackouts: list[tuple[float, float]] = field(default_factory=list)  # (start_s, duration_s)

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0")
        if self.burst_frames and self.burst_frames < 1:
            raise ValueError("burst_frames must be >= 1 (or 0 for random loss)")
        for start, duration in self.blackouts:
            if start < 0 or duration <= 0:
                raise ValueError("a blackout needs start >= 0 and duration > 0")

    @property
    def clean(self) -> bool:
        return not (self.loss or self.delay_ms or self.jitter_ms or self.blackouts)


class LossModel:
    """Bernoulli loss, or a two-state Gilbert-Elliott chain (good: no loss; bad: all lost)
    whose stationary loss is ``loss`` and whose mean burst is ``burst_frames`` packets."""

    def __init__(self, imp: Impairment, rng: random.Random) -> None:
        self.rng = rng
        self.loss = imp.loss
        self.bursty = imp.burst_frames > 1 and imp.loss > 0
        self.bad = False
        if self.bursty:
            self.p_bad_to_good = 1.0 / imp.burst_frames
            self.p_good_to_bad = imp.loss * self.p_bad_to_good / (1.0 - imp.loss)

    def lost(self) -> bool:
        if not self.bursty:
            return self.loss > 0 and self.rng.random() < self.loss
        if self.bad:
            if self.rng.random() < self.p_bad_to_good:
                self.bad = False
        elif self.rng.random() < self.p_good_to_bad:
            self.bad = True
        return self.bad


@dataclass
class DirectionStats:
    """Counters of one direction."""

    received: int = 0
    sent: int = 0
    lost: int = 0  # dropped by the loss model
    blacked_out: int = 0  # dropped (UDP) or held (TCP chunks) in a blackout
    overflow: int = 0  # dropped because the relay queue was full
    reordered: int = 0  # sent before a packet received earlier
    bytes: int = 0


class _Direction:
    """Decides the fate of each packet of one direction: drop, or release time."""

    def __init__(self, imp: Impairment, rng: random.Random, t0: float) -> None:
        self.imp = imp
        self.rng = rng
        self.t0 = t0
        self.loss = LossModel(imp, rng)
        self.stats = DirectionStats()
        self._last_release = 0.0
        self._order = itertools.count()
        self._released_upto = -1  # highest arrival index sent so far

    def in_blackout(self, now: float) -> float | None:
        """The end (monotonic) of the blackout ``now`` falls in, or None."""
        t = now - self.t0
        for start, duration in self.imp.blackouts:
            if start <= t < start + duration:
                return self.t0 + start + duration
        return None

    def delay_s(self) -> float:
        d = self.imp.delay_ms
        if self.imp.jitter_ms:
            d += self.rng.uniform(-self.imp.jitter_ms, self.imp.jitter_ms)
        return max(0.0, d) / 1000.0

    def schedule(self, now: float, nbytes: int, lossy: bool) -> tuple[float, int] | None:
        """Release time and arrival index of a packet received ``now``; None = dropped."""
        self.stats.received += 1
        self.stats.bytes += nbytes
        blackout_end = self.in_blackout(now)
        if blackout_end is not None:
            self.stats.blacked_out += 1
            if lossy:
                return None
            now = blackout_end  # a stream waits for the link to come back
        if lossy and self.loss.lost():
            self.stats.lost += 1
            return None
        release = now + self.delay_s()
        if not (lossy and self.imp.reorder):
            release = max(release, self._last_release)
        self._last_release = max(self._last_release, release)
        return release, next(self._order)

    def sent(self, index: int) -> None:
        self.stats.sent += 1
        if index < self._released_upto:
            self.stats.reordered += 1
        self._released_upto = max(self._released_upto, index)


class _Relay:
    """What the UDP and TCP relays share: start/stop, time bound, seeded directions."""

    def __init__(
        self,
        upstream: Address,
        up: Impairment | None,
        down: Impairment | None,
        seed: int,
        listen: Address,
        max_duration_s: float,
    ) -> None:
        self.upstream = upstream
        self.up_imp = up or Impairment()
        self.down_imp = down or Impairment()
        self.seed = seed
        self.listen = listen
        self.max_duration_s = max_duration_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.t0 = 0.0
        self.address: Address = listen

    def _directions(self, salt: int) -> tuple[_Direction, _Direction]:
        rng_up = random.Random(self.seed * 1_000_003 + 2 * salt)
        rng_down = random.Random(self.seed * 1_000_003 + 2 * salt + 1)
        return (
            _Direction(self.up_imp, rng_up, self.t0),
            _Direction(self.down_imp, rng_down, self.t0),
        )

    def _spawn(self, target, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _expired(self) -> bool:
        return time.monotonic() - self.t0 > self.max_duration_s

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:
        """Stop relaying; every thread joined, every socket closed (idempotent)."""
        self._stop.set()
        self._close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(config.NETRELAY_JOIN_TIMEOUT_S)
        self._threads.clear()

    def _close(self) -> None:  # pragma: no cover - overridden
        pass

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)


def _big_buffers(sock: socket.socket) -> None:
    """Room for bursts: the kernel silently drops what a full receive buffer cannot take."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.UDP_RECV_BUFFER_BYTES)
    except OSError:
        pass  # some systems cap the buffer; smaller still works


class UdpRelay(_Relay):
    """Impaired UDP between clients and ``upstream``; clients send to ``address``."""

    def __init__(
        self,
        upstream: Address,
        up: Impairment | None = None,
        down: Impairment | None = None,
        seed: int = 1,
        listen: Address = ("127.0.0.1", 0),
        max_duration_s: float = config.NETRELAY_MAX_DURATION_S,
        max_queue_packets: int = config.NETRELAY_MAX_QUEUE_PACKETS,
    ) -> None:
        super().__init__(upstream, up, down, seed, listen, max_duration_s)
        self.max_queue_packets = max_queue_packets
        self._sock: socket.socket | None = None
        # Only the relay thread touches these after start().
        self._clients: dict[Address, socket.socket] = {}
        self._by_upstream_sock: dict[socket.socket, Address] = {}
        self._heap: list[tuple[float, int, socket.socket, bytes, Address, _Direction, int]] = []
        self._tiebreak = itertools.count()
        self.up_stats = DirectionStats()
        self.down_stats = DirectionStats()
        self._up: _Direction | None = None
        self._down: _Direction | None = None

    def start(self) -> UdpRelay:
        self.t0 = time.monotonic()
        self._up, self._down = self._directions(0)
        self.up_stats, self.down_stats = self._up.stats, self._down.stats
        family = socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        _big_buffers(sock)
        sock.bind(self.listen)
        sock.setblocking(False)
        self._sock = sock
        self.address = sock.getsockname()[:2]
        self._spawn(self._run, "netrelay-udp")
        return self

    def stats(self) -> dict[str, DirectionStats]:
        return {"up": self.up_stats, "down": self.down_stats}

    def _upstream_sock(self, client: Address) -> socket.socket | None:
        s = self._clients.get(client)
        if s is None:
            if len(self._clients) >= config.NETRELAY_MAX_CLIENTS:
                return None
            family = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
            s = socket.socket(family, socket.SOCK_DGRAM)
            _big_buffers(s)
            s.bind((self.listen[0], 0))
            s.setblocking(False)
            self._clients[client] = s
            self._by_upstream_sock[s] = client
            self._sel.register(s, selectors.EVENT_READ)
        return s

    def _enqueue(
        self, d: _Direction, via: socket.socket, data: bytes, to: Address, now: float
    ) -> None:
        fate = d.schedule(now, len(data), lossy=True)
        if fate is None:
            return
        if len(self._heap) >= self.max_queue_packets:
            d.stats.overflow += 1
            return
        release, index = fate
        heapq.heappush(self._heap, (release, next(self._tiebreak), via, data, to, d, index))

    def _run(self) -> None:
        assert self._sock is not None and self._up is not None and self._down is not None
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ)
        try:
            while not self._stop.is_set() and not self._expired():
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, via, data, to, d, index = heapq.heappop(self._heap)
                    try:
                        via.sendto(data, to)
                        d.sent(index)
                    except OSError:
                        pass  # the peer is gone: a datagram lost like any other
                timeout = config.NETRELAY_POLL_S
                if self._heap:
                    timeout = max(0.0, min(timeout, self._heap[0][0] - time.monotonic()))
                for key, _ in self._sel.select(timeout):
                    self._drain(key.fileobj)
        finally:
            self._sel.close()

    def _drain(self, sock) -> None:
        assert self._up is not None and self._down is not None
        for _ in range(config.NETRELAY_MAX_READS_PER_WAKE):
            try:
                data, addr = sock.recvfrom(config.UDP_MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            now = time.monotonic()
            if sock is self._sock:
                up = self._upstream_sock(addr[:2])
                if up is not None:
                    self._enqueue(self._up, up, data, self.upstream, now)
            else:
                client = self._by_upstream_sock.get(sock)
                if client is not None:
                    self._enqueue(self._down, self._sock, data, client, now)

    def _close(self) -> None:
        for t in self._threads:  # the relay thread owns the sockets while it runs
            if t is not threading.current_thread():
                t.join(config.NETRELAY_JOIN_TIMEOUT_S)
        if self._sock is not None:
            self._sock.close()
        for s in self._clients.values():
            s.close()
        self._clients.clear()
        self._by_upstream_sock.clear()


class TcpRelay(_Relay):
    """Delayed, stalled (blackouts) TCP between clients and ``upstream``, bytes in order."""

    def __init__(
        self,
        upstream: Address,
        up: Impairment | None = None,
        down: Impairment | None = None,
        seed: int = 1,
        listen: Address = ("127.0.0.1", 0),
        max_duration_s: float = config.NETRELAY_MAX_DURATION_S,
    ) -> None:
        super().__init__(upstream, up, down, seed, listen, max_duration_s)
        self._server: socket.socket | None = None
        # Taken by the accept thread (adds) and stop() (closes); guards _conns.
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._n = itertools.count(1)
        self.up_stats = DirectionStats()
        self.down_stats = DirectionStats()

    def start(self) -> TcpRelay:
        self.t0 = time.monotonic()
        family = socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET
        srv = socket.socket(family, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(self.listen)
        srv.listen(config.LISTEN_BACKLOG)
        srv.settimeout(config.NETRELAY_POLL_S)
        self._server = srv
        self.address = srv.getsockname()[:2]
        self._spawn(self._accept, "netrelay-tcp-accept")
        return self

    def stats(self) -> dict[str, DirectionStats]:
        return {"up": self.up_stats, "down": self.down_stats}

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set() and not self._expired():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, config.CONNECT_TIMEOUT_S)
            except OSError:
                client.close()
                continue
            n = next(self._n)
            up, down = self._directions(n)
            up.stats, down.stats = self.up_stats, self.down_stats  # totals over connections
            with self._lock:
                self._conns += [client, server]
            for src, dst, d, name in ((client, server, up, "up"), (server, client, down, "down")):
                q: deque[tuple[float, bytes]] = deque()
                cond = threading.Condition()
                self._spawn(self._read, f"netrelay-tcp-{n}-{name}-read", src, d, q, cond)
                self._spawn(self._write, f"netrelay-tcp-{n}-{name}-write", dst, d, q, cond)

    def _read(self, src: socket.socket, d: _Direction, q: deque, cond: threading.Condition) -> None:
        src.settimeout(config.NETRELAY_POLL_S)
        while not self._stop.is_set() and not self._expired():
            try:
                data = src.recv(config.NETRELAY_TCP_CHUNK_BYTES)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            fate = d.schedule(time.monotonic(), len(data), lossy=False) if data else None
            with cond:
                q.append((fate[0] if fate else time.monotonic(), data))
                cond.notify()
            if not data:
                return

    def _write(
        self, dst: socket.socket, d: _Direction, q: deque, cond: threading.Condition
    ) -> None:
        while not self._stop.is_set():
            with cond:
                if not q:
                    cond.wait(config.NETRELAY_POLL_S)
                    continue
                release, data = q[0]
                wait = release - time.monotonic()
                if wait > 0:
                    cond.wait(min(wait, config.NETRELAY_POLL_S))
                    continue
                q.popleft()
            if not data:  # the other side closed: pass the close on
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return
            d.stats.sent += 1

    def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._conns.clear()


# --- command line ---------------------------------------------------------------------


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _blackout(text: str) -> tuple[float, float]:
    start, _, duration = text.partition(":")
    try:
        return float(start), float(duration)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START_S:DURATION_S, got {text!r}") from None


def impairment_from_args(args: argparse.Namespace) -> Impairment:
    return Impairment(
        loss=args.loss,
        burst_frames=args.burst_frames,
        delay_ms=args.delay_ms,
        jitter_ms=args.jitter_ms,
        reorder=not args.no_reorder,
        blackouts=list(args.blackout),
    )


def add_impairment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", type=float, default=0.0, help="loss probability, each direction")
    p.add_argument("--burst-frames", type=float, default=0.0, help="mean loss burst (>1: bursty)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="± uniform jitter, each way")
    p.add_argument("--no-reorder", action="store_true", help="jitter never reorders UDP")
    p.add_argument(
        "--blackout",
        type=_blackout,
        action="append",
        default=[],
        metavar="START_S:DURATION_S",
        help="drop everything in this window (repeatable)",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--udp-upstream", type=_address, metavar="HOST:PORT")
    p.add_argument("--tcp-upstream", type=_address, metavar="HOST:PORT")
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--udp-port", type=int, default=0, help="listening UDP port (0: OS picks)")
    p.add_argument("--tcp-port", type=int, default=0, help="listening TCP port (0: OS picks)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=60.0, help="stop after this many seconds")
    add_impairment_args(p)
    args = p.parse_args(argv)
    if not (args.udp_upstream or args.tcp_upstream):
        p.error("give --udp-upstream and/or --tcp-upstream")
    duration = min(args.duration, config.NETRELAY_MAX_DURATION_S)
    imp = impairment_from_args(args)
    relays: list[_Relay] = []
    if args.udp_upstream:
        relays.append(
            UdpRelay(
                args.udp_upstream, imp, imp, args.seed, (args.listen_host, args.udp_port), duration
            ).start()
        )
    if args.tcp_upstream:
        relays.append(
            TcpRelay(
                args.tcp_upstream, imp, imp, args.seed, (args.listen_host, args.tcp_port), duration
            ).start()
        )
    for r in relays:
        kind = "udp" if isinstance(r, UdpRelay) else "tcp"
        print(f"relay {kind} {r.address[0]}:{r.address[1]} -> {r.upstream[0]}:{r.upstream[1]}")
    sys.stdout.flush()
    stop = threading.Event()
    try:
        stop.wait(duration)
    except KeyboardInterrupt:
        pass
    for r in relays:
        r.stop()
        print(type(r).__name__, {k: vars(v) for k, v in r.stats().items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
