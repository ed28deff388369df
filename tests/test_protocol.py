"""The wire format with no sockets: frames in and out, field checks, error replies.

In the manner of h11's ``tests/test_io.py``: every frame is round-tripped, fed one
byte at a time and followed by trailing data, and malformed input raises
ProtocolError (or ConnectionLost for a stream that ends inside a frame).
"""
from __future__ import annotations

import io
import json
import struct
from typing import Any

import pytest

from ftpserver import errors
from ftpserver.errors import ConnectionLost, FTPError, ProtocolError, error_for_code
from ftpserver.protocol import (MAX_HEADER, bool_field, check_reply, decode_header, encode_frame,
                                error_reply, int_field, ok_reply, parse_frame, read_frame,
                                text_field)

HEADERS: list[dict[str, Any]] = [
    {},
    {"cmd": "ls"},
    {"cmd": "ls", "path": ""},
    {"cmd": "put", "filename": "t.bin", "filesize": 0},
    {"cmd": "put", "filename": "a/b c.txt", "filesize": 2**40, "resume": True,
     "source": "12-345-678", "restart": False, "md5": "d41d8cd98f00b204e9800998ecf8427e"},
    {"cmd": "get", "filename": "年度 报告.txt", "offset": 5, "source": None},
    {"cmd": "mv", "path": "café/naïve", "to": "😀 emoji"},
    {"ok": True, "entries": [{"name": "x", "type": "file", "size": 1, "mtime": 1.5}], "more": False},
    {"ok": False, "error": "not_found", "message": "No such file or folder: /x"},
    {"nested": {"list": [1, 2.5, None, True, "s"]}, "quote": "\"\\\n\t"},
]


def frame_of(payload: bytes, length: int | None = None) -> bytes:
    """A raw frame: ``<I`` length (that of ``payload`` unless given) then ``payload``."""
    return struct.pack("<I", len(payload) if length is None else length) + payload


def feed_one_byte_at_a_time(data: bytes) -> tuple[dict[str, Any], int, int]:
    """Grow a buffer byte by byte until parse_frame yields; return (header, consumed, fed)."""
    buffer = bytearray()
    for fed, byte in enumerate(data, start=1):
        buffer.append(byte)
        header, consumed = parse_frame(buffer)
        if header is not None:
            return header, consumed, fed
        assert consumed == 0
    raise AssertionError("parse_frame never produced a frame")


class Trickle(io.RawIOBase):
    """A stream that hands out at most one byte per read, as a slow socket might."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        return self._data.read(1 if n != 0 else 0)


# -- round trips ---------------------------------------------------------------

@pytest.mark.parametrize("header", HEADERS)
def test_encode_then_parse_round_trips(header: dict[str, Any]) -> None:
    frame = encode_frame(header)
    assert parse_frame(frame) == (header, len(frame))


@pytest.mark.parametrize("header", HEADERS)
def test_encode_then_read_frame_round_trips(header: dict[str, Any]) -> None:
    stream = io.BytesIO(encode_frame(header))
    assert read_frame(stream) == header
    assert read_frame(stream) is None  # clean end of stream


@pytest.mark.parametrize("header", HEADERS)
def test_read_frame_from_a_stream_that_gives_one_byte_per_read(header: dict[str, Any]) -> None:
    assert read_frame(Trickle(encode_frame(header))) == header


def test_frame_layout_is_little_endian_length_then_utf8_json() -> None:
    header = {"cmd": "get", "filename": "年度 报告.txt"}
    frame = encode_frame(header)
    (length,) = struct.unpack("<I", frame[:4])
    assert length == len(frame) - 4
    payload = frame[4:].decode("utf-8")  # non-ASCII goes as UTF-8, not only as \u escapes
    assert json.loads(payload) == header


def test_non_ascii_names_survive_a_round_trip() -> None:
    name = "年度 报告 ünïcødé 😀.txt"
    assert parse_frame(encode_frame({"filename": name}))[0] == {"filename": name}


def test_a_frame_written_by_hand_in_the_tutorial_style_is_read() -> None:
    # The tutorial packs the length with struct 'i' (native order, little-endian on x86/ARM).
    payload = json.dumps({"cmd": "put", "filename": "t.bin", "filesize": 3}).encode()
    assert parse_frame(struct.pack("<i", len(payload)) + payload)[0]["filename"] == "t.bin"


# -- incremental parsing ---------------------------------------------------------

@pytest.mark.parametrize("header", HEADERS)
def test_bytes_fed_one_at_a_time_give_the_frame_on_its_last_byte(header: dict[str, Any]) -> None:
    frame = encode_frame(header)
    got, consumed, fed = feed_one_byte_at_a_time(frame)
    assert got == header
    assert consumed == fed == len(frame)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4])
def test_too_short_for_a_length_needs_more_data(size: int) -> None:
    assert parse_frame(encode_frame({"cmd": "ls"})[:size]) == (None, 0)


def test_every_proper_prefix_needs_more_data() -> None:
    frame = encode_frame({"cmd": "put", "filename": "年度.txt", "filesize": 9})
    for end in range(len(frame)):
        assert parse_frame(frame[:end]) == (None, 0)


@pytest.mark.parametrize("trailing", [b"x", b"\x00" * 100, b"raw file body \xff\xfe",
                                      encode_frame({"cmd": "ls"})[:3]])
def test_trailing_data_is_left_unconsumed(trailing: bytes) -> None:
    frame = encode_frame({"cmd": "put", "filename": "f", "filesize": len(trailing)})
    header, consumed = parse_frame(frame + trailing)
    assert header == {"cmd": "put", "filename": "f", "filesize": len(trailing)}
    assert consumed == len(frame)
    assert (frame + trailing)[consumed:] == trailing


def test_read_frame_leaves_the_body_after_the_header_in_the_stream() -> None:
    body = b"\x00\x01\x02 raw bytes"
    stream = io.BytesIO(encode_frame({"cmd": "put", "filename": "f", "filesize": len(body)}) + body)
    assert read_frame(stream)["filesize"] == len(body)
    assert stream.read() == body


def test_two_frames_back_to_back() -> None:
    first, second = {"cmd": "ls"}, {"cmd": "get", "filename": "é"}
    data = encode_frame(first) + encode_frame(second)
    header, consumed = parse_frame(data)
    assert header == first
    assert parse_frame(data[consumed:]) == (second, len(data) - consumed)

    stream = io.BytesIO(data)
    assert [read_frame(stream), read_frame(stream), read_frame(stream)] == [first, second, None]


def test_parse_frame_accepts_bytearray_and_memoryview() -> None:
    frame = encode_frame({"cmd": "ls"})
    assert parse_frame(bytearray(frame)) == ({"cmd": "ls"}, len(frame))
    assert parse_frame(memoryview(frame)) == ({"cmd": "ls"}, len(frame))


def test_an_empty_stream_is_a_clean_end() -> None:
    assert read_frame(io.BytesIO(b"")) is None


# -- truncated frames ---------------------------------------------------------------

FULL = encode_frame({"cmd": "put", "filename": "f", "filesize": 1})


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, len(FULL) - 1], ids=lambda n: f"cut{n}")
def test_a_stream_that_ends_inside_a_frame_is_connection_lost(cut: int) -> None:
    with pytest.raises(ConnectionLost):
        read_frame(io.BytesIO(FULL[:cut]))


@pytest.mark.parametrize("cut", [1, 3, 4, len(FULL) - 1], ids=lambda n: f"cut{n}")
def test_a_trickling_stream_that_ends_inside_a_frame_is_connection_lost(cut: int) -> None:
    with pytest.raises(ConnectionLost):
        read_frame(Trickle(FULL[:cut]))


def test_a_length_promising_more_than_follows_is_connection_lost() -> None:
    with pytest.raises(ConnectionLost):
        read_frame(io.BytesIO(frame_of(b'{"cmd":"ls"}', length=1000)))


# -- sizes ----------------------------------------------------------------------------

def header_of_size(size: int) -> dict[str, str]:
    """A header whose compact JSON encoding is exactly ``size`` bytes."""
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    return {"k": "x" * (size - overhead)}


def test_a_header_of_exactly_max_header_bytes_is_sent_and_read() -> None:
    header = header_of_size(MAX_HEADER)
    frame = encode_frame(header)
    assert len(frame) == 4 + MAX_HEADER
    assert parse_frame(frame) == (header, len(frame))
    assert read_frame(io.BytesIO(frame)) == header


def test_a_header_one_byte_over_max_header_is_refused_by_encode_frame() -> None:
    with pytest.raises(ProtocolError):
        encode_frame(header_of_size(MAX_HEADER + 1))


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    # 3 bytes per character: under the limit in characters, over it in bytes.
    with pytest.raises(ProtocolError):
        encode_frame({"k": "年" * (MAX_HEADER // 3 + 10)})


@pytest.mark.parametrize("length", [MAX_HEADER + 1, 2**20, 2**31, 2**32 - 1])
def test_a_length_over_max_header_is_refused_before_reading_the_payload(length: int) -> None:
    data = struct.pack("<I", length)  # no payload at all: it must not wait for one
    with pytest.raises(ProtocolError):
        parse_frame(data)
    with pytest.raises(ProtocolError):
        read_frame(io.BytesIO(data))


def test_a_big_endian_length_is_taken_as_over_the_limit() -> None:
    # A sender using '>I' for a 12-byte header announces 0x0C000000 bytes.
    payload = b'{"cmd":"ls"}'
    with pytest.raises(ProtocolError):
        parse_frame(struct.pack(">I", len(payload)) + payload)


# -- malformed payloads ------------------------------------------------------------------

MALFORMED = {
    "invalid utf-8": b"\xff\xfe{}",
    "truncated utf-8": '{"filename":"年'.encode()[:-1] + b'"}',
    "latin-1 text": '{"filename":"café"}'.encode("latin-1"),
    "empty payload": b"",
    "not json": b"hello",
    "truncated json": b'{"cmd":"ls"',
    "trailing garbage": b'{"cmd":"ls"} x',
    "single quotes": b"{'cmd':'ls'}",
    "json list": b'["cmd","ls"]',
    "json string": b'"ls"',
    "json number": b"42",
    "json null": b"null",
    "json true": b"true",
    "json NaN": b"NaN",
    "deeply nested": b"[" * 30000 + b"]" * 30000,
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_payload_is_a_protocol_error(payload: bytes) -> None:
    frame = frame_of(payload)
    with pytest.raises(ProtocolError):
        parse_frame(frame)
    with pytest.raises(ProtocolError):
        read_frame(io.BytesIO(frame))


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_header_refuses_anything_but_a_json_object(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_header(payload)
    assert info.value.code == "bad_request"


def test_protocol_errors_are_bad_request_on_the_wire() -> None:
    try:
        decode_header(b"[]")
    except ProtocolError as error:
        assert error_reply(error) == {"ok": False, "error": "bad_request", "message": str(error)}
    else:
        raise AssertionError("decode_header accepted a list")


# -- field checks ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "a", "年度 报告.txt", "a/b/../c"])
def test_text_field_returns_strings(value: str) -> None:
    assert text_field({"k": value}, "k") == value


@pytest.mark.parametrize("value", [5, 1.5, True, None, [], {}, ["a"]],
                         ids=["int", "float", "bool", "null", "list", "dict", "list-of-str"])
def test_text_field_refuses_other_types(value: object) -> None:
    with pytest.raises(ProtocolError):
        text_field({"k": value}, "k")


def test_text_field_missing() -> None:
    with pytest.raises(ProtocolError):
        text_field({}, "k")
    assert text_field({}, "k", "") == ""
    assert text_field({}, "k", None) is None


@pytest.mark.parametrize("value", [0, 1, 65536, 2**32, 5 * 2**30, 2**63 - 1])
def test_int_field_returns_integers_in_range(value: int) -> None:
    assert int_field({"k": value}, "k") == value


INT_REFUSED = {
    "true": True,
    "false": False,
    "negative": -1,
    "over 2**63-1": 2**63,
    "huge": 10**30,
    "float": 1.0,
    "fraction": 1.5,
    "string": "5",
    "empty string": "",
    "null": None,
    "list": [1],
}


@pytest.mark.parametrize("value", INT_REFUSED.values(), ids=INT_REFUSED.keys())
def test_int_field_refuses_wrong_types_and_out_of_range(value: object) -> None:
    with pytest.raises(ProtocolError):
        int_field({"k": value}, "k")


def test_int_field_missing_and_default() -> None:
    with pytest.raises(ProtocolError):
        int_field({}, "k")
    assert int_field({}, "k", 0) == 0


def test_int_field_custom_range() -> None:
    assert int_field({"k": 3}, "k", low=1, high=3) == 3
    for value in (0, 4):
        with pytest.raises(ProtocolError):
            int_field({"k": value}, "k", low=1, high=3)


@pytest.mark.parametrize("value", [True, False])
def test_bool_field_returns_booleans(value: bool) -> None:
    assert bool_field({"k": value}, "k") is value


@pytest.mark.parametrize("value", [1, 0, "true", "false", "", None, [], 1.0],
                         ids=["1", "0", "'true'", "'false'", "''", "null", "list", "1.0"])
def test_bool_field_refuses_other_types(value: object) -> None:
    with pytest.raises(ProtocolError):
        bool_field({"k": value}, "k")


def test_bool_field_missing_takes_the_default() -> None:
    assert bool_field({}, "k") is False
    assert bool_field({}, "k", True) is True


# -- replies -------------------------------------------------------------------------------

WIRE_CODES = [
    ("bad_request", errors.ProtocolError),
    ("unknown_command", errors.UnknownCommand),
    ("not_found", errors.NotFound),
    ("forbidden", errors.Forbidden),
    ("checksum", errors.ChecksumError),
    ("quota_exceeded", errors.QuotaExceeded),
    ("busy", errors.Busy),
    ("auth_failed", errors.AuthFailed),
    ("internal", errors.InternalError),
    ("exists", errors.Exists),
    ("not_empty", errors.NotEmpty),
    ("is_directory", errors.IsADirectory),
    ("not_directory", errors.NotADirectory),
]


@pytest.mark.parametrize("code, cls", WIRE_CODES, ids=[code for code, _ in WIRE_CODES])
def test_check_reply_raises_the_class_of_each_wire_code(code: str, cls: type[FTPError]) -> None:
    reply = {"ok": False, "error": code, "message": f"the {code} message"}
    with pytest.raises(cls) as info:
        check_reply(reply)
    assert type(info.value) is cls
    assert info.value.code == code
    assert str(info.value) == f"the {code} message"


@pytest.mark.parametrize("code, cls", WIRE_CODES, ids=[code for code, _ in WIRE_CODES])
def test_each_error_class_round_trips_through_an_error_reply(code: str, cls: type[FTPError]) -> None:
    reply = parse_frame(encode_frame(error_reply(cls("why"))))[0]
    assert reply == {"ok": False, "error": code, "message": "why"}
    with pytest.raises(cls):
        check_reply(reply)


def test_check_reply_without_a_message_still_names_the_cause() -> None:
    with pytest.raises(errors.NotFound) as info:
        check_reply({"ok": False, "error": "not_found"})
    assert str(info.value)  # the class's own one-line description


def test_check_reply_returns_a_success_header() -> None:
    reply = ok_reply(filename="/a", filesize=3)
    assert reply == {"ok": True, "filename": "/a", "filesize": 3}
    assert check_reply(reply) is reply


def test_check_reply_without_a_reply_is_connection_lost() -> None:
    with pytest.raises(ConnectionLost):
        check_reply(None)


@pytest.mark.parametrize("reply", [{}, {"ok": 1}, {"ok": "true"}, {"ok": None}, {"error": "x"}],
                         ids=["empty", "ok-1", "ok-string", "ok-null", "no-ok"])
def test_check_reply_without_a_boolean_ok_is_a_protocol_error(reply: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        check_reply(reply)


def test_error_for_code_with_an_unknown_code_is_a_plain_ftp_error_keeping_the_code() -> None:
    error = error_for_code("teapot", "short and stout")
    assert type(error) is FTPError
    assert error.code == "teapot"
    assert str(error) == "short and stout"
    with pytest.raises(FTPError) as info:
        check_reply({"ok": False, "error": "teapot", "message": "short and stout"})
    assert type(info.value) is FTPError and info.value.code == "teapot"


@pytest.mark.parametrize("code", [None, 5, ["not_found"]], ids=["null", "int", "list"])
def test_error_for_code_with_a_non_string_code_is_a_plain_ftp_error(code: object) -> None:
    error = error_for_code(code, "odd reply")
    assert type(error) is FTPError
    assert str(error) == "odd reply"


def test_an_unknown_code_does_not_change_other_errors() -> None:
    error_for_code("teapot", "x")
    assert FTPError().code == "internal"
    assert error_for_code("not_found", "y").code == "not_found"
