"""The fake service's shared rate limit: a token bucket."""

from __future__ import annotations

from collections.abc import Callable


class TokenBucket:
    """Admits a request while a whole token is left; tokens refill at ``rate`` a second.

    The bucket starts full, holds at most ``capacity`` tokens (the burst a quiet spell
    allows) and admits at most ``capacity + rate * t`` requests in any ``t`` seconds.

    Args:
        rate: tokens added per second (> 0).
        capacity: the most tokens held (>= 1).
        clock: monotonic seconds (`time.monotonic`, or a fake one in tests).
    """

    __slots__ = ("rate", "capacity", "_clock", "_tokens", "_updated")

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    def take(self) -> bool:
        """Take a token if there is one: True admits the request, False refuses it."""
        now = self._clock()
        tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if tokens >= 1:
            self._tokens = tokens - 1
            return True
        self._tokens = tokens
        return False
