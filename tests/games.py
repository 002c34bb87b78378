"""Real NetHack games for tests: captions of uniformly random play under the local preset."""

from __future__ import annotations

import numpy as np

from mmotif.config import load_config
from mmotif.contract import Caption
from mmotif.nethack import actions as A
from mmotif.skills.build import make_vector_env


def random_play_captions(steps: int, *, envs: int = 4, seed: int = 11, caption_rate: float = 0.05,
                         caption_gap: int = 20) -> list[Caption]:
    """Captions of `envs` games stepped `steps` times with random actions (NetHack itself is
    not seeded: the set varies a little between calls)."""
    cfg = load_config(preset_name="local",
                      overrides={"env": {"caption_rate": caption_rate, "caption_gap": caption_gap}})
    venv = make_vector_env(cfg, envs, seed=seed)
    venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        venv.step(rng.integers(A.NUM_ACTIONS, size=envs))
    captions = venv.pop_captions()
    venv.close()
    return captions
