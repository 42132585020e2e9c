"""Client file transfers: each upload or download on its own data connection and thread.

``upload(client, path)`` offers the file on the control connection, then streams it
on a new connection; ``download(client, file_id, folder)`` streams into
``<name>.<file_id>.part``, resumes from that file's size after a cut, checks the
SHA-256 and only then renames it to a name that overwrites nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import config
import names
import security
import utils
from file_store import ThreadedHasher
from utils import Err, LocalErr, Msg

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
DoneCallback = Callable[["Transfer"], None]

_numbers = itertools.count(1)
# Taken by download threads at their start and end; guards _active_parts, the partial
# files being written now (two downloads of one file into one folder would share one).
_active_parts_lock = threading.Lock()
_active_parts: set[Path] = set()
# Characters Windows forbids in file names (a ":" would even make an alternate stream).
_WINDOWS_BAD = re.compile(r'[<>:"|?*]')
_WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", re.IGNORECASE)


class TransferError(utils.FusionError):
    """A transfer failed: ``code`` (an ``Err`` or ``LocalErr`` code) and a sentence for people."""


def safe_local_name(name: str) -> str:
    """A peer's file name made safe to create in a local folder on any OS."""
    cleaned = names.clean_file_name(name) or "download"
    cleaned = _WINDOWS_BAD.sub("_", cleaned)
    if _WINDOWS_RESERVED.fullmatch(cleaned):
        cleaned = "_" + cleaned
    return cleaned


def partial_path(dest_folder: Path, name: str, file_id: str) -> Path:
    """Where a download of ``file_id`` collects its bytes until verified."""
    return Path(dest_folder) / f"{safe_local_name(name)}.{safe_local_name(file_id)}.part"


def _candidates(dest_folder: Path, name: str) -> Iterator[Path]:
    base = Path(safe_local_name(name))
    stem, suffix = base.stem, base.suffix
    for n in range(config.FILE_UNIQUE_NAME_TRIES):
        yield Path(dest_folder) / (base.name if n == 0 else f"{stem} ({n}){suffix}")


def _no_free_name(dest_folder: Path, name: str) -> TransferError:
    return TransferError(
        LocalErr.EXISTS, f"Could not find a free name for {name} in {dest_folder}."
    )


def unique_destination(dest_folder: Path, name: str) -> Path:
    """Reserve (create empty) a path for ``name`` that no existing file has.

    "Report.pdf" becomes "Report (1).pdf", "Report (2).pdf", ... if taken.
    """
    for candidate in _candidates(dest_folder, name):
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise _no_free_name(dest_folder, name)


def move_to_unique_name(src: Path, dest_folder: Path, name: str) -> Path:
    """Give ``src`` the first free name for ``name`` in ``dest_folder``; never overwrites.

    A hard link is atomic and fails if the name is taken; where links are not
    supported (FAT, some network shares) an empty file reserves the name first.
    Renaming onto a reserved file would also make ext4 flush the whole file at
    once (auto_da_alloc), which is why the link comes first.
    """
    for candidate in _candidates(dest_folder, name):
        try:
            os.link(src, candidate)
        except FileExistsError:
            continue
        except OSError:
            break  # no hard links here: reserve a name, then replace it
        src.unlink()
        return candidate
    else:
        raise _no_free_name(dest_folder, name)
    final = unique_destination(dest_folder, name)
    os.replace(src, final)
    return final


class Transfer:
    """One upload or download running on its own named thread; poll or wait for it.

    ``bytes_done``/``total`` give progress, ``done`` says it ended, then ``error``
    is None on success or a sentence for the user (``error_code`` the machine code).
    """

    def __init__(
        self,
        kind: str,
        name: str,
        on_progress: ProgressCallback | None,
        on_done: DoneCallback | None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.file_id: str | None = None
        self.path: Path | None = None
        self.total = 0
        self.bytes_done = 0
        self.start_offset = 0
        self.sha256: str | None = None
        self.error: str | None = None
        self.error_code: str | None = None
        self._on_progress = on_progress
        self._on_done = on_done
        self._last_progress = 0.0
        self._cancel = threading.Event()
        self._finished = threading.Event()
        # Taken by the transfer thread and by whoever calls cancel(); guards _sock.
        self._sock_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(
            target=self._run_guarded, name=f"{kind}-{next(_numbers)}", daemon=True
        )

    # --- public -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def ok(self) -> bool:
        return self._finished.is_set() and self.error is None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop the transfer soon; an upload is discarded by the server, a download's
        partial file is removed."""
        self._cancel.set()
        with self._sock_lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def wait(self, timeout: float | None = None) -> bool:
        """Join the transfer thread; True if it has finished."""
        self._thread.join(timeout)
        return self.done

    def __repr__(self) -> str:
        state = "running" if not self.done else ("ok" if self.ok else f"failed: {self.error}")
        return f"<Transfer {self.kind} {self.name!r} {self.bytes_done}/{self.total} {state}>"

    # --- shared machinery ---------------------------------------------------------

    def _start(self) -> Transfer:
        self._thread.start()
        return self

    def _run(self) -> None:
        raise NotImplementedError

    def _run_guarded(self) -> None:
        try:
            self._run()
        except TransferError as exc:
            self._fail(exc.code, exc.message)
        except Exception as exc:  # a bug must still end the transfer visibly
            log.exception("%s %r failed unexpectedly", self.kind, self.name)
            self._fail(LocalErr.INTERNAL, f"The {self.kind} failed unexpectedly: {exc}")
        finally:
            self._close_sock()
            if self.error is None and self.cancelled:
                self._fail(LocalErr.CANCELLED, f"The {self.kind} of {self.name} was cancelled.")
            self._progress(force=True)
            self._finished.set()
            if self._on_done is not None:
                try:
                    self._on_done(self)
                except Exception:
                    log.exception("on_done callback of %r failed", self)

    def _fail(self, code: str, message: str) -> None:
        if self.error is None:
            if self.cancelled:
                code, message = LocalErr.CANCELLED, f"The {self.kind} of {self.name} was cancelled."
            self.error_code, self.error = code, message
            log.info("%s %r: %s (%s)", self.kind, self.name, message, code)

    def _progress(self, force: bool = False) -> None:
        if self._on_progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < config.FILE_PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        try:
            self._on_progress(self.bytes_done, self.total)
        except Exception:
            log.exception("on_progress callback of %r failed", self)

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise TransferError(
                LocalErr.CANCELLED, f"The {self.kind} of {self.name} was cancelled."
            )

    def _connect(self, client: Any, first: dict[str, Any]) -> socket.socket:
        """Open a TLS data connection to the client's server and send its first frame.

        The server must present the certificate the control connection was checked
        against (``client.server_fingerprint``), or nothing is sent.
        """
        self._close_sock()  # the previous attempt's connection, when resuming
        self._check_cancel()
        timeout = getattr(getattr(client, "config", None), "connect_timeout_s", None)
        timeout = timeout or config.CONNECT_TIMEOUT_S
        expected = getattr(client, "server_fingerprint", None)
        if not expected:
            raise TransferError(LocalErr.NOT_CONNECTED, "Not connected to a server.")
        try:
            raw = socket.create_connection((client.host, client.tcp_port), timeout=timeout)
        except OSError as exc:
            raise TransferError(
                LocalErr.UNREACHABLE, f"Could not connect to the server for the {self.kind}: {exc}"
            ) from None
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock: Any = security.client_handshake(
                raw,
                _tls_context(),
                security.server_address(client.host, client.tcp_port),
                None,
                timeout,
                expected_fingerprint=expected,
            )
        except security.HandshakeError as exc:  # TrustError included: nothing was sent
            raise TransferError(
                LocalErr.UNREACHABLE, f"No secure connection for the {self.kind}: {exc.message}"
            ) from None
        with self._sock_lock:
            self._sock = sock
        if self._cancel.is_set():  # cancel() may have run before _sock was set
            self._check_cancel()
        sock.settimeout(config.FILE_IDLE_TIMEOUT_S)
        try:
            sock.sendall(utils.encode_frame(first))
        except OSError as exc:
            raise self._lost(exc) from None
        return sock

    def _close_sock(self) -> None:
        with self._sock_lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _read_frame(self, sock: socket.socket) -> utils.Frame:
        """The server's answer, checked against ``utils.SERVER_FIELDS``."""
        try:
            frame = utils.FrameReader(sock).read()
            utils.validate_server_message(frame.header)
            return frame
        except utils.ProtocolError as exc:
            raise TransferError(
                Err.BAD_MESSAGE, f"The server sent something unexpected: {exc}"
            ) from None
        except (OSError, utils.ConnectionClosed) as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: BaseException) -> TransferError:
        self._check_cancel()
        if isinstance(exc, TimeoutError):
            return TransferError(
                Err.TIMEOUT,
                f"The server stopped answering during the {self.kind} of {self.name}.",
            )
        return TransferError(
            LocalErr.CONNECTION_LOST,
            f"The connection broke during the {self.kind} of {self.name}: {exc}",
        )

    @staticmethod
    def _server_error(frame: utils.Frame) -> TransferError:
        """The TransferError of a validated ``error`` frame."""
        return TransferError(frame.header["code"], frame.header.get("message"))


class _Upload(Transfer):
    def __init__(self, client: Any, path: Path, verify: bool, on_progress, on_done) -> None:
        super().__init__("upload", path.name, on_progress, on_done)
        self.client = client
        self.path = path
        self.verify = verify

    def _run(self) -> None:
        path = self.path
        assert path is not None
        try:
            f = open(path, "rb")  # closed by the with below
        except OSError as exc:
            raise TransferError(
                LocalErr.LOCAL_ERROR, f"Cannot read {path}: {exc.strerror}."
            ) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if not path.is_file():
                raise TransferError(LocalErr.LOCAL_ERROR, f"{path} is not a regular file.")
            self.total = size
            local_sha = self._hash_local(f, size) if self.verify else None
            self._check_cancel()
            try:
                self.file_id = self.client.offer_file(path.name, size)
            except Exception as exc:  # client.RequestError, NotConnected, OSError
                coded = isinstance(exc, utils.FusionError) and not isinstance(exc, ConnectionError)
                code = exc.code if coded else LocalErr.OFFER_FAILED
                message = getattr(exc, "message", None) or str(exc)
                raise TransferError(code, message) from None
            try:
                frame = self._send_resuming(f, size)
            except TransferError:
                if self._cancel.is_set() and hasattr(self.client, "delete_file"):
                    # The server keeps a cut upload's bytes to resume; a cancelled one goes.
                    with contextlib.suppress(Exception):
                        self.client.delete_file(self.file_id)
                raise
        if frame.type == Msg.ERROR:
            raise self._server_error(frame)
        if frame.type != Msg.UPLOAD_DONE or frame.header["file_id"] != self.file_id:
            raise TransferError(
                Err.BAD_MESSAGE, f"The server answered the upload with {frame.header!r}."
            )
        sha = frame.header["sha256"]
        if local_sha is not None and sha.lower() != local_sha:
            raise TransferError(
                LocalErr.CHECKSUM_MISMATCH,
                f"The server received different bytes than {path.name} holds; try again.",
            )
        self.sha256 = sha.lower()
        log.info("uploaded %r as %s (%d bytes)", path.name, self.file_id, size)

    def _send_resuming(self, f: Any, size: int) -> utils.Frame:
        """Send the body; after a cut, reconnect and send from the server's offset.

        Each data connection asks ``resume``: the server answers ``upload_ready``
        with the bytes it already holds, and only the rest is sent. Returns the
        server's final answer (``upload_done`` or ``error``).
        """
        attempts = 0
        while True:
            try:
                sock = self._connect(
                    self.client,
                    {
                        "type": Msg.UPLOAD,
                        "file_id": self.file_id,
                        "token": self.client.token,
                        "resume": True,
                    },
                )
                ready = self._read_frame(sock)
                if ready.type == Msg.ERROR:
                    raise self._server_error(ready)
                offset = ready.header.get("offset", 0)
                if ready.type != Msg.UPLOAD_READY or not 0 <= offset <= size:
                    raise TransferError(
                        Err.BAD_MESSAGE, f"The server answered the upload with {ready.header!r}."
                    )
                self.start_offset = self.bytes_done = offset
                self._send_body(sock, f, size)
                return self._read_frame(sock)
            except TransferError as exc:
                attempts += 1
                cut = exc.code in (LocalErr.CONNECTION_LOST, Err.TIMEOUT)
                if not cut or attempts > config.FILE_UPLOAD_RETRIES:
                    raise
                log.info("upload %s cut (%s); resuming", self.file_id, exc.message)
                self._close_sock()
                self._cancel.wait(config.FILE_RETRY_DELAY_S * attempts)
                self._check_cancel()

    def _hash_local(self, f: Any, size: int) -> str:
        with ThreadedHasher(f"{threading.current_thread().name}-hash") as hasher:
            done = 0
            while done < size:
                self._check_cancel()
                buf = hasher.acquire()
                n = f.readinto(memoryview(buf)[: min(len(buf), size - done)])
                if not n:
                    break
                hasher.submit(buf, n)
                done += n
            f.seek(0)
            return hasher.hexdigest()

    def _send_body(self, sock: socket.socket, f: Any, size: int) -> None:
        """Send exactly ``size`` bytes of ``f`` with zero-copy sendfile, a block at a time;
        stop early if the server has already answered (an error, e.g. its disk is full)."""
        block = config.FILE_SENDFILE_BLOCK_BYTES
        with selectors.DefaultSelector() as answered:  # poll/epoll: no FD_SETSIZE limit
            answered.register(sock, selectors.EVENT_READ)
            self._send_blocks(sock, f, size, block, answered)

    def _send_blocks(
        self, sock: socket.socket, f: Any, size: int, block: int, answered: Any
    ) -> None:
        while self.bytes_done < size:
            self._check_cancel()
            if answered.select(0):
                self._early_answer(sock)
            count = min(block, size - self.bytes_done)
            try:
                sent = sock.sendfile(f, self.bytes_done, count)
            except OSError as exc:
                self._early_answer(sock)  # an error frame may be waiting behind the reset
                raise self._lost(exc) from None
            if sent < count:
                raise TransferError(
                    LocalErr.LOCAL_ERROR, f"{self.name} became shorter while it was being uploaded."
                )
            self.bytes_done += sent
            self._progress()

    def _early_answer(self, sock: socket.socket) -> None:
        try:
            frame = utils.FrameReader(sock).read()
            utils.validate_server_message(frame.header)
        except (OSError, ValueError, utils.ConnectionClosed):
            return
        if frame.type == Msg.ERROR:
            raise self._server_error(frame)
        raise TransferError(
            Err.BAD_MESSAGE, f"The server answered {frame.type!r} before the upload ended."
        )


class _Download(Transfer):
    def __init__(self, client: Any, file_id: str, dest_folder: Path, on_progress, on_done) -> None:
        info = (getattr(client, "files", None) or {}).get(file_id) or {}
        name = info.get("name") if isinstance(info.get("name"), str) else file_id
        super().__init__("download", safe_local_name(name), on_progress, on_done)
        self.client = client
        self.file_id = file_id
        self.dest_folder = Path(dest_folder)
        size = info.get("size")
        self.total = size if isinstance(size, int) and size >= 0 else 0
        self.part = partial_path(self.dest_folder, self.name, file_id)

    def _run(self) -> None:
        if not self.dest_folder.is_dir():
            raise TransferError(
                LocalErr.LOCAL_ERROR, f"The folder {self.dest_folder} does not exist."
            )
        key = self.part.resolve()
        with _active_parts_lock:
            if key in _active_parts:
                raise TransferError(
                    LocalErr.BUSY, f"{self.name} is already being downloaded to {self.dest_folder}."
                )
            _active_parts.add(key)
        try:
            self._run_claimed()
        finally:
            with _active_parts_lock:
                _active_parts.discard(key)

    def _run_claimed(self) -> None:
        try:
            self._download_verified()
        except BaseException as exc:
            # Keep a partial file only for a later resume after a broken connection.
            if self.cancelled or not (
                isinstance(exc, TransferError)
                and exc.code in (LocalErr.CONNECTION_LOST, Err.TIMEOUT)
            ):
                _unlink(self.part)
            raise
        self.path = self._finalize()
        log.info("downloaded %s to %s (%d bytes)", self.file_id, self.path, self.total)

    def _download_verified(self) -> None:
        restarted = False
        attempts = 0
        while True:
            try:
                self._fetch()
            except TransferError as exc:
                if exc.code == Err.BAD_OFFSET and self._asked_offset and not restarted:
                    restarted = True  # the partial file is not from this file: start over
                    _unlink(self.part)
                    continue
                if exc.code in (LocalErr.CONNECTION_LOST, Err.TIMEOUT):
                    attempts += 1
                    if attempts <= config.FILE_DOWNLOAD_RETRIES:
                        log.info("download %s cut (%s); resuming", self.file_id, exc.message)
                        self._cancel.wait(config.FILE_RETRY_DELAY_S * attempts)
                        self._check_cancel()
                        continue
                raise
            if self.sha256 == self._expected_sha:
                return
            if self.start_offset and not restarted:
                restarted = True  # a stale partial file: fetch every byte again
                log.info("download %s: checksum wrong after resume; restarting", self.file_id)
                _unlink(self.part)
                continue
            raise TransferError(
                LocalErr.CHECKSUM_MISMATCH,
                f"{self.name} arrived damaged (SHA-256 mismatch); nothing was kept.",
            )

    def _fetch(self) -> None:
        """One data connection: resume at the partial file's size, append to the end."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        self._asked_offset = offset
        sock = self._connect(
            self.client,
            {
                "type": Msg.DOWNLOAD,
                "file_id": self.file_id,
                "token": self.client.token,
                "offset": offset,
            },
        )
        frame = self._read_frame(sock)
        if frame.type == Msg.ERROR:
            raise self._server_error(frame)
        h = frame.header
        if (
            frame.type != Msg.DOWNLOAD_START
            or h["file_id"] != self.file_id
            or not 0 <= offset <= h["size"]
            or h.get("offset") != offset
        ):
            raise TransferError(Err.BAD_MESSAGE, f"The server answered the download with {h!r}.")
        size = h["size"]
        self.total, self._expected_sha, self.start_offset = size, h["sha256"].lower(), offset
        digest = hashlib.sha256()
        with open(self.part, "ab" if offset else "wb", buffering=0) as out:
            if offset:
                with open(self.part, "rb") as done_part:
                    for block in iter(lambda: done_part.read(config.FILE_CHUNK_BYTES), b""):
                        digest.update(block)
            self.bytes_done = offset
            self._progress(force=True)
            with ThreadedHasher(f"{threading.current_thread().name}-hash", digest) as hasher:
                while self.bytes_done < size:
                    self._check_cancel()
                    buf = hasher.acquire()
                    try:
                        k = sock.recv_into(buf, min(len(buf), size - self.bytes_done))
                    except OSError as exc:
                        raise self._lost(exc) from None
                    if k == 0:
                        raise self._lost(
                            utils.ConnectionClosed(f"after {self.bytes_done} of {size} bytes")
                        )
                    hasher.submit(buf, k)
                    try:
                        _write_all(out, memoryview(buf)[:k])
                    except OSError as exc:
                        raise TransferError(
                            LocalErr.LOCAL_ERROR, f"Cannot write {self.part}: {exc.strerror}."
                        ) from None
                    self.bytes_done += k
                    self._progress()
                self.sha256 = hasher.hexdigest()
        self._close_sock()

    _expected_sha = ""
    _asked_offset = 0

    def _finalize(self) -> Path:
        """Move the verified partial file to a name that overwrites nothing."""
        try:
            final = move_to_unique_name(self.part, self.dest_folder, self.name)
        except OSError as exc:
            _unlink(self.part)
            raise TransferError(
                LocalErr.LOCAL_ERROR,
                f"Cannot save {self.name} in {self.dest_folder}: {exc.strerror}.",
            ) from None
        return final


_tls_lock = threading.Lock()  # guards _tls: made once, by the first transfer
_tls: Any = None


def _tls_context() -> Any:
    """The client TLS context of every data connection (made on first use)."""
    global _tls
    with _tls_lock:
        if _tls is None:
            _tls = security.client_context()
        return _tls


def _write_all(out: Any, data: memoryview) -> None:
    while data:
        n = out.write(data)
        data = data[n:]


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def upload(
    client: Any,
    path: str | os.PathLike[str],
    on_progress: ProgressCallback | None = None,
    on_done: DoneCallback | None = None,
    verify: bool = False,
) -> Transfer:
    """Share ``path`` with the session; returns at once with the running Transfer.

    ``client`` needs ``offer_file(name, size)``, ``token``, ``host`` and ``tcp_port``.
    The bytes go out with zero-copy sendfile; ``Transfer.sha256`` is the server's
    SHA-256 of what it stored. ``verify=True`` also hashes the file here first and
    fails the upload if the two differ. Callbacks run on the transfer thread.
    """
    return _Upload(client, Path(path), verify, on_progress, on_done)._start()


def download(
    client: Any,
    file_id: str,
    dest_folder: str | os.PathLike[str],
    on_progress: ProgressCallback | None = None,
    on_done: DoneCallback | None = None,
) -> Transfer:
    """Fetch a shared file into ``dest_folder``; returns at once with the running Transfer.

    ``client`` needs ``token``, ``host``, ``tcp_port`` and ``files`` (for the name).
    When done and ok, ``Transfer.path`` is the saved file. Callbacks run on the
    transfer thread.
    """
    return _Download(client, file_id, Path(dest_folder), on_progress, on_done)._start()
