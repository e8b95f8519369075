"""Shared fixtures: an in-memory client for fast, deterministic unit tests, and an AWS
environment isolated from the machine's for tests of the logger's own client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

Response = dict[str, Any]
Handler = Callable[[int, list[dict[str, Any]]], Response | None]


class FakeClient:
    """Stands in for an aiobotocore ``sagemaker-metrics`` client.

    ``handler(request_number, metric_data)`` decides each answer: return a response dict
    (``None`` means all stored) or raise. ``gate``, when set, holds every request until it is
    opened, so a test can keep requests in flight for as long as it needs.
    """

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.requests: list[list[dict[str, Any]]] = []
        self.trial_components: list[str] = []
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.stored: list[dict[str, Any]] = []

    async def batch_put_metrics(self, **kwargs: Any) -> Response:
        data = kwargs["MetricData"]
        number = len(self.requests)
        self.requests.append(list(data))
        self.trial_components.append(kwargs["TrialComponentName"])
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            response = self.handler(number, data) if self.handler else None
        finally:
            self.in_flight -= 1
        response = response or {"Errors": []}
        failed = {e.get("MetricIndex") for e in response.get("Errors", []) if isinstance(e, dict)}
        self.stored.extend(item for i, item in enumerate(data) if i not in failed)
        return response

    @property
    def sent_points(self) -> int:
        return sum(len(r) for r in self.requests)


@pytest.fixture(autouse=True)
def host_rate_directory(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each test's loggers share their adaptive rate (rate_scope "host") through a directory of
    the test's own, not the machine's temporary directory (a state outlives its loggers)."""
    from metricsbuf import _host_rate

    directory = tmp_path_factory.mktemp("host-rate")
    monkeypatch.setattr(_host_rate, "STATE_DIRECTORY", str(directory))
    return directory


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


def errors(*pairs: tuple[int, str]) -> Response:
    return {"Errors": [{"MetricIndex": i, "Code": c} for i, c in pairs]}


def assert_accounted(stats: Any) -> None:
    assert stats.logged == stats.delivered + stats.failed + stats.dropped + stats.pending, stats


@pytest.fixture
def no_aws_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS credentials, region, profile or config files from the machine running the tests."""
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_SDK_UA_APP_ID",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


@pytest.fixture
def aws_env(no_aws_config: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Dummy credentials in the environment, nothing else from the machine."""
    no_aws_config.setenv("AWS_ACCESS_KEY_ID", "test")
    no_aws_config.setenv("AWS_SECRET_ACCESS_KEY", "test")
    return no_aws_config


def count_pacer_turns(metrics: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the turns a logger's StepPacer gives (the own client's hooks look ``turn`` up at
    each call); returns a one-item list holding the count."""
    turns = [0]
    real_turn = metrics._pacer.turn

    async def counting_turn() -> None:
        turns[0] += 1
        await real_turn()

    monkeypatch.setattr(metrics._pacer, "turn", counting_turn)
    return turns


async def flusher_ended(timeout: float = 5.0) -> None:
    """Waits until the (one) running logger's flusher task has ended: no fixed sleep that a
    loaded machine could outlast."""
    flusher = next(t for t in asyncio.all_tasks() if t.get_name().startswith("metricsbuf-flusher"))
    await asyncio.wait([flusher], timeout=timeout)
    assert flusher.done(), "the flusher did not end"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's server (SageMaker and SageMaker Metrics) on 127.0.0.1, one per test module."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
