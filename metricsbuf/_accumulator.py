"""The accumulator: where a point waits between ``log()`` and its outcome.

    PointQueue (fresh points, FIFO) ─┐
                                     ├─► take_batch() ─► a Batch in flight ─► (the sender)
    resend lane (due resends first) ─┘                       │
            ▲                                                 │ INTERNAL_ERROR / CONFLICT_ERROR
            └──────────────── schedule_resend() ◄─────────────┘ at an index

It decides what forms the next batch and when (full, or its oldest point has waited
``flush_interval``, or at once during flush()/close), and hands points back; it records no
outcome (that is the ledger's job). Pure logic and one wake-up event: no I/O, no client.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import anyio

from ._buffer import LOGGED_AT, ROW_ID, TRIAL_COMPONENT, Point, PointQueue


class Batch:
    """One request's points while in flight, or retried whole after a request failure.

    ``positions`` (queue sequence numbers, or row ids with a spool) and ``attempts`` (sends so
    far) run parallel to ``points``: a batch can mix fresh points with points being resent.
    """

    __slots__ = (
        "points",
        "positions",
        "attempts",
        "trial_component",
        "maybe_stored",
        "last_failure",
        "abandoned",
        "sent",
    )

    def __init__(
        self, points: list[Point], positions: list[int], attempts: list[int], trial_component: str
    ) -> None:
        self.points = points
        self.positions = positions
        self.attempts = attempts
        self.trial_component = trial_component
        # A request for these points went out and got no definite answer (still in flight, a
        # connection error, a timeout, a 5xx): the service may have stored them.
        self.maybe_stored = False
        self.last_failure: Exception | None = None  # the sender's last whole-request failure
        # The close report (or a restarted flusher) took these points over: an answer that
        # still arrives for this request must not settle them a second time.
        self.abandoned = False
        self.sent = False  # a request for this batch went out (its next one is a resend)

    def split_off(self, leave: list[bool]) -> Batch:
        """Removes the points where ``leave`` is true into a batch of their own, and returns it."""
        gone = Batch(
            [p for p, out in zip(self.points, leave, strict=True) if out],
            [p for p, out in zip(self.positions, leave, strict=True) if out],
            [a for a, out in zip(self.attempts, leave, strict=True) if out],
            self.trial_component,
        )
        stay = [not out for out in leave]
        self.points = [p for p, keep in zip(self.points, stay, strict=True) if keep]
        self.positions = [p for p, keep in zip(self.positions, stay, strict=True) if keep]
        self.attempts = [a for a, keep in zip(self.attempts, stay, strict=True) if keep]
        return gone


class HeldPoints(NamedTuple):
    """Everything the accumulator held, taken away at once (at close)."""

    queued: list[Point]
    batches: list[Batch]  # in flight or being retried; each marked abandoned
    resends: list[tuple[int, Point]]  # (attempts so far, point), waiting in the resend lane


class Accumulator:
    """The queue, the resend lane and the batches in flight of one logger."""

    def __init__(
        self,
        queue: PointQueue,
        *,
        delivery_timeout: float,
        trial_component: str,
        spooled: bool,
    ) -> None:
        self.queue = queue
        self.max_batch_size = queue.max_batch_size
        self.delivery_timeout = delivery_timeout
        self.trial_component = trial_component
        self.spooled = spooled  # points carry (row id, trial component): see _buffer.py
        # Points the service answered INTERNAL_ERROR / CONFLICT_ERROR for, waiting out their
        # backoff: a heap of (ready_at, position, attempts, point). Due ones go at the front of
        # the next batch, so resends do not cost requests of their own.
        self.lane: list[tuple[float, int, int, Point]] = []
        # A resend may ride in any batch from its ready time on, but makes a batch due on its
        # own only ``lane_hold`` seconds later (or at once during flush()/close): so resends
        # that go without backoff still share requests with fresh points. The sender sets it.
        self.lane_hold = 0.0
        self.in_flight: set[Batch] = set()
        # While the queue's head is below this position, partial batches leave at once.
        self.urgent_position: float = 0
        self.wakeup: anyio.Event | None = None  # wakes the sender waiting for the next batch
        # Called each time a sender looks for a batch: SyncMetricsLogger pulls its hand-off in
        # here, so that a busy loop thread needs no wake-up from the threads that log.
        self.refill: Callable[[], None] | None = None

    # -- state ------------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """Nothing queued, waiting to be resent, or in flight."""
        return not self.queue and not self.lane and not self.in_flight

    def head_position(self) -> float:
        """The queue head's position (sequence number, or row id with a spool); inf when empty."""
        head = self.queue.peek()
        if head is None:
            return math.inf
        return float(head[ROW_ID]) if self.spooled else self.queue.head_seq

    def held_positions(self) -> list[int]:
        """Positions of the points in flight or waiting to be resent."""
        held = [position for batch in self.in_flight for position in batch.positions]
        held.extend(entry[1] for entry in self.lane)
        return held

    def first_unsettled(self) -> int:
        """Without a spool: the smallest sequence number not yet settled."""
        return min([self.queue.head_seq, *self.held_positions()])

    # -- signals ----------------------------------------------------------------------------

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()

    def hurry(self, position: float) -> None:
        """Partial batches of points before ``position`` leave at once (flush, close)."""
        self.urgent_position = max(self.urgent_position, position)
        self.wake()

    async def wait_until_batch_due(self, no_more_points: Callable[[], bool]) -> None:
        """Returns when a batch (or a resend) is due, or when closing with nothing left at all."""
        queue = self.queue
        lane = self.lane
        while True:
            if self.refill is not None:
                self.refill()
            if queue and self.head_position() < self.urgent_position:
                return  # flush() or close: partial batches go now
            if self.empty and no_more_points():
                return
            now = time.time()
            delay = queue.seconds_until_due(now)
            if lane:
                ready_at, position = lane[0][0], lane[0][1]
                # flush() or close: resends go as soon as they are ready, else after lane_hold.
                hold = 0.0 if position < self.urgent_position else self.lane_hold
                resend_in = max(0.0, ready_at + hold - now)
                delay = resend_in if delay is None else min(delay, resend_in)
            if delay == 0.0:
                return
            if delay is None:
                # Nothing queued: look again one flush_interval from now rather than wait to be
                # woken by the first point logged (a wake-up costs the training loop a task
                # switch, per batch). A point logged meanwhile is due flush_interval after it
                # was logged, which is never before this look: its batch still leaves on time.
                delay = queue.flush_interval
            await self._sleep_until_woken(delay)

    async def _sleep_until_woken(self, delay: float | None) -> None:
        """Waits for ``wakeup`` to be set, at most ``delay`` seconds (None: no limit)."""
        wakeup = self.wakeup
        if wakeup is None or wakeup.is_set():
            self.wakeup = wakeup = anyio.Event()  # events cannot be cleared: a new one per wake-up
        if delay is None:
            await wakeup.wait()
            return
        # A timer that sets the event, rather than a cancel scope (move_on_after): this runs
        # for every batch, and a scope costs several times more.
        timer = asyncio.get_running_loop().call_later(delay, wakeup.set)
        try:
            await wakeup.wait()
        finally:
            timer.cancel()

    # -- batches ----------------------------------------------------------------------------

    def take_batch(self, now: float) -> Batch | None:
        """Resends that are due first, then queued points: up to max_batch_size, one trial component.

        The batch counts as in flight at once (flush() must see its points held).
        """
        spooled = self.spooled
        points: list[Point] = []
        positions: list[int] = []
        attempts: list[int] = []
        trial_component: str | None = None
        lane = self.lane
        while lane and lane[0][0] <= now and len(points) < self.max_batch_size:
            point = lane[0][3]
            if spooled and trial_component is not None and point[TRIAL_COMPONENT] != trial_component:
                break
            _, position, tries, point = heapq.heappop(lane)
            trial_component = point[TRIAL_COMPONENT] if spooled else None
            points.append(point)
            positions.append(position)
            attempts.append(tries)
        room = self.max_batch_size - len(points)
        head = self.queue.peek()
        if room and head is not None:
            if not spooled:
                first_seq, queued = self.queue.take_batch(limit=room)
                positions.extend(range(first_seq, first_seq + len(queued)))
            elif trial_component is None or head[TRIAL_COMPONENT] == trial_component:
                trial_component = head[TRIAL_COMPONENT]
                _, queued = self.queue.take_batch(limit=room, same_key=TRIAL_COMPONENT)
                positions.extend(p[ROW_ID] for p in queued)
            else:
                queued = []
            points.extend(queued)
            attempts.extend([0] * len(queued))
        if not points:
            return None
        batch = Batch(points, positions, attempts, trial_component or self.trial_component)
        self.in_flight.add(batch)
        return batch

    def finished(self, batch: Batch) -> None:
        """The sender is done with ``batch`` (every point of it settled or handed back)."""
        batch.points = []
        self.in_flight.discard(batch)
        if not self.in_flight:
            self.wake()  # closing: idle senders may be waiting for the last batch to finish

    def schedule_resend(self, resends: list[tuple[int, int, Point]], delay: float) -> None:
        """Puts (position, attempts, point) entries in the resend lane, due after ``delay`` seconds.

        From then on they ride in any batch; on their own they make a batch due ``lane_hold``
        later (at once during flush()/close). Never past a point's delivery deadline.
        """
        ready_at = time.time() + delay
        for position, attempts, point in resends:
            due = min(ready_at, point[LOGGED_AT] + self.delivery_timeout)
            heapq.heappush(self.lane, (due, position, attempts, point))
        self.wake()  # the sender sleeps until the lane's head is due

    def expire_queued(self, now: float) -> list[Point]:
        """Removes the queued points older than delivery_timeout (the queue is in logged order)."""
        return self.queue.pop_expired(now - self.delivery_timeout)

    def pop_oldest(self) -> Point | None:
        """Removes the oldest queued point (on_full="drop_oldest"); None if nothing is queued."""
        return self.queue.pop_oldest()

    # -- taking everything back -------------------------------------------------------------

    def take_all_held(self) -> HeldPoints:
        """Empties the queue, the resend lane and the batches in flight (abandoned: see Batch)."""
        batches = list(self.in_flight)
        self.in_flight.clear()
        for batch in batches:
            batch.abandoned = True
        resends = [(attempts, point) for _, _, attempts, point in self.lane]
        self.lane.clear()
        return HeldPoints(self.queue.take_all(), batches, resends)

    def take_back_in_flight(self) -> None:
        """Puts the points of requests cancelled in flight back in the lane, due now, to be sent again."""
        now = time.time()
        for batch in list(self.in_flight):
            self.in_flight.discard(batch)
            batch.abandoned = True
            for position, attempts, point in zip(batch.positions, batch.attempts, batch.points, strict=True):
                heapq.heappush(self.lane, (now, position, attempts, point))
