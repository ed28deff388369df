"""The real ``ftpclient`` in a pseudo-terminal: the password prompt, the batch bar
after Ctrl-C, and the hashing bar while a file already there is checked; and the
library's hashing callback while a resume hashes the bytes it holds again.
"""
from __future__ import annotations

import fcntl
import os
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from ftpclient.client import Client
from ftpserver.digest import version_tag

from helpers import LOOPBACK, CuttingProxy, md5_of, random_file, run_cli
from test_shell import WITH_CONTROLLING_TTY, Terminal

MiB = 1024 * 1024


class Spawned:
    """``ftpclient ARGS`` with a pty as its controlling terminal (^C sends SIGINT)."""

    def __init__(self, port: int, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        environ = {**os.environ, "TERM": "dumb", "COLUMNS": "100", "LINES": "24", **(env or {})}
        environ.pop("FTP_PASSWORD", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WITH_CONTROLLING_TTY, "-H", LOOPBACK, "-p", str(port), *args],
            stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=environ, start_new_session=True)
        os.close(slave)
        self.master = master
        self.term = Terminal(master)

    def finish(self, timeout: float = 15) -> tuple[int, str]:
        """Wait for the exit; return the status and everything written, bars' bytes included."""
        status = self.proc.wait(timeout)
        self.term.drain(0.5)
        return status, self.term.buffer.decode("utf-8", "replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def spawn() -> Iterator[type[Spawned]]:
    started: list[Spawned] = []

    class Tracked(Spawned):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for one in started:
        one.close()


# -- the password prompt ------------------------------------------------------------------


@pytest.mark.parametrize("key, status, says", [("\x03", 130, "ftpclient: interrupted"),
                                               ("\x04", 1, "ftpclient: no password given")])
def test_password_prompt_ctrl_c_and_ctrl_d(spawn: type[Spawned], port: int, local: Path,
                                           key: str, status: int, says: str) -> None:
    client = spawn(port, "-u", "alice", "ls", cwd=local)
    client.term.read_until(b"Password: ", timeout=15)
    client.term.drain(0.2)  # getpass has turned echo off and waits
    client.term.send(key)
    got, text = client.finish()
    assert got == status, text
    last = text.strip().splitlines()[-1]
    assert last.strip("^C").strip() == says, text  # nothing to resume, no "run from a terminal"
    assert "Traceback" not in text


# -- the batch bar after Ctrl-C -------------------------------------------------------------


class ThrottledProxy:
    """A loopback proxy holding the server->client (``down``) or client->server bytes
    to ``rate`` bytes/s."""

    def __init__(self, target_port: int, rate: float, down: bool) -> None:
        self.target_port, self.rate, self.down = target_port, rate, down
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        server = socket.create_connection((LOOPBACK, self.target_port))
        peer = {client: server, server: client}
        slow = server if self.down else client
        deadline = time.monotonic() + 60
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                readable, _, _ = select.select([client, server], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(16 * 1024)
                    if not data:
                        return
                    peer[sock].sendall(data)
                    if sock is slow:
                        time.sleep(len(data) / self.rate)
        except OSError:
            return
        finally:
            for sock in (client, server):
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)


FILES = 4
SIZE = 4 * MiB
OVERALL = re.compile(r"(\d)/4 files: +(\d+)%\|[^|]*\| *([\d.]+)M/16\.0M")


@pytest.mark.parametrize("command", ["put", "get"])
def test_ctrl_c_leaves_the_overall_bar_at_what_was_done(spawn: type[Spawned], port: int,
                                                        storage_root: Path, local: Path,
                                                        command: str) -> None:
    source = (local if command == "put" else storage_root) / "tree"
    source.mkdir()
    for n in range(FILES):
        random_file(source / f"f{n}.bin", SIZE, seed=n)
    proxy = ThrottledProxy(port, rate=4 * MiB, down=command == "get")
    try:
        client = spawn(proxy.port, command, "-r", "tree", "copy", cwd=local)
        client.term.read_until(b"1/4 files", timeout=20)  # the first file is done
        client.term.drain(0.3)
        client.term.send("\x03")
        status, text = client.finish()
    finally:
        proxy.close()
    assert status == 130, text
    assert text.rstrip().endswith("ftpclient: interrupted; run the same command again to resume"), text
    done, percent, mib = OVERALL.findall(text)[-1]  # the bar as it was left
    copy = storage_root / "copy" if command == "put" else local / "copy"
    complete = [p for p in copy.iterdir() if p.stat().st_size == SIZE and not p.name.startswith(".")
                and not p.name.endswith((".ftp-partial", ".json"))]
    # Never more than is there (a file may have been completed the moment ^C came).
    assert len(complete) - 1 <= int(done) <= len(complete) < FILES, text[-600:]
    assert int(percent) < 100 and float(mib) < (int(done) + 1) * SIZE / MiB, text[-600:]


# -- hashing a file already there --------------------------------------------------------


@pytest.mark.parametrize("command", ["put", "get"])
def test_hashing_bar_while_checking_a_file_already_there(spawn: type[Spawned], port: int,
                                                         storage_root: Path, local: Path,
                                                         command: str) -> None:
    random_file(local / "big.bin", 40 * MiB, seed=1)
    assert run_cli(port, "put", "big.bin", cwd=local).returncode == 0
    client = spawn(port, command, "big.bin", cwd=local)
    status, text = client.finish(timeout=30)
    assert status == 0, text
    assert re.search(r"hashing big\.bin: +100%\|", text), text
    word = "sent" if command == "put" else "received"
    assert f"big.bin: already there and identical, nothing {word}" in text, text

    quiet = spawn(port, "-q", command, "big.bin", cwd=local)
    status, text = quiet.finish(timeout=30)
    assert status == 0 and "hashing" not in text and "%" not in text, text
    piped = run_cli(port, command, "big.bin", cwd=local)  # stderr not a terminal: no bar
    assert piped.returncode == 0 and "hashing" not in piped.stderr, piped.stderr


# -- a resume that hashes again what it holds ---------------------------------------------

BIG = 64 * MiB
HELD = BIG - 64 * 1024  # the rest arrives long before the held bytes are hashed again


class Calls:
    """A progress callback that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


def assert_hashing_reported(hashing: Calls, progress: Calls) -> None:
    assert progress.calls[0][0] > 0  # it resumed
    assert hashing.calls, "no hashing progress while the held bytes were hashed again"
    assert any(done < BIG for done, _ in hashing.calls), hashing.calls
    assert hashing.calls[-1] == (BIG, BIG)


def test_get_resume_without_a_saved_state_reports_hashing(client: Client, storage_root: Path,
                                                          local: Path) -> None:
    random_file(storage_root / "big.bin", BIG, seed=3)
    with open(storage_root / "big.bin", "rb") as source, \
            open(local / "big.bin.ftp-partial", "wb") as partial:
        partial.write(source.read(HELD))
    tag = version_tag(os.stat(storage_root / "big.bin"))  # no hash state: held bytes re-hashed
    (local / "big.bin.ftp-partial.json").write_text(
        f'{{"remote": "/big.bin", "source": "{tag}", "filesize": {BIG}}}')
    client.stat("big.bin", md5=True)  # the server remembers it: its trailer comes at once
    hashing, progress = Calls(), Calls()
    result = client.get("big.bin", local / "big.bin", progress=progress, hashing=hashing)
    assert result.offset == HELD
    assert md5_of(local / "big.bin") == md5_of(storage_root / "big.bin")
    assert_hashing_reported(hashing, progress)


def test_put_resume_without_saved_states_reports_hashing(port: int, storage_root: Path,
                                                         local: Path, cache_home: Path) -> None:
    random_file(local / "big.bin", BIG, seed=4)
    with CuttingProxy(port, cut_after_up=HELD) as proxy:
        assert run_cli(proxy.port, "put", "big.bin", cwd=local).returncode != 0
    for log in cache_home.rglob("*.log"):  # the client's hash states: gone, so it hashes again
        log.unlink()
    hashing, progress = Calls(), Calls()
    with Client(LOOPBACK, port, timeout=30) as client:
        result = client.put(local / "big.bin", progress=progress, hashing=hashing)
    assert 0 < result.offset < BIG
    assert md5_of(storage_root / "big.bin") == md5_of(local / "big.bin")
    assert_hashing_reported(hashing, progress)
