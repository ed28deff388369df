"""Several ``ftpserver`` processes serving one root (SPEC §5, "Several processes"):
one writer per file, one quota, resumes and partial uploads shared through the
file system.

Each test starts two real server processes on the same config.yaml and talks to
them over loopback with raw frames or the real CLI.
"""
from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ftpserver.auth import ScramClient, hash_password

from helpers import (LOOPBACK, CuttingProxy, ServerProcess, md5_of, random_file, raw_frame,
                     recv_frame, run_cli)

PASSWORD = "c4r0l"
MiB = 1 << 20
TIMEOUT = 10

Servers = Callable[..., list[ServerProcess]]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """``servers(count, quota=None, extra="")`` starts ``count`` server processes on one
    config.yaml: anonymous root tmp_path/storage, user carol (password PASSWORD) with
    root tmp_path/users/carol under ``quota``, plus the ``extra`` YAML lines."""
    started: list[ServerProcess] = []

    def start(count: int, quota: int | None = None, extra: str = "") -> list[ServerProcess]:
        root = tmp_path / "storage"
        root.mkdir(exist_ok=True)
        carol = tmp_path / "users" / "carol"
        carol.mkdir(parents=True, exist_ok=True)
        line = hash_password(PASSWORD, iterations=4096).line()
        config = tmp_path / "config.yaml"
        config.write_text(
            f"host: {LOOPBACK}\nport: 0\nroot: {root}\nidle_timeout: 30\n{extra}"
            f"users:\n  carol:\n    password: \"{line}\"\n    root: {carol}\n"
            + (f"    quota: {quota}\n" if quota is not None else ""))
        for _ in range(count):
            started.append(ServerProcess(config).start())
        return started[-count:]

    yield start
    for server in started:
        server.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)


def login(sock: socket.socket) -> None:
    scram = ScramClient("carol", PASSWORD)
    sock.sendall(raw_frame({"cmd": "login", "message": scram.first()}))
    challenge = recv_frame(sock)["message"]
    sock.sendall(raw_frame({"cmd": "login", "message": scram.final(challenge)}))
    assert recv_frame(sock)["ok"] is True


def resumable_header(name: str, size: int, source: str) -> dict[str, Any]:
    return {"cmd": "put", "filename": name, "filesize": size, "resume": True, "source": source}


def finish(sock: socket.socket, rest: bytes, whole: bytes) -> dict[str, Any] | None:
    """Send the rest of a put's body and its trailer; the final reply, None if cut."""
    try:
        sock.sendall(rest + raw_frame({"md5": hashlib.md5(whole).hexdigest()}))
        return recv_frame(sock)
    except OSError:
        return None


def body(seed: int, size: int) -> bytes:
    block = hashlib.sha512(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def held_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*")
               if path.is_file() and not path.is_symlink())


# -- a) one writer per file across processes ----------------------------------------

def test_a_second_writer_on_another_process_gets_busy(servers: Servers, tmp_path: Path,
                                                      local: Path) -> None:
    one, two = servers(2)
    data = body(1, 300_000)
    with connect(one.port) as writer:
        writer.sendall(raw_frame(resumable_header("x", len(data), "writer-a")))
        assert recv_frame(writer)["ok"] is True
        writer.sendall(data[:150_000])
        time.sleep(0.3)  # process one has written the first half
        (local / "x").write_bytes(body(2, 250_000))
        done = run_cli(two.port, "-q", "put", "x", cwd=local, timeout=30)
        assert done.returncode != 0 and "busy" in done.stderr, (done.returncode, done.stderr)
        reply = finish(writer, data[150_000:], data)
    assert reply is not None and reply["ok"] is True, reply
    assert (tmp_path / "storage" / "x").read_bytes() == data


# -- b) one quota across processes ---------------------------------------------------

def test_concurrent_puts_on_two_processes_stay_within_one_quota(servers: Servers,
                                                                tmp_path: Path) -> None:
    quota = MiB
    processes = servers(2, quota=quota)
    size = 400_000  # two fit, three do not
    socks: list[socket.socket] = []
    replies = []
    try:
        for number in range(4):  # two on each process, all admitted before any body
            sock = connect(processes[number % 2].port)
            socks.append(sock)
            login(sock)
            sock.sendall(raw_frame(resumable_header(f"f{number}.bin", size, f"tag{number}")))
            replies.append(recv_frame(sock))
        finals = []
        for number, (sock, reply) in enumerate(zip(socks, replies)):
            if reply["ok"]:
                data = body(10 + number, size)
                finals.append(finish(sock, data, data))
            else:
                assert reply["error"] == "quota_exceeded", reply
    finally:
        for sock in socks:
            sock.close()
    held = held_bytes(tmp_path / "users" / "carol")
    assert held <= quota, (f"{held} bytes held with a quota of {quota}: "
                           f"{[r['ok'] for r in replies]} admitted")
    assert any(reply and reply["ok"] for reply in finals)


# -- c) a put cut on one process resumes on another ------------------------------------

def test_a_put_cut_on_one_process_resumes_on_another(servers: Servers, tmp_path: Path,
                                                     local: Path) -> None:
    """Holds today: the partial and its metadata are files beside the target."""
    one, two = servers(2)
    size = 8 * MiB
    random_file(local / "big.bin", size, seed=7)
    with CuttingProxy(one.port, cut_after_up=3 * MiB) as cutter:
        cut = run_cli(cutter.port, "-q", "put", "big.bin", cwd=local, timeout=30)
    assert cut.returncode != 0
    deadline = time.monotonic() + 10  # let process one notice the cut and let go
    while time.monotonic() < deadline and not any("interrupted" in line for line in one.log):
        time.sleep(0.05)
    for _ in range(5):  # a writer not yet let go answers busy: a user runs it again
        with CuttingProxy(two.port) as counter:
            done = run_cli(counter.port, "-q", "put", "big.bin", cwd=local, timeout=60)
            sent = counter.up
        if "busy" not in done.stderr:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stderr
    assert sent < size - 2 * MiB, f"{sent} bytes went up to finish a put that held about 3 MiB"
    assert md5_of(tmp_path / "storage" / "big.bin") == md5_of(local / "big.bin")


# -- d) no process sweeps a partial another is writing ---------------------------------

def test_a_partial_being_written_is_never_swept_by_another_process(servers: Servers,
                                                                   tmp_path: Path) -> None:
    one, _two = servers(2, extra="partial_ttl: 1s\n")
    data = body(3, 200_000)
    with connect(one.port) as writer:
        writer.sendall(raw_frame(resumable_header("x", len(data), "writer-a")))
        assert recv_frame(writer)["ok"] is True
        writer.sendall(data[:100_000])
        time.sleep(3.5)  # over three times partial_ttl: both sweepers have run meanwhile
        reply = finish(writer, data[100_000:], data)
    assert reply is not None and reply["ok"] is True, reply
    assert (tmp_path / "storage" / "x").read_bytes() == data
