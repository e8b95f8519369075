"""Reading the spool's rows back safely: a damaged row becomes a SpoolRow with a ``problem``, never an error.

A spool is a file, and anything may have written to it. So every field is checked in SQL before
it goes into the document, so that no row, however damaged (a blob, bytes that are not UTF-8, a
NUL, a NULL, a wrong type), can make the document fail or undecodable: names go as hex (their
exact bytes, capped at what 255 characters can take), doubles as exact text (why 18 digits, and
the blob ``-0`` that _spool.py writes for -0.0: its module docstring), and a field of the wrong
type as the array [its type, the hex of its first 32 bytes]. ``check_rows`` then checks each row
with the rules of _validation; a malformed one comes back with a ``problem`` naming the spool,
the row and everything wrong with it.

What ``metricsbuf inspect`` shows (``Spool.summary``, ``Spool.dead_letters``) is read as hex too,
and shown with bad bytes escaped. _spool.py runs these statements; this module writes their
columns and makes sense of what comes back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _validation
from ._exceptions import InvalidMetricError

_EXACT = "printf('%!.18g', {})"  # see _spool.py's docstring
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


def hex_or_null(column: str) -> str:
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE hex({column}) END"  # hex(NULL) is ''


# For inspect: a row's trial component, or which stream it names that is missing.
SHOWN_TRIAL_COMPONENT = (
    "CASE WHEN s.id IS NULL THEN hex('? (stream ' || coalesce(p.stream, 'NULL') || ' is missing)') "
    "ELSE hex(s.trial_component) END"
)

_PENDING_ROWS = "SELECT * FROM points WHERE id > ? AND state = 0 ORDER BY id LIMIT ?"
LOAD_POINTS = f"SELECT json_group_array(json_array({_row_columns(_EXACT)})) FROM ({_PENDING_ROWS})"
# The same rows one by one, doubles as bound values: exact on any build, but one GIL round trip a row.
LOAD_POINTS_BY_ROW = f"SELECT {_row_columns('{}')} FROM ({_PENDING_ROWS})"


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


def check_rows(
    rows: Iterable[Sequence[Any]],
    *,
    stream_names: dict[int, str],
    bad_streams: dict[int, str],
    spool_path: Path,
) -> list[SpoolRow]:
    """The rows of LOAD_POINTS (or LOAD_POINTS_BY_ROW) as SpoolRows, malformed ones with a ``problem``.

    ``stream_names`` maps a stream id to its trial component; ``bad_streams`` says what is wrong
    with a stream whose trial component is not valid; ``spool_path`` is named in each problem.
    """
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
            loaded.append(_malformed(row, stream_names, bad_streams, spool_path))
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
            loaded.append(_malformed(row, stream_names, bad_streams, spool_path))
    return loaded


def _malformed(
    row: Sequence[Any], stream_names: dict[int, str], bad_streams: dict[int, str], spool_path: Path
) -> SpoolRow:
    """A row that breaks a rule, with every problem named and the readable fields kept."""
    row_id, stream, name_hex, stored_value, step, stored_ts, stored_logged_at = row
    problems = []
    trial_component = ""
    if type(stream) is not int:
        problems.append(f"stream is {_describe(stream)}, not a stream id")
    elif stream in stream_names:
        trial_component = stream_names[stream]
    else:
        problems.append(bad_streams.get(stream, f"stream {stream} is not in the streams table"))
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
        f"row {row_id} of the spool {spool_path} is malformed: {'; '.join(problems)}; "
        "it is kept there as a dead letter"
    )
    value = math.nan if value is None else value
    return SpoolRow(row_id, trial_component, name, value, step, times[0], times[1], problem)


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


def read_trial_component(kind: str, raw_hex: str) -> tuple[str, str | None]:
    """A stream's trial component from its type and hex, and what is wrong with it, if anything."""
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


def shown(raw_hex: str | None) -> str:
    """Text read as hex, for display: bad bytes escaped; "?" for NULL."""
    if raw_hex is None:
        return "?"
    return bytes.fromhex(raw_hex).decode("utf-8", "backslashreplace")
