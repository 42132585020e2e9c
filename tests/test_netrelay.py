"""The network impairment relay on loopback: loss, bursts, delay, reordering, blackouts."""

from __future__ import annotations

import random
import socket
import sys
import threading
import time

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import netrelay
from netrelay import Impairment, TcpRelay, UdpRelay

RECV_TIMEOUT_S = 5.0


class Sink:
    """A UDP 'server' on loopback recording (arrival time, payload) of every datagram."""

    def __init__(self, echo: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()
        self.got: list[tuple[float, bytes]] = []
        self.echo = echo
        self.count_changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.count_changed:
                self.got.append((time.monotonic(), data))
                self.count_changed.notify_all()
            if self.echo:
                self.sock.sendto(data, addr)

    def wait_count(self, n: int, timeout: float = RECV_TIMEOUT_S) -> int:
        with self.count_changed:
            self.count_changed.wait_for(lambda: len(self.got) >= n, timeout)
            return len(self.got)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


def client_sock() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def settle(relay: UdpRelay, sent: int) -> None:
    """Wait until the relay has decided the fate of every datagram sent and sent the rest."""
    deadline = time.monotonic() + RECV_TIMEOUT_S
    st = relay.up_stats
    while time.monotonic() < deadline:
        done = st.sent + st.lost + st.blacked_out + st.overflow
        if st.received >= sent and done >= st.received:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"relay did not settle: {st}")


def no_relay_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("netrelay")]


def test_clean_relay_passes_everything_both_ways():
    echo = Sink(echo=True)
    try:
        with UdpRelay(echo.address, seed=1) as relay:
            c = client_sock()
            c.settimeout(RECV_TIMEOUT_S)
            for i in range(50):
                c.sendto(b"ping %d" % i, relay.address)
                data, addr = c.recvfrom(100)
                assert data == b"ping %d" % i and addr[:2] == relay.address
            c.close()
        assert relay.up_stats.sent == relay.down_stats.sent == 50
    finally:
        echo.close()
    assert no_relay_threads()


def test_random_loss_rate_within_tolerance(sink):
    n = 2000
    with UdpRelay(sink.address, up=Impairment(loss=0.1), seed=7) as relay:
        c = client_sock()
        for i in range(n):
            c.sendto(i.to_bytes(4, "big"), relay.address)
            if i % 100 == 99:  # stay within the sockets' receive buffers
                settle(relay, i + 1)
        settle(relay, n)
        got = sink.wait_count(n - relay.up_stats.lost)
        c.close()
    assert got == n - relay.up_stats.lost
    assert 0.08 * n <= relay.up_stats.lost <= 0.12 * n


def test_same_seed_same_losses():
    def losses(seed: int) -> list[bool]:
        model = netrelay.LossModel(Impairment(loss=0.05, burst_frames=3), random.Random(seed))
        return [model.lost() for _ in range(5000)]

    assert losses(3) == losses(3)
    assert losses(3) != losses(4)


def test_gilbert_elliott_bursts_have_the_asked_rate_and_length():
    model = netrelay.LossModel(Impairment(loss=0.1, burst_frames=4), random.Random(1))
    seq = [model.lost() for _ in range(200_000)]
    rate = sum(seq) / len(seq)
    bursts, run = [], 0
    for lost in seq:
        if lost:
            run += 1
        elif run:
            bursts.append(run)
            run = 0
    assert 0.09 <= rate <= 0.11
    assert 3.6 <= sum(bursts) / len(bursts) <= 4.4


def test_delay_is_applied(sink):
    with UdpRelay(sink.address, up=Impairment(delay_ms=50), seed=1) as relay:
        c = client_sock()
        sent = []
        for i in range(10):
            sent.append(time.monotonic())
            c.sendto(bytes([i]), relay.address)
        assert sink.wait_count(10) == 10
        c.close()
    delays = [(t - sent[data[0]]) * 1000 for t, data in sink.got]
    assert min(delays) >= 49.5
    assert sorted(delays)[5] < 50 + 40  # generous: a shared machine


def test_jitter_reorders(sink):
    n = 200
    imp = Impairment(delay_ms=30, jitter_ms=20)
    with UdpRelay(sink.address, up=imp, seed=2) as relay:
        c = client_sock()
        pace = threading.Event()
        for i in range(n):
            c.sendto(i.to_bytes(2, "big"), relay.address)
            pace.wait(0.002)  # pacing the sender (2 ms apart), not a synchronisation
        assert sink.wait_count(n) == n
        c.close()
    order = [int.from_bytes(d, "big") for _, d in sink.got]
    assert sorted(order) == list(range(n))
    assert order != list(range(n))
    assert relay.up_stats.reordered > 0


def test_no_reorder_keeps_order_under_jitter(sink):
    n = 100
    imp = Impairment(delay_ms=30, jitter_ms=20, reorder=False)
    with UdpRelay(sink.address, up=imp, seed=2) as relay:
        c = client_sock()
        for i in range(n):
            c.sendto(i.to_bytes(2, "big"), relay.address)
        assert sink.wait_count(n) == n
        c.close()
    assert [int.from_bytes(d, "big") for _, d in sink.got] == list(range(n))
    assert relay.up_stats.reordered == 0


def test_blackout_drops_everything_in_its_window(sink):
    imp = Impairment(blackouts=[(0.2, 0.3)])
    with UdpRelay(sink.address, up=imp, seed=1) as relay:
        c = client_sock()
        pace = threading.Event()
        sent_at: dict[int, float] = {}
        i = 0
        while time.monotonic() - relay.t0 < 0.8:
            sent_at[i] = time.monotonic() - relay.t0
            c.sendto(i.to_bytes(4, "big"), relay.address)
            i += 1
            pace.wait(0.005)
        settle(relay, i)
        c.close()
    arrived = {int.from_bytes(d, "big") for _, d in sink.got}
    margin = 0.02  # the relay stamps a datagram a moment after it was sent
    inside = [k for k, t in sent_at.items() if 0.2 + margin <= t < 0.5 - margin]
    outside = [k for k, t in sent_at.items() if t < 0.2 - margin or t >= 0.5 + margin]
    assert inside and not arrived.intersection(inside)
    assert set(outside) <= arrived
    assert relay.up_stats.blacked_out >= len(inside)


def test_queue_bound_drops_new_datagrams(sink):
    with UdpRelay(sink.address, up=Impairment(delay_ms=500), seed=1, max_queue_packets=10) as relay:
        c = client_sock()
        for i in range(30):
            c.sendto(bytes([i]), relay.address)
        settle(relay, 30)
        c.close()
    assert relay.up_stats.overflow == 20


def test_relay_stops_by_itself():
    s = Sink()
    try:
        relay = UdpRelay(s.address, max_duration_s=0.2).start()
        deadline = time.monotonic() + RECV_TIMEOUT_S
        while relay.running and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        assert not relay.running
        relay.stop()
    finally:
        s.close()
    assert no_relay_threads()


def tcp_echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(RECV_TIMEOUT_S)

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    t = threading.Thread(target=serve, name="test-tcp-echo", daemon=True)
    t.start()
    return srv, t


def test_tcp_relay_delays_and_keeps_bytes_in_order():
    srv, t = tcp_echo_server()
    imp = Impairment(delay_ms=30, jitter_ms=10)
    try:
        with TcpRelay(srv.getsockname(), up=imp, down=imp, seed=1) as relay:
            c = socket.create_connection(relay.address, RECV_TIMEOUT_S)
            payload = random.Random(1).randbytes(1 << 20)
            t0 = time.monotonic()
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            rtt_ms = (time.monotonic() - t0) * 1000
            sender = threading.Thread(target=c.sendall, args=(payload,), name="test-send")
            sender.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = c.recv(65536)
                assert chunk
                got += chunk
            sender.join(RECV_TIMEOUT_S)
            c.close()
        assert bytes(got) == payload
        assert rtt_ms >= 2 * (30 - 10) - 1
    finally:
        srv.close()
        t.join(RECV_TIMEOUT_S)
    assert no_relay_threads()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": 1.0},
        {"loss": -0.1},
        {"delay_ms": -1},
        {"jitter_ms": -1},
        {"burst_frames": 0.5},
        {"blackouts": [(1.0, 0.0)]},
    ],
)
def test_bad_impairments(kwargs):
    with pytest.raises(ValueError):
        Impairment(**kwargs)


def test_command_line_runs_for_its_duration(sink, capsys):
    code = netrelay.main(
        ["--udp-upstream", f"127.0.0.1:{sink.address[1]}", "--duration", "0.2", "--loss", "0.1"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "relay udp 127.0.0.1:" in out and "UdpRelay" in out
    assert no_relay_threads()
