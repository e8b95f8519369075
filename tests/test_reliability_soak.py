"""Soak: the mixed-fault scenario for a long time, off by default.

Switch it on with ``METRICSBUF_SOAK=1``; it stops by itself after ``METRICSBUF_SOAK_POINTS``
points (default 1,000,000) or ``METRICSBUF_SOAK_SECONDS`` seconds (default 600), whichever
comes first (both are checked between rounds, which take about ten seconds each)::

    METRICSBUF_SOAK=1 METRICSBUF_SOAK_SECONDS=300 python -m pytest tests/test_reliability_soak.py -s

One logger runs for the whole soak, through a real aiobotocore client, against the fake service
injecting the mix of issue 3 (10% INTERNAL_ERROR, 10% CONFLICT_ERROR, 5% throttling, 2% HTTP
5xx, 1% resets). It logs in rounds of 20,000 points; after each round it flushes and checks
that the service stored every point of the round exactly once, that each point was resent only
after a retryable per-index code, and that nothing failed; then the service forgets the round
(so memory stays flat) and the next one starts. One line per round reports the throughput,
retries, requests and the process's resident memory, which must not keep growing; the end
prints the logger's stats and the faults the service injected in total.
"""

from __future__ import annotations

import os
import time

import pytest
from reliability_support import (
    MIXED_FAULTS,
    RecordingService,
    assert_logger_accounted,
    assert_service_counts_add_up,
    assert_stored_exactly,
    log_training_steps,
    metrics_client,
)

from metricsbuf import MetricsLogger

TC = "reliability-soak"
ENABLED = os.environ.get("METRICSBUF_SOAK", "").strip().lower() not in ("", "0", "false", "no")


def _setting(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip().replace("_", "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise pytest.UsageError(f"{name} must be a positive number, got {os.environ[name]!r}")
    return value


SOAK_POINTS = int(_setting("METRICSBUF_SOAK_POINTS", 1_000_000)) if ENABLED else 0
SOAK_SECONDS = _setting("METRICSBUF_SOAK_SECONDS", 600.0) if ENABLED else 0.0
ROUND_STEPS = 5000  # four metrics a step: 20,000 points a round
RSS_GROWTH_LIMIT = 64 * 2**20  # bytes the process may grow after the first rounds


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: no check
        return 0


@pytest.mark.soak
@pytest.mark.skipif(
    not ENABLED,
    reason="soak test, off by default: set METRICSBUF_SOAK=1 "
    "(and METRICSBUF_SOAK_POINTS / METRICSBUF_SOAK_SECONDS to size it)",
)
# The per-test timeout must cover the soak: the last round may start just before the time is up.
@pytest.mark.timeout(SOAK_SECONDS + 300)
async def test_soak_mixed_faults() -> None:
    started = time.monotonic()
    deadline = started + SOAK_SECONDS
    totals: dict[str, int] = {}
    rss_baseline = 0
    rss_peak = 0
    print(f"\nsoak: up to {SOAK_POINTS:,} points or {SOAK_SECONDS:g} s, faults {MIXED_FAULTS}")
    async with RecordingService(seed=2024, **MIXED_FAULTS) as svc, metrics_client(svc.endpoint_url) as client:
        async with MetricsLogger(
            TC, client=client, max_attempts=25, backoff_initial=0.005, backoff_max=0.1, flush_interval=0.05
        ) as metrics:
            round_number = 0
            first_step = 0
            while metrics.stats.logged < SOAK_POINTS and time.monotonic() < deadline:
                steps = min(ROUND_STEPS, (SOAK_POINTS - metrics.stats.logged + 3) // 4)
                round_started = time.monotonic()
                keys = await log_training_steps(metrics, range(first_step, first_step + steps))
                await metrics.flush()
                first_step += steps
                round_number += 1

                # This round: every point stored exactly once, resent only after a retryable code.
                assert metrics.stats.failed == 0, metrics.failures[:5]
                assert metrics.stats.pending == 0, metrics.stats
                assert_stored_exactly(svc, keys)
                assert_service_counts_add_up(svc)
                judged = svc.judged()
                for key, codes in svc.answered_codes().items():
                    assert set(codes) <= {"INTERNAL_ERROR", "CONFLICT_ERROR"}, (key, codes)
                    assert judged[key] == len(codes) + 1, (key, codes)
                for name, count in svc.counts.items():
                    if not name.startswith("max_"):
                        totals[name] = totals.get(name, 0) + count
                svc.clear()

                rss = resident_bytes()
                if round_number == 2:
                    rss_baseline = rss  # after warm-up: caches, pools and models loaded
                rss_peak = max(rss_peak, rss)
                elapsed = time.monotonic() - round_started
                print(
                    f"round {round_number}: {metrics.stats.logged:,} points, "
                    f"{len(keys) / elapsed:,.0f} points/s, retried {metrics.stats.retried:,}, "
                    f"requests {metrics.stats.requests:,}, rss {rss / 2**20:.0f} MiB"
                )
    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.failed == stats.dropped == 0 and stats.delivered == stats.logged
    assert stats.logged >= min(SOAK_POINTS, 20_000)
    if rss_baseline:
        assert rss_peak - rss_baseline < RSS_GROWTH_LIMIT, (rss_baseline, rss_peak)
    print(
        f"soak done in {time.monotonic() - started:.0f} s: {stats}\n"
        f"service totals: {dict(sorted(totals.items()))}"
    )
