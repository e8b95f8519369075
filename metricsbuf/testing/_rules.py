"""The fake service's rules: what BatchPutMetrics accepts, and the names of what it counts."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

MAX_ITEMS_PER_REQUEST: Final = 10
MAX_TRIAL_COMPONENT_NAME_LENGTH: Final = 120
MAX_METRIC_NAME_LENGTH: Final = 255
MAX_STEP: Final = 2**31 - 1
PAST_WINDOW_SECONDS: Final = 14 * 24 * 3600  # the SageMaker SDK's METRIC_TS_LOWER_BOUND_TO_NOW
FUTURE_WINDOW_SECONDS: Final = 2 * 3600  # the SageMaker SDK's METRIC_TS_UPPER_BOUND_FROM_NOW

_TRIAL_COMPONENT_NAME = re.compile(r"[a-z0-9](?:-*[a-z0-9]){0,119}")
# The model's pattern for MetricName is ".+" in a Java regex, whose "." excludes these.
_LINE_BREAK = re.compile("[\n\r\x85\u2028\u2029]")
# botocore's serialization of non-finite doubles.
_NON_FINITE_STRINGS = frozenset({"NaN", "Infinity", "-Infinity"})

# Per-index codes.
VALIDATION_ERROR: Final = "VALIDATION_ERROR"
METRIC_LIMIT_EXCEEDED: Final = "METRIC_LIMIT_EXCEEDED"
INTERNAL_ERROR: Final = "INTERNAL_ERROR"
CONFLICT_ERROR: Final = "CONFLICT_ERROR"

#: Every key the services' ``counts`` may hold, with its meaning. Keys are absent (read 0 from
#: the Counter) until the event first happens. The counts add up: see `REQUEST_OUTCOMES` and
#: `ITEM_OUTCOMES`.
COUNT_KEYS: Final[Mapping[str, str]] = {
    "requests": "BatchPutMetrics requests received: each HTTP attempt, including aiohttp's own resends "
    "(InMemoryMetricsClient: each call that passed the client-side checks)",
    "ok": "requests answered HTTP 200, with or without per-index Errors (the client may have left)",
    "items": "MetricData items that got a per-index outcome (in requests that reached the per-index stage)",
    "stored": "points stored (appended to `points`)",
    VALIDATION_ERROR: "items answered VALIDATION_ERROR",
    METRIC_LIMIT_EXCEEDED: "items answered METRIC_LIMIT_EXCEEDED",
    INTERNAL_ERROR: "items answered INTERNAL_ERROR (injected)",
    CONFLICT_ERROR: "items answered CONFLICT_ERROR (injected)",
    "throttled": "requests answered HTTP 400 ThrottlingException (injected at random: `throttle_rate`)",
    "rate_limited": "requests answered HTTP 400 ThrottlingException by the shared rate limit (`rate_limit`)",
    "server_error": "requests answered HTTP 500 InternalFailure or 503 ServiceUnavailable (injected)",
    "server_error_500": "of those, the HTTP 500 InternalFailure ones",
    "server_error_503": "of those, the HTTP 503 ServiceUnavailable ones",
    "reset": "connections dropped (RST or close) before any processing: nothing stored (injected)",
    "ambiguous_reset": "connections dropped after the points were stored, without a response (injected)",
    "invalid_request": "requests answered HTTP 400 ValidationException or SerializationException",
    "resource_not_found": "requests answered HTTP 400 ResourceNotFound (`known_trial_components`)",
    "handled": "InMemoryMetricsClient only: requests its `handler` answered (a response or an exception)",
    "handled_not_stored": "InMemoryMetricsClient only: items of handled requests not stored (named in the "
    "handler's Errors, or invalid)",
    "max_items_in_request": "the largest MetricData list seen in one request (a maximum, not a sum)",
    "max_in_flight": "the most BatchPutMetrics requests being handled at once (a maximum, not a sum)",
}

#: The `COUNT_KEYS` whose sum is ``counts["requests"]`` once every request has been answered:
#: each request ends in exactly one of them.
REQUEST_OUTCOMES: Final = (
    "ok",
    "throttled",
    "rate_limited",
    "server_error",
    "reset",
    "ambiguous_reset",
    "invalid_request",
    "resource_not_found",
    "handled",
)

#: The `COUNT_KEYS` whose sum is ``counts["items"]``: each item that reaches the per-index stage
#: ends in exactly one of them.
ITEM_OUTCOMES: Final = (
    "stored",
    VALIDATION_ERROR,
    METRIC_LIMIT_EXCEEDED,
    INTERNAL_ERROR,
    CONFLICT_ERROR,
    "handled_not_stored",
)


class RequestError(Exception):
    """A whole-request error answer."""

    def __init__(self, status: int, code: str, message: str, count_key: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.count_key = count_key


def _invalid(message: str) -> RequestError:
    return RequestError(400, "ValidationException", message, "invalid_request")


def _malformed(message: str) -> RequestError:
    return RequestError(400, "SerializationException", message, "invalid_request")


#: One item as stored: (MetricName, Step or None, Value, Timestamp in epoch seconds); None
#: for an item that breaks a per-index rule (answered VALIDATION_ERROR).
ParsedItem: TypeAlias = tuple[str, int | None, float, float] | None


def parse_request(body: bytes) -> tuple[str, list[ParsedItem]]:
    """Check a request body; return the trial component and each item parsed (see `check_request`)."""
    trial_component, data = read_request(body)
    return trial_component, check_request(trial_component, data)


def read_request(body: bytes) -> tuple[str, list[Any]]:
    """The body's trial component and its MetricData list, unchecked beyond their JSON types.

    Bad JSON, a wrong JSON type or a missing member raises RequestError.
    """
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise _malformed(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _malformed("Request body must be a JSON object")
    trial_component = payload.get("TrialComponentName")
    data = payload.get("MetricData")
    if trial_component is None:
        raise _invalid(
            "Value null at 'trialComponentName' failed to satisfy constraint: Member must not be null"
        )
    if data is None:
        raise _invalid("Value null at 'metricData' failed to satisfy constraint: Member must not be null")
    if not isinstance(trial_component, str):
        raise _malformed("TrialComponentName must be a string")
    if not isinstance(data, list):
        raise _malformed("MetricData must be a list")
    return trial_component, data


def check_request(trial_component: str, data: list[Any]) -> list[ParsedItem]:
    """Check the request as a whole, then parse each item (None: a per-index VALIDATION_ERROR).

    A bad trial component name, a MetricData length outside 1..10, or an item with a missing
    member or a wrong JSON type raises RequestError.
    """
    if not (
        len(trial_component) <= MAX_TRIAL_COMPONENT_NAME_LENGTH
        and _TRIAL_COMPONENT_NAME.fullmatch(trial_component)
    ):
        raise _invalid(
            f"Value {trial_component!r} at 'trialComponentName' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: ^[a-z0-9](-*[a-z0-9]){{0,119}} "
            f"and have length less than or equal to {MAX_TRIAL_COMPONENT_NAME_LENGTH}"
        )
    if not 1 <= len(data) <= MAX_ITEMS_PER_REQUEST:
        raise _invalid(
            f"Value at 'metricData' failed to satisfy constraint: Member must have length between "
            f"1 and {MAX_ITEMS_PER_REQUEST} (got {len(data)})"
        )
    now = time.time()
    earliest = now - PAST_WINDOW_SECONDS
    latest = now + FUTURE_WINDOW_SECONDS
    return [_parse_item(i, item, earliest, latest) for i, item in enumerate(data)]


_NUMBER_TYPES: Final = (int, float)


def _parse_item(index: int, item: object, earliest: float, latest: float) -> ParsedItem:
    """Parse one MetricData item: the stored fields, None for VALIDATION_ERROR, or RequestError."""
    if type(item) is not dict:
        raise _malformed(f"MetricData[{index}] must be an object")
    name = item.get("MetricName")
    timestamp: Any = item.get("Timestamp")
    value: Any = item.get("Value")
    step = item.get("Step")
    # The common case in one test (exact types: a JSON true/false is a bool, never accepted).
    if (
        type(name) is not str
        or type(timestamp) not in _NUMBER_TYPES
        or type(value) not in _NUMBER_TYPES
        or (step is not None and type(step) is not int)
    ):
        _check_item_types(index, name, timestamp, value, step)
        return None  # a non-finite value sent as a string
    try:
        number = float(value)  # an int or a float, checked above
    except OverflowError:  # an integer too large for a double
        return None
    if (
        0 < len(name) <= MAX_METRIC_NAME_LENGTH
        and not _LINE_BREAK.search(name)
        and (step is None or 0 <= step <= MAX_STEP)
        and earliest <= timestamp <= latest
        and math.isfinite(number)
    ):
        return name, step, number, float(timestamp)
    return None


def _check_item_types(index: int, name: object, timestamp: object, value: object, step: object) -> None:
    """Raise the whole-request error for an item with a missing member or a wrong JSON type.

    Returns normally only when the item is well formed but its Value is one of botocore's
    strings for a non-finite double (a per-index VALIDATION_ERROR).
    """
    for member, got in (("metricName", name), ("timestamp", timestamp), ("value", value)):
        if got is None:
            raise _invalid(
                f"Value null at 'metricData.{index + 1}.member.{member}' failed to satisfy constraint: "
                f"Member must not be null"
            )
    if type(name) is not str:
        raise _malformed(f"MetricData[{index}].MetricName must be a string")
    if type(timestamp) not in _NUMBER_TYPES:
        raise _malformed(f"MetricData[{index}].Timestamp must be a number of epoch seconds")
    if step is not None and type(step) is not int:
        raise _malformed(f"MetricData[{index}].Step must be an integer")
    if type(value) not in _NUMBER_TYPES and value not in _NON_FINITE_STRINGS:
        raise _malformed(f"MetricData[{index}].Value must be a number")
