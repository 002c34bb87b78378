"""Bradley-Terry loss, encoding, the split, training on synthetic labels, and stats (§4.3-4.5)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from mmotif.config import RewardConfig
from mmotif.contract import (
    LABEL_FIRST,
    LABEL_SECOND,
    LABEL_TIE,
    LABEL_UNKNOWN,
    Caption,
    CaptionPair,
    Preference,
    encode_reward_input,
)
from mmotif.rewards.model import encode_captions
from mmotif.rewards.stats import (
    QUANTILE_LEVELS,
    compute_reward_stats,
    stats_from_scores,
    unique_reward_inputs,
)
from mmotif.rewards.training import (
    bradley_terry_loss,
    fit_skill_reward,
    is_validation,
    paper_config,
    reward_config,
    train_reward_model,
)
from mmotif.skills.specs import PAPER_SKILLS

torch.set_num_threads(1)


def pref(skill, a: Caption, b: Caption, label: int) -> Preference:
    return Preference(CaptionPair(skill, a, b), label, "test", "synthetic", "v0", 0.0)


# ------------------------------------------------------------------------ loss
def test_bt_loss_matches_hand_computation():
    r1 = torch.tensor([2.0, 0.0, 1.0])
    r2 = torch.tensor([0.0, 3.0, 1.0])
    y = torch.tensor([0.0, 1.0, 0.5])
    # pair 0: first preferred, -log sigmoid(2 - 0); pair 1: second preferred, -log sigmoid(3)
    # pair 2: tie with equal scores: -(0.5 log 0.5 + 0.5 log 0.5) = log 2
    expected = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-3.0)), math.log(2.0)]
    per = bradley_terry_loss(r1, r2, y, reduction="none")
    torch.testing.assert_close(per, torch.tensor(expected))
    torch.testing.assert_close(bradley_terry_loss(r1, r2, y), torch.tensor(sum(expected) / 3))


def test_bt_tie_is_half_half():
    r1, r2 = torch.tensor([1.5]), torch.tensor([-0.5])
    tie = bradley_terry_loss(r1, r2, torch.tensor([0.5]))
    first = bradley_terry_loss(r1, r2, torch.tensor([0.0]))
    second = bradley_terry_loss(r1, r2, torch.tensor([1.0]))
    torch.testing.assert_close(tie, 0.5 * first + 0.5 * second)
    # a tie pulls the scores together: gradient wrt the gap is positive when r1 > r2
    a = torch.tensor([1.5], requires_grad=True)
    bradley_terry_loss(a, r2, torch.tensor([0.5])).backward()
    assert a.grad.item() > 0
    # Preference.soft_target: ties and unknowns train as 0.5
    c = Caption("x", "x", 0)
    assert [pref("s", c, c, lab).soft_target() for lab in (0, 1, 2, 3)] == [0.0, 1.0, 0.5, 0.5]


# -------------------------------------------------------------------- encoding
def test_encode_reward_input_and_captions():
    codes, diffstats = encode_reward_input("Hi é!", 3)
    assert codes.dtype == np.uint8 and codes.shape == (256,)
    assert bytes(codes[:5]) == b"Hi ?!" and not codes[5:].any()
    assert diffstats.dtype == np.float32 and diffstats.tolist() == [1.0, 0, 0, 0, 0]
    assert bytes(encode_reward_input("x" * 300, 0)[0]) == b"x" * 256
    # the env's message buffer (written in place into an observation's rows) reads the same
    buffer = np.zeros(256, np.uint8)
    buffer[:5] = np.frombuffer(b"Hi ?!", np.uint8)
    rows = (np.full(256, 7, np.uint8), np.full(5, 9.0, np.float32))
    encode_reward_input(buffer, -2, out=rows)
    assert np.array_equal(rows[0], codes) and rows[1].tolist() == [-1.0, 0, 0, 0, 0]
    msg, diff = encode_captions([Caption("t1", "You descend the stairs.", 3), Caption("t2", "", -1),
                                 Caption("t3", "abc", 0)])
    assert msg.dtype == torch.uint8 and msg.shape == (3, 256)
    assert diff.dtype == torch.float32 and diff.shape == (3, 5)
    assert diff[:, 0].tolist() == [1.0, -1.0, 0.0] and not diff[:, 1:].any()
    assert not msg[1].any()


def test_split_is_deterministic_order_insensitive_and_stable():
    a, b = Caption("alpha", "a", 0), Caption("beta", "b", 0)
    assert is_validation(pref("s", a, b, 0), 0.3) == is_validation(pref("s", b, a, 1), 0.3)
    prefs = [pref("s", Caption(f"x{i}", "m", 0), Caption(f"y{i}", "n", 0), 0) for i in range(2000)]
    frac = np.mean([is_validation(p, 0.1) for p in prefs])
    assert 0.07 < frac < 0.13
    assert not any(is_validation(p, 0.0) for p in prefs)


# -------------------------------------------------------------------- training
GOOD = "You descend the stairs."
OTHERS = ["", "You see here a scroll of light.", "It's a wall.", "You hit the jackal!",
          "The door opens.", "You find a hidden passage.", "You kill the newt!",
          "There is a staircase down here.", "You climb up the stairs."]


def descender_value(c: Caption) -> float:
    """Ground truth that needs the message AND the depth change."""
    if c.message == GOOD:
        return 3.0
    if c.depth_change > 0:
        return 2.0  # e.g. a trap door: deeper, but less good than taking the stairs
    if c.message == "There is a staircase down here.":
        return 1.0
    return -1.0 if c.depth_change < 0 else 0.0


def synthetic_prefs(n: int, seed: int = 0) -> list[Preference]:
    rng = random.Random(seed)

    def caption(i: int) -> Caption:
        r = rng.random()
        if r < 0.25:
            return Caption(f"[{i}] {GOOD}", GOOD, 1)
        if r < 0.4:
            m = rng.choice(OTHERS)
            return Caption(f"[{i}] {m} (deeper)", m, 1)
        m = rng.choice(OTHERS)
        return Caption(f"[{i}] {m}", m, rng.choice([0, 0, 0, -1]))

    out = []
    for i in range(n):
        a, b = caption(2 * i), caption(2 * i + 1)
        va, vb = descender_value(a), descender_value(b)
        label = LABEL_TIE if va == vb else (LABEL_FIRST if va > vb else LABEL_SECOND)
        out.append(pref("descender", a, b, label))
    return out


FAST = dict(lr=1e-3, batch_size=32, epochs=1, min_steps=40, validation_fraction=0.25)


def test_trained_model_ranks_descending_first():
    prefs = synthetic_prefs(320)
    model, report = train_reward_model(prefs, FAST, seed=0)
    assert report.n_val > 0 and report.n_val_decided >= 30
    assert report.val_accuracy is not None and report.val_accuracy > 0.9, report.history
    assert report.steps >= 40 and report.n_train + report.n_val == 320
    # the learned ranking: stairs down > other descent > staircase seen > nothing > going up
    caps = [Caption("a", GOOD, 1), Caption("b", "The door opens.", 1),
            Caption("c", "It's a wall.", 0), Caption("d", "It's a wall.", -1)]
    msg, diff = encode_captions(caps)
    with torch.no_grad():
        s = model(msg, diff).tolist()
    assert s[0] > s[1] > s[2] > s[3], s


def test_training_is_deterministic_for_a_seed():
    prefs = synthetic_prefs(60)
    cfg = dict(lr=1e-3, batch_size=16, epochs=1, min_steps=6, validation_fraction=0.2)
    m1, r1 = train_reward_model(prefs, cfg, seed=5)
    m2, r2 = train_reward_model(prefs, cfg, seed=5)
    for v1, v2 in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(v1, v2)
    assert r1.history == r2.history


def test_trainer_refuses_bad_input():
    with pytest.raises(ValueError, match="no preferences"):
        train_reward_model([], FAST)
    mixed = synthetic_prefs(4) + [pref("ascender", Caption("u", "u", 0), Caption("v", "v", 0), 0)]
    with pytest.raises(ValueError, match="one skill"):
        train_reward_model(mixed, FAST)
    with pytest.raises(ValueError, match="unknown reward training option"):
        train_reward_model(synthetic_prefs(4), dict(lr=1e-3, learning_rate=2))
    only_unknown = [pref("s", Caption("u", "u", 0), Caption("v", "v", 0), LABEL_UNKNOWN)]
    with pytest.raises(ValueError, match="no preferences"):
        train_reward_model(only_unknown, dict(include_unknown=False))


def test_config_coercion_and_paper_values():
    paper = paper_config()
    assert (paper.lr, paper.batch_size, paper.epochs, paper.shuffle) == (1e-5, 1000, 20, False)

    section = RewardConfig(lr=0.5, epochs=2)  # the run's `reward` section is used as it is
    assert reward_config(section) is section
    cfg = reward_config(dict(lr=0.5, epochs=2))
    assert cfg.lr == 0.5 and cfg.epochs == 2 and cfg.batch_size == RewardConfig().batch_size
    assert reward_config(None) == RewardConfig()


# ----------------------------------------------------------------------- stats
class FirstCharModel(nn.Module):
    """Scores a message by its first char code plus 100 x depth sign: hand-checkable stats."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, message, diffstats):
        return message[:, 0].float() + 100.0 * diffstats[:, 0] + self.dummy


def test_stats_count_unique_entries_only():
    caps = [Caption("t1", "A", 0), Caption("t2", "B", 0), Caption("t3", "C", 0)]
    dups = [Caption(f"dup{i}", "A", 0) for i in range(100)]  # same reward input, other texts
    s1 = compute_reward_stats(FirstCharModel(), caps, 0.5)
    s2 = compute_reward_stats(FirstCharModel(), caps + dups, 0.5)
    assert s1.n_unique == s2.n_unique == 3
    assert s2.mean == pytest.approx(66.0) and s1 == s2
    assert s2.std == pytest.approx(np.std([65, 66, 67]))
    # the depth change is part of the identity: "A" at +1 is a new entry
    assert len(unique_reward_inputs(caps + [Caption("t4", "A", 1)])) == 4


def test_quantile_table_and_threshold():
    scores = np.arange(101, dtype=np.float64)  # 0..100
    st = stats_from_scores(scores, 0.85)
    norm = (scores - scores.mean()) / scores.std()
    assert len(st.quantiles) == len(QUANTILE_LEVELS) == 19
    assert st.quantiles[0] == pytest.approx(np.quantile(norm, 0.05))
    assert st.quantiles[-1] == pytest.approx(np.quantile(norm, 0.95))
    assert st.threshold == pytest.approx(np.quantile(norm, 0.85))
    assert st.threshold == pytest.approx(st.quantiles[16])  # the 85% row
    assert stats_from_scores(scores, 0.95).threshold == pytest.approx(st.quantiles[18])
    const = stats_from_scores(np.ones(5), 0.85)  # degenerate model: std floored, no NaN
    assert const.std > 0 and math.isfinite(const.threshold)
    with pytest.raises(ValueError, match="non-finite"):
        stats_from_scores([1.0, float("nan")], 0.85)


def test_threshold_quantiles_are_skill_data():
    """The paper's per-skill threshold quantiles live in the skill specs (config data), once."""
    assert {s.name: s.threshold_quantile for s in PAPER_SKILLS} == {
        "discoverer": 0.95, "descender": 0.85, "ascender": 0.85, "worshipper": 0.85, "merchant": 0.85}


def test_fit_skill_reward_produces_publishable_entry():
    prefs = synthetic_prefs(40)
    entry, report = fit_skill_reward("descender", prefs, dict(lr=1e-3, batch_size=16, epochs=1, min_steps=3),
                                     seed=1, threshold_quantile=0.85)
    assert entry.name == "descender" and entry.n_labels == 40 and not entry.is_constant
    assert entry.stats.threshold_quantile == 0.85
    assert entry.stats.n_unique == len(unique_reward_inputs(
        [c for p in prefs for c in (p.pair.first, p.pair.second)]))
    assert entry.val_accuracy == report.val_accuracy
