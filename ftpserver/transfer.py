"""Moving file bodies over a socket, shared by server and client.

Bodies travel in fixed buffers (memory stays flat whatever the size).  The hash
(md5, or sha256 when asked) of the whole file is computed as the bytes pass, or from disk by a
:class:`FileHasher` thread that overlaps the network I/O.  Either can start
from a saved :class:`~ftpserver.digest.Checkpoint`, so a resumed transfer need
not hash again the bytes it already holds.

Buffers are taken only once bytes are there to fill them (a stalled sender holds
none), and large ones from a process-wide :class:`BufferBudget`: past it a
transfer makes do with a small buffer rather than wait for memory.
"""
from __future__ import annotations

import contextlib
import functools
import os
import queue
import sys
import socket
import threading
import weakref
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

from .digest import CHECKPOINT_EVERY, INLINE_HASHES, Checkpoint, Hash
from .errors import ConnectionLost
from .protocol import HASH_BLOCK

__all__ = ["Writeback", "sync_all", "FileHasher", "ReceivingDigest", "receiving_digest", "receive_body", "send_body", "Progress",
           "CHECKPOINT_EVERY", "worth_saving", "BufferBudget", "BUFFERS", "SMALL_BUFFER"]

#: Called with the number of bytes just moved.
Progress = Callable[[int], None]
#: Bytes per buffer handed to the hashing thread while receiving a large body.
PASS_BLOCK = 256 * 1024
#: Bodies up to this size are hashed in the receiving thread: a helper would cost more.
PASS_MIN = 4 * 1024 * 1024
#: Bytes per sendfile call: large enough to be cheap, small enough for a lively progress bar.
SEND_SLICE = 4 * 1024 * 1024
#: A buffer of at most this many bytes is always granted, outside the budget.
SMALL_BUFFER = 64 * 1024


class _Block(bytearray):
    """A bytearray that can be watched (weakref) to give its bytes back to the budget."""


class BufferBudget:
    """A bound on the bytes of large transfer buffers held at once in the process.

    A buffer that would go over it is made small (:data:`SMALL_BUFFER`) instead, so
    a transfer never waits for memory; a large one gives its bytes back when freed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        # Reentrant: a buffer freed by the garbage collector gives back from any frame.
        self._lock = threading.RLock()

    def take(self, size: int) -> memoryview:
        """A zeroed buffer of ``size`` bytes, or of SMALL_BUFFER if the budget is spent."""
        if size <= SMALL_BUFFER or not self._reserve(size):
            return memoryview(bytearray(min(size, SMALL_BUFFER)))
        try:
            block = _Block(size)
        except MemoryError:
            self._give(size)
            raise
        weakref.finalize(block, self._give, size)
        return memoryview(block)

    def _reserve(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def _give(self, size: int) -> None:
        with self._lock:
            self.used -= size


#: The process's budget for large buffers: with the default buffer_size, some 170 large
#: uploads at once receive into full-size buffers; any more, into small ones.
BUFFERS = BufferBudget(128 * 1024 * 1024)


def _hash_from(name: str, start: Checkpoint | None, savable: bool, begin: int = 0) -> Hash:
    """A hash taking up ``start``, or a new one if there is none or it does not fit
    (from ``begin`` on, if given: see :class:`Hash`)."""
    if begin:
        return Hash(name, savable=False, begin=begin)
    if start is not None:
        try:
            return Hash(name, start)
        except ValueError:
            pass
    return Hash(name, savable=savable)


def worth_saving(size: int) -> bool:
    """Whether a file is large enough for its hash state to be worth keeping on a cut
    (a smaller one is hashed again in a moment)."""
    return size > CHECKPOINT_EVERY


class FileHasher:
    """Compute the hash (md5 unless ``hash`` says) of bytes ``[0, size)`` of a file in a
    background thread.

    The file may still be growing: the hasher never reads past the point that
    :meth:`advance` has reported as written, so it can follow a writer.  With
    ``start`` it hashes only from that checkpoint on; ``on_checkpoint`` gets the
    state every :data:`CHECKPOINT_EVERY` bytes.  Its state can be saved
    (:meth:`checkpoint`) with ``on_checkpoint`` or ``savable``.
    """

    def __init__(self, source: str | Path | BinaryIO, size: int,
                 available: int | None = None, start: Checkpoint | None = None,
                 on_checkpoint: Callable[[Checkpoint], None] | None = None,
                 hash: str = "md5", savable: bool = False, begin: int = 0) -> None:
        self.size = size
        self._digest = _hash_from(hash, start if start and start.offset <= size else None,
                                  savable=on_checkpoint is not None or savable, begin=begin)
        self._on_checkpoint = on_checkpoint
        self._receive_buffer: memoryview | None = None
        self._available = size if available is None else available
        self._woken = self._available
        self._ready = threading.Condition()
        self._cancelled = False
        self._error: BaseException | None = None
        self._hexdigest: str | None = None
        # An open file is read by position only, so its owner may use it meanwhile.
        self._owned = None if hasattr(source, "fileno") else open(source, "rb")  # type: ignore[arg-type]
        self._fd = (self._owned or source).fileno()  # type: ignore[union-attr]
        self._thread: threading.Thread | None = None
        if size - self._digest.length <= HASH_BLOCK and self._available >= size:
            self._run()  # a small file that is all there: a thread would cost more than it saves
        else:
            self._thread = threading.Thread(target=self._run, name="hash", daemon=True)
            self._thread.start()

    def buffer(self) -> memoryview:
        """A buffer to receive into (the writer's; the hasher reads the file itself)."""
        if self._receive_buffer is None:
            self._receive_buffer = BUFFERS.take(HASH_BLOCK)
        return self._receive_buffer

    def received(self, data: memoryview) -> None:
        """Report that ``data`` was just written at the end of the file."""
        self.advance(len(data))

    def advance(self, count: int) -> None:
        """Report ``count`` more bytes written to the file (called by one writer thread)."""
        self._available += count
        # Wake the hasher only when a whole block (or the end) is there: fewer lock trips.
        if self._available - self._woken >= HASH_BLOCK or self._available >= self.size:
            self._woken = self._available
            with self._ready:
                self._ready.notify()

    def result(self) -> str:
        """Wait for the whole file to be hashed and return the hex digest.

        Raises whatever error stopped the hashing (OSError, EOFError).
        """
        if self._thread:
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._hexdigest is not None
        return self._hexdigest

    def cancel(self) -> None:
        """Stop hashing and release the file; :meth:`result` must not be called after."""
        with self._ready:
            self._cancelled = True
            self._ready.notify()
        if self._thread:
            self._thread.join()

    def checkpoint(self) -> Checkpoint | None:
        """The state reached, once :meth:`cancel` or :meth:`result` has returned."""
        return self._digest.checkpoint()

    def _wait_for(self, position: int, block: bool = True) -> int | None:
        """Block until bytes past ``position`` are written; return how many may be read
        (0 once cancelled), or None rather than block if not ``block``."""
        with self._ready:
            while True:
                if self._cancelled:
                    return 0
                ready = min(self._available, self.size) - position
                if ready >= HASH_BLOCK or position + ready >= self.size:
                    return min(ready, HASH_BLOCK)
                if not block:
                    return None
                self._ready.wait()

    def _run(self) -> None:
        digest = self._digest
        view: memoryview | None = None
        position = digest.length
        try:
            while position < self.size:
                ready = self._wait_for(position, block=view is None)
                if ready is None:  # waiting for the writer: hold no buffer meanwhile
                    view = None
                    continue
                if not ready:
                    return
                if view is None:
                    view = BUFFERS.take(min(HASH_BLOCK, self.size - position))
                # Stop at each checkpoint boundary, so the states reported lie on them.
                want = min(ready, len(view), CHECKPOINT_EVERY - position % CHECKPOINT_EVERY)
                got = os.preadv(self._fd, [view[:want]], position)
                if not got:
                    raise EOFError(f"file ended at byte {position} of {self.size}")
                digest.update(view[:got])
                position += got
                if self._on_checkpoint and position % CHECKPOINT_EVERY == 0:
                    checkpoint = digest.checkpoint()
                    if checkpoint:
                        self._on_checkpoint(checkpoint)
            self._hexdigest = digest.hexdigest()
        except BaseException as error:  # handed to result()
            self._error = error
        finally:
            if self._owned:
                self._owned.close()


class _InlineDigest:
    """The hash of received bytes, hashed from the receive buffer itself: no second read of the file."""

    def __init__(self, digest: Hash, size: int) -> None:
        self._digest = digest
        self._size = max(size, 1)
        self._buffer: memoryview | None = None

    def buffer(self) -> memoryview:
        if self._buffer is None:
            self._buffer = BUFFERS.take(self._size)
        return self._buffer

    def received(self, data: memoryview) -> None:
        self._digest.update(data)

    def result(self) -> str:
        return self._digest.hexdigest()

    def cancel(self) -> None:
        pass

    def checkpoint(self) -> Checkpoint | None:
        return self._digest.checkpoint()


class _PassingDigest:
    """The hash of received bytes, hashed from the receive buffers on a helper thread.

    The receiver fills one buffer of a small pool while the helper hashes the
    last: hashing overlaps the network and disk I/O, and no byte is read twice.
    """

    POOL = 3

    def __init__(self, digest: Hash, block: int) -> None:
        self._digest = digest
        self._block = block
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def buffer(self) -> memoryview:
        if self._thread is None:  # the first bytes are in: now the pool and helper pay
            for _ in range(self.POOL):
                self._free.put(BUFFERS.take(self._block))
            self._thread = threading.Thread(target=self._run, name="hash", daemon=True)
            self._thread.start()
        return self._free.get()

    def received(self, data: memoryview) -> None:
        self._full.put(data)

    def _run(self) -> None:
        while True:
            data = self._full.get()
            if data is None:
                return
            try:
                if self._error is None:
                    self._digest.update(data)
            except BaseException as error:  # handed to result()
                self._error = error
            self._free.put(memoryview(data.obj))  # type: ignore[arg-type]

    def _finish(self) -> None:
        if self._thread and self._thread.is_alive():
            self._full.put(None)
            self._thread.join()

    def checkpoint(self) -> Checkpoint | None:
        """The state reached, once :meth:`cancel` or :meth:`result` has returned."""
        return self._digest.checkpoint()

    def result(self) -> str:
        self._finish()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def cancel(self) -> None:
        self._finish()


#: What hashes a body as it is received: it lends the buffers to receive into
#: (``buffer()``), takes each back once written (``received(view)``), and gives the
#: hash of the whole file (``result()``) or stops (``cancel()``) and tells the state reached.
ReceivingDigest = Union[FileHasher, _InlineDigest, _PassingDigest]


def receiving_digest(path: str | Path, size: int, offset: int, start: Checkpoint | None = None,
                     buffer_size: int = HASH_BLOCK, hash: str = "md5",
                     begin: int = 0) -> ReceivingDigest:
    """The hash (md5 unless ``hash`` says) of a file received into ``path`` from ``offset`` on
    (of its bytes from ``begin`` on, if given: a resume checked in two parts).

    The received bytes are hashed from the receive buffers (no second read of
    the file, which is what pays when both ends share few cores) when the state
    of the bytes held is known: from zero, or from a checkpoint at ``offset``;
    a large body is hashed on a helper thread, overlapping the I/O (unless its
    hash outruns the I/O: :data:`~ftpserver.digest.INLINE_HASHES`).  Otherwise a
    :class:`FileHasher` reads the held prefix from disk, from ``start`` if that
    is earlier, and then follows the writer.
    """
    if begin:
        if begin == offset:
            digest = _hash_from(hash, None, False, begin)
            return _InlineDigest(digest, min(buffer_size, size - offset))
        return FileHasher(path, size, available=offset, hash=hash, begin=begin)
    if offset == 0 or (start and start.offset == offset):
        digest = _hash_from(hash, start if offset else None, worth_saving(size))
        if digest.length == offset:
            if size - offset > PASS_MIN and hash not in INLINE_HASHES:  # no buffer > body
                return _PassingDigest(digest, min(max(buffer_size, PASS_BLOCK), size - offset))
            return _InlineDigest(digest, min(buffer_size, size - offset))
    return FileHasher(path, size, available=offset,
                      start=start if start and start.offset < offset else None, hash=hash,
                      savable=worth_saving(size))


def receive_body(stream: BinaryIO, file: BinaryIO, count: int, buffer_size: int,
                 digest: ReceivingDigest, progress: Progress | None = None) -> None:
    """Copy exactly ``count`` bytes from ``stream`` to ``file``, ``buffer_size`` at most per
    read and write, into the buffers ``digest`` lends.

    Every byte written is handed to ``digest.received`` (even when the copy
    fails), and each read's size to ``progress``.  Raises ConnectionLost if the
    stream ends or fails early; OSError from writing.
    """
    # readinto1 returns what has arrived instead of waiting to fill the buffer,
    # so bytes received before a stall or a cut are written, not lost.
    read = getattr(stream, "readinto1", None) or stream.readinto  # type: ignore[attr-defined]
    remaining = count
    if not remaining:
        return
    _await_body(stream, remaining)
    filled = 0
    view = digest.buffer()
    try:
        while remaining:
            want = min(buffer_size, remaining, len(view) - filled)
            try:
                got = read(view[filled:filled + want])
            except OSError as error:
                raise _lost(remaining, error) from None
            if not got:
                raise _lost(remaining)
            _write_all(file, view[filled:filled + got])
            filled += got
            remaining -= got
            if progress:
                progress(got)
            if filled == len(view) and remaining:
                filled = 0
                digest.received(view)
                view = digest.buffer()
    finally:
        if filled:
            digest.received(view[:filled])


def _await_body(stream: BinaryIO, remaining: int) -> None:
    """Block until the body's first bytes are in (so a stalled sender holds no buffer).

    Raises ConnectionLost if the stream ends or fails first.
    """
    peek = getattr(stream, "peek", None)
    if peek is None:
        return
    try:
        if peek(1):
            return
    except OSError as error:
        raise _lost(remaining, error) from None
    raise _lost(remaining)


def _lost(remaining: int, error: OSError | None = None) -> ConnectionLost:
    if error is None:
        return ConnectionLost(f"connection closed with {remaining} bytes of the body missing")
    return ConnectionLost(f"connection lost with {remaining} bytes of the body missing: "
                          f"{error.strerror or error}")


def _write_all(file: BinaryIO, data: memoryview) -> None:
    while data:
        written = file.write(data)
        data = data[written:]


def send_body(sock: socket.socket, file: BinaryIO, offset: int, count: int,
              progress: Progress | None = None) -> None:
    """Send ``count`` bytes of ``file`` from ``offset``, by sendfile where the OS has it.

    Raises EOFError if the file is shorter than promised; OSError from the socket.
    """
    position, end = offset, offset + count
    while position < end:
        size = min(SEND_SLICE, end - position)
        sent = sock.sendfile(file, position, size)
        if sent != size:
            raise EOFError(f"file ended at byte {position + sent}, {end} promised")
        position += sent
        if progress:
            progress(sent)


class Writeback:
    """Starts writing a file's received bytes to disk every :attr:`EVERY` bytes, while
    more arrive, so the fsync that commits it has little left to wait for.

    With ``drop``, each stretch is also dropped from the page cache once it is on
    disk (a stretch behind the one being written, so there is rarely a wait): a
    large transfer then leaves the machine's cache to what was there, and the
    writer keeps reusing the same few pages instead of taking fresh ones (which
    in a virtual machine handing free memory back to its host costs more than
    the copy itself).

    The body's space is allocated a few stretches ahead of the writer (fallocate):
    the file system then has less to do per write, and the file lies in few extents.

    Called with the size of each write, as a progress callback, within a ``with``
    block: a block left by an error gives the unfilled reservation back
    (:meth:`release`).  A body of at most :attr:`EVERY` bytes needs none of this
    and is left alone.  Uses Linux's sync_file_range, which only starts the
    writing; elsewhere it does nothing.
    """

    #: Bytes between two starts: big enough to cost nothing, small enough to keep
    #: the disk busy while the network is.
    EVERY = 16 * 1024 * 1024

    #: Disk space reserved ahead of the bytes written, once bytes come (so a sender
    #: that stalls holds little).
    AHEAD = 2 * EVERY

    def __init__(self, fd: int, offset: int, length: int = 0, drop: bool = False) -> None:
        """Follow writes from ``offset`` on; ``length`` bytes are expected, whose disk
        space is reserved a little ahead of the writer where the file system can (the
        file's size does not change: a partial still shows what it holds)."""
        self.fd, self.started, self.end = fd, offset, offset
        worth = length > self.EVERY
        self._start = _sync_file_range() if worth else None
        self._reserve = _fallocate() if worth else None
        self._body_end = offset + length
        self._reserved_end = offset      # reserved (or tried) up to here
        self._reserving = False          # whether any was: release() gives it back
        self._drop = drop and hasattr(os, "posix_fadvise")
        self._behind: tuple[int, int] | None = None   # the stretch written before the last

    def __call__(self, count: int) -> None:
        self.end += count
        if self._reserve and self.end > self._reserved_end - self.EVERY:
            self._reserve_ahead()
        if self._start and self.end - self.started >= self.EVERY:
            if self._start(self.fd, self.started, self.end - self.started, _SYNC_FILE_RANGE_WRITE):
                self._start = None  # refused (say, a file system without it): stop asking
                return
            if self._drop:
                self._drop_behind((self.started, self.end - self.started))
            self.started = self.end

    def __enter__(self) -> Writeback:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if kind is not None:
            self.release()

    def _reserve_ahead(self) -> None:
        assert self._reserve is not None
        end = min(self._body_end, self.end + self.AHEAD)
        if end > self._reserved_end:
            self._reserving = True
            if self._reserve(self.fd, _FALLOC_FL_KEEP_SIZE, self._reserved_end,
                             end - self._reserved_end):
                self._reserve = None  # refused (no room, no such call): taken as bytes come
            self._reserved_end = end

    def release(self) -> None:
        """Give back the space reserved past the bytes written (the body was cut short),
        so a partial takes on disk only what it holds.  Even a refused reservation may
        have kept some."""
        if self._reserving:
            self._reserving = False
            with contextlib.suppress(OSError):  # truncating to its own size frees the rest
                os.ftruncate(self.fd, os.fstat(self.fd).st_size)

    def _drop_behind(self, stretch: tuple[int, int]) -> None:
        """Wait for the stretch before the one just started, then drop it from the cache."""
        if self._behind is not None and self._start is not None:
            start, length = self._behind
            if not self._start(self.fd, start, length, _SYNC_FILE_RANGE_WAIT):
                try:
                    os.posix_fadvise(self.fd, start, length, os.POSIX_FADV_DONTNEED)
                except OSError:
                    self._drop = False  # refused: the cache keeps it, no harm
        self._behind = stretch


_SYNC_FILE_RANGE_WRITE = 2
_FALLOC_FL_KEEP_SIZE = 1
#: Wait for the writing already started, start the rest, wait for that too.
_SYNC_FILE_RANGE_WAIT = 1 | 2 | 4


@functools.cache
def _libc_function(name: str, *argtypes: str) -> Callable[..., int] | None:
    """libc's ``name`` taking arguments of these ctypes types ("int" for c_int, ...) and
    returning an int, on Linux; None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = [getattr(ctypes, f"c_{kind}") for kind in argtypes]
    function.restype = ctypes.c_int
    return function


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """sync_file_range(fd, offset, length, flags), or None."""
    return _libc_function("sync_file_range", "int", "int64", "int64", "uint")


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """fallocate(fd, mode, offset, length), or None."""
    return _libc_function("fallocate", "int", "int", "int64", "int64")


#: Threads issuing fsyncs at once (for all connections).
SYNC_THREADS = 8

_pool: Any = None


def _sync_pool() -> Any:
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor  # only where files are synced in groups

        _pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fsync")
    return _pool


def sync_all(fds: list[int]) -> None:
    """fsync every descriptor, in parallel when there are several.  Raises OSError."""
    if len(fds) == 1:
        os.fsync(fds[0])
    elif fds:
        for _ in _sync_pool().map(os.fsync, fds):
            pass
