"""Command-line overrides (--set), the one default preset (local), `config show --diff`, a
fast `--help`, and bad configs refused at load time with the field named."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmotif import cli
from mmotif.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    load_config,
    parse_set,
    preset,
    resolve_config,
)

POLICY = '''
class NetHackPlayer:
    def set_initial_values(self):
        self.skill = "discoverer"
'''


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `mmotif argv...`, in this process."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as exit_:
        rc = exit_.code
    out, err = capsys.readouterr()
    return rc, out, err


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(**kwargs)
    return str(err.value)


# ----------------------------------------------------------------------------- --set


def test_set_values_are_read_as_yaml_and_typed_by_the_schema():
    cfg = load_config(sets=["learner.lr=1e-3", "actors.num_actors=auto", "evaluation.tasks=[gnomish, delphi]",
                            "annotator.base_url=http://h:8000/v1?a=b", "name=2024", "paths.run_dir=123",
                            "learner.network.core_hidden=64", "annotator.rules.discoverer.kill=2"])
    assert cfg.learner.lr == pytest.approx(1e-3) and isinstance(cfg.learner.lr, float)
    assert cfg.actors.num_actors == "auto"
    assert cfg.evaluation.tasks == ["gnomish", "delphi"]
    assert cfg.annotator.base_url == "http://h:8000/v1?a=b"  # split at the first '=' only
    assert cfg.name == "2024"  # a text field keeps its text
    assert cfg.paths.run_dir == Path("123")
    assert cfg.learner.network.core_hidden == 64
    assert cfg.annotator.rules == {"discoverer": {"kill": 2.0}}
    again = load_config(sets=["annotator.base_url=http://h", "annotator.base_url=null"])
    assert again.annotator.base_url is None  # null is None; the last --set wins


def test_set_combines_fields_that_are_only_valid_together():
    cfg = load_config(sets=["learner.batch_size=100", "learner.rollout=50"])
    assert (cfg.learner.batch_size, cfg.learner.rollout) == (100, 50)


def test_set_goes_after_the_file(tmp_path):
    config = write(tmp_path, "learner:\n  lr: 0.5\n")
    assert load_config(config, sets=["learner.lr=0.25"]).learner.lr == 0.25


def test_set_on_config_show(capsys):
    rc, out, _ = run_cli(capsys, "config", "show", "--set", "learner.lr=1e-3", "--set", "evaluation.tasks=[]")
    data = yaml.safe_load(out)
    assert rc == 0 and data["learner"]["lr"] == pytest.approx(1e-3) and data["evaluation"]["tasks"] == []


def test_unknown_set_path_names_the_field_and_the_set(capsys):
    rc, out, err = run_cli(capsys, "run", "--set", "learner.lrr=1")
    assert rc == 2 and out == ""
    assert "learner.lrr" in err and "--set learner.lrr=1" in err and "Extra inputs" in err


def test_the_bad_set_among_several_is_named():
    msg = config_error(sets=["learner.lr=1e-3", "actors.envs_per_actor=0"])
    first = msg.splitlines()[0]
    assert "--set actors.envs_per_actor=0" in first and "learner.lr" not in first
    assert "actors.envs_per_actor" in msg


@pytest.mark.parametrize("item", ["learnerlr", "learner.lr", "=3", "learner..lr=1", "evaluation.tasks=[gnomish"])
def test_malformed_set_is_one_clear_line(capsys, item):
    rc, out, err = run_cli(capsys, "config", "show", "--set", item)
    assert rc == 2 and out == ""
    assert err.startswith("mmotif: --set") and err.count("\n") == 1, err


def test_parse_set():
    assert parse_set("learner.lr=1e-3") == (("learner", "lr"), "1e-3")  # pydantic reads "1e-3" as a float
    assert parse_set("actors.num_actors=4") == (("actors", "num_actors"), 4)
    assert parse_set("annotator.model=1.5") == (("annotator", "model"), "1.5")
    assert parse_set("evaluation.tasks=[gnomish]") == (("evaluation", "tasks"), ["gnomish"])


def test_set_reaches_submit(capsys, monkeypatch):
    import mmotif.runtime.submit as submit

    seen = {}

    def fake_submit_run(address, cfg, **kwargs):
        seen.update(cfg=cfg, preset=kwargs.get("preset"))
        return submit.Submitted("job-1", address, "mmotif run --config run.yaml", {})

    monkeypatch.setattr(submit, "submit_run", fake_submit_run)
    rc, out, _ = run_cli(capsys, "submit", "--address", "http://127.0.0.1:8265",
                         "--set", "learner.lr=1e-3", "--set", "name=tuned")
    assert rc == 0 and "job-1" in out
    assert seen["cfg"].learner.lr == pytest.approx(1e-3) and seen["cfg"].name == "tuned"
    assert seen["preset"] == "local" and seen["cfg"].learner.total_env_steps == preset("local").learner.total_env_steps

    rc, _, err = run_cli(capsys, "submit", "--address", "http://127.0.0.1:8265", "--set", "seed=-1")
    assert rc == 2 and "seed" in err and "--set seed=-1" in err


def test_submit_uses_the_files_preset(capsys, monkeypatch, tmp_path):
    import mmotif.runtime.submit as submit

    seen = {}
    monkeypatch.setattr(submit, "submit_run", lambda address, cfg, **kw: seen.update(cfg=cfg, preset=kw["preset"])
                        or submit.Submitted("job-2", address, "", {}))
    config = write(tmp_path, "preset: cluster\nlearner:\n  lr: 0.002\n")
    assert run_cli(capsys, "submit", "--address", "http://h:8265", "--config", str(config))[0] == 0
    assert seen["preset"] == "cluster" and seen["cfg"].annotator.backend == "vllm"
    assert seen["cfg"].learner.lr == 0.002


def test_set_reaches_eval_random_init(capsys, monkeypatch):
    import mmotif.models.build as build

    class Stop(Exception):
        pass

    seen = {}

    def fake_make_network(cfg):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(build, "make_network", fake_make_network)
    with pytest.raises(Stop):
        cli.main(["eval", "--task", "gnomish", "--random-init", "--set", "learner.network.core_hidden=32",
                  "--set", "env.crop=[9, 15]"])
    assert seen["cfg"].learner.network.core_hidden == 32 and seen["cfg"].env.crop == (9, 15)
    assert seen["cfg"].name == "local"

    rc, _, err = run_cli(capsys, "eval", "--task", "gnomish", "--random-init", "--set", "actors.num_actors=0")
    assert rc == 2 and "actors.num_actors" in err
    rc, _, err = run_cli(capsys, "eval", "--task", "gnomish", "--checkpoint", "runs/x", "--set", "seed=1")
    assert rc == 2 and "--set goes with --random-init" in err


# ----------------------------------------------------------------------------- the default preset


def test_a_short_yaml_starts_from_local_not_paper(tmp_path, capsys):
    config = write(tmp_path, "learner:\n  lr: 0.001\n")
    cfg = load_config(config)
    assert cfg.name == "local" and cfg.learner.total_env_steps == preset("local").learner.total_env_steps
    assert cfg.learner.lr == 0.001
    for argv in (["config", "show", "--config", str(config)], ["config", "show"]):
        rc, out, _ = run_cli(capsys, *argv)
        assert rc == 0 and yaml.safe_load(out)["name"] == "local"
    assert load_config().model_dump() == preset("local").model_dump()


def test_a_yaml_names_its_preset_and_the_command_line_wins(tmp_path):
    config = write(tmp_path, "preset: paper\nlearner:\n  lr: 0.001\n")
    cfg, name = resolve_config(config)
    assert name == "paper" and cfg.learner.total_env_steps == 4_000_000_000 and cfg.learner.lr == 0.001
    cfg, name = resolve_config(config, "cluster")
    assert name == "cluster" and cfg.annotator.backend == "vllm" and cfg.learner.lr == 0.001
    bad = write(tmp_path, "preset: fast\n", "bad.yaml")
    msg = config_error(path=bad)
    assert "preset" in msg and "'fast'" in msg and "bad.yaml" in msg


@pytest.mark.parametrize("name", PRESETS)
def test_a_dumped_config_loads_exactly_as_itself(tmp_path, capsys, name):
    rc, shown, _ = run_cli(capsys, "config", "show", "--preset", name, "--set", "learner.lr=0.002")
    assert rc == 0
    dumped = write(tmp_path, shown, "dumped.yaml")
    expected = load_config(preset_name=name, sets=["learner.lr=0.002"]).model_dump()
    for other in (None, *PRESETS):  # the preset it is read with does not matter
        assert load_config(dumped, other).model_dump() == expected
    rc, again, _ = run_cli(capsys, "config", "show", "--config", str(dumped))
    assert again == shown
    assert load_config(write(tmp_path, preset(name).to_yaml(), "p.yaml")).model_dump() == preset(name).model_dump()


def test_a_config_missing_one_field_is_still_merged_over_the_preset(tmp_path):
    data = preset("local").model_dump(mode="json")
    del data["learner"]["lr"]  # e.g. a config.yaml from before a field was added
    data["name"] = "mine"
    config = write(tmp_path, yaml.safe_dump(data))
    cfg = load_config(config)
    assert cfg.learner.lr == preset("local").learner.lr != RunConfig().learner.lr and cfg.name == "mine"


# ----------------------------------------------------------------------------- --diff


def test_diff_prints_only_what_differs(capsys):
    rc, out, _ = run_cli(capsys, "config", "show", "--diff")
    assert rc == 0 and yaml.safe_load(out) == {"preset": "local"}
    rc, out, _ = run_cli(capsys, "config", "show", "--preset", "paper", "--diff",
                         "--set", "learner.lr=1e-3", "--set", "evaluation.tasks=[delphi]")
    assert yaml.safe_load(out) == {"preset": "paper", "learner": {"lr": 0.001}, "evaluation": {"tasks": ["delphi"]}}


@pytest.mark.parametrize("name", PRESETS)
def test_diff_output_loads_back_to_the_same_config(tmp_path, capsys, name):
    sets = ["learner.lr=0.002", "env.crop=[9, 15]", "evaluation.tasks=[]", "annotator.base_url=http://h"]
    _, out, _ = run_cli(capsys, "config", "show", "--preset", name, "--diff", *[a for s in sets for a in ("--set", s)])
    diff = write(tmp_path, out, "diff.yaml")
    assert load_config(diff).model_dump() == load_config(preset_name=name, sets=sets).model_dump()


# ----------------------------------------------------------------------------- fast --help


def test_help_and_config_show_import_no_torch():
    probe = ("import sys, contextlib, io\n"
             "from mmotif.cli import main\n"
             "for argv in (['--help'], ['config', 'show'], ['run', '--help']):\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n"
             "        try:\n"
             "            main(argv)\n"
             "        except SystemExit:\n"
             "            pass\n"
             "print(sorted(m for m in ('torch', 'ray', 'mmotif.evaluation.evaluate') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_top_level_help_lists_every_command(capsys):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0
    for name in ("run", "annotate", "train-rewards", "plan", "eval", "replay", "submit", "status", "config"):
        assert name in out


# ----------------------------------------------------------------------------- bad values refused at load


@pytest.mark.parametrize("value", [0, -1])
def test_no_rollout_actors_is_refused(tmp_path, capsys, value):
    msg = config_error(overrides={"actors": {"num_actors": value}})
    assert "actors.num_actors" in msg and ">= 1 or 'auto'" in msg
    config = write(tmp_path, f"actors:\n  num_actors: {value}\n")
    rc, _, err = run_cli(capsys, "run", "--config", str(config))
    assert rc == 2 and "actors.num_actors" in err and str(config) in err


def test_actor_counts_that_work():
    assert load_config(sets=["actors.num_actors=auto"]).actors.num_actors == "auto"
    assert load_config(sets=["actors.num_actors=3"]).actors.num_actors == 3


def test_unknown_evaluation_task_is_refused_at_load():
    msg = config_error(overrides={"evaluation": {"tasks": ["gnomish", "gnomsh"]}})
    assert "evaluation.tasks" in msg and "'gnomsh'" in msg and "delphi" in msg  # names the known ones
    assert load_config(overrides={"evaluation": {"tasks": ["Golden Exit", "delphi"]}}).evaluation.tasks == [
        "Golden Exit", "delphi"]  # titles and aliases, as `mmotif eval --task` takes them


def test_training_policy_builtin_must_be_known():
    msg = config_error(overrides={"env": {"training_policy": "builtin:explore"}})
    assert "env.training_policy" in msg and "builtin:exploration" in msg
    assert load_config().env.training_policy == "builtin:exploration"


@pytest.mark.parametrize("content, why", [
    (None, "neither"),                                  # no such file
    ("dir", "directory"),
    (b"\xff\xfeclass NetHackPlayer: pass\n", "UTF-8"),
    ("class NetHackPlayer(:\n", "not valid Python"),
    ("class Player:\n    pass\n", "class NetHackPlayer"),
    ("print('NetHackPlayer')\n", "class NetHackPlayer"),
])
def test_training_policy_file_must_define_the_policy_class(tmp_path, content, why):
    path = tmp_path / "policy.py"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    msg = config_error(overrides={"env": {"training_policy": str(path)}})
    assert "env.training_policy" in msg and why in msg and str(path) in msg


def test_training_policy_file_is_checked_not_run(tmp_path):
    path = tmp_path / "policy.py"
    marker = tmp_path / "ran"
    path.write_text(f"open({str(marker)!r}, 'w').close()\n" + POLICY)
    assert load_config(overrides={"env": {"training_policy": str(path)}}).env.training_policy == str(path)
    assert not marker.exists()


@pytest.mark.parametrize("crop", [[0, 12], [12, 0], [-1, 5], [25, 12], [12, 81]])
def test_impossible_crops_are_refused(crop):
    msg = config_error(overrides={"env": {"crop": crop}})
    assert "env.crop" in msg and "(24, 80)" in msg


@pytest.mark.parametrize("crop", [[1, 1], [9, 15], [12, 12], [24, 80]])
def test_crops_that_fit(crop):
    assert load_config(overrides={"env": {"crop": crop}}).env.crop == tuple(crop)


@pytest.mark.parametrize("seed", [-1, 2**31, 2**40])
def test_seeds_numpy_cannot_take_are_refused(seed):
    assert "seed" in config_error(overrides={"seed": seed})


def test_seeds_that_work():
    assert load_config(overrides={"seed": 2**31 - 1}).seed == 2**31 - 1


@pytest.mark.parametrize("budget", [".inf", "-.inf", ".nan", "0", "-1", "11"])
def test_policy_call_budget_must_be_finite_positive_and_small(tmp_path, budget):
    config = write(tmp_path, f"env:\n  policy_call_budget_s: {budget}\n")
    msg = config_error(path=config)
    assert "env.policy_call_budget_s" in msg


def test_policy_call_budget_that_works():
    assert load_config(overrides={"env": {"policy_call_budget_s": 10.0}}).env.policy_call_budget_s == 10.0
    assert math.isclose(load_config().env.policy_call_budget_s, 0.05)


# ----------------------------------------------------------------------------- unreadable config files


def unreadable(tmp_path, monkeypatch, kind):
    path = tmp_path / "run.yaml"
    if kind == "not utf-8":
        path.write_bytes(b"learner:\n  lr: \xe9\xff\n")
    elif kind == "directory":
        path.mkdir()
    else:  # unreadable (root reads anything, so the read itself is made to fail)
        path.write_text("learner: {}\n")
        real = Path.read_bytes

        def refuse(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", refuse)
    return path


@pytest.mark.parametrize("kind, why", [("not utf-8", "not UTF-8"), ("directory", "directory"),
                                       ("unreadable", "Permission denied")])
def test_a_config_file_that_cannot_be_read_is_one_clear_line(tmp_path, monkeypatch, capsys, kind, why):
    path = unreadable(tmp_path, monkeypatch, kind)
    msg = config_error(path=path)
    assert str(path) in msg and why in msg and "\n" not in msg
    for argv in (["config", "show", "--config", str(path)], ["run", "--config", str(path)]):
        rc, out, err = run_cli(capsys, *argv)
        assert rc == 2 and out == "" and err == f"mmotif: {msg}\n"


def test_a_missing_config_file_is_named(tmp_path):
    assert "not found" in config_error(path=tmp_path / "nope.yaml")


def test_every_preset_is_valid():
    for name in PRESETS:
        assert isinstance(preset(name), RunConfig)


def test_a_config_rebuilt_in_an_actor_does_not_need_the_policy_file(tmp_path):
    """Actors on other nodes rebuild the config from a dict (no shared disk): only a user's
    load looks at the training-policy file."""
    from mmotif.config import build_config

    cfg = load_config().model_dump(mode="json")
    cfg["env"]["training_policy"] = str(tmp_path / "on-the-driver-node-only.py")
    assert build_config(cfg).env.training_policy.endswith("on-the-driver-node-only.py")
