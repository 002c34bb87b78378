"""The `mmotif` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmotif.config import PRESETS, ConfigError, RunConfig, load_config, with_overrides

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
    from mmotif.runtime.checkpoint import CheckpointError
    from mmotif.runtime.driver import Driver, TrainingStopped

    cfg = _config(args, default_preset="local")
    overrides = {}
    if args.time_limit is not None:
        overrides["time_limit_s"] = args.time_limit
    if args.run_dir is not None:
        overrides["paths"] = {"run_dir": str(args.run_dir)}
    if overrides:
        cfg = with_overrides(cfg, overrides, "command line")
    print(f"mmotif run '{cfg.name}' -> {cfg.paths.run_dir}  (Ray dashboard: http://{cfg.cluster.dashboard_host}:8265)")
    try:
        summary = Driver(cfg, resume=args.resume).run()
    except (CheckpointError, TrainingStopped) as err:
        print(f"\nmmotif: {err}", file=sys.stderr)
        return 1
    print("\n" + json.dumps(summary, indent=2))
    return 0


def cmd_annotate(args) -> int:
    from mmotif.annotators.offline import CaptionsFileError, annotate_file

    cfg = _config(args, default_preset="local")
    try:
        result = annotate_file(cfg, args.captions, args.store, args.pairs_per_skill)
    except CaptionsFileError as err:
        print(f"mmotif: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def cmd_train_rewards(args) -> int:
    from mmotif.annotators.offline import train_rewards

    cfg = _config(args, default_preset="local")
    try:
        result = train_rewards(cfg, args.store, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"mmotif: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmotif", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline (default: preset local)")
    _add_config_args(run)
    run.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    run.add_argument("--time-limit", type=float, default=None, help="seconds (overrides time_limit_s)")
    run.add_argument("--run-dir", type=Path, default=None, help="run folder (overrides paths.run_dir)")
    run.set_defaults(func=cmd_run)

    annotate = sub.add_parser("annotate", help="label caption pairs from a captions file into a preference store")
    _add_config_args(annotate)
    annotate.add_argument("--captions", type=Path, required=True, help="JSON lines: text, message, depth_change")
    annotate.add_argument("--store", type=Path, required=True, help="preference store (SQLite; created if missing)")
    annotate.add_argument("--pairs-per-skill", type=int, default=32)
    annotate.set_defaults(func=cmd_annotate)

    train = sub.add_parser("train-rewards", help="train per-skill reward models from a store; publish a version")
    _add_config_args(train)
    train.add_argument("--store", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True, help="folder of reward-model versions")
    train.set_defaults(func=cmd_train_rewards)

    from mmotif.codegen.generate import add_plan_arguments, cmd_plan
    from mmotif.runtime.evaluate import add_eval_arguments, cmd_eval
    from mmotif.runtime.replay import add_replay_arguments, cmd_replay

    for name, add_arguments, func, what in (
        ("plan", add_plan_arguments, cmd_plan, "write a policy over skills for a task instruction"),
        ("eval", add_eval_arguments, cmd_eval, "zero-shot evaluation of a task on a trained checkpoint"),
        ("replay", add_replay_arguments, cmd_replay, "render a recorded episode as a GIF and an HTML player"),
    ):
        p = sub.add_parser(name, help=what)
        add_arguments(p)
        p.set_defaults(func=func)

    from mmotif.runtime.submit import add_job_subcommands

    add_job_subcommands(sub, _add_config_args)

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    _add_config_args(show)
    show.set_defaults(func=cmd_config_show)

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
