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
exclusive lock file keeps a second process (or logger) from opening the same spool.

The lock is an ``flock`` on ``spool.lock``, opened without following a symbolic link and only
when it is a regular file with one link that holds nothing but a pid: metricsbuf never
truncates a file it did not make. An ``flock`` belongs to the open file description, which a
forked child shares: so a child closes its copies of the lock descriptors at once (an
``os.register_at_fork`` hook), and the lock ends with the process that took it. The child
leaves the inherited SQLite connection alone (closing it could checkpoint the parent's WAL),
and any use of the spool there raises SpoolError.

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
import errno
import fcntl
import functools
import json
import math
import os
import random
import sqlite3
import stat
import struct
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _validation
from ._exceptions import InvalidMetricError, MetricsBufError

DB_FILENAME = "spool.sqlite3"
LOCK_FILENAME = "spool.lock"
# The store and the files SQLite keeps beside it (it follows links when it opens them).
_STORE_FILENAMES = tuple(DB_FILENAME + suffix for suffix in ("", "-wal", "-shm", "-journal"))
APPLICATION_ID = 0x4D425546  # "MBUF": marks a SQLite file as a metricsbuf spool
SCHEMA_VERSION = 1  # what a new spool is
NEGATIVE_ZERO_VERSION = 2  # a spool holding a -0.0 (as the blob '-0'); otherwise the same as 1
_READABLE_VERSIONS = (SCHEMA_VERSION, NEGATIVE_ZERO_VERSION)

PENDING = 0
DEAD = 1

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
_INSERT_POINT = "INSERT INTO points(stream, name, value, step, ts, logged_at) VALUES (?, ?, ?, ?, ?, ?)"
_NEGATIVE_ZERO = b"-0"
_MARK_NEGATIVE_ZERO = "UPDATE points SET value = ? WHERE id IN (SELECT value FROM json_each(?))"

_DELETE_POINTS = "DELETE FROM points WHERE id IN (SELECT value FROM json_each(?))"

# Reading rows back. Every field is checked in SQL before it goes into the document, so that no
# row, however damaged (a blob, bytes that are not UTF-8, a NUL, a NULL, a wrong type), can make
# the document fail or undecodable: names go as hex (their exact bytes, capped at what 255
# characters can take), doubles as exact text (see the module docstring), and a field of the
# wrong type as the array [its type, the hex of its first 32 bytes]. Python then checks each row
# with the rules of _validation; a malformed one comes back with a ``problem``, never an error.
_EXACT = "printf('%!.18g', {})"  # see the module docstring
_MAX_NAME_BYTES = 4 * _validation.MAX_NAME_LENGTH  # 255 characters take at most this in UTF-8


def _bad(column: str) -> str:
    return f"json_array(typeof({column}), substr(hex({column}), 1, 64))"


def _double_column(column: str, double: str) -> str:
    return f"CASE typeof({column}) WHEN 'real' THEN {double} ELSE {_bad(column)} END"


def _row_columns(exact: str) -> str:
    """The checked columns of a pending row; ``exact`` renders a double (as text, or itself)."""
    return f"""
    id,
    CASE typeof(stream) WHEN 'integer' THEN stream ELSE {_bad("stream")} END,
    CASE WHEN typeof(name) != 'text' THEN {_bad("name")}
         WHEN length(CAST(name AS BLOB)) > {_MAX_NAME_BYTES}
              THEN json_array('long text', length(CAST(name AS BLOB)), substr(hex(name), 1, 64))
         ELSE hex(name) END,
    CASE typeof(value) WHEN 'real' THEN {exact.format("value")}
         WHEN 'blob' THEN CASE WHEN value = X'2D30' THEN '-0' ELSE {_bad("value")} END  -- _NEGATIVE_ZERO
         ELSE {_bad("value")} END,
    CASE typeof(step) WHEN 'integer' THEN step WHEN 'null' THEN NULL ELSE {_bad("step")} END,
    {_double_column("ts", exact.format("ts"))},
    {_double_column("logged_at", exact.format("logged_at"))}
    """


def _hex_or_null(column: str) -> str:
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE hex({column}) END"  # hex(NULL) is ''


# For inspect: a row's trial component, or which stream it names that is missing.
_SHOWN_TRIAL_COMPONENT = (
    "CASE WHEN s.id IS NULL THEN hex('? (stream ' || coalesce(p.stream, 'NULL') || ' is missing)') "
    "ELSE hex(s.trial_component) END"
)

_PENDING_ROWS = "SELECT * FROM points WHERE id > ? AND state = 0 ORDER BY id LIMIT ?"
_LOAD_POINTS = f"SELECT json_group_array(json_array({_row_columns(_EXACT)})) FROM ({_PENDING_ROWS})"
# The same rows one by one, doubles as bound values: exact on any build, but one GIL round trip a row.
_LOAD_POINTS_BY_ROW = f"SELECT {_row_columns('{}')} FROM ({_PENDING_ROWS})"

_USED_BYTES = """
SELECT (page_count - freelist_count) * page_size
FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()
"""


class SpoolError(MetricsBufError):
    """The spool could not be opened, read or written; the message names the path."""


class SpoolLockedError(SpoolError):
    """Another process (or logger) has this spool open."""


@dataclass(frozen=True, slots=True)
class SpoolRow:
    """A pending point read back from the spool.

    ``problem`` is None for a well-formed row. For a malformed one it says what is wrong (naming
    the spool and the row), and the fields that could not be read are placeholders: the name
    with bad bytes escaped, value NaN, step None, times 0.0, trial component "".
    """

    id: int
    trial_component: str
    name: str
    value: float
    step: int | None
    timestamp: float
    logged_at: float
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class SpoolSummaryRow:
    trial_component: str
    name: str
    pending: int
    dead: int
    dead_codes: dict[str, int]


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
            trial_component, problem = _read_trial_component(kind, raw)
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
        _check_store_files(folder)
        if read_only or not create:
            if not db_path.exists():
                raise SpoolError(f"no metricsbuf spool at {folder} (expected {db_path})")
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SpoolError(f"cannot create the spool folder {folder}: {exc}") from exc
        lock_fd = None if read_only else _take_lock(folder)
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
                        # json.dumps keeps floats exact (repr) and a step of None as null.
                        db.execute(_INSERT_POINTS, (stream_id, json.dumps(rows)))
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
                document = self._db.execute(_LOAD_POINTS, (after_id, limit)).fetchone()[0]
                rows = json.loads(document) if document else []
            else:
                rows = [
                    [json.loads(f) if type(f) is str and f[:1] == "[" else f for f in row]  # [type, hex]
                    for row in self._db.execute(_LOAD_POINTS_BY_ROW, (after_id, limit))
                ]
        stream_names = self._stream_names
        names: dict[str, str | None] = {}  # hex -> the name, or None if it breaks a rule: checked once
        latest, max_step = _LATEST_TIME, _validation.MAX_STEP
        loaded = []
        for row in rows:
            # The usual row in a few tests, inline (this runs for every row of a backlog); a field
            # of the wrong type arrives as a [type, hex] list and raises TypeError here. Anything
            # unusual goes to _malformed, which says what is wrong.
            row_id, stream, name_hex, value, step, ts, logged_at = row
            try:
                trial_component = stream_names[stream]
                if name_hex in names:
                    name = names[name_hex]
                else:
                    name = names[name_hex] = _valid_name(name_hex)
                value, ts, logged_at = float(value), float(ts), float(logged_at)  # exact text, or bound
            except (KeyError, TypeError, ValueError):
                loaded.append(self._malformed(row))
                continue
            if (
                name is not None
                and value - value == 0.0  # finite: inf - inf and nan - nan are nan
                and 0.0 <= ts < latest
                and 0.0 <= logged_at < latest
                and (step is None or (type(step) is int and 0 <= step <= max_step))
            ):
                loaded.append(SpoolRow(row_id, trial_component, name, value, step, ts, logged_at))
            else:
                loaded.append(self._malformed(row))
        return loaded

    def _malformed(self, row: Sequence[Any]) -> SpoolRow:
        """A row that breaks a rule, with every problem named and the readable fields kept."""
        row_id, stream, name_hex, stored_value, step, stored_ts, stored_logged_at = row
        problems = []
        trial_component = ""
        if type(stream) is not int:
            problems.append(f"stream is {_describe(stream)}, not a stream id")
        elif stream in self._stream_names:
            trial_component = self._stream_names[stream]
        else:
            problems.append(self._bad_streams.get(stream, f"stream {stream} is not in the streams table"))
        name, name_problem = _read_name(name_hex)
        if name_problem is not None:
            problems.append(name_problem)
        value = _finite(stored_value)
        if value is None:
            problems.append(f"value is {_describe(stored_value)}, not a finite number")
        if step is not None and not (type(step) is int and 0 <= step <= _validation.MAX_STEP):
            problems.append(
                f"step {step} is not in 0..{_validation.MAX_STEP}"
                if type(step) is int
                else f"step is {_describe(step)}, not an integer"
            )
            step = None
        times = []
        for field, stored in (("timestamp", stored_ts), ("logged_at", stored_logged_at)):
            seconds = _time(stored)
            if seconds is None:
                problems.append(
                    f"{field} is {_describe(stored)}, not epoch seconds (a finite number from 1970 to 9999)"
                )
            times.append(seconds or 0.0)
        problem = (
            f"row {row_id} of the spool {self.path} is malformed: {'; '.join(problems)}; "
            "it is kept there as a dead letter"
        )
        value = math.nan if value is None else value
        return SpoolRow(row_id, trial_component, name, value, step, times[0], times[1], problem)

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
                f"SELECT {_SHOWN_TRIAL_COMPONENT}, {_hex_or_null('p.name')}, p.state = 0, "
                f"{_hex_or_null('p.code')}, count(*) "
                "FROM points p LEFT JOIN streams s ON s.id = p.stream GROUP BY 1, 2, 3, 4"
            ).fetchall()
        table: dict[tuple[str, str], SpoolSummaryRow] = {}
        for trial_component_hex, name_hex, pending, code_hex, count in rows:
            key = (_shown(trial_component_hex), _shown(name_hex))
            entry = table.setdefault(key, SpoolSummaryRow(*key, 0, 0, {}))
            if pending == 1:
                entry = SpoolSummaryRow(*key, entry.pending + count, entry.dead, entry.dead_codes)
            else:
                code = _shown(code_hex)
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
                f"SELECT {_SHOWN_TRIAL_COMPONENT}, {_hex_or_null('p.name')}, "
                "CASE typeof(p.step) WHEN 'integer' THEN p.step WHEN 'null' THEN NULL ELSE '?' END, "
                f"{_hex_or_null('p.code')}, {_hex_or_null('p.message')}, "
                "CASE typeof(p.attempts) WHEN 'integer' THEN p.attempts ELSE '?' END "
                "FROM points p LEFT JOIN streams s ON s.id = p.stream "
                "WHERE p.state = 1 ORDER BY p.id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            (_shown(tc), _shown(name), step, _shown(code), _shown(message), attempts)
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


# A time must be what datetime.fromtimestamp takes: epoch seconds from 1970 to the end of 9999.
_LATEST_TIME = 253402300800.0


def _finite(stored: Any) -> float | None:
    """A value as read (a float when bound, else its exact text), or None if it is not a finite number."""
    if type(stored) is str:
        stored = float(stored)  # exact text from printf, or "-0"
    elif type(stored) is not float:
        return None  # the [type, hex] array of a field of the wrong type
    return stored if math.isfinite(stored) else None


def _time(stored: Any) -> float | None:
    seconds = _finite(stored)
    return seconds if seconds is not None and 0.0 <= seconds < _LATEST_TIME else None


def _valid_name(name_hex: str) -> str | None:
    name, problem = _read_name(name_hex)
    return name if problem is None else None


def _read_name(stored: Any) -> tuple[str, str | None]:
    """The metric name from its hex (or the array of a wrong type), and what is wrong with it, if anything."""
    if type(stored) is not str:
        return _shown_marker(stored), (
            f"name is {_describe(stored)}, not text"
            if stored[0] != "long text"
            else f"name is {stored[1]} bytes long (at most {_validation.MAX_NAME_LENGTH} characters)"
        )
    raw = bytes.fromhex(stored)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), f"name {raw[:64]!r} is not valid UTF-8"
    try:
        _validation.check_name(name)
    except InvalidMetricError as exc:
        return name, f"name: {exc}"
    return name, None


def _read_trial_component(kind: str, raw_hex: str) -> tuple[str, str | None]:
    if kind != "text":
        return "", f"it is {kind}, not text"
    raw = bytes.fromhex(raw_hex)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "", f"{raw[:64]!r} is not valid UTF-8"
    try:
        _validation.check_trial_component_name(name)
    except InvalidMetricError as exc:
        return "", str(exc)
    return name, None


def _describe(marker: Any) -> str:
    """Says what a field held: a number as read, or from the [type, hex of its first bytes] array."""
    if type(marker) is str:  # a double's exact text
        marker = float(marker)
    if type(marker) is not list or len(marker) != 2:
        return repr(marker)
    kind, raw_hex = marker
    if kind == "null":
        return "NULL"
    raw = bytes.fromhex(raw_hex)
    if kind == "blob":
        return f"blob {raw!r}"
    text = raw.decode("utf-8", "backslashreplace")
    return f"{kind} {text}" if kind in ("integer", "real") else f"{kind} {text!r}"


def _shown_marker(marker: Any) -> str:
    """Best effort for a name of the wrong type: its text with bad bytes escaped, or ""."""
    if type(marker) is list and len(marker) >= 2 and type(marker[-1]) is str:
        return bytes.fromhex(marker[-1]).decode("utf-8", "backslashreplace")
    return ""


def _shown(raw_hex: str | None) -> str:
    """Text read as hex, for display: bad bytes escaped; "?" for NULL."""
    if raw_hex is None:
        return "?"
    return bytes.fromhex(raw_hex).decode("utf-8", "backslashreplace")


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
        rows = json.loads(db.execute(_LOAD_POINTS, (0, len(values))).fetchone()[0])
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

# What a lock file of ours may hold: a pid (or nothing, after a crash between truncate and write).
_MAX_LOCK_CONTENT = 32


def _check_store_files(folder: Path) -> None:
    """The store and SQLite's files beside it must be regular files in the folder, not links.

    SQLite follows a link when it opens them: a dangling one would create a file elsewhere, one
    to another spool would give two processes the same store behind the lock's back.
    """
    for filename in _STORE_FILENAMES:
        path = folder / filename
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SpoolError(f"cannot check the spool file {path}: {exc}") from exc
        if stat.S_ISLNK(mode):
            raise SpoolError(
                f"the spool file {path} is a symbolic link; metricsbuf does not follow links in a "
                f"spool folder: move the file itself into {folder}"
            )
        if not stat.S_ISREG(mode):
            raise SpoolError(f"the spool file {path} is not a regular file")


def _take_lock(folder: Path) -> int:
    lock_path = folder / LOCK_FILENAME
    # O_NOFOLLOW: never through a link. O_NONBLOCK: a FIFO planted there must not hang the open.
    # O_CLOEXEC: a program this process starts does not inherit the lock.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(lock_path, flags, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and lock_path.is_symlink():
            raise SpoolError(
                f"the spool lock {lock_path} is a symbolic link; metricsbuf does not follow links in "
                "a spool folder (remove the link)"
            ) from None
        raise SpoolError(f"cannot open the spool lock {lock_path}: {exc}") from exc
    try:
        _check_lock_file(fd, lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_content(fd).strip()
            holder = holder if holder.isdigit() else ""  # shown only when it is a pid
            raise SpoolLockedError(
                f"the spool {folder} is in use by another process{f' (pid {holder})' if holder else ''}: "
                "one logger or `metricsbuf sync` at a time per spool folder"
            ) from None
        content = _lock_content(fd)
        if content.strip() and not content.strip().isdigit():
            raise SpoolError(
                f"the spool lock {lock_path} does not look like a metricsbuf lock file (it holds "
                f"{content[:20]!r}, not a pid); metricsbuf leaves it as it is: move it away"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_lock_file(fd: int, lock_path: Path) -> None:
    """A lock file metricsbuf may write to: a regular file with one link, holding at most a pid."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise SpoolError(f"the spool lock {lock_path} is not a regular file; metricsbuf leaves it as it is")
    if info.st_nlink != 1:
        raise SpoolError(
            f"the spool lock {lock_path} has {info.st_nlink} hard links; metricsbuf writes only to a lock "
            "file of its own: move it away"
        )
    if info.st_size > _MAX_LOCK_CONTENT:
        raise SpoolError(
            f"the spool lock {lock_path} does not look like a metricsbuf lock file ({info.st_size} bytes, "
            "not a pid); metricsbuf leaves it as it is: move it away"
        )


def _lock_content(fd: int) -> str:
    try:
        return os.pread(fd, _MAX_LOCK_CONTENT, 0).decode("ascii", "replace")
    except OSError:
        return ""


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
