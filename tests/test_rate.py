"""The adaptive send rate on its own, on a fake clock (no sleeping, no network)."""

from __future__ import annotations

import heapq
import math
import random

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


def throttle_now(rate: AdaptiveRate, clock: Clock) -> None:
    rate.throttled(clock.now - 0.001)  # sent, then throttled 1 ms later


def test_the_first_throttle_puts_every_logger_on_the_same_ramp() -> None:
    # Whatever a logger was admitted before (one had 20 requests/s, the other 2), the first
    # throttle restarts both from RAMP_START: equal rates, not the split of the service's burst.
    clock = Clock()
    busy, quiet = AdaptiveRate(clock, rng=random.Random(1)), AdaptiveRate(clock, rng=random.Random(2))
    for i in range(20):
        clock.now += 0.05
        busy.succeeded(clock.now)
        if i % 10 == 0:
            quiet.succeeded(clock.now)
    throttle_now(busy, clock)
    throttle_now(quiet, clock)
    assert busy.rate == quiet.rate == _rate.RAMP_START
    assert busy.phase == quiet.phase == "ramp" and busy.cuts == quiet.cuts == 1


def test_the_ramp_grows_exponentially_and_its_sends_follow_the_curve() -> None:
    clock = Clock()
    rate = AdaptiveRate(clock, rng=random.Random(3))
    throttle_now(rate, clock)
    started, sends = clock.now, 0
    while clock.now < started + 4.0:
        clock.now += rate.delay()
        sends += 1
        growth = math.exp(_rate.RAMP_GROWTH * (clock.now - started))
        assert rate.rate == pytest.approx(_rate.RAMP_START * growth, rel=1e-9)
    # The integral of RAMP_START * exp(g t) over 4 s, give or take the jitter of a few sends.
    expected = _rate.RAMP_START * math.expm1(_rate.RAMP_GROWTH * 4.0) / _rate.RAMP_GROWTH
    assert abs(sends - expected) < 4, (sends, expected)


def test_throttles_of_requests_sent_just_after_the_restart_do_not_end_the_ramp() -> None:
    clock = Clock()
    rate = AdaptiveRate(clock, rng=random.Random(4))
    throttle_now(rate, clock)
    clock.now += _rate.RAMP_GRACE / 2
    rate.throttled(clock.now - 0.01)  # sent while the bucket was still empty from the burst
    assert rate.phase == "ramp" and rate.cuts == 1 and rate.throttles_seen == 2


def emptying_time(writers: int, share: float, start: float, growth: float, bucket: float) -> float:
    """Steps K ramping writers against a bucket of `bucket` seconds of their limit, starting empty,
    until it is empty again (an independent check of `solve_share`'s closed forms)."""
    limit, tokens, t, dt = writers * share, 0.0, 0.0, 1e-4
    crossed = False
    while True:
        offered = writers * start * math.exp(growth * t)
        crossed = crossed or offered > limit
        tokens = min(bucket * limit, tokens + (limit - offered) * dt)
        t += dt
        if crossed and tokens <= 0:
            return t


@pytest.mark.parametrize(
    ("writers", "share", "bucket"),
    [(8, 5.0, 1.0), (4, 10.0, 1.0), (2, 40.0, 0.5), (16, 2.5, 2.0), (8, 1.7, 1.0)],
)
def test_the_solved_share_is_what_equal_ramping_writers_each_get(
    writers: int, share: float, bucket: float
) -> None:
    elapsed = emptying_time(writers, share, 1.5, 0.7, bucket)
    assert _rate.solve_share(1.5, 0.7, bucket, elapsed) == pytest.approx(share, rel=0.01)


def test_the_end_of_the_ramp_sets_the_solved_share_then_small_steps() -> None:
    clock = Clock()
    rate = AdaptiveRate(clock, rng=random.Random(5))
    throttle_now(rate, clock)
    # The bucket was found empty again by a request sent 3 s into the ramp.
    clock.now += 3.0
    rate.throttled(clock.now - 0.001)
    raw = _rate.solve_share(_rate.RAMP_START, _rate.RAMP_GROWTH, _rate.BUCKET_SECONDS, 3.0)
    assert rate.phase == "steady" and rate.share is not None
    assert 0.8 * raw < rate.share < raw  # corrected for the detection delay
    assert rate.rate == pytest.approx(rate.share * _rate.SHARE_MARGIN)
    share = rate.rate
    clock.now += 0.5
    throttle_now(rate, clock)
    assert rate.rate == pytest.approx(share * (1 - _rate.STEP))
    rate.throttled(clock.now - 0.2)  # sent before that cut: no second cut
    assert rate.rate == pytest.approx(share * (1 - _rate.STEP)) and rate.cuts == 3


def test_without_throttles_the_steady_rate_doubles_cubic_scale_seconds_after_the_cut() -> None:
    clock = Clock()
    rate = AdaptiveRate(clock, rng=random.Random(8))
    throttle_now(rate, clock)
    clock.now += 3.0
    throttle_now(rate, clock)  # the end of the ramp
    share, cut_at, successes = rate.rate, clock.now, 0
    assert share is not None
    while clock.now < cut_at + _rate.CUBIC_SCALE:
        clock.now += rate.delay() + 0.001
        rate.succeeded(clock.now - 0.001)
        successes += 1
    x = (clock.now - cut_at) / _rate.CUBIC_SCALE
    expected = share * math.exp(_rate.ALPHA * successes) * (1 + x**3)
    assert rate.rate == pytest.approx(expected)
    assert 2.0 <= rate.rate / share < 2.2  # the successes' own small growth on top of the doubling


def test_the_rate_never_falls_below_the_floor_and_grows_back_past_the_old_rate() -> None:
    clock = Clock()
    rate = AdaptiveRate(clock, rng=random.Random(6))
    for _ in range(300):
        clock.now += 0.1
        rate.throttled(clock.now - 0.001)
    assert rate.rate == _rate.MIN_RATE  # starved: still probing
    # Capacity is back: every request succeeds. The rate comes back past where it was cut.
    for _ in range(200):
        clock.now += rate.delay() + 0.01
        rate.succeeded(clock.now - 0.005)
    assert rate.rate is not None and rate.rate > 4 * _rate.MIN_RATE


def test_grown_past_max_rate_the_logger_is_unlimited_again() -> None:
    clock = Clock()
    rate = AdaptiveRate(clock, rng=random.Random(7))
    throttle_now(rate, clock)
    for _ in range(100_000):  # the ramp, never throttled again: the limit has gone
        clock.now += rate.delay()
        if rate.rate is None:
            break
    assert rate.rate is None and rate.phase == "unlimited"
    assert rate.delay() == 0.0


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
