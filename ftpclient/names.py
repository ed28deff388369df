"""Names crossing between the server and the local disk.

The client trusts no name a server sends: before one becomes part of a local
path, :func:`join_under` checks that it is one plain name that stays inside the
destination.  :func:`shown` turns any name into one printable line, whatever
bytes it holds (a local name that is not UTF-8, a server's control characters).
"""
from __future__ import annotations

import os
from pathlib import Path

from ftpserver.errors import LocalError
from ftpserver.protocol import printable

__all__ = ["join_under", "shown"]


def _unsafe(name: object) -> str | None:
    """Why a name sent by the server cannot name a local file (None: it can)."""
    if not isinstance(name, str) or not name:
        return "empty"
    if name in (".", ".."):
        return f"it is {name}"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if "\0" in name:
        return "it holds a NUL byte"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode"
    return None


def join_under(folder: Path, name: object) -> Path:
    """``folder / name`` for a name sent by the server.

    Raises LocalError (which does not repeat the name) unless the name is one
    plain name, so that the result lies directly inside ``folder``.
    """
    reason = _unsafe(name)
    if reason is None and (folder / name).parent == folder:  # type: ignore[operator]
        return folder / name  # type: ignore[operator]
    raise LocalError(f"refused a name from the server: {reason or 'it leaves the folder'}")


def shown(name: str | os.PathLike[str]) -> str:
    """A name as one printable line: bytes that are not UTF-8 as ``\\xff``, control
    characters escaped."""
    text = os.fspath(name)
    try:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no file system name holds: printable escapes it
        pass
    return printable(text)
