"""GPU check for a lent CUDA machine: torch and mmotif's core only (no Ray, vLLM or NLE).

Prints one JSON object with

- `match`: one learner step of the `cluster` network on the same batch, on CUDA and on the
  CPU, from the same initial weights: the step's stats and the weight updates must agree
  (float32, TF32 off, so that only summation order differs). `match.ok` is the verdict.
- `learner`: samples/s of `Learner.train` on CUDA at the cluster batch (T x B = 32 x 128 =
  4,096 samples by default), float32 and with the config's bf16 autocast; each call includes
  the host-to-device copy of the numpy batch, as the learner actor receives it.
- `reward_scoring`: rows/s of `RewardModelSet.score` on CUDA (five skills' reward models),
  with and without the deduplication of repeated inputs.
- `device`: the GPU, torch's CUDA version, the driver, and `models.device.cuda_diagnosis`.

The batch is synthetic (no NLE here): observation shapes from `contract.observation_spec`,
glyph crops drawn from a small alphabet and messages from a pool of everyday NetHack lines,
so that the encoders' deduplication sees realistic repetition.

Usage (from the repository root, on the GPU machine):
    python bench/gpu_check.py [--seconds 20] [--batch 4096]
    python bench/gpu_check.py --device cpu --batch 256 --seconds 1     # a dry run anywhere
Exit status: 0 when the match holds, 1 when it does not, 2 when CUDA is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from mmotif.annotators.examples import synthetic_moments  # noqa: E402
from mmotif.config import load_config  # noqa: E402
from mmotif.contract import TrajectoryBatch, encode_reward_input, observation_spec  # noqa: E402
from mmotif.learners.learner import Learner  # noqa: E402
from mmotif.models.build import make_network  # noqa: E402
from mmotif.models.device import cuda_diagnosis, nvidia_driver_version  # noqa: E402
from mmotif.nethack.actions import NUM_ACTIONS  # noqa: E402
from mmotif.rewards.model import RewardModel  # noqa: E402
from mmotif.rewards.stats import stats_from_scores  # noqa: E402
from mmotif.rewards.versions import RewardModelSet, SkillReward  # noqa: E402

# Tolerances of the CUDA-vs-CPU step (float32, TF32 off): stats within this relative error;
# each tensor's weight update within this share of its norm.
STAT_RTOL = 1e-3
UPDATE_RTOL = 1e-2
MATCHED_STATS = ("loss", "policy_loss", "value_loss", "entropy", "vs_mean", "intrinsic_reward_mean")


def cluster_config(device: str, batch: int, run_dir: str, bf16: bool):
    cfg = load_config(preset_name="cluster", overrides={
        "learner": {"device": device, "batch_size": batch, "bf16_autocast": bf16},
        "cluster": {"address": "local"},
        "paths": {"run_dir": run_dir},
    })
    if batch % cfg.learner.rollout:
        raise SystemExit(f"--batch {batch} is not a multiple of the rollout length {cfg.learner.rollout}")
    return cfg


def synthetic_batch(cfg, seed: int = 0) -> TrajectoryBatch:
    """T steps of B envs with the run's observation shapes and plausible contents."""
    rng = np.random.default_rng(seed)
    T, B, k = cfg.learner.rollout, cfg.learner.batch_size // cfg.learner.rollout, len(cfg.skills)
    spec = observation_spec(k)
    glyphs = np.frombuffer(b" .#|-+@<>$dFx%", np.uint8)
    moments = synthetic_moments(64, seed)
    obs = {}
    for name, (shape, dtype) in spec.items():
        full = (T + 1, B, *shape)
        if name == "crop_chars":
            obs[name] = rng.choice(glyphs, size=full).astype(dtype)
        elif name == "crop_colors":
            obs[name] = rng.integers(0, 16, size=full).astype(dtype)
        elif name == "blstats":
            obs[name] = rng.normal(0, 1, size=full).astype(dtype)
        elif name == "skill":
            obs[name] = np.repeat(rng.integers(0, k, size=(1, B)), T + 1, axis=0).astype(dtype)
        elif name == "msg_count":
            obs[name] = rng.integers(1, 20, size=full).astype(dtype)
        else:  # message, diffstats: filled from the moments below
            obs[name] = np.zeros(full, dtype)
    for t in range(T + 1):
        for b in range(B):
            m = moments[rng.integers(len(moments))]
            encode_reward_input(m.message, m.depth[1] - m.depth[0], out=(obs["message"][t, b], obs["diffstats"][t, b]))
    core = make_network(cfg).initial_state(B).numpy()
    batch = TrajectoryBatch.allocate(T, {key: v[0] for key, v in obs.items()},
                                     core_state=core, policy_version=0, actor_id=0)
    batch.obs = obs
    batch.actions[:] = rng.integers(0, NUM_ACTIONS, size=(T, B))
    batch.logp[:] = -np.log(NUM_ACTIONS)
    batch.values[:] = rng.normal(0, 0.1, size=(T, B))
    batch.dones[:] = rng.random((T, B)) < 0.01
    batch.next_message[:] = obs["message"][1:]
    batch.next_diffstats[:] = obs["diffstats"][1:]
    batch.next_msg_count[:] = obs["msg_count"][1:]
    return batch


def random_reward_models(skills, device: str, seed: int = 0) -> RewardModelSet:
    """Randomly initialised reward models with stats from their own scores of the moments."""
    entries = []
    captions = [m.caption() for m in synthetic_moments(256, seed)]
    for i, name in enumerate(skills):
        torch.manual_seed(seed + i)
        model = RewardModel().eval()
        rows = [encode_reward_input(c.message, c.depth_change) for c in captions]
        with torch.no_grad():
            scores = model(torch.from_numpy(np.stack([r[0] for r in rows])),
                           torch.from_numpy(np.stack([r[1] for r in rows])))
        entries.append(SkillReward(name, model.state_dict(), stats_from_scores(scores, 0.85)))
    return RewardModelSet(entries, version=1, device=device)


def make_learner(cfg) -> Learner:
    learner = Learner(cfg)
    learner.set_reward_models(random_reward_models([s.name for s in cfg.skills], str(learner.device)))
    return learner


def compare_steps(a: Learner, b: Learner, batch: TrajectoryBatch) -> dict:
    """One `train` step of each learner (same initial weights) on `batch`: do they agree?"""
    before = {n: p.detach().cpu().clone() for n, p in a.net.named_parameters()}
    stats_a, stats_b = a.train([batch]), b.train([batch])
    stat_errors = {key: abs(stats_a[key] - stats_b[key]) / max(1.0, abs(stats_b[key]))
                   for key in MATCHED_STATS if key in stats_a and key in stats_b}
    worst_update, worst_name = 0.0, ""
    params_b = dict(b.net.named_parameters())
    for name, p in a.net.named_parameters():
        step_a = p.detach().cpu() - before[name]
        step_b = params_b[name].detach().cpu() - before[name]
        err = float((step_a - step_b).norm() / max(float(step_b.norm()), 1e-12))
        if float(step_b.norm()) > 1e-9 and err > worst_update:
            worst_update, worst_name = err, name
    ok = all(e <= STAT_RTOL for e in stat_errors.values()) and worst_update <= UPDATE_RTOL
    return {"ok": ok, "stat_rel_errors": {k: float(f"{v:.3g}") for k, v in stat_errors.items()},
            "worst_update_rel_error": float(f"{worst_update:.3g}"), "worst_update_tensor": worst_name,
            "tolerances": {"stats": STAT_RTOL, "updates": UPDATE_RTOL}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def learner_rate(cfg, batch: TrajectoryBatch, seconds: float) -> dict:
    learner = make_learner(cfg)
    learner.train([batch])  # warm-up: kernels, allocator, cuDNN plans
    _sync(learner.device)
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        learner.train([batch])
        n += 1
    _sync(learner.device)
    wall = time.perf_counter() - start
    return {"samples_per_s": round(n * batch.env_steps / wall, 1), "steps": n,
            "ms_per_step": round(1e3 * wall / n, 2), "bf16_autocast": bool(learner.hp.bf16_autocast)}


def scoring_rate(cfg, batch: TrajectoryBatch, device: str, seconds: float) -> dict:
    rewards = random_reward_models([s.name for s in cfg.skills], device)
    message = torch.from_numpy(batch.next_message).to(device)
    diffstats = torch.from_numpy(batch.next_diffstats).to(device)
    skill = torch.from_numpy(batch.obs["skill"][:-1]).to(device)
    out = {}
    for dedup in (True, False):
        rewards.score(message, diffstats, skill, dedup=dedup)
        _sync(torch.device(device))
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < seconds / 2:
            rewards.score(message, diffstats, skill, dedup=dedup)
            n += 1
        _sync(torch.device(device))
        out["dedup" if dedup else "every_row"] = round(n * message.shape[0] * message.shape[1] /
                                                       (time.perf_counter() - start), 1)
    return {"rows_per_s": out, "rows_per_call": int(message.shape[0] * message.shape[1])}


def device_facts(device: str) -> dict:
    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
             "driver": nvidia_driver_version(), "diagnosis": cuda_diagnosis()}
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run)")
    ap.add_argument("--batch", type=int, default=4096, help="samples per learner step (T x B)")
    ap.add_argument("--seconds", type=float, default=20.0, help="timing per measurement")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA is not available", **device_facts(args.device)}))
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the match check compares float32 steps
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as run_dir:
        fp32 = cluster_config(args.device, args.batch, run_dir, bf16=False)
        batch = synthetic_batch(fp32)
        reference = cluster_config("cpu", args.batch, run_dir, bf16=False)
        result = {"batch_T_B": list(batch.actions.shape), "network": fp32.learner.network.size,
                  "device": device_facts(args.device),
                  "match": compare_steps(make_learner(fp32), make_learner(reference), batch),
                  "learner": {"fp32": learner_rate(fp32, batch, args.seconds)}}
        torch.backends.cuda.matmul.allow_tf32 = True  # as a run has them (cuDNN's default)
        torch.backends.cudnn.allow_tf32 = True
        if args.device.startswith("cuda"):
            bf16 = cluster_config(args.device, args.batch, run_dir, bf16=True)
            result["learner"]["bf16_autocast"] = learner_rate(bf16, batch, args.seconds)
        result["reward_scoring"] = scoring_rate(fp32, batch, args.device, args.seconds)
    print(json.dumps(result))
    return 0 if result["match"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
