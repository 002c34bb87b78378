"""The optional Weights & Biases mirror, offline (no account, no network)."""

from __future__ import annotations

import pytest

pytest.importorskip("wandb")

from mmotif.config import load_config  # noqa: E402
from mmotif.runtime.metrics import MetricsSink  # noqa: E402
from mmotif.runtime.wandb_logger import wandb_logger  # noqa: E402


def test_off_by_default():
    assert wandb_logger(load_config(preset_name="local")) is None


def test_metrics_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(preset_name="local", sets=["metrics.wandb=true", f"paths.run_dir={tmp_path}"])
    sink = MetricsSink(tmp_path, use_ray=False, use_tensorboard=False, wandb=wandb_logger(cfg))
    for step in (100, 200, 300):
        sink.record(step, {"env_steps_per_second": 1000.0 + step, "learner_loss/loss": 0.5, "note": "text"})
    sink.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("*.wandb")  # W&B's record log: history rows name their keys
    data = log.read_bytes()
    assert data.count(b"env_steps_per_second") >= 3 and b"learner_loss/loss" in data
    assert b"note" not in data  # text values are not metrics
