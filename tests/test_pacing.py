"""StepPacer: at most one heavy step of a send per event-loop iteration, in arrival order."""

from __future__ import annotations

import asyncio
import random

import pytest
from conftest import count_pacer_turns

from metricsbuf import MetricsLogger
from metricsbuf._pacing import StepPacer


class IterationCounter:
    """Counts event-loop iterations with a callback that reschedules itself (once per iteration)."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def test_steps_that_ask_together_run_in_successive_iterations_in_arrival_order() -> None:
    pacer = StepPacer()
    iterations = IterationCounter()
    ran: list[tuple[int, int]] = []  # (step, iteration)

    async def step(n: int) -> None:
        await pacer.turn()
        ran.append((n, iterations.count))

    await asyncio.gather(*(step(n) for n in range(6)))
    iterations.stop()
    assert [n for n, _ in ran] == list(range(6))
    seen = [it for _, it in ran]
    assert all(later > earlier for earlier, later in zip(seen, seen[1:], strict=False)), seen


async def test_a_lone_step_does_not_wait() -> None:
    pacer = StepPacer()
    iterations = IterationCounter()
    before = iterations.count
    await pacer.turn()
    assert iterations.count == before  # no iteration passed
    for _ in range(3):
        await asyncio.sleep(0)
    await pacer.turn()  # the turn was given back: again no wait
    iterations.stop()


async def test_cancelled_waiters_never_wedge_the_pacer() -> None:
    """Waiters cancelled at random moments: while waiting, or after being handed the turn but
    before resuming (the turn must then pass on). Everyone else still gets a turn, one per
    iteration, and the pacer ends free."""
    rng = random.Random(5)
    pacer = StepPacer()
    iterations = IterationCounter()
    ran: list[int] = []

    async def step() -> None:
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        await pacer.turn()
        ran.append(iterations.count)

    tasks = [asyncio.ensure_future(step()) for _ in range(300)]
    cancelled = 0
    for _ in range(400):
        await asyncio.sleep(0)
        waiting = [t for t in tasks if not t.done()]
        if waiting and rng.random() < 0.5:
            rng.choice(waiting).cancel()
            cancelled += 1
    done, _ = await asyncio.wait(tasks, timeout=10)
    iterations.stop()
    assert len(done) == len(tasks)  # nobody is left waiting for a turn that never comes
    finished = [t for t in tasks if not t.cancelled()]
    assert len(ran) == len(finished) and 50 < cancelled
    assert all(later > earlier for earlier, later in zip(ran, ran[1:], strict=False))
    assert not pacer._waiters
    await asyncio.wait_for(pacer.turn(), timeout=1)


async def test_the_own_client_paces_building_signing_and_parsing(aws_env: pytest.MonkeyPatch) -> None:
    from metricsbuf.testing import FakeMetricsService

    async with FakeMetricsService() as service:
        async with MetricsLogger(
            "run-1", region_name="us-east-1", endpoint_url=service.endpoint_url, max_in_flight=1
        ) as metrics:
            turns = count_pacer_turns(metrics, aws_env)
            for step in range(30):
                await metrics.log("loss", 0.5, step=step)
            await metrics.flush()
        assert metrics.stats.delivered == 30 and metrics.stats.requests == 3
    assert turns[0] == 3 * 3  # per request: build (the sender), sign and parse (the client's hooks)
