"""FusionMeet's look: colours, the style sheet, icons and small plain-text widget helpers."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from PyQt5.QtCore import Qt
from PyQt5.QtGui import QColor, QIcon
from PyQt5.QtWidgets import QApplication, QLabel

ICON_DIR = Path(__file__).resolve().parent / "icons"


def icon(name: str) -> QIcon:
    """An icon from icons/<name>.svg (an empty icon if the file is missing)."""
    path = ICON_DIR / f"{name}.svg"
    return QIcon(str(path)) if path.exists() else QIcon()


BG = "#141518"
SURFACE = "#1E1F24"
SURFACE_2 = "#272930"
BORDER = "#30333B"
TEXT = "#E8EAED"
MUTED = "#9AA0A6"
ACCENT = "#6C8CFF"
DANGER = "#EA4335"
SUCCESS = "#34C47C"
WARNING = "#F6AE2D"
# Avatar colours, picked per name so a person keeps their colour.
AVATAR_COLOURS = ["#5B8CFF", "#F06292", "#26A69A", "#FFA726", "#AB47BC", "#42A5F5", "#8D6E63"]

# Qt style sheets want forward slashes, also on Windows.
CHECK_ICON = (ICON_DIR / "check.svg").as_posix()
STYLE_SHEET = f"""
* {{ font-size: 10.5pt; }}
QWidget {{ background: {BG}; color: {TEXT}; }}
QDialog#LoginDialog, QDialog#SettingsDialog {{ background: {SURFACE}; }}
QDialog#LoginDialog QLabel, QDialog#SettingsDialog QLabel, QDialog#LoginDialog QCheckBox {{
    background: transparent; }}
QLabel#DialogTitle {{ font-size: 18pt; font-weight: 600; }}
QLabel#Muted, QLabel.Muted {{ color: {MUTED}; }}
QLabel#SectionTitle {{ font-weight: 600; color: {TEXT}; font-size: 11pt; }}
QLabel#ErrorText {{ color: #FFB4AB; background: #3A1E1E; border: 1px solid #6B2B2B;
    border-radius: 8px; padding: 8px 10px; }}
QFrame#Panel {{ background: {SURFACE}; border-radius: 14px; }}
QFrame#Panel QWidget {{ background: transparent; }}
QLineEdit, QComboBox {{ background: {SURFACE_2}; border: 1px solid {BORDER}; border-radius: 8px;
    padding: 7px 10px; selection-background-color: {ACCENT}; }}
QLineEdit:focus, QComboBox:focus {{ border: 1px solid {ACCENT}; }}
QComboBox::drop-down {{ border: none; width: 22px; }}
QComboBox QAbstractItemView {{ background: {SURFACE_2}; border: 1px solid {BORDER};
    selection-background-color: {ACCENT}; }}
QListWidget {{ background: transparent; border: none; outline: none; }}
QListWidget#SessionsList {{ background: {SURFACE_2}; border: 1px solid {BORDER};
    border-radius: 10px; padding: 4px; }}
QListWidget::item {{ border-radius: 8px; padding: 6px; }}
QListWidget::item:selected {{ background: #2E3A5C; }}
QListWidget::item:hover {{ background: #252831; }}
QPushButton {{ background: {SURFACE_2}; border: 1px solid {BORDER}; border-radius: 8px;
    padding: 7px 16px; }}
QPushButton:hover {{ background: #30333B; }}
QPushButton#PrimaryButton, QFrame#Panel QPushButton#PrimaryButton {{ background: {ACCENT};
    border: none; color: white; font-weight: 600; }}
QPushButton#PrimaryButton:hover {{ background: #7F9BFF; }}
QPushButton#PrimaryButton:disabled {{ background: #3A4470; color: #B8C0E0; }}
QToolButton {{ background: transparent; border: none; border-radius: 8px; padding: 4px; }}
QToolButton:hover {{ background: #2C2F37; }}
QToolButton#ControlButton {{ background: #2B2E36; border-radius: 24px; padding: 0px; }}
QToolButton#ControlButton:hover {{ background: #363A44; }}
QToolButton#ControlButton:checked {{ background: #34406A; }}
QToolButton#ControlButton:checked:hover {{ background: #3E4C7C; }}
QToolButton#ControlButton[alert="true"] {{ background: {DANGER}; }}
QToolButton#ControlButton[active="true"] {{ background: #3D5AFE; }}
QToolButton#LeaveButton {{ background: {DANGER}; border-radius: 24px; padding: 0px 22px; }}
QToolButton#LeaveButton:hover {{ background: #F2564A; }}
QCheckBox {{ spacing: 8px; }}
QCheckBox::indicator {{ width: 16px; height: 16px; border-radius: 5px; border: 2px solid #5F6368;
    background: {SURFACE_2}; }}
QCheckBox::indicator:checked {{ background: {ACCENT}; border: 2px solid {ACCENT};
    image: url({CHECK_ICON}); }}
QProgressBar {{ background: {SURFACE_2}; border: none; border-radius: 3px; max-height: 6px; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 3px; }}
QProgressBar#LevelBar::chunk {{ background: {SUCCESS}; }}
QTextBrowser {{ background: transparent; border: none; }}
QSplitter::handle {{ background: {BG}; }}
QScrollBar:vertical {{ background: transparent; width: 8px; margin: 0; }}
QScrollBar::handle:vertical {{ background: #3A3D45; border-radius: 4px; min-height: 24px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ height: 0; }}
QStatusBar {{ background: {BG}; color: {MUTED}; }}
QStatusBar QLabel {{ color: {MUTED}; padding: 0 8px; }}
QFrame#Banner {{ background: #5C2B29; border-radius: 10px; }}
QFrame#Banner QLabel {{ background: transparent; color: #FFDAD6; font-weight: 600; }}
QLabel#Toast {{ background: #2F3137; color: {TEXT}; border: 1px solid #464A53;
    border-radius: 10px; padding: 10px 18px; }}
QLabel#Badge {{ background: {DANGER}; color: white; border-radius: 9px; font-size: 8pt;
    font-weight: 700; padding: 0px 4px; min-width: 10px; min-height: 18px; max-height: 18px; }}
QMenu {{ background: {SURFACE_2}; color: {TEXT}; border: 1px solid {BORDER};
    padding: 4px; }}
QMenu::item {{ padding: 6px 14px; border-radius: 6px; }}
QMenu::item:selected {{ background: #363944; }}
QMenu QWidget {{ background: transparent; }}
QToolTip {{ background: #2F3137; color: {TEXT}; border: 1px solid #464A53; padding: 4px; }}
"""


def apply_theme(app: QApplication) -> None:
    """Give the application FusionMeet's dark look."""
    app.setStyle("Fusion")
    app.setStyleSheet(STYLE_SHEET)
    app.setWindowIcon(icon("app"))


def plain_label(text: str = "", name: str | None = None) -> QLabel:
    """A QLabel that never interprets its text as HTML (peer names are plain text)."""
    label = QLabel()
    label.setTextFormat(Qt.PlainText)
    label.setText(text)
    if name:
        label.setObjectName(name)
    return label


def initials(name: str) -> str:
    """One or two letters for a placeholder avatar."""
    words = re.split(r"[\s._-]+", name.strip())
    parts = ["".join(ch for ch in w if ch.isalnum()) for w in words]
    parts = [p for p in parts if p]
    if not parts:
        return "?"
    if len(parts) == 1:
        return parts[0][:2].upper() if len(parts[0]) > 1 else parts[0].upper()
    return (parts[0][0] + parts[-1][0]).upper()


def avatar_colour(name: str) -> QColor:
    """A stable colour for a name."""
    return QColor(AVATAR_COLOURS[zlib.crc32(name.casefold().encode()) % len(AVATAR_COLOURS)])


def format_size(n: int) -> str:
    """Bytes for people: 512 B, 51.1 KB, 3.4 MB, 1.2 GB."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
