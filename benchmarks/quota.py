"""What a quota costs a put: latency of a small put by one quota user while another
quota user, who holds many folders, puts files too; against the same while that
user holds none.

Runs real ``python -m ftpserver`` processes on 127.0.0.1 with two quota users,
and times small puts by one of them through the client library while a thread
puts files as the other, interleaving the two cases (no folders / many folders,
each on a server of its own) round by round.

    python benchmarks/quota.py                   # 60,000 folders, 200 puts per round, 3 rounds
    python benchmarks/quota.py --folders 5000    # quicker
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ftpclient.client import Client
from ftpserver.auth import hash_password

LOOPBACK = "127.0.0.1"
PASSWORD = "benchmark password"


def start_server(folder: Path, folders: int) -> tuple[subprocess.Popen[str], int, float]:
    """A server whose user ``alice`` holds ``folders`` folders; return it, its port and
    how long it took to start (it recounts the usage ledgers)."""
    line = hash_password(PASSWORD, iterations=4096).line()
    (folder / "storage").mkdir()
    alice = folder / "storage" / "alice"
    for i in range(folders):
        os.makedirs(alice / f"d{i // 1000}" / f"f{i % 1000}")
    (folder / "config.yaml").write_text(
        f"host: {LOOPBACK}\nport: 0\nroot: {folder / 'storage'}\nanonymous: false\n"
        f"users:\n  alice: {{password: '{line}', quota: 10GiB}}\n"
        f"  bob: {{password: '{line}', quota: 10GiB}}\n")
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "ftpserver", "--config", str(folder / "config.yaml")],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = re.search(r"serving .* on \S+:(\d+)", process.stderr.readline())
        if found:
            return process, int(found.group(1)), time.monotonic() - started
    raise RuntimeError("the server did not start")


def put_latencies(port: int, source: Path, count: int) -> list[float]:
    """Seconds of each of ``count`` small puts by bob, on one logged-in connection,
    while alice puts files on another."""
    stop = threading.Event()
    neighbour = threading.Thread(target=keep_putting, args=(port, source, stop), daemon=True)
    neighbour.start()
    times = []
    try:
        with Client(LOOPBACK, port, timeout=60) as client:
            client.login("bob", PASSWORD)
            for i in range(count):
                started = time.perf_counter()
                client.put(source, f"small-{i}.txt")
                times.append(time.perf_counter() - started)
    finally:
        stop.set()
        neighbour.join(60)
    return times


def keep_putting(port: int, source: Path, stop: threading.Event) -> None:
    """Put small files as alice until ``stop`` (at most 10,000)."""
    with Client(LOOPBACK, port, timeout=60) as client:
        client.login("alice", PASSWORD)
        for i in range(10_000):
            if stop.is_set():
                return
            client.put(source, f"neighbour-{i % 10}.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, default=60_000)
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "small.txt"
        source.write_bytes(b"hello")
        servers = {}
        for label, folders in (("empty", 0), ("many", args.folders)):
            (Path(tmp) / label).mkdir()
            servers[label] = start_server(Path(tmp) / label, folders)
        try:
            samples: dict[str, list[float]] = {"empty": [], "many": []}
            for _ in range(args.rounds):
                for label in samples:
                    samples[label] += put_latencies(servers[label][1], source, args.puts)
        finally:
            for process, _, _ in servers.values():
                process.terminate()
                process.wait(10)
    print(f"quota put latency, {args.rounds} x {args.puts} puts of 5 bytes by one quota user, "
          f"{os.cpu_count()} cores")
    print("| another quota user holds | start-up (s) | median put (ms) | p99 (ms) | max (ms) |")
    print("|---|---:|---:|---:|---:|")
    for label, times in samples.items():
        held = "no folders" if label == "empty" else f"{args.folders:,} folders"
        times.sort()
        print(f"| {held} | {servers[label][2]:.2f} | {statistics.median(times) * 1000:.2f} | "
              f"{times[int(len(times) * 0.99) - 1] * 1000:.2f} | {times[-1] * 1000:.2f} |")
    ratio = statistics.median(samples["many"]) / statistics.median(samples["empty"])
    print(f"median put with {args.folders:,} folders held / with none: {ratio:.2f}")


if __name__ == "__main__":
    main()
