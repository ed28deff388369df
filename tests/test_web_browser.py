"""The web side in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright against a real FTPServer and its WebServer on 127.0.0.1.

The listing page (rows, sorting, downloads), uploads through the page's own
script (/.static/upload.js) with their progress bars, an upload resumed after a
reload, the login form, and share links opened without a login.  The browser
reaches nothing but the test's server: every other request is aborted.  Without
/usr/bin/chromium or the Python package ``playwright`` (which never downloads a
browser here) these tests skip.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ftpserver.config import Config
from ftpserver.web import pages, tus

from helpers import LOOPBACK, run_cli
from web_helpers import PASSWORD, Web, users, web_server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
#: Longest wait for anything the page does, in milliseconds.
WAIT_MS = 15_000
MiB = 1024 * 1024
CHUNK = 8 * MiB  # upload.js's chunk size


def _why_not() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM} (Debian package chromium: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import Error, sync_playwright
    with sync_playwright() as driver:
        try:
            chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              timeout=30_000)
        except Error as error:
            pytest.skip(f"{CHROMIUM} does not start: {str(error).splitlines()[0]}")
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (cookies, localStorage) that reaches only 127.0.0.1."""
    made = browser.new_context(accept_downloads=True)
    made.set_default_timeout(WAIT_MS)
    # A pattern, not a function: the driver matches it, so requests to the server are not
    # intercepted (a function would hold each of them until this thread next calls Playwright).
    made.route(re.compile(r"^(?!http://" + re.escape(LOOPBACK) + r":)"),
               lambda route: route.abort())
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def page(context: Any) -> Any:
    opened = context.new_page()
    # Leaving a page while uploads run asks first: say yes, as a person reloading would.
    opened.on("dialog", lambda dialog: dialog.accept())
    return opened


@pytest.fixture
def open_web(storage_root: Path) -> Iterator[Web]:
    config = Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30, http_port=0)
    with web_server(config) as running:
        yield running


def random_bytes(size: int, seed: str) -> bytes:
    """``size`` bytes that differ from any other seed's (fast for tens of MiB)."""
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d" % counter).digest() + block
        counter += 1
    return bytes(out[:size])


def rows(page: Any) -> list[list[str]]:
    """The listing's rows as [name, size] texts, in the order shown."""
    return page.eval_on_selector_all(
        "#listing tbody.entries tr",
        "trs => trs.map(tr => [tr.cells[0].innerText.trim(), tr.cells[1].innerText.trim()])")


def names(page: Any) -> list[str]:
    return [row[0] for row in rows(page)]


def leftovers(root: Path) -> list[str]:
    """Partial files and unfinished tus records anywhere under ``root``."""
    partials = [str(p.relative_to(root)) for p in root.rglob("*ftp-partial*")]
    records = [str(p.relative_to(root)) for p in root.rglob(".ftp-state/tus/*.json")]
    return partials + records


# -- the listing ----------------------------------------------------------------------------

def test_listing_renders_sorts_and_downloads(open_web: Web, storage_root: Path,
                                             page: Any) -> None:
    files = {"apple.txt": b"an apple a day\n" * 200,           # 3000 B
             "banana.bin": random_bytes(300 * 1024, "banana"),  # 300 KiB
             "cherry.bin": b"\x00\x01cherry!\xff" * 2}          # 20 B
    for name, data in files.items():
        (storage_root / name).write_bytes(data)
    (storage_root / "zeta").mkdir()
    (storage_root / "alpha").mkdir()
    (storage_root / "alpha" / "inside.txt").write_text("inside\n")
    now = time.time()  # modified: zeta/ before alpha/, banana oldest, then cherry, then apple
    for age, name in ((400, "zeta"), (50, "alpha"),
                      (300, "banana.bin"), (200, "cherry.bin"), (100, "apple.txt")):
        os.utime(storage_root / name, (now - age, now - age))

    page.goto(open_web.url)
    assert page.title() == "/ - lan-ftp"
    assert rows(page) == [["alpha/", ""], ["zeta/", ""],
                          ["apple.txt", pages.human_size(3000)],
                          ["banana.bin", pages.human_size(300 * 1024)],
                          ["cherry.bin", pages.human_size(20)]]

    def sort_by(label: str, expected: list[str], order: str) -> None:
        page.click(f"#listing thead button:text-is('{label}')")
        assert names(page) == expected
        assert page.get_attribute(f"#listing th:has(button:text-is('{label}'))",
                                  "aria-sort") == order

    folders = ["alpha/", "zeta/"]
    sort_by("Size", folders + ["cherry.bin", "apple.txt", "banana.bin"], "ascending")
    sort_by("Size", folders + ["banana.bin", "apple.txt", "cherry.bin"], "descending")
    sort_by("Modified", ["zeta/", "alpha/", "banana.bin", "cherry.bin", "apple.txt"],
            "ascending")
    sort_by("Name", folders + ["apple.txt", "banana.bin", "cherry.bin"], "ascending")
    sort_by("Name", ["zeta/", "alpha/", "cherry.bin", "banana.bin", "apple.txt"], "descending")
    assert page.get_attribute("#listing th:has(button:text-is('Size'))", "aria-sort") is None

    # A file the browser cannot show safely comes as a download, whole.
    with page.expect_download(timeout=WAIT_MS) as started:
        page.click("#listing a:text-is('banana.bin')")
    download = started.value
    assert download.suggested_filename == "banana.bin"
    assert Path(download.path()).read_bytes() == files["banana.bin"]

    # The page's own fetch of a file gets its bytes (text is shown inline).
    fetched = page.evaluate("""async (name) => {
        const response = await fetch(name);
        return {type: response.headers.get("Content-Type"),
                bytes: Array.from(new Uint8Array(await response.arrayBuffer()))};
    }""", "cherry.bin")
    assert bytes(fetched["bytes"]) == files["cherry.bin"]
    page.click("#listing a:text-is('apple.txt')")
    page.wait_for_url(open_web.url + "apple.txt")
    assert page.evaluate("document.body.innerText") == files["apple.txt"].decode()

    # A folder's link opens its listing, with a way up.
    page.goto(open_web.url)
    page.click("#listing a:text-is('alpha/')")
    page.wait_for_url(open_web.url + "alpha/")
    assert names(page) == ["inside.txt"]
    assert page.inner_text("#listing tbody.up") .strip() == "../"
    page.click("#listing tbody.up a")
    page.wait_for_url(open_web.url)


# -- uploads through the page ------------------------------------------------------------

class Patches:
    """Wraps tus.handle: records each PATCH's Upload-Offset and body length, can slow
    PATCHes down (``delay`` seconds each) and hold the first one from an offset on
    (``hold_from``) until released."""

    def __init__(self, handle: Callable[..., None]) -> None:
        self.handle = handle
        self.seen: list[tuple[int, int]] = []  # (Upload-Offset, Content-Length)
        self.delay = 0.0
        self.hold_from: int | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def __call__(self, handler: Any, session: Any, rest: str) -> None:
        if handler.command != "PATCH":
            return self.handle(handler, session, rest)
        offset = int(handler.headers.get("Upload-Offset", "-1"))
        length = int(handler.headers.get("Content-Length", "0"))
        time.sleep(self.delay)
        held = self.hold_from is not None and offset >= self.hold_from
        if held:
            self.hold_from = None
            self.held.set()
            self.release.wait(WAIT_MS / 1000)
        try:
            self.handle(handler, session, rest)
        finally:
            if held:
                self.finished.set()
            else:
                self.seen.append((offset, length))


@pytest.fixture
def patches(open_web: Web, monkeypatch: pytest.MonkeyPatch) -> Iterator[Patches]:
    """The server's tus PATCHes, watched (and released at the end, whatever happened)."""
    wrapper = Patches(tus.handle)
    monkeypatch.setattr(tus, "handle", wrapper)
    try:
        yield wrapper
    finally:
        wrapper.release.set()


_ALL_DONE = """(count) => {
    const items = [...document.querySelectorAll("#drop .upload-file")];
    const overall = document.querySelector("#drop .upload-overall");
    const summary = document.querySelector("#drop .upload-summary").textContent;
    return items.length === count
        && items.every(item => item.querySelector("progress").value
                               === item.querySelector("progress").max
                       && item.querySelector(".upload-status").textContent === "done")
        && !overall.hidden && overall.value === overall.max
        && summary.startsWith(count + " of " + count + " files");
}"""


def _progress(page: Any) -> dict[str, Any]:
    """What the upload area shows now, for an assertion's message."""
    return page.evaluate("""() => ({
        summary: document.querySelector("#drop .upload-summary").textContent,
        files: [...document.querySelectorAll("#drop .upload-file")].map(item => [
            item.querySelector(".upload-name").textContent,
            item.querySelector("progress").value, item.querySelector("progress").max,
            item.querySelector(".upload-status").textContent])})""")


def wait_all_done(page: Any, count: int) -> None:
    """Every one of ``count`` files and the overall bar at 100 %, before the page reloads."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.wait_for_function(_ALL_DONE, arg=count, timeout=WAIT_MS)
    except PlaywrightTimeout:
        pytest.fail(f"uploads did not all reach 100 %: {_progress(page)}")


def test_upload_files_and_a_folder_through_the_page(open_web: Web, storage_root: Path,
                                                    tmp_path: Path, page: Any,
                                                    patches: Patches) -> None:
    (storage_root / "inbox").mkdir()
    picked = tmp_path / "picked"
    (picked / "photos" / "2024").mkdir(parents=True)
    files = {"one.bin": random_bytes(CHUNK + 12345, "one"),  # two chunks
             "two words.txt": "héllo wörld\n".encode() * 50,
             "empty": b"",
             "photos/a.jpg": random_bytes(70_000, "a"),
             "photos/2024/b.txt": b"b\n"}
    for name, data in files.items():
        (picked / name).write_bytes(data)

    page.goto(open_web.url + "inbox/")
    assert page.get_attribute("#drop", "data-writable") == "true"
    assert page.is_visible("#drop button.upload-pick:text-is('Choose a folder')")
    page.set_input_files("#drop input[type=file]:not([webkitdirectory])",
                         [str(picked / name) for name in ("one.bin", "two words.txt", "empty")])
    wait_all_done(page, 3)
    # A folder picked just after: its uploads, slowed down, outlast the moment the page
    # meant to reload for the first ones, and must not be cut by that reload.
    patches.delay = 1.5
    page.set_input_files("#drop input[type=file][webkitdirectory]", str(picked / "photos"))
    wait_all_done(page, 5)

    # Once all are done the page reloads and lists them.
    page.wait_for_selector("#listing a:text-is('one.bin')")
    assert names(page) == ["photos/", "empty", "one.bin", "two words.txt"]
    for name, data in files.items():
        assert (storage_root / "inbox" / name).read_bytes() == data, name
    assert leftovers(storage_root) == []


# -- resuming after a reload --------------------------------------------------------------

def test_upload_resumes_after_a_reload(open_web: Web, storage_root: Path, tmp_path: Path,
                                       page: Any, patches: Patches) -> None:
    size = 24 * MiB
    data = random_bytes(size, "big")
    source = tmp_path / "big.bin"
    source.write_bytes(data)

    # First attempt: the first chunk goes through, the second is held at the server
    # while the page reloads.
    patches.hold_from = CHUNK
    page.goto(open_web.url)
    page.set_input_files("#drop input[type=file]:not([webkitdirectory])", str(source))
    assert patches.held.wait(WAIT_MS / 1000), f"no second chunk: {patches.seen} {_progress(page)}"
    assert patches.seen == [(0, CHUNK)]
    page.reload()
    patches.release.set()
    assert patches.finished.wait(WAIT_MS / 1000), "the held PATCH never ended"
    assert not (storage_root / "big.bin").exists()
    # The page remembers the unfinished upload.
    assert "big.bin" in page.inner_text("#drop .upload-pending")

    # Second attempt: the same file again resumes where the server says it stopped.
    patches.seen.clear()
    page.set_input_files("#drop input[type=file]:not([webkitdirectory])", str(source))
    wait_all_done(page, 1)
    resumed_from = patches.seen[0][0]
    assert resumed_from >= CHUNK, patches.seen
    sent = sum(length for _, length in patches.seen)
    assert sent == size - resumed_from < size, patches.seen
    assert (storage_root / "big.bin").read_bytes() == data
    assert leftovers(storage_root) == []


# -- logging in -----------------------------------------------------------------------------

def test_login_form_lands_on_the_listing_with_an_httponly_cookie(
        storage_root: Path, context: Any, page: Any) -> None:
    (storage_root / "alice").mkdir()
    (storage_root / "alice" / "alice.txt").write_text("alice\n")
    (storage_root / "alice" / "docs").mkdir()
    config = Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30, http_port=0,
                    anonymous=False, users=users(storage_root, alice={}))
    with web_server(config) as web:
        page.goto(web.url + "docs/")
        assert page.url.startswith(web.url + ".login?next=")
        assert page.is_visible("main.login p.warning")  # plain HTTP: the password travels readable

        page.fill("input[name=user]", "alice")
        page.fill("input[name=password]", "wrong")
        page.click("button[type=submit]")
        assert page.inner_text("main.login p.error")
        assert context.cookies() == []

        page.fill("input[name=user]", "alice")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(web.url + "docs/")
        assert page.title() == "/docs/ - lan-ftp"
        assert page.inner_text("header form.account span") == "alice"

        [cookie] = context.cookies()
        assert cookie["name"] == "lanftp_session"
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/"
        assert page.evaluate("document.cookie") == ""  # out of reach of scripts

        page.click("header h1 a:text-is('/')")
        page.wait_for_url(web.url)
        assert names(page) == ["docs/", "alice.txt"]

        page.click("header form.account button[type=submit]")  # log out
        page.goto(web.url)
        assert page.url.startswith(web.url + ".login")


# -- share links ----------------------------------------------------------------------------

def _download(page: Any, url: str) -> Any:
    """Open ``url`` as a person pasting a link would; return the download it starts."""
    from playwright.sync_api import Error
    with page.expect_download(timeout=WAIT_MS) as started:
        try:
            page.goto(url)
        except Error as error:  # a navigation that turns into a download ends the goto
            if "Download is starting" not in str(error):
                raise
    return started.value


def test_share_links_download_in_a_browser_without_a_login(storage_root: Path, context: Any,
                                                           page: Any) -> None:
    home = storage_root / "alice"
    (home / "photos" / "2024").mkdir(parents=True)
    report = random_bytes(200_000, "report")
    (home / "report.pdf").write_bytes(report)
    photos = {"beach.jpg": random_bytes(90_000, "beach"), "2024/dunes.jpg": b"dunes\n" * 10}
    for name, data in photos.items():
        (home / "photos" / name).write_bytes(data)
    config = Config(host=LOOPBACK, port=0, root=storage_root, idle_timeout=30, http_port=0,
                    anonymous=False, users=users(storage_root, alice={}))
    with web_server(config) as web:
        port = web.ftp.server_address[1]

        def share(path: str) -> str:
            made = run_cli(port, "-u", "alice", "share", path, env={"FTP_PASSWORD": PASSWORD})
            assert made.returncode == 0, made.stderr
            url = made.stdout.strip()
            assert url.startswith(web.url + ".share/"), url
            return url

        file_url, folder_url = share("report.pdf"), share("photos")

        # This browser has never logged in: the listing wants a login ...
        assert context.cookies() == []
        page.goto(web.url)
        assert page.url.startswith(web.url + ".login")

        # ... but the links download all the same.
        download = _download(page, file_url)
        assert download.suggested_filename == "report.pdf"
        assert Path(download.path()).read_bytes() == report

        download = _download(page, folder_url)
        assert download.suggested_filename == "photos.zip"
        with zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes())) as archive:
            got = {name: archive.read(name) for name in archive.namelist()
                   if not name.endswith("/")}
        assert got == photos
        assert context.cookies() == []


# -- screenshots for the README ---------------------------------------------------------------

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


@pytest.mark.slow
def test_write_the_readme_screenshots(open_web: Web, storage_root: Path, tmp_path: Path,
                                      browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a check: writes docs/screenshots/listing-{desktop,phone}.png, a listing with
    uploads under way (run with: pytest -m slow -k screenshots tests/test_web_browser.py)."""
    GiB = 1024 * MiB
    now = time.time()
    day = 86400
    # Sparse files: the sizes a real share would show, without the disk they would take.
    entries = {"Documents/": 12 * day, "Music/": 160 * day, "Photos/": 2 * day,
               "Projects/": 30 * day,
               "debian-12.5.0-amd64-netinst.iso": (659 * MiB, 90 * day),
               "Holiday 2024 - Lisbon.mp4": (int(3.7 * GiB), 40 * day),
               "tax-return-2023.pdf": (1_284_000, 200 * day),
               "budget.xlsx": (48_200, 5 * day),
               "notes.txt": (2_310, 3600)}
    for name, spec in entries.items():
        path = storage_root / name.rstrip("/")
        if name.endswith("/"):
            path.mkdir()
            age = spec
        else:
            size, age = spec
            with open(path, "wb") as out:
                out.truncate(size)
        os.utime(path, (now - age, now - age))

    # The uploads: one done, two held part-way at the server, one waiting its turn.
    picked = tmp_path / "picked"
    picked.mkdir()
    uploads = {"IMG_0412.HEIC": 2_900_000, "IMG_0415.MOV": 40 * MiB,
               "scan-passport.pdf": 20 * MiB, "IMG_0419.MOV": 64 * MiB}
    for name, size in uploads.items():
        with open(picked / name, "wb") as out:
            out.truncate(size)
    hold_from = 2 * CHUNK
    release = threading.Event()
    handle = tus.handle

    def held(handler: Any, session: Any, rest: str) -> None:
        if (handler.command == "PATCH"
                and int(handler.headers.get("Upload-Offset", "0")) >= hold_from):
            release.wait(WAIT_MS / 1000)
        handle(handler, session, rest)

    monkeypatch.setattr(tus, "handle", held)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shots = {"listing-desktop.png": {"viewport": {"width": 1280, "height": 800}},
             "listing-phone.png": {"viewport": {"width": 390, "height": 844},
                                   "device_scale_factor": 2, "is_mobile": True,
                                   "has_touch": True}}
    try:
        for filename, options in shots.items():
            context = browser.new_context(**options)
            context.route(re.compile(r"^(?!http://" + re.escape(LOOPBACK) + r":)"),
                          lambda route: route.abort())
            try:
                page = context.new_page()
                page.goto(open_web.url)
                page.set_input_files("#drop input[type=file]:not([webkitdirectory])",
                                     [str(picked / name) for name in uploads])
                page.wait_for_function("""() => {
                    const items = [...document.querySelectorAll("#drop .upload-file")];
                    const values = items.map(item => item.querySelector("progress").value);
                    return items.length === 4
                        && items[0].querySelector(".upload-status").textContent === "done"
                        && values[1] >= 2 * 8 * 1048576 && values[2] >= 2 * 8 * 1048576;
                }""", timeout=WAIT_MS)
                page.wait_for_timeout(300)
                page.screenshot(path=str(SCREENSHOTS / filename))
            finally:
                context.close()
    finally:
        release.set()
