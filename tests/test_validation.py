"""Points, names and options are checked at the call; a bad one raises and disturbs nothing else."""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from conftest import FakeClient, assert_accounted

import metricsbuf
from metricsbuf import InvalidMetricError, MetricsLogger


class FloatRaises:
    def __float__(self) -> float:
        raise RuntimeError("broken __float__")


class FloatLike:
    """Like a numpy scalar or a 0-d tensor: only __float__."""

    def __float__(self) -> float:
        return 2.5


class IndexLike:
    def __index__(self) -> int:
        return 7


NOW = time.time()

# (call kwargs, the words the error message must contain)
BAD_CALLS: list[tuple[dict[str, Any], str]] = [
    ({"name": 3}, "metric name must be a str"),
    ({"name": None}, "metric name must be a str"),
    ({"name": b"loss"}, "metric name must be a str"),
    ({"name": ""}, "1-255 characters"),
    ({"name": "x" * 256}, "1-255 characters"),
    ({"name": "x" * 100_000}, "1-255 characters"),
    ({"name": "a\nb"}, "line breaks"),
    ({"name": "a\rb"}, "line breaks"),
    ({"name": "a\u2028b"}, "line breaks"),
    ({"value": "1.5"}, "must be a real number"),
    ({"value": None}, "must be a real number"),
    ({"value": b"1"}, "must be a real number"),
    ({"value": [1.0]}, "must be a real number"),
    ({"value": {"a": 1}}, "must be a real number"),
    ({"value": 1 + 2j}, "must be a real number"),
    ({"value": FloatRaises()}, "broken __float__"),
    ({"value": object()}, "must be a real number"),
    ({"value": 10**400}, "must be a real number"),  # too large for a float
    ({"step": -1}, "0..2147483647"),
    ({"step": 2**31}, "0..2147483647"),
    ({"step": 10**30}, "0..2147483647"),
    ({"step": 1.5}, "must be None or an integer"),
    ({"step": "3"}, "must be None or an integer"),
    ({"step": float("nan")}, "must be None or an integer"),
    ({"timestamp": NOW - 15 * 24 * 3600}, "outside the window"),
    ({"timestamp": NOW + 3 * 3600}, "outside the window"),
    ({"timestamp": 0}, "outside the window"),
    ({"timestamp": datetime(2000, 1, 1)}, "outside the window"),
    ({"timestamp": "2024-01-01"}, "must be None, a datetime or epoch seconds"),
    ({"timestamp": float("inf")}, "must be finite"),
    ({"timestamp": float("nan")}, "must be finite"),
    ({"timestamp": 1e300}, "outside the window"),
    ({"timestamp": True}, "must be None, a datetime or epoch seconds"),
]


@pytest.mark.parametrize(
    ("bad", "words"), BAD_CALLS, ids=[f"{k}-{i}" for i, (b, _) in enumerate(BAD_CALLS) for k in b]
)
async def test_bad_point_raises_and_disturbs_nothing(
    client: FakeClient, bad: dict[str, Any], words: str
) -> None:
    call = {"name": "loss", "value": 1.0, "step": 1, "timestamp": None, **bad}
    async with MetricsLogger("run-1", client=client) as metrics:
        await metrics.log("before", 1.0, step=0)
        with pytest.raises(InvalidMetricError) as raised:
            await metrics.log(call.pop("name"), call.pop("value"), **call)
        assert words in str(raised.value)
        assert isinstance(raised.value, ValueError)
        await metrics.log("after", 2.0, step=0)
    assert [p["MetricName"] for p in client.stored] == ["before", "after"]
    assert metrics.stats.logged == 2 and metrics.stats.delivered == 2 and metrics.stats.rejected == 0


@pytest.mark.parametrize(("bad", "words"), BAD_CALLS[:12], ids=[str(i) for i in range(12)])
async def test_bad_point_in_log_nowait_and_log_many(
    client: FakeClient, bad: dict[str, Any], words: str
) -> None:
    call = {"name": "loss", "value": 1.0, "step": 1, **bad}
    async with MetricsLogger("run-1", client=client) as metrics:
        with pytest.raises(InvalidMetricError) as raised:
            metrics.log_nowait(call["name"], call["value"], step=call["step"])
        assert words in str(raised.value)
        if isinstance(call["name"], str):
            # log_many is all-or-nothing: the good entry next to the bad one is not logged either.
            with pytest.raises(InvalidMetricError):
                await metrics.log_many({"good": 1.0, call["name"]: call["value"]}, step=call["step"])
    assert client.stored == []
    assert metrics.stats.logged == 0


async def test_accepted_kinds_of_values_steps_and_timestamps(client: FakeClient) -> None:
    naive = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=1)
    aware = datetime.now(timezone(timedelta(hours=5))) - timedelta(minutes=5)
    async with MetricsLogger("run-1", client=client) as metrics:
        await metrics.log("int", 3, step=IndexLike())
        await metrics.log("floatlike", FloatLike(), step=0)
        await metrics.log("decimal", Decimal("1.25"), step=2**31 - 1)
        await metrics.log("fraction", Fraction(1, 4))
        await metrics.log("naive", 1.0, timestamp=naive)
        await metrics.log("aware", 1.0, timestamp=aware)
        await metrics.log("epoch", 1.0, timestamp=NOW - 60.25)
        await metrics.log("x" * 255, 1.0)
    sent = {p["MetricName"]: p for p in client.stored}
    assert sent["int"]["Value"] == 3.0 and sent["int"]["Step"] == 7
    assert sent["floatlike"]["Value"] == 2.5
    assert sent["decimal"]["Value"] == 1.25 and sent["decimal"]["Step"] == 2**31 - 1
    assert sent["fraction"]["Value"] == 0.25
    # a naive datetime is UTC
    # Timestamps go to botocore as aware UTC datetimes (see test_batching.py for the wire bytes).
    assert all(p["Timestamp"].tzinfo is timezone.utc for p in client.stored)
    assert sent["naive"]["Timestamp"] == naive.replace(tzinfo=timezone.utc)
    assert sent["aware"]["Timestamp"] == aware
    assert sent["epoch"]["Timestamp"].timestamp() == pytest.approx(NOW - 60.25, abs=1e-6)
    assert all(type(p["Value"]) is float for p in client.stored)


async def test_default_timestamp_is_captured_at_the_call_with_subsecond_precision(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client, flush_interval=5.0) as metrics:
        before = time.time()
        await metrics.log("loss", 1.0)
        after = time.time()
    (point,) = client.stored
    stamp = point["Timestamp"].timestamp()  # to the microsecond, as botocore sends it
    assert before - 1e-6 <= stamp <= after + 1e-6
    assert stamp != math.floor(stamp) or before == after


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_dropped_counted_and_warned_once_per_name(
    client: FakeClient, value: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="metricsbuf")
    async with MetricsLogger("run-1", client=client) as metrics:
        for _ in range(3):
            await metrics.log("loss", value, step=1)
        metrics.log_nowait("other", value)
        await metrics.log_many({"loss": value, "ok": 1.0})
    assert [p["MetricName"] for p in client.stored] == ["ok"]
    stats = metrics.stats
    assert stats.rejected == 5 and stats.logged == 1 and stats.delivered == 1
    warnings = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 2  # one for "loss", one for "other"


async def test_non_finite_raise(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client, non_finite="raise") as metrics:
        with pytest.raises(InvalidMetricError, match="not finite"):
            await metrics.log("loss", float("nan"))
        with pytest.raises(InvalidMetricError, match="not finite"):
            await metrics.log("loss", FloatLikeInf())
    assert metrics.stats.rejected == 0 and client.requests == []


class FloatLikeInf:
    def __float__(self) -> float:
        return math.inf


@pytest.mark.parametrize(
    "name",
    # (None is not here: it means "find it at start"; see tests/test_zero_config.py.)
    ["", "Upper-case", "has_underscore", "-leading", "trailing-", "a" * 121, "spa ce", "ünï", 5],
)
def test_bad_trial_component_name_quotes_the_rule(name: Any) -> None:
    with pytest.raises(InvalidMetricError) as raised:
        MetricsLogger(name, client=FakeClient())
    message = str(raised.value)
    assert "trial_component_name" in message
    if isinstance(name, str):
        assert "^[a-z0-9](-*[a-z0-9]){0,119}$" in message


@pytest.mark.parametrize("name", ["a", "run-0042", "a--b", "0" * 120])
def test_good_trial_component_names(name: str) -> None:
    assert MetricsLogger(name, client=FakeClient()).trial_component_name == name


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_batch_size", 0),
        ("max_batch_size", 11),
        ("max_batch_size", 2.0),
        ("flush_interval", 0),
        ("flush_interval", -1.0),
        ("flush_interval", math.inf),
        ("flush_interval", "1"),
        ("max_buffered", 0),
        ("max_buffered", True),
        ("on_full", "wait"),
        ("max_in_flight", 0),
        ("max_attempts", 0),
        ("delivery_timeout", 0.0),
        ("close_timeout", -5),
        ("non_finite", "keep"),
        ("backoff_initial", 0),
        ("backoff_max", math.nan),
        ("on_failure", "print"),
    ],
)
def test_bad_option_names_the_option(option: str, value: Any) -> None:
    with pytest.raises(InvalidMetricError, match=option):
        MetricsLogger("run-1", client=FakeClient(), **{option: value})


def test_async_on_failure_is_refused() -> None:
    async def callback(failures: list[metricsbuf.FailedMetric]) -> None: ...

    with pytest.raises(InvalidMetricError, match="on_failure"):
        MetricsLogger("run-1", client=FakeClient(), on_failure=callback)


def test_client_without_batch_put_metrics_is_refused() -> None:
    with pytest.raises(InvalidMetricError, match="batch_put_metrics"):
        MetricsLogger("run-1", client=object())  # type: ignore[arg-type]


def test_region_with_own_client_is_refused() -> None:
    with pytest.raises(InvalidMetricError, match="region_name"):
        MetricsLogger("run-1", client=FakeClient(), region_name="us-east-1")  # type: ignore[arg-type]


async def test_accounting_holds_with_only_rejections(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client) as metrics:
        await metrics.log("a", float("nan"))
        assert_accounted(metrics.stats)
