"""Several files, patterns or whole folders in one put or get.

Planning turns the command's arguments into folders to create and files to
move; running moves each file with :meth:`Client.put` / :meth:`Client.get`, so
every file resumes and is verified on its own.  One bad file is recorded and
the rest go on; a lost connection ends the batch.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ftpserver.errors import ConnectionLost, Exists, FTPError, Unreachable

from .client import Client, ProgressCallback, TransferResult

__all__ = ["Job", "Plan", "BatchResult", "plan_put", "plan_get", "run_batch", "has_pattern"]


@dataclass(frozen=True)
class Job:
    """One file to move."""

    local: Path
    remote: str
    size: int


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
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line: counts, bytes moved, and the files that failed."""
        moved = [r for r in self.done if not r.skipped]
        sent = sum(r.sent for r in moved)
        line = (f"{len(moved)} transferred ({_mib(sent)} sent), "
                f"{len(self.done) - len(moved)} already there, {len(self.failed)} failed")
        if self.failed:
            line += ": " + "; ".join(f"{name} ({why})" for name, why in self.failed)
        return line


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


def _target(client: Client, sources: list[str], dest: str | None, is_dir: Callable[[str], bool],
            join: Callable[[str, str], str]) -> Callable[[str], str]:
    """How each source's base name maps to its destination (cp semantics)."""
    if dest and len(sources) == 1 and not dest.endswith(("/", os.sep)) and not is_dir(dest):
        return lambda name: dest  # a single source is copied AS dest
    return lambda name: join(dest, name) if dest else name


def plan_put(client: Client, sources: list[str], dest: str | None, recursive: bool) -> Plan:
    """Plan uploading local files, patterns and (with ``recursive``) folders into ``dest``."""
    plan = Plan()
    expanded: list[str] = []
    for source in sources:
        matches = sorted(glob.glob(source)) if has_pattern(source) and not os.path.exists(source) else [source]
        if not matches:
            plan.failed.append((source, "no local file matches"))
        expanded += matches
    target = _target(client, expanded, dest, lambda d: _remote_is_dir(client, d), posixpath.join)
    for source in expanded:
        path = Path(source)
        remote = target(path.name or path.resolve().name)
        if not path.is_dir():
            plan.jobs.append(Job(path, remote, _local_size(path)))
        elif not recursive:
            plan.failed.append((source, "is a folder (use -r)"))
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
        plan.failed.append((str(error.filename), error.strerror or str(error)))

    for folder, dirs, files in os.walk(top, onerror=failed):
        dirs.sort()
        relative = Path(folder).relative_to(top).as_posix()
        remote_folder = remote_top if relative == "." else posixpath.join(remote_top, relative)
        plan.folders.append(remote_folder)
        for name in sorted(files):
            path = Path(folder, name)
            plan.jobs.append(Job(path, posixpath.join(remote_folder, name), _local_size(path)))


def plan_get(client: Client, sources: list[str], dest: str | None, recursive: bool) -> Plan:
    """Plan downloading remote files, patterns and (with ``recursive``) folders into ``dest``."""
    plan = Plan()
    expanded: list[tuple[str, dict]] = []
    for source in sources:
        folder, _, name = source.rstrip("/").rpartition("/")
        if has_pattern(name):
            entries = [e for e in client.ls(folder) if fnmatch.fnmatchcase(e["name"], name)]
            if not entries:
                plan.failed.append((source, "no remote file matches"))
            expanded += [(posixpath.join(folder, e["name"]) if folder else e["name"], e) for e in entries]
        else:
            try:
                expanded.append((source, client.stat(source)))
            except FTPError as error:
                plan.failed.append((source, str(error)))
    target = _target(client, [s for s, _ in expanded], dest, os.path.isdir, os.path.join)
    for source, entry in expanded:
        local = Path(target(posixpath.basename(source.rstrip("/")) or "root"))
        if entry["type"] != "dir":
            plan.jobs.append(Job(local, source, entry["size"]))
        elif not recursive:
            plan.failed.append((source, "is a folder (use -r)"))
        else:
            _walk_remote(client, source, local, plan)
    return plan


def _walk_remote(client: Client, top: str, local_top: Path, plan: Plan, limit: int = 100_000) -> None:
    pending = [(top, local_top)]
    while pending and len(plan.jobs) < limit:
        remote, local = pending.pop(0)
        plan.folders.append(str(local))
        try:
            entries = client.ls(remote)
        except FTPError as error:
            plan.failed.append((remote, str(error)))
            continue
        for entry in entries:
            child = posixpath.join(remote, entry["name"])
            if entry["type"] == "dir":
                pending.append((child, local / entry["name"]))
            else:
                plan.jobs.append(Job(local / entry["name"], child, entry["size"]))


def run_batch(client: Client, plan: Plan, upload: bool, restart: bool = False,
              progress: Callable[[Job], ProgressCallback | None] = lambda job: None) -> BatchResult:
    """Create the plan's folders, then move its files one by one.

    ``progress(job)`` returns the callback for that file.  Raises ConnectionLost
    or Unreachable only if the connection is gone (the files done so far are kept).
    """
    result = BatchResult(failed=list(plan.failed))
    for folder in plan.folders:
        try:
            if upload:
                client.mkdir(folder)
            else:
                Path(folder).mkdir(parents=True, exist_ok=True)
        except Exists:
            pass
        except OSError as error:
            result.failed.append((folder, error.strerror or str(error)))
        except FTPError as error:
            result.failed.append((folder, str(error)))
    for job in plan.jobs:
        try:
            if upload:
                done = client.put(job.local, job.remote, restart=restart, progress=progress(job),
                                  exact=True)
            else:
                done = client.get(job.remote, job.local, restart=restart, progress=progress(job),
                                  exact=True)
            result.done.append(done)
        except (ConnectionLost, Unreachable):
            raise
        except FTPError as error:
            result.failed.append((str(job.local) if upload else job.remote, str(error)))
    return result
