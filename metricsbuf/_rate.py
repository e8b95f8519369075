"""The adaptive send rate: how fast one logger sends when the service throttles it.

Throttles set it only with the logger's ``adaptive_rate`` option (experimental, off by default:
a logger cannot tell its share of a limit from throttling that does not depend on its rate, such
as a limit shared with clients that do not back off; benchmarks/SCALE.md measures both).

Many writers (jobs, hosts, ranks) share one account's limit, which the service does not
publish. A logger learns its share from the answers it gets, and refusals are the only thing it
learns about the others: at a few percent refused, a handful per writer in a whole run. So the
design puts the writers on an equal footing once, at the start, and then moves in small steps
(benchmarks/SCALE.md has the measurements and the variants that did worse):

1. **Unlimited** until the first ``ThrottlingException``: a logger that is never throttled
   pays nothing.
2. **A common ramp.** On the first throttle every logger restarts from the same ``RAMP_START``
   requests/s and grows by ``RAMP_GROWTH`` a second. Writers behind one limit meet it within
   milliseconds of each other, so they ramp in step: equal rates, whatever split of the
   service's initial burst each one got (cutting from that split kept it: the old design's
   writers ended up with rates 3 to 1 apart). Each interval is jittered so that no writer's
   request always arrives first and always finds a token.
3. **The share, solved.** While the ramp is below the limit the service's token bucket refills,
   so the ramp goes past the limit and the bucket's saved tokens hide it for a while; the next
   throttle comes only once they are spent. From the time that takes, the logger solves for the
   rate at which K writers ramping alike would have emptied a bucket of ``BUCKET_SECONDS``
   seconds of the limit (`solve_share`): that rate is its share, without knowing K or the limit.
   The solution is corrected for the successes expected between the bucket emptying and this
   logger's first refusal.
4. **Steady state**: small steps around the share, starting ``SHARE_MARGIN`` (3%) below it.
   Each throttle of a request sent after the last cut cuts the rate by ``STEP``; each success
   raises it a little, so that the rate is steady at ``TARGET`` refused; and the longer no
   throttle comes, the faster it grows (CUBIC's curve, doubling ``CUBIC_SCALE`` seconds after
   the last cut), so that capacity freed by others is found again and a throttled period's end
   is noticed.

The rate never falls below ``min_rate`` (a throttled logger keeps probing) and returns to
unlimited once it has grown past ``MAX_RATE``. Every request of the logger, first sends and
retries of throttled requests alike, takes its turn here: a logger's rate is shared by all of
its ``max_in_flight`` slots, and with ``rate_scope="host"`` every logger of the host that sends
to the same endpoint shares one (_host_rate.py keeps this object's state in a file; the ramp then
starts at ``RAMP_START`` for each of the host's sending loggers, ``senders``). Pure logic plus one
async wait; the clock and the jitter's random source are injectable for tests.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import anyio

MIN_RATE = 0.5  # requests/s: the slowest a throttled logger goes (it keeps probing)
MAX_RATE = 10_000.0  # requests/s: grown past this, the logger is unlimited again
RAMP_START = 1.5  # requests/s: where every logger restarts at its first throttle
RAMP_GROWTH = 0.7  # per second: the ramp's exponential growth (x2 in about 1 s)
RAMP_JITTER = 0.6  # each ramp interval is (1 +- 0.6) x its nominal length, at random
RAMP_GRACE = 0.5  # seconds: throttles of requests sent this soon after the restart are the burst's
BUCKET_SECONDS = 1.0  # the service's bucket depth assumed by the solve, in seconds of its rate
# The steady state starts this far below the solved share: the bucket is empty then and the
# solve is a few percent off either way; a rate a little low costs nothing until the bucket
# fills (over 30 s at 3% below), one a little high is refused at once.
SHARE_MARGIN = 0.97
STEP = 0.02  # a throttle in steady state cuts the rate by 2%
TARGET = 0.01  # the refused share at which successes and throttles balance
CUBIC_SCALE = 30.0  # seconds: without a throttle the rate doubles this long after the last cut
BURST = 1.0  # steady state: requests that may go at once after a quiet spell
# Each success raises the rate by exp(ALPHA): steady when TARGET of the answers are throttles.
ALPHA = -math.log(1 - STEP) * TARGET / (1 - TARGET)

_UNLIMITED, _RAMP, _STEADY = "unlimited", "ramp", "steady"


def _emptying_time(saved: float) -> float:
    """The x >= 0 with e**x - 1 - x = saved: how long (in units of 1 / growth) an exponential ramp
    that just crossed the limit takes to spend ``saved`` (in the same units) of saved tokens."""
    if saved <= 0:
        return 0.0
    x = math.sqrt(2 * saved)  # the small-x solution; Newton from there (convex: converges)
    for _ in range(40):
        error = math.expm1(x) - x - saved
        if abs(error) < 1e-12:
            break
        x -= error / math.expm1(x)
    return x


def solve_share(start: float, growth: float, bucket: float, elapsed: float) -> float:
    """The share s such that K writers ramping alike, each at ``start * exp(growth * t)``, from an
    empty bucket of ``bucket`` seconds of their limit K * s, empty it again after ``elapsed`` s.

    The bucket (in seconds of the limit) gains 1 - r(t) / s per second until the ramp crosses s
    at t_c, capped at ``bucket``, and then loses r(t) / s - 1 per second: it is empty again
    x / growth later, with e**x - 1 - x = growth * saved. The emptying time grows with s, so a
    bisection between ``start`` and the ramp's rate at ``elapsed`` finds it (``start`` when
    ``elapsed`` <= 0).
    """

    def emptied_after(s: float) -> float:
        crossing = math.log(s / start) / growth
        saved = min(bucket, crossing - (1 - start / s) / growth)
        return crossing + _emptying_time(growth * saved) / growth

    if elapsed <= 0:
        return start
    low, high = start, start * math.exp(growth * elapsed)
    for _ in range(60):
        mid = math.sqrt(low * high)
        if emptied_after(mid) < elapsed:
            low = mid
        else:
            high = mid
    return math.sqrt(low * high)


class RateTurns:
    """A send rate as the sender uses it: ``delay()`` books the next request's turn, and
    ``wait_turn()`` waits for it (`AdaptiveRate`, and _host_rate's `HostSharedRate`)."""

    __slots__ = ()
    _clock: Callable[[], float]

    def delay(self) -> float:
        """Books the next send and returns how long to wait before it (0: go now)."""
        raise NotImplementedError

    async def wait_turn(self) -> float:
        """Waits until the next request may go; returns the time it was sent at (for `throttled`)."""
        delay = self.delay()
        if delay > 0:
            await anyio.sleep(delay)
        return self._clock()


class AdaptiveRate(RateTurns):
    """One logger's send rate: unlimited, then a common ramp, then small steps around its share."""

    __slots__ = (
        "rate",
        "min_rate",
        "share",
        "phase",
        "_clock",
        "_random",
        "_next_send",
        "_last_cut",
        "_ramp_start",
        "_ramp_from",
        "_base",
        "_successes",
        "cuts",
        "throttles_seen",
        "senders",
    )

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        min_rate: float = MIN_RATE,
        rng: random.Random | None = None,
    ) -> None:
        self.min_rate = min_rate
        self._clock = clock
        self._random = rng or random.Random()
        # How many loggers send through this rate (1; more when loggers of one host share it,
        # _host_rate.py): the ramp starts at RAMP_START for each, so that a host's shared rate
        # ramps as its loggers would have ramped apart, in step with the other hosts' loggers.
        self.senders = 1
        self.reset()

    def reset(self) -> None:
        """Back to the start: unlimited, never throttled (the state _host_rate.py shares)."""
        self.rate: float | None = None  # requests/s; None: no limit (never throttled yet)
        self.share: float | None = None  # the share solved at the end of the last ramp
        self.phase = _UNLIMITED
        self._next_send = 0.0  # the earliest time the next request may go (when limited)
        self._last_cut = -math.inf  # when the rate was last set by a throttle
        self._ramp_start = 0.0  # when the current ramp started
        self._ramp_from = RAMP_START  # its rate then
        self._base = 0.0  # steady state: the rate set at the last cut
        self._successes = 0  # steady state: successes since the last cut
        self.cuts = 0
        self.throttles_seen = 0

    def delay(self) -> float:
        """Books the next send and returns how long to wait before it (0: go now)."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        if self.phase == _RAMP:
            return self._ramp_delay(now)
        if self.rate > MAX_RATE:
            self._unlimit()
            return 0.0
        interval = 1.0 / self.rate
        at = max(self._next_send, now - BURST * interval)
        self._next_send = at + interval
        return max(0.0, at - now)

    def _ramp_delay(self, now: float) -> float:
        # The next send is one request's worth of the ramp's integral later (jittered), so that
        # the requests follow the curve rather than lag it by one interval.
        start, growth, begun = self._ramp_from, RAMP_GROWTH, self._ramp_start
        at = max(self._next_send, now)
        step = 1.0 + RAMP_JITTER * (2.0 * self._random.random() - 1.0)
        self._next_send = begun + math.log(math.exp(growth * (at - begun)) + step * growth / start) / growth
        self.rate = start * math.exp(growth * (at - begun))
        if self.rate > MAX_RATE:  # never throttled again all the way up: the limit has gone
            self._unlimit()
            return 0.0
        return max(0.0, at - now)

    def _unlimit(self) -> None:
        self.rate, self.phase = None, _UNLIMITED

    def succeeded(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` was answered (whatever its per-index errors)."""
        if self.phase != _STEADY or sent_at < self._last_cut:
            return
        self._successes += 1
        x = (self._clock() - self._last_cut) / CUBIC_SCALE
        self.rate = self._base * math.exp(ALPHA * self._successes) * (1.0 + x * x * x)

    def throttled(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` was throttled."""
        self.throttles_seen += 1
        now = self._clock()
        if self.phase == _UNLIMITED:
            self._start_ramp(now)
        elif self.phase == _RAMP:
            if sent_at < self._ramp_start + RAMP_GRACE:
                return  # sent while the bucket was still empty from before the restart
            self.share = self._solve(sent_at)
            self._cut_to(self.share * SHARE_MARGIN, now)
        elif sent_at >= self._last_cut:  # older requests were sent at the old rate
            assert self.rate is not None
            self._cut_to(self.rate * (1.0 - STEP), now)

    def _start_ramp(self, now: float) -> None:
        self.phase = _RAMP
        self._ramp_start = now
        self._ramp_from = start = max(RAMP_START * self.senders, self.min_rate)
        self.rate = start
        self._next_send = now + 1.0 / start  # the first request of the ramp waits one interval
        self._last_cut = now
        self.cuts += 1

    def _solve(self, sent_at: float) -> float:
        """The share, from the send time of the first request the ramp found throttled."""
        start, growth = self._ramp_from, RAMP_GROWTH
        share = solve_share(start, growth, BUCKET_SECONDS, sent_at - self._ramp_start)
        for _ in range(3):
            # The bucket emptied before this request was sent: on average half an interval
            # before the first request sent after it, plus the requests that still found a fresh
            # token (a share 1 / overshoot of them) before the first one was refused.
            rate_then = start * math.exp(growth * (sent_at - self._ramp_start))
            overshoot = max(1.05, rate_then / share)
            lead = (0.5 + 1.0 / (overshoot - 1.0)) / rate_then
            share = solve_share(start, growth, BUCKET_SECONDS, sent_at - lead - self._ramp_start)
        return share

    def _cut_to(self, rate: float, now: float) -> None:
        self.phase = _STEADY
        self.rate = self._base = max(self.min_rate, rate)
        self._successes = 0
        self._last_cut = now
        self.cuts += 1
        self._next_send = max(self._next_send, now + 1.0 / self.rate)  # no credit from before
