"""Settings from ``config.yaml``, read once and checked into a frozen :class:`Config`.

Entry points call :func:`load_config` once and pass the result down.  Every problem
raises :class:`~ftpserver.errors.ConfigError` with one line naming the file, the key
and the problem, so a bad file is refused at start-up rather than failing later.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .errors import ConfigError
from .protocol import shorten

__all__ = [
    "Config", "TLSConfig", "User", "find_config", "load_config", "prepare", "parse_size",
    "parse_duration",
    "DEFAULT_PATH", "DEFAULT_ROOT", "MIN_BUFFER_SIZE", "MAX_BUFFER_SIZE",
]

DEFAULT_PATH = Path("config.yaml")
DEFAULT_ROOT = "storage"
MIN_BUFFER_SIZE = 4096
MAX_BUFFER_SIZE = 16 * 1024 * 1024
_WEEK = 7 * 24 * 3600.0

_SIZE_UNITS = {"": 1, "b": 1} | {
    unit: base**power
    for power, prefix in enumerate("kmgt", 1)
    for unit, base in ((prefix, 1024), (prefix + "b", 1000), (prefix + "ib", 1024))
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_AMOUNT = re.compile(r"\s*([-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*([a-z]*)\s*", re.IGNORECASE)
# "." and ".." would make the default root <root>/<name> point outside <root>.
_USER_NAME = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class TLSConfig:
    """Certificate and private key files (PEM), as absolute paths."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class User:
    """An account; ``password`` is the stored hash line, opaque here."""

    name: str
    password: str = field(repr=False)
    root: Path
    quota: int | None = None
    readonly: bool = False


@dataclass(frozen=True)
class Config:
    """Server settings; paths are absolute, sizes in bytes, durations in seconds."""

    host: str = "127.0.0.1"
    port: int = 2121
    buffer_size: int = 65536
    idle_timeout: float = 300.0
    root: Path = field(default_factory=lambda: Path(DEFAULT_ROOT).resolve())
    anonymous: bool = True
    users: Mapping[str, User] = field(default_factory=lambda: MappingProxyType({}))
    partial_ttl: float = _WEEK
    max_connections: int = 512
    max_per_address: int = 32
    anonymous_quota: int | None = None
    session_partial_limit: int | None = None
    tls: TLSConfig | None = None
    #: Port of the web side (HTTP, or HTTPS with ``tls``) on ``host``; None: no web side.
    http_port: int | None = None

    def with_overrides(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied (``--host``, ``--port`` and the like).

        ``None`` values are skipped, so unset command-line options pass straight through.
        Raises ConfigError for a bad scalar value, TypeError for an unknown name.
        """
        changes = {key: value for key, value in changes.items() if value is not None}
        for key, value in changes.items():
            if key in _SCALARS:
                changes[key] = _checked(_SCALARS[key], value, key)
        return dataclasses.replace(self, **changes)


def parse_size(value: int | str) -> int:
    """Return a size in bytes from ``123``, ``"512k"``, ``"1.5 GB"`` or ``"2GiB"``.

    Units are case-insensitive: KB, MB, GB, TB count in 1000s; K, M, G, T and KiB, MiB,
    GiB, TiB in 1024s.  A float is accepted too; a fraction of a byte is dropped.
    Raises ValueError with a short reason.
    """
    return int(_amount(value, _SIZE_UNITS, "size"))


def parse_duration(value: int | float | str) -> float:
    """Return seconds from a number or a string such as ``"30s"``, ``"90m"``, ``"36h"``, ``"7d"``.

    Raises ValueError with a short reason.
    """
    seconds = float(_amount(value, _DURATION_UNITS, "duration"))
    if math.isinf(seconds):
        raise ValueError(f"bad duration {_show(value)} (too long)")
    return seconds


def _amount(value: object, units: Mapping[str, int], what: str) -> Decimal:
    """Return ``value`` as a non-negative finite number, a string counting in ``units``."""
    amount = None
    if isinstance(value, str) and (match := _AMOUNT.fullmatch(value)):
        if match[2].lower() in units:
            amount = Decimal(match[1]) * units[match[2].lower()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        amount = Decimal(value)
    if amount is None or not amount.is_finite():
        raise ValueError(f"bad {what} {_show(value)}")
    if amount < 0:
        raise ValueError(f"bad {what} {_show(value)} (negative)")
    return amount


def _show(value: object) -> str:
    """Return a short one-line repr of ``value``, so a message stays one short line."""
    return shorten(reprlib.repr(value), 60)


# One small checker per type: each returns the clean value or raises ValueError(problem).

def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {_show(value)}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_show(value)}")
    return value


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    rule = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def check(value: Any) -> int:
        if (isinstance(value, bool) or not isinstance(value, int)
                or value < low or (high is not None and value > high)):
            raise ValueError(f"must be an integer {rule}, got {_show(value)}")
        return value
    return check


def _optional_port(value: Any) -> int | None:
    return None if value is None else _integer(0, 65535)(value)


def _buffer_size(value: Any) -> int:
    size = parse_size(value)
    if not MIN_BUFFER_SIZE <= size <= MAX_BUFFER_SIZE:
        raise ValueError(f"must be from {MIN_BUFFER_SIZE} to {MAX_BUFFER_SIZE} bytes, "
                         f"got {_show(value)}")
    return size


def _quota(value: Any) -> int | None:
    return None if value is None else parse_size(value)


def _duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0 seconds, got {_show(value)}")
    return seconds


#: Settings checked the same way in config.yaml and in Config.with_overrides.
_SCALARS: dict[str, Callable[[Any], Any]] = {
    "host": _string,
    "port": _integer(0, 65535),
    "http_port": _optional_port,
    "buffer_size": _buffer_size,
    "idle_timeout": _duration,
    "anonymous": _boolean,
    "partial_ttl": _duration,
    "max_connections": _integer(1),
    "max_per_address": _integer(1),
    "anonymous_quota": _quota,
    "session_partial_limit": _quota,
}


def _checked(check: Callable[[Any], Any], value: Any, label: str) -> Any:
    """Return ``check(value)``; raises ConfigError ``"label: problem"``."""
    try:
        return check(value)
    except ValueError as error:
        raise ConfigError(f"{label}: {error}") from None


@dataclass(frozen=True)
class _Reader:
    """Checks one parsed document; ``name`` heads every message, ``base`` anchors paths."""

    name: str
    base: Path

    def error(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.name}: {where}: {problem}" if where else f"{self.name}: {problem}")

    def mapping(self, data: Any, where: str) -> dict[Any, Any]:
        if data is None:  # an empty section or document means "all defaults"
            return {}
        if not isinstance(data, dict):
            raise self.error(where, f"must be a mapping of keys, got {_show(data)}")
        return data

    def section(self, data: Any, where: str, schema: Mapping[str, Callable[[Any], Any]],
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        """Return the checked values of the keys present; refuses unknown and missing keys."""
        data = self.mapping(data, where)
        for key in data:
            if key not in schema:
                raise self.error(where, f"unknown key {_show(key)}")
        for key in required:
            if key not in data:
                raise self.error(where, f"missing {key!r}")
        label = f"{self.name}: {where}." if where else f"{self.name}: "
        return {key: _checked(schema[key], value, label + key) for key, value in data.items()}

    def path(self, value: Any) -> Path:
        return (self.base / Path(_string(value)).expanduser()).resolve()

    def config(self, data: Any) -> Config:
        fields = self.section(data, "", {**_SCALARS, "root": self.path, "tls": self.tls,
                                         "users": lambda users: users})  # needs root: read below
        root = fields.setdefault("root", self.path(DEFAULT_ROOT))
        fields["users"] = self.users(fields.get("users"), root)
        return Config(**fields)

    def users(self, data: Any, root: Path) -> Mapping[str, User]:
        schema = {"password": _string, "root": self.path, "quota": _quota, "readonly": _boolean}
        users = {}
        for name, entry in self.mapping(data, "users").items():
            if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
                raise self.error("users", f"bad user name {_show(name)} "
                                          "(1-64 letters, digits, '.', '_' or '-')")
            fields = self.section(entry, f"users.{name}", schema, required=("password",))
            users[name] = User(name=name, **{"root": root / name, **fields})
        return MappingProxyType(users)

    def tls(self, data: Any) -> TLSConfig | None:
        if data is None:
            return None
        paths = {"cert": self.path, "key": self.path}
        return TLSConfig(**self.section(data, "tls", paths, required=("cert", "key")))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<` may be overridden: not a repeat
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class refuses it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {_show(key)}", problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep)


def find_config(path: str | Path | None = None) -> Path | None:
    """Return ``path``, else ``./config.yaml`` if it exists, else None (the defaults)."""
    if path is not None:
        return Path(path)
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load_config(path: str | Path | None = None) -> Config:
    """Return the settings in ``path``, or in ``./config.yaml`` if it exists, else the defaults.

    Relative paths in the file resolve against the file's folder.  A missing root folder
    is not created here (see :func:`prepare`).  Raises ConfigError (one line) for a missing
    or unreadable file, bad YAML, a key given twice, an unknown key, a wrong type or a bad size.
    """
    path = find_config(path)
    if path is None:
        return Config()
    reader = _Reader(str(path), path.absolute().parent)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise reader.error("", "no such file") from None
    except OSError as error:
        raise reader.error("", f"cannot read ({error.strerror or error})") from None
    try:
        data = yaml.load(raw, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
        line = f" (line {mark.line + 1})" if mark else ""
        reason = f": {' '.join(str(problem).split())}" if problem else ""
        raise reader.error("", f"not valid YAML{line}{reason}") from None
    return reader.config(data)


# -- start-up checks: what the server needs from the file system, before it is built --

def prepare(config: Config, source: str | Path | None = None) -> list[Path]:
    """Check the TLS files and create missing root folders; return the folders created.

    A root is created only if its parent folder exists, so a typo does not build a
    whole chain of folders.  Raises ConfigError (``source: key: problem``) for a TLS
    file that is not what its key says, or a root that is not a folder or cannot be made.
    """
    try:
        if config.tls:
            _check_tls(config.tls)
        return [path for key, path in _roots(config) if _checked(_make_folder, path, key)]
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}" if source else str(error)) from None


def _roots(config: Config) -> list[tuple[str, Path]]:
    """The root folders the server will serve, with their keys, parents first."""
    roots = [(f"users.{name}.root", user.root) for name, user in config.users.items()]
    if config.anonymous or any(path.is_relative_to(config.root) for _, path in roots):
        roots.append(("root", config.root))
    return sorted(roots, key=lambda item: len(item[1].parts))


def _make_folder(path: Path) -> bool:
    """Create folder ``path`` if it is missing and its parent exists; True if created."""
    if path.is_dir():
        return False
    if path.exists():
        raise ValueError(f"{path} is a file, not a folder" if path.is_file() else
                         f"{path} is not a folder")
    if not path.parent.is_dir():
        why = "is not a folder" if path.parent.exists() else "does not exist"
        raise ValueError(f"cannot create {path}: {path.parent} {why}")
    try:
        path.mkdir(exist_ok=True)  # another server starting on the same root may win
    except OSError as error:
        raise ValueError(f"cannot create {path}: {error.strerror or error}") from None
    return True


class _Encrypted(Exception):
    """The private key asks for a passphrase."""


def _no_passphrase() -> str:
    raise _Encrypted


def _readable(path: Path) -> None:
    try:
        path.open("rb").close()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None


def _holds_certificate(path: Path) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=path)
    except ssl.SSLError:
        return False
    return True


def _check_tls(tls: TLSConfig) -> None:
    """Load the certificate and key as the server will, naming the file that is wrong.

    Raises ConfigError naming ``tls.cert`` or ``tls.key``.
    """
    _checked(_readable, tls.cert, "tls.cert")
    _checked(_readable, tls.key, "tls.key")
    if not _holds_certificate(tls.cert):
        swapped = " (tls.key does: are the two swapped?)" if _holds_certificate(tls.key) else ""
        raise ConfigError(f"tls.cert: {tls.cert} holds no PEM certificate{swapped}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert, tls.key, _no_passphrase)
    except _Encrypted:
        raise ConfigError(f"tls.key: {tls.key} is encrypted: the server needs a key "
                          "without a passphrase") from None
    except ssl.SSLError as error:
        problem = ("is not the key of the certificate in tls.cert"
                   if error.reason == "KEY_VALUES_MISMATCH" else "holds no PEM private key")
        raise ConfigError(f"tls.key: {tls.key} {problem}") from None
