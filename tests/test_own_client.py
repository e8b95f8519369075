"""With client=None the logger builds its own aiobotocore client; setup problems surface at __aenter__."""

from __future__ import annotations

import logging

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from metricsbuf import MetricsBufError, MetricsLogger


async def test_missing_credentials_fail_at_enter(no_aws_config: pytest.MonkeyPatch) -> None:
    metrics = MetricsLogger("run-1", region_name="us-east-1")
    with pytest.raises(MetricsBufError, match="no AWS credentials found"):
        async with metrics:
            pass
    with pytest.raises(MetricsBufError):
        await metrics.log("loss", 1.0)


async def test_missing_region_fails_at_enter(aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(MetricsBufError, match="no AWS region"):
        async with MetricsLogger("run-1"):
            pass


async def test_own_client_is_created_and_closed(aws_env: pytest.MonkeyPatch) -> None:
    async with MetricsLogger("run-1", region_name="eu-west-1", endpoint_url="http://127.0.0.1:9") as metrics:
        client = metrics._sender.client
        assert client is not None
        config = client.meta.config  # type: ignore[attr-defined]
        assert client.meta.region_name == "eu-west-1"  # type: ignore[attr-defined]
        assert config.retries["total_max_attempts"] == 1
        # validation is off: the serializer is not wrapped in botocore's validating decorator
        assert type(client._serializer).__name__ != "ParamValidationDecorator"  # type: ignore[attr-defined]
    # closed on exit: aiobotocore's session is gone (no "Unclosed client session" warning either)
    assert client._endpoint.http_session._sessions is None  # type: ignore[attr-defined]


async def test_a_caller_client_that_retries_by_itself_gets_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="metricsbuf")
    session = get_session()
    kwargs = {
        "region_name": "us-east-1",
        "aws_access_key_id": "x",
        "aws_secret_access_key": "x",
        "endpoint_url": "http://127.0.0.1:9",
    }
    async with session.create_client("sagemaker-metrics", **kwargs) as retrying_client:
        async with MetricsLogger("run-1", client=retrying_client):
            pass
    assert any("retries on its own" in r.getMessage() for r in caplog.records)
    caplog.clear()
    config = AioConfig(retries={"total_max_attempts": 1})
    async with session.create_client("sagemaker-metrics", config=config, **kwargs) as quiet_client:
        async with MetricsLogger("run-1", client=quiet_client):
            pass
        # the caller's client stays open after the logger closes
        assert quiet_client._endpoint.http_session._sessions is not None
    assert not any("retries on its own" in r.getMessage() for r in caplog.records)


async def test_own_client_sends_a_fixed_user_agent(aws_env: pytest.MonkeyPatch) -> None:
    """The own client sets Config.user_agent (botocore would rebuild the header twice a request)."""
    from metricsbuf import __version__
    from metricsbuf.testing import FakeMetricsService

    sent: list[str] = []

    def record(request: object, **_: object) -> None:
        agent = request.headers["User-Agent"]  # type: ignore[attr-defined]
        sent.append(agent.decode() if isinstance(agent, bytes) else agent)

    async with FakeMetricsService() as service:
        url = service.endpoint_url
        async with MetricsLogger("run-1", region_name="us-east-1", endpoint_url=url) as metrics:
            events = metrics._sender.client.meta.events  # type: ignore[union-attr]
            events.register("before-send.sagemaker-metrics", record)
            for step in range(25):
                await metrics.log("loss", 0.5, step=step)
        assert metrics.stats.delivered == 25 and len(service.points) == 25
    assert len(sent) == 3 and len(set(sent)) == 1
    (agent,) = set(sent)
    assert agent.startswith(f"metricsbuf/{__version__} aiobotocore/")
    assert " Python/" in agent and " botocore/" in agent  # botocore appends its own version
    assert " app/" not in agent


async def test_own_client_user_agent_keeps_the_application_id(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("AWS_SDK_UA_APP_ID", "team trainer#7")
    async with MetricsLogger("run-1", region_name="us-east-1", endpoint_url="http://127.0.0.1:9") as metrics:
        config = metrics._sender.client.meta.config  # type: ignore[union-attr]
    assert " app/team-trainer#7" in config.user_agent  # sanitized the way botocore does
