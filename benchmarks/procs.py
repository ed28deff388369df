"""What the benchmarks read of and do to the processes they start (Linux /proc)."""
from __future__ import annotations

import os
import resource
import subprocess

__all__ = ["proc_status", "proc_cpu", "my_cpu", "open_fds", "reset_peak", "stop_process"]


def proc_status(pid: int, key: str) -> int | None:
    """A ``/proc/PID/status`` memory line (VmHWM, VmRSS) in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def my_cpu(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds (user + system) of this process (or of its waited-for children)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def open_fds(pid: int) -> int:
    """How many descriptors a process holds open (-1 if that cannot be read)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def reset_peak(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGTERM, a bounded wait, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
