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
    # The service refused the request for its rate (ThrottlingException and kin, HTTP 429):
    # a signal for the adaptive rate (_rate.py), not an error of the points.
    throttled: bool = False


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
        throttled = _THROTTLED.is_retryable(context) or status == 429
        retryable = throttled or _TRANSIENT.is_retryable(context)
        return RequestFailure(
            code,
            message,
            retryable,
            ambiguous=not isinstance(status, int) or status >= 500,
            throttled=throttled,
        )
    context = RetryContext(attempt_number=1, caught_exception=exc)
    # Besides botocore's own connection errors, a raw socket error or timeout from the
    # transport (or from a third-party client object) is transient too.
    retryable = _TRANSIENT.is_retryable(context) or isinstance(exc, (OSError, asyncio.TimeoutError))
    return RequestFailure(type(exc).__name__, f"{type(exc).__name__}: {exc}", retryable, ambiguous=retryable)


class RetryQuota:
    """How many per-index resends may go without backoff: botocore's retry quota, for points.

    Points answered ``INTERNAL_ERROR`` / ``CONFLICT_ERROR`` ride in the next batch at once
    while the quota lasts: a few failed indices among many stored ones cost no waiting (the
    request was answered, so nothing says the service is overloaded). Each such resend spends
    a token, and each stored point earns ``REFUND`` back, up to ``CAPACITY``: when most indices
    fail (more than about one in three), the quota runs dry and resends wait out the
    exponential backoff again, so a failing service does not get the resends at full speed.
    """

    CAPACITY = 50.0
    REFUND = 0.5

    __slots__ = ("tokens",)

    def __init__(self) -> None:
        self.tokens = self.CAPACITY

    def answered(self, stored: int, resends: int) -> bool:
        """Settles one answer; True if its ``resends`` may go at once, False if they back off."""
        self.tokens = min(self.CAPACITY, self.tokens + self.REFUND * stored)
        if resends <= self.tokens:
            self.tokens -= resends
            return True
        return False
