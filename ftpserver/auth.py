"""Passwords and login: SCRAM-SHA-256 (RFC 5802 with RFC 7677).

The server stores only ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``
(the RFC 5803 form), made by ``ftpserver hash-password``.  A login proves
knowledge of the password with fresh nonces on both sides: the password never
crosses the wire, a captured exchange cannot be replayed, and the client checks
the server's signature so an impostor server is caught.  Both halves live here
(:class:`ScramServer`, :class:`ScramClient`) and use only hashlib and hmac.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass
from typing import Callable

from .errors import AuthFailed, ConfigError, LocalError, ProtocolError

__all__ = ["StoredKeys", "hash_password", "parse_stored", "ScramServer", "ScramClient",
           "LoginThrottle", "ask_password", "hash_password_command", "ITERATIONS"]

ITERATIONS = 200_000
MIN_ITERATIONS = 4096  # RFC 7677
_PREFIX = "SCRAM-SHA-256"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError("bad base64 in login message") from None


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _salted(password: str, salt: bytes, iterations: int) -> bytes:
    # NFKC stands in for SASLprep: the same password typed differently still matches.
    return hashlib.pbkdf2_hmac("sha256", unicodedata.normalize("NFKC", password).encode("utf-8"),
                               salt, iterations)


@dataclass(frozen=True)
class StoredKeys:
    """What the server keeps of a password: nothing it could log in with."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def line(self) -> str:
        """Return the ``password:`` value for config.yaml."""
        return (f"{_PREFIX}${self.iterations}:{_b64(self.salt)}"
                f"${_b64(self.stored_key)}:{_b64(self.server_key)}")


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> StoredKeys:
    """Derive the stored keys for ``password`` with a fresh random salt."""
    salt = salt or os.urandom(16)
    salted = _salted(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return StoredKeys(salt, iterations, hashlib.sha256(client_key).digest(),
                      _hmac(salted, b"Server Key"))


def parse_stored(line: str) -> StoredKeys:
    """Parse a ``password:`` value.  Raises ConfigError if it is not one."""
    try:
        prefix, params, keys = line.split("$")
        iterations, salt = params.split(":")
        stored_key, server_key = keys.split(":")
        parsed = StoredKeys(base64.b64decode(salt, validate=True), int(iterations),
                            base64.b64decode(stored_key, validate=True),
                            base64.b64decode(server_key, validate=True))
    except ValueError:
        raise ConfigError("password: not a line printed by 'ftpserver hash-password'") from None
    if prefix != _PREFIX or parsed.iterations < MIN_ITERATIONS or len(parsed.stored_key) != 32 \
            or len(parsed.server_key) != 32:
        raise ConfigError("password: not a line printed by 'ftpserver hash-password'")
    return parsed


def _attributes(message: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ProtocolError("malformed login message")
        fields.setdefault(key, value)
    return fields


class ScramServer:
    """The server's half of one login.

    ``keys_for(user)`` returns the user's :class:`StoredKeys`, or None for an
    unknown user; an unknown user still gets a plausible challenge, so a login
    attempt cannot tell which user names exist.
    """

    def __init__(self, keys_for: Callable[[str], StoredKeys | None], secret: bytes) -> None:
        self._keys_for = keys_for
        self._secret = secret
        self._keys: StoredKeys | None = None
        self.user: str | None = None
        self._auth_message = ""
        self._nonce = ""

    def first(self, client_first: str) -> str:
        """Take ``n,,n=USER,r=CNONCE``; return ``r=NONCE,s=SALT,i=ITERATIONS``."""
        if not client_first.startswith("n,,"):
            raise ProtocolError("login must start with 'n,,' (no channel binding)")
        bare = client_first[3:]
        fields = _attributes(bare)
        user, client_nonce = fields.get("n"), fields.get("r")
        if not user or not client_nonce or len(client_nonce) > 256:
            raise ProtocolError("login message needs n= and r=")
        self.user = user.replace("=2C", ",").replace("=3D", "=")
        self._keys = self._keys_for(self.user)
        salt = self._keys.salt if self._keys else _hmac(self._secret, self.user.encode())[:16]
        iterations = self._keys.iterations if self._keys else ITERATIONS
        self._nonce = client_nonce + secrets.token_urlsafe(18)
        server_first = f"r={self._nonce},s={_b64(salt)},i={iterations}"
        self._auth_message = f"{bare},{server_first},"
        return server_first

    def final(self, client_final: str) -> str:
        """Check ``c=biws,r=NONCE,p=PROOF``; return ``v=SIGNATURE``.  Raises AuthFailed."""
        without_proof, sep, proof_part = client_final.rpartition(",")
        fields = _attributes(client_final)
        if not sep or not proof_part.startswith("p=") or fields.get("r") != self._nonce \
                or fields.get("c") != "biws" or not self._nonce:
            raise AuthFailed("login failed")
        auth_message = (self._auth_message + without_proof).encode("utf-8")
        proof = _unb64(fields["p"])
        keys = self._keys
        self._nonce = ""  # one proof per challenge: no replay
        if keys is None or len(proof) != 32:
            raise AuthFailed("login failed")
        client_key = bytes(a ^ b for a, b in zip(proof, _hmac(keys.stored_key, auth_message)))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), keys.stored_key):
            raise AuthFailed("login failed")
        return "v=" + _b64(_hmac(keys.server_key, auth_message))


class ScramClient:
    """The client's half of one login."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self._password = user, password
        self._nonce = secrets.token_urlsafe(18)
        self._bare = "n={},r={}".format(user.replace("=", "=3D").replace(",", "=2C"), self._nonce)
        self._server_signature = b""

    def first(self) -> str:
        """Return the client-first message."""
        return "n,," + self._bare

    def final(self, server_first: str) -> str:
        """Answer the server's challenge with a proof.  Raises AuthFailed for a bad challenge."""
        fields = _attributes(server_first)
        nonce, salt, iterations = fields.get("r", ""), fields.get("s", ""), fields.get("i", "")
        if not nonce.startswith(self._nonce) or nonce == self._nonce or not iterations.isdigit() \
                or not MIN_ITERATIONS <= int(iterations) <= 10_000_000:
            raise AuthFailed("the server sent a bad login challenge")
        salted = _salted(self._password, _unb64(salt), int(iterations))
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._bare},{server_first},{without_proof}".encode("utf-8")
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return f"{without_proof},p={_b64(proof)}"

    def verify(self, server_final: str) -> None:
        """Check the server's signature.  Raises AuthFailed if the server is not genuine."""
        fields = _attributes(server_final)
        if not self._server_signature or not hmac.compare_digest(
                _unb64(fields.get("v", "")), self._server_signature):
            raise AuthFailed("the server could not prove it knows the password (impostor?)")


def ask_password(prompt: str) -> str:
    """Read a password from the terminal without echo.

    Raises LocalError when there is no terminal to ask on (use FTP_PASSWORD then).
    """
    import getpass

    try:
        open("/dev/tty").close()  # getpass would fall back to echoing stdin
        return getpass.getpass(prompt)
    except (OSError, EOFError):
        raise LocalError("no password: set FTP_PASSWORD or run from a terminal") from None


def hash_password_command() -> int:
    """``ftpserver hash-password``: print the stored form of a password."""
    password = os.environ.get("FTP_PASSWORD")
    if password is None:
        password = ask_password("Password: ")
        if ask_password("Again: ") != password:
            print("ftpserver: the passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("ftpserver: the password is empty", file=sys.stderr)
        return 1
    print(hash_password(password).line())
    return 0


class LoginThrottle:
    """Slow down guessing: each failed login from an address doubles its wait, up to ``cap``."""

    def __init__(self, base: float = 0.2, cap: float = 5.0, forget_after: float = 900.0) -> None:
        self.base, self.cap, self.forget_after = base, cap, forget_after
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def delay(self, address: str) -> float:
        """Seconds the next login attempt from ``address`` should wait."""
        with self._lock:
            count, last = self._failures.get(address, (0, 0.0))
            if not count or time.monotonic() - last > self.forget_after:
                return 0.0
            return min(self.base * 2 ** (count - 1), self.cap)

    def failed(self, address: str) -> None:
        """Record a failed login."""
        with self._lock:
            count, _ = self._failures.get(address, (0, 0.0))
            if len(self._failures) > 10_000:  # bounded memory under a flood of addresses
                self._failures.clear()
            self._failures[address] = (count + 1, time.monotonic())

    def succeeded(self, address: str) -> None:
        """Forget the failures of an address that logged in."""
        with self._lock:
            self._failures.pop(address, None)
