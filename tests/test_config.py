"""config.yaml: defaults, path resolution, sizes, durations and one-line refusals."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ftpserver.config import (
    Config, TLSConfig, User, load_config, parse_duration, parse_size,
)
from ftpserver.errors import ConfigError

SHIPPED = Path(__file__).resolve().parent.parent / "config.yaml"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


# -- loading ----------------------------------------------------------------------

def test_shipped_config_loads_the_defaults():
    config = load_config(SHIPPED)
    assert config == Config(root=SHIPPED.parent / "storage", http_port=8080)
    assert config.root == SHIPPED.parent / "storage"
    assert (config.host, config.port, config.buffer_size) == ("127.0.0.1", 2121, 65536)
    assert (config.idle_timeout, config.partial_ttl) == (300, 7 * 86400)
    assert (config.anonymous, config.max_connections, config.tls) == (True, 512, None)
    assert (config.max_per_address, config.anonymous_quota, config.session_partial_limit) == (
        32, None, None)
    assert dict(config.users) == {}


def test_relative_paths_resolve_against_the_file_not_the_cwd(tmp_path, monkeypatch):
    conf = tmp_path / "etc"
    conf.mkdir()
    path = write(conf, """\
root: data
users:
  alice: {password: h1}
  bob: {password: h2, root: ../bob, quota: 2GiB, readonly: true}
tls: {cert: cert.pem, key: /abs/key.pem}
""")
    monkeypatch.chdir(tmp_path)
    config = load_config(path.relative_to(tmp_path))
    assert config.root == conf / "data"
    assert config.users["alice"] == User("alice", "h1", conf / "data" / "alice", None, False)
    assert config.users["bob"] == User("bob", "h2", tmp_path / "bob", 2 * 1024**3, True)
    assert config.tls == TLSConfig(conf / "cert.pem", Path("/abs/key.pem"))
    assert not (conf / "data").exists()  # the server creates it, not the loader


def test_default_root_is_next_to_the_file(tmp_path):
    assert load_config(write(tmp_path, "port: 0\n")).root == tmp_path / "storage"


@pytest.mark.parametrize("text", ["", "# only comments\n", "null\n", "---\n"])
def test_empty_document_means_defaults(tmp_path, text):
    assert load_config(write(tmp_path, text)) == Config(root=tmp_path / "storage")


def test_no_path_reads_cwd_config_or_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config() == Config(root=tmp_path / "storage")
    write(tmp_path, "port: 4000\nroot: here\n")
    assert (load_config().port, load_config().root) == (4000, tmp_path / "here")


@pytest.mark.parametrize("text, key, expected", [
    ("port: 0", "port", 0),
    ("port: 65535", "port", 65535),
    ("buffer_size: 4096", "buffer_size", 4096),
    ("buffer_size: 16MiB", "buffer_size", 16 * 1024**2),
    ("buffer_size: '256 KiB'", "buffer_size", 256 * 1024),
    ("idle_timeout: 2.5", "idle_timeout", 2.5),
    ("idle_timeout: 5m", "idle_timeout", 300),
    ("partial_ttl: 36h", "partial_ttl", 36 * 3600),
    ("partial_ttl: 90", "partial_ttl", 90),
    ("anonymous: false", "anonymous", False),
    ("host: 0.0.0.0", "host", "0.0.0.0"),
    ("max_connections: 1", "max_connections", 1),
    ("max_per_address: 1", "max_per_address", 1),
    ("max_per_address: 1000", "max_per_address", 1000),
    ("anonymous_quota: 2GiB", "anonymous_quota", 2 * 1024**3),
    ("anonymous_quota: 0", "anonymous_quota", 0),
    ("anonymous_quota: null", "anonymous_quota", None),
    ("session_partial_limit: 500MB", "session_partial_limit", 500 * 10**6),
    ("session_partial_limit: null", "session_partial_limit", None),
    ("users: null", "users", {}),
    ("tls: null", "tls", None),
])
def test_values(tmp_path, text, key, expected):
    assert getattr(load_config(write(tmp_path, text)), key) == expected


def test_config_is_frozen_and_overrides_make_a_copy(tmp_path):
    config = load_config(write(tmp_path, "users: {alice: {password: SECRET-HASH}}"))
    for obj, name in [(config, "port"), (config.users["alice"], "quota")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 1)
    with pytest.raises(TypeError):
        config.users["mallory"] = config.users["alice"]  # type: ignore[index]
    moved = config.with_overrides(host="0.0.0.0", port=0, idle_timeout=None)
    assert (moved.host, moved.port, moved.idle_timeout) == ("0.0.0.0", 0, 300)
    assert config.port == 2121
    assert "SECRET-HASH" not in repr(config)  # reprs end up in logs


@pytest.mark.parametrize("changes, message", [
    ({"port": 70000}, "port: must be an integer from 0 to 65535, got 70000"),
    ({"host": ""}, "host: must be a non-empty string, got ''"),
])
def test_bad_overrides(changes, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        Config().with_overrides(**changes)


# -- sizes and durations ----------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (0, 0), (123, 123), ("123", 123), (" 7 ", 7), ("10B", 10),
    ("512k", 512 * 1024), ("512K", 512 * 1024), ("1KB", 1000), ("1kib", 1024),
    ("2GiB", 2 * 1024**3), ("1.5 GB", 1_500_000_000), ("10MiB", 10 * 1024**2),
    ("3m", 3 * 1024**2), ("1TB", 10**12), ("1 TiB", 1024**4), ("1t", 1024**4),
    ("1.1K", 1126), (".5k", 512), (2**70, 2**70),
])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value, reason", [
    (True, "bad size True"), (False, "bad size False"), (None, "bad size None"),
    (-1, "bad size -1 (negative)"), ("-2GiB", "bad size '-2GiB' (negative)"),
    ("2 parsecs", "bad size '2 parsecs'"), ("", "bad size ''"), ("GiB", "bad size 'GiB'"),
    ("1e3", "bad size '1e3'"), ("1,5G", "bad size '1,5G'"), ("1 PB", "bad size '1 PB'"),
    ("nan", "bad size 'nan'"), ([1], "bad size [1]"), ("\u0663", "bad size '\u0663'"),
])
def test_parse_size_refuses(value, reason):
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value) == reason


@pytest.mark.parametrize("value, expected", [
    (0, 0), (30, 30), (2.5, 2.5), ("45", 45), ("30s", 30), ("90m", 5400),
    ("36h", 129600), ("7d", 604800), ("1.5H", 5400), (" 2 d ", 172800),
])
def test_parse_duration(value, expected):
    assert parse_duration(value) == expected
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize("value", [
    True, None, -1, "-5s", "5w", "5 minutes", "", "s", float("nan"), float("inf"), 10**400,
])
def test_parse_duration_refuses(value):
    with pytest.raises(ValueError, match="^bad duration "):
        parse_duration(value)


# -- refusals: one line naming the file, the key and the problem ------------------

@pytest.mark.parametrize("text, tail", [
    # unknown keys, at every level
    ("prot: 21", "unknown key 'prot'"),
    ("users: {bob: {password: h, quoat: 1}}", "users.bob: unknown key 'quoat'"),
    ("tls: {cert: a, key: b, ca: c}", "tls: unknown key 'ca'"),
    ("1: x", "unknown key 1"),
    # missing keys
    ("users: {bob: {root: x}}", "users.bob: missing 'password'"),
    ("users: {bob: null}", "users.bob: missing 'password'"),
    ("tls: {cert: a}", "tls: missing 'key'"),
    # integers
    ("port: abc", "port: must be an integer from 0 to 65535, got 'abc'"),
    ("port: '2121'", "port: must be an integer from 0 to 65535, got '2121'"),
    ("port: true", "port: must be an integer from 0 to 65535, got True"),
    ("port: 21.0", "port: must be an integer from 0 to 65535, got 21.0"),
    ("port: 65536", "port: must be an integer from 0 to 65535, got 65536"),
    ("port: -1", "port: must be an integer from 0 to 65535, got -1"),
    ("port:", "port: must be an integer from 0 to 65535, got None"),
    ("max_connections: 0", "max_connections: must be an integer of at least 1, got 0"),
    ("max_connections: false", "max_connections: must be an integer of at least 1, got False"),
    ("max_per_address: 0", "max_per_address: must be an integer of at least 1, got 0"),
    ("max_per_address: '8'", "max_per_address: must be an integer of at least 1, got '8'"),
    ("max_per_address: null", "max_per_address: must be an integer of at least 1, got None"),
    # booleans
    ("anonymous: 1", "anonymous: must be true or false, got 1"),
    ("anonymous: 'yes'", "anonymous: must be true or false, got 'yes'"),
    ("users: {bob: {password: h, readonly: 'no'}}",
     "users.bob.readonly: must be true or false, got 'no'"),
    # strings and paths
    ("host: 8080", "host: must be a non-empty string, got 8080"),
    ("host: ''", "host: must be a non-empty string, got ''"),
    ("root: [a, b]", "root: must be a non-empty string, got ['a', 'b']"),
    ("users: {bob: {password: 42}}", "users.bob.password: must be a non-empty string, got 42"),
    ("users: {bob: {password: h, root: true}}",
     "users.bob.root: must be a non-empty string, got True"),
    ("tls: {cert: a, key: 7}", "tls.key: must be a non-empty string, got 7"),
    # sizes and durations
    ("users: {alice: {password: h, quota: 2 parsecs}}", "users.alice.quota: bad size '2 parsecs'"),
    ("users: {alice: {password: h, quota: -1}}", "users.alice.quota: bad size -1 (negative)"),
    ("users: {alice: {password: h, quota: true}}", "users.alice.quota: bad size True"),
    ("anonymous_quota: lots", "anonymous_quota: bad size 'lots'"),
    ("anonymous_quota: -1", "anonymous_quota: bad size -1 (negative)"),
    ("session_partial_limit: 1 PB", "session_partial_limit: bad size '1 PB'"),
    ("session_partial_limit: false", "session_partial_limit: bad size False"),
    ("buffer_size: lots", "buffer_size: bad size 'lots'"),
    ("buffer_size: 1024", "buffer_size: must be from 4096 to 16777216 bytes, got 1024"),
    ("buffer_size: 1GiB", "buffer_size: must be from 4096 to 16777216 bytes, got '1GiB'"),
    ("idle_timeout: 0", "idle_timeout: must be more than 0 seconds, got 0"),
    ("idle_timeout: soon", "idle_timeout: bad duration 'soon'"),
    ("partial_ttl: 2w", "partial_ttl: bad duration '2w'"),
    ("partial_ttl: true", "partial_ttl: bad duration True"),
    # sections of the wrong shape
    ("users: [alice]", "users: must be a mapping of keys, got ['alice']"),
    ("users: {alice: h}", "users.alice: must be a mapping of keys, got 'h'"),
    ("tls: cert.pem", "tls: must be a mapping of keys, got 'cert.pem'"),
    # user names
    ("users: {'a b': {password: h}}", "users: bad user name 'a b'"),
    ("users: {'..': {password: h}}", "users: bad user name '..'"),
    ("users: {'.': {password: h}}", "users: bad user name '.'"),
    (f"users: {{{'a' * 65}: {{password: h}}}}", "users: bad user name 'aaaaaaaaaaa"),
    ("users: {7: {password: h}}", "users: bad user name 7"),
    ("users: {'jos\u00e9': {password: h}}", "users: bad user name 'jos\u00e9'"),
    # documents that are not a mapping, or not YAML
    ("- port: 1", "must be a mapping of keys, got [{'port': 1}]"),
    ("just words", "must be a mapping of keys, got 'just words'"),
    ("host: a\nport: 1\n  bad: [", "not valid YAML (line 3)"),
    ("port: [1, 2", "not valid YAML"),
    ("port: 1\n---\nport: 2", "not valid YAML"),
    # a key given twice, at every level
    ("port: 1\nport: 2", "not valid YAML (line 2): duplicate key 'port'"),
    ("users:\n  bob: {password: h, quota: 1, quota: 2}",
     "not valid YAML (line 2): duplicate key 'quota'"),
    ("users:\n  bob: {password: h}\n  bob: {password: i}",
     "not valid YAML (line 3): duplicate key 'bob'"),
    ("tls: {cert: a, key: b, cert: c}", "not valid YAML (line 1): duplicate key 'cert'"),
])
def test_refusals(tmp_path, text, tail):
    path = write(tmp_path, text + "\n")
    assert refused(path).startswith(f"{path}: {tail}")


def test_a_merged_key_may_be_overridden(tmp_path):
    config = load_config(write(tmp_path, """\
users:
  alice: &common {password: h, quota: 1GiB}
  bob:
    <<: *common
    quota: 2GiB
"""))
    assert (config.users["bob"].password, config.users["bob"].quota) == ("h", 2 * 1024**3)


def test_message_names_the_file_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "prot: 1\n")
    with pytest.raises(ConfigError, match=r"^config\.yaml: unknown key 'prot'$"):
        load_config("config.yaml")


def test_long_values_stay_short(tmp_path):
    path = write(tmp_path, f"host: [{', '.join(['x' * 100] * 100)}]\n")
    assert len(refused(path)) < len(str(path)) + 120


def test_unreadable_files(tmp_path):
    (tmp_path / "binary.yaml").write_bytes(b"port: \xff\xfe\x00\n")
    for name, tail in [("nope.yaml", "no such file"), ("", "cannot read"),
                       ("binary.yaml", "not valid YAML")]:
        path = tmp_path / name
        assert refused(path).startswith(f"{path}: {tail}")
