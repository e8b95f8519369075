"""The sender on its own: one batch against a scripted client, settled in a ledger.

No MetricsLogger here: an Accumulator, a Ledger, the Sender and the in-memory client.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError
from conftest import FakeClient, errors

from metricsbuf._accumulator import Accumulator, Batch
from metricsbuf._buffer import PointQueue
from metricsbuf._ledger import Ledger
from metricsbuf._options import LoggerOptions
from metricsbuf._pacing import StepPacer
from metricsbuf._sender import Sender


def options(client: Any, **overrides: Any) -> LoggerOptions:
    settings: dict[str, Any] = {
        "client": client,
        "region_name": None,
        "endpoint_url": None,
        "max_batch_size": 10,
        "flush_interval": 60.0,
        "max_buffered": 1000,
        "on_full": "block",
        "max_in_flight": 1,
        "max_attempts": 3,
        "delivery_timeout": 60.0,
        "close_timeout": 5.0,
        "non_finite": "drop",
        "on_failure": None,
        "backoff_initial": 0.01,
        "backoff_max": 0.02,
        "adaptive_rate": False,
        "rate_scope": "host",
        "spool_dir": None,
        "spool_interval": 0.2,
        "max_spool_bytes": 1 << 20,
        "offline": False,
    }
    settings.update(overrides)
    return LoggerOptions(**settings)


def parts(client: Any, **overrides: Any) -> tuple[Sender, Accumulator, Ledger]:
    opts = options(client, **overrides)
    accumulator = Accumulator(
        PointQueue(opts.max_batch_size, opts.flush_interval),
        delivery_timeout=opts.delivery_timeout,
        trial_component="tc",
        spooled=False,
    )
    ledger = Ledger("tc", None)
    return Sender(opts, accumulator, ledger, StepPacer()), accumulator, ledger


def batch_of(accumulator: Accumulator, ledger: Ledger, count: int) -> Batch:
    now = time.time()
    for step in range(count):
        accumulator.queue.append((f"m{step}", float(step), step, now, now))
        ledger.accepted()
    batch = accumulator.take_batch(now)
    assert batch is not None
    return batch


def throttled() -> ClientError:
    return ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "BatchPutMetrics")


async def test_an_answered_request_settles_each_index_on_its_own() -> None:
    client = FakeClient(lambda n, data: errors((1, "INTERNAL_ERROR"), (2, "VALIDATION_ERROR")))
    sender, accumulator, ledger = parts(client)
    batch = batch_of(accumulator, ledger, 4)
    await sender._deliver(batch)
    assert (ledger.delivered, ledger.failed, ledger.held, ledger.requests) == (2, 1, 1, 1)
    assert [f.code for f in ledger.reporter.failures] == ["VALIDATION_ERROR"]
    # Only the INTERNAL_ERROR index waits in the resend lane, with its attempt counted.
    assert [(position, attempts, p[0]) for _, position, attempts, p in accumulator.lane] == [(1, 1, "m1")]
    assert not accumulator.in_flight


async def test_a_throttled_request_is_retried_whole_and_keeps_its_points_together() -> None:
    client = FakeClient(lambda n, data: (_ for _ in ()).throw(throttled()) if n < 2 else None)
    sender, accumulator, ledger = parts(client)
    await sender._deliver(batch_of(accumulator, ledger, 3))
    assert (ledger.delivered, ledger.requests, ledger.retried) == (3, 3, 6)
    assert [len(r) for r in client.requests] == [3, 3, 3]


def unavailable() -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "ServiceUnavailable", "Message": "down"},
            "ResponseMetadata": {"HTTPStatusCode": 503},
        },
        "BatchPutMetrics",
    )


async def test_a_whole_request_failure_past_max_attempts_fails_the_points_without_a_spool() -> None:
    client = FakeClient(lambda n, data: (_ for _ in ()).throw(unavailable()))
    sender, accumulator, ledger = parts(client, max_attempts=3)
    await sender._deliver(batch_of(accumulator, ledger, 2))
    assert (ledger.failed, ledger.held, ledger.requests) == (2, 0, 3)
    assert {f.code for f in ledger.reporter.failures} == {"ServiceUnavailable"}
    assert all(f.attempts == 3 for f in ledger.reporter.failures)


async def test_throttled_sends_do_not_count_against_max_attempts() -> None:
    # Throttled five times, then a 503 and success: max_attempts=3 is not spent by throttling.
    def handler(number: int, data: list[dict[str, Any]]) -> None:
        if number < 5:
            raise throttled()
        if number == 5:
            raise unavailable()

    client = FakeClient(handler)
    sender, accumulator, ledger = parts(client, max_attempts=3, adaptive_rate=True)
    sender.rate.min_rate = 1000.0  # keeps the test quick
    await sender._deliver(batch_of(accumulator, ledger, 2))
    assert (ledger.delivered, ledger.failed, ledger.requests) == (2, 0, 7)


async def test_sustained_throttling_fails_points_only_at_their_delivery_timeout() -> None:
    client = FakeClient(lambda n, data: (_ for _ in ()).throw(throttled()))
    sender, accumulator, ledger = parts(client, max_attempts=1, delivery_timeout=0.5, adaptive_rate=True)
    sender.rate.min_rate = 50.0  # keeps the test quick
    started = time.monotonic()
    await sender._deliver(batch_of(accumulator, ledger, 2))
    assert time.monotonic() - started >= 0.45
    assert ledger.requests >= 2  # max_attempts=1 did not stop the throttled resends
    assert (ledger.failed, ledger.held) == (2, 0)
    assert {f.code for f in ledger.reporter.failures} == {"DELIVERY_TIMEOUT"}


async def test_an_answer_for_an_abandoned_batch_settles_nothing() -> None:
    release = anyio.Event()

    class Late(FakeClient):
        async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]:
            await release.wait()
            return {"Errors": []}

    sender, accumulator, ledger = parts(Late())
    batch = batch_of(accumulator, ledger, 2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sender._deliver, batch)
        await anyio.sleep(0.01)
        held = accumulator.take_all_held()  # the close report takes the points over
        ledger.record_close_report(held, "CLOSE_TIMEOUT", "closed")
        release.set()
    assert (ledger.delivered, ledger.failed, ledger.held) == (0, 2, 0)


async def test_points_past_their_delivery_timeout_are_not_sent() -> None:
    client = FakeClient()
    sender, accumulator, ledger = parts(client, delivery_timeout=1.0)
    old = time.time() - 5
    accumulator.queue.append(("old", 1.0, None, old, old))
    ledger.accepted()
    batch = accumulator.take_batch(time.time())
    assert batch is not None
    await sender._deliver(batch)
    assert (ledger.failed, ledger.requests) == (1, 0)  # no request was built for it
    assert client.requests == []


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_the_resend_delay_is_tenacitys_backoff_for_the_attempt_count(attempts: int) -> None:
    sender, _, _ = parts(FakeClient(), backoff_initial=0.1, backoff_max=10.0)
    delays = [sender._resend_delay(attempts) for _ in range(50)]
    base = min(0.1 * 2 ** (attempts - 1), 10.0)
    assert all(base <= d <= base + 0.1 + 1e-9 for d in delays), (base, delays[:5])
