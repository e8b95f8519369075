"""The aiobotocore client a logger creates for itself when the caller passes none."""

from __future__ import annotations

import contextlib
import logging
import platform
from typing import TYPE_CHECKING, Any, Protocol

from ._exceptions import MetricsBufError
from ._pacing import StepPacer

if TYPE_CHECKING:  # _options imports MetricsClient from here
    from ._options import LoggerOptions

log = logging.getLogger("metricsbuf")

SERVICE_NAME = "sagemaker-metrics"


class MetricsClient(Protocol):
    """What a logger needs from a client: an aiobotocore ``sagemaker-metrics`` client has it."""

    async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]: ...


async def client_for(
    options: LoggerOptions, stack: contextlib.AsyncExitStack, pacer: StepPacer
) -> MetricsClient | None:
    """The client a logger sends with: the caller's, its own (closed by ``stack``), or none offline."""
    if options.offline:
        return None
    if options.client is not None:
        warn_if_client_retries(options.client)
        return options.client
    return await open_own_client(
        stack,
        region_name=options.region_name,
        endpoint_url=options.endpoint_url,
        max_in_flight=options.max_in_flight,
        pacer=pacer,
    )


async def open_own_client(
    stack: contextlib.AsyncExitStack,
    *,
    region_name: str | None,
    endpoint_url: str | None,
    max_in_flight: int,
    pacer: StepPacer,
) -> MetricsClient:
    """Creates a client through the standard AWS credential and region chain; ``stack`` closes it.

    Validation is off (every point was checked at the call) and so are botocore's retries
    (the logger owns the retry budget). Missing credentials or region raise MetricsBufError now,
    rather than as a failure of every point later. ``pacer`` spreads each request's CPU work
    over event-loop iterations (see _pacing.py) through two of aiobotocore's awaited hooks.
    """
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session
    from botocore.exceptions import BotoCoreError, NoRegionError

    session = get_session()
    config = AioConfig(
        parameter_validation=False,
        retries={"total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max(10, max_in_flight),
        user_agent=_user_agent(session.get_config_variable("user_agent_appid")),
    )
    try:
        credentials = await session.get_credentials()
    except BotoCoreError as exc:
        raise MetricsBufError(f"could not load AWS credentials for {SERVICE_NAME}: {exc}") from exc
    if credentials is None:
        raise MetricsBufError(
            "no AWS credentials found: configure them the standard way (environment variables "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance/container role), "
            "or pass client= to MetricsLogger"
        )
    try:
        client = await stack.enter_async_context(
            session.create_client(
                SERVICE_NAME, region_name=region_name, endpoint_url=endpoint_url, config=config
            )
        )
    except NoRegionError as exc:
        raise MetricsBufError(
            "no AWS region configured: pass region_name= to MetricsLogger or set AWS_DEFAULT_REGION"
        ) from exc

    async def wait_for_turn(**_: Any) -> None:
        await pacer.turn()

    # A request's CPU work comes in three stretches: building and serializing it (up to
    # before-sign), signing and handing it to aiohttp, and parsing the response (from
    # before-parse). aiobotocore awaits async handlers, so each stretch waits for its own turn.
    for event in ("before-sign", "before-parse"):
        client.meta.events.register(f"{event}.{SERVICE_NAME}.BatchPutMetrics", wait_for_turn)
    return client  # type: ignore[no-any-return]


def _user_agent(app_id: object) -> str:
    """A fixed User-Agent for the logger's own client (botocore appends its own version).

    Without ``Config.user_agent``, botocore rebuilds its User-Agent string twice for every
    request (a sizeable share of a request's CPU; see benchmarks/RESULTS.md), although it never
    changes. A fixed one is botocore's documented override, the way the SageMaker SDK sets its
    own. ``app_id`` is the user's application id (``AWS_SDK_UA_APP_ID`` or ``sdk_ua_app_id``),
    kept as botocore's own string would (``app/<id>``); the override would otherwise drop it.
    """
    import aiobotocore
    from botocore.useragent import sanitize_user_agent_string_component

    from . import __version__

    agent = (
        f"metricsbuf/{__version__} aiobotocore/{aiobotocore.__version__} "
        f"Python/{platform.python_version()} {platform.system()}/{platform.release()}"
    )
    if app_id:
        agent += " app/" + sanitize_user_agent_string_component(str(app_id), allow_hash=True)
    return agent


def warn_if_client_retries(client: object) -> None:
    """botocore retrying inside a request would multiply ``max_attempts``: say so once."""
    config = getattr(getattr(client, "meta", None), "config", None)
    retries = getattr(config, "retries", None)
    if not isinstance(retries, dict):
        return
    attempts = retries.get("total_max_attempts")
    if attempts is None and retries.get("max_attempts") is not None:
        attempts = int(retries["max_attempts"]) + 1
    if attempts != 1:
        log.warning(
            "metricsbuf: the client passed to MetricsLogger retries on its own (botocore retries: %s), "
            "which multiplies max_attempts; create it with "
            "config=AioConfig(retries={'total_max_attempts': 1}) to let the logger own the retry budget",
            retries,
        )
