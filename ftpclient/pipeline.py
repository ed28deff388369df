"""Many files over one connection in a few round trips (docs/PROTOCOL.md, "Folders
and many files").

Uploads ask the server once per batch what it needs (:meth:`Client.plan`), then
stream the bodies of a window of files back to back and read the window's
replies at its end; downloads keep a window of get requests in flight.  Files
whose size and modification time match on both ends are not read at all (with
``checksum``, files are compared by hash instead).  Every file is still
verified, resumed and committed on its own; one that fails is reported and the
rest go on.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from ftpserver.digest import Checkpoint, version_tag
from ftpserver.errors import (ChecksumError, ConnectionLost, FTPError, LocalError, StaleOffset,
                              Unreachable, UnknownCommand)
from ftpserver.transfer import FileHasher, sync_all, worth_saving

from .client import Client, PartialDownload, ProgressCallback, TransferResult
from .names import shown

if TYPE_CHECKING:
    from .batch import Job

__all__ = ["make_folders", "put_files", "get_files", "move_one", "WINDOW_FILES", "WINDOW_BYTES"]

#: Files (and body bytes) sent before a window's replies are read: what the
#: server commits as one group.
WINDOW_FILES = 256
WINDOW_BYTES = 64 * 1024 * 1024
#: Get requests in flight at once: enough to hide the round trip behind small files.
GET_WINDOW = 32
#: Folders and files per plan request (the server takes at most 256).
PLAN_ENTRIES = 200
#: Bytes of names in one plan request, well inside the 64 KiB frame limit.
PLAN_BYTES = 40_000

Start = Callable[["Job"], "tuple[ProgressCallback | None, ProgressCallback | None]"]
Finished = Callable[["Job", "TransferResult | None"], object]
#: ``failed(name as shown, why)``
Failed = Callable[[str, str], None]


@dataclass
class _Upload:
    """One file of a batch upload, as planned."""

    job: Job
    size: int
    source: str
    mtime_ns: int
    offset: int = 0


def make_folders(client: Client, folders: list[str]) -> dict[str, str | None] | None:
    """Create remote ``folders`` (in order; one already there will do) by plan requests;
    return why each failed (None: it did not), or None if the server does not know
    ``plan`` (nothing was done)."""
    made: dict[str, str | None] = {}
    for folder in folders:
        if not _sendable(folder):
            made[folder] = "the name is not valid UTF-8, so it cannot be sent (rename it)"
    sendable = [folder for folder in folders if folder not in made]
    try:
        for start in range(0, max(len(sendable), 1), PLAN_ENTRIES):
            batch = sendable[start:start + PLAN_ENTRIES]
            reply = client.plan(batch, [])
            for folder, answer in zip(batch, reply["folders"]):
                made[folder] = None if answer is None else \
                    shown(str(answer.get("message") or answer.get("error")))
    except UnknownCommand:
        return None
    return made


def put_files(client: Client, jobs: list[Job], *, restart: bool = False, checksum: bool = False,
              start: Start, finished: Finished, failed: Failed) -> list[TransferResult]:
    """Upload ``jobs`` by plans and streamed puts (the server must know ``plan``: see
    :func:`make_folders`); files that could not be read or sent go to ``failed``.

    Raises ConnectionLost or Unreachable if the connection is gone.
    """
    uploads: list[_Upload] = []
    for job in jobs:
        if not _sendable(job.remote):
            failed(shown(job.local), "the name is not valid UTF-8, so it cannot be sent (rename it)")
            finished(job, None)
            continue
        try:
            info = os.stat(job.local)
        except OSError as error:
            failed(shown(job.local), f"cannot read it: {error.strerror or error}")
            finished(job, None)
            continue
        uploads.append(_Upload(job, info.st_size, version_tag(info), info.st_mtime_ns))
    needed = _plan(client, uploads, restart, checksum, finished, failed)
    done: list[TransferResult] = [r for r in needed if isinstance(r, TransferResult)]
    pending = [u for u in needed if isinstance(u, _Upload) and not worth_saving(u.size)]
    for upload in needed:
        if isinstance(upload, _Upload) and worth_saving(upload.size):
            # A large file goes alone, by the resumable put that keeps hash states.
            result = move_one(client, upload.job, True, restart, start, finished, failed)
            if result is not None:
                done.append(result)
    for _ in range(2):  # a second pass for files whose partial went stale meanwhile
        stale: list[_Upload] = []
        for window in _windows(pending):
            done += _send_window(client, window, start, finished, failed, stale)
        if not stale:
            break
        for upload in stale:
            upload.offset = 0
        pending = stale
    return done


def _sendable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plan(client: Client, uploads: list[_Upload], restart: bool, checksum: bool,
          finished: Finished, failed: Failed) -> list[_Upload | TransferResult]:
    """Ask the server where each upload starts; return what still needs sending and
    the results of files already there."""
    out: list[_Upload | TransferResult] = []
    queue = collections.deque(uploads)
    while queue:
        batch: list[_Upload] = []
        used = 0
        while queue and len(batch) < PLAN_ENTRIES and used < PLAN_BYTES:
            batch.append(queue.popleft())
            used += len(batch[-1].job.remote.encode("utf-8")) + 160
        entries = [_entry(client, upload, checksum) for upload in batch]
        reply = client.plan([], [entry for entry in entries if entry is not None])
        answers = iter(reply["files"])
        for upload, entry in zip(batch, entries):
            if entry is None:
                failed(shown(upload.job.local), "cannot read it")
                finished(upload.job, None)
                continue
            answer = next(answers)
            if "error" in answer:
                failed(shown(upload.job.local),
                       shown(str(answer.get("message") or answer["error"])))
                finished(upload.job, None)
            elif answer.get("same") is True and not restart:
                result = TransferResult(upload.job.remote, upload.job.local,
                                        upload.size, upload.size, entry.get(client.hash, ""),
                                        True, client.hash)
                finished(upload.job, result)
                out.append(result)
            else:
                upload.offset = 0 if restart else min(int(answer["offset"]), upload.size)
                out.append(upload)
    return out


def move_one(client: Client, job: Job, upload: bool, restart: bool, start: Start,
             finished: Finished, failed: Failed) -> TransferResult | None:
    """Move one file by a single put or get (its own round trips); None if it failed."""
    progress, hashing = start(job)
    move = client.put if upload else client.get
    try:
        result = move(job.local if upload else job.remote,  # type: ignore[operator]
                      job.remote if upload else job.local, restart=restart, progress=progress,
                      exact=True, hashing=hashing)
    except (ConnectionLost, Unreachable):
        raise
    except FTPError as error:
        failed(shown(job.local if upload else job.remote), str(error))
        finished(job, None)
        return None
    finished(job, result)
    return result


def _entry(client: Client, upload: _Upload, checksum: bool) -> dict[str, object] | None:
    entry: dict[str, object] = {"name": upload.job.remote, "size": upload.size,
                                "source": upload.source, "mtime_ns": upload.mtime_ns}
    if checksum:
        try:
            with open(upload.job.local, "rb") as file:
                entry[client.hash] = FileHasher(file, upload.size, hash=client.hash).result()
        except (OSError, EOFError):
            return None
    return entry


def _windows(uploads: list[_Upload]) -> Iterator[list[_Upload]]:
    window: list[_Upload] = []
    size = 0
    for upload in uploads:
        window.append(upload)
        size += upload.size - upload.offset
        if len(window) >= WINDOW_FILES or size >= WINDOW_BYTES:
            yield window
            window, size = [], 0
    if window:
        yield window


def _send_window(client: Client, window: list[_Upload], start: Start, finished: Finished,
                 failed: Failed, stale: list[_Upload]) -> list[TransferResult]:
    """Stream a window of files back to back, then read their replies."""
    opened: list[tuple[_Upload, BinaryIO]] = []
    try:
        for upload in window:
            try:
                opened.append((upload, open(upload.job.local, "rb")))
            except OSError as error:
                failed(shown(upload.job.local), f"cannot read it: {error.strerror or error}")
                finished(upload.job, None)
        for index, (upload, file) in enumerate(opened):
            progress, _ = start(upload.job)
            client.stream_put(file, upload.job.remote, upload.size, upload.offset, upload.source,
                              upload.mtime_ns, more=index < len(opened) - 1, progress=progress)
        results = []
        for upload, _ in opened:
            try:
                reply = client.stream_reply()
            except StaleOffset:
                stale.append(upload)
                continue
            except (ConnectionLost, Unreachable):
                raise
            except FTPError as error:
                failed(shown(upload.job.local), str(error))
                finished(upload.job, None)
                continue
            result = TransferResult(reply["filename"], upload.job.local, upload.size, upload.offset,
                                    reply.get(client.hash, ""), hash=client.hash)
            finished(upload.job, result)
            results.append(result)
        return results
    finally:
        for _, file in opened:
            file.close()


def get_files(client: Client, jobs: list[Job], *, restart: bool = False, checksum: bool = False,
              start: Start, finished: Finished, failed: Failed) -> list[TransferResult]:
    """Download ``jobs`` with a window of requests in flight; files already here with
    the listed size and modification time are skipped (with ``checksum``, each file
    is compared by hash instead, as a single get does).

    Raises ConnectionLost or Unreachable if the connection is gone.
    """
    done: list[TransferResult] = []
    queue: collections.deque[tuple[Job, bool]] = collections.deque()
    for job in jobs:
        same = None if restart or checksum else _same_local(job)
        if same is not None:
            finished(job, same)
            done.append(same)
        else:
            queue.append((job, restart))
    if checksum:
        for job, _ in queue:  # compared by hash: one file at a time
            result = move_one(client, job, False, restart, start, finished, failed)
            if result is not None:
                done.append(result)
        return done
    in_flight: collections.deque[tuple[Job, PartialDownload, Checkpoint | None, bool]] = \
        collections.deque()
    retried: set[Path] = set()

    def fill() -> None:
        while queue and len(in_flight) < GET_WINDOW:
            job, fresh = queue.popleft()
            partial = PartialDownload(job.local)
            try:
                checkpoint = client.request_get(job.remote, partial, fresh)
            except LocalError as error:
                failed(shown(job.remote), str(error))
                finished(job, None)
                continue
            in_flight.append((job, partial, checkpoint, fresh))

    held: list[tuple[Job, TransferResult, PartialDownload]] = []
    held_bytes = 0

    def commit_held() -> None:
        """Flush the verified files to disk together, then give them their names."""
        nonlocal held_bytes
        group, held[:], held_bytes = list(held), [], 0
        try:
            _sync_paths([partial.path for _, _, partial in group])
        except OSError as error:
            for job, _, _ in group:
                failed(shown(job.remote), f"cannot write it: {error.strerror or error}")
                finished(job, None)
            return
        for job, result, partial in group:
            try:
                partial.commit()
            except LocalError as error:
                failed(shown(job.remote), str(error))
                finished(job, None)
                continue
            finished(job, result)
            done.append(result)

    fill()
    while in_flight:
        job, partial, checkpoint, fresh = in_flight.popleft()
        progress, hashing = start(job)
        try:
            result = client.receive_get(partial, checkpoint, progress, hashing, commit=False)
        except ChecksumError as error:  # the stream is in step: try it once more from zero
            if fresh or job.local in retried:
                failed(shown(job.remote), str(error))
                finished(job, None)
            else:
                retried.add(job.local)
                queue.append((job, True))
        except LocalError as error:  # the connection was dropped: ask again for the rest
            failed(shown(job.remote), str(error))
            finished(job, None)
            queue.extendleft(reversed([(j, f) for j, _, _, f in in_flight]))
            in_flight.clear()
        except (ConnectionLost, Unreachable):
            commit_held()  # what arrived whole is kept
            raise
        except FTPError as error:
            failed(shown(job.remote), str(error))
            finished(job, None)
        else:
            held.append((job, result, partial))
            held_bytes += result.size
            if len(held) >= WINDOW_FILES or held_bytes >= WINDOW_BYTES:
                commit_held()
        fill()  # keep the window full while the next one arrives
    commit_held()
    return done


def _sync_paths(paths: list[Path]) -> None:
    """Flush the files at ``paths`` to disk, in parallel.  Raises OSError."""
    fds = []
    try:
        for path in paths:
            fds.append(os.open(path, os.O_RDONLY))
        sync_all(fds)
    finally:
        for fd in fds:
            os.close(fd)


def _same_local(job: Job) -> TransferResult | None:
    """A skip result if the local file has the listed size and modification time."""
    mtime_ns = getattr(job, "mtime_ns", None)
    if mtime_ns is None:
        return None
    try:
        info = os.stat(job.local)
    except OSError:
        return None
    if info.st_size != job.size or info.st_mtime_ns != mtime_ns:
        return None
    return TransferResult(job.remote, job.local, job.size, job.size, "", True)
