"""The accumulator on its own: what forms the next batch and when, with no client and no logger."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from metricsbuf._accumulator import Accumulator
from metricsbuf._buffer import Point, PointQueue


def point(name: str, logged_at: float | None = None, *spooled: object) -> Point:
    now = time.time() if logged_at is None else logged_at
    return (name, 1.0, None, now, now, *spooled)


def make(max_batch_size: int = 3, flush_interval: float = 60.0, *, spooled: bool = False) -> Accumulator:
    return Accumulator(
        PointQueue(max_batch_size, flush_interval),
        delivery_timeout=10.0,
        trial_component="tc",
        spooled=spooled,
    )


def test_a_batch_takes_due_resends_first_then_queued_points_up_to_the_limit() -> None:
    acc = make()
    for name in "abcd":
        acc.queue.append(point(name))
    acc.schedule_resend([(7, 2, point("resent"))], delay=0.0)
    batch = acc.take_batch(time.time())
    assert batch is not None
    assert [p[0] for p in batch.points] == ["resent", "a", "b"]
    assert batch.positions == [7, 0, 1] and batch.attempts == [2, 0, 0]
    assert batch in acc.in_flight and acc.held_positions() == [7, 0, 1]
    assert acc.first_unsettled() == 0  # "a" is in flight, not settled
    acc.finished(batch)
    assert not acc.in_flight and batch.points == []
    assert acc.first_unsettled() == 2  # "c" is queued


def test_a_resend_that_is_not_due_waits_in_the_lane() -> None:
    acc = make()
    acc.schedule_resend([(0, 1, point("later"))], delay=30.0)
    assert acc.take_batch(time.time()) is None
    assert not acc.empty  # still held


def test_a_resend_is_never_due_after_the_points_delivery_deadline() -> None:
    acc = make()
    logged_at = time.time() - 9.5  # delivery_timeout is 10 s: 0.5 s left
    acc.schedule_resend([(0, 1, point("old", logged_at))], delay=30.0)
    due_at = acc.lane[0][0]
    assert due_at == pytest.approx(logged_at + 10.0)
    assert acc.take_batch(due_at) is not None


def test_with_a_spool_a_batch_holds_one_trial_component() -> None:
    acc = make(spooled=True)
    acc.queue.append(point("a", None, 1, "tc-1"))
    acc.queue.append(point("b", None, 2, "tc-1"))
    acc.queue.append(point("c", None, 3, "tc-2"))
    first = acc.take_batch(time.time())
    second = acc.take_batch(time.time())
    assert first is not None and second is not None
    assert (first.trial_component, first.positions) == ("tc-1", [1, 2])
    assert (second.trial_component, second.positions) == ("tc-2", [3])


def test_split_off_moves_the_chosen_points_into_a_batch_of_their_own() -> None:
    acc = make()
    for name in "abc":
        acc.queue.append(point(name))
    batch = acc.take_batch(time.time())
    assert batch is not None
    gone = batch.split_off([False, True, False])
    assert [p[0] for p in gone.points] == ["b"] and gone.positions == [1]
    assert [p[0] for p in batch.points] == ["a", "c"] and batch.positions == [0, 2]


def test_take_all_held_empties_everything_and_abandons_the_batches_in_flight() -> None:
    acc = make()
    for name in "abcde":
        acc.queue.append(point(name))
    batch = acc.take_batch(time.time())
    assert batch is not None
    acc.schedule_resend([(9, 1, point("r"))], delay=30.0)
    held = acc.take_all_held()
    assert [p[0] for p in held.queued] == ["d", "e"]
    assert held.batches == [batch] and batch.abandoned
    assert [(a, p[0]) for a, p in held.resends] == [(1, "r")]
    assert acc.empty


def test_take_back_in_flight_puts_cancelled_requests_first_in_line() -> None:
    acc = make()
    for name in "abcd":
        acc.queue.append(point(name))
    batch = acc.take_batch(time.time())
    assert batch is not None
    acc.take_back_in_flight()
    assert batch.abandoned and not acc.in_flight
    again = acc.take_batch(time.time())
    assert again is not None and [p[0] for p in again.points] == ["a", "b", "c"]
    assert again.positions == [0, 1, 2]


def test_expire_queued_takes_only_points_past_their_delivery_timeout() -> None:
    acc = make()
    acc.queue.append(point("old", time.time() - 11))
    acc.queue.append(point("new"))
    assert [p[0] for p in acc.expire_queued(time.time())] == ["old"]
    assert len(acc.queue) == 1 and acc.queue.head_seq == 1


async def test_a_full_batch_is_due_at_once_a_partial_one_after_flush_interval() -> None:
    acc = make(max_batch_size=3, flush_interval=0.2)
    acc.wakeup = anyio.Event()
    for name in "abc":
        acc.queue.append(point(name))
    with anyio.fail_after(1):
        await acc.wait_until_batch_due(lambda: False)  # full: no wait
    acc.take_batch(time.time())
    acc.queue.append(point("d"))
    started = time.monotonic()
    with anyio.fail_after(5):
        await acc.wait_until_batch_due(lambda: False)
    assert time.monotonic() - started >= 0.15  # waited for flush_interval


async def test_hurry_makes_a_partial_batch_due_and_wakes_the_waiter() -> None:
    acc = make(max_batch_size=3, flush_interval=3600.0)
    acc.wakeup = anyio.Event()
    acc.queue.append(point("a"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(acc.wait_until_batch_due, lambda: False)
        await anyio.sleep(0.01)
        with anyio.fail_after(1):
            acc.hurry(acc.queue.appended)
            await anyio.lowlevel.checkpoint()
    assert acc.urgent_position == 1


async def test_closing_with_nothing_held_ends_the_wait() -> None:
    acc = make()
    acc.wakeup = anyio.Event()
    with anyio.fail_after(1):
        await acc.wait_until_batch_due(lambda: True)
