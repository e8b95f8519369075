"""The lifecycle at its edges: repeated cancellation, a flusher cancelled or killed from outside,
other event loops, other threads, forks, late answers and all-or-nothing calls.

Each test pins a defect that lost points silently, hung, or hid the caller's own exception.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from conftest import FakeClient, assert_accounted, flusher_ended

import metricsbuf._logger
from metricsbuf import (
    CLOSE_TIMEOUT,
    DELIVERY_TIMEOUT,
    BufferFullError,
    InvalidMetricError,
    LoggerClosedError,
    MetricsBufError,
    MetricsLogger,
)
from metricsbuf._accumulator import Accumulator
from metricsbuf._spool import Spool


class SlowClient(FakeClient):
    """Answers every request after ``latency`` seconds."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency

    async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]:
        await asyncio.sleep(self.latency)
        return await super().batch_put_metrics(**kwargs)


def pending_rows(spool_dir: Path) -> int:
    spool = Spool.open(spool_dir, read_only=True)
    try:
        return spool.count_pending()
    finally:
        spool.close()


# ---------------------------------------------------------------------------------------------
# Cancellation during close


async def _job_cancelled_repeatedly(metrics: MetricsLogger, cancels: int, every: float) -> None:
    logged = asyncio.Event()

    async def job() -> None:
        async with metrics:
            for step in range(200):
                await metrics.log("loss", float(step), step=step)
            logged.set()
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(job())
    await logged.wait()
    for _ in range(cancels):
        task.cancel()
        await asyncio.sleep(every)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)


@pytest.mark.parametrize("cancels", [2, 20])
async def test_repeated_cancellation_during_close_still_delivers_everything(cancels: int) -> None:
    client = SlowClient(latency=0.01)
    metrics = MetricsLogger("run-1", client=client, max_in_flight=1, flush_interval=3600.0)
    await _job_cancelled_repeatedly(metrics, cancels, every=0.05 if cancels == 2 else 0.01)
    stats = metrics.stats
    assert (stats.logged, stats.delivered, stats.failed, stats.pending) == (200, 200, 0, 0)
    assert sorted(p["Step"] for p in client.stored) == list(range(200))


async def test_repeated_cancellation_past_close_timeout_reports_what_is_left() -> None:
    client = SlowClient(latency=0.05)
    metrics = MetricsLogger("run-1", client=client, max_in_flight=1, close_timeout=0.3)
    started = time.monotonic()
    await _job_cancelled_repeatedly(metrics, cancels=10, every=0.02)
    assert time.monotonic() - started < 0.3 + 3.0
    stats = metrics.stats
    assert stats.pending == 0 and stats.delivered > 0 and stats.failed > 0
    assert stats.delivered + stats.failed == 200
    assert {f.code for f in metrics.failures} == {CLOSE_TIMEOUT}


async def test_repeated_cancellation_during_close_with_a_spool_releases_it(tmp_path: Path) -> None:
    client = SlowClient(latency=0.05)
    metrics = MetricsLogger("run-1", client=client, max_in_flight=1, close_timeout=0.3, spool_dir=tmp_path)
    await _job_cancelled_repeatedly(metrics, cancels=10, every=0.02)
    stats = metrics.stats
    assert_accounted(stats)
    assert stats.failed == 0 and stats.delivered + stats.pending == 200
    assert pending_rows(tmp_path) == stats.pending  # what was not delivered is on disk
    # The spool was released: the next logger on it opens and sends the rest.
    async with MetricsLogger("run-1", client=client, spool_dir=tmp_path) as again:
        assert again.stats.recovered == stats.pending
    assert again.stats.delivered == stats.pending
    assert sorted(p["Step"] for p in client.stored) == list(range(200))


# ---------------------------------------------------------------------------------------------
# A flusher cancelled from outside; other event loops; other threads


def test_cancel_all_tasks_idiom_still_delivers_within_close_timeout() -> None:
    client = SlowClient(latency=0.01)
    metrics = MetricsLogger("run-1", client=client, close_timeout=5, flush_interval=3600.0)

    async def main() -> None:
        async with metrics:
            for step in range(100):
                await metrics.log("loss", float(step), step=step)
            for task in asyncio.all_tasks():  # the usual SIGTERM handler
                task.cancel()
            await asyncio.sleep(3600)

    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert time.monotonic() - started < 5
    assert (metrics.stats.delivered, metrics.stats.failed, metrics.stats.pending) == (100, 0, 0)
    assert sorted(p["Step"] for p in client.stored) == list(range(100))


def test_cancel_all_tasks_twice_during_the_drain_still_delivers() -> None:
    client = SlowClient(latency=0.02)
    metrics = MetricsLogger("run-1", client=client, close_timeout=5, max_in_flight=1)

    async def main() -> None:
        async def cancel_everything_again() -> None:
            await asyncio.sleep(0.05)
            for task in asyncio.all_tasks():
                task.cancel()

        async with metrics:
            for step in range(100):
                await metrics.log("loss", float(step), step=step)
            for task in asyncio.all_tasks():
                task.cancel()
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(cancel_everything_again()))
            await asyncio.sleep(3600)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert (metrics.stats.delivered, metrics.stats.pending) == (100, 0)


async def test_flusher_cancelled_from_outside_makes_calls_raise_and_close_still_drains() -> None:
    client = FakeClient()
    client.gate = asyncio.Event()
    metrics = MetricsLogger("run-1", client=client, close_timeout=5)
    await metrics.start()
    for step in range(25):
        await metrics.log("loss", float(step), step=step)
    await asyncio.sleep(0.01)  # two batches in flight, one partial queued
    flusher = next(t for t in asyncio.all_tasks() if t.get_name().startswith("metricsbuf-flusher"))
    flusher.cancel()
    await flusher_ended()
    with pytest.raises(LoggerClosedError, match="cancelled"):
        await metrics.log("loss", 1.0)
    with pytest.raises(LoggerClosedError, match="cancelled"):
        metrics.log_nowait("loss", 1.0)
    with pytest.raises(LoggerClosedError, match="cancelled"):
        await metrics.flush()
    client.gate.set()
    await metrics.aclose()  # the drain runs on a new flusher: nothing is lost
    stats = metrics.stats
    assert (stats.logged, stats.delivered + 0, stats.failed, stats.pending) == (25, 25, 0, 0)
    # The two batches cancelled in flight were sent again (at least once: they may have been stored).
    assert {p["Step"] for p in client.stored} == set(range(25))


def test_logger_used_from_another_event_loop_raises_a_clear_error() -> None:
    metrics = MetricsLogger("run-1", client=FakeClient())
    asyncio.run(metrics.start())  # that loop ends, and its tasks (the flusher) are cancelled

    async def on_another_loop() -> None:
        with pytest.raises(MetricsBufError, match="event loop"):
            await metrics.log("loss", 1.0)
        with pytest.raises(MetricsBufError, match="event loop"):
            await metrics.log_many({"loss": 1.0})
        with pytest.raises(MetricsBufError, match="event loop"):
            metrics.log_nowait("loss", 1.0)
        with pytest.raises(MetricsBufError, match="event loop"):
            await metrics.flush()
        started = time.monotonic()
        with pytest.raises(MetricsBufError, match="event loop"):
            await metrics.aclose()
        assert time.monotonic() - started < 1  # an error at once, not a pretended timeout

    asyncio.run(on_another_loop())
    assert metrics.stats.logged == 0


def test_logger_whose_loop_stopped_used_from_another_loop_in_the_same_thread_raises() -> None:
    loop = asyncio.new_event_loop()
    client = FakeClient()
    metrics = MetricsLogger("run-1", client=client)
    try:
        loop.run_until_complete(metrics.start())  # that loop stops; its flusher stays pending

        async def on_another_loop() -> None:
            for _ in range(3):
                with pytest.raises(MetricsBufError, match="event loop"):
                    await metrics.log("loss", 1.0, step=1)

        asyncio.run(on_another_loop())
        assert metrics.stats.logged == 0
        loop.run_until_complete(metrics.log("loss", 2.0, step=2))  # its own loop again: accepted
        loop.run_until_complete(metrics.aclose())
    finally:
        loop.close()
    assert [p["Value"] for p in client.stored] == [2.0]


async def test_logger_used_from_a_loop_in_another_thread_raises_a_clear_error() -> None:
    other_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=other_loop.run_forever, daemon=True)
    thread.start()
    client = FakeClient()
    metrics = MetricsLogger("run-1", client=client)
    try:
        asyncio.run_coroutine_threadsafe(metrics.start(), other_loop).result(5)
        with pytest.raises(MetricsBufError, match="event loop"):
            await metrics.log("loss", 1.0)
        with pytest.raises(MetricsBufError, match="event loop"):
            metrics.log_nowait("loss", 1.0)
        assert metrics.stats.logged == 0
        asyncio.run_coroutine_threadsafe(metrics.log("loss", 2.0), other_loop).result(5)
        asyncio.run_coroutine_threadsafe(metrics.aclose(), other_loop).result(5)
    finally:
        other_loop.call_soon_threadsafe(other_loop.stop)
        thread.join(5)
        other_loop.close()
    assert metrics.stats.delivered == 1 and [p["Value"] for p in client.stored] == [2.0]


async def test_log_nowait_from_a_foreign_thread_raises_a_clear_error(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client) as metrics:
        with pytest.raises(MetricsBufError, match="thread"):
            await anyio.to_thread.run_sync(lambda: metrics.log_nowait("loss", 1.0))
        assert metrics.stats.logged == 0
    assert client.stored == []


# ---------------------------------------------------------------------------------------------
# flush() always returns


async def test_flush_offline_with_leftovers_from_an_earlier_run_returns(tmp_path: Path) -> None:
    async with MetricsLogger("run-1", spool_dir=tmp_path, offline=True) as first:
        for step in range(5):
            await first.log("loss", float(step), step=step)
    async with MetricsLogger("run-1", spool_dir=tmp_path, offline=True) as second:
        assert second.stats.recovered == 5
        await second.log("loss", 5.0, step=5)
        await second.flush(timeout=5)  # offline, settled means on disk
        assert pending_rows(tmp_path) == 6
    assert pending_rows(tmp_path) == 6


@pytest.mark.parametrize("with_spool", [False, True])
async def test_a_flush_running_when_close_completes_is_released(tmp_path: Path, with_spool: bool) -> None:
    client = FakeClient()
    client.gate = asyncio.Event()  # never answers
    # With a spool, max_buffered=5 leaves most points on disk only (the backlog).
    metrics = MetricsLogger(
        "run-1",
        client=client,
        close_timeout=0.2,
        max_buffered=5 if with_spool else 100,
        spool_dir=tmp_path if with_spool else None,
    )
    await metrics.start()
    for step in range(30):
        await metrics.log("loss", float(step), step=step)
    flushing = asyncio.ensure_future(metrics.flush())
    await asyncio.sleep(0.3)
    await metrics.aclose()
    await asyncio.wait_for(flushing, 5)  # returns: every point's outcome is settled
    assert metrics.stats.pending == (30 if with_spool else 0)
    assert_accounted(metrics.stats)


# ---------------------------------------------------------------------------------------------
# Outcomes are final


async def test_an_answer_arriving_after_close_does_not_count_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metricsbuf._logger, "_CANCEL_GRACE", 0.1)
    release = threading.Event()

    class BlockingThreadClient:
        """Wraps a blocking call in a worker thread, as a boto3-based client would."""

        async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]:
            await anyio.to_thread.run_sync(release.wait, 10)
            return {"Errors": []}

    metrics = MetricsLogger("run-1", client=BlockingThreadClient(), close_timeout=0.2)
    await metrics.start()
    for step in range(10):
        await metrics.log("loss", float(step), step=step)
    closing = asyncio.ensure_future(metrics.aclose())
    samples = []
    while not closing.done():
        samples.append(metrics.stats)
        await asyncio.sleep(0.01)
    await closing
    assert (metrics.stats.failed, metrics.stats.pending) == (10, 0)
    release.set()  # the request answers now, after close reported its points
    for _ in range(30):
        samples.append(metrics.stats)
        await asyncio.sleep(0.01)
    for stats in samples:
        assert_accounted(stats)
        assert min(stats.delivered, stats.failed, stats.dropped, stats.pending) >= 0, stats
    final = metrics.stats
    assert (final.delivered, final.failed, final.pending) == (0, 10, 0)
    assert {f.code for f in metrics.failures} == {CLOSE_TIMEOUT}
    assert all("may have stored" in f.message for f in metrics.failures)


async def test_a_point_waiting_to_be_resent_fails_at_its_delivery_timeout() -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any]:
        return {"Errors": [{"MetricIndex": 0, "Code": "INTERNAL_ERROR"}]}

    failed_at: list[float] = []
    metrics = MetricsLogger(
        "run-1",
        client=FakeClient(handler),
        delivery_timeout=0.5,
        backoff_initial=3.0,
        backoff_max=3.0,
        on_failure=lambda failures: failed_at.append(time.monotonic()),
    )
    # The retry quota spent (as after many failed indices): resends wait out the backoff.
    metrics._sender._quota.tokens = 0.0
    async with metrics:
        started = time.monotonic()
        await metrics.log("loss", 1.0)
        await metrics.flush(timeout=10)
    assert [f.code for f in metrics.failures] == [DELIVERY_TIMEOUT]
    assert failed_at[0] - started < 0.5 + 1.0  # not after the 3 s backoff


# ---------------------------------------------------------------------------------------------
# The caller's own exception always wins


def _kill_flusher(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Accumulator, no_more_points: object) -> None:
        raise RuntimeError("flusher bug")

    monkeypatch.setattr(Accumulator, "wait_until_batch_due", broken)


async def test_body_exception_is_not_replaced_by_a_dead_flusher(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _kill_flusher(monkeypatch)
    with pytest.raises(ValueError, match="the body's own error") as raised:
        async with MetricsLogger("run-1", client=client) as metrics:
            metrics.log_nowait("loss", 1.0)
            await flusher_ended()
            raise ValueError("the body's own error")
    assert "flusher died" in caplog.text
    if sys.version_info >= (3, 11):  # the logger's failure is attached to the body's exception as a note
        assert any("flusher died" in note for note in raised.value.__notes__)
    assert metrics.stats.failed == 1


async def test_cancel_scope_around_a_dead_logger_is_not_escaped(
    client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kill_flusher(monkeypatch)
    with anyio.move_on_after(0.3) as scope:
        async with MetricsLogger("run-1", client=client) as metrics:
            metrics.log_nowait("loss", 1.0)
            await anyio.sleep(3600)
    assert scope.cancelled_caught
    assert metrics.stats.failed == 1


# ---------------------------------------------------------------------------------------------
# Other async libraries


def test_trio_backend_gets_a_clear_error_and_leaks_nothing(tmp_path: Path) -> None:
    metrics = MetricsLogger("run-1", client=FakeClient(), spool_dir=tmp_path)

    async def main() -> None:
        with pytest.raises(MetricsBufError, match="asyncio"):
            await metrics.start()
        with pytest.raises(MetricsBufError, match="asyncio"):
            async with metrics:
                pass
        await metrics.aclose()  # nothing to do, and no AssertionError

    anyio.run(main, backend="trio")
    # Nothing was acquired: the spool folder is free for a logger on asyncio.
    spool = Spool.open(tmp_path)
    spool.close()


# ---------------------------------------------------------------------------------------------
# All or nothing


async def test_log_many_under_on_full_raise_logs_all_or_nothing() -> None:
    client = FakeClient()
    client.gate = asyncio.Event()
    async with MetricsLogger(
        "run-1", client=client, max_buffered=3, on_full="raise", close_timeout=0.2
    ) as metrics:
        await metrics.log("a", 1.0)
        with pytest.raises(BufferFullError):
            await metrics.log_many({"b": 1.0, "c": 2.0, "d": 3.0})
        assert metrics.stats.logged == 1
        await metrics.log_many({"b": 1.0, "c": 2.0})  # fits
        assert metrics.stats.logged == 3
        client.gate.set()


async def test_log_many_that_fails_validation_changes_no_counter(client: FakeClient) -> None:
    async with MetricsLogger("run-1", client=client) as metrics:
        with pytest.raises(InvalidMetricError):
            await metrics.log_many({"a": math.nan, "b": 1.0, "c": "not a number"})  # type: ignore[dict-item]
        assert metrics.stats.rejected == 0 and metrics.stats.logged == 0
        await metrics.log_many({"a": math.nan, "b": 1.0})
        assert metrics.stats.rejected == 1 and metrics.stats.logged == 1


# ---------------------------------------------------------------------------------------------
# Forks


_FORK_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from metricsbuf import MetricsBufError, MetricsLogger

    class Client:
        def __init__(self):
            self.stored = []
        async def batch_put_metrics(self, **kwargs):
            self.stored.extend(kwargs["MetricData"])
            return {"Errors": []}

    async def parent():
        client = Client()
        async with MetricsLogger("run-1", client=client, flush_interval=3600.0) as metrics:
            for step in range(5):
                await metrics.log("loss", float(step), step=step)
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    await metrics.log("loss", 98.0)  # the child still runs this coroutine
                    code = 6
                except MetricsBufError as exc:
                    if "fork" not in str(exc):
                        code = 7
                try:
                    metrics.log_nowait("loss", 99.0)
                    code = 3  # accepted in the child: it would never be sent
                except MetricsBufError as exc:
                    if "fork" not in str(exc):
                        code = 4
                async def fresh():
                    child_client = Client()
                    async with MetricsLogger("run-1", client=child_client) as child_metrics:
                        await child_metrics.log("child", 1.0)
                    return len(child_client.stored)
                if asyncio.run(fresh()) != 1:
                    code = 5
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            for step in range(5, 10):
                await metrics.log("loss", float(step), step=step)
        print(os.waitstatus_to_exitcode(status), len(client.stored), metrics.stats.delivered)

    asyncio.run(parent())
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_gets_a_clear_error_and_the_parent_is_unaffected() -> None:
    result = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "10", "10"], result.stdout + result.stderr


async def test_a_spool_commit_slower_than_the_close_deadline_neither_loses_nor_double_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metricsbuf._logger, "_CANCEL_GRACE", 0.1)
    real_commit = Spool.commit
    slow = threading.Event()

    def slow_commit(self: Spool, **kwargs: Any) -> int:
        if slow.is_set():
            time.sleep(1.0)  # far longer than close_timeout plus the grace period
        return real_commit(self, **kwargs)

    monkeypatch.setattr(Spool, "commit", slow_commit)
    client = FakeClient()
    metrics = MetricsLogger("run-1", client=client, spool_dir=tmp_path, close_timeout=0.2)
    await metrics.start()
    slow.set()
    for step in range(50):
        await metrics.log("loss", float(step), step=step)
    await metrics.aclose()
    after_close = metrics.stats
    assert_accounted(after_close)
    await asyncio.sleep(1.5)  # the slow commit has long finished
    assert metrics.stats == after_close  # outcomes reported at close are final
    slow.clear()
    on_disk = pending_rows(tmp_path)
    # Every point is delivered, or pending on disk (counted as pending), or failed, never two of these.
    assert after_close.delivered + on_disk + after_close.failed == 50
    assert after_close.pending == on_disk
    failed_steps = {f.step for f in metrics.failures}
    async with MetricsLogger("run-1", client=client, spool_dir=tmp_path) as again:
        pass
    assert again.stats.delivered == on_disk
    stored_steps = [p["Step"] for p in client.stored]
    assert sorted(stored_steps) == sorted(set(range(50)) - failed_steps)


@pytest.mark.parametrize("on_full", ["block", "raise"])
async def test_a_producer_waiting_for_a_spool_commit_is_woken_by_it(tmp_path: Path, on_full: str) -> None:
    client = FakeClient()
    client.gate = asyncio.Event()  # nothing is delivered: memory stays full of points in flight
    async with MetricsLogger(
        "run-1",
        client=client,
        spool_dir=tmp_path,
        max_buffered=10,
        on_full=on_full,  # type: ignore[arg-type]
        close_timeout=0.5,
    ) as metrics:
        for step in range(10):
            await metrics.log("loss", float(step), step=step)
        # Memory is full of staged points; the next call waits for the commit that writes them,
        # after which the spool takes more past max_buffered (it has room).
        await asyncio.wait_for(metrics.log("loss", 10.0, step=10), 5)
        assert metrics.stats.logged == 11
        client.gate.set()
    assert metrics.stats.delivered == 11


@pytest.mark.parametrize("attempt", range(5))
async def test_a_producer_waiting_for_room_gets_on_full_when_the_spool_fills(
    tmp_path: Path, attempt: int
) -> None:
    client = FakeClient()
    client.gate = asyncio.Event()  # nothing is delivered
    async with MetricsLogger(
        "run-1",
        client=client,
        spool_dir=tmp_path,
        max_spool_bytes=1 << 16,
        max_buffered=10,
        on_full="raise",
        spool_interval=0.01,
        close_timeout=0.5,
    ) as metrics:
        with pytest.raises(BufferFullError):
            for step in range(100_000):
                # Never a hang: once the spool is full, on_full="raise" applies, also to a call
                # that was already waiting for a commit when the spool filled up.
                await asyncio.wait_for(metrics.log("a-long-metric-name-to-fill-pages", 1.0, step=step), 5)
        client.gate.set()
    assert_accounted(metrics.stats)


async def test_the_fast_path_thread_marker_follows_the_loop_or_the_starting_thread() -> None:
    from metricsbuf._context import loop_thread_marker

    loop = asyncio.get_running_loop()
    assert loop_thread_marker(loop) is loop  # asyncio records the thread running it (None when stopped)
    assert loop._thread_id == threading.get_ident()

    class OtherLoop:  # a loop class that is not asyncio's (uvloop, say): the starting thread counts
        pass

    marker = loop_thread_marker(OtherLoop())  # type: ignore[arg-type]
    assert marker._thread_id == threading.get_ident()
    seen: list[int | None] = []
    thread = threading.Thread(target=lambda: seen.append(threading.get_ident()))
    thread.start()
    thread.join()
    assert seen[0] != marker._thread_id
