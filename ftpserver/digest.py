"""md5 whose running state can be saved and taken up again: resume without re-hashing.

hashlib cannot hand out a hash's state, so a resumed transfer would have to read
and hash again every byte it already holds (minutes for a large file on a slow
disk).  OpenSSL's own MD5 functions, in the library hashlib is built on, keep
their state in a small plain struct that can be copied out and back in.  Where
they cannot be reached, :class:`Md5` works on hashlib alone and simply has no
state to give: callers then re-hash, as before.

A state never crosses the wire; each end saves and restores its own.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import struct
from pathlib import Path
from typing import NamedTuple

__all__ = ["Md5", "Checkpoint", "resumable", "boot_id", "version_tag"]

#: OpenSSL's MD5_CTX: A, B, C, D, Nl, Nh (bit count), data[16], num (bytes in data).
_CTX = struct.Struct("=4I2I64sI")
#: Room allocated for a context: more than the struct needs, in case a build pads it.
_ROOM = 256


@functools.cache
def _lib() -> ctypes.CDLL | None:
    """OpenSSL's MD5 functions, from the library hashlib uses, if they work as expected
    (loaded on first use: a command that moves no file does not pay for it)."""
    try:
        import _hashlib  # the module links libcrypto, so its handle reaches MD5_*

        lib = ctypes.CDLL(_hashlib.__file__)
        for name in ("MD5_Init", "MD5_Update", "MD5_Final"):
            getattr(lib, name).restype = ctypes.c_int
        lib.MD5_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        # Check the struct layout and the results once against hashlib.
        ctx = ctypes.create_string_buffer(_ROOM)
        sample = bytes(range(100))
        if lib.MD5_Init(ctx) != 1 or lib.MD5_Update(ctx, sample, len(sample)) != 1:
            return None
        fields = _CTX.unpack_from(ctx.raw)
        out = ctypes.create_string_buffer(16)
        if fields[4:6] != (800, 0) or fields[7] != 36 or lib.MD5_Final(out, ctx) != 1:
            return None
        return lib if out.raw == hashlib.md5(sample).digest() else None
    except (ImportError, OSError, AttributeError, ValueError):
        return None


def resumable() -> bool:
    """Whether md5 states can be saved here."""
    return _lib() is not None


def version_tag(st: os.stat_result) -> str:
    """A tag that changes whenever the file does: size, mtime, ctime and inode.

    The change time moves on every write and cannot be set back, so a file
    rewritten in place with its mtime restored gets a new tag too.
    """
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}-{st.st_ino}"


@functools.cache
def boot_id() -> str | None:
    """An id of the running operating system boot (Linux), or None where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


class Checkpoint(NamedTuple):
    """The md5 state after the first ``offset`` bytes of a file."""
    offset: int
    state: str  # hex of the saved context
    #: For bytes received: the version tag of the file they were saved with ...
    held: str | None = None
    #: ... and the boot they were written in, if they may not be on disk yet.
    boot: str | None = None

    def to_json(self) -> dict[str, object]:
        return {key: value for key, value in self._asdict().items() if value is not None}

    @classmethod
    def from_json(cls, value: object) -> "Checkpoint | None":
        """A checkpoint read back from metadata, or None if it is not one."""
        if not isinstance(value, dict):
            return None
        offset, state = value.get("offset"), value.get("state")
        held, boot = value.get("held"), value.get("boot")
        if type(offset) is not int or offset < 0 or not isinstance(state, str) \
                or not all(isinstance(v, (str, type(None))) for v in (held, boot)):
            return None
        return cls(offset, state, held, boot)

    def kept_for(self, data: Path) -> "Checkpoint":
        """This checkpoint, to keep beside the received bytes in ``data`` (no more
        are written to it after): tied to the file as it is now, and to this boot.

        Until the machine restarts, the bytes written are there to read (the page
        cache holds what is not yet on disk), so nothing waits for the disk; where
        the boot cannot be told, the bytes are flushed to disk first.
        Raises OSError.
        """
        boot = boot_id()
        with open(data, "rb") as file:
            if boot is None:
                getattr(os, "fdatasync", os.fsync)(file.fileno())
            return self._replace(held=version_tag(os.fstat(file.fileno())), boot=boot)

    def holds(self, data: Path) -> bool:
        """Whether this checkpoint still describes the bytes in ``data``: the file is
        as it was when the checkpoint was kept, in this boot of the machine."""
        try:
            tag = version_tag(data.stat())
        except OSError:
            return False
        return self.held == tag and (self.boot is None or self.boot == boot_id())


class Md5:
    """An md5 hash that can save its state at any point (:meth:`checkpoint`)."""

    def __init__(self, start: Checkpoint | None = None) -> None:
        """A new hash, or one taking up ``start``; raises ValueError for a state that does not fit."""
        self.length = 0
        self._hashlib = None
        self._lib = _lib()
        if self._lib is None:
            if start is not None:
                raise ValueError("md5 states cannot be restored here")
            self._hashlib = hashlib.md5()
            return
        self._ctx = ctypes.create_string_buffer(_ROOM)
        if start is None:
            self._lib.MD5_Init(self._ctx)
            return
        try:
            raw = bytes.fromhex(start.state)
            fields = _CTX.unpack(raw)
        except (ValueError, struct.error):
            raise ValueError("not an md5 state") from None
        bits = start.offset * 8
        if (fields[4], fields[5], fields[7]) != (bits & 0xFFFFFFFF, bits >> 32, start.offset % 64):
            raise ValueError(f"the md5 state is not that of {start.offset} bytes")
        ctypes.memmove(self._ctx, raw, len(raw))
        self.length = start.offset

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data`` (the GIL is released meanwhile, as hashlib does for large data)."""
        data = memoryview(data).cast("B")
        if self._hashlib is not None:
            self._hashlib.update(data)
        else:
            try:
                pointer = (ctypes.c_char * len(data)).from_buffer(data)  # no copy
            except TypeError:  # read-only
                pointer = data.tobytes()
            self._lib.MD5_Update(self._ctx, pointer, len(data))  # type: ignore[union-attr]
        self.length += len(data)

    def hexdigest(self) -> str:
        """The md5 of everything hashed so far; hashing may go on after."""
        if self._hashlib is not None:
            return self._hashlib.hexdigest()
        ctx = ctypes.create_string_buffer(self._ctx.raw, _ROOM)
        out = ctypes.create_string_buffer(16)
        self._lib.MD5_Final(out, ctx)  # type: ignore[union-attr]
        return out.raw.hex()

    def checkpoint(self) -> Checkpoint | None:
        """The state so far, to take up later; None where states cannot be saved."""
        if self._hashlib is not None:
            return None
        return Checkpoint(self.length, self._ctx.raw[:_CTX.size].hex())
