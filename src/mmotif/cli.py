"""The `mmotif` command."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

from mmotif.config import (
    DEFAULT_PRESET,
    PRESETS,
    ConfigError,
    RunConfig,
    config_diff,
    preset,
    resolve_config,
    with_overrides,
)

# Heavy modules (torch, nle) are imported inside the commands, and only the chosen
# command's arguments are built from them: `mmotif --help` stays fast.

SET_HELP = ("PATH=VALUE: set one field after the preset and --config, e.g. --set learner.lr=1e-3 "
            "--set actors.num_actors=auto --set 'evaluation.tasks=[gnomish]'; VALUE is read as "
            "YAML, typed by the field; repeatable")


def _add_set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help=SET_HELP)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path,
                   help="run config YAML, merged over the preset; a top-level `preset: paper` "
                        "names its preset (--preset wins); a complete config (from `mmotif "
                        "config show` or a run's config.yaml) loads exactly as itself")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help=f"named defaults: local (laptop, CPU), paper, cluster (default: the "
                        f"--config file's `preset:`, else {DEFAULT_PRESET})")
    _add_set_arg(p)


def _resolve(args) -> tuple[RunConfig, str]:
    return resolve_config(getattr(args, "config", None), getattr(args, "preset", None),
                          sets=getattr(args, "set", None) or ())


def _config(args) -> RunConfig:
    return _resolve(args)[0]


def _with_staged_config(func, args) -> int:
    """Call `func(args)` (a command of another module that loads `args.config` with
    `args.preset` itself) on the config resolved here, --set included: the resolved config
    travels as a complete YAML, which loads exactly as itself."""
    cfg, name = _resolve(args)
    with tempfile.TemporaryDirectory(prefix="mmotif-config-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(cfg.to_yaml())
        args.config, args.preset, args.set = path, name, []
        return func(args)


def cmd_config_show(args) -> int:
    cfg, name = _resolve(args)
    if args.diff:
        diff = {"preset": name, **config_diff(cfg, preset(name))}
        print(yaml.safe_dump(diff, sort_keys=False), end="")
    else:
        print(cfg.to_yaml(), end="")
    return 0


def _extras_installed(cfg) -> bool:
    """The default annotator needs the `embedded` extra, `metrics.wandb` the `wandb` one: say so
    before Ray starts actors that would fail one after another."""
    import importlib.util

    if cfg.metrics.wandb and importlib.util.find_spec("wandb") is None:
        print("mmotif: metrics.wandb needs the wandb package: pip install 'mmotif[wandb]'", file=sys.stderr)
        return False
    if cfg.annotator.backend != "embedded" or cfg.annotator.num_annotators == 0:
        return True
    from mmotif.llm.base import BackendError
    from mmotif.llm.embedded import require_extra

    try:
        require_extra()
    except BackendError as err:
        print(f"mmotif: {err}", file=sys.stderr)
        return False
    return True


def cmd_run(args) -> int:
    cfg = _config(args)  # a bad config fails before the heavy imports
    if not _extras_installed(cfg):
        return 2
    from mmotif.checkpoint import CheckpointError
    from mmotif.runtime.driver import Driver, TrainingStopped

    overrides = {}
    if args.time_limit is not None:
        overrides["time_limit_s"] = args.time_limit
    if args.run_dir is not None:
        overrides["paths"] = {"run_dir": str(args.run_dir)}
    if overrides:
        cfg = with_overrides(cfg, overrides, "command line")
    print(f"mmotif run '{cfg.name}' -> {cfg.paths.run_dir}")  # the driver prints the dashboard's address
    from mmotif.codegen.skills_code import resolve_training_policy

    cfg = resolve_training_policy(cfg)  # generate: the coder writes it now; a file: its text travels
    from mmotif.rewards.store import PreferenceStoreError
    from mmotif.rewards.versions import RewardVersionError
    from mmotif.storage import StorageError

    try:
        summary = Driver(cfg, resume=args.resume).run()
    except (CheckpointError, PreferenceStoreError, RewardVersionError, StorageError) as err:  # before Ray starts
        print(f"mmotif: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"\nmmotif: {err}", file=sys.stderr)
        return 1
    print("\n" + json.dumps(summary, indent=2))
    return 0


def cmd_annotate(args) -> int:
    cfg = _config(args)
    if not _extras_installed(cfg):
        return 2
    from mmotif.annotators.offline import annotate_file
    from mmotif.contract import CaptionsFileError
    from mmotif.rewards.store import PreferenceStoreError

    try:
        result = annotate_file(cfg, args.captions, args.store, args.pairs_per_skill)
    except (CaptionsFileError, PreferenceStoreError) as err:
        print(f"mmotif: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def cmd_train_rewards(args) -> int:
    cfg = _config(args)
    from mmotif.annotators.offline import train_rewards
    from mmotif.rewards.store import PreferenceStoreError

    try:
        result = train_rewards(cfg, args.store, args.out)
    except (FileNotFoundError, ValueError, PreferenceStoreError) as err:
        print(f"mmotif: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def cmd_submit(args) -> int:
    from mmotif.runtime.submit import cmd_submit as submit

    return _with_staged_config(submit, args)


def cmd_eval(args) -> int:
    from mmotif.runtime.evaluation import cmd_eval as evaluate
    from mmotif.evaluation.watchdog import Watchdog

    if args.checkpoint is None and args.random_init:  # the only case where eval builds a config
        run = lambda: _with_staged_config(evaluate, args)  # noqa: E731
    elif args.set:
        raise ConfigError("--set goes with --random-init (with --checkpoint, eval uses the checkpoint's config)")
    else:
        run = lambda: evaluate(args)  # noqa: E731
    if args.watchdog_s <= 0:
        return run()
    with Watchdog(args.watchdog_s):
        return run()


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """`mmotif eval`'s own arguments (without --set)."""
    from mmotif.tasks import TASKS

    parser.add_argument("--task", action="append", required=True,
                        help=f"task name (repeat, or 'all'): {', '.join(TASKS)}")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="run folder or checkpoint folder with the trained skill network")
    parser.add_argument("--random-init", action="store_true",
                        help="no checkpoint: a randomly initialised network of the config (smoke tests)")
    parser.add_argument("--config", type=Path, default=None, help="with --random-init: run config YAML")
    parser.add_argument("--preset", default="local", help="with --random-init: preset (default local)")
    parser.add_argument("--policy", type=Path, default=None,
                        help="policy file from `mmotif plan` (default: the run's generated one, "
                             "<run>/plans/<task>.py)")
    parser.add_argument("--reference", action="store_true",
                        help="the task's shipped reference policy (hand-written, not generated)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes per task over all seeds (default: 1080 on a cluster, ±3 points; "
                             "60 locally, and the table states the wider interval)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds --seed, --seed+1, ... (default: 9 on a cluster, as in the paper; 3 locally)")
    parser.add_argument("--actors", type=int, default=None,
                        help="parallel Ray actors (default: one per CPU of the machine or cluster; "
                             "0: in this process, no Ray)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to run on (default: RAY_ADDRESS if set, else Ray on this machine)")
    parser.add_argument("--envs", type=int, default=None, help="envs stepped together per actor (default ≤8)")
    parser.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: config, 10,000)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--greedy", action="store_true", help="argmax actions (the paper samples)")
    parser.add_argument("--record", type=int, default=1, help="episodes saved as replays (first N)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/eval or runs/eval)")


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    add_eval_arguments(p)
    p.add_argument("--watchdog-s", type=float, default=120.0,
                   help="end the run (traceback, exit 1) if one call, e.g. a policy call stuck in "
                        "C-level work, holds the interpreter this many seconds (0: off)")
    _add_set_arg(p)
    p.set_defaults(preset=None)  # unset: the --config file's `preset:`, else local


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """`mmotif plan`'s own arguments (the config ones are added beside them)."""
    from mmotif.llm.weights import DEFAULT_MODEL

    parser.add_argument("instruction", nargs="?", default=None,
                        help="the task in words (default: the --task's own instruction)")
    parser.add_argument("--task", default=None,
                        help="a known task (gnomish, delphi, ...): its hints, starting values and "
                             "env-kept attributes go with the instruction")
    parser.add_argument("--backend", default=None, choices=("embedded", "openai", "none"),
                        help="LLM backend (default: coder.backend of the config, embedded; none: no LLM, "
                             "only with --reference)")
    parser.add_argument("--model", default=None,
                        help=f"model name (default: coder.model; when --backend changes the kind: "
                             f"{DEFAULT_MODEL} embedded, 'default' openai)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible server (default: coder.base_url)")
    parser.add_argument("--max-rewrites", type=int, default=None, help="default: coder.max_rewrites (3)")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: coder.max_tokens (4096)")
    parser.add_argument("--temperature", type=float, default=None, help="default: coder.temperature (0.2)")
    parser.add_argument("--out", type=Path, default=Path("runs/plans"), help="output folder")
    parser.add_argument("--name", default=None, help="policy file name (default: task name or 'policy')")
    parser.add_argument("--reference", action="store_true",
                        help="if generation fails (or with --backend none), write the task's shipped "
                             "reference policy instead, marked as such")


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    from mmotif.codegen.generate import cmd_plan

    add_plan_arguments(p)
    _add_config_args(p)  # the coder: section (backend, model, sampling); the flags above win
    p.set_defaults(func=cmd_plan)


def add_skills_code_arguments(parser: argparse.ArgumentParser) -> None:
    """`mmotif skills-code`'s own arguments."""
    from mmotif.codegen.skills_code import GENERATED_FILE

    parser.add_argument("--backend", default=None, choices=("embedded", "openai"),
                        help="LLM backend (default: coder.backend of the config)")
    parser.add_argument("--model", default=None, help="model name (default: coder.model)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible server (default: coder.base_url)")
    parser.add_argument("--max-rewrites", type=int, default=None, help="default: coder.max_rewrites (3)")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: coder.max_tokens")
    parser.add_argument("--temperature", type=float, default=None, help="default: coder.temperature")
    parser.add_argument("--out", type=Path, default=Path("runs/skills-code"),
                        help=f"output folder: {GENERATED_FILE} and generations/ (the transcripts)")


def _add_skills_code_arguments(p: argparse.ArgumentParser) -> None:
    from mmotif.codegen.skills_code import cmd_skills_code

    add_skills_code_arguments(p)
    _add_config_args(p)  # the skills and the coder: section; the flags above win
    p.set_defaults(func=cmd_skills_code)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """`mmotif replay`'s arguments."""
    parser.add_argument("recording", type=Path, help="a recorded episode (.npz, e.g. from `mmotif eval --record`)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: beside the recording)")
    parser.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    parser.add_argument("--max-frames", type=int, default=1000, help="at most this many frames per output")
    parser.add_argument("--frame-ms", type=int, default=80, help="GIF frame duration in milliseconds")
    parser.add_argument("--scale", type=int, default=1, help="GIF pixel scale (1: 6x11 pixels per cell)")
    parser.add_argument("--no-html", action="store_true", help="write only the GIF")


def _add_replay_arguments(p: argparse.ArgumentParser) -> None:
    from mmotif.evaluation.replay import cmd_replay

    add_replay_arguments(p)
    p.set_defaults(func=cmd_replay)


def _address_arg(p: argparse.ArgumentParser) -> None:
    from mmotif.runtime.submit import ADDRESS_ENV_VARS, default_address

    p.add_argument("--address", default=default_address(),
                   help="Ray dashboard address, e.g. http://127.0.0.1:8265 (default: "
                        f"${' or $'.join(ADDRESS_ENV_VARS)})")


def add_job_subcommands(sub, add_config_args) -> None:
    """`submit`, `status`, `logs`, `stop` on the `mmotif` parser's subparsers."""
    from mmotif.runtime.submit import RUNTIME_ENV_MODES, cmd_logs, cmd_status, cmd_stop, cmd_submit  # no heavy imports

    p = sub.add_parser("submit", help="run a config as a Ray job on a cluster (Jobs API)")
    add_config_args(p)
    _address_arg(p)
    p.add_argument("--runtime-env-mode", choices=RUNTIME_ENV_MODES, default="local",
                   help="local: the nodes have mmotif installed (image/shared venv), only the "
                        "config travels; package: this checkout's mmotif package travels too")
    p.add_argument("--pip", action="append", metavar="REQ",
                   help="extra requirement installed into the job's env (needs an index "
                        "reachable from the nodes); repeatable")
    p.add_argument("--entrypoint-num-cpus", type=float, default=0.0,
                   help="CPUs reserved for the driver process (default 0: Ray runs an entrypoint "
                        "that reserves nothing on the head node; any reservation lets it land on a "
                        "(spot) worker)")
    p.add_argument("--entrypoint-num-gpus", type=float, default=0.0,
                   help="GPUs reserved for the driver process (default 0: the learner "
                        "takes its GPU as an actor)")
    p.add_argument("--entrypoint-resources", metavar="JSON",
                   help='custom resources for the driver, e.g. \'{"head": 1}\'')
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="environment variable for the job; repeatable")
    p.add_argument("--submission-id", help="job id (default: mmotif-<name>-<time>-<random>)")
    p.add_argument("--wait", action="store_true",
                   help="stream the logs until the job ends; exit 0 only if it succeeded")
    p.set_defaults(func=cmd_submit)

    for name, func, what in (("status", cmd_status, "a job's status"),
                             ("logs", cmd_logs, "a job's logs"),
                             ("stop", cmd_stop, "stop a job")):
        q = sub.add_parser(name, help=f"{what} (Ray Jobs API)")
        q.add_argument("job", help="submission id printed by `mmotif submit`")
        _address_arg(q)
        if name == "status":
            q.add_argument("--json", action="store_true", help="the whole job record as JSON")
        if name == "logs":
            q.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        if name == "stop":
            q.add_argument("--wait", type=float, default=10.0, metavar="S",
                           help="seconds to wait for the job to stop (default 10)")
        q.set_defaults(func=func)


def _add_serve_llm_arguments(p: argparse.ArgumentParser) -> None:
    from mmotif.llm.weights import SMALL_MODEL

    p.add_argument("--model", default=SMALL_MODEL, help="embedded model name or folder")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.set_defaults(func=cmd_serve_llm)


def cmd_serve_llm(args) -> int:
    from mmotif.llm.openai_server import run_server

    return run_server(args.model, args.cache_dir, args.threads, args.dtype, args.host, args.port)


# name: (help, adds the arguments; imports the command's module)
LAZY_COMMANDS = {
    "plan": ("write a policy over skills for a task instruction", _add_plan_arguments),
    "skills-code": ("write the skills' initiation/termination functions and the training policy over "
                    "skills (phases 2 and 3)", _add_skills_code_arguments),
    "eval": ("zero-shot evaluation of a task on a trained checkpoint", _add_eval_arguments),
    "replay": ("render a recorded episode as a GIF and an HTML player", _add_replay_arguments),
    "serve-llm": ("serve an embedded model behind an OpenAI-compatible HTTP API (annotator/coder "
                  "backend: openai)", _add_serve_llm_arguments),
}


def _command_in(argv: list[str] | None) -> str | None:
    """The subcommand `argv` names (the top-level parser has no options but --help)."""
    return next((a for a in argv if not a.startswith("-")), None) if argv is not None else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `mmotif` parser. With `argv`, the heavy commands (plan, eval, replay) get their
    arguments only if `argv` names them, so that --help imports no torch; without, all do."""
    command = _command_in(argv)
    parser = argparse.ArgumentParser(prog="mmotif", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help=f"run the whole pipeline (default: preset {DEFAULT_PRESET})")
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

    for name, (what, add_arguments) in LAZY_COMMANDS.items():
        p = sub.add_parser(name, help=what)
        if argv is None or command == name:
            add_arguments(p)
    if "eval" in sub.choices:
        sub.choices["eval"].set_defaults(func=cmd_eval)

    add_job_subcommands(sub, _add_config_args)
    sub.choices["submit"].set_defaults(func=cmd_submit)

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    _add_config_args(show)
    show.add_argument("--diff", action="store_true",
                      help="only what differs from the preset (with its `preset:` key: the output "
                           "is a YAML that --config turns back into the same config)")
    show.set_defaults(func=cmd_config_show)

    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"mmotif: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
