"""RLlib APPO (new API stack) against mmotif on the same skill env, network size and cores.

RLlib 2.60 pins gymnasium 1.2.2 and nle 1.3.0 pins 1.2.0, so this runs in its own
virtualenv (see bench/README.md; the NLE env itself works with 1.2.2):

    python3 -m venv .venv-rllib
    .venv-rllib/bin/pip install torch==2.13.0 'ray[default,rllib]==2.60.0'
    .venv-rllib/bin/pip install --no-deps nle==1.3.0
    .venv-rllib/bin/pip install torch==2.13.0 pybind11 RestrictedPython
    .venv-rllib/bin/pip install --no-deps -e .
    .venv-rllib/bin/python bench/rllib_peer.py

What runs, one after the other, each for `--seconds` of training on all of this machine's
cores (`ray.init(num_cpus=cores)`):

1. RLlib APPO: `make_skill_env` (the `local` preset's skill env: code policy over skills,
   all features) wrapped as a gymnasium env with one flat float32 Box observation: the
   12x12 crop chars and colours (/255), blstats with the skill one-hot, and the 256 message
   chars (/255): the four inputs mmotif's network reads. 28 discrete actions.
   Same layout as mmotif's local run: 1 env runner with `--envs` envs (sync vector env),
   1 learner actor (`num_learners=1`, 1 CPU), rollout fragments of 32 steps, 512 samples
   per learner batch, each batch trained once (`circular_buffer_iterations_per_batch=1`).
   Network: RLlib's default model config, MLP [192, 128] (ReLU) -> LSTM 128 -> policy and
   value heads (`vf_share_layers`), `max_seq_len` 32: ~0.27M parameters, like mmotif's
   local network (0.28M: crop conv net + blstats MLP + message char-CNN -> GRU 128).
   RLlib's MLP costs far fewer FLOPs per sample than mmotif's conv/char-CNN encoders at
   the same parameter count, so the comparison favours RLlib. `--model mlp` drops the
   LSTM (MLP [256, 256], ~0.22M), the cheapest model RLlib has here.
   Rates are read from `algo.train()` results (env steps sampled by the env runners and
   env steps trained by the learner, lifetime counters), after `--warmup` seconds.
2. mmotif: `bench/train_throughput.py --only e2e` with the same seconds and envs, run by
   the main virtualenv's python (`--mmotif-python`, default `.venv/bin/python`).

Prints JSON: both rates, the ratio mmotif / RLlib (the target is >= 10), and the same per
CPU-second each run's process tree actually used (`steady_cpu`, sampled from /proc: on a
machine shared with other users the two runs may get different shares of the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VENV_HELP = f"""RLlib is not importable from {sys.executable}.
Run this script with .venv-rllib/bin/python; create it with (in {ROOT}):
    python3 -m venv .venv-rllib
    .venv-rllib/bin/pip install torch==2.13.0 'ray[default,rllib]==2.60.0'
    .venv-rllib/bin/pip install --no-deps nle==1.3.0
    .venv-rllib/bin/pip install torch==2.13.0 pybind11 RestrictedPython
    .venv-rllib/bin/pip install --no-deps -e .
(RLlib 2.60 pins gymnasium==1.2.2, nle 1.3.0 pins 1.2.0: they cannot share mmotif's .venv)"""

try:
    import gymnasium as gym
    import ray
    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
except ImportError as err:  # a clear message instead of a traceback
    print(f"{VENV_HELP}\n(import error: {err})", file=sys.stderr)
    sys.exit(2)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import TreeCpu  # noqa: E402  (stdlib + numpy only)

FLAT_KEYS = ("crop_chars", "crop_colors", "blstats", "message")  # what mmotif's network reads


class FlatSkillEnv(gym.Env):
    """mmotif's skill env (local preset) with one flat float32 observation vector."""

    def __init__(self, env_config=None):
        from mmotif.config import preset
        from mmotif.skills.build import make_skill_env

        env_config = env_config or {}
        worker = getattr(env_config, "worker_index", 0)
        vector = getattr(env_config, "vector_index", 0)
        seed = int(env_config.get("seed", 0)) * 1_000_003 + worker * 10_007 + vector
        self.env = make_skill_env(preset("local"), seed)
        spaces = self.env.observation_space.spaces
        size = sum(int(np.prod(spaces[k].shape)) for k in FLAT_KEYS)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.action_space = self.env.action_space

    @staticmethod
    def flatten(obs: dict) -> np.ndarray:
        return np.concatenate([
            obs["crop_chars"].reshape(-1) / np.float32(255.0),
            obs["crop_colors"].reshape(-1) / np.float32(255.0),
            obs["blstats"].reshape(-1),
            obs["message"].reshape(-1) / np.float32(255.0),
        ]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed)
        return self.flatten(obs), {}

    def step(self, action):
        obs, reward, terminated, truncated, _ = self.env.step(int(action))
        return self.flatten(obs), reward, terminated, truncated, {}

    def close(self):
        self.env.close()


def model_config(model: str) -> DefaultModelConfig:
    if model == "lstm":
        return DefaultModelConfig(fcnet_hiddens=[192, 128], fcnet_activation="relu", use_lstm=True,
                                  lstm_cell_size=128, max_seq_len=32, vf_share_layers=True)
    return DefaultModelConfig(fcnet_hiddens=[256, 256], fcnet_activation="relu", vf_share_layers=True)


def _get(d: dict, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def run_rllib(seconds: float, envs: int, model: str, cores: int, warmup: float, seed: int = 0) -> dict:
    from ray.tune.registry import register_env

    register_env("mmotif-skill-flat", lambda cfg: FlatSkillEnv(cfg))
    cpu = TreeCpu().__enter__()  # Ray's processes are children of this one
    ray.init(num_cpus=cores, logging_level="ERROR", log_to_driver=False)
    try:
        config = (
            APPOConfig()
            .environment("mmotif-skill-flat", env_config={"seed": seed})
            .env_runners(num_env_runners=1, num_envs_per_env_runner=envs, num_cpus_per_env_runner=1,
                         rollout_fragment_length=32)
            .learners(num_learners=1, num_cpus_per_learner=1)
            .training(train_batch_size_per_learner=512, lr=3e-4, circular_buffer_iterations_per_batch=1)
            .rl_module(model_config=model_config(model))
            .reporting(min_time_s_per_iteration=5)
            .debugging(seed=seed, log_level="ERROR")
        )
        t_build = time.time()
        algo = config.build_algo()
        build_s = time.time() - t_build
        module = algo.get_module()
        params = sum(p.numel() for p in module.parameters())
        rows = []
        t0 = time.time()
        while time.time() - t0 < seconds:
            result = algo.train()
            rows.append((time.time(), _get(result, "env_runners", "num_env_steps_sampled_lifetime", default=0),
                         _get(result, "learners", "__all_modules__", "num_env_steps_trained_lifetime", default=0)))
        algo.stop()
    finally:
        ray.shutdown()
        cpu.__exit__(None, None, None)
    steady = [r for r in rows if r[0] >= t0 + warmup]
    if len(steady) < 2:  # too short for the warm-up: the last two iterations, else all
        steady = rows[-2:] if len(rows) >= 2 else [(t0, 0, 0)] + rows
    (ta, sa, ra), (tb, sb, rb) = steady[0], steady[-1]
    dt = max(tb - ta, 1e-9)
    steady_cpu = cpu.window(ta, tb)
    trained = (rb - ra) / dt
    return {
        "steady_cpu": steady_cpu,
        "env_steps_trained_per_cpu_s": round(trained / steady_cpu["cores_used"], 1) if steady_cpu else None,
        "steady_env_steps_sampled_per_s": round((sb - sa) / dt, 1),
        "steady_env_steps_trained_per_s": round((rb - ra) / dt, 1),
        "steady_seconds": round(dt, 1),
        "whole_run_env_steps_trained_per_s": round(rows[-1][2] / max(rows[-1][0] - t0, 1e-9), 1) if rows else None,
        "iterations": len(rows),
        "env_steps_sampled": int(rows[-1][1]) if rows else 0,
        "env_steps_trained": int(rows[-1][2]) if rows else 0,
        "build_s": round(build_s, 1),
        "model": model,
        "network_parameters": params,
        "env_runners": 1, "envs_per_env_runner": envs, "learners": 1,
    }


def run_mmotif(python: str, seconds: float, envs: int, network: str, warmup: float) -> dict:
    cmd = [python, str(ROOT / "bench" / "train_throughput.py"), "--only", "e2e", "--seconds", str(seconds),
           "--envs", str(envs), "--network", network, "--warmup", str(warmup)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"mmotif end-to-end run failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(proc.stdout)["end_to_end"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="training time of each system")
    p.add_argument("--envs", type=int, default=16, help="envs per env runner / rollout actor")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds of each run not counted")
    p.add_argument("--model", choices=("lstm", "mlp"), default="lstm")
    p.add_argument("--network", choices=("local", "paper"), default="local", help="mmotif's network")
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--mmotif-python", default=str(ROOT / ".venv" / "bin" / "python"),
                   help="python of mmotif's own virtualenv (for its end-to-end run)")
    p.add_argument("--skip-mmotif", action="store_true")
    args = p.parse_args()

    # RLlib's and Ray's chatter to stderr: stdout carries only the JSON
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        rllib = run_rllib(args.seconds, args.envs, args.model, args.cores, args.warmup)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    out = {"seconds": args.seconds, "envs": args.envs, "cores": args.cores, "rllib_appo": rllib}
    if not args.skip_mmotif:
        python = args.mmotif_python if Path(args.mmotif_python).exists() else sys.executable
        mm = run_mmotif(python, args.seconds, args.envs, args.network, args.warmup)
        out["mmotif"] = mm
        ours, theirs = mm["steady_env_steps_per_s"], rllib["steady_env_steps_trained_per_s"]
        out["ratio_mmotif_to_rllib"] = round(ours / theirs, 2) if ours and theirs else None
        out["target_ratio"] = 10
        # per CPU-second each run actually got: less sensitive to other users of the machine
        a, b = mm.get("env_steps_per_cpu_s"), rllib.get("env_steps_trained_per_cpu_s")
        out["ratio_per_cpu_s"] = round(a / b, 2) if a and b else None
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
