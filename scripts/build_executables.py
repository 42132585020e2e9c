"""Build one-file FusionMeet executables with PyInstaller: the server, the client, or both.

    .venv/bin/python scripts/build_executables.py [server] [client] [--dist DIR]

Output: ``dist/FusionMeet_Server`` and ``dist/FusionMeet_Client`` (``.exe`` on
Windows). The application icons are rendered from ``icons/*.svg`` at build time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ICON_PX = (16, 32, 48, 64, 128, 256)

# The server runs on a LAN host that needs nothing but numpy (and zeroconf to be found).
# The server forwards VP8 without decoding it: no codec (av) in its build.
SERVER_EXCLUDES = ["PyQt5", "cv2", "pyaudio", "mss", "PIL", "tkinter", "matplotlib", "av"]
SECURITY_HIDDEN = [
    "security",
    "media_crypto",
    "cryptography.hazmat.bindings._rust",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.x509",
]
# The client imports the media modules and PyAV lazily: name them. PyAV's wheel also
# bundles libx264/libx265 (GPL): on Linux the client is built from a copy of PyAV whose
# two GPL libraries are replaced by scripts/av_gpl_stubs.py's stand-ins (below).
CLIENT_HIDDEN = [
    *("pyaudio", "cv2", "mss", "PIL", "numpy", "zeroconf", "PyQt5.QtSvg", "av"),
    *("video_module", "screen_sharing_module", "video_codec", "simulcast"),
]


def render_icon(svg: Path, out: Path) -> Path | None:
    """Render an SVG to a multi-size .ico (Windows) next to a .png; None without Qt or the SVG."""
    if not svg.exists():
        return None
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PIL import Image
        from PyQt5.QtCore import Qt
        from PyQt5.QtGui import QGuiApplication, QImage, QPainter
        from PyQt5.QtSvg import QSvgRenderer
    except ImportError:
        return None
    _app = QGuiApplication.instance() or QGuiApplication([])
    renderer = QSvgRenderer(str(svg))
    image = QImage(256, 256, QImage.Format_ARGB32)
    image.fill(Qt.transparent)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    image.save(str(png))
    Image.open(png).save(out, sizes=[(s, s) for s in ICON_PX])
    return out


def av_without_gpl(work: Path) -> Path | None:
    """A folder holding a copy of PyAV with libx264/libx265 swapped for stubs, or None.

    PyInstaller finds the libraries by ``libavcodec``'s dependencies in the ``av.libs``
    folder next to the ``av`` it imports, so building from this copy (first on the
    path) bundles the stubs. None (with a message) where the stubs cannot be made.
    """
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import av_gpl_stubs
    finally:
        sys.path.pop(0)
    if not sys.platform.startswith("linux"):
        print("not Linux: the client build keeps PyAV's own libraries (see av_gpl_stubs.py)")
        return None
    try:
        stubs = av_gpl_stubs.build(work / "gpl-stubs")
        pkg, libs = av_gpl_stubs.av_paths()
    except (SystemExit, OSError, subprocess.CalledProcessError) as exc:
        print(f"GPL stubs not built ({exc}): the client build keeps PyAV's own libraries")
        return None
    copy = work / "av-lgpl"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(pkg, copy / "av")
    shutil.copytree(libs, copy / "av.libs")
    for stub in stubs:
        shutil.copy2(stub, copy / "av.libs" / stub.name)
    return copy


def build(kind: str, dist: Path) -> Path:
    """Run PyInstaller for ``kind`` ("server" or "client"); return the executable's path."""
    import PyInstaller.__main__

    work = ROOT / "build" / kind
    name = "FusionMeet_Server" if kind == "server" else "FusionMeet_Client"
    svg = ROOT / "icons" / ("server.svg" if kind == "server" else "app.svg")
    icon = render_icon(svg, work / f"{kind}.ico")
    sep = os.pathsep
    args = [
        str(ROOT / f"{kind}.py"),
        "--onefile",
        "--noconfirm",
        "--clean",
        f"--name={name}",
        f"--distpath={dist}",
        f"--workpath={work}",
        f"--specpath={work}",
        f"--paths={ROOT}",
    ]
    if icon is not None:
        args.append(f"--icon={icon}")
    # TLS and sealed media (security.py, media_crypto.py): cryptography's Rust bindings
    # and the AEAD module are imported by name inside them, so they are named here for
    # both programs.
    args += [f"--hidden-import={mod}" for mod in SECURITY_HIDDEN]
    if kind == "server":
        args += ["--console", "--hidden-import=discovery", "--hidden-import=file_store"]
        args += [f"--exclude-module={m}" for m in SERVER_EXCLUDES]
    else:
        lgpl = av_without_gpl(work)
        if lgpl is not None:
            args.insert(args.index(f"--paths={ROOT}"), f"--paths={lgpl}")
        args += ["--windowed" if sys.platform != "linux" else "--console"]
        args += [f"--add-data={ROOT / 'icons'}{sep}icons"]
        for mod in ("gui", "login_dialog", "headless", "discovery", *CLIENT_HIDDEN):
            args.append(f"--hidden-import={mod}")
    PyInstaller.__main__.run(args)
    exe = dist / (name + (".exe" if os.name == "nt" else ""))
    print(f"built {exe} ({exe.stat().st_size / 1e6:.1f} MB)")
    return exe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", choices=["server", "client"], default=[])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder")
    args = parser.parse_args(argv)
    for kind in args.kinds or ["server", "client"]:
        build(kind, args.dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
