"""Batched puts on the wire: plan, streamed puts and their group commit, by raw frames."""
from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import LOOPBACK, ask, raw_frame, recv_frame


@pytest.fixture
def sock(port: int) -> Iterator[socket.socket]:
    with socket.create_connection((LOOPBACK, port), timeout=20) as connection:
        yield connection


def streamed(name: str, data: bytes, more: bool, offset: int = 0, mtime_ns: int | None = None,
             digest: str | None = None, source: str = "tag") -> bytes:
    """A streamed put: header, the body from ``offset``, the trailer."""
    header: dict[str, Any] = {"cmd": "put", "stream": True, "filename": name, "filesize": len(data),
                              "offset": offset, "source": source, "more": more}
    if mtime_ns is not None:
        header["mtime_ns"] = mtime_ns
    trailer = {"md5": digest or hashlib.md5(data).hexdigest()}
    return raw_frame(header) + data[offset:] + raw_frame(trailer)


def test_plan_creates_folders_and_tells_where_each_put_starts(sock: socket.socket,
                                                              storage_root: Path) -> None:
    (storage_root / "same.txt").write_bytes(b"hello")
    os.utime(storage_root / "same.txt", ns=(1, 1_600_000_000_123_456_789))
    (storage_root / "older.txt").write_bytes(b"hello")
    (storage_root / "dir").mkdir()
    reply = ask(sock, {"cmd": "plan", "folders": ["a", "a/b", "dir"], "files": [
        {"name": "a/b/new.txt", "size": 3, "source": "s1", "mtime_ns": 5},
        {"name": "same.txt", "size": 5, "source": "s2", "mtime_ns": 1_600_000_000_123_456_789},
        {"name": "older.txt", "size": 5, "source": "s3", "mtime_ns": 7},
        {"name": "same.txt", "size": 5, "source": "s4", "md5": hashlib.md5(b"hello").hexdigest()},
        {"name": "dir", "size": 1, "source": "s5"},
        {"name": "../out", "size": 1, "source": "s6"},
    ]})
    assert reply["ok"] is True
    assert reply["folders"] == [None, None, None]
    assert (storage_root / "a" / "b").is_dir()
    answers = [entry.get("error") or (entry["offset"], entry.get("same", False))
               for entry in reply["files"]]
    assert answers == [(0, False), (5, True), (0, False), (5, True), "is_directory", "forbidden"]


def test_plan_tells_the_offset_of_a_partial_from_the_same_source(sock: socket.socket, port: int) -> None:
    data = os.urandom(200_000)
    header = {"cmd": "put", "filename": "big.bin", "filesize": len(data), "resume": True,
              "source": "v1"}
    assert ask(sock, header)["offset"] == 0
    sock.sendall(data[:50_000])
    sock.close()
    with socket.create_connection((LOOPBACK, port), timeout=20) as again:
        for _ in range(200):  # the server writes what arrived and notices the cut a moment later
            reply = ask(again, {"cmd": "plan", "files": [
                {"name": "big.bin", "size": len(data), "source": "v1"},
                {"name": "big.bin", "size": len(data), "source": "v2"}]})
            if reply["files"][0]["offset"] == 50_000:
                break
            time.sleep(0.02)
        assert reply["files"] == [{"offset": 50_000}, {"offset": 0}]  # not the same file yet
        again.sendall(streamed("big.bin", data, more=False, offset=50_000, source="v1"))
        assert recv_frame(again)["ok"] is True


def test_streamed_puts_arrive_in_order_with_their_times(sock: socket.socket,
                                                        storage_root: Path) -> None:
    files = {f"f{i:03}.txt": os.urandom(i * 37) for i in range(60)}
    stream = b"".join(streamed(name, data, more=i < len(files) - 1, mtime_ns=1_700_000_000_000_000_000 + i)
                      for i, (name, data) in enumerate(files.items()))
    sock.sendall(stream)  # all of it before reading a reply
    replies = [recv_frame(sock) for _ in files]
    assert [r["filename"] for r in replies] == [f"/{name}" for name in files]
    assert all(r["ok"] and r["md5"] == hashlib.md5(files[r["filename"][1:]]).hexdigest()
               for r in replies)
    for i, (name, data) in enumerate(files.items()):
        assert (storage_root / name).read_bytes() == data
        assert (storage_root / name).stat().st_mtime_ns == 1_700_000_000_000_000_000 + i
    assert not [p for p in storage_root.iterdir() if p.name.startswith(".")]


def test_a_bad_file_in_a_stream_is_refused_in_its_place_and_the_rest_go_on(
        sock: socket.socket, storage_root: Path) -> None:
    good = os.urandom(1000)
    stream = (streamed("one.bin", good, more=True)
              + streamed("bad.bin", good, more=True, digest="0" * 32)            # wrong hash
              + streamed("../escape.bin", good, more=True)                        # refused first
              + streamed("stale.bin", good, more=True, offset=500)               # nothing held
              + streamed("two.bin", good, more=False))
    sock.sendall(stream)
    replies = [recv_frame(sock) for _ in range(5)]
    assert [r.get("error") for r in replies] == [None, "checksum", "forbidden", "stale_offset", None]
    assert sorted(p.name for p in storage_root.iterdir()) == ["one.bin", "two.bin"]
    assert ask(sock, {"cmd": "pwd"}) == {"ok": True, "path": "/"}  # still in step


def test_held_replies_go_before_the_next_command(sock: socket.socket) -> None:
    sock.sendall(streamed("a.txt", b"aaa", more=True) + raw_frame({"cmd": "ls"}))
    assert recv_frame(sock)["filename"] == "/a.txt"
    listing = recv_frame(sock)
    assert [e["name"] for e in listing["entries"]] == ["a.txt"]


def test_a_stream_whose_replies_are_never_read_is_still_committed(port: int,
                                                                  storage_root: Path) -> None:
    with socket.create_connection((LOOPBACK, port), timeout=20) as connection:
        connection.sendall(streamed("x.txt", b"x" * 10, more=True) + streamed("y.txt", b"y", more=True))
    deadline = time.monotonic() + 20
    while not (storage_root / "y.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (storage_root / "x.txt").read_bytes() == b"x" * 10
    assert (storage_root / "y.txt").read_bytes() == b"y"


def test_a_streamed_put_with_an_unreadable_size_ends_the_connection(sock: socket.socket) -> None:
    sock.sendall(raw_frame({"cmd": "put", "stream": True, "filename": "x", "filesize": "ten",
                            "source": "t"}))
    assert recv_frame(sock)["error"] == "bad_request"
    assert sock.recv(1) == b""


def test_a_folder_moved_while_its_files_wait_for_the_group_commit(sock: socket.socket,
                                                                  storage_root: Path) -> None:
    # The check that a file's folder is still where it was is made once per folder of
    # a group: every file of the moved folder is refused, the others are committed.
    (storage_root / "a").mkdir()
    (storage_root / "b").mkdir()
    data = {name: os.urandom(3000) for name in ("a/x1", "a/x2", "b/y", "b/z")}
    sock.sendall(b"".join(streamed(name, data[name], more=True) for name in ("a/x1", "b/y", "a/x2")))
    held = storage_root / "a" / ".x2.ftp-partial"
    deadline = time.monotonic() + 20
    while not (held.exists() and held.stat().st_size == 3000) and time.monotonic() < deadline:
        time.sleep(0.01)
    (storage_root / "a").rename(storage_root / "a2")
    sock.sendall(streamed("b/z", data["b/z"], more=False))
    replies = [recv_frame(sock) for _ in range(4)]
    assert [r.get("error") for r in replies] == ["not_found", None, "not_found", None]
    assert "moved or removed" in replies[0]["message"] and "/a/x1" in replies[0]["message"]
    assert "/a/x2" in replies[2]["message"]
    assert [(storage_root / "b" / n).read_bytes() for n in ("y", "z")] == [data["b/y"], data["b/z"]]
    assert not [p for p in (storage_root / "a2").iterdir() if not p.name.startswith(".")]
    reply = ask(sock, {"cmd": "plan", "files": [{"name": "a2/x1", "size": 3000, "source": "tag"}]})
    assert reply["files"] == [{"offset": 3000}]  # the partial stays, resumable where it went


def test_no_file_takes_its_name_before_its_bytes_are_on_disk(sock: socket.socket, storage_root: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # The order the code follows, seen by wrapping the two calls (the server runs in this
    # process): each file flushed, then renamed; its folder flushed after the renames and
    # before the replies; a single put flushed before its rename too.
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("flushed", os.fstat(fd).st_ino))

    def replace(src: str, dst: str, *, src_dir_fd: int | None = None,
                dst_dir_fd: int | None = None) -> None:
        inode = os.stat(src, dir_fd=src_dir_fd, follow_symlinks=False).st_ino
        real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        events.append(("renamed", inode))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    (storage_root / "sub").mkdir()
    files = {f"sub/f{i:02}.bin": os.urandom(5000 + i) for i in range(20)}
    sock.sendall(b"".join(streamed(name, data, more=i < len(files) - 1)
                          for i, (name, data) in enumerate(files.items())))
    assert all(recv_frame(sock)["ok"] for _ in files)
    seen = list(events)  # all that happened before the last reply was sent
    renamed = [i for i, (kind, _) in enumerate(seen) if kind == "renamed"]
    assert len(renamed) == len(files)
    for at in renamed:
        assert ("flushed", seen[at][1]) in seen[:at], f"renamed before flushed: {seen}"
    folder = (storage_root / "sub").stat().st_ino
    assert ("flushed", folder) in seen[renamed[-1]:]
    assert {seen[at][1] for at in renamed} == {(storage_root / n).stat().st_ino for n in files}

    events.clear()
    data = os.urandom(300_000)
    assert ask(sock, {"cmd": "put", "filename": "one.bin", "filesize": len(data), "resume": True,
                      "source": "s"})["offset"] == 0
    sock.sendall(data + raw_frame({"md5": hashlib.md5(data).hexdigest()}))
    assert recv_frame(sock)["ok"] is True
    inode = (storage_root / "one.bin").stat().st_ino
    assert events.index(("flushed", inode)) < events.index(("renamed", inode))
