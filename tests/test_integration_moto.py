"""End to end through a real aiobotocore client, over HTTP, to moto's SageMaker server.

moto implements BatchPutMetrics and the per-metric summaries of DescribeTrialComponent;
it needs Step on every point and keeps one point per (name, step).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from metricsbuf import MetricsLogger
from metricsbuf.__main__ import main

CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@pytest.fixture
async def sagemaker(moto_url: str) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "sagemaker", region_name="us-east-1", endpoint_url=moto_url, **CREDENTIALS
    ) as client:
        yield client


async def summaries(sagemaker: Any, trial_component: str) -> dict[str, dict[str, Any]]:
    described = await sagemaker.describe_trial_component(TrialComponentName=trial_component)
    return {m["MetricName"]: m for m in described.get("Metrics", [])}


async def test_own_client_delivers_and_the_service_agrees(
    moto_url: str, sagemaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    await sagemaker.create_trial_component(TrialComponentName="own-client")
    async with MetricsLogger(
        "own-client", endpoint_url=moto_url, region_name="us-east-1", max_in_flight=4
    ) as metrics:
        for step in range(500):
            await metrics.log_many({"loss": 1.0 / (step + 1), "acc": step / 500.0}, step=step)
            metrics.log_nowait("lr", 0.1, step=step)
    stats = metrics.stats
    assert (stats.logged, stats.delivered, stats.failed, stats.pending) == (1500, 1500, 0, 0)
    assert stats.requests == 150  # full batches of 10
    stored = await summaries(sagemaker, "own-client")
    assert stored["loss"]["Count"] == 500 and stored["loss"]["Max"] == 1.0
    assert stored["loss"]["Last"] == pytest.approx(1.0 / 500)
    assert stored["acc"]["Min"] == 0.0 and stored["acc"]["Max"] == pytest.approx(499 / 500)
    assert stored["lr"]["Count"] == 500


async def test_shared_caller_client_serves_several_loggers(moto_url: str, sagemaker: Any) -> None:
    names = [f"shared-{i}" for i in range(3)]
    for name in names:
        await sagemaker.create_trial_component(TrialComponentName=name)
    config = AioConfig(retries={"total_max_attempts": 1})
    async with get_session().create_client(
        "sagemaker-metrics", region_name="us-east-1", endpoint_url=moto_url, config=config, **CREDENTIALS
    ) as client:
        loggers = [MetricsLogger(name, client=client, flush_interval=0.05) for name in names]
        for metrics in loggers:
            await metrics.start()
        for step in range(120):
            for i, metrics in enumerate(loggers):
                await metrics.log("value", float(i * 1000 + step), step=step)
        for metrics in loggers:
            await metrics.aclose()
        # the caller's client is still usable after the loggers closed
        await client.batch_put_metrics(
            TrialComponentName="shared-0",
            MetricData=[{"MetricName": "after", "Timestamp": time.time(), "Step": 0, "Value": 1.0}],
        )
    for i, name in enumerate(names):
        stored = await summaries(sagemaker, name)
        assert stored["value"]["Count"] == 120
        assert stored["value"]["Min"] == i * 1000 and stored["value"]["Max"] == i * 1000 + 119


async def test_subsecond_timestamps_reach_the_wire(moto_url: str, sagemaker: Any) -> None:
    await sagemaker.create_trial_component(TrialComponentName="precise")
    config = AioConfig(retries={"total_max_attempts": 1})
    bodies: list[bytes] = []
    async with get_session().create_client(
        "sagemaker-metrics", region_name="us-east-1", endpoint_url=moto_url, config=config, **CREDENTIALS
    ) as client:
        client.meta.events.register(
            "before-send.sagemaker-metrics.BatchPutMetrics", lambda request, **_: bodies.append(request.body)
        )
        stamp = math.floor(time.time()) - 10 + 0.123456
        async with MetricsLogger("precise", client=client) as metrics:
            await metrics.log("loss", 1.0, step=0, timestamp=stamp)
    assert b".123456," in bodies[0]
    stored = await summaries(sagemaker, "precise")
    # moto keeps the first point's timestamp as the metric's TimeStamp
    assert stored["loss"]["TimeStamp"].timestamp() == pytest.approx(stamp, abs=0.001)
    assert stored["loss"]["TimeStamp"].microsecond // 1000 == 123


def test_demo_command_runs_end_to_end(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "demo")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "demo")
    assert main(["demo", "--steps", "60"]) == 0
    out = capsys.readouterr().out
    assert "OK: 240 points stored, 240 delivered, 0 failed" in out
    for name in ("train:loss", "train:accuracy", "learning_rate", "grad_norm"):
        assert name in out
