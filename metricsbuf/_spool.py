"""The on-disk spool: a write-ahead store of points, so that a crash or an outage loses nothing.

The store is SQLite (from the standard library) in WAL mode: a transaction that has
committed survives the process being killed (SIGKILL, OOM) at any instant, readers never
block the writer, and it needs no server. ``synchronous=NORMAL`` skips the fsync at each
commit, so a power loss (not a process crash) may lose the last transactions; that is the
usual trade-off for a WAL journal, and what the README promises.

One table holds every point that is not yet delivered: ``state`` 0 is pending, 1 is a dead
letter (failed for good, kept with its code and message). A delivered point's row is
deleted. Row ids grow monotonically (AUTOINCREMENT), so "id order" is "logged order", and
the logger reads its backlog with a cursor on the id.

Every method here blocks; the logger calls them in a worker thread, one at a time. An
exclusive lock file keeps a second process (or logger) from opening the same spool; the lock
and the checks on the folder's files are in _spool_lock.py, the reading back of rows (checked
field by field, so that a damaged row cannot raise) in _spool_rows.py. A forked child lets go
of the lock at once (an ``os.register_at_fork`` hook, below; why: _spool_lock.py) and leaves
the inherited SQLite connection alone (closing it could checkpoint the parent's WAL); any use
of the spool there raises SpoolError.

Rows go in and out as one JSON document per statement (``json_each`` / ``json_group_array``)
rather than one statement per row: Python's sqlite3 releases and re-takes the GIL around
every step, and with a busy event loop in the main thread each re-take can wait a whole
switch interval (5 ms), so per-row statements would starve the writer thread.

So doubles cross into and out of SQLite as text, and that text must be exact (values,
timestamps and logged_at come back bit for bit):

- Written: ``json.dumps`` writes the shortest text that round-trips (repr), and SQLite
  parses it.
- Read: SQLite's JSON prints a double with only 15 significant digits, so each double is
  printed with ``printf('%!.18g')`` instead: one digit more than a double needs, so that a
  conversion off in its last digit (SQLite before 3.43 computes in long double) still names
  the same double. 17 digits are not enough there: SQLite 3.40 gets the 17th wrong for some
  doubles above 1e230. (18 digits: exact for 1.4 million random doubles on SQLite 3.40 and
  3.54; 20 cost more and bought nothing.)
- -0.0: SQLite stores a REAL with an integer value as an integer, which has no sign, so -0.0
  would come back as 0.0. It is stored as the blob ``-0`` instead (an UPDATE in the same
  transaction, so the insert of every other value stays as it was). A spool that holds one is
  marked schema version 2, so that an older metricsbuf (which would choke on the blob)
  refuses it with a clear message; every other spool stays version 1.
- ``_doubles_survive_text()`` checks once per process that this SQLite build converts a set
  of hard doubles exactly both ways. If it does not, the spool binds doubles row by row
  instead: exact, slower.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import sqlite3
import struct
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._spool_lock import DB_FILENAME, check_store_files, take_lock

# Re-exported: metricsbuf and the spool's users import them from here.
from ._spool_lock import SpoolError as SpoolError
from ._spool_lock import SpoolLockedError as SpoolLockedError
from ._spool_rows import (
    LOAD_POINTS,
    LOAD_POINTS_BY_ROW,
    SHOWN_TRIAL_COMPONENT,
    SpoolRow,
    SpoolSummaryRow,
    check_rows,
    hex_or_null,
    read_trial_component,
    shown,
)

APPLICATION_ID = 0x4D425546  # "MBUF": marks a SQLite file as a metricsbuf spool
SCHEMA_VERSION = 1  # what a new spool is
NEGATIVE_ZERO_VERSION = 2  # a spool holding a -0.0 (as the blob '-0'); otherwise the same as 1
_READABLE_VERSIONS = (SCHEMA_VERSION, NEGATIVE_ZERO_VERSION)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    trial_component TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream INTEGER NOT NULL REFERENCES streams(id),
    name TEXT NOT NULL,
    value REAL NOT NULL,
    step INTEGER,
    ts REAL NOT NULL,            -- the point's timestamp, epoch seconds
    logged_at REAL NOT NULL,     -- when it was logged, epoch seconds
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    code TEXT,
    message TEXT
);
CREATE INDEX IF NOT EXISTS points_dead ON points(state) WHERE state != 0;
"""

_INSERT_POINTS = """
INSERT INTO points(stream, name, value, step, ts, logged_at)
SELECT ?1, json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]')
FROM json_each(?2)
"""
# Rows per _INSERT_POINTS document. json.dumps holds the GIL for a whole document (about 4 us a
# row on a slow machine: 20,000 rows took 95 ms); the statement that parses it runs without the
# GIL. So a commit of many points leaves the GIL every ~1 ms to the training thread, instead of
# making it wait out the whole encoding (benchmarks/sync.py's GIL waits, with a spool).
_INSERT_CHUNK = 256
# Rows per LOAD_POINTS document (not _spooling._LOAD_CHUNK, the rows a logger loads at once),
# for the same reason the other way: json.loads parses a whole document in one C call (50,000
# rows: 82 ms here), while SQLite builds the next one GIL-free.
_READ_CHUNK = 512
_INSERT_POINT = "INSERT INTO points(stream, name, value, step, ts, logged_at) VALUES (?, ?, ?, ?, ?, ?)"
_NEGATIVE_ZERO = b"-0"
_MARK_NEGATIVE_ZERO = "UPDATE points SET value = ? WHERE id IN (SELECT value FROM json_each(?))"

_DELETE_POINTS = "DELETE FROM points WHERE id IN (SELECT value FROM json_each(?))"

_USED_BYTES = """
SELECT (page_count - freelist_count) * page_size
FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()
"""


class Spool:
    """An open, locked spool. Not thread-safe: use it from one thread at a time."""

    def __init__(self, directory: Path, connection: sqlite3.Connection, lock_fd: int | None) -> None:
        self.directory = directory
        self.path = directory / DB_FILENAME
        self._db = connection
        self._lock_fd = lock_fd
        self._owner_pid = os.getpid()
        self._version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        self._exact_text = _doubles_survive_text()
        self._streams: dict[str, int] = {}
        self._stream_names: dict[int, str] = {}
        self._bad_streams: dict[int, str] = {}  # stream id -> what is wrong with its trial component
        for stream_id, kind, raw in self._db.execute(
            "SELECT id, typeof(trial_component), hex(trial_component) FROM streams"
        ):
            trial_component, problem = read_trial_component(kind, raw)
            if problem is None:
                self._streams[trial_component] = stream_id
                self._stream_names[stream_id] = trial_component
            else:
                self._bad_streams[stream_id] = (
                    f"the trial component of stream {stream_id} is not valid: {problem}"
                )
        _open_spools.add(self)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], *, create: bool = True, read_only: bool = False
    ) -> Spool:
        """Opens (and with ``create``, makes) the spool in ``directory``.

        Raises:
            SpoolLockedError: another process holds the spool.
            SpoolError: the folder or file is not a usable spool (corrupted, truncated, not a
                spool, unwritable); nothing is deleted.
        """
        folder = Path(directory)
        db_path = folder / DB_FILENAME
        check_store_files(folder)
        if read_only or not create:
            if not db_path.exists():
                raise SpoolError(f"no metricsbuf spool at {folder} (expected {db_path})")
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SpoolError(f"cannot create the spool folder {folder}: {exc}") from exc
        lock_fd = None if read_only else take_lock(folder)
        try:
            connection = _connect(db_path, read_only=read_only)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        try:
            return cls(folder, connection, lock_fd)
        except BaseException as exc:  # release what was taken
            connection.close()
            if lock_fd is not None:
                os.close(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise SpoolError(f"cannot read the spool {db_path}: {exc}; nothing was deleted") from exc
            raise

    def close(self) -> None:
        _open_spools.discard(self)
        if os.getpid() != self._owner_pid:
            return  # a forked child: the fork hook already let go of the lock; see _forget_after_fork
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _forget_after_fork(self) -> None:
        """In a forked child: closes this copy of the lock descriptor; the parent keeps its lock."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # not flock(LOCK_UN): that would release the parent's lock
            self._lock_fd = None
        # Never closed here: SQLite could checkpoint or delete the parent's WAL on close.
        _inherited_connections.append(self._db)

    # -- the logger's operations ----------------------------------------------------------------

    def stream_id(self, trial_component: str) -> int:
        stream_id = self._streams.get(trial_component)
        if stream_id is None:
            with self._errors("write"):
                cursor = self._db.execute(
                    "INSERT INTO streams(trial_component) VALUES (?)", (trial_component,)
                )
                self._db.commit()
            stream_id = int(cursor.lastrowid or 0)
            self._streams[trial_component] = stream_id
            self._stream_names[stream_id] = trial_component
        return stream_id

    def commit(
        self,
        *,
        stream_id: int,
        new_points: Sequence[tuple[Any, ...]],
        delivered_ids: Iterable[int] = (),
        dead: Iterable[tuple[str, str, int, int]] = (),
    ) -> int:
        """One transaction: appends ``new_points``, deletes delivered rows, marks dead letters.

        ``new_points`` are the logger's tuples ``(name, value, step, timestamp, logged_at, ...)``,
        times in epoch seconds. ``dead`` holds
        ``(code, message, attempts, id)``. Returns the id of the last new point (the new points
        have consecutive ids ending there), or 0 if there were none.
        """
        last_id = 0
        marked_negative_zero = False
        with self._errors("write"):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if new_points:
                    rows = [point[:5] for point in new_points]
                    if self._exact_text:
                        # json.dumps keeps floats exact (repr) and a step of None as null. One
                        # document per _INSERT_CHUNK rows: json.dumps holds the GIL throughout.
                        for start in range(0, len(rows), _INSERT_CHUNK):
                            chunk = rows[start : start + _INSERT_CHUNK]
                            db.execute(_INSERT_POINTS, (stream_id, json.dumps(chunk)))
                    else:
                        db.executemany(_INSERT_POINT, [(stream_id, *row) for row in rows])
                    last_id = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
                    marked_negative_zero = self._keep_negative_zeros(rows, first_id=last_id - len(rows) + 1)
                delivered = list(delivered_ids)
                if delivered:
                    db.execute(_DELETE_POINTS, (json.dumps(delivered),))
                db.executemany(
                    "UPDATE points SET state = 1, code = ?, message = ?, attempts = ? WHERE id = ?", dead
                )
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        if marked_negative_zero:
            self._version = NEGATIVE_ZERO_VERSION
        return last_id

    def _keep_negative_zeros(self, rows: list[tuple[Any, ...]], first_id: int) -> bool:
        """Stores each -0.0 value among the rows just written (ids from ``first_id``) as the blob '-0'.

        Returns whether there was one (the transaction then also marks the spool version 2).
        """
        ids = [first_id + i for i, row in enumerate(rows) if row[1] == 0.0 and math.copysign(1.0, row[1]) < 0]
        if not ids:
            return False
        if self._version < NEGATIVE_ZERO_VERSION:
            self._db.execute(f"PRAGMA user_version = {NEGATIVE_ZERO_VERSION}")  # part of the transaction
        self._db.execute(_MARK_NEGATIVE_ZERO, (_NEGATIVE_ZERO, json.dumps(ids)))
        return True

    def load(self, *, after_id: int, limit: int) -> list[SpoolRow]:
        """Pending points with an id above ``after_id``, oldest first; malformed ones with a ``problem``."""
        with self._errors("read"):
            if self._exact_text:
                rows: list[list[Any]] = []
                while len(rows) < limit:
                    chunk = min(_READ_CHUNK, limit - len(rows))
                    document = self._db.execute(LOAD_POINTS, (after_id, chunk)).fetchone()[0]
                    loaded = json.loads(document) if document else []
                    rows += loaded
                    if len(loaded) < chunk:
                        break
                    after_id = loaded[-1][0]  # each row starts with its id
            else:
                rows = [
                    [json.loads(f) if type(f) is str and f[:1] == "[" else f for f in row]  # [type, hex]
                    for row in self._db.execute(LOAD_POINTS_BY_ROW, (after_id, limit))
                ]
        return check_rows(
            rows, stream_names=self._stream_names, bad_streams=self._bad_streams, spool_path=self.path
        )

    def next_row_id(self) -> int:
        """The id the next appended point will get (AUTOINCREMENT never reuses one)."""
        # As SQLite does: above both the counter (read as an integer, whatever it holds) and every id.
        with self._errors("read"):
            row = self._db.execute(
                "SELECT max(coalesce((SELECT max(CAST(seq AS INTEGER)) FROM sqlite_sequence "
                "WHERE name = 'points'), 0), coalesce((SELECT max(id) FROM points), 0))"
            ).fetchone()
        return int(row[0]) + 1

    def count_pending(self) -> int:
        with self._errors("read"):
            return int(self._db.execute("SELECT count(*) FROM points WHERE state = 0").fetchone()[0])

    def count_dead(self) -> int:
        with self._errors("read"):
            return int(self._db.execute("SELECT count(*) FROM points WHERE state = 1").fetchone()[0])

    def used_bytes(self) -> int:
        """Bytes the store's live pages take (freed pages are reused, not counted)."""
        with self._errors("read"):
            return int(self._db.execute(_USED_BYTES).fetchone()[0])

    def retry_dead(self) -> int:
        """Turns every dead letter back into a pending point (moved to the end of the line)."""
        with self._errors("write"):
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                moved = db.execute(
                    "INSERT INTO points(stream, name, value, step, ts, logged_at) "
                    "SELECT stream, name, value, step, ts, logged_at FROM points WHERE state = 1 ORDER BY id"
                ).rowcount
                db.execute("DELETE FROM points WHERE state = 1")
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        return int(moved)

    def summary(self) -> list[SpoolSummaryRow]:
        """Pending and dead points per trial component and metric.

        Text is read as hex and decoded with bad bytes escaped, so any row can be shown; a row
        whose stream is missing counts under the trial component "?". A state other than 0
        counts as dead.
        """
        with self._errors("read"):
            rows = self._db.execute(
                f"SELECT {SHOWN_TRIAL_COMPONENT}, {hex_or_null('p.name')}, p.state = 0, "
                f"{hex_or_null('p.code')}, count(*) "
                "FROM points p LEFT JOIN streams s ON s.id = p.stream GROUP BY 1, 2, 3, 4"
            ).fetchall()
        table: dict[tuple[str, str], SpoolSummaryRow] = {}
        for trial_component_hex, name_hex, pending, code_hex, count in rows:
            key = (shown(trial_component_hex), shown(name_hex))
            entry = table.setdefault(key, SpoolSummaryRow(*key, 0, 0, {}))
            if pending == 1:
                entry = SpoolSummaryRow(*key, entry.pending + count, entry.dead, entry.dead_codes)
            else:
                code = shown(code_hex)
                entry.dead_codes[code] = entry.dead_codes.get(code, 0) + count
                entry = SpoolSummaryRow(*key, entry.pending, entry.dead + count, entry.dead_codes)
            table[key] = entry
        return sorted(table.values(), key=lambda r: (r.trial_component, r.name))

    def dead_letters(self, limit: int = 20) -> list[tuple[str, str, int | str | None, str, str, int | str]]:
        """The first dead letters: (trial component, name, step, code, message, attempts).

        Read as summary() reads; a step or attempts count that is not an integer shows as "?".
        """
        with self._errors("read"):
            rows = self._db.execute(
                f"SELECT {SHOWN_TRIAL_COMPONENT}, {hex_or_null('p.name')}, "
                "CASE typeof(p.step) WHEN 'integer' THEN p.step WHEN 'null' THEN NULL ELSE '?' END, "
                f"{hex_or_null('p.code')}, {hex_or_null('p.message')}, "
                "CASE typeof(p.attempts) WHEN 'integer' THEN p.attempts ELSE '?' END "
                "FROM points p LEFT JOIN streams s ON s.id = p.stream "
                "WHERE p.state = 1 ORDER BY p.id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            (shown(tc), shown(name), step, shown(code), shown(message), attempts)
            for tc, name, step, code, message, attempts in rows
        ]

    # -- errors -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, verb: str) -> Any:
        """Turns sqlite3's errors into a SpoolError naming the path and what was being done.

        Every use of the connection goes through here, so this is also where a forked child
        is stopped.
        """
        if os.getpid() != self._owner_pid:
            raise SpoolError(
                f"cannot {verb} the spool {self.directory}: it was opened by process {self._owner_pid}, "
                f"and this process ({os.getpid()}) is a fork of it; a forked child cannot use its "
                "parent's spool (open a logger with a spool_dir of its own)"
            )
        try:
            yield
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot {verb} the spool {self.path}: {exc}") from exc


# Doubles that a conversion with too few digits or too little precision gets wrong.
_HARD_DOUBLES = (
    0.30000000000000004,
    2.0**60,
    1e23,
    5e-324,
    2.225073858507201e-308,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.1545580616824966e232,
    2.7335487904581383e306,
    1.3567547162550915e303,
    1795812200.3420587,
)


@functools.cache
def _doubles_survive_text() -> bool:
    """Whether this SQLite build carries doubles through the JSON statements exactly (once a process)."""
    rng = random.Random(0)
    values = list(_HARD_DOUBLES) + [math.nextafter(10.0**k, math.inf) for k in range(-300, 301, 7)]
    while len(values) < 600:
        x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(x):
            values.append(x)
    document = json.dumps([("m", x, None, x, x) for x in values])
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO streams(id, trial_component) VALUES (1, 'check')")
        db.execute(_INSERT_POINTS, (1, document))
        rows = json.loads(db.execute(LOAD_POINTS, (0, len(values))).fetchone()[0])
    pack = struct.Struct("<d").pack
    expected = [pack(x) for x in values]
    return all([pack(float(row[field])) for row in rows] == expected for field in (3, 5, 6))


# Spools open in this process, so that a forked child can let go of their locks.
_open_spools: weakref.WeakSet[Spool] = weakref.WeakSet()
# A forked child's inherited connections: kept referenced so that they are never closed there.
_inherited_connections: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for spool in list(_open_spools):
        spool._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _connect(db_path: Path, *, read_only: bool) -> sqlite3.Connection:
    try:
        if read_only:
            connection = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        else:
            connection = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open the spool {db_path}: {exc}") from exc
    try:
        _check_and_prepare(connection, db_path, read_only=read_only)
    except BaseException:
        connection.close()
        raise
    return connection


def _check_and_prepare(db: sqlite3.Connection, db_path: Path, *, read_only: bool) -> None:
    def broken(reason: str) -> SpoolError:
        return SpoolError(f"{db_path} is not a usable metricsbuf spool ({reason}); nothing was deleted")

    try:
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise broken(str(exc)) from exc
    fresh = application_id == 0 and not tables
    if not fresh and application_id != APPLICATION_ID:
        raise broken("it is a SQLite database of something else")
    if not fresh:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in _READABLE_VERSIONS:
            readable = " and ".join(str(v) for v in _READABLE_VERSIONS)
            raise broken(f"schema version {version}, this metricsbuf reads versions {readable}")
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise broken(str(exc)) from exc
        if check != "ok":
            raise broken(f"integrity check failed: {check}")
    if read_only:
        if fresh:
            raise broken("it is empty")
        return
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        if fresh:
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        raise broken(str(exc)) from exc
