"""Hostile neighbours (SPEC §5): local users who plant links and swap folders under
a running server, clients who move or remove what another client is writing, odd
names, and a put header whose fields only look right.

Every test runs a real server on loopback and checks what a user relies on: the
files outside the root, the files on disk under their names, the replies.
"""
from __future__ import annotations

import collections
import hashlib
import os
import socket
import stat
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from ftpclient.client import Client
from ftpserver.auth import hash_password
from ftpserver.config import Config, User
from ftpserver.server import FTPServer

from helpers import LOOPBACK, ServerProcess, md5_of, raw_frame, recv_exact, recv_frame, run_cli

#: Seconds any single reply may take before the test gives up on it.
TIMEOUT = 10
#: Bounds of every race loop: whichever comes first.
RACE_ROUNDS = 300
RACE_SECONDS = 10.0


# -- raw wire helpers ------------------------------------------------------------------

def connect(port: int, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection((LOOPBACK, port), timeout=timeout)


def reply_or_none(sock: socket.socket) -> dict[str, Any] | None:
    """The next reply header, or None if the server closed the connection instead."""
    try:
        return recv_frame(sock)
    except (ConnectionError, OSError):
        return None


def one_shot_put(port: int, name: str, data: bytes) -> dict[str, Any] | None:
    """The tutorial's put: header and body at once; the reply (None: closed without one)."""
    with connect(port) as sock:
        try:
            sock.sendall(raw_frame({"cmd": "put", "filename": name, "filesize": len(data)}) + data)
        except OSError:
            pass  # refused before the body: the reply (if any) is still there to read
        return reply_or_none(sock)


def begin_put(port: int, name: str, size: int, source: str) -> tuple[socket.socket, dict[str, Any]]:
    """Start a resumable put; return the connection and the server's first reply."""
    sock = connect(port)
    sock.sendall(raw_frame({"cmd": "put", "filename": name, "filesize": size, "resume": True,
                            "source": source}))
    return sock, recv_frame(sock)


def finish_put(sock: socket.socket, rest: bytes, whole: bytes) -> dict[str, Any] | None:
    """Send the rest of a resumable put's body and its trailer; the final reply or None."""
    try:
        sock.sendall(rest + raw_frame({"md5": hashlib.md5(whole).hexdigest()}))
    except OSError:
        return None
    return reply_or_none(sock)


def ask_on(port: int, header: dict[str, Any]) -> dict[str, Any] | None:
    """One request on a fresh connection."""
    with connect(port) as sock:
        sock.sendall(raw_frame(header))
        return reply_or_none(sock)


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` (never following links): content, 'dir' or link target."""
    found: dict[str, object] = {}
    for top, dirs, files, topfd in os.fwalk(folder):
        for name in dirs + files:
            path = os.path.join(top, name)
            info = os.lstat(name, dir_fd=topfd)
            key = os.path.relpath(path, folder)
            if stat.S_ISLNK(info.st_mode):
                found[key] = ("link", os.readlink(name, dir_fd=topfd))
            elif stat.S_ISDIR(info.st_mode):
                found[key] = "dir"
            else:
                found[key] = Path(path).read_bytes()
    return found


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the root holding a canary a server must never change."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "canary.txt").write_bytes(b"canary: nothing may write here\n" * 100)
    return folder


# -- 1. links planted at the names of partial uploads ---------------------------------

PLANTED = {
    "partial": ".{}.ftp-partial",
    "metadata": ".{}.ftp-partial.json",
}


def _plant(root: Path, name: str, which: str, target: Path) -> Path:
    link = root / PLANTED[which].format(name)
    link.symlink_to(target)
    return link


def _assert_stored_or_absent(root: Path, name: str, data: bytes) -> None:
    final = root / name
    if os.path.lexists(final):
        assert not final.is_symlink(), f"{name} is a link: {os.readlink(final)}"
        assert stat.S_ISREG(final.lstat().st_mode)
        assert final.read_bytes() == data


@pytest.mark.parametrize("which", PLANTED)
def test_one_shot_put_never_writes_through_a_planted_link(which: str, port: int, storage_root: Path,
                                                          outside: Path) -> None:
    canary = outside / "canary.txt"
    before = snapshot(outside)
    _plant(storage_root, "report.txt", which, canary)
    data = b"uploaded bytes\n" * 500
    reply = one_shot_put(port, "report.txt", data)
    assert snapshot(outside) == before, "the canary outside the root was changed"
    _assert_stored_or_absent(storage_root, "report.txt", data)
    if reply and reply.get("ok"):
        assert (storage_root / "report.txt").read_bytes() == data


@pytest.mark.parametrize("which", PLANTED)
def test_cli_put_never_writes_through_a_planted_link(which: str, port: int, storage_root: Path,
                                                     outside: Path, local: Path) -> None:
    canary = outside / "canary.txt"
    before = snapshot(outside)
    _plant(storage_root, "report.txt", which, canary)
    data = b"resumable upload\n" * 700
    (local / "report.txt").write_bytes(data)
    done = run_cli(port, "-q", "put", "report.txt", cwd=local)
    assert "Traceback" not in done.stderr
    assert snapshot(outside) == before, "the canary outside the root was changed"
    _assert_stored_or_absent(storage_root, "report.txt", data)
    if done.returncode == 0:
        assert (storage_root / "report.txt").read_bytes() == data
    else:
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's file needs root")
@pytest.mark.parametrize("which", PLANTED)
def test_a_file_another_user_planted_at_a_partial_name_never_becomes_the_upload(
        which: str, port: int, storage_root: Path, local: Path) -> None:
    # A neighbour who may write into the folder plants a world-writable file at the
    # partial's (or its record's) name and keeps it open, hoping to edit the stored
    # file after it was verified.
    planted = storage_root / PLANTED[which].format("report.txt")
    planted.write_bytes(b"")
    os.chown(planted, 65534, 65534)
    planted.chmod(0o666)
    data = b"verified upload\n" * 100_000  # a body that is recorded from its start
    (local / "report.txt").write_bytes(data)
    with open(planted, "r+b") as kept:
        done = run_cli(port, "-q", "put", "report.txt", cwd=local)
        assert done.returncode == 0, done.stderr
        stored = storage_root / "report.txt"
        assert os.stat(stored).st_ino != os.fstat(kept.fileno()).st_ino
        assert stored.stat().st_uid == os.geteuid()
        kept.write(b"EVIL")
        kept.flush()
    assert stored.read_bytes() == data


def test_put_onto_a_link_to_outside_never_writes_through(port: int, storage_root: Path,
                                                         outside: Path) -> None:
    # Holds today (the put is refused); test_hardening also expects a refusal here.
    canary = outside / "canary.txt"
    before = snapshot(outside)
    (storage_root / "report.txt").symlink_to(canary)
    data = b"new content\n" * 10
    one_shot_put(port, "report.txt", data)
    sock, first = begin_put(port, "report.txt", len(data), "tag-1")
    with sock:
        if first.get("ok"):
            finish_put(sock, data, data)
    assert snapshot(outside) == before
    final = storage_root / "report.txt"
    if not final.is_symlink():  # the put replaced the link: with a file holding the upload
        assert stat.S_ISREG(final.lstat().st_mode) and final.read_bytes() == data


def test_link_planted_at_the_name_during_a_put_is_replaced_not_followed(
        port: int, storage_root: Path, outside: Path) -> None:
    # Holds today: the commit renames over the link.
    canary = outside / "canary.txt"
    before = snapshot(outside)
    data = b"0123456789" * 10_000
    sock, first = begin_put(port, "report.txt", len(data), "tag-1")
    with sock:
        assert first["ok"] is True, first
        sock.sendall(data[:50_000])
        (storage_root / "report.txt").symlink_to(canary)
        reply = finish_put(sock, data[50_000:], data)
    assert snapshot(outside) == before
    final = storage_root / "report.txt"
    if reply and reply.get("ok"):
        assert not final.is_symlink() and final.read_bytes() == data


# -- 2. a folder swapped for a link to outside while requests run ------------------------

OUTSIDE_SECRET = b"OUTSIDE-MARKER: a file outside the root\n"


class _Wire:
    """A raw connection that comes back after the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def _sock(self) -> socket.socket:
        if self.sock is None:
            self.sock = connect(self.port, timeout=5)
        return self.sock

    def drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def ask(self, header: dict[str, Any], body: bytes = b"") -> dict[str, Any] | None:
        try:
            sock = self._sock()
            sock.sendall(raw_frame(header) + body)
            reply = recv_frame(sock)
        except OSError:
            self.drop()
            return None
        if not reply.get("ok") and body:
            self.drop()  # a one-shot put refused before its body: the server hangs up
        return reply

    def get(self, name: str) -> bytes | None:
        """The bytes of a get, or None if it was refused or cut."""
        try:
            sock = self._sock()
            sock.sendall(raw_frame({"cmd": "get", "filename": name}))
            header = recv_frame(sock)
            if not header.get("ok"):
                return None
            body = recv_exact(sock, header["filesize"] - header["offset"])
            recv_frame(sock)
            return body
        except OSError:
            self.drop()
            return None


def _restore(folder: Path, content: dict[str, bytes]) -> None:
    for top, dirs, files, topfd in os.fwalk(folder, topdown=False):
        for name in files:
            os.unlink(name, dir_fd=topfd)
        for name in dirs:
            if os.path.islink(os.path.join(top, name)):
                os.unlink(name, dir_fd=topfd)
            else:
                os.rmdir(name, dir_fd=topfd)
    for name, data in content.items():
        (folder / name).write_bytes(data)


def test_swapping_a_folder_for_a_link_never_reaches_outside(server_process: ServerProcess,
                                                            tmp_path: Path) -> None:
    """A local user swaps ``d`` for a link to ``outside`` over and over while a client
    works in ``d``: nothing outside is read, written, moved or removed."""
    root = tmp_path / "storage"
    outside = tmp_path / "outside"
    outside.mkdir()
    original = {"secret": OUTSIDE_SECRET, "victim": b"outside victim\n", "a": b"outside a\n"}
    _restore(outside, original)
    folder, parked = root / "d", root / "d.real"
    folder.mkdir()
    (folder / "secret").write_bytes(b"inside secret\n")
    before = snapshot(outside)
    port = server_process.start().port
    stop = threading.Event()
    swaps = [0]
    trouble: list[BaseException] = []

    def swapper() -> None:
        try:
            swap()
        except BaseException as error:  # reported below: a dead swapper proves nothing
            trouble.append(error)
            if not folder.is_dir() and parked.is_dir():
                if folder.is_symlink():
                    folder.unlink()
                os.rename(parked, folder)

    def swap() -> None:
        while not stop.is_set():
            os.rename(folder, parked)
            folder.symlink_to(outside, target_is_directory=True)
            # Refill d for the next round while it is parked.
            for name, data in (("victim", b"inside victim\n"), ("a", b"inside a\n")):
                if not (parked / name).exists():
                    (parked / name).write_bytes(data)
            if (parked / "b").exists():
                (parked / "b").unlink()
            if (parked / "new").is_dir():
                os.rmdir(parked / "new")
            time.sleep(0.0003)
            folder.unlink()
            os.rename(parked, folder)
            swaps[0] += 1
            time.sleep(0.0003)

    for name, data in (("victim", b"inside victim\n"), ("a", b"inside a\n")):
        (folder / name).write_bytes(data)
    thread = threading.Thread(target=swapper, daemon=True)
    wire = _Wire(port)
    rounds = reached = leaked = 0
    changes: collections.Counter[str] = collections.Counter()
    thread.start()
    try:
        deadline = time.monotonic() + RACE_SECONDS
        while rounds < RACE_ROUNDS and time.monotonic() < deadline:
            rounds += 1
            if wire.get("d/secret") == OUTSIDE_SECRET:
                leaked += 1
            wire.ask({"cmd": "put", "filename": "d/x", "filesize": 9}, b"by client")
            wire.ask({"cmd": "rm", "path": "d/victim"})
            wire.ask({"cmd": "mv", "path": "d/a", "to": "d/b"})
            wire.ask({"cmd": "mkdir", "path": "d/new"})
            now = snapshot(outside)
            if now != before:
                reached += 1
                changes.update(name for name in before.keys() | now.keys()
                               if before.get(name) != now.get(name))
                _restore(outside, original)  # and count the next rounds on their own
    finally:
        stop.set()
        thread.join(10)
        wire.drop()
    assert not trouble, f"the swapping thread failed: {trouble[0]!r}"
    # On a663ff3 (2 cores) 20-33 % of the 300 rounds reached outside (each of put, rm,
    # mv and mkdir went through the swapped link) and 3-8 gets returned the outside secret.
    assert (reached, leaked) == (0, 0), (
        f"{reached} of {rounds} rounds changed files outside the root, {leaked} gets read "
        f"the secret outside ({swaps[0]} swaps); changed outside: {dict(changes)}")
    assert ask_on(port, {"cmd": "ls", "path": "d"})["ok"] is True  # still serving


# -- 3. an upload in flight belongs to its writer ----------------------------------------

def _body(seed: int, size: int) -> bytes:
    block = hashlib.sha512(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def test_moving_the_folder_of_an_upload_in_flight_never_mixes_two_files(
        port: int, storage_root: Path) -> None:
    """A writes d/x and stalls; B moves d to e and puts e/x whole; then A finishes.
    Every ok reply with a digest must be true of the file under the name it gives."""
    (storage_root / "d").mkdir()
    a_data, b_data = _body(1, 200_000), _body(2, 150_000)
    oks: list[dict[str, Any]] = []  # ok put replies, in the order they came
    sock_a, first = begin_put(port, "d/x", len(a_data), "writer-a")
    with sock_a:
        assert first["ok"] is True, first
        sock_a.sendall(a_data[:100_000])
        time.sleep(0.3)  # the server has written A's first half
        moved = ask_on(port, {"cmd": "mv", "path": "d", "to": "e"})
        assert moved is not None
        if moved["ok"]:
            sock_b, b_first = begin_put(port, "e/x", len(b_data), "writer-b")
            with sock_b:
                b_reply = finish_put(sock_b, b_data, b_data) if b_first["ok"] else b_first
            assert b_reply is not None
            if b_reply["ok"]:
                assert b_reply["md5"] == md5(b_data)
                oks.append(b_reply)
            else:
                assert b_reply["error"] == "busy", b_reply
        else:
            assert moved["error"] == "busy", moved
        a_reply = finish_put(sock_a, a_data[100_000:], a_data)
    if a_reply is not None and a_reply["ok"]:
        assert a_reply["md5"] == md5(a_data)
        oks.append(a_reply)
    if not moved["ok"]:  # the simple case: A's upload ends where it started, whole
        assert a_reply is not None and a_reply["ok"] is True, a_reply
        assert (storage_root / "d" / "x").read_bytes() == a_data
    last: dict[str, str] = {}
    for reply in oks:
        last[reply["filename"]] = reply["md5"]
    for name, digest in last.items():
        path = storage_root / name.lstrip("/")
        assert path.is_file(), f"{name} was reported stored but is not there"
        assert md5_of(path) == digest, f"{name} does not hold the bytes its put reported"


def test_removing_the_folder_of_an_upload_in_flight_is_refused(port: int,
                                                              storage_root: Path) -> None:
    folder = storage_root / "d"
    folder.mkdir()
    (folder / "other.txt").write_bytes(b"other")
    data = _body(3, 200_000)
    sock, first = begin_put(port, "d/x", len(data), "writer-a")
    with sock:
        assert first["ok"] is True, first
        sock.sendall(data[:100_000])
        time.sleep(0.3)
        assert ask_on(port, {"cmd": "rm", "path": "d/other.txt"})["ok"] is True
        removed = ask_on(port, {"cmd": "rm", "path": "d"})
        assert removed is not None and removed["ok"] is False, removed
        assert removed["error"] in ("busy", "not_empty"), removed
        reply = finish_put(sock, data[100_000:], data)
    assert reply is not None and reply["ok"] is True, reply
    assert (folder / "x").read_bytes() == data


# -- 4. the digest cache never vouches for a replaced file -------------------------------

def test_stat_md5_is_of_the_bytes_on_disk_after_local_and_remote_replacement(
        port: int, storage_root: Path, client: Client, local: Path) -> None:
    """Holds today (the cache key has the inode and the change time)."""
    first, second, third = _body(4, 4096), _body(5, 4096), _body(6, 4096)
    (local / "x").write_bytes(first)
    client.put(local / "x", "x")
    target = storage_root / "x"
    assert client.stat("x", md5=True)["md5"] == md5(first)
    old = target.stat()
    with open(target, "r+b") as file:  # same size, same mtime: only the bytes differ
        file.write(second)
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert client.stat("x", md5=True)["md5"] == md5_of(target) == md5(second)
    fresh = local / "x.new"
    fresh.write_bytes(third)
    os.utime(fresh, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(fresh, target)
    assert client.stat("x", md5=True)["md5"] == md5_of(target) == md5(third)
    client.rm("x")
    (local / "x").write_bytes(first)
    client.put(local / "x", "x")
    assert client.stat("x", md5=True)["md5"] == md5_of(target) == md5(first)


def test_a_file_replaced_as_a_put_commits_never_gets_the_puts_digest(
        server_process: ServerProcess, tmp_path: Path) -> None:
    """A local user renames another file over x just as a put of x commits; stat md5
    must describe the bytes then on disk, never the put's."""
    root = tmp_path / "storage"
    port = server_process.start().port
    target = root / "x"
    size = 4096
    tries = mismatches = replaced = 0
    deadline = time.monotonic() + RACE_SECONDS
    with connect(port) as sock:
        while tries < RACE_ROUNDS and time.monotonic() < deadline:
            tries += 1
            ours, theirs = _body(100 + tries, size), _body(10_000 + tries, size)
            spare = root / "spare"
            spare.write_bytes(theirs)
            old = target.stat().st_ino if target.exists() else None
            stop = threading.Event()

            def replace_on_commit() -> None:
                # Spin until the put's file takes the name, then rename ours over it.
                limit = time.monotonic() + 2
                while not stop.is_set() and time.monotonic() < limit:
                    try:
                        if os.stat(target).st_ino != old:
                            os.rename(spare, target)
                            return
                    except FileNotFoundError:
                        pass

            thread = threading.Thread(target=replace_on_commit, daemon=True)
            thread.start()
            sock.sendall(raw_frame({"cmd": "put", "filename": "x", "filesize": size}) + ours)
            put = recv_frame(sock)
            thread.join(5)
            stop.set()
            assert put["ok"] is True, put
            if spare.exists():
                spare.unlink()
                continue
            replaced += 1
            sock.sendall(raw_frame({"cmd": "stat", "path": "x", "md5": True}))
            answer = recv_frame(sock)
            if answer["md5"] != md5_of(target):
                mismatches += 1
    # On a663ff3 about 1 try in 10 had stat answer the put's digest for the other file:
    # the server remembers a received file's digest by the path, after the rename.
    assert mismatches == 0, (f"stat md5 vouched for bytes not on disk in {mismatches} of "
                             f"{replaced} replacements ({tries} tries)")


# -- 7. odd names -------------------------------------------------------------------

def test_a_file_stored_under_an_nfd_name_can_be_fetched_and_removed_by_its_listed_name(
        client: Client, storage_root: Path, local: Path) -> None:
    nfd = unicodedata.normalize("NFD", "café.txt")
    (storage_root / nfd).write_bytes(b"decomposed")
    names = [entry["name"] for entry in client.ls("")]
    assert len(names) == 1, names
    shown = names[0]
    assert unicodedata.normalize("NFC", shown) == "café.txt"
    client.get(shown, local / "got.txt", exact=True)
    assert (local / "got.txt").read_bytes() == b"decomposed"
    client.rm(shown)
    assert not [name for name in os.listdir(storage_root)
                if unicodedata.normalize("NFC", name) == "café.txt"]


@pytest.mark.parametrize("name", [".X.FTP-PARTIAL", "a.Ftp-Partial.json", ".x.ftp-Partial",
                                  "b.FTP-PARTIAL.JSON"])
def test_reserved_names_are_refused_whatever_their_case(name: str, port: int,
                                                        storage_root: Path) -> None:
    reply = one_shot_put(port, name, b"hello")
    assert reply is not None and reply["ok"] is False, reply
    assert reply["error"] == "forbidden", reply
    sock, first = begin_put(port, name, 5, "tag")
    sock.close()
    assert first["ok"] is False and first["error"] == "forbidden", first
    assert not os.path.lexists(storage_root / name)


def test_anonymous_stat_of_a_users_root_and_of_nothing_answer_alike(storage_root: Path) -> None:
    """Whether /alice is another account's root must not show to anonymous sessions."""
    user = User("alice", password=hash_password("pw", iterations=4096).line(),
                root=storage_root / "alice")
    srv = FTPServer(Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30,
                           users={"alice": user}))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        (storage_root / "alice").mkdir(exist_ok=True)
        port = srv.server_address[1]
        answers = {}
        for path in ("/alice", "/carol", "alice/x", "carol/x"):
            reply = ask_on(port, {"cmd": "stat", "path": path})
            assert reply is not None and reply["ok"] is False, reply
            answers[path] = reply["error"]
        assert answers["/alice"] == answers["/carol"], answers
        assert answers["alice/x"] == answers["carol/x"], answers
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# -- 8. field types in a put header -------------------------------------------------

@pytest.mark.parametrize("value", ["true", 1])
def test_a_resume_field_that_is_not_a_boolean_is_bad_request_at_once(value: object, port: int,
                                                                     storage_root: Path) -> None:
    with connect(port, timeout=2) as sock:
        sock.sendall(raw_frame({"cmd": "put", "filename": "x", "filesize": 10, "resume": value,
                                "source": "tag"}))
        try:
            reply = recv_frame(sock)
        except TimeoutError:
            pytest.fail("no reply within 2 s: the server is waiting for a body")
    assert reply["ok"] is False and reply["error"] == "bad_request", reply
    assert not (storage_root / "x").exists()
