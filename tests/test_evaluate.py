"""Zero-shot evaluation with a tiny, randomly initialised local-size network: the loop runs
real skill envs with the task trackers, the table prints, the report files exist."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmotif.config import load_config
from mmotif.models.build import make_network
from mmotif.tasks import reference_policy_source, task_policy
from mmotif.checkpoint import load_network
from mmotif.cli import add_eval_arguments
from mmotif.evaluation.evaluate import evaluate, mean_se
from mmotif.runtime.evaluation import cmd_eval


def tiny_net(cfg):
    torch.manual_seed(0)
    return make_network(cfg)


def test_mean_se():
    assert mean_se([1, 1, 1]) == (1.0, 0.0)
    m, se = mean_se([0, 1])
    assert m == 0.5 and abs(se - 0.5) < 1e-9
    assert mean_se([3]) == (3.0, 0.0)


def test_evaluate_runs_episodes_and_writes_the_report(tmp_path):
    cfg = load_config(preset_name="local")
    lines = []
    res = evaluate(cfg, tiny_net(cfg), "gnomish", episodes=3, seed=1, num_envs=2, max_steps=40,
                   record=1, out_dir=tmp_path, log=lines.append)
    assert len(res.episodes) == 3 and len(lines) == 3
    assert [e["episode"] for e in res.episodes] == [0, 1, 2]
    for e in res.episodes:
        assert e["steps"] <= 40 and e["exact_method"] == "messages and status"
        assert set(e["skill_steps"]) == {"discoverer", "descender", "ascender", "worshipper", "merchant"}
    files = res.write(tmp_path)
    table = res.table_markdown()
    assert "| success rate | mmotif proxy | mmotif exact | paper (MaestroMotif) |" in table
    assert "46.00% ± 1.70%" in table
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert summary["episodes"] == 3 and summary["paper"]["mean"] == 0.46
    for key in ("markdown", "json", "chart", "replay_gif", "replay_html"):
        assert Path(files[key]).stat().st_size > 0, key
    assert files["chart"].endswith("gnomish.png")


def test_evaluate_counts_and_wires_attributes_with_a_policy_object(tmp_path):
    cfg = load_config(preset_name="local")
    policy = task_policy("goldenexit", seed=3)
    res = evaluate(cfg, tiny_net(cfg), "goldenexit", policy, episodes=2, seed=2, num_envs=2,
                   max_steps=30, log=lambda _: None)
    assert res.policy_name == "reference:goldenexit"
    assert all(e["policy_errors"] == 0 for e in res.episodes)
    res = evaluate(cfg, tiny_net(cfg), "transactions", episodes=2, seed=2, num_envs=1, max_steps=20,
                   log=lambda _: None)
    table = res.table_markdown()
    assert "sales per episode" in table and "0.66 ± 0.01" in table
    assert set(res.summary()["counts"]) >= {"sales", "sales_proxy", "altar_drops"}


def test_cmd_eval_random_init_and_policy_file(tmp_path, capsys):
    policy_file = tmp_path / "delphi_policy.py"
    policy_file.write_text(reference_policy_source("delphi"))
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(["--task", "delphi", "--random-init", "--episodes", "2", "--max-steps", "15",
                              "--policy", str(policy_file), "--out", str(tmp_path / "eval"), "--record", "0",
                              "--actors", "0"])
    assert cmd_eval(args) == 0
    out = capsys.readouterr().out
    assert "### Delphi" in out and "29.00% ± 1.20%" in out and str(policy_file) in out
    assert (tmp_path / "eval" / "delphi" / "delphi.png").is_file()


def test_load_network_from_a_checkpoint_folder(tmp_path):
    cfg = load_config(preset_name="local")
    net = tiny_net(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000000000100"
    ckpt.mkdir(parents=True)
    torch.save({"net": net.state_dict(), "env_steps": 100}, ckpt / "learner.pt")
    (ckpt / "config.yaml").write_text(cfg.to_yaml())
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text(ckpt.name)
    cfg2, net2, where = load_network(tmp_path / "run")
    assert where == str(ckpt)
    for (k, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in net2.parameters())


# ---------------------------------------------------------------------------------------
# the paper's protocol: intervals, seeds, parallel actors, the generated policy by default
# ---------------------------------------------------------------------------------------
def test_wilson_interval_against_known_values():
    from mmotif.evaluation.intervals import episodes_for_half_width, wilson_interval

    def close(got, want):
        return all(abs(g - w) < 5e-5 for g, w in zip(got, want))

    assert close(wilson_interval(81, 263), (0.2553, 0.3662))     # Newcombe (1998), example (i)
    assert close(wilson_interval(15, 148), (0.0624, 0.1605))     # example (ii)
    assert close(wilson_interval(0, 20), (0.0, 0.1611))          # example (iii): not empty at 0
    assert close(wilson_interval(1, 29), (0.0061, 0.1718))       # example (iv)
    low, high = wilson_interval(540, 1080)
    assert (high - low) / 2 < 0.03 and episodes_for_half_width() == 1068


def test_shard_plan_splits_episodes_over_seeds_and_workers():
    from mmotif.evaluation.evaluate import shard_plan

    plan = shard_plan(10, [0, 1, 2], workers=4)
    assert sum(n for *_, n in plan) == 10 and {s for s, *_ in plan} == {0, 1, 2}
    assert [sum(n for s, _, n in plan if s == seed) for seed in (0, 1, 2)] == [4, 3, 3]
    assert len(plan) >= 4 and all(n > 0 for *_, n in plan)
    assert shard_plan(2, [0, 1], workers=8) == [(0, 0, 1), (1, 0, 1)]      # never an empty shard


def _eval_args(*argv):
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args(list(argv))


def test_parallel_eval_over_seeds_in_ray_actors(tmp_path, capsys):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        args = _eval_args("--task", "gnomish", "--random-init", "--reference", "--episodes", "4", "--seeds", "2",
                          "--max-steps", "15", "--out", str(tmp_path / "eval"), "--record", "1")
        assert cmd_eval(args) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "eval" / "gnomish" / "results.json").read_text())
    summary, episodes = data["summary"], data["episodes"]
    assert summary["per_seed"].keys() == {"0", "1"} and all(v["episodes"] == 2 for v in summary["per_seed"].values())
    assert len({e["worker"] for e in episodes}) == 2 == summary["workers"]     # two actors played
    assert summary["policy"] == "reference:gnomish"
    iv = summary["interval95"]["exact"]
    assert iv["low"] <= summary["exact"]["mean"] <= iv["high"] and iv["half_width"] > 0.03
    assert "95% interval (Wilson)" in out and "wider than the paper-scale ±3" in out
    assert Path(episodes[0]["replay"]).is_file()                  # sent back as bytes, written here


def test_eval_uses_the_runs_generated_policy_and_the_reference_only_by_flag(tmp_path, capsys):
    cfg = load_config(preset_name="local")
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_000000000100"
    ckpt.mkdir(parents=True)
    torch.save({"net": tiny_net(cfg).state_dict(), "env_steps": 100}, ckpt / "learner.pt")
    (ckpt / "config.yaml").write_text(cfg.to_yaml())
    (run / "checkpoints" / "LATEST").write_text(ckpt.name)
    common = ("--task", "delphi", "--checkpoint", str(run), "--episodes", "2", "--seeds", "1",
              "--max-steps", "10", "--record", "0", "--actors", "0")
    assert cmd_eval(_eval_args(*common)) == 2
    assert "no generated policy for delphi" in capsys.readouterr().err
    (run / "plans").mkdir()
    (run / "plans" / "delphi.py").write_text(reference_policy_source("delphi"))
    assert cmd_eval(_eval_args(*common)) == 0
    summary = json.loads((run / "eval" / "delphi" / "results.json").read_text())["summary"]
    assert summary["policy"] == str(run / "plans" / "delphi.py") and summary["episodes"] == 2
    assert cmd_eval(_eval_args(*common, "--reference")) == 0
    summary = json.loads((run / "eval" / "delphi" / "results.json").read_text())["summary"]
    assert summary["policy"] == "reference:delphi"
