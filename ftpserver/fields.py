"""The fields of transfer requests that both kinds of put, get, plan and stat check
the same way: which hash, a digest of it, the ``source`` tag, the trailer."""
from __future__ import annotations

import re
from typing import Any

from .digest import HASHES, HEX_LENGTH, available
from .errors import ConnectionLost, ProtocolError
from .protocol import printable, text_field

__all__ = ["MAX_SOURCE", "check_trailer", "hash_name", "digest_field", "source_field"]

_HEX = re.compile(r"[0-9a-f]+")
#: Longest ``source`` tag a client may attach to a resumable put.
MAX_SOURCE = 512


def check_trailer(header: dict[str, Any] | None) -> dict[str, Any]:
    """Return the trailer frame that ends a put's body.  Raises ConnectionLost if missing."""
    if header is None:
        raise ConnectionLost("the connection closed before the trailer with the file's hash")
    return header


def hash_name(header: dict[str, Any]) -> str:
    """The hash a transfer is checked with: ``hash``, md5 by default."""
    name = text_field(header, "hash", HASHES[0])
    if name not in HASHES:
        raise ProtocolError(f"unknown hash {printable(name)!r}: use one of {', '.join(HASHES)}")
    if not available(name):
        return HASHES[0]  # asked for a hash this server cannot compute: md5, as it says in its reply
    return name


def digest_field(header: dict[str, Any], name: str, required: bool = True,
                 field: str | None = None) -> str | None:
    """The hex digest of hash ``name`` in field ``field`` (by default ``name``),
    lowercased (None if absent and not ``required``)."""
    field = field or name
    value = text_field(header, field) if required else text_field(header, field, None)
    if value is None:
        return None
    if len(value) != HEX_LENGTH[name] or not _HEX.fullmatch(value.lower()):
        raise ProtocolError(f"field '{field}' must be {HEX_LENGTH[name]} hex digits")
    return value.lower()


def source_field(header: dict[str, Any], required: bool = False) -> str | None:
    """The client's ``source`` tag of its file (at most :data:`MAX_SOURCE` characters)."""
    source = text_field(header, "source") if required else text_field(header, "source", None)
    if source is not None and len(source) > MAX_SOURCE:
        raise ProtocolError(f"field 'source' is over {MAX_SOURCE} characters")
    return source
