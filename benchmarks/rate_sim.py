"""A discrete-event simulation of K loggers' send rates against one shared token bucket.

No network, no processes, no CPU contention: what the rate control alone does. Each writer has
N batches and ``max_in_flight`` = 4 slots; every request takes its turn from the writer's rate
(`AdaptiveRate.delay`), takes 5-30 ms to answer, and is admitted if the shared
`TokenBucket(R, R)` (the fake service's limit) has a token. A throttled request waits the
sender's backoff (0.1 x 2**(n-1) s + up to 0.1 s of jitter) and its rate turn, and goes again.
Goodput, throttled share and Jain's index are computed as in benchmarks/scale.py.

It compares metricsbuf's experimental AdaptiveRate (_rate.py) with variants tried while looking
for one that meets issue 12's goals (see SCALE.md, "Why the adaptive rate misses at K = 8"):

    python benchmarks/rate_sim.py [--seeds 6] [--seconds 25] [--variants current,absolute_cubic,...]
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from collections.abc import Callable
from typing import Any

from metricsbuf._rate import AdaptiveRate
from metricsbuf.testing._rate_limit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def simulate(make: Callable[[Clock], Any], k: int, n: int, limit: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    clock = Clock()
    bucket = TokenBucket(limit, limit, clock)
    events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
    seq = 0

    def at(t: float, fn: Callable[..., None], *args: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, fn, args))

    rates = [make(clock) for _ in range(k)]
    left, done = [n] * k, [0] * k
    started: list[float | None] = [None] * k
    ended: list[float | None] = [None] * k
    counts = {"requests": 0, "throttled": 0, "early": 0}

    def slot_free(w: int) -> None:
        if left[w]:
            left[w] -= 1
            if started[w] is None:
                started[w] = clock.now
            at(clock.now + rates[w].delay(), send, w, 0)

    def send(w: int, throttles: int) -> None:
        counts["requests"] += 1
        at(clock.now + rng.uniform(0.005, 0.03), answer, w, clock.now, bucket.take(), throttles)

    def answer(w: int, sent: float, ok: bool, throttles: int) -> None:
        if ok:
            rates[w].succeeded(sent)
            done[w] += 1
            if done[w] == n:
                ended[w] = clock.now
            slot_free(w)
        else:
            counts["throttled"] += 1
            if clock.now < 102.0:  # within 2 s of the start (the clock starts at 100)
                counts["early"] += 1
            rates[w].throttled(sent)
            backoff = min(10.0, 0.1 * 2**throttles) + rng.uniform(0, 0.1)
            at(clock.now + backoff, lambda: at(clock.now + rates[w].delay(), send, w, throttles + 1))

    for w in range(k):
        t0 = clock.now + rng.uniform(0, 0.05)
        for _ in range(4):
            at(t0, slot_free, w)
    while events and any(e is None for e in ended):
        t, _, fn, args = heapq.heappop(events)
        clock.now = t
        fn(*args)
    first = min(s for s in started if s is not None)
    span = max(e for e in ended if e is not None) - first
    writer_rates = [
        n / (e - s) for s, e in zip(started, ended, strict=True) if s is not None and e is not None
    ]
    return {
        "goodput": sum(done) / (limit + limit * span),
        "throttled": counts["throttled"] / counts["requests"],
        "early": counts["early"] / counts["requests"],
        "jain": sum(writer_rates) ** 2 / (k * sum(r * r for r in writer_rates)),
    }


class AbsoluteCubic(AdaptiveRate):
    """Cut to BETA x the admitted rate; regrowth along botocore's CUBIC in absolute requests/s."""

    __slots__ = ("beta", "k0")
    C = 0.4

    def __init__(self, clock: Clock, beta: float = 0.8) -> None:
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

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.slow = False

    def succeeded(self, sent_at: float) -> None:
        if self.slow and sent_at >= self._last_cut:
            AdaptiveRate.succeeded(self, sent_at)
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


VARIANTS: dict[str, Callable[[Clock], Any]] = {
    "current": lambda c: AdaptiveRate(c),
    "absolute_cubic": lambda c: AbsoluteCubic(c),
    "absolute_cubic_beta_0.9": lambda c: AbsoluteCubic(c, beta=0.9),
    "common_start": lambda c: CommonStart(c),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rate-limit", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=25.0, help="run length at the limit")
    args = parser.parse_args()
    print(
        "| variant | K | goodput (mean, min) | throttled share (mean, max) | of which in the first 2 s "
        "(mean) | Jain (mean, min) |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        for k in (4, 8):
            runs = [
                simulate(VARIANTS[name], k, int(args.rate_limit * args.seconds / k), args.rate_limit, seed)
                for seed in range(1, args.seeds + 1)
            ]
            g, t, e, j = ([r[key] for r in runs] for key in ("goodput", "throttled", "early", "jain"))
            print(
                f"| {name} | {k} | {statistics.mean(g):.3f}, {min(g):.3f} | {statistics.mean(t):.3f}, "
                f"{max(t):.3f} | {statistics.mean(e):.3f} | {statistics.mean(j):.3f}, {min(j):.3f} |"
            )


if __name__ == "__main__":
    main()
