"""File sharing: FileStore on socket pairs, then real transfers through a real server."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import file_sharing_module as fsm
import utils
from file_store import FileStore, FileStoreError
from utils import Err, Msg

WAIT_S = 20.0
MB = 1024 * 1024


# --- helpers ------------------------------------------------------------------------


def make_file(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes (made now, never committed); return the SHA-256."""
    base = random.Random(seed).randbytes(MB)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        done = 0
        while done < size:
            # every MiB differs (its number up front), so a misplaced block changes the hash
            chunk = ((done // MB).to_bytes(8, "big") + base[8:])[: size - done]
            f.write(chunk)
            digest.update(chunk)
            done += len(chunk)
    return digest.hexdigest()


def sha_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()


def wait_for(cond: Callable[[], object], timeout: float = WAIT_S) -> None:
    """Poll ``cond`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {cond}")
        time.sleep(0.01)


def stored_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=target, name="test-store-call", daemon=True)
    t.start()
    return t, out


def recv_exact_or_eof(sock: socket.socket, n: int) -> bytes:
    """Read ``n`` bytes, or fewer if the peer closes first."""
    chunks, got = [], 0
    while got < n:
        data = sock.recv(min(MB, n - got))
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


# --- FileStore on socket pairs ---------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    st = FileStore(tmp_path / "store", max_file_bytes=10 * MB, idle_timeout_s=5.0)
    yield st
    st.close()


def upload_pair(st: FileStore, file_id: str, data: bytes, owner: int = 1, close: bool = True):
    """Feed ``data`` to receive_upload over a socket pair; returns (result, error)."""
    a, b = socket.socketpair()
    with a, b:
        t, out = run_in_thread(lambda: st.receive_upload(b, file_id, owner))

        def send() -> None:
            a.sendall(data)
            if close:
                a.shutdown(socket.SHUT_WR)

        sender, _ = run_in_thread(send)
        t.join(WAIT_S)
        assert not t.is_alive()
        b.close()  # as the server does after an answer: unblocks a refused sender
        sender.join(WAIT_S)
    return out.get("result"), out.get("error")


def download_pair(st: FileStore, file_id: str, session: str, offset: int):
    """Run send_download over a socket pair; returns (start header, body, error)."""
    a, b = socket.socketpair()
    with a, b:
        t, out = run_in_thread(lambda: st.send_download(b, file_id, session, offset))
        a.settimeout(WAIT_S)
        start, body = None, b""
        try:
            start = utils.FrameReader(a).read().header
            body = recv_exact_or_eof(a, start["size"] - start["offset"])
        except utils.ConnectionClosed:
            pass
        t.join(WAIT_S)
    return start, body, out.get("error")


def test_store_round_trip_and_resume(store: FileStore) -> None:
    data = os.urandom(3 * MB + 17)
    fid = store.offer("Room", 1, "Alice", "Report.pdf", len(data))
    info, err = upload_pair(store, fid, data)
    assert err is None
    assert info == {
        "id": fid,
        "name": "Report.pdf",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "owner": 1,
        "username": "Alice",
        "timestamp": info["timestamp"],
    }
    assert store.list_files("Room") == [info]
    assert store.list_files("Other") == []
    assert stored_names(store.root) == [f"{fid}.data"]
    for offset in (0, 1000, len(data)):
        start, body, err = download_pair(store, fid, "Room", offset)
        assert err is None
        assert start == {
            "type": Msg.DOWNLOAD_START,
            "file_id": fid,
            "size": len(data),
            "sha256": info["sha256"],
            "offset": offset,
        }
        assert body == data[offset:]


@pytest.mark.parametrize(
    ("offset", "session", "code"),
    [(-1, "Room", Err.BAD_OFFSET), (11, "Room", Err.BAD_OFFSET), (0, "Other", Err.NO_SUCH_FILE)],
)
def test_store_download_refusals(store: FileStore, offset: int, session: str, code: str) -> None:
    fid = store.offer("Room", 1, "Alice", "a.txt", 10)
    assert upload_pair(store, fid, b"0123456789")[1] is None
    a, b = socket.socketpair()
    with a, b, pytest.raises(FileStoreError) as info:
        store.send_download(b, fid, session, offset)
    assert info.value.code == code


@pytest.mark.parametrize("sent", [0, 1, 999])
def test_store_short_upload_leaves_nothing(store: FileStore, sent: int) -> None:
    fid = store.offer("Room", 1, "Alice", "a.bin", 1000)
    info, err = upload_pair(store, fid, b"x" * sent)
    assert isinstance(err, FileStoreError) and info is None
    assert f"after {sent} of 1000" in err.message
    assert stored_names(store.root) == []
    assert store.list_files("Room") == []
    # the offer was used up: a second attempt is refused
    assert upload_pair(store, fid, b"x" * 1000)[1].code == Err.NO_SUCH_FILE


def test_store_stalled_upload_times_out(tmp_path: Path) -> None:
    st = FileStore(tmp_path / "s", max_file_bytes=MB, idle_timeout_s=0.3)
    fid = st.offer("Room", 1, "Alice", "a.bin", 1000)
    info, err = upload_pair(st, fid, b"x" * 10, close=False)
    assert isinstance(err, FileStoreError) and err.code == Err.TIMEOUT
    assert stored_names(st.root) == []
    st.close()


def test_store_disk_error_leaves_nothing(store: FileStore, monkeypatch) -> None:
    def full(self, fd: int, data: memoryview) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fid = store.offer("Room", 1, "Alice", "a.bin", MB)
    monkeypatch.setattr(FileStore, "_write_chunk", full)
    info, err = upload_pair(store, fid, b"x" * MB)
    assert err.code == Err.STORAGE_ERROR and "No space left" in err.message
    assert stored_names(store.root) == [] and store.list_files("Room") == []


def test_store_offer_checks(store: FileStore) -> None:
    with pytest.raises(FileStoreError) as info:
        store.offer("Room", 1, "Alice", "big.iso", 10 * MB + 1)
    assert info.value.code == Err.FILE_TOO_LARGE
    for bad in ("", "..", "/", "\x00\x01", " . "):
        with pytest.raises(FileStoreError) as info:
            store.offer("Room", 1, "Alice", bad, 1)
        assert info.value.code == Err.BAD_NAME
    with pytest.raises(FileStoreError) as info:
        store.offer("Room", 1, "Alice", "a", -1)
    assert info.value.code == Err.BAD_MESSAGE


def test_store_path_name_stays_inside(store: FileStore) -> None:
    fid = store.offer("Room", 1, "Alice", "../../etc/passwd", 4)
    info, err = upload_pair(store, fid, b"root")
    assert err is None
    assert "/" not in info["name"] and ".." not in info["name"]
    assert "passwd" in info["name"]
    assert stored_names(store.root) == [f"{fid}.data"]


def test_store_offer_bound_to_owner_and_expires(tmp_path: Path) -> None:
    st = FileStore(tmp_path / "s", max_file_bytes=MB, idle_timeout_s=5.0, offer_ttl_s=60.0)
    fid = st.offer("Room", 1, "Alice", "a.txt", 3)
    assert upload_pair(st, fid, b"abc", owner=2)[1].code == Err.NOT_OWNER
    assert upload_pair(st, fid, b"abc", owner=1)[1] is None  # still usable by its owner
    st.offer_ttl_s = 0.0
    old = st.offer("Room", 1, "Alice", "b.txt", 3)
    st.offer("Room", 1, "Alice", "c.txt", 3)  # any later call expires stale offers
    assert upload_pair(st, old, b"abc")[1].code == Err.NO_SUCH_FILE
    st.close()
    assert stored_names(st.root) == []


def test_store_delete_and_drop_session(store: FileStore) -> None:
    ids = []
    for owner in (1, 2):
        fid = store.offer("Room", owner, f"user{owner}", f"{owner}.txt", 1)
        assert upload_pair(store, fid, b"x", owner=owner)[1] is None
        ids.append(fid)
    with pytest.raises(FileStoreError) as info:
        store.delete(ids[0], "Room", 2)
    assert info.value.code == Err.NOT_OWNER
    with pytest.raises(FileStoreError) as info:
        store.delete(ids[0], "Other", 1)
    assert info.value.code == Err.NO_SUCH_FILE
    store.delete(ids[0], "Room", 1)
    assert [f["id"] for f in store.list_files("Room")] == [ids[1]]
    assert stored_names(store.root) == [f"{ids[1]}.data"]
    store.drop_session("Room")
    assert store.list_files("Room") == [] and stored_names(store.root) == []


def test_store_upload_discarded_when_session_ends_meanwhile(store: FileStore) -> None:
    fid = store.offer("Room", 1, "Alice", "a.bin", 1000)
    a, b = socket.socketpair()
    with a, b:
        t, out = run_in_thread(lambda: store.receive_upload(b, fid, 1))
        a.sendall(b"x" * 10)
        wait_for(lambda: (store.root / f"{fid}.part").exists())
        store.drop_session("Room")  # shuts the data connection down
        t.join(WAIT_S)
    assert isinstance(out.get("error"), FileStoreError)
    assert stored_names(store.root) == []


def test_store_cleans_leftovers_of_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / "f0123456789abcdef.part").write_bytes(b"half")
    (root / "f0123456789abcdef.data").write_bytes(b"old")
    (root / "notes.txt").write_text("not ours")
    st = FileStore(root, max_file_bytes=MB, idle_timeout_s=1.0)
    assert stored_names(root) == ["notes.txt"]
    st.close()


def test_unique_destination_and_safe_names(tmp_path: Path) -> None:
    (tmp_path / "Report.pdf").write_bytes(b"mine")
    first = fsm.unique_destination(tmp_path, "Report.pdf")
    second = fsm.unique_destination(tmp_path, "Report.pdf")
    assert (first.name, second.name) == ("Report (1).pdf", "Report (2).pdf")
    assert (tmp_path / "Report.pdf").read_bytes() == b"mine"
    assert fsm.safe_local_name("a:b?.txt") == "a_b_.txt"
    assert fsm.safe_local_name("CON.txt") == "_CON.txt"
    assert fsm.safe_local_name("../../x") not in ("", "..")
    assert "/" not in fsm.safe_local_name("../../etc/passwd")
