"""Batches: size-bounded, leave when full or after flush_interval, bounded concurrency, per-metric order."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import FakeClient, assert_accounted

from metricsbuf import MetricsLogger


async def test_full_batches_leave_without_waiting_for_the_interval(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client, flush_interval=3600.0) as metrics:
        for step in range(30):
            await metrics.log("loss", float(step), step=step)
        for _ in range(100):  # the flusher gets the loop; no timer can fire within an hour
            await asyncio.sleep(0)
        assert [len(r) for r in client.requests] == [10, 10, 10]
        assert metrics.stats.delivered == 30


async def test_partial_batch_waits_for_flush_interval(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client, flush_interval=0.2) as metrics:
        started = time.monotonic()
        await metrics.log("loss", 1.0)
        for _ in range(20):
            await asyncio.sleep(0)
        assert client.requests == []  # not yet: the batch is partial and young
        while not client.requests:  # noqa: ASYNC110 (polling the fake is the simplest probe here)
            await asyncio.sleep(0.01)
        waited = time.monotonic() - started
    assert 0.15 <= waited < 5.0
    assert [len(r) for r in client.requests] == [1]


async def test_a_point_logged_while_the_sender_idles_leaves_flush_interval_after_it_was_logged(
    client: FakeClient,
) -> None:
    # The first point of a batch wakes no one: the idle sender looks again every flush_interval
    # and then waits for the rest of the point's own interval (neither early nor a second one).
    async with MetricsLogger("run-1", client=client, flush_interval=1.0) as metrics:
        await asyncio.sleep(0.5)  # the sender has been waiting half an interval already
        logged_at = time.monotonic()
        await metrics.log("loss", 1.0)
        while not client.requests:  # noqa: ASYNC110 (polling the fake is the simplest probe here)
            await asyncio.sleep(0.01)
        waited = time.monotonic() - logged_at
    assert 0.85 <= waited < 1.45, waited


async def test_flush_sends_partial_batches_at_once(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client, flush_interval=3600.0) as metrics:
        for step in range(13):
            await metrics.log("loss", float(step), step=step)
        await asyncio.wait_for(metrics.flush(), timeout=10)
        assert metrics.stats.delivered == 13 and metrics.stats.pending == 0
        assert sorted(len(r) for r in client.requests) == [3, 10]


@pytest.mark.parametrize("max_batch_size", [1, 3, 10])
async def test_max_batch_size_is_never_exceeded(client: FakeClient, max_batch_size: int) -> None:
    async with MetricsLogger("run-1", client=client, max_batch_size=max_batch_size) as metrics:
        for step in range(95):
            await metrics.log_many({"a": 1.0, "b": 2.0}, step=step)
    assert max(len(r) for r in client.requests) == max_batch_size
    assert client.sent_points == 190 == metrics.stats.delivered
    assert metrics.stats.requests == len(client.requests)


async def test_in_flight_requests_are_bounded_and_batches_fill_under_load(client: FakeClient) -> None:
    client.gate = asyncio.Event()
    async with MetricsLogger("run-1", client=client, max_in_flight=3, flush_interval=0.01) as metrics:
        for step in range(1000):
            await metrics.log("loss", float(step), step=step)
            if step % 7 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.05)  # well past flush_interval: only the slots hold the rest back
        assert client.in_flight == 3
        client.gate.set()
    assert client.max_in_flight_seen == 3
    assert metrics.stats.delivered == 1000
    # With every slot busy, points wait in the queue and leave as full batches.
    assert metrics.stats.requests <= 1000 / 10 + 3


async def test_points_of_one_metric_leave_in_logged_order(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client, max_in_flight=4, flush_interval=0.001) as metrics:
        for step in range(500):
            await metrics.log_many({"a": float(step), "b": -float(step)}, step=step)
            if step % 3 == 0:
                await asyncio.sleep(0)
    for name in ("a", "b"):
        steps = [p["Step"] for request in client.requests for p in request if p["MetricName"] == name]
        assert steps == list(range(500))


async def test_trial_component_name_goes_with_every_request(client: FakeClient) -> None:
    async with MetricsLogger("my-run-0042", client=client) as metrics:
        for step in range(25):
            await metrics.log("x", 1.0, step=step)
    assert set(client.trial_components) == {"my-run-0042"}
    assert_accounted(metrics.stats)


async def test_several_loggers_share_one_client(client: FakeClient) -> None:
    loggers = [MetricsLogger(f"run-{i}", client=client, flush_interval=0.01) for i in range(5)]

    async def job(metrics: MetricsLogger) -> None:
        async with metrics:
            for step in range(200):
                await metrics.log("loss", float(step), step=step)
                await asyncio.sleep(0)

    await asyncio.gather(*(job(m) for m in loggers))
    assert all(m.stats.delivered == 200 for m in loggers)
    for i in range(5):
        count = sum(
            len(r) for r, tc in zip(client.requests, client.trial_components, strict=True) if tc == f"run-{i}"
        )
        assert count == 200


async def test_timestamps_reach_the_wire_exactly_as_botocore_sends_epoch_floats(client: FakeClient) -> None:
    """The logger hands botocore aware UTC datetimes (cheaper for botocore to serialize than
    floats); the request body must be byte for byte what the same points as floats give."""
    from botocore.serialize import create_serializer
    from botocore.session import get_session

    operation = get_session().get_service_model("sagemaker-metrics").operation_model("BatchPutMetrics")
    serializer = create_serializer("rest-json", include_validation=False)
    now = time.time()
    stamps = [now - 3600.0, now - 0.1234567, now - 1e-7, float(int(now) - 60), now - 86400 * 13.5]
    async with MetricsLogger("run-1", client=client) as metrics:
        for i, stamp in enumerate(stamps):
            await metrics.log("loss", float(i), step=i, timestamp=stamp)
        await metrics.log("loss", 9.0)  # the default timestamp, captured at the call
    sent = client.stored
    assert len(sent) == len(stamps) + 1
    as_floats = [dict(item, Timestamp=item["Timestamp"].timestamp()) for item in sent]
    assert [item["Timestamp"] for item in as_floats[:-1]] == pytest.approx(stamps, abs=1e-6)

    def body(metric_data: list[dict[str, object]]) -> bytes:
        params = {"TrialComponentName": "run-1", "MetricData": metric_data}
        return serializer.serialize_to_request(params, operation)["body"]  # type: ignore[no-any-return]

    as_logged = [dict(item, Timestamp=stamp) for item, stamp in zip(sent, stamps, strict=False)]
    assert body(sent[:-1]) == body(as_logged)
