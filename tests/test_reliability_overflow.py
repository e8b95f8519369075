"""Overflow: a producer much faster than a slow backend, under each ``on_full`` policy.

Through a real aiobotocore client and the fake service over HTTP (with added latency). The
logger must never hold more than ``max_buffered`` points (checked after every call, and by the
memory the metricsbuf modules hold, with tracemalloc), and every attempted point must be
accounted for: stored exactly once, dropped (counted), or refused (BufferFullError, not logged).
"""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from typing import Any

import pytest
from reliability_support import (
    Key,
    RecordingService,
    assert_logger_accounted,
    assert_service_counts_add_up,
    assert_stored_exactly,
    key_of,
    metrics_client,
)

import metricsbuf
from metricsbuf import BufferFullError, MetricsLogger

TC = "reliability-run-0003"
MAX_BUFFERED = 100
PACKAGE_DIR = os.path.dirname(metricsbuf.__file__)
# Memory traced in the metricsbuf package, except the fake service in metricsbuf/testing/ (which
# keeps every point it stores, by design): the logger's queue, its point tuples and floats, its
# in-flight groups.
LOGGER_MEMORY = [
    tracemalloc.Filter(True, os.path.join(PACKAGE_DIR, "*")),
    tracemalloc.Filter(False, os.path.join(PACKAGE_DIR, "testing", "*")),
]


def logger_memory() -> int:
    # Collected first: each batch leaves a reference cycle (tenacity's retry state) that only
    # the cyclic garbage collector frees; that is garbage, not memory the logger holds.
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(LOGGER_MEMORY)
    return sum(stat.size for stat in snapshot.statistics("filename"))


@pytest.mark.parametrize("on_full", ["block", "drop_newest", "drop_oldest", "raise"])
async def test_overflow_stays_bounded_and_every_point_is_accounted_for(on_full: str) -> None:
    # "block" is paced by the backend (about 650 points a second here); the others are not.
    attempts = 1000 if on_full == "block" else 6000
    options: dict[str, Any] = {"max_buffered": MAX_BUFFERED, "on_full": on_full, "max_in_flight": 2}
    async with RecordingService(latency=0.03) as svc, metrics_client(svc.endpoint_url) as client:
        metrics = MetricsLogger(TC, client=client, flush_interval=0.05, **options)
        attempted: list[Key] = []
        kept: list[Key] = []  # the points that were logged and not dropped at the call
        refused = 0
        peak_pending = 0
        memory: dict[str, int] = {}
        tracemalloc.start()
        try:
            async with metrics:
                for i in range(attempts):
                    if i == 2 * MAX_BUFFERED:
                        memory["full"] = logger_memory()  # the buffer is full by now
                    key = (TC, "loss", i, i + 0.5)
                    attempted.append(key)
                    dropped_before = metrics.stats.dropped
                    try:
                        await metrics.log("loss", i + 0.5, step=i)
                    except BufferFullError:
                        refused += 1
                    else:
                        if on_full != "drop_newest" or metrics.stats.dropped == dropped_before:
                            kept.append(key)
                    peak_pending = max(peak_pending, metrics.stats.pending)
                    if i % 10 == 0:
                        await asyncio.sleep(0.001)  # the producer's own work
                memory["end"] = logger_memory()
                at_end = metrics.stats
        finally:
            tracemalloc.stop()

    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert peak_pending <= MAX_BUFFERED and at_end.pending <= MAX_BUFFERED, (peak_pending, at_end)
    # Memory did not grow with the points attempted: 5,800 more points between the two
    # measurements would hold several hundred kilobytes if the logger kept them.
    growth = memory["end"] - memory["full"]
    assert growth < 32 * 1024, memory
    assert stats.failed == 0, metrics.failures[:5]
    assert stats.logged == attempts - refused
    assert_service_counts_add_up(svc)

    if on_full == "block":
        assert refused == 0 and stats.dropped == 0 and peak_pending == MAX_BUFFERED
        assert_stored_exactly(svc, attempted)
    elif on_full == "raise":
        assert refused > attempts // 2 and stats.dropped == 0
        assert_stored_exactly(svc, kept)  # exactly the points whose log() did not raise
    elif on_full == "drop_newest":
        assert refused == 0 and stats.dropped == attempts - len(kept) > attempts // 2
        assert_stored_exactly(svc, kept)  # exactly the points not dropped at their call
        assert set(attempted[:MAX_BUFFERED]) <= set(kept)  # the oldest are kept
    else:  # drop_oldest: the dropped point is the oldest queued one, unseen from here
        assert refused == 0 and stats.dropped > attempts // 2
        stored = [key_of(p) for p in svc.points]
        assert len(stored) == len(set(stored)) == stats.delivered == attempts - stats.dropped
        assert set(stored) <= set(attempted)
        # The newest were kept: at the end the queue held the latest points, and close sent them.
        assert set(attempted[-MAX_BUFFERED // 2 :]) <= set(stored)
    print(f"\non_full={on_full}: {stats}, refused={refused}, peak pending={peak_pending}, memory={memory}")
