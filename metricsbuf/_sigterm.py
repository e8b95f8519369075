"""Draining every live logger when the process gets SIGTERM (how SageMaker stops a job).

SageMaker sends SIGTERM and kills the job 120 s later; Python's default SIGTERM action ends
the process at once, without ``finally`` blocks or ``atexit``, so every buffered point is lost.
:func:`drain_on_sigterm` installs a handler that closes every live logger (each within its
``close_timeout``, all of them within ``timeout``, 100 s by default) and then ends the process
as it would have ended without it: it restores the handler that was there before and raises
SIGTERM again, so the default action gives the usual exit status (-15 for a parent's
``subprocess``, 143 in a shell), and a Python handler that was installed before runs as it
would have.

Where the drain runs. Python runs a signal handler in the main thread, between two bytecodes:

- if the main thread runs an asyncio event loop (a logger's loop is usually there), the
  handler must not wait for that loop: it schedules the drain as a task on the loop and
  returns. The job's code keeps running meanwhile, and its next ``log()`` raises
  LoggerClosedError. Once the drain is done (or the loop tears the task down, which it waits
  through), the process ends;
- otherwise (a synchronous script: SyncMetricsLogger runs its loop on a thread of its own),
  the handler closes the loggers and waits for them right there: the training loop is paused.

Only the main thread can install a signal handler. Inside a SageMaker job (``in_sagemaker_job``)
the handler is installed automatically when a logger starts in the main thread (an async
logger whose event loop runs in the main thread, or a SyncMetricsLogger created there), unless
``METRICSBUF_DRAIN_ON_SIGTERM`` is ``0``/``false``/``no``/``off``; set it to ``1`` to install it
automatically outside SageMaker too. It is not installed over SIGTERM set to be ignored
(``SIG_IGN``): that process would not have ended.

Not with ``loop.add_signal_handler(SIGTERM, ...)``: asyncio reads signals from its own wakeup
file descriptor and would call that callback at the signal and again when the drain raises
SIGTERM once more, and a later ``add_signal_handler`` replaces this handler (and asyncio
restores the default action when its loop closes). Use one or the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time
import weakref
from asyncio import _get_running_loop
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import _validation as v
from ._exceptions import MetricsBufError
from ._reporting import log
from ._sagemaker_job import in_sagemaker_job
from ._shielding import wait_through_cancellation

if TYPE_CHECKING:
    from ._logger import MetricsLogger

DRAIN_ON_SIGTERM_ENV = "METRICSBUF_DRAIN_ON_SIGTERM"
DEFAULT_TIMEOUT = 100.0  # of SageMaker's 120 s between SIGTERM and the kill
_OFF = frozenset({"0", "false", "no", "off"})
_ON = frozenset({"1", "true", "yes", "on"})
# Beyond a logger's own bound (close_timeout, then at most about 2 s for cancelled sends to unwind).
_CLOSE_SLACK = 3.0

# Started async loggers (a SyncMetricsLogger's own one is closed through it, so it is left out).
_async_loggers: weakref.WeakSet[MetricsLogger] = weakref.WeakSet()
_inside_sync: weakref.WeakSet[MetricsLogger] = weakref.WeakSet()


@dataclass
class _Installed:
    timeout: float
    previous: Any  # what signal.getsignal(SIGTERM) returned before
    draining: bool = False
    deadline: float = 0.0
    task: asyncio.Task[None] | None = None
    finished: threading.Event = field(default_factory=threading.Event)


_installed: _Installed | None = None


def drain_on_sigterm(timeout: float = DEFAULT_TIMEOUT) -> None:
    """Installs a SIGTERM handler that drains every live logger, then ends the process as before.

    Every started MetricsLogger and SyncMetricsLogger is closed at SIGTERM (delivered, or with a
    spool written to disk), each within its ``close_timeout`` and all within ``timeout`` seconds
    (keep it below the 120 s SageMaker waits before it kills the job). Then the previous handler
    is restored and SIGTERM raised again: the default action ends the process with the usual
    status, a Python handler installed before runs. Idempotent (a second call sets ``timeout``).
    Inside a SageMaker job this is done for you when a logger starts in the main thread (see
    ``METRICSBUF_DRAIN_ON_SIGTERM``); calling it yourself works whatever that variable says.

    Raises:
        MetricsBufError: not called from the main thread (Python lets only the main thread
            install a signal handler).
        InvalidMetricError: ``timeout`` is not a positive number of seconds.
    """
    timeout = v.check_seconds_option("timeout", timeout)
    if threading.current_thread() is not threading.main_thread():
        raise MetricsBufError(
            "drain_on_sigterm() must be called from the main thread: Python lets only the main thread "
            f"install a signal handler (called from thread {threading.current_thread().name!r})"
        )
    _install(timeout)


def _install(timeout: float) -> None:
    global _installed
    if _installed is not None and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        _installed.timeout = timeout
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = _Installed(timeout=timeout, previous=previous)
    _register_exit_hook()


def installed() -> bool:
    """Whether the drain is the current SIGTERM handler."""
    return _installed is not None and signal.getsignal(signal.SIGTERM) is _on_sigterm


def maybe_install_automatically() -> None:
    """Installs the drain when a logger starts, if it should (see the module docstring); never raises."""
    setting = os.environ.get(DRAIN_ON_SIGTERM_ENV, "").strip().lower()
    if setting in _OFF or (setting not in _ON and in_sagemaker_job() is None):
        return
    if threading.current_thread() is not threading.main_thread():
        log.debug("metricsbuf: a logger started outside the main thread: no SIGTERM drain installed")
        return
    if installed():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
            return  # SIGTERM is ignored here: the process would not have ended
        _install(DEFAULT_TIMEOUT)
    except (ValueError, OSError) as exc:  # pragma: no cover (an embedded interpreter without signals)
        log.warning("metricsbuf: could not install the SIGTERM drain: %s", exc)
        return
    log.info(
        "metricsbuf: SIGTERM will drain every logger (within %g s) before the process ends; "
        "set %s=0 to turn this off",
        DEFAULT_TIMEOUT,
        DRAIN_ON_SIGTERM_ENV,
    )


def logger_started(logger: MetricsLogger) -> None:
    """MetricsLogger.start() has succeeded: the drain closes it at SIGTERM."""
    if logger not in _inside_sync:
        _async_loggers.add(logger)
    maybe_install_automatically()


def mark_inside_sync(logger: MetricsLogger) -> None:
    """``logger`` belongs to a SyncMetricsLogger, which closes it (and its hand-off) itself."""
    _inside_sync.add(logger)


# ---------------------------------------------------------------------------------------------
# The handler


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    installed = _installed
    if installed is None or installed.draining:
        return  # a second SIGTERM while draining: the drain has its own deadline
    installed.draining = True
    installed.deadline = time.monotonic() + installed.timeout
    log.warning(
        "metricsbuf: SIGTERM received: closing every logger (within %g s), then ending the process",
        installed.timeout,
    )
    loop = _get_running_loop()  # the main thread's own event loop, if it runs one right now
    if loop is not None:
        # Never wait here for the loop this very thread runs: the drain becomes one of its tasks.
        loop.call_soon_threadsafe(_start_drain_task, loop, installed)
        return
    _drain_blocking(installed)
    _finish(installed)


def _start_drain_task(loop: asyncio.AbstractEventLoop, installed: _Installed) -> None:
    installed.task = loop.create_task(_drain_on_loop(loop, installed), name="metricsbuf-sigterm-drain")


async def _drain_on_loop(loop: asyncio.AbstractEventLoop, installed: _Installed) -> None:
    try:
        waits: list[Awaitable[Any]] = []
        for logger in _live_async_loggers():
            if logger._loop is loop:
                waits.append(logger._aclose_within(_budget(installed, logger._options.close_timeout)))
            else:
                future = _close_on_other_loop(logger, installed)
                if future is not None:
                    waits.append(asyncio.wrap_future(future))
        waits.extend(asyncio.wrap_future(f) for f in _close_sync_loggers(installed))
        if waits:
            everything = asyncio.gather(*waits, return_exceptions=True)
            # Through any cancellation (the loop being torn down, a cancel-all handler): the
            # closes go on, and so does this wait, until the deadline.
            await wait_through_cancellation(everything, installed.deadline + _CLOSE_SLACK - time.monotonic())
            if everything.done() and not everything.cancelled():
                _log_errors(everything.result())
    finally:
        _finish(installed)


def _drain_blocking(installed: _Installed) -> None:
    """In the main thread, when it runs no event loop: close everything and wait (training is paused)."""
    futures = _close_sync_loggers(installed)
    for logger in _live_async_loggers():
        future = _close_on_other_loop(logger, installed)
        if future is not None:
            futures.append(future)
    if futures:
        within = installed.deadline + _CLOSE_SLACK - time.monotonic()
        done, _ = concurrent.futures.wait(futures, timeout=within)
        _log_errors([f.exception() for f in done if not f.cancelled()])


def _close_on_other_loop(
    logger: MetricsLogger, installed: _Installed
) -> concurrent.futures.Future[None] | None:
    """Closes an async logger whose event loop runs in another thread; None if its loop does not run."""
    loop = logger._loop
    if loop is None or not loop.is_running() or loop is _get_running_loop():
        log.warning(
            "metricsbuf: SIGTERM: the event loop of trial component %r is not running; its %d held "
            "point(s) cannot be drained",
            logger.trial_component_name,
            logger._ledger.held,
        )
        return None
    closing = logger._aclose_within(_budget(installed, logger._options.close_timeout))
    try:
        return asyncio.run_coroutine_threadsafe(closing, loop)
    except RuntimeError:  # the loop closed meanwhile
        closing.close()
        return None


def _close_sync_loggers(installed: _Installed) -> list[concurrent.futures.Future[None]]:
    from ._sync import live_sync_loggers  # late: _sync imports this module

    return [
        logger._request_close(_budget(installed, logger._close_timeout)) for logger in live_sync_loggers()
    ]


def _live_async_loggers() -> list[MetricsLogger]:
    pid = os.getpid()
    return [
        logger
        for logger in list(_async_loggers)
        if logger._state.value in ("running", "closing") and logger._context.pid == pid
    ]


def _budget(installed: _Installed, close_timeout: float) -> float:
    """A logger's close_timeout, capped so that its close ends before the drain's deadline."""
    left = installed.deadline - time.monotonic() - _CLOSE_SLACK
    return max(0.1, min(close_timeout, left))


def _log_errors(outcomes: list[Any]) -> None:
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            log.error("metricsbuf: SIGTERM drain: a logger's close failed: %r", outcome)


def _finish(installed: _Installed) -> None:
    """Ends the process as it would have without the drain: the previous handler, SIGTERM again."""
    if installed.finished.is_set():
        return
    installed.finished.set()
    previous = installed.previous
    if previous is None:  # installed from outside Python: the default action is the closest
        previous = signal.SIG_DFL
    log.warning("metricsbuf: SIGTERM drain done; raising SIGTERM again for the previous handler")
    signal.signal(signal.SIGTERM, previous)
    if previous is not signal.SIG_IGN:
        signal.raise_signal(signal.SIGTERM)


# ---------------------------------------------------------------------------------------------
# Interpreter exit during a drain (the loop running it stopped before the task ended)


_exit_hook_registered = False


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    _exit_hook_registered = True
    from ._sync import register_exit_hook

    register_exit_hook(_at_exit)


def _at_exit() -> None:
    installed = _installed
    if installed is None or not installed.draining or installed.finished.is_set():
        return
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        return
    _drain_blocking(installed)  # what is left: the closes already requested are only waited for
    _finish(installed)
