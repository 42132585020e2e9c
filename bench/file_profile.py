"""Profiling aid: uploads and downloads through FusionMeet, server and client in one process.

    .venv/bin/python bench/file_profile.py [--mb 500] [--repeat 3]
    perf record -g -o files.perf -- .venv/bin/python bench/file_profile.py --mb 500
    perf report -i files.perf --no-children --sort comm,dso

On Linux every thread's OS name is set to its Python name, so ``perf`` and ``top``
tell the roles apart: ``upload-N`` (client sender), ``conn-N`` (server side of a
data connection), ``file-N-hash`` (server's hasher), ``download-N`` and
``download-N-hash`` (client receiver and its hasher). Per transfer it prints MB/s,
the CPU seconds of the whole process (both ends) and how long the server's final
``fsync`` of the upload waited. bench/file_transfer.py is the benchmark of record;
this one is for finding where the time goes.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import config  # noqa: E402
from tests.helpers import identity_fingerprint, make_file  # noqa: E402

MB = 1024 * 1024
WAIT_S = 600.0
PR_SET_NAME = 15  # <linux/prctl.h>
OS_NAME_CHARS = 15


def name_os_threads() -> None:
    """From now on, each new Python thread also names its OS thread (Linux only)."""
    try:
        prctl = ctypes.CDLL(None).prctl
    except (AttributeError, OSError):
        return
    run = threading.Thread.run

    def named_run(self: threading.Thread) -> None:
        prctl(PR_SET_NAME, self.name[:OS_NAME_CHARS].encode(), 0, 0, 0)
        run(self)

    threading.Thread.run = named_run  # type: ignore[method-assign]


def time_fsyncs(waits: list[float]) -> None:
    """Record how long each fsync takes (the server's, before it announces an upload)."""
    fsync = os.fsync

    def timed(fd: int) -> None:
        t0 = time.perf_counter()
        try:
            fsync(fd)
        finally:
            waits.append(time.perf_counter() - t0)

    os.fsync = timed


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run(mb: int, repeat: int) -> None:
    import file_sharing_module as fsm
    from client import ConferenceClient
    from server import ConferenceServer

    work = Path(tempfile.mkdtemp(prefix="fm-file-profile-"))
    fsyncs: list[float] = []
    time_fsyncs(fsyncs)
    try:
        src = work / "payload.bin"
        make_file(src, mb * MB)
        srv = ConferenceServer(
            config.ServerConfig(
                host="127.0.0.1", tcp_port=0, udp_port=0, storage_dir=work / "storage"
            )
        )
        srv.start()
        client = ConferenceClient(
            "127.0.0.1", srv.tcp_port, expected_fingerprint=identity_fingerprint()
        )
        try:
            client.connect("Profile", "Profile", audio=False, video=False)
            dest = work / "dl"
            dest.mkdir()
            for _ in range(repeat):
                os.sync()
                fsyncs.clear()
                c0, t0 = cpu_seconds(), time.perf_counter()
                up = fsm.upload(client, src)
                assert up.wait(WAIT_S) and up.ok, up.error
                up_s, up_cpu = time.perf_counter() - t0, cpu_seconds() - c0
                fsync_s = sum(fsyncs)
                os.sync()
                c0, t0 = cpu_seconds(), time.perf_counter()
                down = fsm.download(client, up.file_id, dest)
                assert down.wait(WAIT_S) and down.ok, down.error
                down_s, down_cpu = time.perf_counter() - t0, cpu_seconds() - c0
                down.path.unlink()
                client.delete_file(up.file_id)
                row = {
                    "upload_mb_s": round(mb / up_s, 1),
                    "upload_cpu_s": round(up_cpu, 2),
                    "upload_fsync_s": round(fsync_s, 3),
                    "download_mb_s": round(mb / down_s, 1),
                    "download_cpu_s": round(down_cpu, 2),
                }
                print(json.dumps(row), flush=True)
        finally:
            client.leave()
            srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="file size in MiB (default 500)")
    parser.add_argument("--repeat", type=int, default=3, help="upload + download pairs")
    args = parser.parse_args()
    name_os_threads()
    run(args.mb, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
