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
from mmotif.evaluation.evaluate import cmd_eval, evaluate, mean_se


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
                              "--policy", str(policy_file), "--out", str(tmp_path / "eval"), "--record", "0"])
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
