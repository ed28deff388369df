"""Batches of puts on one connection: ``plan`` and streamed puts with group commits
(docs/PROTOCOL.md, "Folders and many files"), as commands of :class:`FTPHandler`."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable

from .errors import ChecksumError, ConnectionLost, FTPError, ProtocolError, StaleOffset
from .fields import check_trailer, digest_field, hash_name, source_field
from .protocol import bool_field, int_field, ok_reply, printable, read_frame, shorten, text_field
from .session import Upload

if TYPE_CHECKING:
    from .commits import CommitGroup
    from .server import FTPServer
    from .session import Session

__all__ = ["BatchedCommands", "PLAN_MAX"]

#: Folders and files in one ``plan`` request, and characters of a message in its reply,
#: so the reply stays well inside the header limit.
PLAN_MAX = 256
PLAN_MESSAGE = 160


class BatchedCommands:
    """``plan`` and the streamed ``put``: a part of :class:`~ftpserver.handler.FTPHandler`."""

    server: FTPServer
    session: Session
    commits: CommitGroup
    mid_body: bool
    subject: str | None
    moved: int
    rfile: Any
    connection: Any
    send: Callable[[dict[str, Any]], None]
    _write: Callable[[dict[str, Any]], None]
    _receive: Callable[..., tuple[str, Any]]

    def commit_held(self) -> None:
        """Commit the streamed uploads waiting for a group commit and send their replies."""
        for reply in self.commits.commit():
            self.send(reply)

    def _put_streamed(self, header: dict[str, Any]) -> None:
        """A put whose body (from ``offset``) and trailer follow at once, with its reply
        held for a group commit: many files without a round trip each.

        Whatever is wrong, the body and trailer are read, so the stream stays in step
        (a size that cannot be read leaves no way to, and ends the connection).
        """
        self.mid_body = True
        size = int_field(header, "filesize")
        offset = int_field(header, "offset", 0, high=size)
        try:
            name = text_field(header, "filename")
            algorithm = hash_name(header)
            source = source_field(header, required=True)
            mtime_ns = int_field(header, "mtime_ns", None)
            more = bool_field(header, "more")
            upload = self.session.upload(name, size, source, offset == 0, self.connection)
        except FTPError:
            self._refuse_body(size - offset)
            raise
        try:
            return self._receive_streamed(upload, offset, algorithm, mtime_ns, more)
        except FTPError:
            self.commit_held()  # the replies held so far go before this one
            raise

    def _receive_streamed(self, upload: Upload, offset: int, algorithm: str,
                          mtime_ns: int | None, more: bool) -> None:
        size = upload.size
        with contextlib.ExitStack() as held:
            held.callback(upload.close)
            if upload.offset < offset:
                upload.discard()  # the client sends it all again: keep nothing stale
                self._refuse_body(size - offset)
                raise StaleOffset(f"{upload.vpath}: the server holds {upload.offset} bytes, "
                                  f"not {offset}: send the whole file")
            upload.keep_from(offset)
            self.mid_body = True
            digest, reached = self._receive(upload, algorithm, resumable=True)
            try:
                declared = digest_field(check_trailer(read_frame(self.rfile)), algorithm)
            except ConnectionLost:
                upload.save_checkpoint(reached)
                raise
            self.mid_body = False
            if digest != declared:
                upload.discard()
                raise ChecksumError(f"checksum mismatch for {upload.vpath}: received {algorithm} "
                                    f"{digest}, the client's is {declared}")
            upload.set_mtime(mtime_ns)
            held.pop_all()
        self.subject, self.moved = upload.vpath, size - offset
        full = self.commits.add(upload, ok_reply(filename=upload.vpath, filesize=size,
                                                 **{algorithm: digest}),
                                lambda info: self.server.digests.put(info, digest, algorithm))
        if full or not more:
            # Flushed in the background while the next files arrive.
            self.commits.commit_later(self._write)
        return None

    def _refuse_body(self, count: int) -> None:
        """Read and drop a body of ``count`` bytes and its trailer, sent before the reply
        that refuses it; the replies held so far go first."""
        remaining = count
        while remaining:
            data = self.rfile.read(min(remaining, 1 << 20))
            if not data:
                raise ConnectionLost(f"connection closed with {remaining} bytes of the body missing")
            remaining -= len(data)
        read_frame(self.rfile)
        self.mid_body = False
        self.commit_held()

    def do_plan(self, header: dict[str, Any]) -> dict[str, Any]:
        """Before a batch of puts: create ``folders`` (kept if there), and tell for each of
        ``files`` whether it is there and the same (by size and modification time, or by
        hash when the entry carries a digest), else where its put starts: the bytes of a
        partial from the same source, or 0."""
        folders, files = header.get("folders", []), header.get("files", [])
        if not isinstance(folders, list) or not isinstance(files, list) \
                or len(folders) + len(files) > PLAN_MAX:
            raise ProtocolError(f"'folders' and 'files' must be lists of at most {PLAN_MAX} in all")
        algorithm = hash_name(header)
        self.session.writable()
        return ok_reply(hash=algorithm, folders=[self._planned(lambda: self._plan_folder(folder))
                                 for folder in folders],
                        files=[self._planned(lambda: self._plan_file(entry, algorithm))
                               for entry in files])

    @staticmethod
    def _planned(step: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        try:
            return step()
        except FTPError as error:
            return {"error": error.code, "message": shorten(printable(error.message), PLAN_MESSAGE)}

    def _plan_folder(self, folder: object) -> None:
        if not isinstance(folder, str):
            raise ProtocolError("a folder must be a string")
        self.session.ensure_folder(folder)

    def _plan_file(self, entry: object, algorithm: str) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise ProtocolError("a file must be an object")
        name, size = text_field(entry, "name"), int_field(entry, "size")
        source = text_field(entry, "source")
        mtime_ns = int_field(entry, "mtime_ns", None)
        digest = digest_field(entry, algorithm, required=False)
        vpath, there, offset = self.session.planned_put(name, size, source)
        if there is not None and there.type == "file" and there.size == size:
            if digest is None and mtime_ns is not None and there.mtime_ns == mtime_ns:
                return {"offset": size, "same": True}
            if digest is not None:
                with self.session.open_read(vpath)[1] as file:
                    if self.server.file_digest(file, algorithm) == digest:
                        return {"offset": size, "same": True}
        return {"offset": offset}
