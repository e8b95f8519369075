"""A minimal local BatchPutMetrics endpoint for the benchmarks, run as its own process.

    python benchmarks/_server.py --port 0 --latency 0.02 --internal-error-rate 0.1 --seed 0

It listens on 127.0.0.1 only and prints its URL (``http://127.0.0.1:PORT``) as the first line
of stdout once it accepts connections.

``PUT /BatchPutMetrics`` answers ``{"Errors": [...]}`` after ``--latency`` seconds. Requests and
items are checked by the fake service's own rules (``metricsbuf.testing._rules``, the checks
`FakeMetricsService` applies): an invalid item is answered ``VALIDATION_ERROR``, and an invalid
request as a whole (a bad trial component name, 0 or more than 10 items, a wrong JSON type) HTTP
400; either way its items are counted as invalid, so a contender sending bad data shows up in
the results instead of passing silently. Each valid item independently gets an
``INTERNAL_ERROR`` with probability ``--internal-error-rate`` (seeded); every other one is
stored under (trial component, metric name, step, timestamp), so a resent point is stored once.
This is not the fake service itself: no fault knobs, no list of every point, nothing else per
request, because the benchmarks measure the clients' cost against it.

``GET /_state?tc=NAME`` returns that trial component's counters as JSON:
``requests``, ``received`` (items in all requests), ``stored`` (distinct points stored),
``internal_errors`` (injected), ``invalid`` (malformed items) and ``max_items`` (largest request).
"""

from __future__ import annotations

import argparse
import asyncio
import random

from aiohttp import web

from metricsbuf.testing._rules import RequestError, check_request, read_request


class _TrialComponent:
    __slots__ = ("requests", "received", "stored", "internal_errors", "invalid", "max_items")

    def __init__(self) -> None:
        self.requests = 0
        self.received = 0
        self.stored: set[tuple[object, ...]] = set()
        self.internal_errors = 0
        self.invalid = 0
        self.max_items = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "received": self.received,
            "stored": len(self.stored),
            "internal_errors": self.internal_errors,
            "invalid": self.invalid,
            "max_items": self.max_items,
        }


def _error(err: RequestError) -> web.Response:
    return web.json_response({"__type": err.code, "message": err.message}, status=err.status)


def make_app(latency: float, internal_error_rate: float, seed: int) -> web.Application:
    rng = random.Random(seed)
    components: dict[str, _TrialComponent] = {}

    async def batch_put_metrics(request: web.Request) -> web.Response:
        try:
            tc_name, items = read_request(await request.read())
        except RequestError as err:
            return _error(err)  # no trial component to count it under
        tc = components.get(tc_name)
        if tc is None:
            tc = components[tc_name] = _TrialComponent()
        tc.requests += 1
        tc.received += len(items)
        tc.max_items = max(tc.max_items, len(items))
        if latency:
            await asyncio.sleep(latency)
        try:
            parsed = check_request(tc_name, items)
        except RequestError as err:
            tc.invalid += len(items)
            return _error(err)
        errors = []
        for index, item in enumerate(parsed):
            if item is None:
                tc.invalid += 1
                errors.append({"Code": "VALIDATION_ERROR", "MetricIndex": index})
            elif internal_error_rate and rng.random() < internal_error_rate:
                tc.internal_errors += 1
                errors.append({"Code": "INTERNAL_ERROR", "MetricIndex": index})
            else:
                name, step, _, timestamp = item
                tc.stored.add((name, step, timestamp))
        return web.json_response({"Errors": errors})

    async def state(request: web.Request) -> web.Response:
        tc = components.get(request.query.get("tc", ""))
        return web.json_response((tc or _TrialComponent()).as_dict())

    app = web.Application(client_max_size=1024**2)
    app.router.add_put("/BatchPutMetrics", batch_put_metrics)
    app.router.add_get("/_state", state)
    return app


async def _serve(port: int, latency: float, internal_error_rate: float, seed: int) -> None:
    runner = web.AppRunner(make_app(latency, internal_error_rate, seed), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound_port = runner.addresses[0][:2]
    print(f"http://{host}:{bound_port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every response")
    parser.add_argument("--internal-error-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.port, args.latency, args.internal_error_rate, args.seed))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
