"""MetricsBufCallback inside a real transformers Trainer: a tiny GPT-2 built from a config, a few steps."""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from recording import RecordingLogger
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from metricsbuf import InvalidMetricError
from metricsbuf.integrations.huggingface import MetricsBufCallback

MAX_STEPS = 6


def tiny_dataset(rows: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (rows, 8), generator=generator)
    return [{"input_ids": row, "labels": row} for row in ids]


def make_trainer(tmp_path: Path, callback: MetricsBufCallback, **args: Any) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
        )
    )
    options: dict[str, Any] = {
        "output_dir": str(tmp_path),
        "max_steps": MAX_STEPS,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "logging_steps": 2,
        "eval_strategy": "steps",
        "eval_steps": 3,
        "save_strategy": "no",
        "report_to": "none",  # no other logging integration
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    options.update(args)
    return Trainer(
        model=model,
        args=TrainingArguments(**options),
        train_dataset=tiny_dataset(32, seed=1),
        eval_dataset=tiny_dataset(8, seed=2),
        callbacks=[callback],
    )


def test_train_logs_the_trainers_metrics_with_its_global_step(
    tmp_path: Path, metrics_logger: RecordingLogger
) -> None:
    trainer = make_trainer(tmp_path, MetricsBufCallback(logger=metrics_logger))
    trainer.train()

    names = metrics_logger.names()
    assert {
        "loss",
        "grad_norm",
        "learning_rate",
        "epoch",
        "eval_loss",
        "train_loss",
        "train_runtime",
    } <= names
    assert metrics_logger.steps("loss") == [2, 4, 6]  # every logging_steps, at state.global_step
    assert metrics_logger.steps("eval_loss") == [3, 6]
    assert metrics_logger.steps("train_loss") == [MAX_STEPS]
    assert all(math.isfinite(value) for _, value, _ in metrics_logger.points)
    # Logged from the training loop's own thread.
    assert metrics_logger.threads == {threading.main_thread().name}
    # The caller's logger is flushed when training ends, never closed.
    assert metrics_logger.calls[-1] == "flush"
    assert not metrics_logger.closed


def test_builds_its_logger_when_training_begins_and_closes_it_at_the_end(
    tmp_path: Path, sync_metrics_logger_class: type[RecordingLogger]
) -> None:
    built = sync_metrics_logger_class.built
    callback = MetricsBufCallback("my-run-0042", max_batch_size=5)
    trainer = make_trainer(tmp_path, callback)
    assert built == []  # nothing until training begins

    trainer.train()
    assert len(built) == 1
    logger = built[0]
    assert logger.trial_component_name == "my-run-0042"
    assert logger.options == {"max_batch_size": 5}
    assert logger.closed and logger.calls[-1] == "close"
    assert logger.steps("loss") == [2, 4, 6]

    # evaluate() after training: a logger opened for that log and closed right after it.
    metrics = trainer.evaluate()
    assert len(built) == 2
    assert built[1].closed
    assert built[1].steps("eval_loss") == [MAX_STEPS]
    assert dict((name, value) for name, value, _ in built[1].points)["eval_loss"] == pytest.approx(
        metrics["eval_loss"]
    )


def test_skips_what_is_not_a_metric_with_one_warning_per_name(
    tmp_path: Path, metrics_logger: RecordingLogger, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = make_trainer(
        tmp_path, MetricsBufCallback(logger=metrics_logger), max_steps=2, eval_strategy="no"
    )
    trainer.train()
    logged = len(metrics_logger.points)

    caplog.set_level(logging.WARNING, logger="metricsbuf")
    for _ in range(2):  # Trainer.log is how user code adds to the Trainer's logs
        trainer.log(
            {
                "note": "a string",
                "flag": True,
                "nothing": None,
                "vector": torch.ones(3),
                "scalar_tensor": torch.tensor(0.25),
                "count": 7,
                "x" * 300: 1.0,
            }
        )
    new = metrics_logger.points[logged:]
    assert sorted({name for name, _, _ in new}) == ["count", "epoch", "scalar_tensor"]
    assert ("scalar_tensor", 0.25, 2) in new
    skipped = [r.getMessage() for r in caplog.records if "skips" in r.getMessage()]
    assert len(skipped) == 5  # note, flag, nothing, vector, the long name: once each
    assert any("'flag'" in message for message in skipped)


def test_prefix_and_all_ranks_name_every_metric(tmp_path: Path, metrics_logger: RecordingLogger) -> None:
    callback = MetricsBufCallback(logger=metrics_logger, prefix="hf/", all_ranks=True)
    make_trainer(tmp_path, callback, max_steps=2, eval_strategy="no").train()
    assert "hf/loss[rank=0]" in metrics_logger.names()
    assert all(name.startswith("hf/") and name.endswith("[rank=0]") for name in metrics_logger.names())


def test_refuses_a_logger_with_options() -> None:
    with pytest.raises(InvalidMetricError, match="either logger= or"):
        MetricsBufCallback(logger=RecordingLogger(), max_batch_size=5)
    with pytest.raises(InvalidMetricError, match="trial_component_name"):
        MetricsBufCallback("Not Lowercase")


class FailAtStep(TrainerCallback):
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 3:
            raise RuntimeError("boom")


def test_after_an_exception_no_hook_runs_and_the_logger_stays_open(
    tmp_path: Path, sync_metrics_logger_class: type[RecordingLogger]
) -> None:
    """What the Trainer does (documented in the module): on_train_end only on a normal return."""
    trainer = make_trainer(tmp_path, MetricsBufCallback(), eval_strategy="no")
    trainer.add_callback(FailAtStep())
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    [logger] = sync_metrics_logger_class.built
    assert logger.steps("loss") == [2]
    assert not logger.closed  # left to the logger's own exit handling
