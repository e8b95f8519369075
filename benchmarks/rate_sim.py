"""A discrete-event simulation of K loggers' send rates against one shared token bucket.

No network, no processes, no CPU contention: what the rate control alone does. Each writer has
N batches and ``max_in_flight`` = 4 slots; every request takes its turn from the writer's rate
(`AdaptiveRate.delay`), takes 5-30 ms to answer, and is admitted if the shared
`TokenBucket(R, R x burst_seconds)` (the fake service's limit: burst_seconds 1) has a token.
A throttled request waits the sender's backoff (0.1 x 2**(n-1) s + up to 0.1 s of jitter) and
its rate turn, and goes again.
Goodput, throttled share and Jain's index are computed as in benchmarks/scale.py.

It compares metricsbuf's AdaptiveRate (_rate.py, ``current``: a common ramp from the first
throttle, the share solved from when the ramp meets the limit again, then small steps) with
``previous`` (the design until session 6: cut to 0.8 x the rate admitted in the last second,
CUBIC regrowth) and the other variants tried while looking for one that meets issue 12's goals
(_rate_variants.py; SCALE.md has the tables):

    python benchmarks/rate_sim.py [--seeds 6] [--seconds 25] [--variants current,previous,...]
        [--serial] [--no-backoff] [--burst-seconds 1]
    python benchmarks/rate_sim.py --random-throttle 0.05,0.1 [--variants ...]
    python benchmarks/rate_sim.py --competitors [--variants current,off]

``--host-size N`` puts the writers in hosts of N that share one rate, as the loggers of a host do
with ``rate_scope="host"`` (_host_rate.py; 1, the default: each writer its own), and ``--writers``
sets the K values of the main table (default 4,8): ``--writers 64 --host-size 8`` is 8 hosts of 8.

``--burst-seconds`` sets the bucket's depth in seconds of its rate: the current design's solve
assumes 1 (``BUCKET_SECONDS``, the fake service's default), so other depths show how much it
depends on that assumption.

``--serial`` models the sender more closely: a writer's slots take their first-send turns one at
a time (the sender's slots wait for the rate's turn holding one lock), where by default every
free slot books its turn at once. ``--no-backoff``: a throttled request waits only for its rate
turn, without the sender's exponential backoff. ``--random-throttle``: one writer, no limit, a
share of its requests refused at random (as the reliability tests inject): does the rate collapse?
``--competitors``: some of the K writers send with no rate at all (``off``: the sender's default,
or any client that only backs off per request, such as the SageMaker SDK's) and never run out of
points; the run ends when the rated writers are done. It prints a rated writer's rate over a
competitor's (1: equal shares): what a logger with this rate gets when the account's limit is
shared with clients that do not yield.

What the ``target_*`` variants (small steps aimed at a share of refusals) showed, with
``--serial`` (rate3 branch; the figures are in that session's report, not repeated here):

- With an oracle's start (every writer at exactly limit / K), small steps (cut 2% per throttle,
  aimed at 1% refused) meet every goal at K = 4 and K = 8, in 25 s and 75 s runs: in steady state
  the rule is right. The binding problem is the start.
- A logger cannot know its share. The rate admitted over the last second at the first throttle
  splits the service's burst at random (CV of the first rates about 0.25 at K = 4, 0.67 at K = 8
  here; one real run of scale.py: 0.64 at K = 4, 0.49 at K = 8), and multiplicative steps keep that
  split: every writer behind one bucket sees the same refusal share, so nothing pulls the rates
  together, and a writer started at the floor grows by a fraction per success, i.e. hardly at all.
- An additive term (AIMD) pulls the rates together at about 2 x beta x (the writer's refusals
  per second), from linearising dr/dt = a - p x beta x r^2: at K = 8 (5 requests/s each), 2%
  refused and cuts of 30%, a time constant of about 17 s, as long as the run, while each cut adds
  noise of its own. A large term (1 request/s per second) makes runs fairer and fuller but pushes
  refusals at K = 8 to 7-10% (simulated and measured), and it is not scale-free.
- A common start (every writer restarts at the same low rate and ramps) makes the writers equal
  but hides the crossing of the limit behind the bucket's saved tokens (up to one second's worth):
  in the scratch tries of session 5 the ramp went several times past the share before the first
  refusal.
- Under random throttling above the target share the target rule sinks to the floor (worse than
  ``previous``): a logger cannot tell random refusals from its share of a shared limit.

Session 6 turned the last two findings into the current design: the ramp's overshoot is not
noise but a measurement. How long the saved tokens hide the limit depends only on the ramp, the
bucket's depth and the share, so the time of the ramp's first throttle gives the share
(`metricsbuf._rate.solve_share`); the ramp's intervals are jittered so that no writer's request
always arrives first after the bucket empties (without jitter the writers that started first
kept finding the fresh tokens and solved 20-40% high).
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from collections.abc import Callable
from typing import Any

from _rate_variants import AbsoluteCubic, CommonStart, CutToAdmitted, Off, TargetShare

from metricsbuf._rate import AdaptiveRate
from metricsbuf.testing._rate_limit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def simulate(
    make: Callable[[Clock, float], Any],
    k: int,
    n: int,
    limit: float,
    seed: int,
    backoff: bool = True,
    random_throttle: float = 0.0,
    serial: bool = False,
    burst_seconds: float = 1.0,
    start_spread: float = 0.05,
    competitors: int = 0,
    host_size: int = 1,
) -> dict[str, Any]:
    """K writers of n requests each against TokenBucket(limit, limit); with ``random_throttle``
    > 0 there is no limit, and that share of requests is refused at random instead. With
    ``backoff`` False a throttled request only waits for its rate turn. With ``serial`` a
    writer's free slots take their first-send turns one at a time, as the sender's slots do
    (they wait for the rate's turn while holding the slots' lock), instead of each booking its
    turn at once; resends of throttled requests book their turns on their own in both cases."""
    rng = random.Random(seed)
    random.seed(seed)  # for the variants' own random sources (`_seeded`)
    clock = Clock()
    bucket = TokenBucket(limit, limit * burst_seconds, clock)
    events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
    seq = 0

    def at(t: float, fn: Callable[..., None], *args: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, fn, args))

    # limit / k: only the oracle variant reads it. The last ``competitors`` writers send with
    # no rate at all (the sender's default, or any client that only backs off per request).
    # With ``host_size`` > 1 the rated writers are in hosts of that many, each host's writers
    # sharing one rate (rate_scope "host", _host_rate.py), whose ramp starts for all of them.
    hosts = [make(clock, limit / k * host_size) for _ in range(-(-(k - competitors) // host_size))]
    for host in hosts:
        if hasattr(host, "senders"):
            host.senders = host_size
    rates = [hosts[w // host_size] for w in range(k - competitors)]
    rates += [Off(clock) for _ in range(competitors)]
    first_rates: list[float] = []  # each writer's rate right after its first throttle
    # Competitors never run out of work: the run ends when the rated writers are done.
    left, done = [n] * (k - competitors) + [100 * n] * competitors, [0] * k
    started: list[float | None] = [None] * k
    ended: list[float | None] = [None] * k
    counts = {"requests": 0, "throttled": 0, "early": 0}

    waiting, booked = [0] * k, [False] * k

    def slot_free(w: int) -> None:
        if serial:
            waiting[w] += 1
            book(w)
        elif left[w]:
            left[w] -= 1
            if started[w] is None:
                started[w] = clock.now
            at(clock.now + rates[w].delay(), send, w, 0)

    def book(w: int) -> None:  # serial: the next free slot takes its turn once the previous one sent
        if left[w] and waiting[w] and not booked[w]:
            left[w] -= 1
            waiting[w] -= 1
            booked[w] = True
            if started[w] is None:
                started[w] = clock.now
            at(clock.now + rates[w].delay(), first_send, w)

    def first_send(w: int) -> None:
        booked[w] = False
        send(w, 0)
        book(w)

    def send(w: int, throttles: int) -> None:
        counts["requests"] += 1
        ok = rng.random() >= random_throttle if random_throttle else bucket.take()
        at(clock.now + rng.uniform(0.005, 0.03), answer, w, clock.now, ok, throttles)

    competitor_stored: list[float] = []  # when each competitor request was stored

    def answer(w: int, sent: float, ok: bool, throttles: int) -> None:
        if ok:
            if w >= k - competitors:
                competitor_stored.append(clock.now)
            rates[w].succeeded(sent)
            done[w] += 1
            if done[w] == n:
                ended[w] = clock.now
            slot_free(w)
        else:
            counts["throttled"] += 1
            if clock.now < 102.0:  # within 2 s of the start (the clock starts at 100)
                counts["early"] += 1
            unlimited = rates[w].rate is None
            rates[w].throttled(sent)
            if unlimited and rates[w].rate is not None:
                first_rates.append(rates[w].rate)
            wait = min(10.0, 0.1 * 2**throttles) + rng.uniform(0, 0.1) if backoff else 0.0
            at(clock.now + wait, lambda: at(clock.now + rates[w].delay(), send, w, throttles + 1))

    for w in range(k):
        t0 = clock.now + rng.uniform(0, start_spread)
        for _ in range(4):
            at(t0, slot_free, w)
    while events and any(e is None for e in ended[: k - competitors]):
        t, _, fn, args = heapq.heappop(events)
        clock.now = t
        fn(*args)
    if competitors:
        ended[k - competitors :] = [clock.now] * competitors
    first = min(s for s in started if s is not None)
    span = max(e for e in ended if e is not None) - first
    writer_rates = [
        n / (e - s) for s, e in zip(started, ended, strict=True) if s is not None and e is not None
    ]
    mean_first = statistics.mean(first_rates) if first_rates else 0.0

    def competitor_rate(begun: float, end: float) -> float:  # one competitor's, in that time
        return sum(1 for t in competitor_stored if begun <= t <= end) / competitors / (end - begun)

    return {
        # the spread of the writers' rates right after their first throttle (coefficient of variation)
        "start_cv": statistics.pstdev(first_rates) / mean_first if mean_first else 0.0,
        "requests": counts["requests"],
        "span": span,
        "final_rates": [r.rate for r in rates],
        "goodput": sum(done) / (bucket.capacity + limit * span),
        "throttled": counts["throttled"] / counts["requests"],
        "early": counts["early"] / counts["requests"],
        "jain": sum(writer_rates) ** 2 / (k * sum(r * r for r in writer_rates)),
        "writer_rates": writer_rates,
        # with competitors: a rated writer's rate (its points / its own time) over a competitor's
        # in the same time, averaged over the rated writers; 1 is an equal share
        "rate_ratio": statistics.mean(
            writer_rates[w] / competitor_rate(begun, end)
            for w, (begun, end) in enumerate(zip(started, ended, strict=True))
            if w < k - competitors and begun is not None and end is not None
        )
        if competitors
        else 1.0,
    }


def _seeded(clock: Clock) -> AdaptiveRate:
    # The ramp's jitter draws from its own source, seeded from the run's seed (see `simulate`).
    return AdaptiveRate(clock, rng=random.Random(random.random()))


VARIANTS: dict[str, Callable[[Clock, float], Any]] = {
    "current": lambda c, share: _seeded(c),
    "previous": lambda c, share: CutToAdmitted(c),
    "off": lambda c, share: Off(c),
    "absolute_cubic": lambda c, share: AbsoluteCubic(c),
    "absolute_cubic_beta_0.9": lambda c, share: AbsoluteCubic(c, beta=0.9),
    "common_start": lambda c, share: CommonStart(c),
    # Small steps aimed at a share of refusals (TargetShare's docstring):
    "target_0.1_2%": lambda c, share: TargetShare(c, share, beta=0.1, target=0.02),
    "target_0.02_1%": lambda c, share: TargetShare(c, share, beta=0.02, target=0.01),
    "target_0.1_2%_aimd_0.3": lambda c, share: TargetShare(c, share, beta=0.1, target=0.02, additive=0.3),
    "target_0.3_1%_aimd_1": lambda c, share: TargetShare(c, share, beta=0.3, target=0.01, additive=1.0),
    # The same rules with an oracle's start (each writer begins at exactly limit / K):
    "oracle_start_target_0.1_2%": lambda c, share: TargetShare(c, share, 0.1, 0.02, fair_start=True),
    "oracle_start_target_0.02_1%": lambda c, share: TargetShare(c, share, 0.02, 0.01, fair_start=True),
}


def print_header(*columns: str) -> None:
    """A Markdown table's header row and its separator."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rate-limit", type=float, default=40.0)
    parser.add_argument("--writers", default="4,8", help="comma-separated K values (the main table)")
    parser.add_argument(
        "--host-size",
        type=int,
        default=1,
        help="writers per host sharing one rate (rate_scope 'host'; 1: each writer its own)",
    )
    parser.add_argument("--seconds", type=float, default=25.0, help="run length at the limit")
    parser.add_argument(
        "--burst-seconds",
        type=float,
        default=1.0,
        help="the bucket's depth in seconds of the limit (the fake service's default: 1); "
        "AdaptiveRate's solve assumes 1 (BUCKET_SECONDS), so other values show its sensitivity",
    )
    parser.add_argument(
        "--start-spread",
        type=float,
        default=0.05,
        help="seconds over which the writers start, at random (processes on a busy machine: more)",
    )
    parser.add_argument(
        "--no-backoff", action="store_true", help="a throttled request waits only for its rate turn"
    )
    parser.add_argument(
        "--serial",
        action="store_true",
        help="a writer's slots take their first-send turns one at a time, as the sender's do",
    )
    parser.add_argument(
        "--random-throttle",
        default="",
        help="comma-separated shares (e.g. 0.05,0.1): ONE writer of 6,000 requests, no limit, that share "
        "refused at random; prints how long it took and its rate at the end",
    )
    parser.add_argument(
        "--competitors",
        action="store_true",
        help="K = 4 and 8 writers of which 1, 2 or 4 send with no rate (off) and never run out of "
        "points; prints a rated writer's rate over a competitor's",
    )
    args = parser.parse_args()
    backoff = not args.no_backoff

    def seeded_runs(name: str, k: int, **options: Any) -> list[dict[str, Any]]:
        """One run per seed: K writers with about ``--seconds`` of work at the limit between them."""
        points = int(args.rate_limit * args.seconds / k)
        return [
            simulate(
                VARIANTS[name],
                k,
                points,
                args.rate_limit,
                seed,
                backoff,
                serial=args.serial,
                host_size=args.host_size,
                **options,
            )
            for seed in range(1, args.seeds + 1)
        ]

    if args.competitors:
        print_header(
            "variant",
            "K",
            "of which competitors (off)",
            "a rated writer's rate / a competitor's (mean, min; 1 = equal)",
            "seconds until the rated writers are done (mean)",
        )
        for name in args.variants.split(","):
            for k, competitors in ((4, 1), (4, 2), (8, 4)):
                runs = seeded_runs(name, k, competitors=competitors)
                ratios = [r["rate_ratio"] for r in runs]
                print(
                    f"| {name} | {k} | {competitors} | {statistics.mean(ratios):.2f}, {min(ratios):.2f} "
                    f"| {statistics.mean(r['span'] for r in runs):.0f} |"
                )
        return
    if args.random_throttle:
        print_header(
            "variant",
            "refused at random",
            "seconds for 6,000 requests (mean, max)",
            "rate at the end (mean, min)",
        )
        for name in args.variants.split(","):
            for share in (float(x) for x in args.random_throttle.split(",")):
                runs = [
                    simulate(VARIANTS[name], 1, 6000, args.rate_limit, seed, backoff, share, args.serial)
                    for seed in range(1, args.seeds + 1)
                ]
                spans = [r["span"] for r in runs]
                ends = [r["final_rates"][0] for r in runs]
                end = "no limit" if None in ends else f"{statistics.mean(ends):.1f}, {min(ends):.1f}"
                print(f"| {name} | {share:g} | {statistics.mean(spans):.1f}, {max(spans):.1f} | {end} |")
        return
    print_header(
        "variant",
        "K",
        "goodput (mean, min)",
        "throttled share (mean, max)",
        "of which in the first 2 s (mean)",
        "Jain (mean, min)",
        "spread of the first rates (CV, mean)",
    )
    for name in args.variants.split(","):
        for k in (int(x) for x in args.writers.split(",")):
            runs = seeded_runs(name, k, burst_seconds=args.burst_seconds, start_spread=args.start_spread)
            g, t, e, j, cv = (
                [r[key] for r in runs] for key in ("goodput", "throttled", "early", "jain", "start_cv")
            )
            print(
                f"| {name} | {k} | {statistics.mean(g):.3f}, {min(g):.3f} | {statistics.mean(t):.3f}, "
                f"{max(t):.3f} | {statistics.mean(e):.3f} | {statistics.mean(j):.3f}, {min(j):.3f} | "
                f"{statistics.mean(cv):.2f} |"
            )


if __name__ == "__main__":
    main()
