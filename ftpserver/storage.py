"""Confinement: the one place where a client path becomes a real file.

A client names things by virtual paths: ``/``-separated, absolute from the
session's root (``/``) or relative to its current folder.  :class:`Storage`
normalises them (:meth:`Storage.virtual`) and resolves them component by
component from a descriptor of its root, never letting the kernel follow a link
by name: each folder is opened relative to the one before with
``O_NOFOLLOW | O_DIRECTORY``, a link is read (``readlinkat``) and its target
resolved against the folders already held, and every action (open, stat, mkdir,
unlink, rename) names its target relative to a held folder.  A folder swapped
for a link by a local user, between two requests or in the middle of one, can
therefore never lead outside the root; anything that would is refused, never
clamped.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import stat as st
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .protocol import META_SUFFIX, PARTIAL_SUFFIX
from .errors import (Exists, Forbidden, FTPError, IsADirectory, NotADirectory,
                     NotEmpty, NotFound, PathError, ProtocolError)

__all__ = ["PARTIAL_SUFFIX", "META_SUFFIX", "STATE_FOLDER", "MAX_NAME_BYTES", "MAX_PATH_BYTES",
           "is_reserved", "Entry", "Place", "Storage"]

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
#: Links followed while resolving one path, as the kernel's own limit.
MAX_LINKS = 40
#: The server's own folder at the top of the anonymous root (usage ledgers, locks).
STATE_FOLDER = ".ftp-state"

_ERRNO_ERRORS: dict[int, type[FTPError]] = {
    errno.ENOENT: NotFound, errno.EEXIST: Exists, errno.ENOTEMPTY: NotEmpty,
    errno.EISDIR: IsADirectory, errno.ENOTDIR: NotADirectory,
    errno.EACCES: Forbidden, errno.EPERM: Forbidden,
    errno.ENAMETOOLONG: PathError, errno.ELOOP: PathError,
}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: Opening a folder found in a held folder: a link swapped in meanwhile fails (ELOOP/ENOTDIR).
_FOLDER_FLAGS = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
_RESERVED_SUFFIXES = (PARTIAL_SUFFIX, META_SUFFIX)
#: Control characters (C0, DEL, C1) and the backslash: never in a name.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
#: Seconds the identities of other accounts' roots are trusted before they are looked up again.
_EXCLUDED_TTL = 2.0


def is_reserved(name: str) -> bool:
    """Return True if ``name`` is the server's own (a partial upload, its metadata, the state
    folder): never a client's to name.  Case does not matter, for case-insensitive file systems."""
    folded = name.casefold()
    return folded.endswith(_RESERVED_SUFFIXES) or folded == STATE_FOLDER


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
    if _FORBIDDEN.search(name):
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


@functools.lru_cache(maxsize=1024)  # a request resolves its path several times
def _virtual(cwd: str, path: str) -> str:
    """:meth:`Storage.virtual` of two strings."""
    path = unicodedata.normalize("NFC", path)
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise PathError(f"path longer than {MAX_PATH_BYTES} bytes")
    base = [] if path.startswith("/") else _walk([], cwd)
    vpath = "/" + "/".join(_walk(base, path))
    if len(vpath.encode("utf-8")) > MAX_PATH_BYTES:
        raise PathError(f"path longer than {MAX_PATH_BYTES} bytes")
    return vpath


def _split(vpath: str) -> tuple[str, str]:
    """Return (parent, name) of a normalised virtual path other than ``/``."""
    parent, _, name = vpath.rpartition("/")
    return parent or "/", name


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


@dataclass(frozen=True)
class Entry:
    """One file or folder as a client sees it."""

    name: str
    type: str  # "file" or "dir"
    size: int
    mtime: float
    #: The same time in whole nanoseconds, exact, for comparing copies.
    mtime_ns: int = field(default=0, compare=False)

    @classmethod
    def from_stat(cls, name: str, info: os.stat_result) -> Entry | None:
        """Return the entry for ``info``; None for anything but a file or folder."""
        if st.S_ISDIR(info.st_mode):
            return cls(name, "dir", 0, info.st_mtime, info.st_mtime_ns)
        if st.S_ISREG(info.st_mode):
            return cls(name, "file", info.st_size, info.st_mtime, info.st_mtime_ns)
        return None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type, "size": self.size, "mtime": self.mtime,
                "mtime_ns": self.mtime_ns}


class Place:
    """A name inside an open folder of the root: where an action lands.

    Owns ``dir_fd`` (close it, or use the place as a context manager).  ``name``
    is the name on disk, which may differ from the client's in Unicode form;
    ``"."`` stands for the folder itself (the root, or a link's target folder).
    """

    def __init__(self, dir_fd: int, name: str, vpath: str) -> None:
        self.dir_fd, self.name, self.vpath = dir_fd, name, vpath

    def lstat(self) -> os.stat_result | None:
        """The entry at the name itself (a link is not followed), or None if there is none."""
        try:
            return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def folder_identity(self) -> tuple[int, int]:
        """Device and inode of the folder holding the name."""
        return _identity(os.fstat(self.dir_fd))

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's renameat2 (Linux), which can refuse to replace an existing name; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAME_NOREPLACE = 1


def _rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Rename without ever replacing ``dst`` (atomically where the kernel and the file
    system can).  Raises OSError: EEXIST if ``dst`` exists, EINVAL for a folder into itself."""
    function = _renameat2()
    if function is not None:
        if function(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: no such flag here, or into itself
            raise OSError(code, os.strerror(code))
    if _exists(dst_dir, dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
    os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class Storage:
    """A real folder served as the virtual root ``/``."""

    def __init__(self, root: str | Path, excluded: tuple[str | Path, ...] = ()) -> None:
        """Serve ``root``, creating it (and its parents) if missing.

        ``excluded`` folders inside the root (other accounts' roots) are treated
        as absent: never listed, read or written.
        """
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(os.path.realpath(root))
        self.excluded = tuple(Path(os.path.realpath(path)) for path in excluded)
        self._excluded_ids: frozenset[tuple[int, int]] = frozenset()
        self._excluded_at = float("-inf")
        #: The root folder, opened once and held: every path is resolved from it.
        self._root: int | None = os.open(self.root, _FOLDER_FLAGS & ~_NOFOLLOW)

    def _root_fd(self) -> int:
        if self._root is None:
            raise OSError(errno.EBADF, "the storage is closed")
        return self._root

    def close(self) -> None:
        """Let go of the root folder."""
        if self._root is not None:
            os.close(self._root)
            self._root = None

    def __del__(self) -> None:
        if getattr(self, "_root", None) is not None:
            self.close()

    # -- paths ---------------------------------------------------------------

    def virtual(self, cwd: str, path: str) -> str:
        """Return ``path`` joined to ``cwd`` as a normalised absolute virtual path.

        Raises ProtocolError if either is not a string, and PathError if the path
        climbs above the root, or holds a control character, a backslash, a
        reserved name, a name over 255 bytes or is over 4096 bytes in all.
        """
        if not isinstance(cwd, str) or not isinstance(path, str):
            raise ProtocolError("path must be a string")
        return _virtual(cwd, path)

    def real(self, vpath: str) -> Path:
        """Return the real path ``vpath`` names now, for messages and tests (actions go
        through :meth:`place`, never through this path).  Raises like :meth:`place`."""
        vpath = self.virtual("/", vpath)
        try:
            with self.place(vpath) as place:
                folder = _fd_path(place.dir_fd)
                if folder is not None:
                    return folder if place.name == "." else folder / place.name
        except (NotFound, NotADirectory):
            pass
        return self.root.joinpath(*vpath.split("/")[1:])

    def resolve(self, cwd: str, path: str) -> tuple[str, Path]:
        """Return ``(virtual(cwd, path), real(...))``."""
        vpath = self.virtual(cwd, path)
        return vpath, self.real(vpath)

    def place(self, vpath: str, follow: bool = True) -> Place:
        """Resolve ``vpath`` to its folder, held open, and the name in it (which need not exist).

        With ``follow``, a link at the last component is followed too (its target
        must lie in the root); without, the place is the link itself.  Raises
        PathError for a path that leads outside the root or onto a reserved name,
        NotFound / NotADirectory for a missing or non-folder parent, NotFound for
        another account's root.
        """
        vpath = self.virtual("/", vpath)
        names = [name for name in vpath.split("/") if name]
        with _os_errors(vpath):
            return self._resolve(names, vpath, follow)

    def _resolve(self, names: list[str], vpath: str, follow: bool) -> Place:
        stack = [os.dup(self._root_fd())]
        todo = names[::-1]
        links = 0
        try:
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(stack) == 1:
                        raise PathError(f"path outside the root: {vpath}")
                    os.close(stack.pop())
                    continue
                if is_reserved(name):  # also where a link leads
                    raise PathError(f"reserved name: {vpath}")
                last = not todo
                if not last:  # most often a plain folder: open it at once
                    try:
                        stack.append(os.open(name, _FOLDER_FLAGS, dir_fd=stack[-1]))
                    except OSError:
                        pass  # a link, a file, a missing or decomposed name: looked at below
                    else:
                        self._check_folder(stack[-1], vpath)
                        continue
                name, info = self._lookup(stack[-1], name)
                if info is not None and st.S_ISLNK(info.st_mode) and (follow or not last):
                    links += 1
                    if links > MAX_LINKS:
                        raise PathError(f"too many links: {vpath}")
                    target = os.readlink(name, dir_fd=stack[-1])
                    if target.startswith("/"):
                        todo.extend(reversed(self._inside(target, vpath)))
                        while len(stack) > 1:
                            os.close(stack.pop())
                    else:
                        todo.extend(reversed(target.split("/")))
                    continue
                if last:
                    if info is not None and st.S_ISDIR(info.st_mode):
                        self._check_not_excluded(info, vpath)
                    return Place(stack.pop(), name, vpath)
                if info is None:
                    raise NotFound(f"{NotFound().message}: {vpath}")
                if not st.S_ISDIR(info.st_mode):
                    raise NotADirectory(f"{NotADirectory().message}: {vpath}")
                stack.append(os.open(name, _FOLDER_FLAGS, dir_fd=stack[-1]))
                self._check_folder(stack[-1], vpath)
            return Place(stack.pop(), ".", vpath)
        finally:
            for fd in stack:
                os.close(fd)

    @staticmethod
    def _lookup(dir_fd: int, name: str) -> tuple[str, os.stat_result | None]:
        """The name on disk for ``name`` in a folder, and its lstat (None if missing).

        Requests are in Unicode NFC; a name stored decomposed (NFD, as macOS
        writes them) is found under its composed form too.
        """
        try:
            return name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            if name.isascii():
                return name, None
        decomposed = unicodedata.normalize("NFD", name)
        if decomposed != name:
            with contextlib.suppress(OSError):  # missing, or too long once decomposed
                return decomposed, os.stat(decomposed, dir_fd=dir_fd, follow_symlinks=False)
        return name, None

    def _inside(self, target: str, vpath: str) -> list[str]:
        """The components of an absolute link target below the root.  Raises PathError."""
        root = str(self.root)
        if target != root and not target.startswith(root.rstrip("/") + "/"):
            raise PathError(f"path outside the root: {vpath}")
        return target[len(root):].split("/")

    def _check_folder(self, fd: int, vpath: str) -> None:
        """:meth:`_check_not_excluded` for an open folder."""
        if self.excluded:
            self._check_not_excluded(os.fstat(fd), vpath)

    def _check_not_excluded(self, info: os.stat_result, vpath: str) -> None:
        """Another account's root is not there for this one (NotFound, as for a missing name)."""
        if self.excluded and _identity(info) in self._excluded_identities():
            raise NotFound(f"{NotFound().message}: {vpath}")

    def _excluded_identities(self) -> frozenset[tuple[int, int]]:
        now = time.monotonic()
        if now - self._excluded_at > _EXCLUDED_TTL:
            found = set()
            for folder in self.excluded:
                with contextlib.suppress(OSError):
                    found.add(_identity(os.stat(folder)))
            self._excluded_ids, self._excluded_at = frozenset(found), now
        return self._excluded_ids

    def same_folder(self, vpath: str, identity: tuple[int, int]) -> bool:
        """Whether ``vpath``'s folder is still the folder ``identity`` (device, inode)."""
        try:
            with self.place(vpath) as place:
                info = os.fstat(place.dir_fd) if place.name == "." else place.lstat()
        except (FTPError, OSError):
            return False
        return info is not None and _identity(info) == identity

    # -- reading -------------------------------------------------------------

    def stat(self, vpath: str) -> Entry:
        """Return the entry for ``vpath``.

        Raises NotFound if it is missing, Forbidden if it is neither a file nor a folder.
        """
        with self.place(vpath) as place:
            info = place.lstat()
        if info is None:
            raise NotFound(f"{NotFound().message}: {place.vpath}")
        entry = Entry.from_stat(_split(place.vpath)[1] or "/", info)
        if entry is None:
            raise Forbidden(f"not a file or folder: {place.vpath}")
        return entry

    def open_folder(self, vpath: str) -> int:
        """Return a descriptor of folder ``vpath`` (the caller closes it).

        Raises NotFound, NotADirectory.
        """
        with self.place(vpath) as place, _os_errors(place.vpath):
            try:
                return os.open(place.name, _FOLDER_FLAGS, dir_fd=place.dir_fd)
            except OSError as error:
                if error.errno == errno.ELOOP:  # a link swapped in since it was resolved
                    raise NotADirectory(f"{NotADirectory().message}: {place.vpath}") from None
                raise

    def listdir(self, vpath: str) -> list[Entry]:
        """Return the entries of folder ``vpath`` sorted by name.

        Leaves out reserved names, names a client could not send back, links
        that lead outside the root or nowhere, and special files.
        Raises NotFound or NotADirectory.
        """
        vpath = self.virtual("/", vpath)
        fd = self.open_folder(vpath)
        try:
            with os.scandir(fd) as it:
                names = sorted(entry.name for entry in it)
            entries = []
            for name in names:
                try:
                    _check_name(name)
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if st.S_ISLNK(info.st_mode):
                        info = self._follow(vpath, name)
                    elif st.S_ISDIR(info.st_mode):
                        self._check_not_excluded(info, vpath)
                except (FTPError, OSError):
                    continue
                entry = Entry.from_stat(name, info)
                if entry is not None:
                    entries.append(entry)
            return entries
        finally:
            os.close(fd)

    def _follow(self, folder: str, name: str) -> os.stat_result:
        """The stat of what link ``name`` in ``folder`` leads to, inside the root."""
        with self.place(folder.rstrip("/") + "/" + name) as place, _os_errors(place.vpath):
            info = place.lstat()
        if info is None:
            raise NotFound(f"dangling link: {name}")
        return info

    def open_read(self, vpath: str) -> BinaryIO:
        """Return ``vpath`` opened for binary reading.

        Raises NotFound, IsADirectory, or Forbidden for anything but a regular file.
        """
        with self.place(vpath) as place, _os_errors(place.vpath):
            # O_NONBLOCK: a FIFO must not hang the handler; O_NOFOLLOW: no link swapped in since.
            fd = os.open(place.name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC,
                         dir_fd=place.dir_fd)
        try:
            mode = os.fstat(fd).st_mode
            if st.S_ISDIR(mode):
                raise IsADirectory(f"is a folder: {place.vpath}")
            if not st.S_ISREG(mode):
                raise Forbidden(f"not a regular file: {place.vpath}")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def upload_place(self, vpath: str) -> Place:
        """The place a put of ``vpath`` writes: its folder held open and the final name.

        Raises PathError for ``/`` or a name too long to carry the partial's
        suffix, NotFound / NotADirectory for a bad parent folder, IsADirectory if
        ``vpath`` is a folder.
        """
        vpath = self.virtual("/", vpath)
        if vpath == "/":
            raise PathError("the root is not a file")
        if len(f".{_split(vpath)[1]}{META_SUFFIX}".encode("utf-8")) > MAX_NAME_BYTES:
            raise PathError(f"name too long for a partial upload: {vpath}")
        place = self.place(vpath, follow=False)
        info = place.lstat()
        if info is not None and st.S_ISLNK(info.st_mode):
            # A link at the name: a put replaces what it leads to, inside the root only.
            place.close()
            place = self.place(vpath)
            info = place.lstat()
        if place.name == "." or info is not None and st.S_ISDIR(info.st_mode):
            place.close()
            raise IsADirectory(f"is a folder: {vpath}")
        return place

    # -- changing ------------------------------------------------------------

    def _change(self, vpath: str) -> Place:
        """The place of ``vpath`` itself (a link, not its target), to create, remove or move.

        A link is still refused if it leads outside the root.  Raises PathError for ``/``.
        """
        vpath = self.virtual("/", vpath)
        if vpath == "/":
            raise PathError("the root itself cannot be changed")
        place = self.place(vpath, follow=False)
        info = place.lstat()
        if info is not None and st.S_ISLNK(info.st_mode):
            try:
                self.place(vpath).close()
            except BaseException:
                place.close()
                raise
        return place

    def mkdir(self, vpath: str) -> None:
        """Create folder ``vpath``; its parent must exist.  Raises Exists or NotFound."""
        with self._change(vpath) as place, _os_errors(place.vpath):
            os.mkdir(place.name, dir_fd=place.dir_fd)

    def remove(self, vpath: str, in_use: Callable[[int, str], bool] | None = None) -> tuple[int, int]:
        """Remove a file or an empty folder; abandoned partial uploads inside it go with it.

        ``in_use(dir_fd, partial_name)`` tells a partial upload still being written:
        its folder is then busy (raises what ``in_use`` raises).  Returns the bytes
        and folders freed.  Raises NotFound, NotEmpty, or PathError for ``/``.
        """
        with self._change(vpath) as place, _os_errors(place.vpath):
            info = place.lstat()
            if info is None:
                raise NotFound(f"{NotFound().message}: {place.vpath}")
            if not st.S_ISDIR(info.st_mode):
                os.unlink(place.name, dir_fd=place.dir_fd)
                return (info.st_size if st.S_ISREG(info.st_mode) else 0), 0
            self._check_not_excluded(info, place.vpath)
            fd = os.open(place.name, _FOLDER_FLAGS, dir_fd=place.dir_fd)
            try:
                freed = self._clear_partials(fd, place.vpath, in_use)
            finally:
                os.close(fd)
            os.rmdir(place.name, dir_fd=place.dir_fd)
            return freed, 1

    @staticmethod
    def _clear_partials(fd: int, vpath: str, in_use: Callable[[int, str], bool] | None) -> int:
        """Remove the partial uploads of an otherwise empty folder; return their bytes."""
        with os.scandir(fd) as it:
            names = [entry.name for entry in it]
        if not all(name.endswith(_RESERVED_SUFFIXES) for name in names):
            raise NotEmpty(f"{NotEmpty().message}: {vpath}")
        if in_use is not None:
            for name in names:
                if name.endswith(PARTIAL_SUFFIX):
                    in_use(fd, name)
        freed = 0
        for name in names:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                os.unlink(name, dir_fd=fd)
                freed += info.st_size if st.S_ISREG(info.st_mode) else 0
        return freed

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` inside the root, never over an existing entry.

        Raises NotFound, Exists, Forbidden for a folder into itself, PathError for ``/``.
        """
        with self._change(src) as source, self._change(dst) as target, _os_errors(source.vpath):
            info = source.lstat()
            if info is None:
                raise NotFound(f"{NotFound().message}: {source.vpath}")
            if st.S_ISDIR(info.st_mode):
                self._check_not_excluded(info, source.vpath)
                self._check_holds_no_account(source)
            if target.lstat() is not None:
                raise Exists(f"{Exists().message}: {target.vpath}")
            try:
                _rename_noreplace(source.dir_fd, source.name, target.dir_fd, target.name)
            except OSError as error:
                if error.errno == errno.EINVAL:
                    raise Forbidden(f"cannot move a folder into itself: {source.vpath}") from None
                if error.errno == errno.EEXIST:
                    raise Exists(f"{Exists().message}: {target.vpath}") from None
                raise

    def _check_holds_no_account(self, place: Place) -> None:
        """Refuse to move a folder that holds another account's root."""
        if not self.excluded:
            return
        fd = os.open(place.name, _FOLDER_FLAGS, dir_fd=place.dir_fd)
        try:
            real = _fd_path(fd)
        finally:
            os.close(fd)
        if real is None or any(folder.is_relative_to(real) for folder in self.excluded):
            raise PathError(f"path outside the root: {place.vpath} holds another account's folder")

    # -- whole tree ----------------------------------------------------------

    def walk(self) -> Iterator[tuple[int, list[str], list[str]]]:
        """Yield ``(dir_fd, folders, files)`` for every folder under the root, through
        descriptors (any depth, never following a link), leaving out other accounts'
        roots and the state folder.  ``files`` holds every name that is not a folder."""
        for _, folders, files, fd in os.fwalk(self.root, follow_symlinks=False):
            kept = []
            for name in folders:
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if st.S_ISDIR(info.st_mode) and name != STATE_FOLDER \
                        and _identity(info) not in self._excluded_identities():
                    kept.append(name)
            folders[:] = kept
            yield fd, folders, files

    def count(self) -> tuple[int, int]:
        """Return the bytes in regular files (partial uploads included) and the folders
        under the root, the root not counted."""
        total = folders = 0
        for fd, subfolders, files in self.walk():
            folders += len(subfolders)
            for name in files:
                with contextlib.suppress(OSError):
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if st.S_ISREG(info.st_mode):
                        total += info.st_size
        return total, folders

    def usage(self) -> int:
        """Return the bytes held in regular files under the root, partial uploads included."""
        return self.count()[0]


def _fd_path(fd: int) -> Path | None:
    """The path an open folder has now (Linux's /proc), or None where it cannot be told."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None
