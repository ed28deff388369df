"""Hostile and broken requests on raw sockets against a real server (the ``server`` fixture).

Every bad request gets an error header with a stable code, or its connection closed
where the stream cannot be resynchronised; the server goes on serving, and nothing
outside its root is ever read, written, listed or removed.
"""
from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any, Iterator

import pytest

from ftpclient.client import Client
from ftpserver.protocol import MAX_HEADER, encode_frame, read_frame

from helpers import LOOPBACK, md5_of, random_file

TIMEOUT = 5


class Raw:
    """One raw connection: send frames or bytes, read reply headers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
        self.reader = self.sock.makefile("rb")

    def send(self, header: Any) -> None:
        self.sock.sendall(encode_frame(header))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict[str, Any]:
        header = read_frame(self.reader)
        assert header is not None, "the server closed the connection instead of answering"
        return header

    def request(self, header: Any) -> dict[str, Any]:
        self.send(header)
        return self.reply()

    def assert_closed(self) -> None:
        """The server has closed this connection (a read ends, it does not time out)."""
        try:
            assert self.reader.read(1) == b""
        except ConnectionResetError:
            pass

    def assert_still_serves(self) -> None:
        reply = self.request({"cmd": "ls", "path": ""})
        assert reply["ok"] is True, reply

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def raw(port: int) -> Iterator[Raw]:
    conn = Raw(port)
    yield conn
    conn.close()


def assert_error(reply: dict[str, Any], code: str | set[str]) -> None:
    codes = {code} if isinstance(code, str) else code
    assert reply["ok"] is False, reply
    assert reply["error"] in codes, reply
    assert isinstance(reply.get("message"), str) and reply["message"], reply


def assert_server_serves(port: int) -> None:
    """A new connection gets an answer."""
    conn = Raw(port)
    try:
        conn.assert_still_serves()
    finally:
        conn.close()


def raw_frame(payload: bytes, length: int | None = None) -> bytes:
    return struct.pack("<I", len(payload) if length is None else length) + payload


# -- unknown commands ----------------------------------------------------------------

UNKNOWN = ["__init__", "run", "handle", "setup", "finish", "send", "dispatch", "Put", "PUT",
           "put.x", "do_put", "do_ls", "_send_quietly", "__class__", "ls\n", " ls", "ls ",
           "ls\x00", "", "x" * 100, "get/../put", "révéler", "timeout"]


@pytest.mark.parametrize("cmd", UNKNOWN, ids=repr)
def test_unknown_command_is_refused_and_the_connection_goes_on(cmd: str, raw: Raw,
                                                               storage_root: Path) -> None:
    reply = raw.request({"cmd": cmd, "filename": "f", "filesize": 0, "path": ""})
    assert_error(reply, "unknown_command")
    raw.assert_still_serves()
    assert list(storage_root.iterdir()) == []


NOT_A_STRING = {"number": 123, "null": None, "true": True, "list": ["ls"], "object": {"ls": 1},
                "float": 1.5}


@pytest.mark.parametrize("cmd", NOT_A_STRING.values(), ids=NOT_A_STRING.keys())
def test_a_cmd_that_is_not_a_string_is_refused(cmd: object, raw: Raw) -> None:
    assert_error(raw.request({"cmd": cmd, "path": ""}), {"unknown_command", "bad_request"})
    raw.assert_still_serves()


def test_a_missing_cmd_is_refused(raw: Raw) -> None:
    assert_error(raw.request({"path": ""}), {"unknown_command", "bad_request"})
    assert_error(raw.request({}), {"unknown_command", "bad_request"})
    raw.assert_still_serves()


# -- broken frames ---------------------------------------------------------------------

@pytest.mark.parametrize("length", [MAX_HEADER + 1, 2**20, 2**31, 2**32 - 1])
def test_an_oversized_length_closes_the_connection(length: int, raw: Raw, port: int) -> None:
    raw.send_raw(struct.pack("<I", length))  # the server must not wait for the payload
    try:
        header = read_frame(raw.reader)
    except ConnectionResetError:
        header = None
    if header is not None:
        assert_error(header, "bad_request")
    raw.assert_closed()
    assert_server_serves(port)


def test_an_oversized_frame_with_its_payload_closes_the_connection(raw: Raw, port: int) -> None:
    payload = b'{"cmd":"ls","pad":"' + b"x" * MAX_HEADER + b'"}'
    try:
        raw.send_raw(raw_frame(payload))
        header = read_frame(raw.reader)
        if header is not None:
            assert_error(header, "bad_request")
        raw.assert_closed()
    except (ConnectionResetError, BrokenPipeError):
        pass  # closed while we were still sending: also fine
    assert_server_serves(port)


def test_pipelined_requests_are_answered_in_order(raw: Raw, storage_root: Path) -> None:
    (storage_root / "docs").mkdir()
    raw.send_raw(encode_frame({"cmd": "cd", "path": "docs"}) + encode_frame({"cmd": "pwd"})
                 + encode_frame({"cmd": "Nope"}) + encode_frame({"cmd": "cd", "path": "/"})
                 + encode_frame({"cmd": "ls", "path": ""}))
    assert raw.reply()["path"] == "/docs"
    assert raw.reply()["path"] == "/docs"
    assert_error(raw.reply(), "unknown_command")
    assert raw.reply()["path"] == "/"
    assert [e["name"] for e in raw.reply()["entries"]] == ["docs"]


def test_a_request_trickling_in_one_byte_at_a_time_is_served(raw: Raw) -> None:
    for byte in encode_frame({"cmd": "pwd"}):
        raw.send_raw(bytes([byte]))
    assert raw.reply() == {"ok": True, "path": "/"}


def test_a_header_of_exactly_max_header_bytes_is_served(raw: Raw) -> None:
    pad = "x" * (MAX_HEADER - len('{"cmd":"ls","path":"","pad":""}'))
    frame = encode_frame({"cmd": "ls", "path": "", "pad": pad})
    assert len(frame) == 4 + MAX_HEADER
    raw.send_raw(frame)
    assert raw.reply()["ok"] is True


BAD_PAYLOADS = {
    "invalid utf-8": b'{"cmd":"ls","path":"\xff"}',
    "not json": b"hello",
    "truncated json": b'{"cmd":"ls"',
    "empty": b"",
    "json list": b'["ls"]',
    "json string": b'"ls"',
    "json number": b"42",
    "json null": b"null",
    "deeply nested": b'{"a":' * 10000 + b"1" + b"}" * 10000,
}


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_a_header_that_is_not_a_json_object_is_bad_request(payload: bytes, raw: Raw,
                                                           port: int) -> None:
    assert len(payload) <= MAX_HEADER
    raw.send_raw(raw_frame(payload))
    assert_error(raw.reply(), "bad_request")
    assert_server_serves(port)


TRUNCATED = {
    "half a length": b"\x10\x00",
    "length only": struct.pack("<I", 100),
    "length and part of the header": raw_frame(b'{"cmd":"ls"}', length=100),
    "header of a put, half its body": encode_frame(
        {"cmd": "put", "filename": "t.bin", "filesize": 100000}) + b"x" * 50000,
}


@pytest.mark.parametrize("data", TRUNCATED.values(), ids=TRUNCATED.keys())
def test_a_truncated_request_then_close_leaves_the_server_serving(
        data: bytes, port: int, storage_root: Path) -> None:
    conn = Raw(port)
    conn.send_raw(data)
    conn.close()
    assert_server_serves(port)
    assert not (storage_root / "t.bin").exists()


def test_a_stalled_half_frame_holds_up_no_one_else(raw: Raw, port: int, local: Path,
                                                   storage_root: Path) -> None:
    raw.send_raw(raw_frame(b'{"cmd":"ls"}', length=100))  # and then nothing more
    source = random_file(local / "f.bin", 200000, seed=3)
    with Client(LOOPBACK, port, timeout=TIMEOUT) as client:
        client.put(source)
        client.get("f.bin", local / "back.bin")
    assert md5_of(local / "back.bin") == md5_of(source) == md5_of(storage_root / "f.bin")


# -- wrong field types ---------------------------------------------------------------------

ONE_SHOT_PUT = {"cmd": "put", "filename": "f.bin", "filesize": 0}
RESUMABLE_PUT = {**ONE_SHOT_PUT, "resume": True, "source": "s"}
GET = {"cmd": "get", "filename": "f.bin"}

BAD_FIELDS = [
    # (id, request, the connection is closed after the error)
    ("put filename 5", {**ONE_SHOT_PUT, "filename": 5}, True),
    ("put filename null", {**ONE_SHOT_PUT, "filename": None}, True),
    ("put no filename", {"cmd": "put", "filesize": 0}, True),
    ("put filesize 'x'", {**ONE_SHOT_PUT, "filesize": "x"}, True),
    ("put filesize -1", {**ONE_SHOT_PUT, "filesize": -1}, True),
    ("put filesize true", {**ONE_SHOT_PUT, "filesize": True}, True),
    ("put filesize 1.5", {**ONE_SHOT_PUT, "filesize": 1.5}, True),
    ("put filesize 2**63", {**ONE_SHOT_PUT, "filesize": 2**63}, True),
    ("put no filesize", {"cmd": "put", "filename": "f.bin"}, True),
    ("put md5 not hex", {**ONE_SHOT_PUT, "md5": "z" * 32}, True),
    ("put md5 5", {**ONE_SHOT_PUT, "md5": 5}, True),
    ("resumable put filename 5", {**RESUMABLE_PUT, "filename": 5}, False),
    ("resumable put filesize 'x'", {**RESUMABLE_PUT, "filesize": "x"}, False),
    ("resumable put filesize -1", {**RESUMABLE_PUT, "filesize": -1}, False),
    ("resumable put restart 'yes'", {**RESUMABLE_PUT, "restart": "yes"}, False),
    ("resumable put source 5", {**RESUMABLE_PUT, "source": 5}, False),
    ("get filename 5", {**GET, "filename": 5}, False),
    ("get no filename", {"cmd": "get"}, False),
    ("get offset true", {**GET, "offset": True}, False),
    ("get offset -1", {**GET, "offset": -1}, False),
    ("get offset '0'", {**GET, "offset": "0"}, False),
    ("get offset 1.5", {**GET, "offset": 1.5}, False),
    ("get source 5", {**GET, "source": 5}, False),
    ("ls path 5", {"cmd": "ls", "path": 5}, False),
    ("ls path null", {"cmd": "ls", "path": None}, False),
    ("ls path list", {"cmd": "ls", "path": ["a"]}, False),
    ("cd path 5", {"cmd": "cd", "path": 5}, False),
    ("mkdir path 5", {"cmd": "mkdir", "path": 5}, False),
    ("rm path true", {"cmd": "rm", "path": True}, False),
    ("mv to 5", {"cmd": "mv", "path": "f.bin", "to": 5}, False),
    ("stat md5 'yes'", {"cmd": "stat", "path": "f.bin", "md5": "yes"}, False),
]


@pytest.mark.parametrize("request_, closes", [(r, c) for _, r, c in BAD_FIELDS],
                         ids=[i for i, _, _ in BAD_FIELDS])
def test_wrong_field_types_are_bad_request(request_: dict[str, Any], closes: bool, raw: Raw,
                                           port: int, storage_root: Path) -> None:
    (storage_root / "f.bin").write_bytes(b"original")
    assert_error(raw.request(request_), "bad_request")
    if closes:
        raw.assert_closed()  # a one-shot put's body may follow: no way to resynchronise
        assert_server_serves(port)
    else:
        raw.assert_still_serves()
    assert (storage_root / "f.bin").read_bytes() == b"original"


# -- confinement ---------------------------------------------------------------------------

OUTSIDE = ["../x", "/../x", "a/../../x", "x\x00y", "..", "/..", "./../x", "a/b/../../../x",
           "..\\x", "a/..\\..\\x"]


def requests_for(path: str) -> dict[str, dict[str, Any]]:
    """One request per command that names ``path``."""
    return {
        "put": {"cmd": "put", "filename": path, "filesize": 0},
        "resumable put": {"cmd": "put", "filename": path, "filesize": 6, "resume": True,
                          "source": "s"},
        "get": {"cmd": "get", "filename": path},
        "ls": {"cmd": "ls", "path": path},
        "stat": {"cmd": "stat", "path": path, "md5": True},
        "cd": {"cmd": "cd", "path": path},
        "mkdir": {"cmd": "mkdir", "path": path},
        "rm": {"cmd": "rm", "path": path},
        "mv from": {"cmd": "mv", "path": path, "to": "moved"},
        "mv to": {"cmd": "mv", "path": "inside.txt", "to": path},
    }


COMMANDS = list(requests_for(""))


@pytest.fixture
def canary(tmp_path: Path, storage_root: Path) -> Iterator[Path]:
    """A file where "../x" leads from the root; it and the root's surroundings must not change."""
    canary = tmp_path / "x"
    canary.write_bytes(b"canary")
    (storage_root / "a").mkdir()
    (storage_root / "inside.txt").write_bytes(b"inside")
    before = sorted(p.name for p in tmp_path.iterdir())
    yield canary
    assert canary.read_bytes() == b"canary"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (storage_root / "inside.txt").read_bytes() == b"inside"


def send_outside(port: int, request_: dict[str, Any]) -> dict[str, Any]:
    conn = Raw(port)
    try:
        reply = conn.request(request_)
        if reply["ok"] is False and request_.get("cmd") == "put" and not request_.get("resume"):
            conn.assert_closed()
        return reply
    finally:
        conn.close()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("path", OUTSIDE, ids=repr)
def test_paths_outside_the_root_are_forbidden(path: str, command: str, port: int,
                                              canary: Path) -> None:
    reply = send_outside(port, requests_for(path)[command])
    assert_error(reply, "forbidden")
    assert str(canary.parent) not in reply["message"]  # the real location is not disclosed


LINKED = {
    "put": {"cmd": "put", "filename": "link/x", "filesize": 0},
    "resumable put": {"cmd": "put", "filename": "link/new", "filesize": 6, "resume": True,
                      "source": "s"},
    "get": {"cmd": "get", "filename": "link/x"},
    "ls": {"cmd": "ls", "path": "link"},
    "stat": {"cmd": "stat", "path": "link/x", "md5": True},
    "cd": {"cmd": "cd", "path": "link"},
    "mkdir": {"cmd": "mkdir", "path": "link/new"},
    "rm": {"cmd": "rm", "path": "link/x"},
    "mv from": {"cmd": "mv", "path": "link/x", "to": "moved"},
    "mv to": {"cmd": "mv", "path": "inside.txt", "to": "link/x"},
}


@pytest.mark.parametrize("command", LINKED)
def test_a_symlink_out_of_the_root_is_forbidden(command: str, port: int, storage_root: Path,
                                                tmp_path: Path, canary: Path) -> None:
    link = storage_root / "link"
    link.symlink_to(tmp_path, target_is_directory=True)
    try:
        assert_error(send_outside(port, LINKED[command]), "forbidden")
    finally:
        link.unlink()  # so that the canary fixture sees the tree as it was


def test_cd_then_dot_dot_stops_at_the_root(raw: Raw, storage_root: Path, canary: Path) -> None:
    assert raw.request({"cmd": "cd", "path": "a"})["path"] == "/a"
    for path in ("../../x", "../.."):
        assert_error(raw.request({"cmd": "ls", "path": path}), "forbidden")
        assert_error(raw.request({"cmd": "get", "filename": path}), "forbidden")
    assert raw.request({"cmd": "pwd"})["path"] == "/a"
    assert raw.request({"cmd": "cd", "path": ".."})["path"] == "/"
    assert_error(raw.request({"cmd": "cd", "path": ".."}), "forbidden")
    assert raw.request({"cmd": "pwd"})["path"] == "/"


# -- after all of that --------------------------------------------------------------------

def all_hostile_requests() -> Iterator[tuple[bytes, bool]]:
    """(bytes to send, whether to wait for a reply) for every hostile input above."""
    for cmd in [*UNKNOWN, *NOT_A_STRING.values()]:
        yield encode_frame({"cmd": cmd}), True
    for length in (MAX_HEADER + 1, 2**32 - 1):
        yield struct.pack("<I", length), False
    for payload in BAD_PAYLOADS.values():
        yield raw_frame(payload), True
    for data in TRUNCATED.values():
        yield data, False
    for _, request_, _ in BAD_FIELDS:
        yield encode_frame(request_), True
    for path in OUTSIDE:
        for request_ in requests_for(path).values():
            yield encode_frame(request_), True


def test_after_every_hostile_request_a_normal_round_trip_works(
        port: int, storage_root: Path, local: Path, canary: Path) -> None:
    for data, wait in all_hostile_requests():
        conn = Raw(port)
        try:
            conn.send_raw(data)
            if wait:
                assert conn.reply()["ok"] is False
        finally:
            conn.close()

    source = random_file(local / "after.bin", 1_000_000, seed=8)
    with Client(LOOPBACK, port, timeout=TIMEOUT) as client:
        put = client.put(source)
        got = client.get("after.bin", local / "back.bin")
        client.rm("after.bin")
    assert put.digest == got.digest == md5_of(source) == md5_of(local / "back.bin")
    assert not (storage_root / "after.bin").exists()
