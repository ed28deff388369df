"""Share links: ``/.share/TOKEN`` downloads one file (or a folder, as a zip) without a login.

A token carries its share's id and expiry, signed with HMAC-SHA256 by a secret
the server keeps in its state folder (``share-secret``, made once with
``O_EXCL`` and mode 0600; never in config.yaml), so a forged or altered token is
refused without looking anything up, and an expired one is known as such.  The
shares themselves (whose, which path, until when) live in ``shares.json`` beside
it, rewritten whole under a lock (:mod:`ftpserver.locks`) and renamed into place,
so every server process on the root sees one list; a share removed from it
(revoked) stops working at once.  A download runs as the sharing account's
session, so it reaches exactly what that account could.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import AuthFailed, FTPError, InternalError, NotFound, QuotaExceeded
from ..locks import lock
from ..session import Session
from .tus import Gone, state_folder

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from ..server import FTPServer

__all__ = ["Share", "ShareBook", "book_of", "serve", "DEFAULT_EXPIRES", "MAX_EXPIRES",
           "MAX_SHARES"]

log = logging.getLogger(__name__)

#: Seconds a share lasts unless told otherwise, and at most.
DEFAULT_EXPIRES = 7 * 86400
MAX_EXPIRES = 366 * 86400
#: Shares one account may hold at once (the list is rewritten whole on every change).
MAX_SHARES = 1000
SECRET_NAME = "share-secret"
BOOK_NAME = "shares.json"
LOCK_NAME = "shares.lock"
_ID_BYTES = 9
_MAC_BYTES = 16
_PAYLOAD = struct.Struct(f">{_ID_BYTES}sQ")
_TOKEN_BYTES = _PAYLOAD.size + _MAC_BYTES
_TOKEN_CHARS = (_TOKEN_BYTES * 4 + 2) // 3
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class Share:
    """One share link: its id, whose it is, what it gives, until when, and its token."""

    id: str
    owner: str | None
    path: str
    expires: int
    created: float
    token: str

    @property
    def url_path(self) -> str:
        return f"/.share/{self.token}"

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "path": self.path, "expires": self.expires,
                "url_path": self.url_path}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ShareBook:
    """The shares of the server whose state folder is ``state`` (no HTTP here)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self._secret: bytes | None = None

    # -- the secret -------------------------------------------------------------------

    def secret(self) -> bytes:
        """The signing key, made on first use (by whichever process comes first)."""
        if self._secret is None:
            self._secret = self._read_secret() or self._make_secret()
        return self._secret

    def _read_secret(self) -> bytes | None:
        try:
            fd = os.open(self.state / SECRET_NAME, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        if len(data) < 32:
            raise InternalError(f"{self.state / SECRET_NAME} is damaged: remove it to make a "
                                "new one (every share link made so far then stops working)")
        return data

    def _make_secret(self) -> bytes:
        self.state.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name, then linked to its own: no process
        # ever reads half a secret, and the first link made wins.
        temporary = self.state / f".{SECRET_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                     0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, self.state / SECRET_NAME)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
        secret = self._read_secret()
        assert secret is not None
        return secret

    # -- tokens -------------------------------------------------------------------------

    def token(self, share_id: str, expires: int) -> str:
        """The signed token of share ``share_id`` expiring at ``expires``."""
        payload = _PAYLOAD.pack(base64.urlsafe_b64decode(share_id), expires)
        return _b64(payload + self._mac(payload))

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.secret(), b"share\0" + payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def _verify(self, token: str) -> tuple[str, int]:
        """The id and expiry ``token`` was signed for.  Raises NotFound for a forged one."""
        forged = NotFound("no such share link")
        if len(token) != _TOKEN_CHARS:
            raise forged
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise forged from None
        payload, mac = raw[:_PAYLOAD.size], raw[_PAYLOAD.size:]
        if len(raw) != _TOKEN_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            raise forged
        share_id, expires = _PAYLOAD.unpack(payload)
        return _b64(share_id), expires

    # -- the list -----------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.state / BOOK_NAME, "rb") as file:
                data = json.loads(file.read(64 << 20) or b"{}")
        except FileNotFoundError:
            return {}
        except ValueError:
            log.error("%s is damaged: treating it as empty", self.state / BOOK_NAME)
            return {}
        shares = data.get("shares") if isinstance(data, dict) else None
        return shares if isinstance(shares, dict) else {}

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The shares, written back (expired ones dropped) under the list's lock."""
        self.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state / LOCK_NAME, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
        try:
            lock(fd)
            shares = self._load()
            yield shares
            now = time.time()
            kept = {key: value for key, value in shares.items() if value.get("expires", 0) > now}
            temporary = self.state / f".{BOOK_NAME}.{os.getpid()}.{threading.get_ident()}"
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump({"shares": kept}, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.state / BOOK_NAME)
        finally:
            os.close(fd)

    def _share(self, share_id: str, entry: dict[str, Any]) -> Share:
        return Share(share_id, entry.get("owner"), entry["path"], entry["expires"],
                     entry.get("created", 0.0), self.token(share_id, entry["expires"]))

    def create(self, owner: str | None, vpath: str, seconds: int = DEFAULT_EXPIRES) -> Share:
        """Share ``vpath`` of ``owner``'s root for ``seconds``.  Raises QuotaExceeded when
        the account holds MAX_SHARES already."""
        now = time.time()
        share_id = _b64(secrets.token_bytes(_ID_BYTES))
        entry = {"owner": owner, "path": vpath, "expires": int(now + seconds), "created": now}
        with self._changing() as shares:
            if sum(1 for other in shares.values() if other.get("owner") == owner
                   and other.get("expires", 0) > now) >= MAX_SHARES:
                raise QuotaExceeded(f"this account has {MAX_SHARES} share links already: "
                                    "revoke some first")
            shares[share_id] = entry
        return self._share(share_id, entry)

    def list(self, owner: str | None) -> list[Share]:
        """``owner``'s shares that have not expired, the soonest to expire first."""
        now = time.time()
        found = [self._share(key, entry) for key, entry in self._load().items()
                 if entry.get("owner") == owner and entry.get("expires", 0) > now]
        return sorted(found, key=lambda share: (share.expires, share.path))

    def revoke(self, owner: str | None, token: str) -> Share:
        """End ``owner``'s share ``token`` (a URL ending in it will do).  Raises NotFound."""
        token = urllib.parse.urlsplit(token.strip()).path.rstrip("/").rpartition("/")[2]
        share_id, _ = self._verify(token)
        with self._changing() as shares:
            entry = shares.get(share_id)
            if entry is None or entry.get("owner") != owner:
                raise NotFound("no such share link")
            del shares[share_id]
        return self._share(share_id, entry)

    def resolve(self, token: str) -> Share:
        """The share ``token`` opens.  Raises NotFound (forged, revoked), Gone (expired)."""
        share_id, expires = self._verify(token)
        if expires <= time.time():
            raise Gone("this share link has expired")
        entry = self._load().get(share_id)
        if entry is None or entry.get("expires") != expires:
            raise NotFound("no such share link")
        return self._share(share_id, entry)


_books: dict[Path, ShareBook] = {}
_books_lock = threading.Lock()


def book_of(ftp: FTPServer) -> ShareBook:
    """The share book of ``ftp`` (one per state folder and process: the secret is read once)."""
    state = state_folder(ftp)
    with _books_lock:
        return _books.setdefault(state, ShareBook(state))


def http_port(ftp: FTPServer) -> int | None:
    """The port the web side of ``ftp`` listens on, or None without one."""
    port = getattr(ftp, "http_port", None) or getattr(ftp.config, "http_port", None)
    return port or None


# -- HTTP ---------------------------------------------------------------------------

def serve(handler: BaseHTTPRequestHandler, token: str, rest: str) -> None:
    """Answer ``GET``/``HEAD /.share/TOKEN[/rest]``: the shared file, a folder as a zip,
    or (``rest``) a file or folder inside a shared folder."""
    ftp: FTPServer = handler.server.ftp  # type: ignore[attr-defined]
    if handler.command not in ("GET", "HEAD"):
        return _plain(handler, 405, "share links are only read\n", {"Allow": "GET, HEAD"})
    try:
        share = book_of(ftp).resolve(token)
        session, vpath, kind = _target(ftp, share, rest)
    except Gone as error:
        return _plain(handler, 410, f"{error.message}\n")
    except (NotFound, AuthFailed):
        return handler.send_error_for(NotFound("no such share link"))  # type: ignore[attr-defined]
    except FTPError as error:
        return handler.send_error_for(error)  # type: ignore[attr-defined]
    name = vpath.rstrip("/").rpartition("/")[2] or "files"
    log.info("share %s (%s) %s %s", share.id, share.owner or "anonymous", handler.command, vpath)
    if kind != "dir":  # always a download: phones' download managers name it by the header
        handler.send_file(session, vpath, handler.command == "HEAD",  # type: ignore[attr-defined]
                          attachment=True)
    elif handler.command == "HEAD":
        handler.send_response(200)
        handler.send_header("Content-Type", "application/zip")
        handler.send_header("Content-Disposition", content_disposition(name + ".zip"))
        handler.end_headers()
    else:
        handler.send_zip(session, vpath)  # type: ignore[attr-defined]


def _target(ftp: FTPServer, share: Share, rest: str) -> tuple[Session, str, str]:
    """The sharing account's session, the path to serve and its type ("file" or "dir").

    Raises NotFound if the account, the file or ``rest`` inside the shared folder is
    not there, or ``rest`` leaves it.
    """
    if share.owner is not None and share.owner not in ftp.accounts:
        raise NotFound("no such share link")
    session = ftp.user_session(share.owner) if share.owner else ftp.anonymous_session()
    vpath, entry = session.stat(share.path)
    rest = rest.strip("/")
    if rest:
        if entry.type != "dir":
            if rest != vpath.rpartition("/")[2]:  # only the file's own name, for download managers
                raise NotFound("no such share link")
        else:
            inside = session.files().virtual(vpath, rest)
            if not inside.startswith(vpath.rstrip("/") + "/"):
                raise NotFound("no such share link")
            vpath, entry = session.stat(inside)
    return session, vpath, entry.type


def content_disposition(name: str) -> str:
    """``attachment`` with ``name``: plain ASCII for old clients, UTF-8 for the others (RFC 6266)."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%' else "_" for c in name)
    return (f'attachment; filename="{fallback}"; '
            f"filename*=UTF-8''{urllib.parse.quote(name, safe='')}")


def _plain(handler: BaseHTTPRequestHandler, status: int, text: str,
           headers: dict[str, str] | None = None) -> None:
    body = b"" if handler.command == "HEAD" else text.encode("utf-8")
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(text.encode("utf-8"))))
    handler.end_headers()
    if body:
        handler.wfile.write(body)
