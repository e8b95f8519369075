"""Validation of metric points and logger options against the service model.

Every check here runs at the call, before a point is queued, so a bad point
raises InvalidMetricError for its caller and never reaches (or poisons) a batch.
The rules are those of the BatchPutMetrics model (botocore service
``sagemaker-metrics``, API 2022-09-30) plus the timestamp window the service accepts.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
from datetime import datetime, timezone
from typing import Any

from ._exceptions import InvalidMetricError

TRIAL_COMPONENT_NAME_RULE = (
    "1-120 characters matching ^[a-z0-9](-*[a-z0-9]){0,119}$ (lowercase letters, digits, hyphens)"
)
_TRIAL_COMPONENT_NAME_RE = re.compile(r"[a-z0-9](-*[a-z0-9]){0,119}")
MAX_TRIAL_COMPONENT_NAME_LENGTH = 120

MAX_NAME_LENGTH = 255
MAX_STEP = 2**31 - 1  # the model's Step is a 32-bit Integer
# The window the service accepts (the SageMaker SDK's METRIC_TS_LOWER_BOUND_TO_NOW / UPPER_BOUND_FROM_NOW).
TIMESTAMP_MAX_AGE = 14 * 24 * 3600.0
TIMESTAMP_MAX_AHEAD = 2 * 3600.0
# The model's MetricName pattern is ".+": Java's "." matches anything but these line terminators.
_LINE_BREAKS_RE = re.compile("[\n\r\u0085\u2028\u2029]")


def _short_repr(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_trial_component_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidMetricError(
            f"trial_component_name must be a str, got {type(name).__name__} {_short_repr(name)}"
        )
    # The pattern is ASCII only (no NUL, no surrogate can pass), but it caps the letters and digits,
    # not the hyphens between them: the length needs its own check.
    if len(name) > MAX_TRIAL_COMPONENT_NAME_LENGTH or _TRIAL_COMPONENT_NAME_RE.fullmatch(name) is None:
        raise InvalidMetricError(
            f"trial_component_name {_short_repr(name)} breaks the service rule: {TRIAL_COMPONENT_NAME_RULE}"
        )
    return name


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidMetricError(f"metric name must be a str, got {type(name).__name__} {_short_repr(name)}")
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise InvalidMetricError(
            f"metric name must be 1-{MAX_NAME_LENGTH} characters, got {len(name)}: {_short_repr(name)}"
        )
    if _LINE_BREAKS_RE.search(name):
        raise InvalidMetricError(f"metric name must not contain line breaks: {_short_repr(name)}")
    if "\x00" in name:
        # SQLite's JSON and C strings end at a NUL: through the spool "a\x00b" would arrive as "a".
        raise InvalidMetricError(f"metric name must not contain NUL characters: {_short_repr(name)}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate: it cannot go on the wire, nor be read back from the spool.
        raise InvalidMetricError(
            f"metric name must be encodable as UTF-8 (a lone surrogate at index {exc.start}): "
            f"{_short_repr(name)}"
        ) from None
    return name


def coerce_value(name: str, value: object) -> float:
    """Turns anything real-valued (int, numpy scalar, 0-d tensor, Decimal, ...) into a float.

    Not str, bytes, None or bool: a bool is an int to Python, but True as a metric is a bug.
    """
    if isinstance(value, (str, bytes, bytearray, bool)) or value is None:
        raise InvalidMetricError(
            f"value of metric {name!r} must be a real number, got {type(value).__name__} {_short_repr(value)}"
        )
    try:
        return float(value)  # type: ignore[arg-type,unused-ignore]
    except Exception as exc:
        raise InvalidMetricError(
            f"value of metric {name!r} must be a real number, got {type(value).__name__} "
            f"{_short_repr(value)} ({type(exc).__name__}: {exc})"
        ) from exc


def coerce_step(name: str, step: object) -> int:
    """Returns the step as an int: anything with ``__index__`` except bool, in 0..MAX_STEP."""
    if isinstance(step, bool):
        raise InvalidMetricError(f"step of metric {name!r} must be None or an integer, got bool {step!r}")
    try:
        index = operator.index(step)  # type: ignore[arg-type]
    except Exception as exc:
        raise InvalidMetricError(
            f"step of metric {name!r} must be None or an integer, "
            f"got {type(step).__name__} {_short_repr(step)}"
        ) from exc
    if not 0 <= index <= MAX_STEP:
        raise InvalidMetricError(f"step of metric {name!r} must be in 0..{MAX_STEP}, got {index}")
    return index


def coerce_timestamp(name: str, timestamp: object, now: float) -> float:
    """Returns epoch seconds for a datetime (naive means UTC) or a number, inside the service's window."""
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=timezone.utc)
        seconds = timestamp.timestamp()
    elif isinstance(timestamp, numbers.Real) and not isinstance(timestamp, bool):
        seconds = float(timestamp)
        if not math.isfinite(seconds):
            raise InvalidMetricError(f"timestamp of metric {name!r} must be finite, got {timestamp!r}")
    else:
        raise InvalidMetricError(
            f"timestamp of metric {name!r} must be None, a datetime or epoch seconds, "
            f"got {type(timestamp).__name__} {_short_repr(timestamp)}"
        )
    if not now - TIMESTAMP_MAX_AGE <= seconds <= now + TIMESTAMP_MAX_AHEAD:
        when = (
            datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat() if abs(seconds) < 1e11 else seconds
        )
        raise InvalidMetricError(
            f"timestamp of metric {name!r} ({when}) is outside the window the service accepts: "
            "from 14 days before now to 2 hours after now"
        )
    return seconds


# ---------------------------------------------------------------------------------------------
# Options


def check_int_option(option: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMetricError(f"{option} must be an int, got {type(value).__name__} {_short_repr(value)}")
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise InvalidMetricError(f"{option} must be {bounds}, got {value}")
    return value


def check_seconds_option(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMetricError(
            f"{option} must be a number of seconds, got {type(value).__name__} {_short_repr(value)}"
        )
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidMetricError(f"{option} must be a positive, finite number of seconds, got {value!r}")
    return seconds


def check_bool_option(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidMetricError(
            f"{option} must be True or False, got {type(value).__name__} {_short_repr(value)}"
        )
    return value


def check_choice_option(option: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidMetricError(
            f"{option} must be one of {', '.join(repr(c) for c in choices)}; got {_short_repr(value)}"
        )
    return str(value)
