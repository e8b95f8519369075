"""A stand-in for `metricsbuf.SyncMetricsLogger` that records what it is given.

It implements the SyncMetricsLogger contract (log, log_many all or nothing, flush, close
idempotent, stats, failures, context manager) and validates every point with metricsbuf's own
rules (`metricsbuf._validation`), so a name or value the real logger would refuse fails here too.
Non-finite values are dropped, as the real logger's default ``non_finite="drop"`` does.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from metricsbuf import LoggerClosedError
from metricsbuf._validation import check_name, check_trial_component_name, coerce_step, coerce_value

Point = tuple[str, float, "int | None"]


class RecordingLogger:
    """Records points as (name, value, step) in ``points``; every call's name in ``calls``."""

    # Every instance, in order of creation: the loggers an adapter built for itself.
    built: ClassVar[list[RecordingLogger]] = []

    def __init__(self, trial_component_name: str | None = None, **options: Any) -> None:
        if trial_component_name is not None:
            check_trial_component_name(trial_component_name)
        self.trial_component_name = trial_component_name
        self.options = options
        self.points: list[Point] = []
        self.calls: list[str] = []
        self.threads: set[str] = set()  # names of the threads that logged
        self.closed = False
        self._lock = threading.Lock()
        RecordingLogger.built.append(self)

    def log(self, name: str, value: float, *, step: int | None = None, timestamp: Any = None) -> None:
        self.log_many({name: value}, step=step, timestamp=timestamp)

    def log_many(
        self, metrics: Mapping[str, float], *, step: int | None = None, timestamp: Any = None
    ) -> None:
        with self._lock:
            self.calls.append("log_many")
            if self.closed:
                raise LoggerClosedError("the logger is closed")
            points: list[Point] = []
            for name, value in metrics.items():
                check_name(name)
                number = coerce_value(name, value)
                checked_step = None if step is None else coerce_step(name, step)
                if math.isfinite(number):
                    points.append((name, number, checked_step))
            self.points.extend(points)  # all or nothing: only once every point has passed
            self.threads.add(threading.current_thread().name)

    def flush(self, timeout: float | None = None) -> None:
        self.calls.append("flush")

    def close(self, timeout: float | None = None) -> None:
        self.calls.append("close")
        self.closed = True

    @property
    def stats(self) -> dict[str, int]:
        return {"logged": len(self.points)}

    @property
    def failures(self) -> list[Any]:
        return []

    def __enter__(self) -> RecordingLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # What the tests read ---------------------------------------------------------------------

    def names(self) -> set[str]:
        return {name for name, _, _ in self.points}

    def steps(self, name: str) -> list[int | None]:
        return [step for n, _, step in self.points if n == name]


class FileRecordingLogger(RecordingLogger):
    """Also appends each point as a JSON line to ``path``, so that processes Lightning spawns
    (which get a pickled copy of the logger) report what they logged back to the test."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def log_many(
        self, metrics: Mapping[str, float], *, step: int | None = None, timestamp: Any = None
    ) -> None:
        before = len(self.points)
        super().log_many(metrics, step=step, timestamp=timestamp)
        with open(self.path, "a", encoding="utf-8") as file:
            for name, value, point_step in self.points[before:]:
                file.write(json.dumps([name, value, point_step]) + "\n")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def read(self) -> list[Point]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [(name, value, step) for name, value, step in map(json.loads, lines)]
