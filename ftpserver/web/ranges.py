"""HTTP semantics of serving one file (RFC 9110): validators, conditions, byte ranges.

Pure functions of header values and a file's ``stat``: no sockets, no files, so
the handler only asks them what to answer.
"""
from __future__ import annotations

import email.utils
import mimetypes
import os
import re
from dataclasses import dataclass
from datetime import timezone
from urllib.parse import quote

__all__ = ["ByteRange", "Unsatisfiable", "etag", "last_modified", "parse_range",
           "if_range_holds", "not_modified", "content_type", "disposition"]

# Nineteen digits reach 2^63; longer numbers are not a range any file could satisfy.
_RANGE = re.compile(r"bytes[ \t]*=[ \t]*([0-9]{0,19})[ \t]*-[ \t]*([0-9]{0,19})[ \t]*", re.I)
#: Types a browser may show in its window; anything else is downloaded.  HTML and SVG are
#: left out: they would run scripts with this site's cookies.
_INLINE = ("text/plain", "text/csv", "text/markdown", "image/png", "image/jpeg", "image/gif",
           "image/webp", "image/avif", "image/bmp", "application/pdf")
_INLINE_FAMILIES = ("video/", "audio/")


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` of a file, both included."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` value of this range of a file of ``size`` bytes."""
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(Exception):
    """No byte of the asked range lies in the file: answer 416."""


def etag(info: os.stat_result) -> str:
    """A strong entity tag: changes with the file's size, modification time or inode."""
    return f'"{info.st_size:x}-{info.st_mtime_ns:x}-{info.st_ino:x}"'


def last_modified(info: os.stat_result) -> str:
    """The ``Last-Modified`` value (an HTTP date) of a file."""
    return email.utils.formatdate(info.st_mtime, usegmt=True)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range a ``Range`` header asks of a file of ``size`` bytes.

    Returns None to send the whole file: no header, another unit, several ranges,
    or a syntax error (RFC 9110 says to ignore such a header).  The end is clamped
    to the file.  Raises Unsatisfiable for a start past the end, or ``-0``.
    """
    if not header:
        return None
    found = _RANGE.fullmatch(header.strip())
    if not found or not any(found.groups()):
        return None
    first, last = found.groups()
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, min(end, size - 1))


def _http_date(value: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def if_range_holds(value: str | None, tag: str, mtime: float) -> bool:
    """Whether a request's ``If-Range`` lets its ``Range`` apply (True when absent).

    An entity tag must equal ``tag`` exactly (a weak one never does); a date must
    be the file's modification time to the second.
    """
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == tag
    when = _http_date(value)
    return when is not None and int(when) == int(mtime)


def not_modified(if_none_match: str | None, if_modified_since: str | None, tag: str,
                 mtime: float) -> bool:
    """Whether a GET's conditions say the client's copy is current (answer 304).

    ``If-None-Match`` compares weakly and, when present, ``If-Modified-Since`` is ignored.
    """
    if if_none_match is not None:
        tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
        return "*" in tags or tag in tags
    if if_modified_since is not None:
        when = _http_date(if_modified_since)
        return when is not None and int(mtime) <= when
    return False


def content_type(name: str) -> str:
    """The media type of a file by its name (``application/octet-stream`` when unknown)."""
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding or not guessed:  # a .gz is a gzip file, not the text it holds
        return "application/octet-stream"
    return guessed


def disposition(name: str, media_type: str, attachment: bool = False) -> str:
    """The ``Content-Disposition`` of a file: inline for types safe to show (unless
    ``attachment``), else an attachment; the name as ASCII and as UTF-8 (RFC 6266)."""
    inline = not attachment and (media_type in _INLINE or media_type.startswith(_INLINE_FAMILIES))
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                       for c in name)
    return (f"{'inline' if inline else 'attachment'}; filename=\"{fallback}\"; "
            f"filename*=UTF-8''{quote(name, safe='')}")
