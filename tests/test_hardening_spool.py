"""Issue 9, the spool and the command line: exact numbers, the lock, malformed rows, safe output."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import math
import os
import random
import signal
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from conftest import FakeClient, errors

from metricsbuf import SPOOL_CORRUPT, FailedMetric, MetricsLogger, SpoolError, _cli, _sender, _spool
from metricsbuf.__main__ import main as cli
from metricsbuf._spool import Spool
from metricsbuf.testing import FakeMetricsService


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def db(spool_dir: Path) -> contextlib.closing[sqlite3.Connection]:
    # closing(): a sqlite3 connection's own context manager commits but does not close.
    return contextlib.closing(sqlite3.connect(spool_dir / "spool.sqlite3", isolation_level=None))


@contextlib.contextmanager
def service_env(svc: FakeMetricsService) -> Any:
    with pytest.MonkeyPatch.context() as env:
        for key, value in svc.environ().items():
            env.setenv(key, value)
        yield


# ---------------------------------------------------------------------------------------------
# Numbers through the spool: bit for bit


def hard_doubles(count: int, seed: int) -> list[float]:
    """Values that a 15- or 17-significant-digit text path gets wrong, then random doubles."""
    values = [
        0.30000000000000004,
        2.0**60,
        -0.0,
        0.0,
        0.1,
        1 / 3,
        5e-324,  # the smallest subnormal
        1e-310,
        2.225073858507201e-308,  # the largest subnormal
        2.2250738585072014e-308,  # the smallest normal
        1.7976931348623157e308,  # the largest double
        -1.7976931348623157e308,
        9007199254740993.0,  # 2**53 + 1 rounds to 2**53: fine, it is a double all the same
        2.0**53 + 2,
        # SQLite 3.40's printf('%!.17g') gets the 17th digit of these wrong:
        -1.1545580616824966e232,
        -1.6612439357625544e308,
        2.7335487904581383e306,
        1.3567547162550915e303,
    ]
    rng = random.Random(seed)
    while len(values) < count:
        x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(x):
            values.append(x)
    return values


async def test_values_and_timestamps_survive_offline_then_sync_bit_for_bit(tmp_path: Path) -> None:
    """What the service receives from `offline` + `metricsbuf sync` equals what it receives
    from a logger without a spool, bit for bit."""
    values = hard_doubles(300, seed=9)
    rng = random.Random(10)
    now = time.time()
    whole = float(int(now) - 600)
    timestamps = [whole + 0.123456, whole + 0.5, whole + 0.000001, whole + 0.999999]
    timestamps += [now - rng.random() * 86_400 for _ in range(len(values) - len(timestamps))]
    points = list(zip(values, timestamps, strict=True))

    async with MetricsLogger("offline-run", spool_dir=tmp_path, offline=True) as metrics:
        for step, (value, ts) in enumerate(points):
            await metrics.log("m", value, step=step, timestamp=ts)
    async with FakeMetricsService() as svc:
        with service_env(svc):
            assert await asyncio.to_thread(cli, ["sync", str(tmp_path)]) == 0
        via_spool = {p.step: p for p in svc.points}

    async with FakeMetricsService() as svc:
        config = AioConfig(retries={"total_max_attempts": 1})
        kwargs = svc.client_kwargs()
        async with get_session().create_client("sagemaker-metrics", config=config, **kwargs) as c:
            async with MetricsLogger("direct-run", client=c) as metrics:
                for step, (value, ts) in enumerate(points):
                    await metrics.log("m", value, step=step, timestamp=ts)
        direct = {p.step: p for p in svc.points}

    assert len(via_spool) == len(direct) == len(points)
    wrong = [
        (step, value, via_spool[step].value, direct[step].timestamp, via_spool[step].timestamp)
        for step, (value, _) in enumerate(points)
        if bits(via_spool[step].value) != bits(value)
        or bits(via_spool[step].timestamp) != bits(direct[step].timestamp)
    ]
    assert wrong == []
    assert math.copysign(1.0, via_spool[2].value) == -1.0  # -0.0 kept its sign
    assert via_spool[0].time.microsecond == 123456


@pytest.mark.parametrize("exact_text", [True, False], ids=["json-documents", "row-by-row-fallback"])
def test_spool_rows_read_back_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exact_text: bool
) -> None:
    """The spool is the unit here: value, timestamp and logged_at come back as written, after a
    reopen; also through the row-by-row path used on a SQLite build that fails the check."""
    assert _spool._doubles_survive_text()  # this build takes the fast path
    monkeypatch.setattr(_spool, "_doubles_survive_text", lambda: exact_text)
    values = hard_doubles(3000, seed=11)
    rng = random.Random(12)
    now = time.time()
    rows = [
        (f"m{i % 7}", value, i, now - rng.random() * 1e6, now - rng.random() * 1e-3)
        for i, value in enumerate(values)
    ]
    spool = Spool.open(tmp_path)
    try:
        last = spool.commit(stream_id=spool.stream_id("run-1"), new_points=rows)
        assert last == len(rows)
    finally:
        spool.close()
    spool = Spool.open(tmp_path)
    try:
        loaded = spool.load(after_id=0, limit=10_000)
    finally:
        spool.close()
    assert [(r.name, r.step) for r in loaded] == [(r[0], r[2]) for r in rows]
    for row, original in zip(loaded, rows, strict=True):
        assert (bits(row.value), bits(row.timestamp), bits(row.logged_at)) == tuple(
            bits(x) for x in (original[1], original[3], original[4])
        ), (row, original)


@contextlib.contextmanager
def longest_gil_wait() -> Iterator[list[float]]:
    """Runs a ticker thread that sleeps 1 ms at a time during the block; on exit the list it
    yields holds the longest time the ticker waited past its sleep (for the GIL, mostly)."""
    delays: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            started = time.perf_counter()
            time.sleep(0.001)
            delays.append(time.perf_counter() - started - 0.001)

    longest: list[float] = []
    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.01)
    try:
        yield longest
    finally:
        done.set()
        ticker.join()
        longest.append(max(delays))


def test_a_large_commit_leaves_the_gil_to_other_threads(tmp_path: Path) -> None:
    """A commit of many points (an offline logger's, or after a burst) must not hold the GIL for
    the whole write: the training thread waiting for it meanwhile would stall for as long (the
    encoding of 50,000 rows takes about 0.2 s on a slow machine). A ticker thread that sleeps
    1 ms at a time must get the GIL back within a few switch intervals throughout."""
    now = time.time()
    rows = [(f"m{i % 7}", 1.0 / (i + 1), i, now, now) for i in range(50_000)]
    spool = Spool.open(tmp_path)
    try:
        stream = spool.stream_id("run-1")
        with longest_gil_wait() as longest:
            last = spool.commit(stream_id=stream, new_points=rows)
    finally:
        spool.close()
    assert last == len(rows)
    # Generous: one chunk's encoding is about 1 ms; before the chunking the whole commit's
    # encoding held the GIL, a wait as long as most of the commit.
    assert longest[0] < 0.05, longest


def test_a_large_load_leaves_the_gil_to_other_threads(tmp_path: Path) -> None:
    """Reading a backlog back (a logger restarting on a full spool, `metricsbuf sync`) must not
    hold the GIL for the whole read either. It was one JSON document parsed in one C call: 5,000
    rows, what a logger loads at once, about 8 ms here, longer than the 5 ms a training thread
    may wait; this test's 100,000 rows, 0.11 s. The same ticker as above, beside that load. The
    garbage collector is off meanwhile: a full collection, which the load's 200,000 new objects
    trigger, holds the GIL for as long as the process's heap takes to walk (45 ms here), and that
    is the process's pause, not the spool's."""
    now = time.time()
    rows = [(f"m{i % 7}", 1.0 / (i + 1), i, now, now) for i in range(100_000)]
    spool = Spool.open(tmp_path)
    try:
        spool.commit(stream_id=spool.stream_id("run-1"), new_points=rows)
        gc.disable()
        with longest_gil_wait() as longest:
            loaded = spool.load(after_id=0, limit=len(rows))
            partial = spool.load(after_id=1000, limit=700)  # a limit and a start inside a chunk
    finally:
        gc.enable()
        spool.close()
    assert [(r.id, r.name, r.value, r.step) for r in loaded] == [
        (i + 1, name, value, step) for i, (name, value, step, _, _) in enumerate(rows)
    ]
    assert [r.id for r in partial] == list(range(1001, 1701))
    # Generous: one chunk's parse is well under 1 ms; the check of the rows is Python code, which
    # gives the GIL up every switch interval (5 ms).
    assert longest[0] < 0.05, longest


async def test_a_negative_zero_marks_the_spool_version_2_and_version_1_stays_readable(tmp_path: Path) -> None:
    plain, signed = tmp_path / "plain", tmp_path / "signed"
    for folder, value in ((plain, 0.0), (signed, -0.0)):
        async with MetricsLogger("run-1", spool_dir=folder, offline=True) as metrics:
            await metrics.log("m", 1.5, step=0)
            await metrics.log("m", value, step=1)
    with db(plain) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # an older metricsbuf still reads it
    with db(signed) as conn:
        # an older metricsbuf refuses it (it would choke on the blob) instead of misreading it
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        stored = conn.execute("SELECT typeof(value) FROM points ORDER BY id").fetchall()
        assert stored == [("real",), ("blob",)]
    for folder in (plain, signed):
        spool = Spool.open(folder)
        try:
            loaded = [(r.step, r.value) for r in spool.load(after_id=0, limit=10)]
        finally:
            spool.close()
        assert [(step, bits(value)) for step, value in loaded] == [
            (0, bits(1.5)),
            (1, bits(0.0 if folder == plain else -0.0)),
        ]
    with db(signed) as conn:
        conn.execute("PRAGMA user_version = 3")
    with pytest.raises(SpoolError, match="schema version 3, this metricsbuf reads versions 1 and 2"):
        Spool.open(signed)


# ---------------------------------------------------------------------------------------------
# The lock file and the store never follow a link, never truncate a file metricsbuf did not make


async def make_spool(folder: Path, points: int = 3) -> None:
    async with MetricsLogger("run-1", spool_dir=folder, offline=True) as metrics:
        for step in range(points):
            await metrics.log("loss", float(step), step=step)


def sync_exit_code(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli(["sync", str(folder)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "hard-link", "foreign-content", "fifo"])
async def test_the_lock_file_never_follows_links_nor_truncates_a_foreign_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    folder = tmp_path / "spool"
    await make_spool(folder)
    lock = folder / "spool.lock"
    lock.unlink()
    victim = tmp_path / "precious.txt"
    victim.write_text("precious data, not a pid\n")
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling-symlink":
        lock.symlink_to(tmp_path / "created-elsewhere")
    elif kind == "hard-link":
        os.link(victim, lock)
    elif kind == "foreign-content":
        lock.write_text(victim.read_text())
    else:
        os.mkfifo(lock)
    words = {
        "symlink": "symbolic link",
        "dangling-symlink": "symbolic link",
        "hard-link": "2 hard links",
        "foreign-content": "does not look like a metricsbuf lock file",
        "fifo": "not a regular file",
    }[kind]

    async with FakeMetricsService() as svc:
        with service_env(svc):
            code, output = await asyncio.to_thread(sync_exit_code, folder, capsys)
        assert (code, len(svc.points)) == (2, 0), output
    assert words in output and str(lock) in output, output
    with pytest.raises(SpoolError, match=words):
        await MetricsLogger("run-2", spool_dir=folder, offline=True).start()
    assert victim.read_text() == "precious data, not a pid\n"
    assert not (tmp_path / "created-elsewhere").exists()
    if kind == "foreign-content":
        assert lock.read_text() == "precious data, not a pid\n"


async def test_a_lock_file_left_by_an_earlier_run_is_reused(tmp_path: Path) -> None:
    await make_spool(tmp_path)  # leaves spool.lock holding the pid of this process
    (tmp_path / "spool.lock").write_text("")  # or empty, as after a crash at the wrong instant
    async with MetricsLogger("run-2", spool_dir=tmp_path, offline=True):
        assert (tmp_path / "spool.lock").read_text() == str(os.getpid())


@pytest.mark.parametrize("target", ["dangling", "another-spool"])
async def test_a_symlinked_store_is_refused(tmp_path: Path, target: str) -> None:
    folder, elsewhere = tmp_path / "spool", tmp_path / "elsewhere"
    folder.mkdir()
    await make_spool(elsewhere)
    real = elsewhere / "spool.sqlite3" if target == "another-spool" else tmp_path / "nothing.sqlite3"
    (folder / "spool.sqlite3").symlink_to(real)
    with pytest.raises(SpoolError, match="symbolic link"):
        await MetricsLogger("run-2", spool_dir=folder, offline=True).start()
    with pytest.raises(SpoolError, match="symbolic link"):
        Spool.open(folder, read_only=True)
    assert not (tmp_path / "nothing.sqlite3").exists()


# A process that holds a spool (through a logger) forks a child that lives on, then closes its
# logger and exits. The child only inherited the lock's descriptor: it must not keep the spool.
FORKING_PARENT = """
import asyncio, os, sys, time
from metricsbuf import MetricsLogger

async def main(folder):
    metrics = MetricsLogger("fork-run", spool_dir=folder, offline=True)
    await metrics.start()
    await metrics.log("loss", 1.0, step=0)
    await metrics.flush()
    child = os.fork()
    if child == 0:  # the child: a data-loader worker, say, that outlives the parent
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # so that the test's pipe ends with the parent
        os.dup2(devnull, 2)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    await metrics.aclose()

asyncio.run(main(sys.argv[1]))
"""


async def test_a_forked_child_does_not_keep_the_spool_locked(tmp_path: Path) -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FORKING_PARENT, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(parent.communicate(), 60)
    assert parent.returncode == 0
    child = int(stdout)
    try:
        os.kill(child, 0)  # still alive, holding its inherited descriptors
        async with MetricsLogger("next-run", spool_dir=tmp_path, offline=True) as metrics:
            assert metrics.stats.recovered == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


# The parent keeps its lock; the child cannot use the spool it inherited, and says so clearly.
CHILD_USES_SPOOL = """
import os, sys
from metricsbuf import SpoolError, SpoolLockedError
from metricsbuf._spool import Spool

spool = Spool.open(sys.argv[1])
child = os.fork()
if child == 0:
    try:
        spool.count_pending()
    except SpoolError as exc:
        print("child:", exc, flush=True)
        spool.close()  # allowed, and leaves the parent's lock alone
        os._exit(0)
    os._exit(1)
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0
try:
    Spool.open(sys.argv[1])
except SpoolLockedError:
    print("parent: still locked", flush=True)
print("parent: pending", spool.count_pending(), flush=True)
spool.close()
"""


async def test_a_forked_child_cannot_use_the_spool_and_the_parent_keeps_its_lock(tmp_path: Path) -> None:
    await make_spool(tmp_path, points=2)
    run = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD_USES_SPOOL,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(run.communicate(), 60)
    lines = stdout.decode().splitlines()
    assert run.returncode == 0, (lines, stderr.decode())
    assert len(lines) == 3 and lines[0].startswith("child:"), lines
    assert "fork" in lines[0] and str(tmp_path) in lines[0]
    assert lines[1:] == ["parent: still locked", "parent: pending 2"]


# ---------------------------------------------------------------------------------------------
# A malformed row becomes a dead letter (SPOOL_CORRUPT); the rest of the spool is delivered


def relax_schema(conn: sqlite3.Connection) -> None:
    """The points table without its NOT NULL rules nor column types (so no conversion to TEXT or
    REAL on the way in), as a hand-made or damaged spool may have it."""
    conn.executescript(
        """
        BEGIN;
        ALTER TABLE points RENAME TO old_points;
        CREATE TABLE points (
            id INTEGER PRIMARY KEY AUTOINCREMENT, stream, name, value, step, ts, logged_at,
            state INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0, code TEXT, message TEXT
        );
        INSERT INTO points SELECT * FROM old_points;
        DROP TABLE old_points;
        COMMIT;
        """
    )


# (id, what row 2 gets, words the dead letter's message must hold)
CORRUPTIONS = [
    ("ts-text", "ts = 'x'", "timestamp"),
    ("ts-blob", "ts = X'FF00'", "timestamp"),
    ("ts-huge", "ts = 1e300", "timestamp"),
    ("ts-infinite", "ts = 1e999", "timestamp"),
    ("unknown-stream", "stream = 99", "stream 99"),
    ("stream-text", "stream = 'x'", "stream"),
    ("name-integer", "name = 123", "name"),
    ("name-blob", "name = X'6C6F7373'", "name"),
    ("name-bad-utf8", "name = CAST(X'6CFF73' AS TEXT)", "UTF-8"),
    ("name-nul", "name = CAST(X'6C0073' AS TEXT)", "NUL"),
    ("name-surrogate", "name = CAST(X'6CEDA08073' AS TEXT)", "UTF-8"),
    ("name-empty", "name = ''", "1-255"),
    ("name-line-break", "name = 'a' || char(10) || 'b'", "line breaks"),
    ("name-too-long", "name = hex(zeroblob(150))", "1-255"),
    ("value-text", "value = 'abc'", "value"),
    ("value-blob", "value = X'00FF'", "value"),
    ("value-infinite", "value = -1e999", "value"),
    ("step-too-big", "step = 4294967296", "step"),
    ("step-negative", "step = -1", "step"),
    ("step-real", "step = 1.5", "step"),
    ("step-text", "step = 'x'", "step"),
    ("logged-at-text", "logged_at = 'x'", "logged_at"),
    ("name-null", "name = NULL", "name"),
    ("value-null", "value = NULL", "value"),
    ("ts-null", "ts = NULL", "timestamp"),
    ("logged-at-null", "logged_at = NULL", "logged_at"),
    ("stream-null", "stream = NULL", "stream"),
]


def corrupt_row_2(folder: Path, change: str) -> None:
    with db(folder) as conn:
        if "NULL" in change or "name = 123" in change:  # what the real schema would refuse or convert
            relax_schema(conn)
        conn.execute(f"UPDATE points SET {change} WHERE id = 2")


def dead_letters(folder: Path) -> list[tuple[Any, ...]]:
    with db(folder) as conn:
        return conn.execute("SELECT id, state, code, message FROM points ORDER BY id").fetchall()


@pytest.mark.parametrize(("change", "words"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
async def test_sync_delivers_the_good_rows_and_keeps_a_malformed_one_as_a_dead_letter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, words: str
) -> None:
    await make_spool(tmp_path, points=3)  # row ids 1, 2, 3: steps 0, 1, 2
    corrupt_row_2(tmp_path, change)
    assert _cli.inspect(str(tmp_path), out=io.StringIO()) == 0  # inspect copes before too

    async with FakeMetricsService() as svc:
        with service_env(svc):
            code, output = await asyncio.to_thread(sync_exit_code, tmp_path, capsys)
        assert sorted(p.step for p in svc.points) == [0, 2], output
    assert code == 1 and "delivered: 2" in output and "SPOOL_CORRUPT" in output, output
    [(row_id, state, row_code, message)] = dead_letters(tmp_path)
    assert (row_id, state, row_code) == (2, 1, SPOOL_CORRUPT)
    assert f"row 2 of the spool {tmp_path / 'spool.sqlite3'}" in message and words in message, message

    shown = io.StringIO()
    assert _cli.inspect(str(tmp_path), out=shown) == 0
    assert "1 dead letter(s)" in shown.getvalue() and "SPOOL_CORRUPT" in shown.getvalue()


async def test_a_logger_reports_a_malformed_row_as_failed_and_goes_on(tmp_path: Path) -> None:
    await make_spool(tmp_path, points=4)
    with db(tmp_path) as conn:
        conn.execute("UPDATE points SET ts = 'x' WHERE id = 2")
        conn.execute("UPDATE points SET name = CAST(X'6CFF73' AS TEXT), value = 'v' WHERE id = 3")
    reported: list[FailedMetric] = []
    client = FakeClient()
    async with MetricsLogger(
        "run-2", client=client, spool_dir=tmp_path, on_failure=reported.extend
    ) as metrics:
        assert metrics.stats.recovered == 4
        await metrics.flush()
        await metrics.log("after", 1.0, step=9)
    stats = metrics.stats
    assert (stats.logged, stats.delivered, stats.failed, stats.pending) == (5, 3, 2, 0)
    assert sorted((p["MetricName"], p["Step"]) for p in client.stored) == [
        ("after", 9),
        ("loss", 0),
        ("loss", 3),
    ]
    assert stats.requests == len(client.requests)
    assert reported == metrics.failures and [f.code for f in reported] == [SPOOL_CORRUPT] * 2
    bad_time, bad_name = reported
    # Best effort: what could be read is kept; the rest gets a placeholder.
    assert (bad_time.name, bad_time.value, bad_time.step) == ("loss", 1.0, 1)
    assert bad_time.timestamp == datetime.fromtimestamp(0, tz=timezone.utc)
    assert bad_name.name == "l\\xffs" and math.isnan(bad_name.value) and bad_name.step == 2
    assert "row 2" in bad_time.message and "row 3" in bad_name.message
    assert [r[:3] for r in dead_letters(tmp_path)] == [(2, 1, SPOOL_CORRUPT), (3, 1, SPOOL_CORRUPT)]


async def test_rows_of_a_stream_with_a_bad_trial_component_become_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for run in ("run-a", "run-b", "run-c"):
        async with MetricsLogger(run, spool_dir=tmp_path, offline=True) as metrics:
            await metrics.log_many({"x": 1.0, "y": 2.0}, step=0)
    with db(tmp_path) as conn:
        conn.execute("UPDATE streams SET trial_component = 'Not Valid' WHERE trial_component = 'run-b'")
        conn.execute(
            "UPDATE streams SET trial_component = CAST(X'FF' AS TEXT) WHERE trial_component = 'run-c'"
        )
    async with FakeMetricsService() as svc:
        with service_env(svc):
            code, output = await asyncio.to_thread(sync_exit_code, tmp_path, capsys)
        assert sorted((p.trial_component, p.name) for p in svc.points) == [("run-a", "x"), ("run-a", "y")]
    assert code == 1 and "SPOOL_CORRUPT" in output
    dead = dead_letters(tmp_path)
    assert [(r[0], r[2]) for r in dead] == [
        (3, SPOOL_CORRUPT),
        (4, SPOOL_CORRUPT),
        (5, SPOOL_CORRUPT),
        (6, SPOOL_CORRUPT),
    ]
    assert all("trial component" in r[3] for r in dead), dead


async def test_a_garbled_autoincrement_counter_does_not_stop_the_spool(tmp_path: Path) -> None:
    await make_spool(tmp_path, points=3)
    with db(tmp_path) as conn:
        conn.execute("UPDATE sqlite_sequence SET seq = 'x' WHERE name = 'points'")
    client = FakeClient()
    async with MetricsLogger("run-2", client=client, spool_dir=tmp_path) as metrics:
        await metrics.log("after", 1.0, step=0)
    assert (metrics.stats.delivered, metrics.stats.failed) == (4, 0)


async def test_requests_counts_only_requests_actually_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenDatetime(datetime):
        @classmethod
        def fromtimestamp(cls, t: float, tz: Any = None) -> Any:  # type: ignore[override]
            raise OverflowError("cannot build the request")

    client = FakeClient()
    async with MetricsLogger("run-1", client=client) as metrics:
        monkeypatch.setattr(_sender, "datetime", BrokenDatetime)
        await metrics.log("loss", 1.0, step=0)
        await metrics.flush()
        monkeypatch.undo()
        await metrics.log("loss", 2.0, step=1)
    assert client.requests == [[client.stored[0]]]
    assert metrics.stats.requests == 1 and metrics.stats.failed == 1
    assert metrics.failures[0].code == "OverflowError"


# ---------------------------------------------------------------------------------------------
# The command line: safe output, exit codes


def unsafe_characters(text: str) -> list[str]:
    """Characters a terminal may act on: controls (ESC, BEL, C1 such as CSI), format characters
    (bidi overrides), separators other than space; the newlines between lines are fine."""
    return [c for c in text.replace("\n", "") if not c.isprintable()]


async def test_inspect_escapes_control_characters(tmp_path: Path) -> None:
    names = ["retitle\x1b]0;pwned\x07", "csi\x9b31m", "bidi\u202eeman", "tab\tname", "del\x7f"]

    def reject_first(number: int, data: list[dict[str, Any]]) -> dict[str, Any] | None:
        return errors((0, "EVIL\x1b[2J")) if number == 0 else None

    async with MetricsLogger("run-1", client=FakeClient(reject_first), spool_dir=tmp_path) as metrics:
        await metrics.log("dead\x1b[31m", 1.0, step=0)  # rejected by the service with an evil code
    async with MetricsLogger("run-2", spool_dir=tmp_path, offline=True) as metrics:
        for step, name in enumerate(names):
            await metrics.log(name, 1.0, step=step)
    with db(tmp_path) as conn:  # a hand-edited spool: a trial component the library would refuse
        conn.execute("UPDATE streams SET trial_component = 'run-2' || char(27) || '[8m' WHERE id = 2")

    shown = io.StringIO()
    assert _cli.inspect(str(tmp_path), out=shown) == 0
    output = shown.getvalue()
    assert unsafe_characters(output) == [], output
    for escaped in ("retitle\\x1b]0;pwned\\x07", "csi\\x9b31m", "bidi\\u202eeman", "tab\\tname", "del\\x7f"):
        assert escaped in output, output
    assert "run-2\\x1b[8m" in output and "dead\\x1b[31m" in output
    assert "EVIL\\x1b[2J: 1" in output  # the code, in the table and in the dead letter's line
    assert "dead: run-1/dead\\x1b[31m step=0 EVIL\\x1b[2J after 1 attempt(s)" in output


async def test_sync_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 2: could not run (no spool here)
    code, output = await asyncio.to_thread(sync_exit_code, tmp_path / "nothing", capsys)
    assert code == 2 and "no metricsbuf spool" in output

    # 1: dead letters are left from an earlier run, though nothing was pending
    def reject_all(number: int, data: list[dict[str, Any]]) -> dict[str, Any]:
        return errors(*((i, "VALIDATION_ERROR") for i in range(len(data))))

    async with MetricsLogger("run-1", client=FakeClient(reject_all), spool_dir=tmp_path) as metrics:
        await metrics.log("loss", 1.0, step=0)
    async with FakeMetricsService() as svc:
        with service_env(svc):
            code, output = await asyncio.to_thread(sync_exit_code, tmp_path, capsys)
            assert code == 1, output
            assert "pending:   0" in output and "dead letters: 1 in the spool" in output, output
            # 0: everything delivered, nothing left in the spool
            code, output = await asyncio.to_thread(
                lambda: (cli(["sync", str(tmp_path), "--retry-failed"]), capsys.readouterr().out)
            )
            assert code == 0 and "dead letters" not in output.split("queued again")[1], output
            # 2 again: a malformed endpoint is a clear error, not a traceback (which would exit 1)
            code, output = await asyncio.to_thread(
                lambda: (cli(["sync", str(tmp_path), "--endpoint-url", "not a url"]), capsys.readouterr().err)
            )
            assert code == 2 and "metricsbuf: could not start sending: Invalid endpoint" in output, output
        assert [p.name for p in svc.points] == ["loss"]
