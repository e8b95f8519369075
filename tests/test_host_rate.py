"""One adaptive rate shared by the loggers of a host (``rate_scope="host"``, _host_rate.py).

Unit tests on a fake clock (the state file in the test's own directory), one across a fork, and
loggers that share a rate end to end through the in-memory service.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import assert_accounted

from metricsbuf import InvalidMetricError, MetricsLogger, _host_rate, _rate
from metricsbuf._host_rate import HostSharedRate, open_host_rate, state_path
from metricsbuf._rate import AdaptiveRate
from metricsbuf.testing import FakeMetricsServiceProcess, InMemoryMetricsClient


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "rate")


def shared(path: str, clock: Clock, seed: int = 0) -> HostSharedRate:
    return HostSharedRate(path, clock=clock, rng=random.Random(seed))


def test_loggers_of_a_host_share_one_state(path: str) -> None:
    clock = Clock()
    a, b = shared(path, clock, 1), shared(path, clock, 2)
    assert a.rate is None and b.rate is None  # unlimited, like a rate of one's own
    a.throttled(clock.now - 0.001)
    assert a.rate == b.rate  # b is on the ramp that a's throttle started
    assert b.rate is not None
    # One pacing for both: b's next turn comes after a's.
    clock.now += 5.0
    assert a.delay() == 0.0
    assert b.delay() > 0.0
    assert a.cuts == 1 and b.cuts == 0  # each counts the cuts its own answers made


def test_the_ramp_starts_from_ramp_start_for_each_sending_logger(path: str) -> None:
    # Three loggers answered within ACTIVE_WINDOW; a fourth was last heard of long before.
    clock = Clock()
    silent = shared(path, clock, 4)
    silent.succeeded(clock.now)
    clock.now += _host_rate.ACTIVE_WINDOW + 1.0
    loggers = [shared(path, clock, seed) for seed in range(3)]
    for logger in loggers:
        logger.succeeded(clock.now)
    assert loggers[0].senders == 3
    loggers[1].throttled(clock.now - 0.001)
    assert loggers[2].rate == pytest.approx(3 * _rate.RAMP_START)


def test_a_lone_logger_on_a_host_behaves_as_one_with_a_rate_of_its_own(path: str) -> None:
    # The same calls with the same random draws give the same delays and rates.
    clock_shared, clock_own = Clock(), Clock()
    host = HostSharedRate(path, clock=clock_shared, rng=random.Random(7))
    own = AdaptiveRate(clock_own, rng=random.Random(7))
    for rate, clock in ((host, clock_shared), (own, clock_own)):
        rate.throttled(clock.now - 0.001)
    for step in range(200):
        delays = [host.delay(), own.delay()]
        assert delays[0] == pytest.approx(delays[1]), step
        for rate, clock in ((host, clock_shared), (own, clock_own)):
            clock.now += delays[0] + 0.01
            if step in (60, 120):
                rate.throttled(clock.now - 0.005)
            else:
                rate.succeeded(clock.now - 0.005)
        assert host.rate == pytest.approx(own.rate)
    assert host.share == pytest.approx(own.share) and host.share is not None


def test_a_state_nobody_touched_for_long_starts_afresh(path: str) -> None:
    clock = Clock()
    a = shared(path, clock)
    a.throttled(clock.now - 0.001)
    assert a.rate is not None
    clock.now += _host_rate.STALE_AFTER + 1.0
    assert shared(path, clock).rate is None  # another job's traffic: unlimited again


def test_a_state_from_before_a_reboot_starts_afresh(path: str) -> None:
    clock = Clock()
    shared(path, clock).throttled(clock.now - 0.001)
    clock.now = 5.0  # the monotonic clock restarted: the stored times lie in the future
    assert shared(path, clock).rate is None


def test_a_garbled_state_file_starts_afresh(path: str) -> None:
    Path(path).write_bytes(os.urandom(2000))
    clock = Clock()
    a = shared(path, clock)
    assert a.rate is None
    a.throttled(clock.now - 0.001)
    assert shared(path, clock).rate == pytest.approx(_rate.RAMP_START)


def _count_successes(rate: HostSharedRate, times: int, start: Any, unshared: Any = None) -> int:
    start.wait()  # parent and child count at the same time
    for _ in range(times):
        rate.succeeded(time.monotonic())
    if unshared is not None:
        unshared.put(rate.unshared_calls)
    return rate.unshared_calls


def test_a_forked_child_shares_the_state_and_the_lock(path: str) -> None:
    # Both in steady state; each success is counted under the lock, parent and child at once
    # through the same HostSharedRate object: an update lost to a lock that did not exclude
    # (the child using the parent's open file, and with it the parent's flock) would show as a
    # missing success. (A call that waited LOCK_PATIENCE for the lock, its holder descheduled on
    # a busy machine, goes on without it and is not counted: those are subtracted.)
    rate = HostSharedRate(path)
    rate.throttled(time.monotonic())  # the ramp
    time.sleep(_rate.RAMP_GRACE + 0.05)
    rate.throttled(time.monotonic())  # the solve: steady state
    logic = rate._logic
    with rate._shared():
        assert logic.phase == "steady"
        before = logic._successes
    context = multiprocessing.get_context("fork")
    start, unshared = context.Barrier(2), context.Queue()
    child = context.Process(target=_count_successes, args=(rate, 10_000, start, unshared))
    child.start()
    unshared_here = _count_successes(rate, 10_000, start)
    unshared_there = unshared.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert unshared_here + unshared_there < 2_000  # nearly every call shared
    with rate._shared():
        assert logic._successes - before == 20_000 - unshared_here - unshared_there


def test_loggers_share_a_state_only_for_the_same_endpoint_and_region(tmp_path: Path) -> None:
    one = state_path("https://metrics.sagemaker.us-west-2.amazonaws.com", "us-west-2", str(tmp_path))
    assert one == state_path("https://metrics.sagemaker.us-west-2.amazonaws.com", "us-west-2", str(tmp_path))
    assert one != state_path("https://metrics.sagemaker.us-east-1.amazonaws.com", "us-east-1", str(tmp_path))
    assert one != state_path("http://127.0.0.1:5000", "us-west-2", str(tmp_path))


def client_with_meta(endpoint_url: str = "http://127.0.0.1:1", **options: Any) -> InMemoryMetricsClient:
    # The in-memory client has no ``meta``; an aiobotocore client's says where it sends.
    client = InMemoryMetricsClient(parameter_validation=False, **options)
    client.meta = SimpleNamespace(endpoint_url=endpoint_url, region_name="us-west-2")  # type: ignore[attr-defined]
    return client


def test_a_client_that_does_not_say_where_it_sends_keeps_a_rate_of_its_own() -> None:
    assert open_host_rate(InMemoryMetricsClient()) is None


def test_a_state_file_that_cannot_be_used_leaves_a_rate_of_the_loggers_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_with_meta()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.symlink(target, state_path("http://127.0.0.1:1", "us-west-2"))  # planted: not followed
    with caplog.at_level(logging.WARNING, logger="metricsbuf"):
        assert open_host_rate(client) is None
    assert "keeps a rate of its own" in caplog.text


async def test_adaptive_loggers_of_one_endpoint_share_a_rate_unless_told_otherwise() -> None:
    client = client_with_meta()
    host = [MetricsLogger(f"tc-{i}", client=client, adaptive_rate=True) for i in range(2)]
    own = MetricsLogger("tc-own", client=client, adaptive_rate=True, rate_scope="logger")
    plain = MetricsLogger("tc-plain", client=client)
    for metrics in (*host, own, plain):
        await metrics.start()
    rates = [m._sender.rate for m in host]
    assert all(isinstance(r, HostSharedRate) for r in rates)
    assert rates[0].path == rates[1].path  # type: ignore[union-attr]
    assert type(own._sender.rate) is AdaptiveRate and type(plain._sender.rate) is AdaptiveRate
    for metrics in (*host, own, plain):
        await metrics.aclose()
    assert all(r._fd == -1 for r in rates)  # type: ignore[union-attr]  # closed with its logger


def test_rate_scope_must_be_host_or_logger() -> None:
    expected = r"rate_scope must be one of 'host', 'logger'; got 'process'"
    with pytest.raises(InvalidMetricError, match=expected):
        MetricsLogger("run-1", adaptive_rate=True, rate_scope="process")  # type: ignore[arg-type]


async def test_loggers_sharing_a_host_rate_share_one_limit_fairly_and_lose_nothing() -> None:
    # Three backlogged loggers with the host's shared rate, against one limit of 30 requests/s.
    client = client_with_meta(rate_limit=30, rate_limit_burst=30)
    loggers = [MetricsLogger(f"writer-{i}", client=client, adaptive_rate=True) for i in range(3)]
    finished: list[float] = []
    started = time.monotonic()

    async def writer(metrics: MetricsLogger) -> None:
        async with metrics:
            for step in range(600):
                await metrics.log("loss", float(step), step=step)
            await metrics.flush()
            finished.append(time.monotonic() - started)

    await asyncio.gather(*(writer(m) for m in loggers))
    for metrics in loggers:
        assert_accounted(metrics.stats)
        assert metrics.stats.delivered == 600 and metrics.stats.failed == 0, metrics.stats
    assert len(client.points) == 1800 and not client.duplicates()
    rates = [600 / seconds for seconds in finished]
    assert sum(rates) ** 2 / (3 * sum(r * r for r in rates)) > 0.8, rates
    capacity = (30 + 30 * max(finished)) * 10
    assert 1800 / capacity > 0.6, (finished, client.counts)
    assert client.counts["rate_limited"] < 0.3 * client.counts["requests"], client.counts


def test_the_host_name_is_part_of_the_state_files_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temporary directory on a network file system, seen by two hosts: their monotonic clocks
    # differ, so they must not share a state.
    here = state_path("http://127.0.0.1:1", "us-west-2", str(tmp_path))
    monkeypatch.setattr(_host_rate.socket, "gethostname", lambda: "another-host")
    assert state_path("http://127.0.0.1:1", "us-west-2", str(tmp_path)) != here


def test_a_logger_does_not_wait_long_for_a_lock_that_another_process_keeps(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process stopped (SIGSTOP, a debugger) while it held the lock must not hold the other
    # loggers' event loops (the training loop, in asyncio code): after LOCK_PATIENCE the call
    # runs on this logger's last view of the state and leaves the file alone.
    clock = Clock()
    rate = shared(path, clock)
    rate.throttled(clock.now - 0.001)  # on the ramp now
    before = Path(path).read_bytes()
    holder = os.open(path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        answers: list[float] = []
        caller = threading.Thread(target=lambda: answers.append(rate.delay()), daemon=True)
        started = time.monotonic()
        caller.start()
        caller.join(5.0)
        waited = time.monotonic() - started
        assert not caller.is_alive(), "blocked on the lock"
        assert len(answers) == 1 and answers[0] > 0.0  # paced by the ramp it knew of
        assert waited < 1.0, waited
        assert Path(path).read_bytes() == before  # not written without the lock
        assert rate.unshared_calls == 1
        rate.delay()  # for LOCK_RETRY_AFTER no lock is tried: no wait at all
        assert rate.unshared_calls == 2 and time.monotonic() - started < 1.0
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    monkeypatch.setattr(rate, "_unshared_until", 0.0)  # LOCK_RETRY_AFTER has passed
    rate.delay()  # the lock is free again: shared as before
    assert Path(path).read_bytes() != before


def test_a_closed_shared_rate_goes_on_as_a_rate_of_the_loggers_own(path: str) -> None:
    # An answer that arrives after its logger closed (a client thread that outlived a cancelled
    # close) must not raise in the sender: the rate goes on from its last view of the state.
    clock = Clock()
    rate = shared(path, clock)
    rate.throttled(clock.now - 0.001)
    ramp = rate.rate
    rate.close()
    before = Path(path).read_bytes()
    clock.now += 1.0
    rate.succeeded(clock.now - 0.01)
    rate.throttled(clock.now - 0.01)  # the ramp's solve: steady state, on this logger alone
    assert rate.rate is not None and rate.rate != ramp
    assert rate.delay() >= 0.0
    assert Path(path).read_bytes() == before


async def _write_through_a_shared_rate(endpoint: str, tc: str, points: int, go: Any) -> dict[str, Any]:
    async with MetricsLogger(
        tc, endpoint_url=endpoint, region_name="us-east-1", adaptive_rate=True
    ) as metrics:
        await asyncio.to_thread(go.wait)
        for step in range(points):
            await metrics.log("loss", float(step), step=step)
        await metrics.flush()
        rate = metrics._sender.rate
        return {
            "delivered": metrics.stats.delivered,
            "failed": metrics.stats.failed,
            "shared": type(rate).__name__,
            "path": getattr(rate, "path", None),
        }


def _writer_process(endpoint: str, tc: str, points: int, directory: str, go: Any, out: Any) -> None:
    os.environ.update(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_EC2_METADATA_DISABLED="true"
    )
    _host_rate.STATE_DIRECTORY = directory
    try:
        out.put(asyncio.run(_write_through_a_shared_rate(endpoint, tc, points, go)))
    except BaseException as exc:  # reported, not lost in the child
        out.put({"error": repr(exc)})


def test_writer_processes_on_one_host_share_a_rate_through_real_clients(host_rate_directory: Path) -> None:
    # Three processes with the logger's own aiobotocore client against one limit of 20
    # requests/s: they find one state file (the client's endpoint and region), store everything,
    # and have few requests refused.
    writers, points = 3, 200
    context = multiprocessing.get_context("spawn")
    go, out = context.Event(), context.Queue()
    with FakeMetricsServiceProcess(rate_limit=20, rate_limit_burst=20) as service:
        procs = [
            context.Process(
                target=_writer_process,
                args=(service.endpoint_url, f"writer-{i}", points, str(host_rate_directory), go, out),
            )
            for i in range(writers)
        ]
        for proc in procs:
            proc.start()
        time.sleep(0.5)
        go.set()
        results = [out.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(30)
        counts = service.state(points=False).counts
    assert all("error" not in r for r in results), results
    assert [(r["delivered"], r["failed"]) for r in results] == [(points, 0)] * writers, results
    assert {r["shared"] for r in results} == {"HostSharedRate"}
    assert len({r["path"] for r in results}) == 1, results
    assert Path(results[0]["path"]).parent == host_rate_directory
    assert counts["rate_limited"] < 0.3 * counts["requests"], counts
