"""The exceptions metricsbuf raises.

    MetricsBufError         root: catch this to catch everything metricsbuf raises
    ├── InvalidMetricError  (also a ValueError) a point or an option breaks a rule; nothing else is affected
    ├── BufferFullError     max_buffered points held and on_full="raise" (or log_nowait under "block")
    ├── LoggerClosedError   the logger was closed, or its flusher died
    ├── TrialComponentNotFoundError  (in _sagemaker_job.py) no name given, and none found at start
    ├── SageMakerJobError   (in _sagemaker_job.py) inside a SageMaker job, its Describe call failed
    └── SpoolError          (in _spool_lock.py) a spool cannot be opened, read or written; names the path
        └── SpoolLockedError    another process (or logger) has the spool open

Delivery failures are not raised: they are reported as FailedMetric records
(`MetricsLogger.failures`, the `on_failure` callback, and the `logging` module).
"""

from __future__ import annotations


class MetricsBufError(Exception):
    """Root of every exception metricsbuf raises."""


class InvalidMetricError(MetricsBufError, ValueError):
    """A metric point, a trial component name or an option breaks a rule.

    The message names the field and the offending value. Raised at the call,
    before anything is queued, so no other point is affected.
    """


class BufferFullError(MetricsBufError):
    """The logger already holds `max_buffered` points and may not wait for room."""


class LoggerClosedError(MetricsBufError):
    """The logger is closed (or its background flusher died) and accepts no more points."""
