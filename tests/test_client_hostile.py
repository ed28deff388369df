"""The client trusts no name a server sends: a fake server on loopback, speaking the
wire frames of docs/PROTOCOL.md, lists names that would write outside the
destination (``../..``, ``a/b``, absolute paths, NUL, ``.``, ``..``, backslashes),
and the real ``ftpclient`` must write only under the destination it was given.
"""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import LoopbackListener, raw_frame, recv_frame, run_cli

#: Names a server must not make the client write; "{abs}" becomes an absolute path
#: outside the destination (inside the test's own folder).
EVIL_FILES = ["../../.bashrc", "a/b", "\\x", ".", "..", "nul\0byte", "{abs}/x", "",
              "../escape.txt"]
EVIL_DIRS = ["..", "../up", "{abs}", "d/e"]
#: A name that is safe to write but must not reach the terminal raw.
ESCAPE = "esc\x1b]0;pwned\x07.txt"

GOOD = {"TREE/good.txt": b"good bytes\n", "TREE/sub/inner.txt": b"inner\n",
        f"TREE/{ESCAPE}": b"escape\n"}


def listings(absolute: Path) -> dict[str, list[dict[str, Any]]]:
    """What the server lists in each folder."""
    def evil(names: list[str], kind: str) -> list[dict[str, Any]]:
        return [{"name": n.format(abs=absolute), "type": kind, "size": 4 if kind == "file" else 0,
                 "mtime": 0} for n in names]

    return {
        "TREE": [*evil(EVIL_FILES, "file"), *evil(EVIL_DIRS, "dir"),
                 {"name": "good.txt", "type": "file", "size": len(GOOD["TREE/good.txt"]), "mtime": 0},
                 {"name": ESCAPE, "type": "file", "size": len(GOOD[f"TREE/{ESCAPE}"]), "mtime": 0},
                 {"name": "sub", "type": "dir", "size": 0, "mtime": 0},
                 {"name": "broken", "type": "dir", "size": 0, "mtime": 0}],
        "TREE/sub": [{"name": "inner.txt", "type": "file", "size": 6, "mtime": 0},
                     {"name": "../../../sub-escape", "type": "file", "size": 4, "mtime": 0}],
        "TREE/broken": [{"name": "x", "type": "file", "size": "four", "mtime": 0}],
    }


EVIL_BODY = b"EVIL"


class HostileServer(LoopbackListener):
    """Answers stat, ls and get from the tables above; any other file it is asked for
    is served as EVIL_BODY, so a client that followed an evil name would write it."""

    LIFETIME = 120.0

    def __init__(self, absolute: Path) -> None:
        self.listings = listings(absolute)
        self.requests: list[dict[str, Any]] = []
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            for _ in range(10_000):
                request = recv_frame(conn)
                self.requests.append(request)
                self._answer(conn, request)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _answer(self, conn: socket.socket, request: dict[str, Any]) -> None:
        cmd, path = request.get("cmd"), str(request.get("path", request.get("filename", ""))).strip("/")
        if cmd == "stat":
            kind = "dir" if path in self.listings else "file"
            size = len(GOOD.get(path, EVIL_BODY)) if kind == "file" else 0
            conn.sendall(raw_frame({"ok": True, "path": "/" + path,
                                    "entry": {"name": path.rsplit("/", 1)[-1], "type": kind,
                                              "size": size, "mtime": 0}}))
        elif cmd == "ls":
            conn.sendall(raw_frame({"ok": True, "path": "/" + path,
                                    "entries": self.listings.get(path, []), "more": False}))
        elif cmd == "get":
            body = GOOD.get(path, EVIL_BODY)
            # The reply names a file the client never asked for: it must not matter.
            conn.sendall(raw_frame({"ok": True, "filename": "/../../reply\n\x1b[31m",
                                    "filesize": len(body), "offset": 0, "source": "t"}) + body
                         + raw_frame({"ok": True, "md5": hashlib.md5(body).hexdigest()}))
        else:
            conn.sendall(raw_frame({"ok": False, "error": "unknown_command", "message": "no"}))



@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[HostileServer]:
    server = HostileServer(tmp_path / "abs-evil")
    yield server
    server.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Where the client runs: home/work, with a file beside it that must stay untouched."""
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (tmp_path / "home" / ".bashrc").write_text("mine\n")
    return work


def everything(top: Path) -> dict[str, bytes | None]:
    """Every path under ``top`` with its bytes (None for a folder)."""
    return {p.relative_to(top).as_posix(): None if p.is_dir() else p.read_bytes()
            for p in sorted(top.rglob("*"))}


def outside(tmp_path: Path, dest: Path) -> dict[str, bytes | None]:
    return {name: data for name, data in everything(tmp_path).items()
            if not (tmp_path / name).is_relative_to(dest)}


def assert_nothing_escaped(before: dict[str, bytes | None], tmp_path: Path, dest: Path) -> None:
    assert outside(tmp_path, dest) == before  # the absolute names pointed in here


def failures(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


def test_get_tree_writes_only_plain_names_under_the_destination(
        hostile: HostileServer, home: Path, tmp_path: Path) -> None:
    dest = home / "dest"
    before = outside(tmp_path, dest)
    result = run_cli(hostile.port, "get", "-r", "-v", "TREE", "dest", cwd=home, timeout=30)
    assert_nothing_escaped(before, tmp_path, dest)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "\x1b" not in result.stderr + result.stdout  # names are escaped before they are shown

    got = everything(dest)
    assert got == {"broken": None, "sub": None, "good.txt": GOOD["TREE/good.txt"],
                   "sub/inner.txt": GOOD["TREE/sub/inner.txt"], ESCAPE: GOOD[f"TREE/{ESCAPE}"]}

    lines = result.stderr.splitlines()
    assert lines[0].startswith("3 transferred") and "received" in lines[0], result.stderr
    evil = len(EVIL_FILES) + len(EVIL_DIRS) + 1  # and sub's ../../../sub-escape
    assert f", {evil + 1} failed" in lines[0], result.stderr  # + the malformed listing
    failed = failures(result.stderr)
    assert len(failed) == evil + 1, result.stderr
    refused = [line for line in failed if "refused a name from the server" in line]
    assert len(refused) == evil, failed
    assert any(line.startswith("TREE/../../.bashrc: ") for line in refused), refused
    assert any(line.startswith("TREE/nul\\x00byte: ") for line in refused), refused
    assert any(line.startswith("TREE/broken: ") and "malformed" in line for line in failed), failed
    # The client never asked for a file under an evil name.
    asked = {r["filename"] for r in hostile.requests if r.get("cmd") == "get"}
    assert asked == {"TREE/good.txt", "TREE/sub/inner.txt", f"TREE/{ESCAPE}"}


def test_get_pattern_refuses_evil_matches(hostile: HostileServer, home: Path, tmp_path: Path) -> None:
    dest = home / "out"
    dest.mkdir()
    before = outside(tmp_path, dest)
    result = run_cli(hostile.port, "get", "-v", "TREE/*", "out/", cwd=home, timeout=30)
    assert_nothing_escaped(before, tmp_path, dest)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert everything(dest) == {"good.txt": GOOD["TREE/good.txt"], ESCAPE: GOOD[f"TREE/{ESCAPE}"]}
    refused = [line for line in failures(result.stderr) if "refused a name" in line]
    assert len(refused) == len(EVIL_FILES) + len(EVIL_DIRS), result.stderr


def test_single_get_ignores_the_name_in_the_reply(hostile: HostileServer, home: Path,
                                                  tmp_path: Path) -> None:
    before = outside(tmp_path, home)
    result = run_cli(hostile.port, "get", "TREE/good.txt", cwd=home, timeout=30)
    assert result.returncode == 0, result.stderr
    assert_nothing_escaped(before, tmp_path, home)
    assert everything(home) == {"good.txt": GOOD["TREE/good.txt"]}


def test_ls_shows_control_characters_escaped(hostile: HostileServer, home: Path) -> None:
    for args in (("ls", "TREE"), ("ls", "-l", "TREE")):
        result = run_cli(hostile.port, *args, cwd=home, timeout=30)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "esc\\x1b]0;pwned\\x07.txt" in result.stdout


def test_shell_get_refuses_evil_names(hostile: HostileServer, home: Path, tmp_path: Path) -> None:
    dest = home / "shelled"
    before = outside(tmp_path, dest)
    result = run_cli(hostile.port, input="get -r TREE shelled\n", cwd=home, timeout=30)
    assert_nothing_escaped(before, tmp_path, dest)
    assert result.returncode == 1
    assert (dest / "good.txt").read_bytes() == GOOD["TREE/good.txt"]
    assert "Traceback" not in result.stdout + result.stderr
    assert "\x1b" not in result.stdout
    assert os.listdir(dest / "sub") == ["inner.txt"]
