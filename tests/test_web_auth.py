"""The web side's accounts: the login form and its cookie, HTTP Basic, throttling,
read-only accounts, other accounts' roots, and the start-up of the web side."""
from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

import pytest

from ftpserver.config import Config, load_config
from ftpserver.web.auth import COOKIE, check_password, parse_basic

from helpers import LOOPBACK, make_cert
from web_helpers import PASSWORD, Web, WebServerProcess, keys_line, users, web_server


def basic(user: str, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Accept": "application/json"}


def login(web: Web, user: str, password: str = PASSWORD, **extra: str):
    form = urlencode({"user": user, "password": password, "next": "/docs/"}).encode()
    return web.request("POST", "/.login", {"Content-Type": "application/x-www-form-urlencoded",
                                           **extra}, form)


def cookie_of(reply) -> str:
    value = reply.header("Set-Cookie")
    return value.split(";")[0]


@pytest.fixture
def closed(storage_root: Path) -> Iterator[Web]:
    """No anonymous access; alice (with a folder docs), bob read-only inside alice's root."""
    accounts = users(storage_root, alice={}, bob={"readonly": True})
    for name in ("alice", "bob"):
        (storage_root / name).mkdir()
        (storage_root / name / f"{name}.txt").write_text(name)
    (storage_root / "alice" / "docs").mkdir()
    config = Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30, http_port=0,
                    anonymous=False, users=accounts)
    with web_server(config) as running:
        yield running


@pytest.fixture
def open_server(storage_root: Path) -> Iterator[Web]:
    """Anonymous access to the root, which holds alice's root."""
    accounts = users(storage_root, alice={})
    (storage_root / "alice").mkdir()
    (storage_root / "alice" / "private.txt").write_text("private")
    (storage_root / "public.txt").write_text("public")
    config = Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30, http_port=0,
                    users=accounts)
    with web_server(config) as running:
        yield running


# -- password checks against the stored keys ------------------------------------------------

def test_check_password_against_stored_keys() -> None:
    from ftpserver.auth import parse_stored
    keys = parse_stored(keys_line("pw"))
    assert check_password(keys, "pw", b"s" * 16)
    assert not check_password(keys, "pW", b"s" * 16)
    assert not check_password(None, "pw", b"s" * 16)


def test_parse_basic() -> None:
    assert parse_basic("Basic " + base64.b64encode(b"al:i:ce").decode()) == ("al", "i:ce")
    assert parse_basic("Bearer x") is None and parse_basic(None) is None


# -- without a login ------------------------------------------------------------------------

def test_no_anonymous_access_asks_scripts_for_basic_and_browsers_for_the_form(closed: Web) -> None:
    script = closed.get("/", Accept="*/*")
    assert script.status == 401 and script.header("WWW-Authenticate").startswith("Basic ")
    browser = closed.get("/docs/", Accept="text/html")
    assert browser.status == 303 and browser.header("Location") == "/.login?next=%2Fdocs%2F"
    form = closed.get("/.login", Accept="text/html")
    assert form.status == 200 and b'name="password"' in form.body
    assert b"not encrypted" in form.body  # plain HTTP: the page says the password is readable


def test_anonymous_sees_the_root_but_not_another_accounts_root(open_server: Web) -> None:
    listing = json.loads(open_server.get("/", Accept="application/json").body)
    assert [e["name"] for e in listing["entries"]] == ["public.txt"]
    assert open_server.get("/alice/private.txt").status == 404
    assert open_server.get("/alice/").status == 404
    assert open_server.get("/alice/?zip").status == 404
    assert b"private" not in open_server.get("/?zip").body


# -- HTTP Basic -------------------------------------------------------------------------------

def test_basic_login_reaches_the_users_root(closed: Web) -> None:
    reply = closed.request("GET", "/", basic("alice"))
    assert reply.status == 200
    assert [e["name"] for e in json.loads(reply.body)["entries"]] == ["alice.txt", "docs"]
    assert closed.request("GET", "/alice.txt", basic("alice")).body == b"alice"
    # bob's root lies beside alice's: alice cannot climb to it
    assert closed.request("GET", "/../bob/bob.txt", basic("alice")).status in (403, 404)


def test_wrong_password_is_401_and_throttled(closed: Web) -> None:
    throttle = closed.ftp.throttle
    assert throttle.delay(LOOPBACK) == 0
    first = closed.request("GET", "/", basic("alice", "wrong"))
    assert first.status == 401 and first.header("WWW-Authenticate")
    assert json.loads(first.body)["error"] == "auth_failed"
    assert throttle.delay(LOOPBACK) > 0
    started = time.monotonic()
    assert closed.request("GET", "/", basic("nobody", "wrong")).status == 401
    assert time.monotonic() - started >= throttle.base * 0.9
    assert closed.request("GET", "/", basic("alice")).status == 200
    assert throttle.delay(LOOPBACK) == 0  # a success forgets the failures


def test_malformed_basic_is_401(closed: Web) -> None:
    reply = closed.request("GET", "/", {"Authorization": "Basic !!!"})
    assert reply.status == 401


# -- the login form and its cookie ---------------------------------------------------------------

def test_form_login_sets_a_strict_http_only_cookie(closed: Web) -> None:
    reply = login(closed, "alice")
    assert reply.status == 303 and reply.header("Location") == "/docs/"
    flags = [part.strip() for part in reply.header("Set-Cookie").split(";")]
    assert flags[0].startswith(COOKIE + "=") and len(flags[0]) > len(COOKIE) + 30
    assert "HttpOnly" in flags and "SameSite=Strict" in flags and "Path=/" in flags
    assert "Secure" not in flags  # plain HTTP; over HTTPS it is set (test_https_side)
    cookie = cookie_of(reply)
    page = closed.request("GET", "/", {"Cookie": cookie, "Accept": "text/html"})
    assert page.status == 200 and b"alice.txt" in page.body and b"Log out" in page.body
    out = closed.request("POST", "/.logout", {"Cookie": cookie, "Content-Length": "0"})
    assert out.status == 303 and "Max-Age=0" in out.header("Set-Cookie")
    assert closed.request("GET", "/", {"Cookie": cookie}).status == 401


def test_form_login_with_a_wrong_password(closed: Web) -> None:
    reply = login(closed, "alice", "wrong", Accept="text/html")
    assert reply.status == 401 and reply.header("Set-Cookie") is None
    assert b"Wrong user name or password" in reply.body
    assert closed.ftp.throttle.delay(LOOPBACK) > 0


def test_a_made_up_cookie_is_no_login(closed: Web) -> None:
    assert closed.request("GET", "/", {"Cookie": f"{COOKIE}=forged"}).status == 401


def test_cross_site_posts_are_refused(closed: Web) -> None:
    assert login(closed, "alice", Origin="http://evil.example").status == 403
    assert login(closed, "alice", **{"Sec-Fetch-Site": "cross-site"}).status == 403
    same = login(closed, "alice", Origin=f"http://{LOOPBACK}:{closed.port}")
    assert same.status == 303


def test_login_redirects_only_to_this_site(closed: Web) -> None:
    for wanted in ("//evil.example/", "http://evil.example/", "/\\evil", "/x\r\nSet-Cookie: a=b"):
        form = urlencode({"user": "alice", "password": PASSWORD, "next": wanted}).encode()
        reply = closed.request("POST", "/.login",
                               {"Content-Type": "application/x-www-form-urlencoded"}, form)
        assert reply.status == 303 and reply.header("Location") == "/", wanted


def test_a_large_form_is_refused(closed: Web) -> None:
    reply = closed.request("POST", "/.login", {"Content-Type": "application/x-www-form-urlencoded"},
                           b"user=" + b"a" * 20000)
    assert reply.status == 400


# -- read-only accounts ---------------------------------------------------------------------------

def test_read_only_account_reads_and_its_page_offers_no_upload(closed: Web) -> None:
    cookie = cookie_of(login(closed, "bob"))
    page = closed.request("GET", "/", {"Cookie": cookie, "Accept": "text/html"})
    assert b'data-writable="false"' in page.body
    assert closed.request("GET", "/bob.txt", {"Cookie": cookie}).body == b"bob"
    alice = closed.request("GET", "/", {"Cookie": cookie_of(login(closed, "alice")),
                                        "Accept": "text/html"})
    assert b'data-writable="true"' in alice.body


# -- start-up ---------------------------------------------------------------------------------

def write_config(tmp_path: Path, http_port: object) -> Path:
    root = tmp_path / "storage"
    root.mkdir(exist_ok=True)
    (root / "hello.txt").write_text("hello")
    path = tmp_path / "config.yaml"
    path.write_text(f"host: {LOOPBACK}\nport: 0\nroot: {root}\nhttp_port: {http_port}\n")
    return path


def test_server_process_prints_the_url_and_serves(tmp_path: Path) -> None:
    process = WebServerProcess(write_config(tmp_path, 0)).start()
    try:
        assert process.web_url.startswith(f"http://{LOOPBACK}:")
        port = int(process.web_url.rsplit(":", 1)[1].strip("/"))
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nhello")
    finally:
        assert process.stop() == 0


def test_a_taken_http_port_is_one_line_naming_http_port(tmp_path: Path) -> None:
    with socket.create_server((LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "ftpserver", "--config",
                               str(write_config(tmp_path, port))],
                              capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "http_port" in lines[0] and str(port) in lines[0]


def test_http_port_in_config(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, "null")).http_port is None
    assert load_config(write_config(tmp_path, 0)).http_port == 0
    path = tmp_path / "plain.yaml"
    path.write_text("port: 0\n")
    assert load_config(path).http_port is None
    from ftpserver.errors import ConfigError
    with pytest.raises(ConfigError, match="http_port"):
        load_config(write_config(tmp_path, "'x'"))
    with pytest.raises(ConfigError, match="http_port"):
        load_config(write_config(tmp_path, 70000))


# -- HTTPS --------------------------------------------------------------------------------------

def test_https_side_uses_the_servers_certificate(tmp_path: Path, storage_root: Path) -> None:
    import http.client
    import ssl

    from ftpserver.config import TLSConfig
    cert, key = make_cert(tmp_path)
    (storage_root / "alice").mkdir()
    (storage_root / "alice" / "a.txt").write_text("over tls")
    config = Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30, http_port=0,
                    anonymous=False, users=users(storage_root, alice={}), tls=TLSConfig(cert, key))
    with web_server(config) as web:
        assert web.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection(LOOPBACK, web.port, context=context, timeout=10)
        form = urlencode({"user": "alice", "password": PASSWORD}).encode()
        conn.request("GET", "/.login")
        page = conn.getresponse().read()
        assert b'name="password"' in page and b"not encrypted" not in page
        conn.request("POST", "/.login", form, {"Content-Type": "application/x-www-form-urlencoded"})
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 303 and "; Secure" in reply.headers["Set-Cookie"]
        conn.request("GET", "/a.txt", headers={"Cookie": reply.headers["Set-Cookie"].split(";")[0],
                                               "Range": "bytes=5-"})
        ranged = conn.getresponse()
        assert ranged.status == 206 and ranged.read() == b"tls"
        conn.close()
        with socket.create_connection((LOOPBACK, web.port), timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            plain.settimeout(10)
            try:
                assert not plain.recv(100).startswith(b"HTTP/1.1 200")
            except (ConnectionResetError, TimeoutError):
                pass
