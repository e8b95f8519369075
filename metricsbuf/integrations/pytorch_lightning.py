"""`metricsbuf.integrations.lightning`'s logger, for the standalone ``pytorch_lightning`` package.

    from metricsbuf.integrations.pytorch_lightning import MetricsBufLogger

    trainer = Trainer(max_epochs=3, logger=MetricsBufLogger())

``lightning`` and ``pytorch_lightning`` ship separate copies of Lightning, so each has its own
``Logger`` base class; this module subclasses ``pytorch_lightning.loggers.Logger`` with the same
body (see `metricsbuf.integrations.lightning` for what it does). Use the one matching your ``Trainer``.
"""

from __future__ import annotations

from ._lightning_base import MetricsBufLoggerBody

try:
    from pytorch_lightning.loggers import Logger
    from pytorch_lightning.utilities.rank_zero import rank_zero_only
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "metricsbuf.integrations.pytorch_lightning needs pytorch_lightning: "
        "pip install 'metricsbuf[pytorch-lightning]'"
    ) from exc

__all__ = ["MetricsBufLogger"]


class MetricsBufLogger(MetricsBufLoggerBody, Logger):  # type: ignore[misc]
    __doc__ = MetricsBufLoggerBody.__doc__
    _rank_zero_only = staticmethod(rank_zero_only)
