"""``ftpclient``: one command per run, or an interactive shell with no command."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Sequence, TextIO

from ftpserver import __version__
from ftpserver.digest import HASHES, available
from ftpserver.errors import FTPError, IsADirectory, LocalError

from .client import DEFAULT_PORT, Client
from .listing import format_columns, format_json, format_long
from .names import shown
from .progress import BatchBar, ProgressBar

__all__ = ["main", "connect", "transfer"]

EPILOG = """examples:
  ftpclient put movie.mkv              upload to the current remote folder
  ftpclient put notes.txt docs/        upload into the remote folder docs
  ftpclient get docs/notes.txt         download to ./notes.txt
  ftpclient -H 192.168.1.20 ls -l      list a server on the LAN
  ftpclient share docs/report.pdf      print a link that downloads it without a login
  ftpclient                            interactive shell
An interrupted put or get resumes when run again; --restart starts from zero.
"""


def _port(text: str) -> int:
    """argparse type of a TCP port."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftpclient", description="Move files to and from an ftpserver.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-H", "--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    parser.add_argument("-p", "--port", type=_port, default=DEFAULT_PORT, help=f"server port (default {DEFAULT_PORT})")
    parser.add_argument("-u", "--user", help="log in as USER (password from FTP_PASSWORD or a prompt)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the server needs tls: in config.yaml)")
    parser.add_argument("--cafile", metavar="FILE", help="trust this certificate (implies --tls)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--hash", type=_hash, default=os.environ.get("FTP_HASH") or HASHES[0],
                        help="check every transfer with this hash: md5 (the default), sha256, or "
                             "blake3, the fastest (pip install 'lan-ftp[fast]'); FTP_HASH sets "
                             "the default")
    parser.add_argument("--version", action="version", version=f"ftpclient {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    put = command("put", "upload files (several, patterns, or folders with -r)",
                  "ftpclient put report.pdf docs/\n  ftpclient put -r photos backup/")
    put.add_argument("paths", metavar="LOCAL [REMOTE]", nargs="+",
                     help="one file and its remote name or folder; or several sources, the last "
                          "argument naming the remote folder")
    put.add_argument("-r", "--recursive", action="store_true", help="copy folders and all they hold")
    put.add_argument("--restart", action="store_true", help="start from zero, not from a partial upload")
    put.add_argument("-v", "--verbose", action="store_true", help="list every file that failed")
    put.add_argument("--checksum", action="store_true",
                     help="tell unchanged files by hash, not by size and modification time")
    get = command("get", "download files (several, patterns like '*.iso', or folders with -r)",
                  "ftpclient get docs/report.pdf ~/Downloads/\n  ftpclient get '*.iso'")
    get.add_argument("paths", metavar="REMOTE [LOCAL]", nargs="+",
                     help="one file and its local name or folder; or several sources, the last "
                          "argument naming the local folder")
    get.add_argument("-r", "--recursive", action="store_true", help="copy folders and all they hold")
    get.add_argument("--restart", action="store_true", help="start from zero, not from a partial download")
    get.add_argument("-v", "--verbose", action="store_true", help="list every file that failed")
    get.add_argument("--checksum", action="store_true",
                     help="tell unchanged files by hash, not by size and modification time")
    ls = command("ls", "list a remote folder", "ftpclient ls -l docs")
    ls.add_argument("path", metavar="REMOTE_DIR", nargs="?", default="")
    ls.add_argument("-l", dest="long", action="store_true", help="type, size and modification time")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    mkdir = command("mkdir", "create a remote folder", "ftpclient mkdir photos")
    mkdir.add_argument("path", metavar="REMOTE_DIR")
    rm = command("rm", "remove a remote file or empty folder", "ftpclient rm old.iso")
    rm.add_argument("path", metavar="REMOTE")
    mv = command("mv", "rename a remote file or folder", "ftpclient mv draft.txt final.txt")
    mv.add_argument("path", metavar="REMOTE")
    mv.add_argument("to", metavar="NEW")
    share = command("share", "make a link that downloads a remote file or folder (as zip) "
                             "without logging in", "ftpclient share docs/report.pdf --expires 2d")
    share.add_argument("path", metavar="REMOTE", nargs="?")
    share.add_argument("--expires", metavar="DURATION", type=_duration,
                       help="how long the link works: 30m, 12h, 7d (default 7d, at most 366d)")
    share.add_argument("--list", action="store_true", help="list your share links")
    share.add_argument("--revoke", metavar="TOKEN", help="end a share link (its token or URL)")
    return parser


def _hash(name: str) -> str:
    """A --hash (or FTP_HASH) value that this client can compute."""
    if name not in HASHES:
        raise argparse.ArgumentTypeError(f"unknown hash {name!r}: use one of {', '.join(HASHES)}")
    if not available(name):
        raise argparse.ArgumentTypeError(f"{name} is not installed here: "
                                         "pip install 'lan-ftp[fast]' (or use --hash sha256)")
    return name


def connect(host: str, port: int, user: str | None, tls: bool = False,
            cafile: str | None = None, hash: str = HASHES[0]) -> Client:
    """Open a connection (TLS if asked) and log in when ``user`` is given.  Raises FTPError."""
    context = None
    if tls or cafile:
        import ssl

        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as error:
            raise LocalError(f"cannot load {cafile}: {getattr(error, 'strerror', None) or error}") from None
    client = Client(host, port, tls=context, hash=hash)
    if user:
        try:
            client.login(user, _password())
        except BaseException:
            client.close()
            raise
    return client


def _password() -> str:
    """FTP_PASSWORD, else what the user types at a prompt.  Raises LocalError if there is none."""
    password = os.environ.get("FTP_PASSWORD")
    if password is not None:
        return password
    import getpass

    try:
        open("/dev/tty").close()  # getpass would fall back to echoing stdin
    except OSError:
        raise LocalError("no password: set FTP_PASSWORD or run from a terminal") from None
    try:
        return getpass.getpass("Password: ")
    except (EOFError, KeyboardInterrupt) as error:  # Ctrl-D or Ctrl-C at the prompt
        with contextlib.suppress(OSError), open("/dev/tty", "w") as tty:
            tty.write("\n")  # end the prompt's line
        if isinstance(error, KeyboardInterrupt):
            raise
        raise LocalError("no password given") from None


def _split(paths: list[str]) -> tuple[list[str], str | None]:
    """Sources and destination, as cp takes them: with two or more, the last is the destination."""
    return (paths, None) if len(paths) == 1 else (paths[:-1], paths[-1])


def transfer(client: Client, paths: list[str], upload: bool, *, recursive: bool = False,
             restart: bool = False, quiet: bool = False, verbose: bool = False,
             checksum: bool = False, out: TextIO | None = None) -> bool:
    """Run a put or get as typed: one file with its bar, or a batch with two bars and a summary
    (listing every failure if ``verbose``, else a few).

    Returns True if every file arrived.  Raises FTPError for a single file's failure
    or a lost connection.
    """
    sources, dest = _split(paths)
    enabled = False if quiet else None
    if len(sources) == 1 and not recursive and not any(c in sources[0] for c in "*?["):
        _single(client, sources[0], dest, upload, restart, enabled, out or sys.stderr)
        return True
    from .batch import plan_get, plan_put, run_batch  # only batches need it: keeps start-up lean

    plan = (plan_put if upload else plan_get)(client, sources, dest, recursive)
    with BatchBar(len(plan.jobs), plan.total, enabled) as bars:
        result = run_batch(client, plan, upload, restart,
                           start=lambda job: bars.file(job, shown(job.local.name), job.size),
                           finished=lambda job, done: bars.finished(job, done is not None, job.size),
                           checksum=checksum)
    for line in result.summary(verbose):
        print(line, file=out or sys.stderr)
    return result.ok


def _single(client: Client, source: str, dest: str | None, upload: bool, restart: bool,
            enabled: bool | None, out: TextIO) -> None:
    """Move one file with its bar (and a hashing bar while a long hash holds it up)."""
    name = shown(source.rstrip("/").replace(os.sep, "/").rsplit("/", 1)[-1])
    if upload and os.path.isdir(source):
        raise IsADirectory(f"{shown(source)} is a local folder: use put -r to upload a folder")
    with ProgressBar(name, enabled) as bar, ProgressBar(f"hashing {name}", enabled) as hashing:
        try:
            move = client.put if upload else client.get
            result = move(source, dest, restart=restart, progress=bar, hashing=hashing)
        except IsADirectory:
            if upload:
                raise
            raise IsADirectory(f"{shown(source)} is a remote folder: use get -r to download "
                               "a folder") from None
    if result.skipped and enabled is not False:
        print(f"{name}: already there and identical, nothing "
              f"{'sent' if upload else 'received'}", file=out)


def _put(client: Client, args: argparse.Namespace) -> int:
    return 0 if transfer(client, args.paths, True, recursive=args.recursive, restart=args.restart,
                         quiet=args.quiet, verbose=args.verbose, checksum=args.checksum) else 1


def _get(client: Client, args: argparse.Namespace) -> int:
    return 0 if transfer(client, args.paths, False, recursive=args.recursive, restart=args.restart,
                         quiet=args.quiet, verbose=args.verbose, checksum=args.checksum) else 1


def _ls(client: Client, args: argparse.Namespace) -> int:
    entries = client.ls(args.path)
    if args.json:
        print(format_json(client.stat(args.path or ".")["path"], entries))
        return 0
    lines = format_long(entries) if args.long else (
        format_columns(entries) if sys.stdout.isatty() else [shown(e["name"]) for e in entries])
    for line in lines:
        print(line)
    return 0


def _simple(method: str) -> Callable[[Client, argparse.Namespace], int]:
    def run(client: Client, args: argparse.Namespace) -> int:
        extra = (args.to,) if method == "mv" else ()
        getattr(client, method)(args.path, *extra)
        return 0
    return run


def _duration(text: str) -> int:
    """argparse type of a share's lifetime: seconds, or with a unit (s, m, h, d)."""
    from ftpserver.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not 1 <= seconds <= 366 * 86400:
        raise argparse.ArgumentTypeError(f"must be from 1s to 366d, got {text!r}")
    return int(seconds)


def _share_url(client: Client, web: dict[str, object], token: str) -> str | None:
    """The full URL of share ``token`` on this server (None without a web side)."""
    if not web.get("http_port"):
        return None
    host = f"[{client.host}]" if ":" in client.host else client.host
    return f"{web['http_scheme']}://{host}:{web['http_port']}/.share/{token}"


def _share(client: Client, args: argparse.Namespace) -> int:
    import time

    if sum((bool(args.path), args.list, args.revoke is not None)) != 1:
        raise LocalError("share takes a REMOTE path, --list or --revoke TOKEN (one of them)")
    if args.revoke is not None:
        print(f"revoked the share link of {shown(client.share_revoke(args.revoke))}")
        return 0
    if args.list:
        shares, web = client.share_list()
        for share in shares:
            until = time.strftime("%Y-%m-%d %H:%M", time.localtime(share["expires"]))
            link = _share_url(client, web, share["token"]) or share["url_path"]
            print(f"{link}  until {until}  {shown(share['path'])}")
        return 0
    share = client.share(args.path, args.expires)
    url = _share_url(client, share, share["token"])
    print(url or share["url_path"])
    if url is None:
        print(f"ftpclient: the server at {client.host}:{client.port} has no web side "
              "(http_port is off): the link works once it has one", file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "put": _put, "get": _get, "ls": _ls,
    "mkdir": _simple("mkdir"), "rm": _simple("rm"), "mv": _simple("mv"), "share": _share,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (or the shell); return the exit status."""
    args = _parser().parse_args(argv)
    moving = False  # True once a put or get has begun: an interruption leaves it resumable
    try:
        with connect(args.host, args.port, args.user, args.tls, args.cafile, args.hash) as client:
            if args.command is None:
                from .shell import run_shell
                return run_shell(client, quiet=args.quiet)
            moving = args.command in ("put", "get")
            return COMMANDS[args.command](client, args)
    except FTPError as error:
        print(f"ftpclient: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = "; run the same command again to resume" if moving else ""
        print(f"ftpclient: interrupted{hint}", file=sys.stderr)
        return 130
