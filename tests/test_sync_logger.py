"""SyncMetricsLogger: the async logger on a thread of its own, for synchronous code.

Every test goes through the public API (log, log_many, flush, close, stats, failures) and checks
real outcomes: what the client or the fake service stored, the counters, what was raised where.
Scripts that must exit, fork or die run in a subprocess.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClient, assert_accounted

from metricsbuf import (
    CLOSE_TIMEOUT,
    FLUSHER_CRASHED,
    BufferFullError,
    InvalidMetricError,
    LoggerClosedError,
    MetricsBufError,
    MetricsLogger,
    MetricsStats,
    SyncMetricsLogger,
)
from metricsbuf._accumulator import Accumulator
from metricsbuf.testing import FakeMetricsServiceProcess

ROOT = Path(__file__).resolve().parent.parent


class GatedClient(FakeClient):
    """Holds every request until ``release()`` (a threading.Event: the test thread opens it)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.arrived = 0  # requests received, answered or not

    async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]:
        self.arrived += 1
        while not self.open.is_set():  # noqa: ASYNC110 (a threading.Event, set from the test's thread)
            await asyncio.sleep(0.005)
        return await super().batch_put_metrics(**kwargs)


def stored_keys(client: FakeClient) -> Counter[tuple[str, int | None]]:
    return Counter((item["MetricName"], item.get("Step")) for item in client.stored)


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def run_script(
    script: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


# ---------------------------------------------------------------------------------------------
# The surface


def test_it_takes_exactly_the_options_of_metrics_logger() -> None:
    sync = inspect.signature(SyncMetricsLogger.__init__).parameters
    async_ = inspect.signature(MetricsLogger.__init__).parameters
    assert list(sync) == list(async_)
    for name, parameter in async_.items():
        if name in ("self", "trial_component_name"):
            continue
        assert sync[name].default == parameter.default, name
        assert sync[name].kind == parameter.kind, name
    assert sync["trial_component_name"].default is None


def test_bad_options_raise_at_construction_and_start_no_thread() -> None:
    before = threading.active_count()
    with pytest.raises(InvalidMetricError, match="max_batch_size"):
        SyncMetricsLogger("run-1", client=FakeClient(), max_batch_size=11)
    with pytest.raises(InvalidMetricError, match="trial_component_name"):
        SyncMetricsLogger("Not Valid", client=FakeClient())
    assert threading.active_count() == before


def test_a_failing_start_raises_in_the_constructor_and_ends_the_thread(
    no_aws_config: pytest.MonkeyPatch,
) -> None:
    before = threading.active_count()
    with pytest.raises(MetricsBufError, match="(?i)credentials|region"):
        SyncMetricsLogger("run-1")
    wait_until(lambda: threading.active_count() == before)


# ---------------------------------------------------------------------------------------------
# Delivery


def test_single_thread_everything_is_delivered_once() -> None:
    client = FakeClient()
    with SyncMetricsLogger("run-1", client=client) as metrics:
        assert metrics.trial_component_name == "run-1"
        for step in range(1003):
            metrics.log("loss", 1.0 / (step + 1), step=step)
        metrics.log_many({"lr": 0.1, "acc": 0.5}, step=7)
    assert metrics.stats == MetricsStats(
        logged=1005, delivered=1005, failed=0, dropped=0, rejected=0, retried=0, requests=101, pending=0
    )
    keys = stored_keys(client)
    assert len(keys) == 1005 and max(keys.values()) == 1
    assert all(len(request) <= 10 for request in client.requests)
    losses = [item["Value"] for item in client.stored if item["MetricName"] == "loss"]
    assert losses == [1.0 / (step + 1) for step in range(1003)]  # one thread: in logged order


def run_threads(produce: Callable[[int], None], count: int) -> list[BaseException]:
    """Runs ``produce(0)`` .. ``produce(count - 1)`` in as many threads at once; returns what they raised."""
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            produce(index)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_eight_threads_every_point_is_stored_exactly_once() -> None:
    client = FakeClient()
    per_thread = 5_000
    with SyncMetricsLogger("run-1", client=client, max_in_flight=4) as metrics:

        def produce(index: int) -> None:
            for step in range(per_thread):
                metrics.log(f"thread-{index}", float(step), step=step)

        errors = run_threads(produce, 8)
        metrics.flush()
        assert metrics.stats.delivered == 8 * per_thread
    assert not errors
    keys = stored_keys(client)
    assert len(keys) == 8 * per_thread and set(keys.values()) == {1}
    for index in range(8):  # each thread's points in its own order
        steps = [item["Step"] for item in client.stored if item["MetricName"] == f"thread-{index}"]
        assert steps == list(range(per_thread))


def test_eight_threads_over_http_through_the_loggers_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeMetricsServiceProcess() as service:
        for key, value in service.environ().items():
            monkeypatch.setenv(key, value)
        with SyncMetricsLogger("run-http", max_in_flight=4) as metrics:
            threads = [
                threading.Thread(
                    target=lambda i=i: [metrics.log(f"t{i}", float(s), step=s) for s in range(500)]
                )
                for i in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        state = service.state()
    assert metrics.stats.delivered == 4000 and metrics.stats.failed == 0
    assert len(state.points) == 4000 and len(set(state.points)) == 4000


def test_a_partial_batch_leaves_after_flush_interval_without_flush() -> None:
    client = FakeClient()
    with SyncMetricsLogger("run-1", client=client, flush_interval=0.2) as metrics:
        logged_at = time.monotonic()
        metrics.log("loss", 1.0, step=1)
        wait_until(lambda: len(client.stored) == 1, timeout=5)
        waited = time.monotonic() - logged_at
        assert 0.15 <= waited < 2.0, waited
        # and again once the loop has gone idle (its timer disarmed)
        time.sleep(0.5)
        logged_at = time.monotonic()
        metrics.log("loss", 2.0, step=2)
        wait_until(lambda: len(client.stored) == 2, timeout=5)
        assert 0.15 <= time.monotonic() - logged_at < 2.0


def test_stats_invariant_holds_when_sampled_from_another_thread() -> None:
    client = FakeClient(lambda n, data: None)
    samples: list[MetricsStats] = []
    stop = threading.Event()
    with SyncMetricsLogger("run-1", client=client, max_buffered=500, flush_interval=0.05) as metrics:

        def sample() -> None:
            while not stop.is_set():
                samples.append(metrics.stats)

        def produce(index: int) -> None:
            for step in range(3_000):
                metrics.log(f"t{index}", float(step), step=step)
                if step % 3 == 0:
                    metrics.log("nan", float("nan"))  # rejected, counted once each

        sampler = threading.Thread(target=sample)
        sampler.start()
        producers = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join()
        stop.set()
        sampler.join()
    assert len(samples) > 20
    for stats in samples:
        assert stats.logged == stats.delivered + stats.failed + stats.dropped + stats.pending, stats
        assert 0 <= stats.pending <= 500, stats  # max_buffered holds with the hand-off included
        assert stats.rejected <= 4 * 1_000
    assert [s.logged for s in samples] == sorted(s.logged for s in samples)
    final = metrics.stats
    assert final.logged == final.delivered == 12_000 and final.rejected == 4_000
    assert len(client.stored) == 12_000


def test_logging_wakes_the_loop_thread_far_fewer_times_than_points() -> None:
    client = FakeClient()
    points = 4_000
    with SyncMetricsLogger("run-1", client=client) as metrics:
        wakes: Counter[str] = Counter()
        real = metrics._loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            wakes[getattr(callback, "__name__", repr(callback))] += 1
            return real(callback, *args, **kwargs)

        metrics._loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        for step in range(points):  # a tight loop: the loop thread pulls points in as it sends
            metrics.log("loss", 1.0, step=step)
        tight = sum(wakes.values())
        for step in range(points, 2 * points):  # a paced loop: at most one wake-up per batch
            metrics.log("loss", 1.0, step=step)
            if step % 4 == 0:
                time.sleep(0.0005)
        paced = sum(wakes.values()) - tight
        metrics.flush()
    assert len(client.stored) == 2 * points
    # At most one wake-up per batch's worth (points // 10), with a margin; far fewer in practice
    # (the loop thread pulls what is there each time a sender looks for a batch).
    print(f"wake-ups for {points} points: tight loop {tight}, paced loop {paced}")
    assert tight <= points // 5, wakes
    assert paced <= points // 5, wakes


# ---------------------------------------------------------------------------------------------
# Validation, errors and all-or-nothing


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "", "value": 1.0}, "name"),
        ({"name": 3, "value": 1.0}, "name"),
        ({"name": "a\nb", "value": 1.0}, "line breaks"),
        ({"name": "loss", "value": "1.0"}, "real number"),
        ({"name": "loss", "value": None}, "real number"),
        ({"name": "loss", "value": 1.0, "step": -1}, "step"),
        ({"name": "loss", "value": 1.0, "step": 1.5}, "step"),
        ({"name": "loss", "value": 1.0, "timestamp": "now"}, "timestamp"),
        ({"name": "loss", "value": 1.0, "timestamp": 0.0}, "window"),
    ],
)
def test_invalid_points_raise_in_the_calling_thread(kwargs: dict[str, Any], field: str) -> None:
    client = FakeClient()
    raised: list[BaseException] = []
    with SyncMetricsLogger("run-1", client=client, non_finite="raise") as metrics:

        def call() -> None:
            try:
                metrics.log(**kwargs)
            except InvalidMetricError as exc:
                raised.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        caller.join()
        metrics.log("good", 1.0)
    assert len(raised) == 1 and field in str(raised[0])
    assert metrics.stats.logged == 1 and [item["MetricName"] for item in client.stored] == ["good"]


def test_non_finite_values_follow_non_finite() -> None:
    client = FakeClient()
    with SyncMetricsLogger("run-1", client=client) as metrics:  # non_finite="drop"
        metrics.log("loss", float("inf"))
        metrics.log("loss", float("nan"), step=3)
        assert metrics.stats.rejected == 2 and metrics.stats.logged == 0
    with SyncMetricsLogger("run-1", client=client, non_finite="raise") as strict:
        with pytest.raises(InvalidMetricError, match="not finite"):
            strict.log("loss", float("nan"))
    assert metrics.stats.rejected == 2 and strict.stats.rejected == 0 and client.stored == []


def test_log_many_is_all_or_nothing() -> None:
    client = FakeClient()
    with SyncMetricsLogger("run-1", client=client, max_buffered=5, on_full="raise") as metrics:
        with pytest.raises(InvalidMetricError, match="step"):
            metrics.log_many({"a": 1.0, "b": float("nan")}, step=-1)
        with pytest.raises(InvalidMetricError, match="real number"):
            metrics.log_many({"a": 1.0, "b": float("nan"), "c": "x"})
        with pytest.raises(InvalidMetricError, match="mapping"):
            metrics.log_many([("a", 1.0)])  # type: ignore[arg-type]
        assert metrics.stats.logged == 0 and metrics.stats.rejected == 0  # nothing counted
        metrics.log_many({"a": 1.0, "b": float("nan"), "c": 3}, step=1)
        assert metrics.stats.logged == 2 and metrics.stats.rejected == 1
        with pytest.raises(BufferFullError, match="can never fit|none of the"):
            metrics.log_many({f"m{i}": 1.0 for i in range(6)})
    assert metrics.stats.logged == 2
    assert sorted(item["MetricName"] for item in client.stored) == ["a", "c"]


def test_after_close_calls_raise_and_close_is_idempotent() -> None:
    client = FakeClient()
    metrics = SyncMetricsLogger("run-1", client=client)
    thread = metrics._thread
    metrics.log("loss", 1.0)
    closers = [threading.Thread(target=metrics.close) for _ in range(3)]
    for closer in closers:
        closer.start()
    metrics.close()
    for closer in closers:
        closer.join()
    metrics.close()
    assert not thread.is_alive()
    with pytest.raises(LoggerClosedError):
        metrics.log("loss", 2.0)
    with pytest.raises(LoggerClosedError):
        metrics.log_many({"a": 1.0})
    with pytest.raises(LoggerClosedError):
        metrics.log("bad\n", 2.0)  # closed comes first, as in MetricsLogger
    with pytest.raises(LoggerClosedError):
        metrics.flush()
    assert metrics.stats.logged == metrics.stats.delivered == 1 and len(client.stored) == 1


def test_the_body_exception_propagates_as_itself() -> None:
    client = FakeClient()
    with pytest.raises(ZeroDivisionError):
        with SyncMetricsLogger("run-1", client=client) as metrics:
            metrics.log("loss", 1.0)
            1 / 0  # noqa: B018
    assert len(client.stored) == 1


# ---------------------------------------------------------------------------------------------
# Flush and close timeouts


def test_flush_waits_for_every_point_logged_before_it_and_times_out() -> None:
    client = GatedClient()
    with SyncMetricsLogger("run-1", client=client, flush_interval=30.0, close_timeout=5.0) as metrics:
        for step in range(25):
            metrics.log("loss", float(step), step=step)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            metrics.flush(timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 3.0
        assert metrics.stats.pending == 25  # still queued
        client.open.set()
        metrics.flush(timeout=10)
        assert metrics.stats.delivered == 25 and metrics.stats.pending == 0
    assert len(client.stored) == 25


def test_close_timeout_bounds_close_and_reports_what_is_left() -> None:
    client = GatedClient()  # never opened: nothing is delivered
    metrics = SyncMetricsLogger("run-1", client=client, close_timeout=30.0)
    for step in range(30):
        metrics.log("loss", float(step), step=step)
    started = time.monotonic()
    metrics.close(timeout=0.3)  # the argument wins over close_timeout
    assert time.monotonic() - started < 0.3 + 4.0
    stats = metrics.stats
    assert_accounted(stats)
    assert stats.failed == 30 and {f.code for f in metrics.failures} == {CLOSE_TIMEOUT}


def test_a_dead_flusher_makes_calls_raise_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Accumulator, no_more_points: object) -> None:
        raise RuntimeError("flusher bug")

    monkeypatch.setattr(Accumulator, "wait_until_batch_due", broken)
    metrics = SyncMetricsLogger("run-1", client=FakeClient(), max_buffered=5)
    wait_until(lambda: not metrics._logger._accepting)
    with pytest.raises(LoggerClosedError, match="flusher died"):
        metrics.log("loss", 2.0)
    with pytest.raises(LoggerClosedError, match="flusher died"):
        metrics.flush()
    with pytest.raises(LoggerClosedError, match="flusher died"):
        metrics.close()
    assert {f.code for f in metrics.failures} <= {FLUSHER_CRASHED}
    assert_accounted(metrics.stats)


# ---------------------------------------------------------------------------------------------
# A full buffer


def test_on_full_block_waits_for_room_and_close_releases_a_waiter() -> None:
    client = GatedClient()
    with SyncMetricsLogger("run-1", client=client, max_buffered=20, close_timeout=5.0) as metrics:
        for step in range(20):
            metrics.log("loss", float(step), step=step)
        done = threading.Event()

        def blocked() -> None:
            metrics.log("loss", 20.0, step=20)
            done.set()

        waiter = threading.Thread(target=blocked)
        waiter.start()
        assert not done.wait(0.5)  # no room: it waits
        assert metrics.stats.logged == 20 and metrics.stats.pending == 20
        client.open.set()  # room again
        assert done.wait(10)
        waiter.join()
        metrics.flush()
    assert metrics.stats.delivered == 21 and len(client.stored) == 21

    client = GatedClient()
    metrics = SyncMetricsLogger("run-1", client=client, max_buffered=5, close_timeout=0.3)
    for step in range(5):
        metrics.log("loss", float(step), step=step)
    outcome: list[BaseException] = []

    def blocked_until_close() -> None:
        try:
            metrics.log("loss", 99.0)
        except BaseException as exc:  # noqa: BLE001 (checked below)
            outcome.append(exc)

    waiter = threading.Thread(target=blocked_until_close)
    waiter.start()
    time.sleep(0.3)
    metrics.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], LoggerClosedError)
    stats = metrics.stats
    assert stats.logged == 5 and stats.failed == 5  # the waiter's point was never logged
    assert_accounted(stats)


def test_on_full_raise_raises_at_the_call_and_logs_nothing() -> None:
    client = GatedClient()
    with SyncMetricsLogger(
        "run-1", client=client, max_buffered=10, on_full="raise", close_timeout=5.0
    ) as metrics:
        for step in range(10):
            metrics.log("loss", float(step), step=step)
        with pytest.raises(BufferFullError, match="max_buffered=10"):
            metrics.log("loss", 10.0, step=10)
        with pytest.raises(BufferFullError):
            metrics.log_many({"a": 1.0, "b": 2.0})
        assert metrics.stats.logged == 10 and metrics.stats.pending == 10
        client.open.set()
    assert metrics.stats.delivered == 10 and len(client.stored) == 10


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_drop_policies_drop_and_count(policy: str) -> None:
    client = GatedClient()
    with SyncMetricsLogger(
        "run-1",
        client=client,
        max_buffered=30,
        on_full=policy,  # type: ignore[arg-type]
        max_in_flight=1,
        close_timeout=5.0,
    ) as metrics:
        for step in range(10):
            metrics.log("loss", float(step), step=step)
        wait_until(lambda: client.arrived == 1)  # the first batch is in flight
        for step in range(10, 100):
            metrics.log("loss", float(step), step=step)
        stats = metrics.stats
        assert stats.logged == 100 and stats.dropped == 70 and stats.pending == 30, stats
        assert_accounted(stats)
        client.open.set()
    final = metrics.stats
    assert final.logged == 100 and final.dropped == 70 and final.delivered == 30
    steps = sorted(item["Step"] for item in client.stored)
    if policy == "drop_newest":
        assert steps == list(range(30))
    else:  # the batch in flight (the first 10) stays; the newest 20 replace the oldest queued
        assert steps == list(range(10)) + list(range(80, 100))


# ---------------------------------------------------------------------------------------------
# On the logger's own thread (an on_failure callback)


def test_calls_from_an_on_failure_callback_never_wait_for_themselves() -> None:
    client = FakeClient(
        lambda n, data: {
            "Errors": [
                {"MetricIndex": i, "Code": "VALIDATION_ERROR"}
                for i, item in enumerate(data)
                if item["MetricName"] == "bad"
            ]
        }
    )
    seen: list[str] = []
    holder: list[SyncMetricsLogger] = []

    def on_failure(failures: list[Any]) -> None:
        metrics = holder[0]
        metrics.log("failures", float(len(failures)))  # fine: it only queues
        seen.append(f"stats {metrics.stats.failed}")
        for call in (metrics.flush, metrics.close):
            try:
                call()
            except MetricsBufError as exc:
                seen.append(str(exc))

    metrics = SyncMetricsLogger("run-1", client=client, on_failure=on_failure, flush_interval=0.05)
    holder.append(metrics)
    metrics.log("bad", 1.0)
    wait_until(lambda: len(seen) >= 3)
    metrics.close()
    assert any("own thread" in s for s in seen) and seen[0].startswith("stats")
    assert_accounted(metrics.stats)


# ---------------------------------------------------------------------------------------------
# Interpreter exit without close()

_EXIT_SCRIPT = """
    import sys
    from metricsbuf import SyncMetricsLogger

    points = int(sys.argv[1])
    metrics = SyncMetricsLogger("exit-test", flush_interval=60.0, close_timeout=20.0)
    for step in range(points):
        metrics.log("loss", float(step), step=step)
    print("logged", metrics.stats.logged, flush=True)
    # no close(): the interpreter exits with points in the hand-off and the queue
"""


@pytest.mark.parametrize("points", [7, 3_000])
def test_an_interpreter_exit_without_close_still_delivers_everything(points: int) -> None:
    with FakeMetricsServiceProcess(latency=0.01) as service:
        env = service.environ()
        # A host name, not an address: the first request needs a DNS lookup through the default
        # executor, which an atexit hook would find already shut down.
        env["AWS_ENDPOINT_URL_SAGEMAKER_METRICS"] = service.endpoint_url.replace("127.0.0.1", "localhost")
        full_env = dict(os.environ, **env)
        full_env["PYTHONPATH"] = str(ROOT)
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_EXIT_SCRIPT), str(points)],
            capture_output=True,
            text=True,
            timeout=90,
            env=full_env,
        )
        state = service.state()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["logged", str(points)]
    assert sorted(p.step for p in state.points) == list(range(points)), result.stderr
    assert not state.duplicates()


# ---------------------------------------------------------------------------------------------
# Forks

_FORK_SCRIPT = """
    import os, sys
    from metricsbuf import MetricsBufError, SyncMetricsLogger

    class Client:
        def __init__(self):
            self.stored = []
        async def batch_put_metrics(self, **kwargs):
            self.stored.extend(kwargs["MetricData"])
            return {"Errors": []}

    client = Client()
    with SyncMetricsLogger("run-1", client=client, flush_interval=3600.0) as metrics:
        for step in range(5):
            metrics.log("loss", float(step), step=step)
        pid = os.fork()
        if pid == 0:
            code = 0
            calls = (lambda: metrics.log("loss", 99.0), metrics.flush, lambda: metrics.stats, metrics.close)
            for call in calls:
                try:
                    call()
                    code = 3  # accepted in the child: nobody would send it
                except MetricsBufError as exc:
                    if "fork" not in str(exc):
                        code = 4
            child_client = Client()
            with SyncMetricsLogger("run-1", client=child_client) as child_metrics:
                child_metrics.log("child", 1.0)
            if len(child_client.stored) != 1:
                code = 5
            sys.stdout.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        for step in range(5, 10):
            metrics.log("loss", float(step), step=step)
    print(os.waitstatus_to_exitcode(status), len(client.stored), metrics.stats.delivered)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_gets_a_clear_error_and_the_parent_is_unaffected() -> None:
    result = run_script(_FORK_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "10", "10"], result.stdout + result.stderr


_POOL_SCRIPT = """
    import multiprocessing, threading, sys
    from metricsbuf import MetricsBufError, SyncMetricsLogger

    metrics = None

    def work(i):
        total = sum(k * k for k in range(20_000))  # a data loader's work
        if i == 0:
            try:
                metrics.log("from-worker", 1.0)
                return "accepted"
            except MetricsBufError as exc:
                return "refused: fork" if "fork" in str(exc) else f"refused: {exc}"
        return total

    if __name__ == "__main__":
        metrics = SyncMetricsLogger("pool-test", flush_interval=0.05)
        stop = threading.Event()
        logged = [0]

        def keep_logging():
            # Bounded, so that close() has far less than close_timeout of sending to do even on a
            # loaded machine (unbounded, a slow pool let it log 100,000 points).
            while not stop.is_set() and logged[0] < 20_000:
                metrics.log("loss", float(logged[0]), step=logged[0])
                logged[0] += 1

        logger_thread = threading.Thread(target=keep_logging)
        logger_thread.start()
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(work, range(40))
        stop.set()
        logger_thread.join()
        metrics.close()
        print(results[0], logged[0], metrics.stats.delivered, flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork start method is POSIX only")
def test_a_fork_pool_beside_a_live_logger_neither_hangs_nor_sends_twice(tmp_path: Path) -> None:
    script = tmp_path / "pool_script.py"
    script.write_text(textwrap.dedent(_POOL_SCRIPT))
    with FakeMetricsServiceProcess() as service:
        env = dict(os.environ, **service.environ())
        env["PYTHONPATH"] = str(ROOT)
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env
        )
        state = service.state()
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[:2] == ["refused:", "fork"], result.stdout + result.stderr
    logged, delivered = int(words[2]), int(words[3])
    assert logged > 0 and delivered == logged
    assert sorted(p.step for p in state.points) == list(range(logged))  # each exactly once
    assert not state.duplicates() and {p.name for p in state.points} == {"loss"}


# ---------------------------------------------------------------------------------------------
# The hand-off's tokens (no lock on the usual path)


def test_a_call_under_way_when_close_starts_is_delivered_not_lost() -> None:
    client = FakeClient()
    metrics = SyncMetricsLogger("run-1", client=client)
    metrics.log("loss", 0.0, step=0)  # the first call fills the pool of tokens
    metrics._take()  # a log() between taking its token and appending its point
    closer = threading.Thread(target=metrics.close)
    closer.start()
    time.sleep(0.2)
    now = time.time()
    metrics._points.append(("loss", 1.0, 1, now, now))
    closer.join(10)
    assert not closer.is_alive()
    stats = metrics.stats
    assert (stats.logged, stats.delivered, stats.failed, stats.pending) == (2, 2, 0, 0), stats
    assert sorted(stored_keys(client)) == [("loss", 0), ("loss", 1)]


def test_max_buffered_is_exact_with_many_threads_and_mixed_calls() -> None:
    client = GatedClient()  # nothing settles until the gate opens: the buffer fills and stays full
    with SyncMetricsLogger(
        "run-1", client=client, max_buffered=333, on_full="drop_newest", close_timeout=10.0
    ) as metrics:

        def produce(index: int) -> None:
            for step in range(2_000):
                if step % 5 == 0:
                    metrics.log_many({f"a{index}": 1.0, f"b{index}": 2.0}, step=step)
                else:
                    metrics.log(f"t{index}", float(step), step=step)

        errors = run_threads(produce, 6)
        stats = metrics.stats
        assert stats.pending == 333, stats  # exactly max_buffered held, never more
        assert stats.logged == 6 * 2_400 and stats.dropped == stats.logged - 333, stats
        client.open.set()
    assert not errors
    final = metrics.stats
    assert final.delivered == 333 and len(client.stored) == 333
    assert_accounted(final)


def test_close_does_not_wait_forever_for_a_call_that_never_finishes() -> None:
    # As when SIGTERM's drain runs in the main thread while it is inside log(), between taking
    # its token and appending: that call never resumes, and the close goes on without it.
    client = FakeClient()
    metrics = SyncMetricsLogger("run-1", client=client)
    for step in range(5):
        metrics.log("loss", float(step), step=step)
    metrics._take()  # and never appends
    started = time.monotonic()
    metrics.close()
    assert time.monotonic() - started < 10
    stats = metrics.stats
    assert (stats.logged, stats.delivered, stats.failed, stats.pending) == (5, 5, 0, 0), stats
    assert sorted(stored_keys(client)) == [("loss", step) for step in range(5)]
    with pytest.raises(LoggerClosedError):
        metrics.log("loss", 5.0, step=5)
