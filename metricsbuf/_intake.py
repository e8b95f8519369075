"""Intake: how a point is taken in, after ``log()`` has checked it may be called at all.

It validates the point (the service's rules, in _validation.py), applies ``max_buffered`` and
the ``on_full`` policy, and puts the accepted point where accepted points go: the
accumulator's queue, or with a spool its staging area (the point is written to disk before it
may be sent). That choice is made once, here. ``log()``'s fast path does the same as
:meth:`Intake.enqueue` inline, reading ``points`` and ``known_names`` directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from . import _validation as v
from ._accumulator import Accumulator
from ._buffer import NAME, Point
from ._exceptions import BufferFullError, InvalidMetricError
from ._ledger import Ledger
from ._options import LoggerOptions
from ._spooling import SpoolCoordinator

# Beyond this many distinct names, new names are validated at every call instead of cached.
NAME_CACHE_LIMIT = 10_000


class Intake:
    """Validation, max_buffered and on_full for one logger's points."""

    def __init__(
        self,
        options: LoggerOptions,
        ledger: Ledger,
        accumulator: Accumulator,
        spool: SpoolCoordinator | None,
        check_accepting: Callable[[], None],
    ) -> None:
        self._ledger = ledger
        self._accumulator = accumulator
        self._spool = spool
        self._check_accepting = check_accepting  # raises if the logger stopped taking points
        self.max_batch_size = options.max_batch_size
        self.max_buffered = options.max_buffered
        self._on_full = options.on_full
        self._drop_non_finite = options.non_finite == "drop"
        self.known_names: set[str] = set()  # names already checked
        # Where an accepted point goes, and whom to wake when it is the first one there or
        # completes a batch.
        if spool is None:
            self.points = accumulator.queue.points
            self.wake: Callable[[], None] = accumulator.wake
        else:
            self.points = spool.staging
            self.wake = spool.wake

    # -- positions (flush) -------------------------------------------------------------------

    def next_position(self) -> int:
        """The position the next accepted point will take: a sequence number, or a row id with a spool."""
        return self._spool.next_id if self._spool is not None else self._accumulator.queue.appended

    def hurry(self, position: int) -> None:
        """Points before ``position`` leave at once: partial batches go, staged points are written."""
        self._accumulator.hurry(position)
        if self._spool is not None:
            self._spool.wake()

    def settled_before(self, position: int) -> bool:
        """Whether every point accepted before ``position`` is settled."""
        if self._accumulator.head_position() < position:
            return False  # the cheap, usual answer while a backlog drains: no need to scan the rest
        if self._spool is not None:
            return self._spool.first_unsettled_id() >= position
        return self._accumulator.first_unsettled() >= position

    # -- points --------------------------------------------------------------------------

    def make_point(self, name: Any, value: Any, step: Any, timestamp: Any, now: float) -> Point | None:
        """Validates one point; returns it as a tuple, or None for a non-finite value under "drop".

        Records nothing: the caller counts a None as rejected once the whole call is valid.
        """
        if type(name) is not str or name not in self.known_names:
            v.check_name(name)
            if len(self.known_names) < NAME_CACHE_LIMIT:
                self.known_names.add(name)
        if type(value) is not float:
            value = v.coerce_value(name, value)
        if not math.isfinite(value):
            if not self._drop_non_finite:
                raise InvalidMetricError(f"value of metric {name!r} is not finite: {value!r}")
            return None
        if step is not None and (type(step) is not int or not 0 <= step <= v.MAX_STEP):
            step = v.coerce_step(name, step)
        if timestamp is None:
            return (name, value, step, now, now)
        return (name, value, step, v.coerce_timestamp(name, timestamp, now), now)

    def make_points(self, metrics: Any, step: Any, timestamp: Any, now: float) -> list[Point]:
        """Validates every point of a ``log_many`` call; returns those to accept.

        All or nothing: raises InvalidMetricError at the first invalid one, and only then,
        with every point valid, counts the non-finite ones skipped under ``non_finite="drop"``.
        """
        if not isinstance(metrics, Mapping):
            kind = type(metrics).__name__
            raise InvalidMetricError(f"log_many takes a mapping of name to value, got {kind}")
        points: list[Point] = []
        non_finite: list[tuple[str, Any]] = []
        for name, value in metrics.items():
            point = self.make_point(name, value, step, timestamp, now)
            if point is None:
                non_finite.append((name, value))
            else:
                points.append(point)
        for name, value in non_finite:
            self._ledger.record_rejected(name, value)
        return points

    def enqueue(self, point: Point) -> None:
        """Counts a valid point as logged and puts it where accepted points go."""
        self._ledger.accepted()
        points = self.points
        points.append(point)
        if len(points) == self.max_batch_size:
            # A full batch. The first point of one needs no wake-up: the sender (or spooler)
            # waiting for points looks again on its own at least every flush_interval
            # (spool_interval), in time for the point's batch to leave when it is due.
            self.wake()

    # -- the synchronous logger's hand-off (SyncMetricsLogger, _sync.py): called on the loop thread

    def enqueue_all(self, points: list[Point]) -> None:
        """Counts valid points as logged and queues them in order; max_buffered was applied by the caller."""
        self._ledger.accepted(len(points))
        self.points.extend(points)
        self.wake()

    def record_dropped_new(self, count: int) -> None:
        """``count`` new points dropped by on_full="drop_newest" before they were queued (logged, dropped)."""
        for _ in range(count):
            self._ledger.record_dropped_new()
        self._warn_dropped(self._on_full)

    def accept_now(self, points: list[Point]) -> None:
        """:meth:`accept` for a caller that must not wait (code on the logger's own thread).

        All or nothing under "block" and "raise": BufferFullError when the points do not fit now.
        """
        count = len(points)
        if self._ledger.held + count <= self.max_buffered or self._spill_to_disk(count):
            for point in points:
                self.enqueue(point)
        elif self._on_full in ("block", "raise"):
            raise BufferFullError(
                f"{self._ledger.held} points held (max_buffered={self.max_buffered}); none of the "
                f"{count} points {', '.join(repr(p[NAME]) for p in points)} was logged (on_full="
                f"{self._on_full!r}, called from the logger's own thread, which cannot wait)"
            )
        else:
            for point in points:
                self.accept_nowait(point)

    async def accept(self, points: list[Point]) -> None:
        """Queues valid points, first applying max_buffered: spill to disk, wait for room, or on_full.

        Under "block" and "raise" it takes all the points or none.
        """
        count = len(points)
        ledger = self._ledger
        while ledger.held + count > self.max_buffered and not self._spill_to_disk(count):
            if count > self.max_buffered:
                raise BufferFullError(
                    f"{count} points in one call can never fit max_buffered={self.max_buffered}; "
                    "none of them was logged"
                )
            if self._on_full == "block" or (self._spool is not None and not self._spool.full):
                # With a spool that has room, a full memory waits for the next commit (milliseconds),
                # whatever on_full says. Checked again after each wake-up: the spool may fill meanwhile.
                await ledger.room_changed().wait()
                self._check_accepting()
                continue
            if self._on_full == "raise":
                if count == 1:
                    self._make_room(points[0])  # raises, with the point's name
                raise BufferFullError(
                    f"{ledger.held} points held (max_buffered={self.max_buffered}); none of the "
                    f"{count} points {', '.join(repr(p[NAME]) for p in points)} was logged (on_full='raise')"
                )
            for point in points:  # the drop policies decide point by point, each drop counted
                self.accept_nowait(point)
            return
        for point in points:
            self.enqueue(point)

    def accept_nowait(self, point: Point) -> None:
        """Queues a valid point without waiting; a full buffer applies on_full ("block" raises)."""
        if self._ledger.held < self.max_buffered or self._spill_to_disk(1) or self._make_room(point):
            self.enqueue(point)

    def _spill_to_disk(self, count: int) -> bool:
        """Whether a spool takes ``count`` more points past max_buffered (SpoolCoordinator.can_spill)."""
        return self._spool is not None and self._spool.can_spill(count)

    def _make_room(self, point: Point) -> bool:
        """Applies a non-blocking on_full policy when max_buffered points are held.

        Returns True when the new point may be enqueued.
        """
        policy = self._on_full
        ledger = self._ledger
        if policy == "raise" or policy == "block":  # "block" reaches here only from log_nowait
            raise BufferFullError(
                f"{ledger.held} points held (max_buffered={self.max_buffered}); "
                f"point {point[NAME]!r} was not logged (on_full={policy!r})"
            )
        if policy == "drop_oldest":
            oldest = self._accumulator.pop_oldest()
            if oldest is not None:
                ledger.record_dropped_oldest(oldest)
                self._warn_dropped(policy)
                return True
        # drop_newest, or drop_oldest with every held point already in flight: the new point
        # is accepted and dropped at once, so it still counts as logged.
        ledger.record_dropped_new()
        self._warn_dropped(policy)
        return False

    def _warn_dropped(self, policy: str) -> None:
        self._ledger.reporter.warnings.warn(
            "dropped",
            "metricsbuf: buffer full (max_buffered=%d), dropping points (on_full=%r); %d dropped so far",
            self.max_buffered,
            policy,
            self._ledger.dropped,
        )
