"""The loop thread of a SyncMetricsLogger: its event loop, the drain of the hand-off, and the close.

Everything here runs on the loop thread, except ``start``, ``wake``, ``request_close``,
``wait`` and ``on_loop``, which other threads call to reach it. See _sync.py for the design
and _sync_handoff.py for the hand-off's rules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ._buffer import Point
from ._exceptions import LoggerClosedError
from ._logger import MetricsLogger
from ._models import MetricsStats
from ._reporting import log
from ._sync_handoff import NEVER, HandOff

_T = TypeVar("_T")
# The longest the loop thread waits for the hand-off lock, or for callers to finish appending
# the points they hold tokens for (see _sync.py, "Signals").
LOCK_PATIENCE = 1.0
# How often a caller waiting for the loop thread checks that it is still alive.
_POLL = 0.25
# How often the loop thread looks whether the callers holding tokens have appended their points.
_LANDING_POLL = 0.0005


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class LoopRunner:
    """Runs a MetricsLogger on an event loop in a daemon thread, fed by a HandOff."""

    def __init__(self, logger: MetricsLogger, handoff: HandOff, thread_name: str) -> None:
        options = logger._options
        self.logger = logger
        self.handoff = handoff
        self.state = State.STARTING
        self.close_timeout = options.close_timeout  # the close's own bound (close(timeout) sets it)
        self._intake = logger._intake
        self._ledger = logger._ledger
        self._queue = logger._accumulator.queue.points  # the points waiting for a sender
        self._batch = options.max_batch_size
        self._flush_interval = options.flush_interval
        self._timer_armed = False  # the loop's timer will drain what comes
        self._timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.new_event_loop()
        self.close_requested = threading.Lock()  # claimed once, by the first close
        self._closing: asyncio.Event | None = None  # set on the loop: the drain may start
        self.started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.thread = threading.Thread(
            target=self._run,
            name=thread_name,
            daemon=True,  # never keeps the process alive; the exit hook drains it first
        )
        logger._accumulator.refill = self.refill
        # The flusher's end (a crash, or a cancellation from outside) stops the fast path first.
        flusher = logger._flusher
        on_end = flusher._on_end

        def on_flusher_end() -> None:
            with self.locked(closing=True):
                handoff.revoke()
                on_end()

        flusher._on_end = on_flusher_end

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        loop = self.loop
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
                if not self.done.done():  # start() failed, or the loop ended some other way
                    self.done.set_result(None)

    async def _serve(self) -> None:
        self._closing = asyncio.Event()
        try:
            await self.logger.start()
        except BaseException as exc:
            self.started.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.started.set_result(None)
        if self.close_requested.locked():
            self._closing.set()  # requested while starting, before the event existed
        await self._closing.wait()
        try:
            if self._timer is not None:
                self._timer.cancel()
            await self._take_everything()
            await self.logger._aclose_within(self.close_timeout)
        except BaseException as exc:
            self.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self.done.set_result(None)
        finally:
            with self.locked(closing=True):
                self.state = State.CLOSED

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    @contextlib.contextmanager
    def locked(self, *, closing: bool) -> Iterator[bool]:
        """The hand-off lock, on the loop thread, within LOCK_PATIENCE; yields whether it was taken.

        Not taken: a signal handler holds it (_sync.py, "Signals"). A routine drain then skips;
        the close goes on without it (``closing=True``): nothing else can append any more.
        """
        lock = self.handoff.lock
        taken = lock.acquire(timeout=LOCK_PATIENCE)
        if not taken and closing:
            log.warning("metricsbuf: the hand-off lock is held by a suspended thread; draining without it")
        try:
            yield taken
        finally:
            if taken:
                lock.release()

    # -- the drain ------------------------------------------------------------------------------

    def drain(self, *, from_timer: bool = False, closing: bool = False) -> None:
        """Moves the hand-off into the async logger; keeps the timer armed while points come."""
        handoff = self.handoff
        with self.locked(closing=closing) as taken:
            if not taken and not closing:
                self._schedule_timer()  # retried later
                return
            batch, rejected, dropped = handoff.take_all()
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
            if taken and not closing:
                handoff.top_up()
            again = False
            if closing:
                pass
            elif not self._timer_armed:  # idle: the next point wakes the loop
                handoff.wake_at = 1
                handoff.mark_wake(0)
                # A caller that took its token before the mark, and appends only now, wakes nobody:
                # look for its point, or keep the timer for it.
                if handoff.points:
                    again = True
                elif handoff.in_window() > 0:
                    self._timer_armed = arm = True
            elif len(self._queue) < self._batch:  # a sender will wait for the next full batch
                handoff.wake_at = self._batch
                handoff.mark_wake(self._batch - 1 - len(handoff.points))
                again = len(handoff.points) >= self._batch
            else:  # the senders have enough; each pulls the hand-off when it looks for more
                handoff.wake_at = NEVER
            if again:
                handoff.wake_at = NEVER
        for name, value in rejected:
            self._ledger.record_rejected(name, value)
        if arm and not closing:
            self._schedule_timer()
        if again:
            self.loop.call_soon(self._on_wake)

    async def _take_everything(self) -> None:
        """The close's drain: no more tokens; the points of tokens already taken land (within patience)."""
        with self.locked(closing=True):
            self.handoff.revoke()
        await self._let_tokens_land()
        self.drain(closing=True)

    async def _let_tokens_land(self) -> None:
        """After a revoke: waits (LOCK_PATIENCE at most) for callers holding tokens to append their points."""
        deadline = time.monotonic() + LOCK_PATIENCE
        # A poll, not an Event: the callers append without telling anyone (that is the point).
        while self.handoff.in_window() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_LANDING_POLL)

    def _schedule_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self._flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state is State.RUNNING:
            self.drain(from_timer=True)

    def _on_wake(self) -> None:
        if self.state is State.RUNNING:
            self.drain()

    def wake(self) -> None:
        """From any thread: the loop thread drains the hand-off soon."""
        try:
            self.loop.call_soon_threadsafe(self._on_wake)
        except RuntimeError:  # closed meanwhile; the close drained the hand-off
            pass

    def refill(self) -> None:
        """A sender looks for a batch (Accumulator.refill): it takes what the hand-off holds."""
        if self.state is not State.RUNNING:
            return
        handoff = self.handoff
        if handoff.points or handoff.rejected or handoff.dropped:
            self.drain()
        elif self._timer_armed and handoff.wake_at > self._batch and len(self._queue) < self._batch:
            # Nothing to take, and a sender is about to wait: the next full batch must wake it.
            # (No lock: a caller only ever sets NEVER, and then wakes the loop itself; a mark
            # placed while callers take tokens may land a token off, and the timer is armed.)
            handoff.wake_at = self._batch
            handoff.mark_wake(self._batch - 1)

    # -- calls the callers' threads could not decide ---------------------------------------------

    async def admit(self, points: list[Point]) -> None:
        """The async logger's own Intake.accept, once the hand-off is empty (the fast path is off)."""
        try:
            self.drain()  # first: keeps the order
            await self._let_tokens_land()
            self.drain()  # and makes ledger.held exact
            self.logger._check_running()
            await self._intake.accept(points)
        finally:
            self._slow_done()

    def admit_now(self, points: list[Point]) -> None:
        """``admit`` for code on the loop thread (on_failure), which cannot wait for the loop."""
        try:
            self.drain()
            deadline = time.monotonic() + LOCK_PATIENCE
            while self.handoff.in_window() > 0 and time.monotonic() < deadline:
                time.sleep(0)  # lets a thread holding a token append its point
            self.drain()
            self.logger._check_running()
            self._intake.accept_now(points)
        finally:
            self._slow_done()

    def _slow_done(self) -> None:
        with self.locked(closing=True):
            self.handoff.slow -= 1

    async def flush(self, timeout: float | None) -> None:
        self.drain()
        await self.logger.flush(timeout)

    def stats_now(self) -> MetricsStats:
        handoff = self.handoff
        with self.locked(closing=True):
            stats = self._ledger.stats()
            queued, dropped, rejected = len(handoff.points), handoff.dropped, len(handoff.rejected)
        return dataclasses.replace(
            stats,
            logged=stats.logged + queued + dropped,
            dropped=stats.dropped + dropped,
            rejected=stats.rejected + rejected,
            pending=stats.pending + queued,
        )

    # -- close ----------------------------------------------------------------------------------

    def request_close(self, timeout: float | None) -> concurrent.futures.Future[None]:
        """Starts the close once (never waits, never takes the hand-off lock: signal handlers call it)."""
        if self.close_requested.acquire(blocking=False):  # the first close only; never released
            if timeout is not None:
                self.close_timeout = timeout
            self.handoff.open = False  # no new locked appends; the close drain revokes the tokens
            if self.state in (State.STARTING, State.RUNNING):
                self.state = State.CLOSING
            try:
                self.loop.call_soon_threadsafe(self._start_closing)
            except RuntimeError:  # the loop already ended (start failed)
                pass
        return self.done

    def _start_closing(self) -> None:
        if self._closing is not None:
            self._closing.set()

    # -- reaching the loop thread from another ----------------------------------------------------

    def wait(self, future: concurrent.futures.Future[_T]) -> _T:
        """Waits for the loop thread's answer; if the thread ended without one, says so."""
        while True:
            done, _ = concurrent.futures.wait([future], timeout=_POLL)
            if done:
                return future.result()
            if not self.thread.is_alive() and not future.done():
                future.cancel()
                raise LoggerClosedError("the SyncMetricsLogger's thread has ended")

    def on_loop(self, fn: Callable[[], _T]) -> _T:
        """Runs ``fn`` on the loop thread (so it sees a consistent ledger); directly once it has ended."""
        if self.in_loop_thread() or not self.thread.is_alive():
            return fn()
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: the ledger is final
            return fn()
        while True:
            done, _ = concurrent.futures.wait([future], timeout=_POLL)
            if done:
                return future.result()
            if not self.thread.is_alive() and future.cancel():
                return fn()


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
