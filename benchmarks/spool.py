"""What the on-disk spool costs: producer cost with and without it, and write amplification.

    python benchmarks/spool.py            # writes benchmarks/SPOOL_RESULTS.md
    python benchmarks/spool.py --quick    # a smoke run; prints only

The same workload as benchmarks/run.py's (N points over four metric names, one step of four
points per loop iteration, a yield to the event loop after each step) runs against an
in-process client that answers at once, so that what differs between the two loggers is the
spool alone. The two configurations alternate over the repeats, and every figure is the median.

- producer cost: time spent inside ``await metrics.log(...)`` per point;
- end to end: from the first call until the last point is acknowledged (and, with a spool,
  its row deleted), per point;
- write amplification: bytes this process passed to write(2) (``wchar`` in /proc/self/io)
  per point, which counts the WAL, the checkpoints into the database file and the deletions;
  ``write_bytes`` (what reached the block device) where the kernel reports it;
- footprint: bytes of live pages per pending point, from an offline run that keeps every point.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import metricsbuf
from metricsbuf import MetricsLogger
from metricsbuf._spool import Spool

NAMES = ("train:loss", "train:accuracy", "learning_rate", "grad_norm")
RESULTS = Path(__file__).resolve().parent / "SPOOL_RESULTS.md"


class InstantClient:
    """Acknowledges every request after one trip through the event loop."""

    def __init__(self) -> None:
        self.points = 0

    async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.points += len(kwargs["MetricData"])
        return {"Errors": []}


def io_counters() -> dict[str, int]:
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return {}
    return {key: int(value) for key, value in (line.split(": ") for line in text.splitlines())}


async def one_run(points: int, spool_dir: str | None) -> dict[str, float]:
    client = InstantClient()
    steps = points // len(NAMES)
    gc.collect()
    io_before = io_counters()
    inside = 0.0
    started = time.perf_counter()
    async with MetricsLogger("bench-spool", client=client, spool_dir=spool_dir, max_in_flight=8) as metrics:
        for step in range(steps):
            t0 = time.perf_counter()
            for name in NAMES:
                await metrics.log(name, 0.5, step=step)
            inside += time.perf_counter() - t0
            await asyncio.sleep(0)
        await metrics.flush()
    elapsed = time.perf_counter() - started
    io_after = io_counters()
    assert metrics.stats.delivered == steps * len(NAMES) == client.points, metrics.stats
    n = steps * len(NAMES)
    result = {"producer_us": inside / n * 1e6, "end_to_end_us": elapsed / n * 1e6}
    if io_before and io_after:
        result["wchar_per_point"] = (io_after["wchar"] - io_before["wchar"]) / n
        result["write_bytes_per_point"] = (io_after["write_bytes"] - io_before["write_bytes"]) / n
    return result


async def footprint(points: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        async with MetricsLogger("bench-spool", spool_dir=folder, offline=True) as metrics:
            for step in range(points // len(NAMES)):
                await metrics.log_many(dict.fromkeys(NAMES, 0.5), step=step)
        spool = Spool.open(folder, read_only=True)
        try:
            return spool.used_bytes() / metrics.stats.pending
        finally:
            spool.close()


async def main(points: int, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"memory only": [], "spool": []}
    await one_run(2_000, None)  # warm-up: imports, first-call costs
    for repeat in range(repeats):
        order = ["memory only", "spool"] if repeat % 2 == 0 else ["spool", "memory only"]
        for label in order:
            with tempfile.TemporaryDirectory() as folder:
                result = await one_run(points, folder if label == "spool" else None)
            runs[label].append(result)
            print(
                f"  {label:<12} r{repeat}: " + "  ".join(f"{k} {v:.2f}" for k, v in result.items()),
                flush=True,
            )
    medians = {
        label: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for label, results in runs.items()
    }
    return {"medians": medians, "runs": runs, "footprint": await footprint(points)}


def report(points: int, repeats: int, results: dict[str, Any]) -> str:
    memory, spool = results["medians"]["memory only"], results["medians"]["spool"]
    ratio = spool["producer_us"] / memory["producer_us"]
    lines = [
        "# The spool's cost",
        "",
        "Generated by `python benchmarks/spool.py`; nothing here is typed in by hand.",
        "",
        f"- run at {datetime.now(timezone.utc).isoformat(timespec='seconds')} on {platform.platform()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"metricsbuf {metricsbuf.__version__}",
        f"- {points} points per run over {len(NAMES)} metric names, {repeats} repeats per configuration "
        "(alternating), medians; an in-process client that acknowledges at once",
        "",
        "| figure | memory only | with spool_dir | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| producer cost per point (time inside `await log()`) | {memory['producer_us']:.2f} us "
        f"| {spool['producer_us']:.2f} us | {ratio:.2f}x |",
        f"| end to end per point (until acknowledged) | {memory['end_to_end_us']:.2f} us "
        f"| {spool['end_to_end_us']:.2f} us | {spool['end_to_end_us'] / memory['end_to_end_us']:.2f}x |",
    ]
    if "wchar_per_point" in spool:
        lines.append(
            "| bytes written per point (write(2): WAL, checkpoints, deletions) "
            f"| {memory['wchar_per_point']:.0f} | {spool['wchar_per_point']:.0f} | |"
        )
        lines.append(
            f"| bytes reaching the block device per point | {memory['write_bytes_per_point']:.0f} "
            f"| {spool['write_bytes_per_point']:.0f} | |"
        )
    lines += [
        f"| live spool bytes per pending point (offline run) | | {results['footprint']:.0f} | |",
        "",
        "Target: producer cost with a spool at most 2x without it: "
        f"**{'met' if ratio <= 2.0 else 'missed'}** ({ratio:.2f}x in this run).",
        "",
        "Every run:",
        "",
    ]
    for label, runs in results["runs"].items():
        for i, run in enumerate(runs):
            lines.append(f"- {label} r{i}: " + ", ".join(f"{k} {v:.2f}" for k, v in run.items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--points", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="4,000 points, 2 repeats, print only")
    args = parser.parse_args()
    points, repeats = (4_000, 2) if args.quick else (args.points, args.repeats)
    outcome = asyncio.run(main(points, repeats))
    text = report(points, repeats, outcome)
    print(text)
    if not args.quick:
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}", file=sys.stderr)
