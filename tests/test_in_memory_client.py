"""metricsbuf.testing.InMemoryMetricsClient: the fake service's rules and faults with no HTTP.

Its answers are compared with those a real aiobotocore client gets from FakeMetricsService over
HTTP, call for call, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import math
import textwrap
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ParamValidationError,
)
from service_support import item, metrics_client

import metricsbuf.testing
from metricsbuf import InvalidMetricError, MetricsLogger
from metricsbuf._retry_policy import classify_exception
from metricsbuf.testing import (
    ITEM_OUTCOMES,
    REQUEST_OUTCOMES,
    BatchPutMetricsCall,
    FakeMetricsService,
    InMemoryMetricsClient,
    StoredPoint,
)

TC = "my-trial-0001"


def classified(exc: Exception) -> tuple[str, bool, bool]:
    """How metricsbuf's retry policy sees an exception (its message names the endpoint)."""
    failure = classify_exception(exc)
    return failure.code, failure.retryable, failure.ambiguous


async def outcome(client: Any, data: list[dict[str, Any]], tc: str = TC) -> Any:
    """What one call produced, comparable across the two clients: the Errors list, or the
    exception's class, error and status, and how metricsbuf's retry policy classifies it."""
    try:
        response = await client.batch_put_metrics(TrialComponentName=tc, MetricData=data)
    except ClientError as exc:
        metadata = exc.response["ResponseMetadata"]
        return (
            "ClientError",
            exc.response["Error"],
            metadata["HTTPStatusCode"],
            metadata.get("MaxAttemptsReached"),
            str(exc),
            classified(exc),
        )
    except (EndpointConnectionError, ConnectionClosedError) as exc:
        return type(exc).__name__, classified(exc)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    return response["Errors"]


def assert_counts_add_up(client: InMemoryMetricsClient) -> None:
    counts = client.counts
    assert counts["requests"] == sum(counts[k] for k in REQUEST_OUTCOMES), counts
    assert counts["items"] == sum(counts[k] for k in ITEM_OUTCOMES), counts
    assert counts["stored"] == len(client.points), counts


# --------------------------------------------------------------------------- the same as over HTTP

MIXED = {
    "throttle_rate": 0.1,
    "server_error_rate": 0.1,
    "internal_error_rate": 0.1,
    "conflict_error_rate": 0.1,
    "metric_limit": 4,
}


async def test_same_seed_same_calls_same_answers_and_points_as_over_http() -> None:
    # No resets here: aiohttp resends a PUT once by itself after one, which draws again.
    now = time.time()
    calls = [[item(name=f"m{(i + j) % 5}", step=i, ts=now - j) for j in range(1 + i % 4)] for i in range(60)]
    calls += [[item(name="")], [item(step=None, value=-3)], [item(ts=now - 15 * 86400)]]
    in_memory = InMemoryMetricsClient(seed=11, parameter_validation=False, **MIXED)
    svc = FakeMetricsService(seed=11, **MIXED)
    async with svc, metrics_client(svc.endpoint_url, validate=False) as client:
        over_http = [await outcome(client, data) for data in calls]
    directly = [await outcome(in_memory, data) for data in calls]
    assert directly == over_http
    kinds = {o[1]["Code"] if isinstance(o, tuple) else "ok" for o in directly}
    assert kinds == {"ok", "ThrottlingException", "InternalFailure", "ServiceUnavailable"}
    per_index = ("INTERNAL_ERROR", "CONFLICT_ERROR", "METRIC_LIMIT_EXCEEDED", "VALIDATION_ERROR")
    assert all(in_memory.counts[code] for code in per_index), in_memory.counts
    assert in_memory.points == svc.points
    assert in_memory.counts == svc.counts
    assert_counts_add_up(in_memory)


@pytest.mark.parametrize(
    "options",
    [
        {"reset_rate": 1.0},
        {"ambiguous_reset_rate": 1.0},
        {"known_trial_components": {"someone-else"}},
    ],
    ids=["reset", "ambiguous reset", "unknown trial component"],
)
async def test_whole_request_faults_raise_what_aiobotocore_raises(options: dict[str, Any]) -> None:
    calls = [[item(step=i)] for i in range(8)]
    async with FakeMetricsService(**options) as svc, metrics_client(svc.endpoint_url) as client:
        over_http = {repr(await outcome(client, data)) for data in calls}
    in_memory = InMemoryMetricsClient(**options)
    directly = {repr(await outcome(in_memory, data)) for data in calls}
    # Resets come as EndpointConnectionError (RST) and ConnectionClosedError (close), both
    # retryable and ambiguous; an unknown trial component as a final ResourceNotFound.
    assert directly == over_http
    assert len(directly) == (2 if "known_trial_components" not in options else 1)
    stored_once_per_call = len(calls) if "ambiguous_reset_rate" in options else 0
    assert len(in_memory.points) == stored_once_per_call  # no transport resends in memory
    assert_counts_add_up(in_memory)


async def test_points_are_stored_as_botocore_sends_them() -> None:
    now = time.time()
    when = datetime.fromtimestamp(int(now) - 60, tz=timezone.utc).replace(microsecond=123457)
    client = InMemoryMetricsClient()
    data = [
        {"MetricName": "loss", "Value": 0.5, "Step": 0, "Timestamp": when},
        {"MetricName": "loss", "Value": 0.25, "Step": 1, "Timestamp": now - 1.000001},
        {"MetricName": "lr", "Value": -3, "Timestamp": now},
    ]
    response = await client.batch_put_metrics(TrialComponentName=TC, MetricData=data)
    assert response["Errors"] == []
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200 and response["ResponseMetadata"]["RequestId"]
    assert client.points == [
        StoredPoint(TC, "loss", 0, 0.5, when.timestamp()),
        StoredPoint(TC, "loss", 1, 0.25, round(now - 1.000001, 6)),
        StoredPoint(TC, "lr", None, -3.0, round(now, 6)),
    ]
    assert client.series(TC, "loss") == client.points[:2]
    assert client.state().points == client.points


async def test_parameter_validation_raises_before_the_service_sees_anything() -> None:
    client = InMemoryMetricsClient()
    with pytest.raises(ParamValidationError, match="Step"):
        await client.batch_put_metrics(TrialComponentName=TC, MetricData=[item(step=-1)])
    assert not client.counts
    # Without botocore's check the service judges the item, as it would over HTTP.
    unchecked = InMemoryMetricsClient(parameter_validation=False)
    errors = await outcome(unchecked, [item(step=-1), item(value=math.nan), item()])
    assert errors == [
        {"Code": "VALIDATION_ERROR", "MetricIndex": 0},
        {"Code": "VALIDATION_ERROR", "MetricIndex": 1},
    ]
    assert len(unchecked.points) == 1


async def test_latency_and_concurrency() -> None:
    client = InMemoryMetricsClient(latency=0.05)
    started = time.monotonic()
    await asyncio.gather(*(outcome(client, [item(step=i)]) for i in range(5)))
    assert time.monotonic() - started >= 0.05
    assert client.counts["max_in_flight"] == 5 and client.in_flight == 0


async def test_options_are_validated_and_configurable_like_the_service() -> None:
    client = InMemoryMetricsClient()
    assert client.configure(throttle_rate=1.0)["throttle_rate"] == 1.0
    assert (await outcome(client, [item()]))[1]["Code"] == "ThrottlingException"
    with pytest.raises(InvalidMetricError, match="conflict_error_rate"):
        client.conflict_error_rate = 2
    with pytest.raises(InvalidMetricError, match="unknown option"):
        client.configure(throttle=0.5)


# --------------------------------------------------------------------------- with the logger


async def test_logger_stores_every_point_exactly_once_under_internal_errors_and_throttling() -> None:
    client = InMemoryMetricsClient(seed=5, internal_error_rate=0.2, throttle_rate=0.1)
    options: dict[str, Any] = {"max_attempts": 25, "backoff_initial": 0.002, "backoff_max": 0.02}
    async with MetricsLogger(TC, client=client, flush_interval=0.01, **options) as metrics:
        for step in range(2000):
            await metrics.log("loss", step + 0.5, step=step)
    stats = metrics.stats
    assert stats.delivered == stats.logged == 2000 and stats.failed == 0, metrics.failures[:3]
    assert [p.step for p in client.series(TC, "loss")] == list(range(2000))
    assert not client.duplicates()
    # Both faults really happened, and each was retried as over HTTP.
    assert client.counts["INTERNAL_ERROR"] > 200 and client.counts["throttled"] > 10, client.counts
    assert stats.retried >= client.counts["INTERNAL_ERROR"]
    assert_counts_add_up(client)


async def test_the_docstring_example_runs() -> None:
    # The example in the "In memory, with no HTTP" section of the metricsbuf.testing docstring.
    doc = metricsbuf.testing.__doc__ or ""
    section = doc[doc.index("In memory, with no HTTP") :]
    start = section.index("::\n\n") + 3
    example = section[start : section.index("\n\n", section.index("async def", start))]
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(example), namespace)
    await namespace["test_training_loop_logs_every_step"]()


# --------------------------------------------------------------------------- the handler


async def test_handler_answers_replace_the_service_and_store_what_they_do_not_name() -> None:
    seen: list[BatchPutMetricsCall] = []

    def handler(call: BatchPutMetricsCall) -> dict[str, Any] | None:
        seen.append(call)
        if call.number == 0:
            return {"Errors": [{"Code": "INTERNAL_ERROR", "MetricIndex": 1}]}
        if call.number == 1:
            raise EndpointConnectionError(endpoint_url="scripted")
        return None  # the service answers (here: a throttle)

    client = InMemoryMetricsClient(handler=handler, throttle_rate=1.0, parameter_validation=False)
    data = [item(name="a"), item(name="b"), item(name="")]
    assert await outcome(client, data) == [{"Code": "INTERNAL_ERROR", "MetricIndex": 1}]
    assert [p.name for p in client.points] == ["a"]  # "b" was named; "" is invalid
    with pytest.raises(EndpointConnectionError):
        await client.batch_put_metrics(TrialComponentName=TC, MetricData=[item()])
    assert (await outcome(client, [item()]))[1]["Code"] == "ThrottlingException"
    assert [c.number for c in seen] == [0, 1, 2]
    assert seen[0].trial_component == TC and seen[0].metric_data is data  # as passed
    assert client.counts["handled"] == 2 and client.counts["handled_not_stored"] == 2
    assert client.counts["throttled"] == 1
    assert_counts_add_up(client)


async def test_an_async_handler_can_hold_calls_in_flight() -> None:
    gate = asyncio.Event()

    async def handler(call: BatchPutMetricsCall) -> None:
        await gate.wait()

    client = InMemoryMetricsClient(handler=handler)
    calls = [asyncio.ensure_future(outcome(client, [item(step=i)])) for i in range(3)]
    await asyncio.sleep(0.01)
    assert client.in_flight == 3 and not client.points
    gate.set()
    assert await asyncio.gather(*calls) == [[], [], []]
    assert len(client.points) == 3 and client.counts["handled"] == 0


async def test_wait_stored() -> None:
    client = InMemoryMetricsClient(latency=0.02)
    task = asyncio.ensure_future(outcome(client, [item(), item(step=1)]))
    await client.wait_stored(2, timeout=5)
    assert await task == []
    with pytest.raises(asyncio.TimeoutError):
        await client.wait_stored(3, timeout=0.01)


async def test_usable_as_an_async_context_manager_like_an_aiobotocore_client() -> None:
    async with InMemoryMetricsClient() as client:
        assert await outcome(client, [item()]) == []
