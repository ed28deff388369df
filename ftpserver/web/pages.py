"""The web side's HTML: a folder listing, the login form, error pages.

Every name and message is escaped with :func:`html.escape` and every link
percent-encoded; the pages hold no inline script or style (their script and
style sheet come from ``/.static/``), so a strict Content-Security-Policy holds.
"""
from __future__ import annotations

import html
import time
from typing import Iterable
from urllib.parse import quote

from ..storage import Entry

__all__ = ["listing", "login_form", "error_page", "human_size", "CSP"]

#: Content-Security-Policy of every page: scripts, styles and requests from this site only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

#: The pages' referrer policy is ``same-origin`` (a ``<meta>`` over the server's
#: ``Referrer-Policy: no-referrer``): under ``no-referrer`` a browser sends
#: ``Origin: null`` with a form's POST, which the server must refuse as
#: cross-site, so the login and logout forms could not work.  ``same-origin``
#: names this site in ``Origin`` and sends no ``Referer`` to any other site.
_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title}</title>
<link rel="stylesheet" href="/.static/web.css">
{scripts}</head>
<body>
"""


def _page(title: str, body: str, scripts: Iterable[str] = ()) -> bytes:
    tags = "".join(f'<script src="/.static/{name}" defer></script>\n' for name in scripts)
    head = _HEAD.format(title=html.escape(title), scripts=tags)
    return (head + body + "</body>\n</html>\n").encode("utf-8")


def human_size(size: int) -> str:
    """``size`` bytes for a person: ``512 B``, ``1.5 KiB``, ``286 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{size} B"
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def _crumbs(vpath: str) -> str:
    """The folder's path as links, one per ancestor."""
    parts = [name for name in vpath.split("/") if name]
    links = ['<a href="/">/</a>']
    for depth, name in enumerate(parts, 1):
        href = "/" + "/".join(quote(p, safe="") for p in parts[:depth]) + "/"
        links.append(f'<a href="{html.escape(href)}">{html.escape(name)}</a>/')
    return "".join(links)


def _account(user: str | None, login_possible: bool) -> str:
    if user:
        return (f'<form method="post" action="/.logout" class="account">'
                f'<span>{html.escape(user)}</span> <button type="submit">Log out</button></form>')
    if login_possible:
        return '<a class="account" href="/.login">Log in</a>'
    return ""


def _row(entry: Entry) -> str:
    folder = entry.type == "dir"
    href = quote(entry.name, safe="") + ("/" if folder else "")
    shown = html.escape(entry.name) + ("/" if folder else "")
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime))
    size = "" if folder else human_size(entry.size)
    return (f'<tr class="{entry.type}"><td data-sort="{html.escape(entry.name)}">'
            f'<a href="{html.escape(href)}">{shown}</a></td>'
            f'<td class="size" data-sort="{-1 if folder else entry.size}">{size}</td>'
            f'<td class="mtime" data-sort="{entry.mtime_ns}">{stamp}</td></tr>\n')


def listing(vpath: str, entries: list[Entry], user: str | None, writable: bool,
            login_possible: bool) -> bytes:
    """The HTML page of folder ``vpath``: folders first, then files, each by name."""
    folder = vpath.rstrip("/") + "/"
    ordered = sorted(entries, key=lambda e: (e.type != "dir", e.name.casefold(), e.name))
    up = ('<tr class="up"><td><a href="../">../</a></td><td></td><td></td></tr>\n'
          if folder != "/" else "")
    rows = "".join(_row(entry) for entry in ordered)
    empty = '<p class="empty">This folder is empty.</p>\n' if not entries else ""
    body = f"""<header>
<h1>{_crumbs(folder)}</h1>
{_account(user, login_possible)}
</header>
<main>
<p class="actions"><a href="?zip" download>Download this folder as zip</a></p>
<div id="drop" data-folder="{html.escape(folder)}" data-writable="{str(writable).lower()}"></div>
<table id="listing">
<thead><tr><th data-key="name" aria-sort="ascending"><button type="button">Name</button></th>
<th data-key="size" class="size"><button type="button">Size</button></th>
<th data-key="mtime" class="mtime"><button type="button">Modified</button></th></tr></thead>
<tbody class="up">{up}</tbody>
<tbody class="entries">
{rows}</tbody>
</table>
{empty}</main>
"""
    return _page(f"{folder} - lan-ftp", body, ("listing.js", "upload.js"))


def login_form(message: str = "", encrypted: bool = True, next_path: str = "/") -> bytes:
    """The login page; ``message`` says why it is shown again, ``encrypted`` whether the
    connection is HTTPS (otherwise the page says the password travels readable)."""
    warning = "" if encrypted else (
        '<p class="warning">This connection is not encrypted (HTTP): your password travels '
        'readable by anyone on the network. Ask for the server to be set up with TLS.</p>\n')
    note = f'<p class="error">{html.escape(message)}</p>\n' if message else ""
    body = f"""<main class="login">
<h1>Log in</h1>
{note}{warning}<form method="post" action="/.login">
<input type="hidden" name="next" value="{html.escape(next_path)}">
<label>User <input name="user" autocomplete="username" autocapitalize="none" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button>
</form>
</main>
"""
    return _page("Log in - lan-ftp", body)


def error_page(status: int, reason: str, message: str) -> bytes:
    """A short page for an error status."""
    body = (f'<main class="error-page"><h1>{status} {html.escape(reason)}</h1>\n'
            f'<p>{html.escape(message)}</p>\n<p><a href="/">Home</a></p></main>\n')
    return _page(f"{status} {reason}", body)
