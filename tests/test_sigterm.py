"""SIGTERM: every live logger is drained before the process ends, with the usual exit status.

Each scenario is a child process that logs against a slow fake service (so points are still
buffered) and prints each step once ``log()`` has returned; the test sends SIGTERM mid-run and
checks that every printed step reached the service (or the spool), and how the process ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import metricsbuf
from metricsbuf import MetricsBufError, SyncMetricsLogger, drain_on_sigterm
from metricsbuf._spool import Spool
from metricsbuf.testing import FakeMetricsServiceProcess

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")

_SYNC_CHILD = """
    import signal, sys, time
    from metricsbuf import SyncMetricsLogger, drain_on_sigterm

    mode, spool = sys.argv[1], (sys.argv[2] or None)
    if mode == "chain":
        def previous(signum, frame):
            print("previous handler ran", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, previous)
    if mode in ("explicit", "chain"):
        drain_on_sigterm(timeout=60)
    metrics = SyncMetricsLogger(
        "sigterm-sync", spool_dir=spool, close_timeout=float(sys.argv[3]), flush_interval=0.1
    )
    print("ready", flush=True)
    step = 0
    while True:
        metrics.log("loss", float(step), step=step)
        print(step, flush=True)
        step += 1
        time.sleep(0.002)
"""

_ASYNC_CHILD = """
    import asyncio, sys
    from metricsbuf import MetricsLogger, drain_on_sigterm

    async def main():
        if sys.argv[1] == "explicit":
            drain_on_sigterm(timeout=60)
        async with MetricsLogger("sigterm-async", close_timeout=20.0, flush_interval=0.1) as metrics:
            print("ready", flush=True)
            step = 0
            while True:
                await metrics.log("loss", float(step), step=step)
                print(step, flush=True)
                step += 1
                await asyncio.sleep(0.002)

    asyncio.run(main())
"""


def _child_env(service: FakeMetricsServiceProcess, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("TRAINING_JOB_ARN", "METRICSBUF_DRAIN_ON_SIGTERM")
    }
    env.update(service.environ())
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _run_until_sigterm(
    script: str, args: list[str], env: dict[str, str], steps_before: int = 300
) -> tuple[int, list[int], str, float]:
    """Starts the child, sends SIGTERM once it has logged ``steps_before`` steps; returns
    (exit status, the steps it logged, stderr, seconds from SIGTERM to exit)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    sent_at = 0.0
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for line in proc.stdout:
            lines.append(line.strip())
            if len(lines) == steps_before:
                sent_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                break
        rest, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ended = time.monotonic() - sent_at
    lines.extend(line.strip() for line in rest.splitlines())
    steps = [int(line) for line in lines if line.isdigit()]
    assert len(steps) >= steps_before, stderr
    return proc.returncode, steps, stderr + "\n".join(x for x in lines if not x.isdigit()), ended


@pytest.mark.parametrize("mode", ["explicit", "auto"])
def test_a_sync_logger_drains_at_sigterm_and_the_process_ends_with_sigterm(mode: str) -> None:
    with FakeMetricsServiceProcess(latency=0.2) as service:  # slower than the loop logs
        extra = {"TRAINING_JOB_ARN": "arn:aws:sagemaker:us-east-1:123456789012:training-job/j"}
        env = _child_env(service, **(extra if mode == "auto" else {}))
        status, steps, stderr, ended = _run_until_sigterm(_SYNC_CHILD, [mode, "", "20"], env)
        stored = service.state().points
    assert status == -signal.SIGTERM, stderr
    assert "SIGTERM received" in stderr
    stored_steps = [p.step for p in stored]
    assert set(steps) <= set(stored_steps), stderr  # every point whose log() returned
    assert not service_duplicates(stored_steps)
    assert ended < 30


def test_without_the_drain_the_same_script_loses_its_buffered_points() -> None:
    # The control for the tests above: at SIGTERM, points are still buffered.
    with FakeMetricsServiceProcess(latency=0.2) as service:
        status, steps, stderr, _ = _run_until_sigterm(_SYNC_CHILD, ["none", "", "20"], _child_env(service))
        stored_steps = {p.step for p in service.state().points}
    assert status == -signal.SIGTERM, stderr
    assert len(set(steps) - stored_steps) > 20


def test_a_previous_python_handler_runs_after_the_drain() -> None:
    with FakeMetricsServiceProcess(latency=0.2) as service:
        status, steps, output, _ = _run_until_sigterm(_SYNC_CHILD, ["chain", "", "20"], _child_env(service))
        stored_steps = [p.step for p in service.state().points]
    assert status == 7, output  # the previous handler's sys.exit(7), as without the drain
    assert "previous handler ran" in output
    assert set(steps) <= set(stored_steps)


def test_with_a_spool_what_is_not_delivered_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    with FakeMetricsServiceProcess(latency=5.0) as service:  # nothing answers within close_timeout
        status, steps, stderr, ended = _run_until_sigterm(
            _SYNC_CHILD, ["explicit", str(spool), "1"], _child_env(service), steps_before=200
        )
        assert status == -signal.SIGTERM, stderr
        assert ended < 15
        on_disk = Spool.open(spool, read_only=True)
        try:
            left = on_disk.count_pending()
        finally:
            on_disk.close()
        assert left > 0  # the close wrote them to disk rather than failing them
        # The next logger on the spool delivers them.
        service.configure(latency=0.0)
        for key, value in service.environ().items():
            monkeypatch.setenv(key, value)
        with SyncMetricsLogger("sigterm-sync", spool_dir=spool) as again:
            pass
        assert again.stats.recovered == left
        stored_steps = {p.step for p in service.state().points}
    assert set(steps) <= stored_steps


_INSIDE_LOG_CHILD = """
    import os, signal, time
    from metricsbuf import SyncMetricsLogger, drain_on_sigterm

    drain_on_sigterm(timeout=60)
    metrics = SyncMetricsLogger("sigterm-sync", close_timeout=20.0, flush_interval=0.1)
    for step in range(500):
        metrics.log("loss", float(step), step=step)
        print(step, flush=True)
    # As if the signal arrived inside log(): the main thread holds the hand-off lock while the
    # handler runs in it and waits for the close.
    metrics._lock.acquire()
    metrics._points.append(("loss", 500.0, 500, time.time(), time.time()))  # mid-append
    print(500, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
"""


def test_a_sigterm_inside_log_holding_the_hand_off_lock_still_drains() -> None:
    with FakeMetricsServiceProcess(latency=0.2) as service:
        env = _child_env(service)
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_INSIDE_LOG_CHILD)],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
        stored_steps = sorted(p.step for p in service.state().points)
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert "held by a suspended thread" in result.stderr
    assert stored_steps == list(range(501)), result.stderr


@pytest.mark.parametrize("mode", ["explicit", "auto"])
def test_an_async_logger_on_the_main_threads_loop_drains_at_sigterm(mode: str) -> None:
    with FakeMetricsServiceProcess(latency=0.2) as service:
        extra = {"METRICSBUF_DRAIN_ON_SIGTERM": "1"} if mode == "auto" else {}
        status, steps, stderr, ended = _run_until_sigterm(_ASYNC_CHILD, [mode], _child_env(service, **extra))
        stored_steps = [p.step for p in service.state().points]
    assert status == -signal.SIGTERM, stderr
    assert set(steps) <= set(stored_steps), stderr
    assert not service_duplicates(stored_steps)
    assert ended < 30


def service_duplicates(steps: list[int | None]) -> list[int | None]:
    seen: set[int | None] = set()
    return [s for s in steps if s in seen or seen.add(s)]  # type: ignore[func-returns-value]


# ---------------------------------------------------------------------------------------------
# When the handler is installed


_WHICH_HANDLER = """
    import asyncio, signal, sys, threading
    import metricsbuf

    class Client:
        async def batch_put_metrics(self, **kwargs):
            return {"Errors": []}

    if sys.argv[1] == "ignored":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.argv[2] == "sync":
        with metricsbuf.SyncMetricsLogger("run-1", client=Client()):
            pass
    elif sys.argv[2] == "async":
        async def main():
            async with metricsbuf.MetricsLogger("run-1", client=Client()):
                pass
        asyncio.run(main())
    else:  # an async logger started in another thread
        thread = threading.Thread(target=lambda: asyncio.run(
            metricsbuf.MetricsLogger("run-1", client=Client()).start()))
        thread.start()
        thread.join()
    handler = signal.getsignal(signal.SIGTERM)
    print(handler.name if isinstance(handler, signal.Handlers) else handler.__name__)
"""

SAGEMAKER = {"TRAINING_JOB_ARN": "arn:aws:sagemaker:us-east-1:123456789012:training-job/j"}


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        (SAGEMAKER, ["", "sync"], "_on_sigterm"),
        (SAGEMAKER, ["", "async"], "_on_sigterm"),
        (SAGEMAKER, ["", "thread"], "SIG_DFL"),  # only the main thread may install it
        (SAGEMAKER, ["ignored", "sync"], "SIG_IGN"),  # the process would not have ended
        ({**SAGEMAKER, "METRICSBUF_DRAIN_ON_SIGTERM": "0"}, ["", "sync"], "SIG_DFL"),
        ({**SAGEMAKER, "METRICSBUF_DRAIN_ON_SIGTERM": "off"}, ["", "async"], "SIG_DFL"),
        ({}, ["", "sync"], "SIG_DFL"),  # outside SageMaker: only when asked
        ({"METRICSBUF_DRAIN_ON_SIGTERM": "1"}, ["", "sync"], "_on_sigterm"),
    ],
)
def test_automatic_installation(env: dict[str, str], args: list[str], expected: str) -> None:
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("TRAINING_JOB_ARN", "METRICSBUF_DRAIN_ON_SIGTERM")
    }
    full_env.update(env)
    full_env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_WHICH_HANDLER), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_drain_on_sigterm_needs_the_main_thread_and_a_valid_timeout() -> None:
    raised: list[BaseException] = []

    def call() -> None:
        try:
            drain_on_sigterm()
        except MetricsBufError as exc:
            raised.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert len(raised) == 1 and "main thread" in str(raised[0])
    with pytest.raises(metricsbuf.InvalidMetricError, match="timeout"):
        drain_on_sigterm(timeout=0)
