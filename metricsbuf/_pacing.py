"""Spreads the logger's heavy steps over event-loop iterations, so none of them piles up."""

from __future__ import annotations

import asyncio
import time
from collections import deque


class StepPacer:
    """Lets at most one heavy step start per event-loop iteration.

    A heavy step is one stretch of CPU work of a send: building and serializing a request,
    signing and handing it to aiohttp, or parsing its response (each a fraction of a millisecond
    on the benchmark machine; see benchmarks/RESULTS.md). A training
    loop that awaits a timer waits for whole iterations, so several such steps in one iteration
    (several responses arriving together, or a send starting beside them) add up to a stall of
    milliseconds. Waiters run one per iteration, in arrival order.
    """

    def __init__(self) -> None:
        self._busy = False  # a step runs (or is granted to run) in this iteration
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Seconds the loop's thread sleeps before each heavy step, releasing the GIL long enough
        # for a waiting thread to take it (SyncMetricsLogger's loop thread; 0: never).
        self.gil_pause = 0.0

    async def turn(self) -> None:
        """Returns when the caller may run its step: at once, or in a later iteration."""
        if self._busy:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._hand_on()  # granted, then cancelled before running: pass the turn on
                raise
        else:
            self._busy = True
        self._hand_on()
        if self.gil_pause:
            # Blocks this loop on purpose, briefly: the GIL is free meanwhile (see gil_pause).
            time.sleep(self.gil_pause)  # noqa: ASYNC251

    def _hand_on(self) -> None:
        """Grants the next iteration's turn: to the first waiter, else to whoever comes then."""
        if not self._grant_next():
            asyncio.get_running_loop().call_soon(self._end_of_iteration)

    def _end_of_iteration(self) -> None:
        if not self._grant_next():
            self._busy = False

    def _grant_next(self) -> bool:
        """Wakes the first waiter still waiting (its task resumes in the next iteration)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter is skipped
                waiter.set_result(None)
                return True
        return False
