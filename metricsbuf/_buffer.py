"""The in-memory queue of points waiting to be sent: pure batching logic, no I/O.

Points are plain tuples (cheap to build on the hot path, about 150 bytes each with their
floats). Every point accepted gets a sequence number, implicitly: the queue is FIFO and
only ever loses points from its head, so the head's number is the count of points removed
so far, and the next point's is that plus ``len(queue)``. A batch taken from the head
therefore covers a contiguous range of sequence numbers, which is what lets ``flush()``
wait for "everything logged before this call" without tagging each point.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final, TypeAlias

# (name: str, value: float, step: int | None, timestamp: epoch seconds, logged_at: epoch seconds),
# followed, for a point read from or written to a spool, by (row id: int, trial component: str).
# Typed loosely because of that optional tail; the index constants below name the fields.
# logged_at is read from the same wall clock as a default timestamp (the same float object, so
# it costs no memory): one clock read per point. The timers built on it (flush_interval,
# delivery_timeout) are therefore wall-clock timers; a clock step shifts them by its size.
Point: TypeAlias = "tuple[Any, ...]"
NAME: Final = 0
VALUE: Final = 1
STEP: Final = 2
TIMESTAMP: Final = 3
LOGGED_AT: Final = 4
# Only in a point that has a row in the spool (loaded from it, or moved into the queue after
# its commit): its row id, which is also its position in logged order, and its trial component.
ROW_ID: Final = 5
TRIAL_COMPONENT: Final = 6


class PointQueue:
    """FIFO of points with the batching decisions of the flusher."""

    __slots__ = ("points", "append", "head_seq", "max_batch_size", "flush_interval")

    def __init__(self, max_batch_size: int, flush_interval: float) -> None:
        # The deque itself. Outside this class only the logger's hot path touches it: it
        # appends at the tail and takes len() without a Python-level call (PointQueue.__len__
        # cost ~25% of a log() call). Everything else goes through the methods below.
        self.points: deque[Point] = deque()
        self.append = self.points.append  # adds a point at the tail
        self.head_seq = 0  # points removed so far: the sequence number of the head
        self.max_batch_size = max_batch_size
        self.flush_interval = flush_interval

    def __len__(self) -> int:
        return len(self.points)

    def __bool__(self) -> bool:
        return bool(self.points)

    @property
    def appended(self) -> int:
        """Points ever appended: the next point's sequence number."""
        return self.head_seq + len(self.points)

    def peek(self) -> Point | None:
        return self.points[0] if self.points else None

    def pop_oldest(self) -> Point | None:
        if not self.points:
            return None
        self.head_seq += 1
        return self.points.popleft()

    def seconds_until_due(self, now: float) -> float | None:
        """How long until a partial batch must leave (0 when one is due now); None when empty."""
        if not self.points:
            return None
        if len(self.points) >= self.max_batch_size:
            return 0.0
        oldest: float = self.points[0][LOGGED_AT]
        return max(0.0, oldest + self.flush_interval - now)

    def pop_expired(self, deadline_logged_at: float) -> list[Point]:
        """Removes the head points logged before ``deadline_logged_at`` (they waited too long)."""
        points = self.points
        expired: list[Point] = []
        while points and points[0][LOGGED_AT] < deadline_logged_at:
            expired.append(points.popleft())
        self.head_seq += len(expired)
        return expired

    def take_batch(self, limit: int | None = None, same_key: int | None = None) -> tuple[int, list[Point]]:
        """Removes up to ``limit`` (default ``max_batch_size``) points from the head.

        Returns (the first one's sequence number, the points). With ``same_key``, the batch
        stops before the first point whose tuple field at that index differs from the head's
        (a request carries one trial component).
        """
        first_seq = self.head_seq
        points = self.points
        count = min(self.max_batch_size if limit is None else limit, len(points))
        if same_key is None:
            batch = [points.popleft() for _ in range(count)]
        else:
            key = points[0][same_key]
            batch = []
            while points and len(batch) < count and points[0][same_key] == key:
                batch.append(points.popleft())
        self.head_seq += len(batch)
        return first_seq, batch

    def take_all(self) -> list[Point]:
        taken = list(self.points)
        self.points.clear()
        self.head_seq += len(taken)
        return taken
