"""The server's shared-file storage: offers, streamed uploads, zero-copy downloads.

Files live in one folder under server-made ids (never the offered name). An
upload is written to ``<id>.part`` as it arrives, hashed on the way, and renamed
to ``<id>.data`` only when every byte is there; anything else (short, aborted,
stalled, disk error) removes the part file and announces nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import queue
import re
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import config
import limits
import names
import utils
from utils import Err, Msg

log = logging.getLogger(__name__)

# Names this module creates in the storage folder; only these are ever deleted
# by the start-up clean-up (the folder may be shared with other things by mistake).
_ID_HEX_CHARS = 16
_OWN_FILE = re.compile(rf"f[0-9a-f]{{{_ID_HEX_CHARS}}}\.(data|part)")


class ThreadedHasher:
    """SHA-256 on its own named thread, so hashing overlaps the socket and disk work.

    The caller fills a buffer from ``acquire()``, hands it over with ``submit(buf, n)``
    (it may keep reading the buffer, e.g. to write it, until it acquires the next one)
    and finally asks ``hexdigest()``. Only ``buffers`` chunks exist, so at most that
    many wait for the hasher: a slow hasher slows the transfer, memory stays bounded.
    """

    def __init__(
        self,
        name: str,
        digest: Any = None,
        buffers: int = config.FILE_HASH_BUFFERS,
        chunk_bytes: int = config.FILE_CHUNK_BYTES,
    ) -> None:
        self._digest = digest if digest is not None else hashlib.sha256()
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(chunk_bytes))
        # Holds at most ``buffers`` items: each one carries a buffer taken from _free.
        self._work: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def acquire(self) -> bytearray:
        """A free buffer (waits while every buffer is still being hashed)."""
        return self._free.get()

    def submit(self, buf: bytearray, n: int) -> None:
        """Hash the first ``n`` bytes of ``buf`` (then the buffer is free again)."""
        self._work.put((buf, n))

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            buf, n = item
            self._digest.update(memoryview(buf)[:n])
            self._free.put(buf)

    def hexdigest(self) -> str:
        """Wait until everything submitted is hashed; the SHA-256 in hex."""
        self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        """Stop and join the hashing thread (idempotent)."""
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()

    def __enter__(self) -> ThreadedHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileStoreError(utils.FusionError):
    """A refused or failed file operation: ``code`` is a ``utils.Err`` code.

    ``extra``: more fields for the error frame (e.g. ``scope`` and ``limit``).
    """

    def __init__(self, code: str, message: str | None = None, **extra: Any) -> None:
        super().__init__(code, message)
        self.extra = extra


@dataclass
class _Session:
    """The files of one live session (a new object when a session name is reused)."""

    name: str
    closed: bool = False
    offers: dict[str, _Offer] = field(default_factory=dict)
    files: dict[str, _Stored] = field(default_factory=dict)
    uploading: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)  # uploading, then deleted by the owner
    # Data connections of this session now transferring; shut down by drop_session.
    socks: set[socket.socket] = field(default_factory=set)


@dataclass
class _Offer:
    file_id: str
    session: _Session
    owner_id: int
    owner_name: str
    name: str
    size: int
    expires: float
    received: int = 0  # bytes of a cut resumable upload kept in <file_id>.part


@dataclass
class _Stored:
    file_id: str
    session: _Session
    owner_id: int
    owner_name: str
    name: str
    size: int
    sha256: str
    timestamp: float
    path: Path
    readers: int = 0
    deleted: bool = False
    keep: bool = False  # a server-made file (a recording): never unlinked by the store

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.file_id,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "owner": self.owner_id,
            "username": self.owner_name,
            "timestamp": self.timestamp,
        }


class FileStore:
    """Thread-safe store of every session's shared files, in one folder on disk."""

    def __init__(
        self,
        root: Path,
        max_file_bytes: int = config.MAX_FILE_BYTES,
        idle_timeout_s: float = config.FILE_IDLE_TIMEOUT_S,
        offer_ttl_s: float = config.FILE_OFFER_START_TIMEOUT_S,
        max_files_per_session: int = config.MAX_FILES_PER_SESSION,
        disk_reserve_bytes: int = config.FILE_DISK_RESERVE_BYTES,
        ledger: limits.ReservationLedger | None = None,
        keep_ids: frozenset[str] = frozenset(),
    ) -> None:
        """``keep_ids``: complete files a restart restores (``restore``); not cleaned up."""
        self.root = Path(root)
        self.max_file_bytes = max_file_bytes
        self.idle_timeout_s = idle_timeout_s
        self.offer_ttl_s = offer_ttl_s
        self.max_files_per_session = max_files_per_session
        self.disk_reserve_bytes = disk_reserve_bytes
        # Offers and uploads not yet stored, and the bytes they reserve (fair limits per
        # participant, session and address); guarded by self._lock.
        self.ledger = ledger or limits.ReservationLedger(
            start_timeout_s=offer_ttl_s, stall_timeout_s=idle_timeout_s
        )
        # Taken by the server's control readers (offer, list_files, delete, drop_session),
        # the file-<n> data threads (at the start and end of a transfer, never during I/O)
        # and the stopping thread (close). Guards _sessions, _by_id, _closed and every
        # _Session/_Offer/_Stored reachable from them.
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._by_id: dict[str, _Offer | _Stored] = {}
        self._closed = False
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_leftovers(keep_ids)

    # --- control-connection side ----------------------------------------------

    def offer(
        self,
        session: str,
        owner_id: int,
        owner_name: str,
        name: str,
        size: int,
        address: str = "",
    ) -> str:
        """Register an upload offer; returns the server-made file id.

        The offer reserves ``size`` bytes for its owner, session and ``address``
        (the owner's IP) until it is stored, fails, stalls or expires
        (``too_many_offers`` / ``quota_exceeded`` over a cap).
        """
        shown = names.clean_file_name(name) if isinstance(name, str) else None
        if shown is None:
            raise FileStoreError(Err.BAD_NAME, f"The file name {name!r} cannot be used.")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FileStoreError(Err.BAD_MESSAGE, "The file size must be a whole number >= 0.")
        if size > self.max_file_bytes:
            raise FileStoreError(
                Err.FILE_TOO_LARGE,
                f"{shown} is {human_size(size)}; this server accepts files up to "
                f"{human_size(self.max_file_bytes)}.",
            )
        with self._lock:
            self._check_open()
            self._expire_offers(time.monotonic())
            sess = self._sessions.get(session)
            if sess is None:
                sess = self._sessions[session] = _Session(session)
            count = len(sess.offers) + len(sess.files) + len(sess.uploading)
            if count >= self.max_files_per_session:
                raise FileStoreError(
                    Err.STORAGE_ERROR,
                    f"This session already has {count} files; delete some first.",
                )
            self._check_space(size)
            file_id = self._new_id()
            refused = self.ledger.reserve(
                file_id,
                participant=(session, owner_id),
                session=session,
                address=address,
                size=size,
                now=time.monotonic(),
            )
            if refused is not None:
                raise FileStoreError(refused.code, refused.message, **refused.extra)
            sess.offers[file_id] = self._by_id[file_id] = _Offer(
                file_id,
                sess,
                owner_id,
                owner_name,
                shown,
                size,
                time.monotonic() + self.offer_ttl_s,
            )
        log.info("offer %s: %r (%d bytes) by %d in %r", file_id, shown, size, owner_id, session)
        return file_id

    def add_local(
        self, session: str, path: Path, name: str, owner_id: int, owner_name: str
    ) -> dict[str, Any]:
        """Share a file the server made (a recording) in ``session``; returns the file dict.

        The file is hashed where it is (no copy) and kept on disk when the session ends.
        Call without the session lock: hashing reads the whole file.
        """
        shown = names.clean_file_name(name)
        if shown is None:
            raise FileStoreError(Err.BAD_NAME, f"The file name {name!r} cannot be used.")
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            size = path.stat().st_size
        except OSError as exc:
            raise FileStoreError(Err.STORAGE_ERROR, f"{shown}: {exc.strerror}.") from None
        with self._lock:
            self._check_open()
            sess = self._sessions.get(session)
            if sess is None:
                sess = self._sessions[session] = _Session(session)
            file_id = self._new_id()
            stored = _Stored(
                file_id, sess, owner_id, owner_name, shown, size,
                digest.hexdigest(), time.time(), path, keep=True,
            )  # fmt: skip
            sess.files[file_id] = self._by_id[file_id] = stored
        log.info("shared server file %s: %r, %d bytes in %r", file_id, shown, size, session)
        return stored.as_dict()

    def list_files(self, session: str) -> list[dict[str, Any]]:
        """The session's complete files, oldest first, as in ``welcome.files``."""
        with self._lock:
            sess = self._sessions.get(session)
            files = list(sess.files.values()) if sess else []
        return [f.as_dict() for f in sorted(files, key=lambda f: f.timestamp)]

    def delete(self, file_id: str, session: str, requester_id: int) -> bool:
        """Delete a complete file, or cancel an offer or upload; only its owner may.

        True when a complete file was deleted (the session must be told).
        """
        with self._lock:
            sess = self._sessions.get(session)
            pending = sess.offers.get(file_id) if sess else None
            if sess is not None and pending is not None and pending.owner_id == requester_id:
                del sess.offers[file_id]  # a cancelled upload: its kept bytes go too
                self._by_id.pop(file_id, None)
                self.ledger.release(file_id)
                _unlink(self.root / f"{file_id}.part")
                return False
            if sess is not None and file_id in sess.uploading:
                sess.cancelled.add(file_id)  # the upload's thread discards it when it ends
                return False
            stored = sess.files.get(file_id) if sess else None
            if stored is None:
                raise FileStoreError(Err.NO_SUCH_FILE, f"No file {file_id!r} in this session.")
            if stored.owner_id != requester_id:
                raise FileStoreError(Err.NOT_OWNER)
            del sess.files[file_id]
            self._by_id.pop(file_id, None)
            self._forget_file(stored)
        log.info("deleted %s (%r) by %d", file_id, stored.name, requester_id)
        return True

    def drop_session(self, session: str) -> None:
        """Delete every file of a session that ended; abort its transfers."""
        with self._lock:
            sess = self._sessions.pop(session, None)
            if sess is None:
                return
            self._drop_session_files(sess)
        log.info("dropped the files of session %r", session)

    def drop_offers(self, session: str, owner_id: int) -> None:
        """Forget the offers a participant made and never started (it left)."""
        with self._lock:
            sess = self._sessions.get(session)
            if sess is None:
                return
            for o in [o for o in sess.offers.values() if o.owner_id == owner_id]:
                del sess.offers[o.file_id]
                self._by_id.pop(o.file_id, None)
                self.ledger.release(o.file_id)
                if o.received:
                    _unlink(self.root / f"{o.file_id}.part")

    def close(self, keep: bool = False) -> None:
        """Abort every transfer; delete every file, or with ``keep`` the complete ones stay.

        ``keep`` is for a restart (persistence.py names the kept files).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sessions = list(self._sessions.values())
            self._sessions.clear()
            kept: set[str] = set()
            for sess in sessions:
                if keep:
                    kept |= set(sess.files)
                    sess.files.clear()
                self._drop_session_files(sess)
        self._clean_leftovers(frozenset(kept))

    def restore(self, session: str, files: list[dict[str, Any]]) -> int:
        """Add a restarted server's files of ``session`` whose bytes match their SHA-256.

        A missing, resized or altered file is deleted and left out (logged). Returns
        how many were restored. Runs at start, before any connection is served.
        """
        restored = 0
        for f in files:
            file_id = f.get("id")
            if not isinstance(file_id, str) or not re.fullmatch(
                rf"f[0-9a-f]{{{_ID_HEX_CHARS}}}", file_id
            ):
                log.warning("saved file entry %r has no valid id: skipped", f)
                continue
            path = self.root / f"{file_id}.data"
            try:
                ok = path.stat().st_size == f["size"] and _sha256_of(path) == f["sha256"]
                stored = _Stored(
                    file_id, None, int(f["owner"]), str(f["username"]), str(f["name"]),
                    int(f["size"]), str(f["sha256"]), float(f["timestamp"]), path,
                )  # fmt: skip
            except (OSError, KeyError, TypeError, ValueError) as exc:
                log.warning("saved file %s cannot be restored: %s", file_id, exc)
                _unlink(path)
                continue
            if not ok:
                log.warning("saved file %s (%r) changed on disk: deleted", file_id, f.get("name"))
                _unlink(path)
                continue
            with self._lock:
                sess = self._sessions.get(session)
                if sess is None:
                    sess = self._sessions[session] = _Session(session)
                stored.session = sess
                sess.files[file_id] = self._by_id[file_id] = stored
            restored += 1
        if restored:
            log.info("restored %d files of session %r", restored, session)
        return restored

    # --- data-connection side ---------------------------------------------------

    def receive_upload(
        self, sock: socket.socket, file_id: str, owner_id: int, resume: bool = False
    ) -> dict[str, Any]:
        """Read exactly the offered size from ``sock`` into storage; returns the file dict.

        With ``resume``, first answer ``upload_ready`` with ``offset``: the bytes
        the server already holds from an earlier, cut connection; the client sends
        the rest. A resumable upload that breaks off (short, stalled, reset) keeps
        its bytes and goes back to waiting for ``offer_ttl_s`` (then it expires).
        Raises ``FileStoreError`` (nothing to announce) when the offer is unknown
        or someone else's, or the upload is short, stalls or cannot be written.
        """
        with self._lock:
            self._check_open()
            self._expire_offers(time.monotonic())
            offer = self._by_id.get(file_id)
            if not isinstance(offer, _Offer):
                raise FileStoreError(
                    Err.NO_SUCH_FILE, f"No upload {file_id!r} is waiting (unknown or expired)."
                )
            if offer.owner_id != owner_id:
                raise FileStoreError(
                    Err.NOT_OWNER, "Only the participant who offered this file can upload it."
                )
            sess = offer.session
            del sess.offers[file_id]
            del self._by_id[file_id]
            self.ledger.started(file_id, time.monotonic())
            sess.uploading.add(file_id)
            sess.socks.add(sock)
        part = self.root / f"{file_id}.part"
        final = self.root / f"{file_id}.data"
        offset = offer.received if resume else 0
        keep = False
        try:
            if resume:
                ready = {"type": Msg.UPLOAD_READY, "file_id": file_id, "offset": offset}
                try:
                    sock.sendall(utils.encode_frame(ready))
                except OSError as exc:
                    keep = True
                    raise FileStoreError(Err.BAD_MESSAGE, f"The upload broke off: {exc}") from None
            try:
                digest = self._receive_into(sock, part, offer.size, offset)
            except FileStoreError as exc:
                keep = resume and exc.code in (Err.BAD_MESSAGE, Err.TIMEOUT)
                raise
            with self._lock:
                sess.socks.discard(sock)
                sess.uploading.discard(file_id)
                if sess.closed or self._closed:
                    raise FileStoreError(Err.NO_SUCH_FILE, "The session ended during the upload.")
                try:
                    os.replace(part, final)
                except OSError as exc:
                    raise FileStoreError(
                        Err.STORAGE_ERROR, f"The server could not store the file: {exc.strerror}."
                    ) from None
                stored = _Stored(
                    file_id,
                    sess,
                    offer.owner_id,
                    offer.owner_name,
                    offer.name,
                    offer.size,
                    digest,
                    time.time(),
                    final,
                )
                sess.files[file_id] = self._by_id[file_id] = stored
        except BaseException:
            with self._lock:
                sess.socks.discard(sock)
                sess.uploading.discard(file_id)
                cancelled = file_id in sess.cancelled
                sess.cancelled.discard(file_id)
                if keep and not (cancelled or sess.closed or self._closed) and part.exists():
                    # Resumable: back to waiting, with the bytes held so far.
                    offer.received = part.stat().st_size
                    offer.expires = time.monotonic() + self.offer_ttl_s
                    sess.offers[file_id] = self._by_id[file_id] = offer
                    log.info("upload %s cut at %d bytes; kept to resume", file_id, offer.received)
                    raise
                self.ledger.release(file_id)
            _unlink(part)
            raise
        with self._lock:
            self.ledger.release(file_id)  # stored: no longer promised
        log.info("stored %s: %r, %d bytes, sha256 %s", file_id, offer.name, offer.size, digest)
        return stored.as_dict()

    def send_download(self, sock: socket.socket, file_id: str, session: str, offset: int) -> None:
        """Send ``download_start`` then the file's bytes from ``offset`` with sendfile.

        Raises ``FileStoreError`` before anything is sent (no_such_file,
        bad_offset, storage_error). A peer that goes away mid-stream is logged,
        not raised: there is no one left to tell.
        """
        with self._lock:
            self._check_open()
            sess = self._sessions.get(session)
            stored = sess.files.get(file_id) if sess else None
            if stored is None:
                raise FileStoreError(Err.NO_SUCH_FILE, f"No file {file_id!r} in this session.")
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise FileStoreError(Err.BAD_OFFSET, "The offset must be a whole number.")
            if not 0 <= offset <= stored.size:
                raise FileStoreError(
                    Err.BAD_OFFSET, f"Offset {offset} is outside the file (0..{stored.size})."
                )
            try:
                f = open(stored.path, "rb")  # closed in the finally below
            except OSError as exc:
                raise FileStoreError(
                    Err.STORAGE_ERROR, f"The server could not read the file: {exc.strerror}."
                ) from None
            stored.readers += 1
            sess.socks.add(sock)
        count = stored.size - offset
        try:
            sock.settimeout(self.idle_timeout_s)
            start = {
                "type": Msg.DOWNLOAD_START,
                "file_id": file_id,
                "size": stored.size,
                "sha256": stored.sha256,
                "offset": offset,
            }
            sock.sendall(utils.encode_frame(start))
            if count:
                sent = sock.sendfile(f, offset, count)
                if sent != count:
                    log.warning("download %s: sent %d of %d bytes", file_id, sent, count)
        except OSError as exc:
            log.info("download %s ended early: %s", file_id, exc)
        finally:
            f.close()
            with self._lock:
                sess.socks.discard(sock)
                stored.readers -= 1
                if stored.deleted and stored.readers == 0:
                    _unlink(stored.path)

    # --- internals --------------------------------------------------------------

    def _receive_into(self, sock: socket.socket, part: Path, size: int, offset: int = 0) -> str:
        """Stream ``size`` bytes from ``sock`` into ``part``; returns the SHA-256.

        ``offset`` > 0: ``part`` already holds that many bytes (a resumed upload);
        they are hashed first and the rest is appended. Otherwise ``part`` is new.
        """
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(part, flags if offset else flags | os.O_EXCL)
            if offset:
                os.ftruncate(fd, offset)
                os.lseek(fd, offset, os.SEEK_SET)
        except OSError as exc:
            raise FileStoreError(
                Err.STORAGE_ERROR, f"The server could not create the file: {exc.strerror}."
            ) from None
        got = flushed = offset
        hasher = ThreadedHasher(f"{threading.current_thread().name}-hash")
        try:
            if offset:
                self._hash_existing(part, offset, hasher)
            sock.settimeout(self.idle_timeout_s)
            while got < size:
                buf = hasher.acquire()
                try:
                    k = sock.recv_into(buf, min(len(buf), size - got))
                except TimeoutError:
                    raise FileStoreError(
                        Err.TIMEOUT,
                        f"The upload stalled for {self.idle_timeout_s:g} s after {got} of "
                        f"{size} bytes; nothing was kept.",
                    ) from None
                except OSError as exc:
                    raise FileStoreError(
                        Err.BAD_MESSAGE,
                        f"The upload broke off after {got} of {size} bytes ({exc}); "
                        "nothing was kept.",
                    ) from None
                if k == 0:
                    raise FileStoreError(
                        Err.BAD_MESSAGE,
                        f"The upload ended after {got} of {size} bytes; nothing was kept.",
                    )
                hasher.submit(buf, k)
                try:
                    self._write_chunk(fd, memoryview(buf)[:k])
                except OSError as exc:
                    log.error("writing %s failed: %s", part, exc)
                    raise FileStoreError(
                        Err.STORAGE_ERROR,
                        f"The server could not store the file ({exc.strerror or exc}); "
                        "nothing was kept.",
                    ) from None
                got += k
                if got - flushed >= config.FILE_WRITEBACK_BYTES:
                    start_writeback(fd, flushed, got - flushed)
                    flushed = got
            os.fsync(fd)  # on disk before anyone is told the file exists
        finally:
            hasher.close()
            try:
                os.close(fd)
            except OSError as exc:  # a delayed write error surfaces here
                if got == size:
                    raise FileStoreError(
                        Err.STORAGE_ERROR, f"The server could not store the file: {exc.strerror}."
                    ) from None
        return hasher.hexdigest()

    @staticmethod
    def _hash_existing(part: Path, nbytes: int, hasher: ThreadedHasher) -> None:
        """Feed the first ``nbytes`` of ``part`` (kept from a cut upload) to ``hasher``."""
        with open(part, "rb") as f:
            done = 0
            while done < nbytes:
                buf = hasher.acquire()
                n = f.readinto(memoryview(buf)[: min(len(buf), nbytes - done)])
                if not n:
                    raise FileStoreError(Err.STORAGE_ERROR, "The kept part of the upload is short.")
                hasher.submit(buf, n)
                done += n

    def _write_chunk(self, fd: int, data: memoryview) -> None:
        """Write all of ``data`` to ``fd`` (tests replace this to simulate a full disk)."""
        while data:
            n = os.write(fd, data)
            data = data[n:]

    def _check_open(self) -> None:
        if self._closed:
            raise FileStoreError(Err.SERVER_SHUTDOWN)

    def _check_space(self, size: int) -> None:
        """Refuse an offer the disk cannot hold next to the uploads already promised."""
        promised = self.ledger.total_bytes  # offers and uploads in progress
        try:
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise FileStoreError(
                Err.STORAGE_ERROR, f"The server cannot use its storage folder: {exc.strerror}."
            ) from None
        if free - promised - self.disk_reserve_bytes < size:
            full = limits.server_full(limits.FullReason.DISK)
            raise FileStoreError(full.code, full.message, **full.extra)

    def _new_id(self) -> str:
        while True:
            file_id = "f" + secrets.token_hex(_ID_HEX_CHARS // 2)
            if file_id not in self._by_id:
                return file_id

    def _expire_offers(self, now: float) -> None:
        expired = [o for o in self._by_id.values() if isinstance(o, _Offer) and o.expires < now]
        for o in expired:
            del self._by_id[o.file_id]
            o.session.offers.pop(o.file_id, None)
            self.ledger.release(o.file_id)
            if o.received:
                _unlink(self.root / f"{o.file_id}.part")
            log.info("offer %s (%r) expired unused", o.file_id, o.name)

    def _drop_session_files(self, sess: _Session) -> None:
        """Forget a session's offers and files; caller holds ``self._lock`` (the store's).

        (A ``_locked`` suffix is kept for the server's session lock; see server.py.)
        """
        sess.closed = True
        for file_id in list(sess.offers) + list(sess.files):
            self._by_id.pop(file_id, None)
        for file_id, o in sess.offers.items():
            self.ledger.release(file_id)
            if o.received:
                _unlink(self.root / f"{file_id}.part")
        for stored in sess.files.values():
            self._forget_file(stored)
        sess.offers.clear()
        sess.files.clear()
        for sock in sess.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _forget_file(self, stored: _Stored) -> None:
        """Remove a file now, or when its last download ends (needed on Windows).

        Caller holds ``self._lock`` (the store's).
        """
        stored.deleted = True
        if stored.readers == 0 and not stored.keep:
            _unlink(stored.path)

    def _clean_leftovers(self, keep_ids: frozenset[str] = frozenset()) -> None:
        """Delete the files of a crashed or stopped run (only names this module makes)."""
        try:
            entries = list(self.root.iterdir())
        except OSError as exc:
            log.warning("cannot list storage folder %s: %s", self.root, exc)
            return
        removed = 0
        for entry in entries:
            if entry.name.endswith(".data") and entry.name[: -len(".data")] in keep_ids:
                continue
            if _OWN_FILE.fullmatch(entry.name) and entry.is_file():
                removed += _unlink(entry)
        if removed:
            log.info("removed %d leftover files from %s", removed, self.root)


def human_size(n: int) -> str:
    """A byte count for people: "812 bytes", "3.4 MB", "500 MB" (powers of 1024)."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            return f"{value:.1f} {unit}".replace(".0 ", " ")
    raise AssertionError("unreachable")


def _find_sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux; ``os`` has no binding for it), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError, TypeError):  # not Linux, or no such libc function
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _find_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the dirty pages, do not wait


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` at ``offset`` of ``fd`` to disk, without waiting.

    A hint, as PostgreSQL's ``*_flush_after`` settings use it: the disk works while
    the rest of an upload arrives, so the fsync at the end (which still decides
    durability) only waits for what is left. Does nothing where it is missing.
    """
    if _sync_file_range is not None and nbytes > 0:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # errors: fsync reports


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(config.FILE_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot delete %s: %s", path, exc)
        return False
