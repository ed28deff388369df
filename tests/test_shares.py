"""Share links: made by the real ftpclient against a real server, fetched by curl
without a login through the web side."""
from __future__ import annotations

import io
import shutil
import stat
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from ftpserver.config import Config
from ftpserver.server import FTPServer
from ftpserver.web.shares import ShareBook

from helpers import LOOPBACK, raw_frame, recv_frame, run_cli
from test_auth import PASSWORDS
from test_tus import Web, web  # noqa: F401,F811  (the fixture)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl(url: str, *args: str, out: Path | None = None) -> tuple[int, bytes, str]:
    """GET ``url`` with curl: status, body, response headers."""
    result = subprocess.run(["curl", "-sS", "--max-time", "10", "-D", "-", "-o",
                             str(out) if out else "-", "-w", "\n%{http_code}", *args, url],
                            capture_output=True, timeout=20)
    assert result.returncode == 0, result.stderr
    text, _, code = result.stdout.rpartition(b"\n")
    head, _, body = text.partition(b"\r\n\r\n")
    return int(code), body if out is None else out.read_bytes(), head.decode("latin-1")


def share(port: int, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    login = ("-u", user) if user else ()
    env = {"FTP_PASSWORD": PASSWORDS.get(user, user)} if user else None
    return run_cli(port, *login, "share", *args, env=env)


def test_a_shared_file_downloads_without_a_login_and_by_ranges(web: Web, tmp_path: Path) -> None:
    ftp, base = web(users={"alice": {}}, anonymous=False)
    root = tmp_path / "users" / "alice"
    (root / "docs").mkdir()
    (root / "docs" / "Bericht ü.txt").write_bytes(b"0123456789" * 100)
    made = share(ftp.server_address[1], "docs/Bericht ü.txt", user="alice")
    assert made.returncode == 0, made.stderr
    url = made.stdout.strip()
    assert url.startswith(f"{base}/.share/") and made.stderr == ""
    status, body, head = curl(url)
    assert status == 200 and body == b"0123456789" * 100
    assert "attachment;" in head and "filename*=UTF-8''Bericht%20%C3%BC.txt" in head
    status, body, head = curl(url, "-r", "995-")  # a download manager resuming
    assert status == 206 and body == b"56789"
    status, body, _ = curl(f"{url}/Bericht%20%C3%BC.txt")  # the name after the token is fine
    assert status == 200
    assert curl(f"{url}/other.txt")[0] == 404


def test_a_shared_folder_downloads_as_zip_and_its_files_one_by_one(web: Web, tmp_path: Path) -> None:
    ftp, base = web()
    folder = tmp_path / "storage" / "photos"
    (folder / "2024").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"A" * 10)
    (folder / "2024" / "b.jpg").write_bytes(b"B" * 20)
    (tmp_path / "storage" / "secret.txt").write_bytes(b"not shared")
    made = share(ftp.server_address[1], "photos", "--expires", "2h")
    assert made.returncode == 0, made.stderr
    url = made.stdout.strip()
    status, body, head = curl(url)
    assert status == 200 and 'filename="photos.zip"' in head
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")} == {
            "a.jpg": b"A" * 10, "2024/b.jpg": b"B" * 20}
    assert curl(f"{url}/2024/b.jpg")[1] == b"B" * 20
    assert curl(f"{url}/../secret.txt", "--path-as-is")[0] == 404
    assert curl(f"{url}/%2e%2e/secret.txt", "--path-as-is")[0] == 404


def test_list_and_revoke(web: Web, tmp_path: Path) -> None:
    ftp, base = web(users={"alice": {}, "bob": {}})
    port = ftp.server_address[1]
    (tmp_path / "users" / "alice" / "x.txt").write_text("x")
    first = share(port, "x.txt", user="alice").stdout.strip()
    second = share(port, "/", "--expires", "1d", user="alice").stdout.strip()
    listed = share(port, "--list", user="alice")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [second, first]  # the soonest to expire first
    assert lines[1].endswith(" /x.txt")
    assert share(port, "--list", user="bob").stdout == ""
    token = first.rpartition("/")[2]
    refused = share(port, "--revoke", token, user="bob")  # not bob's
    assert refused.returncode == 1 and "no such share link" in refused.stderr
    assert curl(first)[0] == 200
    revoked = share(port, "--revoke", token, user="alice")
    assert revoked.returncode == 0 and "/x.txt" in revoked.stdout
    assert curl(first)[0] == 404
    assert share(port, "--revoke", second, user="alice").returncode == 0  # a URL will do
    assert share(port, "--list", user="alice").stdout == ""


def test_expired_forged_and_unknown_links(web: Web, tmp_path: Path) -> None:
    ftp, base = web()
    (tmp_path / "storage" / "f.txt").write_text("f")
    url = share(ftp.server_address[1], "f.txt", "--expires", "1h").stdout.strip()
    token = url.rpartition("/")[2]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert curl(f"{base}/.share/{forged}")[0] == 404
    assert curl(f"{base}/.share/{token[:-2]}")[0] == 404
    assert curl(f"{base}/.share/")[0] == 404
    assert curl(url)[0] == 200
    # A link of one second, looked at after it: gone (never raced against the clock).
    short = share(ftp.server_address[1], "f.txt", "--expires", "1s").stdout.strip()
    time.sleep(1.1)
    assert curl(short)[0] == 410
    # Another server's secret signs nothing here.
    other = ShareBook(tmp_path / "elsewhere").create(None, "/f.txt", 60)
    assert curl(f"{base}{other.url_path}")[0] == 404


def test_the_secret_lives_in_the_state_folder_only(web: Web, tmp_path: Path) -> None:
    ftp, _ = web()
    (tmp_path / "storage" / "f.txt").write_text("f")
    assert share(ftp.server_address[1], "f.txt").returncode == 0
    secret = tmp_path / "storage" / ".ftp-state" / "share-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
    assert ShareBook(secret.parent).secret() == secret.read_bytes()  # another process agrees


def test_without_a_web_side_the_client_says_so(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    root.mkdir()
    (root / "f.txt").write_text("f")
    srv = FTPServer(Config(host=LOOPBACK, port=0, root=root, idle_timeout=30))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        made = run_cli(srv.server_address[1], "share", "f.txt")
        assert made.returncode == 0
        assert made.stdout.startswith("/.share/")
        assert len(made.stderr.splitlines()) == 1 and "no web side" in made.stderr
        missing = run_cli(srv.server_address[1], "share", "nothing.txt")
        assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1
        usage = run_cli(srv.server_address[1], "share")
        assert usage.returncode != 0 and "Traceback" not in usage.stderr
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_native_share_command_fields(web: Web, tmp_path: Path) -> None:
    import socket

    ftp, _ = web()
    (tmp_path / "storage" / "f.txt").write_text("f")
    with socket.create_connection((LOOPBACK, ftp.server_address[1]), timeout=10) as sock:
        def ask(header: dict) -> dict:
            sock.sendall(raw_frame(header))
            return recv_frame(sock)

        reply = ask({"cmd": "share", "path": "f.txt", "expires": 60})
        assert reply["ok"] and reply["url_path"] == f"/.share/{reply['token']}"
        assert reply["http_port"] == ftp.http_port and reply["path"] == "/f.txt"  # type: ignore[attr-defined]
        assert abs(reply["expires"] - (time.time() + 60)) < 5
        assert ask({"cmd": "share", "path": "f.txt", "expires": 0})["error"] == "bad_request"
        assert ask({"cmd": "share", "path": "f.txt", "expires": "1d"})["error"] == "bad_request"
        assert ask({"cmd": "share", "path": "nope"})["error"] == "not_found"
        assert ask({"cmd": "share", "path": "../x"})["error"] == "forbidden"
        listed = ask({"cmd": "share", "list": True})
        assert [entry["token"] for entry in listed["shares"]] == [reply["token"]]
        assert ask({"cmd": "share", "revoke": "garbage"})["error"] == "not_found"
        assert ask({"cmd": "share", "revoke": reply["token"]})["revoked"] == reply["token"]
