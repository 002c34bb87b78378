"""bench/gpu_check.py, the script a lent GPU machine runs: its CPU dry run, its refusal
without CUDA, and a comparator that tells an equal step from a different one."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_on_cpu_prints_rates_and_a_match():
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--batch", "64", "--seconds", "0.2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["network"] == "paper" and result["batch_T_B"] == [32, 2]
    assert result["match"]["ok"]
    assert result["learner"]["fp32"]["samples_per_s"] > 0
    assert result["reward_scoring"]["rows_per_s"]["dedup"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_without_cuda_it_says_why_and_exits_2():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    result = json.loads(out.stdout)
    assert result["error"] == "CUDA is not available" and result["diagnosis"]


def test_comparator_accepts_the_same_function_and_rejects_a_different_step(gpu_check, tmp_path):
    cfg = gpu_check.cluster_config("cpu", 64, str(tmp_path), bf16=False)
    batch = gpu_check.synthetic_batch(cfg)
    assert len(set(batch.obs["skill"][0].tolist())) >= 1 and batch.obs["message"].any()
    fast, reference = gpu_check.make_learner(cfg), gpu_check.make_learner(cfg)
    reference.net.set_shortcuts(False)  # another computation of the same function
    assert gpu_check.compare_steps(fast, reference, batch)["ok"]
    other = gpu_check.cluster_config("cpu", 64, str(tmp_path), bf16=False)
    other = other.model_copy(update={"learner": other.learner.model_copy(update={"lr": other.learner.lr * 3})})
    verdict = gpu_check.compare_steps(gpu_check.make_learner(cfg), gpu_check.make_learner(other), batch)
    assert not verdict["ok"] and verdict["worst_update_rel_error"] > gpu_check.UPDATE_RTOL
