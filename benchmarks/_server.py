"""A minimal local BatchPutMetrics endpoint for the benchmarks, run as its own process.

    python benchmarks/_server.py --port 0 --latency 0.02 --internal-error-rate 0.1 --seed 0

It listens on 127.0.0.1 only and prints its URL (``http://127.0.0.1:PORT``) as the first line
of stdout once it accepts connections.

``PUT /BatchPutMetrics`` answers ``{"Errors": [...]}`` after ``--latency`` seconds. Each item
independently gets an ``INTERNAL_ERROR`` with probability ``--internal-error-rate`` (seeded);
every other well-formed item is stored under (trial component, metric name, step, timestamp),
so a resent point is stored once. Malformed items (missing fields, a non-finite or string value,
a request with 0 or more than 10 items) are answered with ``VALIDATION_ERROR`` and counted, so a
contender sending bad data shows up in the results instead of passing silently.

``GET /_state?tc=NAME`` returns that trial component's counters as JSON:
``requests``, ``received`` (items in all requests), ``stored`` (distinct points stored),
``internal_errors`` (injected), ``invalid`` (malformed items) and ``max_items`` (largest request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys

from aiohttp import web


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


def _valid_item(item: object) -> bool:
    if not isinstance(item, dict):
        return False
    name, value, ts = item.get("MetricName"), item.get("Value"), item.get("Timestamp")
    if not isinstance(name, str) or not 1 <= len(name) <= 255:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if not isinstance(ts, (int, float, str)):
        return False
    step = item.get("Step")
    return step is None or (isinstance(step, int) and 0 <= step <= 2**31 - 1)


def make_app(latency: float, internal_error_rate: float, seed: int) -> web.Application:
    rng = random.Random(seed)
    components: dict[str, _TrialComponent] = {}

    async def batch_put_metrics(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            tc_name = body["TrialComponentName"]
            items = body["MetricData"]
            if not isinstance(tc_name, str) or not isinstance(items, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"__type": "ValidationException", "message": "malformed request"}, status=400
            )
        tc = components.get(tc_name)
        if tc is None:
            tc = components[tc_name] = _TrialComponent()
        tc.requests += 1
        tc.received += len(items)
        tc.max_items = max(tc.max_items, len(items))
        if latency:
            await asyncio.sleep(latency)
        errors = []
        too_many = not 1 <= len(items) <= 10
        for index, item in enumerate(items):
            if too_many or not _valid_item(item):
                tc.invalid += 1
                errors.append({"Code": "VALIDATION_ERROR", "MetricIndex": index})
            elif internal_error_rate and rng.random() < internal_error_rate:
                tc.internal_errors += 1
                errors.append({"Code": "INTERNAL_ERROR", "MetricIndex": index})
            else:
                tc.stored.add((item["MetricName"], item.get("Step"), item["Timestamp"]))
        return web.json_response({"Errors": errors[:10]})

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
    sys.exit(main())
