"""Resources and faults: connection slots, per-address limits, header time, buffer memory.

Each test runs a real server on 127.0.0.1 and speaks to it over sockets; where
a fault is needed (a thread that cannot start) it is injected for a moment, the
server itself is the real one.
"""
from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from ftpclient.client import Client
from ftpserver import transfer
from ftpserver.handler import FTPHandler
from ftpserver.server import FTPServer
from ftpserver.transfer import SMALL_BUFFER, BufferBudget

from helpers import LOOPBACK, ServerProcess, ask, md5_of, random_file, raw_frame, recv_frame
from test_hardening import ServerFactory, closed_by_peer, make_server  # noqa: F401 (a fixture)


def connect(port: int, host: str = LOOPBACK) -> socket.socket:
    """A connection to the server from the loopback address ``host``."""
    return socket.create_connection((LOOPBACK, port), timeout=10, source_address=(host, 0))


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    """Sockets a test opens, closed at teardown."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


# -- connection slots --------------------------------------------------------------

def fail_thread_starts(monkeypatch: pytest.MonkeyPatch, server: FTPServer, count: int) -> list[int]:
    """Make the next ``count`` handler threads of ``server`` fail to start, as when
    the process is out of memory or threads; return the countdown."""
    left = [count]
    start = threading.Thread.start

    def failing_start(thread: threading.Thread) -> None:
        if left[0] and getattr(thread, "_target", None) == server.process_request_thread:
            left[0] -= 1
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    return left


def test_a_thread_that_cannot_start_gives_its_slot_back(make_server: ServerFactory,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        held: list[socket.socket]) -> None:
    srv = make_server(max_connections=4)
    port = srv.server_address[1]
    left = fail_thread_starts(monkeypatch, srv, 4)
    for _ in range(4):
        with connect(port) as sock:
            assert closed_by_peer(sock)  # dropped, not left hanging
    assert left == [0]
    held.extend(connect(port) for _ in range(4))
    for sock in held:  # every slot serves again
        assert ask(sock, {"cmd": "pwd"}) == {"ok": True, "path": "/"}


def test_one_address_cannot_take_every_slot(server: FTPServer, port: int,
                                            held: list[socket.socket]) -> None:
    held.extend(connect(port) for _ in range(server.config.max_per_address))
    for sock in held:  # each is being served
        assert ask(sock, {"cmd": "pwd"}) == {"ok": True, "path": "/"}
    with connect(port) as extra:
        reply = recv_frame(extra)
        assert reply["ok"] is False and reply["error"] == "busy"
        assert reply["message"] == "busy: too many connections from your address"
        assert closed_by_peer(extra)
    with connect(port, "127.0.0.2") as neighbour:  # another address is served
        assert ask(neighbour, {"cmd": "pwd"}) == {"ok": True, "path": "/"}
    held.pop().close()
    deadline = time.monotonic() + 10  # the server notices the close on its own time
    reply = {}
    while not reply.get("ok") and time.monotonic() < deadline:
        with connect(port) as again:
            try:
                reply = ask(again, {"cmd": "pwd"})
            except OSError:
                reply = {}
    assert reply == {"ok": True, "path": "/"}


# -- time to send a header ---------------------------------------------------------------

def test_a_header_trickled_in_is_cut_off(make_server: ServerFactory,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FTPHandler, "header_timeout", 1.0)
    port = make_server(idle_timeout=30).server_address[1]
    frame = raw_frame({"cmd": "pwd", "pad": "x" * 40})  # 5 s at a byte per 0.1 s
    with connect(port) as sock:
        started = time.monotonic()
        try:
            for byte in frame:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:  # the server hung up mid-header
            pass
        assert closed_by_peer(sock)
        assert time.monotonic() - started < 3


def test_header_time_limits_neither_idle_nor_body(make_server: ServerFactory,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FTPHandler, "header_timeout", 0.5)
    port = make_server(idle_timeout=30).server_address[1]
    data = os.urandom(100_000)
    with connect(port) as sock:
        assert ask(sock, {"cmd": "pwd"})["ok"] is True
        time.sleep(1)  # silent between requests: idle_timeout applies
        reply = ask(sock, {"cmd": "put", "filename": "slow.bin", "filesize": len(data),
                           "resume": True, "source": "s"})
        assert reply["ok"] is True and reply["offset"] == 0
        time.sleep(1)  # slow to start the body: idle_timeout applies
        sock.sendall(data + raw_frame({"md5": hashlib.md5(data).hexdigest()}))
        assert recv_frame(sock)["ok"] is True


# -- buffer memory ---------------------------------------------------------------------

MiB = 1 << 20


def peak_rss(pid: int) -> int:
    """A process's peak resident memory (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def resumable(name: str, size: int) -> dict[str, object]:
    return {"cmd": "put", "filename": name, "filesize": size, "resume": True, "source": "s"}


def wait_for_partials(root: Path, count: int) -> None:
    """Wait (10 s at most) until the server has started ``count`` partial uploads."""
    deadline = time.monotonic() + 10
    while len(list(root.glob(".*.ftp-partial"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(root.glob(".*.ftp-partial"))) == count


def test_stalled_puts_hold_no_buffers(server_process: ServerProcess, tmp_path: Path,
                                      held: list[socket.socket]) -> None:
    port = server_process.start().port
    root = tmp_path / "storage"
    resumed = 60
    for i in range(resumed):  # partials to resume, as cut puts leave them
        with connect(port) as sock:
            assert ask(sock, resumable(f"r{i}.bin", 8 * MiB))["ok"] is True
            sock.sendall(b"r" * 100_000)
    wait_for_partials(root, resumed)
    server_process.stop()  # measure a fresh process, with 16 MiB buffers
    config = server_process.config
    config.write_text(config.read_text() + "buffer_size: 16MiB\n")
    port = server_process.start().port
    for i in range(resumed):  # 60 resumed puts that send nothing after the offset reply
        sock = connect(port, f"127.0.0.{2 + i // 10}")
        held.append(sock)
        assert ask(sock, resumable(f"r{i}.bin", 8 * MiB))["offset"] > 0
    for i in range(40):  # 40 one-shot puts that send their header and nothing more
        sock = connect(port, f"127.0.0.{10 + i // 10}")
        held.append(sock)
        sock.sendall(raw_frame({"cmd": "put", "filename": f"f{i}.bin", "filesize": 100 * MiB}))
    wait_for_partials(root, resumed + 40)
    time.sleep(0.5)  # what a put takes, it takes at once
    assert peak_rss(server_process.pid) < 150 * MiB


def test_a_spent_budget_gives_small_buffers() -> None:
    budget = BufferBudget(3 * MiB)
    big = budget.take(2 * MiB)
    assert len(big) == 2 * MiB and budget.used == 2 * MiB
    assert len(budget.take(2 * MiB)) == SMALL_BUFFER  # over the budget: small, at once
    assert len(budget.take(1000)) == 1000 and budget.used == 2 * MiB  # small ones are free
    del big
    assert budget.used == 0
    assert len(budget.take(3 * MiB)) == 3 * MiB


@pytest.mark.parametrize("limit", [0, 256 * MiB], ids=["spent", "ample"])
def test_transfers_within_the_buffer_budget(make_server: ServerFactory, local: Path,
                                            monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    budget = BufferBudget(limit)
    monkeypatch.setattr(transfer, "BUFFERS", budget)
    port = make_server(buffer_size=16 * MiB).server_address[1]
    random_file(local / "big.bin", 20 * MiB + 1, seed=3)
    with Client(LOOPBACK, port, timeout=30, buffer_size=16 * MiB) as client:
        client.put(local / "big.bin")
        client.get("big.bin", local / "back.bin")
    assert md5_of(local / "back.bin") == md5_of(local / "big.bin")
    deadline = time.monotonic() + 10  # the server's handler may still be finishing
    while budget.used and time.monotonic() < deadline:
        time.sleep(0.05)
    assert budget.used == 0  # every buffer given back
