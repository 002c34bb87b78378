"""Publishing, loading and scoring immutable reward-model versions."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mmotif.contract import RewardModelVersion
from mmotif.rewards.model import RewardModel
from mmotif.rewards.stats import RewardStats, stats_from_scores
from mmotif.rewards.versions import (
    RewardModelSet,
    RewardVersionError,
    SkillReward,
    latest_version,
    list_versions,
    load,
    load_dir,
    publish,
)

torch.set_num_threads(1)
SKILLS = ["discoverer", "descender", "ascender"]


def entry(name: str, seed: int, n_labels: int = 100) -> SkillReward:
    torch.manual_seed(seed)
    m = RewardModel()
    stats = stats_from_scores(torch.randn(50) + seed, 0.85)
    return SkillReward(name=name, state_dict=m.state_dict(), stats=stats, val_accuracy=0.5 + seed / 100,
                       n_labels=n_labels, train_report={"steps": seed})


def batch(n: int = 64, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    msgs = torch.zeros(6, 256, dtype=torch.uint8)
    for i, text in enumerate([b"", b"You descend the stairs.", b"It's a wall.", b"You kill the newt!",
                              b"The door opens.", b"You climb up the stairs."]):
        msgs[i, :len(text)] = torch.tensor(list(text), dtype=torch.uint8)
    pick = torch.randint(0, 6, (n,), generator=g)
    message = msgs[pick]
    diff = torch.zeros(n, 5)
    diff[:, 0] = torch.randint(-1, 2, (n,), generator=g).float()
    sid = torch.randint(0, k, (n,), generator=g)
    return message, diff, sid


def test_round_trip_gives_identical_scores(tmp_path):
    entries = [entry(s, i) for i, s in enumerate(SKILLS)]
    rec = publish(tmp_path, entries, extra={"store_cursor": 123})
    assert isinstance(rec, RewardModelVersion)
    assert rec.version == 1 and rec.skills == tuple(SKILLS) and rec.n_labels == (100, 100, 100)
    assert os.path.basename(rec.path) == "v000001"
    assert [p.name for p in tmp_path.iterdir()] == ["v000001"]  # no temp dirs left behind

    original = RewardModelSet(entries)
    loaded = load(tmp_path, "latest", skills=SKILLS)
    assert loaded.version == 1 and loaded.skills == tuple(SKILLS)
    m, d, s = batch()
    assert torch.equal(original.score(m, d, s), loaded.score(m, d, s))
    for a, b in zip(original.entries, loaded.entries):
        assert a.stats == b.stats and a.val_accuracy == b.val_accuracy and a.n_labels == b.n_labels
    torch.testing.assert_close(loaded.threshold, torch.tensor([e.stats.threshold for e in entries]))
    manifest = json.loads((tmp_path / "v000001" / "manifest.json").read_text())
    assert manifest["extra"] == {"store_cursor": 123}
    assert len(manifest["skills"][0]["stats"]["quantiles"]) == 19


def test_scores_match_each_skills_model_and_dedup_is_exact():
    entries = [entry(s, i) for i, s in enumerate(SKILLS)]
    rset = RewardModelSet(entries)
    m, d, s = batch(200)
    out = rset.score(m, d, s)
    # dedup only changes batch sizes inside the conv layers (float reassociation)
    torch.testing.assert_close(out, rset.score(m, d, s, dedup=False), rtol=1e-5, atol=1e-6)
    for k, e in enumerate(entries):
        model = RewardModel()
        model.load_state_dict(e.state_dict)
        rows = s == k
        with torch.no_grad():
            torch.testing.assert_close(out[rows], model.eval()(m[rows], d[rows]))
    # leading (T, B) dims are kept
    out_tb = rset.score(m.view(20, 10, 256), d.view(20, 10, 5), s.view(20, 10))
    assert out_tb.shape == (20, 10) and torch.equal(out_tb.flatten(), out)  # same batch: bit-exact
    with pytest.raises(ValueError, match="skill ids"):
        rset.score(m[:2], d[:2], torch.tensor([0, 3]))


def test_rows_scored_before_come_from_the_version_memo(monkeypatch):
    rset = RewardModelSet([entry(s, i) for i, s in enumerate(SKILLS)])
    scored = []
    real = rset._score_rows
    monkeypatch.setattr(rset, "_score_rows", lambda m, d, s: scored.append(len(s)) or real(m, d, s))
    m, d, s = batch(200, seed=1)
    first = rset.score(m, d, s)
    distinct = torch.unique(torch.cat([m.long(), d.long() + 1, s[:, None]], 1), dim=0).shape[0]
    assert scored == [distinct]
    again = rset.score(m.flip(0), d.flip(0), s.flip(0))  # same rows, another order: no model runs
    assert scored == [distinct] and torch.equal(again, first.flip(0))
    m2, d2, s2 = batch(50, seed=2)
    mixed = rset.score(torch.cat([m, m2]), torch.cat([d, d2]), torch.cat([s, s2]))
    fresh = RewardModelSet(rset.entries).score(torch.cat([m, m2]), torch.cat([d, d2]), torch.cat([s, s2]))
    torch.testing.assert_close(mixed, fresh, rtol=1e-5, atol=1e-6)  # memo or not: the same scores
    assert len(scored) == 1 or scored[1] < 50  # only the new batch's unseen rows were scored


def test_a_full_memo_is_cleared_without_losing_the_batch(monkeypatch):
    import mmotif.rewards.versions as versions

    monkeypatch.setattr(versions, "SCORE_MEMO_ROWS", 8)
    rset = RewardModelSet([entry(s, i) for i, s in enumerate(SKILLS)])
    m, d, s = batch(200, seed=1)
    first = rset.score(m[:100], d[:100], s[:100])  # more distinct rows than the memo holds
    both = rset.score(m, d, s)  # rows seen before and new ones: the memo fills and is cleared
    torch.testing.assert_close(both[:100], first, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both, RewardModelSet(rset.entries).score(m, d, s), rtol=1e-5, atol=1e-6)
    assert len(rset._memo) <= 8 + 54  # cleared, then this batch's new rows


def test_constant_set_is_all_zero_rewards():
    rset = RewardModelSet.constant(SKILLS)
    m, d, s = batch()
    assert not rset.score(m, d, s).any()
    cnt = torch.ones_like(s)
    assert not rset.intrinsic_reward(m, d, s, cnt).any()
    # a mix: one trained skill, others still constant
    mixed = RewardModelSet([SkillReward.constant("discoverer"), entry("descender", 1),
                            SkillReward.constant("ascender")])
    out = mixed.score(m, d, s)
    assert not out[s != 1].any() and out[s == 1].abs().sum() > 0


def test_constant_versions_publish_and_load(tmp_path):
    publish(tmp_path, RewardModelSet.constant(SKILLS))
    loaded = load(tmp_path, 1, skills=SKILLS)
    assert all(e.is_constant for e in loaded.entries)


def test_version_numbers_increase_and_load_by_number(tmp_path):
    for i in range(3):
        publish(tmp_path, [entry(s, 10 * i + j) for j, s in enumerate(SKILLS)])
    assert list_versions(tmp_path) == [1, 2, 3] and latest_version(tmp_path) == 3
    m, d, s = batch()
    v2 = load(tmp_path, 2)
    assert v2.version == 2
    assert not torch.equal(v2.score(m, d, s), load(tmp_path).score(m, d, s))
    with pytest.raises(RewardVersionError, match="version 7 not found"):
        load(tmp_path, 7)
    with pytest.raises(RewardVersionError, match="already exists"):
        publish(tmp_path, [entry(s, 0) for s in SKILLS], version=2)
    assert latest_version(tmp_path / "nothing") is None


def test_corrupt_or_mismatched_versions_are_refused(tmp_path):
    publish(tmp_path, [entry(s, i) for i, s in enumerate(SKILLS)])
    vdir = tmp_path / "v000001"
    with pytest.raises(RewardVersionError, match=r"skills \['discoverer', 'descender', 'ascender'\].*expects"):
        load(tmp_path, skills=["discoverer", "ascender", "descender"])  # order matters

    weights = vdir / "skill_01.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(RewardVersionError, match="checksum mismatch"):
        load(tmp_path)
    weights.unlink()
    with pytest.raises(RewardVersionError, match="weights file 'skill_01.pt' missing"):
        load(tmp_path)

    publish(tmp_path, [entry(s, i) for i, s in enumerate(SKILLS)])
    v2 = tmp_path / "v000002"
    (v2 / "manifest.json").write_text("{not json")
    with pytest.raises(RewardVersionError, match="unreadable manifest.json"):
        load(tmp_path)
    (v2 / "manifest.json").unlink()
    with pytest.raises(RewardVersionError, match="missing manifest.json"):
        load_dir(v2)


def test_update_round_trip():
    entries = [entry(s, i) for i, s in enumerate(SKILLS)]
    rset = RewardModelSet(entries, version=9)
    again = RewardModelSet.from_update(rset.to_update(), skills=SKILLS)
    m, d, s = batch()
    assert again.version == 9 and torch.equal(rset.score(m, d, s), again.score(m, d, s))
    with pytest.raises(RewardVersionError, match="expects"):
        RewardModelSet.from_update(rset.to_update(), skills=["x", "y", "z"])


def test_bad_stats_are_refused():
    bad = RewardStats(mean=float("nan"), std=1.0, threshold_quantile=0.85, threshold=0.0,
                      quantiles=(0.0,) * 19, n_unique=1)
    with pytest.raises(ValueError, match="mean is not finite"):
        RewardModelSet([SkillReward("x", None, bad)])
