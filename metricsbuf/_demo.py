"""``python -m metricsbuf demo``: a simulated async training loop shipping metrics through MetricsLogger.

``--sync``: the same loop written synchronously, with SyncMetricsLogger (and a second thread
logging beside the training loop).

By default it starts moto's SageMaker server in-process on 127.0.0.1 (the ``demo`` extra
installs it) and uses dummy credentials. ``--endpoint-url URL`` uses another endpoint that
serves both SageMaker APIs; ``--aws --region R`` uses the standard AWS endpoints with real
credentials. Either way the trial component is created if needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from ._console import Progress, bar
from ._logger import MetricsLogger
from ._models import FailedMetric, MetricsStats
from ._sync import SyncMetricsLogger

METRIC_NAMES = ("train:loss", "train:accuracy", "learning_rate", "grad_norm")
LOADER_METRIC = "data:queue_depth"  # logged by the --sync demo's second thread


@dataclass(frozen=True)
class DemoOptions:
    trial_component: str = "metricsbuf-demo"
    steps: int = 1000
    step_seconds: float = 0.001
    endpoint_url: str | None = None
    region: str | None = None
    aws: bool = False
    sync: bool = False  # SyncMetricsLogger in a synchronous loop instead of MetricsLogger


@contextlib.contextmanager
def _embedded_moto() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "the embedded endpoint needs moto's server: pip install 'metricsbuf[demo]' "
            "(or pass --endpoint-url/--region to run against AWS)"
        ) from exc
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _simulated_metrics(step: int, total: int, rng: random.Random) -> dict[str, float]:
    progress = step / max(1, total - 1)
    lr = 3e-4 * 0.5 * (1 + math.cos(math.pi * progress))
    loss = 2.5 * math.exp(-3 * progress) + 0.05 + rng.gauss(0, 0.02)
    return {
        "train:loss": loss,
        "train:accuracy": min(1.0, 1 - loss / 2.6 + rng.gauss(0, 0.01)),
        "learning_rate": lr,
        "grad_norm": abs(rng.gauss(1.0, 0.3)) * (1 - 0.5 * progress),
    }


def _progress_line(step: int, total: int, metrics: MetricsLogger | SyncMetricsLogger, started: float) -> str:
    stats = metrics.stats
    return (
        f"{bar(step, total)} step {step}/{total}  logged {stats.logged}  "
        f"delivered {stats.delivered}  pending {stats.pending}  requests {stats.requests}  "
        f"{time.monotonic() - started:5.1f}s"
    )


def _sagemaker_client(endpoint_url: str | None, region: str) -> Any:
    from aiobotocore.session import get_session

    return get_session().create_client("sagemaker", region_name=region, endpoint_url=endpoint_url)


async def _create_trial_component(name: str, endpoint_url: str | None, region: str) -> None:
    async with _sagemaker_client(endpoint_url, region) as sagemaker:
        with contextlib.suppress(sagemaker.exceptions.ResourceInUse):
            await sagemaker.create_trial_component(TrialComponentName=name)


async def _stored_metrics(name: str, endpoint_url: str | None, region: str) -> dict[str, Any]:
    """The per-metric summaries the service keeps (DescribeTrialComponent), by metric name."""
    async with _sagemaker_client(endpoint_url, region) as sagemaker:
        described = await sagemaker.describe_trial_component(TrialComponentName=name)
    return {m["MetricName"]: m for m in described.get("Metrics", [])}


async def _run(options: DemoOptions, endpoint_url: str | None, region: str, out: TextIO) -> int:
    await _create_trial_component(options.trial_component, endpoint_url, region)
    rng = random.Random(42)
    started = time.monotonic()
    async with MetricsLogger(
        options.trial_component, endpoint_url=endpoint_url, region_name=region, flush_interval=0.5
    ) as metrics:
        progress = Progress(out, every=0.5)
        for step in range(options.steps):
            await asyncio.sleep(options.step_seconds)  # the training step
            await metrics.log_many(_simulated_metrics(step, options.steps, rng), step=step)
            if (step + 1) % 25 == 0:
                progress.update(_progress_line(step + 1, options.steps, metrics, started))
    progress.done(_progress_line(options.steps, options.steps, metrics, started) + "  (closed)")
    out.write("\n")
    stored = await _stored_metrics(options.trial_component, endpoint_url, region)
    return _report(options, METRIC_NAMES, stored, metrics.stats, metrics.failures, out)


def _run_sync(options: DemoOptions, endpoint_url: str | None, region: str, out: TextIO) -> int:
    """The same loop, synchronous: SyncMetricsLogger, with a second thread logging beside it."""
    asyncio.run(_create_trial_component(options.trial_component, endpoint_url, region))
    rng = random.Random(42)
    started = time.monotonic()
    out.write("A synchronous loop with SyncMetricsLogger; a data-loader thread logs data:queue_depth too\n")
    in_calls = 0.0  # seconds spent inside log() by the training loop
    stop = threading.Event()
    with SyncMetricsLogger(
        options.trial_component, endpoint_url=endpoint_url, region_name=region, flush_interval=0.5
    ) as metrics:

        def data_loader() -> None:  # log() is safe from any thread
            depth = random.Random(7)
            tick = 0
            while not stop.wait(0.02):
                metrics.log(LOADER_METRIC, float(depth.randint(0, 8)), step=tick)
                tick += 1

        loader = threading.Thread(target=data_loader, name="data-loader")
        loader.start()
        progress = Progress(out, every=0.5)
        clock = time.perf_counter
        try:
            for step in range(options.steps):
                time.sleep(options.step_seconds)  # the training step
                values = _simulated_metrics(step, options.steps, rng)
                t0 = clock()
                for name, value in values.items():
                    metrics.log(name, value, step=step)
                in_calls += clock() - t0
                if (step + 1) % 25 == 0:
                    progress.update(_progress_line(step + 1, options.steps, metrics, started))
        finally:
            stop.set()
            loader.join()
    progress.done(_progress_line(options.steps, options.steps, metrics, started) + "  (closed)")
    points = options.steps * len(METRIC_NAMES)
    if points:
        out.write(
            f"The training loop spent {in_calls / points * 1e6:.1f} us per point inside log() "
            "(validation and a hand-off to the logger's thread; never the network)\n"
        )
    out.write("\n")
    stored = asyncio.run(_stored_metrics(options.trial_component, endpoint_url, region))
    names = (*METRIC_NAMES, LOADER_METRIC)
    return _report(options, names, stored, metrics.stats, metrics.failures, out)


def _report(
    options: DemoOptions,
    names: tuple[str, ...],
    stored: dict[str, Any],
    stats: MetricsStats,
    failures: list[FailedMetric],
    out: TextIO,
) -> int:
    """What the service stored beside the logger's own account; 0 when they agree."""
    out.write(
        f"What the service stored for trial component {options.trial_component!r} (DescribeTrialComponent):\n"
    )
    out.write(f"  {'metric':<18}{'count':>8}{'min':>12}{'max':>12}{'last':>12}\n")
    for name in names:
        summary: dict[str, Any] = stored.get(name, {})
        out.write(
            f"  {name:<18}{summary.get('Count', 0):>8}{summary.get('Min', math.nan):>12.5g}"
            f"{summary.get('Max', math.nan):>12.5g}{summary.get('Last', math.nan):>12.5g}\n"
        )
    out.write("\nThe logger's own account:\n")
    for field in ("logged", "delivered", "failed", "dropped", "rejected", "retried", "requests", "pending"):
        out.write(f"  {field:<10}{getattr(stats, field):>8}\n")
    if stats.requests:
        out.write(f"  points per request: {stats.delivered / stats.requests:.2f}\n")
    for failure in failures[:5]:
        out.write(f"  failed: {failure}\n")
    stored_total = sum(int(stored.get(name, {}).get("Count", 0)) for name in names)
    consistent = stats.failed == 0 and stats.pending == 0 and stored_total == stats.delivered
    out.write(
        f"\n{'OK' if consistent else 'MISMATCH'}: {stored_total} points stored, {stats.delivered} delivered, "
        f"{stats.failed} failed\n"
    )
    return 0 if consistent else 1


def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if options.aws or options.endpoint_url is not None:
        region = options.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region is None:
            raise SystemExit("pass --region (or set AWS_DEFAULT_REGION) with --aws or --endpoint-url")
        out.write(f"Endpoint: {options.endpoint_url or 'AWS, region ' + region}\n")
        return _run_either(options, options.endpoint_url, region, out)
    with _embedded_moto() as endpoint_url:
        out.write(f"Embedded SageMaker endpoint (moto) at {endpoint_url}\n")
        # Dummy credentials for the local endpoint only; a real run uses the standard chain.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
        return _run_either(options, endpoint_url, options.region or "us-east-1", out)


def _run_either(options: DemoOptions, endpoint_url: str | None, region: str, out: TextIO) -> int:
    if options.sync:
        return _run_sync(options, endpoint_url, region, out)
    return asyncio.run(_run(options, endpoint_url, region, out))
