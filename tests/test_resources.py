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
from typing import Iterator

import pytest

from ftpserver.handler import FTPHandler
from ftpserver.server import FTPServer

from helpers import LOOPBACK, ask, raw_frame, recv_frame
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
