"""A folder as a zip, streamed: written as it is read, through a writer that cannot seek.

:mod:`zipfile` writes to an unseekable stream with a data descriptor after each
member, and switches to ZIP64 for members and archives past 4 GiB, so memory
stays at one read buffer whatever the folder holds.  Members are stored, not
compressed: most large files (photos, video, archives) do not shrink, and
storing keeps a download at disk speed.  The folder is walked with
:meth:`Session.ls` and its files opened with :meth:`Session.open_read`, so the
zip holds exactly what the session may read.
"""
from __future__ import annotations

import logging
import os
import time
import zipfile
from typing import Callable, Iterator

from ..errors import FTPError
from ..session import Session
from ..storage import Entry

__all__ = ["ChunkedWriter", "walk", "write_zip", "BLOCK"]

log = logging.getLogger(__name__)

#: Bytes read from a file at a time.
BLOCK = 256 * 1024
#: Folders deeper than this are left out (a bound on a tree of links, besides the loop check).
MAX_DEPTH = 64
_EARLIEST = time.mktime((1980, 1, 1, 0, 0, 0, 0, 0, -1))


class ChunkedWriter:
    """A file-like writer that sends what it is given as HTTP/1.1 chunks through ``send``,
    collecting small writes up to ``size`` bytes first."""

    def __init__(self, send: Callable[[bytes], object], size: int = 64 * 1024) -> None:
        self._send, self._size = send, size
        self._pending: list[bytes] = []
        self._held = 0

    def write(self, data: bytes) -> int:
        if self._held + len(data) > self._size:
            self.flush()
        if len(data) >= self._size:
            self._chunk([data])
        elif data:
            self._pending.append(bytes(data))
            self._held += len(data)
        return len(data)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending, self._held = self._pending, [], 0
            self._chunk(pending)

    def _chunk(self, parts: list[bytes]) -> None:
        length = sum(len(part) for part in parts)
        if length < self._size:
            self._send(b"%x\r\n%b\r\n" % (length, b"".join(parts)))
            return
        self._send(b"%x\r\n" % length)
        for part in parts:  # a big block goes as it is, not copied into a new buffer
            self._send(part)
        self._send(b"\r\n")

    def close(self) -> None:
        """Send what is held and the last chunk: the body is complete."""
        self.flush()
        self._send(b"0\r\n\r\n")


def walk(session: Session, vpath: str) -> Iterator[tuple[str, str, Entry]]:
    """Yield ``(name in the zip, virtual path, entry)`` for everything under folder ``vpath``,
    each folder before its contents; a folder reached again (through a link) is left out."""
    seen = {_identity(session, vpath)}
    stack: list[tuple[str, str, int]] = [(vpath, "", 0)]
    while stack:
        folder, prefix, depth = stack.pop()
        try:
            _, entries = session.ls(folder)
        except FTPError as error:  # moved or removed meanwhile
            log.info("zip of %s: left out %s: %s", vpath, folder, error)
            continue
        below = []
        for entry in entries:
            path, name = folder.rstrip("/") + "/" + entry.name, prefix + entry.name
            if entry.type == "dir":
                identity = _identity(session, path)
                if identity is None or identity in seen or depth >= MAX_DEPTH:
                    continue
                seen.add(identity)
                below.append((path, name + "/", depth + 1))
                name += "/"
            yield name, path, entry
        stack.extend(reversed(below))


def _identity(session: Session, vpath: str) -> tuple[int, int] | None:
    """Device and inode of folder ``vpath`` (None if it is gone)."""
    try:
        fd = session.files().open_folder(vpath)
    except (FTPError, OSError):
        return None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return info.st_dev, info.st_ino


def _date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    return time.localtime(max(mtime, _EARLIEST))[:6]


def write_zip(session: Session, vpath: str, out: object) -> int:
    """Write folder ``vpath`` of ``session`` as a zip to ``out`` (anything with ``write``
    and ``flush``); return the number of files in it.

    A file that vanishes or cannot be read meanwhile is left out (and logged); one that
    changes size while it is read goes in with the bytes it had when opened (at most).
    """
    files = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[arg-type]
        for name, path, entry in walk(session, vpath):
            if entry.type == "dir":
                info = zipfile.ZipInfo(name, _date_time(entry.mtime))
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
                continue
            try:
                _, file = session.open_read(path)
            except FTPError as error:
                log.info("zip of %s: left out %s: %s", vpath, path, error)
                continue
            with file:
                size = os.fstat(file.fileno()).st_size
                info = zipfile.ZipInfo(name, _date_time(entry.mtime))
                info.external_attr = 0o100644 << 16
                info.file_size = size
                with archive.open(info, "w") as member:
                    left = size
                    while left > 0:
                        block = file.read(min(BLOCK, left))
                        if not block:
                            break
                        member.write(block)
                        left -= len(block)
            files += 1
    return files
