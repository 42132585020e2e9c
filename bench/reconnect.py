"""Time from the network's return (or a server's restart) to audio flowing again (issue 13).

Two scenarios, each run ``--runs`` times (median reported):

- ``cut``: ``server.py`` in its own process; Alice reaches it through
  ``bench/netrelay.py`` (TCP and UDP relays on 127.0.0.2) which goes dark in
  both directions for ``--cut-s`` seconds (30 by default); Bob talks (a tone
  every 20 ms) directly. Measured: from the end of the blackout to the first
  mixed audio frame Alice receives afterwards.
- ``restart``: ``server.py`` is stopped (SIGTERM: server_shutdown to both
  clients, state saved) and started again on the same ports and storage after
  ``--down-s`` seconds (2). Measured: from the new server's ``ready:`` line to
  Alice's first audio frame (both clients rejoin by themselves).
- ``crash``: as ``restart``, but ``server.py`` is killed with SIGKILL (no
  server_shutdown, no save at stop): the state it kept on disk while running
  is what the new server restores (the session is on disk before the kill).

Usage: ``.venv/bin/python bench/reconnect.py [--runs 3] [--cut-s 30] [--down-s 2]
[--scenario cut,restart,crash] [--json FILE]`` (on Linux, 127.0.0.2 is loopback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import start_server, stop_server  # noqa: E402
from netrelay import Impairment, TcpRelay, UdpRelay  # noqa: E402

from client import ConferenceClient  # noqa: E402
from tests.helpers import Talker, identity_fingerprint  # noqa: E402

RELAY_HOST = "127.0.0.2"
CUT_START_S = 3.0  # time to join before the blackout starts
WAIT_BACK_S = 120.0  # a run that takes longer than this after the return failed


class AudioClock:
    """When the client under test received each audio frame (monotonic)."""

    def __init__(self, client: ConferenceClient) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()
        client.on("audio", lambda *_: self._add())

    def _add(self) -> None:
        with self.lock:
            self.times.append(time.monotonic())

    def first_after(self, t: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                later = [x for x in self.times if x >= t]
            if later:
                return later[0]
            time.sleep(0.01)
        return None


def run_cut(cut_s: float, storage: Path) -> float:
    proc, tcp_port, udp_port = start_server(storage)
    imp = Impairment(blackouts=[(CUT_START_S, cut_s)])
    bound = CUT_START_S + cut_s + WAIT_BACK_S
    udp = UdpRelay(("127.0.0.1", udp_port), imp, imp, 1, (RELAY_HOST, udp_port), bound).start()
    tcp = TcpRelay(("127.0.0.1", tcp_port), imp, imp, 1, (RELAY_HOST, 0), bound).start()
    back_at = tcp.t0 + CUT_START_S + cut_s
    alice = ConferenceClient(
        RELAY_HOST, tcp.address[1], expected_fingerprint=identity_fingerprint()
    )
    bob = ConferenceClient("127.0.0.1", tcp_port, expected_fingerprint=identity_fingerprint())
    talker = None
    try:
        alice.connect("Alice", "Bench", audio=True, video=False)
        bob.connect("Bob", "Bench", audio=True, video=False)
        clock = AudioClock(alice)
        talker = Talker(bob, "bench-talker")
        if clock.first_after(0.0, CUT_START_S) is None:
            raise SystemExit("no audio before the cut")
        while time.monotonic() < back_at:
            time.sleep(0.05)
        got = clock.first_after(back_at, WAIT_BACK_S)
        if got is None or alice.reconnects < 1:
            raise SystemExit(f"audio did not come back (reconnects={alice.reconnects})")
        return got - back_at
    finally:
        if talker:
            talker.close()
        alice.leave()
        bob.leave()
        tcp.stop()
        udp.stop()
        stop_server(proc)


def _saved(storage: Path, session: str, timeout: float) -> bool:
    """True once the running server's saved state names ``session`` (bounded wait)."""
    import persistence

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if f'"{session}"' in persistence.state_path(storage).read_text(encoding="utf-8"):
                return True
        time.sleep(0.05)
    return False


def run_restart(down_s: float, storage: Path, kill: bool = False) -> float:
    proc, tcp_port, udp_port = start_server(storage)
    alice = ConferenceClient("127.0.0.1", tcp_port, expected_fingerprint=identity_fingerprint())
    bob = ConferenceClient("127.0.0.1", tcp_port, expected_fingerprint=identity_fingerprint())
    talker = None
    try:
        alice.connect("Alice", "Bench", audio=True, video=False)
        bob.connect("Bob", "Bench", audio=True, video=False)
        clock = AudioClock(alice)
        talker = Talker(bob, "bench-talker")
        if clock.first_after(0.0, 5.0) is None:
            raise SystemExit("no audio before the restart")
        if kill:
            if not _saved(storage, "Bench", 10.0):
                raise SystemExit("the running server did not save its state")
            proc.kill()  # SIGKILL: nothing is saved at the end
            proc.wait(10.0)
        else:
            stop_server(proc)
        time.sleep(down_s)  # the server is down this long (the scenario, not a wait)
        proc, _, _ = start_server(storage, tcp_port, udp_port)
        ready = time.monotonic()
        got = clock.first_after(ready, WAIT_BACK_S)
        if got is None:
            raise SystemExit("audio did not come back after the restart")
        return got - ready
    finally:
        if talker:
            talker.close()
        alice.leave()
        bob.leave()
        stop_server(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cut-s", type=float, default=30.0)
    p.add_argument("--down-s", type=float, default=2.0)
    p.add_argument("--scenario", default="cut,restart,crash")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results: dict[str, list[float]] = {}
    for scenario in args.scenario.split(","):
        times = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="fm-reconnect-") as tmp:
                if scenario == "cut":
                    t = run_cut(args.cut_s, Path(tmp))
                elif scenario in ("restart", "crash"):
                    t = run_restart(args.down_s, Path(tmp), kill=scenario == "crash")
                else:
                    raise SystemExit(f"unknown scenario {scenario!r}")
            times.append(t)
            print(f"{scenario} run {i + 1}: audio back {t * 1000:.0f} ms after", flush=True)
        results[scenario] = times
        med = statistics.median(times)
        print(f"{scenario}: median {med * 1000:.0f} ms over {len(times)} runs", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
