"""How a logger with ``spool_dir`` moves points through the on-disk spool.

    log() ──► staged (memory, a list) ──commit every spool_interval, or before a batch is sent──►
              spool rows ──► memory queue (while it has room) ──► sent ──► row deleted
                        └──► "backlog": rows only on disk, loaded in id order as the queue drains

Every point is on disk before it is sent, so a crash loses at most the points staged in the
last ``spool_interval``. Points are identified by their row id, which this coordinator
assigns in logged order (the spool's AUTOINCREMENT, checked after each commit); so
"logged before" is "smaller id", which is what ``flush()`` waits on.

All spool I/O runs in a worker thread, one call at a time (a CapacityLimiter of 1), and only
from the flusher task or the final drain, never from ``log()``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from ._buffer import LOGGED_AT, Point, PointQueue
from ._models import SPOOL_CORRUPT
from ._spool import Spool, SpoolError

# Index of the row id and the trial component in a spooled point tuple (after the 5 fields of Point).
ROW_ID = 5
TRIAL_COMPONENT = 6

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
        spool_interval: float,
        max_spool_bytes: int,
        memory_capacity: int,
        offline: bool,
    ) -> None:
        self.directory = directory
        self.trial_component = trial_component
        self.spool_interval = spool_interval
        self.max_spool_bytes = max_spool_bytes
        self.memory_capacity = memory_capacity  # queue + in flight, in points
        self.offline = offline
        self.spool: Spool | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._stream_id = 0

        self.staged: list[Point] = []  # logged, not yet on disk; ids next_id - len(staged) ... next_id - 1
        self.next_id = 1
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

    # -- setup and teardown ----------------------------------------------------------------

    async def open(self) -> None:
        """Opens and locks the spool; counts what a previous run left."""
        self.spool = spool = await self._run(Spool.open, self.directory)
        try:
            self.recovered = self.backlog = await self._run(spool.count_pending)
            self.next_id = await self._run(spool.next_row_id)
            self.used_bytes = await self._run(spool.used_bytes)
            self.full = self.used_bytes >= self.max_spool_bytes
        except BaseException:
            await self._run(spool.close)
            self.spool = None
            raise

    async def close(self) -> None:
        if self.spool is not None:
            spool, self.spool = self.spool, None
            await self._run(spool.close)

    # -- the logger's hooks ------------------------------------------------------------------

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

    def first_unsettled_id(self, queue: PointQueue, groups_first_ids: list[int]) -> int:
        """The smallest id this logger still has to deliver in this run (``next_id`` if none)."""
        candidates = [self.next_id - len(self.staged)] if self.staged else []
        if self._committing_from is not None:
            candidates.append(self._committing_from)
        if self.backlog:
            candidates.append(self.cursor + 1)
        head = queue.peek()
        if head is not None:
            candidates.append(head[ROW_ID])
        candidates.extend(groups_first_ids)
        return min(candidates, default=self.next_id)

    def seconds_until_commit(
        self, now: float, urgent: bool, queue: PointQueue, in_memory: int, max_batch_size: int
    ) -> float | None:
        """When the next commit (or backlog load) is due; None when there is nothing to do.

        ``in_memory`` counts the points in the queue and in flight.
        """
        due: float | None = None
        if self.staged:
            if urgent or in_memory + len(self.staged) >= self.memory_capacity:
                return 0.0  # flush/close, or memory is full: write, so staged points can leave memory
            if not self.offline and len(queue) < max_batch_size <= len(queue) + len(self.staged):
                return 0.0  # a full batch is waiting to be sent: write it first
            due = max(0.0, self.staged[0][LOGGED_AT] + self.spool_interval - now)
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
        staged, self.staged = self.staged, []
        deletes, self._delete_ids = self._delete_ids, []
        dead, self._dead = self._dead, []
        self._unsettled_since = None
        expected_last = self.next_id - 1  # ids are assigned in staging order
        if staged:
            self._committing_from = expected_last - len(staged) + 1
            self.committing = len(staged)
        try:
            last_id, self.used_bytes = await self._run(self._commit, staged, deletes, dead, expected_last)
            self.full = self.used_bytes >= self.max_spool_bytes
        except BaseException:
            # Nothing was written: keep everything for the next attempt (or the final report).
            self.staged = staged + self.staged
            self._delete_ids = deletes + self._delete_ids
            self._dead = dead + self._dead
            raise
        finally:
            self._committing_from = None
            self.committing = 0
        moved = 0
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

    async def final_commit(self) -> None:
        """At close: writes what is staged (it stays on disk, pending), deletions and dead letters."""
        assert self.spool is not None
        staged = self.staged
        deletes, self._delete_ids = self._delete_ids, []
        dead, self._dead = self._dead, []
        expected_last = self.next_id - 1
        _, self.used_bytes = await self._run(self._commit, staged, deletes, dead, expected_last)
        self.staged = []
        self.left_on_disk += len(staged)

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
        def call() -> Any:
            return function(*args, **kwargs)

        # Not abandoned on cancellation: a transaction in progress always completes.
        return await anyio.to_thread.run_sync(call, limiter=self._limiter)
