"""SyncMetricsLogger: the asynchronous logger, for synchronous code, on a thread of its own.

It is a MetricsLogger (same validation, errors, accounting, delivery guarantees) running on an
asyncio event loop in a daemon thread the SyncMetricsLogger owns. What it adds is the way in:

    log() in any thread ──validate──► hand-off (deque) ──drain, on the loop thread──► Intake
                          take a token ┘ │ wake the loop only when needed    (the async logger's)
                                         └ max_buffered counts these points too

Three modules share the work: this one is the caller's side (validation and the hand-off's
fast path), _sync_handoff.py the hand-off and its accounting, _sync_runner.py the loop thread,
_sync_exit.py interpreter exit and forks.

- **The hand-off.** ``log()`` validates the point in the caller's thread (inline for the usual
  call, else ``Intake.make_point``, pure apart from its name cache, whose ``set.add`` is
  atomic), takes a token of room and appends the tuple to a deque: no lock in the usual case
  (_sync_handoff.py says why ``max_buffered`` still holds exactly). It never waits on the
  network, nor on the loop thread while there is room.
- **Wake-ups.** The loop thread is woken (``call_soon_threadsafe``) only for the first point
  after it went idle, for each full batch's worth of points, and for flush/close; a timer on the
  loop drains the hand-off every ``flush_interval`` while points keep coming, so a partial batch
  still leaves ``flush_interval`` after its first point was logged. Points carry the time they
  were logged, so the accumulator's own timers are unaffected by the hand-off.
- **Accounting.** The ledger is written only on the loop thread. A drain moves points from the
  hand-off into the ledger under the lock, so ``ledger.held + len(hand-off)`` never undercounts;
  ``stats`` is read on the loop thread, under the lock, adding the hand-off's points (logged and
  pending) and its not yet recorded drops and rejections.
- **A full buffer.** ``max_buffered`` bounds ``held + hand-off``. Without a spool, ``"raise"``
  raises and ``"drop_newest"`` drops in the caller's thread. Everything else (``"block"``,
  ``"drop_oldest"``, or any policy with a spool, which may take points past ``max_buffered``)
  goes to the loop thread and runs the async logger's own ``Intake.accept``; while such a call is
  in progress the fast path is off (no tokens), so ``held`` is exact there. Under ``"block"`` the
  caller's thread waits for room; close releases it with LoggerClosedError.
- **Exit and forks** (_sync_exit.py). ``close()`` drains within ``close_timeout``; so does an
  interpreter exit without it. In a forked child every call on the parent's logger raises.
- **The GIL.** The loop thread shares the GIL with the threads that log. Before each heavy step
  of a send (StepPacer) it sleeps 20 microseconds, which lets a thread waiting for the GIL take
  it, instead of waiting up to the switch interval (5 ms) while requests are built back to back.
- **Signals.** The SIGTERM drain (_sigterm.py) may run in the main thread while it is inside
  ``log()``, holding the hand-off lock or a token, and wait there for this logger's close; so the
  loop thread never waits for the lock, or for a token's point to land, for long (a second): a
  routine drain is retried later, and the close goes on without it (the holder never resumes:
  the process is ending).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, cast

from . import _sigterm
from . import _validation as v
from ._buffer import Point
from ._client import MetricsClient
from ._exceptions import BufferFullError, InvalidMetricError, LoggerClosedError, MetricsBufError
from ._logger import _CANCEL_GRACE, MetricsLogger
from ._models import FailedMetric, MetricsStats
from ._options import NonFinite, OnFull, RateScope
from ._reporting import FailureCallback, log
from ._sync_exit import live_sync_loggers, register_exit_hook, track, untrack
from ._sync_handoff import Admission, HandOff
from ._sync_runner import LoopRunner, State
from ._validation import MAX_STEP

__all__ = ["SyncMetricsLogger", "live_sync_loggers", "register_exit_hook"]

_wall_clock = time.time
# Seconds the loop thread sleeps before each heavy step of a send (StepPacer.gil_pause).
_GIL_PAUSE = 20e-6


class SyncMetricsLogger:
    """MetricsLogger for synchronous code: thread-safe ``log()``, sending on a thread of its own.

    Use it around a whole job::

        with SyncMetricsLogger("my-run-0042") as metrics:
            metrics.log("train:loss", loss, step=step)

    It takes exactly MetricsLogger's arguments and gives the same validation, errors, accounting
    and delivery guarantees: it runs a MetricsLogger on an asyncio event loop in a daemon thread
    that it starts here and ends at ``close()``. ``log()`` validates in the caller's thread
    (InvalidMetricError is raised there) and queues the point without waiting on the network;
    it is safe from any number of threads at once. ``close()`` (or leaving the ``with`` block)
    drains within ``close_timeout``; an interpreter exit without it drains within the same bound.

    Raises:
        InvalidMetricError: a bad trial component name or option (the message names it).
        MetricsBufError: what MetricsLogger.start() raises (no AWS credentials or region for its
            own client, no trial component found, a spool in use ...), re-raised here.
    """

    def __init__(
        self,
        trial_component_name: str | None = None,
        *,
        client: MetricsClient | None = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        max_batch_size: int = 10,
        flush_interval: float = 1.0,
        max_buffered: int = 100_000,
        on_full: OnFull = "block",
        max_in_flight: int = 4,
        max_attempts: int = 8,
        delivery_timeout: float = 300.0,
        close_timeout: float = 30.0,
        non_finite: NonFinite = "drop",
        on_failure: FailureCallback | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        adaptive_rate: bool = False,
        rate_scope: RateScope = "host",
        spool_dir: str | os.PathLike[str] | None = None,
        spool_interval: float = 0.2,
        max_spool_bytes: int = 1 << 30,
        offline: bool = False,
    ) -> None:
        # Passed through as given: None means "find it" once MetricsLogger resolves it at start.
        self._logger = logger = MetricsLogger(
            cast(str, trial_component_name),
            client=client,
            region_name=region_name,
            endpoint_url=endpoint_url,
            max_batch_size=max_batch_size,
            flush_interval=flush_interval,
            max_buffered=max_buffered,
            on_full=on_full,
            max_in_flight=max_in_flight,
            max_attempts=max_attempts,
            delivery_timeout=delivery_timeout,
            close_timeout=close_timeout,
            non_finite=non_finite,
            on_failure=on_failure,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            adaptive_rate=adaptive_rate,
            rate_scope=rate_scope,
            spool_dir=spool_dir,
            spool_interval=spool_interval,
            max_spool_bytes=max_spool_bytes,
            offline=offline,
        )
        _sigterm.mark_inside_sync(logger)
        options = logger._options
        self._known_names = logger._intake.known_names
        self._make_point = logger._intake.make_point
        self._max_buffered = options.max_buffered
        self._close_timeout = options.close_timeout
        self._forked = False
        # Threads share the GIL: a thread that wants it back (the training loop after a GPU
        # wait) waits until the holder drops it, up to the switch interval (5 ms) while this
        # loop thread builds, signs and parses requests back to back. A short real sleep before
        # each heavy step hands it over (benchmarks/SYNC_RESULTS.md measures the difference).
        logger._pacer.gil_pause = _GIL_PAUSE
        self._handoff = handoff = HandOff(
            options.max_buffered, options.on_full, options.spool_dir is not None, logger._ledger
        )
        handoff.accepting = lambda: logger._accepting
        # The fast path's two operations, bound once (the deques are never replaced).
        self._take = handoff.tokens.popleft
        self._points = handoff.points
        self._append = handoff.points.append
        self._lock = handoff.lock
        self._runner = runner = LoopRunner(
            logger, handoff, f"metricsbuf-sync[{trial_component_name or 'auto'}]"
        )
        self._loop = runner.loop
        self._thread = runner.thread
        track(self)
        self._thread.start()
        try:
            runner.wait(runner.started)
        except BaseException:
            runner.state = State.CLOSED
            untrack(self)
            self._thread.join(5.0)
            raise
        with handoff.lock:
            if not runner.close_requested.locked():  # a signal handler may have closed it already
                runner.state = State.RUNNING
                handoff.open = True
        if threading.current_thread() is threading.main_thread():
            _sigterm.maybe_install_automatically()

    @property
    def _state(self) -> State:
        return self._runner.state

    # ------------------------------------------------------------------------------------------
    # Logging (any thread)

    def log(
        self, name: str, value: float, *, step: int | None = None, timestamp: datetime | float | None = None
    ) -> None:
        """Validates one point in this thread and queues it; never waits on the network.

        The arguments and their rules are MetricsLogger.log's. Under ``on_full="block"`` a full
        buffer makes this call wait for room.

        Raises:
            InvalidMetricError: the point breaks a rule; nothing else is affected.
            BufferFullError: ``on_full="raise"`` and ``max_buffered`` points are held.
            LoggerClosedError: the logger is closed (or was closed while this call waited for room).
            MetricsBufError: called in a forked child on the parent's logger.
        """
        now = _wall_clock()
        # The usual call (a float, a known name, an int step or none, no timestamp) is checked
        # inline, as MetricsLogger.log's fast path does, and queued with a token of room, without
        # a lock (_sync_handoff.py); anything else goes through make_point and the locked path.
        if (
            type(value) is float
            and value - value == 0.0  # finite
            and type(name) is str
            and name in self._known_names
            and timestamp is None
            and (step is None or (type(step) is int and 0 <= step <= MAX_STEP))
        ):
            try:
                wake = self._take()
            except IndexError:  # no room in the pool: the locked path decides
                point: Point = (name, value, step, now, now)
            else:
                self._append((name, value, step, now, now))
                if wake:  # a token the loop thread marked (_sync_handoff.py)
                    self._runner.wake()
                return
        else:
            if not self._handoff.open:
                self._raise_not_open()
            made = self._make_point(name, value, step, timestamp, now)
            if made is None:
                self._reject([(name, value)])
                return
            point = made
        self._put([point])

    def log_many(
        self,
        metrics: Mapping[str, float],
        *,
        step: int | None = None,
        timestamp: datetime | float | None = None,
    ) -> None:
        """Logs several metrics with one step and timestamp; all or nothing, as MetricsLogger.log_many."""
        if not self._handoff.open:
            self._raise_not_open()
        if not isinstance(metrics, Mapping):
            raise InvalidMetricError(
                f"log_many takes a mapping of name to value, got {type(metrics).__name__}"
            )
        now = _wall_clock()
        points: list[Point] = []
        non_finite: list[tuple[Any, Any]] = []
        make_point = self._make_point
        # The usual entry (a float, a known name) is checked inline when the step and timestamp
        # are the usual ones, as in log(); anything else goes through make_point.
        usual = timestamp is None and (step is None or (type(step) is int and 0 <= step <= MAX_STEP))
        known = self._known_names
        for name, value in metrics.items():
            if (
                usual
                and type(value) is float
                and value - value == 0.0  # finite
                and type(name) is str
                and name in known
            ):
                points.append((name, value, step, now, now))
                continue
            point = make_point(name, value, step, timestamp, now)
            if point is None:
                non_finite.append((name, value))
            else:
                points.append(point)
        if non_finite:  # counted only once every point has passed
            self._reject(non_finite)
        if not points:
            return
        take = self._take
        taken = 0
        wake = False
        try:
            for _ in points:
                wake = take() or wake
                taken += 1
        except IndexError:
            self._put(points, taken)
            return
        self._points.extend(points)
        if wake:
            self._runner.wake()

    def _put(self, points: list[Point], prepaid: int = 0) -> None:
        """The locked path: queues valid points, applying max_buffered over the ledger and the hand-off."""
        if not self._handoff.open:  # before the lock: a forked child's copy of it may be held forever
            self._raise_not_open()
        outcome = self._handoff.put(points, prepaid)
        if outcome is Admission.QUEUED:
            return
        if outcome is Admission.WAKE:
            self._runner.wake()
        elif outcome is Admission.CLOSED:
            self._raise_not_open()
        elif outcome is Admission.FULL:
            raise BufferFullError(
                f"{self._handoff.held_total()} points held (max_buffered={self._max_buffered}); none of "
                f"the {len(points)} point(s) {', '.join(repr(p[0]) for p in points)} was logged "
                "(on_full='raise')"
            )
        else:
            self._admit_slowly(points)

    def _admit_slowly(self, points: list[Point]) -> None:
        """A call the caller's thread could not decide: the async logger's own Intake.accept, on the loop."""
        runner = self._runner
        if runner.in_loop_thread():  # code on the loop thread (on_failure) cannot wait for the loop
            runner.admit_now(points)
            return
        admit = runner.admit(points)
        try:
            future = asyncio.run_coroutine_threadsafe(admit, self._loop)
        except RuntimeError:  # the loop is closed: the logger was closed meanwhile
            admit.close()
            raise LoggerClosedError("the SyncMetricsLogger is closed") from None
        runner.wait(future)

    def _reject(self, rejected: list[tuple[Any, Any]]) -> None:
        """Non-finite values skipped under non_finite="drop": recorded (and warned) on the loop thread."""
        if not self._handoff.open:
            self._raise_not_open()
        outcome = self._handoff.reject(rejected)
        if outcome is Admission.WAKE:
            self._runner.wake()
        elif outcome is Admission.CLOSED:
            self._raise_not_open()

    # ------------------------------------------------------------------------------------------
    # Flush, close, results

    def flush(self, timeout: float | None = None) -> None:
        """Returns once every point logged before this call (in any thread) is delivered or failed for good.

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the points stay queued).
            LoggerClosedError: the logger is closed or its flusher died.
            MetricsBufError: called in a forked child, or from the logger's own thread (an
                ``on_failure`` callback), which would wait for itself.
        """
        if timeout is not None:
            timeout = v.check_seconds_option("timeout", timeout)
        self._check_callable_here("flush")
        if self._runner.state is not State.RUNNING:
            raise LoggerClosedError("the SyncMetricsLogger is closed")
        try:
            future = asyncio.run_coroutine_threadsafe(self._runner.flush(timeout), self._loop)
        except RuntimeError:
            raise LoggerClosedError("the SyncMetricsLogger is closed") from None
        self._runner.wait(future)

    def close(self, timeout: float | None = None) -> None:
        """Stops intake and drains within ``close_timeout`` (or ``timeout``); then the thread ends.

        Idempotent, and safe from any thread: a second call waits for the first close. What is
        still held when the time runs out fails with CLOSE_TIMEOUT (with a spool: stays on disk).

        Raises:
            LoggerClosedError: the background flusher had died (its points failed with FLUSHER_CRASHED).
            MetricsBufError: called in a forked child, or from the logger's own thread.
        """
        if timeout is not None:
            timeout = v.check_seconds_option("timeout", timeout)
        self._check_callable_here("close")
        self._wait_closed(self._request_close(timeout))

    def _request_close(self, timeout: float | None) -> concurrent.futures.Future[None]:
        """Starts the close once (never waits, never takes the hand-off lock: signal handlers call it)."""
        return self._runner.request_close(timeout)

    def _wait_closed(self, done: concurrent.futures.Future[None]) -> None:
        bound = self._runner.close_timeout + 2 * _CANCEL_GRACE + 5.0
        finished, _ = concurrent.futures.wait([done], timeout=bound)
        if not finished:
            log.error(
                "metricsbuf: the SyncMetricsLogger's thread did not finish closing within %g s; "
                "%d point(s) were still held",
                bound,
                self._handoff.held_total(),
            )
            return
        self._thread.join(5.0)
        untrack(self)
        done.result()  # the close's own error (a dead flusher), every time close() is called

    @property
    def stats(self) -> MetricsStats:
        """A consistent snapshot, hand-off included (``logged == delivered + failed + dropped + pending``)."""
        self._check_not_forked()
        return self._runner.on_loop(self._runner.stats_now)

    @property
    def failures(self) -> list[FailedMetric]:
        """Every point that failed for good so far, with its code and message (a copy)."""
        self._check_not_forked()
        return list(self._logger._ledger.reporter.failures)

    @property
    def trial_component_name(self) -> str | None:
        """The trial component the points go to (found at start when not given; see MetricsLogger)."""
        return self._logger.trial_component_name

    @property
    def trial_component_source(self) -> str | None:
        """How the trial component was found (see MetricsLogger.trial_component_source)."""
        return self._logger.trial_component_source

    def __enter__(self) -> SyncMetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        # The body's exception propagates as itself; a failure of the logger's own is logged and
        # attached to it as a note, as MetricsLogger does.
        try:
            self.close()
        except MetricsBufError as own_failure:
            log.error("metricsbuf: %s (while the body of 'with' raised %r)", own_failure, exc)
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"metricsbuf: {own_failure}")

    # ------------------------------------------------------------------------------------------
    # Helpers

    def _check_not_forked(self) -> None:
        if self._forked:
            raise MetricsBufError(
                "this SyncMetricsLogger was created in another process and cannot be used in a forked "
                f"child (process {os.getpid()}): its thread exists only in the parent. Create a new "
                "SyncMetricsLogger in the child; the parent's is unaffected"
            )

    def _check_callable_here(self, what: str) -> None:
        self._check_not_forked()
        if self._runner.in_loop_thread():
            raise MetricsBufError(
                f"SyncMetricsLogger.{what}() cannot be called from the logger's own thread (an "
                "on_failure callback): it would wait for itself"
            )

    def _raise_not_open(self) -> None:
        self._check_not_forked()
        if self._runner.state is State.RUNNING and not self._logger._accepting:
            self._runner.on_loop(self._logger._check_running)  # the async logger's own words
        raise LoggerClosedError("the SyncMetricsLogger is closed")
