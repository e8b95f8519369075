"""SyncMetricsLogger in a plain synchronous training loop, against the SageMaker SDK's Run.log_metric path.

    pip install -e ".[bench]"
    python benchmarks/sync.py            # about 5 minutes; rewrites benchmarks/SYNC_RESULTS.md
    python benchmarks/sync.py --quick    # a smoke run; prints only

Each contender runs in its own worker process (benchmarks/_sync_worker.py, where the loop is
described), against benchmarks/_server.py in a process of its own at 0 ms and at 20 ms of added
latency. Figures:

- caller's cost per point: wall time inside the logging calls / N (for the SDK, with its final
  close()): for metricsbuf that includes waits for the GIL while its loop thread holds it;
- GIL wait: a ticker thread sleeps 1 ms at a time; how late each wake-up is. Per run the longest;
  the target is checked on the median over repeats of each run's longest. A floor is measured in
  the same run: the ticker alone, and beside the loop's ``time.sleep(0)`` steps with no logging;
- the logger's loop thread CPU time over the window (psutil), to explain the GIL waits;
- diagnostic repeats of metricsbuf at 0 ms with ``sys.setswitchinterval(0.001)``, without
  the GIL pause its loop thread takes before each heavy step of a send (``StepPacer.gil_pause``),
  and with the sending in another process (an offline spool in the loop, then ``metricsbuf sync``):
  what the GIL goal would need.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _report  # noqa: E402
import _workloads as w  # noqa: E402
from run import Server, Worker  # noqa: E402

from metricsbuf import _sync  # noqa: E402

RESULTS = HERE / "SYNC_RESULTS.md"
MB, SDK = "sync_metricsbuf", "sagemaker_sdk"
LABEL = {MB: "metricsbuf.SyncMetricsLogger", SDK: "SageMaker SDK `_MetricsManager`"}
# Targets (issue "reach", section 1)
FACTOR_VS_SDK_20MS = 500.0
PRODUCER_MAX_US = 2.0
GIL_WAIT_MAX = 0.005
DIAGNOSTIC_SWITCH_INTERVAL = 0.001


def _say(text: str) -> None:
    print(text, flush=True)


def _us_per_point(run: dict[str, Any], key: str = "producer_time") -> float:
    return float(run[key]) / float(run["n"]) * 1e6


def one_line(label: str, run: dict[str, Any]) -> str:
    return (
        f"{label}: {_us_per_point(run):.3g} us/pt in the calls, "
        f"longest GIL wait {run['gil_max'] * 1e3:.2f} ms (p99 {run['gil_p99'] * 1e3:.2f}), "
        f"loop thread CPU {run['loop_thread_cpu'] / run['elapsed']:.0%} of {run['elapsed']:.2f} s, "
        f"stored {run['server']['stored']}/{run['n']}"
    )


def measure(
    workers: dict[str, Worker],
    server: Server,
    label: str,
    repeats: dict[str, int],
    n: int,
    switch_interval: float | None = None,
    gil_pause: float | None = None,
    runner: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in repeats}
    for rep in range(max(repeats.values())):
        order = sorted(repeats, reverse=rep % 2 == 1)  # alternate who goes first
        for contender in order:
            if rep >= repeats[contender]:
                continue
            tc = f"bench-sync-{label}-{contender.replace('_', '-')}-r{rep}".replace(".", "-").lower()
            reply = workers[contender].call(
                cmd="run",
                endpoint=server.url,
                tc=tc,
                n=n,
                switch_interval=switch_interval,
                gil_pause=gil_pause,
                runner=runner,
            )
            if not reply.get("ok"):
                _say(f"  ERROR {label} {contender} r{rep}: {reply.get('error')}")
                continue
            run = reply["result"]
            run["n"] = n
            run["server"] = server.state(tc)
            runs[contender].append(run)
            _say(f"  {label} {contender} r{rep}: " + one_line("", run)[2:])
    return runs


FLOORS = ("alone", "loop", "python thread", "CPU only")
FLOOR_LABEL = {
    "alone": "the ticker alone",
    "loop": "beside the loop's sleep(0) steps",
    "python thread": "beside a thread computing in pure Python",
    "CPU only": "beside a thread computing without the GIL (hashlib)",
}


def floors(worker: Worker) -> dict[str, dict[str, Any]]:
    return {mode: worker.call(cmd="floor", seconds=2.0, mode=mode).get("result", {}) for mode in FLOORS}


def idle_cost(worker: Worker, server: Server, repeats: int, n: int) -> list[float]:
    """SyncMetricsLogger's log() with its loop thread idle (an endpoint that never answers), us per point."""
    costs = []
    for rep in range(repeats):
        reply = worker.call(
            cmd="run", runner="sync_metricsbuf_idle", endpoint=server.url, tc=f"bench-sync-idle-r{rep}", n=n
        )
        if reply.get("ok"):
            costs.append(reply["result"]["producer_time"] / n * 1e6)
    return costs


CALL_FLOORS = {
    "floor_least_alone": "the least a validating log() does (read the clock, check the point, append a "
    "tuple to a deque), with no logger in the process",
    "floor_empty_beside_sender": "an empty function with log()'s signature, beside a SyncMetricsLogger "
    "sending a backlog flat out",
    "floor_least_beside_sender": "the least a validating log() does, beside a SyncMetricsLogger sending "
    "a backlog flat out",
}


def call_floors(worker: Worker, server: Server, repeats: int, n: int) -> dict[str, list[dict[str, Any]]]:
    """The caller's cost of stand-ins for log() in the same loop (_sync_worker.run_call_floor)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CALL_FLOORS}
    for rep in range(repeats):
        for name in CALL_FLOORS:
            reply = worker.call(
                cmd="run",
                runner=name,
                endpoint=server.url,
                tc=f"bench-sync-{name}-r{rep}".replace("_", "-"),
                n=n,
            )
            if reply.get("ok"):
                run = reply["result"]
                run["n"] = n
                runs[name].append(run)
                _say(
                    f"  {name} r{rep}: {_us_per_point(run):.3g} us/pt in the calls, loop thread CPU "
                    f"{run['loop_thread_cpu'] / run['elapsed']:.0%}, "
                    f"backlog at the end {run['backlog_at_end_of_loop']}"
                )
            else:
                _say(f"  ERROR {name} r{rep}: {reply.get('error')}")
    return runs


def reference(worker: Worker, server: Server, repeats: int, n: int) -> list[dict[str, Any]]:
    runs = []
    for rep in range(repeats):
        reply = worker.call(
            cmd="reference", endpoint=server.url, tc=f"bench-sync-async-reference-r{rep}", n=n
        )
        if reply.get("ok"):
            runs.append(reply["result"])
    return runs


def _call_floor_us(results: dict[str, Any]) -> dict[str, float]:
    """Median caller's cost of each stand-in for log(), us per point."""
    return {
        name: statistics.median(_us_per_point(r) for r in runs)
        for name, runs in (results.get("call_floors") or {}).items()
        if runs
    }


def _median(runs: list[dict[str, Any]], fn: Any) -> float:
    values = [fn(r) for r in runs]
    return statistics.median(values) if values else float("nan")


def _worst(floor_runs: list[dict[str, Any]], name: str, key: str) -> float:
    return max((fl[name].get(key, float("nan")) for fl in floor_runs), default=float("nan")) * 1e3


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "producer_us": _median(runs, _us_per_point),
        "producer_us_min": min((_us_per_point(r) for r in runs), default=float("nan")),
        "producer_us_max": max((_us_per_point(r) for r in runs), default=float("nan")),
        "gil_max_ms": _median(runs, lambda r: r["gil_max"] * 1e3),
        "gil_max_worst_ms": max((r["gil_max"] * 1e3 for r in runs), default=float("nan")),
        "gil_p99_ms": _median(runs, lambda r: r["gil_p99"] * 1e3),
        "gil_over_4ms": _median(runs, lambda r: r["gil_over_4ms"]),
        "loop_cpu_share": _median(runs, lambda r: r["loop_thread_cpu"] / r["elapsed"]),
        "throughput": _median(runs, lambda r: r["server"]["stored"] / r["elapsed"]),
        "stored_all": float(all(r["server"]["stored"] == r["n"] for r in runs)),
        "backlog": _median(runs, lambda r: r["backlog_at_end_of_loop"]),
        "gc_longest_full_ms": max((r["gc_longest_full"] * 1e3 for r in runs), default=0.0),
        "runs": float(len(runs)),
    }


def report(config: dict[str, Any], results: dict[str, Any]) -> str:
    env = config["environment"]
    s = {key: {c: summarize(runs) for c, runs in per.items()} for key, per in results["scenarios"].items()}
    diag = summarize(results["diagnostic"][MB]) if results.get("diagnostic") else None
    targets: list[tuple[str, str, bool]] = []
    ratio = s["20ms"][SDK]["producer_us"] / s["20ms"][MB]["producer_us"]
    targets.append(
        (
            f"caller's cost >= {FACTOR_VS_SDK_20MS:g}x below the SDK at 20 ms",
            f"{ratio:,.0f}x below",
            ratio >= 500,
        )
    )
    call_floor = _call_floor_us(results)
    least = call_floor.get("floor_least_beside_sender", float("nan"))
    for key in ("0ms", "20ms"):
        cost = s[key][MB]["producer_us"]
        floor_note = (
            f"; in the same loop beside the same sending thread, the least a validating log() does: "
            f"{least:.2f} us, above the goal"
            if least > PRODUCER_MAX_US
            else ""
        )
        targets.append(
            (
                f"caller's cost <= {PRODUCER_MAX_US:g} us per point ({key})",
                f"{cost:.2f} us{floor_note}",
                cost <= PRODUCER_MAX_US,
            )
        )
    python_floor = _worst(results["floors"], "python thread", "gil_max")
    for key in ("0ms", "20ms"):
        wait = s[key][MB]["gil_max_ms"]
        floor_note = (
            f"; with no metricsbuf, beside any thread running Python: {python_floor:.2f} ms, above the goal"
            if python_floor > GIL_WAIT_MAX * 1e3
            else ""
        )
        targets.append(
            (
                f"longest GIL wait <= {GIL_WAIT_MAX * 1e3:g} ms ({key})",
                f"{wait:.2f} ms (worst run {s[key][MB]['gil_max_worst_ms']:.2f} ms){floor_note}",
                wait <= GIL_WAIT_MAX * 1e3,
            )
        )
    lib = env["library"]
    lines = [
        "# SyncMetricsLogger in a synchronous training loop",
        "",
        "<!-- Generated by benchmarks/sync.py; do not edit by hand: rerun the command instead. -->",
        "",
        f"Command: `{config['command']}`, started {config['started']}, took {config['minutes']:.1f} "
        "minutes. How each figure is measured: the docstrings of `benchmarks/sync.py` and "
        "`benchmarks/_sync_worker.py`.",
        "",
        f"- Machine: {env['platform']}; {env['cpu']}; {env['cpus']} CPUs; load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg'] or ())}, at the end "
        f"{', '.join(f'{x:.2f}' for x in config['loadavg_end'] or ())} (other work on the machine shows "
        "up in every figure, the GIL waits first: compare with the floors below)",
        f"- Python: {env['python']}; default `sys.getswitchinterval()` = "
        f"{config['switch_interval'] * 1e3:g} ms",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v != "not installed"),
        f"- metricsbuf: imported from `{lib['path']}`, commit {lib['commit']}"
        f"{' with uncommitted changes' if lib['dirty'] else ''}, sources sha256 {lib['sha256']}",
        f"- Workload: N = {config['n']:,} points per run ({config['n'] // 4:,} steps x 4 names), "
        "`time.sleep(0)` after each step; "
        f"repeats: metricsbuf {config['repeats']}, SDK {config['sdk_repeats']} at 0 ms and "
        f"{config['sdk_slow_repeats']} at 20 ms; `SyncMetricsLogger(tc, endpoint_url=..., max_in_flight=8)`, "
        "other options default",
        "",
        "## Targets",
        "",
        "| target | this run | result |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {t} | {shown} | {'met' if ok else 'missed'} |" for t, shown, ok in targets]
    lines += ["", "## Figures (medians over repeats)", ""]
    header = "| figure | " + " | ".join(f"{LABEL[c]} {k}" for k in ("0ms", "20ms") for c in (MB, SDK)) + " |"
    lines += [header, "| --- |" + " ---: |" * 4]
    rows: list[tuple[str, str | None, str]] = [
        ("caller's cost, us per point", "producer_us", ".3g"),
        ("  range over runs, us", None, ""),
        ("longest GIL wait of the ticker, ms (median of runs' longest)", "gil_max_ms", ".2f"),
        ("  worst run's longest, ms", "gil_max_worst_ms", ".2f"),
        ("  99th percentile, ms", "gil_p99_ms", ".2f"),
        ("  ticks more than 4 ms late, per run", "gil_over_4ms", ".0f"),
        ("logger's loop thread on CPU, share of the window", "loop_cpu_share", ".0%"),
        ("throughput, points stored per second", "throughput", ",.0f"),
        ("points held when the loop ended", "backlog", ".0f"),
        ("longest full garbage collection in a window, ms", "gc_longest_full_ms", ".1f"),
    ]
    for title, figure, spec in rows:
        cells = []
        for k in ("0ms", "20ms"):
            for c in (MB, SDK):
                fig = s[k][c]
                if figure is None:
                    cells.append(f"{fig['producer_us_min']:.3g} - {fig['producer_us_max']:.3g}")
                elif c == SDK and figure == "loop_cpu_share":
                    cells.append("n/a")
                else:
                    cells.append(format(fig[figure], spec))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    stored_ok = all(s[k][MB]["stored_all"] == 1.0 for k in s)
    lines += [
        "",
        f"Every metricsbuf run's points were all stored by the endpoint: {'yes' if stored_ok else 'NO'}.",
        "",
        "GIL-wait floors in the same run, with no logging (each measured at the start and at the end; "
        "the worse of the two):",
        "",
        "| floor | longest wait, ms | 99th percentile, ms |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| {FLOOR_LABEL[m]} | {_worst(results['floors'], m, 'gil_max'):.2f} "
        f"| {_worst(results['floors'], m, 'gil_p99'):.2f} |"
        for m in FLOORS
    ]
    ref = results.get("reference") or []
    if ref:
        ref_us = statistics.median(r["producer_time"] / r["n"] * 1e6 for r in ref)
        lines += [
            "",
            f"For the machine's speed: the async `MetricsLogger`'s `await log()` in benchmarks/run.py's "
            f"event-loop workload, same endpoint (0 ms), same run: {ref_us:.3g} us per point "
            f"(median of {len(ref)} runs); SyncMetricsLogger's `log()` at 0 ms is "
            f"{s['0ms'][MB]['producer_us'] / ref_us:.2f}x that.",
        ]
    idle = results.get("idle_cost") or []
    if idle:
        idle_us = statistics.median(idle)
        lines += [
            "",
            f"SyncMetricsLogger's `log()` with its loop thread idle (the same loop against an endpoint that "
            f"never answers, so nothing is sent after the first 8 requests): {idle_us:.3g} us per point "
            f"(median of {len(idle)} runs: {', '.join(f'{c:.3g}' for c in idle)}). The difference with the "
            "figures above is what it costs the caller to share the GIL (and the CPU) with a loop "
            "thread that sends flat out.",
        ]
    if call_floor:
        zero_cost = s["0ms"][MB]["producer_us"]
        lines += [
            "",
            "## What the caller's cost is made of",
            "",
            "The same loop, at 0 ms, with a stand-in in place of `log()` (medians over "
            f"{len(results['call_floors']['floor_least_beside_sender'])} runs each; "
            "`_sync_worker.run_call_floor`):",
            "",
            "| stand-in for `log()` | caller's cost, us per point | runs |",
            "| --- | ---: | --- |",
        ]
        for name, label in CALL_FLOORS.items():
            runs = results["call_floors"].get(name) or []
            if runs:
                lines.append(
                    f"| {label} | {call_floor[name]:.3g} | "
                    + ", ".join(f"{_us_per_point(r):.3g}" for r in runs)
                    + " |"
                )
        lines.append(
            f"| SyncMetricsLogger's `log()`, sending (the 0 ms scenario above) | {zero_cost:.3g} | |"
        )
        alone = call_floor.get("floor_least_alone", float("nan"))
        verdict = (
            "So on this machine no logger that validates in the caller's thread meets the "
            f"{PRODUCER_MAX_US:g} us goal while its thread sends flat out. What would: less sending "
            "at once (a training loop that logs a few points per step leaves the thread idle most "
            "of the time: see the idle figure above), or a faster machine."
            if least > PRODUCER_MAX_US
            else f"The stand-in meets the {PRODUCER_MAX_US:g} us goal here: the rest is log()'s own."
        )
        lines += [
            "",
            "A caller that gives up the GIL at every step (here `time.sleep(0)`; in training, waits "
            "for the GPU or the data loader) while another thread runs Python must wait to get it "
            "back, and then runs on a CPU whose caches the other thread has used meanwhile: every "
            "call after that costs more, whatever it does. Beside a logger sending flat out, the "
            f"least a validating `log()` can do cost {least:.3g} us per point, against {alone:.3g} us "
            "with no logger in the process; SyncMetricsLogger's `log()` (which also takes its token "
            f"of room) cost {zero_cost:.3g} us. {verdict}",
        ]
    zero, twenty = s["0ms"][MB], s["20ms"][MB]
    interval_ms = config["switch_interval"] * 1e3
    python_floor = _worst(results["floors"], "python thread", "gil_max")
    cpu_floor = _worst(results["floors"], "CPU only", "gil_max")
    lines += [
        "",
        "## Why the GIL waits are what they are",
        "",
        f"A thread that wants the GIL waits until the holder drops it. CPython forces that after the switch "
        f"interval ({interval_ms:g} ms here); a holder that releases it only for a moment (a `select()` with "
        "nothing to wait for, between two event-loop iterations) usually takes it back before the waiter "
        "wakes up. So any thread that keeps running Python code makes the others wait up to about one "
        f"switch interval: beside a thread computing in pure Python, with no metricsbuf at all, the ticker's "
        f"longest wait was {python_floor:.2f} ms; beside a thread loading the CPU without the GIL, "
        f"{cpu_floor:.2f} ms (the machine's own scheduling).",
        "",
        f"The logger's loop thread is such a thread while it sends. At 0 ms it was on the CPU "
        f"{zero['loop_cpu_share']:.0%} of the window (building, signing and parsing one request per 10 "
        f"points), and the ticker's longest wait was {zero['gil_max_ms']:.2f} ms "
        f"({zero['gil_max_ms'] / interval_ms:.2f} switch intervals); at 20 ms, "
        f"{twenty['loop_cpu_share']:.0%} and {twenty['gil_max_ms']:.2f} ms. The producer here logs "
        f"{config['n']:,} points as fast as it can, so the loop thread has a backlog to send for the whole "
        "window; a training loop that logs a few points per step gives it far less to do.",
    ]
    if results.get("no_pause"):
        np_ = summarize(results["no_pause"][MB])
        lines += [
            "",
            f"What the pause before each heavy step buys (SyncMetricsLogger's loop thread sleeps "
            f"{config['gil_pause'] * 1e6:g} us there, so that a thread waiting for the GIL can take it): "
            f"without it (metricsbuf at 0 ms, {int(np_['runs'])} runs), the longest wait was "
            f"{np_['gil_max_ms']:.2f} ms (worst run {np_['gil_max_worst_ms']:.2f} ms), the 99th percentile "
            f"{np_['gil_p99_ms']:.2f} ms and {np_['gil_over_4ms']:.0f} ticks per run more than 4 ms late "
            f"(with it: {zero['gil_max_ms']:.2f}, {zero['gil_p99_ms']:.2f} ms, {zero['gil_over_4ms']:.0f}); "
            f"caller's cost {np_['producer_us']:.3g} us per point (with it: {zero['producer_us']:.3g}); "
            f"throughput {np_['throughput']:,.0f} points/s (with it: {zero['throughput']:,.0f}).",
        ]
    if diag is not None:
        lines += [
            "",
            f"With `sys.setswitchinterval({DIAGNOSTIC_SWITCH_INTERVAL:g})` (metricsbuf at 0 ms, "
            f"{int(diag['runs'])} runs): longest GIL wait {diag['gil_max_ms']:.2f} ms (worst run "
            f"{diag['gil_max_worst_ms']:.2f} ms), caller's cost {diag['producer_us']:.3g} us per point, "
            f"throughput {diag['throughput']:,.0f} points/s (default "
            f"interval: {zero['throughput']:,.0f}). The interval is process-wide, so metricsbuf leaves it "
            "alone; an application that wants shorter waits can set it.",
        ]
    lines += _goal_lines(config, results, zero)
    lines += ["", "## Every run", ""]
    for i, run in enumerate((results.get("spool_sender") or {}).get(MB, [])):
        lines.append(
            f"- 0ms {MB} writing a spool, sent by `metricsbuf sync` r{i}: "
            + one_line("", run)[2:]
            + f", sender {run.get('sender_seconds', float('nan')):.1f} s (exit {run.get('sender_exit')})"
        )
    for key, per in results["scenarios"].items():
        for c, runs in per.items():
            for i, run in enumerate(runs):
                lines.append(f"- {key} {c} r{i}: " + one_line("", run)[2:])
    for i, run in enumerate((results.get("no_pause") or {}).get(MB, [])):
        lines.append(f"- 0ms {MB} without the GIL pause r{i}: " + one_line("", run)[2:])
    if results.get("diagnostic"):
        for i, run in enumerate(results["diagnostic"][MB]):
            lines.append(
                f"- 0ms {MB} switchinterval {DIAGNOSTIC_SWITCH_INTERVAL:g} r{i}: " + one_line("", run)[2:]
            )
    for i, fl in enumerate(results["floors"]):
        for name, f in fl.items():
            lines.append(
                f"- floor {i} {name}: longest {f.get('gil_max', float('nan')) * 1e3:.2f} ms, "
                f"p99 {f.get('gil_p99', float('nan')) * 1e3:.2f} ms, {f.get('ticks', 0)} ticks"
            )
    return "\n".join(lines) + "\n"


def _goal_lines(config: dict[str, Any], results: dict[str, Any], zero: dict[str, float]) -> list[str]:
    """What the GIL goal needs, from this run's floors and the spool-sender runs."""
    goal = GIL_WAIT_MAX * 1e3
    python_floor = _worst(results["floors"], "python thread", "gil_max")
    lines = [
        "",
        "## What would meet the GIL goal",
        "",
        "Beside a thread that runs Python, with no metricsbuf at all, the ticker's longest wait was "
        f"{python_floor:.2f} ms in this run ({'over' if python_floor > goal else 'under'} the {goal:g} ms "
        "goal): a background thread that keeps running Python makes waits of up to about one switch "
        f"interval ({config['switch_interval'] * 1e3:g} ms) by itself. The logger's thread stays under "
        "the goal only while it leaves the GIL often enough (it "
        "sleeps before each heavy step of a send); sending flat out at 0 ms, its longest wait was "
        f"{zero['gil_max_ms']:.2f} ms ({'under' if zero['gil_max_ms'] <= goal else 'over'} the goal). The "
        "switch interval is process-wide and the application's to set, so metricsbuf leaves it alone.",
    ]
    spool = results.get("spool_sender") or {}
    runs = spool.get(MB) or []
    if runs:
        sp = summarize(runs)
        delivered = all(r["server"]["stored"] == r["n"] and r.get("sender_exit") == 0 for r in runs)
        verdict = "meets the goal" if sp["gil_max_ms"] <= goal else "does not meet the goal"
        lines += [
            "",
            "Moving the sending out of the process: `SyncMetricsLogger(tc, spool_dir=DIR, offline=True)` "
            "in the loop (its thread only commits the points to SQLite every `spool_interval`) and "
            f"`metricsbuf sync DIR` in a second process ({int(sp['runs'])} runs at 0 ms; the sender ran "
            f"after the loop; every point stored: {'yes' if delivered else 'NO'}): longest GIL wait "
            f"{sp['gil_max_ms']:.2f} ms (worst run {sp['gil_max_worst_ms']:.2f} ms, 99th percentile "
            f"{sp['gil_p99_ms']:.2f} ms), caller's cost {sp['producer_us']:.3g} us per point, the logger's "
            f"thread on CPU {sp['loop_cpu_share']:.0%} of the loop's window (sending in-process: longest "
            f"wait {zero['gil_max_ms']:.2f} ms, {zero['producer_us']:.3g} us per point). So it {verdict}"
            + (
                ": what the training process does then (validate, hand off, commit to SQLite in "
                "documents of 256 rows with the GIL free in between) holds the GIL for less than the goal "
                "at a time, and the network is in another process. The sender here runs after the loop "
                "(a spool is locked by one process at a time): a job that wants the goal met logs "
                "offline and runs `metricsbuf sync DIR` at the end, or in a later step."
                if sp["gil_max_ms"] <= goal
                else ": the GIL waits left are those of the logger's thread writing the spool in the "
                "training process. What would meet the goal is a hand-off whose work in the training "
                "process holds the GIL for less than the goal at a time, with the network in another "
                "process."
            ),
        ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--points", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sdk-repeats", type=int, default=3, help="SDK runs at 0 ms")
    parser.add_argument("--sdk-slow-repeats", type=int, default=2, help="SDK runs at 20 ms (about 50 s each)")
    parser.add_argument("--quick", action="store_true", help="4,000 points, 1 repeat each; prints only")
    args = parser.parse_args()
    if args.quick:
        args.points, args.repeats, args.sdk_repeats, args.sdk_slow_repeats = 4_000, 1, 1, 1
    n = args.points - args.points % len(w.NAMES)
    log_dir = Path(tempfile.mkdtemp(prefix="metricsbuf-sync-bench-"))
    started = time.time()
    config: dict[str, Any] = {
        "command": "python benchmarks/sync.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "n": n,
        "repeats": args.repeats,
        "sdk_repeats": args.sdk_repeats,
        "sdk_slow_repeats": args.sdk_slow_repeats,
        "switch_interval": sys.getswitchinterval(),
        "gil_pause": _sync._GIL_PAUSE,
        "environment": _report.environment(),
    }
    _say(f"SyncMetricsLogger benchmark: N={n}; worker logs in {log_dir}")
    servers: list[Server] = []
    workers: dict[str, Worker] = {}
    results: dict[str, Any] = {"scenarios": {}, "floors": []}
    try:
        fast, slow, silent = Server("0 ms", 0.0), Server("20 ms", 0.020), Server("never answers", 10**6)
        servers = [fast, slow, silent]
        workers = {c: Worker(c, log_dir, script="_sync_worker.py") for c in (MB, SDK)}
        for contender, worker in workers.items():  # warm-up, not recorded
            worker.call(
                cmd="run", endpoint=fast.url, tc=f"bench-sync-warmup-{contender}".replace("_", "-"), n=2000
            )
        results["floors"].append(floors(workers[MB]))
        _say("reference: the async MetricsLogger in benchmarks/run.py's workload, 0 ms")
        results["reference"] = reference(workers[MB], fast, min(3, args.repeats), n)
        _say("caller's cost with the loop thread idle (an endpoint that never answers)")
        results["idle_cost"] = idle_cost(workers[MB], silent, min(3, args.repeats), n)
        _say("the caller's cost of stand-ins for log() (an empty call; the least a validating log() does)")
        results["call_floors"] = call_floors(workers[MB], fast, min(3, args.repeats), n)
        _say("scenario 0 ms")
        results["scenarios"]["0ms"] = measure(
            workers, fast, "0ms", {MB: args.repeats, SDK: args.sdk_repeats}, n
        )
        _say("scenario 20 ms")
        results["scenarios"]["20ms"] = measure(
            workers, slow, "20ms", {MB: args.repeats, SDK: args.sdk_slow_repeats}, n
        )
        _say(f"diagnostic: metricsbuf at 0 ms with sys.setswitchinterval({DIAGNOSTIC_SWITCH_INTERVAL:g})")
        results["diagnostic"] = measure(
            workers, fast, "0ms-si", {MB: min(3, args.repeats)}, n, switch_interval=DIAGNOSTIC_SWITCH_INTERVAL
        )
        _say("diagnostic: metricsbuf at 0 ms without the GIL pause before each heavy step")
        results["no_pause"] = measure(workers, fast, "0ms-np", {MB: min(3, args.repeats)}, n, gil_pause=0.0)
        _say("diagnostic: the sending in another process (an offline spool, then `metricsbuf sync`), 0 ms")
        results["spool_sender"] = measure(
            workers, fast, "0ms-spool", {MB: min(3, args.repeats)}, n, runner="sync_metricsbuf_spool_sender"
        )
        results["floors"].append(floors(workers[MB]))
    finally:
        for worker in workers.values():
            worker.stop()
        for server in servers:
            server.stop()
    config["minutes"] = (time.time() - started) / 60
    config["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    text = report(config, results)
    print(text)
    if not args.quick:
        RESULTS.write_text(text)
        _say(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
