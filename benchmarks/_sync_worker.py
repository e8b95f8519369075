"""A worker process for benchmarks/sync.py: one contender in a plain synchronous training loop.

    python benchmarks/_sync_worker.py --contender sync_metricsbuf|sagemaker_sdk

Reads one JSON command per line on stdin and answers one JSON line on stdout (as _worker.py):

    {"cmd": "run", "endpoint": URL, "tc": NAME, "n": N, "switch_interval": S or null, "gil_pause": S or null,
     "runner": null or one of RUNNERS (the loop's variants: an idle logger, a spool, stand-ins for log())}
    {"cmd": "floor", "seconds": S, "mode": "alone" | "loop" | "python thread" | "CPU only"}
    {"cmd": "reference", "endpoint": URL, "tc": NAME, "n": N}   (the async logger, for comparison)

each answered {"ok": true, "result": {...}} (or {"ok": false, "error": ...}).

The loop (every contender alike):

    for step in range(N // 4):
        value = 1.0 / (step + 1)
        t0 = perf_counter()
        for name in NAMES:
            <the contender's logging call>
        producer_time += perf_counter() - t0
        time.sleep(0)        # a training step lets other threads run (GPU waits, data loading)

A ticker thread sleeps 1 ms at a time for the whole window and records how late each wake-up
is: a thread that gave up the GIL (as a training step does around GPU work) waits that long to
get it back while the logger's background thread holds it.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import _workloads as w


class ThreadTicker:
    """A thread that sleeps 1 ms at a time and records the lateness of each wake-up."""

    PERIOD = 0.001

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.collections: list[tuple[int, float]] = []  # (generation, seconds)
        self._gc_started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.collections.append((info["generation"], time.perf_counter() - self._gc_started))

    def _run(self) -> None:
        pc = time.perf_counter
        sleep = time.sleep
        delays = self.delays
        period = self.PERIOD
        stop = self._stop
        while not stop.is_set():
            t = pc()
            sleep(period)
            delays.append(pc() - t - period)

    def start(self) -> None:
        gc.collect()  # the setup's garbage is paid before the window opens, for every contender alike
        gc.callbacks.append(self._on_gc)
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        gc.callbacks.remove(self._on_gc)

    def summary(self) -> dict[str, float]:
        d = sorted(self.delays)
        full = [s for g, s in self.collections if g == 2]
        return {
            "gil_max": d[-1] if d else float("nan"),
            "gil_p99": d[min(len(d) - 1, int(0.99 * len(d)))] if d else float("nan"),
            "gil_over_4ms": sum(1 for x in d if x > 0.004),
            "ticks": len(d),
            "gc_full_collections": len(full),
            "gc_longest_full": max(full, default=0.0),
        }


def timed_loop(log: Callable[..., None], steps: int) -> float:
    """The loop of the module docstring for one contender's call; returns the seconds inside it."""
    pc = time.perf_counter
    sleep = time.sleep
    names = w.NAMES
    producer = 0.0
    for step in range(steps):
        value = 1.0 / (step + 1)
        t0 = pc()
        for name in names:
            log(name, value, step=step)
        producer += pc() - t0
        sleep(0)
    return producer


def _thread_cpu(native_id: int | None) -> float:
    """CPU seconds (user + system) used so far by the thread with that native id (psutil)."""
    import psutil

    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return float(thread.user_time + thread.system_time)
    return float("nan")


def run_sync_metricsbuf(
    endpoint: str, tc: str, n: int, close_timeout: float = 30.0, **options: Any
) -> dict[str, Any]:
    import metricsbuf

    steps = n // len(w.NAMES)
    ticker = ThreadTicker()
    if not options.get("offline"):  # an offline logger takes no endpoint
        options.update(region_name=w.REGION, endpoint_url=endpoint)
    with metricsbuf.SyncMetricsLogger(
        tc, max_in_flight=w.IN_FLIGHT, close_timeout=close_timeout, **options
    ) as metrics:
        log = metrics.log
        loop_thread = metrics._thread.native_id
        loop_cpu0 = _thread_cpu(loop_thread)
        ticker.start()
        cpu0 = time.process_time()
        t_start = time.perf_counter()
        producer = timed_loop(log, steps)
        t_produced = time.perf_counter()
        backlog = metrics.stats.pending
        if close_timeout >= 30.0:
            metrics.flush()
        t_end = time.perf_counter()
        cpu = time.process_time() - cpu0
        ticker.stop()
        loop_cpu = _thread_cpu(loop_thread) - loop_cpu0
        stats = metrics.stats
    return {
        "producer_time": producer,
        "elapsed": t_end - t_start,
        "produce_elapsed": t_produced - t_start,
        "cpu": cpu,
        "loop_thread_cpu": loop_cpu,
        "backlog_at_end_of_loop": backlog,
        "client_stats": {"logged": stats.logged, "delivered": stats.delivered, "requests": stats.requests},
        **ticker.summary(),
    }


def run_sagemaker_sdk(endpoint: str, tc: str, n: int) -> dict[str, Any]:
    steps = n // len(w.NAMES)
    manager = w.make_sdk_manager(endpoint, tc)
    log_metric = manager.log_metric
    errors = 0
    ticker = ThreadTicker()
    ticker.start()
    pc = time.perf_counter
    sleep = time.sleep
    names = w.NAMES
    producer = 0.0
    cpu0 = time.process_time()
    t_start = pc()
    for step in range(steps):
        value = 1.0 / (step + 1)
        t0 = pc()
        for name in names:
            try:  # a plain Exception on any per-index error (the batch is lost); the loop goes on
                log_metric(name, value, step=step)
            except Exception:
                errors += 1
        producer += pc() - t0
        sleep(0)
    t_produced = pc()
    backlog = len(manager.sink._buffer)
    t0 = pc()
    try:
        manager.close()  # sends the last partial batch, on the caller's thread
    except Exception:
        errors += 1
    t_end = pc()
    producer += t_end - t0
    cpu = time.process_time() - cpu0
    ticker.stop()
    return {
        "producer_time": producer,
        "elapsed": t_end - t_start,
        "produce_elapsed": t_produced - t_start,
        "cpu": cpu,
        "loop_thread_cpu": 0.0,
        "backlog_at_end_of_loop": backlog,
        "client_stats": {"raised": errors},
        **ticker.summary(),
    }


def run_sync_metricsbuf_idle(endpoint: str, tc: str, n: int) -> dict[str, Any]:
    """The same loop against an endpoint that never answers: the loop thread sends its first 8
    requests and then idles, so the caller's cost is log()'s own (nothing is delivered)."""
    return run_sync_metricsbuf(endpoint, tc, n, close_timeout=0.5)


def run_sync_metricsbuf_spool_sender(endpoint: str, tc: str, n: int) -> dict[str, Any]:
    """The same loop with the sending moved out of the training process: the logger only writes
    a spool (``spool_dir=DIR, offline=True``: no network, its loop thread commits to SQLite every
    ``spool_interval``), and a second process, ``metricsbuf sync DIR``, sends it. The sender runs
    after the loop here, so the training process's figures (caller's cost, GIL waits) are those
    of the spool writer alone; its time is reported as ``sender_seconds``."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="metricsbuf-sync-bench-spool-") as spool:
        result = run_sync_metricsbuf(endpoint, tc, n, spool_dir=spool, offline=True)
        t0 = time.perf_counter()
        sender = subprocess.run(
            [sys.executable, "-m", "metricsbuf", "sync", spool]
            + ["--endpoint-url", endpoint, "--region", w.REGION],
            capture_output=True,
            text=True,
            timeout=600,
        )
        result["sender_seconds"] = time.perf_counter() - t0
        result["sender_exit"] = sender.returncode
        if sender.returncode != 0:
            sys.stderr.write(sender.stdout + sender.stderr)
    return result


def _call_floors() -> dict[str, Any]:
    """Stand-ins for log() that do less than any validating logger can: their cost in the same loop
    is a floor for the caller's cost on this machine."""
    from collections import deque

    from metricsbuf._validation import MAX_STEP

    clock = time.time
    known = frozenset(w.NAMES)
    queued: deque[tuple[Any, ...]] = deque()
    append = queued.append

    def empty(name: str, value: float, *, step: int | None = None, timestamp: float | None = None) -> None:
        """A call with log()'s signature that does nothing."""

    def least(name: str, value: float, *, step: int | None = None, timestamp: float | None = None) -> None:
        """The least a validating log() does: read the clock, check the point, queue a tuple."""
        now = clock()
        if (
            type(value) is float
            and value - value == 0.0
            and type(name) is str
            and name in known
            and timestamp is None
            and (step is None or (type(step) is int and 0 <= step <= MAX_STEP))
        ):
            append((name, value, step, now, now))
            return
        raise ValueError(f"invalid point {name!r}")

    return {"empty": empty, "least": least}


def run_call_floor(
    endpoint: str, tc: str, n: int, floor: str = "least", beside: bool = True
) -> dict[str, Any]:
    """The loop with a stand-in (``_call_floors``) in place of log(). ``beside``: while a
    SyncMetricsLogger that was given the same N points just before the window sends them flat out
    (its loop thread as busy as in ``run_sync_metricsbuf``); otherwise with no logger at all."""
    import contextlib

    import metricsbuf

    call = _call_floors()[floor]
    steps = n // len(w.NAMES)
    with contextlib.ExitStack() as stack:
        metrics = None
        loop_cpu0 = 0.0
        if beside:
            metrics = stack.enter_context(
                metricsbuf.SyncMetricsLogger(
                    tc, max_in_flight=w.IN_FLIGHT, region_name=w.REGION, endpoint_url=endpoint
                )
            )
            for step in range(steps):  # the backlog the loop thread sends during the window
                for name in w.NAMES:
                    metrics.log(name, 1.0 / (step + 1), step=step)
            loop_cpu0 = _thread_cpu(metrics._thread.native_id)
        t_start = time.perf_counter()
        producer = timed_loop(call, steps)
        elapsed = time.perf_counter() - t_start
        backlog = metrics.stats.pending if metrics is not None else 0
        loop_cpu = _thread_cpu(metrics._thread.native_id) - loop_cpu0 if metrics is not None else 0.0
    return {
        "producer_time": producer,
        "elapsed": elapsed,
        "loop_thread_cpu": loop_cpu,
        "backlog_at_end_of_loop": backlog,
        "floor": floor,
        "beside": beside,
    }


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "sync_metricsbuf": run_sync_metricsbuf,
    "sync_metricsbuf_idle": run_sync_metricsbuf_idle,
    "sync_metricsbuf_spool_sender": run_sync_metricsbuf_spool_sender,
    "sagemaker_sdk": run_sagemaker_sdk,
    "floor_empty_beside_sender": functools.partial(run_call_floor, floor="empty"),
    "floor_least_beside_sender": functools.partial(run_call_floor, floor="least"),
    "floor_least_alone": functools.partial(run_call_floor, floor="least", beside=False),
}


def _busy_python(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))  # pure Python: holds the GIL except at forced switches


def _busy_without_gil(stop: threading.Event) -> None:
    import hashlib

    data = bytes(1 << 20)
    while not stop.is_set():
        hashlib.sha256(data).digest()  # releases the GIL while it hashes: CPU load only


def floor(seconds: float, mode: str) -> dict[str, Any]:
    """The ticker with no logging, beside: nothing (``alone``), the loop's sleep(0) steps
    (``loop``), a thread computing in Python (``python thread``: what any busy background
    thread costs), a thread computing without the GIL (``CPU only``: the machine's scheduling)."""
    ticker = ThreadTicker()
    ticker.start()
    stop = threading.Event()
    hog = {"python thread": _busy_python, "CPU only": _busy_without_gil}.get(mode)
    thread = threading.Thread(target=hog, args=(stop,)) if hog else None
    if thread is not None:
        thread.start()
    if mode == "loop":
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            time.sleep(0)
    else:
        time.sleep(seconds)
    stop.set()
    if thread is not None:
        thread.join()
    ticker.stop()
    return ticker.summary()


def reference(endpoint: str, tc: str, n: int) -> dict[str, Any]:
    """The async MetricsLogger in benchmarks/run.py's event-loop workload, for the machine's speed."""
    import asyncio

    result: dict[str, Any] = asyncio.run(w.run_metricsbuf(endpoint, tc, n))
    result["n"] = n
    return result


def _set_gil_pause(seconds: float | None) -> float | None:
    """Sets SyncMetricsLogger's pause before each heavy step (a diagnostic); returns the previous one."""
    if seconds is None:
        return None
    import metricsbuf._sync

    previous: float = metricsbuf._sync._GIL_PAUSE
    metricsbuf._sync._GIL_PAUSE = seconds
    return previous


def serve(contender: str) -> None:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything else printing goes to stderr
    if contender == "sagemaker_sdk":
        import sagemaker.experiments._metrics  # noqa: F401  (import cost outside every timing)
    else:
        import metricsbuf  # noqa: F401
    out.write(json.dumps({"ok": True, "ready": contender}) + "\n")
    default_interval = sys.getswitchinterval()
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "run":
                sys.setswitchinterval(cmd.get("switch_interval") or default_interval)
                default_pause = _set_gil_pause(cmd.get("gil_pause"))
                try:
                    runner = RUNNERS[cmd.get("runner") or contender]
                    result = runner(cmd["endpoint"], cmd["tc"], cmd["n"])
                finally:
                    sys.setswitchinterval(default_interval)
                    _set_gil_pause(default_pause)
                result["switch_interval"] = cmd.get("switch_interval") or default_interval
            elif cmd["cmd"] == "floor":
                result = floor(cmd["seconds"], cmd["mode"])
            elif cmd["cmd"] == "reference":
                result = reference(cmd["endpoint"], cmd["tc"], cmd["n"])
            elif cmd["cmd"] == "quit":
                return
            else:
                raise ValueError(f"unknown command {cmd['cmd']!r}")
            reply = {"ok": True, "result": result}
        except Exception as exc:  # report, never kill the run
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--contender", required=True, choices=["sync_metricsbuf", "sagemaker_sdk"])
    serve(parser.parse_args().contender)
