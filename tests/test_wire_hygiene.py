"""Client-supplied text on the wire and in the log: error replies always fit a frame,
and nothing a client sends can forge a log line or reach the terminal raw."""
from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from ftpserver.errors import FTPError, NotFound
from ftpserver.protocol import (MAX_HEADER, MAX_MESSAGE, encode_frame, error_reply, loggable,
                                printable)

from helpers import LOOPBACK, ServerProcess, recv_frame

#: DEL is one byte in a request's JSON but four characters once escaped (``\x7f``), and
#: five bytes in the reply's JSON: enough of them overflow a reply that echoes them.
JUNK = "\x7f" * 60_000


def frame(header: dict[str, Any]) -> bytes:
    """A request frame with non-ASCII sent as UTF-8, so 60,000 DEL fit in one frame."""
    payload = json.dumps(header, ensure_ascii=False).encode("utf-8")
    assert len(payload) <= MAX_HEADER
    return struct.pack("<I", len(payload)) + payload


# -- error replies always fit ------------------------------------------------------------

@pytest.mark.parametrize("message", [
    JUNK, '"' * 70_000, "\\" * 70_000, "\U0001F600" * 70_000, "\ud800" * 70_000,
    "\U000e0001" * 70_000, "x" * MAX_MESSAGE, "x" * (MAX_MESSAGE + 1),
])
def test_an_error_reply_always_fits_well_inside_a_frame(message: str) -> None:
    reply = error_reply(FTPError(message))
    text = reply["message"]
    assert len(encode_frame(reply)) <= MAX_HEADER // 4 + 100
    assert text.isprintable() and len(text) <= MAX_MESSAGE
    assert text.endswith("...") == (len(printable(message)) > MAX_MESSAGE)


def test_a_short_message_is_left_whole() -> None:
    assert error_reply(NotFound("No such file or folder: /a b"))["message"] == \
        "No such file or folder: /a b"


@pytest.mark.parametrize("header", [
    {"cmd": "get", "filename": "x", "hash": JUNK},                  # echoed, escaped: 300 KB
    {"cmd": "put", "filename": "x", "filesize": 0, "resume": True, "hash": JUNK},
    {"cmd": "ls", "path": JUNK},
    {"cmd": "stat", "path": "../" + JUNK},
])
def test_a_huge_echo_gets_an_error_and_the_connection_goes_on(port: int, header: dict[str, Any]) -> None:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(frame(header))
        reply = recv_frame(sock)
        assert reply["ok"] is False and reply["error"] in ("bad_request", "forbidden")
        assert len(reply["message"]) <= MAX_MESSAGE
        sock.sendall(frame({"cmd": "pwd"}))
        assert recv_frame(sock) == {"ok": True, "path": "/"}


# -- the log -----------------------------------------------------------------------------

FORGED = "x\n2026-01-01 00:00:00,000 INFO forged \x1b[31mred"


@pytest.mark.parametrize("value, shown", [
    ("/movie.mkv", "/movie.mkv"),
    ("my file.txt", "'my file.txt'"),
    ("", "''"),
    (FORGED, repr(FORGED)),
    (None, "None"),
    (["a\n"], repr(repr(["a\n"]))),
    ("x" * 500, "x" * 197 + "..."),
])
def test_loggable(value: object, shown: str) -> None:
    assert loggable(value) == shown


def test_client_text_cannot_forge_a_log_line_or_reach_the_terminal(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    root.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(f"root: {root}\nidle_timeout: 30\n")
    server = ServerProcess(config, extra=("-v",)).start()
    try:
        with socket.create_connection((LOOPBACK, server.port), timeout=10) as sock:
            for header in [{"cmd": FORGED}, {"cmd": "ls", "path": FORGED},
                           {"cmd": "stat", "path": FORGED}, {"cmd": "pwd", "path": FORGED},
                           {"cmd": "mkdir", "filename": FORGED}, {"cmd": [FORGED]},
                           {"cmd": "end_of_test"}]:
                sock.sendall(frame(header))
                recv_frame(sock)
        deadline = time.monotonic() + 10  # the log is read by a thread
        while not any("end_of_test" in line for line in server.log) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
    log = "".join(server.log)
    assert "end_of_test" in log
    assert log.count("forged") >= 6  # every request was logged, escaped
    assert "\x1b" not in log
    assert not any(line.startswith("2026-01-01") for line in log.splitlines())
