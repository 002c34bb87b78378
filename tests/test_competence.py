"""Skill competence on a fixed yardstick: event counting (synthetic and on real NLE), the
random-action baseline and its cache, the report's competence plot."""

import json
import math
import time

import numpy as np
import pytest

from mmotif.config import load_config
from mmotif.contract import EpisodeSummary
from mmotif.nethack import actions as A
from mmotif.nethack.features import BL_DEPTH, BL_DNUM, BL_TIME, BL_X
from mmotif.evaluation.report import write_report
from mmotif.skills import baseline
from mmotif.skills.build import make_skill_env
from mmotif.skills.competence import (
    BL_EXP, EVENT_NAMES, STONE_GLYPH, CompetenceCounter, CompetenceTally, WindowTally, metric_values,
)
from test_skill_env import scripted_env
from wizard import teleport_onto

NAMES = ("discoverer", "descender", "ascender", "worshipper", "merchant")


def blank_map():
    return np.full((21, 79), STONE_GLYPH, np.int16)


def bottom_line(depth=1, dnum=0, exp=0, time_=1, x=10):
    bl = [0] * 27
    bl[BL_DEPTH], bl[BL_DNUM], bl[BL_EXP], bl[BL_TIME], bl[BL_X] = depth, dnum, exp, time_, x
    return bl


# -- the counter on synthetic steps ------------------------------------------------------------
def test_events_are_credited_to_the_acting_skill():
    c = CompetenceCounter(len(NAMES))
    glyphs = blank_map()
    glyphs[5, 5:10] = 2378  # five cells in view at the start: nobody's discovery
    c.reset(bottom_line(), glyphs)
    c.update(1, bottom_line(depth=2, time_=2), b"You descend the stairs.", blank_map())  # descender
    c.update(2, bottom_line(depth=1, time_=3), b"", glyphs)  # ascender, back on level 1
    seen = glyphs.copy()
    seen[6, 5:8] = 2378
    c.update(0, bottom_line(time_=4), b"", seen)  # discoverer sees 3 new cells of level 1
    c.update(0, bottom_line(exp=4, time_=5), b"You kill the newt!", seen)  # one kill, not two
    c.update(0, bottom_line(exp=4, time_=6), b"You kill the jackal!", seen)  # the message alone
    out = c.summary(NAMES)
    assert out["descender"]["descent"] == 1 and out["ascender"]["ascent"] == 1
    assert sum(out[s]["descent"] for s in NAMES) == 1 and sum(out[s]["ascent"] for s in NAMES) == 1
    assert out["discoverer"]["new_cells"] == 3 and out["ascender"]["new_cells"] == 0
    assert out["discoverer"]["kill"] == 2
    assert set(out["discoverer"]) == set(EVENT_NAMES)


def test_messages_in_nethacks_own_words():
    c = CompetenceCounter(len(NAMES))
    c.reset(bottom_line(), blank_map())
    for skill, message in [
        (3, b"There is a black flash as a ring of adornment hits the altar."),
        (3, b"There is an amber flash as 2 potions of water hit the altar."),
        (3, b"A scroll labeled FOOBIE BLETCH lands on the altar."),
        (3, b"There is an altar to Chih Sung-tzu (lawful) here."),
        (4, b"Asidonhopo offers 5 gold pieces for your scroll.  Sell it? [ynaq] (y) "),
        (4, b"Asidonhopo offers only 2 gold pieces for your rings.  Sell them? [ynaq] (y) "),
        (4, b"You sold a ring of adornment for 50 gold pieces."),
        (0, b"You see here a scroll labeled FOOBIE BLETCH."),
    ]:
        c.update(skill, bottom_line(), message, blank_map())
    out = c.summary(NAMES)
    assert out["worshipper"]["altar_identify"] == 3 and out["worshipper"]["altar_seen"] == 1
    assert out["merchant"]["shop_offer"] == 2 and out["merchant"]["sale"] == 1
    assert not any(out["discoverer"].values())


def test_a_new_level_is_new_and_a_known_one_is_not():
    c = CompetenceCounter(len(NAMES))
    first = blank_map()
    first[3, 3:13] = 2378
    c.reset(bottom_line(), first)
    second = blank_map()
    second[10, 10:14] = 2378
    c.update(1, bottom_line(depth=2, time_=2), b"", second)  # 4 cells of a new level
    c.update(2, bottom_line(depth=1, time_=3), b"", first)  # level 1 again: nothing new
    c.update(1, bottom_line(depth=3, dnum=2, time_=4), b"", second)  # the Mines at depth 3: new
    out = c.summary(NAMES)
    assert out["descender"]["new_cells"] == 8 and out["ascender"]["new_cells"] == 0
    assert out["descender"]["descent"] == 2


def test_the_step_that_ends_the_game_reads_no_map():
    c = CompetenceCounter(len(NAMES))
    c.reset(bottom_line(), blank_map())
    zeroed = np.zeros((21, 79), np.int16)  # not stone: would read as 1659 new cells
    c.update(0, bottom_line(time_=2), b"You die...", zeroed, live=False)
    assert not any(c.summary(NAMES)["discoverer"].values())


def summary(skill_steps, competence):
    return EpisodeSummary(episode_steps=sum(skill_steps.values()), score=0, skill_switches=0, max_depth=1,
                          policy_errors=0, truncated=True, skill_steps=skill_steps, competence=competence)


def test_tallies_rates_and_window():
    episode = summary({"descender": 500, "discoverer": 2000, "merchant": 0},
                      {"descender": {"descent": 2}, "discoverer": {"new_cells": 300, "kill": 4}})
    tally = CompetenceTally()
    tally.add_episode(episode)
    tally.add_episode(episode)
    rates = tally.rates()
    assert rates == {"descender": {"descent": 4.0}, "discoverer": {"new_cells": 150.0, "kill": 2.0}}
    assert metric_values(rates)["competence/descender:descent"] == 4.0
    pooled = tally.pooled_rates(["descender", "ascender"])
    assert pooled["descender"]["descent"] == pytest.approx(1000 * 4 / 5000)
    window = WindowTally(window_steps=2500)
    for steps in (1000, 100, 100):
        window.add_episode(summary({"descender": steps}, {"descender": {"descent": 1}}))
    window.add_episode(summary({"descender": 2500}, {"descender": {"descent": 0}}))
    assert window.episodes == 1 and window.rates()["descender"]["descent"] == 0.0


# -- real NLE ----------------------------------------------------------------------------------
def test_a_real_descent_counts_for_the_descender_only():
    env = scripted_env("descender")
    teleport_onto(env.game, ">")
    _, _, _, _, info = env.step(A.INDEX["DOWN"])
    assert info["depth"] == 2 and env.skill == "ascender"  # the descent ended the descender
    competence = info["competence"]
    assert competence["descender"]["descent"] == 1
    assert competence["descender"]["new_cells"] > 0, "the new level's first view is the descender's"
    assert all(competence[s]["descent"] == 0 for s in competence if s != "descender")
    assert all(competence[s]["ascent"] == 0 for s in competence)
    _, _, _, _, info = env.step(A.INDEX["SEARCH"])  # now the ascender acts: nothing more for the descender
    assert info["competence"]["descender"]["descent"] == 1 and info["skill_steps"]["ascender"] == 1
    env.close()


def test_a_death_is_no_ascent():
    env = make_skill_env(load_config(preset_name="local"), seed=0, caption_rate=0.0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.reset()
        for _ in range(5000):
            _, _, term, trunc, info = env.step(int(rng.integers(A.NUM_ACTIONS)))
            if term or trunc:
                break
        if term:
            break
    else:
        pytest.skip("no game ended in a death")
    assert int(env.game.blstats[BL_DEPTH]) == 0, "NLE zeroes the bottom line: the test is meaningful"
    assert info["depth"] == 0  # (what NLE shows now)
    assert sum(row["ascent"] for row in info["competence"].values()) == 0
    cells = sum(row["new_cells"] for row in info["competence"].values())
    assert cells < 21 * 79, "the blank final map is not read as new cells"
    env.close()


def test_kills_and_new_cells_count_up_in_a_random_game():
    env = make_skill_env(load_config(preset_name="local"), seed=1, caption_rate=0.0)
    rng = np.random.default_rng(1)
    tally = CompetenceTally()
    env.reset()
    for _ in range(20_000):
        _, _, term, trunc, info = env.step(int(rng.integers(A.NUM_ACTIONS)))
        if term or trunc:
            tally.add_episode(env.episode_summary(trunc))
            totals = {e: sum(r.get(e, 0) for r in tally.counts.values()) for e in ("kill", "new_cells")}
            if totals["kill"] > 0 and totals["new_cells"] > 0:
                break
            env.reset()
    env.close()
    assert totals["kill"] > 0 and totals["new_cells"] > 0, totals
    assert sum(tally.skill_steps.values()) > 0


# -- the random baseline -----------------------------------------------------------------------
def test_random_baseline_is_finite_and_served_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMOTIF_CACHE", str(tmp_path / "cache"))
    cfg = load_config(preset_name="local")
    first = baseline.random_baseline(cfg, steps=600, num_envs=3, seed=0)
    assert not first["cached"] and first["steps"] == 600
    assert sum(first["skill_steps"].values()) == 600
    assert first["rates"], "some skill acted"
    for rates in (first["rates"], first["rates_any_skill"]):
        assert all(math.isfinite(v) for events in rates.values() for v in events.values()), rates
    assert set(first["rates_any_skill"]) == set(NAMES)
    files = list((tmp_path / "cache" / "baselines").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["rates"] == first["rates"]

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(baseline, "compute_random_baseline", no_measuring)
    t0 = time.perf_counter()
    second = baseline.random_baseline(cfg, steps=600, num_envs=3, seed=0)
    assert second["cached"] and second["rates"] == first["rates"] and time.perf_counter() - t0 < 1.0
    # caption sampling does not touch the game; the episode length does
    captions = load_config(preset_name="local", overrides={"env": {"caption_rate": 0.5}})
    longer = load_config(preset_name="local", overrides={"env": {"max_episode_steps": 3000}})
    key = baseline.baseline_key(cfg, 600, 3, 0)
    assert baseline.baseline_key(captions, 600, 3, 0) == key != baseline.baseline_key(longer, 600, 3, 0)
    assert baseline.baseline_key(cfg, 601, 3, 0) != key


# -- the report --------------------------------------------------------------------------------
def test_report_has_a_competence_plot(tmp_path):
    rows = [
        {"step": 1000, "competence/descender:descent": 0.5, "competence_recent/descender:descent": 0.5,
         "competence/discoverer:kill": 3.0},
        {"step": 2000, "competence/descender:descent": 1.0, "competence_recent/descender:descent": 1.5,
         "competence/discoverer:kill": 3.5, "competence_random/discoverer:kill": 4.8,
         "competence_random_any/descender:descent": 0.1},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = write_report(tmp_path, {"status": "finished"})
    assert (tmp_path / "report" / "competence.png").stat().st_size > 1000
    assert 'src="competence.png"' in index.read_text()
