"""Where a logger runs: the event loop, thread and process it was started in.

A logger serves only that place. A call from another event loop (a second ``asyncio.run()``),
from a thread that does not run the loop, or from a forked child would queue points that
nothing sends; each gets a clear MetricsBufError instead. A forked child is recognized by its
process id (asyncio itself reports no running loop in a child: ``_get_running_loop`` checks
the pid too).
"""

from __future__ import annotations

import asyncio
import os
import threading
from asyncio import _get_running_loop
from typing import Any

from ._exceptions import MetricsBufError


def running_asyncio_loop() -> asyncio.AbstractEventLoop:
    """The running asyncio event loop, or a clear error (a logger starts only on asyncio)."""
    loop = _get_running_loop()
    if loop is None:
        raise MetricsBufError(
            "MetricsLogger runs on asyncio only (aiobotocore needs an asyncio event loop), and no "
            "asyncio event loop is running here (trio?); with anyio, use the asyncio backend: "
            "anyio.run(main, backend='asyncio')"
        )
    return loop


class _FixedThread:
    """For an event loop that does not record its thread (not an asyncio.BaseEventLoop)."""

    __slots__ = ("_thread_id",)

    def __init__(self) -> None:
        self._thread_id: int | None = threading.get_ident()


def loop_thread_marker(loop: asyncio.AbstractEventLoop) -> Any:
    """An object whose ``_thread_id`` equals ``threading.get_ident()`` only in the loop's own thread.

    The log() fast path compares the two instead of calling ``asyncio._get_running_loop()``,
    which makes a ``getpid()`` system call each time (a sizeable share of a log() call). An
    asyncio loop records the thread that runs it in ``_thread_id``, and sets it to None when it
    stops: so a call from another thread, or from another loop in this thread while the logger's
    loop is stopped, takes the slow path, whose :meth:`RunContext.check` raises. A forked child
    is refused by an at-fork hook (``_logger._refuse_in_forked_child``: the child's thread
    keeps the parent's id).
    Other loop classes get the thread that started the logger.
    """
    if isinstance(loop, asyncio.BaseEventLoop) and getattr(loop, "_thread_id", None) == threading.get_ident():
        return loop
    return _FixedThread()


class RunContext:
    """The event loop and process a logger was started in; checks that a call comes from there."""

    __slots__ = ("loop", "pid")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # None until the logger starts
        self.pid = os.getpid()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pid = os.getpid()

    def check(self) -> None:
        """Raises a clear error for a call from another process, event loop or thread."""
        if self.loop is None:
            return  # not started: nothing runs anywhere yet
        if self.pid != os.getpid():
            raise MetricsBufError(
                f"this MetricsLogger was started in process {self.pid} and cannot be used in a forked "
                f"child (process {os.getpid()}): its flusher runs only in the parent. Create a new "
                "MetricsLogger in the child; the parent's is unaffected"
            )
        loop = _get_running_loop()
        if loop is self.loop:
            return
        if loop is None:
            raise MetricsBufError(
                f"MetricsLogger is not thread-safe: it was called from thread "
                f"{threading.current_thread().name!r}, which does not run its event loop. Call it from "
                "the event loop's thread (loop.call_soon_threadsafe), or give each thread its own logger"
            )
        raise MetricsBufError(
            "this MetricsLogger was started on another event loop; a logger serves the event loop it "
            "was started on (a closed loop's logger can no longer send): create one per event loop"
        )
