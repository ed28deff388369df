#!/usr/bin/env python3
"""Throughput and scale benchmark: ftpserver/ftpclient beside pyftpdlib, in one run.

How to run, from the repository root (pyftpdlib comes with the ``bench`` extra)::

    pip install -e '.[bench]'
    python benchmarks/bench.py               # 1 GiB file, 5 runs: a few minutes on 2 cores
    python benchmarks/bench.py --quick       # 64 MiB file, 3 runs: well under a minute
    python benchmarks/bench.py --only ours,pyftpdlib --runs 3
    python benchmarks/bench.py --size 256MiB
    python benchmarks/bench.py --big         # also a 5 GiB put and get (peak RSS)
    python benchmarks/bench.py --only trees  # folder transfers beside rsync (--quick: 500 files)
    python benchmarks/bench.py --only web    # the web side beside copyparty (curl, tus, u2c)
    python benchmarks/bench.py --only blake3,commands   # issue 14's measures and targets

``python -m benchmarks.bench`` works the same.  Groups for ``--only``:
md5, raw, pyftpdlib, ours, commands, resume, threads, blake3, cli, idle, trees, web, big.

The ``web`` group (benchmarks/web.py) times a curl download and a tus upload of the main
file on the web side beside copyparty (curl, its ``u2c`` uploader, a curl PUT), with the
servers' peak RSS, and prints its own table.

With the ``blake3`` package installed (``pip install '.[fast]'``), ``ours`` and ``threads``
also run with ``--hash blake3``, and ``md5`` also times blake3 in memory.  The ``blake3``
group alone runs just those rows and the pyftpdlib figures they are compared with.

The ``commands`` group times whole commands as a user runs them, from start to exit:
``python -m ftpclient -q -H 127.0.0.1 -p PORT put FILE`` and ``get FILE OUT`` (md5, the
default, and with ``--hash blake3``), beside the same file stored and fetched by a small
ftplib script run as a process (STOR/RETR, 1 MiB blocks) against pyftpdlib, and a STOR to a
second pyftpdlib that flushes each stored file to disk before its reply, as our put does
(the ``threads`` group also runs its 100 clients against that one).  Each command
is preceded by ``sync`` and nothing else (no cache is dropped); each put is a fresh one
(the remote file is removed first, untimed) and each get writes a new file.  The tools take
turns within a round, in an order rotated every round.  ``--only blake3`` and ``--only
commands`` also run ``md5`` (the in-memory rates their targets are measured against).

The ``trees`` group (benchmarks/trees.py) times whole ``ftpclient put -r`` / ``get -r``
commands beside ``rsync -a`` against an rsync daemon, on loopback and through a proxy
adding a 2 ms round trip, and prints its own table of ratios ours / rsync.

Every server runs in its own process on 127.0.0.1 with an ephemeral port: ours is
``python -m ftpserver`` with a temporary config.yaml and root, pyftpdlib a small
script (FTPServer + DummyAuthorizer, a writable anonymous account); both log as
they do out of the box.  Clients whose memory matters run in worker processes
(``bench.py --worker KIND ...``) that print one JSON line with their time and
peak RSS (VmHWM).  The server's peak RSS is reset before each sample
(/proc/PID/clear_refs) and read after it.  Measures run round-robin (run 1 of
every measure, then run 2, ...), so a slow spell of a noisy machine hits all of
them alike.

The output is a Markdown table (median, min-max, peak RSS of server and client)
and the issue's ratios with their targets, ready to paste into the README.
Test files live in a temporary folder that is removed at the end.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

BENCH = Path(__file__).resolve()
REPO = BENCH.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.procs import (my_cpu, open_fds, proc_cpu, proc_status, reset_peak,  # noqa: E402
                              stop_process)  # (needs REPO on sys.path)
from benchmarks.trees import TreeBench  # noqa: E402
from benchmarks.web import WebBench  # noqa: E402

LOOPBACK = "127.0.0.1"
KiB, MiB, GiB = 1024, 1024**2, 1024**3
MB = 1_000_000
SMALL_SIZE = 1_000_000          # the "1 MB" files of the concurrency measures
IDLE_BATCH = 50
BIG_SIZE = 5 * GiB
FTP_BLOCK = MiB                 # ftplib storbinary/retrbinary blocksize
GROUPS = ("md5", "raw", "pyftpdlib", "ours", "commands", "resume", "threads", "blake3", "cli",
          "idle", "trees", "web", "big")
#: Slow groups run at most this many times unless --runs is given: keeps the default run short.
HEAVY_RUNS = {"cli": 3, "resume": 3, "trees": 3}
SHA256_SIZE = 256 * MiB         # sha256 is only a reference: a smaller buffer total will do
BLAKE3_MIN = 256 * MiB          # blake3 in memory hashes at least this much (it is fast)
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
CHILD_ENV.pop("FTP_HASH", None)  # the md5 commands run with the client's own default

try:
    from blake3 import blake3 as _blake3
except ImportError:             # pip install '.[fast]'
    _blake3 = None
HAS_BLAKE3 = _blake3 is not None


# -- small helpers -------------------------------------------------------------

def parse_size(text: str) -> int:
    """``"1GiB"``, ``"64MiB"``, ``"500MB"``, ``"4096"`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    number, prefix, suffix = float(match[1]), match[2].lower(), match[3].lower()
    base = 1000 if suffix == "b" and prefix else 1024
    return int(number * base ** " kmgt".index(prefix or " "))


def human_size(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size / MB:g} MB"


def raise_nofile() -> None:
    """Raise the soft limit of open files to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                        else max(soft, 65536), hard))
        except (ValueError, OSError):
            pass


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random-looking bytes fast (one random MiB, a counter per block); return md5."""
    block = bytearray(os.urandom(MiB))
    view = memoryview(block)
    digest = hashlib.md5()
    with open(path, "wb", buffering=0) as file:
        for index, start in enumerate(range(0, size, MiB)):
            block[:8] = index.to_bytes(8, "little")
            chunk = view[:min(MiB, size - start)]
            file.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def transfer_timeout(size: int) -> float:
    """A generous bound for one transfer of ``size`` bytes (5 MB/s, plus a minute)."""
    return 60 + size / (5 * MB)


def run_worker(args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run ``bench.py --worker ARGS`` and return the JSON it prints."""
    command = [sys.executable, str(BENCH), "--worker", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=CHILD_ENV)
    if done.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def my_peak() -> int:
    return proc_status(os.getpid(), "VmHWM") or 0


def run_command(command: Sequence[str], cwd: Path, timeout: float) -> dict[str, Any]:
    """Run one whole command; return its wall time from start to exit, its CPU seconds (from
    wait4) and its peak RSS (VmHWM, read every 20 ms while it runs: wait4's ru_maxrss would
    count this process's own size, which the child had until its exec)."""
    with tempfile.TemporaryFile(dir=cwd) as output:
        peak = [0]
        running = threading.Event()
        started = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=cwd, env=CHILD_ENV, stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT)

        def watch() -> None:
            time.sleep(0.02)   # past the exec
            while not running.wait(0.02):
                peak[0] = max(peak[0], proc_status(process.pid, "VmHWM") or 0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
            running.set()
        seconds = time.perf_counter() - started
        watcher.join(5)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if process.returncode != 0:
            output.seek(0)
            text = output.read().decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"{' '.join(map(str, command[1:]))} failed "
                               f"({process.returncode}): {text}")
    return {"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "hwm": peak[0] or None}


def file_digest(path: Path, hash: str) -> str:
    """A file's hex digest: a hashlib name, or blake3 (all cores: this is only a check)."""
    if hash != "blake3":
        with open(path, "rb") as file:
            return hashlib.file_digest(file, hash).hexdigest()
    if _blake3 is None:
        raise RuntimeError("the blake3 package is not installed: pip install '.[fast]'")
    digest = _blake3(max_threads=_blake3.AUTO)
    buffer = bytearray(16 * MiB)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while got := file.readinto(buffer):
            digest.update(view[:got])
    return digest.hexdigest()


# -- servers -------------------------------------------------------------------

PYFTPDLIB_SERVER = '''\
"""pyftpdlib 2.2 with a writable anonymous account, as it runs out of the box
(with "fsync" after the root: each stored file flushed to disk before its 226 reply)."""
import os, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


class Flushed:
    """A file written to by STOR; closing it (which pyftpdlib does before its reply)
    flushes it to disk first."""

    def __init__(self, file):
        self._file = file

    def __getattr__(self, name):
        return getattr(self._file, name)

    def close(self):
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._file.close()


class FlushingFS(AbstractedFS):
    def open(self, filename, mode):
        file = super().open(filename, mode)
        return file if "r" in mode else Flushed(file)


authorizer = DummyAuthorizer()
authorizer.add_anonymous(sys.argv[1], perm="elradfmwMT")
FTPHandler.authorizer = authorizer
if sys.argv[2:] == ["fsync"]:
    FTPHandler.abstracted_fs = FlushingFS
server = FTPServer(("127.0.0.1", 0), FTPHandler)
server.max_cons = 2048        # room for the 500 idle connections and their neighbours
server.max_cons_per_ip = 0
print("listening on port %d" % server.address[1], flush=True)
server.serve_forever(handle_exit=True)
'''

FTPLIB_ONE_SHOT = '''\
"""One ftplib transfer: put PORT LOCAL REMOTE | get PORT REMOTE LOCAL."""
import ftplib, sys
op, port, a, b = sys.argv[1:5]
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", int(port), timeout=60)
ftp.login()
if op == "put":
    with open(a, "rb") as f:
        ftp.storbinary("STOR " + b, f, blocksize=%d)
else:
    with open(b, "wb") as f:
        ftp.retrbinary("RETR " + a, f.write, blocksize=%d)
ftp.quit()
''' % (FTP_BLOCK, FTP_BLOCK)


@dataclass
class Server:
    """A server process on 127.0.0.1 and its root folder."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        stop_process(self.process)


def _start(name: str, command: list[str], root: Path, log: Path, pattern: str,
           timeout: float = 20) -> Server:
    """Start ``command`` with its stdout and stderr in ``log``; wait for ``pattern`` (port)."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root.parent,
                                   env=CHILD_ENV, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return Server(name, process, int(found[1]), root, log)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        process.wait(10)
    raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-800:]}")


def _log_path(tmp: Path, name: str) -> Path:
    """A fresh log file per start, so an old port line is never read again."""
    count = len(list(tmp.glob(f"{name}_server_*.log")))
    return tmp / f"{name}_server_{count + 1}.log"


def start_ours(tmp: Path, buffer_size: int | None = None) -> Server:
    root = tmp / "ours_root"
    root.mkdir(exist_ok=True)
    config = tmp / "ours_config.yaml"
    # JSON is YAML: every other key keeps the product's default.
    # Hundreds of benchmark clients come from one address: lift the per-address limit.
    config.write_text(f"root: {json.dumps(str(root))}\nanonymous: true\nmax_per_address: 1024\n"
                      f"max_connections: 1024\n"
                      + (f"buffer_size: {buffer_size}\n" if buffer_size else ""))
    command = [sys.executable, "-m", "ftpserver", "--config", str(config),
               "--host", LOOPBACK, "--port", "0"]
    return _start("ftpserver", command, root, _log_path(tmp, "ours"),
                  r"serving .* on \S+:(\d+)")


def start_pyftpdlib(tmp: Path, name: str = "pyftpdlib") -> Server:
    """pyftpdlib as it comes; as ``pyftpdlib_fsync``, flushing each stored file to disk
    before it replies (the promise our put keeps)."""
    root = tmp / f"{name}_root"
    root.mkdir(exist_ok=True)
    script = tmp / "pyftpdlib_server.py"
    script.write_text(PYFTPDLIB_SERVER)
    flags = ["fsync"] if name.endswith("_fsync") else []
    return _start(name, [sys.executable, str(script), str(root), *flags], root,
                  _log_path(tmp, name), r"listening on port (\d+)")


# -- results -------------------------------------------------------------------

@dataclass
class Result:
    """All samples of one measure."""

    label: str
    unit: str                       # "MB/s", "files/s", "s" or "MB"
    values: list[float] = field(default_factory=list)
    server_rss: int | None = None   # max over samples (bytes)
    client_rss: int | None = None
    rss_note: str = "peak"          # "peak" = VmHWM, "held" = VmRSS while connections are held
    error: str | None = None
    #: CPU seconds per unit of work (a GiB moved, or 100 files), one per sample.
    server_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)

    def add(self, value: float, server_rss: int | None = None,
            client_rss: int | None = None) -> None:
        self.values.append(value)
        if server_rss is not None:
            self.server_rss = max(self.server_rss or 0, server_rss)
        if client_rss is not None:
            self.client_rss = max(self.client_rss or 0, client_rss)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def cpu_both(self) -> float | None:
        """Median CPU seconds per unit of work, server and client together."""
        if not self.server_cpu:
            return None
        return statistics.median(s + c for s, c in zip(self.server_cpu, self.client_cpu))


#: key -> (label, unit); the table lists them in this order.
MEASURES: dict[str, tuple[str, str]] = {
    "md5": ("md5 in memory (1 MiB buffer)", "MB/s"),
    "sha256": ("sha256 in memory (1 MiB buffer)", "MB/s"),
    "blake3": ("blake3 in memory (1 MiB buffer, one thread)", "MB/s"),
    "raw": ("raw copy: sendfile -> recv_into, to a file", "MB/s"),
    "naive": ("naive md5 copy: md5 in the I/O loop, both ends", "MB/s"),
    "fsync": ("disk: write a file + fsync", "MB/s"),
    "pyftpdlib_stor": ("pyftpdlib STOR (ftplib, 1 MiB blocks, no hash)", "MB/s"),
    "pyftpdlib_retr": ("pyftpdlib RETR (ftplib, 1 MiB blocks, no hash)", "MB/s"),
    "ours_put": ("ours put (md5 verified, restart)", "MB/s"),
    "ours_get": ("ours get (md5 verified; first get after the put)", "MB/s"),
    "ours_get_again": ("ours get again (server md5 remembered)", "MB/s"),
    "ours_put_sha256": ("ours put, --hash sha256 (restart)", "MB/s"),
    "ours_get_sha256": ("ours get, --hash sha256", "MB/s"),
    "ours_put_blake3": ("ours put, --hash blake3 (restart)", "MB/s"),
    "ours_get_blake3": ("ours get, --hash blake3", "MB/s"),
    "cmd_pyftpdlib_fsync_put": ("command: ftplib script STOR to pyftpdlib, each stored file "
                                "fsynced before its reply (no hash)", "MB/s"),
    "cmd_pyftpdlib_put": ("command: ftplib script STOR to pyftpdlib (1 MiB blocks, no hash)",
                          "MB/s"),
    "cmd_pyftpdlib_get": ("command: ftplib script RETR from pyftpdlib (1 MiB blocks, no hash)",
                          "MB/s"),
    "cmd_put": ("command: `ftpclient -q put FILE` (md5)", "MB/s"),
    "cmd_get": ("command: `ftpclient -q get FILE OUT` (md5)", "MB/s"),
    "cmd_put_blake3": ("command: `ftpclient -q --hash blake3 put FILE`", "MB/s"),
    "cmd_get_blake3": ("command: `ftpclient -q --hash blake3 get FILE OUT`", "MB/s"),
    "cmd_startup": ("command: `ftpclient -q ls` (start-up, connect, one request)", "s"),
    "cmd_disk": ("disk: copy the file + fsync, in process (1 MiB blocks; beside the commands)",
                 "MB/s"),
    "threads_ours": ("ours: {n} clients (threads), put+get 1 MB each", "files/s"),
    "threads_ours_blake3": ("ours: {n} clients (threads), put+get 1 MB each, blake3", "files/s"),
    "threads_pyftpdlib": ("pyftpdlib: {n} clients (threads, ftplib), STOR+RETR 1 MB", "files/s"),
    "threads_pyftpdlib_fsync": ("pyftpdlib, each stored file fsynced before its reply: {n} "
                                "clients (threads, ftplib), STOR+RETR 1 MB", "files/s"),
    "cli_ours": ("ours: {n} x `ftpclient put` + `get` 1 MB, {jobs} at a time", "files/s"),
    "cli_pyftpdlib": ("pyftpdlib: {n} x one-shot ftplib put + get, {jobs} at a time", "files/s"),
    "idle_ours": ("ours: put+get 1 MB on a fresh connection, {idle} idle held", "s"),
    "idle_pyftpdlib": ("pyftpdlib: STOR+RETR 1 MB fresh, {idle} idle held", "s"),
    "resume_start": ("ours: resume start of a 90 % partial put (to 1st progress)", "s"),
    "resume_total": ("ours: whole resumed put (last 10 %)", "s"),
    "resume_rate": ("ours: resumed put, bytes sent / whole call", "MB/s"),
    "resume_fresh": ("ours: a fresh put of the same last 10 %", "s"),
    "resume_start_blake3": ("ours: resume start of a 90 % partial put, blake3", "s"),
    "resume_total_blake3": ("ours: whole resumed put (last 10 %), blake3", "s"),
    "resume_fresh_blake3": ("ours: a fresh put of the same last 10 %, blake3", "s"),
    "resume_rate_blake3": ("ours: resumed put, bytes sent / whole call, blake3", "MB/s"),
    "big_put": ("ours put {big} (peak RSS)", "MB/s"),
    "big_get": ("ours get {big} (peak RSS)", "MB/s"),
}


# -- the benchmark -------------------------------------------------------------

class Bench:
    """Test files, servers and results of one benchmark run."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.size: int = args.size
        self.groups: list[str] = args.groups
        self.results: dict[str, Result] = {}
        self.servers: dict[str, Server] = {}
        self.main = tmp / "main.bin"
        self.main_md5 = ""
        self.main_digests: dict[str, str] = {}   # other hashes of the main file, when needed
        self.small_dir = tmp / "small"
        self.clients = 100
        self.cli_count = 10 if args.quick else 100
        self.jobs = 2 * (os.cpu_count() or 1)
        self.idle = 500
        self.server_cpu: float | None = None
        self.trees: TreeBench | None = None
        self.web: WebBench | None = None
        self.names = {"n": self.clients, "jobs": self.jobs, "idle": self.idle,
                      "big": human_size(BIG_SIZE)}

    # -- bookkeeping --

    def result(self, key: str) -> Result:
        if key not in self.results:
            label, unit = MEASURES[key]
            names = {**self.names, "n": self.cli_count} if key.startswith("cli_") else self.names
            self.results[key] = Result(label.format(**names), unit)
        return self.results[key]

    def record(self, key: str, value: float, server_rss: int | None = None,
               client_rss: int | None = None) -> None:
        self.result(key).add(value, server_rss, client_rss)

    def record_cpu(self, key: str, server: float | None, client: float | None,
                   work: float) -> None:
        """Record CPU seconds spent on ``work`` units (GiB moved, or hundreds of files)."""
        result = self.result(key)
        if server is not None and client is not None and work > 0:
            result.server_cpu.append(server / work)
            result.client_cpu.append(client / work)

    def server(self, name: str) -> Server:
        if name not in self.servers:
            self.servers[name] = start_ours(self.tmp, self.args.buffer_size) if name == "ours" \
                else start_pyftpdlib(self.tmp, name)
        server = self.servers[name]
        if not server.alive():
            raise RuntimeError(f"the {name} server died: {server.log.read_text()[-800:]}")
        return server

    def sample_server(self, server: Server, action: Callable[[], Any]) -> tuple[Any, int | None]:
        """Run ``action`` and return its result with the server's peak RSS meanwhile.

        The server's CPU seconds meanwhile are left in ``self.server_cpu``.
        """
        reset_peak(server.pid)
        before = proc_cpu(server.pid)
        value = action()
        after = proc_cpu(server.pid)
        self.server_cpu = None if before is None or after is None else after - before
        return value, proc_status(server.pid, "VmHWM")

    # -- setup --

    def prepare(self) -> None:
        started = time.perf_counter()
        needs_main = {"raw", "pyftpdlib", "ours", "resume", "commands", "blake3", "web"} \
            & set(self.groups)
        if needs_main:
            self.main_md5 = make_file(self.main, self.size)
        if {"threads", "cli", "idle"} & set(self.groups) or (
                "blake3" in self.groups and HAS_BLAKE3):
            self.small_dir.mkdir()
            for index in range(max(self.clients, self.cli_count)):
                make_file(self.small_dir / f"small_{index:03d}.bin", SMALL_SIZE)
        print(f"test files made in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    # -- measures: each takes the run number and records one sample per result --

    def bench_md5(self, run: int) -> None:
        buffer = os.urandom(MiB)
        hashes: list[tuple[str, Callable[[], Any], int]] = [
            ("md5", hashlib.md5, self.size), ("sha256", hashlib.sha256, min(self.size, SHA256_SIZE))]
        if HAS_BLAKE3:  # as the product hashes: one thread per end (the other end hashes too)
            hashes.append(("blake3", lambda: _blake3(max_threads=1), max(self.size, BLAKE3_MIN)))
        for key, algorithm, size in hashes:
            digest = algorithm()
            blocks = max(1, size // MiB)
            started = time.perf_counter()
            for _ in range(blocks):
                digest.update(buffer)
            digest.hexdigest()
            self.record(key, blocks * MiB / MB / (time.perf_counter() - started))

    def bench_raw(self, run: int) -> None:
        for key, naive in (("raw", False), ("naive", True)):
            out = self.tmp / "raw_out.bin"
            try:
                receiver, sender = self._socket_copy(out, naive)
            finally:
                remove(out)
            self.record(key, self.size / MB / receiver["seconds"],
                        server_rss=receiver["hwm"], client_rss=sender["hwm"])
            self.record_cpu(key, receiver["cpu"], sender["cpu"], self.size / GiB)
        # Reference, once: how fast the disk takes a file that must be durable (ours fsyncs
        # every upload before renaming it into place).
        if run > 1:
            return
        out = self.tmp / "fsync_out.bin"
        try:
            started = time.perf_counter()
            with open(self.main, "rb") as source, open(out, "wb") as target:
                shutil.copyfileobj(source, target, MiB)
                target.flush()
                os.fsync(target.fileno())
            self.record("fsync", self.size / MB / (time.perf_counter() - started))
        finally:
            remove(out)

    def _socket_copy(self, out: Path, naive: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        listener = socket.create_server((LOOPBACK, 0))
        port = listener.getsockname()[1]
        timeout = transfer_timeout(self.size)
        receiver = subprocess.Popen(
            [sys.executable, str(BENCH), "--worker", "recv", str(listener.fileno()), str(out),
             str(int(naive))], pass_fds=(listener.fileno(),), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
        listener.close()
        try:
            sender = run_worker(["send", port, self.main, int(naive)], timeout)
            stdout, stderr = receiver.communicate(timeout=timeout)
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait(10)
        if receiver.returncode != 0:
            raise RuntimeError(f"receiver failed: {stderr.strip()[-800:]}")
        received = json.loads(stdout.strip().splitlines()[-1])
        if received["bytes"] != self.size:
            raise RuntimeError(f"raw copy received {received['bytes']} of {self.size} bytes")
        if naive and not received["md5"] == sender["md5"] == self.main_md5:
            raise RuntimeError("naive copy: md5 mismatch")
        return received, sender

    def bench_pyftpdlib(self, run: int) -> None:
        server = self.server("pyftpdlib")
        timeout = transfer_timeout(self.size)
        out = self.tmp / "pyftpdlib_out.bin"
        put, rss = self.sample_server(server, lambda: run_worker(
            ["ftplib-put", server.port, self.main, "main.bin"], timeout))
        self.record("pyftpdlib_stor", self.size / MB / put["seconds"], rss, put["hwm"])
        self.record_cpu("pyftpdlib_stor", self.server_cpu, put["cpu"], self.size / GiB)
        try:
            get, rss = self.sample_server(server, lambda: run_worker(
                ["ftplib-get", server.port, "main.bin", out], timeout))
            if out.stat().st_size != self.size:
                raise RuntimeError("pyftpdlib RETR: wrong size")
        finally:
            remove(out)
        self.record("pyftpdlib_retr", self.size / MB / get["seconds"], rss, get["hwm"])
        self.record_cpu("pyftpdlib_retr", self.server_cpu, get["cpu"], self.size / GiB)

    def bench_ours(self, run: int) -> None:
        self._ours("md5", "", ("ours_get", "ours_get_again"))
        self._ours("sha256", "_sha256", ("ours_get_sha256",))
        if HAS_BLAKE3:
            self._ours("blake3", "_blake3", ("ours_get_blake3",))

    def _ours(self, hash: str, suffix: str, gets: Sequence[str]) -> None:
        """A put of the main file with ``hash`` (restart), then ``gets`` of it (one per key)."""
        server = self.server("ours")
        timeout = transfer_timeout(self.size)
        out = self.tmp / "ours_out.bin"
        put, rss = self.sample_server(server, lambda: run_worker(
            ["ours-put", server.port, self.main, "main.bin", hash], timeout))
        self._check_digest("ours put", put)
        self.record(f"ours_put{suffix}", self.size / MB / put["seconds"], rss, put["hwm"])
        self.record_cpu(f"ours_put{suffix}", self.server_cpu, put["cpu"], self.size / GiB)
        for key in gets:
            try:
                get, rss = self.sample_server(server, lambda: run_worker(
                    ["ours-get", server.port, "main.bin", out, hash], timeout))
            finally:
                remove(out)
            self._check_digest("ours get", get)
            self.record(key, self.size / MB / get["seconds"], rss, get["hwm"])
            self.record_cpu(key, self.server_cpu, get["cpu"], self.size / GiB)

    def _check_digest(self, what: str, result: dict[str, Any]) -> None:
        if result["hash"] != "md5" and result["hash"] != result.get("asked", result["hash"]):
            raise RuntimeError(f"{what}: checked with {result['hash']}, not {result['asked']}")
        if result["hash"] == "md5":
            self._check_md5(what, result["digest"])
            return
        expected = self.main_digest(result["hash"])
        if result["digest"] != expected:
            raise RuntimeError(f"{what}: {result['hash']} {result['digest']} is not the file's")

    def main_digest(self, hash: str) -> str:
        """The main file's ``hash`` (sha256 or blake3), computed once."""
        if hash not in self.main_digests:
            self.main_digests[hash] = file_digest(self.main, hash)
        return self.main_digests[hash]

    def _check_md5(self, what: str, md5: str, expected: str | None = None) -> None:
        if md5 != (expected or self.main_md5):
            raise RuntimeError(f"{what}: md5 {md5} is not the file's {expected or self.main_md5}")

    def bench_threads(self, run: int) -> None:
        self._threads(run, "ours")
        if HAS_BLAKE3:
            self._threads(run, "ours", "blake3")
        self._threads(run, "pyftpdlib")
        self._threads(run, "pyftpdlib_fsync")

    def _threads(self, run: int, name: str, hash: str = "md5") -> None:
        """``self.clients`` clients at once against server ``name``, ours checking with ``hash``."""
        server = self.server(name)
        key = f"threads_{name}" + (f"_{hash}" if hash != "md5" else "")
        prefix = f"t{run}{hash[0]}_"
        worker = "threads-ours" if name == "ours" else "threads-pyftpdlib"  # either pyftpdlib
        try:
            done, rss = self.sample_server(server, lambda: run_worker(
                [worker, server.port, self.small_dir, self.clients, prefix, hash], 300))
        finally:
            self._clean(server, prefix)
        self.record(key, done["files"] / done["seconds"], rss, done["hwm"])
        self.record_cpu(key, self.server_cpu, done["cpu"], done["files"] / 100)

    def bench_blake3(self, run: int) -> None:
        """The blake3 rows (and the pyftpdlib figures they are set against) that the other
        selected groups do not already take."""
        if not HAS_BLAKE3:
            raise RuntimeError("the blake3 package is not installed: pip install '.[fast]'")
        if "pyftpdlib" not in self.groups:
            self.bench_pyftpdlib(run)
        if "ours" not in self.groups:
            self._ours("blake3", "_blake3", ("ours_get_blake3",))
        if "threads" not in self.groups:
            self._threads(run, "ours", "blake3")
            self._threads(run, "pyftpdlib")
            self._threads(run, "pyftpdlib_fsync")

    # -- whole commands, as a user runs them --

    def bench_commands(self, run: int) -> None:
        """One put and one get of the main file per tool, whole commands from start to exit,
        the tools taking turns in an order rotated every round."""
        tools = ["disk", "pyftpdlib", "pyftpdlib_fsync", "md5"] + (["blake3"] if HAS_BLAKE3 else [])
        shift = (run - 1) % len(tools)
        ours = self.server("ours")
        base = [sys.executable, "-m", "ftpclient", "-q", "-H", LOOPBACK, "-p", str(ours.port)]
        os.sync()
        done, _ = self.sample_server(ours, lambda: run_command(base + ["ls"], self.tmp, 60))
        self.record("cmd_startup", done["seconds"])
        for tool in tools[shift:] + tools[:shift]:
            self._command_pair(tool)

    def _command_pair(self, tool: str) -> None:
        if tool == "disk":   # what a get that makes its file durable cannot beat
            out = self.tmp / "disk_out.bin"
            os.sync()
            try:
                started = time.perf_counter()
                with open(self.main, "rb") as source, open(out, "wb") as target:
                    shutil.copyfileobj(source, target, MiB)
                    target.flush()
                    os.fsync(target.fileno())
                seconds = time.perf_counter() - started
            finally:
                remove(out)
            print(f"  cmd_disk: {seconds:.2f} s, {self.size / MB / seconds:.0f} MB/s",
                  file=sys.stderr)
            self.record("cmd_disk", self.size / MB / seconds)
            return
        timeout = transfer_timeout(self.size)
        name, out = self.main.name, "cmd_out.bin"   # relative to self.tmp, the commands' cwd
        if tool.startswith("pyftpdlib"):
            server = self.server(tool)
            remove(server.root / name)
            script = str(self.one_shot_script())
            put_cmd = [sys.executable, script, "put", str(server.port), name, name]
            get_cmd = [sys.executable, script, "get", str(server.port), name, out]
            keys = (f"cmd_{tool}_put", f"cmd_{tool}_get")
        else:
            server = self.server("ours")
            self._remote_rm(server, name)   # a fresh put, not "already there and identical"
            base = [sys.executable, "-m", "ftpclient", "-q", "-H", LOOPBACK, "-p", str(server.port)]
            if tool != "md5":
                base += ["--hash", tool]
            put_cmd, get_cmd = base + ["put", name], base + ["get", name, out]
            suffix = "" if tool == "md5" else f"_{tool}"
            keys = (f"cmd_put{suffix}", f"cmd_get{suffix}")
        target = self.tmp / out
        remove(target)
        try:
            pairs = ((keys[0], put_cmd, server.root / name), (keys[1], get_cmd, target))
            # The flushing pyftpdlib reads as the plain one does: only its STOR is timed.
            for key, command, written in pairs[:1] if tool == "pyftpdlib_fsync" else pairs:
                os.sync()
                done, rss = self.sample_server(
                    server, lambda: run_command(command, self.tmp, timeout))
                self._check_copy(key, written)
                print(f"  {key}: {done['seconds']:.2f} s, {self.size / MB / done['seconds']:.0f} "
                      f"MB/s, CPU {self.server_cpu or 0:.2f} + {done['cpu']:.2f} s",
                      file=sys.stderr)
                self.record(key, self.size / MB / done["seconds"], rss, done["hwm"])
                self.record_cpu(key, self.server_cpu, done["cpu"], self.size / GiB)
        finally:
            remove(target)

    def _check_copy(self, what: str, path: Path) -> None:
        """The copy has the main file's size (and, with blake3 at hand, its content)."""
        size = path.stat().st_size if path.exists() else -1
        if size != self.size:
            raise RuntimeError(f"{what}: {path.name} holds {size} of {self.size} bytes")
        if HAS_BLAKE3 and file_digest(path, "blake3") != self.main_digest("blake3"):
            raise RuntimeError(f"{what}: {path.name} is not a copy of the main file")

    @staticmethod
    def _remote_rm(server: Server, remote: str) -> None:
        from ftpclient.client import Client
        from ftpserver.errors import NotFound

        with Client(LOOPBACK, server.port, timeout=60) as client:
            try:
                client.rm(remote)
            except NotFound:
                pass

    def one_shot_script(self) -> Path:
        script = self.tmp / "ftplib_one_shot.py"
        if not script.exists():
            script.write_text(FTPLIB_ONE_SHOT)
        return script

    def bench_cli(self, run: int) -> None:
        script = self.one_shot_script()
        for name in ("ours", "pyftpdlib"):
            server = self.server(name)
            prefix = f"c{run}_"
            try:
                done, rss = self.sample_server(server, lambda: run_worker(
                    [f"cli-{name}", server.port, self.small_dir, self.cli_count, self.jobs,
                     prefix, script], 600))
            finally:
                self._clean(server, prefix)
            self.record(f"cli_{name}", done["files"] / done["seconds"], rss, done["hwm"])
            self.record_cpu(f"cli_{name}", self.server_cpu, done["cpu"], done["files"] / 100)

    def bench_trees(self, run: int) -> None:
        if self.trees is None:
            self.trees = TreeBench(self.tmp, self.args.quick, CHILD_ENV, lambda: self.server("ours"))
        self.trees.round(run)

    def bench_web(self, run: int) -> None:
        if self.web is None:
            self.web = WebBench(self.tmp, self.main, self.size, CHILD_ENV)
        self.web.round(run)

    def _clean(self, server: Server, prefix: str) -> None:
        for path in server.root.glob(f"*{prefix}*"):
            remove(path)
        remove(self.small_dir / f"out_{prefix}")

    def bench_idle(self, run: int) -> None:
        for name in ("ours", "pyftpdlib"):
            server = self.server(name)
            seconds, held = self._idle(server)
            self.record(f"idle_{name}", seconds, held)
            self.result(f"idle_{name}").rss_note = "held"

    def _idle(self, server: Server) -> tuple[float, int | None]:
        """Hold ``self.idle`` connections, time a put+get on a fresh one; return it and VmRSS."""
        base = open_fds(server.pid)
        sockets: list[socket.socket] = []
        try:
            # In batches that the server accepts before the next: a burst would overflow the
            # listen backlog, and every dropped SYN costs the client a 1 s retransmit.
            for batch in range(0, self.idle, IDLE_BATCH):
                for _ in range(min(IDLE_BATCH, self.idle - batch)):
                    sockets.append(socket.create_connection((LOOPBACK, server.port), timeout=10))
                deadline = time.monotonic() + 15
                while open_fds(server.pid) < base + len(sockets) and time.monotonic() < deadline:
                    time.sleep(0.01)
                if open_fds(server.pid) < base + len(sockets):
                    raise RuntimeError(f"{server.name} holds {open_fds(server.pid) - base} of "
                                       f"{len(sockets)} idle connections")
            local = self.small_dir / "small_000.bin"
            out = self.tmp / "idle_out.bin"
            try:
                started = time.perf_counter()
                if server.name == "ftpserver":
                    from ftpclient.client import Client
                    with Client(LOOPBACK, server.port, timeout=30) as client:
                        client.put(local, "idle_probe.bin", restart=True)
                        client.get("idle_probe.bin", out, restart=True)
                else:
                    ftplib_transfer(server.port, local, "idle_probe.bin", out)
                seconds = time.perf_counter() - started
            finally:
                remove(out)
            held = proc_status(server.pid, "VmRSS")
        finally:
            for sock in sockets:
                sock.close()
        deadline = time.monotonic() + 30
        while open_fds(server.pid) > base + 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        return seconds, held

    def bench_resume(self, run: int) -> None:
        """A put cut at 90 % and resumed, with md5 (whose state was saved) and blake3
        (which hashes the held bytes again); beside a fresh put of just the missing bytes."""
        for hash in ("md5", "blake3") if HAS_BLAKE3 else ("md5",):
            self._resume(hash, "" if hash == "md5" else f"_{hash}")

    def _resume(self, hash: str, suffix: str) -> None:
        from ftpclient.client import Client
        from ftpserver.errors import Busy, NotFound

        server = self.server("ours")
        remote = "resume.bin"
        cut = int(self.size * 0.9)

        class Cut(Exception):
            pass

        def cut_at(done: int, total: int) -> None:
            if done >= cut:
                raise Cut

        with Client(LOOPBACK, server.port, timeout=60, hash=hash) as client:
            for name in (remote, "tail.bin"):
                try:
                    client.rm(name)   # else a put might find an identical file
                except NotFound:
                    pass
            try:
                client.put(self.main, remote, restart=True, progress=cut_at)
                raise RuntimeError("the partial upload was not cut")
            except Cut:
                pass
        self._settle(server.root / f".{remote}.ftp-partial")
        os.sync()   # the bytes held were written by the attempt that was cut, not by this one

        offset = -1
        first: float | None = None

        def progress(done: int, total: int) -> None:
            nonlocal offset, first
            if offset < 0:
                offset = done            # the first call gives the resume offset
            elif first is None and done > offset:
                first = time.perf_counter()

        reset_peak(server.pid)
        with Client(LOOPBACK, server.port, timeout=60, hash=hash) as client:
            for _ in range(100):         # the cut connection's handler may still hold the file
                offset, first = -1, None
                started = time.perf_counter()
                try:
                    result = client.put(self.main, remote, progress=progress)
                    break
                except Busy:
                    time.sleep(0.1)
            else:
                raise RuntimeError("the partial upload stayed busy")
            total = time.perf_counter() - started
            client.rm(remote)
            tail = self.tmp / "tail.bin"     # the same bytes as the resume sends, sent fresh
            with open(self.main, "rb") as source, open(tail, "wb") as target:
                source.seek(result.offset)
                shutil.copyfileobj(source, target, MiB)
            os.sync()
            try:
                begun = time.perf_counter()
                client.put(tail, "tail.bin", restart=True)
                fresh = time.perf_counter() - begun
                client.rm("tail.bin")
            finally:
                remove(tail)
        print(f"  resume_{hash}: {total:.3f} s from byte {result.offset} (checked in two parts at "
              f"{result.split}), the same bytes fresh {fresh:.3f} s", file=sys.stderr)
        if hash == "md5":
            self._check_md5("resumed put", result.digest)
        if result.offset <= 0 or first is None:
            raise RuntimeError(f"the put did not resume (offset {result.offset})")
        self.record(f"resume_start{suffix}", first - started, proc_status(server.pid, "VmHWM"))
        self.record(f"resume_total{suffix}", total)
        self.record(f"resume_fresh{suffix}", fresh)
        self.record(f"resume_rate{suffix}", (self.size - result.offset) / MB / total)

    @staticmethod
    def _settle(path: Path, timeout: float = 15) -> None:
        """Wait until the partial file stops growing (the server has written what it got)."""
        deadline, last, steady = time.monotonic() + timeout, -1, 0
        while time.monotonic() < deadline and steady < 3:
            size = path.stat().st_size if path.exists() else -1
            steady = steady + 1 if size == last else 0
            last = size
            time.sleep(0.1)

    def bench_big(self) -> None:
        self.stop()                       # a fresh server: its peak is this transfer's
        server = self.server("ours")
        big = self.tmp / "big.bin"
        out = self.tmp / "big_out.bin"
        print(f"making the {human_size(BIG_SIZE)} file", file=sys.stderr)
        md5 = make_file(big, BIG_SIZE)
        timeout = transfer_timeout(BIG_SIZE)
        try:
            put, rss = self.sample_server(server, lambda: run_worker(
                ["ours-put", server.port, big, "big.bin"], timeout))
            self._check_md5("big put", put["digest"], md5)
            self.record("big_put", BIG_SIZE / MB / put["seconds"], rss, put["hwm"])
            get, rss = self.sample_server(server, lambda: run_worker(
                ["ours-get", server.port, "big.bin", out], timeout))
            self._check_md5("big get", get["digest"], md5)
            self.record("big_get", BIG_SIZE / MB / get["seconds"], rss, get["hwm"])
        finally:
            remove(big, out, server.root / "big.bin")

    # -- driver --

    def run(self) -> None:
        self.prepare()
        rounds = [g for g in self.groups if g != "big"]
        failed: set[str] = set()
        for run in range(1, self.args.runs + 1):
            # Fresh server processes each round: memory that 100 client threads or 500 idle
            # connections left behind in the last round must not count as a transfer's peak.
            self.stop()
            for group in rounds:
                if group in failed or run > self.runs_of(group):
                    continue
                started = time.perf_counter()
                try:
                    getattr(self, f"bench_{group}")(run)
                except Exception as error:  # one broken measure must not hide the others
                    failed.add(group)
                    self._fail(group, error)
                print(f"run {run}/{self.args.runs} {group}: {time.perf_counter() - started:.1f} s",
                      file=sys.stderr)
        if "big" in self.groups:
            try:
                self.bench_big()
            except Exception as error:
                self._fail("big", error)

    def runs_of(self, group: str) -> int:
        if self.args.runs_given:
            return self.args.runs
        return min(self.args.runs, HEAVY_RUNS.get(group, self.args.runs))

    def _fail(self, group: str, error: Exception) -> None:
        print(f"{group} failed: {error}", file=sys.stderr)
        if group == "blake3":   # only the rows it takes itself
            keys = [k for k in MEASURES if "blake3" in k and k != "blake3"
                    and not k.startswith("cmd_") and k.split("_")[0] not in self.groups]
            keys += [k for k in ("threads_pyftpdlib",) if "threads" not in self.groups]
            keys += [k for k in MEASURES if k.startswith("pyftpdlib_")
                     and "pyftpdlib" not in self.groups]
        else:
            prefix = "cmd" if group == "commands" else group
            keys = [k for k in MEASURES if k.split("_")[0] == prefix or k == group
                    or (group == "md5" and k in ("sha256", "blake3"))
                    or (group == "raw" and k in ("naive", "fsync"))]
        for key in keys:
            self.result(key).error = str(error).splitlines()[0][:120] if str(error) else repr(error)

    def stop(self) -> None:
        if self.trees is not None:
            self.trees.stop()
        if self.web is not None:
            self.web.stop()
        for server in self.servers.values():
            server.stop()
        self.servers.clear()


# -- the table -----------------------------------------------------------------

def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f}"
    if unit in ("files/s", "MB") or value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def fmt_rss(size: int | None, note: str = "peak") -> str:
    if size is None:
        return "-"
    return f"{size / MB:.1f} MB" + (" held" if note == "held" else "")


@dataclass(frozen=True)
class Ratio:
    """One of the issue's targets: ``top / bottom`` (or an absolute ``top``) against a bound."""

    label: str
    top: str
    bottom: str | None
    op: str                 # ">=", "<", or "info" (shown, no goal)
    target: float
    value_of: Callable[[Result], float | None] = lambda r: r.median

    def value(self, results: dict[str, Result]) -> float | None:
        top = results.get(self.top)
        if top is None or top.error or self.value_of(top) is None:
            return None
        if self.bottom is None:
            return self.value_of(top)
        bottom = results.get(self.bottom)
        if bottom is None or bottom.error or not bottom.median:
            return None
        return self.value_of(top) / bottom.median  # type: ignore[operator]


def _mb(size: int | None) -> float | None:
    return None if size is None else size / MB


def cpu_bound(result: Result) -> float | None:
    """The rate this machine's cores would allow if they did nothing but this measure's
    work on both ends (MB/s or files/s), from the median CPU seconds per unit."""
    both = result.cpu_both
    if not both or both <= 0:
        return None
    cores = os.cpu_count() or 1
    return cores * GiB / MB / both if result.unit == "MB/s" else cores * 100 / both


RATIOS = [
    Ratio("put / md5 in memory", "ours_put", "md5", ">=", 0.8),
    Ratio("put / pyftpdlib STOR (no hash)", "ours_put", "pyftpdlib_stor", ">=", 0.75),
    Ratio("put / naive md5 copy", "ours_put", "naive", ">=", 1.1),
    Ratio("put: CPU bound (cores / CPU-s per GiB, both ends) / md5 in memory", "ours_put", "md5",
          "info", 0, cpu_bound),
    Ratio("put: measured / its CPU bound (1.0 = the cores never idle)", "ours_put", None,
          "info", 0, lambda r: r.median / cpu_bound(r) if cpu_bound(r) else None),
    Ratio("get / md5 in memory", "ours_get", "md5", ">=", 0.8),
    Ratio("put with sha256 / put with md5 (what the option pays)", "ours_put_sha256", "ours_put",
          "info", 0),
    Ratio("put with sha256 / pyftpdlib STOR (no hash)", "ours_put_sha256", "pyftpdlib_stor",
          "info", 0),
    Ratio("get with sha256 / get with md5", "ours_get_sha256", "ours_get", "info", 0),
    Ratio("files/s ours / pyftpdlib, threads", "threads_ours", "threads_pyftpdlib", ">=", 1.0),
    Ratio("files/s, threads: our CPU bound / pyftpdlib measured", "threads_ours",
          "threads_pyftpdlib", "info", 0, cpu_bound),
    Ratio("files/s ours / pyftpdlib, one command each", "cli_ours", "cli_pyftpdlib", ">=", 1.0),
    Ratio("ours: server RSS with 500 idle connections (MB)", "idle_ours", None, "<", 100,
          lambda r: _mb(r.server_rss)),
    Ratio("ours: put+get beside 500 idle connections (s)", "idle_ours", None, "<", 1.0),
    Ratio("ours: resume start of a 90 % partial (s)", "resume_start", None, "<", 1.0),
    Ratio("resumed put rate / put rate (1.0 = no cost for the held prefix)", "resume_rate",
          "ours_put", "info", 1.0),
    Ratio("ours: server peak RSS, 5 GiB put/get (MB)", "big_put", None, "<", 60,
          lambda r: _mb(r.server_rss)),
    Ratio("ours: client peak RSS, 5 GiB put/get (MB)", "big_put", None, "<", 60,
          lambda r: _mb(r.client_rss)),
]


@dataclass(frozen=True)
class Goal:
    """A target of issue 14: ``top`` over ``bottom`` (a measure), over its own CPU bound
    (``bottom`` "cpu"), or ``top`` itself (``bottom`` None); with the spread of ``top``."""

    label: str
    top: str
    bottom: str | None
    op: str                 # ">=", "<=" or "info"
    target: float = 0

    def values(self, results: dict[str, Result]) -> tuple[float, float, float] | None:
        """(value, low, high): the ratio of the medians, and the lowest and highest ratio of
        one sample: of one round's pair when both are measured in every round, else of each
        sample of ``top`` over the reference's median (or the bound)."""
        top = results.get(self.top)
        if top is None or top.error or not top.values:
            return None
        if self.bottom is None:
            return top.median, min(top.values), max(top.values)  # type: ignore[return-value]
        if self.bottom == "cpu":
            bound = cpu_bound(top)
            if not bound:
                return None
            ratios = [v / bound for v in top.values]
            return top.median / bound, min(ratios), max(ratios)  # type: ignore[operator]
        bottom = results.get(self.bottom)
        if bottom is None or bottom.error or not bottom.median:
            return None
        if len(bottom.values) == len(top.values):
            ratios = [t / b for t, b in zip(top.values, bottom.values)]
        else:
            ratios = [t / bottom.median for t in top.values]
        return top.median / bottom.median, min(ratios), max(ratios)  # type: ignore[operator]


GOALS = [
    Goal("put --hash blake3 / pyftpdlib STOR, whole commands", "cmd_put_blake3",
         "cmd_pyftpdlib_put", ">=", 1.0),
    Goal("get --hash blake3 / pyftpdlib RETR, whole commands", "cmd_get_blake3",
         "cmd_pyftpdlib_get", ">=", 1.0),
    Goal("md5 put, whole command / its CPU bound", "cmd_put", "cpu", ">=", 0.9),
    Goal("md5 put, in process / its CPU bound", "ours_put", "cpu", "info"),
    Goal("md5 get, whole command / md5 in memory", "cmd_get", "md5", ">=", 0.8),
    Goal("md5 get, in process / md5 in memory", "ours_get", "md5", "info"),
    Goal("{n} clients (threads), blake3 / pyftpdlib, files/s", "threads_ours_blake3",
         "threads_pyftpdlib", ">=", 0.8),
    Goal("{n} clients (threads), blake3 / pyftpdlib + fsync (the same promise), files/s",
         "threads_ours_blake3", "threads_pyftpdlib_fsync", "info"),
    Goal("blake3: resume start of a 90 % partial (s)", "resume_start_blake3", None, "<=", 1.0),
    Goal("blake3: whole resumed put of the last 10 % / those bytes sent fresh",
         "resume_total_blake3", "resume_fresh_blake3", "<=", 1.5),
    Goal("md5: whole resumed put of the last 10 % / those bytes sent fresh",
         "resume_total", "resume_fresh", "info"),
    Goal("blake3 in memory (1 MiB buffers, one thread), MB/s", "blake3", None, "info"),
    Goal("get --hash blake3, whole command / disk copy + fsync", "cmd_get_blake3", "cmd_disk",
         "info"),
    Goal("pyftpdlib RETR, whole command (no fsync) / disk copy + fsync", "cmd_pyftpdlib_get",
         "cmd_disk", "info"),
    Goal("put --hash blake3 / pyftpdlib STOR + fsync (the same promise), whole commands",
         "cmd_put_blake3", "cmd_pyftpdlib_fsync_put", "info"),
    Goal("pyftpdlib STOR + fsync / pyftpdlib STOR, whole commands", "cmd_pyftpdlib_fsync_put",
         "cmd_pyftpdlib_put", "info"),
    Goal("put md5 / pyftpdlib STOR, whole commands", "cmd_put", "cmd_pyftpdlib_put", "info"),
    Goal("get md5 / pyftpdlib RETR, whole commands", "cmd_get", "cmd_pyftpdlib_get", "info"),
    Goal("put --hash blake3 / pyftpdlib STOR, in process", "ours_put_blake3", "pyftpdlib_stor",
         "info"),
    Goal("get --hash blake3 / pyftpdlib RETR, in process", "ours_get_blake3", "pyftpdlib_retr",
         "info"),
    Goal("md5 get: whole command / in process", "cmd_get", "ours_get", "info"),
    Goal("blake3 get: whole command / in process", "cmd_get_blake3", "ours_get_blake3", "info"),
    Goal("pyftpdlib RETR: whole command / in process", "cmd_pyftpdlib_get", "pyftpdlib_retr",
         "info"),
    Goal("blake3 put: whole command / in process", "cmd_put_blake3", "ours_put_blake3", "info"),
    Goal("pyftpdlib STOR: whole command / in process", "cmd_pyftpdlib_put", "pyftpdlib_stor",
         "info"),
]


def _goal_table(results: dict[str, Result], names: dict[str, Any]) -> list[str]:
    lines = ["", "| issue 14 target | value | min-max | goal | met |", "|---|---:|---:|---:|---|"]
    for goal in GOALS:
        if goal.top not in results or (goal.op == "info" and goal.bottom not in (None, "cpu")
                                        and goal.bottom not in results):
            continue
        found = goal.values(results)
        label = goal.label.format(**names)
        if found is None:
            lines.append(f"| {label} | - | - | {goal.op} {goal.target:g} | n/a |"
                         if goal.op != "info" else f"| {label} | - | - | - | info |")
            continue
        value, low, high = found
        shown = [f"{v:.0f}" if v >= 100 else f"{v:.2f}" for v in (value, low, high)]
        if goal.op == "info":
            lines.append(f"| {label} | {shown[0]} | {shown[1]}-{shown[2]} | - | info |")
        else:
            met = "yes" if (value >= goal.target if goal.op == ">=" else value <= goal.target) \
                else "NO"
            lines.append(f"| {label} | {shown[0]} | {shown[1]}-{shown[2]} | "
                         f"{goal.op} {goal.target:g} | {met} |")
    return lines if len(lines) > 3 else []


def _big_rss(results: dict[str, Result]) -> None:
    """Fold the get's peaks into the put's, so the 5 GiB RSS targets cover both."""
    put, get = results.get("big_put"), results.get("big_get")
    if put and get:
        for attr in ("server_rss", "client_rss"):
            values = [v for v in (getattr(put, attr), getattr(get, attr)) if v is not None]
            setattr(put, attr, max(values) if values else None)


def _cpu_table(results: dict[str, Result]) -> list[str]:
    lines = ["", "| CPU per unit of work (medians) | server | client | both | unit | "
                 f"bound on {os.cpu_count()} cores |",
             "|---|---:|---:|---:|---|---:|"]
    for key in MEASURES:
        result = results.get(key)
        if result is None or not result.server_cpu:
            continue
        server, client = statistics.median(result.server_cpu), statistics.median(result.client_cpu)
        unit = "CPU-s per GiB" if result.unit == "MB/s" else "CPU-s per 100 files"
        lines.append(f"| {result.label} | {server:.2f} | {client:.2f} | {result.cpu_both:.2f} | {unit} | "
                     f"{fmt_value(cpu_bound(result), result.unit)} {result.unit} |")
    return lines if len(lines) > 2 else []


def render(bench: Bench) -> str:
    args, results = bench.args, dict(bench.results)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"ftpserver benchmark, {now}: Python {platform.python_version()}, "
               f"{os.cpu_count()} cores, {platform.system()} {platform.release()} "
               f"({platform.machine()})")
    trees = bench.trees.render(bench.runs_of("trees")) if bench.trees else []
    trees += bench.web.render(bench.runs_of("web")) if bench.web else []
    if not results:
        return "\n".join([machine] + trees)
    lines = [
        f"{machine}; main file {human_size(bench.size)}, {args.runs} runs, loopback; "
        + (f"our server's buffer_size {human_size(args.buffer_size)}; " if args.buffer_size else "")
        + "MB = 10^6 bytes",
        "",
        "| measure | median | min-max | unit | server RSS | client RSS |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for key in MEASURES:
        result = results.get(key)
        if result is None:
            continue
        if result.error and not result.values:
            lines.append(f"| {result.label} | failed: {result.error} | | | | |")
            continue
        spread = (f"{fmt_value(min(result.values), result.unit)}-"
                  f"{fmt_value(max(result.values), result.unit)}")
        count = len(result.values)
        label = result.label + (f" ({count} run{'s' if count != 1 else ''})"
                                if count != args.runs else "")
        lines.append(f"| {label} | {fmt_value(result.median, result.unit)} | {spread} | "
                     f"{result.unit} | {fmt_rss(result.server_rss, result.rss_note)} | "
                     f"{fmt_rss(result.client_rss)} |")
    lines += _cpu_table(results)
    _big_rss(results)
    targets = ["", "| target | value | goal | met |", "|---|---:|---:|---|"]
    for ratio in RATIOS:
        if ratio.top not in results or (ratio.bottom and ratio.bottom not in results):
            continue
        value = ratio.value(results)
        shown = "-" if value is None else f"{value:.3f}" if value < 0.1 else f"{value:.2f}"
        if ratio.op == "info":
            targets.append(f"| {ratio.label} | {shown} | - | info |")
            continue
        met = "n/a" if value is None else (
            "yes" if (value >= ratio.target if ratio.op == ">=" else value < ratio.target) else "NO")
        targets.append(f"| {ratio.label} | {shown} | {ratio.op} {ratio.target:g} | {met} |")
    lines += targets if len(targets) > 3 else []
    lines += _goal_table(results, bench.names)
    lines += [
        "",
        "RSS is the peak (VmHWM) during the samples, reset before each one; 'held' is VmRSS "
        "while the idle connections are open. For the raw copies 'server' is the receiver "
        "and 'client' the sender. files/s counts each put and each get as one file. "
        "CPU is user + system time of the server process and of the client process(es) "
        "during the samples; 'bound' is the rate if every core did only that work. "
        "Rates are computed from the medians; all files sit in the page cache.",
    ]
    if any(key.startswith("cmd_") for key in results):
        lines.append(
            "\n'command' rows time whole commands from start to exit (interpreter start-up, "
            "connect and the final flush and rename included), each after a `sync`, the tools "
            "taking turns within a round; their client CPU and RSS are the command process's "
            "own. In the issue 14 table min-max is the lowest and highest ratio of one round's "
            "pair where both sides are measured every round, else of each sample over the "
            "reference's median (or the CPU bound).")
    return "\n".join(lines + trees)


# -- workers (run in their own processes) --------------------------------------

def ftplib_transfer(port: int, local: Path, remote: str, out: Path) -> None:
    """STOR ``local`` as ``remote`` and RETR it into ``out``, on one ftplib session."""
    import ftplib

    ftp = ftplib.FTP()
    ftp.connect(LOOPBACK, port, timeout=60)
    try:
        ftp.login()
        with open(local, "rb") as source:
            ftp.storbinary(f"STOR {remote}", source, blocksize=FTP_BLOCK)
        with open(out, "wb") as target:
            ftp.retrbinary(f"RETR {remote}", target.write, blocksize=FTP_BLOCK)
        ftp.quit()
    finally:
        ftp.close()


def worker_recv(fd: str, out: str, naive: str) -> dict[str, Any]:
    listener = socket.socket(fileno=int(fd))
    listener.settimeout(60)
    conn, _ = listener.accept()
    cpu_started = my_cpu()
    started = time.perf_counter()
    conn.settimeout(60)
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    digest = hashlib.md5() if naive == "1" else None
    received = 0
    with conn, open(out, "wb", buffering=0) as file:
        while True:
            got = conn.recv_into(buffer)
            if not got:
                break
            if digest:
                digest.update(view[:got])
            file.write(view[:got])
            received += got
    seconds = time.perf_counter() - started
    cpu = my_cpu() - cpu_started
    return {"seconds": seconds, "bytes": received, "md5": digest and digest.hexdigest(),
            "cpu": cpu}


def worker_send(port: str, path: str, naive: str) -> dict[str, Any]:
    digest = None
    with socket.create_connection((LOOPBACK, int(port)), timeout=60) as sock, \
            open(path, "rb", buffering=0) as file:
        cpu_started = my_cpu()
        started = time.perf_counter()
        if naive == "1":
            digest = hashlib.md5()
            buffer = bytearray(MiB)
            view = memoryview(buffer)
            while got := file.readinto(buffer):
                digest.update(view[:got])
                sock.sendall(view[:got])
        else:
            sock.sendfile(file)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)   # the receiver closes once it has written everything
        seconds = time.perf_counter() - started
        cpu = my_cpu() - cpu_started
    return {"seconds": seconds, "md5": digest and digest.hexdigest(), "cpu": cpu}


def worker_ftplib(op: str, port: str, source: str, target: str) -> dict[str, Any]:
    import ftplib

    ftp = ftplib.FTP()
    ftp.connect(LOOPBACK, int(port), timeout=120)
    ftp.login()
    cpu_started = my_cpu()
    started = time.perf_counter()
    if op == "put":
        with open(source, "rb") as file:
            ftp.storbinary(f"STOR {target}", file, blocksize=FTP_BLOCK)
    else:
        with open(target, "wb") as file:
            ftp.retrbinary(f"RETR {source}", file.write, blocksize=FTP_BLOCK)
    seconds = time.perf_counter() - started
    cpu = my_cpu() - cpu_started
    ftp.quit()
    return {"seconds": seconds, "cpu": cpu}


def worker_ours(op: str, port: str, source: str, target: str, hash: str = "md5") -> dict[str, Any]:
    from ftpclient.client import Client

    with Client(LOOPBACK, int(port), timeout=120, hash=hash) as client:
        cpu_started = my_cpu()
        started = time.perf_counter()
        if op == "put":
            result = client.put(source, target, restart=True)
        else:
            result = client.get(source, target, restart=True)
        seconds = time.perf_counter() - started
        cpu = my_cpu() - cpu_started
    return {"seconds": seconds, "digest": result.digest,
            "hash": result.hash, "asked": hash, "cpu": cpu}


def _small_files(directory: str, count: int) -> list[Path]:
    files = sorted(Path(directory).glob("small_*.bin"))[:count]
    if len(files) < count:
        raise RuntimeError(f"only {len(files)} small files")
    return files


def worker_threads(kind: str, port: str, directory: str, count: str, prefix: str,
                   hash: str = "md5") -> dict[str, Any]:
    """``count`` clients at once, threads of this process: each a put and a get of its file
    (ours checking with ``hash``)."""
    files = _small_files(directory, int(count))
    out = Path(directory) / f"out_{prefix}"
    out.mkdir()
    barrier = threading.Barrier(len(files) + 1, timeout=60)
    errors: list[str] = []

    def one(index: int, local: Path) -> None:
        remote = f"{prefix}{index:03d}.bin"
        try:
            barrier.wait()
            if kind == "ours":
                from ftpclient.client import Client
                with Client(LOOPBACK, int(port), timeout=60, hash=hash) as client:
                    put = client.put(local, remote)
                    get = client.get(remote, out / remote)
                if put.hash != hash or get.hash != hash:
                    raise RuntimeError(f"checked with {put.hash}/{get.hash}, not {hash}")
            else:
                ftplib_transfer(int(port), local, remote, out / remote)
        except BaseException as error:
            errors.append(repr(error))

    if kind == "ours":
        import ftpclient.client  # noqa: F401  (imported before the clock starts)
    threads = [threading.Thread(target=one, args=(i, f), daemon=True) for i, f in enumerate(files)]
    for thread in threads:
        thread.start()
    barrier.wait()
    cpu_started = my_cpu()
    started = time.perf_counter()
    deadline = time.monotonic() + 240
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    seconds = time.perf_counter() - started
    cpu = my_cpu() - cpu_started
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError("clients still running after 240 s")
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed, e.g. {errors[0]}")
    return {"seconds": seconds, "files": 2 * len(files), "cpu": cpu}


def worker_cli(kind: str, port: str, directory: str, count: str, jobs: str, prefix: str,
               script: str) -> dict[str, Any]:
    """``count`` put+get pairs, one process per transfer, ``jobs`` pairs in flight."""
    files = _small_files(directory, int(count))
    out = Path(directory) / f"out_{prefix}"
    out.mkdir()

    def one(index: int) -> None:
        local, remote = files[index], f"{prefix}{index:03d}.bin"
        if kind == "ours":
            base = [sys.executable, "-m", "ftpclient", "-H", LOOPBACK, "-p", port, "-q"]
            commands = [base + ["put", str(local), remote], base + ["get", remote, str(out / remote)]]
        else:
            base = [sys.executable, script]
            commands = [base + ["put", port, str(local), remote],
                        base + ["get", port, remote, str(out / remote)]]
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                  cwd=out, env=CHILD_ENV)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command[1:4])}... failed: {done.stderr.strip()[-300:]}")

    cpu_started = my_cpu(resource.RUSAGE_CHILDREN)

    started = time.perf_counter()
    with ThreadPoolExecutor(int(jobs)) as pool:
        list(pool.map(one, range(len(files))))
    seconds = time.perf_counter() - started
    cpu = my_cpu(resource.RUSAGE_CHILDREN) - cpu_started  # the client processes, start-up included
    # ru_maxrss of waited-for children: the largest of the client processes (KiB on Linux).
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": seconds, "files": 2 * len(files), "hwm": child_peak, "cpu": cpu}


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "recv": worker_recv,
    "send": worker_send,
    "ftplib-put": lambda *a: worker_ftplib("put", *a),
    "ftplib-get": lambda *a: worker_ftplib("get", *a),
    "ours-put": lambda *a: worker_ours("put", *a),
    "ours-get": lambda *a: worker_ours("get", *a),
    "threads-ours": lambda *a: worker_threads("ours", *a),
    "threads-pyftpdlib": lambda *a: worker_threads("pyftpdlib", *a),
    "cli-ours": lambda *a: worker_cli("ours", *a),
    "cli-pyftpdlib": lambda *a: worker_cli("pyftpdlib", *a),
}


def run_worker_mode(argv: Sequence[str]) -> int:
    kind, *rest = argv
    result = WORKERS[kind](*rest)
    result.setdefault("hwm", my_peak())
    print(json.dumps(result), flush=True)
    return 0


# -- main ----------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark ftpserver/ftpclient beside pyftpdlib; prints one Markdown table.")
    parser.add_argument("--quick", action="store_true",
                        help="64 MiB file, 3 runs, 10 one-command transfers, trees of 500 files")
    parser.add_argument("--size", type=parse_size, help="main file size (default 1GiB, 64MiB quick)")
    parser.add_argument("--runs", type=int,
                        help="samples per measure (default 5, 3 quick; without --runs the slow "
                             f"groups {', '.join(HEAVY_RUNS)} take at most "
                             f"{max(HEAVY_RUNS.values())})")
    parser.add_argument("--only", metavar="NAME,...",
                        help=f"run only these groups: {', '.join(GROUPS)}")
    parser.add_argument("--big", action="store_true",
                        help=f"also a {human_size(BIG_SIZE)} put and get (peak RSS)")
    parser.add_argument("--buffer-size", type=parse_size, metavar="SIZE",
                        help="our server's buffer_size (default: the product's, 64 KiB)")
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    raise_nofile()
    if argv[:1] == ["--worker"]:
        return run_worker_mode(argv[1:])
    args = _parser().parse_args(argv)
    args.size = args.size or (64 * MiB if args.quick else GiB)
    args.runs_given = args.runs is not None
    args.runs = max(1, args.runs or (3 if args.quick else 5))
    if args.only:
        args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
        unknown = set(args.groups) - set(GROUPS)
        if unknown:
            _parser().error(f"unknown group(s) {', '.join(sorted(unknown))}; "
                            f"choose from {', '.join(GROUPS)}")
        if args.big and "big" not in args.groups:
            args.groups.append("big")
        if {"blake3", "commands"} & set(args.groups) and "md5" not in args.groups:
            args.groups.insert(0, "md5")   # the in-memory rates their targets are set against
    else:
        args.groups = [g for g in GROUPS if g != "big" or args.big]
    # SIGTERM unwinds like Ctrl-C, so the servers are stopped and the files removed.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="ftpbench-"))
    # The client's upload checkpoints stay with the benchmark's files.
    os.environ["XDG_CACHE_HOME"] = CHILD_ENV["XDG_CACHE_HOME"] = str(tmp / "cache")
    # Children run from compiled bytecode, as an installed package does, even where the
    # environment says not to write it: compiled once, into the benchmark's own folder.
    CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "ftpserver"),
                    str(REPO / "ftpclient")], env=CHILD_ENV, check=False)
    bench = Bench(args, tmp)
    try:
        bench.run()
    except KeyboardInterrupt:
        print("interrupted: the table holds the samples taken so far", file=sys.stderr)
    finally:
        bench.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(bench))
    print(f"\n(benchmark took {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
