"""Public result records: statistics snapshots and final failures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# Failure codes produced by metricsbuf itself (the service's own codes, such as
# VALIDATION_ERROR or ThrottlingException, are passed through unchanged).
DELIVERY_TIMEOUT = "DELIVERY_TIMEOUT"
CLOSE_TIMEOUT = "CLOSE_TIMEOUT"
FLUSHER_CRASHED = "FLUSHER_CRASHED"
SPOOL_ERROR = "SPOOL_ERROR"
SPOOL_CORRUPT = "SPOOL_CORRUPT"


@dataclass(frozen=True, slots=True)
class MetricsStats:
    """A consistent snapshot of a logger's counters.

    ``logged == delivered + failed + dropped + pending`` always holds.

    Attributes:
        logged: points accepted by ``log``/``log_many``/``log_nowait`` (including ones later dropped).
        delivered: points the service acknowledged.
        failed: points that failed for good; each one is in ``MetricsLogger.failures``.
        dropped: points discarded by the ``on_full`` policy (``drop_newest`` / ``drop_oldest``).
        rejected: non-finite values skipped under ``non_finite="drop"`` (not counted in ``logged``).
        retried: point sends beyond each point's first (a point resent twice counts 2).
        requests: BatchPutMetrics calls made.
        pending: points held right now: queued, in flight, or waiting for a retry; with a
            spool, also those waiting on disk.
        recovered: of ``logged``, the points a previous run left in the spool, found at start.
        throttled: of ``requests``, those the service refused with ``ThrottlingException`` (the
            account's limit: README, "Many writers against one account's limit"). They do not
            count against ``max_attempts``.
    """

    logged: int
    delivered: int
    failed: int
    dropped: int
    rejected: int
    retried: int
    requests: int
    pending: int
    recovered: int = 0
    throttled: int = 0


@dataclass(frozen=True, slots=True)
class FailedMetric:
    """A point that failed for good, with the reason.

    Attributes:
        name, value, step: the point as it was logged.
        timestamp: the point's timestamp (timezone-aware, UTC).
        code: the service's per-index code (``VALIDATION_ERROR``, ``METRIC_LIMIT_EXCEEDED``,
            ``INTERNAL_ERROR``, ``CONFLICT_ERROR`` once attempts ran out), the whole-request
            error code (``ThrottlingException``, ``ResourceNotFound``, ``AccessDeniedException``,
            a connection error's class name, ...), or one of metricsbuf's own:
            ``DELIVERY_TIMEOUT`` (waited ``delivery_timeout``), ``CLOSE_TIMEOUT`` (still held
            when ``close_timeout`` ran out), ``FLUSHER_CRASHED``, ``SPOOL_ERROR`` (logged with a
            spool, but the final write to it failed at close), or ``SPOOL_CORRUPT`` (a row read
            back from a spool is malformed: the message names the spool and the row; the
            fields that could not be read are placeholders: the name with bad bytes escaped,
            value NaN, step None, timestamp 1970-01-01).
        message: a human-readable explanation.
        attempts: how many times the point was sent (0 if it never left the buffer).
    """

    name: str
    value: float
    step: int | None
    timestamp: datetime
    code: str
    message: str
    attempts: int
