"""What the framework adapters share: the logger they write to, metric names, what counts as a metric.

No framework is imported here.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any, Protocol

from .._exceptions import InvalidMetricError
from .._validation import check_name, check_trial_component_name

log = logging.getLogger("metricsbuf")


class SyncLogger(Protocol):
    """What an adapter needs from its logger: the part of `metricsbuf.SyncMetricsLogger` it calls.

    ``log_many`` is all or nothing and raises InvalidMetricError on bad input; ``close`` is
    idempotent. Test doubles implementing these three methods can stand in for a real logger.
    """

    def log_many(self, metrics: Mapping[str, float], *, step: int | None = None) -> None: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


def rank_suffixed(name: str, rank: int) -> str:
    """The name a metric gets under ``all_ranks=True``: ``loss`` from global rank 3 is ``loss[rank=3]``.

    A suffix keeps a metric's series from all ranks next to each other when names are sorted,
    and stays clear of the separators people put in prefixes (``train:``, ``train/``, ``val_``).
    """
    return f"{name}[rank={rank}]"


def metric_value(value: object) -> float | None:
    """The float a logged value stands for, or None if it is not a metric.

    Real numbers are metrics (ints, floats, numpy scalars), and so are one-element tensors and
    arrays (MLflowCallback's ``torch.Tensor`` with ``numel() == 1``, for any framework).
    Booleans are not, nor are strings, None, or anything else.
    """
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, numbers.Real):
            return float(value)
        item = getattr(value, "item", None)
        if not callable(item):
            return None
        numel = getattr(value, "numel", None)
        size = numel() if callable(numel) else getattr(value, "size", None)
        if size != 1:
            return None
        inner = item()
        if isinstance(inner, bool) or not isinstance(inner, numbers.Real):
            return None
        return float(inner)
    except Exception:  # e.g. an int too large for a float, or a broken __float__: not a metric
        return None


def build_logger(trial_component_name: str | None, options: Mapping[str, Any]) -> SyncLogger:
    """A new `metricsbuf.SyncMetricsLogger` with these options."""
    from .. import SyncMetricsLogger  # type: ignore[attr-defined,unused-ignore]

    logger: SyncLogger = SyncMetricsLogger(trial_component_name, **options)
    return logger


class MetricsWriter:
    """One adapter's link to its logger: which logger, which names, and when it is closed.

    A logger passed in is the caller's: the writer only flushes it at the end of a run. Without
    one, the writer builds a `metricsbuf.SyncMetricsLogger` from the options on first use and
    closes it at the end of the run; a write outside a run opens one for that write and closes
    it right after. Used from one thread at a time (the frameworks call their hooks that way).
    """

    def __init__(
        self,
        owner: str,
        *,
        logger: SyncLogger | None,
        trial_component_name: str | None,
        options: Mapping[str, Any],
        prefix: str,
        separator: str = "",
        all_ranks: bool,
    ) -> None:
        if logger is not None:
            if trial_component_name is not None or options:
                raise InvalidMetricError(
                    f"{owner}: pass either logger= or the SyncMetricsLogger options "
                    f"(trial_component_name, {', '.join(sorted(options)) or '...'}), not both"
                )
            missing = [m for m in ("log_many", "flush", "close") if not callable(getattr(logger, m, None))]
            if missing:
                raise InvalidMetricError(
                    f"{owner}: logger must have log_many, flush and close like metricsbuf.SyncMetricsLogger; "
                    f"{type(logger).__name__} lacks {', '.join(missing)}"
                )
        if trial_component_name is not None:
            check_trial_component_name(trial_component_name)
        if not isinstance(prefix, str):
            raise InvalidMetricError(f"{owner}: prefix must be a str, got {type(prefix).__name__}")
        if not isinstance(all_ranks, bool):
            raise InvalidMetricError(f"{owner}: all_ranks must be True or False, got {all_ranks!r}")
        self._owner = owner
        self._given = logger
        self._owned: SyncLogger | None = None
        self._trial_component_name = trial_component_name
        self._options = dict(options)
        self._prefix = prefix + separator if prefix else ""
        self.all_ranks = all_ranks
        self._names: dict[tuple[str, int | None], str | None] = {}  # (key, rank) -> name, None: skipped
        self._warned: set[str] = set()

    @property
    def trial_component_name(self) -> str | None:
        """The trial component named up front (argument, or the given logger's), if any; resolves nothing."""
        if self._trial_component_name is not None:
            return self._trial_component_name
        name = getattr(self._given, "trial_component_name", None)
        return name if isinstance(name, str) else None

    def open(self) -> SyncLogger:
        """The logger, built now if it is ours and none is open."""
        if self._given is not None:
            return self._given
        if self._owned is None:
            self._owned = build_logger(self._trial_component_name, self._options)
        return self._owned

    def end_run(self, timeout: float | None = None) -> None:
        """Closes our logger (a later write opens a new one), or flushes the caller's. Idempotent."""
        if self._given is not None:
            self._given.flush(timeout)
            return
        logger, self._owned = self._owned, None
        if logger is not None:
            logger.close(timeout)

    def write(
        self, logs: Mapping[str, object], step: int | None, *, rank: int | None = None, in_run: bool = True
    ) -> dict[str, float]:
        """Sends the metrics among ``logs`` as one ``log_many``; returns what was sent.

        ``rank`` suffixes every name (``all_ranks``). Outside a run the logger is flushed
        (the caller's) or closed (ours) before this returns.
        """
        metrics: dict[str, float] = {}
        for key, value in logs.items():
            name = self._name(key, rank)
            if name is None:
                continue
            number = metric_value(value)
            if number is None:
                self._warn_once(key, f"{type(value).__name__} {value!r:.60} is not a real number")
                continue
            metrics[name] = number
        if metrics:
            self.open().log_many(metrics, step=step)
        if not in_run and (metrics or self._owned is not None):
            self.end_run()
        return metrics

    def _name(self, key: object, rank: int | None) -> str | None:
        if not isinstance(key, str):
            self._warn_once(repr(key), "metric names must be strings")
            return None
        cache_key = (key, rank)
        if cache_key in self._names:
            return self._names[cache_key]
        name = self._prefix + key
        if rank is not None:
            name = rank_suffixed(name, rank)
        try:
            check_name(name)
        except InvalidMetricError as exc:
            self._warn_once(key, str(exc))
            self._names[cache_key] = None
            return None
        self._names[cache_key] = name
        return name

    def _warn_once(self, key: str, reason: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning("metricsbuf: %s skips %r: %s (warned once per name)", self._owner, key, reason)

    def __getstate__(self) -> dict[str, Any]:
        # A copy sent to another process (Lightning's ddp_spawn pickles its loggers) builds a
        # logger of its own there: the one open here has a thread and a client of this process.
        state = self.__dict__.copy()
        state["_owned"] = None
        return state
