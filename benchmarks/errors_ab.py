"""Per-index INTERNAL_ERROR: end-to-end throughput, and the request rate when every index fails.

One logger (``max_in_flight=8``, other options default) logs N points as fast as it can and
closes, against a `FakeMetricsServiceProcess` on 127.0.0.1 answering each item
``INTERNAL_ERROR`` with the given probability (seeded). Prints one JSON line per run: seconds
from the first ``log`` to the end of the close, points stored, requests, requests/s, failed.

    python benchmarks/errors_ab.py [--points 20000] [--rates 0,0.1,1.0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from metricsbuf import MetricsLogger
from metricsbuf.testing import FakeMetricsServiceProcess

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
)


async def one(service: FakeMetricsServiceProcess, n: int, error_rate: float, tc: str) -> dict[str, object]:
    await service.configure_async(internal_error_rate=error_rate)
    await service.clear_async()
    metrics = MetricsLogger(tc, endpoint_url=service.endpoint_url, region_name="us-east-1", max_in_flight=8)
    async with metrics:
        started = time.perf_counter()
        for step in range(n):
            await metrics.log("loss", float(step), step=step)
    seconds = time.perf_counter() - started
    state = await service.state_async(points=False)
    return {
        "error_rate": error_rate,
        "points": n,
        "seconds": round(seconds, 3),
        "points_per_s": round(n / seconds),
        "stored": state.counts["stored"],
        "requests": state.counts["requests"],
        "requests_per_s": round(state.counts["requests"] / seconds, 1),
        "failed": metrics.stats.failed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--rates", default="0,0.1,1.0")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    async with FakeMetricsServiceProcess(seed=1) as service:
        for repeat in range(args.repeats):
            for rate in (float(r) for r in args.rates.split(",")):
                n = args.points if rate < 1.0 else args.points // 10
                print(json.dumps(await one(service, n, rate, f"ab-{repeat}-{int(rate * 100)}")), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
