"""Interrupted transfers and how they resume (SPEC §2 last bullet, §4, §5 Resume/Atomicity/Concurrency).

Everything here runs real processes on real loopback sockets: the ``ftpclient``
command line as a subprocess, the server in this process or as ``python -m
ftpserver``, and TCP proxies that count bytes, cut the link (``CuttingProxy``)
or hold it still (``StallingProxy`` below) so that a transfer is caught in the
middle every time, whatever the speed of the machine.

Each rerun prints one ``[resume]`` line (see with ``pytest -s``): the bytes that
crossed the proxy on the rerun against the bytes the other side was missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest

from ftpclient.client import Client
from ftpserver.config import Config
from ftpserver.errors import Busy, FTPError
from ftpserver.locks import try_lock
from ftpserver.server import FTPServer

from helpers import (LOOPBACK, CuttingProxy, LoopbackListener, ServerProcess, md5_of, random_file,
                     run_cli, start_cli)

MiB = 1024 * 1024
#: Big enough that a cut at 40 % lands well inside the body, small enough to stay fast.
SIZE = 16 * MiB
#: Request and reply headers on a rerun (stat, put/get, trailer, replies) are well under this.
HEADERS_SLACK = 8 * 1024
#: A receiver writes whole buffers (64 KiB by default), so a stalled transfer's partial
#: stops short of what the proxy let through by up to one buffer, plus the headers.
GRACE = 256 * 1024
PARTIAL = ".ftp-partial"
T = TypeVar("T")


# -- small tools --------------------------------------------------------------

def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.005,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def server_partial(root: Path, name: str) -> tuple[Path, Path]:
    """The server's partial upload of ``name`` (a path under ``root``) and its metadata."""
    target = root / name
    return (target.with_name(f".{target.name}{PARTIAL}"),
            target.with_name(f".{target.name}{PARTIAL}.json"))


def client_partial(dest: Path) -> tuple[Path, Path]:
    """The client's partial download of ``dest`` and its metadata."""
    return dest.with_name(dest.name + PARTIAL), dest.with_name(dest.name + PARTIAL + ".json")


def partial_files(root: Path) -> list[Path]:
    """Every partial (or partial metadata) file under ``root``."""
    return sorted(p for p in root.rglob("*") if PARTIAL in p.name)


def wait_released(server: FTPServer, name: str, timeout: float = 30.0) -> None:
    """Wait until no connection of the in-process ``server`` holds the upload of ``/name``.

    A cut connection is noticed by the server a moment after the client has
    already given up; until then its handler still owns the partial.
    """
    assert server.anonymous_storage is not None
    folder, _, base = ("/" + name).rpartition("/")
    partial = server.anonymous_storage.real(folder or "/") / f".{base}{PARTIAL}"

    def free() -> bool:
        try:
            fd = os.open(partial, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            return try_lock(fd)  # another open file holds it while a handler writes
        finally:
            os.close(fd)

    wait_until(free, timeout, what=f"the server to release the upload of {name}")


def wait_stable(path: Path, quiet: float = 0.3, timeout: float = 30.0) -> int:
    """Wait until ``path`` has kept one size for ``quiet`` seconds; return that size."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = size_or_zero(path)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
        time.sleep(0.02)
    raise AssertionError(f"{path} kept growing for {timeout}s")


def assert_one_line_error(result_stderr: str, returncode: int | None) -> str:
    """A failure: non-zero exit, exactly one plain line on stderr, no traceback."""
    assert returncode not in (0, None), result_stderr
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1, result_stderr
    assert "Traceback" not in result_stderr
    return lines[0]


def assert_ok(result: Any) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def report(what: str, size: int, missing: int, crossed: int) -> None:
    print(f"\n[resume] {what}: size={size} missing={missing} rerun_bytes={crossed} "
          f"overhead={crossed - missing:+d} ({crossed / size:.1%} of the file)")


def overwrite_start(path: Path, count: int = 4096, keep_mtime: bool = False) -> str:
    """Change the first ``count`` bytes of ``path`` in place; return the new md5.

    The mtime moves forward 7 s (so the change shows even on a coarse clock),
    or with ``keep_mtime`` is put back exactly as it was.
    """
    before = path.stat()
    with open(path, "r+b") as file:
        old = file.read(count)
        file.seek(0)
        file.write(bytes(b ^ 0xA5 for b in old))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 7_000_000_000))
    return md5_of(path)


# -- raw frames, independent of the product's own codec ------------------------

FRAME = struct.Struct("<I")


def send_frame(sock: socket.socket, header: dict[str, Any]) -> None:
    payload = json.dumps(header).encode("utf-8")
    sock.sendall(FRAME.pack(len(payload)) + payload)


def recv_exact(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    (length,) = FRAME.unpack(recv_exact(sock, FRAME.size))
    return json.loads(recv_exact(sock, length))


def raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def abandon_put(port: int, name: str, data: bytes, sent: int, source: str = "tag-1") -> int:
    """Start a resumable put of ``data``, send ``sent`` body bytes, and drop the connection.

    Returns the offset the server answered with.
    """
    with raw_connect(port) as sock:
        send_frame(sock, {"cmd": "put", "filename": name, "filesize": len(data),
                          "resume": True, "source": source})
        reply = recv_frame(sock)
        assert reply["ok"] is True, reply
        sock.sendall(data[reply["offset"]:reply["offset"] + sent])
        return reply["offset"]


# -- a proxy that holds a transfer still ---------------------------------------

class StallingProxy(LoopbackListener):
    """A loopback TCP proxy that stops forwarding one way after so many bytes.

    After ``stall_after_up`` bytes client->server (or ``stall_after_down`` bytes
    server->client) it stops reading that side, so the sender blocks in ``send``
    with the connection open, exactly as over a link that went silent; the
    other direction keeps flowing.  :meth:`unstall` forwards again (what is
    still in flight, then the end of stream).  Counts bytes each way like
    :class:`CuttingProxy`.
    """

    def __init__(self, target_port: int, stall_after_up: int | None = None,
                 stall_after_down: int | None = None) -> None:
        self.target_port = target_port
        self.limits = {"up": stall_after_up, "down": stall_after_down}
        self.up = 0
        self.down = 0
        self.stalled = threading.Event()
        self._go = threading.Event()
        super().__init__()

    def unstall(self) -> None:
        self._go.set()

    def serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection((LOOPBACK, self.target_port))
        except OSError:
            client.close()
            return
        way = {client: "up", server: "down"}
        peer = {client: server, server: client}
        forwarded = {"up": 0, "down": 0}
        deadline = time.monotonic() + 300
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                watch = []
                for sock in (client, server):
                    limit = self.limits[way[sock]]
                    if limit is None or self._go.is_set() or forwarded[way[sock]] < limit:
                        watch.append(sock)
                    else:
                        self.stalled.set()
                readable, _, _ = select.select(watch, [], [], 0.05)
                for sock in readable:
                    direction = way[sock]
                    want = 1 << 16
                    limit = self.limits[direction]
                    if limit is not None and not self._go.is_set():
                        want = min(want, limit - forwarded[direction])
                    data = sock.recv(want)
                    if not data:
                        return
                    peer[sock].sendall(data)
                    forwarded[direction] += len(data)
                    if direction == "up":
                        self.up += len(data)
                    else:
                        self.down += len(data)
        except OSError:
            return
        finally:
            for sock in (client, server):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()



@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[[Config], FTPServer]]:
    """Start extra in-process servers with a config of the test's choosing."""
    started: list[tuple[FTPServer, threading.Thread]] = []

    def start(config: Config) -> FTPServer:
        srv = FTPServer(config)
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        started.append((srv, thread))
        return srv

    yield start
    for srv, thread in started:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# -- a cut upload, then the same command again ---------------------------------

def cut_upload(port: int, local: Path, name: str, size: int, seed: int = 1) -> Path:
    """Upload ``local/name`` through a proxy that cuts the link at ~40 % of the body."""
    source = random_file(local / name, size, seed=seed)
    with CuttingProxy(port, cut_after_up=int(size * 0.4)) as proxy:
        result = run_cli(proxy.port, "put", name, cwd=local)
    line = assert_one_line_error(result.stderr, result.returncode)
    assert line.startswith("ftpclient:"), line
    return source


def test_cut_upload_leaves_partial_and_rerun_sends_only_the_rest(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "cut-up.bin"
    source = cut_upload(port, local, name, SIZE)
    wait_released(server, name)
    partial, meta = server_partial(storage_root, name)
    assert not (storage_root / name).exists(), "an incomplete upload took the final name"
    assert partial.is_file() and meta.is_file()
    held = partial.stat().st_size
    assert 0.3 * SIZE < held <= 0.4 * SIZE
    assert name not in [e["name"] for e in Client(LOOPBACK, port).ls()]

    with CuttingProxy(port) as counter:
        result = run_cli(counter.port, "put", name, cwd=local)
    assert_ok(result)
    assert result.stderr == "", "a put off a terminal must stay silent"
    report("put after a cut", SIZE, SIZE - held, counter.up)
    assert counter.up <= (SIZE - held) + SIZE // 100 + HEADERS_SLACK
    assert md5_of(storage_root / name) == md5_of(source)
    assert partial_files(storage_root) == []


def test_a_small_put_is_one_new_file_until_cut_and_a_large_one_is_recorded_from_the_start(
        server: FTPServer, port: int, storage_root: Path) -> None:
    # A folder of small files costs one new file each on the server; what a cut
    # needs to resume is written when the cut comes.
    for name, size, recorded_at_once in (("small.bin", 300_000, False), ("large.bin", 2 * MiB, True)):
        data = os.urandom(size)
        partial, meta = server_partial(storage_root, name)
        with raw_connect(port) as sock:
            send_frame(sock, {"cmd": "put", "filename": name, "filesize": size,
                              "resume": True, "source": "tag-1"})
            assert recv_frame(sock)["offset"] == 0
            sock.sendall(data[:100_000])
            wait_until(lambda: size_or_zero(partial) == 100_000, what="the body's first bytes")
            assert meta.exists() is recorded_at_once
        wait_released(server, name)
        assert partial.is_file() and meta.is_file()
        with raw_connect(port) as sock:
            send_frame(sock, {"cmd": "put", "filename": name, "filesize": size,
                              "resume": True, "source": "tag-1"})
            assert recv_frame(sock)["offset"] == 100_000
            sock.sendall(data[100_000:])
            send_frame(sock, {"md5": hashlib.md5(data).hexdigest()})
            assert recv_frame(sock)["ok"] is True
        assert (storage_root / name).read_bytes() == data
    assert partial_files(storage_root) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_a_partial_owned_like_its_folder_resumes(server: FTPServer, port: int,
                                                 storage_root: Path) -> None:
    # Where an NFS server maps the server's files to another user (root's to nobody),
    # the partial it left shows that user, as its folder does: still the server's own.
    folder = storage_root / "squashed"
    folder.mkdir()
    data = os.urandom(2 * MiB)
    abandon_put(port, "squashed/big.bin", data, sent=MiB)
    wait_released(server, "squashed/big.bin")
    partial, meta = server_partial(storage_root, "squashed/big.bin")
    held = partial.stat().st_size
    for path in (folder, partial, meta):
        os.chown(path, 65534, 65534)
    assert abandon_put(port, "squashed/big.bin", data, sent=0) == held


def test_cut_download_leaves_local_partial_and_rerun_sends_only_the_rest(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "cut-down.bin"
    remote = random_file(storage_root / name, SIZE, seed=2)
    dest = local / name
    with CuttingProxy(port, cut_after_down=int(SIZE * 0.4)) as proxy:
        result = run_cli(proxy.port, "get", name, cwd=local)
    line = assert_one_line_error(result.stderr, result.returncode)
    assert line.startswith("ftpclient:"), line
    partial, meta = client_partial(dest)
    assert not dest.exists(), "an incomplete download took the final name"
    assert partial.is_file() and meta.is_file()
    held = partial.stat().st_size
    assert 0.3 * SIZE < held <= 0.4 * SIZE

    with CuttingProxy(port) as counter:
        result = run_cli(counter.port, "get", name, cwd=local)
    assert_ok(result)
    assert result.stderr == ""
    report("get after a cut", SIZE, SIZE - held, counter.down)
    assert counter.down <= (SIZE - held) + SIZE // 100 + HEADERS_SLACK
    assert md5_of(dest) == md5_of(remote)
    assert not partial.exists() and not meta.exists()


def test_restart_after_cut_upload_sends_everything(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "restart-up.bin"
    source = cut_upload(port, local, name, SIZE, seed=3)
    wait_released(server, name)
    held = server_partial(storage_root, name)[0].stat().st_size
    assert held > 0

    with CuttingProxy(port) as counter:
        result = run_cli(counter.port, "put", name, "--restart", cwd=local)
    assert_ok(result)
    report("put --restart after a cut", SIZE, SIZE, counter.up)
    assert counter.up >= SIZE
    assert counter.up <= SIZE + HEADERS_SLACK
    assert md5_of(storage_root / name) == md5_of(source)
    assert partial_files(storage_root) == []


def test_restart_after_cut_download_sends_everything(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "restart-down.bin"
    remote = random_file(storage_root / name, SIZE, seed=4)
    with CuttingProxy(port, cut_after_down=int(SIZE * 0.4)) as proxy:
        result = run_cli(proxy.port, "get", name, cwd=local)
    assert_one_line_error(result.stderr, result.returncode)
    assert client_partial(local / name)[0].stat().st_size > 0

    with CuttingProxy(port) as counter:
        result = run_cli(counter.port, "get", name, "--restart", cwd=local)
    assert_ok(result)
    report("get --restart after a cut", SIZE, SIZE, counter.down)
    assert SIZE <= counter.down <= SIZE + HEADERS_SLACK
    assert md5_of(local / name) == md5_of(remote)
    assert partial_files(local) == []


# -- a process killed mid-transfer ---------------------------------------------

def test_client_killed_mid_upload_resumes(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "killed-client.bin"
    source = random_file(local / name, SIZE, seed=5)
    partial, _ = server_partial(storage_root, name)
    stall = int(SIZE * 0.4)
    with StallingProxy(port, stall_after_up=stall) as proxy:
        process = start_cli(proxy.port, "put", name, cwd=local)
        try:
            # The server has written (nearly) all that got through before the link went still.
            wait_until(lambda: size_or_zero(partial) >= stall - GRACE, timeout=60,
                       what="the server-side partial to grow")
            assert process.poll() is None, "the client finished before it could be killed"
            process.kill()  # SIGKILL: no handler, no clean-up in the client
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            process.communicate()
        assert process.returncode == -9
        proxy.unstall()  # what the dead client had in flight arrives, then its end of stream
        wait_released(server, name)
    assert not (storage_root / name).exists()
    held = partial.stat().st_size
    assert stall - GRACE <= held < SIZE

    with CuttingProxy(port) as counter:
        result = run_cli(counter.port, "put", name, cwd=local)
    assert_ok(result)
    report("put after the client was killed", SIZE, SIZE - held, counter.up)
    assert counter.up < SIZE
    assert counter.up <= (SIZE - held) + SIZE // 100 + HEADERS_SLACK
    assert md5_of(storage_root / name) == md5_of(source)
    assert partial_files(storage_root) == []


def test_server_killed_mid_upload_resumes_after_restart(
        server_process: ServerProcess, tmp_path: Path, local: Path) -> None:
    storage_root = tmp_path / "storage"  # the server_process fixture's root
    name = "killed-server.bin"
    source = random_file(local / name, SIZE, seed=6)
    partial, meta = server_partial(storage_root, name)
    stall = int(SIZE * 0.4)
    server_process.start()
    port = server_process.port
    with StallingProxy(port, stall_after_up=stall) as proxy:
        process = start_cli(proxy.port, "put", name, cwd=local)
        try:
            wait_until(lambda: size_or_zero(partial) >= stall - GRACE, timeout=60,
                       what="the server-side partial to grow")
            server_process.kill()  # SIGKILL mid-upload
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert_one_line_error(stderr, process.returncode)
    assert not (storage_root / name).exists()
    assert partial.is_file() and meta.is_file()
    held = partial.stat().st_size
    assert stall - GRACE <= held < SIZE

    restarted = ServerProcess(server_process.config, port=port)
    restarted.start()
    try:
        with CuttingProxy(restarted.port) as counter:
            result = run_cli(counter.port, "put", name, cwd=local)
        assert_ok(result)
        report("put after the server was killed and restarted", SIZE, SIZE - held, counter.up)
        assert counter.up < SIZE
        assert counter.up <= (SIZE - held) + SIZE // 100 + HEADERS_SLACK
        assert md5_of(storage_root / name) == md5_of(source)
        assert partial_files(storage_root) == []
    finally:
        restarted.stop()


def test_server_killed_mid_download_resumes_after_restart(
        server_process: ServerProcess, tmp_path: Path, local: Path) -> None:
    storage_root = tmp_path / "storage"
    name = "killed-server-get.bin"
    remote = random_file(storage_root / name, SIZE, seed=7)
    dest = local / name
    partial, meta = client_partial(dest)
    stall = int(SIZE * 0.4)
    server_process.start()
    port = server_process.port
    with StallingProxy(port, stall_after_down=stall) as proxy:
        process = start_cli(proxy.port, "get", name, cwd=local)
        try:
            wait_until(lambda: size_or_zero(partial) >= stall - GRACE, timeout=60,
                       what="the client-side partial to grow")
            server_process.kill()  # SIGKILL mid-download
            proxy.unstall()  # what the server had sent arrives, then the end of stream
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert_one_line_error(stderr, process.returncode)
    assert not dest.exists()
    assert partial.is_file() and meta.is_file()
    held = partial.stat().st_size
    assert stall - GRACE <= held < SIZE

    restarted = ServerProcess(server_process.config, port=port)
    restarted.start()
    try:
        with CuttingProxy(restarted.port) as counter:
            result = run_cli(counter.port, "get", name, cwd=local)
        assert_ok(result)
        report("get after the server was killed and restarted", SIZE, SIZE - held, counter.down)
        assert counter.down < SIZE
        assert counter.down <= (SIZE - held) + SIZE // 100 + HEADERS_SLACK
        assert md5_of(dest) == md5_of(remote)
        assert not partial.exists() and not meta.exists()
    finally:
        restarted.stop()


# -- the source changed between the cut and the rerun --------------------------

@pytest.mark.parametrize("keep_mtime", [False, True], ids=["mtime-moved", "mtime-restored"])
def test_local_file_changed_after_cut_upload_stores_new_content(
        server: FTPServer, port: int, storage_root: Path, local: Path, keep_mtime: bool) -> None:
    name = f"changed-local-{keep_mtime}.bin"
    source = cut_upload(port, local, name, SIZE, seed=8)
    wait_released(server, name)
    old_md5 = md5_of(source)
    held = server_partial(storage_root, name)[0].stat().st_size
    assert held > 4096, "the change must fall inside the bytes the server holds"
    new_md5 = overwrite_start(source, keep_mtime=keep_mtime)
    assert new_md5 != old_md5

    with CuttingProxy(port) as counter:
        result = run_cli(counter.port, "put", name, cwd=local)
    assert_ok(result)
    report(f"put after the local file changed ({'same' if keep_mtime else 'new'} mtime)",
           SIZE, SIZE, counter.up)
    assert md5_of(storage_root / name) == new_md5
    assert partial_files(storage_root) == []
    if not keep_mtime:
        # A changed tag restarts at once: the whole file, once.
        assert SIZE <= counter.up <= SIZE + SIZE // 100 + HEADERS_SLACK


def replace_remote(path: Path, seed: int, in_place: bool, keep_mtime: bool) -> str:
    """Give ``path`` new content of the same size; return its md5."""
    before = path.stat()
    if in_place:
        fresh = random_file(path.with_name("new-content.tmp"), before.st_size, seed=seed)
        with open(fresh, "rb") as src, open(path, "r+b") as dst:
            for block in iter(lambda: src.read(MiB), b""):
                dst.write(block)
        fresh.unlink()
        assert path.stat().st_ino == before.st_ino
    else:
        fresh = random_file(path.with_name("new-content.tmp"), before.st_size, seed=seed)
        os.replace(fresh, path)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 7_000_000_000))
    return md5_of(path)


@pytest.mark.parametrize("in_place,keep_mtime", [
    (False, False),
    (True, False),
    pytest.param(True, True),
], ids=["renamed-over", "rewritten-in-place", "rewritten-in-place-mtime-restored"])
def test_remote_file_replaced_after_cut_download_gets_new_content(
        server: FTPServer, port: int, storage_root: Path, local: Path,
        in_place: bool, keep_mtime: bool) -> None:
    name = "changed-remote.bin"
    remote = random_file(storage_root / name, SIZE, seed=9)
    old_md5 = md5_of(remote)
    with CuttingProxy(port, cut_after_down=int(SIZE * 0.4)) as proxy:
        result = run_cli(proxy.port, "get", name, cwd=local)
    assert_one_line_error(result.stderr, result.returncode)
    assert client_partial(local / name)[0].stat().st_size > 4096
    new_md5 = replace_remote(remote, seed=10, in_place=in_place, keep_mtime=keep_mtime)
    assert new_md5 != old_md5

    with CuttingProxy(port) as counter:
        result = run_cli(counter.port, "get", name, cwd=local)
    assert_ok(result)
    report(f"get after the remote file changed (in_place={in_place}, keep_mtime={keep_mtime})",
           SIZE, SIZE, counter.down)
    assert md5_of(local / name) == new_md5
    assert partial_files(local) == []
    if not keep_mtime:
        assert SIZE <= counter.down <= SIZE + SIZE // 100 + HEADERS_SLACK


# -- two writers, one name -----------------------------------------------------

def test_second_writer_gets_busy_while_a_raw_put_holds_the_name(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "contended.bin"
    first = random_file(local / "first.bin", SIZE, seed=11).read_bytes()
    second = random_file(local / "second.bin", SIZE, seed=12)
    with raw_connect(port) as sock:
        send_frame(sock, {"cmd": "put", "filename": name, "filesize": len(first),
                          "resume": True, "source": "first-1"})
        reply = recv_frame(sock)
        assert reply["ok"] is True and reply["offset"] == 0, reply
        # The first upload now owns the name and has not sent a byte of its body.

        result = run_cli(port, "put", "second.bin", name, cwd=local)
        line = assert_one_line_error(result.stderr, result.returncode)
        # The line names the cause: the code's word, or the plain words for it.
        assert re.search(r"busy|another client|in use", line, re.IGNORECASE), line
        with Client(LOOPBACK, port, timeout=30) as other:
            with pytest.raises(Busy) as caught:
                other.put(second, name)
            assert caught.value.code == "busy"
            assert not (storage_root / name).exists()

        sock.sendall(first)
        send_frame(sock, {"md5": hashlib.md5(first).hexdigest()})
        final = recv_frame(sock)
        assert final["ok"] is True, final
    assert (storage_root / name).read_bytes() == first
    assert partial_files(storage_root) == []

    # Once the first writer is done, the name is free again.
    assert_ok(run_cli(port, "put", "second.bin", name, cwd=local))
    assert md5_of(storage_root / name) == md5_of(second)


def test_two_library_clients_at_once_one_busy_one_complete(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "race.bin"
    first = random_file(local / "a.bin", SIZE, seed=13)
    second = random_file(local / "b.bin", SIZE, seed=14)
    outcome: dict[str, Any] = {}
    partial, _ = server_partial(storage_root, name)
    stall = int(SIZE * 0.3)

    def upload(key: str, path: Path, port_: int) -> None:
        try:
            with Client(LOOPBACK, port_, timeout=60) as c:
                outcome[key] = c.put(path, name)
        except BaseException as error:  # handed to the test thread
            outcome[key] = error

    with StallingProxy(port, stall_after_up=stall) as proxy:
        slow = threading.Thread(target=upload, args=("a", first, proxy.port), daemon=True)
        slow.start()
        wait_until(lambda: size_or_zero(partial) >= stall - GRACE, what="the first upload to start")
        fast = threading.Thread(target=upload, args=("b", second, port), daemon=True)
        fast.start()
        fast.join(60)
        assert not fast.is_alive()
        assert slow.is_alive(), "the first upload must still be in progress"
        proxy.unstall()
        slow.join(60)
        assert not slow.is_alive()

    results = sorted(outcome.items())
    errors = [(k, v) for k, v in results if isinstance(v, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0][1], Busy), outcome
    winner = "a" if errors[0][0] == "b" else "b"
    assert md5_of(storage_root / name) == md5_of(first if winner == "a" else second)
    assert md5_of(storage_root / name) in (md5_of(first), md5_of(second))
    assert partial_files(storage_root) == []


# -- abandoned partials ----------------------------------------------------------

def test_sweep_removes_old_partials_and_keeps_fresh_ones(
        server: FTPServer, port: int, storage_root: Path) -> None:
    (storage_root / "sub").mkdir()
    data = random_file(storage_root.parent / "src.bin", 2 * MiB, seed=15).read_bytes()
    for name in ("old.bin", "sub/old.bin", "fresh.bin"):
        abandon_put(port, name, data, sent=MiB)
        wait_released(server, name)
    old = [*server_partial(storage_root, "old.bin"), *server_partial(storage_root, "sub/old.bin")]
    fresh = list(server_partial(storage_root, "fresh.bin"))
    assert all(p.is_file() for p in old + fresh)
    past = time.time() - 2 * 3600
    for path in old:
        os.utime(path, (past, past))

    sweeper = FTPServer(Config(host=LOOPBACK, port=0, root=storage_root, partial_ttl=3600),
                        bind_and_activate=False)
    try:
        assert sweeper.sweep() == 2
    finally:
        sweeper.server_close()
    assert not any(p.exists() for p in old)
    assert all(p.is_file() for p in fresh)

    # The kept partial still resumes; the swept one starts from zero.
    assert abandon_put(port, "fresh.bin", data, sent=0) == MiB
    assert abandon_put(port, "old.bin", data, sent=0) == 0


def test_sweep_spares_a_partial_in_use(
        storage_root: Path, local: Path, running: Callable[[Config], FTPServer]) -> None:
    srv = running(Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30,
                         partial_ttl=3600))
    name = "in-use.bin"
    source = random_file(local / name, SIZE, seed=16)
    partial, meta = server_partial(storage_root, name)
    stall = int(SIZE * 0.3)
    with StallingProxy(srv.server_address[1], stall_after_up=stall) as proxy:
        process = start_cli(proxy.port, "put", name, cwd=local)
        try:
            wait_until(lambda: size_or_zero(partial) >= stall - GRACE, timeout=60,
                       what="the upload to start")
            past = time.time() - 2 * 3600
            for path in (partial, meta):
                os.utime(path, (past, past))
            assert srv.sweep() == 0
            assert partial.is_file() and meta.is_file()
            proxy.unstall()
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, stderr
    assert md5_of(storage_root / name) == md5_of(source)


def test_running_server_sweeps_on_its_own(tmp_path: Path) -> None:
    root = tmp_path / "swept"
    config = tmp_path / "sweep.yaml"
    config.write_text(f"host: {LOOPBACK}\nport: 0\nroot: {root}\nidle_timeout: 30\npartial_ttl: 2\n")
    process = ServerProcess(config).start()
    try:
        data = os.urandom(256 * 1024)
        abandon_put(process.port, "gone.bin", data, sent=100 * 1024)
        partial, meta = server_partial(root, "gone.bin")
        left = time.monotonic()
        wait_until(lambda: partial.exists() or None, timeout=10, what="the partial")
        wait_until(lambda: not partial.exists() and not meta.exists(), timeout=20,
                   interval=0.05, what="the server to sweep the abandoned partial")
        assert time.monotonic() - left >= 1.0, "swept before partial_ttl had passed"
        assert partial_files(root) == []
    finally:
        process.stop()


# -- partials are nobody's to name ---------------------------------------------

def test_ls_never_shows_partials(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    (storage_root / "sub").mkdir()
    (storage_root / "visible.txt").write_text("hello\n")
    data = os.urandom(MiB)
    for name in ("hidden.bin", "sub/hidden.bin"):
        abandon_put(port, name, data, sent=MiB // 2)
        wait_released(server, name)
    assert len(partial_files(storage_root)) == 4

    with Client(LOOPBACK, port, timeout=30) as c:
        assert [e["name"] for e in c.ls()] == ["sub", "visible.txt"]
        assert [e["name"] for e in c.ls("sub")] == []
        assert [e["name"] for e in c.ls("/sub/")] == []
    for args in (["ls"], ["ls", "-l"], ["ls", "--json"], ["ls", "sub"], ["ls", "-l", "sub"],
                 ["ls", "--json", "sub"]):
        result = run_cli(port, *args, cwd=local)
        assert_ok(result)
        assert "ftp-partial" not in result.stdout and "hidden" not in result.stdout, (args, result.stdout)
    shell = run_cli(port, cwd=local, input="ls\ncd sub\nls\nquit\n")
    assert_ok(shell)
    assert "ftp-partial" not in shell.stdout and "hidden" not in shell.stdout


PARTIAL_NAMES = [".hidden.bin.ftp-partial", ".hidden.bin.ftp-partial.json",
                 "sub/.hidden.bin.ftp-partial", "/sub/../.hidden.bin.ftp-partial",
                 "./.hidden.bin.ftp-partial.json"]


@pytest.mark.parametrize("remote", PARTIAL_NAMES)
def test_get_of_a_partial_name_is_refused(
        server: FTPServer, port: int, storage_root: Path, local: Path, remote: str) -> None:
    (storage_root / "sub").mkdir()
    data = os.urandom(MiB)
    for name in ("hidden.bin", "sub/hidden.bin"):
        abandon_put(port, name, data, sent=MiB // 2)
        wait_released(server, name)
    before = {p: p.read_bytes() for p in partial_files(storage_root)}

    with Client(LOOPBACK, port, timeout=30) as c:
        with pytest.raises(FTPError) as caught:
            c.get(remote, local / "out.bin")
        assert caught.value.code == "forbidden", caught.value
        for attempt in (lambda: c.stat(remote), lambda: c.stat(remote, md5=True),
                        lambda: c.rm(remote), lambda: c.mv(remote, "stolen.bin"),
                        lambda: c.mv("/sub", remote)):
            with pytest.raises(FTPError):
                attempt()
        upload = local / "upload.txt"
        upload.write_text("not a partial\n")
        with pytest.raises(FTPError):
            c.put(upload, remote)
    result = run_cli(port, "get", remote, "out2.bin", cwd=local)
    assert_one_line_error(result.stderr, result.returncode)

    assert not (local / "out.bin").exists() and not (local / "out2.bin").exists()
    assert partial_files(local) == []
    assert not (storage_root / "stolen.bin").exists()
    assert {p: p.read_bytes() for p in partial_files(storage_root)} == before


# -- the tutorial's one-shot put ---------------------------------------------------

def test_one_shot_put_cut_halfway_leaves_nothing(
        server: FTPServer, port: int, storage_root: Path) -> None:
    name = "tutorial.bin"
    data = random_file(storage_root.parent / "tutorial-src.bin", SIZE, seed=17).read_bytes()
    with raw_connect(port) as sock:
        send_frame(sock, {"cmd": "put", "filename": name, "filesize": len(data)})
        sock.sendall(data[:len(data) // 2])
    wait_released(server, name)
    wait_until(lambda: partial_files(storage_root) == [], timeout=10,
               what="the one-shot put's partial to go")
    assert not (storage_root / name).exists()
    assert sorted(p.name for p in storage_root.iterdir()) == []

    # The server goes on, and a complete one-shot put still works.
    with raw_connect(port) as sock:
        send_frame(sock, {"cmd": "put", "filename": name, "filesize": len(data)})
        sock.sendall(data)
        reply = recv_frame(sock)
    assert reply["ok"] is True, reply
    assert md5_of(storage_root / name) == hashlib.md5(data).hexdigest()
    assert partial_files(storage_root) == []


def test_one_shot_put_does_not_resume_a_resumable_partial_of_another_source(
        server: FTPServer, port: int, storage_root: Path) -> None:
    """A one-shot put never builds on bytes it did not send (it has no source tag)."""
    name = "mixed.bin"
    old = os.urandom(2 * MiB)
    new = os.urandom(2 * MiB)
    abandon_put(port, name, old, sent=MiB)
    wait_released(server, name)
    with raw_connect(port) as sock:
        send_frame(sock, {"cmd": "put", "filename": name, "filesize": len(new)})
        sock.sendall(new)
        reply = recv_frame(sock)
    assert reply["ok"] is True, reply
    assert (storage_root / name).read_bytes() == new
    assert partial_files(storage_root) == []


# -- resuming across many cuts ------------------------------------------------------

def test_upload_resumes_across_several_cuts(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    """Each run gets a little further; the total sent stays close to one file's worth."""
    name = "many-cuts.bin"
    source = random_file(local / name, SIZE, seed=18)
    partial, _ = server_partial(storage_root, name)
    total = 0
    for attempt in range(10):
        with CuttingProxy(port, cut_after_up=SIZE // 4) as proxy:
            result = run_cli(proxy.port, "put", name, cwd=local)
        total += proxy.up
        if result.returncode == 0:
            break
        assert_one_line_error(result.stderr, result.returncode)
        wait_released(server, name)
        assert not (storage_root / name).exists()
        assert size_or_zero(partial) >= min(SIZE, (attempt + 1) * (SIZE // 4 - HEADERS_SLACK))
    assert result.returncode == 0, result.stderr
    report(f"put over {attempt + 1} runs each cut at 25 %", SIZE, SIZE, total)
    assert total <= SIZE + SIZE // 100 + (attempt + 1) * HEADERS_SLACK
    assert md5_of(storage_root / name) == md5_of(source)
    assert partial_files(storage_root) == []


def test_download_resumes_across_several_cuts(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    name = "many-cuts-down.bin"
    remote = random_file(storage_root / name, SIZE, seed=19)
    total = 0
    for attempt in range(10):
        with CuttingProxy(port, cut_after_down=SIZE // 4) as proxy:
            result = run_cli(proxy.port, "get", name, cwd=local)
        total += proxy.down
        if result.returncode == 0:
            break
        assert_one_line_error(result.stderr, result.returncode)
        assert not (local / name).exists()
    assert result.returncode == 0, result.stderr
    report(f"get over {attempt + 1} runs each cut at 25 %", SIZE, SIZE, total)
    assert total <= SIZE + SIZE // 100 + (attempt + 1) * HEADERS_SLACK
    assert md5_of(local / name) == md5_of(remote)
    assert partial_files(local) == []


# -- big files ------------------------------------------------------------------------

@pytest.mark.slow
def test_client_killed_mid_upload_of_a_large_file_resumes(
        server: FTPServer, port: int, storage_root: Path, local: Path) -> None:
    """SIGKILL with no proxy in the way: the client is caught by polling the partial."""
    size = 1024 * MiB
    name = "large.bin"
    source = random_file(local / name, size, seed=20)
    partial, _ = server_partial(storage_root, name)
    process = start_cli(port, "put", name, cwd=local)
    try:
        wait_until(lambda: size_or_zero(partial) >= 64 * MiB or process.poll() is not None,
                   timeout=120, interval=0.001, what="the upload to get going")
        process.kill()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    if process.returncode == 0:
        pytest.skip("the upload finished before the client could be killed")
    wait_released(server, name, timeout=60)
    held = partial.stat().st_size
    assert 0 < held < size
    with CuttingProxy(port) as counter:
        result = run_cli(counter.port, "put", name, cwd=local, timeout=300)
    assert_ok(result)
    report("large put after the client was killed", size, size - held, counter.up)
    assert counter.up <= (size - held) + size // 100 + HEADERS_SLACK
    assert md5_of(storage_root / name) == md5_of(source)
