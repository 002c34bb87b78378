"""A NetHack game that cannot reset is rebuilt (a fresh NLE instance), recorded with its
screen, and counted; past the rebuild budget the reset raises one clear error. Real NLE
games whose reset is made to fail for real (no keys to leave the intro)."""

import numpy as np
import pytest

from mmotif.actors.rollout import RolloutWorker
from mmotif.config import load_config
from mmotif.nethack import actions as A
from mmotif.nethack.game import ResetError
from mmotif.skills.build import make_skill_env, make_vector_env
from mmotif.skills.env import MAX_GAME_REBUILDS


def local(**overrides):
    return load_config(preset_name="local", overrides=overrides)


def test_a_game_that_cannot_reset_is_rebuilt_recorded_and_play_goes_on():
    env = make_skill_env(local(), seed=0)
    first_game = env.game
    env.inject_reset_failures(at_reset=1, times=1)
    env.reset()
    assert env.game is not first_game, "the failed game is replaced by a fresh NLE instance"
    (record,) = env.pop_rebuilds()
    assert record.rebuilt and "did not reach the move loop" in record.error
    assert record.screen and any(line.strip() for line in record.screen), "the screen is recorded"
    assert len(record.misc) == 3 and record.program_state, "the prompt state is recorded"
    rng = np.random.default_rng(0)
    for _ in range(50):
        env.step(int(rng.integers(A.NUM_ACTIONS)))
    assert env.stats.steps > 0 and not env.pop_rebuilds()
    env.close()


def test_a_reset_failing_past_the_rebuild_budget_raises_one_clear_line():
    env = make_skill_env(local(), seed=0)
    env.inject_reset_failures(at_reset=1, times=MAX_GAME_REBUILDS + 1)
    with pytest.raises(ResetError) as err:
        env.reset()
    msg = str(err.value)
    assert f"after {MAX_GAME_REBUILDS} fresh NLE instances" in msg and "last screen" in msg and "\n" not in msg
    records = env.pop_rebuilds()
    assert [r.rebuilt for r in records] == [True] * MAX_GAME_REBUILDS + [False]
    env.close()


def test_a_later_reset_in_a_vector_env_is_rebuilt_mid_rollout():
    venv = make_vector_env(local(env={"max_episode_steps": 20}), 2, seed=3)
    venv.envs[1].inject_reset_failures(at_reset=2, times=2)  # the reset after the first episode
    venv.reset()
    for _ in range(25):
        venv.step(np.zeros(2, np.int64) + A.ACTION_NAMES.index("WAIT"))
    records = venv.pop_rebuilds()
    assert [(r.env, r.rebuilt) for r in records] == [(1, True), (1, True)]
    assert len(venv.pop_finished_episodes()) >= 2, "both games went on to new episodes"
    venv.close()


def test_rollout_worker_reports_rebuilds_and_a_restart_clears_the_injected_fault():
    cfg = local(faults={"reset_fails_at_attempt": 1}, learner={"rollout": 8})
    worker = RolloutWorker(cfg, actor_id=0, seed=0, num_envs=2)
    worker.collect()
    (record,) = worker.pop_side_log().rebuilds
    assert (record.actor, record.env, record.rebuilt) == (0, 0, True)
    worker.reseed(5)
    assert not worker.venv.envs[0]._failing_attempts
    worker.close()


def test_reset_error_crosses_a_process_boundary_with_its_screen():
    import pickle

    err = pickle.loads(pickle.dumps(ResetError("no move loop", {"screen": ["Hello"], "misc": [0, 0, 1]})))
    assert str(err) == "no move loop" and err.state["screen"] == ["Hello"]
