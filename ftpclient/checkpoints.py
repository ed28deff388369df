"""Hash checkpoints of local files being uploaded, kept between runs.

A resumed upload needs the hash state of the bytes the server already holds.
While a file is hashed for an upload, its state every few MiB is appended to a
small log in the user's cache folder (``$XDG_CACHE_HOME/ftpclient/uploads``, by
default ``~/.cache/ftpclient/uploads``), named after the file's path and source
tag.  The next run takes up the last checkpoint at or before the server's offset
and hashes only from there.  For blake3 the log keeps digests of the bytes
before each mark instead; the server names the mark it checks a resume at.
The log goes once the upload is done; logs left by abandoned uploads go after
a week.  Losing the folder only costs a re-hash.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from ftpserver.digest import Checkpoint, checkpointed

__all__ = ["CheckpointLog", "cache_folder"]

#: Logs untouched for this long belong to abandoned uploads.
STALE_AFTER = 7 * 24 * 3600


def cache_folder() -> Path:
    """Where upload checkpoints are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ftpclient" / "uploads"


class CheckpointLog:
    """The checkpoints of one hash of one local file in one state (its source tag)."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        self._started = path.exists()

    @classmethod
    def for_upload(cls, local: Path, source: str, name: str = "md5") -> "CheckpointLog | None":
        """The log of hash ``name`` for uploading ``local`` as it is now; None where
        it leaves no checkpoints."""
        if not checkpointed(name):
            return None
        key = hashlib.sha256(f"{os.path.abspath(local)}\0{source}\0{name}".encode()).hexdigest()[:32]
        return cls(cache_folder() / f"{key}.log", source)

    def best(self, offset: int) -> Checkpoint | None:
        """The latest checkpoint at or before ``offset``, if any was kept."""
        found = None
        try:
            with open(self.path, encoding="utf-8") as log:
                lines = iter(log)
                if json.loads(next(lines, "null")) != {"source": self.source}:
                    return None
                for line in lines:
                    try:
                        checkpoint = Checkpoint.from_json(json.loads(line))
                    except ValueError:  # a line cut short by a crash
                        continue
                    if checkpoint and checkpoint.offset <= offset and (
                            found is None or checkpoint.offset > found.offset):
                        found = checkpoint
        except (OSError, ValueError):
            return None
        return found

    def add(self, checkpoint: Checkpoint) -> None:
        """Append a checkpoint; a cache that cannot be written is passed over."""
        with contextlib.suppress(OSError):
            if not self._started:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _remove_stale(self.path.parent)
                self.path.write_text(json.dumps({"source": self.source}) + "\n", "utf-8")
                self._started = True
            with open(self.path, "a", encoding="utf-8") as log:
                log.write(json.dumps(checkpoint.to_json()) + "\n")

    def discard(self) -> None:
        """Forget the file's checkpoints (the upload is done, or they proved wrong)."""
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        self._started = False


def _remove_stale(folder: Path) -> None:
    now = time.time()
    for log in folder.glob("*.log"):
        with contextlib.suppress(OSError):
            if now - log.stat().st_mtime > STALE_AFTER:
                log.unlink()
