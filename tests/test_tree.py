"""Folder transfers end to end: the real ``ftpclient`` (a subprocess, cwd ``local``)
against a real server on an ephemeral loopback port.

Trees both ways (md5 of every file, every folder present), cp semantics for the
destination, a tree transfer cut in the middle and rerun (only the missing bytes
travel), one bad file among good ones, several files and shell-style patterns.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import CuttingProxy, md5_of, random_file, run_cli

KiB = 1024
MiB = 1024 * KiB

#: relative path -> size; folders are the parents of these plus EMPTY_DIRS.
TREE_FILES = {
    "top.bin": 3 * MiB,
    "empty.txt": 0,
    "one.txt": 1,
    "with space.txt": 10 * KiB,
    "sub/mid.bin": 700 * KiB,
    "sub/中文名字.txt": 5 * KiB + 3,
    "sub/deeper/deep.bin": 1 * MiB + 17,
    "sub/deeper/tiny": 100,
    "space dir/inner file.dat": 64 * KiB,
}
EMPTY_DIRS = ["empty_dir", "sub/deeper/also empty"]


# -- helpers ------------------------------------------------------------------------


def make_tree(top: Path, files: dict[str, int] = TREE_FILES, empty: list[str] = EMPTY_DIRS) -> Path:
    top.mkdir(parents=True)
    for seed, (name, size) in enumerate(sorted(files.items()), start=1):
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        random_file(path, size, seed=seed)
    for name in empty:
        (top / name).mkdir(parents=True, exist_ok=True)
    return top


def snapshot(top: Path) -> tuple[set[str], dict[str, str]]:
    """Every folder (relative, '.' excluded) and every file's md5 under ``top``."""
    assert top.is_dir(), f"{top} is missing"
    folders: set[str] = set()
    files: dict[str, str] = {}
    for path in top.rglob("*"):
        rel = path.relative_to(top).as_posix()
        if path.is_dir():
            folders.add(rel)
        else:
            files[rel] = md5_of(path)
    return folders, files


def assert_same_tree(a: Path, b: Path) -> None:
    folders_a, files_a = snapshot(a)
    folders_b, files_b = snapshot(b)
    assert folders_a == folders_b
    assert files_a == files_b  # same names, nothing extra (no partials), same md5


def summary_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "transferred" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def failures(stderr: str) -> list[str]:
    """The failure lines under the summary line, one per file or folder."""
    lines = stderr.splitlines()
    start = lines.index(summary_line(stderr)) + 1
    return [line.strip() for line in lines[start:] if line.startswith("  ")]


def assert_ok_summary(result: Any, transferred: int, already: int | None = None) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    line = summary_line(result.stderr)
    assert line.startswith(f"{transferred} transferred"), line
    assert "0 failed" in line, line
    if already is not None:
        assert f"{already} already there" in line, line


def assert_clean_failure(result: Any) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def held_bytes(top: Path, sizes: dict[str, int], partial_name: Any) -> int:
    """Bytes of ``sizes`` already held under ``top``: complete files plus partials."""
    held = 0
    for name, size in sizes.items():
        path = top / name
        if path.is_file() and path.stat().st_size == size:
            held += size
            continue
        partial = path.with_name(partial_name(path.name))
        if partial.is_file():
            held += min(partial.stat().st_size, size)
    return held


def settled(measure: Any, timeout: float = 5.0) -> int:
    """``measure()`` once it stops changing (the server may still be writing its last chunk)."""
    deadline = time.monotonic() + timeout
    last = measure()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = measure()
        if now == last:
            return now
        last = now
    return last


# -- whole trees both ways ------------------------------------------------------------


def test_tree_round_trip_keeps_every_file_and_folder(port: int, storage_root: Path, local: Path) -> None:
    tree = make_tree(local / "TREE")
    up = run_cli(port, "put", "-r", "TREE", cwd=local)
    assert_ok_summary(up, transferred=len(TREE_FILES), already=0)
    assert_same_tree(tree, storage_root / "TREE")
    assert (storage_root / "TREE" / "empty_dir").is_dir()
    assert (storage_root / "TREE" / "sub/deeper/also empty").is_dir()

    down = run_cli(port, "get", "-r", "TREE", "OUTDIR/", cwd=local)
    assert_ok_summary(down, transferred=len(TREE_FILES), already=0)
    assert_same_tree(tree, local / "OUTDIR" / "TREE")
    assert_same_tree(storage_root / "TREE", local / "OUTDIR" / "TREE")
    for name, size in TREE_FILES.items():
        assert (local / "OUTDIR" / "TREE" / name).stat().st_size == size


def test_tree_again_is_all_already_there(port: int, storage_root: Path, local: Path) -> None:
    make_tree(local / "TREE", {"a.bin": 200 * KiB, "d/b.bin": 300 * KiB}, ["e"])
    assert run_cli(port, "put", "-r", "TREE", cwd=local).returncode == 0
    again = run_cli(port, "put", "-r", "TREE", cwd=local)
    assert_ok_summary(again, transferred=0, already=2)
    assert_same_tree(local / "TREE", storage_root / "TREE")


def test_put_tree_as_new_name_or_into_existing_folder(port: int, storage_root: Path, local: Path) -> None:
    tree = make_tree(local / "tree", {"a.txt": 10, "d/b.txt": 20}, ["e"])

    as_new = run_cli(port, "put", "-r", "tree", "dest", cwd=local)
    assert_ok_summary(as_new, transferred=2)
    assert_same_tree(tree, storage_root / "dest")  # copied AS dest
    assert not (storage_root / "dest" / "tree").exists()

    (storage_root / "existing").mkdir()
    into = run_cli(port, "put", "-r", "tree", "existing", cwd=local)
    assert_ok_summary(into, transferred=2)
    assert_same_tree(tree, storage_root / "existing" / "tree")  # copied INTO existing
    assert sorted(p.name for p in (storage_root / "existing").iterdir()) == ["tree"]


def test_get_tree_as_new_name_or_into_existing_folder(port: int, storage_root: Path, local: Path) -> None:
    tree = make_tree(storage_root / "tree", {"a.txt": 10, "d/b.txt": 20}, ["e"])

    as_new = run_cli(port, "get", "-r", "tree", "copy", cwd=local)
    assert_ok_summary(as_new, transferred=2)
    assert_same_tree(tree, local / "copy")

    (local / "existing").mkdir()
    into = run_cli(port, "get", "-r", "tree", "existing", cwd=local)
    assert_ok_summary(into, transferred=2)
    assert_same_tree(tree, local / "existing" / "tree")


def test_folder_without_r_is_refused(port: int, storage_root: Path, local: Path) -> None:
    make_tree(local / "tree", {"a.txt": 10}, [])
    make_tree(storage_root / "rtree", {"a.txt": 10}, [])
    for args in (("put", "tree"), ("get", "rtree")):
        result = run_cli(port, *args, cwd=local)
        assert_clean_failure(result)
        assert "folder" in result.stderr, result.stderr
    assert sorted(os.listdir(storage_root)) == ["rtree"]
    assert sorted(os.listdir(local)) == ["tree"]


# -- a tree transfer cut in the middle, then rerun --------------------------------------

CUT_FILES = {  # walk order: top files, then sub, then sub/deeper; the half falls inside sub/c.bin
    "a.bin": 1 * MiB,
    "b.bin": 1 * MiB,
    "sub/c.bin": 2 * MiB,
    "sub/d.bin": 1 * MiB,
    "sub/deeper/e.bin": 1 * MiB,
}
CUT_TOTAL = sum(CUT_FILES.values())


def headroom(files: int) -> int:
    return CUT_TOTAL // 100 + 4 * KiB * files


def test_cut_tree_upload_resumes_with_only_missing_bytes(port: int, storage_root: Path, local: Path) -> None:
    tree = make_tree(local / "TREE", CUT_FILES, ["empty"])
    with CuttingProxy(port, cut_after_up=CUT_TOTAL // 2) as proxy:
        cut = run_cli(proxy.port, "put", "-r", "TREE", cwd=local, timeout=30)
    assert_clean_failure(cut)

    remote = storage_root / "TREE"
    held = settled(lambda: held_bytes(remote, CUT_FILES, lambda n: f".{n}.ftp-partial"))
    assert 0 < held < CUT_TOTAL
    assert md5_of(remote / "a.bin") == md5_of(tree / "a.bin")
    assert (remote / "sub" / ".c.bin.ftp-partial").stat().st_size > 0  # the cut one
    missing = CUT_TOTAL - held

    with CuttingProxy(port) as counter:
        rerun = run_cli(counter.port, "put", "-r", "TREE", cwd=local, timeout=30)
    assert_ok_summary(rerun, transferred=3, already=2)  # c resumed, d and e new; a, b skipped
    assert_same_tree(tree, remote)
    assert counter.up <= missing + headroom(len(CUT_FILES)), (counter.up, missing)
    assert counter.up >= missing  # and the missing bytes did travel


def test_cut_tree_download_resumes_with_only_missing_bytes(port: int, storage_root: Path, local: Path) -> None:
    tree = make_tree(storage_root / "TREE", CUT_FILES, ["empty"])
    with CuttingProxy(port, cut_after_down=CUT_TOTAL // 2) as proxy:
        cut = run_cli(proxy.port, "get", "-r", "TREE", cwd=local, timeout=30)
    assert_clean_failure(cut)

    copy = local / "TREE"
    held = held_bytes(copy, CUT_FILES, lambda n: f"{n}.ftp-partial")
    assert 0 < held < CUT_TOTAL
    assert md5_of(copy / "a.bin") == md5_of(tree / "a.bin")
    assert (copy / "sub" / "c.bin.ftp-partial").stat().st_size > 0  # the cut one
    missing = CUT_TOTAL - held

    with CuttingProxy(port) as counter:
        rerun = run_cli(counter.port, "get", "-r", "TREE", cwd=local, timeout=30)
    assert_ok_summary(rerun, transferred=3, already=2)
    assert_same_tree(tree, copy)  # no partials or their metadata left behind
    assert counter.down <= missing + headroom(len(CUT_FILES)), (counter.down, missing)
    assert counter.down >= missing


# -- one bad file among good ones -------------------------------------------------------


def test_bad_files_in_tree_are_named_and_the_rest_arrive(port: int, storage_root: Path, local: Path) -> None:
    good = {"a.txt": 1000, "sub/b.bin": 300 * KiB, "sub/z.txt": 5}
    tree = make_tree(local / "TREE", good, ["sub/empty"])
    (tree / "sub" / "back\\slash.txt").write_bytes(b"the server refuses this name")
    (tree / "ghost.txt").symlink_to(tree / "nowhere")  # dangling: cannot be read

    result = run_cli(port, "put", "-r", "TREE", cwd=local)
    assert_clean_failure(result)
    line = summary_line(result.stderr)
    assert line.startswith(f"{len(good)} transferred"), line
    assert "2 failed" in line, line
    failed = failures(result.stderr)
    assert len(failed) == 2, result.stderr
    assert failed[0].startswith("TREE/ghost.txt: "), failed  # walk order: top files first
    assert failed[1].startswith("TREE/sub/back\\slash.txt: "), failed
    remote = storage_root / "TREE"
    for name in good:
        assert md5_of(remote / name) == md5_of(tree / name)
    assert (remote / "sub" / "empty").is_dir()
    assert not (remote / "ghost.txt").exists()


def test_get_tree_where_a_local_file_blocks_a_folder(port: int, storage_root: Path,
                                                    local: Path) -> None:
    good = {"a.txt": 1000, "other/b.bin": 300 * KiB}
    tree = make_tree(storage_root / "TREE", {**good, "sub/c.txt": 50}, [])
    (local / "TREE").mkdir()
    (local / "TREE" / "sub").write_text("a file where the folder should go")

    result = run_cli(port, "get", "-r", "TREE", cwd=local)
    assert_clean_failure(result)
    line = summary_line(result.stderr)
    assert line.startswith(f"{len(good)} transferred"), line
    assert "2 failed" in line, line  # sub and the file it should hold
    assert any(f.startswith("TREE/sub: ") for f in failures(result.stderr)), result.stderr
    for name in good:
        assert md5_of(local / "TREE" / name) == md5_of(tree / name)
    assert (local / "TREE" / "sub").read_text() == "a file where the folder should go"


def test_get_tree_where_a_local_folder_blocks_a_file(port: int, storage_root: Path,
                                                     local: Path) -> None:
    good = {"a.txt": 1000, "sub/b.bin": 300 * KiB}
    tree = make_tree(storage_root / "TREE", {**good, "sub/x.txt": 50}, [])
    (local / "TREE" / "sub" / "x.txt").mkdir(parents=True)  # a folder is in the way

    result = run_cli(port, "get", "-r", "TREE", cwd=local)
    for name in good:
        assert md5_of(local / "TREE" / name) == md5_of(tree / name)
    assert not (local / "TREE" / "sub" / "x.txt" / "x.txt").exists(), "file nested in the folder"
    assert_clean_failure(result)
    line = summary_line(result.stderr)
    assert "1 failed" in line, line
    assert [f.split(":")[0] for f in failures(result.stderr)] == ["TREE/sub/x.txt"], result.stderr


def test_put_tree_where_a_remote_folder_blocks_a_file(port: int, storage_root: Path,
                                                      local: Path) -> None:
    good = {"a.txt": 1000, "sub/b.bin": 300 * KiB}
    tree = make_tree(local / "TREE", {**good, "sub/x.txt": 50}, [])
    (storage_root / "TREE" / "sub" / "x.txt").mkdir(parents=True)  # a folder is in the way

    result = run_cli(port, "put", "-r", "TREE", cwd=local)
    for name in good:
        assert md5_of(storage_root / "TREE" / name) == md5_of(tree / name)
    assert not (storage_root / "TREE" / "sub" / "x.txt" / "x.txt").exists(), "file nested in the folder"
    assert_clean_failure(result)
    line = summary_line(result.stderr)
    assert "1 failed" in line, line
    assert [f.split(":")[0] for f in failures(result.stderr)] == ["TREE/sub/x.txt"], result.stderr


# -- several files and patterns ---------------------------------------------------------


def test_put_several_files_into_remote_folder(port: int, storage_root: Path, local: Path) -> None:
    random_file(local / "a.txt", 1234, seed=1)
    random_file(local / "b.txt", 200 * KiB, seed=2)
    (storage_root / "docs").mkdir()
    result = run_cli(port, "put", "a.txt", "b.txt", "docs/", cwd=local)
    assert_ok_summary(result, transferred=2)
    for name in ("a.txt", "b.txt"):
        assert md5_of(storage_root / "docs" / name) == md5_of(local / name)
    # several sources without the trailing slash: still into the folder
    random_file(local / "c.txt", 10, seed=3)
    result = run_cli(port, "put", "a.txt", "c.txt", "docs", cwd=local)
    assert_ok_summary(result, transferred=1, already=1)
    assert md5_of(storage_root / "docs" / "c.txt") == md5_of(local / "c.txt")


def test_put_with_pattern(port: int, storage_root: Path, local: Path) -> None:
    for seed, name in enumerate(["x1.log", "x2.log", "keep.txt"]):
        random_file(local / name, 1000 + seed, seed=seed)
    (storage_root / "logs").mkdir()
    result = run_cli(port, "put", "*.log", "logs", cwd=local)
    assert_ok_summary(result, transferred=2)
    assert sorted(p.name for p in (storage_root / "logs").iterdir()) == ["x1.log", "x2.log"]


def test_get_with_pattern(port: int, storage_root: Path, local: Path) -> None:
    sizes = {"one.bin": 100 * KiB, "two.bin": 3, "notes.txt": 50, "other.bin.txt": 7}
    for seed, (name, size) in enumerate(sizes.items()):
        random_file(storage_root / name, size, seed=seed)
    (storage_root / "dir.bin").mkdir()  # a folder matching the pattern, not copied without -r
    (local / "outdir").mkdir()
    result = run_cli(port, "get", "*.bin", "outdir/", cwd=local)
    assert "Traceback" not in result.stderr
    got = sorted(p.name for p in (local / "outdir").iterdir())
    assert got == ["one.bin", "two.bin"]
    for name in got:
        assert md5_of(local / "outdir" / name) == md5_of(storage_root / name)
    # The matching folder is reported (use -r) rather than silently dropped.
    assert result.returncode != 0
    assert failures(result.stderr) == ["dir.bin: is a folder (use -r)"], result.stderr


def test_get_with_pattern_files_only(port: int, storage_root: Path, local: Path) -> None:
    for seed, name in enumerate(["one.bin", "two.bin", "notes.txt"]):
        random_file(storage_root / name, 1000 * (seed + 1), seed=seed)
    (local / "outdir").mkdir()
    result = run_cli(port, "get", "*.bin", "outdir/", cwd=local)
    assert_ok_summary(result, transferred=2)
    assert sorted(p.name for p in (local / "outdir").iterdir()) == ["one.bin", "two.bin"]


@pytest.mark.parametrize("command, pattern, says", [
    ("get", "*.iso", "no remote file matches"),
    ("put", "*.iso", "no local file matches"),
])
def test_pattern_matching_nothing_fails_clearly(port: int, storage_root: Path, local: Path,
                                                command: str, pattern: str, says: str) -> None:
    (storage_root / "present.txt").write_text("x")
    (local / "present.txt").write_text("x")
    result = run_cli(port, command, pattern, cwd=local)
    assert_clean_failure(result)
    line = summary_line(result.stderr)
    assert "1 failed" in line, line
    assert failures(result.stderr) == [f"{pattern}: {says}"], result.stderr
    assert sorted(os.listdir(local)) == ["present.txt"]
    assert sorted(os.listdir(storage_root)) == ["present.txt"]


def test_remote_pattern_in_subfolder(port: int, storage_root: Path, local: Path) -> None:
    (storage_root / "isos").mkdir()
    for seed, name in enumerate(["a.iso", "b.iso", "c.img"]):
        random_file(storage_root / "isos" / name, 500 + seed, seed=seed)
    result = run_cli(port, "get", "isos/*.iso", cwd=local)
    assert_ok_summary(result, transferred=2)
    assert sorted(os.listdir(local)) == ["a.iso", "b.iso"]
