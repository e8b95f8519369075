"""The adaptive send rate on its own, on a fake clock (no sleeping, no network)."""

from __future__ import annotations

import heapq

import pytest

from metricsbuf import _rate
from metricsbuf._rate import AdaptiveRate
from metricsbuf.testing._rate_limit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_limit_until_the_first_throttle() -> None:
    rate = AdaptiveRate(Clock())
    assert rate.rate is None
    assert all(rate.delay() == 0.0 for _ in range(1000))


def test_a_throttle_cuts_to_beta_times_the_admitted_rate_once_per_cut() -> None:
    clock = Clock()
    rate = AdaptiveRate(clock)
    for _ in range(20):  # 20 successes within the last second
        clock.now += 0.04
        rate.succeeded(clock.now)
    sent = clock.now - 0.001  # sent, then throttled 1 ms later
    rate.throttled(sent)
    assert rate.rate == pytest.approx(_rate.BETA * 20)
    rate.throttled(sent)  # sent before the cut: no second cut
    assert rate.rate == pytest.approx(_rate.BETA * 20) and rate.cuts == 1


def test_the_rate_never_falls_below_the_floor_and_grows_back_past_the_old_rate() -> None:
    clock = Clock()
    rate = AdaptiveRate(clock)
    for _ in range(50):
        clock.now += 0.1
        rate.throttled(clock.now - 0.001)
    assert rate.rate == _rate.MIN_RATE  # starved: still probing
    # Capacity is back: every request succeeds. The rate comes back past where it was cut.
    clock.now += 1.0
    for _ in range(200):
        clock.now += rate.delay() + 0.01
        rate.succeeded(clock.now - 0.005)
    assert rate.rate is not None and rate.rate > 4 * _rate.MIN_RATE


def simulate(writers: int, limit: float, seconds: float) -> tuple[list[int], int]:
    """Backlogged writers, one request in flight each (2 ms), against one token bucket."""
    clock = Clock()
    bucket = TokenBucket(limit, limit, clock)
    rates = [AdaptiveRate(clock) for _ in range(writers)]
    ok = [0] * writers
    throttled = 0
    events: list[tuple[float, int, int, str, float]] = []
    for w in range(writers):
        heapq.heappush(events, (clock.now + w * 0.0001, w, w, "ready", 0.0))
    seq = writers
    end = clock.now + seconds
    while events:
        at, _, w, kind, sent = heapq.heappop(events)
        if at > end:
            break
        clock.now = at
        seq += 1
        if kind == "ready":
            heapq.heappush(events, (at + rates[w].delay(), seq, w, "send", 0.0))
        elif kind == "send":
            heapq.heappush(events, (at + 0.002, seq, w, "ok" if bucket.take() else "no", at))
        else:
            if kind == "ok":
                ok[w] += 1
                rates[w].succeeded(sent)
            else:
                throttled += 1
                rates[w].throttled(sent)
            heapq.heappush(events, (at, seq, w, "ready", 0.0))
    return ok, throttled


def test_loggers_sharing_one_limit_get_similar_shares_and_use_most_of_it() -> None:
    for writers in (2, 4):
        ok, throttled = simulate(writers, limit=40.0, seconds=30.0)
        jain = sum(ok) ** 2 / (writers * sum(x * x for x in ok))
        assert jain > 0.85, ok
        assert sum(ok) > 0.85 * 40 * 30, ok  # most of the capacity used
        assert throttled < 0.2 * (sum(ok) + throttled), (ok, throttled)
