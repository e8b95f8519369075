"""Concurrent writers under injected faults: many loggers on one client, and several processes.

Through real aiobotocore clients and the fake service over HTTP. Every point of every writer
must be stored exactly once, whoever else writes to the same trial component at the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
from reliability_support import (
    FAST_RETRIES,
    MIXED_FAULTS,
    Key,
    RecordingService,
    assert_logger_accounted,
    assert_service_counts_add_up,
    assert_stored_exactly,
    log_training_steps,
    metrics_client,
    worker_keys,
)

from metricsbuf import MetricsLogger

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


async def test_many_loggers_share_one_client() -> None:
    """Twelve loggers, one aiobotocore client: eight with a trial component each, four sharing one."""
    faults = {**MIXED_FAULTS, "latency": 0.005}
    steps = 200
    async with RecordingService(seed=7, **faults) as svc:
        async with metrics_client(svc.endpoint_url, max_pool_connections=16) as client:
            loggers = [MetricsLogger(f"shared-client-{i}", client=client, **FAST_RETRIES) for i in range(8)]
            loggers += [
                MetricsLogger("shared-client-common", client=client, **FAST_RETRIES) for _ in range(4)
            ]
            logged: list[Key] = []

            async def run(index: int, metrics: MetricsLogger) -> None:
                # The four on the common trial component log the same metrics on their own steps.
                first = steps * (index - 8) if index >= 8 else 0
                async with metrics:
                    logged.extend(await log_training_steps(metrics, range(first, first + steps)))

            async with anyio.create_task_group() as tg:
                for index, metrics in enumerate(loggers):
                    tg.start_soon(run, index, metrics)
    assert len(logged) == len(set(logged)) == 12 * steps * 4
    for metrics in loggers:
        assert_logger_accounted(metrics)
        assert metrics.stats.failed == 0, metrics.failures[:5]
        assert metrics.stats.delivered == steps * 4
    assert_stored_exactly(svc, logged)
    assert_service_counts_add_up(svc)
    counts = svc.counts
    # More requests at once than one logger may have (max_in_flight=4): they really overlapped.
    assert counts["max_in_flight"] > 4, counts
    assert counts["CONFLICT_ERROR"] > 0 and counts["throttled"] > 0 and counts["reset"] > 0, counts


async def test_several_processes_write_one_trial_component() -> None:
    """Four processes log to one trial component at once, against one service injecting conflicts.

    Each runs ``tests/reliability_support.py worker``: a shared metric on its own steps plus a
    metric of its own. Two use a client they create, two the logger's own client, found through
    ``AWS_ENDPOINT_URL_SAGEMAKER_METRICS`` and fake credentials in the environment.
    """
    tc = "multi-process-run"
    workers, points = 4, 2000
    faults = {**MIXED_FAULTS, "conflict_error_rate": 0.2}
    async with RecordingService(seed=13, **faults) as svc:
        env = {**os.environ, **svc.environ(), "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
        procs = []
        for worker in range(workers):
            argv = ["--trial-component", tc, "--worker", str(worker), "--points", str(points)]
            argv += ["--own-client"] if worker % 2 else ["--endpoint-url", svc.endpoint_url]
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(TESTS / "reliability_support.py"),
                    "worker",
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                )
            )
        try:
            # Start them together: each says "ready" once its imports and client are done.
            async def ready(proc: asyncio.subprocess.Process) -> bytes:
                assert proc.stdout is not None
                return await proc.stdout.readline()

            said = await asyncio.wait_for(asyncio.gather(*(ready(p) for p in procs)), 60)
            assert said == [b"ready\n"] * workers, said
            outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 90)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))

    expected: list[Key] = []
    for worker, result in enumerate(results):
        stats = result["stats"]
        assert stats["pending"] == 0, stats
        assert stats["logged"] == stats["delivered"] + stats["failed"] + stats["dropped"], stats
        assert stats["failed"] == 0 and result["failures"] == [], result["failures"][:5]
        assert stats["logged"] == stats["delivered"] == points, stats
        expected += worker_keys(tc, worker, points)
    assert_stored_exactly(svc, expected)
    assert_service_counts_add_up(svc)
    counts = svc.counts
    assert counts["CONFLICT_ERROR"] > 0.1 * points * workers, counts

    # They wrote at the same time: the requests of different workers interleave.
    def writer(record: Any) -> int:
        name, step = record.items[0][1], record.items[0][2]
        return int(name[len("worker") :].split(":")[0]) if name.startswith("worker") else step // 1_000_000

    order = [writer(r) for r in svc.records if r.items]
    switches = sum(1 for a, b in zip(order, order[1:], strict=False) if a != b)
    assert set(order) == set(range(workers)) and switches > 50, switches
    print(
        f"\n{workers} processes: {len(order)} requests, {switches} switches between writers; {dict(counts)}"
    )
