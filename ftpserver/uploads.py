"""Partial uploads on the server: where they live, when they resume, when they go.

An upload of NAME is written to ``.NAME.ftp-partial`` beside it, with
``.NAME.ftp-partial.json`` recording the declared size and the client's
``source`` tag (a string that changes whenever the client's file does), and,
once an upload is cut, the state of the hash of the bytes held.  A later put of the same
size and source resumes at the partial's length without hashing them again;
anything else starts from zero.  Only a complete, verified partial is renamed to NAME.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from .digest import Checkpoint

__all__ = ["PartialUpload", "Writeback", "sweep_partials", "size_of"]

log = logging.getLogger(__name__)


def size_of(path: Path) -> int:
    """Size of a regular file, 0 if it is missing or not a file."""
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


class Writeback:
    """Starts writing a file's received bytes to disk every :attr:`EVERY` bytes, while
    more arrive, so the fsync that commits it has little left to wait for.

    Called with the size of each write, as a progress callback.  Uses Linux's
    sync_file_range, which only starts the writing; elsewhere it does nothing.
    """

    #: Bytes between two starts: big enough to cost nothing, small enough to keep
    #: the disk busy while the network is.
    EVERY = 16 * 1024 * 1024

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.started, self.end = fd, offset, offset
        self._start = _sync_file_range()

    def __call__(self, count: int) -> None:
        self.end += count
        if self._start and self.end - self.started >= self.EVERY:
            if self._start(self.fd, self.started, self.end - self.started, _SYNC_FILE_RANGE_WRITE):
                self._start = None  # refused (say, a file system without it): stop asking
            self.started = self.end


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


class PartialUpload:
    """One partial upload: its data file and its metadata file."""

    def __init__(self, path: Path, meta: Path) -> None:
        self.path = path
        self.meta = meta
        self._meta: dict[str, Any] = {}

    def prepare(self, size: int, source: str | None,
                restart: bool = False) -> tuple[int, Checkpoint | None]:
        """Make the partial ready to receive; return the offset to resume from
        and the hash checkpoint saved for the bytes before it, if any.

        A partial resumes only if it was started for the same ``size`` and a
        non-empty ``source``; otherwise it is emptied and recorded anew.
        """
        meta = self._read_meta() if source and not restart else None
        if meta is None or meta.get("filesize") != size or meta.get("source") != source:
            self._meta = {"filesize": size, "source": source, "started": time.time()}
            self._write_meta()
            held, checkpoint = 0, None
        else:
            self._meta = meta
            held = min(size_of(self.path), size)
            checkpoint = Checkpoint.from_json(meta.get("checkpoint"))
            if checkpoint and not checkpoint.holds(self.path, held):
                checkpoint = None
        with open(self.path, "ab") as file:
            file.truncate(held)
        return held, checkpoint

    def save_checkpoint(self, reached: Checkpoint | None) -> None:
        """Keep the hash state of the bytes held, once no more are written (the partial
        must stay as it is now for the state to be used).

        A partial whose metadata cannot be written keeps what it had.
        """
        if not reached or not reached.offset:
            return
        with contextlib.suppress(OSError):
            self._meta["checkpoint"] = reached.kept_for(self.path).to_json()
            self._write_meta()

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads(self.meta.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def _write_meta(self) -> None:
        # Written in place: a torn write fails to parse, which only means "start from zero".
        self.meta.write_text(json.dumps(self._meta), "utf-8")

    def commit(self, final: Path, sync: bool = True) -> None:
        """Move the complete partial to ``final`` in one step and forget its metadata."""
        if sync:
            with open(self.path, "rb") as file:
                os.fsync(file.fileno())
        os.replace(self.path, final)
        self.meta.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the partial and its metadata, if present."""
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def age(self, now: float) -> float:
        """Seconds since the partial or its metadata last changed (inf if both are gone)."""
        times = []
        for path in (self.path, self.meta):
            try:
                times.append(path.stat().st_mtime)
            except OSError:
                pass
        return now - max(times) if times else float("inf")


def sweep_partials(pairs: Iterable[tuple[Path, Path]], ttl: float, in_use: set[Path]) -> int:
    """Remove partial uploads untouched for ``ttl`` seconds and not in use.

    Returns how many were removed.
    """
    now = time.time()
    removed = 0
    for path, meta in pairs:
        if path in in_use:
            continue
        upload = PartialUpload(path, meta)
        if upload.age(now) > ttl:
            upload.discard()
            removed += 1
            log.info("removed abandoned partial upload %s", path)
    return removed
