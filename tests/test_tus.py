"""tus uploads at /.tus/: tuspy and raw HTTP against a real server's sessions.

The web front (ftpserver.web.server) is built beside this; until then a small
stand-in handler here implements the interface tus.handle and shares.serve are
written against (send_file, send_zip, send_json, send_error_for, server.ftp), and
takes the session's user from a test-only header.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ftpclient.client import Client
from ftpserver.config import Config, User
from ftpserver.errors import Busy
from ftpserver.server import FTPServer
from ftpserver.web import WebServer, tus

from helpers import LOOPBACK, random_file, raw_frame, recv_frame
from test_auth import PASSWORDS, keys_line

# -- the stand-in web front -----------------------------------------------------------

_STATUS = {"bad_request": 400, "auth_failed": 401, "forbidden": 403, "not_found": 404,
           "busy": 409, "quota_exceeded": 413, "is_directory": 409}


# -- fixtures -------------------------------------------------------------------------

Web = Callable[..., tuple[FTPServer, str]]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    """``web(users={...}, **config)``: a real FTPServer and its web side beside it;
    returns the server and the web side's base URL."""
    started: list[tuple[Any, threading.Thread]] = []

    def start(users: dict[str, dict[str, Any]] | None = None, **overrides: Any) -> tuple[FTPServer, str]:
        accounts = {}
        for name, fields in (users or {}).items():
            fields = {"root": tmp_path / "users" / name, **fields}
            accounts[name] = User(name, password=keys_line(PASSWORDS.get(name, name)), **fields)
        settings: dict[str, Any] = {"host": LOOPBACK, "port": 0, "root": tmp_path / "storage",
                                    "idle_timeout": 30, "users": accounts, **overrides}
        ftp = FTPServer(Config(**settings))
        front = WebServer(ftp, port=0)
        for srv in (ftp, front):
            thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                      daemon=True)
            thread.start()
            started.append((srv, thread))
        return ftp, f"http://{LOOPBACK}:{front.server_address[1]}"

    yield start
    for srv, thread in started:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def request(base: str, method: str, path: str, body: bytes = b"", user: str | None = None,
            **headers: str) -> http.client.HTTPResponse:
    """One HTTP request on a new connection; the response, read."""
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    names = {key.replace("_", "-"): value for key, value in headers.items()}
    if method != "OPTIONS":
        names.setdefault("Tus-Resumable", "1.0.0")
    if user:
        names["Authorization"] = _basic(user)
    connection.request(method, path, body=body, headers=names)
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def _basic(user: str) -> str:
    token = base64.b64encode(f"{user}:{PASSWORDS.get(user, user)}".encode()).decode()
    return f"Basic {token}"


def metadata(name: str, *flags: str) -> str:
    return ",".join([f"filename {base64.b64encode(name.encode()).decode()}", *flags])


def create(base: str, name: str, length: int, user: str | None = None, *flags: str) -> str:
    """POST a new upload; its path (``/.tus/ID``)."""
    response = request(base, "POST", "/.tus/", user=user, Upload_Length=str(length),
                       Upload_Metadata=metadata(name, *flags))
    assert response.status == 201, response.body  # type: ignore[attr-defined]
    return response.getheader("Location")


def patch(base: str, location: str, offset: int, data: bytes, user: str | None = None,
          **headers: str) -> http.client.HTTPResponse:
    return request(base, "PATCH", location, data, user=user, Upload_Offset=str(offset),
                   Content_Type="application/offset+octet-stream", **headers)


def offset_of(base: str, location: str, user: str | None = None) -> int:
    response = request(base, "HEAD", location, user=user)
    assert response.status == 200, response.status
    return int(response.getheader("Upload-Offset"))


def checksum(name: str, data: bytes) -> str:
    return f"{name} {base64.b64encode(hashlib.new(name, data).digest()).decode()}"


def leftovers(root: Path) -> list[str]:
    """Partial uploads and tus records under ``root``."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.name.endswith((".ftp-partial", ".ftp-partial.json"))
                  or path.parent.name == "tus")


def cut_patch(base: str, location: str, offset: int, data: bytes, sent: int,
              user: str | None = None, **headers: str) -> None:
    """A PATCH of ``data`` whose body stops after ``sent`` bytes: the connection is closed."""
    url = urllib.parse.urlsplit(base)
    lines = [f"PATCH {location} HTTP/1.1", f"Host: {url.netloc}", "Tus-Resumable: 1.0.0",
             f"Upload-Offset: {offset}", "Content-Type: application/offset+octet-stream",
             f"Content-Length: {len(data)}"]
    lines += [f"{key.replace('_', '-')}: {value}" for key, value in headers.items()]
    if user:
        lines.append(f"Authorization: {_basic(user)}")
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data[:sent])
        time.sleep(0.2)


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- tests ----------------------------------------------------------------------------

def test_options_announce_version_extensions_and_checksums(web: Web) -> None:
    _, base = web()
    response = request(base, "OPTIONS", "/.tus/")
    assert response.status == 204
    assert response.getheader("Tus-Version") == "1.0.0"
    assert set(response.getheader("Tus-Extension").split(",")) >= {"creation", "termination",
                                                                   "checksum"}
    assert set(response.getheader("Tus-Checksum-Algorithm").split(",")) == {"md5", "sha1", "sha256"}


@pytest.mark.parametrize("upload_checksum", [False, True])
def test_tuspy_uploads_a_file(web: Web, tmp_path: Path, upload_checksum: bool) -> None:
    from tusclient import client as tus_client

    ftp, base = web()
    source = random_file(tmp_path / "song.bin", 300_000, seed=3)
    (tmp_path / "storage" / "music").mkdir()
    uploader = tus_client.TusClient(f"{base}/.tus/").uploader(
        str(source), chunk_size=64 * 1024, metadata={"filename": "music/song.bin"},
        upload_checksum=upload_checksum)
    uploader.upload()
    assert (tmp_path / "storage" / "music" / "song.bin").read_bytes() == source.read_bytes()
    assert leftovers(tmp_path / "storage") == []


def test_resumes_after_a_cut_and_with_tuspy_from_the_stored_url(web: Web, tmp_path: Path) -> None:
    from tusclient import client as tus_client

    _, base = web()
    data = random_file(tmp_path / "big.bin", 400_000, seed=5).read_bytes()
    location = create(base, "big.bin", len(data))
    assert patch(base, location, 0, data[:100_000]).status == 204
    cut_patch(base, location, 100_000, data[100_000:], 150_000)  # cut mid-body
    wait_for(lambda: offset_of(base, location) == 250_000)  # what arrived is kept
    assert not (tmp_path / "storage" / "big.bin").exists()
    uploader = tus_client.TusClient(f"{base}/.tus/").uploader(
        str(tmp_path / "big.bin"), url=f"{base}{location}", chunk_size=100_000)
    assert uploader.offset == 250_000  # tuspy asks by HEAD and sends only the rest
    uploader.upload()
    assert (tmp_path / "storage" / "big.bin").read_bytes() == data
    assert request(base, "HEAD", location).status == 404  # done: the URL is gone
    assert leftovers(tmp_path / "storage") == []


def test_a_second_server_process_continues_an_upload(web: Web, tmp_path: Path) -> None:
    _, first = web()
    _, second = web()  # the same root, its own sessions and claims
    location = create(first, "shared.txt", 10)
    assert patch(first, location, 0, b"hello").status == 204
    assert offset_of(second, location) == 5
    response = patch(second, location, 5, b"world")
    assert response.status == 204 and response.getheader("Upload-Offset") == "10"
    assert (tmp_path / "storage" / "shared.txt").read_bytes() == b"helloworld"


def test_offset_mismatch_is_409_and_changes_nothing(web: Web, tmp_path: Path) -> None:
    _, base = web()
    location = create(base, "a.txt", 6)
    assert patch(base, location, 0, b"abc").status == 204
    assert patch(base, location, 0, b"abc").status == 409
    assert patch(base, location, 4, b"bc").status == 409
    assert offset_of(base, location) == 3
    assert patch(base, location, 3, b"defg").status == 400  # past Upload-Length
    assert patch(base, location, 3, b"def").status == 204
    assert (tmp_path / "storage" / "a.txt").read_bytes() == b"abcdef"


def test_bad_checksum_is_460_and_keeps_the_earlier_bytes(web: Web, tmp_path: Path) -> None:
    _, base = web()
    location = create(base, "c.txt", 8)
    assert patch(base, location, 0, b"abcd", Upload_Checksum=checksum("sha256", b"abcd")).status == 204
    response = patch(base, location, 4, b"efgh", Upload_Checksum=checksum("md5", b"EFGH"))
    assert response.status == 460
    assert offset_of(base, location) == 4
    assert patch(base, location, 4, b"efgh", Upload_Checksum="crc32 AAAAAA==").status == 400
    assert patch(base, location, 4, b"efgh", Upload_Checksum=checksum("sha1", b"efgh")).status == 204
    assert (tmp_path / "storage" / "c.txt").read_bytes() == b"abcdefgh"


def test_a_cut_chunk_with_a_checksum_is_dropped_whole(web: Web) -> None:
    _, base = web()
    location = create(base, "d.txt", 1000)
    cut_patch(base, location, 0, b"x" * 1000, 600, Upload_Checksum=checksum("sha1", b"x" * 1000))
    time.sleep(0.2)
    assert offset_of(base, location) == 0


def start_patch(sock: socket.socket, location: str, length: int, first: bytes) -> None:
    """Send a PATCH from offset 0 of ``length`` bytes by hand, with only ``first`` of its body."""
    sock.sendall((f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                  "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode() + first)


def test_native_put_and_tus_upload_of_one_name_exclude_each_other(web: Web, tmp_path: Path) -> None:
    ftp, base = web()
    port = ftp.server_address[1]
    # A tus PATCH in flight holds the name: a native put is busy.
    location = create(base, "same.bin", 1000)
    url = urllib.parse.urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        start_patch(sock, location, 1000, b"a" * 100)
        wait_for(lambda: offset_of(base, location) == 100)
        with Client(LOOPBACK, port, timeout=10) as client, pytest.raises(Busy):
            client.put(random_file(tmp_path / "other.bin", 500, seed=1), "same.bin")
        sock.sendall(b"a" * 900)
        sock.recv(100)
    assert (tmp_path / "storage" / "same.bin").read_bytes() == b"a" * 1000
    # A native put in flight holds the name: tus is refused with 409, at creation and PATCH.
    location = create(base, "two.bin", 10)
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(raw_frame({"cmd": "put", "filename": "two.bin", "filesize": 1000,
                                "resume": True, "source": "native"}))
        assert recv_frame(sock)["ok"]
        sock.sendall(b"n" * 10)
        assert patch(base, location, 0, b"t" * 10).status == 409
        response = request(base, "POST", "/.tus/", Upload_Length="5",
                           Upload_Metadata=metadata("two.bin"))
        assert response.status == 409 and b"busy" in response.body  # type: ignore[attr-defined]


def test_over_quota_is_413_before_any_byte(web: Web, tmp_path: Path) -> None:
    ftp, base = web(users={"alice": {"quota": 100_000}})
    response = request(base, "POST", "/.tus/", user="alice", Upload_Length="200000",
                       Upload_Metadata=metadata("huge.bin"))
    assert response.status == 413
    assert not list((tmp_path / "users" / "alice").iterdir())
    assert request(base, "OPTIONS", "/.tus/", user="alice").getheader("Tus-Max-Size") == "100000"
    location = create(base, "fits.bin", 50_000, "alice")
    assert patch(base, location, 0, b"q" * 20_000, user="alice").status == 204
    ledger = ftp.user_session("alice").ledger
    assert ledger is not None and ledger.used() == 20_000  # between PATCHes: the bytes held
    assert patch(base, location, 20_000, b"q" * 30_000, user="alice").status == 204
    assert ledger.used() == 50_000
    location = create(base, "dropped.bin", 40_000, "alice")
    cut_patch(base, location, 0, b"z" * 40_000, 10_000, user="alice")
    wait_for(lambda: ledger.used() == 60_000)
    assert request(base, "DELETE", location, user="alice").status == 204
    assert ledger.used() == 50_000


def test_read_only_account_is_403(web: Web, tmp_path: Path) -> None:
    _, base = web(users={"rita": {"readonly": True}})
    response = request(base, "POST", "/.tus/", user="rita", Upload_Length="5",
                       Upload_Metadata=metadata("x.txt"))
    assert response.status == 403


def test_delete_ends_the_upload(web: Web, tmp_path: Path) -> None:
    _, base = web()
    location = create(base, "gone.txt", 10)
    assert patch(base, location, 0, b"12345").status == 204
    assert request(base, "DELETE", location).status == 204
    assert request(base, "HEAD", location).status == 404
    assert patch(base, location, 5, b"67890").status == 404
    assert leftovers(tmp_path / "storage") == []


def test_another_accounts_upload_is_404(web: Web) -> None:
    _, base = web(users={"alice": {}, "bob": {}})
    location = create(base, "mine.txt", 4, "alice")
    assert request(base, "HEAD", location, user="bob").status == 404
    assert patch(base, location, 0, b"evil", user="bob").status == 404
    assert request(base, "DELETE", location, user="bob").status == 404
    assert request(base, "HEAD", location).status == 404  # anonymous too
    assert offset_of(base, location, "alice") == 0


def test_protocol_errors(web: Web) -> None:
    _, base = web()
    location = create(base, "p.txt", 4)
    response = request(base, "HEAD", location, Tus_Resumable="0.2.2")
    assert response.status == 412 and response.getheader("Tus-Version") == "1.0.0"
    response = request(base, "PATCH", location, b"abcd", Upload_Offset="0",
                       Content_Type="application/octet-stream")
    assert response.status == 415
    assert request(base, "POST", "/.tus/", Upload_Length="4").status == 400  # no filename
    assert request(base, "POST", "/.tus/", Upload_Length="-1",
                   Upload_Metadata=metadata("q")).status == 400
    assert request(base, "POST", "/.tus/", Upload_Length="4",
                   Upload_Metadata=metadata("../../etc/passwd")).status == 403
    assert request(base, "HEAD", "/.tus/notanid").status == 404
    assert request(base, "GET", location).status == 405
    # X-HTTP-Method-Override, for clients that cannot send PATCH
    response = request(base, "POST", location, b"abcd", X_HTTP_Method_Override="PATCH",
                       Upload_Offset="0", Content_Type="application/offset+octet-stream")
    assert response.status == 204


def test_mkdirs_makes_missing_parent_folders(web: Web, tmp_path: Path) -> None:
    _, base = web()
    response = request(base, "POST", "/.tus/", Upload_Length="2",
                       Upload_Metadata=metadata("a/b/c.txt"))
    assert response.status == 404  # as a put: parents must exist
    location = create(base, "a/b/c.txt", 2, None, "mkdirs")
    assert patch(base, location, 0, b"ok").status == 204
    assert (tmp_path / "storage" / "a" / "b" / "c.txt").read_bytes() == b"ok"
    create(base, "empty.txt", 0)  # complete at once
    assert (tmp_path / "storage" / "empty.txt").read_bytes() == b""


def test_head_echoes_length_and_metadata(web: Web) -> None:
    _, base = web()
    location = create(base, "h.txt", 7, None, "mkdirs")
    response = request(base, "HEAD", location)
    assert response.getheader("Upload-Length") == "7"
    assert response.getheader("Upload-Offset") == "0"
    assert response.getheader("Cache-Control") == "no-store"
    assert tus.parse_metadata(response.getheader("Upload-Metadata")) == {"filename": b"h.txt",
                                                                         "mkdirs": b""}


def test_abandoned_uploads_expire(web: Web, tmp_path: Path) -> None:
    _, base = web(partial_ttl=60)
    location = create(base, "old.txt", 4)
    record = tmp_path / "storage" / ".ftp-state" / "tus" / f"{location.rpartition('/')[2]}.json"
    assert record.exists()
    stale = time.time() - 120
    os.utime(record, (stale, stale))
    assert request(base, "HEAD", location).status == 410
    assert not record.exists()
    other = create(base, "older.txt", 4)
    record = record.with_name(f"{other.rpartition('/')[2]}.json")
    os.utime(record, (stale, stale))
    assert tus.TusUploads(record.parent.parent, 60).sweep(force=True) == 1
    assert not record.exists()


# -- the page's script, in node with a stand-in DOM ---------------------------------------

_NODE_PAGE = r"""
const fs = require("fs");
const [script, storePath, base, folder, filePath, relative, mode] = process.argv.slice(1);
let store = fs.existsSync(storePath) ? JSON.parse(fs.readFileSync(storePath, "utf8")) : {};
const save = () => fs.writeFileSync(storePath, JSON.stringify(store));
globalThis.localStorage = {
  get length() { return Object.keys(store).length; },
  key(i) { return Object.keys(store)[i] ?? null; },
  getItem(k) { return k in store ? store[k] : null; },
  setItem(k, v) { store[k] = String(v); save(); },
  removeItem(k) { delete store[k]; save(); },
};
class Element {
  constructor(tag) { Object.assign(this, { tag, children: [], listeners: {}, attributes: {},
    textContent: "", hidden: false, classList: { add() {}, remove() {} } }); }
  appendChild(child) { this.children.push(child); return child; }
  setAttribute(k, v) { this.attributes[k] = v; }
  getAttribute(k) { return this.attributes[k] ?? null; }
  addEventListener(type, f) { (this.listeners[type] ||= []).push(f); }
  click() {}
}
const drop = new Element("div");
drop.setAttribute("data-folder", folder);
const made = [];
globalThis.document = {
  getElementById: (id) => (id === "drop" ? drop : null),
  createElement: (tag) => { const e = new Element(tag); made.push(e); return e; },
  createTextNode: (text) => ({ text }),
  addEventListener() {},
};
globalThis.window = globalThis;
globalThis.addEventListener = () => {};
globalThis.isSecureContext = true;
let reloaded = false;
globalThis.location = { href: base + folder, reload() { reloaded = true; } };
const realFetch = fetch;
globalThis.fetch = (url, init) => realFetch(new URL(url, base), init);
let patches = 0;
globalThis.XMLHttpRequest = class {
  open(method, url) { Object.assign(this, { method, url, headers: {}, upload: {} }); }
  setRequestHeader(k, v) { this.headers[k] = v; }
  getResponseHeader(k) { return this.response.headers.get(k); }
  send(body) {
    realFetch(new URL(this.url, base), { method: this.method, headers: this.headers, body })
      .then(async (response) => {
        Object.assign(this, { response, status: response.status,
                              responseText: await response.text() });
        patches++;
        if (this.headers["Upload-Checksum"]) patches += 1000;
        this.upload.onprogress && this.upload.onprogress({ loaded: body.size });
        if (mode === "cut") { console.log(JSON.stringify({ patches, cut: true })); process.exit(0); }
        this.onload();
      }, (error) => this.onerror(error));
  }
};
require(script);
const input = made.find((e) => e.tag === "input");
const file = new File([fs.readFileSync(filePath)], relative.split("/").pop(),
                      { lastModified: 1700000000000 });
Object.defineProperty(file, "webkitRelativePath", { value: relative });
input.files = [file];
input.listeners.change[0]();
setInterval(() => {
  if (reloaded) { console.log(JSON.stringify({ patches, store })); process.exit(0); }
}, 20);
setTimeout(() => {
  console.log(JSON.stringify({ timeout: made.map((e) => e.textContent).filter(Boolean) }));
  process.exit(2);
}, 15000);
"""


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
def test_page_script_uploads_a_folder_and_resumes_after_a_reload(web: Web, tmp_path: Path) -> None:
    _, base = web()
    script = Path(tus.__file__).with_name("static") / "upload.js"
    data = random_file(tmp_path / "clip.bin", 10 * 1024 * 1024 + 5, seed=9)
    (tmp_path / "storage" / "docs").mkdir()
    store = tmp_path / "localStorage.json"

    def page(mode: str) -> dict[str, Any]:
        result = subprocess.run(["node", "-e", _NODE_PAGE, str(script), str(store), base,
                                 "/docs/", str(data), "album/clip.bin", mode],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    assert page("cut") == {"patches": 1001, "cut": True}  # one 8 MiB chunk, with its sha256
    [location] = json.loads(store.read_text()).values()  # kept across the "reload"
    assert offset_of(base, urllib.parse.urlsplit(location).path) == 8 * 1024 * 1024
    assert page("full") == {"patches": 1001, "store": {}}  # only the rest travelled
    assert (tmp_path / "storage" / "docs" / "album" / "clip.bin").read_bytes() == data.read_bytes()


def test_a_retried_patch_takes_over_from_a_hanging_one(web: Web, tmp_path: Path) -> None:
    _, base = web()
    location = create(base, "retry.bin", 1000)
    url = urllib.parse.urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as hanging:
        start_patch(hanging, location, 1000, b"r" * 300)
        wait_for(lambda: offset_of(base, location) == 300)
        started = time.monotonic()
        response = patch(base, location, 300, b"r" * 700)  # as a client does after a cut
        assert response.status == 204 and time.monotonic() - started < 5
    assert (tmp_path / "storage" / "retry.bin").read_bytes() == b"r" * 1000
