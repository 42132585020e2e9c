"""The executables carry libopus (and libspeexdsp for the client), and find them frozen."""

from __future__ import annotations

import os
import sys

import pytest

import audio_codec
import echo_canceller
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import build_executables


@pytest.mark.parametrize(("kind", "libs"), [("server", ["opus"]), ("client", ["opus", "speexdsp"])])
def test_builds_add_the_native_libraries(kind, libs):
    args = build_executables.native_binaries(kind)
    assert len(args) == len(libs), args
    for arg, lib in zip(args, libs, strict=True):
        path, dest = arg.removeprefix("--add-binary=").rsplit(os.pathsep, 1)
        assert dest == "." and os.path.isfile(path) and f"{lib}" in os.path.basename(path)


def test_a_frozen_program_finds_its_shipped_libraries(tmp_path, monkeypatch):
    opus = build_executables.find_native("opus")
    speex = build_executables.find_native("speexdsp")
    assert opus is not None and speex is not None
    (tmp_path / opus.name).symlink_to(opus)
    (tmp_path / speex.name).symlink_to(speex)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    monkeypatch.delenv("FUSIONMEET_LIBOPUS", raising=False)
    assert audio_codec._bundled_library() == str(tmp_path / opus.name)
    assert echo_canceller._bundled_speexdsp() == str(tmp_path / speex.name)
