"""The on-disk spool: write-ahead, crash recovery, offline mode, sync, outages, bad stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from conftest import FakeClient, assert_accounted, errors

import metricsbuf._cli
from metricsbuf import (
    BufferFullError,
    InvalidMetricError,
    LoggerClosedError,
    MetricsLogger,
    SpoolError,
    SpoolLockedError,
)
from metricsbuf.__main__ import main as cli
from metricsbuf.testing import FakeMetricsService

HERE = Path(__file__).resolve().parent
FAST = {"backoff_initial": 0.001, "backoff_max": 0.01}


def rows(spool_dir: Path, where: str = "1") -> list[tuple[Any, ...]]:
    # closing(): a sqlite3 connection's own context manager commits but does not close.
    with contextlib.closing(
        sqlite3.connect(f"{(spool_dir / 'spool.sqlite3').as_uri()}?mode=ro", uri=True)
    ) as db:
        return db.execute(f"SELECT name, step, state, code FROM points WHERE {where} ORDER BY id").fetchall()


async def test_everything_delivered_leaves_an_empty_spool(tmp_path: Path) -> None:
    client = FakeClient()
    async with MetricsLogger("run-1", client=client, spool_dir=tmp_path, spool_interval=0.01) as metrics:
        for step in range(1234):
            await metrics.log_many({"a": 1.0, "b": float(step)}, step=step)
            if step % 100 == 0:
                await asyncio.sleep(0)
        await metrics.flush()
        assert metrics.stats.delivered == 2468
    assert metrics.stats.pending == 0 and len(client.stored) == 2468
    assert rows(tmp_path) == []


async def test_points_are_on_disk_before_they_are_sent(tmp_path: Path) -> None:
    seen_on_disk: list[bool] = []

    class Checking(FakeClient):
        async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]:
            on_disk = {(name, step) for name, step, _, _ in rows(tmp_path)}
            seen_on_disk.extend((p["MetricName"], p.get("Step")) in on_disk for p in kwargs["MetricData"])
            return await super().batch_put_metrics(**kwargs)

    async with MetricsLogger("run-1", client=Checking(), spool_dir=tmp_path, spool_interval=5.0) as metrics:
        for step in range(95):
            await metrics.log("loss", 1.0, step=step)
            await asyncio.sleep(0)
    assert len(seen_on_disk) == 95 and all(seen_on_disk)


async def test_staged_points_are_written_within_spool_interval(tmp_path: Path) -> None:
    client = FakeClient()
    client.gate = asyncio.Event()  # nothing is delivered meanwhile
    async with MetricsLogger(
        "run-1",
        client=client,
        spool_dir=tmp_path,
        spool_interval=0.05,
        flush_interval=3600,
        close_timeout=0.5,
    ) as metrics:
        await metrics.log("loss", 1.0, step=1)
        await asyncio.sleep(0.3)
        assert rows(tmp_path) == [("loss", 1, 0, None)]
        client.gate.set()


async def test_final_failures_become_dead_letters(tmp_path: Path) -> None:
    def handler(number: int, data: list[dict[str, Any]]) -> dict[str, Any]:
        return errors(*((i, "VALIDATION_ERROR") for i, p in enumerate(data) if p["Step"] % 2))

    async with MetricsLogger("run-1", client=FakeClient(handler), spool_dir=tmp_path) as metrics:
        for step in range(10):
            await metrics.log("loss", 1.0, step=step)
    assert metrics.stats.failed == 5 and metrics.stats.delivered == 5
    assert rows(tmp_path) == [("loss", step, 1, "VALIDATION_ERROR") for step in (1, 3, 5, 7, 9)]


async def test_transient_failures_stay_on_disk_for_the_next_logger(tmp_path: Path) -> None:
    def down(number: int, data: list[dict[str, Any]]) -> None:
        raise ConnectionResetError("backend down")

    async with MetricsLogger(
        "run-1", client=FakeClient(down), spool_dir=tmp_path, max_attempts=2, **FAST
    ) as metrics:
        for step in range(25):
            await metrics.log("loss", 1.0, step=step)
        await metrics.flush()
    stats = metrics.stats
    assert (stats.failed, stats.delivered, stats.pending) == (0, 0, 25)  # not failed: kept
    assert metrics.failures == []
    assert len(rows(tmp_path, "state = 0")) == 25

    client = FakeClient()
    async with MetricsLogger("run-2", client=client, spool_dir=tmp_path) as metrics:
        assert metrics.stats.recovered == 25
        await metrics.log("new", 2.0, step=0)
    assert metrics.stats.delivered == 26 and metrics.stats.pending == 0
    # the leftovers go first, each with its own trial component
    assert client.trial_components[0] == "run-1" and client.trial_components[-1] == "run-2"
    assert sorted(p["Step"] for p in client.stored if p["MetricName"] == "loss") == list(range(25))
    assert rows(tmp_path) == []


async def test_close_timeout_leaves_points_on_disk_not_failed(tmp_path: Path) -> None:
    client = FakeClient()
    client.gate = asyncio.Event()  # hangs
    started = time.monotonic()
    async with MetricsLogger("run-1", client=client, spool_dir=tmp_path, close_timeout=0.3) as metrics:
        for step in range(40):
            await metrics.log("loss", 1.0, step=step)
    assert time.monotonic() - started < 0.3 + 2.0
    assert (metrics.stats.failed, metrics.stats.pending) == (0, 40)
    assert len(rows(tmp_path, "state = 0")) == 40


async def test_offline_then_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with MetricsLogger("offline-run", spool_dir=tmp_path, offline=True) as metrics:
        for step in range(300):
            await metrics.log_many({"a": 1.0, "b": 2.0}, step=step)
        await metrics.flush()
        assert metrics.stats.pending == 600
    assert metrics.stats.requests == 0
    assert len(rows(tmp_path)) == 600

    assert await asyncio.to_thread(cli, ["inspect", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "offline-run" in shown and "total: 600 pending, 0 dead letter(s)" in shown

    async with FakeMetricsService() as svc:
        with pytest.MonkeyPatch.context() as env:
            for key, value in svc.environ().items():
                env.setenv(key, value)
            code = await asyncio.to_thread(cli, ["sync", str(tmp_path)])
        output = capsys.readouterr().out
        assert code == 0, output
        assert "delivered: 600" in output and "pending:   0" in output
        stored = Counter((p.trial_component, p.name, p.step) for p in svc.points)
    assert len(stored) == 600 and set(stored.values()) == {1}
    assert rows(tmp_path) == []


async def test_sync_with_adaptive_rate_sends_through_a_logger_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with MetricsLogger("offline-run", spool_dir=tmp_path, offline=True) as metrics:
        for step in range(50):
            await metrics.log("a", 1.0, step=step)
    made: list[MetricsLogger] = []

    class Recorded(MetricsLogger):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(metricsbuf._cli, "MetricsLogger", Recorded)
    async with FakeMetricsService() as svc:
        with pytest.MonkeyPatch.context() as env:
            for key, value in svc.environ().items():
                env.setenv(key, value)
            assert await asyncio.to_thread(cli, ["sync", str(tmp_path), "--adaptive-rate"]) == 0
            assert await asyncio.to_thread(cli, ["sync", str(tmp_path)]) == 0
        assert len(svc.points) == 50
    assert [m._options.adaptive_rate for m in made] == [True, False]


async def test_sync_says_how_many_requests_were_throttled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with MetricsLogger("offline-run", spool_dir=tmp_path, offline=True) as metrics:
        for step in range(50):
            await metrics.log("a", 1.0, step=step)
    async with FakeMetricsService(rate_limit=5, rate_limit_burst=1) as svc:
        with pytest.MonkeyPatch.context() as env:
            for key, value in svc.environ().items():
                env.setenv(key, value)
            assert await asyncio.to_thread(cli, ["sync", str(tmp_path)]) == 0
        throttled = svc.counts["rate_limited"]
        assert throttled > 0 and len(svc.points) == 50
    assert f"throttled: {throttled} of {svc.counts['requests']} requests" in capsys.readouterr().out


async def test_sync_reports_failures_and_retry_failed_sends_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with MetricsLogger("run-1", spool_dir=tmp_path, offline=True) as metrics:
        for step in range(20):
            await metrics.log(f"m{step}", 1.0, step=step)
    async with FakeMetricsService(metric_limit=15) as svc:
        with pytest.MonkeyPatch.context() as env:
            for key, value in svc.environ().items():
                env.setenv(key, value)
            assert await asyncio.to_thread(cli, ["sync", str(tmp_path)]) == 1
            output = capsys.readouterr().out
            assert "failed:    5" in output and "METRIC_LIMIT_EXCEEDED" in output
            assert len(rows(tmp_path, "state = 1")) == 5
            svc.metric_limit = None
            assert await asyncio.to_thread(cli, ["sync", str(tmp_path), "--retry-failed"]) == 0
            assert "5 dead letter(s) queued again" in capsys.readouterr().out
        assert len(svc.points) == 20
    assert rows(tmp_path) == []


async def test_outage_with_small_max_buffered_drops_nothing_and_bounds_memory(tmp_path: Path) -> None:
    down = True

    def handler(number: int, data: list[dict[str, Any]]) -> None:
        if down:
            raise ConnectionResetError("backend down")

    client = FakeClient(handler)
    peak_in_memory = 0
    async with MetricsLogger(
        "run-1",
        client=client,
        spool_dir=tmp_path,
        max_buffered=100,
        on_full="drop_newest",
        max_attempts=1000,
        backoff_initial=0.005,
        backoff_max=0.02,
        spool_interval=0.01,
    ) as metrics:
        tracemalloc.start()
        try:
            for step in range(20_000):
                await metrics.log("loss", float(step), step=step)
                peak_in_memory = max(peak_in_memory, metrics._ledger.held)
                if step % 20 == 0:
                    await asyncio.sleep(0)
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert metrics.stats.dropped == 0 and metrics.stats.pending == 20_000
        down = False
        await asyncio.wait_for(metrics.flush(), 60)
    stats = metrics.stats
    assert (stats.delivered, stats.dropped, stats.failed, stats.pending) == (20_000, 0, 0, 0)
    assert sorted(p["Step"] for p in client.stored) == list(range(20_000))
    # in memory: at most max_buffered queued or in flight, plus as many on their way to disk
    assert peak_in_memory <= 2 * 100
    assert peak_bytes < 3_000_000  # 20,000 points in memory would take about 4 MB


async def test_disk_cap_applies_on_full(tmp_path: Path) -> None:
    client = FakeClient()
    client.gate = asyncio.Event()
    async with MetricsLogger(
        "run-1",
        client=client,
        spool_dir=tmp_path,
        max_spool_bytes=1 << 16,
        max_buffered=50,
        on_full="raise",
        spool_interval=0.01,
        close_timeout=0.5,
    ) as metrics:
        with pytest.raises(BufferFullError):
            for step in range(100_000):
                await metrics.log("a-fairly-long-metric-name-to-fill-pages", float(step), step=step)
                if step % 50 == 0:
                    await asyncio.sleep(0.001)
        assert metrics.stats.logged < 100_000
        client.gate.set()
    assert_accounted(metrics.stats)


async def test_disk_full_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metricsbuf import _spool

    real_connect = _spool._connect

    def tiny_disk(db_path: Path, *, read_only: bool) -> sqlite3.Connection:
        connection = real_connect(db_path, read_only=read_only)
        connection.execute("PRAGMA max_page_count = 12")  # like a full disk: SQLITE_FULL on growth
        return connection

    monkeypatch.setattr(_spool, "_connect", tiny_disk)
    metrics = MetricsLogger("run-1", client=FakeClient(), spool_dir=tmp_path, spool_interval=0.01)
    await metrics.start()
    with pytest.raises(LoggerClosedError) as raised:
        for step in range(100_000):
            await metrics.log("loss-with-a-long-name-" + "x" * 100, 1.0, step=step)
            await asyncio.sleep(0)
    message = str(raised.value)
    assert "full" in message and str(tmp_path) in message
    with pytest.raises(LoggerClosedError):
        await metrics.aclose()
    assert_accounted(metrics.stats)


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"", b"SQLite format 3\x00" + b"\x00" * 50],
    ids=["garbage", "empty-file", "truncated-header"],
)
async def test_corrupted_store_is_reported_with_its_path_and_kept(tmp_path: Path, content: bytes) -> None:
    store = tmp_path / "spool.sqlite3"
    store.write_bytes(content)
    metrics = MetricsLogger("run-1", client=FakeClient(), spool_dir=tmp_path)
    if content == b"":
        # An empty file is a valid, empty SQLite database: it becomes a spool.
        async with metrics:
            pass
        return
    with pytest.raises(SpoolError, match=str(store)) as raised:
        await metrics.start()
    assert "nothing was deleted" in str(raised.value)
    assert store.read_bytes() == content


async def test_truncated_spool_is_reported(tmp_path: Path) -> None:
    async with MetricsLogger("run-1", spool_dir=tmp_path, offline=True) as metrics:
        for step in range(5000):
            await metrics.log("loss", 1.0, step=step)
    store = tmp_path / "spool.sqlite3"
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpoolError, match="not a usable metricsbuf spool"):
        await MetricsLogger("run-1", client=FakeClient(), spool_dir=tmp_path).start()
    assert store.stat().st_size == len(data) // 2


async def test_a_sqlite_file_of_something_else_is_refused(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "spool.sqlite3")) as db:
        db.execute("CREATE TABLE mine (x)")
        db.commit()
    with pytest.raises(SpoolError, match="something else"):
        await MetricsLogger("run-1", client=FakeClient(), spool_dir=tmp_path).start()


async def test_second_logger_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    async with MetricsLogger("run-1", client=FakeClient(), spool_dir=tmp_path):
        with pytest.raises(SpoolLockedError, match=f"pid {os.getpid()}"):
            await MetricsLogger("run-2", client=FakeClient(), spool_dir=tmp_path).start()
    async with MetricsLogger("run-3", client=FakeClient(), spool_dir=tmp_path):  # free again
        pass


async def test_another_process_holding_the_spool_is_refused(tmp_path: Path) -> None:
    code = (
        "import sys, time; from metricsbuf._spool import Spool; s = Spool.open(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(30)"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 20)).strip() == b"locked"
        with pytest.raises(SpoolLockedError, match=f"in use by another process \\(pid {child.pid}\\)"):
            await MetricsLogger("run-1", client=FakeClient(), spool_dir=tmp_path).start()
        assert await asyncio.to_thread(cli, ["sync", str(tmp_path)]) == 2
    finally:
        child.kill()
        await child.wait()


def test_spool_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidMetricError, match="offline=True needs spool_dir"):
        MetricsLogger("run-1", offline=True)
    with pytest.raises(InvalidMetricError, match="never touches the network"):
        MetricsLogger("run-1", offline=True, spool_dir=tmp_path, client=FakeClient())
    with pytest.raises(InvalidMetricError, match="spool_interval"):
        MetricsLogger("run-1", spool_dir=tmp_path, spool_interval=0)
    with pytest.raises(InvalidMetricError, match="max_spool_bytes"):
        MetricsLogger("run-1", spool_dir=tmp_path, max_spool_bytes=10)
    with pytest.raises(InvalidMetricError, match="spool_dir"):
        MetricsLogger("run-1", spool_dir=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# A real crash: SIGKILL mid-run, then recovery by a new logger or by `metricsbuf sync`.


async def run_and_kill(spool_dir: Path, svc: FakeMetricsService, kill_after_step: int) -> tuple[int, float]:
    """Runs spool_child.py, kills it with SIGKILL once it logged ``kill_after_step``.

    Returns (the last step surely logged more than spool_interval before the kill, kill time).
    """
    env = {**os.environ, **svc.environ(), "PYTHONPATH": os.pathsep.join(sys.path)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "spool_child.py"),
        str(spool_dir),
        "crash-run",
        "1000000",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    progress: list[tuple[int, float]] = []
    try:
        while not progress or progress[-1][0] < kill_after_step:
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line, "the child ended early"
            report = json.loads(line)
            progress.append((report["step"], report["time"]))
        child.send_signal(signal.SIGKILL)
        killed_at = time.time()
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == -signal.SIGKILL
    margin = 0.05 + 0.1  # the child's spool_interval, plus slack for the report's own delay
    safe = max(step for step, at in progress if at <= killed_at - margin)
    return safe, killed_at


def check_recovered(svc: FakeMetricsService, safe_step: int) -> dict[str, int]:
    stored = Counter(p.step for p in svc.points if p.trial_component == "crash-run")
    missing = [step for step in range(safe_step + 1) if stored[step] == 0]
    assert missing == [], f"{len(missing)} points logged before the crash were lost: {missing[:10]}"
    duplicates = sum(count - 1 for count in stored.values() if count > 1)
    # Only points whose outcome was unknown at the kill may be stored twice: requests in flight
    # (max_in_flight * max_batch_size = 40) and deliveries not yet recorded on disk (the spool
    # records them within 10 ms, at most a few hundred points at this rate).
    assert duplicates <= 40 + 400, duplicates
    return {"stored": len(stored), "duplicates": duplicates, "safe": safe_step + 1}


async def test_sigkill_then_a_new_logger_delivers_the_leftovers(tmp_path: Path) -> None:
    async with FakeMetricsService(latency=0.002) as svc:
        safe, _ = await run_and_kill(tmp_path, svc, kill_after_step=3000)
        before = len(svc.points)
        async with get_session().create_client(
            "sagemaker-metrics", config=AioConfig(retries={"total_max_attempts": 1}), **svc.client_kwargs()
        ) as client:
            async with MetricsLogger("next-run", client=client, spool_dir=tmp_path) as metrics:
                recovered = metrics.stats.recovered
                await metrics.log("after", 1.0, step=0)
        assert metrics.stats.failed == 0 and metrics.stats.pending == 0
        assert len(svc.points) - before == recovered + 1
        figures = check_recovered(svc, safe)
        print(f"\ncrash/new logger: recovered {recovered}, {figures}")
    assert rows(tmp_path) == []


async def test_sigkill_then_sync_delivers_the_leftovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeMetricsService(latency=0.002, internal_error_rate=0.05) as svc:
        safe, _ = await run_and_kill(tmp_path, svc, kill_after_step=2000)
        with pytest.MonkeyPatch.context() as env:
            for key, value in svc.environ().items():
                env.setenv(key, value)
            assert await asyncio.to_thread(cli, ["sync", str(tmp_path)]) == 0
        figures = check_recovered(svc, safe)
        with capsys.disabled():
            print(f"\ncrash/sync: {figures}")
    assert rows(tmp_path) == []
