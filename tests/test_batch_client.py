"""Folder transfers in a few round trips: what crosses the wire, unchanged trees, times kept,
an older server, cut batches, --checksum.  The real CLI against a real server."""
from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from ftpserver.config import Config
from ftpserver.errors import UnknownCommand
from ftpserver.handler import FTPHandler
from ftpserver.server import FTPServer

from helpers import LOOPBACK, CuttingProxy, md5_of, random_file, run_cli
from test_tree import assert_ok_summary, assert_same_tree

FILES = 300


def small_tree(top: Path, count: int = FILES) -> Path:
    for i in range(count):
        folder = top / ("" if i % 3 == 0 else f"d{i % 3}")
        folder.mkdir(parents=True, exist_ok=True)
        random_file(folder / f"f{i:03}.bin", 1000 + i, seed=i)
    return top


def requests(stream: bytes) -> list[dict[str, Any]]:
    """The request headers in a captured client->server stream, bodies skipped."""
    found, position = [], 0
    while position + 4 <= len(stream):
        (length,) = struct.unpack_from("<I", stream, position)
        header = json.loads(stream[position + 4:position + 4 + length])
        found.append(header)
        position += 4 + length
        if header.get("cmd") == "put" and header.get("stream"):
            position += header["filesize"] - header.get("offset", 0)
            (length,) = struct.unpack_from("<I", stream, position)
            position += 4 + length  # the trailer
    return found


def commands(stream: bytes) -> list[str]:
    return [header["cmd"] for header in requests(stream)]


def test_put_r_streams_the_files_after_a_few_plans(port: int, storage_root: Path,
                                                  local: Path) -> None:
    tree = small_tree(local / "tree")
    with CuttingProxy(port) as proxy:
        result = run_cli(proxy.port, "put", "-r", "tree", cwd=local)
    assert_ok_summary(result, transferred=FILES, already=0)
    assert_same_tree(tree, storage_root / "tree")
    sent = commands(bytes(proxy.captured))
    assert sent.count("put") == FILES
    assert all(h["stream"] for h in requests(bytes(proxy.captured)) if h["cmd"] == "put")
    # a handful of requests besides the puts, not a few per file
    assert len(sent) - FILES <= 8, sent[:20]


def test_an_unchanged_tree_sends_no_file_either_way(port: int, storage_root: Path,
                                                    local: Path) -> None:
    tree = small_tree(local / "tree")
    assert run_cli(port, "put", "-r", "tree", cwd=local).returncode == 0
    for path in tree.rglob("*.bin"):  # the server's copies keep the sender's times
        assert (storage_root / "tree" / path.relative_to(tree)).stat().st_mtime_ns == \
            path.stat().st_mtime_ns
    with CuttingProxy(port) as proxy:
        again = run_cli(proxy.port, "put", "-r", "tree", cwd=local)
    assert_ok_summary(again, transferred=0, already=FILES)
    assert "put" not in commands(bytes(proxy.captured))

    (local / "down").mkdir()
    assert run_cli(port, "get", "-r", "tree", "down", cwd=local).returncode == 0
    for path in tree.rglob("*.bin"):  # and the downloaded copies the server's
        assert (local / "down" / "tree" / path.relative_to(tree)).stat().st_mtime_ns == \
            path.stat().st_mtime_ns
    with CuttingProxy(port) as proxy:
        down_again = run_cli(proxy.port, "get", "-r", "tree", "down", cwd=local)
    assert_ok_summary(down_again, transferred=0, already=FILES)
    assert "get" not in commands(bytes(proxy.captured))


def test_a_changed_file_is_sent_again_and_checksum_finds_one_that_kept_its_time(
        port: int, storage_root: Path, local: Path) -> None:
    tree = small_tree(local / "tree", 12)
    assert run_cli(port, "put", "-r", "tree", cwd=local).returncode == 0
    grown = tree / "f000.bin"
    grown.write_bytes(grown.read_bytes() + b"more")
    sneaky = tree / "f003.bin"  # same size, time put back: only a hash tells
    info = sneaky.stat()
    sneaky.write_bytes(bytes(info.st_size))
    os.utime(sneaky, ns=(info.st_atime_ns, info.st_mtime_ns))
    quick = run_cli(port, "put", "-r", "tree", cwd=local)
    assert_ok_summary(quick, transferred=1, already=11)
    assert md5_of(storage_root / "tree" / "f000.bin") == md5_of(grown)
    thorough = run_cli(port, "put", "-r", "--checksum", "tree", cwd=local)
    assert_ok_summary(thorough, transferred=1, already=11)
    assert_same_tree(tree, storage_root / "tree")


def test_get_r_keeps_a_window_of_requests_in_flight(port: int, storage_root: Path,
                                                   local: Path) -> None:
    small_tree(storage_root / "tree")
    with CuttingProxy(port) as proxy:
        result = run_cli(proxy.port, "get", "-r", "tree", cwd=local)
    assert_ok_summary(result, transferred=FILES, already=0)
    assert_same_tree(storage_root / "tree", local / "tree")
    sent = commands(bytes(proxy.captured))
    assert sent.count("get") == FILES
    # The gets go out ahead of their replies: many of them before the first body came
    # back is what no one-at-a-time client would send.  (Counted from the capture, so
    # only the order on the wire matters, not timing.)
    first_gets = sent.index("get")
    assert sent[first_gets:first_gets + 16] == ["get"] * 16


class _OldHandler(FTPHandler):
    """A server from before batched puts: it knows no ``plan``."""

    def dispatch(self, header: dict[str, Any]) -> dict[str, Any] | None:
        if header.get("cmd") == "plan" or header.get("stream") is not None:
            raise UnknownCommand("unknown command 'plan'")
        return super().dispatch(header)


@pytest.fixture
def old_port(storage_root: Path) -> Iterator[int]:
    srv = FTPServer(Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30),
                    handler=_OldHandler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_an_older_server_still_gets_the_tree_file_by_file(old_port: int, storage_root: Path,
                                                          local: Path) -> None:
    tree = small_tree(local / "tree", 20)
    with CuttingProxy(old_port) as proxy:
        result = run_cli(proxy.port, "put", "-r", "tree", cwd=local)
    assert_ok_summary(result, transferred=20, already=0)
    assert_same_tree(tree, storage_root / "tree")
    assert b'"stream"' not in bytes(proxy.captured)


def test_a_cut_batch_resumes_file_by_file(port: int, storage_root: Path, local: Path) -> None:
    tree = local / "tree"
    tree.mkdir()
    for i in range(6):
        random_file(tree / f"big{i}.bin", 3 * 1024 * 1024, seed=i)
    with CuttingProxy(port, cut_after_up=10 * 1024 * 1024) as proxy:
        cut = run_cli(proxy.port, "put", "-r", "tree", cwd=local)
    assert cut.returncode != 0 and "Traceback" not in cut.stderr
    with CuttingProxy(port) as proxy:
        rerun = run_cli(proxy.port, "put", "-r", "tree", cwd=local)
    assert rerun.returncode == 0, rerun.stderr
    assert_same_tree(tree, storage_root / "tree")
    # the files that arrived before the cut were not sent again, the cut one resumed
    assert proxy.up < 18 * 1024 * 1024 - 8 * 1024 * 1024
