"""Many hosts and ranks on one trial component: 8 processes playing 2 hosts x 4 ranks.

The policy (README, "Many hosts and ranks"): a logger logs what it is told, in every process;
several writers on one trial component are normal, and the service's CONFLICT_ERROR for them is
retried per index. The framework adapters log from the world's process zero by default, and with
``all_ranks=True`` from every rank with the rank in the name (``loss[rank=3]``). Here every
process logs ``loss`` under its rank's name, and only rank zero logs ``epoch``, against a service
answering 10% of the points with CONFLICT_ERROR. Every point must be stored exactly once, under
the name the policy promises.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections import Counter
from pathlib import Path

from metricsbuf.testing import FakeMetricsService

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ["algo-1", "algo-2"]
RANKS_PER_HOST = 4
STEPS = 200

_WORKER = textwrap.dedent(
    """
    import asyncio, json
    from metricsbuf import MetricsLogger, process_placement
    from metricsbuf.integrations import rank_suffixed

    async def main() -> None:
        placement = process_placement()  # RANK, LOCAL_RANK, WORLD_SIZE, SM_CURRENT_HOST, SM_HOSTS
        # No name: METRICSBUF_TRIAL_COMPONENT, as an operator would set it for every rank.
        async with MetricsLogger(backoff_initial=0.01, backoff_max=0.05) as metrics:
            for step in range({steps}):
                await metrics.log(rank_suffixed("loss", placement.rank), float(step), step=step)
                if placement.is_rank_zero:
                    await metrics.log("epoch", float(step // 50), step=step)
        print(json.dumps({{"host": placement.host, "rank": placement.rank, "stats": str(metrics.stats),
                           "failed": metrics.stats.failed, "pending": metrics.stats.pending}}))

    asyncio.run(main())
    """
).format(steps=STEPS)


async def test_two_hosts_by_four_ranks_store_every_point_once_under_the_promised_names() -> None:
    async with FakeMetricsService(conflict_error_rate=0.1, seed=5) as svc:
        procs = []
        world = len(HOSTS) * RANKS_PER_HOST
        for host_index, host in enumerate(HOSTS):
            for local_rank in range(RANKS_PER_HOST):
                env = {
                    **os.environ,
                    **svc.environ(),
                    "PYTHONPATH": str(ROOT),
                    "METRICSBUF_TRIAL_COMPONENT": "two-hosts-run",
                    "RANK": str(host_index * RANKS_PER_HOST + local_rank),
                    "LOCAL_RANK": str(local_rank),
                    "WORLD_SIZE": str(world),
                    "SM_CURRENT_HOST": host,
                    "SM_HOSTS": json.dumps(HOSTS),
                }
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-c",
                        _WORKER,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                        env=env,
                    )
                )
        try:
            outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        stored = list(svc.points)
        conflicts = svc.counts["CONFLICT_ERROR"]
    reports = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert all(r["failed"] == 0 and r["pending"] == 0 for r in reports), reports
    assert sorted((r["host"], r["rank"]) for r in reports) == [
        (HOSTS[r // RANKS_PER_HOST], r) for r in range(len(HOSTS) * RANKS_PER_HOST)
    ]
    assert conflicts > 0  # the service did answer CONFLICT_ERROR, and those indices were resent
    assert {p.trial_component for p in stored} == {"two-hosts-run"}
    copies = Counter((p.name, p.step) for p in stored)
    expected = {(f"loss[rank={rank}]", step) for rank in range(8) for step in range(STEPS)}
    expected |= {("epoch", step) for step in range(STEPS)}  # rank zero only
    assert set(copies) == expected
    assert set(copies.values()) == {1}  # exactly once
