"""Behaviour at scale, end to end through real loggers and the in-memory service (issue 12).

- Fairness: several loggers against ONE shared rate limit get similar shares.
- Recovery: after a throttled period ends, the adaptive rate goes back up.
- A failing service (every index ``INTERNAL_ERROR``) gets a bounded number of requests, and the
  points fail for good within their budget.
- A spool absorbs an offered load above the limit for a while, loses nothing, and drains once the
  load falls.

Timing-tolerant: the bounds are generous (the suite shares two cores with other work); each test
asserts behaviour (shares, counts, outcomes), not speed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import pytest
from conftest import assert_accounted

from metricsbuf import MetricsLogger, _rate, _sender
from metricsbuf.testing import InMemoryMetricsClient


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


async def log_all(metrics: MetricsLogger, count: int) -> None:
    for step in range(count):
        await metrics.log("loss", float(step), step=step)


async def test_loggers_sharing_one_limit_get_similar_shares() -> None:
    # Three backlogged loggers (adaptive rate on) share one limit of 30 requests/s. Each logs its
    # points at once and flushes; its rate is points stored / its own time.
    client = InMemoryMetricsClient(rate_limit=30, rate_limit_burst=30, parameter_validation=False)
    # Each with a rate of its own, as loggers on different hosts (test_host_rate.py: shared).
    loggers = [
        MetricsLogger(f"writer-{i}", client=client, adaptive_rate=True, rate_scope="logger") for i in range(3)
    ]
    finished: list[float] = []
    started = time.monotonic()

    async def writer(metrics: MetricsLogger) -> None:
        async with metrics:
            await log_all(metrics, 600)
            await metrics.flush()
            finished.append(time.monotonic() - started)

    await asyncio.gather(*(writer(m) for m in loggers))
    rates = [600 / seconds for seconds in finished]
    for metrics in loggers:
        assert metrics.stats.delivered == 600 and metrics.stats.failed == 0, metrics.stats
    assert len(client.points) == 1800 and not client.duplicates()
    assert jain(rates) > 0.8, rates
    # Used most of what the limit admitted over the run, with a minority of requests refused.
    capacity = (30 + 30 * max(finished)) * 10
    assert 1800 / capacity > 0.6, (finished, client.counts)
    assert client.counts["rate_limited"] < 0.3 * client.counts["requests"], client.counts
    assert all(m._sender.rate.cuts > 0 for m in loggers)  # each one did meet the limit


async def log_against_a_limit(
    points: int, adaptive_rate: bool = False
) -> tuple[MetricsLogger, InMemoryMetricsClient]:
    """One logger logs ``points`` at once against a limit of 20 requests/s (burst 20), flushes
    and closes; returns it and the client."""
    client = InMemoryMetricsClient(rate_limit=20, rate_limit_burst=20, parameter_validation=False)
    async with MetricsLogger("throttled", client=client, adaptive_rate=adaptive_rate) as metrics:
        await log_all(metrics, points)
        await metrics.flush()
    return metrics, client


async def test_without_adaptive_rate_throttles_set_no_rate() -> None:
    # The default: throttled batches back off in their slots, and the logger's rate stays
    # unlimited (the rate's phase never leaves "unlimited"); with adaptive_rate=True the same
    # throttles start its ramp.
    for adaptive, phases in ((False, {"unlimited"}), (True, {"ramp", "steady"})):
        metrics, client = await log_against_a_limit(300, adaptive)  # 30 requests against a burst of 20
        assert client.counts["rate_limited"] > 0, client.counts
        assert metrics._sender.rate.phase in phases, (adaptive, metrics._sender.rate.phase)
        assert metrics.stats.delivered == 300, metrics.stats


async def test_stats_count_the_throttled_requests_and_the_close_line_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Whether the account is throttling a logger, and how much, is in its stats (the hint to
    # log less, or to turn adaptive_rate on), and in the line it logs at close.
    with caplog.at_level(logging.INFO, logger="metricsbuf"):
        metrics, client = await log_against_a_limit(300)
    throttled = client.counts["rate_limited"]
    assert throttled > 0 and metrics.stats.throttled == throttled, (client.counts, metrics.stats)
    assert metrics.stats.requests == client.counts["requests"], (client.counts, metrics.stats)
    assert f"{throttled} of {metrics.stats.requests} requests throttled" in caplog.text, caplog.text


async def test_heavy_throttling_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing fails, so without a word a user would not know the account's limit is reached.
    with caplog.at_level(logging.WARNING, logger="metricsbuf"):
        metrics, _ = await log_against_a_limit(600)
    assert metrics.stats.throttled >= _sender.THROTTLING_WARNING_AFTER, metrics.stats
    warnings = [r.getMessage() for r in caplog.records if "were throttled" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "adaptive_rate" in warnings[0] and "nothing is lost" in warnings[0], warnings[0]


async def test_the_adaptive_rate_goes_back_up_once_the_throttled_period_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Against a limit of 10 requests/s until the logger has found its share (the end of its ramp),
    # then the limit is lifted: the rate grows back well past the old limit along CUBIC's curve,
    # and the points then flow faster than the old limit. The curve's time unit is shortened from
    # 30 s to 5 s to keep the test quick (test_rate.py checks the shipped curve on a fake clock):
    # 2.5x the old rate about 5.7 s after the last cut; 20 s allowed.
    monkeypatch.setattr(_rate, "CUBIC_SCALE", 5.0)
    client = InMemoryMetricsClient(rate_limit=10, rate_limit_burst=10, parameter_validation=False)
    # max_buffered keeps the backlog (drained at the close) small.
    async with MetricsLogger("recovering", client=client, max_buffered=1000, adaptive_rate=True) as metrics:
        producer = asyncio.ensure_future(log_all(metrics, 100_000))
        rate = metrics._sender.rate
        for _ in range(100):  # up to 10 s
            if rate.phase == "steady":
                break
            await asyncio.sleep(0.1)
        assert rate.phase == "steady", (rate.phase, rate.rate)
        throttled_rate = rate.rate
        assert throttled_rate is not None and 5 < throttled_rate < 20, throttled_rate  # about the limit
        client.configure(rate_limit=None)  # the busy period is over
        await asyncio.sleep(0.5)  # requests sent before the lift may still come back throttled
        cuts = rate.cuts
        for _ in range(80):  # up to 20 s
            if (rate.rate or math.inf) >= 2.5 * throttled_rate:
                break
            await asyncio.sleep(0.25)
        before = metrics.stats.requests
        await asyncio.sleep(1.0)
        requests_last_second = metrics.stats.requests - before
        producer.cancel()
        assert rate.cuts == cuts  # no more throttles...
        assert (rate.rate or math.inf) >= 2.5 * throttled_rate, (throttled_rate, rate.rate)
        assert requests_last_second > 1.5 * 10, requests_last_second  # ...and sending past the old limit
    assert metrics.stats.failed == 0
    assert_accounted(metrics.stats)


async def test_a_failing_service_gets_a_bounded_number_of_requests() -> None:
    # Every index answered INTERNAL_ERROR. Each point is sent at most max_attempts times, in
    # batches: at most max_attempts requests per 10 points (the bound stated in the README),
    # and the resends wait out the exponential backoff once the retry quota is spent.
    client = InMemoryMetricsClient(internal_error_rate=1.0, parameter_validation=False)
    points, max_attempts = 500, 8
    started = time.monotonic()
    async with MetricsLogger(
        "failing", client=client, max_attempts=max_attempts, backoff_initial=0.01, backoff_max=0.08
    ) as metrics:
        await log_all(metrics, points)
    seconds = time.monotonic() - started
    requests = client.counts["requests"]
    assert requests <= max_attempts * math.ceil(points / 10), requests
    assert metrics.stats.failed == points and metrics.stats.delivered == 0
    assert {(f.code, f.attempts) for f in metrics.failures} == {("INTERNAL_ERROR", max_attempts)}
    # Not a storm: the last attempts waited out backoffs of 0.01 x 2**k (capped at 0.08) s.
    assert seconds > 0.01 + 0.02 + 0.04 + 0.08, seconds
    assert_accounted(metrics.stats)


async def test_a_spool_absorbs_load_above_the_limit_and_drains_it_when_the_load_falls(
    tmp_path: Path,
) -> None:
    # Capacity: 20 requests/s = 200 points/s. For ~1.5 s the training loop offers ~1,200 points/s
    # (6x the limit) with room for only 200 points in memory: the excess waits on disk, the
    # loop is never held for long, and once it stops logging, the spool drains completely.
    client = InMemoryMetricsClient(rate_limit=20, rate_limit_burst=20, parameter_validation=False)
    total = 1800
    longest_wait = 0.0
    peak_pending = 0
    async with MetricsLogger(
        "overloaded", client=client, spool_dir=tmp_path / "spool", max_buffered=200, close_timeout=60
    ) as metrics:
        for step in range(total):
            before = time.monotonic()
            await metrics.log("loss", float(step), step=step)
            longest_wait = max(longest_wait, time.monotonic() - before)
            if step % 12 == 11:
                await asyncio.sleep(0.01)  # ~1,200 points/s offered
            peak_pending = max(peak_pending, metrics.stats.pending)
        offered_until = time.monotonic()
        assert metrics.stats.pending > 200  # more than memory holds is waiting: on disk
        await metrics.flush(timeout=60)  # the load has stopped: the backlog drains
        drained = time.monotonic() - offered_until
    assert metrics.stats.delivered == total and metrics.stats.failed == 0 and metrics.stats.dropped == 0
    assert metrics.stats.pending == 0
    assert len(client.points) == total and not client.duplicates()
    assert client.counts["rate_limited"] > 0  # the limit was really met
    assert peak_pending > 2 * 200, peak_pending
    assert longest_wait < 2.0, longest_wait  # a disk write at most, never the network
    assert drained > 0.5, drained  # the backlog took a while to drain at the limit
