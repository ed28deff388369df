"""The client library: one connection, one method per command.

Methods return values or raise :class:`~ftpserver.errors.FTPError`; they never
print.  Transfers report progress through a callback ``progress(done, total)``
whose first call gives the offset a resumed transfer starts from.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import select
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, NamedTuple

from ftpserver.errors import (ChecksumError, ConnectionLost, FTPError, IsADirectory, LocalError,
                              NotFound, ProtocolError, Unreachable)
from ftpserver.protocol import (META_SUFFIX, PARTIAL_SUFFIX, check_reply, encode_frame,
                                int_field, read_frame, text_field)
from ftpserver.digest import HASHES, HEX_LENGTH, Checkpoint, available, version_tag
from ftpserver.transfer import (FileHasher, ReceivingDigest, Writeback, receive_body, receiving_digest,
                                send_body, worth_saving)

from .checkpoints import CheckpointLog
from .names import shown

__all__ = ["Client", "TransferResult", "ProgressCallback", "DEFAULT_PORT"]

DEFAULT_PORT = 2121
#: ``progress(done, total)``: bytes of the file held so far, and its size.
ProgressCallback = Callable[[int, int], None]
#: Downloads of at most this many bytes keep no resume record (a cut one starts again).
RESUME_MIN = 1024 * 1024
#: A hash with more than this left to read reports its progress (``hashing``).
HASHING_SHOWN = 8 * 1024 * 1024
#: At most this many listing entries are read from one folder (a server could send them forever).
MAX_ENTRIES = 1_000_000
#: What OpenSSL says when the peer answers a TLS handshake with something that is not TLS.
_NOT_TLS = {"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL",
            "RECORD_LAYER_FAILURE", "HTTP_REQUEST"}


if TYPE_CHECKING:
    import ssl


class TransferResult(NamedTuple):
    """What a put or get did."""

    remote: str        #: the server's absolute path of the file
    local: Path        #: the local file
    size: int          #: the file's size
    offset: int        #: bytes already held before this transfer (resumed from)
    digest: str        #: hash of the whole file, checked on both ends (see ``split``)
    skipped: bool = False  #: the other side already had an identical file
    hash: str = "md5"  #: which hash: md5, sha256 or blake3
    #: A resumed blake3 put checked in two parts: the bytes before this offset by the
    #: digest kept from the attempt that was cut, the rest by hashing; ``digest`` is
    #: then the hash of the bytes from here on, not of the whole file.
    split: int = 0

    @property
    def sent(self) -> int:
        """Bytes of the file body that crossed the network."""
        return 0 if self.skipped else self.size - self.offset


class _Counter:
    """Turns per-chunk byte counts into ``progress(done, total)`` calls."""

    def __init__(self, progress: ProgressCallback | None, done: int, total: int) -> None:
        self.progress, self.done, self.total = progress, done, total
        if progress:
            progress(done, total)

    def __call__(self, count: int) -> None:
        self.done += count
        if self.progress:
            self.progress(self.done, self.total)

#: The most bytes of a body the client reads at once: large reads mean few system
#: calls (the server's reads and writes are sized by its own config).
READ_SIZE = 1024 * 1024


class Client:
    """A connection to an ftpserver."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 timeout: float | None = 60.0, buffer_size: int = READ_SIZE,
                 tls: ssl.SSLContext | None = None, hash: str = HASHES[0]) -> None:
        """``hash`` checks every transfer: md5 (the default), sha256 (faster on
        processors with SHA instructions) or blake3 (fastest, if installed).
        ``buffer_size`` is the most bytes of a body read from the socket at once."""
        if not available(hash):
            raise ValueError(f"unknown or uninstalled hash {hash!r}: use one of "
                             f"{', '.join(h for h in HASHES if available(h))}")
        self.host, self.port, self.buffer_size, self.hash = host, port, buffer_size, hash
        self._timeout, self._tls = timeout, tls
        self._credentials: tuple[str, str] | None = None
        self._cwd: str | None = None
        #: True while a body is in flight: an interruption then leaves the stream unusable.
        self._mid_body = False
        self._sock, self._reader = self._connect()
        #: True until the first reply on this connection.
        self._fresh = True
        #: Requests sent whose replies are still to be read (a pipeline).
        self._in_flight = 0

    def _connect(self) -> tuple[socket.socket, BinaryIO]:
        host, port = self.host, self.port
        # An ASCII name goes as bytes: a str would load the idna codec, a few ms of
        # start-up for every one-command run.
        address = host.encode("ascii") if host.isascii() else host
        try:
            sock = socket.create_connection((address, port), timeout=self._timeout)
        except OSError as error:
            raise Unreachable(f"server unreachable at {host}:{port}: "
                              f"{error.strerror or error}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            except OSError as error:  # ssl.SSLError is an OSError
                sock.close()
                reason = getattr(error, "reason", None)
                if reason in _NOT_TLS:
                    reason = "the server does not speak TLS (connect without --tls and --cafile)"
                raise Unreachable(f"TLS with {host}:{port} failed: {reason or error}") from None
        return sock, sock.makefile("rb")

    def _abort(self) -> None:
        """Drop a connection whose transfer was interrupted, so the server lets go of it at once."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._mid_body = True  # the next request reconnects

    def reconnect(self) -> None:
        """Open a fresh connection with the same login and remote folder.

        Called by itself before the next request when a transfer was interrupted
        mid-body (Ctrl-C in the shell), since the old stream cannot be resynchronised.
        """
        self.close()
        self._mid_body = True  # until a new connection is up: a failed attempt is tried again
        self._sock, self._reader = self._connect()
        self._mid_body, self._fresh, self._in_flight = False, True, 0
        if self._credentials:
            self.login(*self._credentials)
        if self._cwd:
            self.cd(self._cwd)

    def close(self) -> None:
        """Close the connection."""
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- frames -------------------------------------------------------------

    def _send(self, header: dict[str, Any]) -> None:
        if self._mid_body or self._closed_by_server():
            self.reconnect()
        self._write(header)

    def _closed_by_server(self) -> bool:
        """True if the server has closed this idle connection (say, after its idle_timeout)."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and self._sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # ValueError: a TLS socket cannot peek; let the request tell
            return False

    def _write(self, header: dict[str, Any]) -> None:
        try:
            frame = encode_frame(header)
        except UnicodeEncodeError:
            raise LocalError(_unsendable(header)) from None
        try:
            self._sock.sendall(frame)
        except OSError as error:
            raise self._lost(error) from None

    def _read(self) -> dict[str, Any] | None:
        try:
            header = read_frame(self._reader)
        except OSError as error:
            raise self._lost(error) from None
        except ConnectionLost:
            self._mid_body = True
            raise
        if header is None:
            self._mid_body = True  # the server closed it (idle timeout, restart): reconnect next time
            if self._fresh and not self._tls:
                raise ConnectionLost(f"the server at {self.host}:{self.port} closed the connection "
                                     "at once: it may require TLS (use --tls, or --cafile CERT)")
        self._fresh = False
        return header

    def _reply(self) -> dict[str, Any]:
        return check_reply(self._read())

    def _end_of_body(self) -> dict[str, Any]:
        """Read the reply that ends a body: the stream is in step again, whatever it says."""
        header = self._read()
        self._mid_body = False
        return check_reply(header)

    def _lost(self, error: OSError) -> ConnectionLost:
        self._mid_body = True  # the next request opens a fresh connection
        if isinstance(error, TimeoutError):
            return ConnectionLost(f"the server at {self.host}:{self.port} stopped answering")
        return ConnectionLost(f"connection to {self.host}:{self.port} lost: {error.strerror or error}")

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return its (successful) reply header."""
        self._send({"cmd": cmd, **fields})
        return self._reply()

    def login(self, user: str, password: str) -> None:
        """Log in by SCRAM-SHA-256: the password never crosses the wire.

        Raises AuthFailed for a wrong password, or a server that cannot prove it knows it.
        """
        from ftpserver.auth import ScramClient  # only a login needs it: keeps start-up lean

        scram = ScramClient(user, password)
        challenge = self.request("login", message=scram.first())["message"]
        reply = self.request("login", message=scram.final(challenge))
        scram.verify(reply["message"])
        self._credentials = (user, password)

    # -- simple commands ----------------------------------------------------

    def ls(self, path: str = "") -> list[dict[str, Any]]:
        """Return the entries of a remote folder: name, type, size, mtime."""
        reply = self.request("ls", path=path)
        entries = _entries(reply)
        while reply.get("more"):
            if len(entries) > MAX_ENTRIES:
                self._abort()  # the rest of the listing is still on its way
                raise ProtocolError(f"the server listed more than {MAX_ENTRIES} entries")
            reply = self._reply()
            entries += _entries(reply)
        return entries

    def stat(self, path: str, md5: bool = False, hash: str | None = None) -> dict[str, Any]:
        """Return a remote entry (name, type, size, mtime), with the md5 of a file if
        asked, or its hash ``hash``."""
        names = {name for name in (hash, "md5" if md5 else None) if name}
        reply = self.request("stat", path=path, **{name: True for name in names})
        return {**_entry(reply.get("entry")), "path": text_field(reply, "path"),
                **{name: reply[name] for name in names if name in reply}}

    def pwd(self) -> str:
        """Return the current remote folder."""
        return self.request("pwd")["path"]

    def cd(self, path: str) -> str:
        """Change the current remote folder and return it."""
        self._cwd = self.request("cd", path=path)["path"]
        return self._cwd

    def mkdir(self, path: str) -> str:
        """Create a remote folder."""
        return self.request("mkdir", path=path)["path"]

    def rm(self, path: str) -> str:
        """Remove a remote file or empty folder."""
        return self.request("rm", path=path)["path"]

    def mv(self, path: str, to: str) -> str:
        """Rename a remote file or folder; return its new path."""
        return self.request("mv", path=path, to=to)["to"]

    def _remote_digest(self, path: str, size: int) -> dict[str, Any]:
        """stat with the hash: the server may have to read the whole file, so wait as
        long as that takes."""
        timeout = self._sock.gettimeout()
        if timeout is not None:
            self._sock.settimeout(max(timeout, size / 20e6))  # 20 MB/s: even a slow disk
        try:
            return self.stat(path, hash=self.hash)
        finally:
            self._sock.settimeout(timeout)

    def _remote_entry(self, path: str) -> dict[str, Any] | None:
        try:
            return self.stat(path)
        except NotFound:
            return None

    # -- put ----------------------------------------------------------------

    def put(self, local: str | os.PathLike[str], remote: str | None = None, *,
            restart: bool = False, progress: ProgressCallback | None = None,
            exact: bool = False, hashing: ProgressCallback | None = None) -> TransferResult:
        """Upload a file, resuming a partial upload of the same file unless ``restart``.

        ``remote`` defaults to the file's base name in the current remote folder;
        a remote folder, or a name ending in ``/``, receives the file under its
        base name, unless ``exact`` says ``remote`` is the file's own name.
        ``hashing(done, total)`` hears how far a long wait for the local hash
        has got (checking a file already there, a resume hashing what it holds).
        Raises LocalError for an unreadable local file.
        """
        path = Path(local)
        with _open_local(path) as file:
            st = os.fstat(file.fileno())
            target, entry = self._put_target(path.name, remote, exact)
            if entry and entry["type"] == "dir":
                raise IsADirectory(f"{entry['path']} is a folder")
            if not restart:
                same = self._identical_remote(target, entry, file, st.st_size, hashing)
                if same:
                    return TransferResult(same["path"], path, st.st_size, st.st_size,
                                          same[self.hash], True, self.hash)
            source = version_tag(st)
            try:
                return self._put(file, path, target, st.st_size, source, restart, progress, hashing)
            except ChecksumError:
                if restart:
                    raise
                # The held prefix was not what we have now: send it all once more.
                return self._put(file, path, target, st.st_size, source, True, progress, hashing)

    def _put_target(self, name: str, remote: str | None,
                    exact: bool) -> tuple[str, dict[str, Any] | None]:
        """The remote path a put writes, and what is there now (None: nothing)."""
        target = remote if remote and exact else (
            name if not remote else remote + name if remote.endswith("/") else remote)
        entry = self._remote_entry(target)
        if entry and entry["type"] == "dir" and not exact and remote and target == remote:
            target = posixpath.join(remote, name)
            entry = self._remote_entry(target)
        return target, entry

    def _identical_remote(self, target: str, entry: dict[str, Any] | None, file: BinaryIO,
                          size: int, hashing: ProgressCallback | None) -> dict[str, Any] | None:
        if not entry or entry["type"] != "file" or entry["size"] != size:
            return None
        remote = self._remote_digest(target, size)
        return remote if self._same_content(file, size, remote, hashing) else None

    def _put(self, file: BinaryIO, path: Path, target: str, size: int, source: str,
             restart: bool, progress: ProgressCallback | None,
             hashing: ProgressCallback | None) -> TransferResult:
        log = CheckpointLog.for_upload(path, source, self.hash) if worth_saving(size) else None
        if log and restart:
            log.discard()
        reply = self.request("put", filename=target, filesize=size, resume=True,
                             source=source, restart=restart, split=True,
                             mtime_ns=os.fstat(file.fileno()).st_mtime_ns, **self._hash_field())
        self._mid_body = True  # the server now waits for the body: a failure ends the stream
        try:
            offset, name = int_field(reply, "offset", high=size), self._agreed_hash(reply)
            split = int_field(reply, "split", 0, low=0, high=offset)
        except FTPError:
            self._abort()  # let the server go of the partial now, not at the next request
            raise
        log = log if name == self.hash else None
        if split:  # the server checks the bytes before ``split`` by their digest, the rest whole
            before = _mark_before(file, split, log, name)
            hasher = FileHasher(file, size, hash=name, begin=split)
        else:      # hash from the last checkpoint at or before the server's offset, not from zero
            before = None
            hasher = FileHasher(file, size, start=log.best(offset) if log and offset else None,
                                on_checkpoint=log.add if log else None, hash=name)
        try:
            send_body(self._sock, file, offset, size - offset, _Counter(progress, offset, size))
        except OSError as error:
            _cancel(hasher, before)
            self._raise_server_error(error)
        except EOFError:
            _cancel(hasher, before)
            self._abort()
            raise LocalError(f"{path} changed during the upload; run the command again") from None
        except BaseException:
            _cancel(hasher, before)
            self._abort()
            raise
        try:
            digest = _hash_result(hasher, size, hashing)
            trailer = {name: digest}
            if before is not None:
                trailer[f"{name}_before"] = _hash_result(before, split, hashing) \
                    if isinstance(before, FileHasher) else before
        except (OSError, EOFError):
            self._abort()
            raise LocalError(f"{path} changed during the upload; run the command again") from None
        try:
            self._write(trailer)
            final = self._end_of_body()  # a ChecksumError makes put() retry with restart
        except ConnectionLost as error:
            raise _resumable(error) from None
        if log:
            log.discard()
        return TransferResult(text_field(final, "filename"), path, size, offset,
                              text_field(final, name), hash=name, split=split)

    def _hash_field(self) -> dict[str, str]:
        """The request field asking for a hash other than md5 (none for md5, which
        every server speaks)."""
        return {"hash": self.hash} if self.hash != HASHES[0] else {}

    def _agreed_hash(self, reply: dict[str, Any]) -> str:
        """The hash the server will check with: the one asked for, or md5 from a
        server that does not know the ``hash`` field."""
        name = reply.get("hash", HASHES[0])
        if name not in (self.hash, HASHES[0]):
            raise ProtocolError(f"the server offered hash {name!r}, not {self.hash!r}")
        return name

    def _raise_server_error(self, error: OSError) -> None:
        """The server stopped reading: raise the error it sent, if any, else ConnectionLost."""
        try:
            self._sock.settimeout(2)
            reply = read_frame(self._reader)
        except (OSError, FTPError):
            reply = None
        if reply and reply.get("ok") is False:
            check_reply(reply)
        raise _resumable(self._lost(error)) from None

    # -- get ----------------------------------------------------------------

    def get(self, remote: str, local: str | os.PathLike[str] | None = None, *,
            restart: bool = False, progress: ProgressCallback | None = None,
            exact: bool = False, hashing: ProgressCallback | None = None) -> TransferResult:
        """Download a file, resuming a partial download beside it unless ``restart``.

        ``local`` defaults to the remote base name in the current folder; a local
        folder receives the file under its base name, unless ``exact`` says
        ``local`` is the file's own name.  The file appears under its final name
        only once complete and verified.  ``hashing`` as for :meth:`put`.
        """
        dest = Path(local) if exact and local is not None else _get_target(remote, local)
        if dest.is_dir():
            raise LocalError(f"local folder {shown(dest)} is in the way: "
                             "give the file another local name")
        if not restart:
            same = self._identical_local(remote, dest, hashing)
            if same:
                return TransferResult(same["path"], dest, same["size"], same["size"],
                                      same[self.hash], True, self.hash)
        try:
            return self._get(remote, dest, restart, progress, hashing)
        except ChecksumError:
            if restart:
                raise
            return self._get(remote, dest, True, progress, hashing)

    def _identical_local(self, remote: str, dest: Path,
                         hashing: ProgressCallback | None) -> dict[str, Any] | None:
        try:
            if not dest.is_file():
                return None
            size = dest.stat().st_size
        except OSError:
            return None
        entry = self._remote_entry(remote)
        if not entry or entry["type"] != "file" or entry["size"] != size:
            return None
        remote_entry = self._remote_digest(remote, size)
        with _open_local(dest) as file:
            return remote_entry if self._same_content(file, size, remote_entry, hashing) else None

    def _same_content(self, file: BinaryIO, size: int, remote: dict[str, Any],
                      hashing: ProgressCallback | None) -> bool:
        """True if ``file`` hashes to the digest in ``remote`` (a server that did not
        give one, say an older one asked for sha256, costs no read of the file)."""
        digest = remote.get(self.hash)
        return isinstance(digest, str) and \
            _hash_result(FileHasher(file, size, hash=self.hash), size, hashing) == digest

    def _get(self, remote: str, dest: Path, restart: bool, progress: ProgressCallback | None,
             hashing: ProgressCallback | None) -> TransferResult:
        partial = PartialDownload(dest)
        checkpoint = self.request_get(remote, partial, restart)
        return self.receive_get(partial, checkpoint, progress, hashing)

    def request_get(self, remote: str, partial: PartialDownload,
                    restart: bool = False) -> Checkpoint | None:
        """Ask for ``remote`` into ``partial``, resuming what it holds unless ``restart``;
        return the hash state of the bytes held, if kept.  The reply is read by
        :meth:`receive_get`; several requests may be sent before (a pipeline)."""
        held, source, checkpoint = (0, None, None) if restart else partial.resumable()
        header = {"cmd": "get", "filename": remote, "offset": held, "source": source,
                  **self._hash_field()}
        if self._in_flight:
            self._write(header)  # a reconnect would lose the replies on their way
        else:
            self._send(header)
        self._in_flight += 1
        return checkpoint if held else None

    def receive_get(self, partial: PartialDownload, checkpoint: Checkpoint | None,
                    progress: ProgressCallback | None = None,
                    hashing: ProgressCallback | None = None,
                    commit: bool = True) -> TransferResult:
        """Receive the file asked for by :meth:`request_get` and verify it; with ``commit``,
        flush it to disk and give it the server's modification time and its final name
        (else the caller commits it: :meth:`PartialDownload.commit`, as a group does)."""
        self._in_flight -= 1
        try:
            reply = self._reply()
        except (ConnectionLost, Unreachable):
            self._in_flight = 0
            raise
        self._mid_body = True
        size = int_field(reply, "filesize")
        offset, name = int_field(reply, "offset", high=size), self._agreed_hash(reply)
        filename = text_field(reply, "filename")
        mtime_ns = int_field(reply, "mtime_ns", None)
        partial.start(filename, text_field(reply, "source"), size, offset)
        hasher = receiving_digest(partial.path, size, offset, checkpoint if offset else None,
                                  self.buffer_size, name)
        try:
            with open(partial.path, "r+b", buffering=0) as file:
                file.seek(offset)
                counter = _Counter(progress, offset, size)
                # Dropped from the cache once on disk, unless a hasher reads the file behind.
                with Writeback(file.fileno(), offset, size - offset,
                               drop=not isinstance(hasher, FileHasher)) as writeback:
                    receive_body(self._reader, file, size - offset, self.buffer_size, hasher,
                                 _both(counter, writeback))
            trailer = self._end_of_body()
        except BaseException as error:
            hasher.cancel()
            self._abort()
            self._in_flight = 0
            reached = hasher.checkpoint()  # a blake3 mark is of no use to a get's resume
            partial.save_checkpoint(None if reached and reached.is_digest else reached)
            if isinstance(error, OSError):
                raise LocalError(f"cannot write {partial.path}: {error.strerror}") from None
            if isinstance(error, ConnectionLost):
                raise _resumable(error) from None
            raise
        digest = _hash_result(hasher, size, hashing)
        if digest != trailer.get(name):
            partial.discard()
            raise ChecksumError(f"checksum mismatch for {shown(filename)}: received {name} "
                                f"{digest}, the server's is {shown(str(trailer.get(name)))}")
        partial.mtime_ns = mtime_ns
        if commit:
            partial.commit(sync=True)
        return TransferResult(filename, partial.dest, size, offset, digest, hash=name)

    # -- many files: plan and streamed puts (docs/PROTOCOL.md) -------------------

    def plan(self, folders: list[str], files: list[dict[str, Any]]) -> dict[str, Any]:
        """Ask the server to create ``folders`` and where the put of each of ``files``
        starts.  Raises UnknownCommand from a server that does not know ``plan``."""
        reply = self.request("plan", folders=folders, files=files, **self._hash_field())
        answers = reply.get("files")
        made = reply.get("folders")
        if not isinstance(answers, list) or len(answers) != len(files) \
                or not isinstance(made, list) or len(made) != len(folders) \
                or not all(isinstance(a, dict) for a in answers) \
                or not all(m is None or isinstance(m, dict) for m in made):
            raise ProtocolError("the server's plan does not answer the files asked about")
        for answer, entry in zip(answers, files):
            if "error" not in answer:
                int_field(answer, "offset", high=entry["size"])
        # A server without the hash asked for checks with md5: so does this connection.
        self.hash = self._agreed_hash(reply)
        return reply

    def stream_put(self, file: BinaryIO, remote: str, size: int, offset: int, source: str,
                   mtime_ns: int, more: bool, progress: ProgressCallback | None = None) -> None:
        """Send a streamed put: header, body from ``offset`` and trailer, without waiting
        for its reply (read it with :meth:`stream_reply`, after those of earlier ones).

        A file that changed while it was sent is padded to its size and sent with a
        trailer that cannot match, so the server refuses it and the stream stays in step.
        """
        header = {"cmd": "put", "stream": True, "filename": remote, "filesize": size,
                  "offset": offset, "source": source, "mtime_ns": mtime_ns, "more": more,
                  **self._hash_field()}
        if self._in_flight:
            self._write(header)
        else:
            self._send(header)
        self._in_flight += 1
        self._mid_body = True
        hasher = FileHasher(file, size, hash=self.hash)
        counter = _Counter(progress, offset, size)
        try:
            send_body(self._sock, file, offset, size - offset, counter)
            digest = hasher.result()
        except EOFError:
            hasher.cancel()
            self._pad(size - counter.done)
            digest = "0" * HEX_LENGTH[self.hash]
        except OSError as error:
            hasher.cancel()
            raise self._lost(error) from None
        except BaseException:
            hasher.cancel()
            self._abort()
            raise
        self._write({self.hash: digest})

    def _pad(self, count: int) -> None:
        zeros = bytes(min(count, 1 << 20))
        try:
            while count:
                count -= self._sock.send(zeros[:count])
        except OSError as error:
            raise self._lost(error) from None

    def stream_reply(self) -> dict[str, Any]:
        """The reply to the oldest streamed put still unanswered.  Raises its error."""
        self._in_flight -= 1
        try:
            header = self._read()
        except BaseException:
            self._in_flight = 0
            raise
        if not self._in_flight:
            self._mid_body = False
        return check_reply(header)

    # -- share links ----------------------------------------------------------

    def share(self, path: str, expires: int | None = None) -> dict[str, Any]:
        """Make a share link for a remote file or folder lasting ``expires`` seconds (the
        server's default: 7 days).  Returns ``token``, ``url_path``, ``expires`` (Unix
        time), ``path``, and the web side's ``http_port`` (None if it has none) and
        ``http_scheme``."""
        fields = {"path": path} if expires is None else {"path": path, "expires": expires}
        return _share_reply(self.request("share", **fields))

    def share_list(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """This account's share links (``token``, ``url_path``, ``expires``, ``path``), and
        the web side's ``http_port`` and ``http_scheme``."""
        reply = self.request("share", list=True)
        shares = [_share_reply(entry) for entry in _share_entries(reply)]
        while reply.get("more"):
            if len(shares) > MAX_ENTRIES:
                self._abort()
                raise ProtocolError(f"the server listed more than {MAX_ENTRIES} share links")
            reply = self._reply()
            shares += [_share_reply(entry) for entry in _share_entries(reply)]
        return shares, _share_web(reply)

    def share_revoke(self, token: str) -> str:
        """End the share link ``token`` (or a URL ending in it); return the path it shared."""
        return text_field(self.request("share", revoke=token), "path")


class PartialDownload:
    """A download in progress: ``NAME.ftp-partial`` beside the destination, and its
    metadata (what is downloaded, and once cut, the hash state of the bytes held)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.path = dest.with_name(dest.name + PARTIAL_SUFFIX)
        self.meta = dest.with_name(dest.name + META_SUFFIX)
        self._fields: dict[str, Any] = {}
        #: The server's modification time of the file, given to the copy on commit.
        self.mtime_ns: int | None = None

    def resumable(self) -> tuple[int, str | None, Checkpoint | None]:
        """Return the bytes held, the server's tag for them and their hash checkpoint,
        or (0, None, None)."""
        try:
            meta = json.loads(self.meta.read_text("utf-8"))
            held = self.path.stat().st_size
        except (OSError, ValueError):
            return 0, None, None
        if not isinstance(meta, dict) or not isinstance(meta.get("source"), str) \
                or not isinstance(meta.get("filesize"), int):
            return 0, None, None
        held = min(held, meta["filesize"])
        checkpoint = Checkpoint.from_json(meta.get("checkpoint"))
        if checkpoint and not checkpoint.holds(self.path, held):
            checkpoint = None
        return held, meta["source"], checkpoint

    def start(self, remote: str, source: str, size: int, offset: int) -> None:
        """Record what is being downloaded and cut the partial to ``offset``.

        A file of at most :data:`RESUME_MIN` bytes keeps no record: if it is cut, it
        is fetched whole again, which costs less than a record for every small file.
        """
        self._fields = {"remote": remote, "source": source, "filesize": size}
        try:
            if size > RESUME_MIN:
                self.meta.write_text(json.dumps(self._fields), "utf-8")
            else:
                self.meta.unlink(missing_ok=True)
            with open(self.path, "ab") as file:
                file.truncate(offset)
        except OSError as error:
            raise LocalError(f"cannot write {self.path}: {error.strerror}") from None

    def save_checkpoint(self, reached: Checkpoint | None) -> None:
        """Keep the hash state of the bytes held, once no more are written.

        A partial that cannot be written keeps what it had.
        """
        if not reached or not reached.offset:
            return
        with contextlib.suppress(OSError):
            fields = {**self._fields, "checkpoint": reached.kept_for(self.path).to_json()}
            self.meta.write_text(json.dumps(fields), "utf-8")

    def commit(self, sync: bool = False) -> None:
        """Give the complete, verified partial its final name and the server's copy's
        modification time (:attr:`mtime_ns`, when known); with ``sync``, flush it to
        disk first (a group commit flushes its files together before)."""
        try:
            if self.mtime_ns is not None:
                os.utime(self.path, ns=(time.time_ns(), self.mtime_ns))
            if sync:
                with open(self.path, "rb") as file:
                    os.fsync(file.fileno())
            os.replace(self.path, self.dest)
        except OSError as error:
            raise LocalError(f"cannot write {self.dest}: {error.strerror}") from None
        self.meta.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the partial and its metadata."""
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)


def _resumable(error: ConnectionLost) -> ConnectionLost:
    """A transfer's lost connection, with what to do next."""
    return ConnectionLost(f"{error}; run the same command again to resume")


def _cancel(*hashers: object) -> None:
    """Stop the hashers at work among ``hashers``."""
    for hasher in hashers:
        if isinstance(hasher, FileHasher):
            hasher.cancel()


def _mark_before(file: BinaryIO, split: int, log: CheckpointLog | None,
                 name: str) -> str | FileHasher:
    """The digest of the first ``split`` bytes of ``file``: kept in ``log`` when they
    were hashed before, or a hasher at work on them."""
    kept = log.best(split) if log else None
    if kept is not None and kept.offset == split and kept.is_digest and kept.hash == name:
        return kept.state
    return FileHasher(file, split, hash=name)


def _hash_result(hasher: FileHasher | ReceivingDigest, size: int,
                 hashing: ProgressCallback | None) -> str:
    """``hasher.result()``; while a FileHasher still has much to read, ``hashing(done, size)``
    tells how far it got."""
    # FileHasher keeps its thread and position private (ftpserver/transfer.py); only
    # read here, to draw a bar.
    thread, digest = getattr(hasher, "_thread", None), getattr(hasher, "_digest", None)
    if hashing and isinstance(hasher, FileHasher) and thread and digest \
            and size - digest.length > HASHING_SHOWN:
        while thread.is_alive():
            hashing(digest.length, size)
            thread.join(0.1)
        hashing(digest.length, size)
    return hasher.result()


def _entries(reply: dict[str, Any]) -> list[dict[str, Any]]:
    entries = reply.get("entries")
    if not isinstance(entries, list):
        raise ProtocolError("the server's listing has no entries")
    return [_entry(entry) for entry in entries]


def _entry(entry: object) -> dict[str, Any]:
    """A listing entry from the server, its fields' types checked (its name is checked
    where it would name a local file).  Raises ProtocolError."""
    size = entry.get("size") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
            or entry.get("type") not in ("file", "dir") \
            or not isinstance(entry.get("mtime", 0), (int, float)) \
            or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError("the server sent a malformed listing entry")
    return entry


def _unsendable(header: dict[str, Any]) -> str:
    """The message for a request holding a name that is not valid UTF-8 (a local file name
    can be any bytes; the wire carries only UTF-8)."""
    for value in header.values():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{shown(value)}: the name is not valid UTF-8, so it cannot be sent (rename it)"
    return "a field is not valid UTF-8"


def _both(first: Callable[[int], None], second: Callable[[int], None]) -> Callable[[int], None]:
    def call(count: int) -> None:
        first(count)
        second(count)
    return call


def _get_target(remote: str, local: str | os.PathLike[str] | None) -> Path:
    name = posixpath.basename(remote.rstrip("/")) or "download"
    if local is None:
        return Path(name)
    path = Path(local)
    if path.is_dir() or str(local).endswith(os.sep):
        return path / name
    return path


def _open_local(path: Path) -> BinaryIO:
    try:
        if path.is_dir():
            raise IsADirectory(f"{path} is a folder")
        return open(path, "rb")
    except FileNotFoundError:
        raise LocalError(f"no such local file: {path}") from None
    except OSError as error:
        raise LocalError(f"cannot read {path}: {error.strerror}") from None


_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _share_web(reply: dict[str, Any]) -> dict[str, Any]:
    """The web side a share reply names: ``http_port`` (None: none) and ``http_scheme``."""
    port, scheme = reply.get("http_port"), reply.get("http_scheme", "http")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                             or not 1 <= port <= 65535) or scheme not in ("http", "https"):
        raise ProtocolError("the server named no valid web port")
    return {"http_port": port, "http_scheme": scheme}


def _share_reply(reply: object) -> dict[str, Any]:
    """A share link from the server, its fields' types checked (the token is printed)."""
    if not isinstance(reply, dict) or not isinstance(reply.get("token"), str) \
            or not _TOKEN.fullmatch(reply["token"]) or not isinstance(reply.get("path"), str) \
            or not isinstance(reply.get("expires"), int) or isinstance(reply["expires"], bool):
        raise ProtocolError("the server sent a malformed share link")
    token = reply["token"]
    return {"token": token, "url_path": f"/.share/{token}", "expires": reply["expires"],
            "path": reply["path"], **(_share_web(reply) if "http_port" in reply else {})}


def _share_entries(reply: dict[str, Any]) -> list[Any]:
    shares = reply.get("shares")
    if not isinstance(shares, list):
        raise ProtocolError("the server's list of share links is malformed")
    return shares
