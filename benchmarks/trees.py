"""Folder transfers beside rsync: the ``trees`` group of ``bench.py``.

Two trees, built once per run from a fixed seed: many small files (2000 x 8 KiB; 500 with
--quick) and a mixed one (3 x 64 MiB among 1000 files of 1-64 KiB; 3 x 16 MiB among 250
with --quick).  For each tree, whole commands as a user runs them, timed from start to
exit:

* ours: ``python -m ftpclient -q -H 127.0.0.1 -p PORT put -r TREE DEST`` (then the same
  command again, nothing changed) and ``get -r DEST/TREE OUT``, against the benchmark's
  ``python -m ftpserver`` process;
* rsync: ``rsync -a TREE/ rsync://127.0.0.1:PORT/bench/DEST/TREE/`` (again unchanged) and
  ``rsync -a rsync://.../DEST/TREE/ OUT/``, against an rsync daemon started here; the same
  put and get with ``--fsync`` where rsync has it (3.2.4+), as ours fsyncs every file it
  stores.

``DEST`` is a fresh empty folder in each server's root, so both tools write the tree to
``DEST/TREE`` and the unchanged put names the same place again (``put -r TREE DEST`` with
no ``DEST`` yet would store the tree *as* ``DEST``, and the same command again would copy
it into ``DEST/TREE``, as ``cp -r`` does).

Each measure's output stays until the run ends (but for files over 1 MiB): see
:func:`_retire`.

Everything runs twice: on loopback, and through a proxy on 127.0.0.1 that holds back every
chunk by 1 ms in each direction (a 2 ms round trip, as on Wi-Fi) without limiting the
bandwidth.  Both tools go through the same proxy.
"""
from __future__ import annotations

import contextlib
import filecmp
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["DelayProxy", "RsyncDaemon", "TreeBench", "TreeSpec", "build_tree", "tree_specs"]

LOOPBACK = "127.0.0.1"
KiB, MiB = 1024, 1024**2
SEED = 11
PER_FOLDER = 100                # small files per sub-folder
DELAY = 0.001                   # seconds, each direction
COMMAND_TIMEOUT = 900           # seconds for one whole command
NETS = {"loopback": "loopback", "rtt2": "2 ms RTT"}
OPS = {"put": "put -r into an empty folder", "get": "get -r into an empty folder",
       "again": "put -r again, nothing changed"}
TOOLS = ("ours", "rsync", "rsync_fsync")


# -- the trees -----------------------------------------------------------------

@dataclass(frozen=True)
class TreeSpec:
    """``small`` files of ``small_size`` bytes (a range), spread over sub-folders of
    PER_FOLDER, and ``big`` files of ``big_size`` bytes at the top."""

    name: str                   # the tree's folder name, local and remote
    label: str
    small: int
    small_size: tuple[int, int]
    big: int = 0
    big_size: int = 0


def tree_specs(quick: bool) -> list[TreeSpec]:
    files = 500 if quick else 2000
    small, big = (250, 16 * MiB) if quick else (1000, 64 * MiB)
    return [
        TreeSpec(f"files{files}", f"{files} x 8 KiB", files, (8 * KiB, 8 * KiB)),
        TreeSpec("mixed", f"3 x {big // MiB} MiB + {small} x 1-64 KiB", small, (KiB, 64 * KiB),
                 3, big),
    ]


def build_tree(top: Path, spec: TreeSpec, seed: int = SEED) -> dict[str, int]:
    """Write the tree under ``top`` (random content from ``seed``); return its manifest."""
    rng = random.Random(f"{seed}:{spec.name}")
    for index in range(spec.small):
        folder = top / f"d{index // PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:05d}.bin").write_bytes(rng.randbytes(rng.randint(*spec.small_size)))
    top.mkdir(parents=True, exist_ok=True)
    for index in range(spec.big):
        with open(top / f"big{index}.bin", "wb") as file:
            for start in range(0, spec.big_size, MiB):
                file.write(rng.randbytes(min(MiB, spec.big_size - start)))
    return manifest(top)


def manifest(top: Path) -> dict[str, int]:
    """Relative path -> size of every file under ``top`` (folders end in ``/``)."""
    found: dict[str, int] = {}
    for folder, dirs, files in os.walk(top):
        relative = Path(folder).relative_to(top).as_posix()
        if relative != ".":
            found[relative + "/"] = 0
        for name in files:
            path = Path(folder, name)
            found[path.relative_to(top).as_posix()] = path.stat().st_size
    return found


def check_tree(what: str, copy: Path, source: Path, expected: dict[str, int],
               contents: bool) -> None:
    """Raise RuntimeError unless ``copy`` holds the same files (and bytes, if ``contents``)."""
    got = manifest(copy) if copy.is_dir() else {}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise RuntimeError(f"{what}: {len(missing)} missing (e.g. {missing[:1]}), {len(extra)} "
                           f"extra (e.g. {extra[:1]}), {len(wrong)} of another size")
    if contents:
        for name in expected:
            if not name.endswith("/") and not filecmp.cmp(source / name, copy / name, shallow=False):
                raise RuntimeError(f"{what}: {name} differs from the source")


# -- a delaying proxy ----------------------------------------------------------

class _Link:
    """One proxied connection: per direction a reader that stamps each chunk as it reads it
    and a writer that sends it ``delay`` seconds after that stamp."""

    CHUNK = 256 * KiB
    #: Bytes in flight per direction before the reader waits: far more than 1 ms of any
    #: link carries, so it never limits the rate, only a receiver that stopped reading.
    LIMIT = 64 * MiB
    IDLE = 300.0               # seconds of silence before the connection is dropped

    def __init__(self, client: socket.socket, upstream: socket.socket, delay: float) -> None:
        self.sockets = (client, upstream)
        self.delay = delay
        self.closed = threading.Event()
        self.writers_done = 0
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        for sock in self.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.IDLE)
        for source, target in ((client, upstream), (upstream, client)):
            chunks: deque[tuple[float, bytes]] = deque()
            state = {"queued": 0}
            ready = threading.Condition()
            self.threads += [
                threading.Thread(target=self._read, args=(source, chunks, state, ready), daemon=True),
                threading.Thread(target=self._write, args=(target, chunks, state, ready), daemon=True),
            ]
        for thread in self.threads:
            thread.start()

    def _read(self, source: socket.socket, chunks: deque[tuple[float, bytes]],
              state: dict[str, int], ready: threading.Condition) -> None:
        try:
            while not self.closed.is_set():
                data = source.recv(self.CHUNK)
                due = time.monotonic() + self.delay
                with ready:
                    if not ready.wait_for(lambda: state["queued"] < self.LIMIT or self.closed.is_set(),
                                          timeout=self.IDLE):
                        raise TimeoutError("the receiver stopped reading")
                    chunks.append((due, data))
                    state["queued"] += len(data)
                    ready.notify_all()
                if not data:
                    return
        except OSError:
            self.abort()

    def _write(self, target: socket.socket, chunks: deque[tuple[float, bytes]],
               state: dict[str, int], ready: threading.Condition) -> None:
        try:
            while True:
                with ready:
                    if not ready.wait_for(lambda: chunks or self.closed.is_set(), timeout=self.IDLE):
                        raise TimeoutError("no data")
                    if self.closed.is_set():
                        return
                    due, data = chunks.popleft()
                    state["queued"] -= len(data)
                    ready.notify_all()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    break
                target.sendall(data)
        except OSError:
            self.abort()
            return
        with self.lock:
            self.writers_done += 1
            both = self.writers_done == 2
        if both:
            self.abort()

    def abort(self) -> None:
        """Close both sockets (waking their threads); safe to call more than once."""
        self.closed.set()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class DelayProxy:
    """A TCP proxy on 127.0.0.1 to ``LOOPBACK:target`` delaying each direction by ``delay``."""

    MAX_CONNECTIONS = 10_000
    LIFETIME = 6 * 3600.0

    def __init__(self, target: int, delay: float = DELAY) -> None:
        self.target, self.delay = target, delay
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.links: list[_Link] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + self.LIFETIME
        for _ in range(self.MAX_CONNECTIONS):
            client = None
            while client is None and not self.stopping.is_set() and time.monotonic() < deadline:
                try:
                    client, _ = self.listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
            if client is None:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.target), timeout=10)
            except OSError:
                client.close()
                continue
            self.links = [link for link in self.links if not link.closed.is_set()]
            self.links.append(_Link(client, upstream, self.delay))

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(5)
        for link in self.links:
            link.abort()
        for link in self.links:
            for thread in link.threads:
                thread.join(5)
        self.links.clear()


def proxy_rtt(pings: int = 100) -> float:
    """Median seconds of a 1-byte ping-pong through a DelayProxy to an echo server here."""
    server = socket.create_server((LOOPBACK, 0))
    server.settimeout(10)

    def echo() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(pings):
                data = conn.recv(16)
                if not data:
                    return
                conn.sendall(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    proxy = DelayProxy(server.getsockname()[1])
    times = []
    try:
        with socket.create_connection((LOOPBACK, proxy.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(pings):
                started = time.perf_counter()
                sock.sendall(b"p")
                if not sock.recv(16):
                    break
                times.append(time.perf_counter() - started)
    finally:
        proxy.stop()
        server.close()
        thread.join(5)
    return statistics.median(times) if times else float("nan")


# -- the rsync daemon ----------------------------------------------------------

RSYNCD_CONF = """\
# rsync daemon of the benchmark: one writable module, loopback only.
pid file = {folder}/rsyncd.pid
log file = {folder}/rsyncd.log
use chroot = no
address = 127.0.0.1
{ids}
[bench]
    path = {root}
    read only = false
"""


def rsync_info() -> tuple[str | None, bool, str]:
    """rsync's version (None if there is no rsync), whether it has --fsync, and why not."""
    binary = shutil.which("rsync")
    if binary is None:
        return None, False, "no rsync on PATH (Debian/Ubuntu: apt-get install rsync)"
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
        helptext = subprocess.run([binary, "--help"], capture_output=True, text=True,
                                  timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return None, False, f"rsync does not run: {error}"
    found = re.search(r"version\s+(\S+)\s+protocol version\s+(\d+)", version)
    text = f"{found[1]} (protocol {found[2]})" if found else version.splitlines()[0].strip()
    return text, "--fsync" in helptext, ""


class RsyncDaemon:
    """``rsync --daemon --no-detach`` on 127.0.0.1 serving the module ``bench`` = ``root``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root = folder / "rsync_root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = folder / "rsyncd.conf"
        # Run as root, the daemon would write as "nobody": keep the files ours.
        ids = f"uid = {os.geteuid()}\ngid = {os.getegid()}" if os.geteuid() == 0 else ""
        self.config.write_text(RSYNCD_CONF.format(folder=folder, root=self.root, ids=ids))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._start()

    def _start(self) -> None:
        errors = []
        for attempt in range(5):     # a port picked free may be taken before rsync binds it
            self.port = free_port()
            output = self.folder / f"rsyncd_{attempt}.out"
            with open(output, "wb") as out:
                # A session of its own: stop() ends the daemon and the children it forked.
                self.process = subprocess.Popen(
                    ["rsync", "--daemon", "--no-detach", f"--config={self.config}",
                     f"--port={self.port}", f"--address={LOOPBACK}"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.05)
            self.stop()
            log = self.folder / "rsyncd.log"
            errors.append((output.read_text(errors="replace") +
                           (log.read_text(errors="replace") if log.exists() else "")).strip()[-300:])
        raise RuntimeError(f"the rsync daemon did not start: {errors[-1]}")

    def url(self, port: int | None = None) -> str:
        return f"rsync://{LOOPBACK}:{port or self.port}/bench"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _retire(tree: Path) -> None:
    """Free the space of a measured tree's large files now; its small files stay until the
    run's folder goes.

    On ext4 without a journal (as on the machines these figures come from), creating
    a file within ~30 s of deleting many costs a scan past every recently deleted inode
    (``recently_deleted`` in the inode allocator): deleting each measure's 2000 files
    at once would bill the next tool's put for it.
    """
    for folder, _, files in os.walk(tree):
        for name in files:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_size > MiB:
                    os.unlink(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


# -- the measures --------------------------------------------------------------

@dataclass
class Samples:
    values: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values and not self.error else None


class TreeBench:
    """Trees, the rsync daemon, proxies and samples of the ``trees`` group."""

    def __init__(self, tmp: Path, quick: bool, env: dict[str, str],
                 ours: Callable[[], Any]) -> None:
        """``ours()`` returns the running ftpserver (``.port``, ``.root``), started if need be."""
        self.tmp = tmp / "trees"
        self.env, self.ours = env, ours
        self.specs = tree_specs(quick)
        self.samples: dict[tuple[str, str, str, str], Samples] = {}
        self.notes: list[str] = []
        self.version, self.has_fsync, self.why_not = rsync_info()
        self.tools = [t for t in TOOLS if t == "ours" or (self.version and
                                                          (t == "rsync" or self.has_fsync))]
        if self.version is None:
            print(f"trees: the rsync rows are skipped: {self.why_not}", file=sys.stderr)
        self.daemon: RsyncDaemon | None = None
        self.proxies: list[DelayProxy] = []
        self.manifests: dict[str, dict[str, int]] = {}
        self.rtt = proxy_rtt()
        started = time.perf_counter()
        for spec in self.specs:
            self.manifests[spec.name] = build_tree(self.tmp / "src" / spec.name, spec)
        print(f"trees made in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    def round(self, run: int) -> None:
        """One sample of every measure; ours and rsync take turns going first."""
        tools = self.tools if run % 2 else self.tools[::-1]
        try:
            for net in NETS:
                for spec in self.specs:
                    for tool in tools:
                        self._measure(run, net, spec, tool)
        finally:
            self._stop_proxies()

    def _measure(self, run: int, net: str, spec: TreeSpec, tool: str) -> None:
        key = (net, spec.name, tool)
        if any(self.samples.get((*key, op), Samples()).error for op in OPS):
            return                      # failed in an earlier round
        try:
            for op, seconds in self._transfers(run, net, spec, tool):
                self.samples.setdefault((*key, op), Samples()).values.append(seconds)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            message = str(error).splitlines()[0][:160] if str(error) else repr(error)
            print(f"trees {net} {spec.name} {tool} failed: {message}", file=sys.stderr)
            for op in OPS:
                self.samples.setdefault((*key, op), Samples()).error = message

    def _transfers(self, run: int, net: str, spec: TreeSpec, tool: str):
        """Run put, get and (but with --fsync) the unchanged put; yield (op, seconds)."""
        source = self.tmp / "src" / spec.name
        dest = f"{tool}_{net}_{spec.name}_{run}"
        out = self.tmp / "out" / dest
        if tool == "ours":
            server = self.ours()
            root, port = Path(server.root), server.port
        else:
            if self.daemon is None:
                self.daemon = RsyncDaemon(self.tmp)
            root, port = self.daemon.root, self.daemon.port
        if net == "rtt2":
            self.proxies.append(DelayProxy(port))
            port = self.proxies[-1].port
        (root / dest).mkdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        stored = root / dest / spec.name
        try:
            if tool == "ours":
                base = [sys.executable, "-m", "ftpclient", "-q", "-H", LOOPBACK, "-p", str(port)]
                put = base + ["put", "-r", str(source), dest]
                get = base + ["get", "-r", f"{dest}/{spec.name}", str(out)]
            else:
                flags = ["-a"] + (["--fsync"] if tool == "rsync_fsync" else [])
                remote = f"{self.daemon.url(port)}/{dest}/{spec.name}/"
                put = ["rsync", *flags, f"{source}/", remote]
                get = ["rsync", *flags, remote, f"{out}/"]
            expected = self.manifests[spec.name]
            seconds, _ = self._run(put)
            check_tree(f"{tool} put", stored, source, expected, contents=run == 1)
            yield "put", seconds
            seconds, _ = self._run(get)
            check_tree(f"{tool} get", out, source, expected, contents=run == 1)
            yield "get", seconds
            if tool == "rsync_fsync":
                return                  # an unchanged put writes nothing to fsync
            seconds, output = self._run(put)
            sent = re.search(r"(\d+) transferred", output)
            if tool == "ours" and sent and sent[1] != "0":
                self.notes.append(f"ours sent {sent[1]} files again in an unchanged put "
                                  f"({NETS[net]}, {spec.label}, run {run})")
            yield "again", seconds
        finally:
            _retire(root / dest)
            _retire(out)

    def _run(self, command: list[str]) -> tuple[float, str]:
        """Run one whole command; return its wall time and standard output."""
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              env=self.env, cwd=self.tmp, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:4])} ... exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()[-300:]}")
        return seconds, done.stdout

    def _stop_proxies(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        self.proxies.clear()

    def stop(self) -> None:
        self._stop_proxies()
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    # -- the table --

    def render(self, runs: int) -> list[str]:
        if not self.samples:
            return []
        if self.version:
            fsync = ("rsync runs without `--fsync` (the --fsync columns add it to put and get; "
                     "ours fsyncs every file it stores, the server on put and the client on get)"
                     if self.has_fsync else
                     "rsync runs without `--fsync` (this rsync has no --fsync: 3.2.4+)")
            head = (f"Folder transfers beside rsync {self.version}: rsync daemon on 127.0.0.1, "
                    f"`rsync -a`; {fsync}.")
        else:
            head = f"Folder transfers: the rsync rows are skipped: {self.why_not}."
        lines = ["", head + " Whole commands, wall time in seconds, median (min-max) of "
                 f"{runs} runs; 2 ms RTT = through a proxy on 127.0.0.1 holding back every "
                 f"chunk 1 ms each way (a ping through it: {self.rtt * 1000:.2f} ms).", ""]
        titles = {"ours": "ours", "rsync": "rsync", "rsync_fsync": "rsync --fsync"}
        columns = [(tool, titles[tool]) for tool in TOOLS if tool in self.tools]
        header = "| folder transfer | " + " | ".join(
            title if tool == "ours" else f"{title} | ours / {title}" for tool, title in columns)
        lines += [header + " |", "|---|" + "---:|" * (2 * len(columns) - 1)]
        for net, net_label in NETS.items():
            for spec in self.specs:
                for op, op_label in OPS.items():
                    mine = self.samples.get((net, spec.name, "ours", op))
                    if mine is None:
                        continue
                    cells = [_cell(mine)]
                    for tool, _ in columns[1:]:
                        theirs = self.samples.get((net, spec.name, tool, op))
                        cells.append(_cell(theirs))
                        ratio = (mine.median / theirs.median
                                 if theirs and mine.median and theirs.median else None)
                        cells.append("-" if ratio is None else f"{ratio:.1f}")
                    lines.append(f"| {spec.label}, {net_label}: {op_label} | " + " | ".join(cells) + " |")
        lines += [f"\nNote: {note}" for note in self.notes]
        return lines


def _cell(samples: Samples | None) -> str:
    if samples is None:
        return "-"
    if samples.error:
        return f"failed: {samples.error}"
    if not samples.values:
        return "-"
    return (f"{samples.median:.2f} ({min(samples.values):.2f}-{max(samples.values):.2f})")
