"""The ledger: the one place where a point's outcome is recorded.

Every point a logger accepts ends in exactly one of: delivered, failed (for good, with a
reason), dropped (by the ``on_full`` policy), or, with a spool, left on disk for the next
logger or ``metricsbuf sync``. Until then it is *held*. The counters here are the only copy
of those facts; everything else asks the ledger. A spool, when there is one, hears of each
outcome through the small :class:`OutcomeListener` protocol declared here, so the ledger
does not depend on the spool.

Whoever records an outcome does it before its next ``await``: counts are never stale across
a suspension point (a cancellation there cannot skew them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import anyio

from ._accumulator import HeldPoints
from ._buffer import Point
from ._models import MetricsStats
from ._reporting import FailureCallback, FailureReporter, log


class OutcomeListener(Protocol):
    """Hears of the outcomes of points that have a row in the spool (the spool coordinator)."""

    def delivered(self, points: list[Point]) -> None: ...

    def failed(self, points: list[Point], code: str, message: str, attempts: int) -> None: ...

    def dropped(self, point: Point) -> None: ...

    def leave_on_disk(self, count: int) -> None:
        """Points this logger stops trying; their rows stay pending for the next logger or `sync`."""

    def settled(self) -> None:
        """Some held points were settled: memory has room again."""

    @property
    def directory(self) -> object:
        """Where the spool is, for messages."""

    @property
    def pending_on_disk_only(self) -> int: ...

    @property
    def recovered(self) -> int: ...


class Ledger:
    """Counters, the held count, the failure reporter, and the signals that wait on them.

    ``held`` is read and written directly by the logger's fast path (one attribute, no call);
    every other change goes through a method. ``logged`` is not a counter of its own: it is
    derived from where the points are (see :attr:`logged`), so the fast path keeps one count.
    """

    __slots__ = (
        "delivered",
        "failed",
        "dropped",
        "rejected",
        "retried",
        "requests",
        "throttled",
        "held",
        "reporter",
        "listener",
        "trial_component",
        "_warned_non_finite",
        "_room",
        "_progress",
    )

    def __init__(self, trial_component: str, on_failure: FailureCallback | None) -> None:
        self.trial_component = trial_component  # for messages; set at start when found then
        self.delivered = self.failed = self.dropped = 0
        self.rejected = self.retried = self.requests = self.throttled = 0
        # Accepted and not yet settled: queued, in flight, waiting to be resent, or (with a
        # spool) staged or being written. Kept explicitly: the fast path compares it with
        # max_buffered at every call.
        self.held = 0
        self.reporter = FailureReporter(trial_component, on_failure)
        self.listener: OutcomeListener | None = None
        self._warned_non_finite: set[str] = set()
        self._room: anyio.Event | None = None  # wakes producers blocked on max_buffered
        self._progress: anyio.Event | None = None  # wakes flush() waiters

    # -- outcomes ---------------------------------------------------------------------------

    def accepted(self, count: int = 1) -> None:
        self.held += count

    def record_delivered(self, points: list[Point]) -> None:
        if points:
            self.delivered += len(points)
            if self.listener is not None:
                self.listener.delivered(points)
            self._settle(len(points))

    def record_failed(
        self,
        points: list[Point],
        code: str,
        message: str,
        attempts: int | list[int],
        *,
        in_spool: bool = True,
    ) -> None:
        """Points failed for good. ``attempts`` is one count for all, or one per point.

        With a spool they are kept there as dead letters, unless ``in_spool`` is false (they
        never reached it).
        """
        for count, same in by_attempts(points, attempts):
            self.failed += self.reporter.report(same, code, message, count)
            if in_spool and self.listener is not None:
                self.listener.failed(same, code, message, count)
            self._settle(len(same))

    def record_dropped_oldest(self, point: Point) -> None:
        """A held point dropped by on_full="drop_oldest" to make room."""
        self.dropped += 1
        if self.listener is not None:
            self.listener.dropped(point)  # its row goes too
        self._settle(1)

    def record_dropped_new(self) -> None:
        """A new point accepted and dropped at once by the on_full policy (it counts as logged)."""
        self.dropped += 1

    def record_rejected(self, name: str, value: object) -> None:
        """A non-finite value skipped under non_finite="drop" (not logged; warned once per name)."""
        self.rejected += 1
        if name not in self._warned_non_finite:
            self._warned_non_finite.add(name)
            log.warning(
                "metricsbuf: skipping non-finite value %r of metric %r (non_finite='drop'; "
                "counted in stats.rejected; warned once per metric name)",
                value,
                name,
            )

    def give_up(self, points: list[Point], code: str, message: str, attempts: int | list[int]) -> None:
        """A transient failure outlasted the retry budget.

        Without a spool the points fail for good. With one they stay pending on disk, for the
        next logger on the spool or ``metricsbuf sync``: an outage costs time, not points.
        """
        listener = self.listener
        if listener is None:
            self.record_failed(points, code, message, attempts)
            return
        for count, same in by_attempts(points, attempts):
            self.leave_on_disk(len(same))
            self.reporter.warnings.warn(
                "deferred:" + code,
                "metricsbuf: %d point(s) not delivered after %d attempt(s) (%s: %s); kept in the spool %s "
                "for the next logger on it or `metricsbuf sync`",
                len(same),
                count,
                code,
                message,
                listener.directory,
            )

    def leave_on_disk(self, count: int) -> None:
        """With a spool: ``count`` held points stay pending on disk (given up on, or held at close)."""
        if count:
            assert self.listener is not None
            self.listener.leave_on_disk(count)
            self._settle(count)

    def record_close_report(self, held: HeldPoints, code: str, message: str) -> None:
        """At close, without a spool: everything still held fails with ``code``."""
        self.record_failed(held.queued, code, message, 0)
        for batch in held.batches:
            ambiguous = (
                " (a request for it got no definite answer, so the service may have stored it)"
                if batch.maybe_stored
                else ""
            )
            self.record_failed(batch.points, code, message + ambiguous, batch.attempts)
        for attempts, point in held.resends:
            self.record_failed([point], code, message + " (waiting to be resent)", attempts)

    # -- waiting on outcomes --------------------------------------------------------------------

    def room_changed(self) -> anyio.Event:
        """An event set when held points are settled (a producer waits on it for room)."""
        if self._room is None:
            self._room = anyio.Event()
        return self._room

    def progress(self) -> anyio.Event:
        """An event set at the next outcome (flush() waits on it)."""
        if self._progress is None:
            self._progress = anyio.Event()
        return self._progress

    def notify_room(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    def notify_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    def wake_all(self) -> None:
        """Wakes every waiter (close, or the flusher died): each checks why for itself."""
        self.notify_room()
        self.notify_progress()

    def _settle(self, count: int) -> None:
        self.held -= count
        if self.listener is not None:
            self.listener.settled()  # the spooler records it on disk soon, or loads more
        self.notify_room()
        self.notify_progress()

    # -- reading --------------------------------------------------------------------------------

    @property
    def logged(self) -> int:
        """Every point accepted: each is delivered, failed, dropped or pending (held, or on disk only).

        That is the accounting invariant of ``stats``, so it is computed rather than counted.
        """
        return self.delivered + self.failed + self.dropped + self.pending

    @property
    def pending(self) -> int:
        """Held, or (with a spool) on disk only: not settled yet."""
        return self.held + (self.listener.pending_on_disk_only if self.listener is not None else 0)

    def log_summary(self) -> None:
        """One line at close: a warning if anything failed or was dropped."""
        stats = self.stats()
        # Throttling costs no point, but says the account's limit is near (README, "Many writers").
        throttled = f"; {stats.throttled} of {stats.requests} requests throttled" if stats.throttled else ""
        if stats.failed or stats.dropped:
            log.warning(
                "metricsbuf: closed trial component %r: %d logged, %d delivered, %d failed %s, %d dropped%s",
                self.trial_component,
                stats.logged,
                stats.delivered,
                stats.failed,
                self.reporter.by_code,
                stats.dropped,
                throttled,
            )
        else:
            log.info(
                "metricsbuf: closed trial component %r: %d logged, %d delivered%s",
                self.trial_component,
                stats.logged,
                stats.delivered,
                throttled,
            )

    def stats(self) -> MetricsStats:
        listener = self.listener
        return MetricsStats(
            logged=self.logged,
            delivered=self.delivered,
            failed=self.failed,
            dropped=self.dropped,
            rejected=self.rejected,
            retried=self.retried,
            requests=self.requests,
            pending=self.pending,
            recovered=listener.recovered if listener is not None else 0,
            throttled=self.throttled,
        )


def by_attempts(points: list[Point], attempts: int | list[int]) -> Iterable[tuple[int, list[Point]]]:
    """Groups points by their attempt count (one count for all, or one per point)."""
    if not isinstance(attempts, list):
        if points:
            yield attempts, points
        return
    for count in sorted(set(attempts)):
        yield count, [p for p, a in zip(points, attempts, strict=True) if a == count]
