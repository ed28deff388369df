"""End to end: the real ``ftpclient`` command line and the Client library against a
real server on an ephemeral loopback port (the ``server`` fixture), plus raw-socket
puts as the tutorial's client sends them.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from ftpclient.client import Client
from ftpserver.errors import Busy, FTPError
from ftpserver.protocol import encode_frame, read_frame

from helpers import LOOPBACK, CuttingProxy, md5_of, random_file, run_cli

MiB = 1024 * 1024

# -- helpers ------------------------------------------------------------------------


def assert_ok(result: Any) -> None:
    """The command succeeded, and (stderr not being a terminal) printed nothing on stderr."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def assert_one_line_error(result: Any, cause: str) -> None:
    """The command failed with one plain line on stderr naming ``cause``."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert cause in lines[0].lower(), lines[0]


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def stored(storage_root: Path) -> set[str]:
    """Every path under the server's root, partials included, relative to it."""
    return {p.relative_to(storage_root).as_posix() for p in storage_root.rglob("*")}


def raw_put(port: int, name: str, body: bytes, **extra: Any) -> socket.socket:
    """Send a tutorial-style one-shot put: length, header and body in one go, no round trip."""
    head = json.dumps({"cmd": "put", "filename": name, "filesize": len(body), **extra}).encode()
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    sock.sendall(struct.pack("i", len(head)) + head + body)
    return sock


def wait_for(path: Path, md5: str, timeout: float = 10) -> None:
    """Wait until ``path`` exists; from the first moment it does, it must be complete."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)
    assert md5_of(path) == md5


def put_resuming(port: int, local: Path, progress: Any) -> Any:
    """Client.put, waiting out the moment the server still holds a cut upload's partial."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with Client(LOOPBACK, port, timeout=30) as client:
                return client.put(local, progress=progress)
        except Busy:
            assert time.monotonic() < deadline, "the cut upload's partial stayed busy"
            time.sleep(0.05)


# -- put, ls, get through the command line -------------------------------------------

SIZES = [0, 1, 65536, 65537, 5 * MiB + 7]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
def test_put_ls_get_round_trip(size: int, port: int, storage_root: Path, local: Path,
                               tmp_path: Path) -> None:
    source = random_file(local / "data.bin", size, seed=size)
    assert_ok(run_cli(port, "put", "data.bin", cwd=local))
    assert (storage_root / "data.bin").stat().st_size == size
    assert md5_of(storage_root / "data.bin") == md5_of(source)

    listing = run_cli(port, "ls", cwd=local)
    assert_ok(listing)
    assert listing.stdout.splitlines() == ["data.bin"]

    down = tmp_path / "down"
    down.mkdir()
    assert_ok(run_cli(port, "get", "data.bin", str(down), cwd=local))
    assert md5_of(down / "data.bin") == md5_of(source)
    assert sorted(p.name for p in down.iterdir()) == ["data.bin"]  # no partial left behind


@pytest.mark.parametrize("name", ["年度 报告.txt", "two  spaces .txt", "café ñ 😀.bin", "-dash.txt"])
def test_names_with_spaces_and_non_ascii(name: str, port: int, storage_root: Path, local: Path,
                                         tmp_path: Path) -> None:
    source = random_file(local / name, 70000, seed=7)
    assert_ok(run_cli(port, "put", "--", name, cwd=local))
    assert md5_of(storage_root / name) == md5_of(source)

    listing = run_cli(port, "ls", cwd=local)
    assert_ok(listing)
    assert listing.stdout.splitlines() == [name]

    down = tmp_path / "down"
    down.mkdir()
    assert_ok(run_cli(port, "get", "--", name, str(down), cwd=local))
    assert md5_of(down / name) == md5_of(source)


def test_put_with_a_new_remote_name_and_get_with_a_new_local_name(
        port: int, storage_root: Path, local: Path, client: Client) -> None:
    client.mkdir("docs")
    source = random_file(local / "a.bin", 1000, seed=1)
    assert_ok(run_cli(port, "put", "a.bin", "docs/年度 报告.bin", cwd=local))
    assert md5_of(storage_root / "docs" / "年度 报告.bin") == md5_of(source)

    assert_ok(run_cli(port, "get", "docs/年度 报告.bin", "copy.bin", cwd=local))
    assert md5_of(local / "copy.bin") == md5_of(source)


@pytest.mark.parametrize("remote", ["docs/", "docs", "/docs", "/docs/"])
def test_put_into_an_existing_remote_folder(remote: str, port: int, storage_root: Path,
                                            local: Path, client: Client) -> None:
    client.mkdir("docs")
    source = random_file(local / "notes.txt", 3000, seed=3)
    assert_ok(run_cli(port, "put", "notes.txt", remote, cwd=local))
    assert md5_of(storage_root / "docs" / "notes.txt") == md5_of(source)
    assert not (storage_root / "notes.txt").exists()


def test_put_into_a_missing_remote_folder_is_an_error(port: int, storage_root: Path,
                                                      local: Path) -> None:
    random_file(local / "notes.txt", 10)
    for remote in ("nowhere/", "nowhere/notes.txt"):
        result = run_cli(port, "put", "notes.txt", remote, cwd=local)
        assert_one_line_error(result, "no such")
    assert stored(storage_root) == set()  # missing parents are not created


def test_get_into_an_existing_local_folder(port: int, storage_root: Path, local: Path) -> None:
    (storage_root / "docs").mkdir()
    source = random_file(storage_root / "docs" / "r.bin", 100000, seed=9)
    (local / "inbox").mkdir()
    assert_ok(run_cli(port, "get", "docs/r.bin", "inbox", cwd=local))
    assert md5_of(local / "inbox" / "r.bin") == md5_of(source)


def test_get_without_local_saves_the_base_name_in_the_current_folder(
        port: int, storage_root: Path, local: Path) -> None:
    (storage_root / "docs").mkdir()
    source = random_file(storage_root / "docs" / "r.bin", 10, seed=9)
    assert_ok(run_cli(port, "get", "docs/r.bin", cwd=local))
    assert md5_of(local / "r.bin") == md5_of(source)


# -- ls output ------------------------------------------------------------------------


def make_tree(storage_root: Path) -> None:
    (storage_root / "docs").mkdir()
    random_file(storage_root / "small.txt", 100)
    random_file(storage_root / "年度 报告.txt", 2048)
    random_file(storage_root / "docs" / "inner.bin", 5)


def test_ls_plain_lists_one_name_per_line(port: int, storage_root: Path, local: Path) -> None:
    make_tree(storage_root)
    result = run_cli(port, "ls", cwd=local)
    assert_ok(result)
    assert sorted(result.stdout.splitlines()) == sorted(["docs", "small.txt", "年度 报告.txt"])

    result = run_cli(port, "ls", "docs", cwd=local)
    assert_ok(result)
    assert result.stdout.splitlines() == ["inner.bin"]


LONG_LINE = re.compile(r"(?P<kind>[-d]) +(?P<size>\S+)  (?P<when>\S.*\S)  (?P<name>.+)")


def test_ls_long_shows_type_size_time_and_name(port: int, storage_root: Path, local: Path) -> None:
    make_tree(storage_root)
    result = run_cli(port, "ls", "-l", cwd=local)
    assert_ok(result)
    matches = [LONG_LINE.fullmatch(line) for line in result.stdout.splitlines()]
    assert all(matches), result.stdout
    rows = {m["name"]: m for m in matches if m}
    assert set(rows) == {"docs/", "small.txt", "年度 报告.txt"}
    assert rows["docs/"]["kind"] == "d"
    assert (rows["small.txt"]["kind"], rows["small.txt"]["size"]) == ("-", "100")
    assert (rows["年度 报告.txt"]["kind"], rows["年度 报告.txt"]["size"]) == ("-", "2.0K")
    # Sizes are right-aligned: every name starts in the same column.
    assert len({m.start("name") for m in matches if m}) == 1


@pytest.mark.parametrize("path, expected", [("", "/"), ("docs", "/docs"), ("/docs/", "/docs")])
def test_ls_json_is_a_document_for_scripts(path: str, expected: str, port: int,
                                           storage_root: Path, local: Path) -> None:
    make_tree(storage_root)
    result = run_cli(port, "ls", "--json", *([path] if path else []), cwd=local)
    assert_ok(result)
    document = json.loads(result.stdout)
    assert document["path"] == expected
    for entry in document["entries"]:
        assert set(entry) == {"name", "type", "size", "mtime", "mtime_ns"}
        assert isinstance(entry["mtime"], (int, float))
    entries = {e["name"]: (e["type"], e["size"]) for e in document["entries"]}
    if expected == "/":
        assert entries == {"docs": ("dir", 0), "small.txt": ("file", 100),
                           "年度 报告.txt": ("file", 2048)}
    else:
        assert entries == {"inner.bin": ("file", 5)}


def test_ls_of_a_big_folder_lists_every_entry(port: int, storage_root: Path, local: Path) -> None:
    names = {f"file {i:04d} 报告.txt" for i in range(777)}  # several reply frames
    for name in names:
        (storage_root / name).write_bytes(b"")
    result = run_cli(port, "ls", cwd=local)
    assert_ok(result)
    assert sorted(result.stdout.splitlines()) == sorted(names)
    result = run_cli(port, "ls", "--json", cwd=local)
    assert_ok(result)
    assert {e["name"] for e in json.loads(result.stdout)["entries"]} == names


def test_ls_json_of_an_empty_folder(port: int, local: Path) -> None:
    result = run_cli(port, "ls", "--json", cwd=local)
    assert_ok(result)
    assert json.loads(result.stdout) == {"path": "/", "entries": []}


# -- identical files are not sent again; different ones replace -----------------------


def test_re_putting_an_identical_file_sends_nothing(client: Client, storage_root: Path,
                                                    local: Path) -> None:
    source = random_file(local / "same.bin", 300000, seed=4)
    first = client.put(source)
    assert (first.skipped, first.sent, first.size) == (False, 300000, 300000)
    mtime = (storage_root / "same.bin").stat().st_mtime_ns

    again = client.put(source)
    assert again.skipped is True
    assert again.sent == 0
    assert again.digest == first.digest == md5_of(source)
    assert (storage_root / "same.bin").stat().st_mtime_ns == mtime  # not rewritten


def test_getting_a_file_already_present_locally_sends_nothing(client: Client, storage_root: Path,
                                                              local: Path) -> None:
    source = random_file(storage_root / "same.bin", 300000, seed=5)
    first = client.get("same.bin", local)
    assert (first.skipped, first.sent) == (False, 300000)
    mtime = (local / "same.bin").stat().st_mtime_ns

    again = client.get("same.bin", local)
    assert again.skipped is True
    assert again.sent == 0
    assert again.digest == md5_of(source)
    assert (local / "same.bin").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("old_size, new_size", [(1000, 1000), (100000, 10), (10, 200000)],
                         ids=["same-size", "shrinks", "grows"])
def test_putting_new_content_replaces_the_remote_file(old_size: int, new_size: int, port: int,
                                                      storage_root: Path, local: Path) -> None:
    random_file(local / "f.bin", old_size, seed=1)
    assert_ok(run_cli(port, "put", "f.bin", cwd=local))
    new = random_file(local / "f.bin", new_size, seed=2)
    assert_ok(run_cli(port, "put", "f.bin", cwd=local))
    assert md5_of(storage_root / "f.bin") == md5_of(new)
    assert stored(storage_root) == {"f.bin"}


@pytest.mark.parametrize("old_size, new_size", [(1000, 1000), (100000, 10), (10, 200000)],
                         ids=["same-size", "shrinks", "grows"])
def test_getting_new_content_replaces_the_local_file(old_size: int, new_size: int, port: int,
                                                     storage_root: Path, local: Path) -> None:
    random_file(storage_root / "f.bin", old_size, seed=1)
    assert_ok(run_cli(port, "get", "f.bin", cwd=local))
    new = random_file(storage_root / "f.bin", new_size, seed=2)
    assert_ok(run_cli(port, "get", "f.bin", cwd=local))
    assert md5_of(local / "f.bin") == md5_of(new)
    assert sorted(p.name for p in local.iterdir()) == ["f.bin"]


# -- errors: non-zero exit, one line on stderr, nothing left behind -----------------------

ERRORS = [
    # (command line, word the message must hold)
    (["get", "missing.bin"], "no such"),
    (["get", "docs/missing.bin"], "no such"),
    (["put", "missing.bin"], "no such"),
    (["put", "here.bin", "../x"], "outside"),
    (["put", "here.bin", "/../x"], "outside"),
    (["put", "here.bin", "a/../../x"], "outside"),
    (["get", "../x"], "outside"),
    (["ls", "../"], "outside"),
    (["ls", "missing"], "no such"),
]


@pytest.mark.parametrize("args, cause", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_errors_exit_non_zero_with_one_line(args: list[str], cause: str, port: int,
                                            storage_root: Path, local: Path,
                                            tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"canary")  # what "../x" would reach from the root
    (storage_root / "docs").mkdir()
    random_file(local / "here.bin", 1000)
    result = run_cli(port, *args, cwd=local)
    assert_one_line_error(result, cause)
    assert result.stdout == ""
    assert (tmp_path / "x").read_bytes() == b"canary"
    assert stored(storage_root) == {"docs"}
    assert sorted(p.name for p in local.iterdir()) == ["here.bin"]


@pytest.mark.parametrize("args", [["ls"], ["put", "here.bin"], ["get", "there.bin"]],
                         ids=["ls", "put", "get"])
def test_an_unreachable_server_is_one_line(args: list[str], local: Path) -> None:
    random_file(local / "here.bin", 10)
    result = run_cli(free_port(), *args, cwd=local, timeout=30)
    assert_one_line_error(result, "unreachable")
    assert sorted(p.name for p in local.iterdir()) == ["here.bin"]


# -- progress -------------------------------------------------------------------------


def assert_progress(calls: list[tuple[int, int]], offset: int, size: int) -> None:
    assert calls, "progress was never called"
    assert calls[0] == (offset, size)
    assert calls[-1] == (size, size)
    assert all(total == size for _, total in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done), "progress went backwards"


@pytest.mark.parametrize("size", [0, 1, 200000], ids=lambda s: f"{s}B")
def test_progress_runs_from_zero_to_size(size: int, client: Client, local: Path,
                                         tmp_path: Path) -> None:
    source = random_file(local / "p.bin", size, seed=size)
    calls: list[tuple[int, int]] = []
    result = client.put(source, progress=lambda d, t: calls.append((d, t)))
    assert result.offset == 0
    assert_progress(calls, 0, size)

    down = tmp_path / "down"
    down.mkdir()
    calls.clear()
    result = client.get("p.bin", down, progress=lambda d, t: calls.append((d, t)))
    assert result.offset == 0
    assert_progress(calls, 0, size)
    assert md5_of(down / "p.bin") == md5_of(source)


def test_a_resumed_put_reports_progress_from_its_offset(port: int, storage_root: Path,
                                                        local: Path) -> None:
    size = 5 * MiB
    source = random_file(local / "big.bin", size, seed=11)
    with CuttingProxy(port, cut_after_up=2 * MiB) as proxy:
        with pytest.raises(FTPError):
            with Client(LOOPBACK, proxy.port, timeout=30) as cut:
                cut.put(source)
    assert not (storage_root / "big.bin").exists()

    calls: list[tuple[int, int]] = []
    result = put_resuming(port, source, lambda d, t: calls.append((d, t)))
    assert 0 < result.offset < size
    assert result.sent == size - result.offset
    assert_progress(calls, result.offset, size)
    assert md5_of(storage_root / "big.bin") == md5_of(source)
    assert stored(storage_root) == {"big.bin"}  # the partial is gone


def test_a_resumed_get_reports_progress_from_its_offset(port: int, storage_root: Path,
                                                        local: Path) -> None:
    size = 5 * MiB
    source = random_file(storage_root / "big.bin", size, seed=12)
    with CuttingProxy(port, cut_after_down=2 * MiB) as proxy:
        with pytest.raises(FTPError):
            with Client(LOOPBACK, proxy.port, timeout=30) as cut:
                cut.get("big.bin", local)
    assert not (local / "big.bin").exists()

    calls: list[tuple[int, int]] = []
    with Client(LOOPBACK, port, timeout=30) as client:
        result = client.get("big.bin", local, progress=lambda d, t: calls.append((d, t)))
    assert 0 < result.offset < size
    assert_progress(calls, result.offset, size)
    assert md5_of(local / "big.bin") == md5_of(source)
    assert sorted(p.name for p in local.iterdir()) == ["big.bin"]


# -- the tutorial's client: header and body at once, no round trip ---------------------


@pytest.mark.parametrize("size", [0, 1, 65537, 3 * MiB], ids=lambda s: f"{s}B")
def test_tutorial_client_put_without_reading_the_reply(size: int, port: int,
                                                       storage_root: Path) -> None:
    body = random_file(storage_root.parent / "body", size, seed=size).read_bytes()
    sock = raw_put(port, "t.bin", body)
    sock.close()  # the tutorial never reads a reply
    wait_for(storage_root / "t.bin", hashlib.md5(body).hexdigest())


def test_tutorial_put_reply_comes_after_the_body(port: int, storage_root: Path) -> None:
    body = bytes(range(256)) * 1000
    with raw_put(port, "t.bin", body) as sock, sock.makefile("rb") as reader:
        reply = read_frame(reader)
        assert reply is not None and reply["ok"] is True
        assert reply["md5"] == hashlib.md5(body).hexdigest()
        assert md5_of(storage_root / "t.bin") == reply["md5"]  # ok only once under its final name
        # The same connection goes on serving requests.
        sock.sendall(encode_frame({"cmd": "ls", "path": ""}))
        listing = read_frame(reader)
    assert listing is not None and [e["name"] for e in listing["entries"]] == ["t.bin"]


@pytest.mark.parametrize("old", [None, b"the older file"], ids=["new-name", "over-an-older-file"])
def test_one_shot_put_with_a_wrong_md5_is_refused(old: bytes | None, port: int,
                                                  storage_root: Path) -> None:
    if old is not None:
        (storage_root / "t.bin").write_bytes(old)
    body = b"new content " * 10000
    with raw_put(port, "t.bin", body, md5="0" * 32) as sock, sock.makefile("rb") as reader:
        reply = read_frame(reader)
    assert reply is not None
    assert reply["ok"] is False
    assert reply["error"] == "checksum"
    assert isinstance(reply.get("message"), str) and reply["message"]
    if old is None:
        assert stored(storage_root) == set()
    else:
        assert (storage_root / "t.bin").read_bytes() == old
        assert stored(storage_root) == {"t.bin"}


def test_one_shot_put_with_the_right_md5_is_stored(port: int, storage_root: Path) -> None:
    body = b"checked content " * 10000
    digest = hashlib.md5(body).hexdigest()
    with raw_put(port, "t.bin", body, md5=digest.upper()) as sock, sock.makefile("rb") as reader:
        reply = read_frame(reader)
    assert reply is not None and reply["ok"] is True and reply["md5"] == digest
    assert md5_of(storage_root / "t.bin") == digest


@pytest.mark.slow
def test_a_file_over_4_gib_round_trips(port: int, storage_root: Path, local: Path,
                                       tmp_path: Path) -> None:
    # Past 2**32: sizes and offsets must never pass through a 32-bit field.
    size = 4 * 1024**3 + 12345
    source = local / "huge.bin"
    with open(source, "wb") as file:  # sparse but for a marked head and tail
        file.write(b"head" * 1024)
        file.seek(size - 4096)
        file.write(b"tail" * 1024)
    put = run_cli(port, "-q", "put", "huge.bin", cwd=local, timeout=600)
    assert put.returncode == 0, put.stderr
    assert (storage_root / "huge.bin").stat().st_size == size
    back = tmp_path / "back"
    back.mkdir()
    got = run_cli(port, "-q", "get", "huge.bin", str(back) + "/", cwd=local, timeout=600)
    assert got.returncode == 0, got.stderr
    assert md5_of(back / "huge.bin") == md5_of(source)
