"""The real ``ftpclient`` in a pseudo-terminal: the password prompt, the batch bar
after Ctrl-C, and the hashing bar while a file already there is checked; and the
library's hashing callback while a resume hashes the bytes it holds again.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftpclient.client import Client
from ftpserver.digest import version_tag

from helpers import LOOPBACK, CuttingProxy, md5_of, random_file, run_cli
from test_shell import WITH_CONTROLLING_TTY, SlowProxy, Terminal, in_pty

MiB = 1024 * 1024


def ftpclient_on_tty(port: int, *args: str) -> list[str]:
    """``ftpclient ARGS`` with its pty as controlling terminal (^C sends SIGINT, getpass works)."""
    return [sys.executable, "-c", WITH_CONTROLLING_TTY, "-H", LOOPBACK, "-p", str(port), *args]


def finish(proc: subprocess.Popen[bytes], term: Terminal, timeout: float = 15) -> tuple[int, str]:
    """Wait for the exit; return the status and everything written, bars' bytes included."""
    status = proc.wait(timeout)
    term.drain(0.5)
    return status, term.buffer.decode("utf-8", "replace")


# -- the password prompt ------------------------------------------------------------------


@pytest.mark.parametrize("key, status, says", [("\x03", 130, "ftpclient: interrupted"),
                                               ("\x04", 1, "ftpclient: no password given")])
def test_password_prompt_ctrl_c_and_ctrl_d(port: int, local: Path, key: str, status: int,
                                           says: str) -> None:
    with in_pty(ftpclient_on_tty(port, "-u", "alice", "ls"), local) as (proc, term):
        term.read_until(b"Password: ", timeout=15)
        term.drain(0.2)  # getpass has turned echo off and waits
        term.send(key)
        got, text = finish(proc, term)
    assert got == status, text
    last = text.strip().splitlines()[-1]
    assert last.strip("^C").strip() == says, text  # nothing to resume, no "run from a terminal"
    assert "Traceback" not in text


# -- the batch bar after Ctrl-C -------------------------------------------------------------


FILES = 4
SIZE = 4 * MiB
OVERALL = re.compile(r"(\d)/4 files: +(\d+)%\|[^|]*\| *([\d.]+)([kM]?)/16\.0M")


@pytest.mark.parametrize("command", ["put", "get"])
def test_ctrl_c_leaves_the_overall_bar_at_what_was_done(port: int, storage_root: Path, local: Path,
                                                        command: str) -> None:
    source = (local if command == "put" else storage_root) / "tree"
    source.mkdir()
    for n in range(FILES):
        random_file(source / f"f{n}.bin", SIZE, seed=n)
    proxy = SlowProxy(port, rate=4 * MiB, down=command == "get")
    try:
        with in_pty(ftpclient_on_tty(proxy.port, command, "-r", "tree", "copy"), local,
                    columns=100) as (proc, term):
            # A quarter of the bytes on their way: a put streams the files of a batch
            # back to back and hears them confirmed together, a get one after another.
            term.read_until(re.compile(rb"files: +(2[5-9]|[3-9]\d)%"), timeout=20)
            term.send("\x03")
            status, text = finish(proc, term)
    finally:
        proxy.close()
    assert status == 130, text
    assert text.rstrip().endswith("ftpclient: interrupted; run the same command again to resume"), text
    done, percent, amount, unit = OVERALL.findall(text)[-1]  # the bar as it was left
    mib = float(amount) / {"": 1024 * 1024, "k": 1024, "M": 1}[unit]
    copy = storage_root / "copy" if command == "put" else local / "copy"
    complete = [p for p in copy.iterdir() if p.stat().st_size == SIZE and not p.name.startswith(".")
                and not p.name.endswith((".ftp-partial", ".json"))]
    # Never more than is there (files sent whole may be committed as the link goes), and
    # no bytes but those of confirmed files and of the one file the cut left partial.
    assert int(done) <= len(complete) < FILES, text[-600:]
    assert int(percent) < 100 and mib <= (int(done) + 1) * SIZE / MiB, text[-600:]


# -- hashing a file already there --------------------------------------------------------


@pytest.mark.parametrize("command", ["put", "get"])
def test_hashing_bar_while_checking_a_file_already_there(port: int, storage_root: Path,
                                                         local: Path, command: str) -> None:
    random_file(local / "big.bin", 40 * MiB, seed=1)
    assert run_cli(port, "put", "big.bin", cwd=local).returncode == 0
    with in_pty(ftpclient_on_tty(port, command, "big.bin"), local, columns=100) as (proc, term):
        status, text = finish(proc, term, timeout=30)
    assert status == 0, text
    assert re.search(r"hashing big\.bin: +100%\|", text), text
    word = "sent" if command == "put" else "received"
    assert f"big.bin: already there and identical, nothing {word}" in text, text

    with in_pty(ftpclient_on_tty(port, "-q", command, "big.bin"), local) as (proc, term):
        status, text = finish(proc, term, timeout=30)
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
