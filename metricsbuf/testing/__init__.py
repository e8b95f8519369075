"""A fault-injecting local SageMaker Metrics service, for testing code that logs metrics.

`FakeMetricsService` is a small aiohttp server on 127.0.0.1 (an ephemeral port) that speaks
``PUT /BatchPutMetrics`` (rest-json) well enough for a real botocore or aiobotocore
``sagemaker-metrics`` client with any fake credentials and any region. It stores what it
accepts, counts everything it does, and injects faults at rates you choose, from a seeded
random generator so that a failing run can be replayed::

    from aiobotocore.session import get_session
    from metricsbuf.testing import FakeMetricsService

    async def test_my_training_loop() -> None:
        async with FakeMetricsService(throttle_rate=0.2, internal_error_rate=0.05, seed=7) as svc:
            async with get_session().create_client("sagemaker-metrics", **svc.client_kwargs()) as client:
                await train(client)  # your code
        assert {p.name for p in svc.points} == {"loss", "accuracy"}
        assert not svc.duplicates()
        assert svc.counts["stored"] == len(svc.points)

Code that builds its own client (or runs in a subprocess) can be pointed at the service with
the environment: ``monkeypatch.setenv(...)`` for each item of ``svc.environ()``
(``AWS_ENDPOINT_URL_SAGEMAKER_METRICS``, fake credentials, a region).

In memory, with no HTTP
-----------------------
Code that takes a client object can be tested with no server and no ports at all:
`InMemoryMetricsClient` is the same service behind an ``async batch_put_metrics(**kwargs)``
method, with the same options, rules, fault draws, counts and queries (as httpx's
``MockTransport`` stands in for the network)::

    from metricsbuf import MetricsLogger
    from metricsbuf.testing import InMemoryMetricsClient

    async def test_training_loop_logs_every_step() -> None:
        client = InMemoryMetricsClient(throttle_rate=0.1, internal_error_rate=0.2, seed=7)
        async with MetricsLogger("my-run", client=client, backoff_initial=0.01) as metrics:
            for step in range(100):
                await metrics.log("loss", 1 / (step + 1), step=step)
        assert [p.step for p in client.series("my-run", "loss")] == list(range(100))
        assert not client.duplicates()

Each call goes through botocore's own parameter validation (``parameter_validation=False``
turns it off, as ``AioConfig`` does) and serializer, so the service sees the very body a real
client would send, and the answer comes back as aiobotocore returns or raises it: the same
``ClientError`` (``ThrottlingException``, ``InternalFailure``, ...), and the same
``EndpointConnectionError`` / ``ConnectionClosedError`` for the two kinds of dropped
connection, so code under test (metricsbuf's retry policy included) classifies them alike.
It behaves like a client made with ``AioConfig(retries={"total_max_attempts": 1})``, and no
transport resends anything: ``counts["requests"]`` is exactly the calls made. An optional
``handler`` scripts particular answers (see `InMemoryMetricsClient`).

pytest fixture
--------------
Enable the plugin in a ``conftest.py`` (pytest and pytest-asyncio are needed only then)::

    pytest_plugins = ["metricsbuf.pytest_plugin"]

then ask for ``fake_metrics_service`` in an async test; options come from an optional marker
or from indirect parametrization::

    @pytest.mark.fake_metrics_service(conflict_error_rate=0.1, latency=0.01)
    async def test_it(fake_metrics_service: FakeMetricsService) -> None:
        ...

    @pytest.mark.parametrize("fake_metrics_service", [{"reset_rate": 0.1}], indirect=True)
    async def test_resets(fake_metrics_service: FakeMetricsService) -> None:
        ...

(``from metricsbuf.testing import fake_metrics_service`` also works, in a conftest.py or a
test module; it imports pytest at that moment, not when ``metricsbuf.testing`` is imported.
The marker is registered only when the plugin is loaded, so a test module that merely
imports the fixture should use the parametrization.)

What the service checks
-----------------------
Whole request, answered HTTP 400 and nothing stored:

* the body must be a JSON object with ``TrialComponentName`` (a string) and ``MetricData``
  (a list of objects, each with a string ``MetricName``, a number ``Timestamp`` in epoch
  seconds, a number ``Value`` or one of the strings "NaN", "Infinity", "-Infinity", and an
  optional integer ``Step``): a missing member is a ``ValidationException``, a wrong JSON
  type a ``SerializationException``;
* the trial component name must match ``^[a-z0-9](-*[a-z0-9]){0,119}$`` and be at most 120
  characters, and ``MetricData`` must hold 1 to 10 items (``ValidationException``);
* with ``known_trial_components`` set, the name must be one of them (``ResourceNotFound``).

Per item, answered ``VALIDATION_ERROR`` at the item's index and not stored: a ``MetricName``
of 0 or more than 255 characters or holding a line break (``\\n``, ``\\r``, U+0085, U+2028,
U+2029); a ``Step`` outside 0..2**31-1; a non-finite ``Value``; a ``Timestamp`` outside
[now - 14 days, now + 2 hours] (the window the SageMaker SDK enforces). Everything else is
stored as a `StoredPoint`, exactly as sent (microseconds included), in ``svc.points``. The
fake keeps every point, repeats included: duplicates from retries stay visible
(`FakeMetricsService.duplicates`).

The order in which a request is handled and faults are drawn
------------------------------------------------------------
1. ``latency`` seconds of ``asyncio.sleep`` (after reading the body). `InMemoryMetricsClient`
   then asks its ``handler``, if any: a request the handler answers skips the steps below
   and makes no draw.
2. The rate limit, if ``rate_limit`` is set: a token bucket shared by every client of this
   service (every process using one `FakeMetricsServiceProcess`, every caller of one
   `InMemoryMetricsClient`), refilled at ``rate_limit`` tokens a second up to
   ``rate_limit_burst``, and full at the start (and after `clear` or a change of either
   option). A request that finds no whole token gets HTTP 400 ``ThrottlingException``,
   as the random ``throttle_rate`` fault does, but is counted as ``rate_limited``; it makes
   no draw.
3. One draw ``u = rng.random()``, always made, picks at most one whole-request fault from
   consecutive ranges: ``[0, throttle_rate)`` HTTP 400 ``ThrottlingException``; then
   ``server_error_rate`` (its first half HTTP 500 ``InternalFailure``, its second half HTTP
   503 ``ServiceUnavailable``); then ``reset_rate`` (the connection is dropped, nothing
   stored: a TCP RST in the first half of the range, a plain close in the second); then
   ``ambiguous_reset_rate`` (decided now, RST or close split the same way, carried out in
   step 6). If the rates add up to more than 1, the ones earlier in this list win.
4. Whole-request validation (above), then ``known_trial_components``. A request rejected
   here draws nothing more, and an ambiguous reset drawn in step 3 is not carried out.
5. Per item, in index order, one draw ``v = rng.random()``, always made, then the first
   that applies: ``VALIDATION_ERROR`` (invalid item); ``METRIC_LIMIT_EXCEEDED`` (the trial
   component already holds ``metric_limit`` distinct names and this name is new);
   ``INTERNAL_ERROR`` if ``v < internal_error_rate``; ``CONFLICT_ERROR`` if
   ``v < internal_error_rate + conflict_error_rate``; otherwise the point is stored.
   An item with an error is never stored, and a name counts toward ``metric_limit`` only
   once one of its points is stored.
6. If step 3 chose an ambiguous reset, the connection is reset now, after storing, without
   a response; otherwise HTTP 200 ``{"Errors": [{"Code": ..., "MetricIndex": i}, ...]}``
   (``{"Errors": []}`` when every item was stored).

Because each request consumes exactly ``1 + len(MetricData)`` draws when it passes step 4
and 1 otherwise (0 if the rate limit or a handler answered it), the same seed and the same
sequence of admitted requests give the same faults whatever the rates. With concurrent requests the arrival
order (hence the draws each request gets) can vary between runs; send sequentially to
replay exactly.

Each of the steps is counted in ``svc.counts`` (a `collections.Counter`; the keys and their
meaning are in `COUNT_KEYS`), and every request and every item ends in exactly one outcome,
so a test can account for every point::

    svc.counts["requests"] == sum(svc.counts[k] for k in REQUEST_OUTCOMES)  # once all are answered
    svc.counts["items"] == sum(svc.counts[k] for k in ITEM_OUTCOMES)

How clients see the faults
--------------------------
Whole-request errors carry ``x-amzn-ErrorType`` and a JSON body ``{"__type", "message"}``,
so botocore raises ``botocore.exceptions.ClientError`` with ``response["Error"]["Code"]``
set to the code above and ``response["ResponseMetadata"]["HTTPStatusCode"]`` to the status.
A dropped connection surfaces in aiobotocore as ``botocore.exceptions.EndpointConnectionError``
("Could not connect to the endpoint URL", although the request was sent) after a TCP RST,
and as ``botocore.exceptions.ConnectionClosedError`` after a plain close; ``reset`` and
``ambiguous_reset`` look the same to the client, which cannot know whether it was stored. Two
client-side retries may hide faults: botocore's own retries (turn them off with
``AioConfig(retries={"total_max_attempts": 1})``) and aiohttp's, which resends an idempotent
request (a PUT) once by itself when the connection drops before a response. The service
counts every HTTP attempt it receives, so ``counts["requests"]`` can exceed the calls made.

Running it in another process
-----------------------------
``python -m metricsbuf.testing [--port 0] [--seed N] [--latency S] [--throttle-rate R] ...``
(every option of `FakeMetricsService`, dashes for underscores; ``--known-trial-component
NAME`` repeated; ``--exit-on-stdin-eof``) prints its endpoint URL as the first line on stdout
and serves until SIGINT/SIGTERM. `FakeMetricsServiceProcess` does this for you. Besides
``/BatchPutMetrics`` the service (in either mode) answers:

* ``GET /_fake/state[?points=0]``: ``{"counts": {...}, "points": [[trial_component, name,
  step, value, timestamp], ...]}`` (points in storage order; omitted with ``points=0``);
* ``GET /_fake/config``: the current options as a JSON object;
* ``POST /_fake/config`` with a JSON object of options: changes them all at once (all are
  validated first; HTTP 400 with a message otherwise) and answers the resulting options;
* ``POST /_fake/clear``: forgets the stored points, counts and known metric names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._memory import BatchPutMetricsCall, InMemoryMetricsClient
from ._process import FakeMetricsServiceProcess, main
from ._records import ServiceState, StoredPoint
from ._rules import COUNT_KEYS, ITEM_OUTCOMES, REQUEST_OUTCOMES
from ._server import FakeMetricsService

if TYPE_CHECKING:
    from ..pytest_plugin import fake_metrics_service as fake_metrics_service

__all__ = [
    "BatchPutMetricsCall",
    "COUNT_KEYS",
    "FakeMetricsService",
    "FakeMetricsServiceProcess",
    "ITEM_OUTCOMES",
    "InMemoryMetricsClient",
    "REQUEST_OUTCOMES",
    "ServiceState",
    "StoredPoint",
    "main",
]
# Not in __all__: `fake_metrics_service` (the pytest fixture), loaded lazily by __getattr__ so
# that importing this module, even with "import *", never imports pytest.


def __getattr__(name: str) -> Any:
    # The pytest fixture, imported (with pytest) only when asked for.
    if name == "fake_metrics_service":
        from ..pytest_plugin import fake_metrics_service

        return fake_metrics_service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
