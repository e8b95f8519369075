"""``metricsbuf sync`` and ``metricsbuf inspect``: working with a spool from the command line.

Exit codes: EXIT_OK (0) when the spool holds nothing afterwards (everything delivered),
EXIT_INCOMPLETE (1) when something failed, is still pending, or dead letters are left in the
spool; 2 when the command could not run (no spool, spool in use, damaged store, no
credentials): ``__main__`` returns it for any MetricsBufError, and argparse for a bad command line.

Everything printed that comes from a spool or the service (names, codes, messages, paths) goes
through ``_printable``: a metric name may hold any character but a line break, and a spool may
have been edited by hand, so escape sequences must not reach the terminal.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import TextIO

import anyio

from ._console import Progress, bar
from ._exceptions import MetricsBufError
from ._logger import MetricsLogger
from ._spool import Spool

# The trial component of the sync command's own (empty) stream: sync only sends what others logged.
_SYNC_TRIAL_COMPONENT = "metricsbuf-sync"

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # something failed, is still pending, or dead letters are left in the spool


def _printable(text: object) -> str:
    """``text`` with every character a terminal could act on escaped, as repr() writes it.

    Not printable (str.isprintable) are controls (ESC, BEL, C1 such as CSI), format characters
    (bidi overrides, zero-width), surrogates, and separators other than the space.
    """
    shown = str(text)
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)


async def sync(
    path: str,
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    retry_failed: bool = False,
    max_attempts: int = 8,
    adaptive_rate: bool = False,
    out: TextIO | None = None,
) -> int:
    """Sends everything pending in the spool at ``path``; returns the exit code (see the module docstring).

    Raises:
        MetricsBufError: the command could not run (exit code 2 in ``__main__``).
    """
    out = out or sys.stdout
    if retry_failed:
        spool = await anyio.to_thread.run_sync(lambda: Spool.open(path, create=False))
        try:
            moved = await anyio.to_thread.run_sync(spool.retry_dead)
        finally:
            await anyio.to_thread.run_sync(spool.close)
        out.write(f"{moved} dead letter(s) queued again\n")
    spool_check = await anyio.to_thread.run_sync(lambda: Spool.open(path, read_only=True))
    await anyio.to_thread.run_sync(spool_check.close)

    logger = MetricsLogger(
        _SYNC_TRIAL_COMPONENT,
        endpoint_url=endpoint_url,
        region_name=region_name,
        spool_dir=path,
        max_attempts=max_attempts,
        max_in_flight=8,
        adaptive_rate=adaptive_rate,
    )
    progress = Progress(out)
    try:
        await logger.start()
    except MetricsBufError:
        raise
    except Exception as exc:  # e.g. botocore's ValueError for a malformed --endpoint-url
        raise MetricsBufError(f"could not start sending: {exc}") from exc
    try:
        total = logger.stats.recovered
        out.write(f"{total} pending point(s) in {_printable(path)}\n")
        flushing = asyncio.ensure_future(logger.flush())
        while not flushing.done():
            progress.update(_line(logger, total))
            await asyncio.wait([flushing], timeout=0.25)
        flushing.result()
        progress.done(_line(logger, total))
    finally:
        await logger.aclose()
    stats = logger.stats
    failed_by_code = Counter(f.code for f in logger.failures)
    dead = await anyio.to_thread.run_sync(_count_dead, path)
    out.write(f"delivered: {stats.delivered}\n")
    out.write(f"failed:    {stats.failed}" + (f"  {dict(failed_by_code)}" if failed_by_code else "") + "\n")
    out.write(
        f"pending:   {stats.pending}" + ("  (run `metricsbuf sync` again)" if stats.pending else "") + "\n"
    )
    if stats.throttled:
        out.write(
            f"throttled: {stats.throttled} of {stats.requests} requests (the account's limit; "
            "see --adaptive-rate)\n"
        )
    if dead:
        # Failed points are kept as dead letters, with those of earlier runs: the spool is not empty.
        out.write(f"dead letters: {dead} in the spool (`metricsbuf sync --retry-failed` sends them again)\n")
    return EXIT_OK if stats.failed == 0 and stats.pending == 0 and dead == 0 else EXIT_INCOMPLETE


def _count_dead(path: str) -> int:
    spool = Spool.open(path, read_only=True)
    try:
        return spool.count_dead()
    finally:
        spool.close()


def _line(logger: MetricsLogger, total: int) -> str:
    stats = logger.stats
    settled = total - stats.pending
    return f"{bar(settled, total)} {settled}/{total}  delivered {stats.delivered}  failed {stats.failed}"


def inspect(path: str, *, out: TextIO | None = None) -> int:
    """Prints what the spool at ``path`` holds, per trial component and metric; sends nothing."""
    out = out or sys.stdout
    spool = Spool.open(path, read_only=True)
    try:
        rows = spool.summary()
        dead = spool.dead_letters(limit=10)
        used = spool.used_bytes()
    finally:
        spool.close()
    file_size = sum(f.stat().st_size for f in Path(path).glob("spool.sqlite3*"))
    out.write(f"spool {_printable(path)}: {used} bytes in use, {file_size} bytes on disk\n")
    if not rows:
        out.write("empty: nothing pending, no dead letters\n")
        return EXIT_OK
    names = [_printable(r.name) for r in rows]
    width = max(len("metric"), *(len(n) for n in names))
    current = None
    for row, name in zip(rows, names, strict=True):
        if row.trial_component != current:
            current = row.trial_component
            out.write(f"trial component {_printable(current)}\n")
            out.write(f"  {'metric':<{width}}  {'pending':>8}  {'dead':>6}  dead letters by code\n")
        codes = ", ".join(f"{_printable(code)}: {count}" for code, count in sorted(row.dead_codes.items()))
        out.write(f"  {name:<{width}}  {row.pending:>8}  {row.dead:>6}  {codes}\n")
    pending = sum(r.pending for r in rows)
    dead_total = sum(r.dead for r in rows)
    out.write(f"total: {pending} pending, {dead_total} dead letter(s)\n")
    for trial_component, name, step, code, message, attempts in dead:
        out.write(
            f"  dead: {_printable(trial_component)}/{_printable(name)} step={_printable(step)} "
            f"{_printable(code)} after {_printable(attempts)} attempt(s): {_printable(message)}\n"
        )
    return EXIT_OK
