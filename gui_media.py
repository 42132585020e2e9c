"""The local devices: camera, microphone, speaker and screen capture, and the Settings dialog."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PyQt5.QtCore import QObject, QSettings, Qt, pyqtSignal
from PyQt5.QtGui import QImage
from PyQt5.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QFormLayout, QVBoxLayout, QWidget

import config
from gui_bridge import ClientLike
from gui_theme import plain_label

log = logging.getLogger(__name__)


class MediaEvents(QObject):
    """Media threads report a device that stopped (reason text) through this, queued."""

    device_failed = pyqtSignal(str, str)  # kind ("camera", "mic", "speaker", "screen"), reason


class MediaController:
    """Starts and stops the local camera, microphone, speaker and screen capture.

    This base class has no devices at all (every start answers why not); it is
    what the window uses when the media modules cannot be loaded, and what
    tests subclass. ``DeviceMedia`` drives the real devices. A missing device is
    an error string for the window to show, never an exception.
    """

    def __init__(self) -> None:
        self.client: ClientLike | None = None
        self.selected: dict[str, Any] = {"camera": None, "input": None, "output": None}
        self.events = MediaEvents()

    def attach(self, client: ClientLike) -> None:
        self.client = client

    def load_choice(self, settings: QSettings) -> None:
        """Select the devices remembered in ``settings``."""
        for kind in list(self.selected):
            value = settings.value(f"devices/{kind}")
            if value not in (None, ""):
                self.selected[kind] = int(value) if str(value).isdigit() else value

    def save_choice(self, settings: QSettings) -> None:
        """Remember the selected devices for next time."""
        for kind, value in self.selected.items():
            settings.setValue(f"devices/{kind}", value)
        settings.sync()

    def list_devices(self, kind: str) -> tuple[list[tuple[Any, str]], str]:
        """([(device id, name)], note when empty) for "camera", "input" or "output"."""
        return [], "No devices: the media modules are not available."

    def start_camera(self) -> str | None:
        return "No camera support in this build."

    def stop_camera(self) -> None:
        pass

    def start_mic(self) -> str | None:
        return "No microphone support in this build."

    def stop_mic(self) -> None:
        pass

    def start_speaker(self) -> str | None:
        return None

    def request_present(self) -> None:
        """Ask the server for the presenter lock (answered by present_granted or an error)."""
        self.client.present_start()

    def start_screen(self) -> str | None:
        """The lock was granted: start capturing, or say why not."""
        return "Screen capture is not available."

    def stop_screen(self, send: bool = True) -> None:
        """Stop capturing; ``send`` tells the server we stopped presenting."""
        if send and getattr(self.client, "connected", False):
            self.client.present_stop()

    def self_view(self) -> tuple[int, QImage] | None:
        """(version, image) of the local camera's latest frame, or None."""
        return None

    def mic_level(self) -> int:
        """The local microphone's input level, 0-255."""
        return 0

    def stop(self) -> None:
        """Stop every device and join their threads."""
        self.stop_camera()
        self.stop_mic()
        self.stop_screen(send=False)


class DeviceMedia(MediaController):
    """The real devices, through audio_module, video_module and screen_sharing_module."""

    def __init__(
        self,
        video_source_factory: Callable[[], Any] | None = None,
        screen_source_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        # Stand-ins for the camera / monitor (a test pattern, an image); None = real devices.
        self.video_source_factory = video_source_factory
        self.screen_source_factory = screen_source_factory
        self.capture: Any = None
        self.playback: Any = None
        self.camera: Any = None
        self.sharer: Any = None
        self._self_version = -1
        self._self_image: QImage | None = None

    def attach(self, client: ClientLike) -> None:
        self.stop()
        self.client = client

    def _audio_format(self) -> Any:
        import audio_module

        return audio_module.AudioFormat.from_media(getattr(self.client, "media_params", None))

    def list_devices(self, kind: str) -> tuple[list[tuple[Any, str]], str]:
        try:
            if kind == "camera":
                import video_module

                cams = video_module.list_cameras()
                return [(c["index"], c["name"]) for c in cams], "No camera found."
            import audio_module

            found = (
                audio_module.list_input_devices()
                if kind == "input"
                else audio_module.list_output_devices()
            )
        except Exception as exc:  # a broken driver must not break the dialog
            log.info("listing %s devices failed: %s", kind, exc)
            return [], f"Could not list devices: {exc}"
        note = "No microphone found." if kind == "input" else "No speaker found."
        return [(d["index"], d["name"]) for d in found], note

    # --- microphone and speaker ---------------------------------------------------

    def start_mic(self) -> str | None:
        if self.capture is not None:
            return None
        try:
            import audio_module

            source = audio_module.MicrophoneSource(self._audio_format(), self.selected["input"])
        except Exception as exc:  # DeviceError, or PyAudio missing entirely
            return f"Microphone unavailable: {exc}"
        self.capture = audio_module.AudioCapture(
            self.client,
            source,
            on_end=lambda reason: self.events.device_failed.emit("mic", reason),
        ).start()
        return None

    def stop_mic(self) -> None:
        capture, self.capture = self.capture, None
        if capture is not None:
            capture.stop()

    def mic_level(self) -> int:
        return int(getattr(self.capture, "level", 0) or 0)

    def start_speaker(self) -> str | None:
        if self.playback is not None:
            return None
        try:
            import audio_module

            sink = audio_module.SpeakerSink(self._audio_format(), self.selected["output"])
        except Exception as exc:
            return f"No sound output: {exc}"
        self.playback = audio_module.AudioPlayback(self.client, sink).start()
        return None

    def stop_speaker(self) -> None:
        playback, self.playback = self.playback, None
        if playback is not None:
            playback.stop()

    # --- camera --------------------------------------------------------------------

    def _open_camera(self) -> Any:
        import video_module

        if self.video_source_factory is not None:
            return self.video_source_factory()
        index = self.selected["camera"]
        return video_module.CameraSource(int(index) if index is not None else 0)

    def start_camera(self) -> str | None:
        if self.camera is not None:
            return None
        try:
            import video_module
        except Exception as exc:  # OpenCV missing or broken
            return f"Camera unavailable: {exc}"
        messages: list[str] = []
        sender = video_module.VideoSender(
            self.client, self._open_camera, on_message=messages.append
        )
        if not sender.open():
            return messages[-1] if messages else "No camera found."
        self.camera = sender.start()
        return None

    def stop_camera(self) -> None:
        camera, self.camera = self.camera, None
        if camera is not None:
            camera.stop()

    def self_view(self) -> tuple[int, QImage] | None:
        camera = self.camera
        picture = None if camera is None else camera.last_picture
        if picture is None:
            return None
        version = camera.frames_sent
        if version != self._self_version:
            from gui_bridge import bgr_to_qimage

            # The self view needs no more than a thumbnail's worth of pixels.
            self._self_image = bgr_to_qimage(picture).scaled(
                config.GUI_SELF_VIEW_WIDTH_PX,
                config.GUI_SELF_VIEW_WIDTH_PX * 9 // 16,
                Qt.KeepAspectRatio,
                Qt.FastTransformation,
            )
            self._self_version = version
        return (version, self._self_image) if self._self_image is not None else None

    # --- screen ------------------------------------------------------------------------

    def request_present(self) -> None:
        try:
            import screen_sharing_module as ssm
        except Exception as exc:
            self.events.device_failed.emit("screen", f"Screen sharing unavailable: {exc}")
            return
        if self.sharer is None:
            self.sharer = ssm.ScreenSharer(
                self.client, self._open_screen, on_status=self._on_screen_status
            )
        self.sharer.start()

    def _open_screen(self) -> Any:
        import screen_sharing_module as ssm

        if self.screen_source_factory is not None:
            return self.screen_source_factory()
        return ssm.MonitorSource(1)

    def _on_screen_status(self, text: str) -> None:
        """Runs on the sharer's threads: only a capture failure is passed on (queued)."""
        sharer = self.sharer
        if sharer is not None and text == sharer.last_error and not sharer.refused.is_set():
            self.events.device_failed.emit("screen", text)

    def start_screen(self) -> str | None:
        return None  # the sharer starts its own sender thread on present_granted

    def stop_screen(self, send: bool = True) -> None:
        if self.sharer is not None:
            self.sharer.stop()  # sends present_stop itself when it was presenting

    def stop(self) -> None:
        super().stop()
        self.stop_speaker()
        if self.sharer is not None:
            self.sharer.close()
            self.sharer = None


class SettingsDialog(QDialog):
    """Camera, microphone and speaker selection from the devices the media modules list."""

    def __init__(self, media: MediaController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("SettingsDialog")
        self.setWindowTitle("Settings")
        self.setMinimumWidth(440)
        self.media = media
        outer = QVBoxLayout(self)
        outer.setContentsMargins(24, 20, 24, 20)
        title = plain_label("Devices", "DialogTitle")
        outer.addWidget(title)
        form = QFormLayout()
        form.setSpacing(10)
        self.camera_combo = QComboBox()
        self.mic_combo = QComboBox()
        self.speaker_combo = QComboBox()
        self.notes: list[str] = []
        for combo, kind, label in (
            (self.camera_combo, "camera", "Camera"),
            (self.mic_combo, "input", "Microphone"),
            (self.speaker_combo, "output", "Speaker"),
        ):
            devices, note = media.list_devices(kind)
            if devices:
                for dev_id, name in devices:
                    combo.addItem(name, dev_id)
                idx = combo.findData(media.selected.get(kind))
                combo.setCurrentIndex(max(0, idx))
            else:
                combo.addItem(note or f"No {label.lower()} found.", None)
                combo.setEnabled(False)
                self.notes.append(note or f"No {label.lower()} found.")
            form.addRow(label, combo)
        outer.addLayout(form)
        self.note_label = plain_label(
            "Plug a device in and open Settings again to see it."
            if self.notes
            else "Changes apply the next time a device starts.",
            "Muted",
        )
        self.note_label.setWordWrap(True)
        outer.addWidget(self.note_label)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.button(QDialogButtonBox.Ok).setObjectName("PrimaryButton")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        outer.addWidget(buttons)

    def accept(self) -> None:
        for combo, kind in (
            (self.camera_combo, "camera"),
            (self.mic_combo, "input"),
            (self.speaker_combo, "output"),
        ):
            if combo.isEnabled():
                self.media.selected[kind] = combo.currentData()
        super().accept()
