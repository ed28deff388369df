"""Quotas that hold across server processes and cost O(1) per request.

Each account with a quota has a usage ledger: one small file in the server's
state folder holding the bytes of its files and partial uploads and the number
of its folders.  Every change (a put claimed, cut or committed, rm, mkdir) updates
it under the file's lock, so several server processes on one root keep one count
and no request walks a tree.  An upload in flight counts with its whole declared
size from the moment it is claimed, so two puts cannot both fit a quota that
holds one.  A folder counts :data:`FOLDER_COST` bytes.

The count is made again from the files on disk by the first server process that
starts on a root (:meth:`Ledger.recount`), which also absorbs what local users
changed and what a killed server had reserved.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from .errors import QuotaExceeded
from .locks import lock, try_lock
from .storage import STATE_FOLDER, Storage

__all__ = ["FOLDER_COST", "Ledger", "StateFolder"]

#: Bytes a folder costs against a quota: about what a directory takes on disk.
FOLDER_COST = 4096

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB"


class Ledger:
    """The usage of one account's root against its quota, kept in ``path``."""

    def __init__(self, path: Path, quota: int, storage: Storage) -> None:
        self.path, self.quota, self.storage = path, quota, storage

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        """The ledger's counts, read and written back under its lock."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
        try:
            lock(fd)
            try:
                counts = json.loads(os.pread(fd, 4096, 0) or b"null")
            except ValueError:
                counts = None
            if not isinstance(counts, dict):
                counts = dict(zip(("bytes", "folders"), self.storage.count()))
            before = dict(counts)
            yield counts
            if counts != before:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(counts).encode(), 0)
        finally:
            os.close(fd)  # releases the lock

    def used(self) -> int:
        """Bytes held, folders at their cost included."""
        with self._locked() as counts:
            return _used(counts)

    def reserve(self, need: int, credit: int = 0, folders: int = 0) -> None:
        """Count ``need`` more bytes and ``folders`` more folders if, with ``credit``
        bytes freed (the file a put replaces), they fit the quota.

        Raises QuotaExceeded (nothing counted) otherwise.
        """
        with self._locked() as counts:
            after = _used(counts) + need + folders * FOLDER_COST - credit
            if (need > 0 or folders > 0) and after > self.quota:
                what = "the folder" if folders and not need else "the file"
                raise QuotaExceeded(f"quota exceeded: {_mib(_used(counts))} of {_mib(self.quota)} "
                                    f"used, {what} needs {_mib(need + folders * FOLDER_COST)}")
            counts["bytes"] += need
            counts["folders"] += folders

    def add(self, delta: int, folders: int = 0) -> None:
        """Count ``delta`` bytes (negative: freed) and ``folders`` folders, whatever the quota."""
        if delta or folders:
            with self._locked() as counts:
                counts["bytes"] = max(counts["bytes"] + delta, 0)
                counts["folders"] = max(counts["folders"] + folders, 0)

    def check_commit(self, replaced: int, credit: int) -> None:
        """Check that a put may replace ``replaced`` bytes, ``credit`` of which its
        reservation counted on.  Raises QuotaExceeded if less is freed than counted on
        and the account would end over its quota, as when the file it replaces was
        moved away meanwhile."""
        if replaced < credit:
            with self._locked() as counts:
                if _used(counts) - replaced > self.quota:
                    raise QuotaExceeded(f"quota exceeded: the file it was to replace was moved "
                                        f"meanwhile, {_mib(_used(counts) - replaced)} of "
                                        f"{_mib(self.quota)} would be used")

    def recount(self) -> None:
        """Count the files and folders on disk again."""
        with self._locked() as counts:
            counts["bytes"], counts["folders"] = self.storage.count()


def _used(counts: dict[str, int]) -> int:
    return counts["bytes"] + counts["folders"] * FOLDER_COST


class StateFolder:
    """The server's own folder, ``.ftp-state`` at the top of the anonymous root: the
    usage ledgers, and a lock every running server process holds shared."""

    def __init__(self, root: Path) -> None:
        self.path = root / STATE_FOLDER
        self.path.mkdir(exist_ok=True)
        self._fd = os.open(self.path / "servers.lock", os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o600)
        #: Whether this is the only server process on the root (then it may recount).
        self.alone = try_lock(self._fd)
        lock(self._fd, exclusive=False)  # held until close, shared with the others

    def ledger(self, account: str, quota: int, storage: Storage) -> Ledger:
        """The ledger of ``account`` (``@anonymous`` for the anonymous root), recounted
        when this process is the only one serving."""
        ledger = Ledger(self.path / f"usage-{account}.json", quota, storage)
        if self.alone:
            ledger.recount()
        return ledger

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
