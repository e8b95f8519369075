"""SyncMetricsLogger: the asynchronous logger, for synchronous code, on a thread of its own.

It is a MetricsLogger (same validation, errors, accounting, delivery guarantees) running on an
asyncio event loop in a daemon thread the SyncMetricsLogger owns. What it adds is the way in:

    log() in any thread ──validate──► hand-off (deque + lock) ──drain, on the loop thread──► Intake
                                       │ wake the loop only when needed               (the async logger's)
                                       └ max_buffered counts these points too

- **The hand-off.** ``log()`` validates the point in the caller's thread (``Intake.make_point``,
  pure apart from its name cache, whose ``set.add`` is atomic) and appends the tuple to a deque
  under a lock. It never waits on the network, nor on the loop thread while there is room.
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
  in progress the fast path is off, so ``held`` is exact there. Under ``"block"`` the caller's
  thread waits for room; close releases it with LoggerClosedError.
- **Exit.** ``close()`` drains within ``close_timeout``; so does an interpreter exit without it:
  the hook runs through CPython's ``threading._register_atexit``, before ``concurrent.futures``
  refuses new work (``atexit`` runs too late: aiohttp's DNS lookups need the default executor).
- **Forks.** In a forked child the loop thread does not exist: every call on the parent's
  logger raises MetricsBufError, and the exit hook skips it.
- **The GIL.** The loop thread shares the GIL with the threads that log. Before each heavy step
  of a send (StepPacer) it sleeps 20 microseconds, which lets a thread waiting for the GIL take
  it, instead of waiting up to the switch interval (5 ms) while requests are built back to back.
- **Signals.** The SIGTERM drain (_sigterm.py) may run in the main thread while it is inside
  ``log()``, holding the hand-off lock, and wait there for this logger's close; so the loop
  thread never waits for the lock for long (a second): a routine drain is retried later, and the
  close goes on without it (the holder never resumes: the process is ending).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, cast

from . import _sigterm
from . import _validation as v
from ._buffer import Point
from ._client import MetricsClient
from ._exceptions import BufferFullError, InvalidMetricError, LoggerClosedError, MetricsBufError
from ._logger import _CANCEL_GRACE, MetricsLogger
from ._models import FailedMetric, MetricsStats
from ._options import NonFinite, OnFull
from ._reporting import FailureCallback, log
from ._validation import MAX_STEP

_T = TypeVar("_T")
_wall_clock = time.time
# The longest the loop thread waits for the hand-off lock (see the module docstring, "Signals").
_LOCK_PATIENCE = 1.0
# How often a caller waiting for the loop thread checks that it is still alive.
_POLL = 0.25
_NEVER = 1 << 62
# Seconds the loop thread sleeps before each heavy step of a send (StepPacer.gil_pause).
_GIL_PAUSE = 20e-6


class _State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


_LIVE: weakref.WeakSet[SyncMetricsLogger] = weakref.WeakSet()


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
        spool_dir: str | os.PathLike[str] | None = None,
        spool_interval: float = 0.2,
        max_spool_bytes: int = 1 << 30,
        offline: bool = False,
    ) -> None:
        self._state = _State.STARTING
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
            spool_dir=spool_dir,
            spool_interval=spool_interval,
            max_spool_bytes=max_spool_bytes,
            offline=offline,
        )
        _sigterm.mark_inside_sync(logger)
        options = logger._options
        self._intake = logger._intake
        self._ledger = logger._ledger
        self._known_names = self._intake.known_names
        self._make_point = self._intake.make_point
        self._max_buffered = options.max_buffered
        self._batch = options.max_batch_size
        self._flush_interval = options.flush_interval
        self._on_full = options.on_full
        self._spooled = options.spool_dir is not None
        self._queue = logger._accumulator.queue.points  # the points waiting for a sender
        # Threads share the GIL: a thread that wants it back (the training loop after a GPU
        # wait) waits until the holder drops it, up to the switch interval (5 ms) while this
        # loop thread builds, signs and parses requests back to back. A short real sleep before
        # each heavy step hands it over (benchmarks/SYNC_RESULTS.md measures the difference).
        logger._pacer.gil_pause = _GIL_PAUSE
        logger._accumulator.refill = self._refill
        self._close_timeout = options.close_timeout

        # The hand-off, guarded by _lock.
        self._lock = threading.Lock()
        self._points: deque[Point] = deque()
        self._rejected: list[tuple[Any, Any]] = []  # non-finite values skipped, not yet recorded
        self._dropped = 0  # new points dropped by "drop_newest", not yet recorded
        self._open = False  # takes points: running, not closing, not a forked copy
        self._slow = 0  # calls admitted by the loop thread in progress: the fast path is off
        self._fast = False  # _open and not _slow: log()'s fast path may append
        # The hand-off's length at which an append wakes the loop thread: 1 while the loop is
        # idle (no timer armed), a batch while a sender is short of points, never while a
        # wake-up is pending or the senders have enough (they pull the hand-off: refill).
        self._wake_at = 1
        self._timer_armed = False  # the loop's timer will drain what comes
        self._timer: asyncio.TimerHandle | None = None  # loop thread only
        self._forked = False

        self._loop = asyncio.new_event_loop()
        self._close_requested = threading.Lock()  # claimed once, by the first close
        self._close_timeout_used = self._close_timeout
        self._closing: asyncio.Event | None = None  # set on the loop: the drain may start
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run,
            name=f"metricsbuf-sync[{trial_component_name or 'auto'}]",
            daemon=True,  # never keeps the process alive; the exit hook drains it first
        )
        _register_own_exit_hook()
        _LIVE.add(self)
        self._thread.start()
        try:
            self._wait(self._started)
        except BaseException:
            self._state = _State.CLOSED
            _LIVE.discard(self)
            self._thread.join(5.0)
            raise
        with self._lock:
            if not self._close_requested.locked():  # a signal handler may have closed it already
                self._state = _State.RUNNING
                self._open = self._fast = True
        if threading.current_thread() is threading.main_thread():
            _sigterm.maybe_install_automatically()

    # ------------------------------------------------------------------------------------------
    # The loop thread

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        finally:
            try:
                _cancel_remaining_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                if not self._done.done():  # start() failed, or the loop ended some other way
                    self._done.set_result(None)

    async def _serve(self) -> None:
        self._closing = asyncio.Event()
        try:
            await self._logger.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._started.set_result(None)
        if self._close_requested.locked():
            self._closing.set()  # requested while starting, before the event existed
        await self._closing.wait()
        try:
            if self._timer is not None:
                self._timer.cancel()
            self._drain(closing=True)
            await self._logger._aclose_within(self._close_timeout_used)
        except BaseException as exc:
            self._done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._done.set_result(None)
        finally:
            with self._locked(closing=True):
                self._state = _State.CLOSED

    @contextlib.contextmanager
    def _locked(self, *, closing: bool) -> Iterator[bool]:
        """The hand-off lock, on the loop thread, within _LOCK_PATIENCE; yields whether it was taken.

        Not taken: a signal handler holds it (module docstring). A routine drain then skips;
        the close goes on without it (``closing=True``): nothing else can append any more.
        """
        taken = self._lock.acquire(timeout=_LOCK_PATIENCE)
        if not taken and closing:
            log.warning("metricsbuf: the hand-off lock is held by a suspended thread; draining without it")
        try:
            yield taken
        finally:
            if taken:
                self._lock.release()

    def _drain(self, *, from_timer: bool = False, closing: bool = False) -> None:
        """Moves the hand-off into the async logger (loop thread); keeps the timer armed while points come."""
        with self._locked(closing=closing) as taken:
            if not taken and not closing:
                self._schedule_timer()  # retried later
                return
            points = self._points
            if taken:
                batch = list(points)
                points.clear()
            else:  # one atomic popleft at a time: nothing appended meanwhile can be lost
                batch = [points.popleft() for _ in range(len(points))]
            rejected, self._rejected = self._rejected, []
            dropped, self._dropped = self._dropped, 0
            anything = bool(batch or rejected or dropped)
            arm = False
            if from_timer:
                self._timer_armed = arm = anything  # idle: the next point wakes the loop
            elif anything and not self._timer_armed:
                self._timer_armed = arm = True
            if batch:
                self._intake.enqueue_all(batch)  # under the lock: held + hand-off never undercounts
            if dropped:
                self._intake.record_dropped_new(dropped)
            if not self._timer_armed:
                self._wake_at = 1
            elif len(self._queue) < self._batch:  # a sender will wait for the next full batch
                self._wake_at = self._batch
            else:  # the senders have enough; each pulls the hand-off when it looks for more
                self._wake_at = _NEVER
        for name, value in rejected:
            self._ledger.record_rejected(name, value)
        if arm and not closing:
            self._schedule_timer()

    def _schedule_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._state is _State.RUNNING:
            self._drain(from_timer=True)

    def _on_wake(self) -> None:
        if self._state is _State.RUNNING:
            self._drain()

    def _refill(self) -> None:
        """A sender looks for a batch (Accumulator.refill): it takes what the hand-off holds."""
        if self._state is not _State.RUNNING:
            return
        if self._points or self._rejected or self._dropped:
            self._drain()
        elif self._timer_armed and self._wake_at > self._batch and len(self._queue) < self._batch:
            # Nothing to take, and a sender is about to wait: the next full batch must wake it.
            with self._locked(closing=False) as taken:
                if taken and self._timer_armed:
                    self._wake_at = min(self._wake_at, self._batch)

    async def _admit_on_loop(self, points: list[Point]) -> None:
        """A call the caller's thread could not decide: the async logger's own Intake.accept."""
        try:
            self._drain()  # first: keeps the order, and makes ledger.held exact
            self._logger._check_running()
            await self._intake.accept(points)
        finally:
            with self._locked(closing=True):
                self._slow -= 1
                self._fast = self._open and not self._slow

    async def _flush_on_loop(self, timeout: float | None) -> None:
        self._drain()
        await self._logger.flush(timeout)

    def _stats_now(self) -> MetricsStats:
        with self._locked(closing=True):
            stats = self._ledger.stats()
            queued, dropped, rejected = len(self._points), self._dropped, len(self._rejected)
        return dataclasses.replace(
            stats,
            logged=stats.logged + queued + dropped,
            dropped=stats.dropped + dropped,
            rejected=stats.rejected + rejected,
            pending=stats.pending + queued,
        )

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
        # inline, as MetricsLogger.log's fast path does; anything else goes through make_point.
        if (
            type(value) is float
            and value - value == 0.0  # finite
            and type(name) is str
            and name in self._known_names
            and timestamp is None
            and (step is None or (type(step) is int and 0 <= step <= MAX_STEP))
        ):
            point: Point = (name, value, step, now, now)
        else:
            if not self._open:
                self._raise_not_open()
            made = self._make_point(name, value, step, timestamp, now)
            if made is None:
                self._reject([(name, value)])
                return
            point = made
        if not self._open:  # before the lock: a forked child's copy of it may be held forever
            self._raise_not_open()
        lock = self._lock
        lock.acquire()  # (cheaper than "with" on the hot path)
        try:
            points = self._points
            if (
                self._fast
                and self._logger._accepting
                and self._ledger.held + len(points) < self._max_buffered
            ):
                points.append(point)
                if len(points) < self._wake_at:
                    return
                self._wake_at = _NEVER  # until the drain it asks for
                wake = True
            else:
                wake = False
        finally:
            lock.release()
        if wake:
            self._wake()
        else:
            self._put([point])

    def log_many(
        self,
        metrics: Mapping[str, float],
        *,
        step: int | None = None,
        timestamp: datetime | float | None = None,
    ) -> None:
        """Logs several metrics with one step and timestamp; all or nothing, as MetricsLogger.log_many."""
        if not self._open:
            self._raise_not_open()
        if not isinstance(metrics, Mapping):
            raise InvalidMetricError(
                f"log_many takes a mapping of name to value, got {type(metrics).__name__}"
            )
        now = _wall_clock()
        points: list[Point] = []
        non_finite: list[tuple[Any, Any]] = []
        for name, value in metrics.items():
            point = self._make_point(name, value, step, timestamp, now)
            if point is None:
                non_finite.append((name, value))
            else:
                points.append(point)
        if non_finite:  # counted only once every point has passed
            self._reject(non_finite)
        if points:
            self._put(points)

    def _put(self, points: list[Point]) -> None:
        """Queues valid points, applying max_buffered over the ledger and the hand-off together."""
        count = len(points)
        wake = False
        if not self._open:
            self._raise_not_open()
        with self._lock:
            if not self._open:
                slow = False
            elif self._slow or not self._logger._accepting:
                self._slow += 1
                self._fast = False
                slow = True
            else:
                held = self._ledger.held + len(self._points)
                slow = False
                if held + count <= self._max_buffered:
                    self._points.extend(points)
                    wake = self._wake_needed(len(self._points))
                elif self._spooled or self._on_full in ("block", "drop_oldest"):
                    self._slow += 1  # the loop thread decides (waits for room, evicts, spills)
                    self._fast = False
                    slow = True
                elif self._on_full == "raise":
                    raise BufferFullError(
                        f"{held} points held (max_buffered={self._max_buffered}); none of the {count} "
                        f"point(s) {', '.join(repr(p[0]) for p in points)} was logged (on_full='raise')"
                    )
                else:  # drop_newest: what fits is queued, the rest dropped (and counted)
                    room = max(0, self._max_buffered - held)
                    self._points.extend(points[:room])
                    self._dropped += count - room
                    wake = self._wake_needed(max(1, len(self._points)))
        if wake:
            self._wake()
        elif not slow and not self._open:
            self._raise_not_open()
        elif slow:
            self._admit_slowly(points)

    def _admit_slowly(self, points: list[Point]) -> None:
        if self._in_loop_thread():
            try:  # code on the loop thread (on_failure) cannot wait for the loop: never block
                self._drain()
                self._logger._check_running()
                self._intake.accept_now(points)
            finally:
                with self._locked(closing=True):
                    self._slow -= 1
                    self._fast = self._open and not self._slow
            return
        try:
            future = asyncio.run_coroutine_threadsafe(self._admit_on_loop(points), self._loop)
        except RuntimeError:  # the loop is closed: the logger was closed meanwhile
            raise LoggerClosedError("the SyncMetricsLogger is closed") from None
        self._wait(future)

    def _reject(self, rejected: list[tuple[Any, Any]]) -> None:
        """Non-finite values skipped under non_finite="drop": recorded (and warned) on the loop thread."""
        if not self._open:
            self._raise_not_open()
        with self._lock:
            if not self._open:
                wake = False
            else:
                self._rejected.extend(rejected)
                wake = self._wake_needed(1)
        if wake:
            self._wake()
        elif not self._open:
            self._raise_not_open()

    def _wake_needed(self, length: int) -> bool:
        """Under the lock: whether an append that left ``length`` must wake the loop thread."""
        if length < self._wake_at:
            return False
        self._wake_at = _NEVER  # until the drain it asks for
        return True

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_wake)
        except RuntimeError:  # closed meanwhile; the close drained the hand-off
            pass

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
        if self._state is not _State.RUNNING:
            raise LoggerClosedError("the SyncMetricsLogger is closed")
        try:
            future = asyncio.run_coroutine_threadsafe(self._flush_on_loop(timeout), self._loop)
        except RuntimeError:
            raise LoggerClosedError("the SyncMetricsLogger is closed") from None
        self._wait(future)

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
        if self._close_requested.acquire(blocking=False):  # the first close only; never released
            if timeout is not None:
                self._close_timeout_used = timeout
            self._open = self._fast = False  # no new appends; the close drain takes what is there
            if self._state in (_State.STARTING, _State.RUNNING):
                self._state = _State.CLOSING
            try:
                self._loop.call_soon_threadsafe(self._start_closing)
            except RuntimeError:  # the loop already ended (start failed)
                pass
        return self._done

    def _start_closing(self) -> None:
        if self._closing is not None:
            self._closing.set()

    def _wait_closed(self, done: concurrent.futures.Future[None]) -> None:
        bound = self._close_timeout_used + 2 * _CANCEL_GRACE + 5.0
        finished, _ = concurrent.futures.wait([done], timeout=bound)
        if not finished:
            log.error(
                "metricsbuf: the SyncMetricsLogger's thread did not finish closing within %g s; "
                "%d point(s) were still held",
                bound,
                self._ledger.held + len(self._points),
            )
            return
        self._thread.join(5.0)
        _LIVE.discard(self)
        done.result()  # the close's own error (a dead flusher), every time close() is called

    @property
    def stats(self) -> MetricsStats:
        """A consistent snapshot, hand-off included (``logged == delivered + failed + dropped + pending``)."""
        self._check_not_forked()
        return self._on_loop(self._stats_now)

    @property
    def failures(self) -> list[FailedMetric]:
        """Every point that failed for good so far, with its code and message (a copy)."""
        self._check_not_forked()
        return list(self._ledger.reporter.failures)

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

    def _in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def _check_not_forked(self) -> None:
        if self._forked:
            raise MetricsBufError(
                "this SyncMetricsLogger was created in another process and cannot be used in a forked "
                f"child (process {os.getpid()}): its thread exists only in the parent. Create a new "
                "SyncMetricsLogger in the child; the parent's is unaffected"
            )

    def _check_callable_here(self, what: str) -> None:
        self._check_not_forked()
        if self._in_loop_thread():
            raise MetricsBufError(
                f"SyncMetricsLogger.{what}() cannot be called from the logger's own thread (an "
                "on_failure callback): it would wait for itself"
            )

    def _raise_not_open(self) -> None:
        self._check_not_forked()
        if self._state is _State.RUNNING and not self._logger._accepting:
            self._on_loop(self._logger._check_running)  # the async logger's own words
        raise LoggerClosedError("the SyncMetricsLogger is closed")

    def _wait(self, future: concurrent.futures.Future[_T]) -> _T:
        """Waits for the loop thread's answer; if the thread ended without one, says so."""
        while True:
            done, _ = concurrent.futures.wait([future], timeout=_POLL)
            if done:
                return future.result()
            if not self._thread.is_alive() and not future.done():
                future.cancel()
                raise LoggerClosedError("the SyncMetricsLogger's thread has ended")

    def _on_loop(self, fn: Callable[[], _T]) -> _T:
        """Runs ``fn`` on the loop thread (so it sees a consistent ledger); directly once it has ended."""
        if self._in_loop_thread() or not self._thread.is_alive():
            return fn()
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: the ledger is final
            return fn()
        while True:
            done, _ = concurrent.futures.wait([future], timeout=_POLL)
            if done:
                return future.result()
            if not self._thread.is_alive() and future.cancel():
                return fn()


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def live_sync_loggers() -> list[SyncMetricsLogger]:
    """The SyncMetricsLoggers of this process that are running or closing."""
    return [s for s in list(_LIVE) if not s._forked and s._state in (_State.RUNNING, _State.CLOSING)]


# ---------------------------------------------------------------------------------------------
# Interpreter exit and forks


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


def _register_own_exit_hook() -> None:
    register_exit_hook(_close_all_at_exit)


def _after_fork_in_child() -> None:
    for logger in list(_LIVE):
        logger._forked = True
        logger._open = logger._fast = False
    _LIVE.clear()  # the child's exit never touches the parent's loggers


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
