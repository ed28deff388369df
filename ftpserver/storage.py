"""Confinement: the one place where a client path becomes a real path.

A client names things by virtual paths: ``/``-separated, absolute from the
session's root (``/``) or relative to its current folder.  :class:`Storage`
normalises them (:meth:`Storage.virtual`), maps them below its real root while
resolving symlinks (:meth:`Storage.real`) and refuses anything that would leave
the root, never clamping it.  Handlers hand only the results to ``os``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat as st
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .protocol import META_SUFFIX, PARTIAL_SUFFIX
from .errors import (Exists, Forbidden, FTPError, IsADirectory, NotADirectory,
                     NotEmpty, NotFound, PathError, ProtocolError)

__all__ = ["PARTIAL_SUFFIX", "META_SUFFIX", "MAX_NAME_BYTES", "MAX_PATH_BYTES",
           "is_reserved", "Entry", "Storage"]

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

_ERRNO_ERRORS: dict[int, type[FTPError]] = {
    errno.ENOENT: NotFound, errno.EEXIST: Exists, errno.ENOTEMPTY: NotEmpty,
    errno.EISDIR: IsADirectory, errno.ENOTDIR: NotADirectory,
    errno.EACCES: Forbidden, errno.EPERM: Forbidden,
    errno.ENAMETOOLONG: PathError, errno.ELOOP: PathError,
}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def is_reserved(name: str) -> bool:
    """Return True if ``name`` is a partial upload or its metadata, never a client's to name."""
    return name.endswith((PARTIAL_SUFFIX, META_SUFFIX))


@contextlib.contextmanager
def _os_errors(vpath: str) -> Iterator[None]:
    """Turn an OSError with a known errno into the matching FTPError naming ``vpath``."""
    try:
        yield
    except OSError as exc:
        cls = _ERRNO_ERRORS.get(exc.errno or 0)
        if cls is None:
            raise
        raise cls(f"{cls().message}: {vpath}") from exc


def _check_name(name: str) -> None:
    """Raise PathError unless ``name`` is a component a client may use."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name) or "\\" in name:
        raise PathError("control character or backslash in path")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise PathError("path is not valid unicode") from None
    if size > MAX_NAME_BYTES:
        raise PathError(f"name longer than {MAX_NAME_BYTES} bytes")
    if is_reserved(name):
        raise PathError(f"reserved name: {name}")


def _walk(parts: list[str], path: str) -> list[str]:
    """Apply the components of ``path`` to ``parts``; ``..`` above the root raises PathError."""
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if not parts:
                raise PathError(f"path outside the root: {path}")
            parts.pop()
        else:
            _check_name(name)
            parts.append(name)
    return parts


def _split(vpath: str) -> tuple[str, str]:
    """Return (parent, name) of a normalised virtual path other than ``/``."""
    parent, _, name = vpath.rpartition("/")
    return parent or "/", name


@dataclass(frozen=True)
class Entry:
    """One file or folder as a client sees it."""

    name: str
    type: str  # "file" or "dir"
    size: int
    mtime: float

    @classmethod
    def from_stat(cls, name: str, info: os.stat_result) -> Entry | None:
        """Return the entry for ``info``; None for anything but a file or folder."""
        if st.S_ISDIR(info.st_mode):
            return cls(name, "dir", 0, info.st_mtime)
        if st.S_ISREG(info.st_mode):
            return cls(name, "file", info.st_size, info.st_mtime)
        return None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type, "size": self.size, "mtime": self.mtime}


class Storage:
    """A real folder served as the virtual root ``/``."""

    def __init__(self, root: str | Path, excluded: tuple[str | Path, ...] = ()) -> None:
        """Serve ``root``, creating it (and its parents) if missing.

        ``excluded`` folders inside the root (other accounts' roots) are treated
        as outside it: never listed, read or written.
        """
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(os.path.realpath(root))
        self.excluded = tuple(Path(os.path.realpath(path)) for path in excluded)

    # -- paths ---------------------------------------------------------------

    def virtual(self, cwd: str, path: str) -> str:
        """Return ``path`` joined to ``cwd`` as a normalised absolute virtual path.

        Raises ProtocolError if either is not a string, and PathError if the path
        climbs above the root, or holds a control character, a backslash, a
        reserved name, a name over 255 bytes or is over 4096 bytes in all.
        """
        if not isinstance(cwd, str) or not isinstance(path, str):
            raise ProtocolError("path must be a string")
        path = unicodedata.normalize("NFC", path)
        if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
            raise PathError(f"path longer than {MAX_PATH_BYTES} bytes")
        base = [] if path.startswith("/") else _walk([], cwd)
        vpath = "/" + "/".join(_walk(base, path))
        if len(vpath.encode("utf-8")) > MAX_PATH_BYTES:
            raise PathError(f"path longer than {MAX_PATH_BYTES} bytes")
        return vpath

    def real(self, vpath: str) -> Path:
        """Return the real path of ``vpath`` with symlinks resolved; it need not exist.

        Raises PathError if it leads outside the root or onto a reserved name.
        """
        vpath = self.virtual("/", vpath)
        return self._confined(self.root.joinpath(*vpath.split("/")[1:]), vpath)

    def resolve(self, cwd: str, path: str) -> tuple[str, Path]:
        """Return ``(virtual(cwd, path), real(...))``."""
        vpath = self.virtual(cwd, path)
        return vpath, self.real(vpath)

    def _confined(self, path: Path, vpath: str) -> Path:
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(self.root) or any(
                resolved.is_relative_to(folder) for folder in self.excluded):
            raise PathError(f"path outside the root: {vpath}")
        # A link inside the root must not reach a partial upload either.
        if any(is_reserved(name) for name in resolved.relative_to(self.root).parts):
            raise PathError(f"reserved name: {vpath}")
        return resolved

    def _link(self, vpath: str) -> tuple[str, Path]:
        """Return ``vpath`` normalised and its real path without following its last component.

        mkdir, remove and rename act on a link itself, not on its target, but
        still refuse a link that leads outside the root.  Raises PathError for ``/``.
        """
        vpath = self.virtual("/", vpath)
        if vpath == "/":
            raise PathError("the root itself cannot be changed")
        self.real(vpath)
        parent, name = _split(vpath)
        return vpath, self.real(parent) / name

    # -- reading -------------------------------------------------------------

    def stat(self, vpath: str) -> Entry:
        """Return the entry for ``vpath``.

        Raises NotFound if it is missing, Forbidden if it is neither a file nor a folder.
        """
        vpath = self.virtual("/", vpath)
        path = self.real(vpath)
        with _os_errors(vpath):
            entry = Entry.from_stat(_split(vpath)[1] or "/", os.stat(path))
        if entry is None:
            raise Forbidden(f"not a file or folder: {vpath}")
        return entry

    def listdir(self, vpath: str) -> list[Entry]:
        """Return the entries of folder ``vpath`` sorted by name.

        Leaves out reserved names, names a client could not send back, links
        that lead outside the root or nowhere, and special files.
        Raises NotFound or NotADirectory.
        """
        path = self.real(vpath)
        with _os_errors(vpath), os.scandir(path) as it:
            names = sorted(entry.name for entry in it)
        entries = []
        for name in names:
            try:
                _check_name(name)
                entry = Entry.from_stat(name, os.stat(self._confined(path / name, name)))
            except (PathError, OSError):
                continue
            if entry is not None:
                entries.append(entry)
        return entries

    def open_read(self, vpath: str) -> BinaryIO:
        """Return ``vpath`` opened for binary reading.

        Raises NotFound, IsADirectory, or Forbidden for anything but a regular file.
        """
        path = self.real(vpath)
        # O_NONBLOCK: a FIFO must not hang the handler; O_NOFOLLOW: no link swapped in since.
        with _os_errors(vpath):
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if st.S_ISDIR(mode):
                raise IsADirectory(f"is a folder: {vpath}")
            if not st.S_ISREG(mode):
                raise Forbidden(f"not a regular file: {vpath}")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def partial_paths(self, vpath: str) -> tuple[Path, Path]:
        """Return the real paths of the partial upload of ``vpath`` and of its metadata.

        Both lie beside ``real(vpath)`` as ``.NAME.ftp-partial`` and
        ``.NAME.ftp-partial.json``.  Raises PathError for ``/`` or a name too long
        to carry the suffix, NotFound / NotADirectory for a bad parent folder,
        IsADirectory if ``vpath`` is a folder.
        """
        vpath = self.virtual("/", vpath)
        if vpath == "/":
            raise PathError("the root is not a file")
        target = self.real(vpath)
        with _os_errors(_split(vpath)[0]):
            if not st.S_ISDIR(os.stat(target.parent).st_mode):
                raise NotADirectory(f"not a folder: {_split(vpath)[0]}")
        if target.is_dir():
            raise IsADirectory(f"is a folder: {vpath}")
        partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
        meta = target.with_name(f".{target.name}{META_SUFFIX}")
        if len(meta.name.encode("utf-8")) > MAX_NAME_BYTES:
            raise PathError(f"name too long for a partial upload: {vpath}")
        return partial, meta

    # -- changing ------------------------------------------------------------

    def mkdir(self, vpath: str) -> None:
        """Create folder ``vpath``; its parent must exist.  Raises Exists or NotFound."""
        vpath, path = self._link(vpath)
        with _os_errors(vpath):
            os.mkdir(path)

    def remove(self, vpath: str) -> None:
        """Remove a file or an empty folder; partial uploads inside it go with it.

        Raises NotFound, NotEmpty, or PathError for ``/``.
        """
        vpath, path = self._link(vpath)
        with _os_errors(vpath):
            if not st.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)
                return
            with os.scandir(path) as it:
                children = list(it)
            if not all(is_reserved(child.name) for child in children):
                raise NotEmpty(f"{NotEmpty().message}: {vpath}")
            for child in children:
                if not child.is_dir(follow_symlinks=False):
                    os.unlink(child.path)
            os.rmdir(path)

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` inside the root, never over an existing entry.

        Raises NotFound, Exists, Forbidden for a folder into itself, PathError for ``/``.
        """
        src, source = self._link(src)
        dst, target = self._link(dst)
        with _os_errors(src):
            os.lstat(source)
        if any(folder.is_relative_to(os.path.realpath(source)) for folder in self.excluded):
            raise PathError(f"path outside the root: {src} holds another account's folder")
        if os.path.lexists(target):
            raise Exists(f"{Exists().message}: {dst}")
        if target.is_relative_to(source):
            raise Forbidden(f"cannot move a folder into itself: {src}")
        with _os_errors(dst):
            os.rename(source, target)

    # -- whole tree ----------------------------------------------------------

    def _folders(self) -> Iterator[tuple[Path, list[os.DirEntry[str]]]]:
        """Yield every folder under the root with its entries, never following a link."""
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError:  # vanished or unreadable meanwhile
                continue
            yield folder, entries
            stack.extend(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)
                         and Path(e.path) not in self.excluded)

    def usage(self) -> int:
        """Return the bytes held in regular files under the root, partial uploads included."""
        total = 0
        for _, entries in self._folders():
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def iter_partials(self) -> Iterator[tuple[Path, Path]]:
        """Yield every (partial, meta) pair under the root, also when one of the two is missing."""
        for folder, entries in self._folders():
            stems = {e.name[:-len(META_SUFFIX)] if e.name.endswith(META_SUFFIX)
                     else e.name[:-len(PARTIAL_SUFFIX)]
                     for e in entries if is_reserved(e.name)}
            for stem in sorted(stems):
                yield folder / (stem + PARTIAL_SUFFIX), folder / (stem + META_SUFFIX)
