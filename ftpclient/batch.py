"""Several files, patterns or whole folders in one put or get.

Planning turns the command's arguments into folders to create and files to
move; running moves each file with :meth:`Client.put` / :meth:`Client.get`, so
every file resumes and is verified on its own.  One bad file is recorded and
the rest go on; a lost connection ends the batch.  No name a server lists is
written to disk unless it is one plain name inside the destination.
"""
from __future__ import annotations

import collections
import fnmatch
import glob
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ftpserver.errors import ConnectionLost, Exists, FTPError, Unreachable

from .client import Client, ProgressCallback, TransferResult
from .names import join_under, shown

__all__ = ["Job", "Plan", "BatchResult", "plan_put", "plan_get", "run_batch", "has_pattern",
           "EXAMPLES"]

#: Failures a summary lists without -v.
EXAMPLES = 5
#: ``start(job)``: the callbacks for that file's transfer and hashing.
Start = Callable[["Job"], "tuple[ProgressCallback | None, ProgressCallback | None]"]


@dataclass(frozen=True)
class Job:
    """One file to move."""

    local: Path
    remote: str
    size: int
    #: For a download: the server's modification time, to tell an unchanged copy here.
    mtime_ns: int | None = None


@dataclass
class Plan:
    """What a batch will do: folders to create (in order), files to move, problems found."""

    folders: list[str] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(job.size for job in self.jobs)


@dataclass
class BatchResult:
    """What a batch did."""

    done: list[TransferResult] = field(default_factory=list)
    #: (name as shown, why) for each file or folder that failed
    failed: list[tuple[str, str]] = field(default_factory=list)
    upload: bool = True

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self, verbose: bool = False) -> list[str]:
        """Lines to print: counts and bytes moved, then the failures (the first
        :data:`EXAMPLES` of them unless ``verbose``)."""
        moved = [r for r in self.done if not r.skipped]
        lines = [f"{len(moved)} transferred ({_mib(sum(r.sent for r in moved))} "
                 f"{'sent' if self.upload else 'received'}), "
                 f"{len(self.done) - len(moved)} already there, {len(self.failed)} failed"]
        listed = self.failed if verbose else self.failed[:EXAMPLES]
        lines += [f"  {why if why.startswith(name) else f'{name}: {why}'}" for name, why in listed]
        if len(listed) < len(self.failed):
            lines.append(f"  ... and {len(self.failed) - len(listed)} more (-v lists them all)")
        return lines


def _mib(count: int) -> str:
    return f"{count / 1048576:.1f} MiB"


def has_pattern(name: str) -> bool:
    """True if ``name`` holds shell-style wildcards."""
    return any(c in name for c in "*?[")


def _remote_is_dir(client: Client, path: str) -> bool:
    try:
        return client.stat(path)["type"] == "dir"
    except FTPError:
        return False


def _target(sources: list[str], dest: str | None, is_dir: Callable[[str], bool],
            join: Callable[[str, str], str]) -> tuple[Callable[[str], str], str | None]:
    """How each source's base name maps to its destination (cp semantics), and the
    destination folder to create first (None: none)."""
    if not dest:
        return (lambda name: name), None
    if is_dir(dest):
        return (lambda name: join(dest, name)), None
    if len(sources) == 1 and not dest.endswith(("/", os.sep)):
        return (lambda name: dest), None  # a single source is copied AS dest
    return (lambda name: join(dest, name)), dest.rstrip("/" + os.sep) or dest


def plan_put(client: Client, sources: list[str], dest: str | None, recursive: bool) -> Plan:
    """Plan uploading local files, patterns and (with ``recursive``) folders into ``dest``."""
    plan = Plan()
    expanded: list[str] = []
    for source in sources:
        matches = sorted(glob.glob(source)) if has_pattern(source) and not os.path.exists(source) else [source]
        if not matches:
            plan.failed.append((shown(source), "no local file matches"))
        expanded += matches
    target, create = _target(expanded, dest, lambda d: _remote_is_dir(client, d), posixpath.join)
    if create and recursive:  # a folder transfer makes its destination, as cp -r does
        plan.folders.append(create)
    for source in expanded:
        path = Path(source)
        remote = target(path.name or path.resolve().name)
        if not path.is_dir():
            plan.jobs.append(Job(path, remote, _local_size(path)))
        elif not recursive:
            plan.failed.append((shown(source), "is a folder (use -r)"))
        else:
            _walk_local(path, remote, plan)
    return plan


def _local_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # put reports the real problem


def _walk_local(top: Path, remote_top: str, plan: Plan) -> None:
    def failed(error: OSError) -> None:
        plan.failed.append((shown(str(error.filename)), error.strerror or str(error)))

    for folder, dirs, files in os.walk(top, onerror=failed):
        dirs.sort()
        relative = Path(folder).relative_to(top).as_posix()
        remote_folder = remote_top if relative == "." else posixpath.join(remote_top, relative)
        plan.folders.append(remote_folder)
        for name in sorted(files):
            path = Path(folder, name)
            plan.jobs.append(Job(path, posixpath.join(remote_folder, name), _local_size(path)))


def plan_get(client: Client, sources: list[str], dest: str | None, recursive: bool) -> Plan:
    """Plan downloading remote files, patterns and (with ``recursive``) folders into ``dest``.

    Each name the server lists must be one plain name (no ``/``, ``..`` and the
    like): any other is reported as failed and nothing is written for it.
    """
    plan = Plan()
    expanded: list[tuple[str, str, dict]] = []  # remote path, local name, entry
    for source in sources:
        folder, _, name = source.rstrip("/").rpartition("/")
        if has_pattern(name):
            entries = [e for e in client.ls(folder) if fnmatch.fnmatchcase(e["name"], name)]
            if not entries:
                plan.failed.append((shown(source), "no remote file matches"))
            for entry in entries:
                if _plain_name(folder, entry["name"], plan):
                    remote = posixpath.join(folder, entry["name"]) if folder else entry["name"]
                    expanded.append((remote, entry["name"], entry))
        else:
            try:
                entry = client.stat(source)
            except FTPError as error:
                plan.failed.append((shown(source), str(error)))
                continue
            expanded.append((source, posixpath.basename(source.rstrip("/")) or "root", entry))
    target, create = _target([s for s, _, _ in expanded], dest, os.path.isdir, os.path.join)
    if create and recursive:
        plan.folders.append(create)
    for source, name, entry in expanded:
        local = Path(target(name))
        if entry["type"] != "dir":
            plan.jobs.append(Job(local, source, entry["size"], _mtime_ns(entry)))
        elif not recursive:
            plan.failed.append((shown(source), "is a folder (use -r)"))
        else:
            _walk_remote(client, source, local, plan)
    return plan


def _plain_name(folder: str, name: str, plan: Plan) -> bool:
    """True if a name the server listed in ``folder`` can name a local file; else
    record why not."""
    try:
        join_under(Path("."), name)
    except FTPError as error:
        plan.failed.append((shown(f"{folder.rstrip('/')}/{name}" if folder else name), str(error)))
        return False
    return True


def _walk_remote(client: Client, top: str, local_top: Path, plan: Plan, limit: int = 100_000) -> None:
    """Add the folders and files under the remote folder ``top`` to ``plan``, at most
    ``limit`` of them (a server could list folders without end)."""
    pending = collections.deque([(top, local_top)])
    while pending and len(plan.jobs) + len(plan.folders) < limit:
        remote, local = pending.popleft()
        plan.folders.append(str(local))
        try:
            entries = client.ls(remote)
        except FTPError as error:
            plan.failed.append((shown(remote), str(error)))
            continue
        for entry in entries:
            if not _plain_name(remote, entry["name"], plan):
                continue
            child = posixpath.join(remote, entry["name"])
            if entry["type"] == "dir":
                pending.append((child, join_under(local, entry["name"])))
            else:
                plan.jobs.append(Job(join_under(local, entry["name"]), child, entry["size"],
                                     _mtime_ns(entry)))
    if pending:
        plan.failed.append((shown(top), f"more than {limit} files and folders: the rest not listed"))


def run_batch(client: Client, plan: Plan, upload: bool, restart: bool = False,
              start: Start = lambda job: (None, None),
              finished: Callable[[Job, TransferResult | None], object] = lambda job, done: None,
              checksum: bool = False) -> BatchResult:
    """Create the plan's folders, then move its files: in a few round trips by plans and
    pipelines (:mod:`ftpclient.pipeline`), or one by one with a server that predates them.

    Files whose size and modification time match on both ends are skipped; with
    ``checksum`` they are compared by hash instead.  ``start(job)`` returns the
    progress and hashing callbacks for that file; ``finished(job, result)`` hears
    how it ended (None: it failed).  The files of a folder that could not be
    created are not tried.  Raises ConnectionLost or Unreachable only if the
    connection is gone (the files done so far are kept).
    """
    from . import pipeline

    result = BatchResult(failed=list(plan.failed), upload=upload)

    def failed(name: str, why: str) -> None:
        result.failed.append((name, why))

    made = pipeline.make_folders(client, plan.folders) if upload else None
    jobs = _make_folders(client, plan, upload, result, finished, made)
    if upload and made is not None:
        result.done += pipeline.put_files(client, jobs, restart=restart, checksum=checksum,
                                          start=start, finished=finished, failed=failed)
    elif not upload:
        result.done += pipeline.get_files(client, jobs, restart=restart, checksum=checksum,
                                          start=start, finished=finished, failed=failed)
    else:  # a server from before plans: one file at a time
        for job in jobs:
            done = pipeline.move_one(client, job, True, restart, start, finished, failed)
            if done is not None:
                result.done.append(done)
    return result


def _make_folders(client: Client, plan: Plan, upload: bool, result: BatchResult,
                  finished: Callable[[Job, TransferResult | None], object],
                  made: dict[str, str | None] | None = None) -> list[Job]:
    """Create the plan's folders one by one (or take ``made``: why each failed, None if
    it did not); return the jobs not under one that failed."""
    sep = "/" if upload else os.sep
    broken: list[str] = []  # folders that could not be created, parents first
    for folder in plan.folders:
        if any(_inside(folder, top, sep) for top in broken):
            broken.append(folder)  # reported with its parent
            continue
        why = made.get(folder) if made is not None else _make_folder(client, folder, upload)
        if why:
            result.failed.append((shown(folder), why))
            broken.append(folder)
    jobs = []
    for job in plan.jobs:
        blocked = next((top for top in broken if _inside(job.remote if upload else str(job.local),
                                                         top, sep)), None)
        if blocked is None:
            jobs.append(job)
            continue
        name = shown(job.local) if upload else shown(job.remote)
        result.failed.append((name, f"not copied: folder {shown(blocked)} could not be made"))
        finished(job, None)
    return jobs


def _mtime_ns(entry: dict[str, object]) -> int | None:
    """The exact modification time a listing entry gives (None from an older server)."""
    value = entry.get("mtime_ns")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _make_folder(client: Client, folder: str, upload: bool) -> str | None:
    """Create a folder of the plan (one already there will do); return why it failed."""
    try:
        if upload:
            client.mkdir(folder)
        else:
            Path(folder).mkdir(parents=True, exist_ok=True)
    except Exists:
        pass
    except (ConnectionLost, Unreachable):
        raise
    except OSError as error:
        return error.strerror or str(error)
    except FTPError as error:
        return str(error)
    return None


def _inside(path: str, folder: str, sep: str) -> bool:
    """True if ``path`` lies below ``folder``."""
    return path.startswith(folder.rstrip(sep) + sep)
