"""The web side serving files: listings, GET/HEAD, ranges, conditions, zips, confinement."""
from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import socket
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from ftpserver.config import Config
from ftpserver.web import WebHandler, ranges

from helpers import LOOPBACK, random_file
from web_helpers import Web, web_server

SIZE = 300_000


@pytest.fixture
def web(storage_root: Path) -> Iterator[Web]:
    random_file(storage_root / "data.bin", SIZE, seed=3)
    (storage_root / "docs").mkdir()
    (storage_root / "docs" / "notes.txt").write_text("hello\n")
    config = Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30, http_port=0)
    with web_server(config) as running:
        yield running


# -- listings ---------------------------------------------------------------------------

def test_folder_listing_is_html_folders_first_with_escaped_names(web: Web, storage_root: Path) -> None:
    (storage_root / "<b>&'x\".txt").write_text("x")
    (storage_root / "zeta").mkdir()
    (storage_root / "a b#?.txt").write_text("y")
    reply = web.get("/", Accept="text/html")
    assert reply.status == 200
    assert reply.header("Content-Type") == "text/html; charset=utf-8"
    page = reply.body.decode()
    assert '<meta name="viewport"' in page
    assert '<script src="/.static/upload.js"' in page
    assert '<div id="drop" data-folder="/"' in page
    assert "<b>&" not in page and "&lt;b&gt;&amp;&#x27;x&quot;.txt" in page
    assert 'href="%3Cb%3E%26%27x%22.txt"' in page and 'href="a%20b%23%3F.txt"' in page
    assert page.index('href="docs/"') < page.index('href="zeta/"') < page.index('href="a%20b')
    assert "script-src 'self'" in reply.header("Content-Security-Policy")
    assert "<script>" not in page and "onclick" not in page


def test_folder_listing_as_json_is_shaped_like_ls_json(web: Web, storage_root: Path) -> None:
    reply = web.get("/docs/", Accept="application/json")
    assert reply.status == 200 and reply.header("Content-Type") == "application/json"
    listing = json.loads(reply.body)
    info = (storage_root / "docs" / "notes.txt").stat()
    assert listing == {"path": "/docs", "entries": [
        {"name": "notes.txt", "type": "file", "size": 6, "mtime": info.st_mtime,
         "mtime_ns": info.st_mtime_ns}]}


def test_folder_without_slash_redirects(web: Web) -> None:
    reply = web.get("/docs?zip")
    assert reply.status in (301, 302) and reply.header("Location") == "/docs/?zip"


def test_static_files_are_served_and_names_checked(web: Web) -> None:
    reply = web.get("/.static/listing.js")
    assert reply.status == 200 and b"addEventListener" in reply.body
    assert web.get("/.static/web.css").header("Content-Type").startswith("text/css")
    for bad in ("/.static/../handler.py", "/.static/%2e%2e/handler.py", "/.static/nothing.js"):
        assert web.get(bad).status == 404


def test_unknown_method_and_post_to_a_file(web: Web) -> None:
    assert web.request("POST", "/data.bin", body=b"x").status == 405
    assert web.request("BREW", "/data.bin").status == 501


def test_hooks_answer_404_until_their_modules_exist(web: Web) -> None:
    from ftpserver.web.handler import _hook
    if _hook("tus") is None:
        assert web.request("OPTIONS", "/.tus/").status == 404
    if _hook("shares") is None:
        assert web.get("/.share/abc").status == 404


# -- files -------------------------------------------------------------------------------

def test_get_and_head_headers(web: Web, storage_root: Path) -> None:
    info = (storage_root / "data.bin").stat()
    for method in ("GET", "HEAD"):
        reply = web.request(method, "/data.bin")
        assert reply.status == 200
        assert reply.header("Accept-Ranges") == "bytes"
        assert reply.header("Content-Length") == str(SIZE)
        assert reply.header("ETag") == ranges.etag(info) and reply.header("ETag").startswith('"')
        assert reply.header("Last-Modified") == email.utils.formatdate(info.st_mtime, usegmt=True)
        assert reply.header("Content-Type") == "application/octet-stream"
        assert reply.header("Content-Disposition").startswith("attachment;")
        assert reply.header("X-Content-Type-Options") == "nosniff"
        assert reply.body == ((storage_root / "data.bin").read_bytes() if method == "GET" else b"")
    text = web.get("/docs/notes.txt")
    assert text.header("Content-Type") == "text/plain" and text.header(
        "Content-Disposition").startswith("inline;")


def test_html_and_svg_are_never_shown_inline(web: Web, storage_root: Path) -> None:
    for name in ("page.html", "pic.svg"):
        (storage_root / name).write_text("<script>alert(1)</script>")
        assert web.get("/" + name).header("Content-Disposition").startswith("attachment;")


@pytest.mark.parametrize("asked, start, end", [
    ("bytes=0-99", 0, 99), ("bytes=1000-", 1000, SIZE - 1), ("bytes=-500", SIZE - 500, SIZE - 1),
    ("bytes=299990-400000", 299990, SIZE - 1), ("bytes=-999999", 0, SIZE - 1),
])
def test_single_ranges_answer_206(web: Web, storage_root: Path, asked: str, start: int,
                                  end: int) -> None:
    data = (storage_root / "data.bin").read_bytes()
    reply = web.get("/data.bin", Range=asked)
    assert reply.status == 206
    assert reply.header("Content-Range") == f"bytes {start}-{end}/{SIZE}"
    assert reply.header("Content-Length") == str(end - start + 1)
    assert reply.body == data[start:end + 1]


@pytest.mark.parametrize("asked", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}", "bytes=-0"])
def test_range_past_the_end_answers_416(web: Web, asked: str) -> None:
    reply = web.get("/data.bin", Range=asked)
    assert reply.status == 416 and reply.header("Content-Range") == f"bytes */{SIZE}"


@pytest.mark.parametrize("asked", ["bytes=0-1,5-9", "bytes=9-3", "items=0-5", "bytes=x-", "bytes=-"])
def test_ranges_that_cannot_be_served_alone_answer_the_whole_file(web: Web, asked: str) -> None:
    reply = web.get("/data.bin", Range=asked)
    assert reply.status == 200 and len(reply.body) == SIZE


def test_if_range(web: Web, storage_root: Path) -> None:
    info = (storage_root / "data.bin").stat()
    tag, date = ranges.etag(info), email.utils.formatdate(info.st_mtime, usegmt=True)
    assert web.get("/data.bin", Range="bytes=10-19", If_Range=tag).status == 206
    assert web.get("/data.bin", Range="bytes=10-19", If_Range=date).status == 206
    stale_date = email.utils.formatdate(info.st_mtime - 3600, usegmt=True)
    for stale in ('"0-0-0"', "W/" + tag, stale_date, "not a date"):
        reply = web.get("/data.bin", Range="bytes=10-19", If_Range=stale)
        assert reply.status == 200 and len(reply.body) == SIZE, stale


def test_a_changed_file_gets_a_new_etag(web: Web, storage_root: Path) -> None:
    before = web.request("HEAD", "/data.bin").header("ETag")
    path = storage_root / "data.bin"
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))
    after = web.request("HEAD", "/data.bin").header("ETag")
    assert after != before
    assert web.get("/data.bin", Range="bytes=0-9", If_Range=before).status == 200


def test_conditional_get_answers_304(web: Web) -> None:
    tag = web.request("HEAD", "/data.bin").header("ETag")
    reply = web.get("/data.bin", If_None_Match=tag)
    assert reply.status == 304 and reply.body == b""


def test_keep_alive_carries_several_requests(web: Web) -> None:
    import http.client
    conn = http.client.HTTPConnection(LOOPBACK, web.port, timeout=10)
    try:
        for asked in ("bytes=0-9", "bytes=10-19", "bytes=-5"):
            conn.request("GET", "/data.bin", headers={"Range": asked})
            response = conn.getresponse()
            assert response.status == 206 and len(response.read()) in (10, 5)
        conn.request("GET", "/docs/", headers={"Accept": "application/json"})
        assert json.loads(conn.getresponse().read())["path"] == "/docs"
    finally:
        conn.close()


# -- zips ---------------------------------------------------------------------------------

def test_folder_as_zip_reads_back(web: Web, storage_root: Path) -> None:
    tree = storage_root / "tree"
    (tree / "empty").mkdir(parents=True)
    (tree / "sub").mkdir()
    random_file(tree / "sub" / "big.bin", 700_000, seed=9)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "loop").symlink_to("..")
    reply = web.get("/tree/?zip")
    assert reply.status == 200 and reply.header("Content-Type") == "application/zip"
    assert reply.header("Transfer-Encoding") == "chunked"
    assert reply.header("Content-Disposition").startswith('attachment; filename="tree.zip"')
    with zipfile.ZipFile(io.BytesIO(reply.body)) as archive:
        assert archive.testzip() is None
        names = sorted(archive.namelist())
        assert names == ["a.txt", "empty/", "sub/", "sub/big.bin"]
        assert archive.read("sub/big.bin") == (tree / "sub" / "big.bin").read_bytes()
        assert archive.read("a.txt") == b"a"


def test_zip_of_a_file_or_a_missing_folder_is_an_error(web: Web) -> None:
    assert web.get("/missing/?zip").status == 404
    assert web.get("/data.bin?zip").status == 200  # a file ignores the query


def test_chunked_writer_frames_small_and_big_writes() -> None:
    from ftpserver.web.zipstream import ChunkedWriter
    sent: list[bytes] = []
    out = ChunkedWriter(sent.append, size=16)
    out.write(b"abc")
    out.write(b"x" * 40)
    out.close()
    assert b"".join(sent) == b"3\r\nabc\r\n28\r\n" + b"x" * 40 + b"\r\n0\r\n\r\n"


# -- confinement --------------------------------------------------------------------------

def raw_status(web: Web, target: bytes) -> int:
    """The status of a GET of ``target`` exactly as given (no client normalising it)."""
    with socket.create_connection((LOOPBACK, web.port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while not data.count(b"\r\n"):
            more = sock.recv(4096)
            if not more:
                break
            data += more
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("target, statuses", [
    (b"/../etc/passwd", (403, 404)), (b"/docs/../../etc/passwd", (403, 404)),
    (b"/%2e%2e/etc/passwd", (403, 404)), (b"/%2E%2E%2Fetc%2Fpasswd", (403, 404)),
    (b"/docs%00.txt", (403, 404)), (b"/docs/notes.txt%00", (403, 404)),
    (b"/out", (403, 404)), (b"/out/secret", (403, 404)), (b"/%ff", (400,)),
    (b"/.ftp-state/x", (403, 404)), (b"/x.ftp-partial", (403, 404)),
])
def test_paths_outside_the_root_are_refused(web: Web, storage_root: Path, tmp_path: Path,
                                            target: bytes, statuses: tuple[int, ...]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (storage_root / "out").symlink_to(outside)
    assert raw_status(web, target) in statuses


def test_a_link_inside_the_root_is_served(web: Web, storage_root: Path) -> None:
    (storage_root / "alias.txt").symlink_to("docs/notes.txt")
    assert web.get("/alias.txt").body == b"hello\n"


def test_listing_leaves_out_links_outside_and_partials(web: Web, storage_root: Path,
                                                       tmp_path: Path) -> None:
    (storage_root / "out").symlink_to(tmp_path)
    (storage_root / ".x.ftp-partial").write_bytes(b"p")
    names = [e["name"] for e in json.loads(web.get("/", Accept="application/json").body)["entries"]]
    assert names == ["data.bin", "docs"]


def test_large_file_streams_whole(web: Web, storage_root: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = random_file(storage_root / "big.bin", 20 * 1024 * 1024 + 7, seed=5)
    monkeypatch.setattr(WebHandler, "send_slice", 1 << 20)  # many slices
    reply = web.get("/big.bin")
    assert hashlib.md5(reply.body).hexdigest() == hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_zip64_for_a_member_over_4_gib(tmp_path: Path) -> None:
    from ftpserver.session import Session
    from ftpserver.storage import Storage
    from ftpserver.web.zipstream import write_zip

    root = tmp_path / "root"
    root.mkdir()
    with open(root / "sparse.bin", "wb") as file:
        file.truncate((4 << 30) + 10)

    class Tail:
        """Keeps the size and the last bytes written: the central directory."""
        def __init__(self) -> None:
            self.size, self.tail = 0, b""

        def write(self, data: bytes) -> int:
            self.size += len(data)
            self.tail = (self.tail + bytes(data))[-4096:]
            return len(data)

        def flush(self) -> None:
            pass

    out = Tail()
    assert write_zip(Session(Storage(root)), "/", out) == 1
    assert out.size > 4 << 30
    assert b"PK\x06\x06" in out.tail  # the ZIP64 end of central directory record


# -- connections ---------------------------------------------------------------------------

def test_a_head_trickled_in_is_cut_after_header_timeout(web: Web,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    monkeypatch.setattr(WebHandler, "header_timeout", 0.5)
    with socket.create_connection((LOOPBACK, web.port), timeout=10) as sock:
        started = time.monotonic()
        closed = False
        for byte in b"GET /docs/notes.txt HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - started > 3:
                break
        sock.settimeout(3)
        try:
            closed = closed or sock.recv(100) == b""
        except TimeoutError:
            pass  # still open: the deadline did not hold
        except OSError:
            closed = True
        assert closed and time.monotonic() - started < 4


def test_connections_over_max_connections_get_503(storage_root: Path) -> None:
    config = Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30, http_port=0,
                    max_connections=1)
    with web_server(config) as web, socket.create_connection((LOOPBACK, web.port)) as held:
        held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n")
        held.settimeout(10)
        assert held.recv(12) == b"HTTP/1.1 200"  # served, and kept open
        reply = web.get("/")
        assert reply.status == 503 and reply.header("Retry-After")
