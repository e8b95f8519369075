"""A logger's options, checked once up front and read-only afterwards.

``MetricsLogger.__init__`` keeps the explicit, documented keyword signature (and the
defaults); this object holds what it was given, checked, with messages that name the option.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal, get_args

from . import _validation as v
from ._client import MetricsClient
from ._exceptions import InvalidMetricError
from ._reporting import FailureCallback

OnFull = Literal["block", "drop_newest", "drop_oldest", "raise"]
NonFinite = Literal["drop", "raise"]
RateScope = Literal["host", "logger"]
ON_FULL_POLICIES: tuple[str, ...] = get_args(OnFull)
NON_FINITE_POLICIES: tuple[str, ...] = get_args(NonFinite)
RATE_SCOPES: tuple[str, ...] = get_args(RateScope)


@dataclass(frozen=True)
class LoggerOptions:
    """Everything a logger is configured with, except its trial component (see MetricsLogger)."""

    client: MetricsClient | None
    region_name: str | None
    endpoint_url: str | None
    max_batch_size: int
    flush_interval: float
    max_buffered: int
    on_full: OnFull
    max_in_flight: int
    max_attempts: int
    delivery_timeout: float
    close_timeout: float
    non_finite: NonFinite
    on_failure: FailureCallback | None
    backoff_initial: float
    backoff_max: float
    adaptive_rate: bool
    rate_scope: RateScope
    spool_dir: str | os.PathLike[str] | None
    spool_interval: float
    max_spool_bytes: int
    offline: bool

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, object]) -> LoggerOptions:
        """The options among a constructor's arguments (``locals()`` at the top of its body).

        ``MetricsLogger.__init__`` names every option in its signature, with the same names as
        the fields here (tests/test_options.py checks that they match).
        """
        return cls(**{field.name: arguments[field.name] for field in fields(cls)})  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        def checked(option: str, value: object) -> None:
            object.__setattr__(self, option, value)  # frozen: store the checked, normalized value

        # First: the checks below read it as a truth value ("false" would pass for True).
        checked("offline", v.check_bool_option("offline", self.offline))
        if self.offline and self.spool_dir is None:
            raise InvalidMetricError(
                "offline=True needs spool_dir: offline points are only written to the spool"
            )
        if self.offline and (
            self.client is not None or self.region_name is not None or self.endpoint_url is not None
        ):
            raise InvalidMetricError(
                "offline=True never touches the network: do not pass client, region_name or endpoint_url"
            )
        if self.client is not None and not callable(getattr(self.client, "batch_put_metrics", None)):
            raise InvalidMetricError(
                "client must have an async batch_put_metrics(**kwargs) method, "
                f"got {type(self.client).__name__}"
            )
        if self.client is not None and (self.region_name is not None or self.endpoint_url is not None):
            raise InvalidMetricError("region_name and endpoint_url apply only when client is None")
        on_failure = self.on_failure
        if on_failure is not None and (not callable(on_failure) or inspect.iscoroutinefunction(on_failure)):
            raise InvalidMetricError(
                "on_failure must be a regular (not async) function taking a list of FailedMetric"
            )
        checked("max_batch_size", v.check_int_option("max_batch_size", self.max_batch_size, 1, 10))
        checked("flush_interval", v.check_seconds_option("flush_interval", self.flush_interval))
        checked("max_buffered", v.check_int_option("max_buffered", self.max_buffered, 1))
        checked("on_full", v.check_choice_option("on_full", self.on_full, ON_FULL_POLICIES))
        checked("max_in_flight", v.check_int_option("max_in_flight", self.max_in_flight, 1))
        checked("max_attempts", v.check_int_option("max_attempts", self.max_attempts, 1))
        checked("delivery_timeout", v.check_seconds_option("delivery_timeout", self.delivery_timeout))
        checked("close_timeout", v.check_seconds_option("close_timeout", self.close_timeout))
        checked("non_finite", v.check_choice_option("non_finite", self.non_finite, NON_FINITE_POLICIES))
        checked("backoff_initial", v.check_seconds_option("backoff_initial", self.backoff_initial))
        checked("backoff_max", v.check_seconds_option("backoff_max", self.backoff_max))
        if self.backoff_max < self.backoff_initial:
            raise InvalidMetricError(
                f"backoff_max ({self.backoff_max:g}) must not be below "
                f"backoff_initial ({self.backoff_initial:g})"
            )
        checked("adaptive_rate", v.check_bool_option("adaptive_rate", self.adaptive_rate))
        checked("rate_scope", v.check_choice_option("rate_scope", self.rate_scope, RATE_SCOPES))
        if self.spool_dir is not None:
            if not isinstance(self.spool_dir, (str, os.PathLike)):
                raise InvalidMetricError(f"spool_dir must be a path, got {type(self.spool_dir).__name__}")
            checked("spool_interval", v.check_seconds_option("spool_interval", self.spool_interval))
            checked("max_spool_bytes", v.check_int_option("max_spool_bytes", self.max_spool_bytes, 1 << 16))
