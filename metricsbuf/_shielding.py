"""Waiting for something that must finish even if the waiting task is cancelled, more than once.

anyio's ``CancelScope(shield=True)`` holds off cancel scopes, but not asyncio's native
``task.cancel()``: each call still raises CancelledError at the next await, inside the shield
too (the usual SIGTERM handler ``for t in asyncio.all_tasks(): t.cancel()`` does exactly that,
and may run twice). A close that must deliver, or a spool transaction whose result must be
recorded, therefore waits here: the work is a future of its own, which a cancellation of the
waiter does not touch, and the waiter keeps waiting, remembering that it was cancelled so that
its caller can pass the cancellation on once the work is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio

from ._reporting import log


async def wait_through_cancellation(future: asyncio.Future[Any], within: float | None = None) -> bool:
    """Waits until ``future`` is done, or ``within`` seconds have passed, whatever cancels the caller.

    Returns whether the calling task was cancelled meanwhile; the caller then passes the
    cancellation on (``raise asyncio.CancelledError`` or :func:`rearm_cancellation`) once it
    has recorded the outcome. ``future`` itself is never cancelled here.
    """
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    cancelled = False
    with anyio.CancelScope(shield=True):  # anyio's cancel scopes wait; native cancels are caught below
        while not future.done():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            try:
                await asyncio.wait((future,), timeout=remaining)
            except asyncio.CancelledError:
                cancelled = True
                task = asyncio.current_task()
                if task is not None and hasattr(task, "uncancel"):  # Python 3.11+: keep the count even
                    task.uncancel()
    return cancelled


def rearm_cancellation() -> None:
    """Cancels the current task again, so its next await raises the cancellation it absorbed."""
    task = asyncio.current_task()
    if task is not None:
        task.cancel()


async def close_through_cancellation(stack: contextlib.AsyncExitStack, within: float, what: str) -> bool:
    """Closes ``stack`` in a task of its own, waiting at most ``within`` seconds, whatever cancels the caller.

    A close that takes longer is left to finish, with a warning; an error in it is logged, never
    raised. Returns whether the calling task was cancelled meanwhile (see wait_through_cancellation).
    """
    closing = asyncio.get_running_loop().create_task(stack.aclose())
    cancelled = await wait_through_cancellation(closing, within)
    if not closing.done():
        log.warning("metricsbuf: closing %s took longer than %g s; left to finish", what, within)
    elif not closing.cancelled() and closing.exception() is not None:
        log.warning("metricsbuf: error while closing %s", what, exc_info=closing.exception())
    return cancelled
