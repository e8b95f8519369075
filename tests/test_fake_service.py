"""metricsbuf.testing: the fake SageMaker Metrics service, exercised through real aiobotocore clients."""

from __future__ import annotations

import asyncio
import inspect
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from service_support import item, metrics_client

from metricsbuf import InvalidMetricError
from metricsbuf.testing import (
    COUNT_KEYS,
    ITEM_OUTCOMES,
    REQUEST_OUTCOMES,
    FakeMetricsService,
    FakeMetricsServiceProcess,
    InMemoryMetricsClient,
    StoredPoint,
    main,
)
from metricsbuf.testing._knobs import KNOBS

# How users enable the fixture (in their conftest.py); pytester runs a conftest that does so.
pytest_plugins = ["metricsbuf.pytest_plugin", "pytester"]

TC = "my-trial-0001"
DAY = 24 * 3600.0


async def put(client: Any, data: list[dict[str, Any]], tc: str = TC) -> list[dict[str, Any]]:
    response = await client.batch_put_metrics(TrialComponentName=tc, MetricData=data)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    errors: list[dict[str, Any]] = response["Errors"]
    return errors


async def outcome(client: Any, data: list[dict[str, Any]], tc: str = TC) -> Any:
    """What one call produced: the Errors list, a ClientError's (code, status) or an exception class name."""
    try:
        return await put(client, data, tc)
    except ClientError as exc:
        return (exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"])
    except (EndpointConnectionError, ConnectionClosedError) as exc:
        return type(exc).__name__


def assert_counts_add_up(svc: FakeMetricsService) -> None:
    counts = svc.counts
    assert set(counts) <= set(COUNT_KEYS)
    assert counts["requests"] == sum(counts[k] for k in REQUEST_OUTCOMES), counts
    assert counts["items"] == sum(counts[k] for k in ITEM_OUTCOMES), counts
    assert counts["stored"] == len(svc.points)


@pytest.fixture
async def svc() -> AsyncIterator[FakeMetricsService]:
    async with FakeMetricsService() as service:
        yield service


# --------------------------------------------------------------------------- success path


async def test_stores_points_exactly_with_microseconds(svc: FakeMetricsService) -> None:
    assert svc.endpoint_url.startswith("http://127.0.0.1:")
    now = time.time()
    when = datetime.fromtimestamp(int(now) - 60, tz=timezone.utc).replace(microsecond=123457)
    data = [
        {"MetricName": "loss", "Value": 0.5, "Step": 0, "Timestamp": when},
        {"MetricName": "loss", "Value": 0.25, "Step": 1, "Timestamp": now - 1.000001},
        {"MetricName": "lr", "Value": -3, "Timestamp": now},  # no Step, an int Value
        {"MetricName": "acc", "Value": 1e-300, "Step": 2**31 - 1, "Timestamp": now},
    ]
    async with metrics_client(svc.endpoint_url) as client:
        response = await client.batch_put_metrics(TrialComponentName=TC, MetricData=data)
    assert response["Errors"] == []
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["ResponseMetadata"]["RequestId"]
    assert svc.points == [
        StoredPoint(TC, "loss", 0, 0.5, when.timestamp()),
        # botocore turns a float timestamp into a datetime: microseconds survive, no more.
        StoredPoint(TC, "loss", 1, 0.25, round(now - 1.000001, 6)),
        StoredPoint(TC, "lr", None, -3.0, round(now, 6)),
        StoredPoint(TC, "acc", 2**31 - 1, 1e-300, round(now, 6)),
    ]
    assert svc.points[0].time == when
    assert svc.counts == {
        "requests": 1,
        "ok": 1,
        "items": 4,
        "stored": 4,
        "max_items_in_request": 4,
        "max_in_flight": 1,
    }
    assert svc.series(TC, "loss") == svc.points[:2]
    assert not svc.duplicates()
    assert_counts_add_up(svc)


async def test_duplicates_and_stored_keys(svc: FakeMetricsService) -> None:
    point = item(ts=time.time())
    async with metrics_client(svc.endpoint_url) as client:
        await put(client, [point, point])
        await put(client, [point, item(name="other")])
    stored = svc.points[0]
    assert svc.stored_keys()[stored] == 3
    assert svc.duplicates() == {stored: 3}
    assert svc.state().duplicates() == {stored: 3}
    assert svc.counts["max_items_in_request"] == 2


# --------------------------------------------------------------------------- validation


BAD_ITEMS = {
    "empty name": item(name=""),
    "256-char name": item(name="n" * 256),
    "newline in name": item(name="a\nb"),
    "carriage return in name": item(name="a\rb"),
    "U+2028 in name": item(name="a\u2028b"),
    "negative step": item(step=-1),
    "step above int32": item(step=2**31),
    "NaN": item(value=math.nan),
    "Infinity": item(value=math.inf),
    "-Infinity": item(value=-math.inf),
    "too old": item(ts=time.time() - 14 * DAY - 60),
    "too far ahead": item(ts=time.time() + 2 * 3600 + 60),
}


@pytest.mark.parametrize("index", [0, 2])
@pytest.mark.parametrize("bad", BAD_ITEMS.values(), ids=BAD_ITEMS.keys())
async def test_invalid_item_gets_validation_error_at_its_index(
    svc: FakeMetricsService, bad: dict[str, Any], index: int
) -> None:
    data = [item(name="ok-1"), item(name="ok-2")]
    data.insert(index, bad)
    async with metrics_client(svc.endpoint_url, validate=False) as client:
        errors = await put(client, data)
    assert errors == [{"Code": "VALIDATION_ERROR", "MetricIndex": index}]
    assert [p.name for p in svc.points] == ["ok-1", "ok-2"]
    assert svc.counts["VALIDATION_ERROR"] == 1
    assert_counts_add_up(svc)


async def test_boundary_values_are_accepted(svc: FakeMetricsService) -> None:
    now = time.time()
    data = [
        item(name="n" * 255),
        item(name="a b\t:/=+-@"),
        item(step=0),
        item(step=2**31 - 1),
        item(ts=now - 14 * DAY + 60),
        item(ts=now + 2 * 3600 - 60),
        item(value=-1.7976931348623157e308),
    ]
    async with metrics_client(svc.endpoint_url) as client:
        assert await put(client, data) == []
    assert svc.counts["stored"] == len(data)


BAD_TRIAL_COMPONENTS = ["Upper", "-lead", "trail-", "under_score", "a" * 121, "a" + "-" * 119 + "b"]


@pytest.mark.parametrize("tc", BAD_TRIAL_COMPONENTS)
async def test_bad_trial_component_is_a_whole_request_validation_exception(
    svc: FakeMetricsService, tc: str
) -> None:
    async with metrics_client(svc.endpoint_url, validate=False) as client:
        assert await outcome(client, [item()], tc=tc) == ("ValidationException", 400)
    assert svc.points == []
    assert svc.counts["invalid_request"] == 1
    assert_counts_add_up(svc)


async def test_good_trial_component_names(svc: FakeMetricsService) -> None:
    async with metrics_client(svc.endpoint_url) as client:
        for tc in ["a", "0", "a--b-c", "a" * 120, "x" + "-" * 60 + "y"]:
            assert await put(client, [item()], tc=tc) == []


@pytest.mark.parametrize("n_items", [0, 11])
async def test_item_count_outside_1_to_10_is_a_whole_request_error(
    svc: FakeMetricsService, n_items: int
) -> None:
    async with metrics_client(svc.endpoint_url, validate=False) as client:
        assert await outcome(client, [item()] * n_items) == ("ValidationException", 400)
        assert await put(client, [item()] * 10) == []
    assert svc.counts["stored"] == 10
    assert svc.counts["invalid_request"] == 1


MALFORMED_BODIES = {
    "not JSON": (b"{", "SerializationException"),
    "not an object": (b"[]", "SerializationException"),
    "no trial component": (b'{"MetricData": []}', "ValidationException"),
    "no metric data": (b'{"TrialComponentName": "a"}', "ValidationException"),
    "item not an object": (b'{"TrialComponentName": "a", "MetricData": [1]}', "SerializationException"),
    "value a word": (
        b'{"TrialComponentName": "a", "MetricData": [{"MetricName": "m", "Timestamp": 1, "Value": "x"}]}',
        "SerializationException",
    ),
    "fractional step": (
        b'{"TrialComponentName": "a", "MetricData": '
        b'[{"MetricName": "m", "Timestamp": 1, "Value": 1, "Step": 1.5}]}',
        "SerializationException",
    ),
    "no timestamp": (
        b'{"TrialComponentName": "a", "MetricData": [{"MetricName": "m", "Value": 1}]}',
        "ValidationException",
    ),
}


@pytest.mark.parametrize("body, code", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
async def test_malformed_bodies(svc: FakeMetricsService, body: bytes, code: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.put(svc.endpoint_url + "/BatchPutMetrics", data=body) as response:
            assert response.status == 400
            assert response.headers["x-amzn-ErrorType"].split(":")[0] == code
            assert (await response.json())["__type"] == code
    assert svc.counts["invalid_request"] == 1
    assert svc.counts["items"] == 0


# --------------------------------------------------------------------------- faults, one at a time


async def test_throttling(svc: FakeMetricsService) -> None:
    svc.throttle_rate = 1.0
    async with metrics_client(svc.endpoint_url) as client:
        with pytest.raises(ClientError) as caught:
            await put(client, [item()])
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["Error"]["Message"] == "Rate exceeded"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert svc.points == []
    assert svc.counts["throttled"] == 1
    assert_counts_add_up(svc)


async def test_server_errors_are_500_and_503(svc: FakeMetricsService) -> None:
    svc.server_error_rate = 1.0
    async with metrics_client(svc.endpoint_url) as client:
        seen = {await outcome(client, [item()]) for _ in range(20)}
    assert seen == {("InternalFailure", 500), ("ServiceUnavailable", 503)}
    assert svc.counts["server_error"] == 20
    assert svc.counts["server_error_500"] + svc.counts["server_error_503"] == 20
    assert svc.points == []
    assert_counts_add_up(svc)


async def test_reset_stores_nothing_and_aiohttp_resends_once(svc: FakeMetricsService) -> None:
    svc.reset_rate = 1.0
    async with metrics_client(svc.endpoint_url) as client:
        seen = {await outcome(client, [item()]) for _ in range(10)}
    # RST in the first half of the range, a plain close in the second.
    assert seen == {"EndpointConnectionError", "ConnectionClosedError"}
    assert svc.points == []
    # aiohttp resent each PUT once by itself, although botocore's retries are off.
    assert svc.counts["requests"] == svc.counts["reset"] == 20
    assert_counts_add_up(svc)


async def test_ambiguous_reset_stores_then_drops(svc: FakeMetricsService) -> None:
    svc.ambiguous_reset_rate = 1.0
    point = item()
    async with metrics_client(svc.endpoint_url) as client:
        assert await outcome(client, [point]) in ("EndpointConnectionError", "ConnectionClosedError")
    # Stored, although the client saw an error: twice, because aiohttp resent the PUT.
    assert svc.counts["ambiguous_reset"] == svc.counts["requests"] == 2
    assert len(svc.points) == 2
    assert svc.duplicates() == {svc.points[0]: 2}
    assert_counts_add_up(svc)


async def test_ambiguous_reset_is_not_carried_out_on_an_invalid_request(svc: FakeMetricsService) -> None:
    svc.ambiguous_reset_rate = 1.0
    async with metrics_client(svc.endpoint_url, validate=False) as client:
        assert await outcome(client, []) == ("ValidationException", 400)
    assert svc.counts["ambiguous_reset"] == 0


@pytest.mark.parametrize("code", ["INTERNAL_ERROR", "CONFLICT_ERROR"])
async def test_per_index_injected_errors(svc: FakeMetricsService, code: str) -> None:
    setattr(svc, "internal_error_rate" if code == "INTERNAL_ERROR" else "conflict_error_rate", 1.0)
    async with metrics_client(svc.endpoint_url, validate=False) as client:
        errors = await put(client, [item(), item(name=""), item()])
    # Validation comes first; an injected error is never stored.
    assert errors == [
        {"Code": code, "MetricIndex": 0},
        {"Code": "VALIDATION_ERROR", "MetricIndex": 1},
        {"Code": code, "MetricIndex": 2},
    ]
    assert svc.points == []
    assert svc.counts[code] == 2
    assert_counts_add_up(svc)


async def test_metric_limit() -> None:
    async with FakeMetricsService(metric_limit=2) as svc:
        async with metrics_client(svc.endpoint_url) as client:
            names = ["a", "b", "c", "a", "d", "b"]
            errors = await put(client, [item(name=n) for n in names])
            assert errors == [
                {"Code": "METRIC_LIMIT_EXCEEDED", "MetricIndex": 2},
                {"Code": "METRIC_LIMIT_EXCEEDED", "MetricIndex": 4},
            ]
            # Per trial component.
            assert await put(client, [item(name="c")], tc="other") == []
            # A name counts only once one of its points is stored.
            svc.configure(metric_limit=3, internal_error_rate=1.0)
            assert await put(client, [item(name="x")]) == [{"Code": "INTERNAL_ERROR", "MetricIndex": 0}]
            svc.configure(internal_error_rate=0.0)
            assert await put(client, [item(name="y"), item(name="x")]) == [
                {"Code": "METRIC_LIMIT_EXCEEDED", "MetricIndex": 1}
            ]
    assert [p.name for p in svc.points] == ["a", "b", "a", "b", "c", "y"]
    assert svc.counts["METRIC_LIMIT_EXCEEDED"] == 3
    assert_counts_add_up(svc)


async def test_known_trial_components() -> None:
    async with FakeMetricsService(known_trial_components={"known"}) as svc:
        async with metrics_client(svc.endpoint_url) as client:
            assert await outcome(client, [item()], tc="unknown") == ("ResourceNotFound", 400)
            assert await put(client, [item()], tc="known") == []
            svc.known_trial_components = None
            assert await put(client, [item()], tc="unknown") == []
    assert svc.counts["resource_not_found"] == 1
    assert [p.trial_component for p in svc.points] == ["known", "unknown"]


async def test_latency_and_max_in_flight(svc: FakeMetricsService) -> None:
    svc.latency = 0.05
    async with metrics_client(svc.endpoint_url) as client:
        started = time.monotonic()
        await asyncio.gather(*(put(client, [item()]) for _ in range(5)))
        elapsed = time.monotonic() - started
    assert elapsed >= 0.05
    assert svc.counts["max_in_flight"] == 5


async def test_wait_stored(svc: FakeMetricsService) -> None:
    svc.latency = 0.02
    async with metrics_client(svc.endpoint_url) as client:
        task = asyncio.ensure_future(put(client, [item(), item()]))
        await svc.wait_stored(2, timeout=5)
        assert svc.counts["stored"] == 2
        await task
        with pytest.raises(asyncio.TimeoutError):
            await svc.wait_stored(3, timeout=0.01)


# --------------------------------------------------------------------------- seeded replay


async def run_mixed(seed: int, now: float) -> tuple[list[Any], dict[str, int], list[StoredPoint]]:
    async with FakeMetricsService(
        seed=seed,
        throttle_rate=0.1,
        server_error_rate=0.1,
        reset_rate=0.05,
        ambiguous_reset_rate=0.05,
        internal_error_rate=0.1,
        conflict_error_rate=0.1,
    ) as svc:
        async with metrics_client(svc.endpoint_url) as client:
            outcomes = [
                await outcome(client, [item(name=f"m{j}", step=i, ts=now) for j in range(5)])
                for i in range(40)
            ]
    assert_counts_add_up(svc)
    return outcomes, dict(svc.counts), svc.points


async def test_same_seed_same_faults() -> None:
    now = time.time()
    first, second, other = [await run_mixed(seed, now) for seed in (42, 42, 43)]
    assert first == second
    assert first[0] != other[0]
    outcomes, counts, _ = first
    # The mix really is mixed.
    kinds = {o if isinstance(o, str) else o[0] if isinstance(o, tuple) else "ok" for o in outcomes}
    assert {"ok", "ThrottlingException"} <= kinds
    assert counts["INTERNAL_ERROR"] and counts["CONFLICT_ERROR"] and counts["stored"]


async def test_reseeding_while_running(svc: FakeMetricsService) -> None:
    svc.configure(seed=5, internal_error_rate=0.5)
    async with metrics_client(svc.endpoint_url) as client:
        first = [await put(client, [item()] * 10) for _ in range(3)]
        svc.seed = 5
        second = [await put(client, [item()] * 10) for _ in range(3)]
    assert first == second
    assert any(first) and not all(errors == first[0] for errors in first)


# --------------------------------------------------------------------------- accounting at volume


async def test_every_point_accounted_for_at_volume() -> None:
    now = time.time()
    async with FakeMetricsService(seed=1, throttle_rate=0.05, internal_error_rate=0.05) as svc:
        async with metrics_client(svc.endpoint_url) as client:

            async def send(batch: int) -> tuple[int, Any]:
                data = [item(name="loss", step=batch * 10 + i, ts=now) for i in range(10)]
                return batch, await outcome(client, data)

            results = await asyncio.gather(*(send(b) for b in range(200)))
    expected_steps = set()
    for batch, result in results:
        if isinstance(result, list):
            failed = {e["MetricIndex"] for e in result}
            expected_steps |= {batch * 10 + i for i in range(10) if i not in failed}
        else:
            assert result == ("ThrottlingException", 400)
    assert {p.step for p in svc.points} == expected_steps
    assert len(svc.points) == len(expected_steps)
    assert svc.counts["requests"] == 200
    assert svc.counts["items"] == 10 * svc.counts["ok"]
    assert_counts_add_up(svc)


# --------------------------------------------------------------------------- options


def test_options_are_validated_up_front() -> None:
    with pytest.raises(InvalidMetricError, match="throttle_rate"):
        FakeMetricsService(throttle_rate=1.5)
    with pytest.raises(InvalidMetricError, match="latency"):
        FakeMetricsService(latency=-1)
    with pytest.raises(InvalidMetricError, match="known_trial_components"):
        FakeMetricsService(known_trial_components="abc")
    with pytest.raises(InvalidMetricError, match="metric_limit"):
        FakeMetricsService(metric_limit=-1)
    svc = FakeMetricsService()
    with pytest.raises(InvalidMetricError, match="reset_rate"):
        svc.reset_rate = math.nan
    with pytest.raises(InvalidMetricError, match="unknown option"):
        svc.configure(throttle=0.5)
    with pytest.raises(InvalidMetricError, match="conflict_error_rate"):
        svc.configure(internal_error_rate=0.5, conflict_error_rate=2)
    assert svc.internal_error_rate == 0.0  # nothing applied
    with pytest.raises(RuntimeError, match="not running"):
        _ = svc.endpoint_url


@pytest.mark.parametrize("cls", [FakeMetricsService, FakeMetricsServiceProcess, InMemoryMetricsClient])
def test_each_explicit_signature_lists_every_option_with_its_default(cls: type) -> None:
    parameters = inspect.signature(cls).parameters
    for name, knob in KNOBS.items():
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters[name].default == knob.default, name
    assert cls.__doc__ is not None and all(f"{name} (default" in cls.__doc__ for name in KNOBS)


async def test_control_endpoints(svc: FakeMetricsService) -> None:
    async with metrics_client(svc.endpoint_url) as client:
        await put(client, [item(name="a", step=3)])
    base = svc.endpoint_url + "/_fake"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/state") as response:
            state = await response.json()
        assert state["counts"]["stored"] == 1
        point = svc.points[0]
        assert state["points"] == [[TC, "a", 3, point.value, point.timestamp]]
        async with session.get(base + "/state?points=0") as response:
            assert "points" not in await response.json()
        async with session.post(
            base + "/config", json={"throttle_rate": 0.5, "known_trial_components": ["b", "a"]}
        ) as response:
            config = await response.json()
        assert config["throttle_rate"] == 0.5 and config["known_trial_components"] == ["a", "b"]
        assert svc.throttle_rate == 0.5
        async with session.post(base + "/config", json={"throttle_rate": 7}) as response:
            assert response.status == 400
            assert "throttle_rate" in await response.text()
        async with session.get(base + "/config") as response:
            assert (await response.json())["throttle_rate"] == 0.5
        async with session.post(base + "/clear") as response:
            assert response.status == 200
    assert svc.points == [] and not svc.counts


# --------------------------------------------------------------------------- ways to use it


@pytest.mark.parametrize("fake_metrics_service", [{"throttle_rate": 1.0}], indirect=True)
async def test_pytest_fixture(fake_metrics_service: FakeMetricsService) -> None:
    assert fake_metrics_service.throttle_rate == 1.0
    async with metrics_client(fake_metrics_service.endpoint_url) as client:
        assert await outcome(client, [item()]) == ("ThrottlingException", 400)


def test_plugin_marker_from_a_conftest(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\n"
        "asyncio_mode = auto\n"
        "asyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    pytester.makeconftest('pytest_plugins = ["metricsbuf.pytest_plugin"]\n')
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.fake_metrics_service(latency=0.25, seed=9)
        async def test_marker(fake_metrics_service):
            assert fake_metrics_service.latency == 0.25
            assert fake_metrics_service.seed == 9
            assert fake_metrics_service.endpoint_url.startswith("http://127.0.0.1:")

        async def test_default(fake_metrics_service):
            assert fake_metrics_service.latency == 0.0
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_fixture_importable_from_metricsbuf_testing() -> None:
    import metricsbuf.pytest_plugin
    import metricsbuf.testing

    assert metricsbuf.testing.fake_metrics_service is metricsbuf.pytest_plugin.fake_metrics_service


async def test_environ_points_a_default_client_at_the_service(
    svc: FakeMetricsService, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in svc.environ().items():
        monkeypatch.setenv(key, value)
    config = AioConfig(retries={"total_max_attempts": 1})
    async with get_session().create_client("sagemaker-metrics", config=config) as client:
        assert await put(client, [item()]) == []
    assert svc.counts["stored"] == 1


def test_importing_metricsbuf_testing_does_not_import_pytest() -> None:
    code = "import sys, metricsbuf.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1])
    )


def test_command_line_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--throttle-rate", "2"])
    assert caught.value.code == 2
    assert "throttle_rate" in capsys.readouterr().err


async def test_subprocess_mode() -> None:
    async with FakeMetricsServiceProcess(seed=3, known_trial_components=[TC], latency=0.001) as proc:
        assert proc.endpoint_url.startswith("http://127.0.0.1:")
        async with metrics_client(proc.endpoint_url) as client:
            point = item(name="loss", step=7, ts=time.time() - 0.000123)
            assert await put(client, [point, item(name="x\ny")]) == [
                {"Code": "VALIDATION_ERROR", "MetricIndex": 1}
            ]
            assert await outcome(client, [item()], tc="stranger") == ("ResourceNotFound", 400)
            config = await proc.configure_async(throttle_rate=1.0)
            assert config["throttle_rate"] == 1.0 and config["known_trial_components"] == [TC]
            assert await outcome(client, [item()]) == ("ThrottlingException", 400)
            with pytest.raises(InvalidMetricError, match="throttle_rate"):
                await proc.configure_async(throttle_rate=-1)
        state = await proc.state_async()
        assert state.points == [StoredPoint(TC, "loss", 7, 1.0, round(point["Timestamp"], 6))]
        assert state.counts["requests"] == 3
        assert state.counts["VALIDATION_ERROR"] == 1
        assert state.counts["resource_not_found"] == 1
        assert state.counts["throttled"] == 1
        assert (await proc.state_async(points=False)).points == []
        await proc.clear_async()
        assert not (await proc.state_async()).counts
        pid = proc.pid
        assert pid is not None
    assert proc.pid is None
