"""A fault-injecting local SageMaker Metrics service (implementation of `metricsbuf.testing`).

See the `metricsbuf.testing` docstring for the user-facing guide. This module holds:

* `FakeMetricsService`: the aiohttp server, run in the caller's event loop;
* `FakeMetricsServiceProcess`: the same server in a child process (`python -m metricsbuf.testing`);
* `StoredPoint` / `ServiceState`: what the service recorded;
* `main()`: the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import queue
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from .._exceptions import InvalidMetricError

__all__ = [
    "COUNT_KEYS",
    "FakeMetricsService",
    "FakeMetricsServiceProcess",
    "ServiceState",
    "StoredPoint",
    "main",
]

# --------------------------------------------------------------------------- service rules

MAX_ITEMS_PER_REQUEST: Final = 10
MAX_TRIAL_COMPONENT_NAME_LENGTH: Final = 120
MAX_METRIC_NAME_LENGTH: Final = 255
MAX_STEP: Final = 2**31 - 1
PAST_WINDOW_SECONDS: Final = 14 * 24 * 3600  # the SageMaker SDK's METRIC_TS_LOWER_BOUND_TO_NOW
FUTURE_WINDOW_SECONDS: Final = 2 * 3600  # the SageMaker SDK's METRIC_TS_UPPER_BOUND_FROM_NOW

_TRIAL_COMPONENT_NAME = re.compile(r"[a-z0-9](?:-*[a-z0-9]){0,119}")
# The model's pattern for MetricName is ".+" in a Java regex, whose "." excludes these.
_LINE_BREAK = re.compile("[\n\r\x85\u2028\u2029]")
# botocore's serialization of non-finite doubles.
_NON_FINITE_STRINGS = frozenset({"NaN", "Infinity", "-Infinity"})

# Per-index codes.
VALIDATION_ERROR: Final = "VALIDATION_ERROR"
METRIC_LIMIT_EXCEEDED: Final = "METRIC_LIMIT_EXCEEDED"
INTERNAL_ERROR: Final = "INTERNAL_ERROR"
CONFLICT_ERROR: Final = "CONFLICT_ERROR"

#: Every key `FakeMetricsService.counts` may hold, with its meaning. Keys are absent (read 0
#: from the Counter) until the event first happens. For the service as a whole:
#: ``requests == ok + throttled + server_error + reset + ambiguous_reset + invalid_request
#: + resource_not_found`` (once every request has been answered) and
#: ``items == stored + VALIDATION_ERROR + METRIC_LIMIT_EXCEEDED + INTERNAL_ERROR + CONFLICT_ERROR``.
COUNT_KEYS: Final[Mapping[str, str]] = {
    "requests": "PUT /BatchPutMetrics requests received (each HTTP attempt, including aiohttp's own resends)",
    "ok": "requests answered HTTP 200, with or without per-index Errors (the client may have left)",
    "items": "MetricData items that got a per-index outcome (in requests that reached the per-index stage)",
    "stored": "points stored (appended to `points`)",
    VALIDATION_ERROR: "items answered VALIDATION_ERROR",
    METRIC_LIMIT_EXCEEDED: "items answered METRIC_LIMIT_EXCEEDED",
    INTERNAL_ERROR: "items answered INTERNAL_ERROR (injected)",
    CONFLICT_ERROR: "items answered CONFLICT_ERROR (injected)",
    "throttled": "requests answered HTTP 400 ThrottlingException (injected)",
    "server_error": "requests answered HTTP 500 InternalFailure or 503 ServiceUnavailable (injected)",
    "server_error_500": "of those, the HTTP 500 InternalFailure ones",
    "server_error_503": "of those, the HTTP 503 ServiceUnavailable ones",
    "reset": "connections dropped (RST or close) before any processing: nothing stored (injected)",
    "ambiguous_reset": "connections dropped after the points were stored, without a response (injected)",
    "invalid_request": "requests answered HTTP 400 ValidationException or SerializationException",
    "resource_not_found": "requests answered HTTP 400 ResourceNotFound (`known_trial_components`)",
    "max_items_in_request": "the largest MetricData list seen in one request (a maximum, not a sum)",
    "max_in_flight": "the most BatchPutMetrics requests being handled at once (a maximum, not a sum)",
}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """One point the fake service stored, exactly as it arrived.

    Attributes:
        trial_component: the request's ``TrialComponentName``.
        name: ``MetricName``.
        step: ``Step``, or None when the item had none.
        value: ``Value`` as a float (always finite: non-finite values are rejected).
        timestamp: ``Timestamp`` in epoch seconds, as sent. botocore 1.43.117 sends microseconds
            (a float timestamp given to the client is rounded to the microsecond on the way).
    """

    trial_component: str
    name: str
    step: int | None
    value: float
    timestamp: float

    @property
    def time(self) -> datetime:
        """The timestamp as a timezone-aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp, tz=timezone.utc)


def _duplicates(points: Iterable[StoredPoint]) -> dict[StoredPoint, int]:
    return {point: n for point, n in Counter(points).items() if n > 1}


def _series(points: Iterable[StoredPoint], trial_component: str, name: str) -> list[StoredPoint]:
    found = [p for p in points if p.trial_component == trial_component and p.name == name]
    found.sort(key=lambda p: (-1 if p.step is None else p.step, p.timestamp))
    return found


@dataclass(frozen=True, slots=True)
class ServiceState:
    """A snapshot of what a fake service recorded (see `FakeMetricsServiceProcess.state`).

    Attributes:
        counts: the service's counters (keys in `COUNT_KEYS`); missing keys read 0.
        points: the stored points, in storage order (empty if fetched with ``points=False``).
    """

    counts: Counter[str]
    points: list[StoredPoint]

    def stored_keys(self) -> Counter[StoredPoint]:
        """How many times each distinct point was stored (more than 1 means a duplicate)."""
        return Counter(self.points)

    def duplicates(self) -> dict[StoredPoint, int]:
        """The points stored more than once, with how many times each was stored."""
        return _duplicates(self.points)

    def series(self, trial_component: str, name: str) -> list[StoredPoint]:
        """One metric's stored points, ordered by step (None first), then timestamp."""
        return _series(self.points, trial_component, name)


# --------------------------------------------------------------------------- knobs

_RATE_KNOBS: Final = (
    "internal_error_rate",
    "conflict_error_rate",
    "throttle_rate",
    "server_error_rate",
    "reset_rate",
    "ambiguous_reset_rate",
)
_KNOBS: Final = ("seed", *_RATE_KNOBS, "latency", "metric_limit", "known_trial_components")


def _check_knob(name: str, value: object) -> Any:
    """Validate one knob; return the value to store. Raises InvalidMetricError naming the knob."""
    if name in _RATE_KNOBS or name == "latency":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidMetricError(f"{name} must be a finite number, got {value!r}")
        if value < 0 or (name != "latency" and value > 1):
            bounds = "0 or more" if name == "latency" else "between 0 and 1"
            raise InvalidMetricError(f"{name} must be {bounds}, got {value!r}")
        return float(value)
    if name == "seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidMetricError(f"seed must be an int, got {value!r}")
        return value
    if name == "metric_limit":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidMetricError(f"metric_limit must be None or an int >= 0, got {value!r}")
        return value
    if name == "known_trial_components":
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise InvalidMetricError(
                f"known_trial_components must be None or a collection of names, got {value!r}"
            )
        names = frozenset(value)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise InvalidMetricError(f"known_trial_components must hold str names, got {bad[0]!r}")
        return names
    raise InvalidMetricError(f"unknown option {name!r}; the options are {', '.join(_KNOBS)}")


# --------------------------------------------------------------------------- the service


class _RequestError(Exception):
    """A whole-request error answer."""

    def __init__(self, status: int, code: str, message: str, count_key: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.count_key = count_key


def _invalid(message: str) -> _RequestError:
    return _RequestError(400, "ValidationException", message, "invalid_request")


def _malformed(message: str) -> _RequestError:
    return _RequestError(400, "SerializationException", message, "invalid_request")


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


class FakeMetricsService:
    """A local SageMaker Metrics ``BatchPutMetrics`` endpoint that injects faults on demand.

    Use as ``async with FakeMetricsService(...) as svc:`` and point a ``sagemaker-metrics``
    client at ``svc.endpoint_url``. Every option below is also an attribute that can be
    changed while the service runs (validated on assignment), or several at once with
    `configure`. See the `metricsbuf.testing` docstring for the rules applied, the order in
    which faults are drawn and the ``/_fake/...`` control endpoints.

    Args:
        seed: seeds the `random.Random` all faults are drawn from: the same seed and the same
            sequence of requests give the same faults. Assigning ``svc.seed`` reseeds.
        internal_error_rate: chance that a valid item gets ``INTERNAL_ERROR`` (not stored).
        conflict_error_rate: chance that a valid item gets ``CONFLICT_ERROR`` (not stored).
        throttle_rate: chance that a request gets HTTP 400 ``ThrottlingException``.
        server_error_rate: chance that a request gets HTTP 500 ``InternalFailure`` (first half
            of the range) or HTTP 503 ``ServiceUnavailable`` (second half).
        reset_rate: chance that the connection is dropped before the request is processed
            (first half of the range: a TCP RST; second half: a plain close).
        ambiguous_reset_rate: chance that a request's points are stored and the connection is
            then dropped without a response (RST or close, split the same way).
        latency: seconds to wait (``asyncio.sleep``) before answering each request.
        metric_limit: distinct metric names a trial component may hold; a new name beyond
            that gets ``METRIC_LIMIT_EXCEEDED``. None: no limit.
        known_trial_components: if set, a request for any other trial component gets HTTP 400
            ``ResourceNotFound``. None: every name is accepted.
        host, port: where to listen; port 0 picks a free ephemeral port.

    Attributes:
        points: every stored point, in storage order (a plain list; tests may clear it).
        counts: a `collections.Counter` of the events in `COUNT_KEYS`.
    """

    seed: int
    internal_error_rate: float
    conflict_error_rate: float
    throttle_rate: float
    server_error_rate: float
    reset_rate: float
    ambiguous_reset_rate: float
    latency: float
    metric_limit: int | None
    known_trial_components: Collection[str] | None  # stored as a frozenset

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
        self._rng = random.Random()
        self.seed = seed
        self.internal_error_rate = internal_error_rate
        self.conflict_error_rate = conflict_error_rate
        self.throttle_rate = throttle_rate
        self.server_error_rate = server_error_rate
        self.reset_rate = reset_rate
        self.ambiguous_reset_rate = ambiguous_reset_rate
        self.latency = latency
        self.metric_limit = metric_limit
        self.known_trial_components = known_trial_components
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

    def __setattr__(self, name: str, value: object) -> None:
        if name in _KNOBS:
            checked = _check_knob(name, value)
            if name == "seed":
                self._rng.seed(checked)
            value = checked
        object.__setattr__(self, name, value)

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

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change several options at once (all are validated before any is applied); return `config()`."""
        checked = {name: _check_knob(name, value) for name, value in knobs.items()}
        for name, value in checked.items():
            setattr(self, name, value)
        return self.config()

    def config(self) -> dict[str, Any]:
        """The current options, as plain JSON-friendly values."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _KNOBS}
        if out["known_trial_components"] is not None:
            out["known_trial_components"] = sorted(out["known_trial_components"])
        return out

    def state(self) -> ServiceState:
        """A snapshot (copies) of the counts and stored points."""
        return ServiceState(counts=Counter(self.counts), points=list(self.points))

    def clear(self) -> None:
        """Forget every stored point, count and known metric name (options are kept)."""
        self.points.clear()
        self.counts.clear()
        self._names.clear()

    def stored_keys(self) -> Counter[StoredPoint]:
        """How many times each distinct point was stored (more than 1 means a duplicate)."""
        return Counter(self.points)

    def duplicates(self) -> dict[StoredPoint, int]:
        """The points stored more than once, with how many times each was stored."""
        return _duplicates(self.points)

    def series(self, trial_component: str, name: str) -> list[StoredPoint]:
        """One metric's stored points, ordered by step (None first), then timestamp."""
        return _series(self.points, trial_component, name)

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
            trial_component, items = self._parse_request(body)
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

    def _parse_request(self, body: bytes) -> tuple[str, list[tuple[str, int | None, float, float] | None]]:
        """Check the request as a whole; return the trial component and each item parsed.

        An item is None when it breaks a per-index rule (VALIDATION_ERROR). A structural
        problem (bad JSON, a wrong JSON type, a missing member) raises _RequestError.
        """
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise _malformed(f"Request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _malformed("Request body must be a JSON object")
        trial_component = payload.get("TrialComponentName")
        data = payload.get("MetricData")
        if trial_component is None:
            raise _invalid(
                "Value null at 'trialComponentName' failed to satisfy constraint: Member must not be null"
            )
        if data is None:
            raise _invalid("Value null at 'metricData' failed to satisfy constraint: Member must not be null")
        if not isinstance(trial_component, str):
            raise _malformed("TrialComponentName must be a string")
        if not isinstance(data, list):
            raise _malformed("MetricData must be a list")
        if not (
            len(trial_component) <= MAX_TRIAL_COMPONENT_NAME_LENGTH
            and _TRIAL_COMPONENT_NAME.fullmatch(trial_component)
        ):
            raise _invalid(
                f"Value {trial_component!r} at 'trialComponentName' failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: ^[a-z0-9](-*[a-z0-9]){{0,119}} "
                f"and have length less than or equal to {MAX_TRIAL_COMPONENT_NAME_LENGTH}"
            )
        if not 1 <= len(data) <= MAX_ITEMS_PER_REQUEST:
            raise _invalid(
                f"Value at 'metricData' failed to satisfy constraint: Member must have length between "
                f"1 and {MAX_ITEMS_PER_REQUEST} (got {len(data)})"
            )
        now = time.time()
        earliest = now - PAST_WINDOW_SECONDS
        latest = now + FUTURE_WINDOW_SECONDS
        return trial_component, [_parse_item(i, item, earliest, latest) for i, item in enumerate(data)]


_NUMBER_TYPES: Final = (int, float)


def _parse_item(
    index: int, item: object, earliest: float, latest: float
) -> tuple[str, int | None, float, float] | None:
    """Parse one MetricData item: the stored fields, None for VALIDATION_ERROR, or _RequestError."""
    if type(item) is not dict:
        raise _malformed(f"MetricData[{index}] must be an object")
    name = item.get("MetricName")
    timestamp: Any = item.get("Timestamp")
    value: Any = item.get("Value")
    step = item.get("Step")
    # The common case in one test (exact types: a JSON true/false is a bool, never accepted).
    if (
        type(name) is not str
        or type(timestamp) not in _NUMBER_TYPES
        or type(value) not in _NUMBER_TYPES
        or (step is not None and type(step) is not int)
    ):
        _check_item_types(index, name, timestamp, value, step)
        return None  # a non-finite value sent as a string
    try:
        number = float(value)  # an int or a float, checked above
    except OverflowError:  # an integer too large for a double
        return None
    if (
        0 < len(name) <= MAX_METRIC_NAME_LENGTH
        and not _LINE_BREAK.search(name)
        and (step is None or 0 <= step <= MAX_STEP)
        and earliest <= timestamp <= latest
        and math.isfinite(number)
    ):
        return name, step, number, float(timestamp)
    return None


def _check_item_types(index: int, name: object, timestamp: object, value: object, step: object) -> None:
    """Raise the whole-request error for an item with a missing member or a wrong JSON type.

    Returns normally only when the item is well formed but its Value is one of botocore's
    strings for a non-finite double (a per-index VALIDATION_ERROR).
    """
    for member, got in (("metricName", name), ("timestamp", timestamp), ("value", value)):
        if got is None:
            raise _invalid(
                f"Value null at 'metricData.{index + 1}.member.{member}' failed to satisfy constraint: "
                f"Member must not be null"
            )
    if type(name) is not str:
        raise _malformed(f"MetricData[{index}].MetricName must be a string")
    if type(timestamp) not in _NUMBER_TYPES:
        raise _malformed(f"MetricData[{index}].Timestamp must be a number of epoch seconds")
    if step is not None and type(step) is not int:
        raise _malformed(f"MetricData[{index}].Step must be an integer")
    if type(value) not in _NUMBER_TYPES and value not in _NON_FINITE_STRINGS:
        raise _malformed(f"MetricData[{index}].Value must be a number")


# --------------------------------------------------------------------------- control endpoints


def _points_to_json(points: Iterable[StoredPoint]) -> list[list[Any]]:
    return [[p.trial_component, p.name, p.step, p.value, p.timestamp] for p in points]


def _points_from_json(rows: Iterable[list[Any]]) -> list[StoredPoint]:
    return [StoredPoint(tc, name, step, float(value), float(ts)) for tc, name, step, value, ts in rows]


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


# --------------------------------------------------------------------------- command line


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metricsbuf.testing",
        description=(
            "Run a fault-injecting fake SageMaker Metrics service. Prints its endpoint URL as the "
            "first line on stdout, then serves until SIGINT/SIGTERM (or stdin closes, with "
            "--exit-on-stdin-eof). GET /_fake/state, GET|POST /_fake/config and POST /_fake/clear "
            "inspect and steer it."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 (default) picks a free one")
    parser.add_argument("--seed", type=int, default=0)
    for knob in _RATE_KNOBS:
        parser.add_argument(f"--{knob.replace('_', '-')}", type=float, default=0.0, metavar="RATE")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--metric-limit", type=int, default=None, metavar="N")
    parser.add_argument(
        "--known-trial-component",
        action="append",
        dest="known_trial_components",
        metavar="NAME",
        help="repeat to accept several; when given, any other trial component gets ResourceNotFound",
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="stop when stdin is closed (so the service dies with the process that started it)",
    )
    return parser


async def _serve(service: FakeMetricsService, *, exit_on_stdin_eof: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            pass
    if exit_on_stdin_eof:

        def wait_for_eof() -> None:
            try:
                while sys.stdin.buffer.read(65536):
                    pass
            finally:
                loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_for_eof, name="stdin-eof", daemon=True).start()
    async with service:
        print(service.endpoint_url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m metricsbuf.testing``; see `_build_parser` for the options."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        service = FakeMetricsService(
            host=args.host, port=args.port, **{name: getattr(args, name) for name in _KNOBS}
        )
    except InvalidMetricError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(service, exit_on_stdin_eof=args.exit_on_stdin_eof))
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C
        pass
    return 0


# --------------------------------------------------------------------------- child process


class FakeMetricsServiceProcess:
    """A `FakeMetricsService` in a child process (``python -m metricsbuf.testing``).

    For benchmarks and multi-process tests, where the service must not share the GIL with
    the code under test. Usable as ``with`` (blocking) or ``async with`` (the blocking start
    and stop run in a thread). The options are those of `FakeMetricsService`; state is read
    and options changed over HTTP (the ``/_fake/...`` endpoints) with `state`, `configure`
    and `clear`, or their ``*_async`` variants from async code.

    Args:
        startup_timeout: seconds to wait for the child to print its endpoint URL.
        python: the interpreter to run (default: this one).
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
        startup_timeout: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        knobs: dict[str, Any] = {
            "seed": seed,
            "internal_error_rate": internal_error_rate,
            "conflict_error_rate": conflict_error_rate,
            "throttle_rate": throttle_rate,
            "server_error_rate": server_error_rate,
            "reset_rate": reset_rate,
            "ambiguous_reset_rate": ambiguous_reset_rate,
            "latency": latency,
            "metric_limit": metric_limit,
            "known_trial_components": known_trial_components,
        }
        for name, value in knobs.items():  # fail here, not in the child
            knobs[name] = _check_knob(name, value)
        argv = [
            python,
            "-m",
            "metricsbuf.testing",
            "--exit-on-stdin-eof",
            "--host",
            host,
            "--port",
            str(port),
        ]
        for name, value in knobs.items():
            flag = "--" + name.replace("_", "-")
            if name == "known_trial_components":
                for tc in sorted(value or ()):
                    argv += ["--known-trial-component", tc]
            elif value is not None:
                argv += [flag, repr(value)]
        self.argv = argv
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._endpoint_url: str | None = None

    @property
    def endpoint_url(self) -> str:
        """The child's ``http://127.0.0.1:<port>``; available once started."""
        if self._endpoint_url is None:
            raise RuntimeError("FakeMetricsServiceProcess is not running: use 'with' or call start()")
        return self._endpoint_url

    @property
    def pid(self) -> int | None:
        """The child's process id, or None when not started."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> str:
        """Start the child and wait for its endpoint URL (returned)."""
        if self._proc is not None:
            raise RuntimeError("FakeMetricsServiceProcess is already running")
        env = dict(os.environ)
        # Make this copy of metricsbuf importable in the child even when it is not installed.
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._proc = proc
        lines: queue.Queue[bytes] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(
                f"the fake service did not report its URL within {self.startup_timeout} s"
            ) from None
        url: str = line.decode().strip()
        if not url.startswith("http"):
            self.stop()
            raise RuntimeError(f"the fake service failed to start (exit code {proc.poll()}); see its stderr")
        self._endpoint_url = url
        return url

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child: close its stdin, then terminate, then kill, waiting ``timeout`` each time."""
        proc, self._proc = self._proc, None
        self._endpoint_url = None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> FakeMetricsServiceProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeMetricsServiceProcess:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _call(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.endpoint_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            message = exc.read().decode(errors="replace")
            exc.close()
            if exc.code == 400:
                raise InvalidMetricError(message) from None
            raise

    def state(self, *, points: bool = True) -> ServiceState:
        """Fetch the counts and (unless ``points=False``) the stored points (``GET /_fake/state``)."""
        raw = self._call("GET", "/_fake/state" + ("" if points else "?points=0"))
        return ServiceState(counts=Counter(raw["counts"]), points=_points_from_json(raw.get("points", ())))

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change options in the child (``POST /_fake/config``); returns the resulting options."""
        if "known_trial_components" in knobs and knobs["known_trial_components"] is not None:
            knobs["known_trial_components"] = sorted(
                _check_knob("known_trial_components", knobs["known_trial_components"])
            )
        result: dict[str, Any] = self._call("POST", "/_fake/config", knobs)
        return result

    def config(self) -> dict[str, Any]:
        """The child's current options (``GET /_fake/config``)."""
        result: dict[str, Any] = self._call("GET", "/_fake/config")
        return result

    def clear(self) -> None:
        """Forget the child's stored points and counts (``POST /_fake/clear``)."""
        self._call("POST", "/_fake/clear", {})

    def environ(self, region_name: str = "us-east-1") -> dict[str, str]:
        """Environment variables that send any botocore ``sagemaker-metrics`` client to the child."""
        return _environ(self.endpoint_url, region_name)

    def client_kwargs(self, region_name: str = "us-east-1") -> dict[str, Any]:
        """Keyword arguments for ``session.create_client("sagemaker-metrics", **proc.client_kwargs())``."""
        return _client_kwargs(self.endpoint_url, region_name)

    async def state_async(self, *, points: bool = True) -> ServiceState:
        """`state`, run in a thread."""
        return await asyncio.to_thread(lambda: self.state(points=points))

    async def configure_async(self, **knobs: Any) -> dict[str, Any]:
        """`configure`, run in a thread."""
        return await asyncio.to_thread(lambda: self.configure(**knobs))

    async def clear_async(self) -> None:
        """`clear`, run in a thread."""
        await asyncio.to_thread(self.clear)
