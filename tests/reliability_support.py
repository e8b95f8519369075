"""Helpers for the reliability suite (tests/test_reliability_*.py).

* `metrics_client`: a real aiobotocore ``sagemaker-metrics`` client for a fake service, with
  botocore's own retries off, as the README asks of a client passed to MetricsLogger.
* `RecordingService`: a `FakeMetricsService` that also keeps, for every request, what it carried,
  how it ended and which points it stored, so a test can tell a duplicate that comes from an
  ambiguous outcome from one that would be a bug.
* Accounting assertions that compare the logger's record with the server's and print a short
  diff (not two 20,000-element counters) when they disagree.
* ``python tests/reliability_support.py worker ...``: the program each process of the
  multi-process test runs (it logs through a MetricsLogger and prints its stats as JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import service_support

from metricsbuf import FailedMetric, MetricsLogger
from metricsbuf.testing import ITEM_OUTCOMES, REQUEST_OUTCOMES, FakeMetricsService, StoredPoint

# (trial component, metric name, step, value): what identifies a point in these tests. Every
# point a test logs has a distinct key; timestamps are compared separately where a test sets them.
Key = tuple[str, str, "int | None", float]

# The mix of issue 3: 10% INTERNAL_ERROR and 10% CONFLICT_ERROR per item; per request 5%
# throttling, 2% HTTP 5xx and 1% connection resets before anything is stored.
# Small backoff so that thousands of retries fit in seconds; enough attempts that nothing
# fails: under the mix a send fails with probability about 0.27, so 25 in a row about 1e-14.
FAST_RETRIES: dict[str, Any] = {
    "max_attempts": 25,
    "backoff_initial": 0.005,
    "backoff_max": 0.1,
    "flush_interval": 0.05,
}

MIXED_FAULTS: dict[str, float] = {
    "internal_error_rate": 0.10,
    "conflict_error_rate": 0.10,
    "throttle_rate": 0.05,
    "server_error_rate": 0.02,
    "reset_rate": 0.01,
}


def metrics_client(endpoint_url: str, *, max_pool_connections: int = 10) -> AbstractAsyncContextManager[Any]:
    """A real aiobotocore client for ``endpoint_url``; botocore's retries and validation off."""
    return service_support.metrics_client(
        endpoint_url, validate=False, max_pool_connections=max_pool_connections
    )


def key_of(point: StoredPoint) -> Key:
    return (point.trial_component, point.name, point.step, point.value)


def failure_key(trial_component: str, failure: FailedMetric) -> Key:
    return (trial_component, failure.name, failure.step, failure.value)


# --------------------------------------------------------------------------- the recording service


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One PUT /BatchPutMetrics the service handled (each HTTP attempt, aiohttp's resends included).

    Attributes:
        outcome: the `REQUEST_OUTCOMES` key the service counted for it.
        items: the keys of the items it carried (empty if the body could not be read as such).
        errors: the per-index codes answered (only for ``ok``; an ambiguous reset answers nothing).
        stored: the points it stored (possible only for ``ok`` and ``ambiguous_reset``).
    """

    outcome: str
    items: tuple[Key, ...]
    errors: Mapping[int, str]
    stored: tuple[StoredPoint, ...]


def _item_keys(body: bytes) -> tuple[Key, ...]:
    try:
        payload = json.loads(body)
        tc = payload["TrialComponentName"]
        return tuple(
            (tc, item["MetricName"], item.get("Step"), float(item["Value"])) for item in payload["MetricData"]
        )
    except (ValueError, TypeError, KeyError):
        return ()


class RecordingService(FakeMetricsService):
    """A FakeMetricsService that keeps a `RequestRecord` of every request in ``records``.

    It wraps the service's private ``_decide``, which decides one request without awaiting
    (draws, storage and the answer are atomic with respect to other requests), so comparing
    the counters and ``points`` before and after it tells exactly what that request did.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.records: list[RequestRecord] = []

    def _decide(self, body: bytes) -> Any:
        counts = self.counts
        before = [counts[k] for k in REQUEST_OUTCOMES]
        first_new = len(self.points)
        decision = super()._decide(body)
        changed = [k for k, n in zip(REQUEST_OUTCOMES, before, strict=True) if counts[k] != n]
        assert len(changed) == 1, changed
        outcome = changed[0]
        errors: dict[int, str] = {}
        if outcome == "ok":
            for error in decision.errors:
                errors[error["MetricIndex"]] = error["Code"]
        self.records.append(RequestRecord(outcome, _item_keys(body), errors, tuple(self.points[first_new:])))
        return decision

    def stored_by_outcome(self, outcome: str) -> Counter[Key]:
        """How many times each key was stored by requests that ended with ``outcome``."""
        return Counter(key_of(p) for r in self.records if r.outcome == outcome for p in r.stored)

    def judged(self) -> Counter[Key]:
        """How many times each key got a per-index outcome (stored or an error code).

        Whole-request faults (throttling, 5xx, resets before storing) reject a request before
        that stage, so a point counted here more than once was really resent after an answer.
        """
        return Counter(key for r in self.records if r.outcome in ("ok", "ambiguous_reset") for key in r.items)

    def answered_codes(self) -> dict[Key, list[str]]:
        """Each key's per-index error codes, in the order the service answered them."""
        out: dict[Key, list[str]] = {}
        for record in self.records:
            for index, code in record.errors.items():
                out.setdefault(record.items[index], []).append(code)
        return out

    def clear(self) -> None:
        super().clear()
        self.records.clear()


# --------------------------------------------------------------------------- accounting


def assert_logger_accounted(metrics: MetricsLogger) -> None:
    """After close: every logged point is delivered, failed (and listed) or dropped."""
    stats = metrics.stats
    assert stats.pending == 0, stats
    assert stats.logged == stats.delivered + stats.failed + stats.dropped, stats
    assert len(metrics.failures) == stats.failed, (len(metrics.failures), stats)


def assert_service_counts_add_up(svc: FakeMetricsService) -> None:
    counts = svc.counts
    assert counts["requests"] == sum(counts[k] for k in REQUEST_OUTCOMES), counts
    assert counts["items"] == sum(counts[k] for k in ITEM_OUTCOMES), counts
    assert counts["stored"] == len(svc.points), counts
    assert counts["max_items_in_request"] <= 10, counts


def _sample(keys: Iterable[Any], n: int = 5) -> list[Any]:
    return sorted(keys, key=repr)[:n]


def diff_counters(got: Counter[Key], want: Counter[Key]) -> str:
    """A short description of how two multisets differ ('' when equal)."""
    if got == want:
        return ""
    missing = want - got
    extra = got - want
    return (
        f"{sum(missing.values())} missing (e.g. {_sample(missing)}), "
        f"{sum(extra.values())} extra (e.g. {_sample(extra.items())})"
    )


def assert_stored_exactly(svc: FakeMetricsService, want: Iterable[Key] | Counter[Key]) -> None:
    """The service stored exactly ``want`` (a multiset of keys): nothing lost, nothing repeated."""
    want_counter = want if isinstance(want, Counter) else Counter(want)
    got = Counter(key_of(p) for p in svc.points)
    problem = diff_counters(got, want_counter)
    assert not problem, f"stored points differ from the expected ones: {problem}"


# --------------------------------------------------------------------------- the mixed-fault workload


def step_values(step: int) -> dict[str, float]:
    """The four metrics of one training step; values are distinct per (name, step)."""
    return {"loss": 1.0 / (step + 1), "acc": step * 1e-6, "lr": step + 0.5, "grad_norm": -float(step)}


async def log_training_steps(metrics: MetricsLogger, steps: range, *, yield_every: int = 10) -> list[Key]:
    """Logs ``step_values`` for each step through all three entry points; returns the keys logged.

    ``loss`` and ``acc`` go through ``log_many``, ``lr`` through ``log`` and ``grad_norm``
    through ``log_nowait``. The loop yields to the event loop every ``yield_every`` steps, as a
    training loop awaiting its own work would.
    """
    tc = metrics.trial_component_name
    keys: list[Key] = []
    for step in steps:
        values = step_values(step)
        await metrics.log_many({"loss": values["loss"], "acc": values["acc"]}, step=step)
        await metrics.log("lr", values["lr"], step=step)
        metrics.log_nowait("grad_norm", values["grad_norm"], step=step)
        keys.extend((tc, name, step, value) for name, value in values.items())
        if step % yield_every == 0:
            await asyncio.sleep(0)
    return keys


# --------------------------------------------------------------------------- the multi-process worker


def worker_keys(trial_component: str, worker: int, points: int) -> list[Key]:
    """The points worker ``worker`` logs: a shared metric on its own steps, and a metric of its own."""
    keys: list[Key] = []
    for i in range(points // 2):
        step = worker * 1_000_000 + i
        keys.append((trial_component, "shared:loss", step, step + 0.25))
        keys.append((trial_component, f"worker{worker}:rate", i, worker + i / 1024))
    return keys


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_attempts": 40,
        "backoff_initial": 0.005,
        "backoff_max": 0.1,
        "flush_interval": 0.05,
    }
    keys = worker_keys(args.trial_component, args.worker, args.points)

    async def run(metrics: MetricsLogger) -> None:
        # Ready (imports done, client made), then wait for the parent's "go" on stdin, so that
        # every worker logs at the same time.
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        for n, (_, name, step, value) in enumerate(keys):
            await metrics.log(name, value, step=step)
            if n % 20 == 0:
                await asyncio.sleep(0)

    if args.own_client:
        # The logger's own client, sent to the service by AWS_ENDPOINT_URL_SAGEMAKER_METRICS.
        logger = MetricsLogger(args.trial_component, **options)
        async with logger:
            await run(logger)
    else:
        async with metrics_client(args.endpoint_url) as client:
            logger = MetricsLogger(args.trial_component, client=client, **options)
            async with logger:
                await run(logger)
    stats = logger.stats
    return {
        "stats": dataclasses.asdict(stats),
        "failures": [[f.name, f.step, f.value, f.code] for f in logger.failures],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reliability_support.py")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser(
        "worker",
        help='print "ready", wait for a line on stdin, log worker_keys(...), print the stats as JSON',
    )
    worker.add_argument("--trial-component", required=True)
    worker.add_argument("--worker", type=int, required=True)
    worker.add_argument("--points", type=int, required=True)
    worker.add_argument("--endpoint-url", default=None)
    worker.add_argument("--own-client", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(_worker(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
