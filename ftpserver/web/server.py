"""The web side's server: HTTP(S) beside the native protocol, in the same process.

:class:`WebServer` holds the :class:`~ftpserver.server.FTPServer` it serves
beside, and takes from it everything a request needs: sessions, accounts, the
login throttle, the digest cache, the TLS context and the connection limits
(one count for both doors).  Each connection is served by a
:class:`~ftpserver.web.handler.WebHandler` in its own thread, as the native
side's are: the standard library's ThreadingHTTPServer has exactly that shape.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import sys
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from ..server import Admitting, TLSAccepting
from .auth import Logins
from .handler import WebHandler

if TYPE_CHECKING:
    from ..server import FTPServer

__all__ = ["WebServer"]

log = logging.getLogger(__name__)

_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Retry-After: 5\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b")


class WebServer(Admitting, TLSAccepting, ThreadingHTTPServer):
    """Serve the roots of ``ftp`` over HTTP (HTTPS when it has TLS) on its host and
    ``config.http_port`` (or ``port``)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    kind = "web connection"

    def __init__(self, ftp: FTPServer, port: int | None = None,
                 handler: type[WebHandler] = WebHandler, bind_and_activate: bool = True) -> None:
        self.ftp = ftp
        self.config = ftp.config
        self.tls: ssl.SSLContext | None = ftp.tls
        self.logins = Logins(ftp)
        if ":" in self.config.host:
            self.address_family = socket.AF_INET6
        chosen = self.config.http_port if port is None else port
        if chosen is None:
            raise ValueError("no http_port to serve on")
        super().__init__((self.config.host, chosen), handler, bind_and_activate)
        ftp.http_port = self.server_address[1]  # what share links point to

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's name (socket.getfqdn), which can
        # wait seconds on a LAN without DNS; nothing here uses it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[misc]

    @property
    def url(self) -> str:
        """The address to open, such as ``http://127.0.0.1:8080/``."""
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}/"

    # -- connections ----------------------------------------------------------

    @property
    def gate(self) -> FTPServer:
        """The native server: web connections count against its limits too."""
        return self.ftp

    def _refuse(self, request: socket.socket, message: str) -> None:
        request.settimeout(5)
        body = (message + "\n").encode("utf-8")
        with contextlib.suppress(OSError):
            if isinstance(request, ssl.SSLSocket):
                request.do_handshake()
            request.sendall(_REFUSAL % (len(body), body))
        self.shutdown_request(request)

    def handle_error(self, request: object, client_address: tuple) -> None:
        """Hook: a peer gone mid-response is routine; anything else is logged with its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (OSError, ssl.SSLError)):
            log.debug("%s: web connection ended: %s", client_address[0], error)
        else:
            log.exception("%s: web request failed", client_address[0])
