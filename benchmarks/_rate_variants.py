"""Rate-control variants that rate_sim.py compares with metricsbuf's AdaptiveRate (_rate.py).

None of them is used by the library: `CutToAdmitted` is the design it shipped until session 6,
the others are the variants tried since (benchmarks/SCALE.md has the tables). They take the
same calls as `metricsbuf._rate.AdaptiveRate`: `delay()`, `succeeded(sent_at)`,
`throttled(sent_at)`, and expose `rate`, `cuts`, `throttles_seen`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

BETA = 0.8  # the rate after a throttle, as a share of the rate before
MIN_RATE = 0.5  # requests/s: the slowest a throttled logger goes (it keeps probing)
# After a cut: rate = max_rate * (1 + CUBE * ((t - K0) / SCALE) ** 3), t seconds since the cut.
CUBE = 0.4  # the cubic's steepness (CUBIC's C, here relative to max_rate)
SCALE = 3.0  # seconds: the cubic's unit of time
# Seconds after a cut until the rate is back at the rate it was cut from (about 2.4 s).
K0 = SCALE * ((1 - BETA) / CUBE) ** (1 / 3)
WINDOW = 1.0  # seconds of successes measured at a throttle
BURST = 1.0  # requests that may go at once after a quiet spell (besides the paced ones)


class CutToAdmitted:
    """metricsbuf's adaptive rate until session 6 (`previous` in the tables): on a throttle, cut to
    BETA x the rate admitted over the last WINDOW; regrow along CUBIC's curve relative to the
    rate it was cut from (K0 s back to it, 2.5x about 7 s after the cut)."""

    __slots__ = (
        "rate",
        "min_rate",
        "_clock",
        "_next_send",
        "_last_cut",
        "_successes_at",
        "_max_rate",
        "_successes",
        "cuts",
        "throttles_seen",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic, min_rate: float = MIN_RATE) -> None:
        self.rate: float | None = None  # requests/s; None: no limit (never throttled yet)
        self.min_rate = min_rate
        self._clock = clock
        self._next_send = 0.0  # the earliest time the next request may go (when limited)
        self._last_cut = -float("inf")  # when the rate was last cut
        self._successes_at: deque[float] = deque()  # when requests succeeded, within WINDOW
        self._max_rate = 0.0  # the rate at the last cut
        self._successes = 0  # successes of requests sent since the last cut (for tests, stats)
        self.cuts = 0
        self.throttles_seen = 0

    def delay(self) -> float:
        """Books the next send and returns how long to wait before it (0: go now)."""
        now = self._clock()
        rate = self.rate
        if rate is None:
            return 0.0
        interval = 1.0 / rate
        at = max(self._next_send, now - BURST * interval)
        self._next_send = at + interval
        return max(0.0, at - now)

    def succeeded(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` was answered (whatever its per-index errors)."""
        successes_at = self._successes_at
        now = self._clock()
        successes_at.append(now)
        while successes_at[0] < now - WINDOW:
            successes_at.popleft()
        if self.rate is None or sent_at < self._last_cut:
            return
        self._successes += 1
        x = (now - self._last_cut - K0) / SCALE
        self.rate = max(self.min_rate, self._max_rate * (1.0 + CUBE * x * x * x))

    def throttled(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` was throttled."""
        self.throttles_seen += 1
        if sent_at < self._last_cut:
            return  # sent before the last cut: that cut already answered this congestion
        now = self._clock()
        successes_at = self._successes_at
        while successes_at and successes_at[0] < now - WINDOW:
            successes_at.popleft()
        current = len(successes_at) / WINDOW  # the rate the service admitted lately
        self._max_rate = max(self.min_rate, current)
        self._successes = 0
        self.rate = max(self.min_rate, BETA * current)
        self._last_cut = now
        self.cuts += 1
        # The new pace starts now: no credit from before the cut.
        self._next_send = max(self._next_send, now)


class TargetShare(CutToAdmitted):
    """Small steps aimed at a target share of refusals (multiplicative increase, multiplicative
    decrease), with an optional additive increase for fairness.

    - First throttle: the rate admitted over the last WINDOW (as `previous`, without the 0.8 cut);
      with ``fair_start`` (an oracle, not implementable: a logger does not know its share) every
      writer starts at exactly ``limit / K`` instead.
    - Each throttle of a request sent after the last cut: rate x (1 - beta).
    - Each success: rate x exp(alpha), alpha = -ln(1 - beta) x target / (1 - target), so that the
      rate is steady when ``target`` of the answers are throttles (p* = alpha / (alpha + beta)
      in log terms); plus ``additive`` requests/s per second of time (AIMD's restoring force).
    - After a cut the next request waits a whole interval (no BURST credit).
    """

    __slots__ = ("beta", "alpha", "additive", "share", "_updated")

    def __init__(
        self,
        clock: Callable[[], float],
        share: float,
        beta: float = 0.1,
        target: float = 0.02,
        additive: float = 0.0,
        fair_start: bool = False,
    ) -> None:
        super().__init__(clock)
        self.beta, self.additive = beta, additive
        self.alpha = -math.log(1 - beta) * target / (1 - target)
        self.share = share if fair_start else None
        self._updated = 0.0

    def succeeded(self, sent_at: float) -> None:
        now = self._clock()
        successes_at = self._successes_at
        successes_at.append(now)
        while successes_at[0] < now - WINDOW:
            successes_at.popleft()
        if self.rate is None or sent_at < self._last_cut:
            return
        self.rate = self.rate * math.exp(self.alpha) + self.additive * (now - self._updated)
        self._updated = now

    def throttled(self, sent_at: float) -> None:
        self.throttles_seen += 1
        now = self._clock()
        if self.rate is None:
            successes_at = self._successes_at
            while successes_at and successes_at[0] < now - WINDOW:
                successes_at.popleft()
            self.rate = max(self.min_rate, self.share or len(successes_at) / WINDOW)
        elif sent_at < self._last_cut:
            return
        else:
            self.rate = max(self.min_rate, self.rate * (1 - self.beta))
        self._last_cut = self._updated = now
        self.cuts += 1
        self._next_send = max(self._next_send, now + 1 / self.rate)


class Off(CutToAdmitted):
    """The adaptive rate switched off (the sender's default): throttles never set a rate."""

    __slots__ = ()

    def throttled(self, sent_at: float) -> None:
        self.throttles_seen += 1


class AbsoluteCubic(CutToAdmitted):
    """Cut to BETA x the admitted rate; regrowth along botocore's CUBIC in absolute requests/s."""

    __slots__ = ("beta", "k0")
    C = 0.4

    def __init__(self, clock: Callable[[], float], beta: float = 0.8) -> None:
        super().__init__(clock)
        self.beta, self.k0 = beta, 0.0

    def succeeded(self, sent_at: float) -> None:
        super().succeeded(sent_at)  # keeps the window of successes
        if self.rate is not None and sent_at >= self._last_cut:
            t = self._clock() - self._last_cut
            self.rate = max(self.min_rate, self._max_rate + self.C * (t - self.k0) ** 3)

    def throttled(self, sent_at: float) -> None:
        super().throttled(sent_at)
        if self._last_cut == self._clock() and self.rate is not None:  # it cut just now
            self.rate = max(self.min_rate, self.beta / 0.8 * self.rate)
            self.k0 = (self._max_rate * (1 - self.beta) / self.C) ** (1 / 3)


class CommonStart(AbsoluteCubic):
    """AbsoluteCubic, but the first throttle restarts every writer from the same 2 requests/s,
    doubling every 0.5 s until a throttle of a request sent 0.5 s or more after that restart (so
    that the random split of the service's initial burst does not set the writers' shares)."""

    __slots__ = ("slow",)

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.slow = False

    def succeeded(self, sent_at: float) -> None:
        if self.slow and sent_at >= self._last_cut:
            CutToAdmitted.succeeded(self, sent_at)
            self.rate = 2.0 * 2 ** ((self._clock() - self._last_cut) / 0.5)
            return
        super().succeeded(sent_at)

    def throttled(self, sent_at: float) -> None:
        now = self._clock()
        if self.rate is None:
            self.slow, self.rate, self._last_cut = True, 2.0, now
            self._next_send = now
        elif self.slow:
            if sent_at >= self._last_cut + 0.5:
                self.slow = False
                self._max_rate, self.rate, self._last_cut = self.rate, self.beta * self.rate, now
                self.k0 = (self._max_rate * (1 - self.beta) / self.C) ** (1 / 3)
        else:
            super().throttled(sent_at)
