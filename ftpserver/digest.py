"""Whole-file hashes (md5, the default, or sha256) whose running state can be saved
and taken up again: resume without re-hashing.

hashlib cannot hand out a hash's state, so a resumed transfer would have to read
and hash again every byte it already holds (minutes for a large file on a slow
disk).  OpenSSL's own MD5 and SHA256 functions, in the library hashlib is built
on, keep their state in a small plain struct that can be copied out and back in.
Where they cannot be reached, :class:`Hash` works on hashlib alone and simply
has no state to give: callers then re-hash.

A state never crosses the wire; each end saves and restores its own.

blake3's state cannot be had at all; instead a large file's blake3 keeps the
digest of the bytes before each multiple of :data:`CHECKPOINT_EVERY` (a
checkpoint whose ``state`` is a digest).  A resume then checks the file in two
parts: the bytes before such a mark by that digest, the rest by hashing it.
"""
from __future__ import annotations

import functools
import hashlib
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["Hash", "HASHES", "INLINE_HASHES", "HEX_LENGTH", "CHECKPOINT_EVERY", "Checkpoint",
           "available", "new_hash", "resumable", "checkpointed", "boot_id", "version_tag"]

#: The hashes a transfer can be checked with; the first is the default.  blake3 is
#: known to every version; it is usable where its package is installed (:func:`available`).
HASHES = ("md5", "sha256", "blake3")
#: Hashes so fast that bytes are hashed as they arrive, in the receiving thread:
#: handing them to a helper thread would cost more than the hashing.
INLINE_HASHES = frozenset({"blake3"})
#: Bytes between two checkpoints of a large file's hash.
CHECKPOINT_EVERY = 32 * 1024 * 1024
#: Room allocated for a context: more than the structs need, in case a build pads them.
_ROOM = 256


class _Layout(NamedTuple):
    """How OpenSSL keeps one hash's state."""
    prefix: str            # of its functions: MD5_Init, MD5_Update, MD5_Final
    ctx: struct.Struct     # its context struct
    bits: int              # index of the low word of the bit count (the high word follows)
    pending: int           # index of the count of bytes waiting for a whole block
    size: int              # of the digest, in bytes
    fixed: tuple[tuple[int, int], ...] = ()  # (index, value) of fields every state has


_LAYOUTS = {
    # MD5_CTX: A, B, C, D, Nl, Nh, data[16], num
    "md5": _Layout("MD5", struct.Struct("=4I2I64sI"), 4, 7, 16),
    # SHA256_CTX: h[8], Nl, Nh, data[16], num, md_len
    "sha256": _Layout("SHA256", struct.Struct("=8I2I64s2I"), 8, 11, 32, ((12, 32),)),
}


@functools.cache
def _functions(name: str) -> tuple[Any, ...] | None:
    """OpenSSL's Init, Update and Final for hash ``name``, from the library hashlib
    uses, if they work as expected (loaded on first use)."""
    layout = _LAYOUTS[name]
    try:
        import ctypes

        import _hashlib  # the module links libcrypto, so its handle reaches its functions

        lib = ctypes.CDLL(_hashlib.__file__)
        init, update, final = (getattr(lib, f"{layout.prefix}_{step}")
                               for step in ("Init", "Update", "Final"))
        for function in (init, update, final):
            function.restype = ctypes.c_int
        update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        # Check the struct layout and the result once against hashlib.
        ctx = ctypes.create_string_buffer(_ROOM)
        sample = bytes(range(100))
        if init(ctx) != 1 or update(ctx, sample, len(sample)) != 1:
            return None
        fields = layout.ctx.unpack_from(ctx.raw)
        out = ctypes.create_string_buffer(64)
        if fields[layout.bits:layout.bits + 2] != (800, 0) or fields[layout.pending] != 36 \
                or not _has_fixed(layout, fields) or final(out, ctx) != 1:
            return None
        return (init, update, final) if out.raw[:layout.size] == hashlib.new(name, sample).digest() \
            else None
    except (ImportError, OSError, AttributeError, ValueError):
        return None


def _has_fixed(layout: _Layout, fields: tuple[Any, ...]) -> bool:
    return all(fields[index] == value for index, value in layout.fixed)


#: Hex digits in each hash's digest.
HEX_LENGTH = {**{name: 2 * layout.size for name, layout in _LAYOUTS.items()}, "blake3": 64}


@functools.cache
def _blake3() -> Any:
    """The ``blake3`` package's hash (``pip install 'lan-ftp[fast]'``), or None."""
    try:
        from blake3 import blake3
    except ImportError:
        return None
    return blake3


def available(name: str) -> bool:
    """Whether hash ``name`` can be computed here (blake3 needs its package)."""
    return name in HASHES and (name != "blake3" or _blake3() is not None)


def new_hash(name: str) -> Any:
    """A plain hash object of ``name`` (update, hexdigest).  Raises KeyError if unavailable."""
    if name == "blake3":
        blake3 = _blake3()
        if blake3 is None:
            raise KeyError("blake3 is not installed: pip install 'lan-ftp[fast]'")
        return blake3(max_threads=1)  # one core: the other end hashes too
    return hashlib.new(name)


def resumable(name: str = "md5") -> bool:
    """Whether states of hash ``name`` can be saved here (never blake3's: see
    :func:`checkpointed`)."""
    return name in _LAYOUTS and _functions(name) is not None


def checkpointed(name: str) -> bool:
    """Whether a large file's hash ``name`` leaves checkpoints to resume by: saved
    states (:func:`resumable`) or, for blake3, digests of the bytes before each mark."""
    return resumable(name) or (name not in _LAYOUTS and available(name))


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
    """The state of a hash after the first ``offset`` bytes of a file (for blake3,
    whose state cannot be saved, the digest of those bytes: :attr:`is_digest`)."""
    offset: int
    state: str  # hex of the saved context, or the digest
    #: For bytes received: the version tag of the file they were saved with ...
    held: str | None = None
    #: ... and the boot they were written in, if they may not be on disk yet.
    boot: str | None = None
    hash: str = "md5"

    @property
    def is_digest(self) -> bool:
        """Whether :attr:`state` is the digest of the bytes before :attr:`offset`,
        which a resume checks them by, rather than a state to hash on from."""
        return self.hash not in _LAYOUTS

    def to_json(self) -> dict[str, object]:
        return {key: value for key, value in self._asdict().items()
                if value is not None and (key, value) != ("hash", "md5")}

    @classmethod
    def from_json(cls, value: object) -> "Checkpoint | None":
        """A checkpoint read back from metadata, or None if it is not one."""
        if not isinstance(value, dict):
            return None
        offset, state = value.get("offset"), value.get("state")
        held, boot, name = value.get("held"), value.get("boot"), value.get("hash", "md5")
        if type(offset) is not int or offset < 0 or not isinstance(state, str) \
                or not all(isinstance(v, (str, type(None))) for v in (held, boot)) \
                or name not in HASHES:
            return None
        return cls(offset, state, held, boot, name)

    def kept_for(self, data: Path | int) -> "Checkpoint":
        """This checkpoint, to keep beside the received bytes in ``data`` (a path or an
        open descriptor; no more are written to it after): tied to the file as it is
        now, and to this boot.

        Until the machine restarts, the bytes written are there to read (the page
        cache holds what is not yet on disk), so nothing waits for the disk; where
        the boot cannot be told, the bytes are flushed to disk first.
        Raises OSError.
        """
        boot = boot_id()
        if isinstance(data, int):
            return self._kept(data, boot)
        with open(data, "rb") as file:
            return self._kept(file.fileno(), boot)

    def _kept(self, fd: int, boot: str | None) -> "Checkpoint":
        if boot is None:
            getattr(os, "fdatasync", os.fsync)(fd)
        return self._replace(held=version_tag(os.fstat(fd)), boot=boot)

    def holds(self, data: Path | int, held: int) -> bool:
        """Whether this checkpoint still describes the first ``held`` bytes in ``data``
        (a path or an open descriptor): it is of no more bytes, and the file is as it
        was when the checkpoint was kept, in this boot of the machine."""
        try:
            tag = version_tag(os.stat(data))
        except OSError:
            return False
        return self.offset <= held and self.held == tag \
            and (self.boot is None or self.boot == boot_id())


class Hash:
    """A hash (md5, sha256 or blake3); md5's and sha256's can save their state at any
    point (:meth:`checkpoint`)."""

    def __init__(self, name: str = "md5", start: Checkpoint | None = None,
                 savable: bool = True, begin: int = 0) -> None:
        """A new hash, or one taking up ``start``; raises ValueError for a state that
        does not fit, KeyError for an unknown hash.  With ``savable`` false (a small
        file, quick to hash again), plain hashlib does the work and there is no state.
        With ``begin``, it is the hash of a file's bytes from there on (:attr:`length`
        counts from ``begin``), with no checkpoints."""
        self.name = name
        self.length = begin
        if name not in HASHES:
            raise KeyError(name)
        self._layout = _LAYOUTS.get(name)  # type: ignore[assignment]
        self._functions = _functions(name) if self._layout and (savable or start is not None) \
            and not begin else None
        self._hashlib = None
        #: For a hash without states: mark each CHECKPOINT_EVERY bytes with their digest.
        self._marking = self._layout is None and savable and not begin
        self._mark: Checkpoint | None = None
        if self._functions is None:
            if start is not None:
                raise ValueError(f"{name} states cannot be restored here")
            self._hashlib = new_hash(name)
            return
        import ctypes  # only here: a command that moves small files does not pay for it

        self._ctypes = ctypes
        self._ctx = ctypes.create_string_buffer(_ROOM)
        if start is None:
            self._functions[0](self._ctx)
            return
        if start.hash != name:
            raise ValueError(f"not a {name} state")
        try:
            raw = bytes.fromhex(start.state)
            fields = self._layout.ctx.unpack(raw)
        except (ValueError, struct.error):
            raise ValueError(f"not a {name} state") from None
        bits, at = start.offset * 8, self._layout.bits
        if (fields[at], fields[at + 1], fields[self._layout.pending]) != (
                bits & 0xFFFFFFFF, bits >> 32, start.offset % 64) \
                or not _has_fixed(self._layout, fields):
            raise ValueError(f"the {name} state is not that of {start.offset} bytes")
        ctypes.memmove(self._ctx, raw, len(raw))
        self.length = start.offset

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data`` (the GIL is released meanwhile, as hashlib does for large data)."""
        data = memoryview(data).cast("B")
        while self._marking and len(data) >= CHECKPOINT_EVERY - self.length % CHECKPOINT_EVERY:
            room = CHECKPOINT_EVERY - self.length % CHECKPOINT_EVERY
            self._update(data[:room])
            data = data[room:]
            self._mark = Checkpoint(self.length, self.hexdigest(), hash=self.name)
        if data:
            self._update(data)

    def _update(self, data: memoryview) -> None:
        if self._hashlib is not None:
            self._hashlib.update(data)
        else:
            try:
                pointer = (self._ctypes.c_char * len(data)).from_buffer(data)  # no copy
            except TypeError:  # read-only
                pointer = data.tobytes()
            self._functions[1](self._ctx, pointer, len(data))  # type: ignore[index]
        self.length += len(data)

    def hexdigest(self) -> str:
        """The hash of everything hashed so far; hashing may go on after."""
        if self._hashlib is not None:
            return self._hashlib.hexdigest()
        ctx = self._ctypes.create_string_buffer(self._ctx.raw, _ROOM)
        out = self._ctypes.create_string_buffer(64)
        self._functions[2](out, ctx)  # type: ignore[index]
        return out.raw[:self._layout.size].hex()

    def checkpoint(self) -> Checkpoint | None:
        """The state so far, to take up later; for blake3, the digest at the last
        mark passed; None where there is neither."""
        if self._hashlib is not None:
            return self._mark
        return Checkpoint(self.length, self._ctx.raw[:self._layout.ctx.size].hex(), hash=self.name)
