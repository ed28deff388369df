"""Web logins: passwords checked against the stored SCRAM keys, login cookies, HTTP Basic.

A browser or a script sends the password itself (a form, or ``Authorization:
Basic``), so it is checked the way a SCRAM server could check it without storing
anything new: SaltedPassword = PBKDF2-HMAC-SHA256(password, salt, iterations),
ClientKey = HMAC(SaltedPassword, "Client Key"), and H(ClientKey) must equal the
StoredKey (compared in constant time).  Failures are throttled by the server's
:class:`~ftpserver.auth.LoginThrottle`, as native logins are.

A login by the form gets a random token, kept only in this process's memory
with an expiry, and sent back as a cookie.  Basic credentials checked once are
remembered for a few minutes (as a keyed hash, never the password), so a script
or a download manager opening many connections pays the slow hash once.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..auth import ITERATIONS, StoredKeys, hash_password
from ..errors import AuthFailed

if TYPE_CHECKING:
    from ..server import FTPServer

__all__ = ["COOKIE", "SESSION_TTL", "check_password", "parse_basic", "cookie_value",
           "login_cookie", "same_origin", "safe_next", "Logins"]

log = logging.getLogger(__name__)

#: Name of the login cookie.
COOKIE = "lanftp_session"
#: Seconds a form login lasts.
SESSION_TTL = 12 * 3600.0
#: Seconds checked Basic credentials are remembered.
BASIC_TTL = 300.0
#: Most logins (and remembered Basic credentials) held at once: bounded memory.
MAX_LOGINS = 10_000
MAX_BASIC = 1024
#: A path on this site: one slash (not two, nor a backslash after it), printable ASCII.
_LOCAL_PATH = re.compile(r"/(?![/\\])[\x21-\x7e]{0,2000}")


def check_password(keys: StoredKeys | None, password: str, decoy_salt: bytes) -> bool:
    """Whether ``password`` is the one ``keys`` were made from.

    ``keys`` None (an unknown user) costs the same slow hash, with ``decoy_salt``,
    and fails, so timing does not tell which user names exist.
    """
    if keys is None:
        hash_password(password, ITERATIONS, decoy_salt)
        return False
    candidate = hash_password(password, keys.iterations, keys.salt)
    return hmac.compare_digest(candidate.stored_key, keys.stored_key)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic`` value; None if it is not one.

    Raises AuthFailed for a Basic value that cannot be decoded.
    """
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthFailed("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise AuthFailed("malformed Basic credentials")
    return user, password


def cookie_value(header: str | None, name: str = COOKIE) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def login_cookie(token: str | None, secure: bool) -> str:
    """The ``Set-Cookie`` value that carries a login token (None: the one that ends it)."""
    age = int(SESSION_TTL) if token else 0
    return (f"{COOKIE}={token or ''}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict"
            + ("; Secure" if secure else ""))


def same_origin(origin: str | None, host: str | None, fetch_site: str | None) -> bool:
    """Whether a request comes from this site's own pages or from no page at all.

    A browser names the page's site in ``Origin`` (on every POST) and says
    ``Sec-Fetch-Site: cross-site`` for another site's; other clients send neither.
    """
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc.lower() == (host or "").lower()
    return (fetch_site or "").lower() != "cross-site"


def safe_next(value: str) -> str:
    """``value`` if it is a path on this site to go to after logging in, else ``/``."""
    return value if _LOCAL_PATH.fullmatch(value) else "/"


class Logins:
    """Who is logged in to the web side of ``server``: tokens and remembered credentials."""

    def __init__(self, server: FTPServer) -> None:
        self._server = server
        self._secret = os.urandom(32)
        self._tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._basic: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, user: str, password: str, address: str) -> bool:
        """Check a password, throttled per client address as native logins are."""
        throttle = self._server.throttle
        time.sleep(throttle.delay(address))
        account = self._server.accounts.get(user)
        if check_password(account.keys if account else None, password, self._secret[:16]):
            throttle.succeeded(address)
            return True
        throttle.failed(address)
        log.warning("%s: failed web login as %r", address, user)
        return False

    def basic(self, user: str, password: str, address: str) -> str:
        """Return ``user`` if the Basic credentials are right.  Raises AuthFailed."""
        key = hmac.digest(self._secret, f"{user}\0{password}".encode("utf-8", "surrogatepass"),
                          "sha256")
        now = time.monotonic()
        with self._lock:
            known = self._basic.get(key)
            if known and known[1] > now and known[0] in self._server.accounts:
                return known[0]
        if not self.check(user, password, address):
            raise AuthFailed(f"login failed for user {user!r}")
        with self._lock:
            self._basic[key] = (user, now + BASIC_TTL)
            while len(self._basic) > MAX_BASIC:
                self._basic.popitem(last=False)
        return user

    def open(self, user: str) -> str:
        """Start a form login of ``user``; return its token (the cookie's value)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (user, time.monotonic() + SESSION_TTL)
            while len(self._tokens) > MAX_LOGINS:
                self._tokens.popitem(last=False)
        return token

    def user_of(self, token: str | None) -> str | None:
        """The user a token belongs to, or None (unknown, expired, or the account is gone)."""
        if not token:
            return None
        with self._lock:
            found = self._tokens.get(token)
            if found is None:
                return None
            if found[1] <= time.monotonic() or found[0] not in self._server.accounts:
                del self._tokens[token]
                return None
            return found[0]

    def close(self, token: str | None) -> None:
        """End a form login (log out)."""
        if token:
            with self._lock:
                self._tokens.pop(token, None)
