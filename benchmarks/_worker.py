"""A worker process for one contender, driven by run.py.

Timing runs (``--contender NAME``): reads one JSON command per line on stdin and answers one
JSON line on stdout, so run.py can interleave the contenders' repeats while each contender keeps
its own process (the SageMaker SDK's import-time side effects, such as its
``logging.basicConfig(level=INFO)``, never touch the other contenders).

    {"cmd": "run", "endpoint": URL, "tc": NAME, "n": N, "timeout": S}  -> {"ok": true, "result": {...}}
    {"cmd": "idle", "seconds": S, "sleeping": B}                        -> {"ok": true, "result": {...}}

Memory runs (``--memory``): one burst in a fresh process, one JSON line, then exit without
cleaning up (the endpoint never answers, so a clean shutdown would only wait).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

import _workloads as w


def _protocol_stream() -> Any:
    """Keeps the real stdout for the protocol; anything else printing goes to stderr."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return out


def serve(contender: str) -> None:
    out = _protocol_stream()
    if contender == "sagemaker_sdk":
        import sagemaker.experiments._metrics  # noqa: F401  (import cost outside every timing)
    elif contender == "metricsbuf":
        import metricsbuf  # noqa: F401
    out.write(json.dumps({"ok": True, "ready": contender}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "run":
                result = asyncio.run(
                    w.run_once(contender, cmd["endpoint"], cmd["tc"], cmd["n"], cmd["timeout"])
                )
            elif cmd["cmd"] == "idle":
                result = asyncio.run(w.idle_baseline(cmd["seconds"], cmd.get("sleeping", False)))
            elif cmd["cmd"] == "quit":
                return
            else:
                raise ValueError(f"unknown command {cmd['cmd']!r}")
            reply = {"ok": True, "result": result}
        except BaseException as exc:  # noqa: BLE001  (report, never kill the run)
            if isinstance(exc, KeyboardInterrupt):
                raise
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")


# ---------------------------------------------------------------------------------------------
# Memory: the endpoint never answers, so every point logged stays held by the contender.


class _Meter:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def start(self) -> None:
        gc.collect()
        if self.mode == "tracemalloc":
            import tracemalloc

            tracemalloc.start()
        else:
            import psutil

            self._proc = psutil.Process()
            self._rss0 = self._proc.memory_info().rss
            self._maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak(self) -> int:
        """Peak bytes allocated since start()."""
        if self.mode == "tracemalloc":
            import tracemalloc

            return tracemalloc.get_traced_memory()[1]
        rss = self._proc.memory_info().rss
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        top = max(rss, maxrss if maxrss > self._maxrss0 else 0)
        return int(top - self._rss0)


async def _wait_until_paused(progress: Any, task: asyncio.Task[Any], quiet: float) -> bool:
    """Waits until progress() stops moving for `quiet` seconds (True) or the task ends (False)."""
    last, since = progress(), time.perf_counter()
    while not task.done():
        await asyncio.sleep(0.05)
        now = progress()
        if now != last:
            last, since = now, time.perf_counter()
        elif time.perf_counter() - since >= quiet:
            return True
    return False


async def memory_metricsbuf(endpoint: str, burst: int, max_buffered: int, mode: str) -> dict[str, Any]:
    import metricsbuf

    meter = _Meter(mode)
    async with metricsbuf.MetricsLogger(
        "bench-memory-metricsbuf",
        region_name=w.REGION,
        endpoint_url=endpoint,
        max_in_flight=w.IN_FLIGHT,
        max_buffered=max_buffered,
    ) as metrics:
        log = metrics.log

        async def producer() -> None:
            for step in range(burst // len(w.NAMES)):
                value = 1.0 / (step + 1)
                for name in w.NAMES:
                    await log(name, value, step=step)
                await asyncio.sleep(0)

        meter.start()
        t0 = time.perf_counter()
        task = asyncio.create_task(producer())
        paused = await _wait_until_paused(lambda: metrics.stats.logged, task, quiet=1.0)
        peak = meter.peak()
        stats = metrics.stats
        _report_and_exit(
            {
                "paused": paused,
                "logged": stats.logged,
                "held": stats.pending,
                "dropped": stats.dropped,
                "peak_bytes": peak,
                "seconds": time.perf_counter() - t0,
            }
        )
    raise AssertionError("unreachable")


async def memory_hand_batched(endpoint: str, burst: int, max_buffered: int, mode: str) -> dict[str, Any]:
    meter = _Meter(mode)
    async with w._aiobotocore_client(endpoint) as client:
        hand = w.HandBatched(client, "bench-memory-hand-batched")
        meter.start()
        t0 = time.perf_counter()
        for step in range(burst // len(w.NAMES)):
            value = 1.0 / (step + 1)
            for name in w.NAMES:
                hand.log_point(name, value, step)
            await asyncio.sleep(0)
        hand.send_rest()
        logged = (burst // len(w.NAMES)) * len(w.NAMES)
        # Let every send task start and park on the semaphore (or on the silent endpoint).
        task = asyncio.ensure_future(asyncio.sleep(3600))
        await _wait_until_paused(lambda: sum(1 for t in hand.tasks if t.done()), task, quiet=0.5)
        task.cancel()
        peak = meter.peak()
        _report_and_exit(
            {
                "paused": False,  # nothing pauses this producer: it holds the whole burst
                "logged": logged,
                "held": logged,
                "dropped": 0,
                "peak_bytes": peak,
                "seconds": time.perf_counter() - t0,
            }
        )
    raise AssertionError("unreachable")


_OUT: Any = None


def _report_and_exit(result: dict[str, Any] | None, error: str | None = None) -> None:
    """Writes the answer and leaves at once: closing would only wait on the silent endpoint."""
    reply = {"ok": True, "result": result} if error is None else {"ok": False, "error": error}
    _OUT.write(json.dumps(reply) + "\n")
    _OUT.flush()
    sys.stderr.flush()
    os._exit(0)


def memory(contender: str, endpoint: str, burst: int, max_buffered: int, mode: str) -> None:
    global _OUT
    _OUT = _protocol_stream()
    fn = {"metricsbuf": memory_metricsbuf, "hand_batched": memory_hand_batched}[contender]
    try:
        asyncio.run(fn(endpoint, burst, max_buffered, mode))
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        _report_and_exit(None, f"{type(exc).__name__}: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contender", required=True, choices=w.CONTENDERS)
    parser.add_argument("--memory", choices=["tracemalloc", "rss"])
    parser.add_argument("--endpoint")
    parser.add_argument("--burst", type=int, default=1_000_000)
    parser.add_argument("--max-buffered", type=int, default=100_000)
    args = parser.parse_args()
    if args.memory:
        memory(args.contender, args.endpoint, args.burst, args.max_buffered, args.memory)
    else:
        serve(args.contender)


if __name__ == "__main__":
    main()
