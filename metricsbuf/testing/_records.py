"""What a fake service recorded: the stored points and a snapshot of the counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """One point the fake service stored, exactly as it arrived.

    Attributes:
        trial_component: the request's ``TrialComponentName``.
        name: ``MetricName``.
        step: ``Step``, or None when the item had none.
        value: ``Value`` as a float (always finite: non-finite values are rejected).
        timestamp: ``Timestamp`` in epoch seconds, as sent. botocore 1.43.117 sends microseconds
            (a float timestamp given to the client is rounded to the microsecond on the way).
    """

    trial_component: str
    name: str
    step: int | None
    value: float
    timestamp: float

    @property
    def time(self) -> datetime:
        """The timestamp as a timezone-aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp, tz=timezone.utc)


class PointQueries:
    """The questions a test asks of stored points, for every holder of a ``points`` list."""

    __slots__ = ()
    points: list[StoredPoint]

    def stored_keys(self) -> Counter[StoredPoint]:
        """How many times each distinct point was stored (more than 1 means a duplicate)."""
        return Counter(self.points)

    def duplicates(self) -> dict[StoredPoint, int]:
        """The points stored more than once, with how many times each was stored."""
        return {point: n for point, n in self.stored_keys().items() if n > 1}

    def series(self, trial_component: str, name: str) -> list[StoredPoint]:
        """One metric's stored points, ordered by step (None first), then timestamp."""
        found = [p for p in self.points if p.trial_component == trial_component and p.name == name]
        found.sort(key=lambda p: (-1 if p.step is None else p.step, p.timestamp))
        return found


@dataclass(frozen=True, slots=True)
class ServiceState(PointQueries):
    """A snapshot of what a fake service recorded (see `FakeMetricsServiceProcess.state`).

    Attributes:
        counts: the service's counters (keys in `COUNT_KEYS`); missing keys read 0.
        points: the stored points, in storage order (empty if fetched with ``points=False``).
    """

    counts: Counter[str]
    points: list[StoredPoint]


def points_to_json(points: Iterable[StoredPoint]) -> list[list[Any]]:
    return [[p.trial_component, p.name, p.step, p.value, p.timestamp] for p in points]


def points_from_json(rows: Iterable[list[Any]]) -> list[StoredPoint]:
    return [StoredPoint(tc, name, step, float(value), float(ts)) for tc, name, step, value, ts in rows]
