"""The one exception hierarchy shared by server, client and command line.

Every error that crosses the wire has a stable ``code`` (see docs/PROTOCOL.md);
:func:`error_for_code` turns a code received from the peer back into its class.
"""
from __future__ import annotations

__all__ = [
    "FTPError", "ProtocolError", "FramingError", "UnknownCommand", "NotFound", "Forbidden",
    "PathError", "ChecksumError", "QuotaExceeded", "Busy", "AuthFailed",
    "InternalError", "Exists", "NotEmpty", "IsADirectory", "NotADirectory", "StaleOffset",
    "ConnectionLost", "Unreachable", "LocalError", "ConfigError",
    "error_for_code", "ERROR_CODES",
]


class FTPError(Exception):
    """Base of every error this project raises on purpose.

    ``code`` is the wire error code; ``str(error)`` is one line for a person.
    """

    code = "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__.splitlines()[0].rstrip("."))

    @property
    def message(self) -> str:
        return str(self.args[0])


class ProtocolError(FTPError):
    """Malformed request."""

    code = "bad_request"


class FramingError(ProtocolError):
    """Malformed frame: the byte stream cannot be resynchronised."""


class UnknownCommand(FTPError):
    """Unknown command."""

    code = "unknown_command"


class NotFound(FTPError):
    """No such file or folder."""

    code = "not_found"


class Forbidden(FTPError):
    """Not allowed."""

    code = "forbidden"


class PathError(Forbidden):
    """Path outside the root."""


class ChecksumError(FTPError):
    """Checksum mismatch."""

    code = "checksum"


class QuotaExceeded(FTPError):
    """Quota exceeded."""

    code = "quota_exceeded"


class Busy(FTPError):
    """Busy: another transfer holds this file."""

    code = "busy"


class AuthFailed(FTPError):
    """Login failed."""

    code = "auth_failed"


class InternalError(FTPError):
    """Internal server error."""

    code = "internal"


class Exists(FTPError):
    """Already exists."""

    code = "exists"


class NotEmpty(FTPError):
    """Folder not empty."""

    code = "not_empty"


class IsADirectory(FTPError):
    """Is a folder."""

    code = "is_directory"


class NotADirectory(FTPError):
    """Not a folder."""

    code = "not_directory"


class StaleOffset(FTPError):
    """The partial upload changed: send the whole file."""

    code = "stale_offset"


# Errors below never travel on the wire: the client raises them itself.

class ConnectionLost(FTPError):
    """Connection lost."""

    code = "connection_lost"


class Unreachable(FTPError):
    """Server unreachable."""

    code = "unreachable"


class LocalError(FTPError):
    """Local file error."""

    code = "local"


class ConfigError(FTPError):
    """Bad configuration."""

    code = "config"


_WIRE_ERRORS = (ProtocolError, UnknownCommand, NotFound, Forbidden, ChecksumError,
                QuotaExceeded, Busy, AuthFailed, InternalError, Exists, NotEmpty,
                IsADirectory, NotADirectory, StaleOffset)

#: Every code the server may send, mapped to the class the client raises.
ERROR_CODES: dict[str, type[FTPError]] = {cls.code: cls for cls in _WIRE_ERRORS}


def error_for_code(code: object, message: object) -> FTPError:
    """Return the error the peer reported; an unknown code becomes :class:`FTPError`."""
    cls = ERROR_CODES.get(code, FTPError) if isinstance(code, str) else FTPError
    error = cls(str(message) if message else "")
    if cls is FTPError and isinstance(code, str):
        error.code = code
    return error
