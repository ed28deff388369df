"""Start-up: root folders, TLS files and the advice a real ``python -m ftpserver`` logs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftpserver.auth import hash_password
from ftpserver.config import Config, TLSConfig, prepare
from ftpserver.errors import ConfigError

from helpers import LOOPBACK, ServerProcess, make_cert
from test_hardening import one_line


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"host: {LOOPBACK}\nport: 0\n{text}", encoding="utf-8")
    return path


def refused(config: Path) -> str:
    """Run the server on ``config``; return the one line it prints on stderr as it exits 2."""
    result = subprocess.run([sys.executable, "-m", "ftpserver", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    return one_line(result.stderr)


def started(config: Path) -> list[str]:
    """Start the server on ``config``; return its start-up log lines."""
    server = ServerProcess(config).start()
    server.stop()
    deadline = time.monotonic() + 10  # the log is read by a thread until the process ends
    while not any(" INFO stopping" in line for line in server.log) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(" INFO stopping" in line for line in server.log), server.log
    return server.log


# -- root folders -----------------------------------------------------------------------

def test_a_root_that_is_a_file_is_named_by_its_key(tmp_path: Path) -> None:
    afile = tmp_path / "passwd"
    afile.write_text("x")
    config = write_config(tmp_path, f"root: {afile}\n")
    assert refused(config) == f"ftpserver: {config}: root: {afile} is a file, not a folder"
    config = write_config(tmp_path, f"root: {tmp_path}\nusers: {{bob: {{password: h, root: {afile}}}}}\n")
    assert refused(config) == (f"ftpserver: {config}: users.bob.root: {afile} is a file, "
                               "not a folder")


def test_a_root_whose_parent_is_missing_is_refused_and_nothing_created(tmp_path: Path) -> None:
    root = tmp_path / "nonexistent" / "dir" / "x"
    config = write_config(tmp_path, f"root: {root}\n")
    assert refused(config) == (f"ftpserver: {config}: root: cannot create {root}: "
                               f"{root.parent} does not exist")
    assert not (tmp_path / "nonexistent").exists()


def test_a_root_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"^root: cannot create .*/f/x: .*/f is not a folder$"):
        prepare(Config(root=tmp_path / "f" / "x"))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_root_that_cannot_be_made_says_why(tmp_path: Path) -> None:
    config = write_config(tmp_path, "root: /proc/nope\n")
    assert refused(config) == (f"ftpserver: {config}: root: cannot create /proc/nope: "
                               "No such file or directory")


def test_missing_roots_are_created_parents_first_and_logged(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    line = hash_password("pw", iterations=4096).line()
    config = write_config(tmp_path, f"root: storage\nanonymous: false\nusers: {{alice: "
                                    f"{{password: '{line}'}}, bob: {{password: '{line}', root: bob}}}}\n")
    log = "".join(started(config))
    for folder in (root, root / "alice", tmp_path / "bob"):
        assert folder.is_dir()
        assert f"INFO created the root folder {folder}\n" in log
    assert "created the root folder" not in "".join(started(config))  # only once


def test_an_unused_anonymous_root_is_not_created(tmp_path: Path) -> None:
    config = Config(root=tmp_path / "storage", anonymous=False)
    assert prepare(config) == []
    assert not (tmp_path / "storage").exists()


# -- TLS files --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pems")
    cert, key = make_cert(folder, "good")
    _, other_key = make_cert(folder, "other")
    encrypted = folder / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes128", "-passout", "pass:secret",
                    "-out", str(encrypted)], check=True, capture_output=True, timeout=60)
    return {"cert": cert, "key": key, "other_key": other_key, "encrypted": encrypted,
            "missing": folder / "missing.pem"}


@pytest.mark.parametrize("cert, key, message", [
    ("key", "cert", "tls.cert: {key} holds no PEM certificate (tls.key does: are the two swapped?)"),
    ("key", "key", "tls.cert: {key} holds no PEM certificate"),
    ("cert", "cert", "tls.key: {cert} holds no PEM private key"),
    ("cert", "other_key", "tls.key: {other_key} is not the key of the certificate in tls.cert"),
    ("cert", "encrypted", "tls.key: {encrypted} is encrypted: the server needs a key without a passphrase"),
    ("missing", "key", "tls.cert: cannot read {missing}: No such file or directory"),
    ("cert", "missing", "tls.key: cannot read {missing}: No such file or directory"),
])
def test_tls_files_that_will_not_load_are_named(pems: dict[str, Path], tmp_path: Path,
                                                cert: str, key: str, message: str) -> None:
    config = Config(root=tmp_path, tls=TLSConfig(pems[cert], pems[key]))
    with pytest.raises(ConfigError) as info:
        prepare(config, "config.yaml")
    assert str(info.value) == "config.yaml: " + message.format(**pems)


def test_swapped_tls_files_stop_the_server_with_one_line(pems: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path, f"root: {tmp_path}\ntls: {{cert: {pems['key']}, key: {pems['cert']}}}\n")
    assert refused(config) == (f"ftpserver: {config}: tls.cert: {pems['key']} holds no PEM "
                               "certificate (tls.key does: are the two swapped?)")


def test_good_tls_files_pass(pems: dict[str, Path], tmp_path: Path) -> None:
    assert prepare(Config(root=tmp_path, tls=TLSConfig(pems["cert"], pems["key"]))) == []


# -- advice in the start-up log -----------------------------------------------------------

def test_tls_server_tells_clients_the_cafile(pems: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path, f"root: {tmp_path}\ntls: {{cert: {pems['cert']}, key: {pems['key']}}}\n")
    log = "".join(started(config))
    assert f" --cafile {pems['cert']}\n" in log


def test_plain_server_gives_no_cafile(tmp_path: Path) -> None:
    log = "".join(started(write_config(tmp_path, f"root: {tmp_path}\n")))
    assert "clients connect with: ftpclient -H 127.0.0.1 -p " in log
    assert "--cafile" not in log and "nobody can log in" not in log


def test_no_anonymous_and_no_users_is_warned(tmp_path: Path) -> None:
    log = started(write_config(tmp_path, f"root: {tmp_path}\nanonymous: false\n"))
    assert any(" WARNING nobody can log in: " in line for line in log)
