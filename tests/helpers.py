"""Test helpers: real server processes, the real CLI, a link-cutting proxy, files."""
from __future__ import annotations

import hashlib
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

LOOPBACK = "127.0.0.1"


def make_cert(folder: Path, name: str = "cert") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, in ``folder`` (the test is
    skipped where the openssl command is missing)."""
    import shutil

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def md5_of(path: Path) -> str:
    """md5 of a file's content."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """Write ``size`` pseudo-random bytes (fast, reproducible by seed) to ``path``."""
    block = hashlib.sha512(str(seed).encode()).digest() * 16384  # 1 MiB, varied by seed
    with open(path, "wb") as file:
        written = 0
        counter = 0
        while written < size:
            chunk = bytes([counter & 0xFF]) + block[1:]
            counter += 1
            take = min(len(chunk), size - written)
            file.write(chunk[:take])
            written += take
    return path


def run_cli(port: int, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``ftpclient`` command line against a loopback port."""
    return subprocess.run(
        [sys.executable, "-m", "ftpclient", "-H", LOOPBACK, "-p", str(port), *args],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout, input=input)


def start_cli(port: int, *args: str, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the real ``ftpclient`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "ftpclient", "-H", LOOPBACK, "-p", str(port), *args],
        cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


# -- raw frames, for tests that speak the wire protocol by hand ------------------

def raw_frame(header: dict[str, Any]) -> bytes:
    """A request frame as the wire carries it."""
    payload = json.dumps(header).encode("utf-8")
    return struct.pack("<I", len(payload)) + payload


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += more
    return data


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    (length,) = struct.unpack("<I", recv_exact(sock, 4))
    return json.loads(recv_exact(sock, length))


def ask(sock: socket.socket, header: dict[str, Any]) -> dict[str, Any]:
    sock.sendall(raw_frame(header))
    return recv_frame(sock)


class ServerProcess:
    """``python -m ftpserver`` in its own process on an ephemeral loopback port."""

    def __init__(self, config: Path, port: int = 0, extra: Sequence[str] = ()) -> None:
        self.config, self.requested_port, self.extra = config, port, extra
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: list[str] = []

    def start(self, timeout: float = 15) -> "ServerProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ftpserver", "--config", str(self.config), "--host", LOOPBACK,
             "--port", str(self.requested_port), *self.extra],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + timeout
        assert self.process.stderr is not None
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError("server exited: " + "".join(self.log))
            self.log.append(line)
            found = re.search(r"serving .* on \S+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise RuntimeError("server did not start: " + "".join(self.log))

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait; return the exit status."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode if self.process else None


class LoopbackListener:
    """A listener on an ephemeral loopback port: its thread hands each connection to
    :meth:`serve`, in a thread of its own, until :meth:`close` (or :attr:`LIFETIME`).
    Subclasses set their own attributes before calling ``__init__``."""

    LIFETIME = 600.0

    def __init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        deadline = time.monotonic() + self.LIFETIME
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        """Handle one accepted connection (and close it)."""
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CuttingProxy(LoopbackListener):
    """A TCP proxy on loopback that counts bytes each way and can cut the link.

    ``cut_after_up``/``cut_after_down`` close both sides once that many bytes
    have gone client->server or server->client on a connection (``None``: never).
    """

    def __init__(self, target_port: int, cut_after_up: int | None = None,
                 cut_after_down: int | None = None) -> None:
        self.target_port = target_port
        self.cut_after_up, self.cut_after_down = cut_after_up, cut_after_down
        self.up = 0      # client -> server bytes, all connections
        self.down = 0    # server -> client bytes, all connections
        self.captured = bytearray()  # client -> server bytes, for inspection
        super().__init__()

    def serve(self, client: socket.socket) -> None:
        server = socket.create_connection((LOOPBACK, self.target_port))
        sent = {client: 0, server: 0}
        limits = {client: self.cut_after_up, server: self.cut_after_down}
        peer = {client: server, server: client}
        deadline = time.monotonic() + 600
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                readable, _, _ = select.select([client, server], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    limit = limits[sock]
                    if limit is not None and sent[sock] + len(data) >= limit:
                        data = data[:limit - sent[sock]]
                    peer[sock].sendall(data)
                    sent[sock] += len(data)
                    if sock is client:
                        self.up += len(data)
                        self.captured += data[:1 << 20] if len(self.captured) < (1 << 20) else b""
                    else:
                        self.down += len(data)
                    if limit is not None and sent[sock] >= limit:
                        return
        except OSError:
            return
        finally:
            for sock in (client, server):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
