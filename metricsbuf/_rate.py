"""The adaptive send rate: how fast one logger sends when the service throttles it.

Many writers (jobs, hosts, ranks) share one account's limit, which the service does not
publish. A logger learns its share from the answers it gets:

- Until the first ``ThrottlingException`` there is no limit at all (a logger alone never pays
  for this part).
- On a throttle, the rate is cut to ``BETA`` times what the service admitted from this logger
  over the last ``WINDOW`` seconds (its successes): under a shared limit that is the logger's
  current share, whatever it was sending. Cutting from the admitted rate rather than from the
  rate itself is what keeps several loggers from collapsing together: while the limit is
  exceeded every one of them keeps meeting throttles, and cuts that compound (TCP's
  "times beta per round trip") drive them all to the floor within a second; the admitted rate
  does not fall below the share actually received. Only a throttle of a request sent *after*
  the last cut cuts again: the requests already in flight were sent at the old rate.
- After a cut the rate grows back along CUBIC's curve (as in botocore's adaptive mode), but
  relative to the rate it was cut from rather than in absolute requests/s, so that it behaves
  the same whatever the share (1 or 1,000 requests/s): back at that rate ``K0`` seconds after
  the cut, flat around it for a few seconds (where a logger sharing a limit spends its time),
  then faster and faster (2.5 times the old rate about 7 s after the cut), so that capacity
  freed by other writers is found again. Several loggers against one limit drift towards
  equal shares: each is throttled in proportion to its rate, so a faster one is cut more often.
- The rate never falls below ``MIN_RATE``: a throttled logger keeps probing, and gets its share
  back once capacity returns.

Every request of the logger, first sends and retries of throttled requests alike, takes its
turn here: so a logger's rate is shared by all of its ``max_in_flight`` slots. Pure logic plus
one async wait; the clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import anyio

BETA = 0.8  # the rate after a throttle, as a share of the rate before
MIN_RATE = 0.5  # requests/s: the slowest a throttled logger goes (it keeps probing)
# After a cut: rate = max_rate * (1 + CUBE * ((t - K0) / SCALE) ** 3), t seconds since the cut.
CUBE = 0.4  # the cubic's steepness (CUBIC's C, here relative to max_rate)
SCALE = 3.0  # seconds: the cubic's unit of time
# Seconds after a cut until the rate is back at the rate it was cut from (about 2.4 s).
K0 = SCALE * ((1 - BETA) / CUBE) ** (1 / 3)
WINDOW = 1.0  # seconds of successes measured at a throttle
BURST = 1.0  # requests that may go at once after a quiet spell (besides the paced ones)


class AdaptiveRate:
    """One logger's send rate: a pacing token bucket whose rate follows the throttles it meets."""

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

    async def wait_turn(self) -> float:
        """Waits until the next request may go; returns the time it was sent at (for `throttled`)."""
        delay = self.delay()
        if delay > 0:
            await anyio.sleep(delay)
        return self._clock()

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
