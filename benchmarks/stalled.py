#!/usr/bin/env python3
"""What stalled uploads cost the server in memory: its peak and current RSS.

A stalled put sends its header and then nothing: a resumed one (a partial is
held) reads the server's offset reply first, a fresh one-shot put sends only
the header.  From the repository root::

    python benchmarks/stalled.py        # the three scenarios below, about half a minute
    python benchmarks/stalled.py --kind fresh --count 100 --size 100MiB --buffer-size 16MiB

By default: 300 resumed puts of 8 MiB files (2 MiB held, hashed again from disk),
300 of 100 MiB files (2 MiB held, the saved hash state taken up), each with the
default 64 KiB buffer_size, and 40 fresh puts of 100 MiB files with 16 MiB buffers.

Each scenario runs a fresh ``python -m ftpserver`` on 127.0.0.1 (port 0).  The
connections come from several loopback addresses (127.0.0.2, 127.0.0.3, ...),
so a per-address connection limit does not turn them away.
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench import (LOOPBACK, MiB, KiB, Server, _start, human_size,  # noqa: E402
                              parse_size, proc_status, raise_nofile)

PER_ADDRESS = 10
HELD = 2 * MiB
SCENARIOS = [("resumed", 300, 8 * MiB, 64 * KiB), ("resumed", 300, 100 * MiB, 64 * KiB),
             ("fresh", 40, 100 * MiB, 16 * MiB)]


def frame(header: dict[str, object]) -> bytes:
    payload = json.dumps(header).encode()
    return struct.pack("<I", len(payload)) + payload


def read_frame(sock: socket.socket) -> dict[str, object]:
    file = sock.makefile("rb")
    (length,) = struct.unpack("<I", file.read(4))
    return json.loads(file.read(length))


def connect(port: int, index: int) -> socket.socket:
    source = f"127.0.0.{2 + index // PER_ADDRESS}"
    return socket.create_connection((LOOPBACK, port), timeout=30, source_address=(source, 0))


def start_server(tmp: Path, buffer_size: int) -> Server:
    root = tmp / "root"
    root.mkdir()
    config = tmp / "config.yaml"
    config.write_text(f"root: {json.dumps(str(root))}\nbuffer_size: {buffer_size}\n"
                      "idle_timeout: 300\nmax_connections: 1024\n")
    command = [sys.executable, "-m", "ftpserver", "--config", str(config),
               "--host", LOOPBACK, "--port", "0"]
    return _start("ftpserver", command, root, tmp / "server.log", r"serving .* on \S+:(\d+)")


def resumable(index: int, size: int) -> dict[str, object]:
    return {"cmd": "put", "filename": f"r{index}.bin", "filesize": size, "resume": True,
            "source": "stalled"}


def hold_partials(port: int, count: int, size: int) -> None:
    """Leave ``count`` partial uploads of HELD bytes each, as cut puts do."""
    for index in range(count):
        with connect(port, index) as sock:
            sock.sendall(frame(resumable(index, size)))
            read_frame(sock)
            sock.sendall(b"x" * HELD)
    time.sleep(1)  # the server notices the cuts and saves its state


def stall(port: int, kind: str, count: int, size: int) -> list[socket.socket]:
    """Open ``count`` puts that send their header and then nothing."""
    socks = []
    for index in range(count):
        sock = connect(port, index)
        socks.append(sock)
        if kind == "resumed":
            sock.sendall(frame(resumable(index, size)))
            reply = read_frame(sock)
            assert reply.get("ok") and reply.get("offset"), reply
        else:
            sock.sendall(frame({"cmd": "put", "filename": f"f{index}.bin", "filesize": size}))
    return socks


def settle(pid: int, seconds: float = 10) -> None:
    """Wait until the server's RSS stops growing (for a second, within ``seconds``)."""
    deadline = time.monotonic() + seconds
    last, steady = 0, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - steady < 1:
        rss = proc_status(pid, "VmRSS") or 0
        if rss > last + MiB:
            last, steady = rss, time.monotonic()
        time.sleep(0.1)


def measure(kind: str, count: int, size: int, buffer_size: int) -> str:
    with tempfile.TemporaryDirectory(prefix="stalled-") as folder:
        server = start_server(Path(folder), buffer_size)
        try:
            if kind == "resumed":
                hold_partials(server.port, count, size)
            idle = proc_status(server.pid, "VmRSS") or 0
            socks = stall(server.port, kind, count, size)
            try:
                settle(server.pid)
                peak, now = proc_status(server.pid, "VmHWM"), proc_status(server.pid, "VmRSS")
            finally:
                for sock in socks:
                    sock.close()
        finally:
            server.stop()
    return (f"{count} stalled {kind} puts of {human_size(size)} files, buffer_size "
            f"{human_size(buffer_size)}: server VmHWM {(peak or 0) / 1e6:.0f} MB, VmRSS "
            f"{(now or 0) / 1e6:.0f} MB (before the stalled puts: {idle / 1e6:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("resumed", "fresh"), help="run this scenario only")
    parser.add_argument("--count", type=int, default=100, help="stalled puts (with --kind)")
    parser.add_argument("--size", type=parse_size, default=100 * MiB,
                        help="declared file size (with --kind)")
    parser.add_argument("--buffer-size", type=parse_size, default=64 * KiB,
                        help="the server's buffer_size (with --kind)")
    args = parser.parse_args()
    raise_nofile()
    scenarios = [(args.kind, args.count, args.size, args.buffer_size)] if args.kind else SCENARIOS
    for scenario in scenarios:
        print(measure(*scenario), flush=True)

if __name__ == "__main__":
    main()
