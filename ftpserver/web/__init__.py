"""The web side: the same roots, accounts and guarantees over HTTP(S) (see docs/HTTP.md).

:class:`WebServer` runs beside the native :class:`~ftpserver.server.FTPServer` in
the same process and serves each connection with a :class:`WebHandler`; tus
uploads (:mod:`.tus`) and share links (:mod:`.shares`) hang off its routes.
"""
from .handler import WebHandler
from .server import WebServer

__all__ = ["WebServer", "WebHandler"]
