"""Accounts: SCRAM-SHA-256 login, the password never on the wire, impostor servers,
hash-password, anonymous: false, the login throttle, per-user roots, quotas, read-only.

Every server here is a real FTPServer on an ephemeral loopback port, driven by the
real Client, the real CLI or raw frames on a socket.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ftpclient.client import Client
from ftpserver.auth import (ITERATIONS, LoginThrottle, ScramClient, hash_password, parse_stored)
from ftpserver.config import Config, User
from ftpserver.errors import AuthFailed, Forbidden, NotFound, QuotaExceeded
from ftpserver.server import FTPServer
from ftpserver.storage import Storage

from helpers import LOOPBACK, ask, raw_frame, recv_frame, CuttingProxy, md5_of, random_file, run_cli

PASSWORDS = {"alice": "correct horse", "bob": "battery staple", "carol": "c4r0l",
             "rita": "read only"}
#: Non-ASCII on purpose: its UTF-8 differs from any single-byte encoding of it.
SECRET = "s3cret-pässwörd-✓"


def keys_line(password: str) -> str:
    return hash_password(password, iterations=4096).line()


def frames_in(data: bytes) -> list[dict[str, Any]]:
    """The header frames at the start of a captured client->server stream (bodies stop it)."""
    frames, position = [], 0
    while position + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, position)
        try:
            frames.append(json.loads(data[position + 4:position + 4 + length]))
        except ValueError:
            break
        position += 4 + length
    return frames


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    assert "Traceback" not in text
    return lines[0]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root``: files with their content, folders as None."""
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            found[os.path.relpath(os.path.join(folder, name), root)] = \
                Path(folder, name).read_bytes()
    return found


# -- servers -------------------------------------------------------------------

ServerFactory = Callable[..., FTPServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start in-process servers: ``make_server(users={...}, anonymous=..., ...)``.

    ``users`` maps a name to a dict of User fields; the password is taken from
    PASSWORDS (or ``password=``) and hashed with 4096 iterations (or given as a
    stored ``line=``); the root
    defaults to tmp_path/users/NAME, outside the anonymous root tmp_path/storage.
    """
    started: list[tuple[FTPServer, threading.Thread]] = []

    def make(users: dict[str, dict[str, Any]] | None = None, **overrides: Any) -> FTPServer:
        accounts = {}
        for name, fields in (users or {}).items():
            fields = dict(fields)
            password = fields.pop("password", PASSWORDS.get(name, name))
            line = fields.pop("line", None) or keys_line(password)
            fields.setdefault("root", tmp_path / "users" / name)
            accounts[name] = User(name, password=line, **fields)
        settings: dict[str, Any] = {"host": LOOPBACK, "port": 0, "root": tmp_path / "storage",
                                    "idle_timeout": 30, "users": accounts}
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


def port_of(srv: FTPServer) -> int:
    return srv.server_address[1]


@pytest.fixture
def accounts_server(make_server: ServerFactory) -> FTPServer:
    return make_server(users={"alice": {}, "bob": {}})


def login_client(srv: FTPServer, user: str, password: str | None = None) -> Client:
    client = Client(LOOPBACK, port_of(srv), timeout=30)
    try:
        client.login(user, PASSWORDS[user] if password is None else password)
    except BaseException:
        client.close()
        raise
    return client


# -- logging in ----------------------------------------------------------------

def test_login_with_the_right_password(accounts_server: FTPServer, tmp_path: Path) -> None:
    with login_client(accounts_server, "alice") as client:
        assert client.pwd() == "/"
        client.mkdir("made-by-alice")
    assert (tmp_path / "users" / "alice" / "made-by-alice").is_dir()
    assert accounts_server.throttle.delay("127.0.0.1") == 0


def test_cli_logs_in_with_u_and_ftp_password(accounts_server: FTPServer, local: Path,
                                             tmp_path: Path) -> None:
    random_file(local / "report.bin", 100_000, seed=1)
    done = run_cli(port_of(accounts_server), "-u", "alice", "put", "report.bin", cwd=local,
                   env={"FTP_PASSWORD": PASSWORDS["alice"]})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert md5_of(tmp_path / "users" / "alice" / "report.bin") == md5_of(local / "report.bin")
    assert not (tmp_path / "storage" / "report.bin").exists()
    listed = run_cli(port_of(accounts_server), "-u", "alice", "ls", cwd=local,
                     env={"FTP_PASSWORD": PASSWORDS["alice"]})
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["report.bin"]


def test_wrong_password_is_refused(accounts_server: FTPServer, local: Path) -> None:
    with Client(LOOPBACK, port_of(accounts_server), timeout=30) as client:
        with pytest.raises(AuthFailed) as raised:
            client.login("alice", "not the password")
        assert raised.value.code == "auth_failed"
    done = run_cli(port_of(accounts_server), "-u", "alice", "ls", cwd=local,
                   env={"FTP_PASSWORD": "not the password"})
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert "login failed" in line
    assert "not the password" not in line
    assert done.stdout == ""


def test_unknown_user_fails_the_same_way(make_server: ServerFactory, local: Path) -> None:
    # Separate servers, so the throttle of one failure does not touch the other.
    outputs = {}
    for user in ("alice", "mallory"):
        srv = make_server(users={"alice": {}})
        done = run_cli(port_of(srv), "-u", user, "ls", cwd=local,
                       env={"FTP_PASSWORD": "guess"})
        assert done.returncode != 0
        outputs[user] = (done.returncode, one_line(done.stderr).replace(user, "USER"), done.stdout)
    assert outputs["alice"] == outputs["mallory"]
    assert "login failed" in outputs["mallory"][1]


def test_unknown_user_gets_a_stable_plausible_challenge(accounts_server: FTPServer) -> None:
    """A name that does not exist gets the same salt each time, as a real user would."""
    salts = []
    for _ in range(2):
        with socket.create_connection((LOOPBACK, port_of(accounts_server)), timeout=10) as sock:
            reply = ask(sock, {"cmd": "login", "message": "n,,n=mallory,r=abcdefgh"})
        assert reply["ok"] is True
        fields = dict(part.split("=", 1) for part in reply["message"].split(","))
        assert fields["r"].startswith("abcdefgh") and len(fields["r"]) > len("abcdefgh")
        assert len(base64.b64decode(fields["s"])) == 16
        assert int(fields["i"]) == ITERATIONS  # as a user made by hash-password
        salts.append(fields["s"])
    assert salts[0] == salts[1]


def test_failed_login_is_logged_without_the_password(accounts_server: FTPServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with Client(LOOPBACK, port_of(accounts_server), timeout=30) as client:
        with pytest.raises(AuthFailed):
            client.login("alice", SECRET)
    assert "failed login" in caplog.text and "alice" in caplog.text
    assert SECRET not in caplog.text


def forbidden_encodings(password: str) -> list[bytes]:
    raw = password.encode("utf-8")
    return [raw, password.encode("latin-1", "replace"), base64.b64encode(raw),
            base64.urlsafe_b64encode(raw), base64.b64encode(raw).rstrip(b"="),
            raw.hex().encode(), json.dumps(password).encode()]


def test_the_password_never_crosses_the_wire(make_server: ServerFactory, local: Path) -> None:
    srv = make_server(users={"alice": {"password": SECRET}})
    random_file(local / "f.bin", 10_000, seed=2)
    with CuttingProxy(port_of(srv)) as proxy:
        done = run_cli(proxy.port, "-u", "alice", "put", "f.bin", cwd=local,
                       env={"FTP_PASSWORD": SECRET})
        assert done.returncode == 0, done.stderr
        with Client(LOOPBACK, proxy.port, timeout=30) as client:
            client.login("alice", SECRET)
            client.ls()
        captured = bytes(proxy.captured)
    logins = [f for f in frames_in(captured) if f.get("cmd") == "login"]
    assert len(logins) == 2  # the CLI's client-first and client-final: the login did happen
    for encoded in forbidden_encodings(SECRET):
        assert encoded not in captured, encoded


def test_a_captured_login_cannot_be_replayed(make_server: ServerFactory) -> None:
    srv = make_server(users={"alice": {"password": SECRET}})
    with CuttingProxy(port_of(srv)) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30) as client:
            client.login("alice", SECRET)
        captured = bytes(proxy.captured)
    first, final = [f["message"] for f in frames_in(captured) if f.get("cmd") == "login"]
    assert final.startswith("c=biws,") and ",p=" in final

    # 1. The whole captured exchange again: the server's nonce is new, the old proof is not for it.
    with socket.create_connection((LOOPBACK, port_of(srv)), timeout=10) as sock:
        assert ask(sock, {"cmd": "login", "message": first})["ok"] is True
        reply = ask(sock, {"cmd": "login", "message": final})
        assert reply["ok"] is False and reply["error"] == "auth_failed"

    # 2. A fresh client-first (new client nonce), then the captured proof.
    fresh = ScramClient("alice", "whatever")
    with socket.create_connection((LOOPBACK, port_of(srv)), timeout=10) as sock:
        assert ask(sock, {"cmd": "login", "message": fresh.first()})["ok"] is True
        reply = ask(sock, {"cmd": "login", "message": final})
        assert reply["ok"] is False and reply["error"] == "auth_failed"

    # 3. The captured proof with the captured nonce but no challenge first.
    with socket.create_connection((LOOPBACK, port_of(srv)), timeout=10) as sock:
        reply = ask(sock, {"cmd": "login", "message": final})
        assert reply["ok"] is False


def test_replayed_proof_leaves_the_session_anonymous(make_server: ServerFactory,
                                                     tmp_path: Path) -> None:
    srv = make_server(users={"alice": {"password": SECRET}}, anonymous=False)
    with CuttingProxy(port_of(srv)) as proxy:
        with Client(LOOPBACK, proxy.port, timeout=30) as client:
            client.login("alice", SECRET)
        captured = bytes(proxy.captured)
    first, final = [f["message"] for f in frames_in(captured) if f.get("cmd") == "login"]
    with socket.create_connection((LOOPBACK, port_of(srv)), timeout=10) as sock:
        ask(sock, {"cmd": "login", "message": first})
        assert ask(sock, {"cmd": "login", "message": final})["error"] == "auth_failed"
        reply = ask(sock, {"cmd": "mkdir", "path": "replayed"})
        assert reply["ok"] is False and reply["error"] == "auth_failed"
    assert not (tmp_path / "users" / "alice" / "replayed").exists()


# -- impostor servers ------------------------------------------------------------

def _attributes(message: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in message.split(","))


class ImpostorHandler(socketserver.StreamRequestHandler):
    """Speaks the protocol but does not know the user's password keys.

    ``server.behaviour`` picks the lie:
    - ``other_keys``: a full SCRAM exchange with the keys of another password;
      it accepts any proof and signs with its own ServerKey.
    - ``random_signature``: accepts any proof, sends 32 random bytes as ``v=``.
    - ``no_signature``: accepts any proof, sends no ``v=`` at all.
    - ``echo_signature``: sends the client's own proof back as ``v=``.
    - ``bad_nonce``: a challenge whose nonce does not extend the client's.
    - ``weak_iterations``: a challenge asking for 1 iteration.
    """

    def handle(self) -> None:
        behaviour = self.server.behaviour  # type: ignore[attr-defined]
        keys = hash_password("some other password", iterations=4096)
        bare = server_first = ""
        for _ in range(10):
            try:
                (length,) = struct.unpack("<I", self.rfile.read(4))
            except struct.error:
                return
            header = json.loads(self.rfile.read(length))
            message = header.get("message", "")
            if header.get("cmd") != "login":
                reply: dict[str, Any] = {"ok": True, "path": "/", "entries": [], "more": False}
            elif message.startswith("n,,"):
                bare = message[3:]
                client_nonce = _attributes(bare)["r"]
                nonce = client_nonce + "IMPOSTOR"
                iterations = 4096
                if behaviour == "bad_nonce":
                    nonce = "someone-else" + "IMPOSTOR"
                if behaviour == "weak_iterations":
                    iterations = 1
                server_first = (f"r={nonce},s={base64.b64encode(keys.salt).decode()},"
                                f"i={iterations}")
                reply = {"ok": True, "message": server_first}
            else:
                without_proof = message.rsplit(",", 1)[0]
                auth_message = f"{bare},{server_first},{without_proof}".encode()
                signature = {
                    "other_keys": hmac.digest(keys.server_key, auth_message, "sha256"),
                    "random_signature": os.urandom(32),
                    "echo_signature": base64.b64decode(_attributes(message)["p"]),
                }.get(behaviour)
                text = "" if signature is None else "v=" + base64.b64encode(signature).decode()
                if behaviour == "no_signature":
                    text = "x=nothing"
                reply = {"ok": True, "message": text, "user": "alice"}
            payload = json.dumps(reply).encode()
            self.wfile.write(struct.pack("<I", len(payload)) + payload)


class ImpostorServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    behaviour = "other_keys"


@pytest.fixture
def impostor() -> Iterator[ImpostorServer]:
    srv = ImpostorServer((LOOPBACK, 0), ImpostorHandler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


IMPOSTORS = ["other_keys", "random_signature", "no_signature", "echo_signature", "bad_nonce",
             "weak_iterations"]


@pytest.mark.parametrize("behaviour", IMPOSTORS)
def test_client_rejects_a_server_that_cannot_prove_it_knows_the_password(
        impostor: ImpostorServer, behaviour: str) -> None:
    impostor.behaviour = behaviour
    with Client(LOOPBACK, impostor.server_address[1], timeout=10) as client:
        with pytest.raises(AuthFailed) as raised:
            client.login("alice", SECRET)
    assert "server" in str(raised.value)


def test_cli_rejects_an_impostor_in_one_line(impostor: ImpostorServer,
                                             local: Path) -> None:
    impostor.behaviour = "other_keys"
    done = run_cli(impostor.server_address[1], "-u", "alice", "ls", cwd=local,
                   env={"FTP_PASSWORD": SECRET})
    assert done.returncode != 0
    assert "server" in one_line(done.stderr)
    assert done.stdout == ""


def test_server_with_other_keys_refuses_the_proof(make_server: ServerFactory) -> None:
    """Keys made from another password: the proof fails on the server side."""
    srv = make_server(users={"alice": {"password": "a different password"}})
    with Client(LOOPBACK, port_of(srv), timeout=30) as client:
        with pytest.raises(AuthFailed) as raised:
            client.login("alice", SECRET)
    assert raised.value.code == "auth_failed"


# -- hash-password -------------------------------------------------------------

def hash_password_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftpserver", "hash-password"],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_hash_password_prints_one_parsable_line(make_server: ServerFactory) -> None:
    done = hash_password_cli({"FTP_PASSWORD": SECRET})
    assert done.returncode == 0, done.stderr
    line = one_line(done.stdout)
    keys = parse_stored(line)
    assert keys.iterations >= 4096
    assert SECRET not in done.stdout and SECRET not in done.stderr
    # The keys are those of this password with that salt.
    assert hash_password(SECRET, iterations=keys.iterations, salt=keys.salt) == keys
    # A fresh salt each time.
    again = parse_stored(one_line(hash_password_cli({"FTP_PASSWORD": SECRET}).stdout))
    assert again.salt != keys.salt and again.stored_key != keys.stored_key
    # And the line works as a user's password.
    srv = make_server(users={"dora": {"line": line}})
    with Client(LOOPBACK, port_of(srv), timeout=30) as client:
        client.login("dora", SECRET)
        assert client.pwd() == "/"


def test_hash_password_refuses_an_empty_password() -> None:
    done = hash_password_cli({"FTP_PASSWORD": ""})
    assert done.returncode != 0
    one_line(done.stderr)
    assert done.stdout == ""


# -- anonymous: false -------------------------------------------------------------

ANONYMOUS_REQUESTS = [
    {"cmd": "ls"}, {"cmd": "ls", "path": "/"}, {"cmd": "pwd"}, {"cmd": "cd", "path": "/"},
    {"cmd": "stat", "path": "/"}, {"cmd": "mkdir", "path": "new"}, {"cmd": "rm", "path": "x"},
    {"cmd": "mv", "path": "x", "to": "y"}, {"cmd": "get", "filename": "x"},
    {"cmd": "put", "filename": "x", "filesize": 3, "resume": True, "source": "s"},
]


@pytest.mark.parametrize("request_", ANONYMOUS_REQUESTS, ids=lambda r: r["cmd"])
def test_no_anonymous_access_without_login(make_server: ServerFactory, tmp_path: Path,
                                           request_: dict[str, Any]) -> None:
    srv = make_server(users={"alice": {}}, anonymous=False)
    (tmp_path / "storage").mkdir(exist_ok=True)
    (tmp_path / "storage" / "x").write_bytes(b"anonymous file")
    with socket.create_connection((LOOPBACK, port_of(srv)), timeout=10) as sock:
        reply = ask(sock, request_)
    assert reply["ok"] is False and reply["error"] == "auth_failed"
    assert (tmp_path / "storage" / "x").read_bytes() == b"anonymous file"
    assert sorted(os.listdir(tmp_path / "storage")) == ["x"]


def test_one_shot_put_without_login_is_refused(make_server: ServerFactory,
                                               tmp_path: Path) -> None:
    srv = make_server(anonymous=False)
    with socket.create_connection((LOOPBACK, port_of(srv)), timeout=10) as sock:
        sock.sendall(raw_frame({"cmd": "put", "filename": "t.bin", "filesize": 5}) + b"hello")
        reply = recv_frame(sock)
    assert reply["ok"] is False and reply["error"] == "auth_failed"
    assert not (tmp_path / "storage" / "t.bin").exists()


@pytest.mark.parametrize("args", [("ls",), ("put", "f.txt")])
def test_cli_without_login_says_to_log_in(make_server: ServerFactory, local: Path,
                                          args: tuple[str, ...]) -> None:
    srv = make_server(users={"alice": {}}, anonymous=False)
    (local / "f.txt").write_text("data")
    done = run_cli(port_of(srv), *args, cwd=local)
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert "log in" in line and "-u" in line
    # Logged in, the same command works.
    done = run_cli(port_of(srv), "-u", "alice", *args, cwd=local,
                   env={"FTP_PASSWORD": PASSWORDS["alice"]})
    assert done.returncode == 0, done.stderr


# -- the login throttle -------------------------------------------------------------

def test_login_throttle_grows_with_failures_and_resets_on_success() -> None:
    throttle = LoginThrottle(base=0.2, cap=5.0)
    assert throttle.delay("10.0.0.1") == 0
    delays = []
    for _ in range(8):
        throttle.failed("10.0.0.1")
        delays.append(throttle.delay("10.0.0.1"))
    assert delays[0] >= 0.1
    assert all(a < b for a, b in zip(delays[:5], delays[1:6]))  # 0.2 0.4 0.8 1.6 3.2 ...
    assert all(a <= b for a, b in zip(delays, delays[1:]))
    assert max(delays) == 5.0  # capped
    assert throttle.delay("10.0.0.2") == 0  # another address is not slowed
    throttle.succeeded("10.0.0.1")
    assert throttle.delay("10.0.0.1") == 0


def test_login_throttle_forgets_old_failures() -> None:
    throttle = LoginThrottle(base=0.2, forget_after=-1.0)  # every failure is already "old"
    throttle.failed("10.0.0.1")
    assert throttle.delay("10.0.0.1") == 0


def test_login_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle()
    for i in range(10_050):
        throttle.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(throttle._failures) <= 10_001


def test_failed_login_slows_the_next_attempt_from_that_address(
        accounts_server: FTPServer) -> None:
    throttle = accounts_server.throttle
    assert throttle.delay("127.0.0.1") == 0
    with Client(LOOPBACK, port_of(accounts_server), timeout=30) as client:
        with pytest.raises(AuthFailed):
            client.login("alice", "wrong")
    first = throttle.delay("127.0.0.1")
    assert first >= 0.1
    with Client(LOOPBACK, port_of(accounts_server), timeout=30) as client:
        with pytest.raises(AuthFailed):
            client.login("mallory", "wrong")  # unknown users count too
    assert throttle.delay("127.0.0.1") > first
    with login_client(accounts_server, "alice"):
        pass
    assert throttle.delay("127.0.0.1") == 0


# -- per-user roots -------------------------------------------------------------------

@pytest.fixture
def populated(accounts_server: FTPServer, tmp_path: Path) -> FTPServer:
    for name in ("alice", "bob"):
        root = tmp_path / "users" / name
        (root / "sub").mkdir(parents=True, exist_ok=True)
        (root / f"{name}.txt").write_text(f"{name}'s file")
    (tmp_path / "storage" / "anon.txt").write_text("anonymous file")
    return accounts_server


def test_slash_is_the_users_own_root(populated: FTPServer) -> None:
    with login_client(populated, "alice") as client:
        assert client.pwd() == "/"
        assert sorted(e["name"] for e in client.ls("/")) == ["alice.txt", "sub"]
        assert client.cd("/sub") == "/sub"
        assert client.cd("/") == "/"


def test_login_moves_the_session_to_the_users_root(populated: FTPServer, tmp_path: Path) -> None:
    (tmp_path / "storage" / "deep").mkdir()
    with Client(LOOPBACK, port_of(populated), timeout=30) as client:
        assert client.cd("deep") == "/deep"
        client.login("alice", PASSWORDS["alice"])
        assert client.pwd() == "/"
        assert sorted(e["name"] for e in client.ls()) == ["alice.txt", "sub"]


@pytest.mark.parametrize("path", ["../bob/bob.txt", "/../bob/bob.txt", "bob.txt", "/bob.txt",
                                  "../../storage/anon.txt", "anon.txt", "sub/../../bob/bob.txt"])
def test_alice_cannot_read_bob_or_the_anonymous_root(populated: FTPServer, local: Path,
                                                     path: str) -> None:
    with socket.create_connection((LOOPBACK, port_of(populated)), timeout=10) as sock:
        scram = ScramClient("alice", PASSWORDS["alice"])
        challenge = ask(sock, {"cmd": "login", "message": scram.first()})["message"]
        assert ask(sock, {"cmd": "login", "message": scram.final(challenge)})["ok"] is True
        for request_ in ({"cmd": "get", "filename": path}, {"cmd": "stat", "path": path},
                         {"cmd": "rm", "path": path}, {"cmd": "mv", "path": path, "to": "got"}):
            reply = ask(sock, request_)
            assert reply["ok"] is False, (request_, reply)
            assert reply["error"] in ("forbidden", "not_found"), (request_, reply)
        if ".." in path:
            reply = ask(sock, {"cmd": "ls", "path": path.rsplit("/", 1)[0]})
            assert reply["ok"] is False and reply["error"] in ("forbidden", "not_found"), reply
    assert (populated.accounts["bob"].storage.root / "bob.txt").read_text() == "bob's file"
    assert not (populated.accounts["alice"].storage.root / "got").exists()


def test_bob_sees_only_his_files(populated: FTPServer, local: Path) -> None:
    done = run_cli(port_of(populated), "-u", "bob", "get", "alice.txt", cwd=local,
                   env={"FTP_PASSWORD": PASSWORDS["bob"]})
    assert done.returncode != 0
    one_line(done.stderr)
    assert not (local / "alice.txt").exists()
    done = run_cli(port_of(populated), "-u", "bob", "get", "bob.txt", cwd=local,
                   env={"FTP_PASSWORD": PASSWORDS["bob"]})
    assert done.returncode == 0, done.stderr
    assert (local / "bob.txt").read_text() == "bob's file"


# -- quotas --------------------------------------------------------------------------

QUOTA = 1 << 20  # 1 MiB


@pytest.fixture
def quota_server(make_server: ServerFactory) -> FTPServer:
    return make_server(users={"carol": {"quota": QUOTA}})


def carol_env() -> dict[str, str]:
    return {"FTP_PASSWORD": PASSWORDS["carol"]}


def test_put_over_quota_is_refused_before_the_body(quota_server: FTPServer, local: Path,
                                                   tmp_path: Path) -> None:
    root = tmp_path / "users" / "carol"
    (root / "old.bin").write_bytes(b"x" * 200_000)
    before = (tree(root), Storage(root).usage())
    size = 5 * 1024 * 1024
    random_file(local / "big.bin", size, seed=3)
    with CuttingProxy(port_of(quota_server)) as proxy:
        done = run_cli(proxy.port, "-u", "carol", "put", "big.bin", cwd=local, env=carol_env())
        sent = proxy.up
    assert done.returncode != 0
    assert "quota" in one_line(done.stderr).lower()
    assert sent < 64 * 1024, f"{sent} bytes went up for a refused put"
    assert (tree(root), Storage(root).usage()) == before  # no partial, nothing counted
    assert quota_server.accounts["carol"].storage.usage() == 200_000


def test_one_shot_put_over_quota_leaves_nothing(quota_server: FTPServer, tmp_path: Path) -> None:
    root = tmp_path / "users" / "carol"
    with socket.create_connection((LOOPBACK, port_of(quota_server)), timeout=10) as sock:
        scram = ScramClient("carol", PASSWORDS["carol"])
        challenge = ask(sock, {"cmd": "login", "message": scram.first()})["message"]
        ask(sock, {"cmd": "login", "message": scram.final(challenge)})
        reply = ask(sock, {"cmd": "put", "filename": "big.bin", "filesize": QUOTA + 1})
        assert reply["ok"] is False and reply["error"] == "quota_exceeded"
    assert tree(root) == {}


def test_put_that_fits_works_and_then_the_quota_counts_it(quota_server: FTPServer,
                                                          local: Path) -> None:
    random_file(local / "a.bin", 600_000, seed=4)
    random_file(local / "b.bin", 600_000, seed=5)
    random_file(local / "exact.bin", QUOTA - 600_000, seed=6)
    with login_client(quota_server, "carol") as client:
        assert client.put(local / "a.bin").size == 600_000
        with pytest.raises(QuotaExceeded) as raised:
            client.put(local / "b.bin")
        assert raised.value.code == "quota_exceeded"
        assert sorted(e["name"] for e in client.ls()) == ["a.bin"]
        # Exactly up to the quota is fine.
        client.put(local / "exact.bin")
    assert quota_server.accounts["carol"].storage.usage() == QUOTA


def test_overwriting_a_file_near_the_quota_works(quota_server: FTPServer, local: Path,
                                                 tmp_path: Path) -> None:
    size = QUOTA - 10_000
    random_file(local / "v1.bin", size, seed=7)
    random_file(local / "v2.bin", size, seed=8)
    with login_client(quota_server, "carol") as client:
        client.put(local / "v1.bin", "data.bin")
        client.put(local / "v2.bin", "data.bin")  # the file it replaces is not counted
    assert md5_of(tmp_path / "users" / "carol" / "data.bin") == md5_of(local / "v2.bin")
    assert sorted(os.listdir(tmp_path / "users" / "carol")) == ["data.bin"]


def test_concurrent_puts_cannot_exceed_the_quota_together(quota_server: FTPServer,
                                                          tmp_path: Path) -> None:
    size = 600_000  # each fits in 1 MiB alone; both do not
    results = []
    socks = []
    try:
        for name in ("one.bin", "two.bin"):
            sock = socket.create_connection((LOOPBACK, port_of(quota_server)), timeout=10)
            socks.append(sock)
            scram = ScramClient("carol", PASSWORDS["carol"])
            challenge = ask(sock, {"cmd": "login", "message": scram.first()})["message"]
            ask(sock, {"cmd": "login", "message": scram.final(challenge)})
            results.append(ask(sock, {"cmd": "put", "filename": name, "filesize": size,
                                      "resume": True, "source": name}))
        for sock, reply in zip(socks, results):
            if reply["ok"]:
                body = b"z" * size
                sock.sendall(body)
                sock.sendall(raw_frame({"md5": hashlib.md5(body).hexdigest()}))
                assert recv_frame(sock)["ok"] is True
    finally:
        for sock in socks:
            sock.close()
    assert Storage(tmp_path / "users" / "carol").usage() <= QUOTA
    assert [r["ok"] for r in results].count(False) == 1


# -- read-only accounts ----------------------------------------------------------------

@pytest.fixture
def readonly_server(make_server: ServerFactory, tmp_path: Path) -> FTPServer:
    root = tmp_path / "users" / "rita"
    (root / "folder").mkdir(parents=True)
    (root / "doc.txt").write_text("read me")
    return make_server(users={"rita": {"readonly": True}})


def test_readonly_account_can_read(readonly_server: FTPServer, local: Path) -> None:
    with login_client(readonly_server, "rita") as client:
        assert sorted(e["name"] for e in client.ls()) == ["doc.txt", "folder"]
        client.get("doc.txt", local / "doc.txt")
        assert client.cd("folder") == "/folder"
    assert (local / "doc.txt").read_text() == "read me"


def test_readonly_account_cannot_write(readonly_server: FTPServer, local: Path,
                                       tmp_path: Path) -> None:
    root = tmp_path / "users" / "rita"
    before = tree(root)
    (local / "new.txt").write_text("new")
    with login_client(readonly_server, "rita") as client:
        attempts: list[Callable[[], object]] = [
            lambda: client.put(local / "new.txt"),
            lambda: client.put(local / "new.txt", "doc.txt"),
            lambda: client.mkdir("made"),
            lambda: client.rm("doc.txt"),
            lambda: client.rm("folder"),
            lambda: client.mv("doc.txt", "moved.txt"),
        ]
        for attempt in attempts:
            with pytest.raises(Forbidden) as raised:
                attempt()
            assert raised.value.code == "forbidden"
    with socket.create_connection((LOOPBACK, port_of(readonly_server)), timeout=10) as sock:
        scram = ScramClient("rita", PASSWORDS["rita"])
        challenge = ask(sock, {"cmd": "login", "message": scram.first()})["message"]
        ask(sock, {"cmd": "login", "message": scram.final(challenge)})
        sock.sendall(raw_frame({"cmd": "put", "filename": "one.bin", "filesize": 3}) + b"abc")
        reply = recv_frame(sock)
        assert reply["ok"] is False and reply["error"] == "forbidden"
    assert tree(root) == before
    done = run_cli(port_of(readonly_server), "-u", "rita", "put", "new.txt", cwd=local,
                   env={"FTP_PASSWORD": PASSWORDS["rita"]})
    assert done.returncode != 0
    assert "read-only" in one_line(done.stderr)


def test_user_roots_nested_in_the_anonymous_root_stay_private(make_server: ServerFactory,
                                                               tmp_path: Path) -> None:
    # The SPEC's own example puts alice's root at ./storage/alice, inside the anonymous root.
    anonymous_root = tmp_path / "storage"
    srv = make_server(users={"alice": {"root": anonymous_root / "alice"}})
    with login_client(srv, "alice") as alice:
        alice.mkdir("private")
    (anonymous_root / "alice" / "secret.txt").write_bytes(b"alice only")
    before = tree(anonymous_root / "alice")
    with Client(LOOPBACK, port_of(srv), timeout=30) as anonymous:
        assert "alice" not in [e["name"] for e in anonymous.ls("")]
        for attempt in (lambda: anonymous.ls("alice"), lambda: anonymous.stat("alice/secret.txt"),
                        lambda: anonymous.get("alice/secret.txt", tmp_path / "stolen"),
                        lambda: anonymous.rm("alice/secret.txt"), lambda: anonymous.mkdir("alice/x"),
                        lambda: anonymous.mv("alice", "mine")):
            with pytest.raises(NotFound):  # as for a name that does not exist: no account revealed
                attempt()
        source = tmp_path / "planted.txt"
        source.write_bytes(b"planted")
        with pytest.raises(NotFound):
            anonymous.put(source, "alice/planted.txt")
    assert tree(anonymous_root / "alice") == before
    assert not (tmp_path / "stolen").exists()


def test_no_password_to_read_is_one_line(accounts_server: FTPServer, local: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTP_PASSWORD", raising=False)
    result = run_cli(port_of(accounts_server), "-u", "alice", "ls", cwd=local, input="")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [one_line(result.stderr)]
    assert "password" in result.stderr and "Traceback" not in result.stderr
    hashed = subprocess.run([sys.executable, "-m", "ftpserver", "hash-password"], input="",
                            capture_output=True, text=True, timeout=30,
                            env={k: v for k, v in os.environ.items() if k != "FTP_PASSWORD"})
    assert hashed.returncode != 0 and "Traceback" not in hashed.stderr
    assert len(hashed.stderr.strip().splitlines()) == 1
