"""The learner core (no Ray): bounded policy lag, exact optimisations vs reference, the bf16 path."""

import torch

from mmotif.actors.rollout import RolloutWorker
from mmotif.config import load_config
from mmotif.learners.learner import Learner


def test_learner_drops_rollouts_older_than_max_policy_lag(tmp_path):
    cfg = load_config(preset_name="local", overrides={
        "annotator": {"num_annotators": 0},
        "actors": {"num_actors": 1, "envs_per_actor": 4},
        "learner": {"batch_size": 32, "rollout": 8, "max_policy_lag": 2},
        "paths": {"run_dir": str(tmp_path / "run")},
    })
    learner, worker = Learner(cfg), RolloutWorker(cfg, 0, seed=1)
    worker.set_weights(learner.weights())
    old = worker.collect()  # acted by version 0; one batch is one SGD step
    assert old.policy_version == 0
    for version in (1, 2, 3):  # lag 0, 1, 2: trained on
        stats = learner.add(old)
        assert stats is not None and stats["policy_version"] == version
    assert learner.add(old) is None  # lag 3 > 2: dropped, no step
    assert learner.batches_dropped_for_lag == 1 and learner.policy_version == 3
    worker.set_weights(learner.weights())
    stats = learner.add(worker.collect())
    assert stats["policy_version"] == 4 and stats["batches_dropped_for_lag"] == 1
    resumed = Learner(cfg)
    resumed.load_state(learner.state())
    assert resumed.batches_dropped_for_lag == 1, "the counter must survive a checkpoint (a Prometheus counter)"


def test_train_step_with_distinct_inputs_equals_reference(tmp_path):
    """One SGD step on a real rollout (mostly empty or repeated messages, repeated crops): the
    same stats and the same gradients whether each distinct input is encoded once or every
    row is. Gradients, not the new weights: Adam's first step moves every weight by about
    lr * sign(gradient), so a gradient element at float-noise level (~1e-10) can flip its
    weight's update by 2 lr between two exact computations."""
    cfg = load_config(preset_name="local", overrides={
        "annotator": {"num_annotators": 0},
        "actors": {"num_actors": 1, "envs_per_actor": 4},
        "learner": {"batch_size": 64, "rollout": 16},
        "paths": {"run_dir": str(tmp_path / "run")},
    })
    worker = RolloutWorker(cfg, 0, seed=3)
    batch = worker.collect()
    worker.close()
    assert len({bytes(row) for row in batch.obs["message"].reshape(-1, batch.obs["message"].shape[-1])}) < 40
    fast, reference = Learner(cfg), Learner(cfg)
    reference.net.set_shortcuts(False)
    fast_stats, ref_stats = fast.train([batch]), reference.train([batch])
    for key, value in ref_stats.items():
        assert abs(fast_stats[key] - value) <= 1e-4 * max(1.0, abs(value)), key
    for (name, p), q in zip(fast.net.named_parameters(), reference.net.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_bf16_autocast_forward_path(tmp_path):
    """The bf16 forward (meant for a CUDA learner) exercised through CPU autocast: the step
    trains in float32 weights and lands near the float32 step. On CPU the flag is off."""
    cfg = load_config(preset_name="local", overrides={
        "annotator": {"num_annotators": 0},
        "actors": {"num_actors": 1, "envs_per_actor": 4},
        "learner": {"batch_size": 64, "rollout": 16, "bf16_autocast": True, "device": "cpu"},
        "paths": {"run_dir": str(tmp_path / "run")},
    })
    worker = RolloutWorker(cfg, 0, seed=4)
    batch = worker.collect()
    worker.close()
    bf16, fp32 = Learner(cfg), Learner(cfg)
    assert not bf16.hp.bf16_autocast, "bf16 autocast is for CUDA learners only"
    bf16.hp = bf16.hp.model_copy(update={"bf16_autocast": True})
    bf16_stats, fp32_stats = bf16.train([batch]), fp32.train([batch])
    assert all(p.dtype == torch.float32 for p in bf16.net.parameters())
    for key in ("loss", "value_loss", "entropy", "vs_mean"):
        assert abs(bf16_stats[key] - fp32_stats[key]) <= 0.05 * max(1.0, abs(fp32_stats[key])), key


def test_network_shortcuts_follow_the_config(tmp_path):
    from mmotif.models.build import make_network
    from mmotif.models.network import EXACT_SHORTCUTS

    for on in (True, False):
        cfg = load_config(preset_name="local", overrides={
            "annotator": {"num_annotators": 0}, "learner": {"network": {"size": "local", "shortcuts": on}},
            "paths": {"run_dir": str(tmp_path / "run")}})
        net = make_network(cfg)
        assert all(getattr(net, name) is on for name in EXACT_SHORTCUTS)
