"""`FakeMetricsService`: the fake SageMaker Metrics service as an aiohttp server in the caller's loop."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
from collections import Counter
from collections.abc import Collection
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from .._exceptions import InvalidMetricError
from ._knobs import ServiceKnobs, with_knob_docs
from ._records import PointQueries, ServiceState, StoredPoint, _points_to_json
from ._rules import (
    CONFLICT_ERROR,
    INTERNAL_ERROR,
    METRIC_LIMIT_EXCEEDED,
    VALIDATION_ERROR,
    _RequestError,
    parse_request,
)


def _error_response(status: int, code: str, message: str, request_id: str) -> web.Response:
    # botocore's rest-json parser takes the code from x-amzn-ErrorType (cutting at ":"), else from
    # the body's "__type"/"code"; a 5xx with an empty or HTML body would be reported as code "500".
    return web.Response(
        status=status,
        body=json.dumps({"__type": code, "message": message}).encode(),
        content_type="application/json",
        headers={
            "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.sagemaker.metrics/",
            "x-amzn-RequestId": request_id,
        },
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


@with_knob_docs
class FakeMetricsService(ServiceKnobs, PointQueries):
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
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._rng = random.Random()  # before the options: setting `seed` seeds it
        # locals() holds exactly the arguments here; the options among them are set by name.
        self._set_knobs(locals())
        self.host = host
        self.port = port
        self.points: list[StoredPoint] = []
        self.counts: Counter[str] = Counter()
        self._names: dict[str, set[str]] = {}
        self._in_flight = 0
        self._request_ids = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._runner: web.AppRunner | None = None
        self._endpoint_url: str | None = None

    def _knob_changed(self, name: str) -> None:
        if name == "seed":
            self._rng.seed(self.seed)

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
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()

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

    # ----------------------------------------------------------------- helpers for tests

    def state(self) -> ServiceState:
        """A snapshot (copies) of the counts and stored points."""
        return ServiceState(counts=Counter(self.counts), points=list(self.points))

    def clear(self) -> None:
        """Forget every stored point, count and known metric name (options are kept)."""
        self.points.clear()
        self.counts.clear()
        self._names.clear()

    def client_kwargs(self, region_name: str = "us-east-1") -> dict[str, Any]:
        """Keyword arguments for ``session.create_client("sagemaker-metrics", **svc.client_kwargs())``.

        Includes ``verify=False``: the endpoint is plain http, and it spares aiobotocore from
        loading the CA bundle (tens of milliseconds) before a client's first request.
        """
        return _client_kwargs(self.endpoint_url, region_name)

    def environ(self, region_name: str = "us-east-1") -> dict[str, str]:
        """Environment variables that send any botocore ``sagemaker-metrics`` client here.

        For code under test that builds its own client (or runs in a subprocess):
        ``AWS_ENDPOINT_URL_SAGEMAKER_METRICS`` plus fake credentials and a region.
        """
        return _environ(self.endpoint_url, region_name)

    async def wait_stored(self, n: int, *, timeout: float = 5.0) -> None:
        """Wait until at least ``n`` points are stored (`counts["stored"]`), or raise TimeoutError."""
        if self.counts["stored"] >= n:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(waiter, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _wake(self) -> None:
        stored = self.counts["stored"]
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for n, waiter in self._waiters:
            if stored >= n:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                keep.append((n, waiter))
        self._waiters = keep

    # ----------------------------------------------------------------- control endpoints

    async def _handle_state(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"counts": dict(self.counts)}
        if request.query.get("points", "1") not in ("0", "false", "no"):
            body["points"] = _points_to_json(self.points)
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
        counts = self.counts
        counts["requests"] += 1
        self._in_flight += 1
        if self._in_flight > counts["max_in_flight"]:
            counts["max_in_flight"] = self._in_flight
        try:
            body = await request.read()
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            # Everything from here on runs without awaiting: each request's draws and
            # storage are atomic with respect to the others.
            return self._process(request, body)
        finally:
            self._in_flight -= 1

    def _process(self, request: web.BaseRequest, body: bytes) -> web.StreamResponse:
        counts = self.counts
        rng = self._rng
        self._request_ids += 1
        request_id = f"fake-{self._request_ids:012d}"

        # 1. Whole-request faults: one draw per request, always made.
        u = rng.random()
        edge = self.throttle_rate
        if u < edge:
            counts["throttled"] += 1
            return _error_response(400, "ThrottlingException", "Rate exceeded", request_id)
        half = self.server_error_rate / 2
        if u < edge + half:
            counts["server_error"] += 1
            counts["server_error_500"] += 1
            return _error_response(500, "InternalFailure", "Injected internal failure", request_id)
        edge += self.server_error_rate
        if u < edge:
            counts["server_error"] += 1
            counts["server_error_503"] += 1
            return _error_response(503, "ServiceUnavailable", "Injected unavailability", request_id)
        if u < edge + self.reset_rate:
            counts["reset"] += 1
            return _drop_connection(request, rst=u < edge + self.reset_rate / 2)
        edge += self.reset_rate
        ambiguous = u < edge + self.ambiguous_reset_rate
        ambiguous_rst = u < edge + self.ambiguous_reset_rate / 2

        # 2. Request validation, 3. the trial component.
        try:
            trial_component, items = parse_request(body)
        except _RequestError as err:
            counts[err.count_key] += 1
            return _error_response(err.status, err.code, err.message, request_id)
        known = self.known_trial_components
        if known is not None and trial_component not in known:
            counts["resource_not_found"] += 1
            return _error_response(
                400, "ResourceNotFound", f"Trial component {trial_component!r} does not exist", request_id
            )

        # 4. Per-index outcomes: one draw per item, always made.
        n_items = len(items)
        counts["items"] += n_items
        if n_items > counts["max_items_in_request"]:
            counts["max_items_in_request"] = n_items
        names = self._names.get(trial_component)
        if names is None:
            names = self._names[trial_component] = set()
        limit = self.metric_limit
        internal_edge = self.internal_error_rate
        conflict_edge = internal_edge + self.conflict_error_rate
        errors: list[dict[str, Any]] = []
        stored = 0
        points = self.points
        for index, item in enumerate(items):
            v = rng.random()
            if item is None:
                code = VALIDATION_ERROR
            elif limit is not None and item[0] not in names and len(names) >= limit:
                code = METRIC_LIMIT_EXCEEDED
            elif v < internal_edge:
                code = INTERNAL_ERROR
            elif v < conflict_edge:
                code = CONFLICT_ERROR
            else:
                name, step, value, timestamp = item
                points.append(StoredPoint(trial_component, name, step, value, timestamp))
                names.add(name)
                stored += 1
                continue
            counts[code] += 1
            errors.append({"Code": code, "MetricIndex": index})
        if stored:
            counts["stored"] += stored
            if self._waiters:
                self._wake()

        # 5. The answer, or an ambiguous reset.
        if ambiguous:
            counts["ambiguous_reset"] += 1
            return _drop_connection(request, rst=ambiguous_rst)
        counts["ok"] += 1
        return web.Response(
            body=json.dumps({"Errors": errors}).encode() if errors else _EMPTY_SUCCESS,
            content_type="application/json",
            headers={"x-amzn-RequestId": request_id},
        )


def _client_kwargs(endpoint_url: str, region_name: str) -> dict[str, Any]:
    return {
        "region_name": region_name,
        "endpoint_url": endpoint_url,
        "aws_access_key_id": "fake",
        "aws_secret_access_key": "fake",
        "verify": False,
    }


def _environ(endpoint_url: str, region_name: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_SAGEMAKER_METRICS": endpoint_url,
        "AWS_ACCESS_KEY_ID": "fake",
        "AWS_SECRET_ACCESS_KEY": "fake",
        "AWS_DEFAULT_REGION": region_name,
    }


async def _read_json_object(request: web.Request) -> dict[str, Any]:
    try:
        payload = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body must be a JSON object") from None
    if not isinstance(payload, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return payload
