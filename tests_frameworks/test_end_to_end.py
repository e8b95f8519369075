"""Each adapter with the real SyncMetricsLogger it builds, through the in-memory fake service.

The other tests here hand the adapters a recording test double; these run the whole path: a
real tiny fit, the adapter building its own ``SyncMetricsLogger`` from options (its client the
public ``metricsbuf.testing.InMemoryMetricsClient``, which applies the service's rules), and
what the service stored at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_huggingface as hf
import test_keras as kr
import test_lightning as lt

from metricsbuf.integrations.huggingface import MetricsBufCallback as HuggingFaceCallback
from metricsbuf.integrations.keras import MetricsBufCallback as KerasCallback
from metricsbuf.integrations.lightning import MetricsBufLogger
from metricsbuf.testing import InMemoryMetricsClient


def stored(client: InMemoryMetricsClient) -> dict[str, list[int | None]]:
    series: dict[str, list[int | None]] = {}
    for point in client.points:
        series.setdefault(point.name, []).append(point.step)
    return series


def test_hugging_face_trainer_end_to_end(tmp_path: Path) -> None:
    client = InMemoryMetricsClient(conflict_error_rate=0.1, seed=3)
    trainer = hf.make_trainer(tmp_path, HuggingFaceCallback("hf-e2e", client=client, backoff_initial=0.01))
    trainer.train()
    series = stored(client)
    assert {"loss", "learning_rate", "eval_loss"} <= set(series)
    assert sorted(s for s in series["loss"] if s is not None) == [2, 4, 6][: len(series["loss"])]
    assert not client.duplicates()
    assert {p.trial_component for p in client.points} == {"hf-e2e"}


@pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")
def test_lightning_trainer_end_to_end(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    client = InMemoryMetricsClient(internal_error_rate=0.1, seed=4)
    logger = MetricsBufLogger("lightning-e2e", client=client, backoff_initial=0.01)
    lt.make_trainer(pl, logger, tmp_path).fit(lt.make_module(pl), lt.loader(), lt.loader(8, seed=1))
    series = stored(client)
    assert series, "nothing was stored"
    assert all(name for name in series)
    assert not client.duplicates()
    assert {p.trial_component for p in client.points} == {"lightning-e2e"}


def test_keras_fit_end_to_end() -> None:
    client = InMemoryMetricsClient(seed=5)
    kr.fit(kr.make_model(), KerasCallback("keras-e2e", client=client))
    series = stored(client)
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(series)
    assert series["loss"] == list(range(kr.EPOCHS))
    assert not client.duplicates()
