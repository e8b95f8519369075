"""Reliability at the end of a job: a dead or hanging backend, and a cancelled job.

Through a real aiobotocore client and the fake service over HTTP. Exit must keep its deadline
(``close_timeout``, plus a small margin) and still account for every point; a cancelled job
must still deliver what it logged before the cancellation.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import pytest
from reliability_support import (
    Key,
    RecordingService,
    assert_logger_accounted,
    assert_service_counts_add_up,
    assert_stored_exactly,
    failure_key,
    metrics_client,
)

from metricsbuf import CLOSE_TIMEOUT, DELIVERY_TIMEOUT, MetricsLogger

TC = "reliability-run-0002"
SERVER_ERROR_CODES = {"InternalFailure", "ServiceUnavailable"}
# Exit may take close_timeout plus this: cancelling in-flight requests to a local server and
# accounting for the points takes milliseconds; the rest is room for a noisy machine.
EXIT_MARGIN = 1.5


async def log_points(metrics: MetricsLogger, count: int) -> list[Key]:
    keys: list[Key] = []
    for step in range(count):
        await metrics.log("loss", step + 0.5, step=step)
        keys.append((TC, "loss", step, step + 0.5))
    return keys


async def test_backend_down_retries_run_out_and_every_point_fails_with_the_5xx_code() -> None:
    async with RecordingService(server_error_rate=1.0) as svc, metrics_client(svc.endpoint_url) as client:
        metrics = MetricsLogger(
            TC, client=client, max_attempts=3, backoff_initial=0.01, backoff_max=0.02, close_timeout=20
        )
        async with metrics:
            keys = await log_points(metrics, 200)
            started = time.monotonic()
        elapsed = time.monotonic() - started
    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.delivered == 0 and stats.failed == stats.logged == 200
    assert {failure_key(TC, f) for f in metrics.failures} == set(keys)
    assert {f.code for f in metrics.failures} <= SERVER_ERROR_CODES
    assert all(f.attempts == 3 for f in metrics.failures)
    # Each point was sent exactly max_attempts times, in requests the service refused whole.
    assert svc.points == []
    assert_service_counts_add_up(svc)
    assert svc.counts["requests"] == svc.counts["server_error"] == stats.requests
    sent = [key for record in svc.records for key in record.items]
    assert len(sent) == 3 * 200 and set(sent) == set(keys)
    assert elapsed < 20, elapsed  # it gave up by itself, long before the close deadline


async def test_backend_down_points_fail_at_delivery_timeout_before_close() -> None:
    async with RecordingService(server_error_rate=1.0) as svc, metrics_client(svc.endpoint_url) as client:
        metrics = MetricsLogger(
            TC,
            client=client,
            max_attempts=1_000_000,
            backoff_initial=0.01,
            backoff_max=0.05,
            delivery_timeout=0.5,
            close_timeout=20,
        )
        async with metrics:
            keys = await log_points(metrics, 200)
            started = time.monotonic()
        elapsed = time.monotonic() - started
    assert_logger_accounted(metrics)
    assert metrics.stats.delivered == 0 and metrics.stats.failed == 200
    assert {failure_key(TC, f) for f in metrics.failures} == set(keys)
    assert {f.code for f in metrics.failures} == {DELIVERY_TIMEOUT}
    assert svc.points == [] and svc.counts["server_error"] > 10
    assert elapsed < 0.5 + EXIT_MARGIN, elapsed  # the points' own deadline, not close_timeout


@pytest.mark.parametrize("backend", ["every request 5xx", "no answer (black hole)"])
async def test_backend_down_exit_keeps_close_timeout_and_reports_every_point(backend: str) -> None:
    close_timeout = 1.0
    faults: dict[str, Any] = {"server_error_rate": 1.0} if backend.endswith("5xx") else {"latency": 3600.0}
    async with RecordingService(**faults) as svc, metrics_client(svc.endpoint_url) as client:
        metrics = MetricsLogger(
            TC,
            client=client,
            max_attempts=1_000_000,
            backoff_initial=0.01,
            backoff_max=0.05,
            close_timeout=close_timeout,
        )
        async with metrics:
            keys = await log_points(metrics, 300)
            await asyncio.sleep(0.2)  # requests are failing (or hanging) by now
            started = time.monotonic()
        elapsed = time.monotonic() - started
        assert close_timeout - 0.05 <= elapsed <= close_timeout + EXIT_MARGIN, elapsed

        # The caller's client survives the cancelled requests: once the backend is back, a new
        # logger on it delivers everything.
        svc.configure(server_error_rate=0.0, latency=0.0)
        async with MetricsLogger(TC, client=client) as after:
            await after.log_many({"after:a": 1.0, "after:b": 2.0}, step=0)
        assert after.stats.delivered == 2
    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.delivered == 0 and stats.failed == stats.logged == 300
    assert {failure_key(TC, f) for f in metrics.failures} == set(keys)
    assert {f.code for f in metrics.failures} == {CLOSE_TIMEOUT}
    assert_stored_exactly(svc, [(TC, "after:a", 0, 1.0), (TC, "after:b", 0, 2.0)])
    in_flight = [f for f in metrics.failures if "may have stored" in f.message]
    if backend.endswith("5xx"):
        assert svc.counts["server_error"] > 10 and stats.retried > 0
        assert all(f.attempts >= 1 for f in in_flight)
    else:
        # The four requests still hanging were cancelled at the deadline: their 40 points may have
        # been stored, and the failures say so; the rest never left the buffer.
        assert len(in_flight) == 40 and all(f.attempts == 1 for f in in_flight)
        assert all(f.attempts == 0 for f in metrics.failures if f not in in_flight)
        assert stats.requests == 4


@pytest.mark.parametrize("how", ["task.cancel()", "anyio cancel scope", "cancelled while blocked in log"])
async def test_cancelled_job_still_delivers_what_it_logged(how: str) -> None:
    faults = {"latency": 0.02, "internal_error_rate": 0.1, "conflict_error_rate": 0.05}
    options: dict[str, Any] = {"max_attempts": 25, "backoff_initial": 0.005, "backoff_max": 0.1}
    if how == "cancelled while blocked in log":
        options.update(max_buffered=50, on_full="block")
    async with RecordingService(seed=2, **faults) as svc, metrics_client(svc.endpoint_url) as client:
        metrics = MetricsLogger(TC, client=client, **options)
        logged: list[Key] = []
        busy = asyncio.Event()
        in_log = False

        async def job() -> None:
            nonlocal in_log
            async with metrics:
                step = 0
                while True:
                    in_log = True
                    await metrics.log("loss", step + 0.5, step=step)
                    in_log = False
                    logged.append((TC, "loss", step, step + 0.5))  # only once log() returned
                    step += 1
                    if step == 1000:
                        busy.set()
                    await asyncio.sleep(0)  # the job's own work

        scope = anyio.CancelScope()

        async def job_in_scope() -> None:
            with scope:
                await job()

        task = asyncio.create_task(job_in_scope() if how == "anyio cancel scope" else job())
        await busy.wait()
        if how == "cancelled while blocked in log":
            # Cancel while the job waits inside log() for room: that point is not logged.
            for _ in range(10_000):  # polled: nothing can signal from inside log()
                if in_log and metrics.stats.pending == 50:
                    break
                await asyncio.sleep(0.001)
            else:
                pytest.fail("the job never blocked in log()")
        at_cancel = metrics.stats
        if how == "anyio cancel scope":
            scope.cancel()
            await task
            assert scope.cancelled_caught
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert at_cancel.pending > 0, at_cancel  # there was something left to deliver
    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.failed == 0, metrics.failures[:5]
    assert stats.logged == stats.delivered == len(logged) >= 1000
    if how == "cancelled while blocked in log":
        assert in_log  # the cancellation interrupted log(), whose point must not be stored
    assert_stored_exactly(svc, logged)
    assert_service_counts_add_up(svc)
    print(f"\n{how}: at cancellation {at_cancel}; after exit {stats}")
