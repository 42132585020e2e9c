"""media_crypto.py: golden sealed datagrams, replay window, registration, properties."""

from __future__ import annotations

import os
import random
import struct
import threading
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

import config
import media_crypto
from media_crypto import (
    CLIENT_SIDE,
    SERVER_SIDE,
    DatagramRejected,
    MediaCipher,
    ReplayWindow,
)
from security import SecErr, SecurityError

HEADER = struct.Struct("!BBHII")  # the 12-byte media header, as utils.MEDIA_HEADER
KEY = bytes(range(32))
# Every network wait in this file is bounded by this (seconds).
NET_TIMEOUT_S = 5.0


def header(kind: str = "a", sender: int = 7, seq: int = 1, time_ms: int = 1000) -> bytes:
    return HEADER.pack(ord(kind), media_crypto.SEALED_VERSION, sender, seq, time_ms)


def pair(key: bytes = KEY) -> tuple[MediaCipher, MediaCipher]:
    return MediaCipher(key, CLIENT_SIDE), MediaCipher(key, SERVER_SIDE)


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
    assert media_crypto.media_nonce(1, 7, 5) == bytes.fromhex("010000070000000000000005")
    assert media_crypto.media_nonce(2, 0x1234, 2**64 - 1) == b"\x02\x00\x12\x34" + b"\xff" * 8


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
    client, server = pair(media_crypto.new_media_key())
    for size in (0, 1, 882, 5000, config.MAX_DATAGRAM_BYTES - 12):
        payload = os.urandom(size)
        dg = client.seal(header(seq=size), payload)
        assert len(dg) == 12 + media_crypto.SEAL_OVERHEAD_BYTES + size
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
    for n in range(media_crypto.MIN_SEALED_BYTES):
        with pytest.raises(DatagramRejected) as e:
            server.open(dg[:n])
        assert e.value.code == SecErr.TRUNCATED
    for n in range(media_crypto.MIN_SEALED_BYTES, len(dg)):
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
    c._next_counter = media_crypto.MAX_COUNTER
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
@given(st.binary(min_size=media_crypto.MIN_SEALED_BYTES, max_size=300), st.sampled_from(b"havlk"))
def test_plausible_random_datagrams_only_raise_datagram_rejected(data, kind):
    _, server = pair()
    data = bytes([kind, media_crypto.SEALED_VERSION]) + data[2:]
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
    client, server = pair(media_crypto.new_media_key())
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
                + rng.randbytes(882 + media_crypto.TAG_BYTES)
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
