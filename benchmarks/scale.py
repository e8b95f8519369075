"""Many writers against one shared rate limit: metricsbuf's adaptive rate vs botocore's adaptive mode.

K writer processes (K = 4 and K = 8 by default), each logging as fast as it can a fixed number of
points to a trial component of its own, all against ONE `FakeMetricsServiceProcess` on 127.0.0.1
with a shared token-bucket ``rate_limit`` (requests/s) low enough that the run is limited by it.
Contenders, run in the same invocation, one after the other against a fresh service:

- ``metricsbuf``: ``MetricsLogger(tc, endpoint_url=..., region_name=...)`` with every other option
  at its default (the adaptive rate is off by default); the writer logs its points
  (``await log``), then ``await flush()``.
- ``metricsbuf_adaptive``: the same with ``adaptive_rate=True``: the experimental adaptive send
  rate (_rate.py), shared by the writers as by the loggers of one host (the default
  ``rate_scope="host"``, _host_rate.py: the writer processes run on one machine, like the ranks
  of a job on one instance).
- ``metricsbuf_adaptive_logger``: ``adaptive_rate=True, rate_scope="logger"``: each writer learns
  its share on its own, as loggers on different hosts do.
- ``botocore_adaptive``: hand-batched aiobotocore, batches of 10 points, 4 concurrent requests
  (metricsbuf's default ``max_in_flight``), client made with
  ``AioConfig(retries={"mode": "adaptive"}, parameter_validation=False)``; a request whose
  retries run out loses its points (counted as failed).

Figures (every one from the service's own counters and the writers' clocks):

- capacity = the most points the limit admits over the run: (burst + rate_limit x T) x 10, T
  from the first writer's start to the last writer's end; goodput = points stored / capacity;
- throttled share = requests answered ThrottlingException by the limit / all requests;
- lost = points logged and not stored; failed = points the writer was told failed for good;
- Jain's fairness index over the writers' rates (points stored / the writer's own duration).

    python benchmarks/scale.py                     # K = 4 and 8, writes benchmarks/SCALE_RESULTS.md and .png
    python benchmarks/scale.py --chart-only        # redraws SCALE_RESULTS.png from SCALE_RESULTS.md's runs
    python benchmarks/scale.py --quick             # smaller, prints only
    python benchmarks/scale.py --arithmetic        # the scale study's arithmetic (no run), see SCALE.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from metricsbuf.testing import FakeMetricsServiceProcess

REGION = "us-east-1"
HERE = Path(__file__).resolve().parent
ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
# The MetricsLogger options of each metricsbuf contender (the others at their defaults).
METRICSBUF_OPTIONS: dict[str, dict[str, Any]] = {
    "metricsbuf": {},
    "metricsbuf_adaptive": {"adaptive_rate": True},
    "metricsbuf_adaptive_logger": {"adaptive_rate": True, "rate_scope": "logger"},
}
GOALS = {
    "goodput": 0.95,
    "throttled_share": 0.05,
    "jain": 0.95,
}


# ---- the writers (each in its own process) ---------------------------------------------------


async def _metricsbuf_writer(
    endpoint: str, tc: str, n: int, go: Any, options: dict[str, Any], rate_directory: str
) -> dict[str, Any]:
    from metricsbuf import MetricsLogger, _host_rate

    # A directory of this run's own for the shared rate's state, as a new job finds no state
    # from the run before (one left by another job is started afresh after a minute of quiet).
    _host_rate.STATE_DIRECTORY = rate_directory
    async with MetricsLogger(tc, endpoint_url=endpoint, region_name=REGION, **options) as metrics:
        await asyncio.to_thread(go.wait)
        started = time.time()
        for step in range(n):
            await metrics.log("loss", float(step), step=step)
        await metrics.flush()
        ended = time.time()
        stats = metrics.stats
        rate = metrics._sender.rate
        extra = {"cuts": rate.cuts, "final_rate": rate.rate}
    return {
        "started": started,
        "ended": ended,
        "logged": n,
        "failed": stats.failed,
        "requests": stats.requests,
        **extra,
    }


async def _botocore_writer(endpoint: str, tc: str, n: int, go: Any) -> dict[str, Any]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(retries={"mode": "adaptive"}, parameter_validation=False)
    session = get_session()
    failed = 0
    requests = 0
    async with session.create_client(
        "sagemaker-metrics", region_name=REGION, endpoint_url=endpoint, config=config
    ) as client:
        slots = asyncio.Semaphore(4)

        async def send(batch: list[dict[str, Any]]) -> None:
            nonlocal failed, requests
            try:
                requests += 1
                await client.batch_put_metrics(TrialComponentName=tc, MetricData=batch)
            except Exception:  # noqa: BLE001  (retries ran out: these points are lost)
                failed += len(batch)
            finally:
                slots.release()

        await asyncio.to_thread(go.wait)
        started = time.time()
        tasks = []
        batch: list[dict[str, Any]] = []
        for step in range(n):
            batch.append({"MetricName": "loss", "Value": float(step), "Step": step, "Timestamp": time.time()})
            if len(batch) == 10 or step == n - 1:
                await slots.acquire()
                tasks.append(asyncio.ensure_future(send(batch)))
                batch = []
        await asyncio.gather(*tasks)
        ended = time.time()
    return {"started": started, "ended": ended, "logged": n, "failed": failed, "calls": requests}


def _writer_main(
    contender: str, endpoint: str, tc: str, n: int, go: Any, ready: Any, out: Any, rate_directory: str
) -> None:
    os.environ.update(ENV)
    try:

        async def main() -> dict[str, Any]:
            ready.release()
            if contender == "botocore_adaptive":
                return await _botocore_writer(endpoint, tc, n, go)
            options = METRICSBUF_OPTIONS[contender]
            return await _metricsbuf_writer(endpoint, tc, n, go, options, rate_directory)

        out.put((tc, asyncio.run(main())))
    except BaseException as exc:  # noqa: BLE001
        out.put((tc, {"error": repr(exc)}))


# ---- one run ---------------------------------------------------------------------------------


def jain(rates: list[float]) -> float:
    return sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates)) if rates else 0.0


def run_one(contender: str, writers: int, points: int, rate_limit: float, timeout: float) -> dict[str, Any]:
    burst = max(1, int(rate_limit))  # the service's default: one second's worth
    ctx = mp.get_context("spawn")
    rate_directory = tempfile.mkdtemp(prefix="scale-rate-")
    with FakeMetricsServiceProcess(rate_limit=rate_limit, rate_limit_burst=burst) as service:
        go = ctx.Event()
        ready = ctx.Semaphore(0)
        out: Any = ctx.Queue()
        procs = [
            ctx.Process(
                target=_writer_main,
                args=(contender, service.endpoint_url, f"writer-{i}", points, go, ready, out, rate_directory),
            )
            for i in range(writers)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.acquire(timeout=60)
        time.sleep(1.0)  # the loggers' clients are made; the bucket is full again
        service.clear()  # also refills the bucket
        go.set()
        results: dict[str, dict[str, Any]] = {}
        deadline = time.time() + timeout
        while len(results) < writers and time.time() < deadline:
            try:
                tc, result = out.get(timeout=max(0.1, deadline - time.time()))
            except Exception:  # noqa: BLE001  (queue.Empty: the timeout)
                break
            results[tc] = result
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        state = service.state()
    shutil.rmtree(rate_directory, ignore_errors=True)
    errors = {tc: r["error"] for tc, r in results.items() if "error" in r}
    stored = Counter(p.trial_component for p in state.points)
    distinct = Counter(
        p.trial_component for p in {(p.trial_component, p.step): p for p in state.points}.values()
    )
    ok = [r for r in results.values() if "error" not in r]
    start = min(r["started"] for r in ok)
    end = max(r["ended"] for r in ok)
    span = end - start
    capacity = (burst + rate_limit * span) * 10
    counts = state.counts
    rates = [
        distinct[tc] / (r["ended"] - r["started"]) for tc, r in sorted(results.items()) if "error" not in r
    ]
    logged = writers * points
    return {
        "contender": contender,
        "writers": writers,
        "points_each": points,
        "rate_limit": rate_limit,
        "burst": burst,
        "seconds": span,
        "stored": sum(distinct.values()),
        "stored_with_duplicates": sum(stored.values()),
        "logged": logged,
        "lost": logged - sum(distinct.values()),
        "failed": sum(r.get("failed", 0) for r in ok),
        "requests": counts["requests"],
        "rate_limited": counts["rate_limited"],
        "throttled_share": counts["rate_limited"] / max(1, counts["requests"]),
        "goodput": sum(distinct.values()) / capacity,
        "jain": jain(rates),
        "writer_rates": [round(r, 1) for r in rates],
        "writer_seconds": [
            round(r["ended"] - r["started"], 2) for _, r in sorted(results.items()) if "error" not in r
        ],
        "cuts": [r.get("cuts") for _, r in sorted(results.items())],
        "errors": errors,
        "missing_writers": writers - len(results),
    }


def run_in_process(contender: str, writers: int, points: int, rate_limit: float) -> dict[str, Any]:
    """The same writers as loggers in ONE process and event loop, against one
    `InMemoryMetricsClient(rate_limit=R)` (no HTTP, no other processes): what the rate control
    does when every writer starts at the same instant and gets the CPU alike."""
    from metricsbuf import MetricsLogger
    from metricsbuf.testing import InMemoryMetricsClient

    burst = max(1, int(rate_limit))

    async def main() -> dict[str, Any]:
        client = InMemoryMetricsClient(
            rate_limit=rate_limit, rate_limit_burst=burst, parameter_validation=False
        )
        spans: dict[str, tuple[float, float]] = {}
        failed = 0
        cuts: dict[str, int] = {}

        async def writer(tc: str) -> None:
            nonlocal failed
            async with MetricsLogger(tc, client=client, **METRICSBUF_OPTIONS[contender]) as metrics:
                started = time.time()
                for step in range(points):
                    await metrics.log("loss", float(step), step=step)
                await metrics.flush()
                spans[tc] = (started, time.time())
                failed += metrics.stats.failed
                cuts[tc] = metrics._sender.rate.cuts

        await asyncio.gather(*(writer(f"writer-{i}") for i in range(writers)))
        stored = Counter(
            p.trial_component for p in {(p.trial_component, p.step): p for p in client.points}.values()
        )
        start = min(a for a, _ in spans.values())
        span = max(b for _, b in spans.values()) - start
        rates = [stored[tc] / (b - a) for tc, (a, b) in sorted(spans.items())]
        counts = client.counts
        return {
            "contender": contender,
            "mode": "in-process",
            "writers": writers,
            "points_each": points,
            "rate_limit": rate_limit,
            "burst": burst,
            "seconds": span,
            "stored": sum(stored.values()),
            "logged": writers * points,
            "lost": writers * points - sum(stored.values()),
            "failed": failed,
            "requests": counts["requests"],
            "rate_limited": counts["rate_limited"],
            "throttled_share": counts["rate_limited"] / max(1, counts["requests"]),
            "goodput": sum(stored.values()) / ((burst + rate_limit * span) * 10),
            "jain": jain(rates),
            "writer_rates": [round(r, 1) for r in rates],
            "cuts": [cuts[tc] for tc in sorted(cuts)],
        }

    return asyncio.run(main())


# ---- the report ------------------------------------------------------------------------------


def goals(m: dict[str, Any], other: dict[str, Any] | None) -> dict[str, bool]:
    met = {
        f"goodput >= {GOALS['goodput']}": m["goodput"] >= GOALS["goodput"],
        f"throttled share <= {GOALS['throttled_share']}": m["throttled_share"] <= GOALS["throttled_share"],
        "zero points lost or failed": m["lost"] == 0 and m["failed"] == 0,
        f"Jain's index >= {GOALS['jain']}": m["jain"] >= GOALS["jain"],
    }
    if other is not None:
        met["goodput above botocore adaptive (same run)"] = m["goodput"] > other["goodput"]
    return met


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        return "?"


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    import aiobotocore
    import botocore

    lines = [
        "# Scale: many writers against one shared rate limit",
        "",
        "Written by `python benchmarks/scale.py` (do not edit by hand). "
        f"Commit {_git('rev-parse', '--short', 'HEAD')}"
        f"{' (with uncommitted changes)' if _git('status', '--porcelain', '--', '../metricsbuf') else ''}, "
        f"Python {platform.python_version()}, aiobotocore {aiobotocore.__version__}, botocore "
        f"{botocore.__version__}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Each writer is its own process and logs its points as fast as it can; all share one "
        "`FakeMetricsServiceProcess(rate_limit=R, rate_limit_burst=R)` on 127.0.0.1. Capacity = "
        "(burst + R x T) x 10 points, T from the first writer's start to the last writer's end. "
        "Goodput = distinct points stored / capacity. Throttled share = requests refused by the "
        "limit / all requests. Jain's index over the writers' rates (points stored / own duration). "
        "metricsbuf runs with default options (logs, then `flush()`; the adaptive rate is off by "
        "default); metricsbuf_adaptive is the same with `adaptive_rate=True` (experimental), "
        'which the writers share as the loggers of one host do (the default `rate_scope="host"`); '
        'metricsbuf_adaptive_logger has `rate_scope="logger"`: each writer learns its share on its '
        "own, as loggers on different hosts do; botocore_adaptive is "
        'hand-batched aiobotocore with `retries={"mode": "adaptive"}` and 4 concurrent requests.',
        "",
        "| K | points each | R (req/s) | contender | T (s) | goodput | throttled share | requests | "
        "lost | failed | Jain | writer rates (points/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in (m for m in runs if m.get("mode") != "in-process"):
        lines.append(
            f"| {m['writers']} | {m['points_each']} | {m['rate_limit']:g} | {m['contender']} | "
            f"{m['seconds']:.1f} | {m['goodput']:.3f} | {m['throttled_share']:.3f} | {m['requests']} | "
            f"{m['lost']} | {m['failed']} | {m['jain']:.3f} | {', '.join(map(str, m['writer_rates']))} |"
        )
    in_process = [m for m in runs if m.get("mode") == "in-process"]
    if in_process:
        lines += [
            "",
            "## The same writers in one process",
            "",
            "K loggers in ONE process and event loop against one `InMemoryMetricsClient(rate_limit=R, "
            "rate_limit_burst=R)` (no HTTP): every writer starts at the same instant and gets the CPU "
            "alike. Not a goal line: it separates what the rate control does from what K processes "
            "starting one after the other on 2 shared cores add.",
            "",
            "| K | points each | R (req/s) | contender | T (s) | goodput | throttled share | requests | "
            "lost | failed | Jain | writer rates (points/s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in in_process:
            lines.append(
                f"| {m['writers']} | {m['points_each']} | {m['rate_limit']:g} | {m['contender']} | "
                f"{m['seconds']:.1f} | {m['goodput']:.3f} | {m['throttled_share']:.3f} | {m['requests']} | "
                f"{m['lost']} | {m['failed']} | {m['jain']:.3f} | {', '.join(map(str, m['writer_rates']))} |"
            )
    chart = Path(args.out).with_suffix(".png").name
    lines += ["", "## Goals (the metricsbuf contenders)", "", f"Chart of the table above: {chart}.", ""]
    for m in runs:
        if not m["contender"].startswith("metricsbuf") or m.get("mode") == "in-process":
            continue
        other = next(
            (
                o
                for o in runs
                if o["contender"] == "botocore_adaptive"
                and o["writers"] == m["writers"]
                and o.get("repeat") == m.get("repeat")
            ),
            None,
        )
        met = goals(m, other)
        lines.append(
            f"- {m['contender']}, K = {m['writers']}, R = {m['rate_limit']:g} (repeat {m.get('repeat', 0)}): "
            + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in met.items())
        )
    lines += ["", "## Every run (JSON)", "", "```json", *(json.dumps(m) for m in runs), "```", ""]
    return "\n".join(lines)


CONTENDER_COLORS = {
    "metricsbuf": "#7f7f7f",
    "metricsbuf_adaptive": "#1f77b4",
    "metricsbuf_adaptive_logger": "#17becf",
    "botocore_adaptive": "#ff7f0e",
}


def write_chart(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Goodput, throttled share and Jain's index per K and contender (the process runs): a bar
    for the mean over the repeats, a dot for each run, and the goal as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    process = [m for m in runs if m.get("mode") != "in-process"]
    ks = sorted({m["writers"] for m in process})
    contenders = [c for c in CONTENDER_COLORS if any(m["contender"] == c for m in process)]
    panels = (
        ("goodput", "goodput (share of the limit's capacity)", GOALS["goodput"]),
        ("throttled_share", "throttled share of requests", GOALS["throttled_share"]),
        ("jain", "Jain's index over the writers' rates", GOALS["jain"]),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    width = 0.8 / max(1, len(contenders))
    for ax, (key, label, goal) in zip(axes, panels, strict=True):
        for i, contender in enumerate(contenders):
            for j, k in enumerate(ks):
                values = [m[key] for m in process if m["contender"] == contender and m["writers"] == k]
                if not values:
                    continue
                x = j + (i - (len(contenders) - 1) / 2) * width
                mean = sum(values) / len(values)
                ax.bar(x, mean, width, color=CONTENDER_COLORS[contender], label=contender if j == 0 else None)
                ax.plot([x] * len(values), values, "k.", markersize=4)
                ax.annotate(f"{mean:.3f}", (x, mean), ha="center", va="bottom", fontsize=7)
        ax.axhline(goal, color="k", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(ks)))
        ax.set_xticklabels([f"K = {k} writers" for k in ks])
        ax.set_title(f"{label}; goal {goal:g} (dashed)", fontsize=9)
        ax.grid(axis="y", alpha=0.25)
    axes[0].set_ylim(0.5, 1.02)
    axes[2].set_ylim(0.5, 1.02)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def runs_from_results(path: Path) -> list[dict[str, Any]]:
    """The runs recorded in a results file's JSON block (one object per line)."""
    text = path.read_text()
    block = text[text.index("```json") + len("```json") : text.rindex("```")]
    return [json.loads(line) for line in block.splitlines() if line.strip()]


def requests_per_second(points_per_second: float, flush_interval: float, batch: int = 10) -> float:
    """One logger's steady request rate: full batches, or one partial batch per flush_interval."""
    if points_per_second * flush_interval >= batch:
        return points_per_second / batch
    return min(points_per_second, 1.0 / flush_interval)


def arithmetic(args: argparse.Namespace) -> str:
    """The scale study's arithmetic: points/s -> requests/s -> load on an assumed service limit."""
    from metricsbuf._rate import MIN_RATE

    hosts, ranks, metrics = args.hosts, args.ranks, args.metrics
    limits = [float(x) for x in args.limits.split(",")]
    layouts = (("every rank", hosts * ranks), ("one rank per host", hosts), ("rank zero only", 1))
    lines = [
        f"{hosts} hosts x {ranks} ranks, {metrics} metrics per step each, flush_interval "
        f"{args.flush_interval:g} s, 10 points per request. Service limit L (requests/s, shared by the "
        f"account; not published: assumed) = {', '.join(f'{x:g}' for x in limits)}.",
        "",
        "| who logs | loggers | step (s) | points/s | requests/s | "
        + " | ".join(f"x L={x:g}" for x in limits)
        + " | share per logger at "
        + ", ".join(f"L={x:g}" for x in limits)
        + " (req/s) |",
        "|---|---|---|---|---|" + "---|" * len(limits) + "---|",
    ]
    for who, loggers in layouts:
        for step in (float(x) for x in args.steps.split(",")):
            pps = metrics / step
            total_pps = pps * loggers
            rps = requests_per_second(pps, args.flush_interval) * loggers
            lines.append(
                f"| {who} | {loggers} | {step:g} | {total_pps:,.0f} | {rps:,.1f} | "
                + " | ".join(f"{rps / x:,.2f}" for x in limits)
                + " | "
                + ", ".join(f"{x / loggers:.3g}" for x in limits)
                + " |"
            )
    lines += [
        "",
        f"x L = offered requests/s over the limit (above 1: overload). The adaptive rate never goes "
        f"below {MIN_RATE:g} request/s per logger (it keeps probing), so {MIN_RATE:g} x loggers must "
        "stay under L for it to settle.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writers", default="4,8", help="comma-separated K values (default 4,8)")
    parser.add_argument("--points", type=int, default=0, help="points per writer (default: 8000 / K x ...)")
    parser.add_argument("--rate-limit", type=float, default=40.0, help="shared requests/s (default 40)")
    parser.add_argument("--seconds", type=float, default=25.0, help="target run length at the limit")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--contenders", default="metricsbuf,metricsbuf_adaptive,metricsbuf_adaptive_logger,botocore_adaptive"
    )
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--arithmetic", action="store_true", help="print the scale study's arithmetic")
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--metrics", type=int, default=20, help="metrics logged per step per rank")
    parser.add_argument("--steps", default="0.1,0.5,2", help="seconds per training step")
    parser.add_argument("--limits", default="10,50,200", help="assumed service limits, requests/s")
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument("--no-in-process", action="store_true", help="skip the one-process runs")
    parser.add_argument("--quick", action="store_true", help="10 s runs; print only")
    parser.add_argument("--out", default=str(HERE / "SCALE_RESULTS.md"))
    parser.add_argument(
        "--chart-only",
        action="store_true",
        help="no run: redraw the chart (--out with .png) from the JSON block of the results file --out",
    )
    args = parser.parse_args()
    if args.arithmetic:
        print(arithmetic(args))
        return
    out = Path(args.out)
    chart_title = f"benchmarks/scale.py: K writer processes, one limit of {args.rate_limit:g} requests/s"
    if args.chart_only:
        stamp = out.read_text().splitlines()[2]  # the "Written by ... Commit ..." line
        write_chart(runs_from_results(out), out.with_suffix(".png"), f"{chart_title}\n{stamp}")
        print(f"wrote {out.with_suffix('.png')}")
        return
    if args.quick:
        args.seconds = 10.0
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for k in (int(x) for x in args.writers.split(",")):
            # Enough points that the limit, not the writers, sets the pace for about `seconds`.
            points = args.points or int(args.rate_limit * args.seconds * 10 / k)
            for contender in args.contenders.split(","):
                m = run_one(contender, k, points, args.rate_limit, args.timeout)
                m["repeat"] = repeat
                runs.append(m)
                print(json.dumps(m), flush=True)
            if not args.no_in_process:
                # The in-memory client has no endpoint to share a host's rate for: each logger
                # has a rate of its own here, as with rate_scope "logger".
                for contender in ("metricsbuf", "metricsbuf_adaptive_logger"):
                    m = run_in_process(contender, k, points, args.rate_limit)
                    m["repeat"] = repeat
                    runs.append(m)
                    print(json.dumps(m), flush=True)
    text = report(runs, args)
    if args.quick:
        print(text)
    else:
        out.write_text(text)
        write_chart(runs, out.with_suffix(".png"), f"{chart_title}\n{text.splitlines()[2]}")
        print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
