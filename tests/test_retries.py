"""Retries: only INTERNAL_ERROR / CONFLICT_ERROR indices are resent; final codes never are."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError, ReadTimeoutError
from conftest import FakeClient, assert_accounted, errors

from metricsbuf import DELIVERY_TIMEOUT, FailedMetric, MetricsLogger

FAST = {"backoff_initial": 0.001, "backoff_max": 0.002}


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "BatchPutMetrics",
    )


async def log_steps(metrics: MetricsLogger, count: int, name: str = "loss") -> None:
    for step in range(count):
        await metrics.log(name, float(step), step=step)


async def test_only_retryable_indices_are_resent() -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any] | None:
        if number == 0:
            return errors(
                (1, "INTERNAL_ERROR"),
                (4, "CONFLICT_ERROR"),
                (6, "VALIDATION_ERROR"),
                (8, "METRIC_LIMIT_EXCEEDED"),
            )
        return None

    client = FakeClient(handler)
    async with MetricsLogger("run-1", client=client, **FAST) as metrics:
        await log_steps(metrics, 10)
    assert [p["Step"] for p in client.requests[1]] == [1, 4]
    assert len(client.requests) == 2
    stats = metrics.stats
    assert (stats.delivered, stats.failed, stats.retried, stats.requests) == (8, 2, 2, 2)
    codes = {f.step: (f.code, f.attempts) for f in metrics.failures}
    assert codes == {6: ("VALIDATION_ERROR", 1), 8: ("METRIC_LIMIT_EXCEEDED", 1)}
    assert sorted(p["Step"] for p in client.stored) == [0, 1, 2, 3, 4, 5, 7, 9]


async def test_retryable_index_fails_after_max_attempts_with_its_code() -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any] | None:
        return errors(
            *(
                (i, "CONFLICT_ERROR" if data[i]["Step"] == 3 else "INTERNAL_ERROR")
                for i in range(len(data))
                if data[i]["Step"] in (2, 3)
            )
        )

    client = FakeClient(handler)
    async with MetricsLogger("run-1", client=client, max_attempts=4, **FAST) as metrics:
        await log_steps(metrics, 5)
    assert len(client.requests) == 4
    assert [len(r) for r in client.requests] == [5, 2, 2, 2]
    failures = {f.step: f for f in metrics.failures}
    assert failures[2].code == "INTERNAL_ERROR" and failures[2].attempts == 4
    assert failures[3].code == "CONFLICT_ERROR" and failures[3].attempts == 4
    assert metrics.stats.retried == 6 and metrics.stats.delivered == 3 and metrics.stats.failed == 2


@pytest.mark.parametrize(
    "exc",
    [
        client_error("ThrottlingException", 400),
        client_error("InternalFailure", 500),
        client_error("ServiceUnavailable", 503),
        client_error("TooManyRequests", 429),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ConnectionResetError("reset"),
        asyncio.TimeoutError(),
    ],
    ids=lambda e: e.response["Error"]["Code"] if isinstance(e, ClientError) else type(e).__name__,
)
async def test_transient_request_failures_retry_the_whole_batch(exc: Exception) -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> None:
        if number < 2:
            raise exc

    client = FakeClient(handler)
    async with MetricsLogger("run-1", client=client, **FAST) as metrics:
        await log_steps(metrics, 7)
    assert [len(r) for r in client.requests] == [7, 7, 7]
    assert metrics.stats.delivered == 7 and metrics.stats.retried == 14 and metrics.failures == []


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (client_error("ValidationException", 400), "ValidationException"),
        (client_error("AccessDeniedException", 403), "AccessDeniedException"),
        (client_error("ResourceNotFound", 400), "ResourceNotFound"),
        (ParamValidationError(report="Step must be >= 0"), "ParamValidationError"),
        (TypeError("client bug"), "TypeError"),
    ],
)
async def test_other_request_failures_are_final_for_the_batch(exc: Exception, code: str) -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> None:
        raise exc

    client = FakeClient(handler)
    async with MetricsLogger("run-1", client=client, **FAST) as metrics:
        await log_steps(metrics, 3)
    assert len(client.requests) == 1
    assert [(f.code, f.attempts) for f in metrics.failures] == [(code, 1)] * 3
    assert metrics.stats.failed == 3


async def test_sustained_throttling_is_bounded_by_delivery_timeout_not_max_attempts() -> None:
    # Throttling is not an error of the point: throttled sends do not count against
    # max_attempts, so sustained throttling fails points only at delivery_timeout.
    def handler(number: int, data: list[dict[str, Any]]) -> None:
        raise client_error("ThrottlingException", 400)

    client = FakeClient(handler)
    async with MetricsLogger("run-1", client=client, max_attempts=3, delivery_timeout=1.0, **FAST) as metrics:
        metrics._sender.rate.min_rate = 20.0  # the slowest probing, raised to keep the test quick
        await log_steps(metrics, 2)
    assert len(client.requests) > 3
    assert {f.code for f in metrics.failures} == {"DELIVERY_TIMEOUT"}
    assert metrics.stats.failed == 2


async def test_delivery_timeout_ends_retries() -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any]:
        return errors(*((i, "INTERNAL_ERROR") for i in range(len(data))))

    client = FakeClient(handler)
    async with MetricsLogger(
        "run-1",
        client=client,
        max_attempts=1000,
        delivery_timeout=0.3,
        backoff_initial=0.01,
        backoff_max=0.05,
    ) as metrics:
        await log_steps(metrics, 4)
    assert {f.code for f in metrics.failures} == {DELIVERY_TIMEOUT}
    assert 1 < len(client.requests) < 1000
    assert metrics.stats.failed == 4


async def test_queued_points_past_delivery_timeout_fail_without_being_sent() -> None:
    client = FakeClient()
    client.gate = asyncio.Event()
    async with MetricsLogger(
        "run-1", client=client, max_in_flight=1, delivery_timeout=0.2, **FAST
    ) as metrics:
        await log_steps(metrics, 10)  # one full batch, held at the gate
        await asyncio.sleep(0)
        await log_steps(metrics, 5, name="late")  # queued behind it
        await asyncio.sleep(0.4)
        client.gate.set()
    late = [f for f in metrics.failures if f.name == "late"]
    assert len(late) == 5 and {(f.code, f.attempts) for f in late} == {(DELIVERY_TIMEOUT, 0)}
    assert sum(len(r) for r in client.requests) == 10


async def test_on_failure_gets_each_group_and_its_exceptions_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[list[FailedMetric]] = []

    def on_failure(group: list[FailedMetric]) -> None:
        seen.append(group)
        raise RuntimeError("bug in the user's callback")

    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any]:
        return errors((0, "VALIDATION_ERROR"))

    client = FakeClient(handler)
    caplog.set_level(logging.WARNING, logger="metricsbuf")
    async with MetricsLogger("run-1", client=client, on_failure=on_failure, flush_interval=0.01) as metrics:
        for step in range(3):
            await metrics.log("loss", 1.0, step=step)
            await metrics.flush()
        await metrics.log("after", 1.0)  # the flusher is still alive
    assert len(seen) == 4 and all(len(g) == 1 for g in seen)
    assert metrics.stats.delivered == 0 and metrics.stats.failed == 4
    assert any("on_failure callback raised" in r.getMessage() for r in caplog.records)


async def test_failure_logging_does_not_flood(caplog: pytest.LogCaptureFixture) -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any]:
        return errors(*((i, "VALIDATION_ERROR") for i in range(len(data))))

    caplog.set_level(logging.WARNING, logger="metricsbuf")
    async with MetricsLogger("run-1", client=FakeClient(handler)) as metrics:
        await log_steps(metrics, 2000)
    assert metrics.stats.failed == 2000 and len(metrics.failures) == 2000
    failure_lines = [r for r in caplog.records if "failed for good" in r.getMessage()]
    assert 1 <= len(failure_lines) <= 3


async def test_unknown_per_index_code_is_final_and_malformed_entries_ignored() -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "Errors": [
                {"MetricIndex": 0, "Code": "BRAND_NEW_CODE"},
                {"MetricIndex": 99, "Code": "INTERNAL_ERROR"},
                {"Code": "INTERNAL_ERROR"},
                "junk",
            ]
        }

    client = FakeClient(handler)
    async with MetricsLogger("run-1", client=client, **FAST) as metrics:
        await log_steps(metrics, 3)
    assert len(client.requests) == 1
    assert [(f.step, f.code) for f in metrics.failures] == [(0, "BRAND_NEW_CODE")]
    assert metrics.stats.delivered == 2
    assert_accounted(metrics.stats)


async def test_retry_waits_release_the_in_flight_slot() -> None:
    # One slot; the first batch keeps failing with backoff while later batches still go out.
    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any] | None:
        if data[0]["MetricName"] == "stuck":
            return errors((0, "INTERNAL_ERROR"))
        return None

    client = FakeClient(handler)
    async with MetricsLogger(
        "run-1", client=client, max_in_flight=1, max_attempts=5, backoff_initial=0.05, backoff_max=0.05
    ) as metrics:
        await metrics.log("stuck", 1.0)
        await metrics.flush()
    async with MetricsLogger(
        "run-2", client=client, max_in_flight=1, max_attempts=3, backoff_initial=0.2, backoff_max=0.2
    ) as metrics:
        metrics.log_nowait("stuck", 1.0)
        task = asyncio.ensure_future(metrics.flush())
        await asyncio.sleep(0.05)  # the stuck point is backing off now
        await log_steps(metrics, 10, name="free")
        await asyncio.sleep(0.05)
        assert any(r[0]["MetricName"] == "free" for r in client.requests[-2:])
        await task


async def test_whole_request_failures_keep_the_slot_while_backing_off() -> None:
    # A throttled batch keeps its in-flight slot during backoff: a struggling service sees at
    # most max_in_flight batches, and the next batch waits its turn.
    def handler(number: int, data: list[dict[str, Any]]) -> None:
        if number < 3:
            raise client_error("ThrottlingException", 400)

    client = FakeClient(handler)
    async with MetricsLogger(
        "run-1", client=client, max_in_flight=1, backoff_initial=0.02, backoff_max=0.02, flush_interval=0.001
    ) as metrics:
        await metrics.log("first", 1.0)
        await asyncio.sleep(0.005)  # "first" is in flight and throttled
        await metrics.log("second", 1.0)
        await metrics.flush()
    names = [r[0]["MetricName"] for r in client.requests]
    assert names == ["first", "first", "first", "first", "second"]


async def test_resends_ride_in_the_next_batch_with_fresh_points() -> None:
    # After per-index errors, only those points go again, and they fill the next request up
    # with queued points instead of taking a request of their own.
    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any] | None:
        if number == 0:
            return errors((2, "INTERNAL_ERROR"), (7, "CONFLICT_ERROR"))
        return None

    client = FakeClient(handler)
    async with MetricsLogger(
        "run-1", client=client, flush_interval=3600, backoff_initial=0.2, backoff_max=0.2
    ) as metrics:
        await log_steps(metrics, 10)
        await asyncio.sleep(0.02)  # answered; the two resends wait out their backoff
        for step in range(10, 18):  # a partial batch: it would wait for flush_interval
            await metrics.log("loss", float(step), step=step)
        await asyncio.sleep(0.5)
        assert len(client.requests) == 2  # the resends went when due, with the queued points
    assert [sorted(p["Step"] for p in r) for r in client.requests] == [
        list(range(10)),
        [2, 7, *range(10, 18)],
    ]
    assert metrics.stats.retried == 2 and metrics.stats.delivered == 18
