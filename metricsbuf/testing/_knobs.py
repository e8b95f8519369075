"""The fake service's options ("knobs"), each declared once in `ServiceKnobs`.

A `Knob` holds everything about one option: its default, its check, its description and its
command-line form. Every way to set or show options derives from the one declaration:

* the services (`FakeMetricsService`, `InMemoryMetricsClient`) inherit the knobs from
  `ServiceKnobs` as validated attributes, with `configure` and `config`;
* `add_knob_arguments` builds the command line of ``python -m metricsbuf.testing``, and
  `knob_argv` the arguments `FakeMetricsServiceProcess` passes it;
* `check_knobs` and `knobs_to_json` serve the ``/_fake/config`` endpoint and its client;
* `with_knob_docs` appends the option list to the docstrings of the classes that take them.

The constructors keep explicit keyword signatures (a typed public API); `knob_arguments` picks
the knobs out of them, and tests/test_fake_service.py checks that each signature lists every
knob with its default.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, Generic, TypeVar, overload

from .._exceptions import InvalidMetricError

T = TypeVar("T")


# --------------------------------------------------------------------------- checks
# Each returns the value to store, or raises InvalidMetricError naming the option.


def _check_seed(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMetricError(f"{name} must be an int, got {value!r}")
    return value


def _finite_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidMetricError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_rate(name: str, value: object) -> float:
    number = _finite_number(name, value)
    if not 0 <= number <= 1:
        raise InvalidMetricError(f"{name} must be between 0 and 1, got {value!r}")
    return number


def _check_seconds(name: str, value: object) -> float:
    number = _finite_number(name, value)
    if number < 0:
        raise InvalidMetricError(f"{name} must be 0 or more, got {value!r}")
    return number


def _optional_int_check(minimum: int) -> Callable[[str, object], int | None]:
    def check(name: str, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidMetricError(f"{name} must be None or an int >= {minimum}, got {value!r}")
        return value

    return check


def _check_optional_positive_number(name: str, value: object) -> float | None:
    if value is None:
        return None
    number = _finite_number(name, value)
    if number <= 0:
        raise InvalidMetricError(f"{name} must be None or a number > 0, got {value!r}")
    return number


def _check_optional_names(name: str, value: object) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidMetricError(f"{name} must be None or a collection of names, got {value!r}")
    names = frozenset(value)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise InvalidMetricError(f"{name} must hold str names, got {bad[0]!r}")
    return names


# --------------------------------------------------------------------------- the knob


class Knob(Generic[T]):
    """One option of the fake service, as a validated attribute of a `ServiceKnobs` instance.

    Assigning the attribute checks the value (InvalidMetricError names the option), stores
    what the check returns and tells the instance (`ServiceKnobs._knobs_changed`).

    Args:
        default: the value when none is given.
        check: ``check(name, value)`` returns the value to store or raises InvalidMetricError.
        doc: one sentence for the docstrings and ``--help``.
        metavar, parse: the command-line form: ``--name-with-dashes METAVAR``, parsed by ``parse``.
        flag: the command-line flag, when not the name with dashes.
        repeated: the flag is repeated, once per item of a collection (``append``).
    """

    name: str  # the attribute's name, set when the owning class is created

    def __init__(
        self,
        default: T,
        check: Callable[[str, object], T],
        *,
        doc: str,
        metavar: str,
        parse: Callable[[str], object],
        flag: str | None = None,
        repeated: bool = False,
    ) -> None:
        self.default = default
        self.check = check
        self.doc = doc
        self.metavar = metavar
        self.parse = parse
        self._flag = flag
        self.repeated = repeated

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def flag(self) -> str:
        return self._flag or "--" + self.name.replace("_", "-")

    @overload
    def __get__(self, instance: None, owner: type) -> Knob[T]: ...

    @overload
    def __get__(self, instance: object, owner: type) -> T: ...

    def __get__(self, instance: object | None, owner: type) -> Knob[T] | T:
        if instance is None:
            return self
        value: T = instance.__dict__[self.name]
        return value

    def __set__(self, instance: ServiceKnobs, value: T) -> None:
        instance._apply_knobs({self.name: self.check(self.name, value)})

    def to_json(self, value: object) -> Any:
        """The checked ``value`` as plain JSON (a set of names as a sorted list)."""
        return sorted(value) if isinstance(value, frozenset) else value

    def argv(self, value: object) -> list[str]:
        """The command-line arguments that give the checked ``value`` (none for None)."""
        if value is None:
            return []
        if self.repeated:
            assert isinstance(value, Collection)
            return [arg for item in sorted(value) for arg in (self.flag, str(item))]
        return [self.flag, repr(value)]  # repr: a float survives the round trip exactly


# --------------------------------------------------------------------------- the table


class ServiceKnobs:
    """The fake service's options, declared once; the services inherit them as attributes.

    Every option is an attribute that can be changed while the service runs (validated on
    assignment), or several at once with `configure`.
    """

    seed = Knob(
        0,
        _check_seed,
        doc="seeds the random.Random all faults are drawn from: the same seed and the same sequence "
        "of requests give the same faults. Assigning it reseeds.",
        metavar="N",
        parse=int,
    )
    internal_error_rate = Knob(
        0.0,
        _check_rate,
        doc="chance that a valid item gets INTERNAL_ERROR (not stored).",
        metavar="RATE",
        parse=float,
    )
    conflict_error_rate = Knob(
        0.0,
        _check_rate,
        doc="chance that a valid item gets CONFLICT_ERROR (not stored).",
        metavar="RATE",
        parse=float,
    )
    throttle_rate = Knob(
        0.0,
        _check_rate,
        doc="chance that a request gets HTTP 400 ThrottlingException.",
        metavar="RATE",
        parse=float,
    )
    server_error_rate = Knob(
        0.0,
        _check_rate,
        doc="chance that a request gets HTTP 500 InternalFailure (first half of the range) or "
        "HTTP 503 ServiceUnavailable (second half).",
        metavar="RATE",
        parse=float,
    )
    reset_rate = Knob(
        0.0,
        _check_rate,
        doc="chance that the connection is dropped before the request is processed (first half of "
        "the range: a TCP RST; second half: a plain close).",
        metavar="RATE",
        parse=float,
    )
    ambiguous_reset_rate = Knob(
        0.0,
        _check_rate,
        doc="chance that a request's points are stored and the connection is then dropped without "
        "a response (RST or close, split the same way).",
        metavar="RATE",
        parse=float,
    )
    latency = Knob(
        0.0,
        _check_seconds,
        doc="seconds to wait before answering each request.",
        metavar="SECONDS",
        parse=float,
    )
    metric_limit = Knob(
        None,
        _optional_int_check(0),
        doc="distinct metric names a trial component may hold; a new name beyond that gets "
        "METRIC_LIMIT_EXCEEDED. None: no limit.",
        metavar="N",
        parse=int,
    )
    known_trial_components: Knob[Collection[str] | None] = Knob(
        None,
        _check_optional_names,
        doc="if set, a request for any other trial component gets HTTP 400 ResourceNotFound "
        "(stored as a frozenset). None: every name is accepted.",
        metavar="NAME",
        parse=str,
        flag="--known-trial-component",
        repeated=True,
    )
    rate_limit = Knob(
        None,
        _check_optional_positive_number,
        doc="requests per second the whole service admits: a token bucket shared by every client "
        "of this service. A request over it gets HTTP 400 ThrottlingException, counted as "
        "rate_limited (not throttled). None: no limit.",
        metavar="PER_SECOND",
        parse=float,
    )
    rate_limit_burst = Knob(
        None,
        _optional_int_check(1),
        doc="the bucket's size: how many requests the rate limit admits at once after a quiet "
        "spell. None: one second's worth of rate_limit (at least 1).",
        metavar="N",
        parse=int,
    )

    def _knobs_changed(self, names: Collection[str]) -> None:
        """Called after the options ``names`` got new values; services deriving state from them react."""

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change several options at once (all are validated before any is applied); return `config()`."""
        self._apply_knobs(check_knobs(knobs))
        return self.config()

    def config(self) -> dict[str, Any]:
        """The current options, as plain JSON-friendly values."""
        return knobs_to_json({name: getattr(self, name) for name in KNOBS})

    def _set_knobs(self, arguments: Mapping[str, object]) -> None:
        """Set every option from ``arguments`` (a constructor's ``locals()``), each checked."""
        self._apply_knobs(knob_arguments(arguments))

    def _apply_knobs(self, checked: Mapping[str, object]) -> None:
        # All values first, then one notice: state derived from several options is built once.
        self.__dict__.update(checked)
        self._knobs_changed(checked.keys())


#: Every knob, by name, in declaration order.
KNOBS: Final[Mapping[str, Knob[Any]]] = {
    knob.name: knob for knob in vars(ServiceKnobs).values() if isinstance(knob, Knob)
}


def check_knobs(knobs: Mapping[str, object]) -> dict[str, Any]:
    """Check each of ``knobs`` (all before returning any); an unknown name raises InvalidMetricError."""
    unknown = [name for name in knobs if name not in KNOBS]
    if unknown:
        raise InvalidMetricError(f"unknown option {unknown[0]!r}; the options are {', '.join(KNOBS)}")
    return {name: KNOBS[name].check(name, value) for name, value in knobs.items()}


def knob_arguments(arguments: Mapping[str, object]) -> dict[str, Any]:
    """Every knob's checked value from a call's arguments (an explicit signature's ``locals()``)."""
    return {name: knob.check(name, arguments[name]) for name, knob in KNOBS.items()}


def knobs_to_json(values: Mapping[str, object]) -> dict[str, Any]:
    """Checked knob values as plain JSON."""
    return {name: KNOBS[name].to_json(value) for name, value in values.items()}


def knob_argv(values: Mapping[str, object]) -> list[str]:
    """The command-line arguments that give these checked knob values."""
    return [arg for name, value in values.items() for arg in KNOBS[name].argv(value)]


def add_knob_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per knob, with the knob's default; the parsed value lands under the knob's name."""
    for knob in KNOBS.values():
        parser.add_argument(
            knob.flag,
            dest=knob.name,
            type=knob.parse,
            default=knob.default,
            metavar=knob.metavar,
            action="append" if knob.repeated else "store",
            help=knob.doc + (" Repeat the flag for several." if knob.repeated else ""),
        )


def with_knob_docs(cls: type[T]) -> type[T]:
    """Class decorator: append the options, one paragraph each, to the docstring of a class taking them."""
    indent = "    "  # a class docstring's own indentation, which inspect.cleandoc removes
    lines = ["", indent + "Options:"]
    for name, knob in KNOBS.items():
        text = f"{name} (default {knob.default!r}): {knob.doc}"
        lines.append(textwrap.fill(text, 96, initial_indent=indent * 2, subsequent_indent=indent * 3))
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
    return cls
