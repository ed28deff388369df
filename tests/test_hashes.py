"""sha256 as a negotiated alternative to md5 (md5 stays the default).

A request asks for it with ``"hash": "sha256"``; the server says which hash it
checks with in its reply, and the trailers carry ``sha256`` instead of ``md5``.
"""
from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from ftpclient.client import Client
from ftpserver.config import Config
from ftpserver.errors import ProtocolError
from ftpserver.handler import FTPHandler
from ftpserver.server import FTPServer

from helpers import LOOPBACK, ask, md5_of, random_file, raw_frame, recv_exact, recv_frame, run_cli
from test_checkpoints import cut_put
from test_resume import wait_released

MiB = 1024 * 1024


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    return sock


def test_cli_puts_and_gets_with_sha256(port: int, storage_root: Path, local: Path) -> None:
    source = random_file(local / "big.bin", 6 * MiB, seed=51)
    put = run_cli(port, "--hash", "sha256", "put", "big.bin", "copy.bin", cwd=local)
    assert put.returncode == 0, put.stderr
    assert md5_of(storage_root / "copy.bin") == md5_of(source)
    got = run_cli(port, "--hash", "sha256", "get", "copy.bin", "back.bin", cwd=local)
    assert got.returncode == 0, got.stderr
    assert md5_of(local / "back.bin") == md5_of(source)


def test_cli_refuses_an_unknown_hash(port: int, local: Path) -> None:
    done = run_cli(port, "--hash", "crc32", "ls", cwd=local)
    assert done.returncode != 0
    assert "unknown hash" in done.stderr


def test_library_results_name_the_hash_and_skip_identical_files(
        client: Client, port: int, local: Path) -> None:
    source = random_file(local / "f.bin", 300_000, seed=52)
    with Client(LOOPBACK, port, timeout=30, hash="sha256") as sha:
        first = sha.put(source, "f.bin")
        assert (first.hash, first.digest, first.skipped) == ("sha256", sha256_of(source), False)
        again = sha.put(source, "f.bin")
        assert again.skipped and again.digest == sha256_of(source)
        entry = sha.stat("f.bin", md5=True, hash="sha256")
        assert (entry["md5"], entry["sha256"]) == (md5_of(source), sha256_of(source))
    plain = client.get("f.bin", local / "g.bin")
    assert (plain.hash, plain.digest) == ("md5", md5_of(source))
    with pytest.raises(ValueError):
        Client(LOOPBACK, port, hash="sha1")


def test_raw_put_and_get_with_sha256(port: int, storage_root: Path) -> None:
    body = bytes(range(256)) * 4000
    digest = hashlib.sha256(body).hexdigest()
    with connect(port) as sock:
        reply = ask(sock, {"cmd": "put", "filename": "raw.bin", "filesize": len(body),
                           "resume": True, "source": "tag", "hash": "sha256"})
        assert reply["ok"] and reply["offset"] == 0 and reply["hash"] == "sha256"
        sock.sendall(body + raw_frame({"sha256": digest}))
        reply = recv_frame(sock)
        assert reply["ok"] and reply["sha256"] == digest and "md5" not in reply
        reply = ask(sock, {"cmd": "get", "filename": "raw.bin", "hash": "sha256"})
        assert reply["ok"] and reply["hash"] == "sha256"
        assert recv_exact(sock, len(body)) == body
        assert recv_frame(sock) == {"ok": True, "sha256": digest}
    assert (storage_root / "raw.bin").read_bytes() == body


@pytest.mark.parametrize("size", [1000, 64 * 1024, 64 * 1024 + 1])
def test_raw_get_of_a_small_file_from_an_offset(port: int, storage_root: Path, size: int) -> None:
    # Small files go as one write (reply, bytes, trailer); larger ones by sendfile.
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    (storage_root / "small.bin").write_bytes(body)
    for name in ("md5", "sha256"):
        with connect(port) as sock:
            first = ask(sock, {"cmd": "get", "filename": "small.bin", "hash": name})
            assert first["filesize"] == size and first["offset"] == 0
            assert recv_exact(sock, size) == body
            assert recv_frame(sock) == {"ok": True, name: hashlib.new(name, body).hexdigest()}
            reply = ask(sock, {"cmd": "get", "filename": "small.bin", "hash": name,
                               "offset": 400, "source": first["source"]})
            assert reply["offset"] == 400
            assert recv_exact(sock, size - 400) == body[400:]
            assert recv_frame(sock) == {"ok": True, name: hashlib.new(name, body).hexdigest()}
            assert ask(sock, {"cmd": "pwd"})["ok"] is True


def test_unknown_hash_is_a_bad_request_and_the_connection_goes_on(port: int) -> None:
    with connect(port) as sock:
        reply = ask(sock, {"cmd": "get", "filename": "nothing.bin", "hash": "sha1"})
        assert reply["ok"] is False and reply["error"] == "bad_request"
        assert "sha256" in reply["message"]
        reply = ask(sock, {"cmd": "put", "filename": "x.bin", "filesize": 3, "resume": True,
                           "source": "t", "hash": 7})
        assert reply["ok"] is False and reply["error"] == "bad_request"
        assert ask(sock, {"cmd": "pwd"})["ok"] is True


@pytest.mark.parametrize("trailer, error", [
    ({"sha256": "00" * 32}, "checksum"),
    ({"sha256": "abc"}, "bad_request"),
    ({"md5": "00" * 16}, "bad_request"),
])
def test_a_wrong_sha256_trailer_stores_nothing(port: int, storage_root: Path,
                                                trailer: dict[str, str], error: str) -> None:
    body = b"x" * 5000
    with connect(port) as sock:
        reply = ask(sock, {"cmd": "put", "filename": "bad.bin", "filesize": len(body),
                           "resume": True, "source": "tag", "hash": "sha256"})
        assert reply["ok"]
        sock.sendall(body + raw_frame(trailer))
        reply = recv_frame(sock)
    assert reply["ok"] is False and reply["error"] == error
    assert not (storage_root / "bad.bin").exists()


def test_a_one_shot_put_whose_digest_is_not_the_named_hash_stores_nothing(
        port: int, storage_root: Path) -> None:
    body = b"y" * 5000
    with connect(port) as sock:
        sock.sendall(raw_frame({"cmd": "put", "filename": "odd.bin", "filesize": len(body),
                                "hash": "sha256", "md5": "00" * 16}) + body)
        reply = recv_frame(sock)
        assert sock.recv(1) == b""  # the body may be on its way: the connection ends
    assert reply["ok"] is False and reply["error"] == "bad_request"
    assert "md5" in reply["message"]
    assert not (storage_root / "odd.bin").exists()


def test_an_md5_state_is_not_taken_up_by_a_sha256_resume(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    source = random_file(local / "mixed.bin", 8 * MiB, seed=53)
    cut_put(port, source, "mixed.bin", hash="md5")
    wait_released(server, "mixed.bin")
    with Client(LOOPBACK, port, timeout=30, hash="sha256") as client:
        result = client.put(source, "mixed.bin")
    assert result.offset > 0, "the bytes held still count; only their hash is computed again"
    assert result.digest == sha256_of(source)
    assert md5_of(storage_root / "mixed.bin") == md5_of(source)


class Md5OnlyHandler(FTPHandler):
    """A server from before sha256: it knows no ``hash`` field and never names one."""

    def dispatch(self, header: dict[str, Any]) -> dict[str, Any] | None:
        header.pop("hash", None)
        return super().dispatch(header)

    def send(self, header: dict[str, Any]) -> None:
        header.pop("hash", None)
        super().send(header)


@contextlib.contextmanager
def serving(config: Config, handler: type[FTPHandler]) -> Iterator[int]:
    """Run a server with ``handler`` in this process; yield its port."""
    server = FTPServer(config, handler=handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_server_that_knows_no_hash_field_gets_md5(config: Config, local: Path) -> None:
    with serving(config, Md5OnlyHandler) as port:
        source = random_file(local / "old.bin", 2 * MiB, seed=54)
        with Client(LOOPBACK, port, timeout=30, hash="sha256") as client:
            put = client.put(source, "old.bin")
            got = client.get("old.bin", local / "back.bin")
        assert (put.hash, put.digest) == (got.hash, got.digest) == ("md5", md5_of(source))
        assert md5_of(local / "back.bin") == md5_of(source)


class OddHashHandler(FTPHandler):
    """A server that offers a hash the client never asked for."""

    def send(self, header: dict[str, Any]) -> None:
        if "offset" in header:  # the reply that starts a body
            header["hash"] = "crc32"
        super().send(header)


@pytest.mark.parametrize("command", ["put", "get"])
def test_a_reply_with_an_unknown_hash_fails_and_the_next_request_works(
        config: Config, storage_root: Path, local: Path, command: str) -> None:
    source = random_file(local / "f.bin", MiB, seed=56)
    (storage_root / "f.bin").write_bytes(source.read_bytes())
    with serving(config, OddHashHandler) as port, \
            Client(LOOPBACK, port, timeout=10, hash="sha256") as client:
        with pytest.raises(ProtocolError, match="crc32"):
            if command == "put":
                client.put(source, "g.bin")
            else:
                client.get("f.bin", local / "g.bin")
        assert client.pwd() == "/"  # a fresh connection, not body bytes read as a request
    assert not (storage_root / "g.bin").exists() and not (local / "g.bin").exists()
