"""Hostile paths, stalled and idle clients, max_connections, and TLS.

Confinement: a table of hostile paths is tried with every command that takes a
path, and the canary folder beside the root must be unchanged afterwards.  The
rest checks that no client can hold up another, and that TLS works end to end
with the real CLI.
"""
from __future__ import annotations

import hashlib
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ftpclient.client import Client
from ftpserver.config import Config, TLSConfig
from ftpserver.errors import Busy
from ftpserver import handler as handler_module
from ftpserver.server import FTPServer

from helpers import (LOOPBACK, ask, raw_frame, recv_frame, CuttingProxy, make_cert, md5_of,
                     random_file, run_cli)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    assert "Traceback" not in text
    return lines[0]


def closed_by_peer(sock: socket.socket) -> bool:
    """Read until the peer closes (True) or the socket's timeout passes (False)."""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


ServerFactory = Callable[..., FTPServer]


@pytest.fixture
def make_server(storage_root: Path) -> Iterator[ServerFactory]:
    """Start in-process servers on storage_root with Config overrides."""
    started: list[tuple[FTPServer, threading.Thread]] = []

    def make(**overrides: Any) -> FTPServer:
        settings: dict[str, Any] = {"host": LOOPBACK, "port": 0, "root": storage_root,
                                    "idle_timeout": 30}
        settings.update(overrides)
        srv = FTPServer(Config(**settings))
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        started.append((srv, thread))
        return srv

    yield make
    for srv, thread in started:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# -- confinement ------------------------------------------------------------------

def snapshot(folder: Path, mtimes: bool = True) -> dict[str, tuple[Any, ...]]:
    """Names, types, contents (and mtimes) of everything under ``folder``, links not followed."""
    found: dict[str, tuple[Any, ...]] = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content: Any = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = path.read_bytes()
            else:
                content = None
            found[str(path.relative_to(folder))] = (
                stat.S_IFMT(info.st_mode), content, info.st_mode,
                info.st_mtime_ns if mtimes else 0)
    info = folder.lstat()
    found["."] = (info.st_mode, info.st_mtime_ns if mtimes else 0)
    return found


@pytest.fixture
def jail(tmp_path: Path, storage_root: Path) -> Path:
    """The root holds a file, a folder and links out; a canary folder lies beside it."""
    canary = tmp_path / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "secret.txt").write_text("canary secret")
    (canary / "sub" / "nested.txt").write_text("nested canary")
    (storage_root / "inside.txt").write_text("inside")
    (storage_root / "dir").mkdir()
    (storage_root / "escape").symlink_to(canary)                    # absolute link to a folder
    (storage_root / "escape_rel").symlink_to(Path("..") / "canary")  # relative link to a folder
    (storage_root / "filelink").symlink_to(canary / "secret.txt")   # link to a file
    (storage_root / "dir" / "deeplink").symlink_to(Path("..") / ".." / "canary" / "secret.txt")
    (storage_root / "up").symlink_to("..")
    (storage_root / "rootlink").symlink_to("/")
    return canary


HOSTILE = [
    "..", "../x", "/../x", "a/../../x", "x/../../..", "\x00", "a\x00b", "..\\..\\x", "a\\b",
    "x" * 300, "a/" * 2100 + "x", "\x1b[2J", "dir/\x7f", "/..", "dir/../..",
    "../canary", "../canary/secret.txt", "/../canary/secret.txt", "dir/../../canary/secret.txt",
    "escape", "escape/secret.txt", "escape/new", "escape/sub", "escape/sub/nested.txt",
    "escape_rel/secret.txt", "filelink", "dir/deeplink", "up/canary/secret.txt", "up/canary",
    "rootlink/etc/passwd", "rootlink/tmp", "inside.txt/../../canary",
    "x.ftp-partial", ".inside.txt.ftp-partial.json",
]

REFUSALS = {"forbidden", "not_found"}


def try_everything(port: int, path: str) -> list[tuple[str, dict[str, Any] | str]]:
    """Send every path-taking command with ``path``; return the ones not refused."""
    requests: list[tuple[str, dict[str, Any], bytes]] = [
        ("put", {"cmd": "put", "filename": path, "filesize": 6, "resume": True,
                 "source": "hostile"}, b""),
        ("put one-shot", {"cmd": "put", "filename": path, "filesize": 6}, b"pwned!"),
        ("get", {"cmd": "get", "filename": path}, b""),
        ("ls", {"cmd": "ls", "path": path}, b""),
        ("stat", {"cmd": "stat", "path": path, "md5": True}, b""),
        ("cd", {"cmd": "cd", "path": path}, b""),
        ("mkdir", {"cmd": "mkdir", "path": path}, b""),
        ("rm", {"cmd": "rm", "path": path}, b""),
        ("mv from", {"cmd": "mv", "path": path, "to": "stolen"}, b""),
        ("mv to", {"cmd": "mv", "path": "inside.txt", "to": path}, b""),
    ]
    wrong: list[tuple[str, dict[str, Any] | str]] = []
    for name, header, body in requests:
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(raw_frame(header) + body)
            reply = recv_frame(sock)
            if reply.get("ok") is not False or reply.get("error") not in REFUSALS:
                wrong.append((name, reply))
            if reply.get("ok") is True and name == "put":  # finish it, to see the damage
                sock.sendall(b"pwned!" + raw_frame({"md5": hashlib.md5(b"pwned!").hexdigest()}))
                recv_frame(sock)
            if name == "cd" and reply.get("ok") is not True:
                pwd = ask(sock, {"cmd": "pwd"})
                if pwd.get("path") != "/":
                    wrong.append(("cd then pwd", pwd))
    return wrong


@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: repr(p[:40]))
def test_hostile_paths_are_refused_everywhere(server: FTPServer, port: int, jail: Path,
                                              tmp_path: Path, storage_root: Path,
                                              path: str) -> None:
    canary_before = snapshot(jail)
    everything_before = snapshot(tmp_path, mtimes=False)
    wrong = try_everything(port, path)
    assert wrong == []
    assert snapshot(jail) == canary_before
    assert snapshot(tmp_path, mtimes=False) == everything_before
    assert (storage_root / "inside.txt").read_text() == "inside"


def test_listing_hides_links_that_leave_the_root(client: Client, jail: Path) -> None:
    names = {entry["name"] for entry in client.ls("/")}
    assert names == {"inside.txt", "dir"}
    assert client.ls("dir") == []


def test_cli_put_outside_the_root_says_so_in_one_line(port: int, jail: Path, local: Path) -> None:
    before = snapshot(jail)
    (local / "f.txt").write_text("data")
    for remote in ("../f.txt", "escape/f.txt", "escape/"):
        done = run_cli(port, "put", "f.txt", remote, cwd=local)
        assert done.returncode != 0
        assert "outside the root" in one_line(done.stderr)
    done = run_cli(port, "get", "filelink", cwd=local)
    assert done.returncode != 0
    one_line(done.stderr)
    assert not (local / "filelink").exists()
    assert snapshot(jail) == before


# -- stalled and idle clients ---------------------------------------------------------

def stall_connections(port: int, count: int, big: str) -> list[socket.socket]:
    """Open ``count`` connections that each stop in a different awkward place."""
    socks = []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        kind = i % 5
        if kind == 4:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((LOOPBACK, port))
        socks.append(sock)
        if kind == 0:    # two bytes of a frame's length
            sock.sendall(b"\x10\x00")
        elif kind == 1:  # a whole length, half a header
            header = raw_frame({"cmd": "ls", "path": "/"})
            sock.sendall(header[:len(header) // 2])
        elif kind == 2:  # a resumable put that sends a little of its body and stops
            reply = ask(sock, {"cmd": "put", "filename": f"stalled-{i}.bin",
                               "filesize": 1 << 20, "resume": True, "source": "s"})
            assert reply["ok"] is True
            sock.sendall(b"a" * 1000)
        elif kind == 3:  # a one-shot put that stops inside its body
            sock.sendall(raw_frame({"cmd": "put", "filename": f"oneshot-{i}.bin",
                                    "filesize": 1 << 20}) + b"b" * 1000)
        else:            # a get that never reads what it asked for
            sock.sendall(raw_frame({"cmd": "get", "filename": big}))
    return socks


def test_stalled_clients_hold_up_no_one(server: FTPServer, port: int, storage_root: Path,
                                        local: Path) -> None:
    random_file(storage_root / "big-existing.bin", 8 << 20, seed=11)
    random_file(local / "five.bin", 5_000_000, seed=12)
    socks = stall_connections(port, 20, "big-existing.bin")
    try:
        with Client(LOOPBACK, port, timeout=30) as client:
            assert client.put(local / "five.bin").size == 5_000_000
            client.get("five.bin", local / "back.bin")
            assert "five.bin" in {e["name"] for e in client.ls()}
        assert md5_of(local / "back.bin") == md5_of(local / "five.bin")
        assert md5_of(storage_root / "five.bin") == md5_of(local / "five.bin")
        done = run_cli(port, "get", "big-existing.bin", cwd=local)
        assert done.returncode == 0, done.stderr
        assert md5_of(local / "big-existing.bin") == md5_of(storage_root / "big-existing.bin")
    finally:
        for sock in socks:
            sock.close()


def test_idle_connection_is_closed_and_others_go_on(make_server: ServerFactory,
                                                    local: Path) -> None:
    srv = make_server(idle_timeout=1)
    port = srv.server_address[1]
    silent = socket.create_connection((LOOPBACK, port), timeout=15)
    half = socket.create_connection((LOOPBACK, port), timeout=15)
    half.sendall(b"\x10\x00")
    try:
        with Client(LOOPBACK, port, timeout=30) as client:
            assert client.pwd() == "/"
        assert closed_by_peer(silent)
        assert closed_by_peer(half)
        with Client(LOOPBACK, port, timeout=30) as client:
            client.mkdir("still-serving")
            assert [e["name"] for e in client.ls()] == ["still-serving"]
    finally:
        silent.close()
        half.close()


def test_stalled_upload_is_dropped_and_can_be_resumed(make_server: ServerFactory,
                                                      storage_root: Path) -> None:
    srv = make_server(idle_timeout=1)
    port = srv.server_address[1]
    data = os.urandom(300_000)
    put = {"cmd": "put", "filename": "r.bin", "filesize": len(data), "resume": True,
           "source": "tag-1"}
    with socket.create_connection((LOOPBACK, port), timeout=15) as sock:
        reply = ask(sock, put)
        assert reply["ok"] is True and reply["offset"] == 0
        sock.sendall(data[:100_000])
        assert closed_by_peer(sock)  # the server gave up on the silent uploader
    with socket.create_connection((LOOPBACK, port), timeout=15) as sock:
        reply = ask(sock, put)  # not "busy": the claim was released
        assert reply["ok"] is True
        offset = reply["offset"]
        # What reached the partial was kept (up to one buffer may still have been in flight).
        assert 0 < offset <= 100_000
        sock.sendall(data[offset:] + raw_frame({"md5": hashlib.md5(data).hexdigest()}))
        reply = recv_frame(sock)
        assert reply["ok"] is True and reply["md5"] == hashlib.md5(data).hexdigest()
    assert (storage_root / "r.bin").read_bytes() == data
    assert sorted(os.listdir(storage_root)) == ["r.bin"]


def test_max_connections_turns_away_the_extra_one(make_server: ServerFactory,
                                                  local: Path) -> None:
    srv = make_server(max_connections=3)
    port = srv.server_address[1]
    held = [socket.create_connection((LOOPBACK, port), timeout=10) for _ in range(3)]
    try:
        for sock in held:  # each is being served
            assert ask(sock, {"cmd": "pwd"}) == {"ok": True, "path": "/"}
        with socket.create_connection((LOOPBACK, port), timeout=10) as extra:
            reply = recv_frame(extra)
            assert reply["ok"] is False and reply["error"] == "busy"
            assert closed_by_peer(extra)
        with Client(LOOPBACK, port, timeout=10) as client:
            with pytest.raises(Busy) as raised:
                client.pwd()
            assert raised.value.code == "busy"
        done = run_cli(port, "ls", cwd=local)
        assert done.returncode != 0
        assert "too many connections" in one_line(done.stderr)
        for sock in held:  # the three served are unaffected
            assert ask(sock, {"cmd": "pwd"})["ok"] is True
        held.pop().close()
        deadline = time.monotonic() + 10  # the server notices the close on its own time
        reply = {}
        while time.monotonic() < deadline:
            with socket.create_connection((LOOPBACK, port), timeout=10) as again:
                try:
                    reply = ask(again, {"cmd": "pwd"})
                except (ConnectionError, OSError):
                    reply = {}
            if reply.get("ok"):
                break
            time.sleep(0.05)
        assert reply == {"ok": True, "path": "/"}
    finally:
        for sock in held:
            sock.close()


# -- TLS --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("certs")
    return {"good": make_cert(folder, "good"), "other": make_cert(folder, "other")}


@pytest.fixture
def tls_server(make_server: ServerFactory, certs: dict[str, tuple[Path, Path]]) -> FTPServer:
    return make_server(tls=TLSConfig(*certs["good"]))


def test_tls_put_and_get_with_cafile(tls_server: FTPServer, certs: dict[str, tuple[Path, Path]],
                                     storage_root: Path, local: Path) -> None:
    port = tls_server.server_address[1]
    cafile = str(certs["good"][0])
    random_file(local / "t.bin", 3_000_000, seed=14)
    with CuttingProxy(port) as proxy:
        done = run_cli(proxy.port, "--cafile", cafile, "put", "t.bin", cwd=local)
        assert done.returncode == 0, done.stderr
        captured = bytes(proxy.captured)
    assert md5_of(storage_root / "t.bin") == md5_of(local / "t.bin")
    assert b'"cmd"' not in captured and b"t.bin" not in captured  # it really was encrypted
    assert (local / "t.bin").read_bytes()[:4096] not in captured
    (local / "down").mkdir()
    done = run_cli(port, "--cafile", cafile, "get", "t.bin", "down/", cwd=local)
    assert done.returncode == 0, done.stderr
    assert md5_of(local / "down" / "t.bin") == md5_of(local / "t.bin")
    context = ssl.create_default_context(cafile=cafile)
    with Client(LOOPBACK, port, timeout=30, tls=context) as client:
        assert client.stat("t.bin", md5=True)["md5"] == md5_of(local / "t.bin")


def test_plain_client_to_tls_server_fails_in_one_line(tls_server: FTPServer,
                                                      certs: dict[str, tuple[Path, Path]],
                                                      local: Path) -> None:
    port = tls_server.server_address[1]
    done = run_cli(port, "ls", cwd=local, timeout=30)
    assert done.returncode != 0
    one_line(done.stderr)
    assert done.stdout == ""
    done = run_cli(port, "--cafile", str(certs["good"][0]), "ls", cwd=local)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args", [("--cafile", "other"), ("--tls",)], ids=["wrong-ca", "no-ca"])
def test_untrusted_certificate_fails_in_one_line(tls_server: FTPServer,
                                                 certs: dict[str, tuple[Path, Path]],
                                                 local: Path, args: tuple[str, ...]) -> None:
    port = tls_server.server_address[1]
    args = tuple(str(certs[a][0]) if a in certs else a for a in args)
    (local / "f.txt").write_text("not to be sent")
    done = run_cli(port, *args, "put", "f.txt", cwd=local, timeout=30)
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert "TLS" in line and "CERTIFICATE_VERIFY_FAILED" in line
    assert not (Path(tls_server.config.root) / "f.txt").exists()


def test_tls_client_to_plain_server_fails_in_one_line(make_server: ServerFactory,
                                                      certs: dict[str, tuple[Path, Path]],
                                                      local: Path) -> None:
    srv = make_server()
    done = run_cli(srv.server_address[1], "--cafile", str(certs["good"][0]), "ls", cwd=local,
                   timeout=30)
    assert done.returncode != 0
    assert "TLS" in one_line(done.stderr)


def test_stalled_tls_handshakes_hold_up_no_one(tls_server: FTPServer,
                                               certs: dict[str, tuple[Path, Path]],
                                               local: Path) -> None:
    port = tls_server.server_address[1]
    stalled = [socket.create_connection((LOOPBACK, port), timeout=10) for _ in range(10)]
    stalled[0].sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
    try:
        (local / "f.txt").write_text("through TLS")
        done = run_cli(port, "--cafile", str(certs["good"][0]), "put", "f.txt", cwd=local)
        assert done.returncode == 0, done.stderr
    finally:
        for sock in stalled:
            sock.close()


def test_silent_tls_peer_gives_up_its_slot_after_the_handshake_timeout(
        make_server: ServerFactory, certs: dict[str, tuple[Path, Path]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler_module, "HANDSHAKE_TIMEOUT", 1.0)
    srv = make_server(tls=TLSConfig(*certs["good"]), max_connections=1, idle_timeout=300)
    port = srv.server_address[1]
    context = ssl.create_default_context(cafile=str(certs["good"][0]))
    silent = socket.create_connection((LOOPBACK, port), timeout=10)  # takes the only slot
    try:
        reply: object = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and reply != "/":
            try:
                with Client(LOOPBACK, port, timeout=2, tls=context) as client:
                    reply = client.pwd()
            except Exception as error:  # busy until the silent peer's handshake times out
                reply = error
                time.sleep(0.1)
        assert reply == "/"
        assert silent.recv(1) == b""  # the server dropped it
    finally:
        silent.close()


def test_silent_connection_over_the_tls_limit_blocks_no_one(
        make_server: ServerFactory, certs: dict[str, tuple[Path, Path]]) -> None:
    srv = make_server(tls=TLSConfig(*certs["good"]), max_connections=1)
    port = srv.server_address[1]
    context = ssl.create_default_context(cafile=str(certs["good"][0]))
    held = Client(LOOPBACK, port, timeout=10, tls=context)
    silent = socket.create_connection((LOOPBACK, port), timeout=10)  # over the limit, says nothing
    try:
        assert held.pwd() == "/"
        # Connections are accepted in order: once this probe is refused, so was the silent
        # one, which therefore cannot take the slot that closing ``held`` frees.
        with pytest.raises(Busy), Client(LOOPBACK, port, timeout=10, tls=context) as probe:
            probe.pwd()
        held.close()
        reply: object = None
        deadline = time.monotonic() + 20  # generous: a loaded machine is slow to notice the close
        while time.monotonic() < deadline and reply != "/":
            try:
                with Client(LOOPBACK, port, timeout=2, tls=context) as client:
                    reply = client.pwd()
            except Exception as error:  # busy until the server notices the close, or stuck
                reply = error
                time.sleep(0.05)
        assert reply == "/"
    finally:
        held.close()
        silent.close()  # unblocks the accept thread, so the server can shut down


def test_cli_error_for_a_path_with_a_newline_is_one_line(port: int, local: Path) -> None:
    done = run_cli(port, "ls", "../a\nb", cwd=local)
    assert done.returncode != 0
    one_line(done.stderr)
