"""One HTTP connection: each request becomes calls of a :class:`~ftpserver.session.Session`.

:class:`WebHandler` only translates: a URL path into a session's path, a
session's answer into a response, an :class:`~ftpserver.errors.FTPError` into a
status (:data:`STATUS`).  What a request does lives in the session layer, the
HTTP rules of serving a file in :mod:`.ranges`, pages in :mod:`.pages`, zips in
:mod:`.zipstream`, logins in :mod:`.auth`.

Routes (see docs/HTTP.md): ``GET``/``HEAD`` of a file or folder; ``?zip`` of a
folder; ``/.login`` and ``/.logout``; ``/.static/NAME``; ``/.tus/...`` handed to
``ftpserver.web.tus.handle`` and ``/.share/TOKEN[/...]`` to
``ftpserver.web.shares.serve`` (404 while those modules do not exist).
"""
from __future__ import annotations

import importlib
import io
import json
import logging
import os
import re
import ssl
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote_to_bytes, urlsplit

from ..errors import AuthFailed, Forbidden, FTPError, NotADirectory, NotFound, ProtocolError
from ..protocol import printable, shorten
from ..session import Session
from . import pages, ranges
from .auth import cookie_value, login_cookie, parse_basic, safe_next, same_origin
from .deadline import DeadlineReader
from .zipstream import ChunkedWriter, write_zip

if TYPE_CHECKING:
    from .server import WebServer

__all__ = ["WebHandler", "STATUS"]

log = logging.getLogger(__name__)

#: The HTTP status of each error code.
STATUS = {
    "bad_request": 400, "unknown_command": 400, "not_found": 404, "forbidden": 403,
    "auth_failed": 401, "quota_exceeded": 413, "busy": 409, "is_directory": 400,
    "not_directory": 409, "exists": 409, "not_empty": 409, "stale_offset": 409,
    "checksum": 460,  # tus: Checksum Mismatch
}
#: Seconds a TLS client has to finish its handshake (at most ``idle_timeout``).
HANDSHAKE_TIMEOUT = 10.0
#: Longest body of a login form.
MAX_FORM = 8192
_STATIC_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_UNSET: Any = object()


def _hook(name: str) -> ModuleType | None:
    """The module ``ftpserver.web.NAME``, or None if it does not exist (yet)."""
    full = f"{__package__}.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as error:
        if error.name != full:
            raise
        return None


class WebHandler(BaseHTTPRequestHandler):
    """Serve one HTTP/1.1 connection: any number of requests, one after another."""

    server: "WebServer"
    protocol_version = "HTTP/1.1"
    server_version = "lan-ftp"
    sys_version = ""
    #: Bytes per ``sendfile`` call: a file goes out in slices of this size.
    send_slice = 8 * 1024 * 1024
    #: Seconds a request's head may take once its first byte has arrived (at most
    #: ``idle_timeout``): a head trickled in a byte at a time must not hold its slot for ever.
    header_timeout = 30.0

    def version_string(self) -> str:
        return self.server_version

    # -- connection -----------------------------------------------------------

    def setup(self) -> None:
        self.timeout = self.server.config.idle_timeout
        self.tls_ok = True
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(min(HANDSHAKE_TIMEOUT, self.timeout))
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError) as error:
                log.info("%s: TLS handshake failed: %s", self.client_address[0], error)
                self.tls_ok = False
        super().setup()
        self.rfile.close()
        self._reader = DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader, 64 * 1024)

    def handle(self) -> None:
        if self.tls_ok:
            super().handle()

    def handle_one_request(self) -> None:
        """Hook: wait for a request's first byte under ``idle_timeout``, then give its head
        ``header_timeout``."""
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except OSError:  # silent past idle_timeout (TimeoutError), or gone
            self.close_connection = True
            return
        self._reader.start(min(self.header_timeout, self.timeout))
        try:
            super().handle_one_request()
        finally:
            self._reader.clear()

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:
            self._reader.clear()  # the head is in: the body and the answer get idle_timeout

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    # -- the request ------------------------------------------------------------

    def _dispatch(self) -> None:
        self._session: Session | None = _UNSET
        self._started = False
        #: Set by whoever reads the request's body; an unread body ends the connection.
        self.body_consumed = False
        try:
            path, query = self._target()
            if self.command in _UNSAFE_METHODS and not same_origin(
                    self.headers.get("Origin"), self.headers.get("Host"),
                    self.headers.get("Sec-Fetch-Site")):
                raise Forbidden("cross-site request refused")
            self._route(path, query)
        except FTPError as error:
            self._fail(error)
        except (OSError, ssl.SSLError):
            raise  # the peer went away: the server logs it quietly
        except Exception:
            log.exception("%s: %s failed", self.client_address[0], printable(self.requestline))
            self._fail(None)
        if not self.body_consumed and (self.headers.get("Content-Length", "0").strip() != "0"
                                       or "Transfer-Encoding" in self.headers):
            self.close_connection = True

    def _target(self) -> tuple[str, str]:
        """The request's path (percent-decoded) and query.  Raises ProtocolError."""
        target = self.path
        if not target.startswith("/"):  # absolute form, as sent to a proxy
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        raw, _, query = target.partition("?")
        try:
            # The request line was read as Latin-1: undo that, then decode the UTF-8.
            path = unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            raise ProtocolError("the path is not valid UTF-8") from None
        return path or "/", query

    def _route(self, path: str, query: str) -> None:
        if path == "/.tus" or path.startswith("/.tus/"):
            return self._tus(path[len("/.tus/"):])
        if path.startswith("/.share/"):
            return self._share(path[len("/.share/"):])
        if path.startswith("/.static/"):
            return self._static(path[len("/.static/"):])
        if path == "/.login":
            return self._login(query)
        if path == "/.logout":
            return self._logout()
        if self.command not in ("GET", "HEAD"):
            return self._not_allowed("GET, HEAD")
        return self._files(path, query)

    # -- routes -----------------------------------------------------------------

    def _files(self, path: str, query: str) -> None:
        session = self._session_or_login(path, query)
        if session is None:
            return
        vpath, entry = session.stat(path)
        if entry.type == "dir":
            if not path.endswith("/"):
                return self._redirect(quote(vpath.rstrip("/") + "/") + (f"?{query}" if query else ""),
                                      HTTPStatus.FOUND)
            if any(part.split("=")[0] == "zip" for part in query.split("&")):
                return self.send_zip(session, vpath)
            return self._listing(session, vpath)
        if path.endswith("/"):
            raise NotADirectory(f"not a folder: {vpath}")
        self.send_file(session, vpath, head=self.command == "HEAD")

    def _listing(self, session: Session, vpath: str) -> None:
        vpath, entries = session.ls(vpath)
        if self._accepts("application/json"):
            return self.send_json(200, {"path": vpath, "entries": [e.to_json() for e in entries]})
        page = pages.listing(vpath, entries, session.user, not session.readonly,
                             login_possible=bool(self.server.ftp.accounts))
        self._send_page(200, page)

    def _static(self, name: str) -> None:
        if self.command not in ("GET", "HEAD"):
            return self._not_allowed("GET, HEAD")
        try:
            if not _STATIC_NAME.fullmatch(name):
                raise FileNotFoundError
            data = (resources.files(__package__) / "static" / name).read_bytes()
        except OSError:
            raise NotFound(f"no such file: /.static/{name}") from None
        media = ranges.content_type(name)
        if media.startswith("text/") or media.endswith("javascript"):
            media += "; charset=utf-8"
        self._send_body(200, media, data, {"Cache-Control": "no-cache"})

    def _login(self, query: str) -> None:
        if self.command in ("GET", "HEAD"):
            wanted = parse_qs(query).get("next", ["/"])[0]
            return self._send_page(200, pages.login_form("", self._encrypted(), safe_next(wanted)))
        if self.command != "POST":
            return self._not_allowed("GET, HEAD, POST")
        form = self._read_form()
        user, password = form.get("user", ""), form.get("password", "")
        wanted = safe_next(form.get("next", "/"))
        if not self.server.logins.check(user, password, self.client_address[0]):
            page = pages.login_form("Wrong user name or password.", self._encrypted(), wanted)
            return self._send_page(401, page)
        log.info("%s: logged in on the web as %s", self.client_address[0], user)
        token = self.server.logins.open(user)
        self._redirect(quote(wanted, safe="/%?=&;:@!$'()*+,~-._"), HTTPStatus.SEE_OTHER,
                       {"Set-Cookie": login_cookie(token, self._encrypted())})

    def _logout(self) -> None:
        if self.command != "POST":
            return self._not_allowed("POST")
        self.server.logins.close(cookie_value(self.headers.get("Cookie")))
        self._redirect("/", HTTPStatus.SEE_OTHER, {"Set-Cookie": login_cookie(None, self._encrypted())})

    def _tus(self, rest: str) -> None:
        module = _hook("tus")
        if module is None:
            raise NotFound("uploads are not available on this server")
        session = self.current_session()
        if session is None and self.command != "OPTIONS":
            raise AuthFailed("log in to upload: this server has no anonymous access")
        module.handle(self, session, rest)

    def _share(self, rest: str) -> None:
        module = _hook("shares")
        if module is None:
            raise NotFound("share links are not available on this server")
        token, _, sub = rest.partition("/")
        module.serve(self, token, sub)

    # -- public helpers, for the routes here and in tus.py and shares.py -------------

    def current_session(self) -> Session | None:
        """The session this request acts for: the user of its Basic credentials, else of
        its login cookie, else anonymous; None if the server has no anonymous access.

        Raises AuthFailed for wrong Basic credentials (throttled like any failed login).
        """
        if self._session is _UNSET:
            self._session = None  # a failure below leaves no session
            self._session = self._find_session()
        return self._session

    def send_file(self, session: Session, vpath: str, head: bool, attachment: bool = False) -> None:
        """Answer a GET (or, with ``head``, a HEAD) of file ``vpath`` of ``session``
        (with ``attachment``, always as a download, as a share link serves it).

        The whole file (200), or the one range of a ``Range`` header (206), unless a
        stale ``If-Range`` asks for the whole file; 416 for a range past the end, 304
        when ``If-None-Match``/``If-Modified-Since`` say the client's copy is current.
        The body goes out by ``sendfile`` in slices; memory stays flat.  Raises the
        FTPErrors of :meth:`Session.open_read`, always before anything is sent.
        """
        vpath, file = session.open_read(vpath)
        with file:
            info = os.fstat(file.fileno())
            size, tag, mtime = info.st_size, ranges.etag(info), info.st_mtime
            headers = {"Accept-Ranges": "bytes", "ETag": tag,
                       "Last-Modified": ranges.last_modified(info), "Cache-Control": "no-cache"}
            if ranges.not_modified(self.headers.get("If-None-Match"),
                                   self.headers.get("If-Modified-Since"), tag, mtime):
                return self._start(304, headers)
            try:
                wanted = (ranges.parse_range(self.headers.get("Range"), size)
                          if ranges.if_range_holds(self.headers.get("If-Range"), tag, mtime) else None)
            except ranges.Unsatisfiable:
                return self._send_body(416, "text/plain; charset=utf-8", b"range not satisfiable\n",
                                       {**headers, "Content-Range": f"bytes */{size}"})
            media = ranges.content_type(vpath)
            headers.update({"Content-Type": media,
                            "Content-Disposition": ranges.disposition(vpath.rpartition("/")[2], media,
                                                                      attachment),
                            "Content-Length": str(wanted.length if wanted else size)})
            if wanted:
                headers["Content-Range"] = wanted.content_range(size)
            self._start(206 if wanted else 200, headers)
            if not head:
                self._send_bytes(file, wanted.start if wanted else 0, wanted.length if wanted else size)

    def send_zip(self, session: Session, vpath: str) -> None:
        """Answer with folder ``vpath`` of ``session`` as a zip, streamed as it is read
        (chunked; to an HTTP/1.0 client, until the connection closes).

        Raises the FTPErrors of :meth:`Session.stat` (and NotADirectory for a file)
        before anything is sent.
        """
        vpath, entry = session.stat(vpath)
        if entry.type != "dir":
            raise NotADirectory(f"not a folder: {vpath}")
        name = (vpath.rpartition("/")[2] or session.user or "files") + ".zip"
        chunked = self.request_version != "HTTP/1.0"
        headers = {"Content-Type": "application/zip",
                   "Content-Disposition": ranges.disposition(name, "application/zip")}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Connection"] = "close"
        self._start(200, headers)
        if self.command == "HEAD":
            return
        if not chunked:
            write_zip(session, vpath, self.wfile)
            return
        out = ChunkedWriter(self.wfile.write)
        write_zip(session, vpath, out)
        out.close()

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        """Answer with ``obj`` as JSON (no body for a HEAD)."""
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self._send_body(status, "application/json", body, headers)

    def send_error_for(self, error: FTPError) -> None:
        """Answer an FTPError with its status (:data:`STATUS`, else 500): a JSON body
        ``{"error": CODE, "message": TEXT}`` to a client that accepts JSON, a page to a
        browser, a line of text to anything else.  A 401 carries a Basic challenge."""
        status = STATUS.get(error.code, 500)
        message = shorten(printable(error.message), 1000)
        headers = {"WWW-Authenticate": 'Basic realm="lan-ftp", charset="UTF-8"'} if status == 401 else {}
        if self._accepts("application/json"):
            return self.send_json(status, {"error": error.code, "message": message}, headers)
        if self._accepts("text/html"):
            page = pages.error_page(status, self._reason(status), message)
            return self._send_page(status, page, headers)
        self._send_body(status, "text/plain; charset=utf-8", (message + "\n").encode("utf-8"), headers)

    # -- sessions and logins ----------------------------------------------------------

    def _find_session(self) -> Session | None:
        ftp = self.server.ftp
        credentials = parse_basic(self.headers.get("Authorization"))
        if credentials:
            return ftp.user_session(self.server.logins.basic(*credentials, self.client_address[0]))
        user = self.server.logins.user_of(cookie_value(self.headers.get("Cookie")))
        if user:
            return ftp.user_session(user)
        return ftp.anonymous_session() if ftp.anonymous_storage else None

    def _session_or_login(self, path: str, query: str) -> Session | None:
        """The request's session; without one, a browser is sent to the login form (and
        None returned), anything else gets 401 (AuthFailed)."""
        session = self.current_session()
        if session is None:
            if self.command == "GET" and self._accepts("text/html"):
                wanted = quote(path) + (f"?{query}" if query else "")
                self._redirect("/.login?next=" + quote(wanted, safe=""), HTTPStatus.SEE_OTHER)
                return None
            raise AuthFailed("log in: this server has no anonymous access")
        return session

    def _read_form(self) -> dict[str, str]:
        """The fields of a small url-encoded form body.  Raises ProtocolError."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ProtocolError("a form needs a Content-Length") from None
        if not 0 <= length <= MAX_FORM:
            raise ProtocolError(f"a form has at most {MAX_FORM} bytes")
        body = self.rfile.read(length)
        self.body_consumed = True
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20,
                              errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("malformed form") from None
        return {key: values[0] for key, values in fields.items()}

    def _encrypted(self) -> bool:
        return isinstance(self.request, ssl.SSLSocket)

    # -- responses ------------------------------------------------------------------

    def send_response(self, code: int, message: str | None = None) -> None:
        self._started = True
        super().send_response(code, message)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        super().end_headers()

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send_body(self, status: int, media: str, body: bytes,
                   headers: dict[str, str] | None = None) -> None:
        self._start(status, {"Content-Type": media, "Content-Length": str(len(body)),
                             **(headers or {})})
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_page(self, status: int, page: bytes, headers: dict[str, str] | None = None) -> None:
        self._send_body(status, "text/html; charset=utf-8", page,
                        {"Content-Security-Policy": pages.CSP, "Cache-Control": "no-cache",
                         **(headers or {})})

    def _send_bytes(self, file: BinaryIO, start: int, length: int) -> None:
        sent = 0
        while sent < length:
            done = self.connection.sendfile(file, start + sent, min(self.send_slice, length - sent))
            if not done:
                break
            sent += done
        if sent < length:  # the file shrank meanwhile: the promised length cannot be kept
            log.info("%s: %s: file shrank while sent", self.client_address[0], printable(self.path))
            self.close_connection = True

    def _redirect(self, location: str, status: int, headers: dict[str, str] | None = None) -> None:
        self._send_body(status, "text/plain; charset=utf-8", b"", {"Location": location,
                                                                   **(headers or {})})

    def _not_allowed(self, allow: str) -> None:
        self._send_body(405, "text/plain; charset=utf-8", b"method not allowed\n", {"Allow": allow})

    def _fail(self, error: FTPError | None) -> None:
        """Answer an error; once a response has started, only ending the connection can."""
        if self._started:
            self.close_connection = True
            return
        if error is None:
            self._send_body(500, "text/plain; charset=utf-8", b"internal error (logged on the server)\n")
            self.close_connection = True
            return
        self.send_error_for(error)

    def _accepts(self, media: str) -> bool:
        return media in self.headers.get("Accept", "")

    @staticmethod
    def _reason(status: int) -> str:
        try:
            return HTTPStatus(status).phrase
        except ValueError:
            return "Checksum Mismatch" if status == 460 else "Error"

    # -- logging --------------------------------------------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        user = self._session.user if isinstance(getattr(self, "_session", None), Session) else None
        level = logging.DEBUG if self.path.startswith("/.static/") else logging.INFO
        log.log(level, "%s %s %s %s", self.client_address[0], user or "anonymous",
                shorten(printable(self.requestline), 300), getattr(code, "value", code))

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s: %s", self.client_address[0], printable(format % args))
