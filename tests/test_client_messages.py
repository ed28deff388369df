"""What the client says when things go wrong: one line, naming the cause and the next
step.  The real ``ftpclient`` against real servers (plain and TLS) on loopback.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from ftpserver.config import Config, TLSConfig
from ftpserver.server import FTPServer

from helpers import LOOPBACK, CuttingProxy, make_cert, random_file, run_cli

MiB = 1024 * 1024


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture
def tls_port(tmp_path: Path, storage_root: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server in this process, and its certificate."""
    cert, key = make_cert(tmp_path)
    srv = FTPServer(Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30,
                           tls=TLSConfig(cert, key)))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv.server_address[1], cert
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_plain_client_to_tls_server_suggests_tls(tls_port: tuple[int, Path], local: Path) -> None:
    port, _ = tls_port
    result = run_cli(port, "ls", cwd=local, timeout=30)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "may require TLS" in line and "--tls" in line and "--cafile" in line, line


def test_tls_client_to_plain_server_says_it_does_not_speak_tls(port: int, local: Path,
                                                               tls_port: tuple[int, Path]) -> None:
    _, cert = tls_port
    result = run_cli(port, "--cafile", str(cert), "ls", cwd=local, timeout=30)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "does not speak TLS" in line and "WRONG_VERSION_NUMBER" not in line, line


@pytest.mark.parametrize("value", ["99999", "0", "-1", "http"])
def test_bad_port_is_refused_by_the_parser(value: str, local: Path) -> None:
    result = run_cli(2121, "-p", value, "ls", cwd=local, timeout=30)  # run_cli's -p comes first
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert "-p/--port" in last and "1 to 65535" in last and value in last, result.stderr
    assert "refused" not in result.stderr


@pytest.mark.parametrize("command", ["put", "get"])
def test_a_cut_transfer_says_how_to_resume(command: str, port: int, storage_root: Path,
                                           local: Path) -> None:
    random_file((local if command == "put" else storage_root) / "big.bin", 8 * MiB, seed=1)
    cut = {"cut_after_up": 2 * MiB} if command == "put" else {"cut_after_down": 2 * MiB}
    with CuttingProxy(port, **cut) as proxy:
        result = run_cli(proxy.port, command, "big.bin", cwd=local, timeout=30)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.endswith("; run the same command again to resume"), line


def test_not_interrupted_means_nothing_to_resume(port: int, local: Path) -> None:
    result = run_cli(port, "ls", "nowhere", cwd=local, timeout=30)
    assert "resume" not in one_line(result.stderr)
