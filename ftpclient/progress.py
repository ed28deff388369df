"""tqdm progress bars for transfers: bytes, rate, ETA; silent off a terminal."""
from __future__ import annotations

import sys
from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A ``progress(done, total)`` callback that draws one tqdm bar.

    The bar appears on the first call and starts at the offset given there,
    so a resumed transfer's bar starts where the transfer resumes.
    """

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm  # imported on first use: keeps start-up lean

            self._bar = tqdm(total=total, initial=done, desc=self.label, unit="B",
                             unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                             file=sys.stderr, leave=True)
        else:
            self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        """Finish the bar (if one was drawn)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
