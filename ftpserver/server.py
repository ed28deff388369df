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
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .auth import LoginThrottle, StoredKeys, parse_stored
from .config import Config, User
from .digest import version_tag
from .errors import Busy, ConfigError
from .handler import FTPHandler
from .protocol import encode_frame, error_reply
from .storage import Storage
from .transfer import FileHasher
from .uploads import size_of, sweep_partials

__all__ = ["FTPServer", "DigestCache", "Account"]

log = logging.getLogger(__name__)


class DigestCache:
    """Hashes of files recently sent or received, keyed by the hash's name and the
    file's device, inode, size, and modification and change times.

    The change time (ctime) moves on every write and cannot be set back, so a file
    rewritten in place with its mtime restored is not mistaken for the old one.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[object, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(file: BinaryIO | Path, name: str) -> tuple[object, ...]:
        st = os.stat(file) if isinstance(file, Path) else os.fstat(file.fileno())
        return name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def get(self, file: BinaryIO, name: str = "md5") -> str | None:
        """Return the remembered hash ``name`` of an open file, or None."""
        with self._lock:
            return self._entries.get(self._key(file, name))

    def put(self, file: BinaryIO | Path, digest: str, name: str = "md5") -> str:
        """Remember the hash ``name`` of an open file (or a path) and return it."""
        key = self._key(file, name)
        with self._lock:
            self._entries[key] = digest
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return digest


@dataclass
class _Claim:
    """A partial upload being written: by whom, and the bytes its quota check reserved."""

    source: str | None
    connection: socket.socket | None
    reserved: int = 0


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


class FTPServer(socketserver.ThreadingTCPServer):
    """Serve the storage roots that ``config`` names."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    #: fsync each upload before it takes its final name, so a crash never leaves it short.
    sync_uploads = True
    #: Seconds between sweeps for abandoned partial uploads (at most).
    sweep_interval = 3600.0

    def __init__(self, config: Config, handler: type[FTPHandler] = FTPHandler,
                 bind_and_activate: bool = True) -> None:
        self.config = config
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        roots = [config.root, *(user.root for user in config.users.values())]

        def storage(root: Path) -> Storage:
            # Another account's root nested inside this one stays out of this one's reach.
            return Storage(root, tuple(r for r in roots if r != root and r.is_relative_to(root)))

        self.anonymous_storage = storage(config.root) if config.anonymous else None
        self.accounts = {name: Account(user, _parse_keys(user), storage(user.root))
                         for name, user in config.users.items()}
        self.login_secret = os.urandom(32)
        self.throttle = LoginThrottle()
        self.digests = DigestCache()
        self._claims: dict[Path, _Claim] = {}
        self._claims_lock = threading.Lock()
        self._claims_changed = threading.Condition(self._claims_lock)
        self._quota_lock = threading.Lock()
        self._connections = threading.BoundedSemaphore(config.max_connections)
        self._stopping = threading.Event()
        self.tls = _tls_context(config) if config.tls else None
        super().__init__((config.host, config.port), handler, bind_and_activate)

    # -- connections ----------------------------------------------------------

    def get_request(self) -> tuple[socket.socket, tuple]:  # type: ignore[override]
        """Hook: wrap the connection in TLS when configured (the handshake runs in its thread)."""
        request, address = super().get_request()
        if self.tls:
            request = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        return request, address

    def process_request(self, request: socket.socket, client_address: tuple) -> None:  # type: ignore[override]
        """Hook: refuse a connection over ``max_connections`` with ``busy``."""
        if not self._connections.acquire(blocking=False):
            # Answered from its own thread: a TLS handshake with a silent peer must not
            # hold up the accept loop.
            threading.Thread(target=self._refuse, args=(request,), daemon=True).start()
            return
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket) -> None:
        request.settimeout(5)
        with contextlib.suppress(OSError):
            request.sendall(encode_frame(error_reply(Busy("busy: too many connections, try again later"))))
        self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until :meth:`shutdown`, sweeping abandoned partial uploads meanwhile."""
        sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        sweeper.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            self._stopping.set()

    # -- shared state for handlers --------------------------------------------

    @contextlib.contextmanager
    def claim(self, partial: Path, name: str, source: str | None = None,
              connection: socket.socket | None = None) -> Iterator[None]:
        """Hold ``partial`` for one writer.

        A writer resuming the same source (the same client file) takes over from a
        holder whose connection is dead but not yet noticed, e.g. right after a
        Ctrl-C; anyone else gets Busy.
        """
        with self._claims_changed:
            holder = self._claims.get(partial)
            if holder is not None and source is not None and holder.source == source:
                if holder.connection is not None:
                    with contextlib.suppress(OSError):
                        holder.connection.shutdown(socket.SHUT_RDWR)
                self._claims_changed.wait_for(lambda: partial not in self._claims, timeout=10)
            if partial in self._claims:
                raise Busy(f"busy: {name} is being uploaded by another client")
            self._claims[partial] = _Claim(source, connection)
        try:
            yield
        finally:
            with self._claims_changed:
                del self._claims[partial]
                self._claims_changed.notify_all()

    def reserve(self, partial: Path, size: int, root: Path, check: Callable[[int], None]) -> None:
        """Reserve ``size`` bytes for a claimed upload once ``check`` accepts.

        ``check(pending)`` gets the bytes other uploads under ``root`` have reserved
        but not yet written, and raises to refuse; checks run one at a time, so two
        uploads cannot both fit a quota that holds only one.
        """
        with self._quota_lock:
            with self._claims_lock:
                others = [(p, c.reserved) for p, c in self._claims.items()
                          if p != partial and p.is_relative_to(root)]
            check(sum(max(n - size_of(p), 0) for p, n in others))
            with self._claims_lock:
                self._claims[partial].reserved = size

    @staticmethod
    def identify(file: BinaryIO) -> tuple[int, str]:
        """Return an open file's size and a tag that changes whenever the file does."""
        st = os.fstat(file.fileno())
        return st.st_size, version_tag(st)

    def file_digest(self, path: Path, name: str = "md5") -> str:
        """Return the hash ``name`` of a file, from the cache when it has not changed."""
        with open(path, "rb") as file:
            digest = self.digests.get(file, name)
            if digest is None:
                size = os.fstat(file.fileno()).st_size
                digest = self.digests.put(file, FileHasher(file, size, hash=name).result(), name)
        return digest

    def sweep(self) -> int:
        """Remove abandoned partial uploads under every root; return how many."""
        roots = [self.anonymous_storage] if self.anonymous_storage else []
        roots += [account.storage for account in self.accounts.values()]
        with self._claims_lock:
            in_use = set(self._claims)
        return sum(sweep_partials(storage.iter_partials(), self.config.partial_ttl, in_use)
                   for storage in roots)

    def _sweep_loop(self) -> None:
        interval = min(self.sweep_interval, max(self.config.partial_ttl / 10, 1.0))
        while True:
            try:
                self.sweep()
            except OSError as error:
                log.warning("sweeping partial uploads failed: %s", error)
            if self._stopping.wait(interval):
                return
