"""The body of the Lightning logger, shared by ``lightning.pytorch`` and ``pytorch_lightning``.

The two packages ship separate copies of Lightning (their ``Logger`` classes differ). Each
subclass names its package's ``rank_zero_only`` (whose ``rank`` the Trainer's strategy sets to
the global rank), and the hooks apply it at the call: `lightning.py` and `pytorch_lightning.py`
each mix this class into their package's ``Logger``.
"""

from __future__ import annotations

import functools
from argparse import Namespace
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from ._common import MetricsWriter, SyncLogger, log

_F = TypeVar("_F", bound=Callable[..., Any])


def rank_zero_unless_all_ranks(fn: _F) -> _F:
    """The package's own ``@rank_zero_only``, unless the logger was built with all_ranks=True."""

    @functools.wraps(fn)
    def wrapper(self: MetricsBufLoggerBody, *args: Any, **kwargs: Any) -> Any:
        if self._writer.all_ranks:
            return fn(self, *args, **kwargs)
        return self._rank_zero_only(fn)(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _NoOpLogger:
    """What ``experiment`` is on ranks that do not log (Lightning's loggers return a dummy too)."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_many(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class MetricsBufLoggerBody:
    """Sends Lightning's logged metrics through a metricsbuf `SyncMetricsLogger`.

    Args:
        trial_component_name: for the logger this one builds; None finds it from the SageMaker
            job (see `metricsbuf.SyncMetricsLogger`).
        logger: a ready logger instead (anything with ``log_many``, ``flush`` and ``close``).
            It stays yours: ``finalize`` flushes it and never closes it. Not with
            ``trial_component_name`` or options. A logger cannot be sent to the processes of
            ``strategy="ddp_spawn"``: pass options there.
        prefix: put in front of every name with Lightning's ``LOGGER_JOIN_CHAR`` ("-"), as
            Lightning's own loggers do: ``prefix="fold1"`` makes ``fold1-train_loss``.
        all_ranks: log from every process, each name suffixed with the global rank
            (``train_loss[rank=3]``), instead of from global rank zero only.
        **options: the other `SyncMetricsLogger` options, for the logger this one builds.

    The names are those Lightning hands over: the keys given to ``self.log`` (with their
    ``_step``/``_epoch`` suffixes) and ``epoch``; the step is the Trainer's.
    """

    LOGGER_JOIN_CHAR = "-"
    # The Lightning package's rank_zero_only (lightning.pytorch's or pytorch_lightning's).
    _rank_zero_only: ClassVar[Callable[..., Any]]

    def __init__(
        self,
        trial_component_name: str | None = None,
        *,
        logger: SyncLogger | None = None,
        prefix: str = "",
        all_ranks: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self._writer = MetricsWriter(
            "MetricsBufLogger",
            logger=logger,
            trial_component_name=trial_component_name,
            options=options,
            prefix=prefix,
            separator=self.LOGGER_JOIN_CHAR,
            all_ranks=all_ranks,
        )
        self.hyperparams: dict[str, Any] = {}
        """Every hyperparameter given to ``log_hyperparams``: kept here, never sent as metrics."""

    def _rank(self) -> int:
        return int(getattr(self._rank_zero_only, "rank", 0))

    @property
    def name(self) -> str:
        """The trial component, when named up front (argument or the given logger); else "metricsbuf".

        Lightning puts checkpoints under ``<default_root_dir>/<name>/checkpoints``.
        """
        return self._writer.trial_component_name or "metricsbuf"

    @property
    def version(self) -> str:
        """Always "" (a trial component has no versions; Lightning then shows no ``v_num``)."""
        return ""

    @property
    def experiment(self) -> Any:
        """The metricsbuf logger, built on first access (Lightning accesses it when a run is set up).

        On a rank that does not log, an object whose methods do nothing, as Lightning's own
        loggers return. Use it to log more: ``self.logger.experiment.log("x", 1.0, step=...)``.
        """
        if self._writer.all_ranks or self._rank() == 0:
            return self._writer.open()
        return _NoOpLogger()

    @rank_zero_unless_all_ranks
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        rank = self._rank() if self._writer.all_ranks else None
        self._writer.write(metrics, step, rank=rank)

    @rank_zero_unless_all_ranks
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Keeps the hyperparameters in ``self.hyperparams`` and logs them once at INFO; sends nothing.

        SageMaker Metrics stores numeric time series only; hyperparameters belong to the trial
        component's parameters (``UpdateTrialComponent``), which this logger does not write.
        """
        values = dict(vars(params) if isinstance(params, Namespace) else params)
        self.hyperparams.update(values)
        log.info("metricsbuf: hyperparameters (kept in MetricsBufLogger.hyperparams, not sent): %r", values)

    @rank_zero_unless_all_ranks
    def finalize(self, status: str) -> None:
        """Closes the logger this one built, or flushes the one passed in. Idempotent.

        Lightning calls it at the end of every ``fit``/``validate``/``test``/``predict``, with
        ``"failed"`` after an exception too; a later call to ``log_metrics`` builds a new logger.
        """
        self._writer.end_run()

    def save(self) -> None:
        """Nothing to save: the logger sends as it goes."""
