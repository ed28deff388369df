"""What a request does, whatever door it came in by.

A :class:`Session` is one client's view of the server: its root, current folder,
read-only flag and usage ledger.  Its methods resolve paths for the session,
keep the quota ledger in step with every change, and hand out :class:`Upload`,
the life of one put (claim, quota, partial, commit).  They take and return plain
values and files, no sockets: a front door (the native protocol's handler) only
translates its wire into these calls and their errors back into replies.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from .digest import Checkpoint
from .errors import AuthFailed, Exists, Forbidden, NotADirectory, NotFound, QuotaExceeded
from .quota import Ledger
from .storage import Entry, Storage
from .uploads import Claims, PartialUpload, refuse_if_claimed

__all__ = ["Session", "Upload"]


@dataclass
class Session:
    """One client's session: who, where, and what it may do."""

    storage: Storage | None
    user: str | None = None
    cwd: str = "/"
    readonly: bool = False
    ledger: Ledger | None = None
    #: Most bytes of one unfinished upload this session may hold (None: no limit but the quota).
    partial_limit: int | None = None
    claims: Claims = field(default_factory=Claims)

    def files(self) -> Storage:
        """The session's storage.  Raises AuthFailed if it has none (no anonymous access)."""
        if self.storage is None:
            raise AuthFailed("this server has no anonymous access: log in with -u USER")
        return self.storage

    def writable(self) -> Storage:
        """The session's storage, if it may change it.  Raises Forbidden for read-only accounts."""
        storage = self.files()
        if self.readonly:
            raise Forbidden("this account is read-only")
        return storage

    def path(self, path: str) -> str:
        """``path`` as an absolute virtual path of this session."""
        return self.files().virtual(self.cwd, path)

    # -- reading ------------------------------------------------------------------

    def ls(self, path: str) -> tuple[str, list[Entry]]:
        vpath = self.path(path)
        return vpath, self.files().listdir(vpath)

    def stat(self, path: str) -> tuple[str, Entry]:
        vpath = self.path(path)
        return vpath, self.files().stat(vpath)

    def open_read(self, path: str) -> tuple[str, BinaryIO]:
        vpath = self.path(path)
        return vpath, self.files().open_read(vpath)

    def cd(self, path: str) -> str:
        vpath = self.path(path)
        if self.files().stat(vpath).type != "dir":
            raise NotADirectory(f"{vpath} is not a folder")
        self.cwd = vpath
        return vpath

    # -- changing -----------------------------------------------------------------

    def mkdir(self, path: str) -> str:
        storage = self.writable()
        vpath = storage.virtual(self.cwd, path)
        if self.ledger:
            self.ledger.reserve(0, folders=1)
        try:
            storage.mkdir(vpath)
        except BaseException:
            if self.ledger:
                self.ledger.add(0, folders=-1)
            raise
        return vpath

    def rm(self, path: str) -> str:
        storage = self.writable()
        vpath = storage.virtual(self.cwd, path)
        freed, folders = storage.remove(vpath, refuse_if_claimed)
        if self.ledger:
            self.ledger.add(-freed, -folders)
        return vpath

    def mv(self, path: str, to: str) -> tuple[str, str]:
        storage = self.writable()
        source, target = storage.virtual(self.cwd, path), storage.virtual(self.cwd, to)
        storage.rename(source, target)
        return source, target

    def ensure_folder(self, path: str) -> str:
        """Create folder ``path`` unless it is one already (its parent must exist)."""
        vpath = self.path(path)
        try:
            self.mkdir(vpath)
        except Exists:
            if self.files().stat(vpath).type != "dir":
                raise
        return vpath

    def resume_offset(self, path: str, size: int, source: str) -> int:
        """Where a put of ``path`` (``size`` bytes, the client's ``source`` tag) would resume."""
        return self.planned_put(path, size, source)[2]

    def planned_put(self, path: str, size: int, source: str) -> tuple[str, Entry | None, int]:
        """For a put of ``path`` planned ahead: its virtual path, what is there now (None
        if nothing) and where a put of ``size`` bytes from ``source`` would resume."""
        storage = self.writable()
        with PartialUpload(storage.upload_place(storage.virtual(self.cwd, path))) as partial:
            info = partial.place.lstat()
            there = Entry.from_stat(partial.name, info) if info is not None else None
            return partial.place.vpath, there, partial.resumable_offset(size, source)

    def upload(self, path: str, size: int, source: str | None = None, restart: bool = False,
               connection: socket.socket | None = None, record_now: bool = False) -> Upload:
        """Start a put of ``size`` bytes to ``path`` (use it as a context manager).

        ``source`` (the client's tag of its file) makes it resumable; ``record_now``
        records it from the first byte, whatever its size (:meth:`PartialUpload.prepare`).
        Raises Busy if another writer holds the name, QuotaExceeded if it does not
        fit, and the path errors of :meth:`Storage.upload_place`.
        """
        storage = self.writable()
        vpath = storage.virtual(self.cwd, path)
        if self.partial_limit is not None and size > self.partial_limit:
            raise QuotaExceeded(f"quota exceeded: this server takes uploads of at most "
                                f"{self.partial_limit} bytes per session")
        return Upload(self, vpath, size, source, restart, connection, record_now)


class Upload:
    """One put: its partial claimed, its size counted against the quota from the start,
    then committed under its name or left to resume (or discarded)."""

    def __init__(self, session: Session, vpath: str, size: int, source: str | None,
                 restart: bool, connection: socket.socket | None, record_now: bool) -> None:
        self.session, self.vpath, self.size = session, vpath, size
        self.ledger = session.ledger
        storage = session.files()
        self.partial = PartialUpload(storage.upload_place(vpath))
        self._folder = self.partial.place.folder_identity()
        self._credit = 0
        self._counted = False
        self._done = False
        try:
            session.claims.claim(self.partial, source, connection)
            if self.ledger:
                self._credit = self.partial.replaced()
                self.ledger.reserve(size - self.partial.held(), self._credit)
                self._counted = True
            self.offset, self.checkpoint = self.partial.prepare(size, source, restart, record_now)
        except BaseException:
            self.close()
            raise

    def file(self) -> BinaryIO:
        """The partial, to append the body to (at :attr:`offset`)."""
        return self.partial.file()

    def save_checkpoint(self, reached: Checkpoint | None) -> None:
        """Keep the hash state of the bytes held, for a resume."""
        self.partial.save_checkpoint(reached)

    def keep_from(self, offset: int) -> None:
        """Resume from ``offset`` instead (at most :attr:`offset`): the bytes after it go."""
        assert offset <= self.offset
        if offset < self.offset:
            os.ftruncate(self.partial.fd, offset)
            self.offset = offset
            if self.checkpoint and self.checkpoint.offset > offset:
                self.checkpoint = None

    def set_mtime(self, mtime_ns: int | None) -> None:
        """Give the file the modification time of the sender's copy (None: keep now)."""
        if mtime_ns is not None:
            os.utime(self.partial.fd, ns=(time.time_ns(), mtime_ns))

    def folder_key(self) -> tuple[str, tuple[int, int]]:
        """Its folder's path and identity when the upload began."""
        return self.vpath.rpartition("/")[0] or "/", self._folder

    def folder_unmoved(self) -> bool:
        """Whether its folder is still where it was when the upload began."""
        parent, identity = self.folder_key()
        return self.session.files().same_folder(parent, identity)

    def commit(self, sync: bool = True, folder_checked: bool = False) -> os.stat_result:
        """Put the complete, verified partial under its name; return that file's stat.

        With ``sync``, the file is flushed to disk first (its new name reaches the
        disk with the file system's next journal commit; a power cut before that
        leaves the complete partial, which a rerun commits without resending);
        without, the caller has flushed it and flushes the folder after, as a group
        commit does (:mod:`ftpserver.commits`, which also checks each folder once:
        ``folder_checked``).
        Raises NotFound if its folder was moved or removed meanwhile (the partial
        stays, resumable at the folder's new place), QuotaExceeded if the file it
        was to replace went elsewhere and the account would end over its quota.
        """
        if not folder_checked and not self.folder_unmoved():
            raise NotFound(f"the folder {self.folder_key()[0]} was moved or removed during the "
                           f"upload of {self.vpath}; nothing was put there")
        replaced = self.partial.replaced()
        if self.ledger:
            self.ledger.check_commit(replaced, self._credit)
        info = self.partial.commit(sync)
        self._done = True
        if self.ledger:
            self.ledger.add(-replaced)
        return info

    def discard(self) -> None:
        """Remove the partial: the received bytes are of no use."""
        self.partial.discard()
        self._done = True
        if self._counted and self.ledger:
            self.ledger.add(-self.size)

    def close(self) -> None:
        """Release the claim; an unfinished partial stays, counted at its real size."""
        if self._counted and not self._done and self.ledger:
            self.ledger.add(self.partial.held() - self.size)
        self._counted = False
        self.partial.close()
        self.session.claims.release(self.partial)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
