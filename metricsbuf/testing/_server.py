"""`FakeMetricsService`: the fake SageMaker Metrics service as an aiohttp server in the caller's loop."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Collection
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from .._exceptions import InvalidMetricError
from ._knobs import with_knob_docs
from ._model import Answered, Outcome, Refusal, ServiceModel
from ._records import points_to_json


def _error_response(refusal: Refusal) -> web.Response:
    # botocore's rest-json parser takes the code from x-amzn-ErrorType (cutting at ":"), else from
    # the body's "__type"/"code"; a 5xx with an empty or HTML body would be reported as code "500".
    return web.Response(
        status=refusal.status,
        body=json.dumps({"__type": refusal.code, "message": refusal.message}).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": refusal.error_type, "x-amzn-RequestId": refusal.request_id},
    )


def _drop_connection(request: web.BaseRequest, *, rst: bool) -> web.Response:
    """Drop the connection without answering; return a response nobody will receive.

    With ``rst`` the socket is closed with SO_LINGER 0, so the peer gets a TCP RST (aiobotocore
    raises EndpointConnectionError); otherwise a plain close, a FIN (ConnectionClosedError).
    """
    transport = request.transport
    if transport is not None:
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:  # pragma: no cover - no SO_LINGER here: a plain close will do
                    pass
        transport.abort()
    # aiohttp fails to write this to the closed transport and drops it quietly.
    return web.Response(status=204)


_EMPTY_SUCCESS: Final = b'{"Errors":[]}'


class ClientSettings:
    """How to point a botocore ``sagemaker-metrics`` client at a running service's `endpoint_url`."""

    __slots__ = ()

    @property
    def endpoint_url(self) -> str:
        raise NotImplementedError

    def client_kwargs(self, region_name: str = "us-east-1") -> dict[str, Any]:
        """Keyword arguments for ``session.create_client("sagemaker-metrics", **svc.client_kwargs())``.

        Includes ``verify=False``: the endpoint is plain http, and it spares aiobotocore from
        loading the CA bundle (tens of milliseconds) before a client's first request.
        """
        return {
            "region_name": region_name,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": "fake",
            "aws_secret_access_key": "fake",
            "verify": False,
        }

    def environ(self, region_name: str = "us-east-1") -> dict[str, str]:
        """Environment variables that send any botocore ``sagemaker-metrics`` client here.

        For code under test that builds its own client (or runs in a subprocess):
        ``AWS_ENDPOINT_URL_SAGEMAKER_METRICS`` plus fake credentials and a region.
        """
        return {
            "AWS_ENDPOINT_URL_SAGEMAKER_METRICS": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "fake",
            "AWS_SECRET_ACCESS_KEY": "fake",
            "AWS_DEFAULT_REGION": region_name,
        }


@with_knob_docs
class FakeMetricsService(ServiceModel, ClientSettings):
    """A local SageMaker Metrics ``BatchPutMetrics`` endpoint that injects faults on demand.

    Use as ``async with FakeMetricsService(...) as svc:`` and point a ``sagemaker-metrics``
    client at ``svc.endpoint_url``. Every option (listed below) is also an attribute that can
    be changed while the service runs (validated on assignment), or several at once with
    `configure`. See the `metricsbuf.testing` docstring for the rules applied, the order in
    which faults are drawn and the ``/_fake/...`` control endpoints.

    Args:
        host, port: where to listen; port 0 picks a free ephemeral port.
        (the options): see below.

    Attributes:
        points: every stored point, in storage order (a plain list; tests may clear it).
        counts: a `collections.Counter` of the events in `COUNT_KEYS`.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        internal_error_rate: float = 0.0,
        conflict_error_rate: float = 0.0,
        throttle_rate: float = 0.0,
        server_error_rate: float = 0.0,
        reset_rate: float = 0.0,
        ambiguous_reset_rate: float = 0.0,
        latency: float = 0.0,
        metric_limit: int | None = None,
        known_trial_components: Collection[str] | None = None,
        rate_limit: float | None = None,
        rate_limit_burst: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        # locals() holds exactly the arguments here; the model takes the options among them.
        super().__init__(locals())
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._endpoint_url: str | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``; available once the service has started."""
        if self._endpoint_url is None:
            raise RuntimeError("FakeMetricsService is not running: use 'async with' or await start()")
        return self._endpoint_url

    async def start(self) -> None:
        """Start listening. Prefer ``async with``."""
        if self._runner is not None:
            raise RuntimeError("FakeMetricsService is already running")
        app = web.Application()
        app.router.add_put("/BatchPutMetrics", self._handle_put)
        app.router.add_get("/_fake/state", self._handle_state)
        app.router.add_get("/_fake/config", self._handle_get_config)
        app.router.add_post("/_fake/config", self._handle_post_config)
        app.router.add_post("/_fake/clear", self._handle_clear)
        # No access log (a real cost per request); a short grace period for in-flight requests.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        if ":" in host:
            host = f"[{host}]"
        self._endpoint_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop listening and close every connection. Points and counts are kept."""
        runner, self._runner = self._runner, None
        self._endpoint_url = None
        if runner is not None:
            await runner.cleanup()
        self._cancel_waiters()

    async def __aenter__(self) -> FakeMetricsService:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------- control endpoints

    async def _handle_state(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"counts": dict(self.counts)}
        if request.query.get("points", "1") not in ("0", "false", "no"):
            body["points"] = points_to_json(self.points)
        return web.json_response(body)

    async def _handle_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config())

    async def _handle_post_config(self, request: web.Request) -> web.Response:
        payload = await _read_json_object(request)
        try:
            return web.json_response(self.configure(**payload))
        except InvalidMetricError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    async def _handle_clear(self, request: web.Request) -> web.Response:
        self.clear()
        return web.json_response({})

    # ----------------------------------------------------------------- BatchPutMetrics

    async def _handle_put(self, request: web.Request) -> web.StreamResponse:
        self._request_started()
        try:
            body = await request.read()
            await self._wait_latency()
            return self._respond(request, self._decide(body))
        finally:
            self._request_finished()

    @staticmethod
    def _respond(request: web.BaseRequest, outcome: Outcome) -> web.StreamResponse:
        if isinstance(outcome, Answered):
            errors = outcome.errors
            return web.Response(
                body=json.dumps({"Errors": errors}).encode() if errors else _EMPTY_SUCCESS,
                content_type="application/json",
                headers={"x-amzn-RequestId": outcome.request_id},
            )
        if isinstance(outcome, Refusal):
            return _error_response(outcome)
        return _drop_connection(request, rst=outcome.rst)


async def _read_json_object(request: web.Request) -> dict[str, Any]:
    try:
        payload = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body must be a JSON object") from None
    if not isinstance(payload, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return payload
