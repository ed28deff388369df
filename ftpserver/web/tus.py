"""Resumable uploads over HTTP: tus 1.0.0 (core, creation, termination, checksum,
expiration) at ``/.tus/``.

A tus upload is a put by another door.  Creating one (``POST``) claims the
partial of its target through :meth:`Session.upload` exactly as a put does (the
same ``.NAME.ftp-partial``, quota checked against the whole ``Upload-Length``,
busy against any other writer, refused for read-only accounts), and each
``PATCH`` claims it again for the length of the request, appends the body
(checked with ``Upload-Checksum`` when given), and releases it; the last one
commits it under its name, atomically, as a put does.  The offset is the number
of bytes the partial holds.

What ties an upload's URL to its partial is a small record, ``ID.json`` in
``tus/`` under the server's state folder (``.ftp-state`` in the anonymous root),
so any server process on the root can continue any upload.  A record belongs to
the account that made it; to others it does not exist.  Records untouched for
``partial_ttl`` expire, as abandoned partials do.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..errors import (AuthFailed, ChecksumError, ConnectionLost, FTPError, InternalError,
                      IsADirectory, NotADirectory, NotFound, ProtocolError, QuotaExceeded,
                      StaleOffset)
from ..session import Session, Upload
from ..storage import STATE_FOLDER
from ..transfer import Writeback
from ..uploads import PartialUpload

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from ..server import FTPServer

__all__ = ["handle", "TusUploads", "Record", "Gone", "state_folder", "uploads_of",
           "parse_metadata", "format_metadata", "parse_checksum",
           "TUS_VERSION", "EXTENSIONS", "CHECKSUMS"]

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,termination,checksum,expiration"
#: Algorithms of ``Upload-Checksum``, by their tus names.
CHECKSUMS: dict[str, Callable[[], Any]] = {"md5": hashlib.md5, "sha1": hashlib.sha1,
                                            "sha256": hashlib.sha256}
#: Longest ``Upload-Metadata`` header taken (a path of 4096 bytes fits, in base64).
MAX_METADATA = 8192
#: Upload IDs as :func:`secrets.token_urlsafe` makes them.
_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII but space and comma, as tus keys are
_DIGITS = re.compile(r"[0-9]{1,19}")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_MAX_LENGTH = 2**63 - 1


class Gone(NotFound):
    """The upload expired."""


def state_folder(ftp: FTPServer) -> Path:
    """The server's state folder: ``.ftp-state`` at the top of the anonymous root."""
    state = getattr(ftp, "state", None)
    if state is not None:
        return Path(state.path)
    return Path(os.path.realpath(ftp.config.root)) / STATE_FOLDER


@dataclass
class Record:
    """What ties an upload URL to its partial: who made it, for which path, how long."""

    id: str
    user: str | None
    path: str
    length: int
    created: float
    metadata: str = ""

    @property
    def source(self) -> str:
        """The tag its partial is written under, as a put's client tags its file."""
        return f"tus:{self.id}"


class TusUploads:
    """The tus uploads of the server whose state folder is ``state``: creating, finding,
    continuing and ending them for a session (no HTTP here)."""

    #: Seconds between two sweeps of expired records by one process (at most).
    SWEEP_EVERY = 3600.0
    _swept: ClassVar[dict[Path, float]] = {}
    _swept_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, state: Path, ttl: float, buffer_size: int = 65536,
                 sync: bool = True) -> None:
        self.folder = state / "tus"
        self.ttl, self.buffer_size, self.sync = ttl, buffer_size, sync

    # -- records ------------------------------------------------------------------

    def _path(self, upload_id: str) -> Path:
        if not _ID.fullmatch(upload_id):
            raise NotFound("no such upload")
        return self.folder / f"{upload_id}.json"

    def _write(self, record: Record) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(record.id), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
                     | _CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(asdict(record)).encode("utf-8"))
        finally:
            os.close(fd)

    def _forget(self, record: Record) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(record.id))

    def find(self, session: Session, upload_id: str) -> Record:
        """The record of ``upload_id`` if it is ``session``'s.

        Raises NotFound (also for another account's upload), Gone if it expired.
        """
        path = self._path(upload_id)
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        except OSError:
            raise NotFound("no such upload") from None
        try:
            age = time.time() - os.fstat(fd).st_mtime
            data = json.loads(os.read(fd, 1 << 16).decode("utf-8"))
            record = Record(**data)
        except (ValueError, TypeError):
            raise NotFound("no such upload") from None
        finally:
            os.close(fd)
        if record.user != session.user or record.id != upload_id:
            raise NotFound("no such upload")
        if age > self.ttl:
            self._forget(record)
            raise Gone(f"the upload of {record.path} expired: start it again")
        return record

    def expires(self, record: Record) -> float:
        """When ``record`` expires unless it is continued."""
        with contextlib.suppress(OSError):
            return self._path(record.id).stat().st_mtime + self.ttl
        return time.time() + self.ttl

    def sweep(self, force: bool = False) -> int:
        """Remove records untouched for the ttl (at most once per SWEEP_EVERY unless
        ``force``); return how many went.  Their partials go with the partial sweeper."""
        now = time.time()
        with self._swept_lock:
            if not force and now - self._swept.get(self.folder, 0.0) < min(self.SWEEP_EVERY,
                                                                             self.ttl / 10):
                return 0
            self._swept[self.folder] = now
        removed = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.name.endswith(".json") and \
                            now - entry.stat(follow_symlinks=False).st_mtime > self.ttl:
                        os.unlink(entry.path)
                        removed += 1
        return removed

    # -- the requests ---------------------------------------------------------------

    def create(self, session: Session, filename: str, length: int, metadata: str = "",
               mkdirs: bool = False, connection: Any = None) -> Record:
        """Start an upload of ``length`` bytes to ``filename`` (as a put's ``filename``).

        With ``mkdirs``, missing parent folders are made.  Raises Forbidden
        (read-only), QuotaExceeded, Busy, and the path errors of a put.  An empty
        upload is committed at once (its record is then gone already).
        """
        self.sweep()
        session.writable()
        vpath = session.path(filename)
        if mkdirs:
            _make_parents(session, vpath)
        record = Record(secrets.token_urlsafe(18), session.user, vpath, length, time.time(),
                        metadata)
        with session.upload(vpath, length, record.source, restart=True,
                            connection=connection) as upload:
            if length == 0:
                self._commit(upload)
                log.info("%s tus %s 0 bytes", session.user or "anonymous", vpath)
                return record
            try:
                self._write(record)
            except BaseException:
                upload.discard()
                raise
        return record

    def offset(self, session: Session, record: Record) -> int:
        """The bytes of ``record``'s upload held now (0 once its partial is gone)."""
        return session.resume_offset(record.path, record.length, record.source)

    def append(self, session: Session, record: Record, offset: int, count: int,
               read: Callable[[int], bytes], checksum: tuple[str, bytes] | None = None,
               connection: Any = None) -> int:
        """Append ``count`` bytes from ``read`` to the upload at ``offset``; return the new
        offset.  The upload is committed once all its bytes are there.

        ``checksum`` (an algorithm of CHECKSUMS and a digest) checks these bytes:
        on a mismatch, or a body cut short, they are all dropped.  A body cut short
        without a checksum keeps what arrived.  Raises StaleOffset if the upload
        holds another number of bytes, ProtocolError if the bytes would go past its
        length, ChecksumError, ConnectionLost, Busy, QuotaExceeded, NotFound.
        """
        if offset + count > record.length:
            raise ProtocolError(f"{offset} + {count} bytes go past the upload's length "
                                f"{record.length}")
        with session.upload(record.path, record.length, record.source, connection=connection,
                            record_now=True) as upload:  # a HEAD tells its offset meanwhile
            if upload.offset != offset:
                raise StaleOffset(f"the upload holds {upload.offset} bytes, not {offset}")
            hasher = CHECKSUMS[checksum[0]]() if checksum else None
            received = 0
            try:
                received = self._receive(upload, offset, count, read, hasher)
            finally:
                with contextlib.suppress(OSError):
                    os.utime(self._path(record.id))  # continued: not abandoned
                if received < count and hasher is not None:
                    os.ftruncate(upload.partial.fd, offset)  # unverifiable bytes
            if hasher is not None and checksum and hasher.digest() != checksum[1]:
                os.ftruncate(upload.partial.fd, offset)
                raise ChecksumError(f"checksum mismatch: the {checksum[0]} of the bytes received "
                                    f"differs from Upload-Checksum; they were dropped")
            reached = offset + count
            if reached == record.length:
                try:
                    self._commit(upload)
                finally:
                    self._forget(record)
                log.info("%s tus %s %d bytes", session.user or "anonymous", record.path,
                         record.length)
        return reached

    def _receive(self, upload: Upload, offset: int, count: int, read: Callable[[int], bytes],
                 hasher: Any) -> int:
        """Write ``count`` bytes from ``read`` to the partial at ``offset``; return how many
        arrived (all, or ConnectionLost is raised with the rest missing)."""
        received = 0
        with upload.file() as file:
            file.seek(offset)
            with Writeback(file.fileno(), offset, count if self.sync else 0,
                           drop=True) as writeback:
                while received < count:
                    try:
                        data = read(min(self.buffer_size, count - received))
                    except (OSError, ValueError) as error:
                        raise ConnectionLost(f"the body was cut after {received} of {count} "
                                             f"bytes: {error}") from None
                    if not data:
                        raise ConnectionLost(f"the body was cut after {received} of {count} bytes")
                    view = memoryview(data)
                    while view:
                        written = file.write(view)
                        view = view[written:]
                    if hasher is not None:
                        hasher.update(data)
                    received += len(data)
                    writeback(len(data))
        return received

    def _commit(self, upload: Upload) -> None:
        try:
            upload.commit(sync=self.sync)
        except (NotFound, QuotaExceeded):
            upload.discard()  # its folder went, or it can never fit: nothing to resume
            raise

    def terminate(self, session: Session, record: Record, connection: Any = None) -> None:
        """End an upload: its partial and record go.  Raises Busy while it is written."""
        session.writable()
        self._forget_partial(session, record, connection)
        self._forget(record)

    @staticmethod
    def _forget_partial(session: Session, record: Record, connection: Any) -> None:
        """Remove the upload's partial if it is still this upload's (claimed, as a put
        claims it, but never made afresh as :class:`Upload` would)."""
        storage = session.files()
        with contextlib.suppress(NotFound, IsADirectory, NotADirectory):
            partial = PartialUpload(storage.upload_place(record.path))
            try:
                session.claims.claim(partial, record.source, connection)
                if partial.held() and partial.recorded_source() != record.source:
                    return  # another writer's partial now: not ours to remove
                held = partial.held()
                partial.discard()
                if session.ledger and held:
                    session.ledger.add(-held)
            finally:
                partial.close()
                session.claims.release(partial)


def _make_parents(session: Session, vpath: str) -> None:
    """Make the missing folders above ``vpath``, from the top down."""
    parts = vpath.strip("/").split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        folder = "/" + "/".join(parts[:depth])
        try:
            if session.stat(folder)[1].type == "dir":
                continue
        except NotFound:
            pass
        session.ensure_folder(folder)


# -- HTTP ---------------------------------------------------------------------------

#: HTTP status of each error code (the tus ones: 409 offset/busy, 413, 460).
STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404, "busy": 409,
          "stale_offset": 409, "exists": 409, "is_directory": 409, "not_directory": 409,
          "quota_exceeded": 413, "checksum": 460, "internal": 500}
_REASONS = {460: "Checksum Mismatch"}


def uploads_of(ftp: FTPServer) -> TusUploads:
    """The tus uploads of ``ftp``."""
    return TusUploads(state_folder(ftp), ftp.config.partial_ttl, ftp.config.buffer_size,
                      getattr(ftp, "sync_uploads", True))


def handle(handler: BaseHTTPRequestHandler, session: Session | None, rest: str) -> None:
    """Answer one request under ``/.tus/`` (``rest``: the path after it) for ``session``."""
    exchange = _Exchange(handler, session)
    try:
        exchange.run(rest)
    except ConnectionLost:
        handler.close_connection = True  # no one to answer
    except AuthFailed as error:
        exchange.drop_body()
        handler.send_error_for(error)  # type: ignore[attr-defined]
    except FTPError as error:
        exchange.error(error)
    except OSError as error:  # the server's own disk: say so
        log.error("tus %s: %s", exchange.method, error)
        try:
            exchange.error(InternalError(f"server file error: {error.strerror or error}"))
        except OSError:
            handler.close_connection = True
    if exchange.body_left == 0:
        handler.body_consumed = True  # type: ignore[attr-defined]  # the connection can go on


class _Exchange:
    """One tus request and its response."""

    def __init__(self, handler: BaseHTTPRequestHandler, session: Session) -> None:
        self.handler, self.session = handler, session
        self.ftp: FTPServer = handler.server.ftp  # type: ignore[attr-defined]
        self.uploads = uploads_of(self.ftp)
        self.headers = handler.headers
        self.body_left = self._content_length()
        method = handler.command
        override = self.headers.get("X-HTTP-Method-Override")
        if override and method == "POST":
            method = override.strip().upper()
        self.method = method

    # -- requests ------------------------------------------------------------

    def run(self, rest: str) -> None:
        rest = rest.strip("/")
        if self.method == "OPTIONS":
            return self.options()
        if self.headers.get("Tus-Resumable") != TUS_VERSION:
            return self.reply(412, {"Tus-Version": TUS_VERSION},
                              b"Tus-Resumable: 1.0.0 is required\n")
        if not rest:
            if self.method == "POST":
                return self.create()
            return self.not_allowed("POST, OPTIONS")
        if "/" in rest:
            raise NotFound("no such upload")
        actions = {"HEAD": self.head, "PATCH": self.patch, "DELETE": self.delete}
        action = actions.get(self.method)
        if action is None:
            return self.not_allowed("HEAD, PATCH, DELETE, OPTIONS")
        action(self.uploads.find(self.session, rest))

    def options(self) -> None:
        headers = {"Tus-Version": TUS_VERSION, "Tus-Extension": EXTENSIONS,
                   "Tus-Checksum-Algorithm": ",".join(CHECKSUMS)}
        limit = self._max_size()
        if limit is not None:
            headers["Tus-Max-Size"] = str(limit)
        self.reply(204, headers)

    def _max_size(self) -> int | None:
        if self.session is None:  # OPTIONS before a login
            return None
        limits = [self.session.partial_limit,
                  self.session.ledger.quota if self.session.ledger else None]
        known = [limit for limit in limits if limit is not None]
        return min(known) if known else None

    def create(self) -> None:
        if self.headers.get("Upload-Defer-Length") is not None:
            raise ProtocolError("Upload-Defer-Length is not supported: send Upload-Length")
        length = _number(self.headers.get("Upload-Length"), "Upload-Length")
        metadata = parse_metadata(self.headers.get("Upload-Metadata", ""))
        filename = metadata.get("filename")
        if not filename:
            raise ProtocolError("Upload-Metadata must name the target in 'filename'")
        try:
            name = filename.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("'filename' is not UTF-8") from None
        if self.body_left:
            raise ProtocolError("creation-with-upload is not supported: send the bytes by PATCH")
        record = self.uploads.create(self.session, name, length, format_metadata(metadata),
                                     "mkdirs" in metadata,
                                     self.handler.connection)
        headers = {"Location": f"/.tus/{record.id}"}
        if length:
            headers["Upload-Expires"] = _http_date(self.uploads.expires(record))
        self.reply(201, headers)

    def head(self, record: Record) -> None:
        headers = {"Upload-Offset": str(self.uploads.offset(self.session, record)),
                   "Upload-Length": str(record.length), "Cache-Control": "no-store",
                   "Upload-Expires": _http_date(self.uploads.expires(record))}
        if record.metadata:
            headers["Upload-Metadata"] = record.metadata
        self.reply(200, headers)

    def patch(self, record: Record) -> None:
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/offset+octet-stream":
            return self.reply(415, {}, b"Content-Type must be application/offset+octet-stream\n")
        if self.body_left is None:
            return self.reply(411, {}, b"Content-Length is required\n")
        offset = _number(self.headers.get("Upload-Offset"), "Upload-Offset")
        checksum = parse_checksum(self.headers.get("Upload-Checksum"))
        count = self.body_left
        reached = self.uploads.append(self.session, record, offset, count, self._read, checksum,
                                      self.handler.connection)
        headers = {"Upload-Offset": str(reached)}
        if reached < record.length:
            headers["Upload-Expires"] = _http_date(self.uploads.expires(record))
        self.reply(204, headers)

    def delete(self, record: Record) -> None:
        self.uploads.terminate(self.session, record, self.handler.connection)
        self.reply(204, {})

    # -- the body ------------------------------------------------------------

    def _content_length(self) -> int | None:
        """The body's length: 0 without one, None if it comes chunked (not taken)."""
        if self.headers.get("Transfer-Encoding"):
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        return length if length >= 0 else None

    def _read(self, n: int) -> bytes:
        rfile = self.handler.rfile
        data = getattr(rfile, "read1", rfile.read)(n)
        if self.body_left:
            self.body_left -= len(data)
        return data

    def drop_body(self) -> None:
        """A body not read ends the connection after this response (unless it is small)."""
        if self.body_left is None or self.body_left > 65536:
            self.handler.close_connection = True
            return
        with contextlib.suppress(OSError, ValueError):
            while self.body_left:
                if not self._read(self.body_left):
                    self.handler.close_connection = True
                    return

    # -- responses -------------------------------------------------------------

    def error(self, error: FTPError) -> None:
        status = 410 if isinstance(error, Gone) else STATUS.get(error.code, 500)
        if status == 500:
            log.error("tus %s: %s", self.method, error)
        self.reply(status, {}, f"{error.code}: {error.message}\n".encode("utf-8", "replace"))

    def not_allowed(self, allowed: str) -> None:
        self.reply(405, {"Allow": allowed}, b"method not allowed here\n")

    def reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """Send the response, with Tus-Resumable; a body not read ends the connection."""
        self.drop_body()
        handler = self.handler
        if self.method == "HEAD" or status == 204:
            body = b""
        handler.send_response(status, _REASONS.get(status))
        handler.send_header("Tus-Resumable", TUS_VERSION)
        for name, value in headers.items():
            handler.send_header(name, value)
        if status != 204 and self.method != "HEAD":
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            handler.send_header("Content-Length", str(len(body)))
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        if body:
            handler.wfile.write(body)


def parse_metadata(raw: str) -> dict[str, bytes]:
    """``Upload-Metadata`` as a dict of keys and decoded values (a key alone: b"").

    Raises ProtocolError for a malformed header.
    """
    if len(raw) > MAX_METADATA:
        raise ProtocolError(f"Upload-Metadata is over {MAX_METADATA} characters")
    found: dict[str, bytes] = {}
    for pair in raw.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        value = value.strip()
        if not _KEY.fullmatch(key) or key in found:
            raise ProtocolError(f"bad Upload-Metadata key {key[:40]!r}")
        try:
            found[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"Upload-Metadata value of {key!r} is not base64") from None
    return found


def format_metadata(metadata: dict[str, bytes]) -> str:
    """The ``Upload-Metadata`` header that :func:`parse_metadata` reads as ``metadata``."""
    return ",".join(f"{key} {base64.b64encode(value).decode('ascii')}" if value else key
                    for key, value in metadata.items())


def parse_checksum(raw: str | None) -> tuple[str, bytes] | None:
    """``Upload-Checksum: ALGORITHM BASE64`` as (algorithm, digest), or None without one.

    Raises ProtocolError for an unknown algorithm or a malformed digest (400, as tus says).
    """
    if raw is None:
        return None
    name, _, value = raw.strip().partition(" ")
    if name not in CHECKSUMS:
        raise ProtocolError(f"unknown checksum algorithm {name[:20]!r}: use one of "
                            f"{', '.join(CHECKSUMS)}")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("Upload-Checksum is not base64") from None
    if len(digest) != CHECKSUMS[name]().digest_size:
        raise ProtocolError(f"Upload-Checksum: a {name} digest has "
                            f"{CHECKSUMS[name]().digest_size} bytes")
    return name, digest


def _number(value: str | None, name: str) -> int:
    if value is None or not _DIGITS.fullmatch(value.strip()):
        raise ProtocolError(f"{name} must be a non-negative integer")
    number = int(value)
    if number > _MAX_LENGTH:
        raise ProtocolError(f"{name} is too large")
    return number


def _http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)
