"""Test helpers for the web side: a server pair in this process, a process, raw requests."""
from __future__ import annotations

import http.client
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator

from ftpserver.auth import hash_password
from ftpserver.config import Config, User
from ftpserver.server import FTPServer
from ftpserver.web import WebServer

from helpers import LOOPBACK, ServerProcess

PASSWORD = "correct horse"


def keys_line(password: str = PASSWORD) -> str:
    """A ``password:`` value, with few iterations so tests stay fast."""
    return hash_password(password, iterations=4096).line()


def users(root: Path, **accounts: dict[str, Any]) -> MappingProxyType:
    """Accounts for a Config: ``name={"readonly": True, ...}``, each with PASSWORD."""
    made = {}
    for name, fields in accounts.items():
        fields = {"password": keys_line(), "root": root / name, **fields}
        made[name] = User(name, **fields)
    return MappingProxyType(made)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Web:
    """A running FTPServer with its WebServer; ``request`` speaks HTTP to it."""

    ftp: FTPServer
    web: WebServer
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.web.server_address[1]

    @property
    def url(self) -> str:
        return self.web.url

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> Reply:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, {k.replace("_", "-"): v for k, v in headers.items()})


@contextmanager
def web_server(config: Config) -> Iterator[Web]:
    """FTPServer and WebServer on loopback ports, each serving on a daemon thread."""
    ftp = FTPServer(config)
    web = WebServer(ftp, port=0)
    running = Web(ftp, web)
    for server in (ftp, web):
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        running.threads.append(thread)
    try:
        yield running
    finally:
        for server in (web, ftp):
            server.shutdown()
            server.server_close()
        for thread in running.threads:
            thread.join(5)


class WebServerProcess(ServerProcess):
    """``python -m ftpserver`` with its web side: ``web_url`` from the start-up lines."""

    web_url = ""

    def start(self, timeout: float = 15) -> "WebServerProcess":
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                found = re.search(r"web side on (https?://\S+/)", line)
                if found:
                    self.web_url = found.group(1)
                    return self
            time.sleep(0.02)
        raise RuntimeError("no web side line: " + "".join(self.log))
