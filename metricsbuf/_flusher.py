"""The flusher: a logger's background task, and how it ended.

The flusher is an asyncio task of its own rather than a child of the caller's task group: it
has to outlive a cancelled caller long enough to drain (``close_timeout``), and
``start()``/``aclose()`` may be called from different tasks. Everything it runs (the sender's
slots and the spooler) lives in an anyio task group inside it, so the whole tree is cancelled
together at the close deadline.

It can end four ways, and the logger treats each differently: it returns (the drain is
done), it dies of an exception (``fatal``: LoggerClosedError for the caller, FLUSHER_CRASHED
for the points), the logger stops it at the close deadline, or something else cancels it
(``cancelled_from_outside``: ``task.cancel()``, the cancel-all SIGTERM idiom, the end of its
event loop), in which case the close starts a new one to finish the drain.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from ._exceptions import LoggerClosedError
from ._models import CLOSE_TIMEOUT, FLUSHER_CRASHED
from ._reporting import log
from ._shielding import wait_through_cancellation

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


class Flusher:
    """Starts the logger's background task, restarts it for a drain, stops it, and says how it ended."""

    def __init__(self, body: Callable[[], Coroutine[Any, Any, None]], on_end: Callable[[], None]) -> None:
        self.name = "metricsbuf-flusher"  # the task's name; the logger adds its trial component
        self._body = body  # the coroutine function the task runs
        self._on_end = on_end  # called once the task has ended, whichever way
        self.task: asyncio.Task[None] | None = None
        self.fatal: BaseException | None = None  # what killed it, if an exception did
        self.cancelled_from_outside = False
        self._stopping = False  # the logger cancels it itself, at the close deadline

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.cancelled_from_outside = False
        self.task = loop.create_task(self._body(), name=self.name)
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task is not self.task:
            return  # an earlier task, replaced for the drain
        self._classify(task)
        self._on_end()

    def _classify(self, task: asyncio.Task[None]) -> None:
        """Records how ``task`` ended (read off the task: its done callback may not have run yet)."""
        if task.cancelled():
            if not self._stopping:
                self.cancelled_from_outside = True
        elif task.exception() is not None and self.fatal is None:
            fatal = task.exception()
            # The task group wraps what killed it; name the cause itself when it is one.
            while isinstance(fatal, BaseExceptionGroup) and len(fatal.exceptions) == 1:
                fatal = fatal.exceptions[0]
            self.fatal = fatal
            log.error("metricsbuf: the background flusher died", exc_info=fatal)

    def raise_if_fatal(self) -> None:
        if self.fatal is not None:
            raise LoggerClosedError(f"the metricsbuf flusher died: {self.fatal!r}") from self.fatal

    def raise_why_stopped(self, running: bool) -> None:
        """Raises why the logger takes no more points, if it is the flusher's doing."""
        self.raise_if_fatal()
        if self.cancelled_from_outside and running:
            raise LoggerClosedError(
                "the MetricsLogger's background flusher task was cancelled from outside (task.cancel(), "
                "or the end of its event loop); it takes no more points. Close it (aclose()) on its "
                "event loop to deliver what it holds"
            )

    def warn_if_cancelled_holding(self, held: int, trial_component: str | None) -> None:
        if self.cancelled_from_outside and held:
            log.warning(
                "metricsbuf: the flusher task of trial component %r was cancelled from outside "
                "(task.cancel(), or the end of its event loop) while %d points were held; they are "
                "sent only if the logger is closed on its event loop ('async with' or aclose())",
                trial_component,
                held,
            )

    def why_points_are_left(self, close_timeout: float) -> tuple[str, str]:
        """The failure code and message for points still held once the drain is over."""
        if self.fatal is not None:
            return FLUSHER_CRASHED, f"the background flusher died: {self.fatal!r}"
        if self.cancelled_from_outside:
            return FLUSHER_CRASHED, "the background flusher was cancelled from outside"
        return CLOSE_TIMEOUT, f"still held when close_timeout ({close_timeout:g} s) ran out"

    async def drain(self, timeout: float, grace: float, take_back_in_flight: Callable[[], None]) -> bool:
        """Lets the task finish within ``timeout`` seconds; then cancels it and waits ``grace`` more.

        A task cancelled from outside meanwhile is replaced by a new one (after
        ``take_back_in_flight()`` puts the requests it cancelled back in line) for as long as
        time remains. Every wait survives cancellation of the caller; returns whether the
        caller was cancelled meanwhile.
        """
        assert self.task is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cancelled = False
        while True:
            task = self.task
            cancelled |= await wait_through_cancellation(task, deadline - loop.time())
            if task.done():
                self._classify(task)
            if not (self.cancelled_from_outside and loop.time() < deadline):
                break
            log.info("metricsbuf: the flusher task was cancelled from outside; a new one finishes the drain")
            take_back_in_flight()
            self.start(loop)
        if not self.task.done():
            self._stopping = True
            self.task.cancel()
            cancelled |= await wait_through_cancellation(self.task, grace)
        return cancelled
