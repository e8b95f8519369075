"""Reliability through the logger's OWN client (``endpoint_url=``), the default path of users.

The other reliability tests pass a client of their own; the logger's own client differs: it
paces signing and parsing through aiobotocore hooks (metricsbuf/_pacing.py), so faults,
retries and cancellation must also hold while requests wait for a turn inside botocore.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import count_pacer_turns
from reliability_support import (
    FAST_RETRIES,
    MIXED_FAULTS,
    RecordingService,
    assert_logger_accounted,
    assert_service_counts_add_up,
    assert_stored_exactly,
    failure_key,
    log_training_steps,
)

from metricsbuf import CLOSE_TIMEOUT, MetricsLogger

TC = "reliability-own-client"
EXIT_MARGIN = 1.5  # as in test_reliability_shutdown.py


async def test_mixed_faults_store_every_point_exactly_once(aws_env: pytest.MonkeyPatch) -> None:
    async with RecordingService(seed=11, **MIXED_FAULTS) as svc:
        async with MetricsLogger(
            TC, region_name="us-east-1", endpoint_url=svc.endpoint_url, max_in_flight=8, **FAST_RETRIES
        ) as metrics:
            turns = count_pacer_turns(metrics, aws_env)
            keys = await log_training_steps(metrics, range(1500))
    assert len(keys) == len(set(keys)) == 6000
    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.failed == 0, metrics.failures[:5]
    assert stats.delivered == 6000
    assert_stored_exactly(svc, keys)
    assert_service_counts_add_up(svc)
    counts = svc.counts
    assert counts["max_items_in_request"] == 10
    assert counts["INTERNAL_ERROR"] >= 300 and counts["CONFLICT_ERROR"] >= 300, counts
    assert counts["throttled"] >= 10 and counts["reset"] >= 1, counts
    # Every request built took a turn; those that got an answer also took one to sign and one to
    # parse (a reset ends a request before its response is parsed).
    assert 2 * stats.requests <= turns[0] <= 3 * stats.requests, (turns, stats)


@pytest.mark.parametrize("backend", ["every request 5xx", "no answer (black hole)"])
async def test_backend_down_exit_keeps_close_timeout(aws_env: pytest.MonkeyPatch, backend: str) -> None:
    """Cancelled at the deadline while requests hang in aiohttp or wait for a pacing turn."""
    close_timeout = 1.0
    faults = {"server_error_rate": 1.0} if backend.endswith("5xx") else {"latency": 3600.0}
    async with RecordingService(**faults) as svc:  # type: ignore[arg-type]
        metrics = MetricsLogger(
            TC,
            region_name="us-east-1",
            endpoint_url=svc.endpoint_url,
            max_in_flight=8,
            max_attempts=1_000_000,
            backoff_initial=0.01,
            backoff_max=0.05,
            close_timeout=close_timeout,
        )
        async with metrics:
            for step in range(300):
                await metrics.log("loss", step + 0.5, step=step)
            await asyncio.sleep(0.2)
            started = time.monotonic()
        elapsed = time.monotonic() - started
    assert close_timeout - 0.05 <= elapsed <= close_timeout + EXIT_MARGIN, elapsed
    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.delivered == 0 and stats.failed == stats.logged == 300
    assert {failure_key(TC, f) for f in metrics.failures} == {(TC, "loss", s, s + 0.5) for s in range(300)}
    assert {f.code for f in metrics.failures} == {CLOSE_TIMEOUT}
    # Whatever was cancelled while waiting for a pacing turn, or right after being handed one,
    # left the pacer free: a new step still gets its turn.
    await asyncio.wait_for(metrics._pacer.turn(), timeout=5)
