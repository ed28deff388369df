"""Writing a received file out to disk while more of it arrives."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ftpserver.transfer import Writeback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_writeback_starts_the_disk_every_so_many_bytes(tmp_path: Path) -> None:
    every = Writeback.EVERY
    with open(tmp_path / "f.bin", "wb", buffering=0) as file:
        writeback = Writeback(file.fileno(), 100)
        for _ in range(3):
            file.write(b"x" * (every // 2))
            writeback(every // 2)
        assert (writeback.started, writeback.end) == (100 + every, 100 + 3 * (every // 2))
        file.write(b"x" * (every // 2))
        writeback(every // 2)
        assert writeback.started == writeback.end == 100 + 2 * every
    assert (tmp_path / "f.bin").stat().st_size == 2 * every


def test_writeback_on_a_file_that_refuses_it_costs_the_upload_nothing() -> None:
    read, write = os.pipe()  # sync_file_range fails on a pipe
    try:
        writeback = Writeback(write, 0)
        for _ in range(3):
            writeback(Writeback.EVERY)  # must not raise
        assert writeback.end == 3 * Writeback.EVERY
    finally:
        os.close(read)
        os.close(write)
