"""What is worth retrying: per-index codes and whole-request exceptions.

Whole-request failures are classified by botocore's own retry checkers (the ones its
"standard" retry mode uses: throttling codes, 5xx statuses, connection and timeout
errors), so metricsbuf retries exactly what the AWS SDKs consider transient, while
botocore's own retry loop stays off and this library owns the single retry budget.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker, TransientRetryableChecker

# Per-index codes in a BatchPutMetrics response.
RETRYABLE_INDEX_CODES = frozenset({"INTERNAL_ERROR", "CONFLICT_ERROR"})
FINAL_INDEX_CODES = frozenset({"VALIDATION_ERROR", "METRIC_LIMIT_EXCEEDED"})

_THROTTLED = ThrottledRetryableChecker()
_TRANSIENT = TransientRetryableChecker()


@dataclass(frozen=True, slots=True)
class _HttpStatus:
    """The one attribute of an HTTP response that botocore's checkers read."""

    status_code: int


@dataclass(frozen=True, slots=True)
class RequestFailure:
    code: str
    message: str
    retryable: bool
    # No definite answer (connection lost, timeout, 5xx): the points may have been stored.
    ambiguous: bool


def classify_exception(exc: BaseException) -> RequestFailure:
    """Turns an exception from ``batch_put_metrics`` into a failure code and a retry decision."""
    if isinstance(exc, ClientError):
        response: dict[str, Any] = exc.response or {}
        error = response.get("Error") or {}
        code = str(error.get("Code") or "ClientError")
        message = str(error.get("Message") or exc)
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        context = RetryContext(
            attempt_number=1,
            parsed_response=response,
            http_response=_HttpStatus(status) if isinstance(status, int) else None,
        )
        retryable = _THROTTLED.is_retryable(context) or _TRANSIENT.is_retryable(context) or status == 429
        return RequestFailure(
            code, message, retryable, ambiguous=not isinstance(status, int) or status >= 500
        )
    context = RetryContext(attempt_number=1, caught_exception=exc)
    # Besides botocore's own connection errors, a raw socket error or timeout from the
    # transport (or from a third-party client object) is transient too.
    retryable = _TRANSIENT.is_retryable(context) or isinstance(exc, (OSError, asyncio.TimeoutError))
    return RequestFailure(type(exc).__name__, f"{type(exc).__name__}: {exc}", retryable, ambiguous=retryable)
