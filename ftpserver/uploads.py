"""Partial uploads on the server: where they live, when they resume, when they go.

An upload of NAME is written to ``.NAME.ftp-partial`` beside it, with
``.NAME.ftp-partial.json`` recording the declared size and the client's
``source`` tag (a string that changes whenever the client's file does).  A later
put of the same size and source resumes at the partial's length; anything else
starts from zero.  Only a complete, verified partial is renamed to NAME.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Iterable

__all__ = ["PartialUpload", "sweep_partials", "size_of"]

log = logging.getLogger(__name__)


def size_of(path: Path) -> int:
    """Size of a regular file, 0 if it is missing or not a file."""
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


class PartialUpload:
    """One partial upload: its data file and its metadata file."""

    def __init__(self, path: Path, meta: Path) -> None:
        self.path = path
        self.meta = meta

    def prepare(self, size: int, source: str | None, restart: bool = False) -> int:
        """Make the partial ready to receive and return the offset to resume from.

        A partial resumes only if it was started for the same ``size`` and a
        non-empty ``source``; otherwise it is emptied and recorded anew.
        """
        held = self._resumable_length(size, source) if source and not restart else None
        if held is None:
            held = 0
            self._write_meta({"filesize": size, "source": source, "started": time.time()})
        with open(self.path, "ab") as file:
            file.truncate(held)
        return held

    def _resumable_length(self, size: int, source: str) -> int | None:
        try:
            meta = json.loads(self.meta.read_text("utf-8"))
            held = self.path.stat().st_size
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("filesize") != size or meta.get("source") != source:
            return None
        return min(held, size)

    def _write_meta(self, fields: dict[str, object]) -> None:
        # Written in place: a torn write fails to parse, which only means "start from zero".
        self.meta.write_text(json.dumps(fields), "utf-8")

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
