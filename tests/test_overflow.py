"""max_buffered bounds every held point; on_full decides what a new point does when it is reached."""

from __future__ import annotations

import asyncio

import pytest
from conftest import FakeClient, assert_accounted

from metricsbuf import BufferFullError, MetricsLogger


def gated() -> FakeClient:
    client = FakeClient()
    client.gate = asyncio.Event()
    return client


async def test_block_waits_for_room_and_loses_nothing() -> None:
    client = gated()
    async with MetricsLogger(
        "run-1", client=client, max_buffered=25, on_full="block", max_in_flight=2
    ) as metrics:
        producer = asyncio.ensure_future(
            asyncio.gather(*[metrics.log("loss", float(step), step=step) for step in range(100)])
        )
        await asyncio.sleep(0.05)
        assert not producer.done()
        assert metrics.stats.pending == 25 and metrics.stats.logged == 25
        with pytest.raises(BufferFullError, match="max_buffered=25"):
            metrics.log_nowait("x", 1.0)  # cannot wait
        client.gate.set()
        await producer
    assert metrics.stats.delivered == 100 and metrics.stats.dropped == 0
    assert sorted(p["Step"] for p in client.stored) == list(range(100))


async def test_raise_refuses_without_counting_the_point() -> None:
    client = gated()
    async with MetricsLogger("run-1", client=client, max_buffered=10, on_full="raise") as metrics:
        for step in range(10):
            await metrics.log("loss", 1.0, step=step)
        with pytest.raises(BufferFullError):
            await metrics.log("loss", 1.0, step=10)
        with pytest.raises(BufferFullError):
            await metrics.log_many({"a": 1.0})
        assert metrics.stats.logged == 10
        client.gate.set()
    assert metrics.stats.delivered == 10 and metrics.stats.dropped == 0


async def test_drop_newest_keeps_the_oldest() -> None:
    client = gated()
    async with MetricsLogger(
        "run-1", client=client, max_buffered=20, on_full="drop_newest", max_in_flight=1
    ) as metrics:
        for step in range(50):
            await metrics.log("loss", float(step), step=step)
        assert metrics.stats.pending == 20
        client.gate.set()
    stats = metrics.stats
    assert (stats.logged, stats.delivered, stats.dropped) == (50, 20, 30)
    assert sorted(p["Step"] for p in client.stored) == list(range(20))


async def test_drop_oldest_keeps_the_newest_queued() -> None:
    client = gated()
    async with MetricsLogger(
        "run-1", client=client, max_buffered=20, on_full="drop_oldest", max_in_flight=1
    ) as metrics:
        await metrics.log_many({f"m{i}": 1.0 for i in range(10)}, step=0)
        await asyncio.sleep(0.01)  # that batch is in flight now, held at the gate
        for step in range(1, 51):
            await metrics.log("loss", float(step), step=step)
        assert metrics.stats.pending == 20
        client.gate.set()
    stats = metrics.stats
    assert (stats.logged, stats.delivered, stats.dropped) == (60, 20, 40)
    # The in-flight batch is never dropped; of the queued ones, the last ten survive.
    assert sorted(p["Step"] for p in client.stored if p["MetricName"] == "loss") == list(range(41, 51))


async def test_drop_oldest_with_everything_in_flight_drops_the_new_point() -> None:
    client = gated()
    async with MetricsLogger(
        "run-1", client=client, max_buffered=10, on_full="drop_oldest", max_in_flight=1
    ) as metrics:
        await metrics.log_many({f"m{i}": 1.0 for i in range(10)}, step=0)
        await asyncio.sleep(0.01)
        await metrics.log("late", 1.0)
        client.gate.set()
    assert (metrics.stats.delivered, metrics.stats.dropped) == (10, 1)
    assert_accounted(metrics.stats)


@pytest.mark.parametrize("policy", ["block", "drop_newest", "drop_oldest", "raise"])
async def test_held_points_never_exceed_max_buffered_including_retries(policy: str) -> None:
    def handler(number: int, data: list[dict[str, object]]) -> dict[str, object]:
        return {"Errors": [{"MetricIndex": i, "Code": "INTERNAL_ERROR"} for i in range(0, len(data), 3)]}

    client = FakeClient(handler)
    peak = 0
    async with MetricsLogger(
        "run-1",
        client=client,
        max_buffered=40,
        on_full=policy,
        backoff_initial=0.001,
        backoff_max=0.005,
        max_attempts=3,
    ) as metrics:
        for step in range(2000):
            try:
                await metrics.log("loss", float(step), step=step)
            except BufferFullError:
                await asyncio.sleep(0.001)
            peak = max(peak, metrics.stats.pending)
            if step % 5 == 0:
                await asyncio.sleep(0)
    assert peak <= 40
    stats = metrics.stats
    assert stats.pending == 0
    assert_accounted(stats)
    if policy in ("block", "raise"):
        assert stats.dropped == 0
