"""Fixtures: a fresh storage root per test, a real server on an ephemeral loopback port."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from ftpclient.client import Client
from ftpserver.config import Config
from ftpserver.server import FTPServer

from helpers import LOOPBACK, ServerProcess


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The client's cache folder (upload checkpoints), private to each test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    root.mkdir()
    return root


@pytest.fixture
def config(storage_root: Path) -> Config:
    return Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30)


@pytest.fixture
def server(config: Config) -> Iterator[FTPServer]:
    """A real server in this process, serving on a daemon thread."""
    srv = FTPServer(config)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def port(server: FTPServer) -> int:
    return server.server_address[1]


@pytest.fixture
def client(port: int) -> Iterator[Client]:
    with Client(LOOPBACK, port, timeout=30) as c:
        yield c


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """The client's own folder (the CLI's working directory)."""
    folder = tmp_path / "local"
    folder.mkdir()
    return folder


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real ``python -m ftpserver`` process (started by the test with ``.start()``)."""
    config_path = tmp_path / "config.yaml"
    root = tmp_path / "storage"
    root.mkdir(exist_ok=True)
    config_path.write_text(f"host: {LOOPBACK}\nport: 0\nroot: {root}\nidle_timeout: 30\n")
    proc = ServerProcess(config_path)
    yield proc
    proc.stop()
