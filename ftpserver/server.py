"""The server: a threaded TCP server holding the configuration and the shared state.

In the shape of the tutorial's MYTCPServer and the standard library's
socketserver: tunables are class attributes, each connection gets an
:class:`~ftpserver.handler.FTPHandler` in its own thread.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import ssl
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .auth import LoginThrottle, StoredKeys, parse_stored
from .config import Config, User
from .errors import Busy, ConfigError
from .handler import FTPHandler
from .protocol import encode_frame, error_reply
from .quota import StateFolder
from .session import Session
from .storage import Storage
from .transfer import FileHasher
from .uploads import Claims, sweep_partials

__all__ = ["FTPServer", "DigestCache", "Account", "Admitting", "TLSAccepting"]

log = logging.getLogger(__name__)


class DigestCache:
    """Hashes of files recently sent or received, keyed by the hash's name and the
    file's device, inode, size, and modification and change times.

    The change time (ctime) moves on every write and cannot be set back, so a file
    rewritten in place with its mtime restored is not mistaken for the old one.
    Keys come from the file itself (``fstat`` of the descriptor that was hashed),
    never from a name that another request may have pointed elsewhere meanwhile.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[object, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(info: os.stat_result, name: str) -> tuple[object, ...]:
        return name, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns

    def get(self, info: os.stat_result, name: str = "md5") -> str | None:
        """Return the remembered hash ``name`` of the file ``info`` describes, or None."""
        with self._lock:
            return self._entries.get(self._key(info, name))

    def put(self, info: os.stat_result, digest: str, name: str = "md5") -> str:
        """Remember ``digest`` as the hash ``name`` of the file ``info`` describes; return it."""
        key = self._key(info, name)
        with self._lock:
            self._entries[key] = digest
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return digest

    def put_unchanged(self, file: BinaryIO, before: os.stat_result, digest: str,
                      name: str = "md5") -> str:
        """Remember ``digest`` of an open file hashed since ``before`` was taken, only if
        the file did not change meanwhile; return it."""
        if self._key(os.fstat(file.fileno()), name) == self._key(before, name):
            self.put(before, digest, name)
        return digest


@dataclass(frozen=True)
class Account:
    """A user as the server needs it: settings, password keys, storage."""

    user: User
    keys: StoredKeys
    storage: Storage


def _parse_keys(user: User) -> StoredKeys:
    try:
        return parse_stored(user.password)
    except ConfigError as error:
        raise ConfigError(f"users.{user.name}.{error}") from None


def _tls_context(config: Config) -> ssl.SSLContext:
    assert config.tls is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls.cert, config.tls.key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"tls: cannot load {config.tls.cert} / {config.tls.key}: "
                          f"{getattr(error, 'strerror', None) or error}") from None
    return context


class TLSAccepting:
    """For a socketserver server with a ``tls`` context (or None): every accepted
    connection is wrapped in TLS, its handshake left to the connection's own thread."""

    tls: ssl.SSLContext | None

    def get_request(self) -> tuple[socket.socket, tuple]:
        """Hook: wrap the connection in TLS when configured."""
        request, address = super().get_request()  # type: ignore[misc]
        if self.tls:
            request = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        return request, address


class Admitting:
    """For a threading socketserver server: each connection is counted by :attr:`gate`
    (the native server, whose ``max_connections`` and ``max_per_address`` every front
    door shares); one over a limit is refused by :meth:`_refuse` from its own thread (a
    TLS handshake with a silent peer must not hold up the accept loop), the others are
    served each in its own thread and uncounted when it ends or cannot start."""

    gate: FTPServer
    #: What a connection is called in the log.
    kind = "connection"

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        """Hook: count, then refuse or serve."""
        host = client_address[0]
        refusal = self.gate.admit(host)
        if refusal:
            try:
                threading.Thread(target=self._refuse, args=(request, refusal), daemon=True).start()
            except RuntimeError:
                self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except Exception as error:  # no thread to be had (memory or thread limits)
            self.gate.release(host)
            log.warning("%s: %s dropped, cannot start its thread: %s", host, self.kind, error)
            self.shutdown_request(request)  # type: ignore[attr-defined]

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self.gate.release(client_address[0])

    def _refuse(self, request: socket.socket, message: str) -> None:
        """Tell a refused connection ``message`` in the server's own tongue, and close it."""
        raise NotImplementedError


class FTPServer(Admitting, TLSAccepting, socketserver.ThreadingTCPServer):
    """Serve the storage roots that ``config`` names."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    #: fsync each upload before it takes its final name, so a crash never leaves it short.
    sync_uploads = True
    #: Seconds between sweeps for abandoned partial uploads (at most).
    sweep_interval = 3600.0
    #: The port of the web side beside this server, once it listens (None: none).
    http_port: int | None = None

    def __init__(self, config: Config, handler: type[FTPHandler] = FTPHandler,
                 bind_and_activate: bool = True) -> None:
        self.config = config
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        roots = [config.root, *(user.root for user in config.users.values())]

        def storage(root: Path) -> Storage:
            # Another account's root nested inside this one stays out of this one's reach.
            return Storage(root, tuple(r for r in roots if r != root and r.is_relative_to(root)))

        self.accounts = {name: Account(user, _parse_keys(user), storage(user.root))
                         for name, user in config.users.items()}
        self.anonymous_storage = storage(config.root) if config.anonymous else None
        quotas = {name: (account.user.quota, account.storage) for name, account in self.accounts.items()
                  if account.user.quota is not None}
        anonymous_quota = getattr(config, "anonymous_quota", None)
        if self.anonymous_storage and anonymous_quota is not None:
            quotas[None] = (anonymous_quota, self.anonymous_storage)
        # The state folder exists only where there is state to keep: quota ledgers.
        self.state = StateFolder(Storage(config.root).root) if quotas else None
        self._ledgers = {name: self.state.ledger(name or "@anonymous", quota, storage)
                         for name, (quota, storage) in quotas.items()} if self.state else {}
        self.login_secret = os.urandom(32)
        self.throttle = LoginThrottle()
        self.digests = DigestCache()
        self.claims = Claims()
        #: Connections being served, by client address.
        self._active: Counter[str] = Counter()
        self._active_lock = threading.Lock()
        self._stopping = threading.Event()
        self.tls = _tls_context(config) if config.tls else None
        super().__init__((config.host, config.port), handler, bind_and_activate)

    # -- connections ----------------------------------------------------------

    @property
    def gate(self) -> FTPServer:
        """Who counts this server's connections: itself (see :class:`Admitting`)."""
        return self

    def admit(self, host: str) -> str | None:
        """Count a new connection from ``host``; return why it is refused instead, or None."""
        with self._active_lock:
            if self._active.total() >= self.config.max_connections:
                return "busy: too many connections, try again later"
            if self._active[host] >= self.config.max_per_address:
                return "busy: too many connections from your address"
            self._active[host] += 1
        return None

    def release(self, host: str) -> None:
        """Uncount a connection that :meth:`admit` counted (served, or never started)."""
        with self._active_lock:
            self._active[host] -= 1
            if not self._active[host]:
                del self._active[host]

    def _refuse(self, request: socket.socket, message: str) -> None:
        request.settimeout(5)
        with contextlib.suppress(OSError):
            request.sendall(encode_frame(error_reply(Busy(message))))
        self.shutdown_request(request)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until :meth:`shutdown`, sweeping abandoned partial uploads meanwhile."""
        sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        sweeper.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            self._stopping.set()

    def server_close(self) -> None:
        super().server_close()
        if self.state:
            self.state.close()
        for account in self.accounts.values():
            account.storage.close()
        if self.anonymous_storage:
            self.anonymous_storage.close()

    # -- shared state for handlers --------------------------------------------

    def anonymous_session(self) -> Session:
        """A new session before any login."""
        return self._session(None, self.anonymous_storage, readonly=False)

    def user_session(self, name: str) -> Session:
        """A new session of user ``name`` (who has just logged in)."""
        account = self.accounts[name]
        return self._session(name, account.storage, account.user.readonly)

    def _session(self, user: str | None, storage: Storage | None, readonly: bool) -> Session:
        return Session(storage, user, readonly=readonly, ledger=self._ledgers.get(user),
                       partial_limit=getattr(self.config, "session_partial_limit", None),
                       claims=self.claims)

    def file_digest(self, file: BinaryIO, name: str = "md5") -> str:
        """Return the hash ``name`` of an open file, from the cache when it has not changed."""
        before = os.fstat(file.fileno())
        digest = self.digests.get(before, name)
        if digest is None:
            digest = FileHasher(file, before.st_size, hash=name).result()
            self.digests.put_unchanged(file, before, digest, name)
        return digest

    def sweep(self) -> int:
        """Remove abandoned partial uploads under every root, and the records of
        abandoned tus uploads if the web side took any; return how many partials went."""
        roots = [self.anonymous_storage] if self.anonymous_storage else []
        roots += [account.storage for account in self.accounts.values()]
        removed = sum(sweep_partials(storage, self.config.partial_ttl) for storage in roots)
        if self.http_port is not None:
            from .web.tus import uploads_of  # only a server with a web side has tus records

            uploads_of(self).sweep(force=True)
        return removed

    def _sweep_loop(self) -> None:
        interval = min(self.sweep_interval, max(self.config.partial_ttl / 10, 1.0))
        while True:
            try:
                self.sweep()
            except OSError as error:
                log.warning("sweeping partial uploads failed: %s", error)
            if self._stopping.wait(interval):
                return
