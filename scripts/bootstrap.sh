#!/usr/bin/env bash
# Set up FusionMeet on a fresh Debian/Ubuntu machine, then run one job.
#   bash scripts/bootstrap.sh server [server options]   install and run the server
#   bash scripts/bootstrap.sh client [client options]   install and run the desktop client
#   bash scripts/bootstrap.sh test   [pytest options]   install everything and run the tests
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-server}"; shift || true

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  command -v apt-get >/dev/null || { echo "apt-get not found: install the packages listed in README.md by hand" >&2; return 0; }
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  sudo_ apt-get update -q
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Shared libraries the PyQt5 wheel loads (xcb for real windows, GL and fonts for any platform).
QT_LIBS=(libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0 libxkbcommon-x11-0
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
  libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 libx11-xcb1 fonts-dejavu-core)

case "$job" in
  server) apt_install python3-venv libopus0 ;;
  client) apt_install python3-venv gcc portaudio19-dev libopus0 libspeexdsp1 fonts-noto-color-emoji "${QT_LIBS[@]}" ;;
  test)   apt_install python3-venv gcc portaudio19-dev libopus0 libspeexdsp1 xvfb xauth espeak-ng sox pulseaudio pulseaudio-utils libasound2-plugins fonts-noto-color-emoji "${QT_LIBS[@]}" ;;
  *) echo "usage: $0 server|client|test [options]" >&2; exit 2 ;;
esac

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
case "$job" in
  # av: meeting recording (recorder.py, VP8 + Opus in WebM); without it the server runs
  # and refuses record_start with recording_unavailable. opuslib: the Opus mixer.
  server) .venv/bin/python -m pip install -q "numpy>=1.24,<3" "zeroconf>=0.130,<1" "cryptography>=42,<47" "av>=18.1,<19" "opuslib>=3.0.1,<4" ;;
  client) .venv/bin/python -m pip install -q -r requirements.txt ;;
  test)   .venv/bin/python -m pip install -q -r requirements-dev.txt ;;
esac

case "$job" in
  server) exec .venv/bin/python server.py "$@" ;;
  client) exec .venv/bin/python client.py "$@" ;;
  test)   exec .venv/bin/python -m pytest "$@" ;;
esac
