"""tqdm progress bars for transfers: bytes, rate, ETA; silent off a terminal."""
from __future__ import annotations

import sys
from typing import Any, Callable

__all__ = ["ProgressBar", "BatchBar"]


def _tqdm(**options: Any) -> Any:
    from tqdm import tqdm  # imported on first use: keeps start-up lean

    return tqdm(unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                file=sys.stderr, **options)


class ProgressBar:
    """A ``progress(done, total)`` callback that draws one tqdm bar.

    The bar appears on the first call and starts at the offset given there,
    so a resumed transfer's bar starts where the transfer resumes.
    ``on_advance`` hears of every byte counted, the resumed offset included.
    """

    def __init__(self, label: str, enabled: bool | None = None, position: int | None = None,
                 on_advance: Callable[[int], object] | None = None) -> None:
        self.label, self.position, self.on_advance = label, position, on_advance
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.on_advance:
            self.on_advance(done - self.done)
        if self.enabled:
            if self._bar is None:
                self._bar = _tqdm(total=total, initial=done, desc=self.label,
                                  position=self.position, leave=self.position is None)
            else:
                self._bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        """Finish the bar (if one was drawn)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BatchBar:
    """Bars for a batch: the whole (files and bytes), the current file, and its hashing.

    The whole counts what was really done: a file counts once the other end has
    confirmed it (a file found already there, once it is known to be).  Files of
    a pipeline are sent before their confirmations come; if the batch is cut,
    the bytes of files sent but never confirmed are taken back off, all but
    those of the last one, whose partial is kept for the resume.
    """

    def __init__(self, files: int, total: int, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.files, self.finished_files = files, 0
        self._overall: Any = _tqdm(total=total, desc=self._label(), position=0) if self.enabled else None
        self._current: ProgressBar | None = None
        self._hashing: ProgressBar | None = None
        #: Files started and not yet confirmed, in order: their bars (which keep their counts).
        self._open: dict[object, tuple[ProgressBar, int]] = {}

    def _label(self) -> str:
        return f"{self.finished_files}/{self.files} files"

    def file(self, key: object, label: str, size: int) -> tuple[ProgressBar | None, ProgressBar | None]:
        """Start the bars of file ``key``; return its transfer and hashing callbacks (None when silent)."""
        self._close_file()
        if not self.enabled:
            return None, None
        self._current = ProgressBar(label, True, position=1, on_advance=self._overall.update)
        self._hashing = ProgressBar(f"hashing {label}", True, position=2)
        self._open[key] = (self._current, size)
        return self._current, self._hashing

    def finished(self, key: object, ok: bool, size: int = 0) -> None:
        """File ``key`` (of ``size`` bytes) is done (``ok``: there, sent or found identical)
        or failed."""
        if key not in self._open and ok and self._overall is not None:
            self._overall.update(size)  # found already there without being started
            self.finished_files += 1
            self._overall.set_description(self._label())
        if key in self._open:
            bar, size = self._open.pop(key)
            # A file found already there never reported progress: count it whole;
            # a failed one counts nothing.
            self._overall.update(size - bar.done if ok else -bar.done)
            if ok:
                self.finished_files += 1
                self._overall.set_description(self._label())
        if self._current is not None and not self._open:
            self._close_file()

    def _close_file(self) -> None:
        for bar in (self._current, self._hashing):
            if bar is not None:
                bar.close()
        self._current = self._hashing = None

    def close(self) -> None:
        """Finish the bars, the whole showing what was done (an interrupted file its bytes so far)."""
        self._close_file()
        if self._overall is not None:
            unconfirmed = list(self._open.values())[:-1]
            if unconfirmed:
                self._overall.update(-sum(bar.done for bar, _ in unconfirmed))
            self._overall.close()
            self._overall = None

    def __enter__(self) -> "BatchBar":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
