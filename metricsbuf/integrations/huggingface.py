"""Hugging Face transformers: a `TrainerCallback` that sends the Trainer's logs to SageMaker Metrics.

    from metricsbuf.integrations.huggingface import MetricsBufCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[MetricsBufCallback()])
    trainer.train()

Every ``Trainer.log`` call (every ``logging_steps``, each evaluation, the end of training)
becomes one ``log_many`` with ``step=state.global_step`` and the Trainer's own names: ``loss``,
``grad_norm``, ``learning_rate``, ``epoch``, ``eval_loss``, ``eval_runtime``, ``train_loss``,
``train_runtime``, ``total_flos``... Strings, booleans and other non-numbers are skipped with
one warning per name (MLflowCallback drops them with a warning too).

As transformers' own MLflowCallback and WandbCallback do, it acts only on the world's process
zero (``state.is_world_process_zero``) and sets up lazily: the logger is built when training
begins (so a missing trial component fails before the first step, not at the first log), on
that process only. ``all_ranks=True`` logs from every process, suffixing each name with
``args.process_index``: ``loss[rank=3]``. The Trainer already averages the training loss and
gathers evaluation metrics across processes before it logs, so most values are the same on
every rank.

The Trainer calls ``on_train_end`` only when ``train()`` returns normally: after an exception
no hook runs, and a logger the callback built stays open until the process exits. Pass your own
logger (``logger=``, closed by a ``with`` block around training) to have a crash flush too.
"""

from __future__ import annotations

from typing import Any

from ._common import MetricsWriter, SyncLogger

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "metricsbuf.integrations.huggingface needs transformers: pip install 'metricsbuf[huggingface]'"
    ) from exc

__all__ = ["MetricsBufCallback"]


class MetricsBufCallback(TrainerCallback):  # type: ignore[misc]
    """Sends the metrics of every ``Trainer.log`` call through a metricsbuf `SyncMetricsLogger`.

    Args:
        trial_component_name: for the logger the callback builds; None finds it from the
            SageMaker job (see `metricsbuf.SyncMetricsLogger`).
        logger: a ready logger instead (anything with ``log_many``, ``flush`` and ``close``).
            It stays yours: the callback flushes it when training ends and never closes it, as
            MLflowCallback ends only the runs it started. Not with ``trial_component_name`` or
            options.
        prefix: put in front of every name as is (``"hf/"`` makes ``hf/loss``).
        all_ranks: log from every process, each name suffixed with the process's global index
            (``loss[rank=3]``), instead of from the world's process zero only.
        **options: the other `SyncMetricsLogger` options, for the logger the callback builds.

    Outside ``train()`` (``trainer.evaluate()`` after training), each log is delivered before
    the hook returns: the callback's own logger is opened for it and closed right after, a
    logger you passed is flushed.
    """

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
            "MetricsBufCallback",
            logger=logger,
            trial_component_name=trial_component_name,
            options=options,
            prefix=prefix,
            all_ranks=all_ranks,
        )
        self._in_train = False

    def _logs_here(self, state: Any) -> bool:
        return self._writer.all_ranks or bool(state.is_world_process_zero)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._in_train = True
        if self._logs_here(state):
            self._writer.open()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not logs or not self._logs_here(state):
            return
        rank = int(args.process_index) if self._writer.all_ranks else None
        self._writer.write(logs, int(state.global_step), rank=rank, in_run=self._in_train)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._in_train = False
        if self._logs_here(state):
            self._writer.end_run()
