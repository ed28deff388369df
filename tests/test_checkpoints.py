"""A resumed transfer does not hash again the bytes already held (md5 checkpoints).

The receiver saves the md5 state of what it holds when a transfer is cut, the
sender logs one every CHECKPOINT_EVERY bytes, so the rerun hashes only the rest.
The tests count the bytes read back from disk for hashing (a counting wrapper
around ``os.preadv``, which every file hash goes through), and check that a
wrong saved state never yields a wrong file: the transfer restarts instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import socket
import threading
import time
from pathlib import Path

import pytest

import ftpserver.transfer
from ftpclient.checkpoints import CheckpointLog, cache_folder
from ftpclient.client import Client
from ftpserver.digest import Checkpoint, Hash, resumable

#: The hashes whose states can be saved (blake3's cannot: a resume hashes again).
HASHES = ("md5", "sha256")
from ftpserver.errors import ConnectionLost
from ftpserver.server import FTPServer
from ftpserver.transfer import Writeback

from helpers import LOOPBACK, CuttingProxy, ask, md5_of, random_file
from test_resume import client_partial, server_partial, wait_released

pytestmark = pytest.mark.skipif(not resumable(), reason="md5 states cannot be saved here")

MiB = 1024 * 1024
SIZE = 8 * MiB
EVERY = 1 * MiB


@pytest.fixture(autouse=True)
def small_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints (and the start of writing to disk) every MiB, so that files of a
    few MiB have several."""
    monkeypatch.setattr(ftpserver.transfer, "CHECKPOINT_EVERY", EVERY)
    monkeypatch.setattr(Writeback, "EVERY", EVERY)


class HashReads:
    """Counts the bytes every file hash in this process reads back from disk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        self._lock = threading.Lock()
        real = os.preadv

        def counting(fd: int, buffers: list, offset: int) -> int:
            got = real(fd, buffers, offset)
            with self._lock:
                self.bytes += got
            return got

        monkeypatch.setattr(os, "preadv", counting)


def cut_put(port: int, source: Path, name: str, at: float = 0.6, hash: str = "md5") -> None:
    """Upload through a proxy that cuts the link at ``at`` of the body.

    On loopback the bytes can outrun the sender's hashing thread, which logs the
    checkpoints; a pause at the first progress report lets it get ahead, as it
    is on a real network.
    """
    pauses = iter([0.5])

    def pause(done: int, total: int) -> None:
        time.sleep(next(pauses, 0))

    with CuttingProxy(port, cut_after_up=int(SIZE * at)) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30, hash=hash) as client:
            with pytest.raises(ConnectionLost):
                client.put(source, name, progress=pause)


def cut_get(port: int, name: str, dest: Path, at: float = 0.6, hash: str = "md5") -> None:
    with CuttingProxy(port, cut_after_down=int(SIZE * at)) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30, hash=hash) as client:
            with pytest.raises(ConnectionLost):
                client.get(name, dest)


# -- the hash itself -------------------------------------------------------------

@pytest.mark.parametrize("hash", HASHES)
@pytest.mark.parametrize("split", [0, 1, 63, 64, 65, 1000, 65536 + 7])
def test_a_hash_taken_up_from_a_saved_state_equals_hashlib(split: int, hash: str) -> None:
    data = os.urandom(200_000)
    first = Hash(hash)
    first.update(bytearray(data[:split]))
    checkpoint = first.checkpoint()
    assert checkpoint is not None and checkpoint.offset == split
    second = Hash(hash, Checkpoint.from_json(json.loads(json.dumps(checkpoint.to_json()))))
    second.update(memoryview(bytearray(data[split:])))
    second.update(b"")
    assert second.hexdigest() == hashlib.new(hash, data).hexdigest()
    assert second.hexdigest() == second.hexdigest(), "hexdigest must not end the hash"


def test_md5_hashes_every_byte_of_a_view_of_wider_items() -> None:
    import array
    words = array.array("I", range(1000))
    digest = Hash("md5")
    digest.update(memoryview(words))
    digest.update(memoryview(bytes(words)))  # read-only
    assert digest.hexdigest() == hashlib.md5(bytes(words) * 2).hexdigest()
    assert digest.length == 2 * len(bytes(words))


@pytest.mark.parametrize("hash", HASHES)
@pytest.mark.parametrize("state", ["", "zz", "00" * 10, "00" * 92, "00" * 112])
def test_a_hash_refuses_a_state_that_is_not_one_of_that_many_bytes(state: str, hash: str) -> None:
    with pytest.raises(ValueError):
        Hash(hash, Checkpoint(100, state, hash=hash))
    real = Hash(hash)
    real.update(b"x" * 100)
    checkpoint = real.checkpoint()
    assert checkpoint is not None
    with pytest.raises(ValueError):
        Hash(hash, checkpoint._replace(offset=101))
    with pytest.raises(ValueError):
        Hash(HASHES[1 - HASHES.index(hash)], checkpoint)


def test_a_sha256_state_of_another_digest_length_is_refused() -> None:
    real = Hash("sha256")
    real.update(b"x" * 100)
    checkpoint = real.checkpoint()
    assert checkpoint is not None
    raw = bytes.fromhex(checkpoint.state)
    sha224 = raw[:-4] + (28).to_bytes(4, sys.byteorder)  # what SHA224 keeps in the same struct
    with pytest.raises(ValueError):
        Hash("sha256", checkpoint._replace(state=sha224.hex()))


# -- uploads ----------------------------------------------------------------------

@pytest.mark.parametrize("hash", HASHES)
def test_resumed_put_hashes_only_the_missing_bytes_on_both_ends(
        server: FTPServer, port: int, storage_root: Path, local: Path,
        monkeypatch: pytest.MonkeyPatch, hash: str) -> None:
    name = "resume-no-rehash.bin"
    source = random_file(local / name, SIZE, seed=41)
    cut_put(port, source, name, hash=hash)
    wait_released(server, name)
    partial, meta = server_partial(storage_root, name)
    held = partial.stat().st_size
    assert 0 < held < SIZE
    saved = json.loads(meta.read_text())["checkpoint"]
    assert saved["offset"] == held, "the server saves the state of exactly the bytes it holds"

    reads = HashReads(monkeypatch)
    with Client(LOOPBACK, port, timeout=30, hash=hash) as client:
        result = client.put(source, name)
    assert result.offset == held and result.hash == hash
    assert result.digest == hashlib.new(hash, source.read_bytes()).hexdigest()
    assert md5_of(storage_root / name) == md5_of(source)
    # Without checkpoints the server would read `held` bytes and the client all SIZE.
    assert reads.bytes <= (SIZE - held) + EVERY, (reads.bytes, SIZE - held)
    assert not CheckpointLog.for_upload(source, _source_tag(source), hash).path.exists(), \
        "a finished upload's checkpoints are forgotten"


def test_a_state_from_another_boot_is_not_trusted(
        server: FTPServer, port: int, storage_root: Path, local: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes not yet on disk when the state was saved may be gone after a restart
    of the machine: such a state is used only within the boot that saved it."""
    name = "other-boot.bin"
    source = random_file(local / name, SIZE, seed=46)
    cut_put(port, source, name)
    wait_released(server, name)
    partial, meta = server_partial(storage_root, name)
    held = partial.stat().st_size
    fields = json.loads(meta.read_text())
    if "boot" not in fields["checkpoint"]:
        pytest.skip("no boot id here: states are saved after a flush to disk instead")
    fields["checkpoint"]["boot"] = "another-boot"
    meta.write_text(json.dumps(fields))

    reads = HashReads(monkeypatch)
    with Client(LOOPBACK, port, timeout=30) as client:
        result = client.put(source, name)
    assert result.offset == held, "the bytes held still resume, they are hashed again"
    assert reads.bytes >= held + (SIZE - held)
    assert md5_of(storage_root / name) == md5_of(source)


def flip_byte(path: Path, at: int) -> None:
    """Change one byte in place, as a stray write or a bad sector would."""
    with open(path, "r+b") as file:
        file.seek(at)
        byte = file.read(1)
        file.seek(at)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_a_changed_server_partial_is_hashed_again_and_the_right_file_stored(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    """The saved state only stands for the partial as it was saved; once the bytes
    held change, they are hashed again, the md5s differ and the upload restarts."""
    name = "changed-partial.bin"
    source = random_file(local / name, SIZE, seed=48)
    cut_put(port, source, name)
    wait_released(server, name)
    partial, _ = server_partial(storage_root, name)
    flip_byte(partial, 1000)
    with Client(LOOPBACK, port, timeout=30) as client:
        result = client.put(source, name)
    assert result.offset == 0
    assert md5_of(storage_root / name) == md5_of(source)


def test_a_changed_download_partial_is_hashed_again_and_the_right_file_kept(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "changed-get-partial.bin"
    remote = random_file(storage_root / name, SIZE, seed=49)
    dest = local / name
    cut_get(port, name, dest)
    partial, _ = client_partial(dest)
    flip_byte(partial, 1000)
    with Client(LOOPBACK, port, timeout=30) as client:
        result = client.get(name, dest)
    assert result.offset == 0
    assert md5_of(dest) == md5_of(remote)


def test_a_body_cut_just_before_its_trailer_keeps_the_whole_state(
        server: FTPServer, port: int, storage_root: Path, local: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The client may still be hashing when the last byte has gone; a cut then
    leaves the server with the whole body, and its state, not a full re-hash."""
    name = "no-trailer.bin"
    source = random_file(local / name, SIZE, seed=55)
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        reply = ask(sock, {"cmd": "put", "filename": name, "filesize": SIZE, "resume": True,
                           "source": _source_tag(source)})
        assert reply["ok"] and reply["offset"] == 0
        sock.sendall(source.read_bytes())  # and no trailer
    wait_released(server, name)
    _, meta = server_partial(storage_root, name)
    assert json.loads(meta.read_text())["checkpoint"]["offset"] == SIZE

    reads = HashReads(monkeypatch)
    with Client(LOOPBACK, port, timeout=30) as client:
        result = client.put(source, name)
    assert result.offset == SIZE and result.digest == md5_of(source)
    assert reads.bytes == SIZE, "only the client hashed its file; the server took up its state"
    assert md5_of(storage_root / name) == md5_of(source)


def _source_tag(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}-{st.st_ino}"


def test_wrong_server_state_restarts_the_upload_and_stores_the_right_file(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "bad-server-state.bin"
    source = random_file(local / name, SIZE, seed=42)
    cut_put(port, source, name)
    wait_released(server, name)
    _, meta = server_partial(storage_root, name)
    fields = json.loads(meta.read_text())
    held = fields["checkpoint"]["offset"]
    other = Hash("md5")
    other.update(os.urandom(held))  # a well-formed state of other bytes
    fields["checkpoint"]["state"] = other.checkpoint().state  # type: ignore[union-attr]
    meta.write_text(json.dumps(fields))

    with Client(LOOPBACK, port, timeout=30) as client:
        result = client.put(source, name)
    assert result.offset == 0, "after the mismatch the upload starts again from zero"
    assert md5_of(storage_root / name) == md5_of(source)


def test_wrong_client_checkpoints_restart_the_upload_and_store_the_right_file(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "bad-client-state.bin"
    source = random_file(local / name, SIZE, seed=43)
    cut_put(port, source, name)
    wait_released(server, name)
    log = CheckpointLog.for_upload(source, _source_tag(source))
    assert log is not None and log.path.is_file(), "the sender keeps checkpoints as it hashes"
    lines = log.path.read_text().splitlines()
    assert len(lines) > 2
    wrong = []
    for line in lines[1:]:
        offset = json.loads(line)["offset"]
        other = Hash("md5")
        other.update(os.urandom(offset))
        wrong.append(json.dumps(other.checkpoint()._asdict()))  # type: ignore[union-attr]
    log.path.write_text("\n".join(lines[:1] + wrong) + "\n")

    with Client(LOOPBACK, port, timeout=30) as client:
        result = client.put(source, name)
    assert result.offset == 0
    assert md5_of(storage_root / name) == md5_of(source)


def test_stale_checkpoint_logs_are_removed(tmp_path: Path, local: Path) -> None:
    folder = cache_folder()
    assert folder.is_relative_to(tmp_path), "tests keep the cache in their own folder"
    folder.mkdir(parents=True)
    old, fresh = folder / ("a" * 32 + ".log"), folder / ("b" * 32 + ".log")
    for log in (old, fresh):
        log.write_text('{"source": "x"}\n')
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    source = random_file(local / "f.bin", 10)
    log = CheckpointLog.for_upload(source, _source_tag(source))
    assert log is not None
    log.add(Checkpoint(0, "00"))
    assert not old.exists() and fresh.exists() and log.path.exists()


# -- downloads --------------------------------------------------------------------

@pytest.mark.parametrize("hash", HASHES)
def test_resumed_get_hashes_nothing_it_already_holds(
        server: FTPServer, port: int, storage_root: Path, local: Path,
        monkeypatch: pytest.MonkeyPatch, hash: str) -> None:
    name = "get-no-rehash.bin"
    remote = random_file(storage_root / name, SIZE, seed=44)
    dest = local / name
    cut_get(port, name, dest, hash=hash)
    partial, meta = client_partial(dest)
    held = partial.stat().st_size
    assert 0 < held < SIZE
    assert json.loads(meta.read_text())["checkpoint"]["offset"] == held
    with Client(LOOPBACK, port, timeout=30, hash=hash) as client:
        client.stat(name, hash=hash)  # the server hashes the file now, not in the count below
        reads = HashReads(monkeypatch)
        result = client.get(name, dest)
    assert result.offset == held
    assert md5_of(dest) == md5_of(remote)
    assert result.digest == hashlib.new(hash, remote.read_bytes()).hexdigest()
    assert reads.bytes == 0, "neither end re-read the file to hash it"


def test_wrong_download_state_restarts_the_get_and_keeps_the_right_file(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "bad-get-state.bin"
    remote = random_file(storage_root / name, SIZE, seed=45)
    dest = local / name
    cut_get(port, name, dest)
    _, meta = client_partial(dest)
    fields = json.loads(meta.read_text())
    other = Hash("md5")
    other.update(os.urandom(fields["checkpoint"]["offset"]))
    fields["checkpoint"]["state"] = other.checkpoint().state  # type: ignore[union-attr]
    meta.write_text(json.dumps(fields))
    with Client(LOOPBACK, port, timeout=30) as client:
        result = client.get(name, dest)
    assert result.offset == 0
    assert md5_of(dest) == md5_of(remote)
