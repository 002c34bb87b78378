"""sample-factory 2.x APPO against mmotif (and RLlib) on the same skill env, network layout, cores.

sample-factory 2.1.1 (PyPI) pins gymnasium < 1.0 and numpy < 2, nle 1.3.0 and mmotif pin
gymnasium 1.2.0, so it runs in its own virtualenv (in the repository root):

    python3 -m venv .venv-sf
    .venv-sf/bin/pip install sample-factory torch==2.13.0
    .venv-sf/bin/pip install --no-deps nle==1.3.0
    .venv-sf/bin/pip install RestrictedPython pybind11
    .venv-sf/bin/pip install --no-deps -e .
    .venv-sf/bin/python bench/sf_peer.py

No bridge: nle and mmotif install into that venv with `--no-deps` and mmotif's skill env runs
there unchanged (gymnasium 0.29.1, numpy 1.26.4; `pip check` complains about the gymnasium pin,
nothing else breaks). `env_check` in the JSON measures what that costs: the same vector skill
env (random actions) stepped in this venv and in mmotif's, and the gymnasium wrapper that
sample-factory steps, per env step of CPU.

What runs, back to back in one sitting, each for `--seconds` of training (default order
`mmotif,sf,rllib,mmotif`; the repeat shows the spread):

- **sf**: `sample_factory.train.run_rl` in a child process (its own session, stopped with
  SIGINT after the steady window). Env: `make_skill_env` (the `local` preset's skill env, code
  policy over skills, all features) as a gymnasium env whose observation is the four inputs
  mmotif's network reads (crop chars and colours, blstats with the skill one-hot, message
  chars), uint8 kept as uint8 (`--normalize_input False`). Encoder: mmotif's own layer
  classes at the local sizes (`CropEncoder`, `BlstatsEncoder`, `MessageEncoder`), without
  mmotif's exact shortcuts (distinct rows, encoding caches: `--sf-distinct` turns the
  distinct-row one on for sample-factory too); sample-factory's GRU core (`--rnn_size 128`),
  no decoder MLP, linear policy and value heads: the same layout and parameter count as
  mmotif's local network. Same layout of work as mmotif's local run: 1 rollout worker with
  `--envs` envs (`--worker_num_splits 2`, sample-factory's default double buffering), one
  inference worker, one learner, all on CPU; rollout 32, recurrence 32, batch 512, one epoch,
  one batch per epoch, V-trace on. Rate: the learner's env-step counter that sample-factory's
  own runner prints every 5 s ("Total num frames"; env_frameskip 1, so frames are env steps),
  its timestamps from the log, rows of the first `--warmup` seconds after the first nonzero
  count dropped (mmotif's and RLlib's rule).
- **mmotif**: `bench/train_throughput.py --only e2e` run by mmotif's venv (`--mmotif-python`).
- **rllib**: `bench/rllib_peer.py --skip-mmotif` run by `.venv-rllib` (`--rllib-python`).

Prints ONE JSON object: each run, the rates, the load average before and after, and the
ratios mmotif / sample-factory and mmotif / RLlib (mean of mmotif's runs, and its range).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import TreeCpu, machine_busy, steady_rate  # noqa: E402  (stdlib + numpy only)

ENV_NAME = "mmotif_skill"
NET_KEYS = ("crop_chars", "crop_colors", "blstats", "message")  # what mmotif's network reads
SF_DISTINCT = os.environ.get("MMOTIF_SF_DISTINCT") == "1"  # read again in sample-factory's workers


# ------------------------------------------------------------------ sample-factory parts
def _sf_imports():
    try:
        import gymnasium as gym  # noqa: F401
        import sample_factory  # noqa: F401
    except ImportError as err:
        print(f"sample-factory is not importable from {sys.executable}; run this with .venv-sf/bin/python "
              f"(see this file's docstring for how to build it). ({err})", file=sys.stderr)
        sys.exit(2)


def make_sf_env(full_env_name, cfg=None, env_config=None, render_mode=None):
    import gymnasium as gym

    from mmotif.config import load_config
    from mmotif.skills.build import make_skill_env

    class SfSkillEnv(gym.Env):
        """mmotif's skill env, the network's four inputs as a Dict observation."""

        def __init__(self, seed: int):
            self.env = make_skill_env(load_config(preset_name="local"), seed)
            spaces = self.env.observation_space.spaces
            self.observation_space = gym.spaces.Dict({k: spaces[k] for k in NET_KEYS})
            self.action_space = gym.spaces.Discrete(int(self.env.action_space.n))

        def _obs(self, obs):
            return {k: obs[k] for k in NET_KEYS}

        def reset(self, *, seed=None, options=None):
            obs, _ = self.env.reset(seed=seed)
            return self._obs(obs), {}

        def step(self, action):
            obs, reward, terminated, truncated, _ = self.env.step(int(action))
            return self._obs(obs), float(reward), terminated, truncated, {}

        def close(self):
            self.env.close()

    worker = int(getattr(env_config, "worker_index", 0) or 0) if env_config is not None else 0
    vector = int(getattr(env_config, "vector_index", 0) or 0) if env_config is not None else 0
    return SfSkillEnv(seed=worker * 10_007 + vector)


def make_sf_encoder(cfg, obs_space):
    """mmotif's local encoders (same classes, same sizes) as a sample-factory Encoder."""
    import torch
    from sample_factory.model.encoder import Encoder

    from mmotif.contract import MESSAGE_LEN
    from mmotif.models.message import MessageEncoder
    from mmotif.models.network import BlstatsEncoder, CropEncoder, encode_distinct, local_sizes

    sizes = local_sizes()
    distinct = SF_DISTINCT

    class MmotifLocalEncoder(Encoder):
        def __init__(self, cfg, obs_space):
            super().__init__(cfg)
            crop = tuple(int(x) for x in obs_space["crop_chars"].shape)
            self.crop = crop
            self.crop_encoder = CropEncoder(crop, sizes)
            self.blstats_encoder = BlstatsEncoder(int(obs_space["blstats"].shape[0]), sizes)
            self.message_encoder = MessageEncoder(sizes.message_dim, msg_len=MESSAGE_LEN,
                                                  emb_dim=sizes.message_embed, channels=sizes.message_channels)
            self.out_size = int(self.crop_encoder.out_dim + self.blstats_encoder.out_dim + self.message_encoder.out_dim)

        def _crops(self, chars, colors):
            if not distinct:
                return self.crop_encoder(chars, colors)
            n, cells = chars.shape[0], self.crop[0] * self.crop[1]
            rows = torch.cat([chars.reshape(n, cells), colors.reshape(n, cells)], dim=1)
            return encode_distinct(lambda r: self.crop_encoder(r[:, :cells].view(-1, *self.crop),
                                                               r[:, cells:].view(-1, *self.crop)), rows)

        def forward(self, obs_dict):
            msg = obs_dict["message"]
            return torch.cat([
                self._crops(obs_dict["crop_chars"], obs_dict["crop_colors"]),
                self.blstats_encoder(obs_dict["blstats"].float()),
                encode_distinct(self.message_encoder, msg) if distinct else self.message_encoder(msg),
            ], dim=-1)

        def get_out_size(self) -> int:
            return self.out_size  # a Python int: torch >= 2 rejects numpy ints as GRU sizes

        def type_for_input_tensor(self, input_tensor_name: str):
            return torch.float32 if input_tensor_name == "blstats" else torch.uint8

    return MmotifLocalEncoder(cfg, obs_space)


def patch_sf_vtrace_summaries() -> None:
    """sample-factory 2.1.1 crashes its learner on the first summary with `--with_vtrace True`
    (`_record_summaries` reads `mb.advantages`, which only the GAE path writes). Give it the
    V-trace advantages the loss used; a tensorboard statistic only, no effect on training."""
    from sample_factory.algo.learning.learner import Learner

    if getattr(Learner, "_mmotif_patched", False):
        return
    original = Learner._record_summaries

    def record_summaries(self, var):
        if "advantages" not in var.mb and "adv" in var:
            var.mb["advantages"] = var.adv
        return original(self, var)

    Learner._record_summaries = record_summaries
    Learner._mmotif_patched = True


def register_sf_components():
    from sample_factory.algo.utils.context import global_model_factory
    from sample_factory.envs.env_utils import register_env

    register_env(ENV_NAME, make_sf_env)
    global_model_factory().register_encoder_factory(make_sf_encoder)


def sf_argv(envs: int, train_dir: str, seed: int = 0) -> list[str]:
    return [
        f"--env={ENV_NAME}", "--experiment=sf_peer", f"--train_dir={train_dir}", "--device=cpu",
        "--num_workers=1", f"--num_envs_per_worker={envs}", "--worker_num_splits=2",
        "--rollout=32", "--recurrence=32", "--batch_size=512", "--num_batches_per_epoch=1", "--num_epochs=1",
        "--use_rnn=True", "--rnn_type=gru", "--rnn_size=128", "--rnn_num_layers=1", "--decoder_mlp_layers",
        "--with_vtrace=True", "--normalize_input=False", "--normalize_returns=False", "--learning_rate=0.0003",
        "--train_for_env_steps=10000000000", "--save_every_sec=100000", "--save_best_every_sec=100000",
        "--keep_checkpoints=1", "--with_wandb=False", f"--seed={seed}",
    ]


def sf_child(argv: list[str]) -> int:
    """Run sample-factory's own training loop (this process is the runner)."""
    _sf_imports()
    from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args
    from sample_factory.train import run_rl

    register_sf_components()
    patch_sf_vtrace_summaries()
    parser, _ = parse_sf_args(argv)
    cfg = parse_full_cfg(parser, argv)
    return int(run_rl(cfg) or 0)


def sf_parameters(envs: int) -> int:
    """Parameter count of the actor-critic sample-factory builds from the same config."""
    from sample_factory.algo.utils.make_env import make_env_func_batched
    from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args
    from sample_factory.model.actor_critic import create_actor_critic
    from sample_factory.utils.attr_dict import AttrDict

    register_sf_components()
    with tempfile.TemporaryDirectory() as tmp:
        argv = sf_argv(envs, tmp)
        parser, _ = parse_sf_args(argv)
        cfg = parse_full_cfg(parser, argv)
        env = make_env_func_batched(cfg, env_config=AttrDict(worker_index=0, vector_index=0, env_id=0))
        model = create_actor_critic(cfg, env.observation_space, env.action_space)
        env.close()
    return int(sum(p.numel() for p in model.parameters()))


_LOG = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[\d+\] Fps is .*?Total num frames: (\d+)\."
                  r".*?Samples: (\d+)")


def run_sf(seconds: float, envs: int, warmup: float, distinct: bool, log_path: Path) -> dict:
    """sample-factory in a child process of this venv; its rate from its own log lines."""
    with tempfile.TemporaryDirectory(prefix="sf-peer-") as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--sf-child", *sf_argv(envs, tmp)]
        env = dict(os.environ, MMOTIF_SF_DISTINCT="1" if distinct else "0", MMOTIF_SF_CHILD="1",
                   PYTHONUNBUFFERED="1")
        busy = machine_busy()
        rows: list[tuple[float, int, int]] = []
        t0 = time.time()
        stop_at = None
        with open(log_path, "w") as log, TreeCpu() as cpu:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=env, start_new_session=True, bufsize=1)
            try:
                for line in proc.stdout:
                    log.write(line)
                    m = _LOG.search(line)
                    if m:
                        ts = _dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                        rows.append((ts, int(m.group(2)), int(m.group(3))))
                        if stop_at is None and int(m.group(2)) > 0:
                            stop_at = ts + warmup + seconds
                        if stop_at is not None and ts >= stop_at:
                            break
                    if time.time() - t0 > seconds + warmup + 300:  # never started training
                        break
            finally:
                t_stop = time.time()
                os.killpg(proc.pid, signal.SIGINT)  # sample-factory's own graceful stop
                try:
                    tail, _ = proc.communicate(timeout=60)
                    log.write(tail or "")
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
    trained = [{"time": t, "env_steps_total": n} for t, n, _ in rows if n > 0]
    out = steady_rate(trained, warmup)
    window = out.pop("window", None)
    out.pop("first_learner_step_after_s", None)
    out["steady_cpu"] = cpu.window(*window) if window else None
    rate = out.get("steady_env_steps_per_s")
    if out["steady_cpu"] and rate:
        out["env_steps_per_cpu_s"] = round(rate / max(out["steady_cpu"]["cores_used"], 1e-9), 1)
    if window:  # collected (sampled) samples over the same window, for reference
        inside = [(t, s) for t, _, s in rows if window[0] <= t <= window[1]]
        if len(inside) >= 2:
            out["steady_samples_collected_per_s"] = round((inside[-1][1] - inside[0][1]) /
                                                          max(inside[-1][0] - inside[0][0], 1e-9), 1)
    first = next((t for t, n, _ in rows if n > 0), None)
    out.update({
        "first_trained_report_after_s": None if first is None else round(first - t0, 1),
        "wall_s": round(t_stop - t0, 1),
        "env_steps": rows[-1][1] if rows else 0,
        "log_rows": len(rows),
        "exit_code": proc.returncode,
        "distinct_rows": distinct,
        "machine_busy_before": busy,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "log": str(log_path),
    })
    return out


# ------------------------------------------------------------------------- the env check
def env_cost(seconds: float = 8.0, envs: int = 16, wrapped: bool = False) -> dict:
    """CPU us per env step of 16 skill envs with random actions, in this process's venv.

    wrapped=False: mmotif's VectorSkillEnv (what its rollout actor steps); wrapped=True: the
    gymnasium env sample-factory steps (`make_sf_env`), round-robin."""
    import numpy as np

    from mmotif.config import load_config
    from mmotif.skills.build import make_vector_env

    rng = np.random.default_rng(0)
    if wrapped:
        games = [make_sf_env(ENV_NAME, env_config=argparse.Namespace(worker_index=0, vector_index=i)) for i in range(envs)]
        for g in games:
            g.reset()

        def step():
            for g in games:
                _, _, term, trunc, _ = g.step(int(rng.integers(28)))
                if term or trunc:
                    g.reset()
    else:
        vec = make_vector_env(load_config(preset_name="local"), envs, 0)
        vec.reset()

        def step():
            vec.step(rng.integers(0, 28, envs))
    for _ in range(50):
        step()
    n, c0, w0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - w0 < seconds:
        step()
        n += envs
    cpu = time.process_time() - c0
    import gymnasium
    return {"cpu_us_per_step": round(cpu / n * 1e6, 1), "steps": n, "numpy": np.__version__,
            "gymnasium": gymnasium.__version__}


def env_check(mmotif_python: str, seconds: float) -> dict:
    out = {"sf_venv_vector_env": env_cost(seconds), "sf_venv_wrapped_env": env_cost(seconds, wrapped=True)}
    code = ("import json,sys; sys.path.insert(0,'bench'); import sf_peer; "
            f"print(json.dumps(sf_peer.env_cost({seconds})))")
    proc = subprocess.run([mmotif_python, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out["mmotif_venv_vector_env"] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    return out


# ------------------------------------------------------------------------ the other runs
def run_mmotif(python: str, seconds: float, envs: int, warmup: float) -> dict:
    cmd = [python, str(ROOT / "bench" / "train_throughput.py"), "--only", "e2e", "--seconds", str(seconds),
           "--envs", str(envs), "--network", "local", "--warmup", str(warmup)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        return {"error": f"exit {proc.returncode}: {' '.join(cmd)}"}
    return json.loads(proc.stdout)["end_to_end"]


def run_rllib(python: str, seconds: float, envs: int, warmup: float) -> dict:
    cmd = [python, str(ROOT / "bench" / "rllib_peer.py"), "--skip-mmotif", "--seconds", str(seconds),
           "--envs", str(envs), "--warmup", str(warmup)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        return {"error": f"exit {proc.returncode}: {' '.join(cmd)}"}
    return json.loads(proc.stdout)["rllib_appo"]


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], stdout=subprocess.PIPE, text=True).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    if "--sf-child" in sys.argv:
        argv = [a for a in sys.argv[1:] if a != "--sf-child"]
        sys.exit(sf_child(argv))
    _sf_imports()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=90.0, help="steady training time of each run")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds after the first trained step not counted")
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--order", default="mmotif,sf,rllib,mmotif",
                   help="comma-separated runs: mmotif, sf, sf-distinct, rllib")
    p.add_argument("--mmotif-python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument("--rllib-python", default=str(ROOT / ".venv-rllib" / "bin" / "python"))
    p.add_argument("--env-check-seconds", type=float, default=8.0, help="0 skips the env check")
    p.add_argument("--log-dir", default=None, help="where sample-factory's logs go (default: a temp dir)")
    args = p.parse_args()
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="sf-peer-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    # everything but the JSON to stderr
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    out: dict = {"date": _dt.date.today().isoformat(), "seconds": args.seconds, "warmup": args.warmup,
                 "envs": args.envs, "cores": len(os.sched_getaffinity(0)), "order": args.order.split(","),
                 "uptime_before": _uptime(), "bridge": "none: nle and mmotif installed with --no-deps into "
                 "sample-factory's venv (gymnasium 0.29.1, numpy 1.26.4); the skill env runs in-process in "
                 "sample-factory's rollout worker; see env_check"}
    try:
        import sample_factory
        out["versions"] = {"sample_factory": getattr(sample_factory, "__version__", None) or _pkg_version("sample-factory"),
                           "torch": __import__("torch").__version__, "numpy": np.__version__,
                           "gymnasium": __import__("gymnasium").__version__}
        out["sf_network_parameters"] = sf_parameters(args.envs)
        if args.env_check_seconds > 0:
            out["env_check"] = env_check(args.mmotif_python, args.env_check_seconds)
        runs = []
        for i, name in enumerate(out["order"]):
            print(f"[sf_peer] run {i}: {name} ({_uptime()})", file=sys.stderr, flush=True)
            t = time.time()
            if name == "mmotif":
                r = run_mmotif(args.mmotif_python, args.seconds + args.warmup, args.envs, args.warmup)
                rate = r.get("steady_env_steps_per_s")
            elif name in ("sf", "sf-distinct"):
                r = run_sf(args.seconds, args.envs, args.warmup, name == "sf-distinct", log_dir / f"sf_run{i}.log")
                rate = r.get("steady_env_steps_per_s")
            elif name == "rllib":
                r = run_rllib(args.rllib_python, args.seconds + args.warmup, args.envs, args.warmup)
                rate = r.get("steady_env_steps_trained_per_s")
            else:
                raise SystemExit(f"unknown run {name!r}")
            runs.append({"system": name, "env_steps_per_s": rate, "started": round(t, 1), "result": r})
            print(f"[sf_peer] {name}: {rate} env steps/s", file=sys.stderr, flush=True)
        out["runs"] = runs
    finally:
        out["uptime_after"] = _uptime()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)

    def rates(system):
        return [r["env_steps_per_s"] for r in out["runs"] if r["system"] == system and r["env_steps_per_s"]]

    mm = rates("mmotif")
    summary: dict = {"mmotif": mm}
    for peer in ("sf", "sf-distinct", "rllib"):
        theirs = rates(peer)
        summary[peer] = theirs
        if mm and theirs:
            ref = float(np.mean(theirs))
            summary[f"ratio_mmotif_to_{peer}"] = round(float(np.mean(mm)) / ref, 2)
            summary[f"ratio_mmotif_to_{peer}_range"] = [round(min(mm) / ref, 2), round(max(mm) / ref, 2)]
    summary["targets"] = {"ratio_mmotif_to_sf": 1.0, "ratio_mmotif_to_rllib": 2.0}
    out["summary"] = summary
    print(json.dumps(out, indent=2))


def _pkg_version(name: str):
    from importlib.metadata import version
    try:
        return version(name)
    except Exception:
        return None


if os.environ.get("MMOTIF_SF_CHILD") == "1" and __name__ != "__main__":
    patch_sf_vtrace_summaries()  # sample-factory's spawned workers import this file as __mp_main__

if __name__ == "__main__":
    main()
