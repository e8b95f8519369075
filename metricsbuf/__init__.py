"""metricsbuf: an asynchronous, buffered metrics logger for Amazon SageMaker Metrics.

    async with metricsbuf.MetricsLogger("my-run-0042") as metrics:
        await metrics.log("train:loss", loss, step=step)

See README.md for the options, the delivery guarantees and the error codes.
"""

from ._exceptions import BufferFullError, InvalidMetricError, LoggerClosedError, MetricsBufError
from ._logger import MetricsLogger
from ._models import (
    CLOSE_TIMEOUT,
    DELIVERY_TIMEOUT,
    FLUSHER_CRASHED,
    SPOOL_CORRUPT,
    SPOOL_ERROR,
    FailedMetric,
    MetricsStats,
)
from ._sagemaker_job import (
    ProcessPlacement,
    SageMakerJobError,
    TrialComponentNotFoundError,
    in_sagemaker_job,
    process_placement,
)
from ._sigterm import drain_on_sigterm
from ._spool import SpoolError, SpoolLockedError
from ._sync import SyncMetricsLogger

__version__ = "0.1.0"

__all__ = [
    "BufferFullError",
    "CLOSE_TIMEOUT",
    "DELIVERY_TIMEOUT",
    "FLUSHER_CRASHED",
    "FailedMetric",
    "InvalidMetricError",
    "LoggerClosedError",
    "MetricsBufError",
    "MetricsLogger",
    "MetricsStats",
    "ProcessPlacement",
    "SPOOL_CORRUPT",
    "SPOOL_ERROR",
    "SageMakerJobError",
    "SpoolError",
    "SpoolLockedError",
    "SyncMetricsLogger",
    "TrialComponentNotFoundError",
    "__version__",
    "drain_on_sigterm",
    "in_sagemaker_job",
    "process_placement",
]
