"""Interpreter exit and forks for SyncMetricsLogger: the loggers still open, the exit hook, the fork policy.

- **Exit.** An interpreter exit without ``close()`` drains every open logger within its
  ``close_timeout``: the hook runs through CPython's ``threading._register_atexit``, before
  ``concurrent.futures`` refuses new work (``atexit`` runs too late: aiohttp's DNS lookups need
  the default executor).
- **Forks.** In a forked child the loop thread does not exist: every call on the parent's
  logger raises MetricsBufError, and the exit hook skips it.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._reporting import log
from ._sync_runner import State

if TYPE_CHECKING:
    from ._sync import SyncMetricsLogger

_LIVE: weakref.WeakSet[SyncMetricsLogger] = weakref.WeakSet()


def track(logger: SyncMetricsLogger) -> None:
    """A logger whose thread is starting: closed at exit unless closed before."""
    register_exit_hook(_close_all_at_exit)
    _LIVE.add(logger)


def untrack(logger: SyncMetricsLogger) -> None:
    _LIVE.discard(logger)


def live_sync_loggers() -> list[SyncMetricsLogger]:
    """The SyncMetricsLoggers of this process that are running or closing."""
    return [s for s in list(_LIVE) if not s._forked and s._state in (State.RUNNING, State.CLOSING)]


def _close_all_at_exit() -> None:
    """Closes every SyncMetricsLogger left open, all at once, each within its close_timeout."""
    closing = [(s, s._request_close(None)) for s in live_sync_loggers()]
    for logger, done in closing:
        try:
            logger._wait_closed(done)
        except Exception as exc:
            log.error("metricsbuf: closing a SyncMetricsLogger at exit failed: %r", exc)


_exit_hooks_registered: set[Callable[[], None]] = set()


def register_exit_hook(hook: Callable[[], None]) -> None:
    """Runs ``hook`` at interpreter exit while threads and the default executor still work.

    CPython's ``threading._register_atexit`` (3.9+) runs before ``threading`` shuts down and
    before ``concurrent.futures`` refuses new work (its own hook, registered earlier: the hooks
    run last in, first out). Without it, ``atexit`` is the fallback, with the caveat that a
    request needing the default executor (aiohttp's DNS lookup, a new connection) then fails.
    """
    if hook in _exit_hooks_registered:
        return
    import concurrent.futures.thread  # noqa: F401  (registers its hook first, so it runs after ours)

    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(hook)
        else:  # pragma: no cover (not CPython 3.9+)
            import atexit

            atexit.register(hook)
    except RuntimeError:  # the interpreter is already shutting down
        return
    _exit_hooks_registered.add(hook)


def _after_fork_in_child() -> None:
    for logger in list(_LIVE):
        logger._forked = True
        handoff = logger._handoff
        handoff.open = False
        handoff.tokens.clear()  # no fast path: every call takes the locked path, which raises
    _LIVE.clear()  # the child's exit never touches the parent's loggers


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
