"""The join dialog: server address, name, session (live list or new), password, camera/mic.

Network work (listing sessions, connecting, LAN discovery) runs on short-lived
named worker threads; results come back to the dialog only through Qt signals,
so the dialog never freezes and no worker touches a widget.

Trust on first use (PROTOCOL.md section 8): a join to a server never seen before
stops with ``fingerprint_unknown``; the worker reports the fingerprint through a
queued signal and the dialog shows it, asking the person to compare it with the
one on the server's screen (``ask_trust``). Trusted, it is pinned and the join is
retried. A changed fingerprint is refused with a plain explanation; only the
deliberate "Accept the new fingerprint" button pins the new one. A server found
on the LAN announced its fingerprint: a different certificate is refused outright.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from PyQt5.QtCore import QSettings, QSize, Qt
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

import config
import names
import security
import utils
from gui_bridge import ClientLike, WorkerSignals, error_code_and_message
from gui_theme import icon

log = logging.getLogger(__name__)

SETTINGS_ORG = config.APP_NAME
SETTINGS_APP = "client"
# How long a worker thread may take to finish when the dialog closes.
WORKER_JOIN_TIMEOUT_S = config.CONNECT_TIMEOUT_S + 2.0
# How often the discovery worker checks whether the dialog has closed.
DISCOVERY_POLL_S = 0.1
# Marker in the sessions list for the "create a new session" row.
NEW_SESSION_ROLE = Qt.UserRole + 1

# Plain-words explanations of the server's join refusals (and of not reaching it).
JOIN_ERROR_TEXT: dict[str, str] = {
    utils.LocalErr.UNREACHABLE: "Could not reach the server at {address}. Check the address "
    "and that the FusionMeet server is running.",
    utils.Err.USERNAME_TAKEN: "Someone in this session is already called “{username}”. "
    "Please pick another name.",
    utils.Err.BAD_USERNAME: "Names must be 1–{max_name} characters, with no control characters.",
    utils.Err.BAD_SESSION: "Session names must be 1–{max_session} characters, with no control "
    "characters.",
    utils.Err.WRONG_PASSWORD: "That password is not right for “{session}”.",
    utils.Err.SESSION_FULL: "“{session}” is full. Try again later or pick another session.",
    utils.Err.UNSUPPORTED_PROTOCOL: "This server runs a different version of FusionMeet. "
    "Update FusionMeet here or on the server.",
    utils.Err.SERVER_SHUTDOWN: "The server is shutting down.",
    security.SecErr.TLS_FAILED: "No secure connection could be made to {address}. It may run "
    "an older FusionMeet without encryption: update the server.",
    security.SecErr.TLS_TIMEOUT: "{address} did not finish setting up a secure connection in "
    "time. Check the address and that the FusionMeet server is running.",
    security.SecErr.FINGERPRINT_MISMATCH: "The server at {address} is not the one announced on "
    "the network: its fingerprint differs. Someone may be impersonating it, so nothing was sent.",
    security.SecErr.FINGERPRINT_CHANGED: "The server at {address} presents a different "
    "fingerprint than before. Nothing was sent.",
    security.SecErr.FINGERPRINT_UNKNOWN: "The server's fingerprint was not trusted, so nothing "
    "was sent.",
}
# Trust verdicts a join worker hands to the dialog (with the fingerprints) instead of failing.
TRUST_QUESTIONS = frozenset(
    {security.SecErr.FINGERPRINT_UNKNOWN, security.SecErr.FINGERPRINT_CHANGED}
)


@dataclass
class TrustQuestion:
    """What the dialog asks about a server's certificate (from a join worker)."""

    code: str  # fingerprint_unknown or fingerprint_changed
    address: str  # the trust store's key, host:port
    fingerprint: str  # what the server presented (full hex)
    old: str = ""  # what was pinned before (changed)
    announced: str = ""  # what LAN discovery announced for this address ("" if nothing)

    @property
    def matches_announcement(self) -> bool:
        return bool(self.announced) and self.announced == self.fingerprint


def trust_question_text(q: TrustQuestion) -> str:
    """The plain words of the trust question (first use) or warning (changed)."""
    short = security.short_fingerprint(q.fingerprint)
    if q.code == security.SecErr.FINGERPRINT_CHANGED:
        return (
            f"The server at {q.address} now presents a different fingerprint than the "
            "last time you joined it.\n\n"
            f"Before: {security.short_fingerprint(q.old) if q.old else '(unknown)'}\n"
            f"Now:     {short}\n\n"
            "Either the server was reinstalled (its identity was reset), or someone on the "
            "network is pretending to be it to listen in. Nothing has been sent.\n\n"
            "Accept the new fingerprint only if the person running the server confirms it: "
            "compare it with the one on the server's screen."
        )
    text = (
        f"This is your first connection to {q.address}. Its fingerprint is:\n\n"
        f"    {short}\n\n"
        "Compare it with the one on the server's screen (its start-up banner, or "
        "'server.py --fingerprint'). Trust it only if they are the same: this is what "
        "keeps anyone else on the network from listening in."
    )
    if q.matches_announcement:
        text += "\n\nIt matches the fingerprint the server announced on the network."
    return text


def parse_address(text: str) -> tuple[str, int]:
    """Split "host", "host:port" or "[v6]:port" into (host, port); ValueError if malformed."""
    text = text.strip()
    if not text:
        raise ValueError("Please enter the server's address, for example 192.168.1.10.")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"The address {text!r} has an unclosed '['.")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"The address {text!r} is not host:port.")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    host = host.strip()
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"{text!r} is not a server address.")
    if not port_text:
        return host, config.DEFAULT_TCP_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"The port in {text!r} must be a number from 1 to 65535.")
    return host, int(port_text)


def explain_join_error(code: str, message: str, **context: Any) -> str:
    """A sentence for the user about a refused or failed join."""
    template = JOIN_ERROR_TEXT.get(code)
    if code == utils.Err.USERNAME_TAKEN and "looks like" in message:
        # A look-alike name (e.g. Cyrillic "А" for Latin "A"): the server names who.
        return f"{message} Please pick a name that is clearly different."
    if code == utils.LocalErr.UNREACHABLE and message.startswith("Could not reach"):
        return f"{message} Check the address and that the FusionMeet server is running."
    if template is None:
        return message or f"The server refused to join ({code})."
    fields = {
        "max_name": config.MAX_USERNAME_CHARS,
        "max_session": config.MAX_SESSION_NAME_CHARS,
        "address": "",
        "username": "",
        "session": "",
    }
    fields.update(context)
    return template.format(**fields)


@dataclass
class JoinRequest:
    """Everything the dialog collected to join a session."""

    host: str
    port: int
    username: str
    session: str
    password: str
    audio: bool
    video: bool

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == config.DEFAULT_TCP_PORT else f"{host}:{self.port}"


def _client_class() -> Any:
    from client import ConferenceClient

    return ConferenceClient


def connect_client(
    request: JoinRequest, client_factory: Any = None, trust_store: Any = None, on_lobby: Any = None
) -> tuple[ClientLike, dict]:
    """Connect a ConferenceClient for ``request`` (blocking); raises JoinError-like errors.

    Any failure is re-raised as an exception with ``code`` and ``message`` (and, for
    trust verdicts, ``address``, ``fingerprint`` and ``old``).
    ``on_lobby(message, recording)`` is called (on this thread) if a host must let us in.
    """
    factory = client_factory or _client_class()
    client = factory(request.host, request.port, trust_store=trust_store)
    if on_lobby is not None and hasattr(client, "on"):  # test doubles may have no events
        client.on("lobby_waiting", on_lobby)
    try:
        welcome = client.connect(
            request.username,
            request.session,
            password=request.password,
            audio=request.audio,
            video=request.video,
        )
    except BaseException:
        try:
            client.leave()
        except Exception as exc:  # the failed client may be half-built
            log.debug("leave after a failed connect: %s", exc)
        raise
    return client, welcome


class FormError(ValueError):
    """A form field that needs fixing before joining."""

    def __init__(self, text: str, widget: QWidget) -> None:
        super().__init__(text)
        self.text = text
        self.widget = widget


class LoginDialog(QDialog):
    """Asks where and as whom to join; on Accepted, ``client`` is a connected ConferenceClient."""

    def __init__(
        self,
        parent: QWidget | None = None,
        settings: QSettings | None = None,
        discover: bool = True,
        client_factory: Any = None,
        server: str | None = None,
        name: str | None = None,
        session: str | None = None,
        trust_store: Any = None,
    ) -> None:
        """``server``, ``name`` and ``session`` (the command line's) replace the remembered ones.

        ``trust_store`` (default: the user's) holds the pinned server fingerprints.
        """
        super().__init__(parent)
        self.setObjectName("LoginDialog")
        self.setWindowTitle(f"Join a {config.APP_NAME} meeting")
        self.setWindowIcon(icon("app"))
        self.settings = settings or QSettings(SETTINGS_ORG, SETTINGS_APP)
        self.client_factory = client_factory
        self.client: ClientLike | None = None
        self.welcome: dict | None = None
        self.request: JoinRequest | None = None
        # Worker reports, one WorkerSignals per kind of work (queued into the GUI thread).
        self._listing = WorkerSignals(self)  # job: list generation; result: list[dict]
        self._listing.finished.connect(self.on_sessions_listed)
        self._listing.failed.connect(self.on_sessions_failed)
        self._joining = WorkerSignals(self)  # job: JoinRequest; result: (client, welcome)
        self._joining.finished.connect(self.on_connected)
        self._joining.failed.connect(self.on_connect_failed)
        self._joining.progressed.connect(self.on_lobby_waiting)  # (message, recording)
        self._discovery = WorkerSignals(self)  # progress: list[discovery.FoundServer]
        self._discovery.progressed.connect(lambda _job, found: self.on_servers_found(found))
        self._trust = WorkerSignals(self)  # progress: (JoinRequest, TrustQuestion)
        self._trust.progressed.connect(self.on_trust_needed)
        self.trust_store = trust_store if trust_store is not None else security.TrustStore()
        # Fingerprints announced on the LAN, by trust-store address (GUI thread only).
        self._announced: dict[str, str] = {}
        # Asks the person about a TrustQuestion; True pins it. Tests replace it.
        self.ask_trust = self._ask_trust
        # Worker threads; only the GUI thread touches this list.
        self._workers: list[threading.Thread] = []
        self._list_generation = 0
        self._connecting = False
        # Set when the dialog finishes (any result): workers stop and report nothing.
        self._stop = threading.Event()
        # Set when the dialog is cancelled: a connect that succeeds late is left at once.
        self._closed = threading.Event()
        self._build()
        self._load_settings()
        self.prefill(server, name, session)
        if discover:
            self._start_worker("login-discovery", self._discover)
        if self.address_edit.currentText().strip():
            self.refresh_sessions()

    # --- layout -----------------------------------------------------------------

    def _build(self) -> None:
        self.setMinimumWidth(460)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(28, 24, 28, 24)
        outer.setSpacing(14)

        head = QHBoxLayout()
        logo = QLabel()
        logo.setPixmap(icon("app").pixmap(QSize(44, 44)))
        head.addWidget(logo)
        titles = QVBoxLayout()
        title = QLabel(config.APP_NAME)
        title.setObjectName("DialogTitle")
        subtitle = QLabel("Meetings on your local network")
        subtitle.setObjectName("Muted")
        titles.addWidget(title)
        titles.addWidget(subtitle)
        head.addLayout(titles, 1)
        outer.addLayout(head)

        form = self._form()
        self.address_edit = QComboBox()
        self.address_edit.setEditable(True)
        self.address_edit.setInsertPolicy(QComboBox.NoInsert)
        self.address_edit.lineEdit().setPlaceholderText("192.168.1.10 or host:port")
        self.address_edit.setToolTip("The FusionMeet server: host, or host:port")
        self.address_edit.lineEdit().editingFinished.connect(self.refresh_sessions)
        self.address_edit.activated.connect(lambda _i: self.refresh_sessions())
        form.addRow(self._label("Server"), self.address_edit)
        self.username_edit = QLineEdit()
        self.username_edit.setPlaceholderText("Your name")
        self.username_edit.setMaxLength(config.MAX_USERNAME_CHARS)
        form.addRow(self._label("Name"), self.username_edit)
        outer.addLayout(form)

        sess_head = QHBoxLayout()
        sess_label = QLabel("Sessions on this server")
        sess_label.setObjectName("SectionTitle")
        sess_head.addWidget(sess_label, 1)
        self.refresh_button = QToolButton()
        self.refresh_button.setIcon(icon("refresh"))
        self.refresh_button.setToolTip("Refresh the list of sessions")
        self.refresh_button.clicked.connect(self.refresh_sessions)
        sess_head.addWidget(self.refresh_button)
        outer.addLayout(sess_head)

        self.sessions_list = QListWidget()
        self.sessions_list.setObjectName("SessionsList")
        self.sessions_list.setMinimumHeight(130)
        self.sessions_list.itemSelectionChanged.connect(self._on_session_picked)
        self.sessions_list.itemDoubleClicked.connect(lambda _item: self.join())
        outer.addWidget(self.sessions_list)
        self.sessions_status = QLabel("")
        self.sessions_status.setObjectName("Muted")
        outer.addWidget(self.sessions_status)

        form2 = self._form()
        self.session_edit = QLineEdit()
        self.session_edit.setPlaceholderText("Pick one above, or type a new session name")
        self.session_edit.setMaxLength(config.MAX_SESSION_NAME_CHARS)
        form2.addRow(self._label("Session"), self.session_edit)
        self.password_edit = QLineEdit()
        self.password_edit.setEchoMode(QLineEdit.Password)
        self.password_edit.setPlaceholderText("Optional")
        self.password_edit.setMaxLength(config.MAX_PASSWORD_CHARS)
        self.password_edit.setToolTip(
            "Needed for a locked session; a new session created with a password is locked"
        )
        form2.addRow(self._label("Password"), self.password_edit)
        outer.addLayout(form2)

        toggles = QHBoxLayout()
        self.camera_check = QCheckBox("Camera on")
        self.camera_check.setIcon(icon("camera"))
        self.mic_check = QCheckBox("Microphone on")
        self.mic_check.setIcon(icon("mic"))
        toggles.addWidget(self.camera_check)
        toggles.addWidget(self.mic_check)
        toggles.addStretch(1)
        outer.addLayout(toggles)

        self.error_label = QLabel("")
        self.error_label.setObjectName("ErrorText")
        self.error_label.setWordWrap(True)
        self.error_label.setTextFormat(Qt.PlainText)
        self.error_label.hide()
        outer.addWidget(self.error_label)
        # The lobby (issue 14): "Waiting for the host to let you in." while a host decides.
        self.lobby_label = QLabel("")
        self.lobby_label.setObjectName("SectionTitle")
        self.lobby_label.setWordWrap(True)
        self.lobby_label.setTextFormat(Qt.PlainText)
        self.lobby_label.hide()
        outer.addWidget(self.lobby_label)
        self.lobby_recording = QLabel("\u25cf This meeting is being recorded")
        self.lobby_recording.setStyleSheet("color: #d93025; font-weight: bold;")
        self.lobby_recording.hide()
        outer.addWidget(self.lobby_recording)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.reject)
        self.join_button = QPushButton("Join")
        self.join_button.setObjectName("PrimaryButton")
        self.join_button.setDefault(True)
        self.join_button.clicked.connect(self.join)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.join_button)
        outer.addLayout(buttons)

    @staticmethod
    def _form() -> QFormLayout:
        form = QFormLayout()
        form.setSpacing(10)
        form.setLabelAlignment(Qt.AlignRight | Qt.AlignVCenter)
        return form

    @staticmethod
    def _label(text: str) -> QLabel:
        label = QLabel(text)
        label.setFixedWidth(72)
        label.setMinimumHeight(36)
        label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        return label

    def _load_settings(self) -> None:
        address = str(self.settings.value("server", "") or "")
        self.address_edit.setEditText(address)
        self.username_edit.setText(str(self.settings.value("username", "") or ""))
        self.session_edit.setText(str(self.settings.value("session", "") or ""))
        self.camera_check.setChecked(_as_bool(self.settings.value("camera", True)))
        self.mic_check.setChecked(_as_bool(self.settings.value("microphone", True)))

    def prefill(self, server: str | None, name: str | None, session: str | None) -> None:
        """Put the given fields in the form (None leaves a field as it is)."""
        if server is not None:
            self.address_edit.setEditText(server)
        if name is not None:
            self.username_edit.setText(name)
        if session is not None:
            self.session_edit.setText(session)

    def _save_settings(self, request: JoinRequest) -> None:
        self.settings.setValue("server", self.address_edit.currentText().strip())
        self.settings.setValue("username", request.username)
        self.settings.setValue("session", request.session)
        self.settings.setValue("camera", request.video)
        self.settings.setValue("microphone", request.audio)
        self.settings.sync()

    # --- workers ------------------------------------------------------------------

    def _start_worker(self, name: str, target: Any, *args: Any) -> None:
        self._workers = [t for t in self._workers if t.is_alive()]
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._workers.append(thread)
        thread.start()

    def _discover(self) -> None:
        try:
            import discovery

            browser = discovery.ServerBrowser()
            if not browser.start():
                return
        except Exception as exc:  # discovery is a convenience; typing an address works
            log.info("LAN discovery unavailable: %s", exc)
            return
        try:
            # Keep listening while the dialog is open; report each change.
            while not self._stop.is_set():
                if browser.changed.wait(DISCOVERY_POLL_S):
                    browser.changed.clear()
                    self._discovery.progressed.emit(None, browser.servers())
        finally:
            browser.stop()

    def _list_sessions(self, generation: int, host: str, port: int) -> None:
        cls = self.client_factory or _client_class()
        try:
            sessions = cls.list_sessions(
                host, port, config.CONNECT_TIMEOUT_S, trust_store=self.trust_store
            )
        except Exception as exc:
            code, message = error_code_and_message(exc)
            if not self._closed.is_set():
                self._listing.failed.emit(generation, code, message)
            return
        if not self._closed.is_set():
            self._listing.finished.emit(generation, list(sessions))

    def _connect(self, request: JoinRequest) -> None:
        try:
            client, welcome = connect_client(
                request,
                self.client_factory,
                self.trust_store,
                on_lobby=lambda msg, rec: self._joining.progressed.emit(request, (msg, rec)),
            )
        except Exception as exc:
            code, message = error_code_and_message(exc)
            fingerprint = getattr(exc, "fingerprint", "")
            if code in TRUST_QUESTIONS and fingerprint:
                question = TrustQuestion(
                    code, getattr(exc, "address", ""), fingerprint, getattr(exc, "old", "")
                )
                self._trust.progressed.emit(request, question)
                return
            log.info("join refused: %s %r", code, message)
            self._joining.failed.emit(request, code, message)
            return
        if self._closed.is_set():
            client.leave()
            return
        self._joining.finished.emit(request, (client, welcome))

    # --- actions ------------------------------------------------------------------

    def refresh_sessions(self) -> None:
        """Fetch the server's live sessions on a worker thread."""
        try:
            host, port = parse_address(self.address_edit.currentText())
        except ValueError as exc:
            self.sessions_status.setText(str(exc))
            return
        self._list_generation += 1
        self.sessions_status.setText("Looking for sessions…")
        self._start_worker("login-sessions", self._list_sessions, self._list_generation, host, port)

    def request_from_form(self) -> JoinRequest:
        """The form as a JoinRequest; raises FormError naming the field to fix."""
        try:
            host, port = parse_address(self.address_edit.currentText())
        except ValueError as exc:
            raise FormError(str(exc), self.address_edit) from None
        username = names.clean_display_name(self.username_edit.text(), config.MAX_USERNAME_CHARS)
        if username is None:
            raise FormError(explain_join_error(utils.Err.BAD_USERNAME, ""), self.username_edit)
        session = names.clean_display_name(self.session_edit.text(), config.MAX_SESSION_NAME_CHARS)
        if session is None:
            raise FormError(
                "Pick a session from the list, or type a name for a new one.", self.session_edit
            )
        return JoinRequest(
            host,
            port,
            username,
            session,
            self.password_edit.text(),
            audio=self.mic_check.isChecked(),
            video=self.camera_check.isChecked(),
        )

    def join(self) -> None:
        """Validate the form and connect on a worker thread."""
        if self._connecting:
            return
        try:
            self.request = self.request_from_form()
        except FormError as exc:
            self.show_error(exc.text, exc.widget)
            return
        self._set_busy(True)
        self.error_label.hide()
        self._start_worker("login-connect", self._connect, self.request)

    def show_error(self, text: str, focus: QWidget | None = None) -> None:
        """Show ``text`` (plain) under the form; keep the dialog open."""
        self.error_label.setText(text)
        self.error_label.show()
        if focus is not None:
            focus.setFocus()
            if isinstance(focus, QLineEdit):
                focus.selectAll()

    def _set_busy(self, busy: bool) -> None:
        self._connecting = busy
        self.join_button.setEnabled(not busy)
        self.join_button.setText("Joining…" if busy else "Join")
        for widget in (self.address_edit, self.username_edit, self.session_edit):
            widget.setEnabled(not busy)

    # --- slots ----------------------------------------------------------------------

    def on_servers_found(self, servers: list) -> None:
        known = {self.address_edit.itemText(i) for i in range(self.address_edit.count())}
        text = self.address_edit.currentText()
        for found in servers:
            if getattr(found, "fingerprint", ""):
                address = security.server_address(found.host, found.tcp_port)
                self._announced[address] = found.fingerprint
            if found.address not in known:
                self.address_edit.addItem(icon("server"), found.address)
                self.address_edit.setItemData(
                    self.address_edit.count() - 1, f"{found.name} on the LAN", Qt.ToolTipRole
                )
        self.address_edit.setEditText(text)
        if servers and not text.strip():
            self.address_edit.setCurrentIndex(0)
            self.refresh_sessions()

    def on_sessions_listed(self, generation: int, sessions: list) -> None:
        if generation != self._list_generation:
            return  # an older answer for an address that has changed since
        self.sessions_list.clear()
        for sess in sessions:
            name = str(sess.get("name", ""))
            count = sess.get("participants", 0)
            people = "1 person" if count == 1 else f"{count} people"
            marks = ("    ·    \u25cf Recording" if sess.get("recording") else "") + (
                "    ·    host lets you in" if sess.get("lobby") else ""
            )  # meeting controls (issue 14): told before joining
            item = QListWidgetItem(f"{name}    ·    {people}{marks}")
            item.setData(Qt.UserRole, name)
            if sess.get("locked"):
                item.setIcon(icon("lock"))
                item.setToolTip("Locked: needs a password")
            else:
                item.setIcon(icon("people"))
            self.sessions_list.addItem(item)
        self.sessions_status.setText(
            "No sessions yet: type a name below to start one."
            if not sessions
            else "Pick a session, or type a new name below."
        )

    def on_sessions_failed(self, generation: int, code: str, message: str) -> None:
        if generation != self._list_generation:
            return
        self.sessions_list.clear()
        address = self.address_edit.currentText().strip()
        if code == utils.LocalErr.UNREACHABLE or code == utils.LocalErr.UNEXPECTED:
            self.sessions_status.setText(f"Could not reach {address}: {message}")
        elif code == security.SecErr.FINGERPRINT_UNKNOWN:
            self.sessions_status.setText(
                "A server you have not joined before: its fingerprint is checked when you join."
            )
        else:
            self.sessions_status.setText(explain_join_error(code, message, address=address))

    def _on_session_picked(self) -> None:
        items = self.sessions_list.selectedItems()
        if items:
            self.session_edit.setText(items[0].data(Qt.UserRole))
            self.password_edit.setFocus() if items[0].toolTip() else None

    def on_lobby_waiting(self, request: JoinRequest, info: tuple[str, bool]) -> None:
        """A host must let us in: say so (plain text) and show the Recording mark."""
        message, recording = info
        self.lobby_label.setText(message or "Waiting for the host to let you in.")
        self.lobby_label.show()
        self.lobby_recording.setVisible(bool(recording))
        self.join_button.setText("Waiting for the host\u2026")

    def on_connected(self, request: JoinRequest, joined: tuple[ClientLike, dict]) -> None:
        client, welcome = joined
        self.lobby_label.hide()
        self.lobby_recording.hide()
        self._set_busy(False)
        if self._closed.is_set():
            client.leave()  # the dialog was cancelled while connecting
            return
        self.client = client
        self.welcome = welcome
        assert self.request is not None
        self._save_settings(self.request)
        self.accept()

    def on_connect_failed(self, request: JoinRequest | None, code: str, message: str) -> None:
        self.lobby_label.hide()
        self.lobby_recording.hide()
        self._set_busy(False)
        context = {
            "address": request.address if request else "",
            "username": request.username if request else "",
            "session": request.session if request else "",
        }
        text = explain_join_error(code, message, **context)
        focus: QWidget | None = None
        if code in (utils.Err.USERNAME_TAKEN, utils.Err.BAD_USERNAME):
            focus = self.username_edit
        elif code == utils.Err.WRONG_PASSWORD:
            focus = self.password_edit
        elif code in (utils.Err.SESSION_FULL, utils.Err.BAD_SESSION):
            focus = self.session_edit
        elif code == utils.LocalErr.UNREACHABLE:
            focus = self.address_edit
        self.show_error(text, focus)

    def on_trust_needed(self, request: JoinRequest, question: TrustQuestion) -> None:
        """A join stopped at the trust check: refuse, or ask and (on yes) pin and retry."""
        self._set_busy(False)
        if self._closed.is_set():
            return
        question.announced = self._announced.get(question.address, "")
        if question.announced and not question.matches_announcement:
            # Discovery said one thing, the server presents another: never a question.
            self.on_connect_failed(request, security.SecErr.FINGERPRINT_MISMATCH, "")
            return
        if not self.ask_trust(question):
            self.on_connect_failed(request, question.code, "")
            return
        try:
            self.trust_store.trust(question.address, question.fingerprint)
        except security.SecurityError as exc:
            self.show_error(f"The fingerprint could not be remembered: {exc.message}")
            return
        log.info(
            "trusted %s: %s", question.address, security.short_fingerprint(question.fingerprint)
        )
        self.request = request
        self._set_busy(True)
        self.error_label.hide()
        self._start_worker("login-connect", self._connect, request)

    def _ask_trust(self, question: TrustQuestion) -> bool:
        """The modal question: compare the fingerprint (first use) or accept a changed one."""
        box = QMessageBox(self)
        box.setTextFormat(Qt.PlainText)  # nothing from the network is read as HTML
        box.setText(trust_question_text(question))
        if question.code == security.SecErr.FINGERPRINT_CHANGED:
            box.setIcon(QMessageBox.Warning)
            box.setWindowTitle("The server's identity changed")
            accept = box.addButton("Accept the new fingerprint", QMessageBox.DestructiveRole)
            box.setDefaultButton(box.addButton("Don't join", QMessageBox.RejectRole))
        else:
            box.setIcon(QMessageBox.Question)
            box.setWindowTitle("Check the server's fingerprint")
            accept = box.addButton("They match: trust and join", QMessageBox.AcceptRole)
            box.setDefaultButton(box.addButton("Cancel", QMessageBox.RejectRole))
        box.exec_()
        return box.clickedButton() is accept

    # --- closing --------------------------------------------------------------------

    def done(self, result: int) -> None:
        if result != QDialog.Accepted:
            self._closed.set()
        self._stop.set()
        self.join_workers()
        super().done(result)

    def join_workers(self, timeout_s: float = WORKER_JOIN_TIMEOUT_S) -> None:
        """Wait for the worker threads (each ends within its network timeout)."""
        for thread in self._workers:
            if thread is not threading.current_thread():
                thread.join(timeout_s)
        self._workers = [t for t in self._workers if t.is_alive()]


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)
