"""``ftpserver``: serve the roots that config.yaml names."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import shlex
import signal
import sys
import threading
from typing import Sequence

from . import __version__
from .config import Config, find_config, load_config, prepare
from .errors import FTPError

__all__ = ["main"]

log = logging.getLogger("ftpserver")

EPILOG = """examples:
  ftpserver                         serve ./storage as ./config.yaml says
  ftpserver --host 0.0.0.0 -p 2121  serve the LAN
  FTP_PASSWORD=secret ftpserver hash-password
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftpserver", description="Serve files on the local network.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="configuration file (default ./config.yaml)")
    parser.add_argument("--host", metavar="H", help="address to bind (overrides the config)")
    parser.add_argument("--port", "-p", metavar="P", type=int, help="port (overrides the config)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    parser.add_argument("--version", action="version", version=f"ftpserver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("hash-password", help="print the value for a user's 'password:' in config.yaml")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server (or a subcommand); return the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.command == "hash-password":
            from .auth import hash_password_command
            return hash_password_command()
        return _serve(args)
    except FTPError as error:
        print(f"ftpserver: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    from .server import FTPServer

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    source = find_config(args.config)
    config = load_config(source).with_overrides(**overrides)
    for folder in prepare(config, source):
        log.info("created the root folder %s", folder)
    try:
        server = FTPServer(config)
    except OSError as error:
        print(f"ftpserver: cannot listen on {config.host}:{config.port}: {error.strerror}",
              file=sys.stderr)
        return 2
    web = None
    if config.http_port is not None:
        from .web import WebServer
        try:
            web = WebServer(server)
        except OSError as error:
            server.server_close()
            print(f"ftpserver: http_port: cannot listen on {config.host}:{config.http_port}: "
                  f"{error.strerror}", file=sys.stderr)
            return 2
    # Handlers go in before the "serving" line, so a signal sent once it shows stops cleanly.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    host, port = server.server_address[:2]
    log.info("serving %s on %s:%s", config.root, host, port)
    _advise(config, port)
    servers = [server] + ([web] if web else [])
    if web:
        wildcard = config.host in ("0.0.0.0", "::", "")
        log.info("web side on %s%s", web.url, f" (from other machines: {web.url.split('//')[0]}//"
                 f"<this machine's LAN address>:{web.server_address[1]}/)" if wildcard else "")
    for each in servers:
        threading.Thread(target=each.serve_forever, name="accept", daemon=True).start()
    # A signal may reach any thread, and its handler then waits for this one to run
    # Python code: wake up often enough for a stop to be prompt.
    while not stop.wait(0.25):
        pass
    log.info("stopping")
    for each in servers:
        each.shutdown()
        each.server_close()
    return 0


def _advise(config: Config, port: int) -> None:
    """Log how clients connect, and warn of settings that are likely mistakes."""
    host = config.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    where = "<this machine's LAN address>" if not loopback else host
    tls = f" --cafile {shlex.quote(str(config.tls.cert))}" if config.tls else ""
    log.info("clients connect with: ftpclient -H %s -p %s%s", where, port, tls)
    if not loopback and config.anonymous:
        log.warning("anonymous clients may read and write %s on the network; "
                    "set 'anonymous: false' in config.yaml to require a login", host)
    if not config.anonymous and not config.users:
        log.warning("nobody can log in: 'anonymous: false' and no users in config.yaml")


if __name__ == "__main__":
    sys.exit(main())
