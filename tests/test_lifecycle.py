"""Start, flush, close, cancellation, the close deadline and a dead flusher."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import pytest
from conftest import FakeClient, assert_accounted, flusher_ended

from metricsbuf import CLOSE_TIMEOUT, FLUSHER_CRASHED, LoggerClosedError, MetricsBufError, MetricsLogger
from metricsbuf._accumulator import Accumulator


async def test_close_delivers_everything(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client, flush_interval=3600.0) as metrics:
        for step in range(23):
            await metrics.log("loss", float(step), step=step)
    assert metrics.stats.delivered == 23 and metrics.stats.pending == 0
    assert len(client.stored) == 23


async def test_aclose_without_async_with(client: FakeClient) -> None:
    metrics = MetricsLogger("run-1", client=client, flush_interval=3600.0)
    await metrics.start()
    await metrics.log("loss", 1.0)
    await metrics.aclose()
    await metrics.aclose()  # idempotent
    assert metrics.stats.delivered == 1


async def test_log_before_start_and_after_close(client: FakeClient) -> None:
    metrics = MetricsLogger("run-1", client=client)
    with pytest.raises(MetricsBufError, match="not started"):
        await metrics.log("loss", 1.0)
    async with metrics:
        pass
    for call in (metrics.log("loss", 1.0), metrics.log_many({"a": 1.0}), metrics.flush()):
        with pytest.raises(LoggerClosedError):
            await call
    with pytest.raises(LoggerClosedError):
        metrics.log_nowait("loss", 1.0)


async def test_cannot_be_entered_twice(client: FakeClient) -> None:
    metrics = MetricsLogger("run-1", client=client)
    async with metrics:
        with pytest.raises(MetricsBufError, match="only once"):
            async with metrics:
                pass
    with pytest.raises(MetricsBufError, match="only once"):
        await metrics.start()


async def test_flush_timeout_raises_timeout_error_and_keeps_the_points() -> None:
    client = FakeClient()
    client.gate = asyncio.Event()
    async with MetricsLogger("run-1", client=client) as metrics:
        await metrics.log("loss", 1.0)
        with pytest.raises(TimeoutError):
            await metrics.flush(timeout=0.05)
        assert metrics.stats.pending == 1
        client.gate.set()
        await metrics.flush(timeout=5)
        assert metrics.stats.delivered == 1


async def test_flush_waits_only_for_points_logged_before_it() -> None:
    release_second = asyncio.Event()

    class SecondIsSlow(FakeClient):
        async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]:
            if kwargs["MetricData"][0]["MetricName"] == "second":
                await release_second.wait()
            return await super().batch_put_metrics(**kwargs)

    client = SecondIsSlow()
    async with MetricsLogger("run-1", client=client, max_batch_size=1, max_in_flight=2) as metrics:
        metrics.log_nowait("second", 1.0)
        metrics.log_nowait("third", 1.0)
        await asyncio.sleep(0.01)  # "second" is stuck in flight, "third" is delivered
        assert metrics.stats.delivered == 1
        waiting_for_second = asyncio.ensure_future(metrics.flush())
        await asyncio.sleep(0.01)
        assert not waiting_for_second.done()
        release_second.set()
        await asyncio.wait_for(waiting_for_second, 5)
        assert metrics.stats.delivered == 2


async def test_flush_ignores_points_logged_after_it() -> None:
    release = asyncio.Event()

    class LateIsSlow(FakeClient):
        async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]:
            if kwargs["MetricData"][0]["MetricName"] == "late":
                await release.wait()
            return await super().batch_put_metrics(**kwargs)

    client = LateIsSlow()
    async with MetricsLogger("run-1", client=client, max_batch_size=1, max_in_flight=4) as metrics:
        metrics.log_nowait("early", 1.0)
        flushing = asyncio.ensure_future(metrics.flush())
        await asyncio.sleep(0)  # flush() has started and noted what to wait for
        metrics.log_nowait("late", 1.0)  # logged after flush() was called, and stuck
        await asyncio.wait_for(flushing, 5)
        assert [p["MetricName"] for p in client.stored] == ["early"]
        assert metrics.stats.pending == 1
        release.set()


async def test_body_exception_propagates_after_the_drain(client: FakeClient) -> None:
    with pytest.raises(RuntimeError, match="training blew up"):
        async with MetricsLogger("run-1", client=client, flush_interval=3600.0) as metrics:
            await metrics.log("loss", 1.0)
            raise RuntimeError("training blew up")
    assert metrics.stats.delivered == 1


async def test_cancelled_job_still_delivers_what_it_logged() -> None:
    client = FakeClient()
    logged = asyncio.Event()
    metrics = MetricsLogger("run-1", client=client, flush_interval=3600.0)

    async def job() -> None:
        async with metrics:
            for step in range(15):
                await metrics.log("loss", float(step), step=step)
            logged.set()
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(job())
    await logged.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert metrics.stats.delivered == 15
    assert sorted(p["Step"] for p in client.stored) == list(range(15))


async def test_anyio_cancel_scope_around_the_job_still_drains() -> None:
    client = FakeClient()
    with anyio.move_on_after(0.05):
        async with MetricsLogger("run-1", client=client, flush_interval=3600.0) as metrics:
            await metrics.log("loss", 1.0)
            await anyio.sleep(3600)
    assert metrics.stats.delivered == 1


async def test_backend_hung_exit_respects_close_timeout_and_reports_every_point() -> None:
    client = FakeClient()
    client.gate = asyncio.Event()  # never opened: every request hangs
    started = time.monotonic()
    async with MetricsLogger("run-1", client=client, close_timeout=0.3, max_in_flight=2) as metrics:
        for step in range(45):
            await metrics.log("loss", float(step), step=step)
    elapsed = time.monotonic() - started
    assert elapsed < 0.3 + 2.0
    stats = metrics.stats
    assert (stats.delivered, stats.failed, stats.pending) == (0, 45, 0)
    assert {f.code for f in metrics.failures} == {CLOSE_TIMEOUT}
    in_flight = [f for f in metrics.failures if f.attempts == 1]
    assert len(in_flight) == 20 and all("may have stored" in f.message for f in in_flight)
    assert not any("may have stored" in f.message for f in metrics.failures if f.attempts == 0)


async def test_backend_down_during_retries_exit_respects_close_timeout() -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> None:
        raise ConnectionResetError("down")

    started = time.monotonic()
    async with MetricsLogger(
        "run-1", client=FakeClient(handler), close_timeout=0.3, backoff_initial=0.05
    ) as metrics:
        for step in range(100):
            await metrics.log("loss", float(step), step=step)
    assert time.monotonic() - started < 0.3 + 2.0
    assert metrics.stats.failed == 100 and {f.code for f in metrics.failures} == {CLOSE_TIMEOUT}


async def test_dead_flusher_makes_calls_raise_instead_of_hanging(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = MetricsLogger("run-1", client=client, max_buffered=5)

    async def broken(self: Accumulator, no_more_points: object) -> None:
        raise RuntimeError("flusher bug")

    monkeypatch.setattr(Accumulator, "wait_until_batch_due", broken)
    await metrics.start()
    metrics.log_nowait("loss", 1.0)
    await flusher_ended()
    with pytest.raises(LoggerClosedError, match="flusher died"):
        await metrics.log("loss", 2.0)
    with pytest.raises(LoggerClosedError, match="flusher died"):
        await metrics.flush()
    with pytest.raises(LoggerClosedError, match="flusher died"):
        await metrics.aclose()
    assert [f.code for f in metrics.failures] == [FLUSHER_CRASHED]
    assert_accounted(metrics.stats)


async def test_blocked_producer_is_released_when_the_flusher_dies(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()

    async def broken(self: Accumulator, no_more_points: object) -> None:
        await gate.wait()
        raise RuntimeError("flusher bug")

    monkeypatch.setattr(Accumulator, "wait_until_batch_due", broken)
    metrics = MetricsLogger("run-1", client=client, max_buffered=1, on_full="block")
    await metrics.start()
    await metrics.log("a", 1.0)
    blocked = asyncio.ensure_future(metrics.log("b", 1.0))
    await asyncio.sleep(0.01)
    gate.set()
    with pytest.raises(LoggerClosedError):
        await asyncio.wait_for(blocked, 5)
    with pytest.raises(LoggerClosedError):
        await metrics.aclose()


async def test_close_wakes_a_blocked_producer() -> None:
    client = FakeClient()
    client.gate = asyncio.Event()
    metrics = MetricsLogger("run-1", client=client, max_buffered=1, close_timeout=0.2)
    await metrics.start()
    await metrics.log("a", 1.0)
    blocked = asyncio.ensure_future(metrics.log("b", 1.0))
    await asyncio.sleep(0.01)
    await metrics.aclose()
    with pytest.raises(LoggerClosedError):
        await blocked
    assert metrics.stats.logged == 1 and metrics.stats.failed == 1
