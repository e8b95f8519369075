"""Bad input through the real stack: each malformed call gets its documented outcome, and the
service receives exactly the good points logged around it.

tests/test_validation.py checks the rules one by one against an in-memory client; this table
runs every malformed call (wrong types, out-of-range steps and timestamps, bad names, NaN and
infinities, huge strings, objects whose conversions raise) through ``log``, ``log_nowait`` and
``log_many`` of one logger, between good points, with a real aiobotocore client and the fake
service at the other end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from reliability_support import (
    Key,
    RecordingService,
    assert_logger_accounted,
    assert_service_counts_add_up,
    assert_stored_exactly,
    metrics_client,
)

from metricsbuf import InvalidMetricError, MetricsLogger

TC = "reliability-run-0004"
NOW = time.time()
DAY = 24 * 3600.0
NAN, INF = float("nan"), float("inf")
HUGE = "x" * 1_000_000


class FloatRaises:
    def __float__(self) -> float:
        raise RuntimeError("broken __float__")


class FloatReturnsStr:
    def __float__(self) -> Any:
        return "1.0"


class IndexRaises:
    def __index__(self) -> int:
        raise ValueError("broken __index__")


# The outcomes: the call raises InvalidMetricError whose message names the field, or (NaN and
# infinities under non_finite="drop") the point is skipped and counted in stats.rejected.
NAME, VALUE, STEP, TIMESTAMP = "metric name", "value of metric", "step of metric", "timestamp of metric"
REJECTED = "rejected"


@dataclass
class Call:
    api: str  # "log", "log_nowait" or "log_many"
    outcome: str  # one of the field phrases above, REJECTED, or "mapping"
    name: Any = "loss"
    value: Any = 1.0
    step: Any = 1
    timestamp: Any = None
    metrics: Any = None  # log_many's argument
    also_logged: dict[str, float] = field(default_factory=dict)  # log_many's good entries kept

    def __str__(self) -> str:
        args = self.metrics if self.api == "log_many" else (self.name, self.value, self.step, self.timestamp)
        text = repr(args)
        return f"{self.api}{text[:60]}{'...' if len(text) > 60 else ''}"


def log(outcome: str, **kwargs: Any) -> Call:
    return Call("log", outcome, **kwargs)


BAD_CALLS: list[Call] = [
    # names
    log(NAME, name=None),
    log(NAME, name=42),
    log(NAME, name=b"loss"),
    log(NAME, name=""),
    log(NAME, name="n" * 256),
    log(NAME, name=HUGE),
    log(NAME, name="train\nloss"),
    log(NAME, name="train\u2029loss"),
    log(NAME, name="\x85"),
    # values
    log(VALUE, value="1.0"),
    log(VALUE, value=HUGE),
    log(VALUE, value=None),
    log(VALUE, value=[1.0]),
    log(VALUE, value=1 + 2j),
    log(VALUE, value=FloatRaises()),
    log(VALUE, value=FloatReturnsStr()),
    log(VALUE, value=10**400),
    log(REJECTED, value=NAN),
    log(REJECTED, value=INF),
    log(REJECTED, value=-INF),
    log(REJECTED, value=Decimal("NaN")),
    log(REJECTED, value=Decimal("1e400")),  # finite as a Decimal, infinite as a double
    # steps
    log(STEP, step=-1),
    log(STEP, step=2**31),
    log(STEP, step=10**100),
    log(STEP, step=1.0),
    log(STEP, step="5"),
    log(STEP, step=IndexRaises()),
    # timestamps
    log(TIMESTAMP, timestamp=NOW - 15 * DAY),
    log(TIMESTAMP, timestamp=NOW + 3 * 3600),
    log(TIMESTAMP, timestamp=datetime(1970, 1, 1, tzinfo=timezone.utc)),
    log(TIMESTAMP, timestamp=NAN),
    log(TIMESTAMP, timestamp=INF),
    log(TIMESTAMP, timestamp="2024-01-01T00:00:00Z"),
    log(TIMESTAMP, timestamp=True),
    log(TIMESTAMP, timestamp=date.today()),
    # the synchronous entry point
    Call("log_nowait", NAME, name=None),
    Call("log_nowait", VALUE, value=FloatRaises()),
    Call("log_nowait", STEP, step=-1),
    Call("log_nowait", REJECTED, value=NAN),
    # log_many: all entries are checked first; one bad entry logs none of them
    Call("log_many", "mapping", metrics=[("loss", 1.0)]),
    Call("log_many", NAME, metrics={"fine": 1.0, "bad\nname": 2.0}),
    Call("log_many", VALUE, metrics={"fine": 1.0, "loss": "2.0"}),
    Call("log_many", VALUE, metrics={"fine": 1.0, "loss": FloatRaises()}),
    Call("log_many", STEP, metrics={"fine": 1.0}, step=2**31),
    Call("log_many", TIMESTAMP, metrics={"fine": 1.0}, timestamp=NOW - 15 * DAY),
    # ... but a NaN entry is only skipped, under non_finite="drop"
    Call("log_many", REJECTED, metrics={"kept": 7.0, "loss": NAN}, also_logged={"kept": 7.0}),
]


async def attempt(metrics: MetricsLogger, call: Call, step: int) -> None:
    if call.api == "log":
        await metrics.log(call.name, call.value, step=call.step, timestamp=call.timestamp)
    elif call.api == "log_nowait":
        metrics.log_nowait(call.name, call.value, step=call.step, timestamp=call.timestamp)
    else:
        # A good log_many entry gets its own step, so that its key is distinct.
        metrics_arg = call.metrics
        call_step = call.step if call.outcome == STEP else step
        await metrics.log_many(metrics_arg, step=call_step, timestamp=call.timestamp)


@pytest.mark.parametrize("non_finite", ["drop", "raise"])
async def test_bad_calls_get_their_outcome_and_the_service_gets_exactly_the_good_points(
    non_finite: str,
) -> None:
    assert len(BAD_CALLS) >= 30
    problems: list[str] = []
    good: list[Key] = []
    timestamps: dict[Key, float] = {}
    expected_rejected = 0
    async with RecordingService() as svc, metrics_client(svc.endpoint_url) as client:
        async with MetricsLogger(TC, client=client, non_finite=non_finite, flush_interval=0.05) as metrics:
            for i, call in enumerate(BAD_CALLS):
                # A good point before each bad call, with a timestamp of its own.
                ts = time.time() - 60 + i * 0.001
                await metrics.log("good", i + 0.5, step=i, timestamp=ts)
                good.append((TC, "good", i, i + 0.5))
                timestamps[good[-1]] = ts

                outcome = call.outcome
                if outcome == REJECTED and non_finite == "raise":
                    outcome = "not finite"
                rejected_before = metrics.stats.rejected
                try:
                    await attempt(metrics, call, step=1000 + i)
                except InvalidMetricError as exc:
                    message = str(exc)
                    if outcome == REJECTED:
                        problems.append(f"{call}: raised {message!r}, expected to be skipped")
                    elif outcome not in message:
                        problems.append(f"{call}: message {message!r} does not name {outcome!r}")
                    elif len(message) > 500:
                        problems.append(f"{call}: a {len(message)}-character message")
                    if not isinstance(exc, ValueError):
                        problems.append(f"{call}: {type(exc).__name__} is not a ValueError")
                except Exception as exc:
                    problems.append(f"{call}: raised {exc!r}, not InvalidMetricError")
                else:
                    if outcome != REJECTED:
                        problems.append(f"{call}: accepted, expected InvalidMetricError naming {outcome!r}")
                    elif metrics.stats.rejected != rejected_before + 1:
                        problems.append(f"{call}: not counted in stats.rejected")
                    else:
                        expected_rejected += 1
                        good += [(TC, name, 1000 + i, value) for name, value in call.also_logged.items()]
    assert not problems, "\n".join(problems)

    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.rejected == expected_rejected == (7 if non_finite == "drop" else 0)
    assert stats.logged == stats.delivered == len(good) and stats.failed == 0
    # The service received exactly the good points, each once, with their own timestamps,
    # and nothing it had to refuse.
    assert_stored_exactly(svc, good)
    assert_service_counts_add_up(svc)
    assert svc.counts["VALIDATION_ERROR"] == 0 and svc.counts["invalid_request"] == 0
    for point in svc.points:
        key = (point.trial_component, point.name, point.step, point.value)
        if key in timestamps:
            assert math.isclose(point.timestamp, timestamps[key], abs_tol=2e-6), (key, point)
