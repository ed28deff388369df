"""Fuzzing the server with hypothesis: random bytes, random lengths, random headers.

Each example goes to a fresh connection with a short socket timeout and ends
with the client shutting its side, so the server must answer and close.  After
each example the server must still answer on a new connection; every
CHECK_EVERY examples (and at the end) a real put/get round trip must work and
nothing outside the root may have changed.

Bounded and reproducible: derandomize=True, no example database, max_examples
per test below.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftpclient.client import Client
from ftpserver.auth import hash_password
from ftpserver.config import Config, User
from ftpserver.errors import ERROR_CODES
from ftpserver.server import FTPServer

from helpers import LOOPBACK, md5_of, random_file

MAX_EXAMPLES = 200
CHECK_EVERY = 50
TIMEOUT = 5.0
CODES = set(ERROR_CODES)

FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                         database=None, print_blob=False,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much])


def snapshot(folder: Path) -> dict[str, tuple[Any, ...]]:
    """Names, types, contents and mtimes of everything under ``folder``, links not followed."""
    found: dict[str, tuple[Any, ...]] = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent, name)
            info = path.lstat()
            content: Any = None
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = path.read_bytes()
            found[str(path.relative_to(folder))] = (info.st_mode, content, info.st_mtime_ns)
    return found


class Target:
    """A server on a root holding a few files, with a canary folder beside the root."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.root = tmp_path / "storage"
        (self.root / "dir").mkdir(parents=True)
        (self.root / "a.txt").write_text("alpha")
        (self.root / "dir" / "b.txt").write_text("bravo")
        self.canary = tmp_path / "canary"
        self.canary.mkdir()
        (self.canary / "secret.txt").write_text("canary")
        (self.root / "escape").symlink_to(self.canary)
        (self.root / "dir" / "filelink").symlink_to(self.canary / "secret.txt")
        self.local = tmp_path / "local"
        self.local.mkdir()
        random_file(self.local / "round.bin", 200_000, seed=21)
        alice = User("alice", password=hash_password("pw", iterations=4096).line(),
                     root=tmp_path / "alice", quota=1 << 20)
        self.server = FTPServer(Config(host=LOOPBACK, port=0, root=self.root, idle_timeout=10,
                                       users={"alice": alice}))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.outside = self._outside()
        self.examples = 0

    def _outside(self) -> dict[str, tuple[Any, ...]]:
        """Everything under tmp_path but the roots (which fuzzing may change)."""
        return {name: value for name, value in snapshot(self.tmp_path).items()
                if not name.startswith(("storage", "alice", "local"))}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def exchange(self, data: bytes) -> bytes:
        """Send ``data`` on a fresh connection, close our side, return all the server sent.

        Fails if the server neither answers nor closes within TIMEOUT.
        """
        received = bytearray()
        with socket.create_connection((LOOPBACK, self.port), timeout=TIMEOUT) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may close early (e.g. after an over-long length)
            while True:
                try:
                    chunk = sock.recv(1 << 16)
                except ConnectionResetError:
                    break
                except TimeoutError:
                    raise AssertionError(f"server neither answered nor closed in {TIMEOUT}s "
                                         f"for {data[:200]!r}") from None
                if not chunk:
                    break
                received += chunk
        return bytes(received)

    def after_example(self) -> None:
        """The server is alive; every CHECK_EVERY examples a round trip and the canary."""
        self.server.throttle.succeeded("127.0.0.1")  # failed logins must not slow the fuzz
        with socket.create_connection((LOOPBACK, self.port), timeout=TIMEOUT) as sock:
            sock.sendall(frame({"cmd": "pwd"}))
            assert read_replies(recv_all(sock))[0] == {"ok": True, "path": "/"}
        self.examples += 1
        if self.examples % CHECK_EVERY == 0:
            self.check()

    def check(self) -> None:
        """A put/get round trip works and nothing outside the root changed."""
        with Client(LOOPBACK, self.port, timeout=30) as client:
            client.put(self.local / "round.bin", "round-trip.bin", restart=True)
            client.get("round-trip.bin", self.local / "back.bin", restart=True)
        assert md5_of(self.local / "back.bin") == md5_of(self.local / "round.bin")
        (self.local / "back.bin").unlink()
        assert self._outside() == self.outside
        assert (self.canary / "secret.txt").read_text() == "canary"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    target = Target(tmp_path)
    yield target
    target.close()


def frame(header: Any, ensure_ascii: bool = True) -> bytes:
    text = json.dumps(header, ensure_ascii=ensure_ascii, allow_nan=True)
    payload = text.encode("utf-8", "surrogatepass")
    return struct.pack("<I", len(payload)) + payload


def recv_all(sock: socket.socket) -> bytes:
    sock.shutdown(socket.SHUT_WR)
    data = bytearray()
    while chunk := sock.recv(1 << 16):
        data += chunk
    return bytes(data)


def read_replies(data: bytes) -> list[dict[str, Any]]:
    """Parse the server's reply stream; a get's body is skipped by its announced size.

    Fails if any reply is not a well-formed header with ``ok``, or an error with an
    undocumented code.  A stream cut inside a frame is allowed only at a get's body
    (the server stops sending once the client has gone).
    """
    replies: list[dict[str, Any]] = []
    position = 0
    while position < len(data):
        assert position + 4 <= len(data), f"truncated length at {position}: {data[-20:]!r}"
        (length,) = struct.unpack_from("<I", data, position)
        assert length <= 65536
        payload = data[position + 4:position + 4 + length]
        assert len(payload) == length, f"truncated reply {payload[:100]!r}"
        reply = json.loads(payload.decode("utf-8"))
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
        if reply["ok"] is False:
            assert reply.get("error") in CODES, reply
            assert isinstance(reply.get("message"), str) and "\n" not in reply["message"], reply
        replies.append(reply)
        position += 4 + length
        if reply["ok"] and {"filesize", "offset", "source"} <= reply.keys():  # a get's body
            position += reply["filesize"] - reply["offset"]
    return replies


def run_examples(target: Target, strategy: st.SearchStrategy[Any],
                 body: Callable[[Any], None]) -> None:
    """Run ``body`` on each generated example, then the after-example checks."""
    @FUZZ_SETTINGS
    @given(strategy)
    def run(example: Any) -> None:
        body(example)
        target.after_example()

    run()
    target.check()


# -- strategies ----------------------------------------------------------------------

COMMANDS = ["put", "get", "ls", "stat", "cd", "mkdir", "rm", "mv", "login", "pwd"]
FIELDS = ["cmd", "filename", "filesize", "path", "to", "offset", "source", "resume", "restart",
          "md5", "message"]
INTERESTING_TEXT = [
    "", ".", "..", "/", "a.txt", "dir", "dir/b.txt", "/dir/../a.txt", "new.bin", "dir/new",
    "../canary/secret.txt", "escape", "escape/secret.txt", "dir/filelink", "x" * 300,
    "a\x00b", "a\\b", ".a.txt.ftp-partial", "d41d8cd98f00b204e9800998ecf8427e",
    "n,,n=alice,r=abcdefgh", "n,,n=nobody,r=abcdefgh", "n,,n=al=2Cice,r=", "n,,",
    "c=biws,r=abcdefgh,p=AAAA", "c=biws,r=x,p=" + "A" * 44, "n=,r=,s=,i=", "p=",
    "__init__", "do_put", "Put", "put.x", "run",
]

any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates too
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
           | st.sampled_from([0, 1, 5, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64])
           | st.floats(allow_nan=True, allow_infinity=True)
           | any_text | st.sampled_from(INTERESTING_TEXT))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)
commands = st.sampled_from(COMMANDS) | any_text | json_values


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any]:
    header: dict[str, Any] = {}
    if draw(st.integers(0, 9)):  # mostly with a cmd
        header["cmd"] = draw(commands)
    keys = draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=8), max_size=6))
    for key in keys:
        header[key] = draw(json_values)
    return header


@st.composite
def conversations(draw: st.DrawFn) -> list[tuple[dict[str, Any], bool, bytes]]:
    """One to four requests for one connection: header, ASCII-escaped or raw, body bytes."""
    return draw(st.lists(st.tuples(headers(), st.booleans(), st.binary(max_size=64)),
                         min_size=1, max_size=4))


# -- the fuzz tests --------------------------------------------------------------------

def test_random_bytes(target: Target) -> None:
    def body(data: bytes) -> None:
        read_replies_loosely(target.exchange(data))

    run_examples(target, st.binary(max_size=600), body)


def read_replies_loosely(data: bytes) -> None:
    """Random bytes may happen to form a get; otherwise every reply must be well formed."""
    try:
        read_replies(data)
    except AssertionError:
        if b'"source"' not in data:
            raise


lengths = (st.integers(0, 2**32 - 1)
           | st.sampled_from([0, 1, 2, 65535, 65536, 65537, 1 << 20, 2**31, 2**32 - 1]))


def test_random_lengths(target: Target) -> None:
    def body(example: tuple[int, bytes]) -> None:
        length, payload = example
        replies = read_replies(target.exchange(struct.pack("<I", length) + payload))
        if length > 65536:
            assert [r.get("error") for r in replies] == ["bad_request"]
        elif length > len(payload):
            assert replies == []  # the stream ended inside the header: closed quietly

    run_examples(target, st.tuples(lengths, st.binary(max_size=300)), body)


def test_garbage_inside_a_valid_frame(target: Target) -> None:
    """A well-framed payload that is not a JSON object gets bad_request (and no crash)."""
    def body(payload: bytes) -> None:
        try:
            decoded = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            decoded = None
        data = struct.pack("<I", len(payload)) + payload + frame({"cmd": "pwd"})
        replies = read_replies(target.exchange(data))
        if not isinstance(decoded, dict):
            assert [r.get("error") for r in replies[:1]] == ["bad_request"]
        # Whether the pwd after it is answered: see test_bad_json_keeps_the_connection_open.

    payloads = (st.binary(max_size=300)
                | st.builds(lambda v: json.dumps(v).encode(), json_values)
                | st.sampled_from(GARBAGE))
    run_examples(target, payloads, body)


GARBAGE = [b"", b"{", b"[]", b"null", b"\xff\xfe", b"{\"cmd\"", b"[" * 10_000 + b"]" * 10_000,
           b"\xed\xa0\x80", b"1e999999", b"\"just a string\""]


@pytest.mark.parametrize("payload", [b"", b"not json", b"[]", b"\xff"], ids=repr)
def test_bad_json_keeps_the_connection_open(target: Target, payload: bytes) -> None:
    data = struct.pack("<I", len(payload)) + payload + frame({"cmd": "pwd"})
    replies = read_replies(target.exchange(data))
    assert [r.get("error") for r in replies[:1]] == ["bad_request"]
    assert replies[1:] == [{"ok": True, "path": "/"}]


def test_random_headers(target: Target) -> None:
    def body(conversation: list[tuple[dict[str, Any], bool, bytes]]) -> None:
        data = b"".join(frame(header, ensure_ascii) + extra
                        for header, ensure_ascii, extra in conversation)
        replies = read_replies_after_headers(target.exchange(data))
        for reply in replies:
            assert reply.get("error") != "internal", (conversation, reply)

    run_examples(target, conversations(), body)


def read_replies_after_headers(data: bytes) -> list[dict[str, Any]]:
    """Replies to random headers; a get body cut short by our early close is tolerated."""
    try:
        return read_replies(data)
    except AssertionError as error:
        if "truncated" in str(error) and b'"source"' in data:
            return []
        raise


def test_deep_and_huge_json_values(target: Target) -> None:
    """Hand-picked nasties beside the random ones: deep nesting, huge numbers, huge strings."""
    nasty: list[bytes] = [
        b'{"cmd": "ls", "path": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"cmd": "put", "filename": "n.bin", "filesize": 1' + b"0" * 5000 + b"}",
        b'{"cmd": "get", "filename": "a.txt", "offset": 1e308}',
        b'{"cmd": "put", "filename": "n.bin", "filesize": -1}',
        b'{"cmd": "put", "filename": "n.bin", "filesize": true}',
        b'{"cmd": "ls", "path": "' + b"a/" * 30000 + b'"}',
        b'{"cmd": "login", "message": "n,,n=' + b"a" * 60000 + b',r=x"}',
        b'{"cmd": "mkdir", "path": "\\ud800"}',
        b'{"cmd": "rm", "cmd": "ls", "path": "a.txt"}',
    ]
    for payload in nasty:
        assert len(payload) <= 65536
        read_replies(target.exchange(struct.pack("<I", len(payload)) + payload))
        target.after_example()
    assert (target.root / "a.txt").read_text() == "alpha"
    target.check()


def ask(sock: socket.socket, header: dict[str, Any]) -> dict[str, Any]:
    sock.sendall(frame(header))
    (length,) = struct.unpack("<I", sock.recv(4, socket.MSG_WAITALL))
    return json.loads(sock.recv(length, socket.MSG_WAITALL))


def test_login_with_a_surrogate_user_name_is_not_internal(target: Target) -> None:
    payload = b'{"cmd": "login", "message": "n,,n=\\udc80,r=abc"}'
    replies = read_replies(target.exchange(struct.pack("<I", len(payload)) + payload))
    assert replies and replies[0].get("error") in ("bad_request", "auth_failed"), replies


def test_login_final_with_a_surrogate_is_not_internal(target: Target) -> None:
    with socket.create_connection((LOOPBACK, target.port), timeout=TIMEOUT) as sock:
        challenge = ask(sock, {"cmd": "login", "message": "n,,n=alice,r=abcdefgh"})["message"]
        nonce = challenge.split(",")[0][2:]
        reply = ask(sock, {"cmd": "login",
                           "message": f"c=biws,r={nonce},x=\udc80,p=" + "A" * 43 + "="})
    assert reply.get("error") in ("bad_request", "auth_failed"), reply


@pytest.mark.parametrize("path", ["../\udc80", "a/../../\ud800", "/../x\udfff"])
def test_path_with_a_lone_surrogate_is_refused(target: Target, path: str) -> None:
    # Not valid Unicode, so refused as a bad request before any path logic; the connection goes on.
    data = frame({"cmd": "ls", "path": path}) + frame({"cmd": "pwd"})
    replies = read_replies(target.exchange(data))
    assert [r.get("error") for r in replies[:1]] == ["bad_request"]
    assert replies[1:] == [{"ok": True, "path": "/"}]


@pytest.mark.parametrize("path", ["../a\nb", "../\x1b[2Jx", "/../\r\nforged: line"])
def test_error_messages_stay_one_line(target: Target, path: str) -> None:
    replies = read_replies_raw(target.exchange(frame({"cmd": "ls", "path": path})))
    assert replies[0]["error"] == "forbidden"
    message = replies[0]["message"]
    assert message.isprintable(), message


def read_replies_raw(data: bytes) -> list[dict[str, Any]]:
    """Replies without the one-line check of read_replies (for the test that checks it)."""
    replies, position = [], 0
    while position + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, position)
        replies.append(json.loads(data[position + 4:position + 4 + length]))
        position += 4 + length
    return replies
