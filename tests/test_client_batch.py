"""Client batches and odd local names, end to end: the real ``ftpclient`` (a
subprocess, cwd ``local``) against a real server on an ephemeral loopback port.

Local names that are not UTF-8 are reported and skipped; a folder transfer makes
its destination folder; a failed batch prints one summary line and a few
examples (all with -v); a folder without -r is refused in one line.
"""
from __future__ import annotations

import os
from pathlib import Path

from helpers import md5_of, random_file, run_cli

BAD = os.fsdecode(b"bad\xff.txt")  # not UTF-8: Python holds it with a surrogate


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def failures(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


def test_put_of_a_name_not_utf8_fails_in_one_line(port: int, storage_root: Path, local: Path) -> None:
    (local / BAD).write_bytes(b"x")
    result = run_cli(port, "put", BAD, cwd=local)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "bad\\xff.txt" in line and "not valid UTF-8" in line, line
    assert os.listdir(storage_root) == []


def test_put_tree_skips_names_not_utf8_and_sends_the_rest(port: int, storage_root: Path,
                                                          local: Path) -> None:
    tree = local / "w"
    (tree / os.fsdecode(b"dir\xfe")).mkdir(parents=True)
    (tree / os.fsdecode(b"dir\xfe") / "inside.txt").write_text("in a folder the wire cannot name")
    (tree / BAD).write_bytes(b"x")
    random_file(tree / "good.txt", 1000, seed=1)
    random_file(tree / "z.txt", 10, seed=2)
    result = run_cli(port, "put", "-r", "w", cwd=local)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("2 transferred"), result.stderr
    assert failures(result.stderr) == [  # folders first (with the files they held), then files
        "w/dir\\xfe: the name is not valid UTF-8, so it cannot be sent (rename it)",
        "w/dir\\xfe/inside.txt: not copied: folder w/dir\\xfe could not be made",
        "w/bad\\xff.txt: the name is not valid UTF-8, so it cannot be sent (rename it)",
    ], result.stderr
    for name in ("good.txt", "z.txt"):
        assert md5_of(storage_root / "w" / name) == md5_of(tree / name)


def test_shell_put_pattern_with_a_name_not_utf8(port: int, storage_root: Path, local: Path) -> None:
    (local / BAD).write_bytes(b"x")
    (local / "bad-but-fine.txt").write_text("fine")
    result = run_cli(port, input="put bad*\npwd\n", cwd=local)
    assert result.returncode == 1
    assert "codec" not in result.stdout + result.stderr, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert "bad\\xff.txt: the name is not valid UTF-8" in result.stdout, result.stdout
    assert result.stdout.splitlines()[-1] == "/"  # the shell went on
    assert os.listdir(storage_root) == ["bad-but-fine.txt"]


def make_photos(local: Path, count: int) -> Path:
    photos = local / "photos"
    photos.mkdir()
    for n in range(count):
        random_file(photos / f"p{n}.jpg", 100 + n, seed=n)
    return photos


def test_put_tree_into_a_missing_folder_makes_it(port: int, storage_root: Path, local: Path) -> None:
    photos = make_photos(local, 3)
    result = run_cli(port, "put", "-r", "photos", "backup/", cwd=local)  # as README shows
    assert result.returncode == 0, result.stderr
    assert one_line(result.stderr).startswith("3 transferred")
    for name in os.listdir(photos):
        assert md5_of(storage_root / "backup" / "photos" / name) == md5_of(photos / name)

    back = run_cli(port, "get", "-r", "backup/photos", "copies/", cwd=local)
    assert back.returncode == 0, back.stderr
    assert "received" in one_line(back.stderr) and "sent" not in back.stderr
    assert sorted(os.listdir(local / "copies" / "photos")) == sorted(os.listdir(photos))


def test_failed_batch_prints_a_few_examples_and_all_with_v(port: int, storage_root: Path,
                                                           local: Path) -> None:
    make_photos(local, 8)
    result = run_cli(port, "put", "-r", "photos", "no/such/", cwd=local)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "0 transferred (0.0 MiB sent), 0 already there, 9 failed", result.stderr
    assert lines[1] == "  no/such: No such file or folder: /no/such", result.stderr
    assert lines[2] == "  photos/p0.jpg: not copied: folder no/such could not be made"
    assert lines[6:] == ["  ... and 4 more (-v lists them all)"], result.stderr
    assert all(len(line) < 100 for line in lines)

    verbose = run_cli(port, "put", "-r", "-v", "photos", "no/such/", cwd=local)
    assert verbose.returncode == 1
    assert len(failures(verbose.stderr)) == 9 and "more" not in verbose.stderr, verbose.stderr
    assert os.listdir(storage_root) == []


def test_folder_without_r_says_so_in_one_line(port: int, storage_root: Path, local: Path) -> None:
    make_photos(local, 2)
    (storage_root / "remote-dir").mkdir()
    put = run_cli(port, "put", "photos", cwd=local)
    assert put.returncode == 1
    assert one_line(put.stderr) == "ftpclient: photos is a local folder: use put -r to upload a folder"
    get = run_cli(port, "get", "remote-dir", cwd=local)
    assert get.returncode == 1
    assert one_line(get.stderr) == ("ftpclient: remote-dir is a remote folder: use get -r to "
                                    "download a folder")
    (storage_root / "photos").write_text("a remote file named like the local folder")
    blocked = run_cli(port, "get", "photos", cwd=local)
    assert blocked.returncode == 1
    assert one_line(blocked.stderr) == ("ftpclient: local folder photos is in the way: give the "
                                        "file another local name")
