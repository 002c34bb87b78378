"""The random yardstick: competence rates (`mmotif.skills.competence`) of uniform-random
actions under the run's own policy over skills and env settings.

    random_baseline(cfg)          cached per config: <cache>/baselines/<key>.json
    compute_random_baseline(cfg)  the measurement itself (20,000 env steps: a few seconds)

(The Ray task that runs the measurement beside the actors is `runtime.shells.remote_random_baseline`.)

<cache> is `paths.model_cache`, else $MMOTIF_CACHE, else ~/.cache/mmotif. The key hashes
the env section (caption sampling left out: it does not touch the game), the skills
section, the text of the training policy (a file's, or the built-in parts'), the event
definitions and the measurement's size (steps, envs, seed). NetHack games are not seeded,
so a baseline is one sample of the random policy; the cache keeps it fixed per config.

`rates`: per skill that the schedule activated in the random games (a random Monk often
dies before the first skill ends, so some skills may never act); `rates_any_skill`: the
same yardstick events over all random steps, whatever skill was active (random actions do
not depend on it), the reference for skills `rates` lacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from mmotif.config import RunConfig
from mmotif.nethack import actions as A
from mmotif.skills.competence import EVENTS, CompetenceTally, definitions_fingerprint

BASELINE_STEPS = 20_000
BASELINE_ENVS = 16
FORMAT_VERSION = 1  # bump when the measurement itself changes
CACHE_ENV = "MMOTIF_CACHE"


def baseline_dir(cfg: RunConfig) -> Path:
    if cfg.paths.model_cache is not None:
        root = Path(cfg.paths.model_cache).expanduser()
    else:
        env = os.environ.get(CACHE_ENV)
        root = Path(env).expanduser() if env else Path.home() / ".cache" / "mmotif"
    return root / "baselines"


def policy_text(cfg: RunConfig) -> str:
    """The source the env's policy over skills is built from."""
    source = cfg.env.training_policy
    if cfg.env.training_policy_code is not None:
        return cfg.env.training_policy_code
    if source.startswith("builtin:"):
        from mmotif.skills.code_policy import BUILTIN_DIR

        return source + "".join(p.read_text() for p in sorted(BUILTIN_DIR.glob("*.py")))
    path = Path(source)
    return path.read_text() if path.is_file() else source


def baseline_key(cfg: RunConfig, steps: int = BASELINE_STEPS, num_envs: int = BASELINE_ENVS,
                 seed: int = 0) -> str:
    env = cfg.env.model_dump(mode="json")
    for unused in ("caption_rate", "caption_gap", "training_policy_code"):  # the code is in "policy"
        env.pop(unused, None)
    data = {
        "format": FORMAT_VERSION, "env": env, "skills": [s.model_dump(mode="json") for s in cfg.skills],
        "policy": policy_text(cfg), "events": definitions_fingerprint(),
        "steps": steps, "num_envs": num_envs, "seed": seed,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]


def compute_random_baseline(cfg: RunConfig, steps: int = BASELINE_STEPS, num_envs: int = BASELINE_ENVS,
                            seed: int = 0) -> dict:
    """`steps` env steps of uniform-random actions in `make_vector_env(cfg, num_envs, seed)`.
    The games still running at the end count too (their steps so far)."""
    from mmotif.skills.build import make_vector_env

    quiet = cfg.model_copy(deep=True)
    quiet.env.caption_rate = 0.0  # captions are not needed here (and never touch the game)
    venv = make_vector_env(quiet, num_envs, seed)
    rng = np.random.default_rng(seed)
    tally = CompetenceTally()
    rounds = max(1, steps // num_envs)
    finished = 0
    t0 = time.perf_counter()
    try:
        venv.reset()
        for _ in range(rounds):
            venv.step(rng.integers(A.NUM_ACTIONS, size=num_envs))
            for episode in venv.pop_finished_episodes():
                tally.add_episode(episode)
                finished += 1
        for env in venv.envs:
            tally.add_episode(env.episode_summary(truncated=True))
    finally:
        venv.close()
    return {
        "key": baseline_key(cfg, steps, num_envs, seed),
        "policy": "uniform random actions", "training_policy": cfg.env.training_policy,
        "steps": rounds * num_envs, "num_envs": num_envs, "seed": seed,
        "episodes_finished": finished, "seconds": round(time.perf_counter() - t0, 2),
        "rates": tally.rates(), "rates_all_events": tally.rates(yardstick=False),
        "rates_any_skill": tally.pooled_rates(s.name for s in cfg.skills),
        **tally.to_dict(),
        "events": {e.name: e.description for e in EVENTS},
    }


def load_cached(cfg: RunConfig, steps: int = BASELINE_STEPS, num_envs: int = BASELINE_ENVS,
                seed: int = 0) -> dict | None:
    path = baseline_dir(cfg) / f"{baseline_key(cfg, steps, num_envs, seed)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_cached(cfg: RunConfig, result: dict) -> Path:
    folder = baseline_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result['key']}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: a concurrent reader sees the old file or the new one
    return path


def random_baseline(cfg: RunConfig, steps: int = BASELINE_STEPS, num_envs: int = BASELINE_ENVS,
                    seed: int = 0) -> dict:
    """The random baseline of this config, from the cache or measured (and cached);
    `cached` in the result says which."""
    found = load_cached(cfg, steps, num_envs, seed)
    if found is not None:
        return {**found, "cached": True}
    result = compute_random_baseline(cfg, steps, num_envs, seed)
    save_cached(cfg, result)
    return {**result, "cached": False}
