"""The fake service's shared rate limit (``rate_limit``, ``rate_limit_burst``): a token bucket
that every client of one service shares, in each of its three forms."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from service_support import item, metrics_client

from metricsbuf import InvalidMetricError
from metricsbuf._retry_policy import classify_exception
from metricsbuf.testing import (
    ITEM_OUTCOMES,
    REQUEST_OUTCOMES,
    FakeMetricsService,
    FakeMetricsServiceProcess,
    InMemoryMetricsClient,
    main,
)
from metricsbuf.testing._rate_limit import TokenBucket

TC = "rate-limited-run"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def admitted(client: Any, step: int = 0) -> bool:
    """Send one request: True if it was stored, False if it was throttled (anything else fails)."""
    try:
        response = await client.batch_put_metrics(TrialComponentName=TC, MetricData=[item(step=step)])
    except ClientError as exc:
        assert exc.response["Error"] == {"Code": "ThrottlingException", "Message": "Rate exceeded"}
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        return False
    assert response["Errors"] == []
    return True


def assert_counts_add_up(counts: Any) -> None:
    assert counts["requests"] == sum(counts[k] for k in REQUEST_OUTCOMES), counts
    assert counts["items"] == sum(counts[k] for k in ITEM_OUTCOMES), counts


# --------------------------------------------------------------------------- the bucket


def test_bucket_admits_its_burst_then_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4.0, capacity=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]  # full at the start
    clock.now += 0.625  # 2.5 tokens
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 0.125  # the half token left over and this half make a whole one
    assert bucket.take() and not bucket.take()
    clock.now += 3600  # a quiet spell refills it up to its capacity, no more
    assert sum(bucket.take() for _ in range(10)) == 3


# --------------------------------------------------------------------------- in memory


async def test_in_memory_client_shares_one_limit_between_its_callers() -> None:
    clock = FakeClock()
    client = InMemoryMetricsClient(rate_limit=10, rate_limit_burst=3, clock=clock)

    async def caller(first_step: int) -> list[bool]:
        return [await admitted(client, first_step + i) for i in range(4)]

    first, second = await asyncio.gather(caller(0), caller(100))
    assert sum(first) + sum(second) == 3  # one bucket for both, not 3 each
    clock.now += 0.25  # 2.5 more tokens
    assert sum([await admitted(client, 200 + i) for i in range(8)]) == 2
    counts = client.counts
    assert counts["rate_limited"] == 11 and counts["throttled"] == 0
    assert counts["stored"] == len(client.points) == 5
    assert_counts_add_up(counts)


async def test_rate_limited_answers_are_retryable_throttling_for_metricsbuf() -> None:
    client = InMemoryMetricsClient(rate_limit=1, rate_limit_burst=1, clock=FakeClock())
    await client.batch_put_metrics(TrialComponentName=TC, MetricData=[item()])
    with pytest.raises(ClientError) as caught:
        await client.batch_put_metrics(TrialComponentName=TC, MetricData=[item()])
    failure = classify_exception(caught.value)
    assert (failure.code, failure.retryable, failure.ambiguous) == ("ThrottlingException", True, False)


async def test_reconfiguring_the_limit_while_running() -> None:
    clock = FakeClock()
    client = InMemoryMetricsClient(rate_limit=2, clock=clock)
    # The burst defaults to one second of the rate.
    assert [await admitted(client, i) for i in range(3)] == [True, True, False]
    client.rate_limit = None  # no limit
    assert all([await admitted(client, 10 + i) for i in range(20)])
    # A new limit starts with a full bucket.
    assert client.configure(rate_limit=5)["rate_limit_burst"] is None
    assert sum([await admitted(client, 100 + i) for i in range(8)]) == 5
    client.rate_limit_burst = 2
    assert sum([await admitted(client, 200 + i) for i in range(8)]) == 2
    client.clear()  # forgets the counts and refills the bucket
    assert sum([await admitted(client, 300 + i) for i in range(8)]) == 2
    assert client.counts["rate_limited"] == 6


def test_options_are_checked() -> None:
    for bad in ({"rate_limit": 0}, {"rate_limit": -1.0}, {"rate_limit": float("inf")}):
        with pytest.raises(InvalidMetricError, match="rate_limit"):
            InMemoryMetricsClient(**bad)
    for bad_burst in (0, 1.5, True):
        with pytest.raises(InvalidMetricError, match="rate_limit_burst"):
            FakeMetricsService(rate_limit=1, rate_limit_burst=bad_burst)  # type: ignore[arg-type]


def test_command_line_rejects_a_bad_rate_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--rate-limit", "-5"])
    assert caught.value.code == 2
    assert "rate_limit" in capsys.readouterr().err


# --------------------------------------------------------------------------- over HTTP


async def hammer(client: Any, until: float, first_step: int) -> list[bool]:
    """Send requests as fast as 4 at a time allow until ``until`` (monotonic)."""
    results: list[bool] = []

    async def worker(offset: int) -> None:
        step = first_step + offset
        while time.monotonic() < until:
            results.append(await admitted(client, step))
            step += 4

    await asyncio.gather(*(worker(i) for i in range(4)))
    return results


RATE = 20.0
BURST = 5


def assert_admitted_about(admitted_count: int, seconds: float) -> None:
    """At most the burst plus the rate over the window (plus a little slack for the edges),
    and at least half the rate: the clients ask for far more than the limit."""
    assert admitted_count <= BURST + RATE * (seconds + 0.25), (admitted_count, seconds)
    assert admitted_count >= 0.5 * RATE * seconds, (admitted_count, seconds)


async def test_two_aiobotocore_clients_share_the_service_limit() -> None:
    async with FakeMetricsService(rate_limit=RATE, rate_limit_burst=BURST) as svc:
        async with metrics_client(svc.endpoint_url) as one, metrics_client(svc.endpoint_url) as two:
            started = time.monotonic()
            results = await asyncio.gather(hammer(one, started + 1.0, 0), hammer(two, started + 1.0, 10**6))
            elapsed = time.monotonic() - started
    first, second = results
    # Each client alone asked for more than the whole limit, and both were throttled.
    assert not all(first) and not all(second)
    assert_admitted_about(sum(first) + sum(second), elapsed)
    counts = svc.counts
    assert counts["ok"] == sum(first) + sum(second)
    assert counts["rate_limited"] == len(first) + len(second) - counts["ok"]
    assert counts["throttled"] == 0
    assert_counts_add_up(counts)


async def test_http_limit_changes_while_running() -> None:
    svc = FakeMetricsService(rate_limit=1, rate_limit_burst=1)
    async with svc, metrics_client(svc.endpoint_url) as c:
        assert [await admitted(c, i) for i in range(3)] == [True, False, False]
        with pytest.raises(ClientError) as caught:
            await c.batch_put_metrics(TrialComponentName=TC, MetricData=[item()])
        failure = classify_exception(caught.value)  # as botocore's own checkers see it
        assert (failure.code, failure.retryable, failure.ambiguous) == ("ThrottlingException", True, False)
        svc.rate_limit = None
        assert all([await admitted(c, 10 + i) for i in range(10)])
        svc.configure(rate_limit=1, rate_limit_burst=3)
        assert [await admitted(c, 20 + i) for i in range(4)] == [True, True, True, False]
    assert svc.counts["rate_limited"] == 4


# --------------------------------------------------------------------------- separate processes

# Each child waits for a common start time, then sends PUTs as fast as 4 connections allow for
# a fixed time, and prints how many were admitted and how many throttled, and when (wall clock)
# it began sending and got its last answer.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import aiohttp

    async def main(url, start, seconds):
        body = json.dumps({"TrialComponentName": "child", "MetricData": [
            {"MetricName": "m", "Value": 1.0, "Timestamp": time.time()}]})
        counts = {"ok": 0, "throttled": 0}
        await asyncio.sleep(max(0.0, start - time.time()))
        counts["began"] = time.time()
        until = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:
            async def worker():
                while time.monotonic() < until:
                    async with session.put(url + "/BatchPutMetrics", data=body) as response:
                        await response.read()
                        kind = response.headers.get("x-amzn-ErrorType", "").split(":")[0]
                        if response.status == 200:
                            counts["ok"] += 1
                        elif response.status == 400 and kind == "ThrottlingException":
                            counts["throttled"] += 1
                        else:
                            raise AssertionError((response.status, kind))
            await asyncio.gather(*(worker() for _ in range(4)))
        counts["ended"] = time.time()
        print(json.dumps(counts))

    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
    """
)


def test_processes_sharing_one_service_process_share_one_limit() -> None:
    seconds = 1.0
    with FakeMetricsServiceProcess(rate_limit=RATE, rate_limit_burst=BURST) as proc:
        assert proc.config()["rate_limit"] == RATE and proc.config()["rate_limit_burst"] == BURST
        start = time.time() + 2.0  # time enough for both children to import aiohttp
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, proc.endpoint_url, repr(start), repr(seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [child.communicate(timeout=60)[0] for child in children]
        assert all(child.returncode == 0 for child in children)
        state = proc.state(points=False)
        # At run time, over the config endpoint: no limit any more.
        assert proc.configure(rate_limit=None)["rate_limit"] is None
    results = [json.loads(output) for output in outputs]
    assert all(r["ok"] and r["throttled"] for r in results), results
    # Over the time either child was sending (their starts differ a little, more under load).
    window = max(r["ended"] for r in results) - min(r["began"] for r in results)
    assert_admitted_about(sum(r["ok"] for r in results), window)
    assert state.counts["ok"] == sum(r["ok"] for r in results)
    assert state.counts["rate_limited"] == sum(r["throttled"] for r in results)
