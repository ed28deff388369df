"""The web side's pure parts, no sockets: ranges and conditions, names, login helpers, pages."""
from __future__ import annotations

import email.utils

import pytest

from ftpserver.storage import Entry
from ftpserver.web import pages
from ftpserver.web.auth import COOKIE, cookie_value, login_cookie, safe_next, same_origin
from ftpserver.web.ranges import (ByteRange, Unsatisfiable, content_type, disposition,
                                  if_range_holds, not_modified, parse_range)


@pytest.mark.parametrize("header, size, expected", [
    (None, 10, None), ("", 10, None),
    ("bytes=0-0", 10, ByteRange(0, 0)), ("bytes=2-5", 10, ByteRange(2, 5)),
    ("bytes=2-", 10, ByteRange(2, 9)), ("bytes=-3", 10, ByteRange(7, 9)),
    ("bytes=-30", 10, ByteRange(0, 9)), ("bytes=5-100", 10, ByteRange(5, 9)),
    ("BYTES = 1 - 2", 10, ByteRange(1, 2)),
    ("bytes=0-1,3-4", 10, None), ("bytes=5-2", 10, None), ("lines=0-1", 10, None),
    ("bytes=-", 10, None), ("bytes=a-b", 10, None), ("bytes=" + "9" * 30 + "-", 10, None),
])
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header, size", [("bytes=10-", 10), ("bytes=11-20", 10),
                                          ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


def test_content_range() -> None:
    assert ByteRange(7, 9).content_range(10) == "bytes 7-9/10"
    assert ByteRange(7, 9).length == 3


def test_if_range() -> None:
    tag, mtime = '"a-b-c"', 1_700_000_000.5
    date = email.utils.formatdate(mtime, usegmt=True)
    assert if_range_holds(None, tag, mtime)
    assert if_range_holds(tag, tag, mtime) and if_range_holds(date, tag, mtime)
    assert not if_range_holds('W/"a-b-c"', tag, mtime)
    assert not if_range_holds('"other"', tag, mtime)
    assert not if_range_holds(email.utils.formatdate(mtime + 1, usegmt=True), tag, mtime)
    assert not if_range_holds("garbage", tag, mtime)


def test_not_modified() -> None:
    tag, mtime = '"t"', 1_700_000_000.0
    assert not_modified('"x", "t"', None, tag, mtime)
    assert not_modified('W/"t"', None, tag, mtime) and not_modified("*", None, tag, mtime)
    assert not not_modified('"x"', email.utils.formatdate(mtime + 99, usegmt=True), tag, mtime)
    assert not_modified(None, email.utils.formatdate(mtime, usegmt=True), tag, mtime)
    assert not not_modified(None, email.utils.formatdate(mtime - 1, usegmt=True), tag, mtime)
    assert not not_modified(None, None, tag, mtime)


def test_types_and_dispositions() -> None:
    assert content_type("a.txt") == "text/plain"
    assert content_type("a.tar.gz") == "application/octet-stream"
    assert content_type("noext") == "application/octet-stream"
    assert disposition("a.mp4", "video/mp4").startswith("inline;")
    assert disposition("a.html", "text/html").startswith("attachment;")
    assert disposition('é "x".pdf', "application/pdf") == (
        "inline; filename=\"_ _x_.pdf\"; filename*=UTF-8''%C3%A9%20%22x%22.pdf")


def test_login_helpers() -> None:
    assert cookie_value(f"a=b; {COOKIE}=tok; c=d") == "tok" and cookie_value(None) is None
    assert login_cookie("tok", secure=True).endswith("HttpOnly; SameSite=Strict; Secure")
    assert "Max-Age=0" in login_cookie(None, secure=False)
    assert same_origin("http://h:1", "h:1", None) and same_origin(None, "h:1", None)
    assert not same_origin("http://evil", "h:1", None) and not same_origin("null", "h", None)
    assert not same_origin(None, "h", "cross-site") and same_origin(None, "h", "same-origin")
    assert safe_next("/docs/?x=1") == "/docs/?x=1"
    for bad in ("//evil", "/\\evil", "http://evil/", "/a b", "/a\r\nX: y", ""):
        assert safe_next(bad) == "/"


def test_listing_page_escapes_and_orders() -> None:
    entries = [Entry("b.txt", "file", 2048, 0.0), Entry("<z>", "dir", 0, 0.0),
               Entry("A", "file", 5, 0.0)]
    page = pages.listing("/x&y", entries, user="al<i>ce", writable=False,
                         login_possible=True).decode()
    assert "&lt;z&gt;/" in page and "al&lt;i&gt;ce" in page and "/x&amp;y/" in page
    assert page.index("%3Cz%3E/") < page.index('href="A"') < page.index('href="b.txt"')
    assert "2.0 KiB" in page and 'data-writable="false"' in page
    assert pages.human_size(5) == "5 B" and pages.human_size(300 << 20) == "300 MiB"


def test_login_form_warns_over_plain_http_only() -> None:
    assert b"not encrypted" in pages.login_form(encrypted=False)
    assert b"not encrypted" not in pages.login_form(encrypted=True)
    assert b'value="/a&quot;b"' in pages.login_form(next_path='/a"b')


def test_static_files_are_in_the_package() -> None:
    from importlib import resources
    folder = resources.files("ftpserver.web") / "static"
    assert (folder / "listing.js").is_file() and (folder / "web.css").is_file()
