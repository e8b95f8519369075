"""Helpers for the fake service's own tests (test_fake_service.py, test_in_memory_client.py,
test_rate_limit.py) and the reliability suite: a real aiobotocore client, and one MetricData item."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

# One session for the process: botocore caches the loaded service model in it.
SESSION = get_session()


@asynccontextmanager
async def metrics_client(
    endpoint_url: str, *, validate: bool = True, max_pool_connections: int = 10
) -> AsyncIterator[Any]:
    """A real aiobotocore sagemaker-metrics client with botocore's retries off."""
    config = AioConfig(
        retries={"total_max_attempts": 1},
        parameter_validation=validate,
        max_pool_connections=max_pool_connections,
    )
    async with SESSION.create_client(
        "sagemaker-metrics",
        region_name="us-east-1",
        endpoint_url=endpoint_url,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=config,
        verify=False,  # plain http; spares loading the CA bundle (~40 ms) before the first request
    ) as client:
        yield client


def item(name: str = "loss", value: Any = 1.0, step: int | None = 0, ts: Any = None) -> dict[str, Any]:
    """One MetricData item; the timestamp is now unless given."""
    out: dict[str, Any] = {"MetricName": name, "Value": value, "Timestamp": time.time() if ts is None else ts}
    if step is not None:
        out["Step"] = step
    return out
