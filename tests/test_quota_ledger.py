"""Quotas that hold whatever the account's clients do: folders moved deeper than
PATH_MAX, a file moved away while its replacement is uploaded, folders by the
thousand, and anonymous sessions with ``anonymous_quota``.

What is checked is what the account holds on disk, counted with a walk by
directory descriptors (so no path length stops it), against its quota.
"""
from __future__ import annotations

import hashlib
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ftpclient.client import Client
from ftpserver.auth import ScramClient, hash_password
from ftpserver.config import Config, User
from ftpserver.errors import FTPError
from ftpserver.server import FTPServer

from helpers import LOOPBACK, ServerProcess, raw_frame, recv_frame, run_cli

PASSWORD = "c4r0l"
MiB = 1 << 20
TIMEOUT = 10


def held_bytes(root: Path) -> int:
    """Bytes in regular files under ``root``, at any depth (partial uploads included)."""
    total = 0
    for _, _, files, topfd in os.fwalk(root):
        for name in files:
            info = os.stat(name, dir_fd=topfd, follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


QuotaServer = Callable[[int], tuple[int, Path]]


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[QuotaServer]:
    """``quota_server(quota)`` starts an in-process server with user carol under that
    quota; returns its port and carol's root."""
    started: list[tuple[FTPServer, threading.Thread]] = []

    def make(quota: int) -> tuple[int, Path]:
        root = tmp_path / "users" / "carol"
        user = User("carol", password=hash_password(PASSWORD, iterations=4096).line(),
                    root=root, quota=quota)
        srv = FTPServer(Config(host=LOOPBACK, port=0, root=tmp_path / "storage", idle_timeout=30,
                               users={"carol": user}))
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        started.append((srv, thread))
        root.mkdir(parents=True, exist_ok=True)
        return srv.server_address[1], root

    yield make
    for srv, thread in started:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def logged_in(port: int) -> socket.socket:
    """A raw connection logged in as carol."""
    sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
    scram = ScramClient("carol", PASSWORD)
    sock.sendall(raw_frame({"cmd": "login", "message": scram.first()}))
    challenge = recv_frame(sock)["message"]
    sock.sendall(raw_frame({"cmd": "login", "message": scram.final(challenge)}))
    assert recv_frame(sock)["ok"] is True
    return sock


def ask(sock: socket.socket, header: dict[str, Any]) -> dict[str, Any]:
    sock.sendall(raw_frame(header))
    return recv_frame(sock)


def body(seed: int, size: int) -> bytes:
    block = hashlib.sha512(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


# -- a) folders moved deeper than PATH_MAX --------------------------------------------

def _name(prefix: str, level: int) -> str:
    return f"{prefix}{level:02d}".ljust(250, "n")  # 250 bytes: 16 of them pass 4096


def _try(action: Callable[[], object], allowed: tuple[str, ...]) -> bool:
    """Run a client call; True if it worked, False if refused with an allowed code."""
    try:
        action()
    except FTPError as error:
        if error.code not in allowed:
            raise
        return False
    return True


def test_folders_moved_deeper_than_path_max_still_count(quota_server: QuotaServer,
                                                        local: Path) -> None:
    """Fill a chain of folders, move it under another so its real path passes 4096
    bytes, and again: the account never holds more than its quota."""
    quota = MiB
    port, root = quota_server(quota)
    piece = local / "piece.bin"
    piece.write_bytes(body(1, 400 * 1024))  # two fit in the quota, three do not
    stored = refused = 0
    with Client(LOOPBACK, port, timeout=30) as client:
        client.login("carol", PASSWORD)
        base = ""
        for level in range(6):  # ~1.5 KB of path: the parking place
            base += "/" + _name("base", level)
            client.mkdir(base)
        for cycle in range(5):
            top = f"/c{cycle}"
            if not _try(lambda: client.mkdir(top), ("quota_exceeded",)):
                refused += 1
                continue
            leaf = top
            for level in range(11):  # ~2.8 KB of path: stays under 4096 from the root
                leaf += "/" + _name("c", level)
                if not _try(lambda: client.mkdir(leaf), ("quota_exceeded",)):
                    break
            else:
                if _try(lambda: client.put(piece, leaf + "/piece.bin", exact=True),
                        ("quota_exceeded",)):
                    stored += 1
                else:
                    refused += 1
            # Parked under base, its files lie over 4096 bytes from the root.
            _try(lambda: client.mv(top, base + top), ("quota_exceeded", "forbidden"))
            assert held_bytes(root) <= quota, (
                f"cycle {cycle}: {held_bytes(root)} bytes held with a quota of {quota} "
                f"({stored} puts stored)")
    assert stored >= 1
    assert refused >= 1, "five pieces of 400 KiB all fitted a 1 MiB quota"


# -- b) the file being replaced is moved away meanwhile ---------------------------------

def test_moving_away_the_file_a_put_replaces_keeps_the_quota(quota_server: QuotaServer) -> None:
    quota = MiB
    port, root = quota_server(quota)
    size = 600_000  # one fits, two do not
    old, new = body(2, size), body(3, size)
    with logged_in(port) as sock:
        sock.sendall(raw_frame({"cmd": "put", "filename": "x", "filesize": size}) + old)
        assert recv_frame(sock)["ok"] is True
    writer = logged_in(port)
    with writer:
        first = ask(writer, {"cmd": "put", "filename": "x", "filesize": size, "resume": True,
                             "source": "v2"})
        assert first["ok"] is True, first  # replacing x fits: x is not counted twice
        writer.sendall(new[:size // 2])
        with logged_in(port) as other:
            moved = ask(other, {"cmd": "mv", "path": "x", "to": "y"})
        if not moved["ok"]:
            assert moved["error"] == "busy", moved
        try:
            writer.sendall(new[size // 2:] + raw_frame({"md5": hashlib.md5(new).hexdigest()}))
            final: dict[str, Any] | None = recv_frame(writer)
        except OSError:
            final = None
    if moved["ok"] and final is not None:
        assert final["ok"] is False and final["error"] == "quota_exceeded", final
    if not moved["ok"]:  # x stayed put: its replacement goes through as usual
        assert final is not None and final["ok"] is True, final
        assert (root / "x").read_bytes() == new
    assert held_bytes(root) <= quota, f"{held_bytes(root)} bytes held with a quota of {quota}"


# -- c) folders cost -----------------------------------------------------------------

def test_folders_count_against_the_quota(quota_server: QuotaServer) -> None:
    port, root = quota_server(64 * 1024)
    codes: set[str] = set()
    with logged_in(port) as sock:
        for number in range(2000):
            reply = ask(sock, {"cmd": "mkdir", "path": f"folder{number:04d}"})
            if not reply["ok"]:
                codes.add(reply["error"])
                break
    assert codes == {"quota_exceeded"}, (
        f"{len(os.listdir(root))} folders made under a 64 KiB quota, then {codes or 'no refusal'}")


# -- d) anonymous_quota -------------------------------------------------------------

def test_anonymous_quota_limits_anonymous_puts(tmp_path: Path, local: Path) -> None:
    root = tmp_path / "storage"
    root.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(f"host: {LOOPBACK}\nport: 0\nroot: {root}\nidle_timeout: 30\n"
                      "anonymous_quota: 1MiB\n")
    server = ServerProcess(config)
    try:
        refused = None
        try:
            server.start()
        except RuntimeError as error:
            refused = str(error).strip()
        if refused:
            pytest.fail(f"the server did not start with anonymous_quota: {refused}")
        with socket.create_connection((LOOPBACK, server.port), timeout=TIMEOUT) as sock:
            sock.sendall(raw_frame({"cmd": "put", "filename": "big.bin", "filesize": 2 * MiB}))
            reply = recv_frame(sock)
        assert reply["ok"] is False and reply["error"] == "quota_exceeded", reply
        (local / "big.bin").write_bytes(body(4, 2 * MiB))
        done = run_cli(server.port, "-q", "put", "big.bin", cwd=local)
        assert done.returncode != 0 and "quota" in done.stderr.lower(), done.stderr
        (local / "small.bin").write_bytes(body(5, 100_000))
        done = run_cli(server.port, "-q", "put", "small.bin", cwd=local)
        assert done.returncode == 0, done.stderr
        assert held_bytes(root) <= MiB
        assert (root / "small.bin").read_bytes() == body(5, 100_000)
    finally:
        server.stop()
