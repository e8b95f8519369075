"""MetricsLogger: the facade. It builds the parts, owns the lifecycle and takes points in.

Where a point goes, module by module::

    log() / log_many() / log_nowait()        here: validate (_validation.py), count (_ledger.py)
            │                                 and append a tuple (_buffer.py)
            │   with spool_dir: staged, then written to disk before it may be sent (_spooling.py)
            ▼
    Accumulator (_accumulator.py)            where a point waits: the queue, the resend lane,
            │                                 the batches in flight; decides when a batch is due
            ▼
    Sender (_sender.py)                      max_in_flight slots send batches through the client,
            │                                 retry them (tenacity) and settle each point
            ▼
    Ledger (_ledger.py)                      the one record of outcomes: delivered, failed
                                              (FailureReporter), dropped, left on disk

Around them: _intake.py (validation, max_buffered and on_full), _flusher.py (the background
task that runs the sender and the spooler, and how it ended), _shielding.py (waits that survive
cancellation, for the close), _options.py (the checked options).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import os
import time
import weakref
from collections.abc import Mapping
from datetime import datetime
from threading import get_ident as _get_ident
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from . import _sigterm
from . import _validation as v
from ._client import MetricsClient, client_for
from ._context import RunContext, loop_thread_marker, running_asyncio_loop
from ._exceptions import LoggerClosedError, MetricsBufError
from ._flusher import Flusher
from ._models import FailedMetric, MetricsStats
from ._options import LoggerOptions, NonFinite, OnFull, RateScope
from ._parts import Parts
from ._reporting import FailureCallback, log
from ._sagemaker_job import find_trial_component
from ._shielding import close_through_cancellation, wait_through_cancellation
from ._spool import SpoolError
from ._validation import MAX_STEP

# How long aclose() waits for cancelled sends to unwind after close_timeout, before it
# accounts for them anyway; exit stays within close_timeout plus about this much.
_CANCEL_GRACE = 2.0
_wall_clock = time.time  # a module global: one lookup on the hot path
# A position above every point's: flush everything.
_EVERYTHING = 1 << 62
# log()'s fast path checks a step's range with one shift (`not step >> 31`).
assert MAX_STEP == (1 << 31) - 1


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class MetricsLogger:
    """Asynchronous, buffered logger for SageMaker Metrics (``BatchPutMetrics``).

    Use it around a whole job::

        async with MetricsLogger("my-run-0042") as metrics:
            await metrics.log("train:loss", loss, step=step)

    ``log()`` only validates and enqueues (it never waits on the network); a background
    flusher sends batches of up to ``max_batch_size`` points, retrying what the service
    reports as transient. Leaving the block delivers everything, or reports exactly what
    could not be delivered, within ``close_timeout``.

    Args:
        trial_component_name: the trial component the points belong to (1-120 characters,
            ``^[a-z0-9](-*[a-z0-9]){0,119}$``). Not lower-cased for you. ``None`` (the default):
            found at start from ``METRICSBUF_TRIAL_COMPONENT``, or inside a SageMaker training,
            processing or transform job from the job (README, "Inside SageMaker jobs").
        client: any object with ``async batch_put_metrics(**kwargs) -> dict``, such as an
            aiobotocore ``sagemaker-metrics`` client. The caller owns it: it stays open after
            the logger closes and may be shared by several loggers. Create it with
            ``AioConfig(retries={"total_max_attempts": 1})`` so that botocore does not retry
            on top of the logger. With ``None`` the logger creates (and closes) its own client
            through the standard AWS credential and region chain.
        region_name, endpoint_url: for the logger's own client only.
        max_batch_size: points per request, 1..10 (10 is the API's maximum).
        flush_interval: seconds a partial batch may wait for more points before it leaves.
        max_buffered: the most points held at once: queued, in flight and awaiting a retry.
        on_full: what happens to a new point when ``max_buffered`` are held: ``"block"`` (the
            ``await`` waits for room; ``log_nowait`` raises BufferFullError), ``"drop_newest"``
            (the new point is dropped), ``"drop_oldest"`` (the oldest queued point is dropped;
            if every held point is already in flight, the new one is), or ``"raise"``
            (BufferFullError). Drops are counted in ``stats.dropped`` and logged.
        max_in_flight: concurrent requests.
        max_attempts: sends per point before it fails for good.
        delivery_timeout: seconds since a point was logged after which it fails for good
            (``DELIVERY_TIMEOUT``), queued or retrying.
        close_timeout: seconds that leaving the block (or ``aclose()``) may spend draining;
            points still held then fail with ``CLOSE_TIMEOUT``.
        non_finite: ``"drop"`` skips NaN and infinities (counted in ``stats.rejected``, one
            warning per metric name); ``"raise"`` raises InvalidMetricError.
        on_failure: called (synchronously, on the event loop) with each group of final
            failures; an exception in it is logged, never raised.
        backoff_initial, backoff_max: the exponential backoff between retries, in seconds
            (full jitter is added on top, up to ``backoff_initial``).
        adaptive_rate: experimental. ``True``: once the service throttles, the logger limits
            its own request rate to a share of the limit it learns from the answers (README,
            "Many writers against one account's limit"). Use it when the writers sharing the
            account's limit all use it; beside clients that do not back off it yields nearly
            everything to them. ``False`` (the default): only the throttled batches back off.
        rate_scope: with ``adaptive_rate``, who shares one rate. ``"host"`` (the default): every
            logger of this machine and user that sends to the same endpoint and region (the
            ranks of a job on one host; through a small file in the temporary directory, and
            per logger where that cannot be used). ``"logger"``: each logger its own.

        spool_dir: a folder for the on-disk spool (see README, "Durability"): every point is
            written there before it is sent, and what is not delivered stays there.
        spool_interval: seconds a logged point may wait in memory before it is written.
        max_spool_bytes: the spool's size limit; beyond it, ``on_full`` applies.
        offline: only write to the spool (``spool_dir`` required); ``metricsbuf sync`` sends it.

    Raises:
        InvalidMetricError: a bad trial component name or option (the message names it).
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
        self._options = options = LoggerOptions.from_arguments(locals())  # first: locals() is the arguments
        # None: found at start (the environment, or the SageMaker job; see _sagemaker_job.py).
        self._trial_component: str | None = None
        self._trial_component_source: str | None = None
        if trial_component_name is not None:
            self._trial_component = v.check_trial_component_name(trial_component_name)
        # The parts (see the module docstring); they learn the trial component at start if it
        # is not known yet.
        self._parts = parts = Parts.build(options, self._trial_component or "", self._check_running)
        self._ledger, self._accumulator, self._pacer = parts.ledger, parts.accumulator, parts.pacer
        self._sender, self._spool, self._intake = parts.sender, parts.spool, parts.intake
        # Read by log()'s fast path at every call: attributes of the logger's own.
        self._intake_points = self._intake.points
        self._wake_intake = self._intake.wake
        self._known_names = self._intake.known_names
        self._max_batch_size = options.max_batch_size
        self._max_buffered = options.max_buffered
        self._flusher = Flusher(self._run_flusher, self._on_flusher_end)

        self._state = _State.NEW
        self._accepting = False  # RUNNING, in the right process, and the flusher alive
        self._stack: contextlib.AsyncExitStack | None = None
        self._closed: asyncio.Future[None] | None = None  # done once aclose() has finished
        self._spool_error: SpoolError | None = None
        # Where the logger runs: calls from another event loop, thread or (forked) process
        # get a clear error instead of points that would never be sent.
        self._context = RunContext()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Its ``_thread_id`` is the id of the thread running the logger's loop (while it runs):
        # the fast path's check that a call comes from there (_context.loop_thread_marker).
        self._home: Any = None

    # ------------------------------------------------------------------------------------------
    # Lifecycle

    async def __aenter__(self) -> MetricsLogger:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Drains also when the body raised or was cancelled; then the body's exception (or
        # cancellation) propagates as itself, and a failure of the logger's own is logged and
        # attached to it as a note, never put in its place.
        if exc is None:
            await self.aclose()
            return
        try:
            cancelled = await self._close()
            self._flusher.raise_if_fatal()
        except MetricsBufError as own_failure:
            log.error("metricsbuf: %s (while the body of 'async with' raised %r)", own_failure, exc)
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"metricsbuf: {own_failure}")
            return
        if cancelled and not isinstance(exc, asyncio.CancelledError):
            raise asyncio.CancelledError  # cancelled during the drain: pass it on after the drain

    async def start(self) -> None:
        """Starts the background flusher (``async with`` does this for you).

        Raises:
            MetricsBufError: the logger was already started; no asyncio event loop is running
                (the logger needs asyncio: aiobotocore runs on nothing else); or (own client
                only) no AWS credentials or region could be found.
        """
        if self._state is not _State.NEW:
            raise MetricsBufError("a MetricsLogger can be started only once; create a new one")
        loop = running_asyncio_loop()  # raises before anything is acquired: nothing to release
        self._state = _State.RUNNING  # claimed at once, so a concurrent second start() fails
        self._loop = loop
        self._home = loop_thread_marker(loop)
        self._context.bind(loop)
        self._stack = contextlib.AsyncExitStack()
        try:
            await self._find_trial_component()
            if self._spool is not None:
                await self._spool.open()  # a previous run's leftovers count as logged, and go first
                self._stack.push_async_callback(self._spool.close)
            self._sender.client = await client_for(self._options, self._stack, self._pacer)
            shared_rate = self._sender.share_rate_on_host()
            if shared_rate is not None:
                self._stack.callback(shared_rate.close)
        except BaseException:
            self._state = _State.CLOSED
            await self._close_resources()  # the spool lock and the client, even if cancelled again
            raise
        self._accumulator.wakeup = anyio.Event()
        self._closed = loop.create_future()
        self._flusher.start(loop)
        self._accepting = True
        _running_loggers.add(self)  # a forked child refuses it (_refuse_in_forked_child)
        _sigterm.logger_started(self)  # the SIGTERM drain knows it (and may install itself: _sigterm.py)

    async def aclose(self) -> None:
        """Stops intake and drains within ``close_timeout``; what is still held then fails with CLOSE_TIMEOUT.

        Idempotent; safe to call from any task of the logger's event loop. The drain goes on
        through any number of cancellations (anyio cancel scopes and ``task.cancel()`` alike)
        until ``close_timeout``; a cancellation that arrived meanwhile is raised afterwards.

        Raises:
            LoggerClosedError: the background flusher had died (the points it held are
                reported as failed with FLUSHER_CRASHED).
            MetricsBufError: called from another event loop, thread or process than the one
                the logger started in.
        """
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            return
        if await self._close():
            raise asyncio.CancelledError
        self._flusher.raise_if_fatal()

    async def _aclose_within(self, close_timeout: float) -> None:
        """``aclose()`` with another close_timeout (SyncMetricsLogger.close(timeout), the SIGTERM drain)."""
        self._options = dataclasses.replace(self._options, close_timeout=close_timeout)
        await self.aclose()

    async def _close(self) -> bool:
        """Closes (or waits for the close in progress); returns whether the caller was cancelled meanwhile."""
        if self._state is _State.CLOSED:
            return False
        self._context.check()
        assert self._closed is not None
        if self._state is _State.CLOSING:
            return await wait_through_cancellation(self._closed)
        self._state = _State.CLOSING
        self._accepting = False
        self._accumulator.hurry(_EVERYTHING)
        self._wake_all()
        try:
            cancelled = await self._drain()
        finally:
            self._state = _State.CLOSED
            self._closed.set_result(None)
            self._wake_all()  # flush() waiters return: every point's outcome is now settled
        self._ledger.log_summary()
        return cancelled

    async def _drain(self) -> bool:
        """Lets the flusher finish within close_timeout, then reports or spools what is left.

        Every await here survives cancellation (see _shielding.py); returns whether the
        calling task was cancelled meanwhile.
        """
        cancelled = await self._flusher.drain(
            self._options.close_timeout, _CANCEL_GRACE, self._accumulator.take_back_in_flight
        )
        if self._spool is not None:
            # What was not delivered stays on disk; nothing is failed for time.
            self._spool_error = await self._spool.drain_to_disk()
        else:  # what is still held was not delivered in time, or the flusher died
            code, message = self._flusher.why_points_are_left(self._options.close_timeout)
            self._ledger.record_close_report(self._accumulator.take_all_held(), code, message)
        cancelled |= await self._close_resources()
        if self._spool_error is not None and self._flusher.fatal is None:
            raise self._spool_error
        return cancelled

    async def _close_resources(self) -> bool:
        """Closes the logger's own client and the spool, if any, through cancellations.

        The client gets ``_CANCEL_GRACE`` seconds; the spool is released even if closing the
        client is cut short. Returns whether the caller was cancelled meanwhile.
        """
        assert self._stack is not None
        cancelled = await close_through_cancellation(self._stack, _CANCEL_GRACE, "the client or the spool")
        if self._spool is not None:
            await self._spool.close()  # idempotent; survives cancellation (SpoolCoordinator._run)
        return cancelled

    def _on_flusher_end(self) -> None:
        """The flusher task ended: unless it finished a drain, the logger takes no more points."""
        flusher = self._flusher
        if flusher.fatal is not None or flusher.cancelled_from_outside:
            self._accepting = False
        if self._state is _State.RUNNING:
            flusher.warn_if_cancelled_holding(self._ledger.held, self._trial_component)
        self._wake_all()

    def _check_running(self) -> None:
        if not self._accepting:
            self._raise_not_running()
        self._context.check()

    def _raise_not_running(self) -> None:
        self._context.check()
        self._flusher.raise_why_stopped(running=self._state is _State.RUNNING)
        if self._state is _State.NEW:
            raise MetricsBufError(
                "the MetricsLogger is not started: use 'async with' or 'await logger.start()'"
            )
        raise LoggerClosedError("the MetricsLogger is closed")

    # ------------------------------------------------------------------------------------------
    # Logging (the hot path)

    async def log(
        self, name: str, value: float, *, step: int | None = None, timestamp: datetime | float | None = None
    ) -> None:
        """Validates one point and enqueues it; never waits on the network.

        Args:
            name: 1-255 characters, no line breaks, no NUL, no lone surrogates.
            value: a real number: int, float, or anything with ``__float__`` (numpy scalars,
                0-d tensors). Not str, not None, not bool. NaN and infinities follow ``non_finite``.
            step: None or an integer (anything with ``__index__``, not bool) in 0..2**31-1.
            timestamp: None for now (captured at this call), a datetime (a naive one is
                taken as UTC) or epoch seconds; within 14 days before now to 2 hours after.

        Raises:
            InvalidMetricError: the point breaks a rule; nothing else is affected.
            BufferFullError: ``on_full="raise"`` and ``max_buffered`` points are held.
            LoggerClosedError: the logger is closed.
            MetricsBufError: called from another event loop, thread or process (see README).
        """
        # The fast path: the usual call (a float, a known name, an int step or none, no
        # timestamp, room in memory) is checked and queued inline; it is Intake.enqueue()
        # written out, on purpose (a call would cost a sizeable share of a log()). Anything
        # else takes the general path below, which applies the same rules.
        if (
            self._accepting
            and self._home._thread_id == _get_ident()  # the loop's thread, the loop running; no fork
            and type(value) is float
            and value - value == 0.0  # finite: inf - inf and nan - nan are nan
            and type(name) is str
            and name in self._known_names
            and timestamp is None
            and (step is None or (type(step) is int and not step >> 31))  # 0..MAX_STEP
            and (ledger := self._ledger).held < self._max_buffered
        ):
            now = _wall_clock()
            ledger.held += 1
            points = self._intake_points
            points.append((name, value, step, now, now))
            if len(points) == self._max_batch_size:
                self._wake_intake()  # a full batch: the first point of one needs no wake-up
            return
        self._check_running()
        point = self._intake.make_point(name, value, step, timestamp, _wall_clock())
        if point is None:
            self._ledger.record_rejected(name, value)
        else:
            await self._intake.accept([point])

    async def log_many(
        self,
        metrics: Mapping[str, float],
        *,
        step: int | None = None,
        timestamp: datetime | float | None = None,
    ) -> None:
        """Logs several metrics with one step and timestamp.

        All or nothing: every point is validated first, and if any is invalid, InvalidMetricError
        is raised and nothing is logged or counted. Under ``on_full="raise"`` the points are
        logged only if all of them fit (BufferFullError otherwise); under ``"block"`` the call
        waits until all of them fit. The drop policies apply to each point.
        """
        self._check_running()
        points = self._intake.make_points(metrics, step, timestamp, _wall_clock())
        if points:
            await self._intake.accept(points)

    def log_nowait(
        self, name: str, value: float, *, step: int | None = None, timestamp: datetime | float | None = None
    ) -> None:
        """Like ``log()``, for synchronous code running on the logger's event loop (its thread).

        Under ``on_full="block"`` it cannot wait, so a full buffer raises BufferFullError.
        """
        self._check_running()
        point = self._intake.make_point(name, value, step, timestamp, _wall_clock())
        if point is None:
            self._ledger.record_rejected(name, value)
        else:
            self._intake.accept_nowait(point)

    # ------------------------------------------------------------------------------------------
    # Flushing and results

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (the contract's API)
        """Returns once every point logged before this call is delivered or has failed for good.

        Partial batches are sent at once rather than after ``flush_interval``. With a spool,
        "settled" also covers points kept on disk after a failed delivery cycle (see README),
        and offline it means written to the spool.

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the points stay queued).
            LoggerClosedError: the logger is closed or its flusher died.
        """
        self._check_running()
        if timeout is not None:
            timeout = v.check_seconds_option("timeout", timeout)
        intake = self._intake
        target = intake.next_position()
        intake.hurry(target)
        with anyio.fail_after(timeout):
            while not intake.settled_before(target):
                if self._state is _State.CLOSED:
                    return  # the close settled every point: delivered, failed, or left on disk
                if self._state is _State.RUNNING and not self._accepting:
                    self._raise_not_running()  # the flusher died, or was cancelled from outside
                await self._ledger.progress().wait()
                self._flusher.raise_if_fatal()

    @property
    def stats(self) -> MetricsStats:
        """A consistent snapshot of the counters (``logged == delivered + failed + dropped + pending``)."""
        return self._ledger.stats()

    @property
    def failures(self) -> list[FailedMetric]:
        """Every point that failed for good so far, with its code and message (a copy)."""
        return list(self._ledger.reporter.failures)

    @property
    def trial_component_name(self) -> str | None:
        """The trial component the points go to (None before start, if it is to be found then)."""
        return self._trial_component

    @property
    def trial_component_source(self) -> str | None:
        """How the trial component was found: ``"argument"``, ``"environment:METRICSBUF_TRIAL_COMPONENT"``,
        or the SageMaker job and rule (e.g. ``"training job my-job: ExperimentConfig.RunName"``)."""
        return self._trial_component_source

    async def _find_trial_component(self) -> None:
        """Names the trial component at start (see _sagemaker_job.find_trial_component)."""
        resolved = await find_trial_component(
            self._trial_component, offline=self._options.offline, region_name=self._options.region_name
        )
        name = self._trial_component = resolved.name
        self._trial_component_source = resolved.source
        self._parts.name_trial_component(name)
        self._flusher.name = f"metricsbuf-flusher[{name}]"
        log.info("metricsbuf: logging to trial component %r (%s)", name, resolved.source)

    # ------------------------------------------------------------------------------------------
    # The flusher

    def _wake_all(self) -> None:
        """Wakes everything that waits (at close, or when the flusher ends): each checks why."""
        self._accumulator.wake()
        if self._spool is not None:
            self._spool.wake()
        self._ledger.wake_all()

    def _no_more_points(self) -> bool:
        """Closing, and nothing can reach the accumulator any more (with a spool: from disk)."""
        return self._state is not _State.RUNNING and (self._spool is None or self._spool.nothing_left_to_send)

    async def _run_flusher(self) -> None:
        """Runs the sender's slots (and, with a spool, the spooler) until the logger closes."""
        async with anyio.create_task_group() as task_group:
            # A flusher cancelled before it ever ran (its event loop ended right after start())
            # stops here, before it creates tasks that would never run.
            await anyio.lowlevel.checkpoint()
            if self._spool is not None:
                task_group.start_soon(self._spool.run_spooler, self._is_closing)
            self._sender.start(task_group, self._no_more_points)

    def _is_closing(self) -> bool:
        return self._state is not _State.RUNNING


# Loggers that were started, so that a forked child can refuse them at once (log()'s fast path
# checks the thread, not the process: see _context.loop_thread_marker).
_running_loggers: weakref.WeakSet[MetricsLogger] = weakref.WeakSet()


def _refuse_in_forked_child() -> None:
    for logger in list(_running_loggers):
        logger._accepting = False  # every call now takes the slow path, which raises (RunContext)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refuse_in_forked_child)
