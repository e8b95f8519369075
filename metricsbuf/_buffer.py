"""The in-memory queue of points waiting to be sent: pure batching logic, no I/O.

Points are plain tuples (cheap to build on the hot path, about 190 bytes each with
their floats). Every point accepted gets a sequence number, implicitly: the queue is
FIFO and only ever loses points from its head, so the head's number is
``appended - len(queue)``. A batch taken from the head therefore covers a contiguous
range of sequence numbers, which is what lets ``flush()`` wait for "everything logged
before this call" without tagging each point.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final, TypeAlias

# (name: str, value: float, step: int | None, timestamp: epoch seconds, logged_at: monotonic seconds),
# followed, for a point read from or written to a spool, by (row id: int, trial component: str).
# Typed loosely because of that optional tail; the index constants below name the fields.
Point: TypeAlias = "tuple[Any, ...]"
NAME: Final = 0
VALUE: Final = 1
STEP: Final = 2
TIMESTAMP: Final = 3
LOGGED_AT: Final = 4


class PointQueue:
    """FIFO of points with the batching decisions of the flusher."""

    __slots__ = ("_points", "appended", "max_batch_size", "flush_interval")

    def __init__(self, max_batch_size: int, flush_interval: float) -> None:
        self._points: deque[Point] = deque()
        self.appended = 0  # points ever appended: the next point's sequence number
        self.max_batch_size = max_batch_size
        self.flush_interval = flush_interval

    def __len__(self) -> int:
        return len(self._points)

    def append(self, point: Point) -> int:
        """Adds a point; returns the queue length afterwards."""
        self._points.append(point)
        self.appended += 1
        return len(self._points)

    @property
    def head_seq(self) -> int:
        """Sequence number of the oldest queued point (== appended when empty)."""
        return self.appended - len(self._points)

    def peek(self) -> Point | None:
        return self._points[0] if self._points else None

    def pop_oldest(self) -> Point | None:
        return self._points.popleft() if self._points else None

    def seconds_until_due(self, now: float) -> float | None:
        """How long until a partial batch must leave (0 when one is due now); None when empty."""
        if not self._points:
            return None
        if len(self._points) >= self.max_batch_size:
            return 0.0
        oldest: float = self._points[0][LOGGED_AT]
        return max(0.0, oldest + self.flush_interval - now)

    def pop_expired(self, deadline_logged_at: float) -> list[Point]:
        """Removes the head points logged before ``deadline_logged_at`` (they waited too long)."""
        points = self._points
        expired: list[Point] = []
        while points and points[0][LOGGED_AT] < deadline_logged_at:
            expired.append(points.popleft())
        return expired

    def take_batch(self, same_key: int | None = None) -> tuple[int, list[Point]]:
        """Removes up to ``max_batch_size`` points from the head; returns (first sequence number, points).

        With ``same_key``, the batch stops before the first point whose tuple field at that
        index differs from the head's (a request carries one trial component).
        """
        first_seq = self.head_seq
        points = self._points
        count = min(self.max_batch_size, len(points))
        if same_key is None:
            return first_seq, [points.popleft() for _ in range(count)]
        key = points[0][same_key]
        batch: list[Point] = []
        while points and len(batch) < count and points[0][same_key] == key:
            batch.append(points.popleft())
        return first_seq, batch

    def take_all(self) -> list[Point]:
        taken = list(self._points)
        self._points.clear()
        return taken
