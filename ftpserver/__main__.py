"""``ftpserver``: serve the roots that config.yaml names."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from typing import Sequence

from . import __version__
from .config import load_config
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
    config = load_config(args.config).with_overrides(**overrides)
    try:
        server = FTPServer(config)
    except OSError as error:
        print(f"ftpserver: cannot listen on {config.host}:{config.port}: {error.strerror}",
              file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    log.info("serving %s on %s:%s", config.root, host, port)
    _advise(config.host, port, config.anonymous)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="accept", daemon=True)
    thread.start()
    while not stop.wait(3600):
        pass
    log.info("stopping")
    server.shutdown()
    server.server_close()
    return 0


def _advise(host: str, port: int, anonymous: bool) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    where = "<this machine's LAN address>" if not loopback else host
    log.info("clients connect with: ftpclient -H %s -p %s", where, port)
    if not loopback and anonymous:
        log.warning("anonymous clients may read and write %s on the network; "
                    "set 'anonymous: false' in config.yaml to require a login", host)


if __name__ == "__main__":
    sys.exit(main())
