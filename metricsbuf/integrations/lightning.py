"""A Lightning logger for Lightning 2.x (``import lightning as L``): metrics to SageMaker Metrics.

    from metricsbuf.integrations.lightning import MetricsBufLogger

    trainer = Trainer(max_epochs=3, logger=MetricsBufLogger())
    trainer.fit(model, train_loader)

``lightning`` and ``pytorch_lightning`` ship separate copies of Lightning, so each has its own
module here, with the same class: `metricsbuf.integrations.lightning` subclasses
``lightning.pytorch.loggers.Logger`` and `metricsbuf.integrations.pytorch_lightning`
subclasses ``pytorch_lightning.loggers.Logger``. Use the one matching your ``Trainer``.

As Lightning's own loggers do, it logs only from global rank zero (``@rank_zero_only``, whose
rank the Trainer's strategy sets), builds its logger lazily (when the Trainer first asks for
``experiment`` while setting up a run, on that rank only) and finishes at ``finalize``, which
Lightning calls at the end of every ``fit``, ``validate``, ``test`` and ``predict``,
after an exception too (status ``"failed"``). ``all_ranks=True`` logs from every rank,
suffixing each name with the global rank: ``train_loss[rank=3]``.

Hyperparameters are not metrics: ``log_hyperparams`` keeps them in ``hyperparams`` and logs
them once at INFO on the ``metricsbuf`` logger, and sends nothing.
"""

from __future__ import annotations

from ._lightning_base import MetricsBufLoggerBody

try:
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "metricsbuf.integrations.lightning needs lightning.pytorch: pip install 'metricsbuf[lightning]'"
    ) from exc

__all__ = ["MetricsBufLogger"]


class MetricsBufLogger(MetricsBufLoggerBody, Logger):  # type: ignore[misc]
    __doc__ = MetricsBufLoggerBody.__doc__
    _rank_zero_only = staticmethod(rank_zero_only)
