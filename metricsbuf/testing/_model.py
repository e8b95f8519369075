"""What the fake service does with a request, whichever way it arrives.

`ServiceModel` owns the service's state (options, random generator, stored points, counts)
and decides each request's outcome: the fault draws, the rules of `_rules`, the store. It
knows nothing of HTTP: `FakeMetricsService` (_server.py) serves it over aiohttp and
`InMemoryMetricsClient` (_memory.py) calls it directly, each turning an `Outcome` into what
its callers see.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._knobs import ServiceKnobs
from ._rate_limit import TokenBucket
from ._records import PointQueries, ServiceState, StoredPoint
from ._rules import (
    CONFLICT_ERROR,
    INTERNAL_ERROR,
    METRIC_LIMIT_EXCEEDED,
    VALIDATION_ERROR,
    RequestError,
    parse_request,
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A whole-request error answer: an HTTP status, an error code and a message."""

    status: int
    code: str
    message: str
    request_id: str

    @property
    def error_type(self) -> str:
        """The real service's ``x-amzn-ErrorType`` header, from which botocore reads the code."""
        return f"{self.code}:http://internal.amazon.com/coral/com.amazonaws.sagemaker.metrics/"


@dataclass(frozen=True, slots=True)
class Dropped:
    """The connection is dropped without an answer: a TCP RST (``rst``) or a plain close."""

    rst: bool


@dataclass(frozen=True, slots=True)
class Answered:
    """HTTP 200 with the per-index errors (empty when every item was stored)."""

    errors: list[dict[str, Any]]
    request_id: str


Outcome: TypeAlias = Refusal | Dropped | Answered


class ServiceModel(ServiceKnobs, PointQueries):
    """The fake service's state and decisions, shared by its HTTP and in-memory forms.

    Attributes:
        points: every stored point, in storage order (a plain list; tests may clear it).
        counts: a `collections.Counter` of the events in `COUNT_KEYS`.
    """

    def __init__(
        self, arguments: Mapping[str, object], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Take the options from ``arguments``: the caller's explicit keyword arguments.

        ``clock`` (monotonic seconds) paces the rate limit.
        """
        # Before the options, which derive state from them: `seed` seeds the generator, and
        # `rate_limit` / `rate_limit_burst` make the bucket.
        self._rng = random.Random()
        self._clock = clock
        self._bucket: TokenBucket | None = None
        self._set_knobs(arguments)
        self.points: list[StoredPoint] = []
        self.counts: Counter[str] = Counter()
        self._names: dict[str, set[str]] = {}  # per trial component, the names stored
        self._in_flight = 0
        self._request_ids = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def _knobs_changed(self, names: Collection[str]) -> None:
        if "seed" in names:
            self._rng.seed(self.seed)
        if "rate_limit" in names or "rate_limit_burst" in names:
            self._refill_bucket()

    def _refill_bucket(self) -> None:
        """A new, full bucket for the current rate limit (None when there is no limit)."""
        rate = self.rate_limit
        if rate is None:
            self._bucket = None
            return
        burst = self.rate_limit_burst
        self._bucket = TokenBucket(rate, max(1.0, rate) if burst is None else burst, self._clock)

    # ----------------------------------------------------------------- queries

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        return self._in_flight

    def state(self) -> ServiceState:
        """A snapshot (copies) of the counts and stored points."""
        return ServiceState(counts=Counter(self.counts), points=list(self.points))

    def clear(self) -> None:
        """Forget every stored point, count and known metric name, and refill the rate limit's
        bucket (options are kept)."""
        self.points.clear()
        self.counts.clear()
        self._names.clear()
        self._refill_bucket()

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

    def _cancel_waiters(self) -> None:
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()

    # ----------------------------------------------------------------- one request

    def _request_started(self) -> None:
        """Count a request on arrival (each HTTP attempt, or each direct call)."""
        counts = self.counts
        counts["requests"] += 1
        self._in_flight += 1
        if self._in_flight > counts["max_in_flight"]:
            counts["max_in_flight"] = self._in_flight

    def _request_finished(self) -> None:
        self._in_flight -= 1

    def _next_request_id(self) -> str:
        self._request_ids += 1
        return f"fake-{self._request_ids:012d}"

    async def _wait_latency(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)

    def _decide(self, body: bytes) -> Outcome:
        """Draw the faults, apply the rules, store; return what the caller gets.

        Runs without awaiting: each request's draws and storage are atomic with respect to
        the others. The steps and draws are those the `metricsbuf.testing` docstring lists.
        """
        counts = self.counts
        rng = self._rng
        request_id = self._next_request_id()

        # (1. `latency` was waited by the caller.) 2. The rate limit, shared by every client of
        # this service; no draw is made.
        bucket = self._bucket
        if bucket is not None and not bucket.take():
            counts["rate_limited"] += 1
            return Refusal(400, "ThrottlingException", "Rate exceeded", request_id)

        # 3. Whole-request faults: one draw per request, always made.
        u = rng.random()
        edge = self.throttle_rate
        if u < edge:
            counts["throttled"] += 1
            return Refusal(400, "ThrottlingException", "Rate exceeded", request_id)
        half = self.server_error_rate / 2
        if u < edge + half:
            counts["server_error"] += 1
            counts["server_error_500"] += 1
            return Refusal(500, "InternalFailure", "Injected internal failure", request_id)
        edge += self.server_error_rate
        if u < edge:
            counts["server_error"] += 1
            counts["server_error_503"] += 1
            return Refusal(503, "ServiceUnavailable", "Injected unavailability", request_id)
        if u < edge + self.reset_rate:
            counts["reset"] += 1
            return Dropped(rst=u < edge + self.reset_rate / 2)
        edge += self.reset_rate
        ambiguous = u < edge + self.ambiguous_reset_rate
        ambiguous_rst = u < edge + self.ambiguous_reset_rate / 2

        # 4. Request validation, then the trial component.
        try:
            trial_component, items = parse_request(body)
        except RequestError as err:
            counts[err.count_key] += 1
            return Refusal(err.status, err.code, err.message, request_id)
        known = self.known_trial_components
        if known is not None and trial_component not in known:
            counts["resource_not_found"] += 1
            return Refusal(
                400, "ResourceNotFound", f"Trial component {trial_component!r} does not exist", request_id
            )

        # 5. Per-index outcomes: one draw per item, always made.
        names = self._items_reached(trial_component, len(items))
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
        self._count_stored(stored)

        # 6. The answer, or an ambiguous reset.
        if ambiguous:
            counts["ambiguous_reset"] += 1
            return Dropped(rst=ambiguous_rst)
        counts["ok"] += 1
        return Answered(errors, request_id)

    def _record_handled(self, body: bytes, answer: Mapping[str, Any]) -> None:
        """Count a request that a handler answered with ``answer``; store the items it did not name.

        No fault is drawn. Items the rules reject are not stored either, and a request they
        reject as a whole stores nothing.
        """
        counts = self.counts
        counts["handled"] += 1
        errors = answer.get("Errors")
        listed = errors if isinstance(errors, list) else ()
        named = {error.get("MetricIndex") for error in listed if isinstance(error, Mapping)}
        try:
            trial_component, items = parse_request(body)
        except RequestError:
            return
        names = self._items_reached(trial_component, len(items))
        stored = 0
        for index, item in enumerate(items):
            if item is None or index in named:
                counts["handled_not_stored"] += 1
                continue
            name, step, value, timestamp = item
            self.points.append(StoredPoint(trial_component, name, step, value, timestamp))
            names.add(name)
            stored += 1
        self._count_stored(stored)

    def _items_reached(self, trial_component: str, n_items: int) -> set[str]:
        """Count the items of a request that reached the per-index stage; return the names stored so far."""
        counts = self.counts
        counts["items"] += n_items
        if n_items > counts["max_items_in_request"]:
            counts["max_items_in_request"] = n_items
        names = self._names.get(trial_component)
        if names is None:
            names = self._names[trial_component] = set()
        return names

    def _count_stored(self, stored: int) -> None:
        if stored:
            self.counts["stored"] += stored
            if self._waiters:
                self._wake()
