"""Build one-file FusionMeet executables with PyInstaller: the server, the client, or both.

    .venv/bin/python scripts/build_executables.py [server] [client] [--dist DIR]

Output: ``dist/FusionMeet_Server`` and ``dist/FusionMeet_Client`` (``.exe`` on
Windows). The application icons are rendered from ``icons/*.svg`` at build time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ICON_PX = (16, 32, 48, 64, 128, 256)

# The server runs on a LAN host that needs nothing but numpy (and zeroconf to be found).
SERVER_EXCLUDES = ["PyQt5", "cv2", "pyaudio", "mss", "PIL", "tkinter", "matplotlib"]
SECURITY_HIDDEN = [
    "security",
    "media_crypto",
    "cryptography.hazmat.bindings._rust",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.x509",
]
CLIENT_HIDDEN = ["pyaudio", "cv2", "mss", "PIL", "numpy", "zeroconf", "PyQt5.QtSvg"]


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
