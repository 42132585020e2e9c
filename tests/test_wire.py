"""utils.py, the wire: golden bytes, round trips, hostile inputs, properties, reassembly."""

from __future__ import annotations

import re
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import config
import utils
from utils import Datagram, VideoFragment

P = struct.Struct("!II")
TOKEN = "0123456789abcdef0123456789ABCDEF"


# --- golden bytes -------------------------------------------------------------------------


def test_golden_frame():
    assert utils.encode_frame({"type": "ping"}) == (
        b"\x00\x00\x00\x0f\x00\x00\x00\x00" + b'{"type":"ping"}'
    )
    assert utils.encode_frame({"type": "x", "n": 1}, b"\x00\xff") == (
        b"\x00\x00\x00\x12\x00\x00\x00\x02" + b'{"type":"x","n":1}' + b"\x00\xff"
    )
    # Text is UTF-8, not \u escapes.
    assert utils.encode_frame({"type": "é"}) == b"\x00\x00\x00\x0d\x00\x00\x00\x00" + (
        '{"type":"é"}'.encode()
    )


@pytest.mark.parametrize(
    ("built", "golden"),
    [
        (
            utils.pack_media(utils.KIND_REGISTER, 7, 0, 0),  # sealed, it proves the key
            b"h\x02\x00\x07\x00\x00\x00\x00\x00\x00\x00\x00",
        ),
        (
            utils.pack_media(utils.KIND_AUDIO, 3, 1, 2, b"\x01\x02"),
            b"a\x02\x00\x03\x00\x00\x00\x01\x00\x00\x00\x02\x01\x02",
        ),
        (
            # PROTOCOL.md 10.3: sender 3, seq 1000, time_ms 123456, large, keyframe,
            # frame_id 42, fragment 2 of 3 (the last, so it may be short).
            utils.pack_media(
                utils.KIND_VIDEO, 3, 1000, 123456, bytes(VideoFragment(1, True, 42, 2, 3, b"xy"))
            ),
            b"v\x02\x00\x03\x00\x00\x03\xe8\x00\x01\xe2\x40"
            + b"\x01\x01\x00\x00\x00\x2a\x00\x02\x00\x03xy",
        ),
        (
            utils.pack_media(utils.KIND_LEVELS, 0, 9, 0, utils.encode_levels({1: 255, 2: 0})),
            b"l\x02\x00\x00\x00\x00\x00\x09\x00\x00\x00\x00" + b"\x00\x01\xff\x00\x02\x00",
        ),
        (
            bytes(Datagram(utils.KIND_KEEPALIVE, 65535, 2**32 + 5, 2**32 - 1)),
            b"k\x02\xff\xff\x00\x00\x00\x05\xff\xff\xff\xff",  # seq wraps at 2**32
        ),
    ],
    ids=["h", "a", "v", "l", "k"],
)
def test_golden_datagrams(built, golden):
    assert built == golden
    dg = Datagram.parse(golden)
    assert bytes(dg) == golden


def test_levels_clamped_and_token_lowercased():
    assert utils.encode_levels({7: 300, 8: -4}) == b"\x00\x07\xff\x00\x08\x00"


# --- round trips -------------------------------------------------------------------------


def test_frame_round_trip_and_consumed_length():
    a = utils.encode_frame({"type": "chat", "message": "hi ✓", "to": [1, 2]}, b"")
    b = utils.encode_frame({"type": "screen_frame", "seq": 1}, b"\xff\xd8" * 10)
    frame, used = utils.decode_frame(a + b)
    assert frame.header == {"type": "chat", "message": "hi ✓", "to": [1, 2]}
    assert used == len(a)
    frame2, used2 = utils.decode_frame((a + b)[used:])
    assert frame2.type == "screen_frame" and frame2.payload == b"\xff\xd8" * 10
    assert used2 == len(b) and bytes(frame2) == b


def test_frame_reader_reads_exactly_one_frame():
    s1, s2 = socket.socketpair()
    with s1, s2:
        s1.sendall(utils.encode_frame({"type": "upload"}) + b"RAW BYTES")
        reader = utils.FrameReader(s2)
        assert reader.read().header == {"type": "upload"}
        assert utils.recv_exact(s2, 9) == b"RAW BYTES"  # left for the caller


def test_datagram_and_fragment_round_trip():
    data = bytes(range(256)) * 20
    frags = utils.split_vp8_frame("large", 77, True, data)
    assert all(len(f) + utils.MEDIA_HEADER.size + utils.SEAL_OVERHEAD_BYTES <= 1200 for f in frags)
    assert len(frags) == -(-len(data) // utils.VIDEO_SLICE_BYTES)
    parsed = [VideoFragment.parse(f) for f in frags]
    assert [p.frag_index for p in parsed] == list(range(len(frags)))
    assert {(p.frag_count, p.layer, p.keyframe, p.frame_id) for p in parsed} == {(5, 1, True, 77)}
    assert parsed[0].layer_name == "large"
    assert b"".join(p.data for p in parsed) == data
    assert {len(p.data) for p in parsed[:-1]} == {utils.VIDEO_SLICE_BYTES} == {1154}


def test_split_vp8_frame_limits():
    assert len(utils.split_vp8_frame("small", 1, False, b"x")) == 1
    with pytest.raises(ValueError, match="empty"):
        utils.split_vp8_frame("small", 1, False, b"")
    too_big = b"x" * (utils.VIDEO_SLICE_BYTES * config.VIDEO_V2_MAX_FRAGMENTS + 1)
    with pytest.raises(ValueError, match="fragments"):
        utils.split_vp8_frame("small", 1, False, too_big)
    with pytest.raises(KeyError):
        utils.split_vp8_frame("huge", 1, False, b"x")


# --- hostile inputs -----------------------------------------------------------------------

FRAME_HOSTILE = [
    (b"", ValueError, "frame truncated: prefix incomplete"),
    (b"\x00" * 7, ValueError, "frame truncated: prefix incomplete"),
    (P.pack(65537, 0), utils.FrameTooLarge, "header_len 65537 exceeds 65536"),
    (P.pack(0xFFFFFFFF, 0), utils.FrameTooLarge, "header_len 4294967295 exceeds 65536"),
    (P.pack(2, 8 * 2**20 + 1), utils.FrameTooLarge, "payload_len 8388609 exceeds 8388608"),
    (P.pack(15, 0xFFFFFFFF), utils.FrameTooLarge, "payload_len 4294967295 exceeds 8388608"),
    (P.pack(5, 0) + b"ab", ValueError, "frame truncated: body incomplete"),
    (P.pack(2, 0) + b"[]", utils.ProtocolError, "header is not a JSON object"),
    (P.pack(4, 0) + b'"hi"', utils.ProtocolError, "header is not a JSON object"),
    (P.pack(4, 0) + b"null", utils.ProtocolError, "header is not a JSON object"),
    (P.pack(2, 0) + b"{}", utils.ProtocolError, "header has no string 'type'"),
    (P.pack(10, 0) + b'{"type":1}', utils.ProtocolError, "header has no string 'type'"),
    (P.pack(13, 0) + b'{"type":null}', utils.ProtocolError, "header has no string 'type'"),
    (P.pack(0, 0), utils.ProtocolError, "header is not UTF-8 JSON: Expecting value"),
    (P.pack(3, 0) + b"\xff\xfe\xfd", utils.ProtocolError, "header is not UTF-8 JSON: 'utf-8'"),
    (P.pack(9, 0) + b"not json!", utils.ProtocolError, "header is not UTF-8 JSON: Expecting"),
    (P.pack(13, 0) + b'{"type":"x"}x', utils.ProtocolError, "header is not UTF-8 JSON: Extra"),
    (
        P.pack(34, 0) + b'{"type":"chat","message":"\\ud800"}',
        utils.ProtocolError,
        "header holds a lone UTF-16 surrogate",
    ),
    (
        P.pack(65536, 0) + b"[" * 65536,
        utils.ProtocolError,
        "header is not UTF-8 JSON: nested too deeply",
    ),
]


@pytest.mark.parametrize(("data", "exc", "message"), FRAME_HOSTILE)
def test_decode_frame_hostile(data, exc, message):
    with pytest.raises(exc, match="^" + re.escape(message)):
        utils.decode_frame(data)


@pytest.mark.parametrize(("data", "exc", "message"), FRAME_HOSTILE)
def test_frame_reader_hostile(data, exc, message):
    s1, s2 = socket.socketpair()
    with s1, s2:
        s2.settimeout(5)
        # A writer thread: a 64 KiB frame does not fit a socketpair buffer.
        sender = threading.Thread(target=s1.sendall, args=(data,), name="hostile-sender")
        sender.start()
        reader = utils.FrameReader(s2)
        if "truncated" in message:
            sender.join(5)
            s1.shutdown(socket.SHUT_WR)  # then the peer goes away mid-frame
            with pytest.raises(utils.ConnectionClosed, match=r"^peer closed after \d+ of \d+"):
                reader.read()
        else:
            with pytest.raises(exc, match="^" + re.escape(message)):
                reader.read()
        sender.join(5)
        assert not sender.is_alive()


def test_frame_reader_keeps_step_after_a_bad_header():
    s1, s2 = socket.socketpair()
    with s1, s2:
        s1.sendall(P.pack(2, 3) + b"[]abc" + utils.encode_frame({"type": "ping"}))
        reader = utils.FrameReader(s2)
        with pytest.raises(utils.ProtocolError):
            reader.read()
        assert reader.read().header == {"type": "ping"}


def test_frame_reader_custom_limits():
    s1, s2 = socket.socketpair()
    with s1, s2:
        s1.sendall(P.pack(10, 101))
        with pytest.raises(utils.FrameTooLarge, match="^payload_len 101 exceeds 100$"):
            utils.FrameReader(s2, max_header=10, max_payload=100).read()


def _hdr(kind: bytes, ver: int = 2) -> bytes:
    return kind + bytes([ver]) + b"\x00\x01" + b"\x00" * 8


def _vh(layer: int, index: int, count: int) -> bytes:
    return utils.VIDEO_HEADER.pack(layer, 0, 1, index, count)


@pytest.mark.parametrize(
    ("parser", "data", "message"),
    [
        (Datagram.parse, b"", "datagram truncated: 0 bytes < 12"),
        (Datagram.parse, _hdr(b"a")[:11], "datagram truncated: 11 bytes < 12"),
        (Datagram.parse, _hdr(b"a", ver=1), "datagram version 1 is not 2"),
        (Datagram.parse, _hdr(b"a", ver=0), "datagram version 0 is not 2"),
        (Datagram.parse, _hdr(b"z"), "unknown datagram kind 122"),
        (Datagram.parse, _hdr(b"\x00"), "unknown datagram kind 0"),
        (VideoFragment.parse, b"", "video fragment truncated: 0 bytes"),
        (VideoFragment.parse, b"\x00" * 9, "video fragment truncated: 9 bytes"),
        (VideoFragment.parse, _vh(2, 0, 1) + b"x", "video layer 2 is unknown"),
        (VideoFragment.parse, _vh(0, 0, 0) + b"x", "video fragment 0 of 0 is impossible"),
        (VideoFragment.parse, _vh(0, 3, 3) + b"x", "video fragment 3 of 3 is impossible"),
        (VideoFragment.parse, _vh(0, 0, 1025) + b"x", "video fragment 0 of 1025 is impossible"),
        (VideoFragment.parse, _vh(0, 0, 1), "video fragment has no data"),
        (VideoFragment.parse, _vh(0, 0, 1) + b"x" * 1179, "video fragment of 1179 bytes"),
        (VideoFragment.parse, _vh(0, 0, 2) + b"x" * 10, "video fragment 0 of 2 is 10 bytes"),
        (utils.parse_levels, b"\x00" * 4, "levels payload of 4 bytes is not a multiple of 3"),
        (utils.parse_levels, b"\x00", "levels payload of 1 bytes is not a multiple of 3"),
    ],
)
def test_datagram_parsers_hostile(parser, data, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parser(data)


def test_empty_levels_and_minimal_datagram_are_valid():
    assert utils.parse_levels(b"") == {}
    dg = Datagram.parse(_hdr(b"k"))
    assert (dg.kind, dg.sender, dg.seq, dg.time_ms, dg.payload) == (ord("k"), 1, 0, 0, b"")


# --- properties ---------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
headers = st.builds(
    lambda t, rest: {**rest, "type": t},
    st.text(min_size=1, max_size=20),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(headers, st.binary(max_size=2000))
def test_property_frame_round_trip(header, payload):
    data = utils.encode_frame(header, payload)
    frame, used = utils.decode_frame(data + b"trailing")
    assert frame.header == header and frame.payload == payload and used == len(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_property_decode_frame_only_value_errors(data):
    try:
        frame, used = utils.decode_frame(data)
    except ValueError:
        return
    assert isinstance(frame.header, dict) and isinstance(frame.type, str)
    assert 8 <= used <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=8, max_size=300), st.integers(0, 2**32 - 1), st.integers(0, 300))
def test_property_decode_frame_with_plausible_prefix(body, header_len, payload_len):
    data = P.pack(header_len, payload_len) + body
    try:
        utils.decode_frame(data)
    except ValueError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_property_datagram_parse_only_value_errors_and_round_trips(data):
    try:
        dg = Datagram.parse(data)
    except ValueError:
        return
    assert bytes(dg) == data
    for parser in (VideoFragment.parse, utils.parse_levels):
        try:
            parser(dg.payload)
        except ValueError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(utils.KINDS)),
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=100),
)
def test_property_datagram_round_trip(kind, sender, seq, time_ms, payload):
    data = utils.pack_media(kind, sender, seq, time_ms, payload)
    assert Datagram.parse(data) == Datagram(kind, sender, seq, time_ms, payload)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 65535), st.integers(0, 255), max_size=60))
def test_property_levels_round_trip(levels):
    assert utils.parse_levels(utils.encode_levels(levels)) == levels


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=8000),
    st.sampled_from(["small", "large"]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_property_split_and_parse(data, layer, key, frame_id):
    frags = [VideoFragment.parse(f) for f in utils.split_vp8_frame(layer, frame_id, key, data)]
    assert b"".join(f.data for f in frags) == data
    assert {(f.layer_name, f.keyframe, f.frame_id) for f in frags} == {(layer, key, frame_id)}


# --- server frames checked by the client ----------------------------------------------------

WELCOME = {
    "type": "welcome",
    "you": {"id": 3, "username": "Alice"},
    "token": TOKEN,
    "session": "Team",
    "participants": [{"id": 1, "username": "Bob", "audio": True, "video": False}],
    "presenter": None,
    "files": [{"id": "f1", "name": "a.txt", "size": 3, "sha256": "ab", "owner": 1}],
    "chat": [],
    "media": {
        "udp_port": 5001,
        "key": "00" * 32,
        "cipher": "aes-256-gcm",
        "audio": {"rate": 22050},
        "video": {"fps": 15},
    },
}
MEDIA = WELCOME["media"]

GOOD_SERVER_FRAMES = [
    WELCOME,
    {"type": "sessions", "sessions": [{"name": "T", "participants": 2, "locked": False}]},
    {"type": "participant_joined", "participant": {"id": 2, "username": "B", "extra": 1}},
    {"type": "participant_left", "id": 2, "username": "B"},
    {"type": "presenter_changed", "presenter": None},
    {"type": "presenter_changed", "presenter": 4},
    {"type": "screen_frame", "from": 1, "seq": 1, "width": 8, "height": 8, "keyframe": True},
    {"type": "file_removed", "file_id": "f1"},
    {"type": "pong", "t": 1.5},
    {"type": "pong"},
    {"type": "error", "code": "presenter_busy", "message": "x", "re": "present_start"},
    {"type": "error", "code": "unsupported_protocol", "supported": [2]},
    {"type": "keyframe_request", "layer": "small"},
    {"type": "video_layers", "large": True},
    {"type": "bitrate", "layer": "large", "bps": 455000},
    {"type": "download_start", "file_id": "f1", "size": 3, "sha256": "ab", "offset": 0},
]


@pytest.mark.parametrize("header", GOOD_SERVER_FRAMES, ids=lambda h: h["type"])
def test_good_server_frames_pass(header):
    utils.validate_server_message(header)


BAD_SERVER_FRAMES = [
    ({**WELCOME, "you": None}, "welcome: field 'you' must be an object"),
    (
        {**WELCOME, "you": {"id": "3", "username": "A"}},
        "field 'you' is wrong: field 'id' must be int",
    ),
    ({**WELCOME, "token": 7}, "welcome: field 'token' must be str"),
    ({k: v for k, v in WELCOME.items() if k != "media"}, "welcome: missing field 'media'"),
    ({**WELCOME, "media": {**MEDIA, "udp_port": 0}}, "field 'udp_port' must be a port (1-65535)"),
    ({**WELCOME, "media": {**MEDIA, "udp_port": 70000}}, "field 'udp_port' must be a port"),
    ({**WELCOME, "media": {**MEDIA, "audio": {"rate": "fast"}}}, "'rate' must be int"),
    ({**WELCOME, "participants": [{"id": 1}, {"id": True}]}, "'participants' item 1 is wrong"),
    ({**WELCOME, "participants": {"id": 1}}, "field 'participants' must be a list"),
    ({**WELCOME, "files": [{"name": "x"}]}, "'files' item 0 is wrong: missing field 'id'"),
    ({**WELCOME, "presenter": "me"}, "field 'presenter' must be int or null"),
    ({"type": "sessions", "sessions": [{"name": "T"}]}, "missing field 'participants'"),
    ({"type": "sessions", "sessions": None}, "field 'sessions' must be a list"),
    ({"type": "participant_joined", "participant": [1]}, "'participant' must be an object"),
    ({"type": "participant_updated", "participant": {"id": 1.5}}, "field 'id' must be int"),
    ({"type": "participant_updated", "participant": {"id": 1, "audio": 1}}, "'audio' must be bool"),
    ({"type": "participant_left"}, "participant_left: missing field 'id'"),
    ({"type": "presenter_changed"}, "presenter_changed: missing field 'presenter'"),
    ({"type": "screen_frame", "seq": 1, "width": 8, "height": 8}, "missing field 'from'"),
    ({"type": "file_added", "file": {"id": 5}}, "field 'id' must be str"),
    ({"type": "file_removed", "file_id": None}, "field 'file_id' must be str"),
    ({"type": "upload_ready"}, "upload_ready: missing field 'file_id'"),
    ({"type": "upload_done", "file_id": "f1"}, "upload_done: missing field 'sha256'"),
    ({"type": "download_start", "file_id": "f1", "size": "3", "sha256": "x"}, "'size' must be int"),
    ({"type": "pong", "t": "now"}, "pong: field 't' must be number"),
    ({"type": "pong", "t": True}, "pong: field 't' must be number"),
    ({"type": "error", "message": "no code"}, "error: missing field 'code'"),
    ({"type": "error", "code": 404}, "error: field 'code' must be str"),
    ({"type": "error", "code": "x", "re": ["chat"]}, "error: field 're' must be str"),
    ({"type": "error", "code": "x", "ids": [1, "2"]}, "'ids' item 1 must be int"),
]


@pytest.mark.parametrize(("header", "message"), BAD_SERVER_FRAMES)
def test_bad_server_frames_are_rejected(header, message):
    with pytest.raises(utils.ProtocolError, match=re.escape(message)) as info:
        utils.validate_server_message(header)
    assert info.value.code == utils.Err.BAD_MESSAGE


def test_unknown_server_frame_type_is_its_own_code():
    with pytest.raises(utils.ProtocolError, match="unknown message type 'raise_hand'") as info:
        utils.validate_server_message({"type": "raise_hand"})
    assert info.value.code == utils.Err.UNKNOWN_TYPE


def test_client_fields_messages_unchanged():
    with pytest.raises(utils.ProtocolError, match=r"^hello: missing field 'username'$"):
        utils.validate_client_message(
            {"type": "hello", "protocol": config.PROTOCOL_VERSION, "session": "s"}
        )
    with pytest.raises(utils.ProtocolError, match=r"^media: field 'video' must be bool$"):
        utils.validate_client_message({"type": "media", "audio": True, "video": 1})


# --- handler tables -------------------------------------------------------------------------

FIELDS = {"a": utils.Fields({}, {}), "b": utils.Fields({}, {}), "c": utils.Fields({}, {})}


def test_handler_tables_that_cover_every_type_once_pass():
    utils.check_handlers("t", FIELDS, {"a": 1, "b": 2}, {"c": 3})


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            ({"a": 1, "b": 2},),
            r"no handler for \['c'\], two handlers for \[\], not in the table \[\]",
        ),
        (({"a": 1, "b": 2, "c": 3}, {"c": 4}), r"two handlers for \['c'\]"),
        (({"a": 1, "b": 2, "c": 3, "raise_hand": 4},), r"not in the table \['raise_hand'\]"),
    ],
    ids=["missing", "twice", "unknown"],
)
def test_handler_table_mismatches_are_detected(tables, message):
    with pytest.raises(RuntimeError, match=message):
        utils.check_handlers("where", FIELDS, *tables)


def test_client_and_server_handler_tables_match_the_field_tables():
    import client
    import server

    utils.check_handlers("client", utils.SERVER_FIELDS, client._HANDLERS, client._HANDLED_ELSEWHERE)
    assert set(client._HANDLERS) <= set(utils.SERVER_FIELDS)
    server_tables = (server.FIRST_FRAME_HANDLERS, server.CONTROL_HANDLERS)
    utils.check_handlers("server", utils.CLIENT_FIELDS, *server_tables)


def test_a_handler_table_missing_a_type_fails_at_import(monkeypatch):
    """Importing client.py with a server message type it does not handle raises."""
    import importlib
    import sys

    monkeypatch.setitem(utils.SERVER_FIELDS, "raise_hand", utils.Fields({}, {}))
    monkeypatch.delitem(sys.modules, "client")
    with pytest.raises(RuntimeError, match=r"client.py: .*no handler for \['raise_hand'\]"):
        importlib.import_module("client")


# --- one error family -----------------------------------------------------------------------


def test_every_error_is_a_fusion_error_with_code_and_message():
    import client
    import file_sharing_module
    import file_store

    cases = [
        (client.JoinError(utils.LocalErr.UNREACHABLE, "no"), utils.LocalErr.UNREACHABLE, "no"),
        (client.RequestError(utils.Err.TIMEOUT, "late"), utils.Err.TIMEOUT, "late"),
        (client.NotConnected(), utils.LocalErr.NOT_CONNECTED, "not connected to a server"),
        (file_sharing_module.TransferError(utils.LocalErr.BUSY, "b"), utils.LocalErr.BUSY, "b"),
        (file_store.FileStoreError(utils.Err.NOT_OWNER), utils.Err.NOT_OWNER, None),
        (utils.ProtocolError("bad"), utils.Err.BAD_MESSAGE, "bad"),
        (utils.FrameTooLarge("big"), utils.Err.FRAME_TOO_LARGE, "big"),
    ]
    for exc, code, message in cases:
        assert isinstance(exc, utils.FusionError)
        assert exc.code == code
        assert exc.message == (message or utils.ERROR_TEXT[code])
    assert isinstance(client.NotConnected(), ConnectionError)
    assert isinstance(utils.ProtocolError("x"), ValueError)
    assert str(client.JoinError("bad_session", "Nope.")) == "bad_session: Nope."
    assert str(file_sharing_module.TransferError("busy", "Busy.")) == "Busy."


def test_local_codes_are_distinct_from_protocol_codes():
    local = {v for k, v in vars(utils.LocalErr).items() if k.isupper()}
    wire = {v for k, v in vars(utils.Err).items() if k.isupper()}
    assert len(local) == len([k for k in vars(utils.LocalErr) if k.isupper()])
    assert not local & wire
