"""One client connection: read a header, dispatch ``cmd`` to ``do_<cmd>``, reply.

Each ``do_<cmd>`` method receives the request header and returns the reply
header (or sends its own replies and returns None).  Any :class:`FTPError`
becomes an error reply with its code; anything else is logged and sent as
``internal``.  Only names made of lower-case letters, digits and ``_`` reach a
``do_`` method, so no request can call anything else on the handler.
"""
from __future__ import annotations

import io
import logging
import os
import re
import socket
import socketserver
import ssl
import time
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

from .auth import ScramServer
from .digest import HASHES, Checkpoint, available, new_hash, version_tag
from .errors import (AuthFailed, ChecksumError, ConnectionLost, FramingError, FTPError,
                     InternalError, NotFound, ProtocolError, QuotaExceeded, UnknownCommand)
from .protocol import (bool_field, encode_frame, error_reply, int_field, loggable, ok_reply,
                       printable, read_frame, shorten, text_field)
from .batched import BatchedCommands
from .commits import CommitGroup
from .fields import check_trailer, digest_field, hash_name, source_field
from .session import Upload
from .transfer import FileHasher, Writeback, receive_body, receiving_digest, send_body

if TYPE_CHECKING:
    from .server import FTPServer

__all__ = ["FTPHandler"]

log = logging.getLogger(__name__)

_COMMAND = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: Entries per ``ls`` reply frame, well inside the header limit.
LS_BATCH = 100
#: Files of at most this many bytes are sent by a get in one write: reply, bytes, trailer.
SMALL_GET = 64 * 1024
#: Seconds a TLS client has to finish its handshake (at most ``idle_timeout``).
HANDSHAKE_TIMEOUT = 10.0


def _split_mark(upload: Upload, algorithm: str) -> Checkpoint | None:
    """The mark a resumed put of ``upload`` can be checked in two parts at: the digest
    of the bytes before it, kept when an earlier attempt was cut (blake3); or None."""
    mark = upload.checkpoint
    if mark is None or not mark.is_digest or mark.hash != algorithm \
            or not 0 < mark.offset <= upload.offset:
        return None
    return mark


class _Deadline:
    """A socket's buffered reader whose reads all end by a deadline (TimeoutError after)."""

    def __init__(self, stream: io.BufferedReader, sock: socket.socket, seconds: float) -> None:
        self._stream, self._sock = stream, sock
        self._end = time.monotonic() + seconds

    def read(self, n: int) -> bytes:
        """Return what arrives first, 1 to ``n`` bytes (none at the end of the stream)."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self._sock.settimeout(left)
        return self._stream.read1(n)


class FTPHandler(BatchedCommands, socketserver.StreamRequestHandler):
    """Serve one connection: any number of requests, one after another."""

    server: "FTPServer"
    disable_nagle_algorithm = True
    #: Seconds a header may take to arrive once its first byte has (at most ``idle_timeout``):
    #: a header trickled in a byte at a time must not hold its slot for ever.
    header_timeout = 30.0

    def setup(self) -> None:
        self.timeout = self.server.config.idle_timeout
        super().setup()
        self.tls_ok = True
        if isinstance(self.connection, ssl.SSLSocket):
            self._handshake()
        self.session = self.server.anonymous_session()
        self.commits = CommitGroup(self.server.sync_uploads)
        self._scram: ScramServer | None = None
        #: True while a request's body may be in flight: an error then ends the connection.
        self.mid_body = False

    def _handshake(self) -> None:
        """Complete TLS, giving a silent peer at most HANDSHAKE_TIMEOUT of its slot."""
        self.connection.settimeout(min(HANDSHAKE_TIMEOUT, self.timeout))
        try:
            self.connection.do_handshake()  # type: ignore[attr-defined]
            self.tls_ok = True
        except (OSError, ssl.SSLError) as error:
            log.info("%s: TLS handshake failed: %s", self.client_address[0], error)
            self.tls_ok = False
        self.connection.settimeout(self.timeout)

    # -- the request loop -------------------------------------------------

    def handle(self) -> None:
        if not self.tls_ok:
            return
        peer = "%s:%s" % self.client_address[:2]
        log.debug("%s connected", peer)
        while True:
            try:
                header = self._read_header()
            except FramingError as error:
                self._send_quietly(error_reply(error))  # no way to resynchronise
                return
            except ProtocolError as error:
                self._send_quietly(error_reply(error))  # the whole frame was read: go on
                continue
            except (ConnectionLost, OSError):
                return
            if header is None:
                return
            self.mid_body = False
            self.started = time.monotonic()
            self.subject, self.moved = None, 0
            try:
                reply = self.dispatch(header)
            except ConnectionLost as error:
                self._log(peer, header, f"interrupted: {error}")
                return
            except FTPError as error:
                reply = error_reply(error)
            except (ConnectionError, TimeoutError, ssl.SSLError) as error:
                self._log(peer, header, f"connection lost: {error}")
                return
            except OSError as error:  # the server's own disk: say so, never just hang up
                log.error("%s %s: %s", peer, header.get("cmd"), error)
                reply = error_reply(InternalError(f"server file error: {error.strerror or error}"))
            except Exception:
                log.exception("%s %s failed", peer, header.get("cmd"))
                reply = error_reply(InternalError("internal server error"))
            self._log(peer, header, None if reply is None or reply["ok"] else
                      f"failed: {reply['error']}: {reply['message']}")
            if reply is not None:
                if not reply["ok"] and self.mid_body:
                    # Body bytes may still be on their way: the stream cannot be resynchronised.
                    self._send_quietly(reply)
                    return
                self.send(reply)

    def _read_header(self) -> dict[str, Any] | None:
        """Read the next request header: its first byte within ``idle_timeout``, the
        rest within ``header_timeout``.

        Returns None at a clean end of stream; raises as :func:`read_frame` does, and
        TimeoutError when time runs out.
        """
        if not self.rfile.peek(1):  # type: ignore[attr-defined]
            return None
        seconds = min(self.header_timeout, self.timeout)
        try:
            return read_frame(_Deadline(self.rfile, self.connection, seconds))  # type: ignore[arg-type]
        except TimeoutError:
            log.info("%s: header not complete within %g s: closing", self.client_address[0], seconds)
            raise
        finally:
            self.connection.settimeout(self.timeout)

    def _log(self, peer: str, header: dict[str, Any], problem: str | None) -> None:
        """One line per command: who, what, on which path, how many bytes, how fast."""
        seconds = time.monotonic() - self.started
        subject = self.subject or header.get("path") or header.get("filename") or ""
        # cmd and paths come from the client: escaped and quoted, so none can forge a line.
        line = "%s %s %s %s" % (peer, self.user or "anonymous", loggable(header.get("cmd")),
                                loggable(subject) if subject else "")
        if problem:
            problem = shorten(printable(problem), 1000)
            # A stat that finds nothing is how clients ask "is it there?": not news.
            level = logging.DEBUG if header.get("cmd") == "stat" else logging.INFO
            log.log(level, "%s %s", line, problem)
        elif self.moved:
            log.info("%s %d bytes %.3fs %.1f MB/s", line, self.moved, seconds,
                     self.moved / max(seconds, 1e-6) / 1e6)
        else:
            log.debug("%s %.3fs", line, seconds)

    def dispatch(self, header: dict[str, Any]) -> dict[str, Any] | None:
        """Find the handler method for ``header['cmd']`` and call it.

        Raises UnknownCommand for any name that is not a ``do_`` command.
        """
        command = header.get("cmd")
        if not isinstance(command, str) or not _COMMAND.fullmatch(command):
            raise UnknownCommand(f"unknown command {str(command)[:40]!r}")
        method: Callable[[dict[str, Any]], dict[str, Any] | None] | None = getattr(
            self, "do_" + command, None)
        if method is None:
            raise UnknownCommand(f"unknown command {command!r}")
        if len(self.commits) and not (command == "put" and header.get("stream") is True):
            self.commit_held()  # replies go out in the order of the requests
        return method(header)

    def finish(self) -> None:
        """Hook: verified uploads still held are committed even if no one hears of it."""
        try:
            for reply in self.commits.commit():
                self._send_quietly(reply)
        finally:
            super().finish()

    def send(self, header: dict[str, Any]) -> None:
        """Send one header frame (after the replies of a group being committed)."""
        self.commits.wait()
        self._write(header)

    def _write(self, header: dict[str, Any]) -> None:
        self.wfile.write(encode_frame(header))

    def _send_quietly(self, header: dict[str, Any]) -> None:
        try:
            self.send(header)
        except OSError:
            pass

    @property
    def user(self) -> str | None:
        """The logged-in user, None for an anonymous session."""
        return self.session.user

    # -- commands -----------------------------------------------------------

    def do_ls(self, header: dict[str, Any]) -> dict[str, Any]:
        """List a folder: entries come in batches, ``more`` is true on all but the last."""
        vpath, listing = self.session.ls(text_field(header, "path", ""))
        entries = [entry.to_json() for entry in listing]
        batches = [entries[i:i + LS_BATCH] for i in range(0, len(entries), LS_BATCH)] or [[]]
        for batch in batches[:-1]:
            self.send(ok_reply(path=vpath, entries=batch, more=True))
        return ok_reply(path=vpath, entries=batches[-1], more=False)

    def do_stat(self, header: dict[str, Any]) -> dict[str, Any]:
        """Describe one file or folder; with ``md5`` (or ``sha256``) true, a file's hash too."""
        vpath, entry = self.session.stat(text_field(header, "path"))
        reply = ok_reply(path=vpath, entry=entry.to_json())
        wanted = [name for name in HASHES if bool_field(header, name) and available(name)]
        if wanted and entry.type == "file":
            with self.session.open_read(vpath)[1] as file:
                for name in wanted:
                    reply[name] = self.server.file_digest(file, name)
        return reply

    def do_get(self, header: dict[str, Any]) -> None:
        """Send a file from ``offset``: reply header, the raw bytes, then a trailer with
        the hash (md5 unless ``hash`` names another) of the whole file."""
        name = text_field(header, "filename")
        offset = int_field(header, "offset", 0)
        source = text_field(header, "source", None)
        algorithm = hash_name(header)
        vpath, file = self.session.open_read(name)
        with file:
            before = os.fstat(file.fileno())
            size, tag = before.st_size, version_tag(before)
            if offset > size or (offset and source != tag):
                offset = 0  # the file changed since the partial was started: restart
            digest = self.server.digests.get(before, algorithm)
            reply = ok_reply(filename=vpath, filesize=size, offset=offset, source=tag,
                             hash=algorithm, mtime_ns=before.st_mtime_ns)
            if size <= SMALL_GET and self._send_small(file, before, reply, digest, algorithm):
                self.subject, self.moved = vpath, size - offset
                return
            hasher = None if digest else FileHasher(file, size, hash=algorithm)
            self.send(reply)
            self.mid_body = True  # from here an error can only end the connection
            try:
                send_body(self.connection, file, offset, size - offset)
            except BaseException:
                if hasher:
                    hasher.cancel()
                raise
            if hasher:
                digest = self.server.digests.put_unchanged(file, before, hasher.result(), algorithm)
        self.mid_body = False
        self.subject, self.moved = vpath, size - offset
        self.send(ok_reply(**{algorithm: digest}))

    def _send_small(self, file: BinaryIO, before: os.stat_result, reply: dict[str, Any],
                    digest: str | None, algorithm: str) -> bool:
        """Send a small file's reply, bytes and trailer in one write, hashed from memory;
        False (nothing sent) if it no longer holds the bytes its stat promised."""
        size, offset = reply["filesize"], reply["offset"]
        data = os.pread(file.fileno(), size, 0)
        if len(data) != size:
            return False
        if digest is None:
            hasher = new_hash(algorithm)
            hasher.update(data)
            digest = self.server.digests.put_unchanged(file, before, hasher.hexdigest(), algorithm)
        self.commits.wait()
        self.wfile.write(encode_frame(reply) + data[offset:] + encode_frame(ok_reply(**{algorithm: digest})))
        return True

    def do_put(self, header: dict[str, Any]) -> dict[str, Any] | None:
        """Receive a file into a partial, verify its hash (md5 unless ``hash`` names
        another), then rename it into place.

        Without ``resume`` this is the tutorial's one-shot put: the body follows
        the header at once, so an error found first ends the connection.
        """
        if bool_field(header, "stream"):
            return self._put_streamed(header)
        resumable = bool_field(header, "resume")
        self.mid_body = not resumable
        name = text_field(header, "filename")
        size = int_field(header, "filesize")
        algorithm = hash_name(header)
        declared = digest_field(header, algorithm, required=False)
        for other in HASHES:
            if other != algorithm and other in header:  # never let a given digest go unchecked
                raise ProtocolError(f"field '{other}' does not match hash '{algorithm}'")
        source = source_field(header)
        restart = bool_field(header, "restart")
        mtime_ns = int_field(header, "mtime_ns", None)
        splits = bool_field(header, "split")  # the client can check a resume in two parts
        with self.session.upload(name, size, source if resumable else None, restart,
                                 self.connection) as upload:
            vpath, offset = upload.vpath, upload.offset
            split = _split_mark(upload, algorithm) if splits and resumable else None
            if resumable:
                self.send(ok_reply(filename=vpath, offset=offset, hash=algorithm,
                                   **({"split": split.offset} if split else {})))
                self.mid_body = True
            try:
                digest, reached = self._receive(upload, algorithm, resumable, split)
            except BaseException:
                if not resumable:
                    upload.discard()  # a one-shot put has no source tag to resume by
                raise
            self.mid_body = False
            if resumable:
                try:
                    trailer = check_trailer(read_frame(self.rfile))
                except ConnectionLost:  # cut before the trailer: all is held, keep its state
                    upload.save_checkpoint(reached)
                    raise
                declared = digest_field(trailer, algorithm)
                if split:
                    before = digest_field(trailer, algorithm, field=f"{algorithm}_before")
                    if before != split.state:
                        upload.discard()
                        raise ChecksumError(
                            f"checksum mismatch for {vpath}: the {split.offset} bytes held hash "
                            f"to {algorithm} {split.state}, the client's are {before}")
            if declared is not None and digest != declared:
                upload.discard()
                raise ChecksumError(f"checksum mismatch for {vpath}: received {algorithm} {digest}, "
                                    f"the client's is {declared}")
            upload.set_mtime(mtime_ns)
            try:
                info = upload.commit(sync=self.server.sync_uploads)
            except NotFound:  # its folder moved: the partial stays there, resumable
                upload.save_checkpoint(reached)
                raise
            except QuotaExceeded:  # it can never fit: keep nothing
                upload.discard()
                raise
            if not split:  # the first get needs no re-hash
                self.server.digests.put(info, digest, algorithm)
        self.subject, self.moved = vpath, size - offset
        return ok_reply(filename=vpath, filesize=size, **{algorithm: digest},
                        **({"split": split.offset} if split else {}))

    def _receive(self, upload: Upload, name: str, resumable: bool,
                 split: Checkpoint | None = None) -> tuple[str, Checkpoint | None]:
        """Append the body to the partial; return the hash ``name`` of the whole file
        (with ``split``, of the bytes after its mark) and its state (None where it
        cannot be saved).

        If the body is cut, a resumable partial keeps the state of the hash of the
        bytes it holds (or the mark it was split at), so the next attempt need not
        hash them again.
        """
        size, offset = upload.size, upload.offset
        with upload.file() as file:
            digest = receiving_digest(file, size, offset, upload.checkpoint,
                                      self.server.config.buffer_size, name,
                                      begin=split.offset if split else 0)
            try:
                file.seek(offset)
                # Out of the cache once on disk, unless a hasher reads the file behind;
                # a cut gives back its reserved space before the checkpoint ties to the file.
                with Writeback(file.fileno(), offset,
                               size - offset if self.server.sync_uploads else 0,
                               drop=not isinstance(digest, FileHasher)) as writeback:
                    receive_body(self.rfile, file, size - offset,
                                 self.server.config.buffer_size, digest, writeback)
            except BaseException:
                digest.cancel()
                if resumable:
                    upload.save_checkpoint(split or digest.checkpoint())
                raise
            return digest.result(), split or digest.checkpoint()

    def do_login(self, header: dict[str, Any]) -> dict[str, Any]:
        """One step of a SCRAM-SHA-256 login: client-first, then client-final."""
        message = text_field(header, "message")
        address = self.client_address[0]
        if self._scram is None:
            time.sleep(self.server.throttle.delay(address))
            accounts = self.server.accounts
            scram = ScramServer(lambda name: accounts[name].keys if name in accounts else None,
                                self.server.login_secret)
            challenge = scram.first(message)
            self._scram = scram
            return ok_reply(message=challenge)
        scram, self._scram = self._scram, None
        try:
            signature = scram.final(message)
        except (AuthFailed, ProtocolError):  # a garbled proof is a failed guess too
            self.server.throttle.failed(address)
            log.warning("%s: failed login as %r", address, scram.user)
            raise AuthFailed(f"login failed for user {scram.user!r}") from None
        self.server.throttle.succeeded(address)
        self.session = self.server.user_session(scram.user)  # type: ignore[arg-type]
        log.info("%s: logged in as %s", address, self.user)
        return ok_reply(message=signature, user=self.user)

    def do_pwd(self, header: dict[str, Any]) -> dict[str, Any]:
        """Return the session's current folder."""
        self.session.files()
        return ok_reply(path=self.session.cwd)

    def do_cd(self, header: dict[str, Any]) -> dict[str, Any]:
        """Change the session's current folder."""
        return ok_reply(path=self.session.cd(text_field(header, "path", "/")))

    def do_mkdir(self, header: dict[str, Any]) -> dict[str, Any]:
        """Create one folder (its parent must exist)."""
        return ok_reply(path=self.session.mkdir(text_field(header, "path")))

    def do_rm(self, header: dict[str, Any]) -> dict[str, Any]:
        """Remove a file or an empty folder."""
        return ok_reply(path=self.session.rm(text_field(header, "path")))

    def do_mv(self, header: dict[str, Any]) -> dict[str, Any]:
        """Rename a file or folder within the root."""
        source, target = self.session.mv(text_field(header, "path"), text_field(header, "to"))
        return ok_reply(path=source, to=target)

    def do_share(self, header: dict[str, Any]) -> dict[str, Any]:
        """Share links: make one for ``path`` lasting ``expires`` seconds; or with ``list``,
        the session's links (in batches, ``more`` on all but the last); or end the link
        ``revoke``.  Replies carry the web side's ``http_port`` (null without one)."""
        from .web.shares import DEFAULT_EXPIRES, MAX_EXPIRES, book_of, http_port

        book = book_of(self.server)
        web = {"http_port": http_port(self.server),
               "http_scheme": "https" if self.server.config.tls else "http"}
        if "revoke" in header:
            self.session.files()
            share = book.revoke(self.user, text_field(header, "revoke"))
            return ok_reply(revoked=share.token, path=share.path)
        if bool_field(header, "list"):
            self.session.files()
            shares = [share.to_json() for share in book.list(self.user)]
            batches = [shares[i:i + LS_BATCH] for i in range(0, len(shares), LS_BATCH)] or [[]]
            for batch in batches[:-1]:
                self.send(ok_reply(shares=batch, more=True, **web))
            return ok_reply(shares=batches[-1], more=False, **web)
        expires = int_field(header, "expires", DEFAULT_EXPIRES, low=1, high=MAX_EXPIRES)
        vpath, _ = self.session.stat(text_field(header, "path"))
        share = book.create(self.user, vpath, expires)
        self.subject = vpath
        return ok_reply(**share.to_json(), **web)
