"""Reliability under injected faults, through a real aiobotocore client and the fake service over HTTP.

Every test accounts for every point: after close ``logged == delivered + failed + dropped`` with
nothing pending, and the service's record (each stored point, each request) agrees with the
logger's. See tests/reliability_support.py for the recording service and the helpers.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from typing import Any

from reliability_support import (
    FAST_RETRIES,
    MIXED_FAULTS,
    Key,
    RecordingService,
    assert_logger_accounted,
    assert_service_counts_add_up,
    assert_stored_exactly,
    diff_counters,
    failure_key,
    key_of,
    log_training_steps,
    metrics_client,
)

from metricsbuf import MetricsLogger

TC = "reliability-run-0001"
DAY = 24 * 3600.0
RETRYABLE = {"INTERNAL_ERROR", "CONFLICT_ERROR"}


async def test_mixed_faults_store_every_point_exactly_once() -> None:
    """20,000 points under 10% INTERNAL_ERROR, 10% CONFLICT_ERROR, 5% throttling, 2% 5xx, 1% resets."""
    async with RecordingService(seed=3, **MIXED_FAULTS) as svc, metrics_client(svc.endpoint_url) as client:
        async with MetricsLogger(TC, client=client, **FAST_RETRIES) as metrics:
            keys = await log_training_steps(metrics, range(5000))
    assert len(keys) == len(set(keys)) == 20_000

    # The logger's account: everything delivered, nothing failed or dropped.
    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.failed == 0, metrics.failures[:5]
    assert stats.logged == stats.delivered == 20_000 and stats.dropped == 0

    # The service's: every point stored exactly once, and no request over 10 items.
    assert_stored_exactly(svc, keys)
    assert_service_counts_add_up(svc)
    counts = svc.counts
    assert counts["max_items_in_request"] == 10
    assert counts["stored"] == stats.delivered

    # Every kind of fault really happened, in roughly the proportions asked for (the run makes
    # about 2,700 requests carrying 25,000 items; the bounds are far below the expected counts).
    assert counts["INTERNAL_ERROR"] >= 1500 and counts["CONFLICT_ERROR"] >= 1500, counts
    assert counts["throttled"] >= 50 and counts["server_error"] >= 15 and counts["reset"] >= 5, counts
    assert counts["server_error_500"] > 0 and counts["server_error_503"] > 0, counts

    # A point was judged again only after the service answered INTERNAL_ERROR or CONFLICT_ERROR
    # for it: its per-index history is some retryable codes, then "stored", never anything else.
    judged = svc.judged()
    codes = svc.answered_codes()
    assert set(judged) == set(keys)
    for key in keys:
        history = codes.get(key, [])
        assert set(history) <= RETRYABLE and judged[key] == len(history) + 1, (key, history)

    # The logger's requests and resends agree with what the service received: aiohttp resends a
    # PUT once by itself after some dropped connections, so the service may see a few more.
    resets = [r for r in svc.records if r.outcome == "reset"]
    assert stats.requests <= counts["requests"] <= stats.requests + len(resets), (stats, counts)
    sent_by_logger = stats.logged + stats.retried
    received = sum(len(r.items) for r in svc.records)
    assert sent_by_logger <= received <= sent_by_logger + sum(len(r.items) for r in resets)
    print(f"\nmixed faults: {stats}\nservice counts: {dict(counts)}")


async def test_ambiguous_resets_lose_nothing_and_duplicate_only_ambiguous_requests() -> None:
    """Resets after storing: the logger must resend, so a point may be stored twice, but only then."""
    faults = {"ambiguous_reset_rate": 0.05, "internal_error_rate": 0.05, "conflict_error_rate": 0.05}
    async with RecordingService(seed=11, **faults) as svc, metrics_client(svc.endpoint_url) as client:
        async with MetricsLogger(TC, client=client, **FAST_RETRIES) as metrics:
            keys = await log_training_steps(metrics, range(1500))
    assert len(keys) == len(set(keys)) == 6000
    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.failed == 0, metrics.failures[:5]
    assert stats.logged == stats.delivered == 6000
    assert_service_counts_add_up(svc)

    stored = Counter(key_of(p) for p in svc.points)
    # Nothing lost, nothing made up.
    assert set(stored) == set(keys), diff_counters(Counter(set(stored)), Counter(keys))
    # Each delivered point was stored exactly once by a request the service answered (the answer
    # the logger counted as delivery). Every other copy was stored by a request whose connection
    # was then dropped: the client could not know, so resending was right.
    ok_stored = svc.stored_by_outcome("ok")
    ambiguous_stored = svc.stored_by_outcome("ambiguous_reset")
    assert not diff_counters(ok_stored, Counter(keys)), diff_counters(ok_stored, Counter(keys))
    extra = stored - Counter(keys)
    assert extra == ambiguous_stored
    duplicates = sum(extra.values())
    ambiguous = svc.counts["ambiguous_reset"]
    assert 0 < duplicates <= ambiguous * 10, (duplicates, ambiguous)
    assert set(extra) == {key_of(p) for p in svc.duplicates()}
    print(f"\nambiguous resets: {ambiguous}, duplicate copies stored: {duplicates}, stats: {stats}")


class CorruptingClient:
    """Passes every call to a real client, but moves the Timestamp of each item whose name starts
    with "poison" 15 days back, as a clock or encoding bug between the logger and the service
    would. The logger checks points when they are logged, so this is how a per-index
    VALIDATION_ERROR from the service can be had for points that passed that check."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def batch_put_metrics(self, **kwargs: Any) -> Any:
        data = [
            dict(item, Timestamp=item["Timestamp"] - timedelta(seconds=15 * DAY))
            if item["MetricName"].startswith("poison")
            else item
            for item in kwargs["MetricData"]
        ]
        return await self._client.batch_put_metrics(**{**kwargs, "MetricData": data})


async def test_final_codes_are_judged_once_and_reported_with_their_code() -> None:
    """VALIDATION_ERROR and METRIC_LIMIT_EXCEEDED, mixed into batches with transient faults."""
    async with RecordingService(seed=5, metric_limit=3) as svc, metrics_client(svc.endpoint_url) as client:
        async with MetricsLogger(TC, client=CorruptingClient(client), **FAST_RETRIES) as metrics:
            # The trial component first holds its three allowed names, then the faults start.
            await metrics.log_many({"loss": 0.0, "acc": 0.0, "lr": 0.0}, step=0)
            await metrics.flush()
            svc.configure(internal_error_rate=0.1, conflict_error_rate=0.1, throttle_rate=0.05)
            good: list[Key] = [(TC, name, 0, 0.0) for name in ("loss", "acc", "lr")]
            invalid: list[Key] = []
            over_limit: list[Key] = []
            for step in range(1, 301):
                values = {"loss": 1.0 / step, "acc": step / 300, "lr": step * 1e-3}
                await metrics.log_many(values, step=step)
                good += [(TC, name, step, value) for name, value in values.items()]
                await metrics.log(f"extra:{step % 2}", float(step), step=step)  # a 4th and 5th name
                over_limit.append((TC, f"extra:{step % 2}", step, float(step)))
                if step % 3 == 0:
                    await metrics.log("poison", -float(step), step=step)
                    invalid.append((TC, "poison", step, -float(step)))
    assert_logger_accounted(metrics)
    stats = metrics.stats
    assert stats.delivered == len(good) == 903
    assert stats.failed == len(invalid) + len(over_limit) == 100 + 300

    # The service stored exactly the good points, and judged each failed point exactly once.
    assert_stored_exactly(svc, good)
    assert_service_counts_add_up(svc)
    assert svc.counts["VALIDATION_ERROR"] == len(invalid)
    assert svc.counts["METRIC_LIMIT_EXCEEDED"] == len(over_limit)
    judged = svc.judged()
    codes = svc.answered_codes()
    for expected_code, keys in (("VALIDATION_ERROR", invalid), ("METRIC_LIMIT_EXCEEDED", over_limit)):
        for key in keys:
            assert judged[key] == 1 and codes[key] == [expected_code], (key, judged[key], codes.get(key))

    # The logger reports each of them once, with the service's code; nothing else failed.
    failed_codes = {failure_key(TC, f): f.code for f in metrics.failures}
    assert len(failed_codes) == len(metrics.failures)
    assert failed_codes == {
        **{key: "VALIDATION_ERROR" for key in invalid},
        **{key: "METRIC_LIMIT_EXCEEDED" for key in over_limit},
    }
    assert all(f.attempts >= 1 and f.code in f.message for f in metrics.failures)
    # The transient faults did happen around them.
    counts = svc.counts
    assert counts["INTERNAL_ERROR"] > 0 and counts["CONFLICT_ERROR"] > 0 and counts["throttled"] > 0


async def test_point_valid_when_logged_but_stale_when_sent_gets_validation_error() -> None:
    """The natural way to a VALIDATION_ERROR: a timestamp at the edge of the 14-day window.

    It is inside the window when logged, so the logger accepts it; the batch leaves after
    ``flush_interval`` (1 s), by which time it is outside, and the service rejects it alone.
    """
    async with RecordingService() as svc, metrics_client(svc.endpoint_url) as client:
        async with MetricsLogger(TC, client=client, flush_interval=1.0) as metrics:
            edge = time.time() - 14 * DAY + 0.3
            await metrics.log("old", 1.0, step=1, timestamp=edge)
            await metrics.log("fresh", 2.0, step=1)
            await metrics.log("old", 3.0, step=2, timestamp=edge)
            await metrics.log("fresh", 4.0, step=2)
            # Stay in the block: leaving it would send the partial batch at once.
            await svc.wait_stored(2, timeout=30)
    assert_logger_accounted(metrics)
    assert metrics.stats.delivered == 2 and metrics.stats.failed == 2
    assert_stored_exactly(svc, [(TC, "fresh", 1, 2.0), (TC, "fresh", 2, 4.0)])
    assert [r.outcome for r in svc.records] == ["ok"]  # one request, all four items judged once
    assert dict(svc.records[0].errors) == {0: "VALIDATION_ERROR", 2: "VALIDATION_ERROR"}
    assert sorted((f.name, f.step, f.value, f.code, f.attempts) for f in metrics.failures) == [
        ("old", 1, 1.0, "VALIDATION_ERROR", 1),
        ("old", 2, 3.0, "VALIDATION_ERROR", 1),
    ]


async def test_unknown_trial_component_fails_every_point_once_with_the_request_code() -> None:
    """A final whole-request error (ResourceNotFound) fails the batch at once: never resent."""
    async with (
        RecordingService(known_trial_components={TC}) as svc,
        metrics_client(svc.endpoint_url) as client,
    ):
        async with (
            MetricsLogger(TC, client=client, **FAST_RETRIES) as known,
            MetricsLogger("no-such-run", client=client, **FAST_RETRIES) as unknown,
        ):
            for step in range(25):
                await known.log("loss", step + 0.5, step=step)
                await unknown.log("loss", step + 0.5, step=step)
    for metrics in (known, unknown):
        assert_logger_accounted(metrics)
    assert known.stats.delivered == 25 and known.stats.failed == 0
    assert unknown.stats.delivered == 0 and unknown.stats.failed == 25 and unknown.stats.retried == 0
    assert {(f.code, f.attempts) for f in unknown.failures} == {("ResourceNotFound", 1)}
    assert_stored_exactly(svc, [(TC, "loss", step, step + 0.5) for step in range(25)])
    assert_service_counts_add_up(svc)
    # Each unknown point was sent once, in one of three refused requests (10 + 10 + 5).
    refused = [r for r in svc.records if r.outcome == "resource_not_found"]
    assert sorted(len(r.items) for r in refused) == [5, 10, 10]
    assert sorted(key[2] for r in refused for key in r.items) == list(range(25))
