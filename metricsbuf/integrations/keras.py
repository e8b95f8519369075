"""Keras 3: a callback that sends ``fit()``'s metrics to SageMaker Metrics.

    from metricsbuf.integrations.keras import MetricsBufCallback

    model.fit(x, y, validation_split=0.2, epochs=10, callbacks=[MetricsBufCallback()])

At each epoch's end, Keras's epoch logs go out with ``step=epoch`` (0-based, as Keras counts)
and Keras's names: ``loss``, ``accuracy``..., ``val_loss``, ``val_accuracy``... for the
validation run, ``learning_rate`` when the optimizer reports it. ``update_freq`` (the name
and values of Keras's own TensorBoard callback) adds batch-level points: ``"batch"`` every
batch, an int every that many batches, as ``batch_loss``... (TensorBoard's ``batch_`` prefix
keeps them apart from the epoch series) with ``step`` = the optimizer's iteration count. Keras
reports a batch's metrics as running means over the epoch so far, and so do these points.

``model.evaluate(..., callbacks=[callback])`` outside ``fit`` sends its results as
``test_loss``... (Keras calls that run "test"), with the optimizer's iteration count as step.

Keras 3 has no notion of a process's rank. The rank is ``rank=`` if given, else the ``RANK``
environment variable (torchrun and SageMaker's distributed launchers set it), else 0; only
rank 0 logs unless ``all_ranks=True``, which suffixes each name: ``loss[rank=3]``.

Keras calls ``on_train_end`` only when ``fit`` returns normally: after an exception a logger the
callback built stays open until the process exits. Pass your own (``logger=``, closed by a
``with`` block) to have a crash flush too.
"""

from __future__ import annotations

import os
from typing import Any

from .._exceptions import InvalidMetricError
from ._common import MetricsWriter, SyncLogger

try:
    import keras
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("metricsbuf.integrations.keras needs Keras 3: pip install 'metricsbuf[keras]'") from exc

__all__ = ["MetricsBufCallback"]


def _update_every(update_freq: object) -> int:
    """Batches between batch-level points; 0 for "epoch" (none)."""
    if update_freq == "epoch":
        return 0
    if update_freq == "batch":
        return 1
    if isinstance(update_freq, int) and not isinstance(update_freq, bool) and update_freq >= 1:
        return update_freq
    raise InvalidMetricError(f"update_freq must be 'epoch', 'batch' or an int >= 1, got {update_freq!r}")


def _rank_from(rank: object) -> int:
    if rank is None:
        rank = os.environ.get("RANK", "0")
        try:
            rank = int(rank)
        except ValueError as exc:
            raise InvalidMetricError(f"the RANK environment variable must be an int, got {rank!r}") from exc
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise InvalidMetricError(f"rank must be an int >= 0, got {rank!r}")
    return rank


class MetricsBufCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Sends Keras's logs through a metricsbuf `SyncMetricsLogger`.

    Args:
        trial_component_name: for the logger the callback builds; None finds it from the
            SageMaker job (see `metricsbuf.SyncMetricsLogger`).
        logger: a ready logger instead (anything with ``log_many``, ``flush`` and ``close``).
            It stays yours: the callback flushes it when ``fit`` ends and never closes it. Not
            with ``trial_component_name`` or options.
        update_freq: ``"epoch"`` (epoch logs only), ``"batch"`` or an int N (also every N
            training batches, as ``batch_<name>``).
        prefix: put in front of every name as is (``"keras/"`` makes ``keras/loss``).
        rank: this process's global rank; None reads ``RANK`` from the environment (0 if unset).
        all_ranks: log from every rank, each name suffixed (``loss[rank=3]``), instead of rank 0 only.
        **options: the other `SyncMetricsLogger` options, for the logger the callback builds.
    """

    def __init__(
        self,
        trial_component_name: str | None = None,
        *,
        logger: SyncLogger | None = None,
        update_freq: str | int = "epoch",
        prefix: str = "",
        rank: int | None = None,
        all_ranks: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self._writer = MetricsWriter(
            "MetricsBufCallback",
            logger=logger,
            trial_component_name=trial_component_name,
            options=options,
            prefix=prefix,
            all_ranks=all_ranks,
        )
        self._every = _update_every(update_freq)
        self._rank = _rank_from(rank)
        self._logs_here = all_ranks or self._rank == 0
        self._suffix_rank = self._rank if all_ranks else None
        self._in_fit = False
        self._batches = 0  # training batches seen, for update_freq=N
        # Keras runs batch-end hooks on a thread pool only if every callback allows it. With
        # update_freq="epoch" this callback's batch hook does nothing, so it allows it; with
        # batch-level points it keeps them in order on the training thread.
        self.async_safe = self._every == 0

    def _iterations(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        if iterations is None:
            return None
        # The backend's scalar tensor: int() reads it on every backend, where
        # keras.ops.convert_to_numpy warns with numpy 2 on the torch backend.
        return int(iterations.value)

    def on_train_begin(self, logs: Any = None) -> None:
        self._in_fit = True
        if self._logs_here:
            self._writer.open()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if not self._every or not self._logs_here or not logs:
            return
        self._batches += 1
        if self._batches % self._every:
            return
        step = self._iterations()
        batch_logs = {f"batch_{name}": value for name, value in logs.items()}
        self._writer.write(batch_logs, self._batches if step is None else step, rank=self._suffix_rank)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self._logs_here and logs:
            self._writer.write(logs, int(epoch), rank=self._suffix_rank)

    def on_test_end(self, logs: Any = None) -> None:
        # Inside fit this is the validation run, whose results on_epoch_end gets as val_*.
        if self._in_fit or not self._logs_here or not logs:
            return
        test_logs = {f"test_{name}": value for name, value in logs.items()}
        self._writer.write(test_logs, self._iterations(), rank=self._suffix_rank, in_run=False)

    def on_train_end(self, logs: Any = None) -> None:
        self._in_fit = False
        if self._logs_here:
            self._writer.end_run()
