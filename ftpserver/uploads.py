"""Partial uploads on the server: where they live, who writes them, when they resume, when they go.

An upload of NAME is written to ``.NAME.ftp-partial`` beside it, with
``.NAME.ftp-partial.json`` recording the declared size and the client's
``source`` tag (a string that changes whenever the client's file does), and,
once an upload is cut, the state of the hash of the bytes held.  A later put of
the same size and source resumes at the partial's length without hashing them
again; anything else starts from a freshly created partial.  Only a complete,
verified partial is renamed to NAME.

Both files are opened through their folder's descriptor, never following a
link, and a partial is created with ``O_EXCL``: a link or a hard link planted at
either name is removed, never written through.  The writer holds a lock on the
metadata file (:mod:`ftpserver.locks`), so the claim follows the file itself
(a folder renamed meanwhile takes its claim along) and holds across every server
process on the root.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat as st
import threading
import time
from dataclasses import dataclass
from typing import Any

from .digest import Checkpoint
from .errors import Busy, NotFound
from .locks import try_lock, wait_lock
from .protocol import META_SUFFIX, PARTIAL_SUFFIX
from .storage import Place, Storage

__all__ = ["PartialUpload", "Claims", "sweep_partials", "refuse_if_claimed"]

log = logging.getLogger(__name__)

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: Open an existing partial or metadata file: never through a link, never hang on a FIFO.
_OPEN = os.O_RDWR | _NOFOLLOW | _NONBLOCK | _CLOEXEC
#: Create one: fresh, never an existing file or link.
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
#: Seconds a put resuming the same source waits for an interrupted writer to let go.
TAKEOVER_WAIT = 10.0


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_own(dir_fd: int, name: str, create: bool) -> int | None:
    """Open the regular file ``name`` that only the server links to, or create it fresh.

    Anything else at the name (a link, a hard link to another file, a FIFO, a
    folder) is removed first.  Returns None if there is no file and not ``create``.
    """
    for _ in range(3):  # another writer may create the name between our two opens
        try:
            fd = os.open(name, _OPEN, dir_fd=dir_fd)
        except FileNotFoundError:
            fd = None
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise
            fd = None
            _unlink(dir_fd, name)
        if fd is not None:
            info = os.fstat(fd)
            if st.S_ISREG(info.st_mode) and info.st_nlink == 1:
                return fd
            os.close(fd)
            _unlink(dir_fd, name)
        if not create:
            return None
        try:
            return os.open(name, _CREATE, 0o666, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise Busy(f"busy: {name} keeps changing")


def _unlink(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except IsADirectoryError:
            os.rmdir(name, dir_fd=dir_fd)


def _read_json(fd: int) -> dict[str, Any] | None:
    try:
        meta = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


class PartialUpload:
    """One upload's partial file and metadata beside its final name in a held folder."""

    def __init__(self, place: Place) -> None:
        """Take over ``place`` (the folder and final name of the upload)."""
        self.place = place
        self.dir_fd = place.dir_fd
        self.name = place.name
        self.partial_name = f".{place.name}{PARTIAL_SUFFIX}"
        self.meta_name = f".{place.name}{META_SUFFIX}"
        self.meta_fd = -1
        self.locked = False
        self.fd = -1
        self._meta: dict[str, Any] = {}

    # -- the claim --------------------------------------------------------------

    def open_meta(self) -> None:
        """Open (or create) the metadata file, the lock of the claim."""
        self.close_meta()
        self.meta_fd = _open_own(self.dir_fd, self.meta_name, create=True)  # type: ignore[assignment]

    def lock(self, wait: float = 0.0) -> bool:
        """Lock the metadata file, waiting at most ``wait`` seconds; False if another
        writer (in any process) holds it."""
        self.locked = try_lock(self.meta_fd) or bool(wait) and wait_lock(self.meta_fd, wait)
        return self.locked

    def still_named(self) -> bool:
        """Whether the locked metadata file is still the one at its name (not swept meanwhile)."""
        current = _lstat(self.dir_fd, self.meta_name)
        return current is not None and _identity(current) == self.identity()

    def identity(self) -> tuple[int, int]:
        """Device and inode of the metadata file: the claim's key."""
        return _identity(os.fstat(self.meta_fd))

    def recorded_source(self) -> str | None:
        """The ``source`` the current (or last) writer recorded."""
        meta = _read_json(self.meta_fd)
        source = meta.get("source") if meta else None
        return source if isinstance(source, str) else None

    def resumable_offset(self, size: int, source: str) -> int:
        """The offset a put of ``size`` bytes from ``source`` would resume from now (unclaimed)."""
        fd = _open_own(self.dir_fd, self.meta_name, create=False)
        if fd is None:
            return 0
        try:
            meta = _read_json(fd)
        finally:
            os.close(fd)
        if meta is None or meta.get("filesize") != size or meta.get("source") != source:
            return 0
        return min(self.held(), size)

    def close_meta(self) -> None:
        if self.meta_fd >= 0:
            os.close(self.meta_fd)  # releases the lock
            self.meta_fd = -1
        self.locked = False

    # -- the data -----------------------------------------------------------------

    def held(self) -> int:
        """Bytes in the partial now (0 if there is none or it is not the server's file)."""
        info = _lstat(self.dir_fd, self.partial_name)
        return info.st_size if info is not None and st.S_ISREG(info.st_mode) else 0

    def replaced(self) -> int:
        """Bytes of the file the upload will replace (0 if none)."""
        info = _lstat(self.dir_fd, self.name)
        return info.st_size if info is not None and st.S_ISREG(info.st_mode) else 0

    def prepare(self, size: int, source: str | None,
                restart: bool = False) -> tuple[int, Checkpoint | None]:
        """Make the partial ready to receive (the claim held); return the offset to resume
        from and the hash checkpoint saved for the bytes before it, if any.

        A partial resumes only if it was started for the same ``size`` and a
        non-empty ``source``; otherwise a new, empty one is created.
        """
        meta = _read_json(self.meta_fd) if source and not restart else None
        resume = meta is not None and meta.get("filesize") == size and meta.get("source") == source
        fd = _open_own(self.dir_fd, self.partial_name, create=False) if resume else None
        if fd is None:
            resume = False
            _unlink(self.dir_fd, self.partial_name)
            self.fd = os.open(self.partial_name, _CREATE, 0o666, dir_fd=self.dir_fd)
            self._meta = {"filesize": size, "source": source, "started": time.time()}
            self._write_meta()
            return 0, None
        assert meta is not None
        self.fd, self._meta = fd, meta
        length = os.fstat(self.fd).st_size
        held = min(length, size)
        checkpoint = Checkpoint.from_json(meta.get("checkpoint"))
        if checkpoint and not checkpoint.holds(self.fd, held):
            checkpoint = None
        if length > held:
            os.ftruncate(self.fd, held)
        return held, checkpoint

    def file(self) -> Any:
        """The partial as an unbuffered binary file (sharing the upload's descriptor)."""
        return open(self.fd, "r+b", buffering=0, closefd=False)

    def save_checkpoint(self, reached: Checkpoint | None) -> None:
        """Keep the hash state of the bytes held, once no more are written (the partial
        must stay as it is now for the state to be used).

        A partial whose metadata cannot be written keeps what it had.
        """
        if not reached or not reached.offset or self.fd < 0:
            return
        with contextlib.suppress(OSError):
            self._meta["checkpoint"] = reached.kept_for(self.fd).to_json()
            self._write_meta()

    def _write_meta(self) -> None:
        # Written in place: a torn write fails to parse, which only means "start from zero".
        # Never truncated to zero first: ext4 then flushes the file on close (auto_da_alloc).
        data = json.dumps(self._meta).encode("utf-8")
        os.pwrite(self.meta_fd, data, 0)
        os.ftruncate(self.meta_fd, len(data))

    def commit(self, sync: bool = True) -> os.stat_result:
        """Move the complete partial to the final name in one step, forget its metadata,
        and return the stat of the file now under the name.

        Raises NotFound if the partial at the name is no longer this upload's file
        (a local user replaced it): nothing is renamed then.
        """
        if sync:
            os.fsync(self.fd)
        mine = os.fstat(self.fd)
        current = _lstat(self.dir_fd, self.partial_name)
        if current is None or _identity(current) != _identity(mine):
            raise NotFound(f"the partial upload of {self.place.vpath} was replaced meanwhile")
        os.replace(self.partial_name, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self._unlink_meta()
        return os.fstat(self.fd)

    def discard(self) -> None:
        """Remove the partial (if it is this upload's) and its metadata."""
        if self.fd >= 0:
            current = _lstat(self.dir_fd, self.partial_name)
            if current is not None and _identity(current) == _identity(os.fstat(self.fd)):
                _unlink(self.dir_fd, self.partial_name)
        self._unlink_meta()

    def _unlink_meta(self) -> None:
        if self.meta_fd >= 0:
            current = _lstat(self.dir_fd, self.meta_name)
            if current is not None and _identity(current) == self.identity():
                _unlink(self.dir_fd, self.meta_name)

    def close(self) -> None:
        """Release the claim and every descriptor; a metadata file that records nothing
        (the upload never started) goes too."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.locked and os.fstat(self.meta_fd).st_size == 0:
            self._unlink_meta()
        self.close_meta()
        self.place.close()

    def __enter__(self) -> PartialUpload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class _Writer:
    source: str | None
    connection: socket.socket | None


class Claims:
    """The uploads this process writes, by their metadata file, so a put resuming the
    same client file can end a writer whose client is gone (as after a Ctrl-C) instead
    of waiting for the server to notice."""

    def __init__(self) -> None:
        self._writers: dict[tuple[int, int], _Writer] = {}
        self._lock = threading.Lock()

    def claim(self, upload: PartialUpload, source: str | None,
              connection: socket.socket | None) -> None:
        """Make ``upload`` this writer's, or raise Busy.

        Another writer of the same name holds it until it ends, in any process; a
        writer resuming the same ``source`` takes over from it.
        """
        for _ in range(3):  # the file may be swept between open and lock: open it again
            upload.open_meta()
            if not (upload.lock() or self._take_over(upload, source)):
                break
            if upload.still_named():
                with self._lock:
                    self._writers[upload.identity()] = _Writer(source, connection)
                return
        upload.close_meta()
        raise Busy(f"busy: {upload.place.vpath} is being uploaded by another client")

    def _take_over(self, upload: PartialUpload, source: str | None) -> bool:
        if source is None or upload.recorded_source() != source:
            return False
        with self._lock:
            holder = self._writers.get(upload.identity())
        if holder is not None and holder.connection is not None:
            with contextlib.suppress(OSError):
                holder.connection.shutdown(socket.SHUT_RDWR)
        return upload.lock(wait=TAKEOVER_WAIT)

    def release(self, upload: PartialUpload) -> None:
        """Forget ``upload``'s writer; closing the upload then releases the lock."""
        if upload.meta_fd >= 0:
            with self._lock:
                self._writers.pop(upload.identity(), None)


def refuse_if_claimed(dir_fd: int, meta_name: str) -> bool:
    """For :meth:`Storage.remove`: raise Busy if the partial upload whose metadata is
    ``meta_name`` is being written; return False otherwise."""
    try:
        fd = os.open(meta_name, _OPEN, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not try_lock(fd):
            raise Busy(f"busy: an upload into this folder is in progress ({meta_name[1:-len(META_SUFFIX)]})")
    finally:
        os.close(fd)
    return False


def _age(dir_fd: int, names: tuple[str, ...], now: float) -> float:
    times = [info.st_mtime for name in names if (info := _lstat(dir_fd, name)) is not None]
    return now - max(times) if times else float("inf")


def sweep_partials(storage: Storage, ttl: float) -> int:
    """Remove partial uploads under ``storage``'s root untouched for ``ttl`` seconds and
    claimed by no writer in any process.  Returns how many were removed."""
    now = time.time()
    removed = 0
    for dir_fd, _, files in storage.walk():
        stems = {name[:-len(META_SUFFIX)] if name.endswith(META_SUFFIX) else name[:-len(PARTIAL_SUFFIX)]
                 for name in files if name.endswith((PARTIAL_SUFFIX, META_SUFFIX))}
        for stem in sorted(stems):
            names = (stem + PARTIAL_SUFFIX, stem + META_SUFFIX)
            if _age(dir_fd, names, now) > ttl and _sweep_one(dir_fd, names, ttl, now):
                removed += 1
                log.info("removed abandoned partial upload %s", ascii(stem))
    return removed


def _sweep_one(dir_fd: int, names: tuple[str, str], ttl: float, now: float) -> bool:
    """Remove one partial and its metadata if no writer holds them (checked under its lock)."""
    partial, meta = names
    try:
        fd = _open_own(dir_fd, meta, create=True)
    except OSError:
        return False
    assert fd is not None
    try:
        if not try_lock(fd):
            return False  # a writer, here or in another process, holds it
        current = _lstat(dir_fd, meta)
        if current is None or _identity(current) != _identity(os.fstat(fd)):
            return False
        if _age(dir_fd, (partial,), now) <= ttl and _lstat(dir_fd, partial) is not None:
            return False
        _unlink(dir_fd, partial)
        _unlink(dir_fd, meta)
        return True
    finally:
        os.close(fd)
