"""blake3 as a negotiated hash: round trips, resumes cut anywhere, a server without it,
bad trailers, the one-shot put and stat."""
from __future__ import annotations

import random
import shutil
import socket
from pathlib import Path

import pytest

from ftpclient.client import Client
from ftpserver.digest import CHECKPOINT_EVERY, Hash, available, new_hash
from ftpserver.errors import ConnectionLost

from helpers import LOOPBACK, CuttingProxy, ask, md5_of, random_file, raw_frame, recv_frame, run_cli
from test_resume import wait_released

pytestmark = pytest.mark.skipif(not available("blake3"), reason="blake3 is not installed")

MiB = 1024 * 1024


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


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


EVERY = CHECKPOINT_EVERY
BIG = 2 * EVERY + 12345       # marks at 1 and 2 x EVERY


@pytest.mark.parametrize("keep_cache", [True, False])
def test_a_large_cut_blake3_put_resumes_checked_in_two_parts(
        server, port: int, storage_root: Path, local: Path, cache_home: Path,
        keep_cache: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither end hashes the bytes held again: the server kept the digest of those
    before its last mark, the client finds the same in its cache (or, without it,
    hashes only them)."""
    source = random_file(local / "big.bin", BIG, seed=67)
    with CuttingProxy(port, cut_after_up=EVERY + EVERY // 2) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30, hash="blake3") as cut:
            with pytest.raises(ConnectionLost):
                cut.put(source, "big.bin")
    wait_released(server, "big.bin")
    if not keep_cache:
        shutil.rmtree(cache_home)
    hashed: list[int] = []
    update = Hash.update

    def counted(self: Hash, data: bytes | bytearray | memoryview) -> None:
        hashed.append(memoryview(data).nbytes)
        update(self, data)

    with monkeypatch.context() as patch, CuttingProxy(port) as proxy:
        patch.setattr(Hash, "update", counted)   # both ends run in this process
        with Client(LOOPBACK, proxy.port, timeout=30, hash="blake3") as again:
            result = again.put(source, "big.bin")
    # Each end hashed the bytes after the mark once; the client without its cache also
    # the bytes before it; nobody the rest of what the server held.
    assert sum(hashed) == 2 * (BIG - EVERY) + (0 if keep_cache else EVERY)
    assert result.split == EVERY <= result.offset
    assert proxy.up < BIG - result.offset + 64 * 1024
    data = source.read_bytes()
    assert result.digest == blake3_of(data[EVERY:])
    assert (storage_root / "big.bin").read_bytes() == data
    with Client(LOOPBACK, port, timeout=30, hash="blake3") as check:  # and stat hashes it whole
        assert check.stat("big.bin", hash="blake3")["blake3"] == blake3_of(data)


def _cut_raw_put(server, port: int, data: bytes, held: int) -> dict:
    """A resumable blake3 put of ``data`` whose connection ends after ``held`` bytes."""
    header = {"cmd": "put", "filename": "raw.bin", "filesize": len(data), "resume": True,
              "source": "s", "hash": "blake3", "split": True}
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        reply = ask(sock, header)
        sock.sendall(data[reply["offset"]:held])
    wait_released(server, "raw.bin")
    return header


def test_a_resume_split_is_checked_and_older_clients_get_the_whole_check(
        server, port: int, storage_root: Path) -> None:
    data = random_bytes(BIG, seed=68)
    right_before, right_after = blake3_of(data[:EVERY]), blake3_of(data[EVERY:])
    for before, after in ((blake3_of(b"x" + data[1:EVERY]), right_after),
                          (right_before, blake3_of(data[EVERY:-1] + b"x"))):
        header = _cut_raw_put(server, port, data, EVERY + 1000)
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            reply = ask(sock, header)
            assert (reply["offset"], reply["split"]) == (EVERY + 1000, EVERY)
            sock.sendall(data[reply["offset"]:] + raw_frame(
                {"blake3": after, "blake3_before": before}))
            assert recv_frame(sock)["error"] == "checksum"     # either part wrong is refused
            assert not (storage_root / "raw.bin").exists()
            assert ask(sock, header)["offset"] == 0            # and the partial is gone
    old = {key: value for key, value in header.items() if key != "split"}
    _cut_raw_put(server, port, data, EVERY + 1000)
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        reply = ask(sock, old)                                 # a client that cannot split
        assert reply["offset"] == EVERY + 1000 and "split" not in reply
        sock.sendall(data[reply["offset"]:] + raw_frame({"blake3": blake3_of(data)}))
        assert recv_frame(sock)["ok"]
    assert (storage_root / "raw.bin").read_bytes() == data


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
