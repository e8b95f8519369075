"""Progress display for the command line: redrawn in place on a terminal, a line now and then elsewhere."""

from __future__ import annotations

import time
from typing import TextIO


def bar(done: int, total: int, width: int = 30) -> str:
    filled = width if total <= 0 else min(width, int(width * done / total))
    return f"[{'#' * filled}{'.' * (width - filled)}]"


class Progress:
    """Writes status lines: in place on a terminal, else at most one line every ``every`` seconds."""

    def __init__(self, out: TextIO, every: float = 2.0) -> None:
        self._out = out
        self._interactive = out.isatty()
        self._every = every
        self._last = -float("inf")

    def update(self, line: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._interactive:
            self._out.write("\r" + line)
        elif force or now - self._last >= self._every:
            self._out.write(line + "\n")
        else:
            return
        self._last = now
        self._out.flush()

    def done(self, line: str) -> None:
        self.update(line, force=True)
        if self._interactive:
            self._out.write("\n")
        self._out.flush()
