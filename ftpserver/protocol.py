"""The wire format, with no sockets: frames, field checks, replies, digests.

A frame is a 4-byte unsigned little-endian length N followed by N bytes of a
UTF-8 JSON object (the header); N is at most :data:`MAX_HEADER`.  Raw file
bytes may follow a header, as the command says (docs/PROTOCOL.md).
"""
from __future__ import annotations

import json
import re
import struct
from typing import Any, Protocol

from .errors import ConnectionLost, FramingError, FTPError, ProtocolError, error_for_code

__all__ = [
    "MAX_HEADER", "PARTIAL_SUFFIX", "META_SUFFIX", "LENGTH", "CHUNK_SIZE", "HASH_BLOCK", "encode_frame", "decode_header",
    "parse_frame", "read_frame", "read_exact", "ok_reply", "error_reply", "check_reply", "printable",
    "shorten", "loggable", "text_field", "int_field", "bool_field", "MAX_MESSAGE",
]

MAX_HEADER = 65536
#: Longest error message sent, in characters once escaped.  A character takes at most
#: 4 bytes in the frame's JSON, so an error reply stays well inside MAX_HEADER.
MAX_MESSAGE = 4096
#: A file being transferred lives beside its final name with this suffix (both sides),
#: its resume metadata with META_SUFFIX; neither is ever shown or served as a file.
PARTIAL_SUFFIX = ".ftp-partial"
META_SUFFIX = PARTIAL_SUFFIX + ".json"
LENGTH = struct.Struct("<I")
CHUNK_SIZE = 64 * 1024
#: Bytes per read when hashing a file from disk; large reads keep hashing near its limit.
HASH_BLOCK = 1024 * 1024
_MAX_INT = 2**63 - 1
#: A log token that needs no quotes: no space, quote or backslash (and printable, checked apart).
_PLAIN = re.compile(r"[^\s'\"\\]+")
_MISSING: Any = object()


class Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


def encode_frame(header: dict[str, Any]) -> bytes:
    """Return the frame for ``header``.

    Raises ProtocolError if the header is too long to send.
    """
    payload = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_HEADER:
        raise ProtocolError(f"header of {len(payload)} bytes is over the {MAX_HEADER}-byte limit")
    return LENGTH.pack(len(payload)) + payload


def decode_header(payload: bytes) -> dict[str, Any]:
    """Return the JSON object held in ``payload``.

    Raises ProtocolError if it is not UTF-8 JSON holding an object.
    """
    try:
        header = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("header is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise ProtocolError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return header


def _check_length(raw: bytes) -> int:
    (length,) = LENGTH.unpack(raw)
    if length > MAX_HEADER:
        raise FramingError(f"header length {length} is over the {MAX_HEADER}-byte limit")
    return length


def parse_frame(buffer: bytes | bytearray | memoryview) -> tuple[dict[str, Any] | None, int]:
    """Parse one frame from the start of a growing buffer.

    Returns ``(header, consumed)``, or ``(None, 0)`` while more data is needed.
    Raises ProtocolError for an over-long length or a bad header.
    """
    if len(buffer) < LENGTH.size:
        return None, 0
    length = _check_length(bytes(buffer[:LENGTH.size]))
    end = LENGTH.size + length
    if len(buffer) < end:
        return None, 0
    return decode_header(bytes(buffer[LENGTH.size:end])), end


def read_exact(stream: Readable, n: int) -> bytes:
    """Read exactly ``n`` bytes.  Raises ConnectionLost if the stream ends first."""
    data = stream.read(n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            raise ConnectionLost(f"connection closed after {got} of {n} bytes")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_frame(stream: Readable) -> dict[str, Any] | None:
    """Read one frame from a binary stream.

    Returns None on a clean end of stream before the first byte.
    Raises ConnectionLost if the stream ends inside a frame, FramingError for a
    length over the limit, ProtocolError for a bad header (the stream is then
    still in step: the whole frame was read).
    """
    first = stream.read(LENGTH.size)
    if not first:
        return None
    if len(first) < LENGTH.size:
        first += read_exact(stream, LENGTH.size - len(first))
    return decode_header(read_exact(stream, _check_length(first)))


def ok_reply(**fields: Any) -> dict[str, Any]:
    """Return a success header carrying ``fields``."""
    return {"ok": True, **fields}


def printable(text: str) -> str:
    """Return ``text`` as one printable line: control characters and lone surrogates escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, limit: int) -> str:
    """Return ``text``, cut to ``limit`` characters ending in ``...`` if it is longer."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def loggable(value: object, limit: int = 200) -> str:
    """Return a client-supplied value as one short printable token for a log line.

    A plain string stays as it is; anything else (spaces, quotes, control characters,
    not a string) is shown as its repr, so no value can forge a log line or send an
    escape sequence to a terminal.  The result is cut to ``limit`` characters.
    """
    text = value if isinstance(value, str) else repr(value)
    if not (_PLAIN.fullmatch(text) and text == printable(text)):
        text = repr(text)
    return shorten(text, limit)


def error_reply(error: FTPError) -> dict[str, Any]:
    """Return the error header for ``error``; its message is one printable line, cut to
    MAX_MESSAGE characters so the reply always fits in a frame."""
    return {"ok": False, "error": error.code, "message": shorten(printable(error.message), MAX_MESSAGE)}


def check_reply(header: dict[str, Any] | None) -> dict[str, Any]:
    """Return a success header; raise the error an error header reports.

    Raises ConnectionLost for a missing reply, ProtocolError for a reply without ``ok``.
    """
    if header is None:
        raise ConnectionLost("the server closed the connection")
    ok = header.get("ok")
    if ok is True:
        return header
    if ok is False:
        message = header.get("message")
        raise error_for_code(header.get("error"), printable(message) if isinstance(message, str) else "")
    raise ProtocolError("reply has no 'ok' field")


def text_field(header: dict[str, Any], key: str, default: Any = _MISSING) -> str:
    """Return the string field ``key``.

    Raises ProtocolError if missing, not a string, or not valid Unicode (JSON
    escapes can carry lone surrogates, which no file name or message may hold).
    """
    value = header.get(key, default)
    if value is _MISSING:
        raise ProtocolError(f"missing field '{key}'")
    if value is default:
        return value
    if not isinstance(value, str):
        raise ProtocolError(f"field '{key}' must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"field '{key}' is not valid Unicode") from None
    return value


def int_field(header: dict[str, Any], key: str, default: Any = _MISSING,
              low: int = 0, high: int = _MAX_INT) -> int:
    """Return the integer field ``key`` within ``[low, high]``.

    Raises ProtocolError if missing, not an integer or out of range.
    """
    value = header.get(key, default)
    if value is _MISSING:
        raise ProtocolError(f"missing field '{key}'")
    if value is default:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"field '{key}' must be an integer")
    if not low <= value <= high:
        raise ProtocolError(f"field '{key}' must be between {low} and {high}")
    return value


def bool_field(header: dict[str, Any], key: str, default: bool = False) -> bool:
    """Return the boolean field ``key``.  Raises ProtocolError if not a boolean."""
    value = header.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"field '{key}' must be true or false")
    return value
