"""The fake service's options ("knobs") and their checks."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

from .._exceptions import InvalidMetricError

_RATE_KNOBS: Final = (
    "internal_error_rate",
    "conflict_error_rate",
    "throttle_rate",
    "server_error_rate",
    "reset_rate",
    "ambiguous_reset_rate",
)
_KNOBS: Final = ("seed", *_RATE_KNOBS, "latency", "metric_limit", "known_trial_components")


def _check_knob(name: str, value: object) -> Any:
    """Validate one knob; return the value to store. Raises InvalidMetricError naming the knob."""
    if name in _RATE_KNOBS or name == "latency":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidMetricError(f"{name} must be a finite number, got {value!r}")
        if value < 0 or (name != "latency" and value > 1):
            bounds = "0 or more" if name == "latency" else "between 0 and 1"
            raise InvalidMetricError(f"{name} must be {bounds}, got {value!r}")
        return float(value)
    if name == "seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidMetricError(f"seed must be an int, got {value!r}")
        return value
    if name == "metric_limit":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidMetricError(f"metric_limit must be None or an int >= 0, got {value!r}")
        return value
    if name == "known_trial_components":
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise InvalidMetricError(
                f"known_trial_components must be None or a collection of names, got {value!r}"
            )
        names = frozenset(value)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise InvalidMetricError(f"known_trial_components must hold str names, got {bad[0]!r}")
        return names
    raise InvalidMetricError(f"unknown option {name!r}; the options are {', '.join(_KNOBS)}")

