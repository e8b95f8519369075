"""Adapters that send a training framework's metrics through a synchronous metricsbuf logger.

Each adapter lives in its own module, which imports its framework when it is imported itself;
this package imports none. Install the framework with the matching extra::

    pip install "metricsbuf[huggingface]"   # metricsbuf.integrations.huggingface.MetricsBufCallback
    pip install "metricsbuf[lightning]"     # metricsbuf.integrations.lightning.MetricsBufLogger
    pip install "metricsbuf[pytorch-lightning]"  # metricsbuf.integrations.pytorch_lightning.MetricsBufLogger
    pip install "metricsbuf[keras]"         # metricsbuf.integrations.keras.MetricsBufCallback

What the adapters share
-----------------------
* The logger. Pass a ready one (``logger=``: anything with ``log_many``, ``flush`` and
  ``close`` like `metricsbuf.SyncMetricsLogger`; the caller owns it, the adapter only flushes
  it when a run ends) or the SyncMetricsLogger options (``trial_component_name=None,
  **options``): the adapter then builds its logger lazily, on the process that logs, when a
  run starts, and closes it when the run ends. A log that arrives outside a run (``evaluate()``
  after ``train()``, ``trainer.test()`` after ``fit()``) opens a logger again for that call
  and closes it right after.
* Ranks. Only the world's process zero logs, judged by the framework's own rank information,
  as the frameworks' own loggers do. With ``all_ranks=True`` every process logs and every
  metric name carries the process's global rank: ``loss[rank=3]`` (`rank_suffixed`). Several
  processes writing one trial component can meet ``CONFLICT_ERROR``, which the logger retries.
* What is a metric. Real numbers (ints, floats, numpy scalars, one-element tensors and
  arrays) are; booleans, strings, None and everything else are skipped with one warning per
  name on the ``metricsbuf`` logger. A name the service would refuse (more than 255
  characters, a line break) is skipped the same way, so a metric can never stop training.
  NaN and infinities go to the logger, whose ``non_finite`` option decides.
"""

from __future__ import annotations

from ._common import SyncLogger, rank_suffixed

__all__ = ["SyncLogger", "rank_suffixed"]
