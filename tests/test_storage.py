"""Storage: the mapping of client paths to real ones, and confinement to the root."""
from __future__ import annotations

import errno
import os
import unicodedata
from pathlib import Path

import pytest

from ftpserver.errors import (Exists, Forbidden, IsADirectory, NotADirectory, NotEmpty,
                              NotFound, PathError, ProtocolError)
from ftpserver.storage import META_SUFFIX, PARTIAL_SUFFIX, Entry, Storage, _os_errors, is_reserved


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    root = tmp_path / "root"
    root.mkdir()
    (root / "sub").mkdir()
    (root / "sub" / "f.txt").write_bytes(b"inside")
    (root / "file.txt").write_bytes(b"hello")
    return Storage(root)


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A folder outside the root that no request may read or change."""
    folder = tmp_path / "canary"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(b"secret")
    (folder / "inner").mkdir()
    return folder


@pytest.fixture
def links(storage: Storage, canary: Path, tmp_path: Path) -> Storage:
    """Links in the root: out of it (folder, file, dangling) and within it."""
    root = storage.root
    (root / "out").symlink_to(canary, target_is_directory=True)
    (root / "outfile").symlink_to(canary / "secret.txt")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (root / "sub" / "up").symlink_to("../..", target_is_directory=True)
    (root / "inlink").symlink_to(root / "sub", target_is_directory=True)
    (root / "infile").symlink_to("file.txt")
    return storage


def snapshot(folder: Path) -> dict[str, tuple[bytes | None, float, int]]:
    """Every name under ``folder`` with its content, mtime and mode."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        state[str(path.relative_to(folder))] = (content, info.st_mtime, info.st_mode)
    return state


# -- virtual paths -----------------------------------------------------------

GOOD = [
    ("/", "", "/"),
    ("/a/b", "", "/a/b"),
    ("/", "/", "/"),
    ("/", ".", "/"),
    ("/", "a", "/a"),
    ("/", "/a/b/c", "/a/b/c"),
    ("/a", "b", "/a/b"),
    ("/a", "/b", "/b"),
    ("/a/b", "..", "/a"),
    ("/a/b", "../..", "/"),
    ("/a/b", "../c", "/a/c"),
    ("/", "a/..", "/"),
    ("/", "a/b/../../c", "/c"),
    ("/", "./a/./b/.", "/a/b"),
    ("/", "a//b///", "/a/b"),
    ("/", "//a", "/a"),
    ("/", "/etc/passwd", "/etc/passwd"),
    ("/x", "x", "/x/x"),
    ("/a/b", "c/../../d/./e", "/a/d/e"),
    ("/", "...", "/..."),
    ("/", "..a/b..", "/..a/b.."),
    ("/", ".hidden", "/.hidden"),
    ("/", "a b/ c ", "/a b/ c "),
    ("/", "ünïcödé/日本語", "/ünïcödé/日本語"),
    ("/", "x" * 255, "/" + "x" * 255),
    ("/", "é" * 127, "/" + "é" * 127),
    ("/", "name.ftp-partial.txt", "/name.ftp-partial.txt"),
    ("/", "ftp-partial", "/ftp-partial"),
]


@pytest.mark.parametrize("cwd, path, expected", GOOD)
def test_virtual_good(storage: Storage, cwd: str, path: str, expected: str) -> None:
    assert storage.virtual(cwd, path) == expected


BAD = [
    # ".." above the root, in every position
    ("/", ".."),
    ("/", "../"),
    ("/", "/.."),
    ("/", "/../"),
    ("/", "/../x"),
    ("/", "../x"),
    ("/", "a/../../x"),
    ("/", "a/../.."),
    ("/", "./.."),
    ("/", "a/b/../../../c"),
    ("/", "../../etc/passwd"),
    ("/", "../../../../../../../../etc/passwd"),
    ("/a", "../.."),
    ("/a/b", "../../../x"),
    ("/a", "/../a"),
    ("/", "/a/../../"),
    # NUL, control characters, backslashes
    ("/", "\x00"),
    ("/", "a\x00b"),
    ("/", "file.txt\x00.jpg"),
    ("/", "a/\x00/b"),
    ("/", "\n"),
    ("/", "a\rb"),
    ("/", "tab\there"),
    ("/", "\x1b[31mred"),
    ("/", "del\x7f"),
    ("/", "c1\x85"),
    ("/", "\\..\\x"),
    ("/", "..\\..\\etc\\passwd"),
    ("/", "a\\b"),
    ("/", "C:\\Windows"),
    # too long, not encodable
    ("/", "x" * 256),
    ("/", "x" * 300),
    ("/", "a/" + "x" * 300 + "/b"),
    ("/", "é" * 128),
    ("/", "/".join(["d" * 200] * 21)),
    ("/", "a/" * 2100),
    ("/", "lone\ud800surrogate"),
    # reserved names
    ("/", ".x" + PARTIAL_SUFFIX),
    ("/", ".x" + META_SUFFIX),
    ("/", "x" + PARTIAL_SUFFIX),
    ("/", PARTIAL_SUFFIX),
    ("/", "a/.b.ftp-partial/c"),
    ("/", ".b.ftp-partial.json/.."),
]


@pytest.mark.parametrize("cwd, path", BAD)
def test_virtual_refuses(storage: Storage, cwd: str, path: str) -> None:
    with pytest.raises(PathError):
        storage.virtual(cwd, path)
    with pytest.raises(PathError):
        storage.resolve(cwd, path)


@pytest.mark.parametrize("cwd, path", [("/", None), ("/", 3), ("/", b"a"), (None, "a")])
def test_virtual_not_a_string(storage: Storage, cwd: object, path: object) -> None:
    with pytest.raises(ProtocolError):
        storage.virtual(cwd, path)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["é", "café", "Å", "한국어", "ﬁle"])
def test_unicode_forms_are_equal(storage: Storage, name: str) -> None:
    nfc, nfd = unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)
    assert storage.virtual("/", nfd) == storage.virtual("/", nfc) == "/" + nfc
    assert storage.real(nfd) == storage.real(nfc)


def test_reserved_names() -> None:
    assert is_reserved(".a" + PARTIAL_SUFFIX) and is_reserved(".a" + META_SUFFIX)
    assert not is_reserved("a.txt") and not is_reserved(".ftp-partial.txt")


# -- real paths --------------------------------------------------------------

def test_root_is_created_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert Storage(tmp_path / "alias" / "a" / "b").root == tmp_path / "real" / "a" / "b"
    assert (tmp_path / "real" / "a" / "b").is_dir()


@pytest.mark.parametrize("cwd, path, expected", GOOD)
def test_resolve_stays_inside(storage: Storage, cwd: str, path: str, expected: str) -> None:
    vpath, real = storage.resolve(cwd, path)
    assert vpath == expected
    assert real == storage.root.joinpath(*expected.split("/")[1:])


def test_absolute_path_maps_inside_root(storage: Storage) -> None:
    assert storage.real("/etc/passwd") == storage.root / "etc" / "passwd"


@pytest.mark.parametrize("path", [
    "/out", "/out/", "/out/secret.txt", "/out/new", "/out/inner/new", "/out/../out",
    "/outfile", "/dangling", "/dangling/new", "/sub/up", "/sub/up/etc/passwd",
    "/inlink/up/x",
])
def test_links_out_of_root_refused(links: Storage, canary: Path, path: str) -> None:
    before = snapshot(canary)
    with pytest.raises(PathError):
        links.real(path)
    with pytest.raises(PathError):
        links.resolve("/", path.lstrip("/"))
    with pytest.raises(PathError):
        links.stat(path)
    with pytest.raises(PathError):
        links.open_read(path)
    with pytest.raises(PathError):
        links.listdir(path)
    with pytest.raises(PathError):
        links.mkdir(path)
    with pytest.raises(PathError):
        links.remove(path)
    with pytest.raises(PathError):
        links.rename(path, "/moved")
    with pytest.raises(PathError):
        links.rename("/file.txt", path)
    with pytest.raises(PathError):
        links.upload_place(path).close()
    assert snapshot(canary) == before
    assert (links.root / "file.txt").read_bytes() == b"hello"


def test_links_inside_root_are_followed(links: Storage) -> None:
    assert links.real("/inlink/f.txt") == links.root / "sub" / "f.txt"
    assert links.stat("/inlink") == Entry("inlink", "dir", 0, links.stat("/sub").mtime)
    with links.open_read("/infile") as f:
        assert f.read() == b"hello"
    assert [e.name for e in links.listdir("/inlink")] == ["f.txt"]


def test_link_onto_partial_refused(storage: Storage) -> None:
    (storage.root / (".f" + PARTIAL_SUFFIX)).write_bytes(b"half")
    (storage.root / "peek").symlink_to(".f" + PARTIAL_SUFFIX)
    with pytest.raises(PathError):
        storage.open_read("/peek")
    assert "peek" not in [e.name for e in storage.listdir("/")]


# -- reading -----------------------------------------------------------------

def test_listdir_skips_links_out_and_partials(links: Storage) -> None:
    root = links.root
    (root / (".file.txt" + PARTIAL_SUFFIX)).write_bytes(b"part")
    (root / (".file.txt" + META_SUFFIX)).write_text("{}")
    os.mkfifo(root / "fifo")
    (root / "bad\nname").write_bytes(b"")
    listing = links.listdir("/")
    assert [e.name for e in listing] == ["file.txt", "infile", "inlink", "sub"]
    assert [e.type for e in listing] == ["file", "file", "dir", "dir"]
    assert listing[0].size == 5
    info = (root / "file.txt").stat()
    assert listing[0].to_json() == {"name": "file.txt", "type": "file", "size": 5,
                                    "mtime": info.st_mtime, "mtime_ns": info.st_mtime_ns}


@pytest.mark.parametrize("path, error", [
    ("/missing", NotFound), ("/file.txt", NotADirectory), ("/file.txt/x", NotADirectory),
])
def test_listdir_errors(storage: Storage, path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        storage.listdir(path)


def test_stat(storage: Storage) -> None:
    assert storage.stat("/sub/f.txt").to_json()["size"] == 6
    assert storage.stat("/").type == "dir" and storage.stat("/").name == "/"
    with pytest.raises(NotFound):
        storage.stat("/missing")


def test_open_read(storage: Storage) -> None:
    with storage.open_read("/sub/f.txt") as f:
        assert f.read() == b"inside"
    with pytest.raises(NotFound):
        storage.open_read("/missing")
    with pytest.raises(IsADirectory):
        storage.open_read("/sub")
    os.mkfifo(storage.root / "fifo")
    with pytest.raises(Forbidden):
        storage.open_read("/fifo")


# -- partial uploads ---------------------------------------------------------

def test_upload_place(storage: Storage) -> None:
    with storage.upload_place("/sub/new.bin") as place:
        assert place.name == "new.bin"
        assert place.folder_identity() == (os.stat(storage.root / "sub").st_dev,
                                           os.stat(storage.root / "sub").st_ino)


@pytest.mark.parametrize("path, error", [
    ("/", PathError), ("/missing/x", NotFound), ("/file.txt/x", NotADirectory),
    ("/sub", IsADirectory), ("/" + "x" * 250, PathError),
])
def test_upload_place_errors(storage: Storage, path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        storage.upload_place(path).close()


def test_count_and_usage(links: Storage) -> None:
    root = links.root
    (root / (".a" + PARTIAL_SUFFIX)).write_bytes(b"12345")
    (root / (".a" + META_SUFFIX)).write_text("{}")
    (root / "sub" / (".orphan" + PARTIAL_SUFFIX)).write_bytes(b"123")
    (root / "sub" / (".lonely" + META_SUFFIX)).write_text("{}")
    # hello + inside + 12345 + {} + 123 + {}; links (to the canary too) are not followed
    assert links.usage() == 5 + 6 + 5 + 2 + 3 + 2
    assert links.count() == (links.usage(), 1)


# -- changing ----------------------------------------------------------------

def test_mkdir(storage: Storage) -> None:
    storage.mkdir("/sub/new")
    assert (storage.root / "sub" / "new").is_dir()
    with pytest.raises(Exists):
        storage.mkdir("/sub/new")
    with pytest.raises(Exists):
        storage.mkdir("/file.txt")
    with pytest.raises(NotFound):
        storage.mkdir("/missing/new")
    with pytest.raises(NotADirectory):
        storage.mkdir("/file.txt/new")
    with pytest.raises(PathError):
        storage.mkdir("/")


def test_remove(storage: Storage) -> None:
    with pytest.raises(NotEmpty):
        storage.remove("/sub")
    storage.remove("/sub/f.txt")
    storage.remove("/sub")
    storage.remove("/file.txt")
    assert list(storage.root.iterdir()) == []
    with pytest.raises(NotFound):
        storage.remove("/file.txt")
    with pytest.raises(PathError):
        storage.remove("/")


def test_remove_folder_with_only_partials(storage: Storage) -> None:
    (storage.root / "sub" / "f.txt").unlink()
    (storage.root / "sub" / (".x" + PARTIAL_SUFFIX)).write_bytes(b"x")
    (storage.root / "sub" / (".x" + META_SUFFIX)).write_text("{}")
    storage.remove("/sub")
    assert not (storage.root / "sub").exists()


def test_remove_link_inside_root_removes_only_the_link(links: Storage) -> None:
    links.remove("/inlink")
    links.remove("/infile")
    assert (links.root / "sub" / "f.txt").read_bytes() == b"inside"
    assert (links.root / "file.txt").read_bytes() == b"hello"


def test_rename(storage: Storage) -> None:
    storage.rename("/file.txt", "/sub/moved.txt")
    assert (storage.root / "sub" / "moved.txt").read_bytes() == b"hello"
    storage.rename("sub", "/folder")
    assert (storage.root / "folder" / "f.txt").exists()


@pytest.mark.parametrize("src, dst, error", [
    ("/missing", "/x", NotFound),
    ("/file.txt", "/sub", Exists),
    ("/sub", "/file.txt", Exists),
    ("/file.txt", "/file.txt", Exists),
    ("/sub/f.txt", "/file.txt", Exists),
    ("/file.txt", "/missing/x", NotFound),
    ("/sub", "/sub/inner", Forbidden),
    ("/", "/x", PathError),
    ("/file.txt", "/", PathError),
    ("/file.txt", "/../x", PathError),
    ("/file.txt", "/.x" + PARTIAL_SUFFIX, PathError),
])
def test_rename_errors(storage: Storage, src: str, dst: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        storage.rename(src, dst)
    assert (storage.root / "file.txt").read_bytes() == b"hello"
    assert (storage.root / "sub" / "f.txt").read_bytes() == b"inside"


@pytest.mark.parametrize("code, error", [
    (errno.ENOENT, NotFound), (errno.EEXIST, Exists), (errno.ENOTEMPTY, NotEmpty),
    (errno.EISDIR, IsADirectory), (errno.ENOTDIR, NotADirectory), (errno.EACCES, Forbidden),
    (errno.EPERM, Forbidden), (errno.ENAMETOOLONG, PathError), (errno.ELOOP, PathError),
])
def test_os_errors_mapped(code: int, error: type[Exception]) -> None:
    with pytest.raises(error, match="/some/path"):
        with _os_errors("/some/path"):
            raise OSError(code, os.strerror(code))


def test_other_os_errors_pass_through() -> None:
    with pytest.raises(OSError):
        with _os_errors("/x"):
            raise OSError(errno.EIO, "I/O error")


def test_rename_cannot_carry_away_another_accounts_root(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    private = root / "home" / "alice"
    private.mkdir(parents=True)
    (private / "secret.txt").write_bytes(b"alice only")
    anonymous = Storage(root, excluded=(private,))
    with pytest.raises(PathError):
        anonymous.rename("/home", "/h2")
    assert (private / "secret.txt").read_bytes() == b"alice only"
    assert "alice" not in [e.name for e in anonymous.listdir("/home")]
