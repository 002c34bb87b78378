"""The RL-time intrinsic reward (spec §4.6)."""

from __future__ import annotations

import pytest
import torch

from mmotif.rewards.transform import intrinsic_reward

MEAN = torch.tensor([1.0, -2.0])
STD = torch.tensor([2.0, 0.5])
TAU = torch.tensor([0.95, 1.32])


def r(raw, sid, count, **kw):
    raw = torch.as_tensor(raw, dtype=torch.float32)
    return intrinsic_reward(raw, torch.as_tensor(sid), MEAN, STD, TAU,
                            torch.as_tensor(count, dtype=torch.int32), **kw)


def test_matches_hand_computation():
    # skill 0: (5 - 1) / 2 = 2.0 > 0.95 -> 0.1 * 2.0 / 1^3
    # skill 1: (-1 - -2) / 0.5 = 2.0 > 1.32 -> 0.1 * 2.0 / 2^3
    out = r([5.0, -1.0], [0, 1], [1, 2])
    torch.testing.assert_close(out, torch.tensor([0.2, 0.2 / 8]))
    assert out.dtype == torch.float32


def test_threshold_is_per_skill_and_strict():
    # normalised 1.0 passes tau_0 = 0.95 but not tau_1 = 1.32
    out = r([3.0, -1.5], [0, 1], [1, 1])
    torch.testing.assert_close(out, torch.tensor([0.1, 0.0]))
    # exactly at the threshold -> 0 (strict >), and negative normalised scores -> 0
    eq = intrinsic_reward(torch.tensor([1.0, -5.0]), torch.tensor([0, 0]), torch.tensor([0.0]),
                          torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([1, 1]))
    assert eq.tolist() == [0.0, 0.0]
    # the same raw score gates differently depending on the skill id that produced it
    out = r([-1.2, -1.2], [0, 1], [1, 1])
    assert out[0] == 0.0 and out[1] > 0  # skill 0: -1.1; skill 1: 1.6 > 1.32


def test_count_exponent_and_coef():
    counts = torch.tensor([1, 2, 3, 10])
    out = r([5.0] * 4, [0] * 4, counts)
    torch.testing.assert_close(out, 0.2 / counts.float() ** 3)
    out_b1 = r([5.0] * 4, [0] * 4, counts, beta=1.0, coef=1.0)
    torch.testing.assert_close(out_b1, 2.0 / counts.float())
    # a count of 0 (never counted) is treated as the first occurrence
    assert r([5.0], [0], [0]).item() == pytest.approx(0.2)


def test_bound_clamps_normalised_reward():
    out = r([1e6, 1e6], [0, 0], [1, 1])
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0]))  # 0.1 * 10
    assert r([1e6], [0], [1], bound=None).item() == pytest.approx(0.1 * (1e6 - 1) / 2)
    assert r([1e6], [0], [1], bound=3.0).item() == pytest.approx(0.3)


def test_batched_shapes_and_device_agnostic_inputs():
    raw = torch.randn(32, 8) * 3
    sid = torch.randint(0, 2, (32, 8))
    cnt = torch.randint(1, 4, (32, 8))
    out = intrinsic_reward(raw, sid, MEAN, STD, TAU, cnt)
    assert out.shape == (32, 8)
    flat = intrinsic_reward(raw.flatten(), sid.flatten(), MEAN, STD, TAU, cnt.flatten())
    torch.testing.assert_close(out.flatten(), flat)
    # reference, element by element
    for i in range(32):
        for j in range(8):
            k = sid[i, j]
            z = ((raw[i, j] - MEAN[k]) / STD[k]).clamp(-10, 10)
            want = 0.1 * z / cnt[i, j].float() ** 3 if z > TAU[k] else 0.0
            assert out[i, j].item() == pytest.approx(float(want), abs=1e-6)


def test_non_finite_raw_is_an_error_naming_the_tensor():
    with pytest.raises(ValueError, match=r"`raw`.*1 non-finite"):
        r([1.0, float("nan")], [0, 1], [1, 1])
    with pytest.raises(ValueError, match=r"`raw`"):
        r([float("inf")], [0], [1])


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="skill_ids"):
        r([1.0], [2], [1])
    with pytest.raises(ValueError, match="skill_ids"):
        r([1.0], [-1], [1])
    with pytest.raises(ValueError, match="same shape"):
        r([1.0, 2.0], [0], [1, 1])
    with pytest.raises(ValueError, match="`std`"):
        intrinsic_reward(torch.tensor([1.0]), torch.tensor([0]), torch.tensor([0.0]), torch.tensor([0.0]),
                         torch.tensor([0.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="`mean`"):
        intrinsic_reward(torch.tensor([1.0]), torch.tensor([0]), torch.tensor([float("nan")]),
                         torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1]))


def test_gate_at_neutral_floor_never_pays_a_step_where_nothing_happened():
    from mmotif.rewards.stats import stats_from_scores

    # a flat model: the neutral step (raw 0.9) is in the top 15% of the unique inputs
    scores = [0.0] * 17 + [0.9, 1.0, 1.0]
    plain = stats_from_scores(scores, 0.85)
    floored = stats_from_scores(scores, 0.85, neutral_score=0.9)
    assert plain.threshold < floored.threshold == pytest.approx(floored.neutral_floor)
    mean, std = torch.tensor([floored.mean]), torch.tensor([floored.std])
    paid = lambda stats, raw: float(intrinsic_reward(  # noqa: E731
        torch.tensor([raw]), torch.tensor([0]), mean, std, torch.tensor([stats.threshold]),
        torch.tensor([1], dtype=torch.int32)))
    assert paid(plain, 0.9) > 0, "the quantile gate alone pays the neutral step"
    assert paid(floored, 0.9) == 0 and paid(floored, 1.0) > 0
    # a model that ranks the neutral step low keeps the paper's quantile threshold
    assert stats_from_scores(scores, 0.85, neutral_score=0.0).threshold == plain.threshold
