"""Writing a received file out to disk while more of it arrives (and out of the cache)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftpclient.client import Client
from ftpserver.errors import ConnectionLost
from ftpserver.transfer import Writeback

from helpers import LOOPBACK, CuttingProxy, md5_of, random_file


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_writeback_starts_the_disk_every_so_many_bytes(tmp_path: Path) -> None:
    every = Writeback.EVERY
    with open(tmp_path / "f.bin", "wb", buffering=0) as file:
        writeback = Writeback(file.fileno(), 100, 2 * every)
        for _ in range(3):
            file.write(b"x" * (every // 2))
            writeback(every // 2)
        assert (writeback.started, writeback.end) == (100 + every, 100 + 3 * (every // 2))
        file.write(b"x" * (every // 2))
        writeback(every // 2)
        assert writeback.started == writeback.end == 100 + 2 * every
    assert (tmp_path / "f.bin").stat().st_size == 2 * every


def _reserves_space(folder: Path) -> bool:
    """Whether the file system under ``folder`` reserves space ahead (fallocate KEEP_SIZE)."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    with open(folder / "probe", "wb") as probe:
        return ctypes.CDLL(None).fallocate(probe.fileno(), 1, ctypes.c_int64(0),
                                           ctypes.c_int64(4096)) == 0


def test_a_body_s_space_is_reserved_ahead_but_the_partial_shows_only_what_it_holds(
        tmp_path: Path) -> None:
    if not _reserves_space(tmp_path):
        pytest.skip("this file system reserves no space ahead")
    path, length = tmp_path / "f.bin", 6 * Writeback.EVERY
    with open(path, "wb", buffering=0) as file:
        file.write(b"y" * 1000)
        writeback = Writeback(file.fileno(), 1000, length)
        assert os.fstat(file.fileno()).st_blocks * 512 < Writeback.EVERY  # nothing before bytes
        file.write(b"x" * 5000)
        writeback(5000)
        held = os.fstat(file.fileno())
        assert held.st_size == 6000          # a resume still starts where the bytes end
        # Reserved ahead of the writer, not the whole body: a sender that stalls holds little.
        assert Writeback.AHEAD <= held.st_blocks * 512 < length
        writeback.release()
        assert os.fstat(file.fileno()).st_blocks * 512 < Writeback.EVERY
    assert path.read_bytes() == b"y" * 1000 + b"x" * 5000


def test_writeback_on_a_file_that_refuses_it_costs_the_upload_nothing() -> None:
    read, write = os.pipe()  # sync_file_range fails on a pipe
    try:
        writeback = Writeback(write, 0, 3 * Writeback.EVERY)
        for _ in range(3):
            writeback(Writeback.EVERY)  # must not raise
        assert writeback.end == 3 * Writeback.EVERY
    finally:
        os.close(read)
        os.close(write)



def _cached_bytes(path: Path) -> int:
    """How many bytes of ``path`` sit in the page cache (util-linux's fincore)."""
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


@pytest.mark.skipif(shutil.which("fincore") is None or not sys.platform.startswith("linux"),
                    reason="needs Linux and util-linux's fincore")
def test_a_large_download_leaves_the_page_cache_to_what_was_there(
        client: Client, storage_root: Path, local: Path) -> None:
    size = 6 * Writeback.EVERY + 12345
    source = random_file(storage_root / "big.bin", size, seed=71)
    client.get("big.bin", local / "big.bin")
    # Each stretch left the cache once on disk; the last two (written just before the
    # closing fsync) may stay.
    assert _cached_bytes(local / "big.bin") <= 2 * Writeback.EVERY + 12345
    assert md5_of(local / "big.bin") == md5_of(source)


def test_a_cut_download_gives_back_the_space_it_reserved(port: int, storage_root: Path,
                                                         local: Path) -> None:
    if not _reserves_space(local):
        pytest.skip("this file system reserves no space ahead")
    size = 6 * Writeback.EVERY
    random_file(storage_root / "big.bin", size, seed=72)
    with CuttingProxy(port, cut_after_down=2 * Writeback.EVERY) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30) as cut:
            with pytest.raises(ConnectionLost):
                cut.get("big.bin", local / "big.bin")
    partial = next(local.glob("*.ftp-partial"))
    held = partial.stat()
    assert 0 < held.st_size < size
    assert held.st_blocks * 512 < held.st_size + Writeback.EVERY  # not the whole file's room
    with Client(LOOPBACK, port, timeout=30) as again:                # and the rest resumes
        assert again.get("big.bin", local / "big.bin").offset == held.st_size
    assert md5_of(local / "big.bin") == md5_of(storage_root / "big.bin")


def test_a_cut_upload_gives_back_the_space_it_reserved(server, port: int, storage_root: Path,
                                                       local: Path) -> None:
    from test_resume import wait_released

    if not _reserves_space(storage_root):
        pytest.skip("this file system reserves no space ahead")
    size = 6 * Writeback.EVERY
    source = random_file(local / "up.bin", size, seed=73)
    with CuttingProxy(port, cut_after_up=2 * Writeback.EVERY) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30) as cut:
            with pytest.raises(ConnectionLost):
                cut.put(source, "up.bin")
    wait_released(server, "up.bin")
    held = (storage_root / ".up.bin.ftp-partial").stat()
    assert 0 < held.st_size < size
    assert held.st_blocks * 512 < held.st_size + Writeback.EVERY
    with Client(LOOPBACK, port, timeout=30) as again:
        assert again.put(source, "up.bin").offset == held.st_size
    assert md5_of(storage_root / "up.bin") == md5_of(source)
