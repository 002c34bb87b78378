"""The `mmotif` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mmotif.config import PRESETS, ConfigError, RunConfig, load_config

NOT_BUILT_YET = {
    "annotate": "annotation of caption pairs (issue: AI feedback)",
    "train-rewards": "reward-model training (issue: AI feedback)",
    "plan": "code generation for a task (issue: code generation and tasks)",
    "eval": "zero-shot evaluation (issue: code generation and tasks)",
    "replay": "episode replays (issue: code generation and tasks)",
    "submit": "cluster job submission (issue: cluster jobs)",
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="run config YAML (merged over the preset)")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="named defaults: local (laptop, CPU), paper, cluster (default: local "
                        "for `run` without --config, else paper)")


def _config(args, default_preset: str = "paper") -> RunConfig:
    preset = args.preset or (default_preset if args.config is None else "paper")
    return load_config(args.config, preset)


def cmd_config_show(args) -> int:
    print(_config(args).to_yaml(), end="")
    return 0


def cmd_run(args) -> int:
    from mmotif.runtime.smoke import skill_env_smoke

    cfg = _config(args, default_preset="local")
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    print(f"mmotif run '{cfg.name}': config written to {run_dir / 'config.yaml'}")
    print("stage 1/1 built so far: skill environment (NLE + skills + code policy over skills)")
    t0 = time.perf_counter()
    summary = skill_env_smoke(cfg, env_steps=args.smoke_steps)
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    (run_dir / "smoke.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print("not built yet: rollout actors + learner (APPO/V-trace), pair sampling and annotation "
          "with the embedded LLM, reward-model retraining, evaluation report.")
    return 0


def cmd_not_built(args) -> int:
    print(f"`mmotif {args.command}` is not built yet: {NOT_BUILT_YET[args.command]}.",
          file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmotif", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline (default: preset local)")
    _add_config_args(run)
    run.add_argument("--smoke-steps", type=int, default=2000,
                     help="env steps of the skill-environment stage")
    run.set_defaults(func=cmd_run)

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    _add_config_args(show)
    show.set_defaults(func=cmd_config_show)

    for name, what in NOT_BUILT_YET.items():
        p = sub.add_parser(name, help=f"{what} — not built yet")
        p.set_defaults(func=cmd_not_built)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"mmotif: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
