"""Group commit: many received files made durable together, then renamed into place.

A streamed put (``"stream": true``) is verified as soon as its body and trailer
have arrived, but its reply waits in a :class:`CommitGroup` until the client says
no more follow at once (``"more": false``), the group is full, or another command
comes.  Then every file in the group is flushed to disk at once (fsyncs issued in
parallel, which the file system's journal commits together), renamed into place,
each folder flushed once, and the replies go out in order.  A folder of small
files thus costs a few disk flushes, not one blocking flush per file, and every
reply still means what it says: the file is complete, verified, under its name
and on disk.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .errors import FTPError, InternalError, NotFound, QuotaExceeded
from .protocol import error_reply
from .session import Upload
from .transfer import sync_all

__all__ = ["CommitGroup", "GROUP_FILES", "GROUP_BYTES"]

log = logging.getLogger(__name__)

#: Most files and bytes a group holds before it is committed anyway.
GROUP_FILES = 256
GROUP_BYTES = 64 * 1024 * 1024
@dataclass
class _Pending:
    upload: Upload
    reply: dict[str, Any]
    remember: Callable[[os.stat_result], None]


class CommitGroup:
    """The verified uploads of one connection whose replies wait for a group commit.

    A full group can be committed in the background (:meth:`commit_later`) while the
    connection receives the next files; :meth:`wait` lets it finish before anything
    else is sent, so replies keep the order of the requests.
    """

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self._pending: list[_Pending] = []
        self._bytes = 0
        self._committing: threading.Thread | None = None

    def __len__(self) -> int:
        """Uploads held, those being committed in the background included."""
        return len(self._pending) + (self._committing is not None)

    def commit_later(self, send: Callable[[dict[str, Any]], None]) -> None:
        """Commit the held uploads on a thread of their own and ``send`` their replies
        from it, in order, after those of any earlier group."""
        self.wait()
        group = self._take()
        self._committing = threading.Thread(target=self._commit_and_send, args=(group, send),
                                            name="commit", daemon=True)
        self._committing.start()

    def _commit_and_send(self, group: list[_Pending], send: Callable[[dict[str, Any]], None]) -> None:
        for reply in self._commit(group):
            try:
                send(reply)
            except OSError:
                pass  # the client is gone: the files are committed all the same

    def wait(self) -> None:
        """Let a group being committed in the background finish."""
        if self._committing is not None:
            self._committing.join()
            self._committing = None

    def _take(self) -> list[_Pending]:
        group, self._pending, self._bytes = self._pending, [], 0
        return group

    def add(self, upload: Upload, reply: dict[str, Any],
            remember: Callable[[os.stat_result], None]) -> bool:
        """Hold a verified upload and its reply; return True if the group is now full."""
        self._pending.append(_Pending(upload, reply, remember))
        self._bytes += upload.size
        return len(self._pending) >= GROUP_FILES or self._bytes >= GROUP_BYTES

    def commit(self) -> list[dict[str, Any]]:
        """Flush, rename and close every held upload (after any group being committed in
        the background); return their replies in order (an error reply for one that
        could not be committed)."""
        self.wait()
        return self._commit(self._take())

    def _commit(self, pending: list[_Pending]) -> list[dict[str, Any]]:
        if not pending:
            return []
        replies: list[dict[str, Any] | None] = [None] * len(pending)
        try:
            if self.sync:
                sync_all([item.upload.partial.fd for item in pending])
            folders: dict[tuple[int, int], int] = {}
            unmoved: dict[tuple[str, tuple[int, int]], bool] = {}  # each folder checked once
            for index, item in enumerate(pending):
                key = item.upload.folder_key()
                if key not in unmoved:
                    unmoved[key] = item.upload.folder_unmoved()
                try:
                    info = item.upload.commit(sync=False, folder_checked=unmoved[key])
                except NotFound as error:  # its folder moved: the partial stays, resumable there
                    replies[index] = error_reply(error)
                    continue
                except QuotaExceeded as error:
                    item.upload.discard()
                    replies[index] = error_reply(error)
                    continue
                item.remember(info)
                folders.setdefault(item.upload.partial.place.folder_identity(),
                                   item.upload.partial.dir_fd)
                replies[index] = item.reply
            if self.sync:
                sync_all(list(folders.values()))
        except (FTPError, OSError) as error:
            log.error("committing %d uploads failed: %s", len(pending), error)
            failure = error_reply(error if isinstance(error, FTPError) else
                                  InternalError(f"server file error: {error.strerror or error}"))
            replies = [reply if reply is not None else failure for reply in replies]
        finally:
            for item in pending:
                item.upload.close()
        lost = error_reply(InternalError("the upload could not be committed"))
        return [reply if reply is not None else lost for reply in replies]
