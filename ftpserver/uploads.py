"""Partial uploads on the server: where they live, who writes them, when they resume, when they go.

An upload of NAME is written to ``.NAME.ftp-partial`` beside it; only a complete,
verified partial is renamed to NAME.  Its record, ``.NAME.ftp-partial.json``, keeps
the declared size and the client's ``source`` tag (a string that changes whenever
the client's file does) and, once an upload is cut, the state of the hash of the
bytes held: a later put of the same size and source resumes at the partial's
length without hashing them again; anything else starts from empty.  A large body
is recorded when it starts, so it resumes even after the server stops; a small one
only when it is cut, so a folder of small files costs one new file each.

Both files are opened through their folder's descriptor, never following a link,
and created with ``O_EXCL``: a link, a hard link or a file of a user other than the
server's or the folder's owner planted at either name is removed, never written
through.  The writer holds a lock on the
partial itself (:mod:`ftpserver.locks`), so the claim follows the file (a folder
renamed meanwhile takes its claim along) and holds across every server process on
the root; the record is written and removed only under that lock.
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
#: Bodies of at least this many bytes are recorded when they start (see the module's text).
RECORD_FROM = 1 << 20
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
    """Open the regular file ``name`` that the server owns and alone links to, or
    create it fresh.

    Anything else at the name (a link, a hard link to another file, a file of a
    user other than the server or the folder's owner, a FIFO, a folder) is removed
    first.  Returns None if there is no file and not ``create``.
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
            if st.S_ISREG(info.st_mode) and info.st_nlink == 1 and _owned(info, dir_fd):
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


def _owned(info: os.stat_result, dir_fd: int) -> bool:
    """Whether a file is the server's: its user, or that of the folder (as where an NFS
    server maps the server's own files to another user, root's to nobody)."""
    return info.st_uid == os.geteuid() or info.st_uid == os.fstat(dir_fd).st_uid


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
    """One upload's partial file (and, when it has one, its record) beside its final
    name in a held folder."""

    def __init__(self, place: Place) -> None:
        """Take over ``place`` (the folder and final name of the upload)."""
        self.place = place
        self.dir_fd = place.dir_fd
        self.name = place.name
        self.partial_name = f".{place.name}{PARTIAL_SUFFIX}"
        self.meta_name = f".{place.name}{META_SUFFIX}"
        self.fd = -1
        self.locked = False
        self.ended = False
        #: The claim's key and writer in :class:`Claims`, while this upload has one.
        self.claim: tuple[tuple[int, int], _Writer] | None = None
        self._meta: dict[str, Any] = {}
        self._recorded = False

    # -- the claim --------------------------------------------------------------

    def open_partial(self) -> None:
        """Open (or create, empty) the partial: the lock of the claim."""
        self.close_partial()
        self.fd = _open_own(self.dir_fd, self.partial_name, create=True)  # type: ignore[assignment]

    def lock(self, wait: float = 0.0) -> bool:
        """Lock the partial, waiting at most ``wait`` seconds; False if another writer
        (in any process) holds it."""
        self.locked = try_lock(self.fd) or bool(wait) and wait_lock(self.fd, wait)
        return self.locked

    def still_named(self) -> bool:
        """Whether the locked partial is still the file at its name (not swept or
        committed meanwhile)."""
        current = _lstat(self.dir_fd, self.partial_name)
        return current is not None and _identity(current) == self.identity()

    def identity(self) -> tuple[int, int]:
        """Device and inode of the partial: the claim's key."""
        return _identity(os.fstat(self.fd))

    def recorded_source(self) -> str | None:
        """The ``source`` the current (or last) writer recorded, if it left a record."""
        meta = self._read_record()
        source = meta.get("source") if meta else None
        return source if isinstance(source, str) else None

    def resumable_offset(self, size: int, source: str) -> int:
        """The offset a put of ``size`` bytes from ``source`` would resume from now (unclaimed)."""
        meta = self._read_record()
        if meta is None or meta.get("filesize") != size or meta.get("source") != source:
            return 0
        return min(self.held(), size)

    def close_partial(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1
        self.locked = False

    # -- the record ---------------------------------------------------------------

    def _read_record(self) -> dict[str, Any] | None:
        fd = _open_own(self.dir_fd, self.meta_name, create=False)
        if fd is None:
            return None
        try:
            return _read_json(fd)
        finally:
            os.close(fd)

    def _record(self) -> None:
        """Write the record: size, source and any checkpoint of the bytes held.

        Written in place: a torn write fails to parse, which only means "start from
        zero".  Never truncated to zero first: ext4 then flushes the file on close
        (auto_da_alloc).  Only while the partial at the name is this upload's: a
        record is written under the partial's lock.
        """
        if not self.still_named():
            return
        fd = _open_own(self.dir_fd, self.meta_name, create=True)
        assert fd is not None
        try:
            data = json.dumps(self._meta).encode("utf-8")
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        self._recorded = True

    def _unlink_record(self) -> None:
        _unlink(self.dir_fd, self.meta_name)
        self._recorded = False

    # -- the data -----------------------------------------------------------------

    def held(self) -> int:
        """Bytes in the partial now (0 if there is none or it is not the server's file)."""
        if self.fd >= 0:
            return os.fstat(self.fd).st_size
        info = _lstat(self.dir_fd, self.partial_name)
        return info.st_size if info is not None and st.S_ISREG(info.st_mode) else 0

    def replaced(self) -> int:
        """Bytes of the file the upload will replace (0 if none)."""
        info = _lstat(self.dir_fd, self.name)
        return info.st_size if info is not None and st.S_ISREG(info.st_mode) else 0

    def prepare(self, size: int, source: str | None, restart: bool = False,
                record_now: bool = False) -> tuple[int, Checkpoint | None]:
        """Make the claimed partial ready to receive; return the offset to resume from
        and the hash checkpoint saved for the bytes before it, if any.

        A partial resumes only if its record says it was started for the same
        ``size`` and a non-empty ``source``; otherwise it starts again from empty.
        A body of :data:`RECORD_FROM` bytes or more (any, with ``record_now``) is
        recorded at once, so it resumes even after the server stops and others can
        see its offset meanwhile; a smaller one only once it is cut.
        """
        meta = self._read_record() if source and not restart else None
        if meta is None or meta.get("filesize") != size or meta.get("source") != source:
            if os.fstat(self.fd).st_size:
                os.ftruncate(self.fd, 0)
            self._unlink_record()
            self._meta = {"filesize": size, "source": source, "started": time.time()}
            if source and (record_now or size >= RECORD_FROM):
                self._record()
            return 0, None
        self._meta, self._recorded = meta, True
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

        A partial whose record cannot be written keeps what it had.
        """
        if not reached or not reached.offset or self.fd < 0:
            return
        with contextlib.suppress(OSError):
            self._meta["checkpoint"] = reached.kept_for(self.fd).to_json()
            self._record()

    def commit(self, sync: bool = True) -> os.stat_result:
        """Move the complete partial to the final name in one step, forget its record,
        and return the stat of the file now under the name.

        Raises NotFound if the partial at the name is no longer this upload's file
        (a local user replaced it): nothing is renamed then.
        """
        if sync:
            os.fsync(self.fd)
        if not self.still_named():
            raise NotFound(f"the partial upload of {self.place.vpath} was replaced meanwhile")
        if self._recorded:
            self._unlink_record()  # while the lock still covers the name
        os.replace(self.partial_name, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.ended = True
        return os.fstat(self.fd)

    def discard(self) -> None:
        """Remove the partial and its record, if the partial is still this upload's."""
        if self.fd >= 0 and self.still_named():
            self._unlink_record()
            _unlink(self.dir_fd, self.partial_name)
        self.ended = True

    def close(self) -> None:
        """Release the claim and every descriptor.  A partial left holding bytes keeps
        a record (so a put of the same source resumes it); an empty one goes."""
        if self.locked and not self.ended:
            with contextlib.suppress(OSError):
                if not os.fstat(self.fd).st_size:
                    self.discard()
                elif not self._recorded and self._meta.get("source"):
                    self._record()
        self.close_partial()
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
    """The uploads this process writes, by their partial file, so a put resuming the
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
            upload.open_partial()
            if not (upload.lock() or self._take_over(upload, source)):
                break
            if upload.still_named():
                upload.claim = (upload.identity(), _Writer(source, connection))
                with self._lock:
                    self._writers[upload.claim[0]] = upload.claim[1]
                return
        upload.close_partial()
        raise Busy(f"busy: {upload.place.vpath} is being uploaded by another client")

    def _take_over(self, upload: PartialUpload, source: str | None) -> bool:
        """Wait for the writer of the same ``source`` (this process's: end its connection
        first; another's: known by the record it left) to let go."""
        if source is None:
            return False
        with self._lock:
            holder = self._writers.get(upload.identity())
        if holder is None:
            if upload.recorded_source() != source:
                return False
        elif holder.source != source:
            return False
        elif holder.connection is not None:
            with contextlib.suppress(OSError):
                holder.connection.shutdown(socket.SHUT_RDWR)
        return upload.lock(wait=TAKEOVER_WAIT)

    def release(self, upload: PartialUpload) -> None:
        """Forget ``upload``'s writer, once the upload is closed (which releases the
        lock): until then a put of the same source can tell whom to take over from."""
        if upload.claim is not None:
            key, writer = upload.claim
            with self._lock:
                if self._writers.get(key) is writer:  # not a writer that came since
                    del self._writers[key]
            upload.claim = None


def refuse_if_claimed(dir_fd: int, partial_name: str) -> bool:
    """For :meth:`Storage.remove`: raise Busy if the partial upload ``partial_name``
    is being written; return False otherwise."""
    try:
        fd = os.open(partial_name, _OPEN, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not try_lock(fd):
            raise Busy(f"busy: an upload into this folder is in progress "
                       f"({partial_name[1:-len(PARTIAL_SUFFIX)]})")
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
    """Remove one partial and its record if no writer holds them (checked under the
    partial's lock; a record is only written under it)."""
    partial, meta = names
    try:
        fd = _open_own(dir_fd, partial, create=False)
    except OSError:
        return False
    if fd is None:  # a record left alone (unless a writer has just started it again)
        if _age(dir_fd, (meta,), now) <= ttl:
            return False
        _unlink(dir_fd, meta)
        return True
    try:
        if not try_lock(fd):
            return False  # a writer, here or in another process, holds it
        current = _lstat(dir_fd, partial)
        if current is None or _identity(current) != _identity(os.fstat(fd)):
            return False
        if _age(dir_fd, names, now) <= ttl:
            return False
        _unlink(dir_fd, meta)
        _unlink(dir_fd, partial)
        return True
    finally:
        os.close(fd)
