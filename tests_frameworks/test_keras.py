"""MetricsBufCallback inside real Keras 3 fits (torch backend, set in conftest.py)."""

from __future__ import annotations

import threading
from typing import Any

import keras
import numpy as np
import pytest
from recording import RecordingLogger

from metricsbuf import InvalidMetricError
from metricsbuf.integrations.keras import MetricsBufCallback

EPOCHS = 3
BATCHES_PER_EPOCH = 3  # 24 training rows (of 32, validation_split=0.25) in batches of 8


def data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def make_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["mae"])
    return model


def fit(model: keras.Model, callback: MetricsBufCallback, epochs: int = EPOCHS) -> None:
    x, y = data()
    model.fit(x, y, epochs=epochs, batch_size=8, validation_split=0.25, verbose=0, callbacks=[callback])


def test_epoch_logs_with_keras_names_and_the_epoch_as_step(metrics_logger: RecordingLogger) -> None:
    callback = MetricsBufCallback(logger=metrics_logger)
    assert callback.async_safe  # its batch hook does nothing: Keras may keep batch hooks off the loop
    fit(make_model(), callback)

    assert {"loss", "mae", "val_loss", "val_mae"} <= metrics_logger.names()
    assert not any(name.startswith("batch_") for name in metrics_logger.names())
    for name in ("loss", "val_loss"):
        assert metrics_logger.steps(name) == [0, 1, 2]
    assert metrics_logger.threads == {threading.main_thread().name}
    assert metrics_logger.calls[-1] == "flush" and not metrics_logger.closed


def test_update_freq_batch_adds_batch_points_at_the_optimizers_iteration(
    metrics_logger: RecordingLogger,
) -> None:
    callback = MetricsBufCallback(logger=metrics_logger, update_freq="batch")
    assert not callback.async_safe
    fit(make_model(), callback)

    assert metrics_logger.steps("batch_loss") == list(range(1, EPOCHS * BATCHES_PER_EPOCH + 1))
    assert metrics_logger.steps("loss") == [0, 1, 2]  # the epoch series, apart from the batch one
    assert "batch_val_loss" not in metrics_logger.names()
    # Batch hooks run in order on the training thread.
    assert metrics_logger.threads == {threading.main_thread().name}


def test_update_freq_every_n_batches(metrics_logger: RecordingLogger) -> None:
    fit(make_model(), MetricsBufCallback(logger=metrics_logger, update_freq=2))
    assert metrics_logger.steps("batch_loss") == [2, 4, 6, 8]


def test_builds_its_logger_for_fit_and_for_a_later_evaluate(
    sync_metrics_logger_class: type[RecordingLogger],
) -> None:
    built = sync_metrics_logger_class.built
    callback = MetricsBufCallback("my-run-0042", prefix="keras/", close_timeout=5.0)
    model = make_model()
    assert built == []
    fit(model, callback)
    assert len(built) == 1 and built[0].closed
    assert built[0].options == {"close_timeout": 5.0}
    assert {"keras/loss", "keras/val_loss"} <= built[0].names()

    x, y = data()
    results = model.evaluate(x, y, verbose=0, callbacks=[callback], return_dict=True)
    assert len(built) == 2 and built[1].closed
    test_points = {name: (value, step) for name, value, step in built[1].points}
    assert test_points["keras/test_loss"] == (pytest.approx(results["loss"]), EPOCHS * BATCHES_PER_EPOCH)


def test_rank_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, metrics_logger: RecordingLogger
) -> None:
    monkeypatch.setenv("RANK", "3")
    fit(make_model(), MetricsBufCallback(logger=metrics_logger), epochs=1)
    assert metrics_logger.points == []  # not rank 0

    fit(make_model(), MetricsBufCallback(logger=metrics_logger, all_ranks=True), epochs=1)
    assert {"loss[rank=3]", "val_loss[rank=3]"} <= metrics_logger.names()

    fit(make_model(), MetricsBufCallback(logger=metrics_logger, rank=0), epochs=1)
    assert "loss" in metrics_logger.names()


def test_refuses_bad_options() -> None:
    with pytest.raises(InvalidMetricError, match="update_freq"):
        MetricsBufCallback(logger=RecordingLogger(), update_freq="step")
    with pytest.raises(InvalidMetricError, match="rank"):
        MetricsBufCallback(logger=RecordingLogger(), rank=-1)


def test_after_an_exception_in_fit_the_logger_stays_open(
    sync_metrics_logger_class: type[RecordingLogger],
) -> None:
    """What Keras does (documented in the module): on_train_end only when fit returns normally."""

    def fail(epoch: int, logs: Any) -> None:
        if epoch == 1:
            raise RuntimeError("boom")

    x, y = data()
    callbacks = [MetricsBufCallback(), keras.callbacks.LambdaCallback(on_epoch_end=fail)]
    with pytest.raises(RuntimeError, match="boom"):
        make_model().fit(x, y, epochs=EPOCHS, batch_size=8, verbose=0, callbacks=callbacks)
    [logger] = sync_metrics_logger_class.built
    assert logger.steps("loss") == [0, 1]
    assert not logger.closed  # left to the logger's own exit handling
