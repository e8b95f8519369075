"""A training job for the crash tests: logs with a spool and reports its progress on stdout.

Run as ``python spool_child.py SPOOL_DIR TRIAL_COMPONENT POINTS``, with the endpoint in
``AWS_ENDPOINT_URL_SAGEMAKER_METRICS`` (and fake credentials) in the environment. Every 50
points it prints ``{"step": last step logged, "time": epoch seconds}``; the parent kills it
with SIGKILL whenever it likes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from metricsbuf import MetricsLogger

SPOOL_INTERVAL = 0.05


async def main(spool_dir: str, trial_component: str, points: int) -> None:
    async with MetricsLogger(
        trial_component, spool_dir=spool_dir, spool_interval=SPOOL_INTERVAL, flush_interval=0.05
    ) as metrics:
        for step in range(points):
            await metrics.log("loss", float(step), step=step)
            if step % 50 == 49:
                print(json.dumps({"step": step, "time": time.time()}), flush=True)
                await asyncio.sleep(0.01)  # a training step


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
