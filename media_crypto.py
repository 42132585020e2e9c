"""Sealed media datagrams: AES-256-GCM sealing and opening of UDP media with a replay window.

Protocol 2's docs/PROTOCOL.md section 9: per-participant media keys
(``new_media_key``), the nonce layout (``media_nonce``), the RFC 6479 replay
window (``ReplayWindow``) and ``MediaCipher``. Every refusal of a datagram is a
``DatagramRejected`` with a ``security.SecErr`` code.

Locks: ``MediaCipher``'s two locks are leaves (nothing else is taken while
holding one).
"""

from __future__ import annotations

import secrets
import struct
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import config
from security import SecErr, SecurityError


class DatagramRejected(SecurityError, ValueError):
    """A sealed datagram that is truncated, forged, replayed or otherwise unusable."""


SEALED_VERSION = 2
# kind u8, ver u8 (2), sender u16, seq u32, time_ms u32: protocol 1's header, version 2.
MEDIA_HEADER_BYTES = 12
COUNTER = struct.Struct("!Q")
NONCE = struct.Struct("!BxHQ")  # direction, zero, sender, counter: 12 bytes
AAD_BYTES = MEDIA_HEADER_BYTES + COUNTER.size
TAG_BYTES = 16
SEAL_OVERHEAD_BYTES = COUNTER.size + TAG_BYTES
MIN_SEALED_BYTES = AAD_BYTES + TAG_BYTES
MEDIA_KEY_BYTES = 32
# The welcome's media.cipher: the only AEAD of protocol 2.
CIPHER_NAME = "aes-256-gcm"
MAX_COUNTER = (1 << 64) - 1
KIND_REGISTER = ord("h")

CLIENT_TO_SERVER = 1
SERVER_TO_CLIENT = 2
CLIENT_SIDE = "client"
SERVER_SIDE = "server"


def new_media_key() -> bytes:
    """A fresh 256-bit media key: one per participant and join, sent in ``welcome``."""
    return secrets.token_bytes(MEDIA_KEY_BYTES)


def media_nonce(direction: int, sender: int, counter: int) -> bytes:
    """The AEAD nonce: direction u8, 0x00, sender u16, counter u64 (12 bytes)."""
    return NONCE.pack(direction, sender, counter)


class ReplayWindow:
    """Which packet counters were accepted: the highest, and a bitmap of the ones behind it.

    RFC 6479's sliding window, held as one integer: bit ``i`` set means counter
    ``highest - i`` was accepted. Counters more than ``size - 1`` behind the
    highest are too old. Not thread-safe; ``MediaCipher`` locks around it.
    """

    def __init__(self, size: int = config.REPLAY_WINDOW_PACKETS) -> None:
        if size < 1:
            raise ValueError("replay window size must be >= 1")
        self.size = size
        self._mask = (1 << size) - 1
        self.highest = -1
        self._bits = 0

    def check(self, counter: int) -> None:
        """Raise ``DatagramRejected`` (replayed, too_old) if ``counter`` may not be accepted."""
        if counter > self.highest:
            return
        behind = self.highest - counter
        if behind >= self.size:
            raise DatagramRejected(
                SecErr.TOO_OLD, f"counter {counter} is {behind} behind the highest seen"
            )
        if self._bits >> behind & 1:
            raise DatagramRejected(SecErr.REPLAYED, f"counter {counter} was already accepted")

    def accept(self, counter: int) -> None:
        """Check, then mark ``counter`` as seen."""
        self.check(counter)
        if counter > self.highest:
            self._bits = (self._bits << (counter - self.highest) | 1) & self._mask
            self.highest = counter
        else:
            self._bits |= 1 << (self.highest - counter)


class MediaCipher:
    """Seals and opens one participant's UDP datagrams with AES-256-GCM.

    ``side`` says which end this is: a client seals client-to-server datagrams
    and opens server-to-client ones; the server, holding one cipher per
    participant, the reverse. Each direction has its own 64-bit counter, so a
    nonce is never used twice under a key, and a datagram can never be reflected
    back to its sender.
    """

    def __init__(self, key: bytes, side: str, window: int = config.REPLAY_WINDOW_PACKETS) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != MEDIA_KEY_BYTES:
            raise SecurityError(SecErr.BAD_KEY, f"a media key is {MEDIA_KEY_BYTES} bytes")
        if side not in (CLIENT_SIDE, SERVER_SIDE):
            raise ValueError(f"side must be {CLIENT_SIDE!r} or {SERVER_SIDE!r}")
        self._aead = AESGCM(bytes(key))
        self.side = side
        self.send_direction = CLIENT_TO_SERVER if side == CLIENT_SIDE else SERVER_TO_CLIENT
        self.recv_direction = SERVER_TO_CLIENT if side == CLIENT_SIDE else CLIENT_TO_SERVER
        # Taken by every sending thread (capture, video, heartbeat, mixer); guards
        # _next_counter. A leaf lock.
        self._send_lock = threading.Lock()
        self._next_counter = 0
        # Taken by the receiving thread(s); guards _window. A leaf lock.
        self._recv_lock = threading.Lock()
        self._window = ReplayWindow(window)

    @property
    def next_counter(self) -> int:
        return self._next_counter

    def seal(self, header: bytes, payload: bytes) -> bytes:
        """One sealed datagram: ``header`` (12 bytes, version 2) in clear but
        authenticated, the next counter, the encrypted payload and the tag."""
        if len(header) != MEDIA_HEADER_BYTES or header[1] != SEALED_VERSION:
            raise SecurityError(
                SecErr.BAD_HEADER,
                f"a sealed datagram's header is {MEDIA_HEADER_BYTES} bytes with version "
                f"{SEALED_VERSION}",
            )
        with self._send_lock:
            counter = self._next_counter
            if counter > MAX_COUNTER:
                raise SecurityError(
                    SecErr.COUNTER_EXHAUSTED, "2**64 datagrams sealed with this key: rejoin"
                )
            self._next_counter = counter + 1
        aad = bytes(header) + COUNTER.pack(counter)
        sender = int.from_bytes(header[2:4], "big")
        nonce = NONCE.pack(self.send_direction, sender, counter)
        return aad + self._aead.encrypt(nonce, bytes(payload), aad)

    def open(self, datagram: bytes) -> tuple[bytes, bytes]:
        """The (12-byte header, payload) of an authentic, fresh datagram.

        Raises ``DatagramRejected`` for anything else: truncated, too large, wrong
        version, forged or wrongly keyed (bad_tag), replayed, or too old.
        """
        header, payload, _ = self.open_with_counter(datagram)
        return header, payload

    def open_with_counter(
        self, datagram: bytes, newest_only: bool = False
    ) -> tuple[bytes, bytes, int]:
        """As ``open``, also returning the counter.

        ``newest_only`` additionally requires the counter to be above every one
        accepted before (``stale_registration`` otherwise).
        """
        n = len(datagram)
        if n < MIN_SEALED_BYTES:
            raise DatagramRejected(
                SecErr.TRUNCATED, f"sealed datagram of {n} bytes < {MIN_SEALED_BYTES}"
            )
        if n > config.UDP_MAX_DATAGRAM_BYTES:
            raise DatagramRejected(SecErr.TOO_LARGE, f"datagram of {n} bytes")
        data = bytes(datagram)
        if data[1] != SEALED_VERSION:
            raise DatagramRejected(
                SecErr.BAD_VERSION, f"datagram version {data[1]} is not {SEALED_VERSION}"
            )
        (counter,) = COUNTER.unpack_from(data, MEDIA_HEADER_BYTES)
        with self._recv_lock:  # cheap refusal of repeats before any decryption
            self._check_fresh(counter, newest_only)
        sender = int.from_bytes(data[2:4], "big")
        nonce = NONCE.pack(self.recv_direction, sender, counter)
        aad = data[:AAD_BYTES]
        try:
            payload = self._aead.decrypt(nonce, data[AAD_BYTES:], aad)
        except InvalidTag:
            raise DatagramRejected(
                SecErr.BAD_TAG, "authentication failed (forged, damaged or another key)"
            ) from None
        with self._recv_lock:  # again: another thread may have taken it meanwhile
            self._check_fresh(counter, newest_only)
            self._window.accept(counter)
        return data[:MEDIA_HEADER_BYTES], payload, counter

    def _check_fresh(self, counter: int, newest_only: bool) -> None:
        if newest_only and counter <= self._window.highest:
            raise DatagramRejected(
                SecErr.STALE_REGISTRATION,
                f"registration counter {counter} is not above {self._window.highest}",
            )
        self._window.check(counter)

    def open_registration(self, datagram: bytes) -> tuple[bytes, bytes]:
        """Open an ``h`` datagram that may move the participant's UDP address.

        Beyond ``open``: the kind must be ``h`` and the counter above every counter
        accepted before from this participant, so a recorded registration replayed
        from another address never moves the binding.
        """
        if len(datagram) >= 1 and datagram[0] != KIND_REGISTER:
            raise DatagramRejected(SecErr.NOT_REGISTER, f"kind {datagram[0]} is not 'h'")
        header, payload, _ = self.open_with_counter(datagram, newest_only=True)
        return header, payload
