"""Build LGPL-clean stand-ins for the GPL encoders (libx264, libx265) bundled in PyAV's wheel.

    .venv/bin/python scripts/av_gpl_stubs.py OUT_DIR          # build the stubs
    .venv/bin/python scripts/av_gpl_stubs.py OUT_DIR --check  # ... and prove PyAV still works

FusionMeet only uses VP8 (libvpx), but the manylinux PyAV wheel's libavcodec
links libx264 and libx265 (GPL) as NEEDED libraries, so they cannot simply be
left out of a PyInstaller build: ``import av`` would fail. This script writes,
for each of them, a tiny shared library with the same soname that exports the
symbols libavcodec takes from it; every function returns 0 (NULL), so opening
those encoders fails cleanly while VP8 works. The sonames (with the wheel's
hashes) and the symbol list are read from the installed wheel, nothing is
hard-coded. Needs ``cc`` and binutils' ``nm`` (Linux only).

``--check`` copies PyAV to a temporary folder, swaps in the stubs, and in a new
process imports it, encodes VP8, and checks that opening libx264 fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GPL_LIB = re.compile(r"^lib(x264|x265)-[^/]*\.so(\.\d+)*$")
NM_TIMEOUT_S = 60
CC_TIMEOUT_S = 120
CHECK_TIMEOUT_S = 120

CHECK_CODE = """
import sys
from fractions import Fraction
sys.path.insert(0, sys.argv[1])
import av
assert av.__file__.startswith(sys.argv[1]), av.__file__
import numpy as np
ctx = av.CodecContext.create("libvpx", "w")
ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 64, 48, "yuv420p", Fraction(1, 15)
ctx.open()
frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="bgr24")
frame = frame.reformat(format="yuv420p")
frame.pts = 0
assert ctx.encode(frame), "no VP8 packet"
for name in ("libx264", "libx265"):
    enc = av.CodecContext.create(name, "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = 64, 48, "yuv420p", Fraction(1, 15)
    try:
        enc.open()
    except av.error.FFmpegError:
        continue
    raise SystemExit(name + " still opens")
print("ok: VP8 encodes, libx264/libx265 refuse to open")
"""


def av_paths() -> tuple[Path, Path]:
    """The installed ``av`` package folder and its bundled ``av.libs`` folder."""
    import av

    pkg = Path(av.__file__).resolve().parent
    libs = pkg.parent / "av.libs"
    if not libs.is_dir():
        raise SystemExit(f"no bundled libraries at {libs} (not a manylinux wheel?)")
    return pkg, libs


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name!r} is not installed: it is needed to build the stubs")
    return path


def _nm(lib: Path, *flags: str) -> list[list[str]]:
    # Fixed tools run on the installed wheel's own files: no untrusted input.
    out = subprocess.run(  # noqa: S603
        [_tool("nm"), "-D", *flags, str(lib)],
        capture_output=True,
        text=True,
        check=True,
        timeout=NM_TIMEOUT_S,
    ).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def stub_source(lib: Path, users: list[Path]) -> str:
    """C source exporting every symbol of ``lib`` that ``users`` need, as do-nothing stubs."""
    wanted = set()
    for user in users:
        wanted |= {f[-1] for f in _nm(user, "--undefined-only")}
    lines = [f"/* Stand-in for {lib.name}: same soname, no GPL code; every call fails. */"]
    for fields in _nm(lib, "--defined-only", "-S"):
        if len(fields) < 3 or fields[-1] not in wanted:
            continue
        name, kind = fields[-1], fields[-2]
        if kind in ("T", "W", "i"):
            lines.append(f"long {name}(void) {{ return 0; }}")
        elif kind in ("D", "B", "R", "V") and len(fields) == 4:
            size = int(fields[1], 16)
            lines.append(f"const unsigned char {name}[{max(1, size)}] = {{0}};")
    return "\n".join(lines) + "\n"


def build(out: Path) -> list[Path]:
    """Compile a stub for every GPL library in ``av.libs``; returns the built files."""
    _, libs = av_paths()
    gpl = sorted(p for p in libs.iterdir() if GPL_LIB.match(p.name))
    others = [p for p in libs.iterdir() if not GPL_LIB.match(p.name) and ".so" in p.name]
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for lib in gpl:
        src = out / f"{lib.name.split('.so')[0]}-stub.c"
        src.write_text(stub_source(lib, others), encoding="utf-8")
        target = out / lib.name
        soname = f"-Wl,-soname,{lib.name}"
        subprocess.run(  # noqa: S603 - the compiler on a file this script just wrote
            [_tool("cc"), "-shared", "-fPIC", "-O2", soname, "-o", str(target), str(src)],
            check=True,
            timeout=CC_TIMEOUT_S,
        )
        built.append(target)
    return built


def check(stubs: list[Path]) -> None:
    """PyAV copied with the stubs swapped in still imports and encodes VP8."""
    pkg, libs = av_paths()
    with tempfile.TemporaryDirectory(prefix="av-stubbed-") as tmp:
        shutil.copytree(pkg, Path(tmp) / "av")
        shutil.copytree(libs, Path(tmp) / "av.libs")
        for stub in stubs:
            shutil.copy2(stub, Path(tmp) / "av.libs" / stub.name)
        result = subprocess.run(  # noqa: S603 - this Python on this script's own check
            [sys.executable, "-I", "-c", CHECK_CODE, tmp],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise SystemExit(f"stubbed PyAV failed:\n{result.stdout}{result.stderr}")
        print(result.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for the stub libraries")
    ap.add_argument("--check", action="store_true", help="verify PyAV works with them")
    args = ap.parse_args()
    stubs = build(args.out)
    for stub in stubs:
        print(f"built {stub}")
    if args.check:
        check(stubs)


if __name__ == "__main__":
    main()
