"""The simulated training loop and the three contenders, as run inside a worker process.

Every contender runs the same loop (see README.md, "Workload"):

    for step in range(N // 4):
        value = <a float computed outside the timed block>
        t0 = perf_counter()
        for name in NAMES:                      # four metric names
            <the contender's logging call for (name, value, step)>
        producer_time += perf_counter() - t0
        await asyncio.sleep(0)                  # a training step awaits; background work runs here

then waits until the last point is acknowledged. A 1 ms ticker task runs for the whole time and
records how late each of its wake-ups is (event-loop stall).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

NAMES = ("train:loss", "train:accuracy", "validation:loss", "learning_rate")
REGION = "us-east-1"
IN_FLIGHT = 8  # the concurrency of contenders 1 and 2
BATCH = 10  # BatchPutMetrics' per-request maximum; what contender 2 collects per request

CONTENDERS = ("metricsbuf", "hand_batched", "sagemaker_sdk")


class Ticker:
    """Wakes every 1 ms and records how late each wake-up was (seconds beyond the 1 ms asked).

    It also records every garbage collection in the same window (through ``gc.callbacks``), so
    the report can tell how much of the longest stall was a collection pause, and the CPU time
    the event-loop thread used during each tick (``time.thread_time``), so it can tell a delay
    caused by work on the loop from one where the process was not running at all (a sleeping
    loop woken late by the machine: on a shared VM that alone reaches a few ms).
    """

    PERIOD = 0.001

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.delays: list[float] = []
        self.cpu: list[float] = []  # the loop thread's CPU seconds during each tick
        self.collections: list[tuple[int, float, float]] = []  # (generation, start, end)
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.collections.append((info["generation"], self._gc_started, time.perf_counter()))

    async def _run(self) -> None:
        pc = time.perf_counter
        tt = time.thread_time
        starts = self.starts
        delays = self.delays
        cpu = self.cpu
        period = self.PERIOD
        while True:
            t = pc()
            c = tt()
            await asyncio.sleep(period)
            starts.append(t)
            delays.append(pc() - t - period)
            cpu.append(tt() - c)

    def start(self) -> None:
        # The setup (a new botocore client per run loads the service model: ~25,000 container
        # objects) leaves a debt of objects that a full collection will eventually examine; pay
        # it before the window opens, the same way for every contender.
        gc.collect()
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        gc.callbacks.remove(self._on_gc)

    def summary(self) -> dict[str, float]:
        d = sorted(self.delays)
        if not d:
            return {"stall_max": float("nan"), "stall_p99": float("nan"), "ticks": 0}
        # The longest wake-up delay among ticks whose interval saw no garbage collection.
        spans = sorted((s, e) for _, s, e in self.collections)
        clean_max = 0.0
        j = 0
        for t, delay in sorted(zip(self.starts, self.delays, strict=True)):
            end = t + self.PERIOD + delay
            while j < len(spans) and spans[j][1] < t:
                j += 1
            if not (j < len(spans) and spans[j][0] <= end):
                clean_max = max(clean_max, delay)
        full = [e - s for g, s, e in self.collections if g == 2]
        # The part of each delay that the loop could have spent working: at most the CPU time
        # its thread used during the tick (an upper bound: that time may also fall in the 1 ms
        # the tick asked for). A delay with little CPU in it is the machine, not the loop.
        on_cpu = [min(delay, used) for delay, used in zip(self.delays, self.cpu, strict=True)]
        return {
            "stall_max": d[-1],
            "stall_max_on_cpu": max(on_cpu),
            "stall_p99": d[min(len(d) - 1, int(0.99 * len(d)))],
            "stall_max_without_gc": clean_max,
            "ticks": len(d),
            "gc_collections": len(self.collections),
            "gc_full_collections": len(full),
            "gc_longest_full": max(full, default=0.0),
            "gc_total": sum(e - s for _, s, e in self.collections),
        }


def _value(step: int) -> float:
    return 1.0 / (step + 1)


async def _training_loop(
    steps: int, log_point: Callable[[str, float, int], Awaitable[None] | None], is_async: bool
) -> float:
    """Runs the loop; returns the seconds spent inside the logging calls."""
    pc = time.perf_counter
    names = NAMES
    sleep = asyncio.sleep
    producer = 0.0
    if is_async:
        for step in range(steps):
            value = _value(step)
            t0 = pc()
            for name in names:
                await log_point(name, value, step)  # type: ignore[misc]
            producer += pc() - t0
            await sleep(0)
    else:
        for step in range(steps):
            value = _value(step)
            t0 = pc()
            for name in names:
                log_point(name, value, step)
            producer += pc() - t0
            await sleep(0)
    return producer


def _run_result(
    producer: float,
    t_start: float,
    t_produced: float,
    t_end: float,
    cpu: float,
    backlog: int,
    client_stats: dict[str, int],
    ticker: Ticker,
) -> dict[str, Any]:
    """One run's figures, the same keys for every contender (read by _report.py)."""
    return {
        "producer_time": producer,
        "elapsed": t_end - t_start,
        "cpu": cpu,
        "produce_elapsed": t_produced - t_start,
        "backlog_at_end_of_loop": backlog,
        "client_stats": client_stats,
        **ticker.summary(),
    }


# ---------------------------------------------------------------------------------------------
# Contender 1: metricsbuf.MetricsLogger, defaults except max_in_flight=8.


async def run_metricsbuf(endpoint: str, tc: str, n: int) -> dict[str, Any]:
    import metricsbuf

    steps = n // len(NAMES)
    ticker = Ticker()
    async with metricsbuf.MetricsLogger(
        tc, region_name=REGION, endpoint_url=endpoint, max_in_flight=IN_FLIGHT
    ) as metrics:
        log = metrics.log
        ticker.start()
        # The same loop as _training_loop, with the call written out (no wrapper coroutine).
        pc = time.perf_counter
        sleep = asyncio.sleep
        names = NAMES
        producer = 0.0
        cpu0 = time.process_time()
        t_start = pc()
        for step in range(steps):
            value = _value(step)
            t0 = pc()
            for name in names:
                await log(name, value, step=step)
            producer += pc() - t0
            await sleep(0)
        t_produced = pc()
        backlog = metrics.stats.pending
        await metrics.flush()
        t_end = pc()
        cpu = time.process_time() - cpu0
        await ticker.stop()
        stats = metrics.stats
    client_stats = {
        "logged": stats.logged,
        "delivered": stats.delivered,
        "failed": stats.failed,
        "dropped": stats.dropped,
        "retried": stats.retried,
        "requests": stats.requests,
        "pending": stats.pending,
    }
    return _run_result(producer, t_start, t_produced, t_end, cpu, backlog, client_stats, ticker)


# ---------------------------------------------------------------------------------------------
# Contender 2: hand-batched aiobotocore. The loop builds each point's dict itself, and every 10
# points hands the list to a task that sends it once 1 of 8 slots is free. No validation, no
# retries (per-index errors are ignored), no accounting, no bound on what is held.


def _aiobotocore_client(endpoint: str) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(parameter_validation=False, retries={"total_max_attempts": 1})
    return get_session().create_client(
        "sagemaker-metrics", region_name=REGION, endpoint_url=endpoint, config=config
    )


class HandBatched:
    """The hand-written loop's state: the list being filled and the send tasks in flight."""

    def __init__(self, client: Any, tc: str) -> None:
        self.client = client
        self.tc = tc
        self.batch: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.slots = asyncio.Semaphore(IN_FLIGHT)

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        async with self.slots:
            await self.client.batch_put_metrics(TrialComponentName=self.tc, MetricData=batch)

    def log_point(self, name: str, value: float, step: int) -> None:
        batch = self.batch
        batch.append({"MetricName": name, "Value": value, "Step": step, "Timestamp": time.time()})
        if len(batch) == BATCH:
            self.tasks.append(asyncio.create_task(self._send(batch)))
            self.batch = []

    def send_rest(self) -> None:
        if self.batch:
            self.tasks.append(asyncio.create_task(self._send(self.batch)))
            self.batch = []


async def run_hand_batched(endpoint: str, tc: str, n: int) -> dict[str, Any]:
    steps = n // len(NAMES)
    ticker = Ticker()
    async with _aiobotocore_client(endpoint) as client:
        hand = HandBatched(client, tc)
        ticker.start()
        pc = time.perf_counter
        cpu0 = time.process_time()
        t_start = pc()
        producer = await _training_loop(steps, hand.log_point, is_async=False)
        # The last partial batch is sent when the loop ends; counted as producer time too.
        t0 = pc()
        hand.send_rest()
        producer += pc() - t0
        t_produced = pc()
        backlog = sum(1 for t in hand.tasks if not t.done()) * BATCH
        results = await asyncio.gather(*hand.tasks, return_exceptions=True)
        t_end = pc()
        cpu = time.process_time() - cpu0
        await ticker.stop()
    exceptions = [r for r in results if isinstance(r, BaseException)]
    client_stats = {"requests": len(hand.tasks), "request_exceptions": len(exceptions)}
    return _run_result(producer, t_start, t_produced, t_end, cpu, backlog, client_stats, ticker)


# ---------------------------------------------------------------------------------------------
# Contender 3: the SageMaker Python SDK v2 path behind Run.log_metric: _MetricsManager with its
# default _SyncMetricsSink, on a sagemaker Session whose sagemaker-metrics client is built the
# way Session builds it, plus endpoint_url.


def make_sdk_manager(endpoint: str, tc: str) -> Any:
    import boto3
    import botocore.config
    from sagemaker.experiments._metrics import _MetricsManager
    from sagemaker.session import Session
    from sagemaker.user_agent import get_user_agent_extra_suffix

    boto_session = boto3.Session(region_name=REGION)
    metrics_client = boto_session.client(
        "sagemaker-metrics",
        endpoint_url=endpoint,
        config=botocore.config.Config(user_agent_extra=get_user_agent_extra_suffix()),
    )
    session = Session(boto_session=boto_session, sagemaker_metrics_client=metrics_client)
    return _MetricsManager(tc, session)


async def run_sagemaker_sdk(endpoint: str, tc: str, n: int) -> dict[str, Any]:
    steps = n // len(NAMES)
    manager = make_sdk_manager(endpoint, tc)
    errors = 0
    log_metric = manager.log_metric

    def log_point(name: str, value: float, step: int) -> None:
        # The SDK raises a plain Exception when the response has any per-index error (the batch
        # is lost); a training loop that must go on catches it.
        nonlocal errors
        try:
            log_metric(name, value, step=step)
        except Exception:
            errors += 1

    ticker = Ticker()
    ticker.start()
    pc = time.perf_counter
    cpu0 = time.process_time()
    t_start = pc()
    producer = await _training_loop(steps, log_point, is_async=False)
    t_produced = pc()
    backlog = len(manager.sink._buffer)
    t0 = pc()
    try:
        manager.close()  # sends the last partial batch, on the caller's thread
    except Exception:
        errors += 1
    t_end = pc()
    cpu = time.process_time() - cpu0
    producer += t_end - t0
    await ticker.stop()
    return _run_result(producer, t_start, t_produced, t_end, cpu, backlog, {"raised": errors}, ticker)


RUNNERS: dict[str, Callable[[str, str, int], Awaitable[dict[str, Any]]]] = {
    "metricsbuf": run_metricsbuf,
    "hand_batched": run_hand_batched,
    "sagemaker_sdk": run_sagemaker_sdk,
}


async def run_once(contender: str, endpoint: str, tc: str, n: int, timeout: float) -> dict[str, Any]:
    return await asyncio.wait_for(RUNNERS[contender](endpoint, tc, n), timeout)


async def idle_baseline(seconds: float, sleeping: bool = False) -> dict[str, Any]:
    """The ticker alone: the machine's own stall floor.

    Beside a loop that only yields (``sleeping=False``: the process never sleeps, as in a
    saturated run), or with nothing else on the loop (``sleeping=True``: the process sleeps
    between ticks, as between the responses of a 20 ms run, and must be woken by the kernel).
    """
    ticker = Ticker()
    ticker.start()
    if sleeping:
        await asyncio.sleep(seconds)
    else:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:  # noqa: ASYNC110 (a busy loop that yields is the point)
            await asyncio.sleep(0)
    await ticker.stop()
    return ticker.summary()
