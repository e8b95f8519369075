"""MetricsBufLogger inside real Lightning Trainers (``lightning.pytorch`` and ``pytorch_lightning``)."""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from recording import FileRecordingLogger, RecordingLogger
from torch.utils.data import DataLoader, TensorDataset

import metricsbuf.integrations.lightning
import metricsbuf.integrations.pytorch_lightning

# (the Lightning package, our module for it)
FLAVOURS = {
    "lightning": ("lightning.pytorch", metricsbuf.integrations.lightning),
    "pytorch_lightning": ("pytorch_lightning", metricsbuf.integrations.pytorch_lightning),
}


@pytest.fixture(params=sorted(FLAVOURS))
def flavour(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    package, adapter = FLAVOURS[request.param]
    return importlib.import_module(package), adapter


def define_module_class(pl: ModuleType) -> type[Any]:
    class TinyRegression(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(
            self,
            lr: float = 0.05,
            hidden: int = 3,
            fail_at_step: int | None = None,
            sigterm_at_step: int | None = None,
        ) -> None:
            super().__init__()
            self.save_hyperparameters(ignore=["fail_at_step", "sigterm_at_step"])
            self.fail_at_step = fail_at_step
            self.sigterm_at_step = sigterm_at_step
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Linear(hidden, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.global_step == self.fail_at_step:
                raise RuntimeError("boom")
            if self.global_step == self.sigterm_at_step:
                os.kill(os.getpid(), signal.SIGTERM)  # as SageMaker does when a job is stopped
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    # A module-level name, so that ddp_spawn can pickle the model for its processes.
    name = f"TinyRegression_{pl.__name__.replace('.', '_')}"
    TinyRegression.__name__ = TinyRegression.__qualname__ = name
    globals()[name] = TinyRegression
    return TinyRegression


MODULE_CLASSES = {
    package: define_module_class(importlib.import_module(package)) for package, _ in FLAVOURS.values()
}


def make_module(pl: ModuleType, **options: Any) -> Any:
    torch.manual_seed(0)
    return MODULE_CLASSES[pl.__name__](**options)


def loader(rows: int = 32, seed: int = 0) -> DataLoader[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)


def make_trainer(pl: ModuleType, logger: Any, tmp_path: Path, **options: Any) -> Any:
    settings: dict[str, Any] = {
        "max_steps": 6,
        "log_every_n_steps": 2,
        "val_check_interval": 3,
        "limit_val_batches": 2,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(tmp_path),
    }
    settings.update(options)
    return pl.Trainer(logger=logger, **settings)


def test_fit_logs_what_lightning_hands_over(
    flavour: tuple[ModuleType, ModuleType], tmp_path: Path, metrics_logger: RecordingLogger
) -> None:
    pl, adapter = flavour
    logger = adapter.MetricsBufLogger(logger=metrics_logger)
    make_trainer(pl, logger, tmp_path).fit(make_module(pl), loader(), loader(8, seed=1))

    names = metrics_logger.names()
    assert {"train_loss_step", "val_loss", "epoch"} <= names
    assert metrics_logger.steps("train_loss_step") == [1, 3, 5]  # Lightning's step at log_every_n_steps
    assert len(metrics_logger.steps("val_loss")) == 2  # val_check_interval=3 over 6 steps
    assert metrics_logger.threads == {threading.main_thread().name}
    # Hyperparameters are kept, never sent.
    assert logger.hyperparams == {"lr": 0.05, "hidden": 3}
    assert not names & {"lr", "hidden"}
    # finalize flushed the caller's logger and left it open.
    assert metrics_logger.calls[-1] == "flush" and not metrics_logger.closed
    assert (logger.name, logger.version) == ("frameworks-test", "")


def test_builds_its_logger_per_run_and_closes_it_at_finalize(
    flavour: tuple[ModuleType, ModuleType],
    tmp_path: Path,
    sync_metrics_logger_class: type[RecordingLogger],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pl, adapter = flavour
    built = sync_metrics_logger_class.built
    caplog.set_level(logging.INFO, logger="metricsbuf")
    logger = adapter.MetricsBufLogger("my-run-0042", prefix="fold1", flush_interval=0.5)
    trainer = make_trainer(pl, logger, tmp_path)
    model = make_module(pl)
    assert built == []

    trainer.fit(model, loader(), loader(8, seed=1))
    assert len(built) == 1 and built[0].closed
    assert built[0].options == {"flush_interval": 0.5}
    assert {"fold1-train_loss_step", "fold1-val_loss", "fold1-epoch"} <= built[0].names()
    assert any("hyperparameters" in r.getMessage() and "'lr': 0.05" in r.getMessage() for r in caplog.records)

    # Lightning finalizes after test() too: a new logger for that run, closed at its end.
    trainer.test(model, loader(8, seed=2))
    assert len(built) == 2 and built[1].closed
    assert "fold1-test_loss" in built[1].names()


def test_an_exception_in_training_still_closes_the_logger(
    flavour: tuple[ModuleType, ModuleType], tmp_path: Path, sync_metrics_logger_class: type[RecordingLogger]
) -> None:
    pl, adapter = flavour
    built = sync_metrics_logger_class.built
    trainer = make_trainer(pl, adapter.MetricsBufLogger(), tmp_path, val_check_interval=None)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(make_module(pl, fail_at_step=4), loader())
    assert len(built) == 1
    assert built[0].closed  # Lightning called finalize("failed")
    assert built[0].steps("train_loss_step") == [1, 3]


def test_sigterm_during_fit_still_closes_the_logger(
    flavour: tuple[ModuleType, ModuleType], tmp_path: Path, sync_metrics_logger_class: type[RecordingLogger]
) -> None:
    """Lightning catches SIGTERM during fit, stops at the next batch and finalizes its loggers."""
    pl, adapter = flavour
    built = sync_metrics_logger_class.built
    trainer = make_trainer(pl, adapter.MetricsBufLogger(), tmp_path, val_check_interval=None)
    with pytest.raises(pl.utilities.exceptions.SIGTERMException):
        trainer.fit(make_module(pl, sigterm_at_step=2), loader())
    assert len(built) == 1 and built[0].closed
    assert built[0].steps("train_loss_step") == [1]  # what was logged before the signal
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Lightning restored the handler


def test_all_ranks_suffixes_the_global_rank(
    flavour: tuple[ModuleType, ModuleType], tmp_path: Path, metrics_logger: RecordingLogger
) -> None:
    pl, adapter = flavour
    logger = adapter.MetricsBufLogger(logger=metrics_logger, all_ranks=True)
    trainer = make_trainer(pl, logger, tmp_path, limit_val_batches=0)
    trainer.fit(make_module(pl), loader())
    assert "train_loss_step[rank=0]" in metrics_logger.names()
    assert all(name.endswith("[rank=0]") for name in metrics_logger.names())


def test_a_logger_it_built_is_not_pickled(
    flavour: tuple[ModuleType, ModuleType], sync_metrics_logger_class: type[RecordingLogger]
) -> None:
    _, adapter = flavour
    logger = adapter.MetricsBufLogger("my-run-0042")
    assert isinstance(logger.experiment, RecordingLogger)  # built on first access
    copy = pickle.loads(pickle.dumps(logger))
    assert len(sync_metrics_logger_class.built) == 1
    assert copy.name == "my-run-0042"
    assert isinstance(copy.experiment, RecordingLogger)  # the copy builds its own
    assert len(sync_metrics_logger_class.built) == 2


def test_two_processes_log_from_rank_zero_or_from_every_rank(tmp_path: Path) -> None:
    """Real ranks: Lightning's ddp_spawn starts two processes (gloo, CPU), each with a copy of
    the loggers, and sets their rank; one logger logs from rank zero, the other from every rank."""
    pl = importlib.import_module("lightning.pytorch")
    adapter = metricsbuf.integrations.lightning
    rank_zero = FileRecordingLogger(tmp_path / "rank_zero.jsonl")
    every_rank = FileRecordingLogger(tmp_path / "every_rank.jsonl")
    loggers = [
        adapter.MetricsBufLogger(logger=rank_zero),
        adapter.MetricsBufLogger(logger=every_rank, all_ranks=True),
    ]
    trainer = make_trainer(
        pl, loggers, tmp_path, strategy="ddp_spawn", devices=2, limit_val_batches=0, max_steps=4
    )
    trainer.fit(make_module(pl), loader())

    assert {name for name, _, _ in rank_zero.read()} == {"train_loss_step", "train_loss_epoch", "epoch"}
    every = {name for name, _, _ in every_rank.read()}
    assert {"train_loss_step[rank=0]", "train_loss_step[rank=1]", "epoch[rank=1]"} <= every
    assert all(name.endswith(("[rank=0]", "[rank=1]")) for name in every)
