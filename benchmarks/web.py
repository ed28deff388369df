"""The web side beside copyparty: the ``web`` group of ``bench.py``.

One file (the benchmark's main file: 1 GiB, 64 MiB with --quick), hard-linked into the
root of each server, so both serve the very same bytes from the page cache.  Each round
starts fresh servers on 127.0.0.1 and takes one sample of every measure; ours and
copyparty take turns going first.  Every sample is a whole command, timed from start
to exit:

* download: ``curl -s -o OUT URL`` from ours (``python -m ftpserver`` with a config
  holding ``http_port: 0``; the port comes from its "web side on http://..." line) and
  from copyparty (``copyparty -i 127.0.0.1 -p PORT -v DIR::rw``);
* upload: tuspy to our ``/.tus/`` (64 MiB chunks, run as ``python benchmarks/web.py
  tus ...``) beside copyparty's own uploader ``u2c`` (its defaults) and, for reference,
  ``curl -s -T FILE URL`` (a PUT) to copyparty.

Each server's peak RSS (VmHWM) is reset before a sample and read after it; the table
shows the largest over the samples beside the RSS the server had before the first one.
Sizes are checked on every sample and md5 on the first round.  copyparty or curl
missing: their rows are skipped with one line saying so.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.procs import proc_status, reset_peak, stop_process

LOOPBACK = "127.0.0.1"
MiB, MB = 1024**2, 1_000_000
TUS_CHUNK = 64 * MiB
START_TIMEOUT = 30              # seconds for a server to answer

#: key -> (label, server); the table lists them in this order.
MEASURES = {
    "get_ours": ("download: curl from ours", "ours"),
    "get_copyparty": ("download: curl from copyparty", "copyparty"),
    "up_ours": ("upload: tuspy to ours /.tus/ (64 MiB chunks)", "ours"),
    "up_u2c": ("upload: u2c to copyparty", "copyparty"),
    "up_put": ("upload: curl PUT to copyparty (reference)", "copyparty"),
}
#: (label, ours, theirs): speed ours / theirs, goal >= 1 unless marked info.
RATIOS = [
    ("download speed ours / copyparty (curl)", "get_ours", "get_copyparty", True),
    ("upload speed ours (tuspy) / copyparty (u2c)", "up_ours", "up_u2c", True),
    ("upload speed ours (tuspy) / copyparty (curl PUT)", "up_ours", "up_put", False),
]


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while block := file.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def copyparty_commands() -> tuple[list[str], list[str]] | None:
    """(server, u2c) command prefixes, or None without copyparty."""
    if shutil.which("copyparty"):
        server = [shutil.which("copyparty")]
    elif importlib.util.find_spec("copyparty"):
        server = [sys.executable, "-m", "copyparty"]
    else:
        return None
    u2c = [shutil.which("u2c")] if shutil.which("u2c") else [sys.executable, "-m", "copyparty.u2c"]
    return server, u2c  # type: ignore[return-value]


def copyparty_version(server: list[str]) -> str:
    try:
        done = subprocess.run(server + ["--version"], capture_output=True, text=True, timeout=30)
        found = re.search(r"copyparty v(\S+)", done.stdout + done.stderr)
        return found[1] if found else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


@dataclass
class WebServer:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} died: {self.log.read_text(errors='replace')[-400:]}")

    def stop(self) -> None:
        stop_process(self.process)


def _spawn(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL)


def _wait(process: subprocess.Popen[bytes], log: Path, ready: Callable[[], int | None],
          name: str) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        port = ready()
        if port:
            return port
        if process.poll() is not None:
            break
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        process.wait(10)
    raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-600:]}")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    peak: int | None = None         # largest server VmHWM over the samples
    error: str | None = None


class WebBench:
    """Servers, files and samples of the ``web`` group."""

    def __init__(self, tmp: Path, main: Path, size: int, env: dict[str, str]) -> None:
        self.tmp, self.main, self.size, self.env = tmp / "web", main, size, env
        self.tmp.mkdir(exist_ok=True)
        self.md5: str | None = None
        self.samples: dict[str, Samples] = {}
        self.before: dict[str, int | None] = {}      # server VmRSS before its first sample
        self.servers: dict[str, WebServer] = {}
        self.notes: list[str] = []
        self.starts = 0
        self.curl = shutil.which("curl")
        self.copyparty = copyparty_commands()
        self.version = copyparty_version(self.copyparty[0]) if self.copyparty else None
        self.tuspy = importlib.util.find_spec("tusclient") is not None
        if not self.copyparty:
            self.notes.append("copyparty rows skipped: copyparty is not installed "
                              "(pip install copyparty, or the bench extra)")
        if not self.curl:
            self.notes.append("curl rows skipped: curl is not on PATH")
        if not self.tuspy:
            self.notes.append("tuspy row skipped: tuspy is not installed (the bench extra)")
        for note in self.notes:
            print(f"web: {note}", file=sys.stderr)

    # -- servers --

    def _fresh(self, name: str) -> Path:
        self.starts += 1
        root = self.tmp / f"{name}_root_{self.starts}"
        (root / "up").mkdir(parents=True)
        os.link(self.main, root / "main.bin")
        return root

    def start_ours(self) -> WebServer:
        root = self._fresh("ours")
        config = self.tmp / f"ours_config_{self.starts}.yaml"
        config.write_text(f"root: {json.dumps(str(root))}\nanonymous: true\nhttp_port: 0\n")
        log = self.tmp / f"ours_{self.starts}.log"
        process = _spawn([sys.executable, "-m", "ftpserver", "--config", str(config),
                          "--host", LOOPBACK, "--port", "0"], log, self.env, self.tmp)

        def ready() -> int | None:
            found = re.search(r"web side on https?://[^/\s]+:(\d+)/", log.read_text(errors="replace"))
            return int(found[1]) if found and _answers(int(found[1])) else None

        return WebServer("ours", process, _wait(process, log, ready, "ftpserver"), root, log)

    def start_copyparty(self) -> WebServer:
        assert self.copyparty
        root = self._fresh("copyparty")
        port = _free_port()
        log = self.tmp / f"copyparty_{self.starts}.log"
        process = _spawn(self.copyparty[0] + ["-i", LOOPBACK, "-p", str(port), "-v", f"{root}::rw"],
                         log, {**self.env, "XDG_CONFIG_HOME": str(self.tmp / "cpconfig")}, self.tmp)
        return WebServer("copyparty", process,
                         _wait(process, log, lambda: port if _answers(port) else None, "copyparty"),
                         root, log)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)
        self.servers.clear()

    # -- one round --

    def round(self, run: int) -> None:
        """Fresh servers, then one sample of each measure; ours and copyparty alternate."""
        self.stop()
        names = ["ours"] + (["copyparty"] if self.copyparty else [])
        for name in names:
            try:
                self.servers[name] = self.start_ours() if name == "ours" else self.start_copyparty()
            except (RuntimeError, OSError) as error:
                self._fail([k for k, (_, s) in MEASURES.items() if s == name], error)
        if self.md5 is None:
            self.md5 = _md5(self.main)
        order = names if run % 2 else names[::-1]
        for name in order:
            for key in ("get_ours",) if name == "ours" else ("get_copyparty",):
                self._sample(run, key)
        for name in order:
            for key in ("up_ours",) if name == "ours" else ("up_u2c", "up_put"):
                self._sample(run, key)

    def _command(self, key: str, server: WebServer) -> tuple[list[str] | None, Path]:
        """The command of one sample and the file it should leave behind."""
        out = self.tmp / "download.bin"
        if key.startswith("get_"):
            return ([self.curl, "-s", "-o", str(out), f"{server.url}/main.bin"]
                    if self.curl else None), out
        if key == "up_ours":
            return ([sys.executable, __file__, "tus", f"{server.url}/.tus/", str(self.main),
                     "up/tus.bin", str(TUS_CHUNK)] if self.tuspy else None), server.root / "up/tus.bin"
        if key == "up_u2c":
            assert self.copyparty
            return (self.copyparty[1] + ["-ns", f"{server.url}/up/", str(self.main)],
                    server.root / "up" / self.main.name)
        return ([self.curl, "-s", "-o", os.devnull, "-T", str(self.main), f"{server.url}/up/put.bin"]
                if self.curl else None), server.root / "up/put.bin"

    def _sample(self, run: int, key: str) -> None:
        samples = self.samples.setdefault(key, Samples())
        server = self.servers.get(MEASURES[key][1])
        if samples.error or server is None:
            return
        command, result = self._command(key, server)
        if command is None:
            del self.samples[key]
            return
        try:
            server.check()
            self.before.setdefault(key, proc_status(server.process.pid, "VmRSS"))
            reset_peak(server.process.pid)
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=self.env,
                                  cwd=self.tmp, stdin=subprocess.DEVNULL,
                                  timeout=max(120, self.size / (20 * MB)))
            seconds = time.perf_counter() - started
            peak = proc_status(server.process.pid, "VmHWM")
            server.check()
            if done.returncode != 0:
                raise RuntimeError(f"{Path(command[0]).name} exited {done.returncode}: "
                                   f"{(done.stderr or done.stdout).strip()[-300:]}")
            got = result.stat().st_size if result.is_file() and not result.is_symlink() else None
            if got != self.size:
                raise RuntimeError(f"{result.name}: {got} bytes, not {self.size}")
            if run == 1 and _md5(result) != self.md5:
                raise RuntimeError(f"{result.name}: wrong md5")
            samples.seconds.append(seconds)
            if peak is not None:
                samples.peak = max(samples.peak or 0, peak)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            self._fail([key], error)
        finally:
            if result.exists() or result.is_symlink():
                result.unlink()

    def _fail(self, keys: list[str], error: Exception) -> None:
        message = str(error).splitlines()[0][:160] if str(error) else repr(error)
        for key in keys:
            print(f"web {key} failed: {message}", file=sys.stderr)
            self.samples.setdefault(key, Samples()).error = message

    # -- the table --

    def render(self, runs: int) -> list[str]:
        if not self.samples and not self.notes:
            return []
        size_mb = self.size / MB
        lines = ["", f"The web side beside copyparty {self.version or '(not installed)'}: one "
                 f"{self.size // MiB} MiB file, whole commands on 127.0.0.1, wall time in "
                 f"seconds, median (min-max) of {runs} runs; MB/s from the median; server RSS: "
                 "before the first sample -> peak (VmHWM) during the samples.", "",
                 "| web measure | seconds | MB/s | server RSS |", "|---|---:|---:|---:|"]
        for key, (label, _) in MEASURES.items():
            samples = self.samples.get(key)
            if samples is None:
                continue
            if samples.error and not samples.seconds:
                lines.append(f"| {label} | failed: {samples.error} | | |")
                continue
            median = statistics.median(samples.seconds)
            before, peak = self.before.get(key), samples.peak
            rss = (f"{before / MB:.0f} -> {peak / MB:.0f} MB" if before and peak else "-")
            count = len(samples.seconds)
            lines.append(f"| {label}{f' ({count} runs)' if count != runs else ''} | "
                         f"{median:.2f} ({min(samples.seconds):.2f}-{max(samples.seconds):.2f}) | "
                         f"{size_mb / median:.0f} | {rss} |")
        targets = []
        for label, mine, theirs, goal in RATIOS:
            a, b = self.samples.get(mine), self.samples.get(theirs)
            if not a or not b or not a.seconds or not b.seconds or a.error or b.error:
                continue
            ratio = statistics.median(b.seconds) / statistics.median(a.seconds)
            met = ("yes" if ratio >= 1 else "NO") if goal else "info"
            targets.append(f"| {label} | {ratio:.2f} | {'>= 1' if goal else '-'} | {met} |")
        if targets:
            lines += ["", "| web target | value | goal | met |", "|---|---:|---:|---|", *targets]
        lines += [f"\nNote: {note}" for note in self.notes]
        return lines


# -- the tus client, in its own process ----------------------------------------

def tus_upload(url: str, path: str, name: str, chunk: str) -> int:
    from tusclient import client

    uploader = client.TusClient(url).uploader(path, chunk_size=int(chunk),
                                              metadata={"filename": name})
    uploader.upload()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["tus"] and len(sys.argv) == 6:
        sys.exit(tus_upload(*sys.argv[2:]))
    sys.exit("usage: web.py tus URL FILE NAME CHUNK (run by bench.py --only web)")
