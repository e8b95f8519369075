"""Turns the raw runs into figures, ratios, target checks, RESULTS.md and results.png.

Everything in RESULTS.md is computed here from the runs of one benchmark command.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

C1, C2, C3 = "metricsbuf", "hand_batched", "sagemaker_sdk"
LABEL = {
    C1: "1. metricsbuf.MetricsLogger (defaults, max_in_flight=8)",
    C2: "2. hand-batched aiobotocore (10 per request, 8 in flight)",
    C3: "3. SageMaker SDK v2 _MetricsManager (_SyncMetricsSink)",
}
SHORT = {C1: "metricsbuf", C2: "hand-batched", C3: "SageMaker SDK"}
PACKAGES = (
    "metricsbuf",
    "aiobotocore",
    "botocore",
    "boto3",
    "aiohttp",
    "anyio",
    "tenacity",
    "sagemaker",
    "matplotlib",
    "psutil",
)
SCENARIOS = ("0ms", "latency", "errors")
PAIRS = ("pairs-0ms", "pairs-errors")  # run.run_retry_pairs: the cheap-retry goal's back-to-back runs

# Targets from issue 5 (ratios in one run).
PRODUCER_MAX_VS_HAND = 1.0
PRODUCER_MIN_FACTOR_VS_SDK = {"0ms": 50.0, "latency": 500.0}
THROUGHPUT_MIN_VS_HAND = 1.0
FILL_MIN = 9.5
BYTES_PER_POINT_MAX = 200.0
STALL_MAX = 0.005


# --------------------------------------------------------------------------------------------- env


def _git(*args: str, cwd: Path) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def library_fingerprint() -> dict[str, Any]:
    """Which metricsbuf the workers import (same environment), its git commit and a content hash.

    Taken at the start and at the end of a run: if the sources changed in between, the figures
    may mix versions, and the report says so.
    """
    spec = importlib.util.find_spec("metricsbuf")
    if spec is None or spec.origin is None:
        return {"path": "not found", "sha256": "", "commit": "", "dirty": False}
    pkg = Path(spec.origin).resolve().parent
    digest = hashlib.sha256()
    for f in sorted(pkg.glob("*.py")):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return {
        "path": str(pkg),
        "sha256": digest.hexdigest()[:12],
        "commit": _git("rev-parse", "--short", "HEAD", cwd=pkg),
        "dirty": bool(_git("status", "--porcelain", "--", ".", cwd=pkg)),
    }


def environment() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory": mem,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "library": library_fingerprint(),
    }


# ---------------------------------------------------------------------------------------- per run


def _derive(run: dict[str, Any]) -> dict[str, float]:
    n, srv = run["n"], run["server"]
    return {
        "producer_us": run["producer_time"] / n * 1e6,
        "cpu_us": run.get("cpu", math.nan) / n * 1e6,
        "throughput": srv["stored"] / run["elapsed"] if run["elapsed"] > 0 else math.nan,
        "fill": srv["received"] / srv["requests"] if srv["requests"] else math.nan,
        "stall_max_ms": run["stall_max"] * 1e3,
        "stall_p99_ms": run["stall_p99"] * 1e3,
        "stall_nogc_ms": run.get("stall_max_without_gc", math.nan) * 1e3,
        "stall_oncpu_ms": run.get("stall_max_on_cpu", math.nan) * 1e3,
        "gc_full": run.get("gc_full_collections", 0),
        "gc_longest_full_ms": run.get("gc_longest_full", math.nan) * 1e3,
        "stored_frac": srv["stored"] / n,
        "sent_per_point": srv["received"] / n,
        "requests": srv["requests"],
        "invalid": srv["invalid"],
        "backlog": run["backlog_at_end_of_loop"],
        "elapsed": run["elapsed"],
    }


def one_line(scenario: str, contender: str, rep: int, run: dict[str, Any]) -> str:
    d = _derive(run)
    return (
        f"{scenario:>7} {SHORT[contender]:>13} r{rep}: producer {d['producer_us']:9.2f} us/pt  "
        f"throughput {d['throughput']:8.0f} pt/s  cpu {d['cpu_us']:6.1f} us/pt  "
        f"fill {d['fill']:5.2f}  stored {d['stored_frac']:6.1%}  "
        f"stall max {d['stall_max_ms']:6.2f} ms p99 {d['stall_p99_ms']:6.2f} ms "
        f"(no-GC max {d['stall_nogc_ms']:5.2f}, full GCs {d['gc_full']})  "
        f"backlog {d['backlog']}"
    )


def memory_line(contender: str, mode: str, res: dict[str, Any]) -> str:
    per = res["peak_bytes"] / res["held"] if res["held"] else math.nan
    return (
        f"{SHORT[contender]:>13} {mode:>11}: {per:7.1f} B per held point "
        f"(peak +{res['peak_bytes'] / 2**20:.1f} MiB, {res['held']:,} held of {res['logged']:,} logged, "
        f"producer paused: {res['paused']})"
    )


# -------------------------------------------------------------------------------------- summarize


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def summarize(results: Any) -> dict[str, Any]:
    cfg = results.config
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, per in results.runs.items():
        for contender, runs in per.items():
            ds = [_derive(r) for r in runs]
            srv_received = sum(r["server"]["received"] for r in runs)
            srv_requests = sum(r["server"]["requests"] for r in runs)
            figures.setdefault(scenario, {})[contender] = {
                "runs": len(runs),
                "producer_us": _median([d["producer_us"] for d in ds]),
                "producer_us_range": (min(d["producer_us"] for d in ds), max(d["producer_us"] for d in ds)),
                "throughput": _median([d["throughput"] for d in ds]),
                "cpu_us": _median([d["cpu_us"] for d in ds]),
                "throughput_range": (min(d["throughput"] for d in ds), max(d["throughput"] for d in ds)),
                "fill": srv_received / srv_requests if srv_requests else math.nan,
                "stall_max_ms": _median([d["stall_max_ms"] for d in ds]),
                "stall_worst_ms": max(d["stall_max_ms"] for d in ds),
                "stall_p99_ms": _median([d["stall_p99_ms"] for d in ds]),
                "stall_nogc_ms": _median([d["stall_nogc_ms"] for d in ds]),
                "stall_oncpu_ms": _median([d["stall_oncpu_ms"] for d in ds]),
                "gc_full": sum(d["gc_full"] for d in ds),
                "gc_longest_full_ms": max(d["gc_longest_full_ms"] for d in ds),
                "stored_frac": _median([d["stored_frac"] for d in ds]),
                "stored_frac_min": min(d["stored_frac"] for d in ds),
                "sent_per_point": _median([d["sent_per_point"] for d in ds]),
                "backlog": _median([float(d["backlog"]) for d in ds]),
                "invalid": sum(d["invalid"] for d in ds),
                "per_run": ds,
                "client_stats": [r.get("client_stats", {}) for r in runs],
            }
    memory: dict[str, dict[str, Any]] = {}
    for contender, modes in results.memory.items():
        entry: dict[str, Any] = {}
        for mode, res in modes.items():
            entry[mode] = res["peak_bytes"] / res["held"] if res["held"] else math.nan
            entry[f"{mode}_raw"] = res
        memory[contender] = entry

    def worst_ms(runs: list[dict[str, Any]], key: str) -> float:
        return max((run[key] for run in runs), default=math.nan) * 1e3

    summary = {
        "config": cfg,
        "figures": figures,
        "memory": memory,
        "idle": {
            "stall_max_ms": worst_ms(results.idle, "stall_max"),
            "stall_p99_ms": worst_ms(results.idle, "stall_p99"),
        },
        "idle_sleeping": {
            "stall_max_ms": worst_ms(results.idle_sleeping, "stall_max"),
            "stall_p99_ms": worst_ms(results.idle_sleeping, "stall_p99"),
            "stall_oncpu_ms": worst_ms(results.idle_sleeping, "stall_max_on_cpu"),
        },
        "errors": list(results.errors),
        "started": results.started,
        "finished": results.finished,
    }
    summary["targets"] = _targets(summary)
    return summary


def _fig(summary: dict[str, Any], scenario: str, contender: str, key: str) -> float:
    try:
        return float(summary["figures"][scenario][contender][key])
    except KeyError:
        return math.nan


def scenario_label(summary: dict[str, Any], scenario: str) -> str:
    cfg = summary["config"]
    return {
        "0ms": "0 ms added latency",
        "latency": f"{cfg['latency'] * 1000:g} ms added latency",
        "errors": f"0 ms, {cfg['error_rate']:.0%} per-index INTERNAL_ERROR",
        "pairs-0ms": "0 ms, paired with the next (cheap-retry goal)",
        "pairs-errors": f"0 ms, {cfg['error_rate']:.0%} per-index INTERNAL_ERROR, paired (cheap-retry goal)",
    }[scenario]


def _targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    t: list[dict[str, Any]] = []
    lat = f"{summary['config']['latency'] * 1000:g} ms"

    def add(text: str, value: float, shown: str, ok: bool | None) -> None:
        t.append(
            {
                "target": text,
                "value": value,
                "shown": shown,
                "met": None if ok is None or math.isnan(value) else ok,
            }
        )

    for sc, name in (("0ms", "0 ms"), ("latency", lat)):
        r = _ratio(_fig(summary, sc, C1, "producer_us"), _fig(summary, sc, C2, "producer_us"))
        add(
            f"producer cost per `await log()` <= {PRODUCER_MAX_VS_HAND:g}x hand-batched ({name})",
            r,
            f"{r:.2f}x",
            r <= PRODUCER_MAX_VS_HAND,
        )
    for sc, name in (("0ms", "0 ms"), ("latency", lat)):
        factor = PRODUCER_MIN_FACTOR_VS_SDK[sc]
        r = _ratio(_fig(summary, sc, C3, "producer_us"), _fig(summary, sc, C1, "producer_us"))
        add(
            f"producer cost >= {factor:g}x below the SageMaker SDK ({name})",
            r,
            f"{r:.0f}x below",
            r >= factor,
        )
    for sc, name in (("0ms", "0 ms"), ("latency", lat)):
        r = _ratio(_fig(summary, sc, C1, "throughput"), _fig(summary, sc, C2, "throughput"))
        add(
            f"throughput >= {THROUGHPUT_MIN_VS_HAND:g}x hand-batched at max_in_flight=8 ({name})",
            r,
            f"{r:.2f}x",
            r >= THROUGHPUT_MIN_VS_HAND,
        )
    fill = _fig(summary, "0ms", C1, "fill")
    add(
        f"batch fill >= {FILL_MIN:g} points per request under load (0 ms)",
        fill,
        f"{fill:.2f}",
        fill >= FILL_MIN,
    )
    for mode, name in (("tracemalloc", "tracemalloc peak"), ("rss", "peak RSS")):
        v = summary["memory"].get(C1, {}).get(mode, math.nan)
        add(
            f"<= {BYTES_PER_POINT_MAX:g} bytes per buffered point ({name})",
            v,
            f"{v:.0f} B",
            v <= BYTES_PER_POINT_MAX,
        )
    for sc in SCENARIOS:
        v = _fig(summary, sc, C1, "stall_max_ms")
        context = (
            f" (without GC {_fmt(_fig(summary, sc, C1, 'stall_nogc_ms'), '.2f')}; while the loop was "
            f"on-CPU {_fmt(_fig(summary, sc, C1, 'stall_oncpu_ms'), '.2f')}; hand-batched "
            f"{_fmt(_fig(summary, sc, C2, 'stall_max_ms'), '.2f')}; no-logging floor "
            f"{_fmt(summary['idle']['stall_max_ms'], '.2f')} yielding, "
            f"{_fmt(summary['idle_sleeping']['stall_max_ms'], '.2f')} asleep)"
        )
        add(
            f"no event-loop stall above {STALL_MAX * 1e3:g} ms ({scenario_label(summary, sc)}; "
            "median over repeats of each run's longest)",
            v,
            f"{v:.2f} ms" + context,
            v <= STALL_MAX * 1e3,
        )
    return t


# --------------------------------------------------------------------------------------- console


def _retry_pair_lines(summary: dict[str, Any]) -> list[str]:
    """Issue 12's goal: throughput under per-index errors >= 0.8x the error-free figure, measured
    on pairs of runs back to back (run.run_retry_pairs), storing every point in every run."""
    clean = summary["figures"].get(PAIRS[0], {}).get(C1)
    faulty = summary["figures"].get(PAIRS[1], {}).get(C1)
    if not clean or not faulty:
        return []
    ratios = [
        f["throughput"] / c["throughput"] for c, f in zip(clean["per_run"], faulty["per_run"], strict=False)
    ]
    ratio = _median(ratios)
    stored_min = faulty["stored_frac_min"]
    ok = ratio >= 0.8 and stored_min >= 1.0
    return [
        f"Goal (cheap per-index retries): metricsbuf's throughput with {summary['config']['error_rate']:.0%} "
        "per-index INTERNAL_ERROR >= 0.8x its error-free figure, storing 100% in every run, measured on "
        f"{len(ratios)} pairs of runs back to back (the order alternating): median of the pairs' ratios "
        f"{_fmt(ratio, '.3g')}x (pairs: {', '.join(_fmt(r, '.3g') for r in ratios)}; throughput without "
        f"errors {clean['throughput']:,.0f}, with {faulty['throughput']:,.0f} points/s, medians), stored "
        f"{_fmt(stored_min, '.2%')} (worst run): {'met' if ok else '**missed**'}",
        "",
    ]


def _fmt(v: float, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _met(m: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[m]


def console_summary(summary: dict[str, Any]) -> str:
    lines = []
    for sc, per in summary["figures"].items():
        lines.append(f"== {scenario_label(summary, sc)}")
        for c in (C1, C2, C3):
            f = per.get(c)
            if not f:
                continue
            lines.append(
                f"  {SHORT[c]:>13}: producer {_fmt(f['producer_us'], '.2f')} us/pt, "
                f"throughput {_fmt(f['throughput'], ',.0f')} pt/s, fill {_fmt(f['fill'], '.2f')}, "
                f"stall max {_fmt(f['stall_max_ms'], '.2f')} ms (worst {_fmt(f['stall_worst_ms'], '.2f')}) "
                f"p99 {_fmt(f['stall_p99_ms'], '.2f')} ms "
                f"(max without GC {_fmt(f['stall_nogc_ms'], '.2f')} ms, "
                f"on-CPU {_fmt(f['stall_oncpu_ms'], '.2f')} ms, "
                f"{f['gc_full']} full GCs), stored {_fmt(f['stored_frac'], '.1%')}"
            )
    lines.append("== memory per buffered point")
    for c, m in summary["memory"].items():
        lines.append(
            f"  {SHORT[c]:>13}: tracemalloc {_fmt(m.get('tracemalloc', math.nan), '.0f')} B, "
            f"peak RSS {_fmt(m.get('rss', math.nan), '.0f')} B"
        )
    lines.append(
        f"== stall floor (no logging): max {_fmt(summary['idle']['stall_max_ms'], '.2f')} ms, "
        f"p99 {_fmt(summary['idle']['stall_p99_ms'], '.2f')} ms beside a yielding loop; "
        f"max {_fmt(summary['idle_sleeping']['stall_max_ms'], '.2f')} ms, "
        f"p99 {_fmt(summary['idle_sleeping']['stall_p99_ms'], '.2f')} ms with the loop asleep"
    )
    lines.append("== targets")
    for t in summary["targets"]:
        lines.append(f"  [{_met(t['met']):>6}] {t['target']}: {t['shown']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- chart


def write_chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in SCENARIOS if s in summary["figures"]]
    contenders = [c for c in (C1, C2, C3) if any(c in summary["figures"][s] for s in scenarios)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    width = 0.8 / max(1, len(contenders))
    colors = {C1: "#1f77b4", C2: "#7f7f7f", C3: "#ff7f0e"}
    panels = (
        ("producer_us", "producer cost (microseconds per point, log scale)", "{:.3g}"),
        ("throughput", "end-to-end throughput (points stored per second, log scale)", "{:,.0f}"),
    )
    for ax, (key, title, fmt) in zip(axes, panels, strict=True):
        for i, c in enumerate(contenders):
            xs, ys = [], []
            for j, s in enumerate(scenarios):
                v = _fig(summary, s, c, key)
                if not math.isnan(v) and v > 0:
                    xs.append(j + (i - (len(contenders) - 1) / 2) * width)
                    ys.append(v)
            bars = ax.bar(xs, ys, width, label=SHORT[c], color=colors[c])
            for bar, y in zip(bars, ys, strict=True):
                ax.annotate(
                    fmt.format(y),
                    (bar.get_x() + bar.get_width() / 2, y),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
        ax.set_yscale("log")
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels([scenario_label(summary, s).replace(", ", ",\n") for s in scenarios], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.25)
    axes[0].legend(fontsize=8)
    cfg = summary["config"]
    env = cfg["environment"]
    fig.suptitle(
        f"metricsbuf benchmarks: N={cfg['n']:,} points, median of {cfg['repeats']} repeats, "
        f"{env['cpus']} CPUs, {env['python']}" + ("  [QUICK SMOKE RUN]" if cfg["quick"] else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------- markdown


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ratio_cells(summary: dict[str, Any], sc: str, c: str, key: str) -> list[str]:
    v = _fig(summary, sc, c, key)
    return [
        _fmt(_ratio(v, _fig(summary, sc, C2, key)), ".3g") + "x",
        _fmt(_ratio(v, _fig(summary, sc, C3, key)), ".3g") + "x",
    ]


def markdown(summary: dict[str, Any], chart_name: str) -> str:
    cfg, env = summary["config"], summary["config"]["environment"]
    started = datetime.datetime.fromtimestamp(summary["started"], datetime.timezone.utc)
    minutes = (summary["finished"] - summary["started"]) / 60
    out: list[str] = []
    add = out.append
    add("# Benchmark results")
    add("")
    add("<!-- Generated by benchmarks/run.py; do not edit by hand: rerun the command instead. -->")
    add("")
    if cfg["quick"]:
        add("**QUICK SMOKE RUN: too few points and repeats to mean anything. Do not commit.**")
        add("")
    add(
        f"Command: `{cfg['command']}`, started {started:%Y-%m-%d %H:%M} UTC, took {minutes:.1f} minutes. "
        "What each figure measures and how: [README.md](README.md)."
    )
    add("")
    add("## Machine and versions")
    add("")
    add(
        f"- Machine: {env['platform']}; {env['cpu']}; {env['cpus']} CPUs "
        f"({env['affinity']} usable); {env['memory']} RAM; load average at start "
        + (", ".join(f"{x:.2f}" for x in env["loadavg"]) if env["loadavg"] else "n/a")
        + (
            ", at the end " + ", ".join(f"{x:.2f}" for x in cfg["loadavg_end"])
            if cfg.get("loadavg_end")
            else ""
        )
        + " (other work on the machine shows up as noise in every figure)"
    )
    add(f"- Python: {env['python']}")
    add("- Packages: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    lib = env["library"]
    add(
        f"- metricsbuf: imported from `{lib['path']}`, commit {lib['commit'] or 'unknown'}"
        + (" with uncommitted changes" if lib["dirty"] else "")
        + f", sources sha256 {lib['sha256']}"
    )
    end = cfg.get("library_at_end")
    if end and end["sha256"] != lib["sha256"]:
        add(
            f"- **metricsbuf's sources changed during this run** (sha256 {end['sha256']} at the end, "
            f"commit {end['commit']}): the figures may mix versions."
        )
    add("")
    add("## Workload")
    add("")
    add(
        f"- N = {cfg['n']:,} points per run: {cfg['n'] // len(cfg['names']):,} steps x "
        f"{len(cfg['names'])} metric names ({', '.join(f'`{n}`' for n in cfg['names'])}); the loop "
        "yields (`await asyncio.sleep(0)`) after each step."
    )
    add(
        f"- Repeats: {cfg['repeats']} per contender and scenario (the SageMaker SDK at "
        f"{cfg['latency'] * 1000:g} ms: {min(cfg['repeats'], cfg['slow_repeats'])}), contenders "
        "interleaved, the first contender rotated per repeat; one unrecorded warm-up run each."
    )
    add(
        f"- Endpoint: benchmarks/_server.py in a separate process on 127.0.0.1, one per scenario. "
        f"Memory: a {cfg['burst']:,}-point burst, `max_buffered={cfg['max_buffered']:,}`, against an "
        "endpoint that never answers."
    )
    add("")
    add("## Targets (issue 5)")
    add("")
    add(_row(["target", "this run", "result"]))
    add(_row(["---", "---:", "---"]))
    for t in summary["targets"]:
        add(
            _row(
                [t["target"], t["shown"], {True: "met", False: "**missed**", None: "not measured"}[t["met"]]]
            )
        )
    add("")
    add(f"![producer cost and throughput per contender]({chart_name})")
    add("")
    for sc in SCENARIOS:
        per = summary["figures"].get(sc)
        if not per:
            continue
        add(f"## {scenario_label(summary, sc)}")
        add("")
        add(
            "Ratios are this contender's figure divided by contender 2's (hand-batched) and by contender "
            "3's (SageMaker SDK). Producer cost and stall: lower is better; throughput and fill: higher "
            "is better."
        )
        add("")
        add(_row(["figure", *[SHORT[c] for c in (C1, C2, C3) if c in per]]))
        add(_row(["---", *["---:" for c in (C1, C2, C3) if c in per]]))
        rows = (
            ("producer cost, us per point (median)", "producer_us", ".3g"),
            ("throughput, points stored per second (median)", "throughput", ",.0f"),
            ("process CPU, us per point, logging to last ack (median)", "cpu_us", ".3g"),
            ("batch fill, points per request", "fill", ".2f"),
            ("event-loop stall, longest, ms (median of runs)", "stall_max_ms", ".2f"),
            ("event-loop stall, 99th percentile, ms (median)", "stall_p99_ms", ".2f"),
        )
        for title, key, spec in rows:
            cells = []
            for c in (C1, C2, C3):
                if c not in per:
                    continue
                v = per[c][key]
                r2, r3 = _ratio_cells(summary, sc, c, key)
                cells.append(f"{_fmt(v, spec)} ({r2} / {r3})")
            add(_row([title + " (x hand / x SDK)", *cells]))
        extra: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
            (
                "producer cost range over runs, us",
                lambda f: f"{f['producer_us_range'][0]:.3g} - {f['producer_us_range'][1]:.3g}",
            ),
            (
                "throughput range over runs, points/s",
                lambda f: f"{f['throughput_range'][0]:,.0f} - {f['throughput_range'][1]:,.0f}",
            ),
            ("event-loop stall, worst run, ms", lambda f: f"{f['stall_worst_ms']:.2f}"),
            (
                "longest stall with no garbage collection in it, ms (median)",
                lambda f: f"{f['stall_nogc_ms']:.2f}",
            ),
            (
                "longest stall counting only the loop thread's CPU time in it, ms (median)",
                lambda f: f"{f['stall_oncpu_ms']:.2f}",
            ),
            (
                "full (generation 2) collections during the runs; longest, ms",
                lambda f: f"{f['gc_full']}; {f['gc_longest_full_ms']:.1f}",
            ),
            (
                "points stored of N (median; worst run)",
                lambda f: f"{f['stored_frac']:.2%}; {f['stored_frac_min']:.2%}",
            ),
            ("points sent per point logged", lambda f: f"{f['sent_per_point']:.3f}"),
            ("backlog when the loop ended, points (median)", lambda f: f"{f['backlog']:,.0f}"),
            ("items the endpoint found malformed", lambda f: f"{f['invalid']:,}"),
            ("runs", lambda f: str(f["runs"])),
        )
        for title, fn in extra:
            add(_row([title, *[fn(per[c]) for c in (C1, C2, C3) if c in per]]))
        add("")
        if sc == "errors":
            add(
                "Cost of retries, as this contender's figure here divided by its own figure at 0 ms without "
                "errors:"
            )
            add("")
            add(_row(["", *[SHORT[c] for c in (C1, C2, C3) if c in per]]))
            add(_row(["---", *["---:" for c in (C1, C2, C3) if c in per]]))
            for title, key in (("producer cost", "producer_us"), ("throughput", "throughput")):
                add(
                    _row(
                        [
                            title,
                            *[
                                _fmt(
                                    _ratio(_fig(summary, "errors", c, key), _fig(summary, "0ms", c, key)),
                                    ".3g",
                                )
                                + "x"
                                for c in (C1, C2, C3)
                                if c in per
                            ],
                        ]
                    )
                )
            add("")
            add(
                "These scenarios run minutes apart, so their ratios mix the cost of retries with the "
                "machine's drift: a contender that drops the failed points instead of retrying them "
                "would come out at 0.9x without drift. Issue 12's goal for cheap per-index retries is "
                "therefore measured on back-to-back pairs (below)."
            )
            add("")
            out.extend(_retry_pair_lines(summary))
    add("## Event-loop stall floor")
    add("")
    add(
        f"The 1 ms ticker beside a loop that only yields, no logging, 2 s before and after the timed runs: "
        f"longest {_fmt(summary['idle']['stall_max_ms'], '.2f')} ms, 99th percentile "
        f"{_fmt(summary['idle']['stall_p99_ms'], '.2f')} ms (the worse of the two). The process never "
        "sleeps there, as in a saturated run."
    )
    add("")
    add(
        f"The ticker alone on the loop, 6 s before and after: longest "
        f"{_fmt(summary['idle_sleeping']['stall_max_ms'], '.2f')} ms, 99th percentile "
        f"{_fmt(summary['idle_sleeping']['stall_p99_ms'], '.2f')} ms, counting only the loop thread's CPU "
        f"time {_fmt(summary['idle_sleeping']['stall_oncpu_ms'], '.2f')} ms (the worse of the two). The "
        "process sleeps between ticks, as between the responses of a run at 20 ms, and a late wake-up "
        'by the machine counts as a stall though no code ran: the "on-CPU" figures above count '
        "at most the CPU time the loop thread used during each tick, so they leave such wake-ups out."
    )
    add("")
    add("## Memory per buffered point")
    add("")
    add(
        f"A burst of {cfg['burst']:,} points against an endpoint that never answers; the bytes allocated "
        "since just before the burst, at their peak, divided by the points held at that moment. Each "
        "figure from its own fresh process (tracemalloc and RSS measured separately)."
    )
    add("")
    add(
        _row(
            [
                "contender",
                "tracemalloc peak, B/point (x hand)",
                "peak RSS, B/point (x hand)",
                "points held",
                "producer paused",
            ]
        )
    )
    add(_row(["---", "---:", "---:", "---:", "---"]))
    for c in (C1, C2, C3):
        if c == C3:
            add(
                _row(
                    [
                        SHORT[c],
                        "n/a",
                        "n/a",
                        "at most 10",
                        "blocks the caller on the network instead; ratios to it do not apply",
                    ]
                )
            )
            continue
        m = summary["memory"].get(c)
        if not m:
            continue
        cells = []
        for mode in ("tracemalloc", "rss"):
            v = m.get(mode, math.nan)
            cells.append(
                f"{_fmt(v, '.0f')} ({_fmt(_ratio(v, summary['memory'].get(C2, {}).get(mode)), '.2f')}x)"
            )
        raw = m.get("tracemalloc_raw") or m.get("rss_raw") or {}
        add(
            _row(
                [
                    SHORT[c],
                    *cells,
                    f"{raw.get('held', 0):,} of {raw.get('logged', 0):,} logged",
                    "yes" if raw.get("paused") else "no (holds everything logged)",
                ]
            )
        )
    add("")
    add("## Every run")
    add("")
    add(
        _row(
            [
                "scenario",
                "contender",
                "run",
                "producer us/pt",
                "points/s",
                "CPU us/pt",
                "fill",
                "stall max ms",
                "stall p99 ms",
                "stall max without GC ms",
                "stall max on-CPU ms",
                "full GCs (longest ms)",
                "stored",
                "backlog",
            ]
        )
    )
    add(_row(["---", "---", *["---:"] * 12]))
    for sc in (*SCENARIOS, *PAIRS):
        for c in (C1, C2, C3):
            f = summary["figures"].get(sc, {}).get(c)
            if not f:
                continue
            for i, d in enumerate(f["per_run"]):
                add(
                    _row(
                        [
                            sc,
                            SHORT[c],
                            str(i),
                            f"{d['producer_us']:.3g}",
                            f"{d['throughput']:,.0f}",
                            f"{d['cpu_us']:.3g}",
                            f"{d['fill']:.2f}",
                            f"{d['stall_max_ms']:.2f}",
                            f"{d['stall_p99_ms']:.2f}",
                            f"{d['stall_nogc_ms']:.2f}",
                            f"{d['stall_oncpu_ms']:.2f}",
                            f"{d['gc_full']} ({d['gc_longest_full_ms']:.1f})",
                            f"{d['stored_frac']:.2%}",
                            f"{d['backlog']:,}",
                        ]
                    )
                )
    add("")
    if summary["errors"]:
        add("## Failed runs and warnings")
        add("")
        for e in summary["errors"]:
            add(f"- {e}")
        add("")
    return "\n".join(out)
