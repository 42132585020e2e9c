"""Issue 13, fair limits end to end: each test is one row of the issue's table.

Every test connects real sockets to a real server. The "hostile" side connects from
127.0.0.1 and the real user from 127.0.0.2 (another loopback address, so another
"address" for the per-address limits). Caps that would take minutes at their
defaults (the 10 s first-frame limit) are set lower through ``ServerConfig``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import config
import security
import utils
from client import ConferenceClient, JoinError
from tests.conftest import ROOT
from tests.helpers import CuttingProxy, Raw, wait_for
from utils import Err, Msg

HOST = "127.0.0.1"
OTHER = "127.0.0.2"  # the real user's address
WAIT_S = 10.0
FOUR_BYTE = "\U0001f600"  # one character, four UTF-8 bytes


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (what a hostile client trickles)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def hello(username: str, session: str = "Room") -> dict[str, Any]:
    return {
        "type": Msg.HELLO,
        "protocol": config.PROTOCOL_VERSION,
        "username": username,
        "session": session,
    }


def join(port: int, username: str, session: str = "Room", source: str = HOST) -> Raw:
    c = Raw(port, source)
    c.send(hello(username, session))
    frame = c.read()
    assert frame.type == Msg.WELCOME, frame.header
    assert frame.header.get("history_frames", 0) == 0
    return c


def no_chat_limit(cfg: config.ServerConfig) -> config.ServerConfig:
    cfg.chat_burst_messages = cfg.chat_burst_bytes = 10**9
    return cfg


# --- the join never fails because of history ------------------------------------------


def fill_worst_case(port: int) -> tuple[Raw, list[str]]:
    """500 messages of 4,000 four-byte characters (~8 MB of history): sender, texts."""
    filler = join(port, "Filler", "Big")
    texts = []
    for i in range(config.CHAT_HISTORY_MESSAGES):
        text = f"{i:04d}" + FOUR_BYTE * (config.MAX_CHAT_CHARS - 4)
        texts.append(text)
        filler.send({"type": Msg.CHAT, "message": text})
    for _ in texts:
        filler.expect(Msg.CHAT)
    return filler, texts  # the session lives while the filler stays


@pytest.mark.parametrize("server_config", [{}], indirect=True)
def test_worst_case_history_join_raw_client(server_config):
    from server import ConferenceServer

    srv = ConferenceServer(no_chat_limit(server_config))
    srv.start()
    try:
        _filler, texts = fill_worst_case(srv.tcp_port)
        c = Raw(srv.tcp_port)
        c.send(hello("Late", "Big"))
        welcome = c.read().header
        assert welcome["type"] == Msg.WELCOME
        n = welcome["history_frames"]
        assert n > 100  # ~8 MB does not fit one header
        chat = list(welcome["chat"])
        for part in range(1, n + 1):
            frame = c.read()
            assert frame.type == Msg.HISTORY
            assert frame.header["part"] == part and frame.header["parts"] == n
            assert len(utils.dump_json(frame.header)) <= config.MAX_HEADER_BYTES
            chat += frame.header.get("chat", [])
        assert sorted(m["message"] for m in chat) == texts
    finally:
        srv.stop()


@pytest.mark.parametrize("server_config", [{}], indirect=True)
def test_worst_case_history_join_client_and_headless(server_config):
    from server import ConferenceServer

    srv = ConferenceServer(no_chat_limit(server_config))
    srv.start()
    try:
        _filler, texts = fill_worst_case(srv.tcp_port)
        cl = ConferenceClient(HOST, srv.tcp_port, expected_fingerprint=srv.fingerprint)
        try:
            welcome = cl.connect("Fresh", "Big", audio=False, video=False)
            assert [m["message"] for m in welcome["chat"]] == texts
            assert [m["message"] for m in cl.chat.messages()] == texts
            assert {p["username"] for p in cl.participants.values()} >= {"Filler"}
        finally:
            cl.leave()
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "client.py"),
                "--headless",
                *("--server", f"{HOST}:{srv.tcp_port}", "--name", "Bot", "--session", "Big"),
                *("--fingerprint", security.short_fingerprint(srv.fingerprint)),
                *("--duration", "0.5"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "joined 'Big' as 'Bot'" in proc.stderr
    finally:
        srv.stop()


# --- a whole first frame within the limit, connections per address --------------------


def trickle(conns: list[Raw], stop: threading.Event, every_s: float) -> None:
    """One byte of a ClientHello on each connection every ``every_s`` (the issue's attack)."""
    hello_bytes = client_hello()
    for i in range(len(hello_bytes)):
        if stop.wait(every_s):
            return
        for c in conns:
            try:
                c.sock.send(hello_bytes[i : i + 1])
            except OSError:
                pass


@pytest.mark.parametrize(
    "server_config",
    [{"first_frame_timeout_s": 1.0, "max_connections": 20, "max_connections_per_address": 16}],
    indirect=True,
)
def test_trickle_is_cut_and_a_real_user_is_served_with_the_right_reason(server):
    port = server.tcp_port
    hostile = [Raw(port, tls=False) for _ in range(16)]
    stop = threading.Event()
    t = threading.Thread(target=trickle, args=(hostile, stop, 0.25), name="trickle")
    t.start()
    try:
        extra = Raw(port, tls=False)  # the same address, over its share: not "server full"
        h = extra.expect_error(Err.TOO_MANY_CONNECTIONS)
        assert h["limit"] == 16
        others = [Raw(port, "127.0.0.3", tls=False) for _ in range(4)]  # the server is full now
        user = Raw(port, OTHER, tls=False)
        h = user.expect_error(Err.SERVER_FULL)
        assert h["reason"] == "connections" and h["limit"] == 20
        assert "connections" in h["message"]
        started = time.monotonic()
        # Each byte used to restart the 10 s wait; now the whole frame has 1 s.
        for c in hostile + others:
            assert c.closed()
        assert time.monotonic() - started < 3.0
        wait_for(lambda: server._conns.__len__() == 0, what="every trickle connection closed")
        join(port, "Real user", source=OTHER)
    finally:
        stop.set()
        t.join(5)


@pytest.mark.parametrize("server_config", [{"unjoined_connection_max_s": 1.0}], indirect=True)
def test_query_connection_must_join_in_time(server):
    q = Raw(server.tcp_port)
    started = time.monotonic()
    with pytest.raises((utils.ConnectionClosed, ConnectionResetError, BrokenPipeError)):
        for _ in range(1000):  # list_sessions every 0.1 s keeps no slot for ever
            q.send({"type": Msg.LIST_SESSIONS})
            frame = q.read()
            if frame.type == Msg.ERROR:
                assert frame.header["code"] == Err.TIMEOUT
                continue
            assert frame.type == Msg.SESSIONS
            time.sleep(0.1)  # the hostile pace, not a synchronisation
    assert time.monotonic() - started < 5.0


# --- sessions created per address -------------------------------------------------------


def test_session_creation_flood_leaves_room_for_a_real_meeting(server):
    port = server.tcp_port
    made = 0
    refused = None
    for i in range(200):
        c = Raw(port)
        c.send(hello("Bot", f"Spam {i}"))
        frame = c.read()
        c.close()
        if frame.type == Msg.ERROR:
            refused = frame.header
            break
        made += 1
    assert made == config.MAX_SESSIONS_CREATED_PER_ADDRESS
    assert refused is not None and refused["code"] == Err.TOO_MANY_SESSIONS
    assert refused["re"] == Msg.HELLO and refused["window_s"] == config.SESSION_CREATE_WINDOW_S
    assert 0 < refused["retry_after_s"] <= config.SESSION_CREATE_WINDOW_S
    host = join(port, "Host", "Real meeting", source=OTHER)  # another address creates freely
    join(port, "Bot2", "Real meeting")  # joining an existing session is no creation
    host.close()


@pytest.mark.parametrize("server_config", [{"max_sessions": 2}], indirect=True)
def test_server_full_names_the_sessions_limit(server):
    kept = [join(server.tcp_port, "A", "One"), join(server.tcp_port, "B", "Two", source=OTHER)]
    c = Raw(server.tcp_port, "127.0.0.3")
    c.send(hello("C", "Three"))
    h = c.expect_error(Err.SERVER_FULL)
    assert h["reason"] == "sessions" and h["limit"] == 2 and "sessions" in h["message"]
    assert len(kept) == 2


# --- file offers ------------------------------------------------------------------------


def offer(c: Raw, size: int, name: str = "big.iso") -> dict[str, Any]:
    c.send({"type": Msg.FILE_OFFER, "name": name, "size": size})
    for _ in range(100):
        frame = c.read()
        if frame.type in (Msg.UPLOAD_READY, Msg.ERROR):
            return frame.header
    raise AssertionError("no answer to file_offer")


def test_offer_flood_does_not_stop_a_real_upload(server):
    port = server.tcp_port
    size = 500 * 1000 * 1000
    flooders = [join(port, f"Flood{i}", "Flood") for i in range(8)]
    answers = [offer(flooders[i % 8], size) for i in range(151)]
    ready = [a for a in answers if a["type"] == Msg.UPLOAD_READY]
    refused = [a for a in answers if a["type"] == Msg.ERROR]
    assert {a["code"] for a in refused} <= {Err.TOO_MANY_OFFERS, Err.QUOTA_EXCEEDED}
    assert {a["scope"] for a in refused} >= {"address"}
    reserved = len(ready) * size
    assert reserved <= config.MAX_RESERVED_BYTES_PER_ADDRESS
    assert len(ready) <= config.MAX_OPEN_OFFERS_PER_ADDRESS
    # A real user in another session, from another address, uploads at once.
    user = Raw(port, OTHER)
    user.send(hello("Real", "Work"))
    welcome = user.read().header
    data = b"real work" * 1000
    ok = offer(user, len(data), "notes.txt")
    assert ok["type"] == Msg.UPLOAD_READY, ok
    up = Raw(port, OTHER)
    up.send({"type": Msg.UPLOAD, "file_id": ok["file_id"], "token": welcome["token"]})
    up.sock.sendall(data)
    assert up.expect(Msg.UPLOAD_DONE).header["file_id"] == ok["file_id"]
    assert user.expect(Msg.FILE_ADDED).header["file"]["size"] == len(data)


@pytest.mark.parametrize(
    "server_config",
    [{"file_offer_start_timeout_s": 0.5, "file_idle_timeout_s": 0.5}],
    indirect=True,
)
def test_an_offer_that_never_starts_or_stalls_releases_its_reservation(server):
    c = join(server.tcp_port, "A")
    n = config.MAX_OPEN_OFFERS_PER_PARTICIPANT
    for _ in range(n):
        assert offer(c, 10)["type"] == Msg.UPLOAD_READY
    assert offer(c, 10)["code"] == Err.TOO_MANY_OFFERS
    wait_for(lambda: offer(c, 10)["type"] == Msg.UPLOAD_READY, what="expired offers released")


# --- chat -------------------------------------------------------------------------------


def test_chat_flood_is_rate_limited_and_others_chat_still_arrives(server):
    port = server.tcp_port
    flooder = join(port, "Flooder")
    bob = join(port, "Bob")
    carol = join(port, "Carol")
    text = "x" * 3980
    refusals = [0]
    echoes = [0]
    errors: list[dict[str, Any]] = []
    done = threading.Event()

    def drain() -> None:  # the flooder reads its answers, as a client does
        try:
            while not done.is_set():
                frame = flooder.read()
                if frame.type == Msg.ERROR:
                    errors.append(frame.header)
                    refusals[0] += 1
                elif frame.type == Msg.CHAT and frame.header["username"] == "Flooder":
                    echoes[0] += 1
        except (OSError, utils.ConnectionClosed):
            pass

    reader = threading.Thread(target=drain, name="flood-drain")
    reader.start()
    started = time.monotonic()
    sent = 2000
    for _ in range(sent):
        flooder.send({"type": Msg.CHAT, "message": text})
    bob.send({"type": Msg.CHAT, "message": "still here"})
    seen = 0
    while True:
        frame = carol.read()
        if frame.type != Msg.CHAT:
            continue
        if frame.header["message"] == "still here":
            break
        seen += 1
    wait_for(lambda: refusals[0] + echoes[0] == sent, what="every flood message answered")
    elapsed = time.monotonic() - started
    done.set()
    flooder.send({"type": Msg.PING, "t": 1})  # the flooder's connection still works
    reader.join(WAIT_S)
    burst = config.CHAT_BURST_BYTES // len(text) + 1
    assert refusals[0] > sent // 2
    assert {(h["code"], h["re"]) for h in errors} == {(Err.RATE_LIMITED, Msg.CHAT)}
    assert all(h["retry_after_s"] >= 0 for h in errors)
    assert echoes[0] <= burst + config.CHAT_RATE_BYTES_PER_S * elapsed / len(text) + 1
    assert seen <= echoes[0]


def test_rtl_override_and_invisibles_are_stripped_from_chat(server):
    a = join(server.tcp_port, "Alice")
    b = join(server.tcp_port, "Bob")
    a.send({"type": Msg.CHAT, "message": "invoice\u202egpj.exe\u200b"})
    assert b.expect(Msg.CHAT).header["message"] == "invoicegpj.exe"
    a.send({"type": Msg.CHAT, "message": "שלום \U0001f44b\u200d"})  # RTL letters, ZWJ kept
    assert b.expect(Msg.CHAT).header["message"] == "שלום \U0001f44b\u200d"


def test_chat_cid_is_delivered_once(server):
    a = join(server.tcp_port, "Alice")
    b = join(server.tcp_port, "Bob")
    a.send({"type": Msg.CHAT, "message": "once", "cid": "ab12-1"})
    echo = a.expect(Msg.CHAT).header
    assert echo["cid"] == "ab12-1"
    first = b.expect(Msg.CHAT).header
    assert "cid" not in first
    a.send({"type": Msg.CHAT, "message": "once", "cid": "ab12-1"})  # resent after a cut
    ack = a.expect(Msg.CHAT_ACK).header
    assert ack == {"type": Msg.CHAT_ACK, "cid": "ab12-1", "seq": echo["seq"]}
    a.send({"type": Msg.CHAT, "message": "next", "cid": "ab12-2"})
    assert b.expect(Msg.CHAT).header["message"] == "next"  # not a second "once"
    a.send({"type": Msg.CHAT, "message": "bad", "cid": "no spaces"})
    assert a.expect_error(Err.BAD_MESSAGE)["re"] == Msg.CHAT


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["\u0410lice", "ALICE", "\U0001d538\U0001d55d\U0001d55a\U0001d554\U0001d556", "ａｌｉｃｅ"],
)
def test_lookalike_names_are_refused_with_the_name_they_look_like(server, name):
    alice = join(server.tcp_port, "Alice")
    c = Raw(server.tcp_port, OTHER)
    c.send(hello(name))
    h = c.expect_error(Err.USERNAME_TAKEN)
    assert h["like"] == "Alice"
    if name.casefold() == "alice":  # the same name in other case: simply taken
        assert h["message"] == utils.ERROR_TEXT[Err.USERNAME_TAKEN]
    else:
        assert "looks like Alice" in h["message"]
    join(server.tcp_port, "Alicia", source=OTHER)  # a different name is fine
    alice.close()


def test_client_and_join_dialog_say_plainly_who_a_name_looks_like(server):
    from login_dialog import explain_join_error

    alice = join(server.tcp_port, "Alice")
    cl = ConferenceClient(HOST, server.tcp_port, expected_fingerprint=server.fingerprint)
    with pytest.raises(JoinError) as info:
        cl.connect("\u0410lice", "Room", audio=False, video=False)
    assert info.value.code == Err.USERNAME_TAKEN
    text = explain_join_error(info.value.code, info.value.message, username="\u0410lice")
    assert "looks like Alice" in text
    alice.close()


def test_version_1_hello_gets_unsupported_protocol(server):
    c = Raw(server.tcp_port)
    c.send(hello("Old") | {"protocol": 1})
    h = c.expect_error(Err.UNSUPPORTED_PROTOCOL)
    assert h["supported"] == [2]
    assert h["message"] == "This server speaks FusionMeet protocol 2; update FusionMeet."
    assert c.closed()


@pytest.mark.parametrize("server_config", [{}], indirect=True)
def test_worst_case_history_join_gui(server_config, qtbot, tmp_path):
    pytest.importorskip("PyQt5")
    from server import ConferenceServer
    from tests.test_gui import _open_window

    srv = ConferenceServer(no_chat_limit(server_config))
    srv.start()
    cl = ConferenceClient(HOST, srv.tcp_port, expected_fingerprint=srv.fingerprint)
    try:
        _filler, texts = fill_worst_case(srv.tcp_port)
        cl.connect("Viewer", "Big", audio=False, video=False)  # what the login dialog calls
        window = _open_window(qtbot, cl, tmp_path)
        qtbot.waitUntil(lambda: window.chat_panel.last_seq == len(texts), timeout=20_000)
        assert texts[-1][:4] in window.chat_panel.view.toPlainText()
        window.close()
    finally:
        cl.leave()
        srv.stop()


# --- uploads resume ---------------------------------------------------------------------


def test_cut_upload_resumes_from_the_servers_offset(make_client, server, tmp_path):
    from types import SimpleNamespace

    import file_sharing_module as fsm
    from tests.helpers import make_file

    alice = make_client("Alice", audio=False, video=False)
    bob = make_client("Bob", audio=False, video=False)
    added: list[dict] = []
    bob.on("file_added", added.append)
    src = tmp_path / "big.bin"
    sha = make_file(src, 8 * 1024 * 1024)
    cutter = CuttingProxy(server.tcp_port, cut_bytes=3 * 1024 * 1024, direction="up")
    try:
        via_cutter = SimpleNamespace(
            host=HOST,
            tcp_port=cutter.port,
            token=alice.token,
            offer_file=alice.offer_file,
            server_fingerprint=alice.server_fingerprint,
        )
        up = fsm.upload(via_cutter, src)
        assert up.wait(WAIT_S * 3) and up.ok, up.error
        assert cutter.connections == 2
        assert 0 < up.start_offset <= 3 * 1024 * 1024  # the second connection resumed
        assert up.sha256 == sha
        wait_for(lambda: added, what="file_added for the resumed upload")
        assert added[0]["sha256"] == sha and added[0]["size"] == 8 * 1024 * 1024
    finally:
        cutter.close()


def test_gui_says_plainly_when_chat_is_rate_limited(server, make_client, qtbot, tmp_path):
    pytest.importorskip("PyQt5")
    from tests.test_gui import _open_window

    alice = make_client("Alice", audio=False, video=False)
    window = _open_window(qtbot, alice, tmp_path)
    try:
        for i in range(config.CHAT_BURST_MESSAGES + 5):
            window.send_chat(f"quick {i}", None)
        expected = utils.ERROR_TEXT[Err.RATE_LIMITED]
        qtbot.waitUntil(lambda: window.last_notice == expected, timeout=10_000)
        assert window.toast.isVisible()
        # The refused text is back in the input, to be sent again: nothing typed is lost.
        qtbot.waitUntil(lambda: window.chat_panel.input.text().startswith("quick "))
    finally:
        window.close()


def test_512_trickling_connections_at_the_defaults_leave_a_real_user_served(server):
    port = server.tcp_port
    held, refused = [], 0
    for _ in range(512):  # the attack, from one address, at the default limits
        c = Raw(port, tls=False)
        held.append(c)
        try:
            c.sock.send(b"\x16")  # the first byte of a ClientHello that never completes
        except OSError:
            pass  # already refused and closed by the server
    for c in held:
        c.sock.settimeout(0.05)
        try:
            frame = c.read()
        except (TimeoutError, utils.ConnectionClosed, ConnectionResetError):
            continue
        assert frame.header["code"] == Err.TOO_MANY_CONNECTIONS, frame.header
        refused += 1
    assert refused == 512 - config.MAX_CONNECTIONS_PER_ADDRESS
    user = join(port, "Real user", source=OTHER)  # served at once, not after 10 s
    user.close()
    for c in held:
        c.close()


def test_server_flags_set_the_per_address_limits(tmp_path):
    import server_cli

    args = server_cli.build_parser().parse_args(
        ["--max-connections-per-address", "64", "--max-sessions-per-address", "20"]
    )
    assert (args.max_connections_per_address, args.max_sessions_per_address) == (64, 20)
    bad = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--max-connections-per-address", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "per-address must be >= 1" in bad.stderr


@pytest.mark.parametrize("server_config", [{"max_connections_per_address": 2}], indirect=True)
def test_client_refused_at_accept_is_told_the_real_reason(server):
    held = [Raw(server.tcp_port), Raw(server.tcp_port)]  # this address's share, in use
    cl = ConferenceClient(HOST, server.tcp_port, expected_fingerprint=server.fingerprint)
    with pytest.raises(JoinError) as info:
        cl.connect("Third", "Room", audio=False, video=False)
    assert info.value.code == Err.TOO_MANY_CONNECTIONS
    assert info.value.message == utils.ERROR_TEXT[Err.TOO_MANY_CONNECTIONS]
    for c in held:
        c.close()
