"""blake3 as a negotiated hash: round trips, resumes cut anywhere, a server without it,
bad trailers, the one-shot put and stat."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ftpclient.client import Client
from ftpserver.digest import available, new_hash
from ftpserver.errors import ConnectionLost

from helpers import LOOPBACK, CuttingProxy, ask, md5_of, random_file, raw_frame, recv_frame, run_cli
from test_resume import wait_released

pytestmark = pytest.mark.skipif(not available("blake3"), reason="blake3 is not installed")

MiB = 1024 * 1024


def blake3_of(data: bytes) -> str:
    digest = new_hash("blake3")
    digest.update(data)
    return digest.hexdigest()


def test_cli_round_trip_with_blake3(port: int, storage_root: Path, local: Path) -> None:
    source = random_file(local / "f.bin", 5 * MiB + 7, seed=61)
    assert run_cli(port, "--hash", "blake3", "put", "f.bin", cwd=local).returncode == 0
    got = run_cli(port, "--hash", "blake3", "get", "f.bin", "back.bin", cwd=local)
    assert got.returncode == 0, got.stderr
    assert md5_of(local / "back.bin") == md5_of(source) == md5_of(storage_root / "f.bin")


def test_the_hash_can_come_from_the_environment(port: int, local: Path) -> None:
    random_file(local / "g.bin", 1000, seed=62)
    done = run_cli(port, "put", "g.bin", cwd=local, env={"FTP_HASH": "blake3"})
    assert done.returncode == 0, done.stderr
    bad = run_cli(port, "ls", cwd=local, env={"FTP_HASH": "crc32"})
    assert bad.returncode != 0 and "unknown hash" in bad.stderr


def test_library_results_carry_blake3_and_stat_knows_it(client: Client, port: int,
                                                        local: Path) -> None:
    source = random_file(local / "f.bin", 300_000, seed=63)
    with Client(LOOPBACK, port, timeout=30, hash="blake3") as fast:
        put = fast.put(source, "f.bin")
        assert (put.hash, put.digest) == ("blake3", blake3_of(source.read_bytes()))
        assert fast.stat("f.bin", hash="blake3")["blake3"] == put.digest
        again = fast.put(source, "f.bin")
        assert again.skipped and again.hash == "blake3"
        got = fast.get("f.bin", local / "back.bin")
        assert (got.hash, got.digest) == ("blake3", put.digest)


@pytest.mark.parametrize("at", [0.1, 0.5, 0.95])
def test_a_cut_blake3_put_resumes_with_only_the_rest(server, port: int, storage_root: Path,
                                                    local: Path, at: float) -> None:
    size = 8 * MiB
    source = random_file(local / "r.bin", size, seed=64)
    with CuttingProxy(port, cut_after_up=int(size * at)) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30, hash="blake3") as cut:
            with pytest.raises(ConnectionLost):
                cut.put(source, "r.bin")
    wait_released(server, "r.bin")
    with CuttingProxy(port) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30, hash="blake3") as again:
            result = again.put(source, "r.bin")
    assert result.offset > 0 and proxy.up < size - result.offset + 64 * 1024
    assert md5_of(storage_root / "r.bin") == md5_of(source)


@pytest.mark.parametrize("at", [0.1, 0.5, 0.95])
def test_a_cut_blake3_get_resumes_with_only_the_rest(port: int, storage_root: Path,
                                                    local: Path, at: float) -> None:
    size = 8 * MiB
    random_file(storage_root / "d.bin", size, seed=65)
    with CuttingProxy(port, cut_after_down=int(size * at)) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30, hash="blake3") as cut:
            with pytest.raises(ConnectionLost):
                cut.get("d.bin", local / "d.bin")
    with CuttingProxy(port) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30, hash="blake3") as again:
            result = again.get("d.bin", local / "d.bin")
    assert result.offset > 0 and proxy.down < size - result.offset + 64 * 1024
    assert md5_of(local / "d.bin") == md5_of(storage_root / "d.bin")


def test_a_server_without_blake3_answers_md5(port: int, storage_root: Path, local: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import ftpserver.fields
    import ftpserver.handler

    for module in (ftpserver.fields, ftpserver.handler):  # where the server asks
        monkeypatch.setattr(module, "available", lambda name: name != "blake3")
    source = random_file(local / "f.bin", 2 * MiB, seed=66)
    with Client(LOOPBACK, port, timeout=30, hash="blake3") as fast:
        put = fast.put(source, "f.bin")
        assert put.hash == "md5" and put.digest == md5_of(source)
        got = fast.get("f.bin", local / "back.bin")
        assert got.hash == "md5" and md5_of(local / "back.bin") == md5_of(source)
    tree = local / "tree"
    tree.mkdir()
    for i in range(5):
        random_file(tree / f"{i}.bin", 1000 + i, seed=i)
    batch = run_cli(port, "--hash", "blake3", "put", "-r", "tree", cwd=local)
    assert batch.returncode == 0, batch.stderr
    assert all(md5_of(storage_root / "tree" / f"{i}.bin") == md5_of(tree / f"{i}.bin")
               for i in range(5))


@pytest.fixture
def sock(port: int):
    with socket.create_connection((LOOPBACK, port), timeout=10) as connection:
        yield connection


def test_bad_blake3_trailers_are_refused(sock: socket.socket, storage_root: Path) -> None:
    data = b"x" * 1000
    header = {"cmd": "put", "filename": "t.bin", "filesize": len(data), "resume": True,
              "source": "s", "hash": "blake3"}
    assert ask(sock, header)["hash"] == "blake3"
    sock.sendall(data + raw_frame({"blake3": "0" * 64}))
    assert recv_frame(sock)["error"] == "checksum"
    assert ask(sock, {**header, "source": "s2"})["offset"] == 0
    sock.sendall(data + raw_frame({"md5": md5_of_bytes(data)}))  # the other hash's trailer
    assert recv_frame(sock)["error"] == "bad_request"
    assert not (storage_root / "t.bin").exists()


def md5_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()


def test_one_shot_put_with_a_blake3_field(port: int, storage_root: Path) -> None:
    data = b"hello blake3"
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(raw_frame({"cmd": "put", "filename": "o.txt", "filesize": len(data),
                                "hash": "blake3", "blake3": blake3_of(data)}) + data)
        reply = recv_frame(sock)
    assert reply["ok"] and reply["blake3"] == blake3_of(data)
    assert (storage_root / "o.txt").read_bytes() == data
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(raw_frame({"cmd": "put", "filename": "p.txt", "filesize": len(data),
                                "hash": "blake3", "blake3": "1" * 64}) + data)
        assert recv_frame(sock)["error"] == "checksum"
    assert not (storage_root / "p.txt").exists()
