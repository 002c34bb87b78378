"""An optional Weights & Biases mirror of the run's metrics, beside TensorBoard (`metrics.wandb`).

Only the driver logs (it owns the metrics); W&B's files go to `<run_dir>/wandb/`. Every metric
is plotted against `env_steps`. WANDB_MODE=offline keeps the run on disk (`wandb sync` later).
"""

from __future__ import annotations

from pathlib import Path


class WandbLogger:
    def __init__(self, run_dir: Path, project: str, entity: str | None = None, name: str | None = None,
                 config: dict | None = None):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("metrics.wandb needs the wandb package: pip install 'mmotif[wandb]'") from None
        self._run = wandb.init(project=project, entity=entity, name=name, dir=str(run_dir), config=config)
        self._run.define_metric("env_steps")
        self._run.define_metric("*", step_metric="env_steps")

    def log(self, step: int, values: dict) -> None:
        self._run.log({**values, "env_steps": int(step)})

    def close(self) -> None:
        import wandb

        self._run.finish()
        wandb.teardown()  # finish() returns before W&B's service has written everything to disk


def wandb_logger(cfg) -> WandbLogger | None:
    """The logger a run config asks for, or None (the default: `metrics.wandb: false`)."""
    m = cfg.metrics
    if not m.wandb:
        return None
    return WandbLogger(Path(cfg.paths.run_dir), m.wandb_project, m.wandb_entity, name=cfg.name,
                       config=cfg.model_dump(mode="json"))
