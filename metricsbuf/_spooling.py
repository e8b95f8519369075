"""Spooling: everything that moves a logger's points between memory and the on-disk spool.

    log() ──► staging (memory) ──commit every spool_interval, or before a batch is sent──►
              spool rows ──► memory queue (while it has room) ──► sent ──► row deleted
                        └──► "backlog": rows only on disk, loaded in id order as the queue drains

Every point is on disk before it is sent, so a crash loses at most the points staged in the
last ``spool_interval``. Points are identified by their row id, which this coordinator
assigns in logged order (the spool's AUTOINCREMENT, checked after each commit); so
"logged before" is "smaller id", which is what ``flush()`` waits on.

All spool I/O runs in one worker thread of the spool's own, one call at a time, and only
from the spooler task or the final drain, never from ``log()``. The coordinator hears of each
point's outcome from the ledger (it is the ledger's OutcomeListener) and records it on disk.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio

from ._accumulator import Accumulator
from ._buffer import LOGGED_AT, ROW_ID, Point, PointQueue
from ._ledger import Ledger
from ._models import SPOOL_CORRUPT, SPOOL_ERROR
from ._options import LoggerOptions
from ._reporting import log
from ._shielding import rearm_cancellation, wait_through_cancellation
from ._spool import Spool, SpoolError

# Rows loaded from the backlog per read, at most.
_LOAD_CHUNK = 5_000
# Deliveries and dead letters are recorded on disk this soon after they happen (grouped): a
# crash in between makes the next logger resend them, so the window is kept short.
_SETTLE_DELAY = 0.01


class SpoolCoordinator:
    """Owns the spool of one logger: staging, commits, acks, dead letters and the backlog."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        trial_component: str,
        options: LoggerOptions,
        ledger: Ledger,
        accumulator: Accumulator,
    ) -> None:
        self.directory = directory
        self.trial_component = trial_component
        self.spool_interval = options.spool_interval
        self.max_spool_bytes = options.max_spool_bytes
        self.memory_capacity = options.max_buffered  # queue + in flight, in points
        self.offline = options.offline
        self._on_full = options.on_full
        self._ledger = ledger
        self._accumulator = accumulator
        self.spool: Spool | None = None
        self.wakeup: anyio.Event | None = None  # wakes the spooler task
        # One thread does every spool call, in order (a plain future, which no task
        # cancellation can abandon half-way; see _run).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metricsbuf-spool")
        self._stream_id = 0

        # Logged, not yet on disk. The logger's fast path appends here; the points take the
        # ids _first_staged_id, _first_staged_id + 1, ... in order (next_id is the one after).
        self.staging: deque[Point] = deque()
        self._first_staged_id = 1
        self.cursor = 0  # every pending row with an id <= cursor is in memory (or settled)
        self.backlog = 0  # pending rows with an id > cursor: on disk only
        self.left_on_disk = 0  # rows this logger stopped trying (deferred, or still held at close)
        self.recovered = 0  # pending rows found at start
        self.full = False  # the spool holds max_spool_bytes or more
        self.used_bytes = 0
        self._delete_ids: list[int] = []
        self._dead: list[tuple[str, str, int, int]] = []
        # Malformed rows read from the backlog, with what is wrong: the logger fails them.
        self.malformed: list[tuple[Any, str]] = []
        self._unsettled_since: float | None = None  # when the oldest pending ack/dead letter arrived
        self._committing_from: int | None = None  # first id of the points being written right now
        self.committing = 0  # how many points are being written right now
        # Set by the final commit at close. A commit that outlived the close deadline and
        # finishes later moves nothing: the close already counted its points as left on disk.
        self.finalized = False

    # -- setup and teardown ----------------------------------------------------------------

    async def open(self) -> None:
        """Opens and locks the spool; counts what a previous run left."""
        try:
            self.spool = await self._run(Spool.open, self.directory)
            self.recovered = self.backlog = await self._run(self.spool.count_pending)
            self._first_staged_id = await self._run(self.spool.next_row_id)
            self.used_bytes = await self._run(self.spool.used_bytes)
            self.full = self.used_bytes >= self.max_spool_bytes
        except BaseException:
            await self.close()  # the lock and the thread are released
            raise
        # A previous run's leftovers count as logged: they are pending on disk (ledger.logged).
        if self.recovered:
            log.info(
                "metricsbuf: %d undelivered points from a previous run found in the spool %s; "
                "sending them first",
                self.recovered,
                self.directory,
            )

    async def close(self) -> None:
        if self.spool is not None:
            spool, self.spool = self.spool, None
            await self._run(spool.close)
        self._executor.shutdown(wait=False)

    # -- intake (the logger) -----------------------------------------------------------------

    @property
    def next_id(self) -> int:
        """The id the next point logged will get."""
        return self._first_staged_id + len(self.staging)

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()

    def can_spill(self, count: int) -> bool:
        """Whether ``count`` points past max_buffered may still be taken: they will wait on disk.

        True when the spool has room (below max_spool_bytes) and the points staged since the
        last commit (with those being written), plus ``count``, are at most max_buffered; the
        spooler is woken to commit now. So memory holds at most max_buffered points queued or
        in flight, plus as many on their way to disk.
        """
        if self.full or len(self.staging) + self.committing + count > self.memory_capacity:
            return False
        self.wake()
        return True

    # -- outcomes (the ledger's OutcomeListener) ------------------------------------------------

    def settled(self) -> None:
        self.wake()  # the spooler records it on disk soon, or loads more backlog

    def delivered(self, points: list[Any]) -> None:
        self._delete_ids.extend(p[ROW_ID] for p in points)
        self._note_unsettled()

    def dropped(self, point: Any) -> None:
        self._delete_ids.append(point[ROW_ID])
        self._note_unsettled()

    def failed(self, points: list[Any], code: str, message: str, attempts: int) -> None:
        self._dead.extend((code, message, attempts, p[ROW_ID]) for p in points)
        self._note_unsettled()

    def take_malformed(self) -> list[tuple[Any, str, str]]:
        """The malformed rows loaded since the last call, as (point, code, message) to fail."""
        malformed, self.malformed = self.malformed, []
        return [(point, SPOOL_CORRUPT, problem) for point, problem in malformed]

    def leave_on_disk(self, count: int) -> None:
        """Points this logger stops trying; their rows stay pending for the next logger or `sync`."""
        self.left_on_disk += count

    def _note_unsettled(self) -> None:
        if self._unsettled_since is None:
            self._unsettled_since = time.time()

    @property
    def busy(self) -> bool:
        """A commit is writing points right now (they are in neither the staging list nor the queue)."""
        return self._committing_from is not None

    @property
    def pending_on_disk_only(self) -> int:
        return self.backlog + self.left_on_disk

    @property
    def nothing_left_to_send(self) -> bool:
        """Nothing staged, being written, or (online) waiting on disk to be loaded."""
        return not self.staging and not self.busy and (self.offline or self.backlog == 0)

    def first_unsettled_id(self) -> int:
        """The smallest id this logger still has to deliver in this run (``next_id`` if none)."""
        candidates = [self._first_staged_id] if self.staging else []
        if self._committing_from is not None:
            candidates.append(self._committing_from)
        if self.backlog and not self.offline:  # offline, a row on disk is as far as a point goes
            candidates.append(self.cursor + 1)
        head = self._accumulator.queue.peek()
        if head is not None:
            candidates.append(head[ROW_ID])
        candidates.extend(self._accumulator.held_positions())
        return min(candidates, default=self.next_id)

    def seconds_until_commit(
        self, now: float, urgent: bool, queue: PointQueue, in_memory: int, max_batch_size: int
    ) -> float | None:
        """When the next commit (or backlog load) is due; None when there is nothing to do.

        ``in_memory`` counts the points in the queue and in flight.
        """
        due: float | None = None
        staging = self.staging
        if staging:
            if urgent or in_memory + len(staging) >= self.memory_capacity:
                return 0.0  # flush/close, or memory is full: write, so staged points can leave memory
            if not self.offline and len(queue) < max_batch_size <= len(queue) + len(staging):
                return 0.0  # a full batch is waiting to be sent: write it first
            due = max(0.0, staging[0][LOGGED_AT] + self.spool_interval - now)
        if self._unsettled_since is not None:
            delay = min(self.spool_interval, _SETTLE_DELAY)
            settle = 0.0 if urgent else max(0.0, self._unsettled_since + delay - now)
            due = settle if due is None else min(due, settle)
        if self.backlog and not self.offline and self._wants_more(queue, in_memory, max_batch_size):
            return 0.0
        return due

    def _wants_more(self, queue: PointQueue, in_memory: int, max_batch_size: int) -> bool:
        """Load more backlog when the queue runs low and memory has room."""
        return (
            len(queue) < max(4 * max_batch_size, self.memory_capacity // 4)
            and in_memory < self.memory_capacity
        )

    async def commit(self, queue: PointQueue, in_flight: Callable[[], int]) -> tuple[int, int]:
        """Writes staged points, deletions and dead letters; moves what fits into ``queue``.

        ``in_flight()`` counts the points in flight or waiting for a retry (asked after the
        write, since it changes meanwhile). Returns (points committed, of them moved into the
        queue). Raises SpoolError.
        """
        assert self.spool is not None
        first_id = self._first_staged_id
        staged = self._take_staged()
        deletes, self._delete_ids = self._delete_ids, []
        dead, self._dead = self._dead, []
        self._unsettled_since = None
        expected_last = first_id + len(staged) - 1  # ids are assigned in staging order
        if staged:
            self._committing_from = first_id
            self.committing = len(staged)
        try:
            last_id, self.used_bytes = await self._run(self._commit, staged, deletes, dead, expected_last)
            self.full = self.used_bytes >= self.max_spool_bytes
        except BaseException:
            # Nothing was written: keep everything for the next attempt (or the final report).
            self.staging.extendleft(reversed(staged))
            self._first_staged_id = first_id
            self._delete_ids = deletes + self._delete_ids
            self._dead = dead + self._dead
            raise
        finally:
            self._committing_from = None
            self.committing = 0
        moved = 0
        if self.finalized:
            return len(staged), 0
        if staged:
            first_id = last_id - len(staged) + 1
            room = self.memory_capacity - len(queue) - in_flight()
            if self.offline:
                self.left_on_disk += len(staged)  # offline: written is as far as they go
            elif self.backlog or room < len(staged):
                self.backlog += len(staged)  # they wait on disk; the queue is full or behind
            else:
                tc = self.trial_component
                for offset, point in enumerate(staged):
                    queue.append((*point, first_id + offset, tc))
                self.cursor = last_id
                moved = len(staged)
        return len(staged), moved

    async def load_backlog(self, queue: PointQueue, in_flight: int, max_batch_size: int) -> int:
        """Moves backlog rows into ``queue`` when it runs low and memory has room; returns how many.

        Malformed rows go to ``malformed`` instead (not counted in the result): the caller takes
        them and fails them, so they become dead letters.
        """
        if (
            not self.backlog
            or self.offline
            or not self._wants_more(queue, len(queue) + in_flight, max_batch_size)
        ):
            return 0
        room = self.memory_capacity - len(queue) - in_flight
        return await self._load(queue, min(room, _LOAD_CHUNK)) if room > 0 else 0

    def _take_staged(self) -> list[Point]:
        """Empties the staging area; its points now have their ids (the next ones are counted on)."""
        staged = list(self.staging)
        self.staging.clear()
        self._first_staged_id += len(staged)
        return staged

    async def _final_commit(self) -> None:
        """At close: writes what is staged (it stays on disk, pending), deletions and dead letters.

        From here on the close accounts for every point still held (see ``finalized``). Raises
        SpoolError; then the staged points are back in ``staging``.
        """
        assert self.spool is not None
        self.finalized = True
        first_id = self._first_staged_id
        staged = self._take_staged()
        deletes, self._delete_ids = self._delete_ids, []
        dead, self._dead = self._dead, []
        try:
            _, self.used_bytes = await self._run(
                self._commit, staged, deletes, dead, first_id + len(staged) - 1
            )
        except SpoolError:
            self.staging.extendleft(reversed(staged))
            self._first_staged_id = first_id
            raise

    async def drain_to_disk(self) -> SpoolError | None:
        """At close: what was not delivered stays on disk; nothing is failed for time.

        Writes what is staged; every point still held then counts as left on disk (the queued,
        in-flight and resend ones were written before, and so were those of a commit that
        outlived the close deadline). Points that could not be written fail with SPOOL_ERROR;
        returns that error.
        """
        error: SpoolError | None = None
        try:
            await self._final_commit()  # completes even if cancelled (see _run)
        except SpoolError as exc:
            error = exc
            lost = self._take_staged()
            self._ledger.record_failed(
                lost, SPOOL_ERROR, f"could not be written to the spool: {exc}", 0, in_spool=False
            )
        self._accumulator.take_all_held()
        self._ledger.leave_on_disk(self._ledger.held)
        return error

    # -- the spooler task -------------------------------------------------------------------

    async def run_spooler(self, closing: Callable[[], bool]) -> None:
        """Commits staged points, deliveries and dead letters; loads the backlog as the queue drains.

        A task of its own (in the logger's flusher), so that disk I/O never waits behind
        in-flight slots (an outage holds them all) and batches never wait behind the disk.
        ``closing()`` tells whether the logger is closing.
        """
        accumulator = self._accumulator
        while True:
            is_closing = closing()
            if is_closing and self.nothing_left_to_send:
                return  # what is left (deliveries, dead letters) is written by the final commit
            urgent = is_closing or (
                bool(self.staging) and accumulator.urgent_position > self._first_staged_id
            )
            in_memory = self._ledger.held - len(self.staging)
            delay = self.seconds_until_commit(
                time.time(), urgent, accumulator.queue, in_memory, accumulator.max_batch_size
            )
            if delay == 0.0:
                await self._commit_and_load()
                accumulator.wake()  # new points in the queue, perhaps
                continue
            if delay is None:
                delay = self.spool_interval  # nothing due: look again then (see Intake.enqueue)
            self.wakeup = wakeup = anyio.Event()
            with anyio.move_on_after(delay):
                await wakeup.wait()

    async def _commit_and_load(self) -> None:
        """Writes staged points, deletions and dead letters; staged points then leave memory or queue up."""
        ledger = self._ledger
        queue = self._accumulator.queue

        def in_flight() -> int:  # in the sender's slots: neither staged, being written, nor queued
            return ledger.held - len(self.staging) - self.committing - len(queue)

        committed, moved = await self.commit(queue, in_flight)
        if self.finalized:
            return  # finished after the close deadline: the close counted these points
        # Accounted before the next await, so a cancellation there cannot skew the counts.
        ledger.held += moved - committed
        if committed or self.full:
            # Room in the staging area, or the spool became full: a producer waiting for room
            # checks again (and applies on_full if the spool can take no more).
            ledger.notify_room()
        ledger.notify_progress()  # offline, a commit settles points
        loaded = await self.load_backlog(queue, in_flight(), self._accumulator.max_batch_size)
        ledger.held += loaded  # not `held += await ...`: that reads held before the await
        for point, code, problem in self.take_malformed():
            # A malformed row read from the backlog: held for a moment, then failed (a dead letter).
            ledger.held += 1
            ledger.record_failed([point], code, problem, 0)
        if self.full:
            ledger.reporter.warnings.warn(
                "spool-full",
                "metricsbuf: the spool %s holds %d bytes (max_spool_bytes=%d); "
                "on_full=%r applies to new points",
                self.directory,
                self.used_bytes,
                self.max_spool_bytes,
                self._on_full,
            )

    def _commit(
        self,
        staged: list[Point],
        deletes: list[int],
        dead: list[tuple[str, str, int, int]],
        expected_last: int,
    ) -> tuple[int, int]:
        """Runs in the worker thread."""
        assert self.spool is not None
        if staged and not self._stream_id:
            self._stream_id = self.spool.stream_id(self.trial_component)  # created on first use
        last_id = self.spool.commit(
            stream_id=self._stream_id,
            new_points=staged,
            delivered_ids=deletes,
            dead=dead,
        )
        if staged and last_id != expected_last:
            raise SpoolError(
                f"the spool {self.spool.path} assigned ids up to {last_id}, expected {expected_last}: "
                "is another program writing to it?"
            )
        return last_id, self.spool.used_bytes()

    async def _load(self, queue: PointQueue, limit: int) -> int:
        assert self.spool is not None
        rows = await self._run(self.spool.load, after_id=self.cursor, limit=limit)
        now = time.time()  # delivery_timeout counts from when a point is loaded for sending
        queued = 0
        for row in rows:
            point = (row.name, row.value, row.step, row.timestamp, now, row.id, row.trial_component)
            if row.problem is None:
                queue.append(point)
                queued += 1
            else:
                self.malformed.append((point, row.problem))  # never sent; the logger fails it
        if rows:
            self.cursor = rows[-1].id
        self.backlog -= len(rows)
        if len(rows) < limit:
            self.backlog = 0  # reached the end (rows may have been deleted meanwhile)
        return queued

    async def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs one spool call in the spool's thread, one at a time, in call order.

        Never abandoned on cancellation, not even on a second or third one: the call always
        completes and its result is returned, so that what it wrote is recorded (a commit
        that was written but looked failed would be written again). A cancellation that
        arrived meanwhile is raised again at the caller's next await.
        """
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs)
        )
        if await wait_through_cancellation(future):
            rearm_cancellation()
        return future.result()
