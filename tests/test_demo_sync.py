"""``python -m metricsbuf demo --sync``: the synchronous path end to end, on the embedded endpoint."""

from __future__ import annotations

import re
import threading

import pytest

from metricsbuf.__main__ import main


def test_the_sync_demo_runs_end_to_end_with_two_threads_logging(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "demo")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "demo")
    before = set(threading.enumerate())
    assert main(["demo", "--sync", "--steps", "60", "--trial-component", "metricsbuf-sync-demo"]) == 0
    out = capsys.readouterr().out
    assert "SyncMetricsLogger" in out
    counts = dict(re.findall(r"^  ([a-z_:]+) +(\d+) ", out, flags=re.MULTILINE))
    for name in ("train:loss", "train:accuracy", "learning_rate", "grad_norm"):
        assert counts[name] == "60"  # one point per step, each stored once
    loader_points = int(counts["data:queue_depth"])  # the second thread's, however many it logged
    total = 4 * 60 + loader_points
    assert f"OK: {total} points stored, {total} delivered, 0 failed" in out
    assert re.search(r"spent [0-9.]+ us per point inside log\(\)", out)
    # the logger's thread and the demo's own thread have ended
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith(("metricsbuf", "data-"))]
