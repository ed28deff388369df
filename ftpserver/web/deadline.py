"""A connection's reader whose reads can be held to a deadline.

The socket's timeout bounds each wait for bytes, not a whole request head: a
client trickling a byte every few seconds would keep its connection (and a slot
of ``max_connections``) for ever.  The handler sets :attr:`DeadlineReader.deadline`
once a request's first byte is there and clears it when the head is parsed, as
the native handler's ``header_timeout`` does.
"""
from __future__ import annotations

import socket
import time

__all__ = ["DeadlineReader"]


class DeadlineReader(socket.SocketIO):
    """The raw reader of a socket; past :attr:`deadline` (a ``time.monotonic`` value),
    reads raise TimeoutError."""

    def __init__(self, sock: socket.socket, idle: float | None) -> None:
        super().__init__(sock, "rb")
        self._socket, self._idle = sock, idle
        self.deadline: float | None = None

    def start(self, seconds: float) -> None:
        """Hold the reads from now on to ``seconds``."""
        self.deadline = time.monotonic() + seconds

    def clear(self) -> None:
        """No deadline any more: reads (and writes) wait at most the idle timeout again."""
        self.deadline = None
        self._socket.settimeout(self._idle)

    def readinto(self, buffer) -> int | None:  # type: ignore[no-untyped-def, override]
        if self.deadline is None:
            self._socket.settimeout(self._idle)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request's head took too long")
            self._socket.settimeout(left if self._idle is None else min(left, self._idle))
        return super().readinto(buffer)
