"""Advisory file locks that every server process on a shared file system honours.

Linux's open-file-description locks (``F_OFD_SETLK``) belong to one open file,
not to a process: two threads of one server conflict exactly as two server
processes do, and the kernel (or an NFSv4/CephFS server) drops the lock when the
file is closed or its process dies, so a crashed server never leaves a claim
behind.  Where OFD locks do not exist, ``flock`` (also per open file) stands in.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

__all__ = ["try_lock", "lock", "unlock", "wait_lock"]

_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)
#: struct flock: l_type, l_whence, l_start, l_len (0: to the end), l_pid (0 for OFD locks).
_FLOCK = struct.Struct("hhqqi")
_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def _ofd(fd: int, command: int, kind: int) -> None:
    fcntl.fcntl(fd, command, _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0))


def try_lock(fd: int, exclusive: bool = True) -> bool:
    """Take the lock of open file ``fd`` if no other open file holds it; return whether taken."""
    try:
        if _OFD_SETLK is not None:
            _ofd(fd, _OFD_SETLK, fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK)
        else:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in _BUSY:
            return False
        raise
    return True


def lock(fd: int, exclusive: bool = True) -> None:
    """Take the lock of open file ``fd``, waiting for other holders."""
    if _OFD_SETLKW is not None:
        _ofd(fd, _OFD_SETLKW, fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)


def wait_lock(fd: int, seconds: float, exclusive: bool = True) -> bool:
    """Take the lock, waiting at most ``seconds``; return whether taken."""
    deadline = time.monotonic() + seconds
    pause = 0.005
    while not try_lock(fd, exclusive):
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    return True


def unlock(fd: int) -> None:
    """Release the lock of open file ``fd`` (closing the file releases it too)."""
    if _OFD_SETLK is not None:
        _ofd(fd, _OFD_SETLK, fcntl.F_UNLCK)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
