"""Issue 9, input validation: names that could not round-trip through the spool, and bools.

Each bad call goes through the public methods (``log``, ``log_nowait``, ``log_many``) and must
raise InvalidMetricError naming the field, log nothing, and leave the logger working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClient

from metricsbuf import InvalidMetricError, MetricsLogger

# Names the service's pattern (".+") would take, but that cannot be stored as UTF-8 text (a lone
# surrogate) or that SQLite and C code cut short (NUL).
UNROUNDTRIPPABLE_NAMES = [
    ("a\ud800b", "UTF-8"),
    ("\udfff", "UTF-8"),
    ("loss\udc80", "UTF-8"),  # what surrogateescape makes of an undecodable byte
    ("a\x00b", "NUL"),
    ("\x00", "NUL"),
]


async def _each_public_call(metrics: MetricsLogger, name: Any, value: Any, step: Any) -> list[str]:
    """Calls log, log_nowait and log_many with the point; returns each error message."""
    messages = []
    with pytest.raises(InvalidMetricError) as raised:
        await metrics.log(name, value, step=step)
    messages.append(str(raised.value))
    with pytest.raises(InvalidMetricError) as raised:
        metrics.log_nowait(name, value, step=step)
    messages.append(str(raised.value))
    with pytest.raises(InvalidMetricError) as raised:
        await metrics.log_many({"good": 1.0, name: value}, step=step)
    messages.append(str(raised.value))
    return messages


@pytest.mark.parametrize(("name", "words"), UNROUNDTRIPPABLE_NAMES, ids=lambda x: ascii(x))
async def test_metric_names_that_cannot_round_trip_are_rejected_at_the_call(
    tmp_path: Path, name: str, words: str
) -> None:
    client = FakeClient()
    async with MetricsLogger("run-1", client=client, spool_dir=tmp_path) as metrics:
        for message in await _each_public_call(metrics, name, 1.0, 1):
            assert "metric name" in message and words in message, message
        # Twice: a rejected name must not have entered the logger's cache of checked names.
        for message in await _each_public_call(metrics, name, 1.0, 1):
            assert words in message
        await metrics.log("after", 2.0, step=3)
    assert metrics.stats.logged == 1 and metrics.stats.delivered == 1
    assert [p["MetricName"] for p in client.stored] == ["after"]


@pytest.mark.parametrize("name", ["a\ud800b", "run\x00", "\x00run", "run-\udc80"], ids=ascii)
def test_trial_component_names_that_cannot_round_trip_are_rejected(name: str) -> None:
    with pytest.raises(InvalidMetricError, match="trial_component_name"):
        MetricsLogger(name, client=FakeClient())


@pytest.mark.parametrize(
    ("value", "step", "field"),
    [(True, 1, "value"), (False, None, "value"), (1.0, True, "step"), (1.0, False, "step")],
)
async def test_bools_are_rejected_as_value_and_step(value: Any, step: Any, field: str) -> None:
    client = FakeClient()
    async with MetricsLogger("run-1", client=client) as metrics:
        await metrics.log("loss", 1.0, step=0)  # "loss" is now a known name: the fast path's candidate
        for message in await _each_public_call(metrics, "loss", value, step):
            assert f"{field} of metric" in message and "got bool" in message, message
        await metrics.log("loss", 2.0, step=1)
    assert metrics.stats.logged == 2
    assert [(p["Value"], p["Step"]) for p in client.stored] == [(1.0, 0), (2.0, 1)]


def test_trial_component_names_longer_than_120_characters_are_rejected() -> None:
    # The pattern caps letters and digits at 120, not the hyphens between them.
    with pytest.raises(InvalidMetricError, match="1-120 characters"):
        MetricsLogger("a" + "-" * 119 + "b", client=FakeClient())
    MetricsLogger("a" + "-" * 118 + "b", client=FakeClient())  # 120: accepted


async def test_the_step_range_is_the_same_on_the_fast_path_as_on_the_slow_one(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client) as metrics:
        await metrics.log("loss", 1.0, step=0)  # the name is known now: the next calls take the fast path
        await metrics.log("loss", 2.0, step=2**31 - 1)
        for step in (-1, 2**31, 2**62, -(2**40)):
            with pytest.raises(InvalidMetricError, match="step"):
                await metrics.log("loss", 3.0, step=step)
        assert metrics.stats.logged == 2
    assert sorted(p["Step"] for p in client.stored) == [0, 2**31 - 1]
