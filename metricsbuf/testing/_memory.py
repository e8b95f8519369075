"""`InMemoryMetricsClient`: the fake service behind a client object, with no HTTP and no ports."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeAlias

from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from ._knobs import with_knob_docs
from ._model import Answered, Outcome, Refusal, ServiceModel

#: Where the in-memory client says it sends requests (in the message of a dropped connection).
IN_MEMORY_ENDPOINT_URL: Final = "in-memory://sagemaker-metrics/BatchPutMetrics"
_OPERATION: Final = "BatchPutMetrics"


@dataclass(frozen=True, slots=True)
class BatchPutMetricsCall:
    """One ``batch_put_metrics`` call, as an `InMemoryMetricsClient` handler sees it.

    Attributes:
        number: the call's place among those that reached the service, from 0 (it follows
            ``counts["requests"]``, so `InMemoryMetricsClient.clear` restarts it).
        trial_component: ``TrialComponentName`` as passed.
        metric_data: ``MetricData`` as passed: the caller's own item dicts, unconverted.
    """

    number: int
    trial_component: Any
    metric_data: Any


#: A handler's answer: a response dict, or None to let the service answer.
HandlerAnswer: TypeAlias = Mapping[str, Any] | None
Handler: TypeAlias = Callable[[BatchPutMetricsCall], HandlerAnswer | Awaitable[HandlerAnswer]]


@functools.lru_cache(maxsize=2)
def _serializer(parameter_validation: bool) -> Any:
    """botocore's own serializer for this operation, as an aiobotocore client builds it."""
    from botocore.serialize import create_serializer

    return create_serializer("rest-json", include_validation=parameter_validation)


@functools.lru_cache(maxsize=1)
def _operation_model() -> Any:
    """botocore's model of BatchPutMetrics (loading it takes a fraction of a second, once)."""
    from botocore.session import get_session

    return get_session().get_service_model("sagemaker-metrics").operation_model(_OPERATION)


def _metadata(request_id: str, status: int, headers: dict[str, str]) -> dict[str, Any]:
    headers = {"x-amzn-requestid": request_id, "content-type": "application/json", **headers}
    return {"RequestId": request_id, "HTTPStatusCode": status, "HTTPHeaders": headers, "RetryAttempts": 0}


def _client_error(refusal: Refusal) -> ClientError:
    """The ClientError aiobotocore raises for this answer, with botocore's retries off."""
    metadata = _metadata(refusal.request_id, refusal.status, {"x-amzn-errortype": refusal.error_type})
    # botocore's retry handler marks what it would have retried (throttling, 5xx) once its one
    # attempt is spent; ClientError then says "(reached max retries: 0)" in its message.
    if refusal.status >= 500 or refusal.code == "ThrottlingException":
        metadata["MaxAttemptsReached"] = True
    response = {"Error": {"Message": refusal.message, "Code": refusal.code}, "ResponseMetadata": metadata}
    return ClientError(response, _OPERATION)


@with_knob_docs
class InMemoryMetricsClient(ServiceModel):
    """A stand-in for an aiobotocore ``sagemaker-metrics`` client that is the fake service itself.

    ``await client.batch_put_metrics(TrialComponentName=..., MetricData=[...])`` runs the
    call through the same steps as a real client talking to `FakeMetricsService`, with no
    HTTP: botocore's own parameter validation (if on) and serializer turn the arguments into
    the request body a real client would send; the service's rules and fault draws decide;
    and the answer comes back as aiobotocore would return or raise it: a response dict, a
    `botocore.exceptions.ClientError` (``ThrottlingException``, ``InternalFailure``, ...), or
    `EndpointConnectionError` / `ConnectionClosedError` for a dropped connection. It behaves
    like a client made with ``AioConfig(retries={"total_max_attempts": 1})``: botocore's own
    retries never hide a fault, and no transport resends anything, so ``counts["requests"]``
    is exactly the calls that passed the client-side checks.

    The options, counts, stored points and queries (`configure`, ``points``, ``counts``,
    `duplicates`, `series`, `stored_keys`, `wait_stored`, `clear`) are those of
    `FakeMetricsService`.

    Args:
        parameter_validation: botocore's client-side check of the arguments (on by default,
            as in aiobotocore); a failure raises `botocore.exceptions.ParamValidationError`
            before anything reaches the service.
        handler: called with a `BatchPutMetricsCall` for each call that reaches the service,
            after ``latency``: a function or a coroutine function. It may return None (the
            service answers as usual), return a response dict such as ``{"Errors": [...]}``
            (the call returns it; the items it does not name by ``MetricIndex`` are stored if
            the rules accept them; no fault is drawn), or raise (the call raises it). Either
            of the last two is counted as ``handled``. A handled call does not touch the
            rate limit.
        clock: monotonic seconds for the rate limit (`time.monotonic`; a fake one in tests).
        (the options): see below.
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
        parameter_validation: bool = True,
        handler: Handler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # locals() holds exactly the arguments here; the model takes the options among them.
        super().__init__(locals(), clock=clock)
        # Loaded now, as aiobotocore loads a client's model when it creates it (once a process).
        self._operation = _operation_model()
        self._serializer = _serializer(bool(parameter_validation))
        self._handler = handler

    async def batch_put_metrics(self, **kwargs: Any) -> dict[str, Any]:
        """Send one BatchPutMetrics request to the in-memory service (see the class docstring)."""
        # Client side, as in aiobotocore: validation and serialization raise before sending.
        body: bytes = self._serializer.serialize_to_request(kwargs, self._operation)["body"]
        self._request_started()
        try:
            await asyncio.sleep(self.latency)  # sleep(0) still yields, as a real call always does
            if self._handler is not None:
                answer = await self._ask_handler(kwargs)
                if answer is not None:
                    self._record_handled(body, answer)
                    return {"ResponseMetadata": _metadata(self._next_request_id(), 200, {}), **answer}
            return self._respond(self._decide(body))
        finally:
            self._request_finished()

    async def _ask_handler(self, kwargs: Mapping[str, Any]) -> Mapping[str, Any] | None:
        assert self._handler is not None
        call = BatchPutMetricsCall(
            self.counts["requests"] - 1, kwargs.get("TrialComponentName"), kwargs.get("MetricData")
        )
        try:
            answer = self._handler(call)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception:
            self.counts["handled"] += 1
            raise
        return answer

    @staticmethod
    def _respond(outcome: Outcome) -> dict[str, Any]:
        if isinstance(outcome, Answered):
            return {"ResponseMetadata": _metadata(outcome.request_id, 200, {}), "Errors": outcome.errors}
        if isinstance(outcome, Refusal):
            raise _client_error(outcome)
        # What aiobotocore raises after a TCP RST, and after a plain close.
        if outcome.rst:
            raise EndpointConnectionError(
                endpoint_url=IN_MEMORY_ENDPOINT_URL, error=ConnectionResetError("Connection reset by peer")
            )
        raise ConnectionClosedError(
            endpoint_url=IN_MEMORY_ENDPOINT_URL, error=ConnectionError("Server disconnected")
        )

    async def __aenter__(self) -> InMemoryMetricsClient:
        """``async with`` works as with an aiobotocore client (there is nothing to open or close)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
