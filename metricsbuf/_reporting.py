"""Where final failures and drops go: the failures list, the user's callback, and `logging`.

Logging is rate-limited per kind of event so that a dead backend or a flood of bad
points produces a few informative lines, not one line per point.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

from ._buffer import NAME, STEP, TIMESTAMP, VALUE, Point
from ._models import FailedMetric

log = logging.getLogger("metricsbuf")

FailureCallback = Callable[[list[FailedMetric]], object]


class RateLimitedWarnings:
    """At most one warning per key every ``interval`` seconds; the rest are counted and summarized."""

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (%d similar warnings suppressed in the last %.0f s)"
            args = (*args, suppressed, self._interval)
        log.warning(message, *args, exc_info=exc_info)


def failed_metric(point: Point, code: str, message: str, attempts: int) -> FailedMetric:
    return FailedMetric(
        name=point[NAME],
        value=point[VALUE],
        step=point[STEP],
        timestamp=datetime.fromtimestamp(point[TIMESTAMP], tz=timezone.utc),
        code=code,
        message=message,
        attempts=attempts,
    )


class FailureReporter:
    """Records final failures, hands them to ``on_failure`` and logs them without flooding."""

    def __init__(self, trial_component: str, on_failure: FailureCallback | None) -> None:
        self.trial_component = trial_component  # set at start when it is found then
        self._on_failure = on_failure
        self.failures: list[FailedMetric] = []
        self.by_code: dict[str, int] = {}
        self.warnings = RateLimitedWarnings()

    def report(self, points: Iterable[Point], code: str, message: str, attempts: int) -> int:
        group = [failed_metric(p, code, message, attempts) for p in points]
        if not group:
            return 0
        self.failures.extend(group)
        self.by_code[code] = self.by_code.get(code, 0) + len(group)
        self.warnings.warn(
            "failure:" + code,
            "metricsbuf: %d point(s) for trial component %r failed for good with %s after %d attempt(s), "
            "e.g. %r: %s",
            len(group),
            self.trial_component,
            code,
            attempts,
            group[0].name,
            message,
        )
        if self._on_failure is not None:
            try:
                self._on_failure(group)
            except Exception:
                # A bug in the user's callback must never reach the flusher.
                self.warnings.warn(
                    "on_failure",
                    "metricsbuf: the on_failure callback raised; the failures are still recorded",
                    exc_info=True,
                )
        return len(group)
