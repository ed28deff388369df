"""Formatting remote listings for people (columns, ``-l``) and scripts (``--json``)."""
from __future__ import annotations

import json
import shutil
import time
from typing import Any, Iterable

from .names import shown

__all__ = ["human_size", "format_long", "format_columns", "format_json"]


def human_size(size: int) -> str:
    """Return a size as a person reads it: 999, 1.0K, 12M, 3.4G."""
    value = float(size)
    for unit in ("", "K", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            if not unit:
                return str(size)
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(mtime: float) -> str:
    # Like coreutils ls: the time for recent files, the year for older ones.
    recent = abs(time.time() - mtime) < 182 * 86400
    return time.strftime("%b %d %H:%M" if recent else "%b %d  %Y", time.localtime(mtime))


def _display_name(entry: dict[str, Any]) -> str:
    # Escaped: a name (from a server, or a local one that is not UTF-8) must not
    # reach the terminal raw.
    return shown(entry["name"]) + ("/" if entry["type"] == "dir" else "")


def format_long(entries: Iterable[dict[str, Any]]) -> list[str]:
    """Return ``ls -l`` lines: type, size, modification time, name; columns aligned."""
    rows = [("d" if e["type"] == "dir" else "-", human_size(e["size"]), _when(e["mtime"]),
             _display_name(e)) for e in entries]
    width = max((len(r[1]) for r in rows), default=0)
    return [f"{kind} {size:>{width}}  {when}  {name}" for kind, size, when, name in rows]


def format_columns(entries: Iterable[dict[str, Any]], width: int | None = None) -> list[str]:
    """Return names in columns filling a terminal of ``width``, top to bottom as coreutils ls."""
    names = [_display_name(e) for e in entries]
    if not names:
        return []
    width = width or shutil.get_terminal_size().columns
    cell = max(len(n) for n in names) + 2
    per_row = max(1, width // cell)
    rows = -(-len(names) // per_row)
    lines = []
    for r in range(rows):
        row = names[r::rows]
        lines.append("".join(n.ljust(cell) for n in row[:-1]) + row[-1])
    return lines


def format_json(path: str, entries: list[dict[str, Any]]) -> str:
    """Return the ``--json`` document: {"path": ..., "entries": [{name, type, size, mtime}]}."""
    return json.dumps({"path": path, "entries": entries}, ensure_ascii=False, indent=2)
