"""Benchmarks: metricsbuf against hand-batched aiobotocore and the SageMaker SDK, in one run.

    pip install -e ".[bench]"
    python benchmarks/run.py            # full run (about 6-9 minutes on 2 cores); rewrites
                                        # benchmarks/RESULTS.md and benchmarks/results.png
    python benchmarks/run.py --quick    # smoke run; writes to a temporary directory

See benchmarks/README.md for what each figure measures. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _report  # noqa: E402
import _workloads as w  # noqa: E402

ENV = {
    # Dummy credentials and region: every request goes to a local endpoint.
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": w.REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    "PYTHONUNBUFFERED": "1",
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(ENV)
    return env


class Server:
    """The local endpoint (benchmarks/_server.py) in its own process, on 127.0.0.1."""

    def __init__(self, label: str, latency: float, error_rate: float = 0.0, seed: int = 0) -> None:
        self.label = label
        self.latency = latency
        self.error_rate = error_rate
        cmd = [
            sys.executable,
            str(HERE / "_server.py"),
            "--port",
            "0",
            "--latency",
            repr(latency),
            "--internal-error-rate",
            repr(error_rate),
            "--seed",
            str(seed),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=_env(), text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"endpoint {label} did not start")

    def state(self, tc: str) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/_state?tc={tc}", timeout=30) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Worker:
    """One contender's long-lived process (``script``: benchmarks/_worker.py, or sync.py's
    _sync_worker.py), one JSON line per command."""

    def __init__(self, contender: str, log_dir: Path, script: str = "_worker.py") -> None:
        self.contender = contender
        log_name = Path(script).stem.strip("_").replace("_", "-")  # worker-..., sync-worker-...
        self.stderr = open(log_dir / f"{log_name}-{contender}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / script), "--contender", contender],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=_env(),
            text=True,
            cwd=HERE,
        )
        ready = self._read()
        if not ready.get("ok"):
            raise RuntimeError(f"worker {contender} did not start: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            return {"ok": False, "error": f"worker exited (code {self.proc.poll()}); see {self.stderr.name}"}
        return json.loads(line)  # type: ignore[no-any-return]

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        if self.proc.poll() is not None:
            return {"ok": False, "error": f"worker exited (code {self.proc.returncode})"}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call(cmd="quit")
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stderr.close()


@dataclass
class Results:
    config: dict[str, Any]
    started: float = field(default_factory=time.time)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # scenario -> contender
    errors: list[str] = field(default_factory=list)
    idle: list[dict[str, Any]] = field(default_factory=list)
    idle_sleeping: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # contender -> mode
    finished: float = 0.0


def _say(msg: str) -> None:
    print(msg, flush=True)


def measure_floor(results: Results, worker: Worker) -> None:
    """The ticker with no logging: beside a loop that only yields, then with the loop asleep."""
    reply = worker.call(cmd="idle", seconds=2.0)
    if reply.get("ok"):
        results.idle.append(reply["result"])
    reply = worker.call(cmd="idle", seconds=6.0, sleeping=True)
    if reply.get("ok"):
        results.idle_sleeping.append(reply["result"])


def run_scenario(
    results: Results,
    scenario: str,
    server: Server,
    workers: list[Worker],
    n: int,
    repeats: int,
    timeout: float,
    first_rep: int = 0,
) -> None:
    per = results.runs.setdefault(scenario, {})
    for rep in range(first_rep, first_rep + repeats):
        order = workers[rep % len(workers) :] + workers[: rep % len(workers)]  # rotate who goes first
        for worker in order:
            run = run_once(results, scenario, server, worker, n, rep, timeout)
            if run is not None:
                per.setdefault(worker.contender, []).append(run)


def run_once(
    results: Results, scenario: str, server: Server, worker: Worker, n: int, rep: int, timeout: float
) -> dict[str, Any] | None:
    """One timed run of one contender; None (and the error recorded) if it failed."""
    tc = f"bench-{scenario}-{worker.contender.replace('_', '-')}-r{rep}"
    reply = worker.call(cmd="run", endpoint=server.url, tc=tc, n=n, timeout=timeout)
    if not reply.get("ok"):
        msg = f"{scenario} {worker.contender} repeat {rep}: {reply.get('error')}"
        results.errors.append(msg)
        _say(f"  ERROR {msg}")
        return None
    run: dict[str, Any] = reply["result"]
    run["server"] = server.state(tc)
    run["n"] = n
    _say("  " + _report.one_line(scenario, worker.contender, rep, run))
    return run


def run_retry_pairs(
    results: Results, clean: Server, faulty: Server, worker: Worker, n: int, repeats: int, timeout: float
) -> None:
    """Issue 12's cheap-retry goal: metricsbuf alone, one run without errors and one with per-index
    errors back to back (alternating which goes first), so that both figures of each pair are
    measured under the same machine conditions (the scenarios above are minutes apart)."""
    for rep in range(repeats):
        pair = [(_report.PAIRS[0], clean), (_report.PAIRS[1], faulty)]
        runs = {
            scenario: run_once(results, scenario, server, worker, n, rep, timeout)
            for scenario, server in (pair if rep % 2 == 0 else pair[::-1])
        }
        whole = {scenario: run for scenario, run in runs.items() if run is not None}
        if len(whole) == len(pair):  # only whole pairs: their ratio is the figure
            for scenario, run in whole.items():
                results.runs.setdefault(scenario, {}).setdefault(worker.contender, []).append(run)


def run_memory(
    results: Results,
    server: Server,
    contenders: list[str],
    burst: int,
    max_buffered: int,
    log_dir: Path,
    timeout: float,
) -> None:
    for contender in contenders:
        if contender == "sagemaker_sdk":
            continue  # holds at most 10 points: it blocks the caller on the network instead
        for mode in ("tracemalloc", "rss"):
            cmd = [
                sys.executable,
                str(HERE / "_worker.py"),
                "--contender",
                contender,
                "--memory",
                mode,
                "--endpoint",
                server.url,
                "--burst",
                str(burst),
                "--max-buffered",
                str(max_buffered),
            ]
            with open(log_dir / f"memory-{contender}-{mode}.log", "w") as err:
                try:
                    proc = subprocess.run(
                        cmd,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        env=_env(),
                        text=True,
                        cwd=HERE,
                        timeout=timeout,
                    )
                    reply: dict[str, Any] = (
                        json.loads(proc.stdout.splitlines()[-1])
                        if proc.stdout.strip()
                        else {"ok": False, "error": f"exit code {proc.returncode}, no answer"}
                    )
                except subprocess.TimeoutExpired:
                    reply = {"ok": False, "error": f"no answer within {timeout:.0f} s"}
            if not reply.get("ok"):
                msg = f"memory {contender} {mode}: {reply.get('error')}"
                results.errors.append(msg)
                _say(f"  ERROR {msg}")
                continue
            res = reply["result"]
            results.memory.setdefault(contender, {})[mode] = res
            _say("  " + _report.memory_line(contender, mode, res))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="metricsbuf benchmarks (see benchmarks/README.md)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N=4000, 1 repeat, 200,000-point burst; writes to a temp dir",
    )
    parser.add_argument("-n", "--points", type=int, default=20_000, help="points per run (default 20000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per contender and latency")
    parser.add_argument(
        "--slow-repeats",
        type=int,
        default=3,
        help="repeats for the SageMaker SDK at 20 ms (about 45 s each; default 3)",
    )
    parser.add_argument("--burst", type=int, default=1_000_000, help="points in the memory burst")
    parser.add_argument("--max-buffered", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the added latency (default 20)")
    parser.add_argument("--error-rate", type=float, default=0.10, help="per-index INTERNAL_ERROR rate")
    parser.add_argument("--contenders", default=",".join(w.CONTENDERS))
    parser.add_argument(
        "--scenarios",
        default="0ms,latency,errors,memory",
        help="which parts to run (default all: 0ms,latency,errors,memory)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per run")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where RESULTS.md and results.png go (default benchmarks/, or a temp dir with --quick)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.repeats, args.slow_repeats, args.burst = 4_000, 1, 1, 200_000
    out_dir: Path = args.out_dir or (
        Path(tempfile.mkdtemp(prefix="metricsbuf-bench-")) if args.quick else HERE
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="metricsbuf-bench-logs-"))
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for c in contenders:
        if c not in w.CONTENDERS:
            parser.error(f"unknown contender {c!r}; choose from {', '.join(w.CONTENDERS)}")
    scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if not scenarios <= {"0ms", "latency", "errors", "memory"}:
        parser.error(f"unknown scenario in {args.scenarios!r}")
    n = args.points - args.points % len(w.NAMES)
    latency = args.latency_ms / 1000
    results = Results(
        config={
            "command": "python benchmarks/run.py" + ("".join(f" {a}" for a in (argv or sys.argv[1:]))),
            "quick": args.quick,
            "n": n,
            "repeats": args.repeats,
            "slow_repeats": args.slow_repeats,
            "burst": args.burst,
            "max_buffered": args.max_buffered,
            "latency": latency,
            "error_rate": args.error_rate,
            "contenders": contenders,
            "names": list(w.NAMES),
            "in_flight": w.IN_FLIGHT,
        }
    )
    results.config["environment"] = _report.environment()
    _say(
        f"metricsbuf benchmarks: N={n} points over {len(w.NAMES)} names, {args.repeats} repeats "
        f"({args.slow_repeats} for the SDK at {args.latency_ms:g} ms); logs in {log_dir}"
    )

    servers: list[Server] = []
    workers: list[Worker] = []
    try:
        fast = Server("0 ms", 0.0)
        slow = Server(f"{args.latency_ms:g} ms", latency)
        faulty = Server(f"0 ms, {args.error_rate:.0%} INTERNAL_ERROR", 0.0, args.error_rate, seed=1)
        silent = Server("never answers", 10**6)
        servers = [fast, slow, faulty, silent]
        workers = [Worker(c, log_dir) for c in contenders]

        _say("warm-up (not recorded)")
        for worker in workers:
            reply = worker.call(
                cmd="run",
                endpoint=fast.url,
                tc=f"bench-warmup-{worker.contender}".replace("_", "-"),
                n=min(n, 4000),
                timeout=args.timeout,
            )
            if not reply.get("ok"):
                results.errors.append(f"warm-up {worker.contender}: {reply.get('error')}")
        _say("event-loop stall floor: the ticker beside a loop that only yields (2 s), then alone (6 s)")
        measure_floor(results, workers[0])

        if "0ms" in scenarios:
            _say(f"scenario '0ms': added latency 0 ms ({fast.url})")
            run_scenario(results, "0ms", fast, workers, n, args.repeats, args.timeout)
        if "latency" in scenarios:
            _say(f"scenario 'latency': added latency {args.latency_ms:g} ms ({slow.url})")
            fast_workers = [wk for wk in workers if wk.contender != "sagemaker_sdk"]
            sdk_workers = [wk for wk in workers if wk.contender == "sagemaker_sdk"]
            # The SDK takes about 45 s per run here: it gets --slow-repeats runs, the others --repeats.
            slow_rep = min(args.repeats, args.slow_repeats) if sdk_workers else args.repeats
            run_scenario(results, "latency", slow, workers, n, slow_rep, args.timeout)
            if args.repeats > slow_rep and fast_workers:
                run_scenario(
                    results,
                    "latency",
                    slow,
                    fast_workers,
                    n,
                    args.repeats - slow_rep,
                    args.timeout,
                    first_rep=slow_rep,
                )
        if "errors" in scenarios:
            _say(f"scenario 'errors': 0 ms, {args.error_rate:.0%} per-index INTERNAL_ERROR ({faulty.url})")
            run_scenario(results, "errors", faulty, workers, n, args.repeats, args.timeout)
            mb = [wk for wk in workers if wk.contender == "metricsbuf"]
            if mb:
                _say("cheap per-index retries: metricsbuf without and with errors, back to back")
                run_retry_pairs(results, fast, faulty, mb[0], n, args.repeats, args.timeout)

        measure_floor(results, workers[0])

        if "memory" in scenarios:
            _say(f"memory: a {args.burst:,}-point burst against an endpoint that never answers")
            run_memory(results, silent, contenders, args.burst, args.max_buffered, log_dir, args.timeout)
    finally:
        for worker in workers:
            worker.stop()
        for server in servers:
            server.stop()
    results.finished = time.time()
    results.config["library_at_end"] = _report.library_fingerprint()
    results.config["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if results.config["library_at_end"]["sha256"] != results.config["environment"]["library"]["sha256"]:
        results.errors.append("metricsbuf's sources changed during the run: the figures may mix versions")

    summary = _report.summarize(results)
    _say("")
    _say(_report.console_summary(summary))
    md_path, png_path = out_dir / "RESULTS.md", out_dir / "results.png"
    _report.write_chart(summary, png_path)
    md_path.write_text(_report.markdown(summary, png_path.name))
    _say(f"\nwrote {md_path} and {png_path}")
    if results.errors:
        _say(f"{len(results.errors)} run(s) failed; worker logs in {log_dir}")
    return 0  # benchmarks never fail CI


if __name__ == "__main__":
    sys.exit(main())
