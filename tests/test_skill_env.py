"""The skill environment on real NLE: call-and-return switching on scripted situations."""

import numpy as np
import pytest

from mmotif.config import ConfigError, load_config
from mmotif.contract import observation_spec
from mmotif.nethack import actions as A
from mmotif.nethack.features import DOWNSTAIR_GLYPH, sees_branch_staircase, window_around_hero
from mmotif.sandbox import UnsafeCodeError
from mmotif.skills.build import make_skill_env, make_vector_env
from mmotif.skills.code_policy import CodePolicy, builtin_source
from mmotif.skills.env import SkillEnv
from mmotif.skills.specs import SkillSet
from wizard import fix_dungeon, screen, teleport_onto, wish

SCRIPTED = '''
class NetHackPlayer:
    def set_initial_values(self):
        self.skill = "{first}"
        self.discoverer_skill_steps = 500

    def perform_task(self, current_skill, dungeon_depth, branch_number,
                     merchant_precondition, worshipper_precondition):
        if merchant_precondition:
            return "merchant"
        if worshipper_precondition:
            return "worshipper"
        if current_skill == "descender":
            return "ascender"
        return "discoverer"
'''


def scripted_env(first: str, dungeon_seed: int | None = None) -> SkillEnv:
    """A wizard-mode skill env whose policy over skills starts with `first`, on a fixed
    game when `dungeon_seed` is given."""
    skills = SkillSet()
    policy = CodePolicy.from_parts(
        [("scripted", SCRIPTED.format(first=first)),
         ("builtin/initiation_termination.py", builtin_source("initiation_termination"))],
        skills.names, skills.with_precondition(), seed=0,
    )
    env = SkillEnv(skills, policy, wizard=True, seed=0)
    if dungeon_seed is not None:
        fix_dungeon(env.game, dungeon_seed)
    env.reset()
    return env


def test_observation_matches_the_contract():
    env = scripted_env("discoverer")
    obs, *_ = env.step(A.INDEX["SEARCH"])
    for key, (shape, dtype) in observation_spec(5).items():
        assert obs[key].shape == shape and obs[key].dtype == dtype, key
    assert obs["crop_chars"][6, 6] == ord("@")
    assert obs["blstats"][30:].tolist() == [1, 0, 0, 0, 0]  # discoverer one-hot
    env.close()


def test_descender_ends_on_the_descent_and_the_next_skill_starts():
    env = scripted_env("descender")
    assert env.skill == "descender"
    teleport_onto(env.game, ">")
    obs, _, _, _, info = env.step(A.INDEX["DOWN"])
    assert info["depth"] == 2 and info["skill_switches"] == 1
    assert env.skill == "ascender" and obs["skill"] == 2
    assert bytes(obs["message"]).startswith(b"You descend the stairs.")
    assert obs["diffstats"][0] == 1  # the descent is credited to the skill that made it
    obs, _, _, _, info = env.step(A.INDEX["SEARCH"])
    assert obs["diffstats"][0] == 0 and info["skill_switches"] == 1  # ascender not done yet
    env.close()


def test_discoverer_ends_after_500_game_turns():
    env = scripted_env("discoverer")  # the scripted policy re-selects the discoverer
    start = int(env.game.blstats[20])
    switches = 0
    while switches == 0:
        before = int(env.game.blstats[20]) - start
        _, _, term, _, info = env.step(A.INDEX["WAIT"])
        assert not term
        after = int(env.game.blstats[20]) - start
        switches = info["skill_switches"]
        if switches == 0:
            assert after < 500
    assert before < 500 <= after
    env.close()


def altar_next_to_the_hero(attempts: int = 5) -> SkillEnv:
    """A game where the hero stepped off a wished-for altar, which is now in sight.

    The wish can fail to show an altar (an object generated on that square hides it), so
    a fresh game is tried a few times rather than asserting on a hidden altar. The games
    are seeded: in random ones a monster now and then steps onto the altar and hides it
    (seen: a grid bug, one run in a few dozen)."""
    for attempt in range(attempts):
        env = scripted_env("discoverer", dungeon_seed=20261208 + attempt)
        wish(env.game, "altar")  # appears under the hero: not in sight (hero's cell excluded)
        env.step(A.INDEX["SEARCH"])
        assert env.skill == "discoverer"
        for direction in ("E", "W", "N", "S"):
            x, y = env.game.blstats[:2].tolist()
            env.step(A.INDEX[direction])
            if env.game.blstats[:2].tolist() != [x, y]:
                break
        chars, _ = window_around_hero(env.game.tty_chars, env.game.tty_colors, *env.game.blstats[:2].tolist())
        if (chars == ord("_")).any():
            return env
        env.close()
    pytest.fail(f"no visible altar next to the hero in {attempts} games")


def test_altar_in_sight_with_a_new_item_hands_control_to_the_worshipper():
    env = altar_next_to_the_hero()
    assert env.skill == "discoverer"  # altar in sight, but nothing worth identifying
    wish(env.game, "ring of adornment")
    _, _, _, _, info = env.step(A.INDEX["SEARCH"])
    assert env.skill == "worshipper" and info["skill_switches"] >= 1, (
        f"new items {env.inventory.new_items}; policy error {env.stats.last_policy_error!r}\n{screen(env.game)}")
    env.close()


def test_branch_staircase_rule():
    glyphs = np.zeros((21, 79), np.int16)
    glyphs[3, 4] = DOWNSTAIR_GLYPH
    assert not sees_branch_staircase(glyphs)
    glyphs[10, 40] = DOWNSTAIR_GLYPH
    assert sees_branch_staircase(glyphs)


def test_failing_policy_call_is_counted_and_replaced(tmp_path):
    source = SCRIPTED.format(first="discoverer") + '''
    def skill_termination(self, skill, skill_time, depth, start_depth, **pre):
        # the game's situation (level 1 since the start, a few turns in), which the dry run's
        # random situations (levels 1-50, up to 100,000 turns) hit about once in 10^6 checks
        if depth == 1 and start_depth == 1 and 7 <= skill_time < 100:
            return 1 // 0
        return False

    def skill_precondition(self, skill, view):
        return False
'''
    skills = SkillSet()
    policy = CodePolicy.from_source(source, skills.names, skills.with_precondition(), seed=0)
    env = SkillEnv(skills, policy, seed=0)
    for _game in range(5):  # NetHack is not seeded: a game that ends early is played again
        env.reset()
        for _ in range(20):
            _, _, term, _, info = env.step(A.INDEX["SEARCH"])
            if term:
                break
        if not term:
            break
    assert not term, f"five games ended within 20 turns: {env.game.message_bytes()!r}"
    assert info["policy_errors"] > 0 and "ZeroDivisionError" in env.stats.last_policy_error
    assert env.skill == "discoverer"
    env.close()


def test_vector_env_steps_in_place_and_resets_finished_games():
    cfg = load_config(overrides={"env": {"max_episode_steps": 5, "caption_rate": 0.5, "caption_gap": 2}})
    venv = make_vector_env(cfg, 3, seed=0)
    obs = venv.reset()
    assert obs["blstats"].shape == (3, 35) and obs["skill"].shape == (3,)
    for step in range(5):
        obs, rewards, dones = venv.step(np.full(3, A.INDEX["SEARCH"]))
    assert dones.all()  # truncated at 5 steps, and already reset
    episodes = venv.pop_finished_episodes()
    assert len(episodes) == 3 and all(e.truncated and e.episode_steps == 5 for e in episodes)
    assert venv.pop_captions(), "captions are sampled from the running games"
    venv.close()


def test_custom_skill_set_from_yaml(tmp_path):
    policy = tmp_path / "policy.py"
    policy.write_text('''
class NetHackPlayer:
    def set_initial_values(self):
        self.skill = "wanderer"

    def skill_termination(self, skill, skill_time, depth, start_depth):
        return skill_time >= 10

    def perform_task(self, current_skill, dungeon_depth, branch_number):
        return "resting" if current_skill == "wanderer" else "wanderer"
''')
    config = tmp_path / "run.yaml"
    config.write_text(f'''
skills:
  - name: wanderer
    description: Walks around.
    preference: Favour seeing new places.
  - name: resting
    description: Rests.
    preference: Favour regaining HP.
env:
  training_policy: {policy}
''')
    cfg = load_config(config)
    env = make_skill_env(cfg, seed=0)
    obs, _ = env.reset()
    assert obs["blstats"].shape == (32,) and env.skill == "wanderer"
    start = int(env.game.blstats[20])
    for _ in range(50):
        if env.step(A.INDEX["SEARCH"])[2]:
            pytest.skip("the hero died before 10 turns passed")
        if env.skill == "resting":
            break
    assert env.skill == "resting" and int(env.game.blstats[20]) - start >= 10
    env.close()


@pytest.mark.parametrize("body, what", [
    ("import os", "import"),
    ("x = ().__class__.__bases__", "_"),
])
def test_unsafe_training_policy_refused_before_any_game(tmp_path, body, what):
    policy = tmp_path / "policy.py"
    policy.write_text(body + "\n" + SCRIPTED.format(first="discoverer"))
    cfg = load_config(overrides={"env": {"training_policy": str(policy)}})
    with pytest.raises(UnsafeCodeError) as err:
        make_skill_env(cfg, seed=0)
    assert what in str(err.value) and "line 1" in str(err.value).lower()


def test_bad_config_names_the_field(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learner:\n  rollout: 0\nenv:\n  crop: [12]\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "learner.rollout" in str(err.value) and "env.crop" in str(err.value)


def test_a_death_reads_as_a_death_not_as_climbing():
    """NLE zeroes the bottom line when the game ends. The death step's reward input and
    the caption that spans the death keep the last live stats and NetHack's death message."""
    cfg = load_config(preset_name="local", overrides={"env": {"caption_gap": 100_000}})
    venv = make_vector_env(cfg, 1, seed=3)
    env = venv.envs[0]
    env.caption_rate = 1.0  # a snapshot every step; with this gap only a death closes one
    venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(20_000):  # a random Monk dies within a few hundred steps
        depth_before = env.game.blstats[12]
        _, _, dones = venv.step(rng.integers(A.NUM_ACTIONS, size=1))
        if dones[0] and not venv.finished_episodes[-1].truncated:
            break
    else:
        pytest.skip("no game ended in a death")
    captions = env.pop_captions()
    assert len(captions) == 1
    death = captions[0]
    assert "You die" in death.message
    assert "The dungeon level went up" not in death.text
    assert "/0 " not in death.text + " " and "to 0" not in death.text, death.text
    assert death.depth_change == 0 or depth_before > 1
    # the reward models read the death step's outcome: no "shallower" from a zeroed depth
    assert venv.reward_inputs["diffstats"][0, 0] >= 0
    assert b"You die" in bytes(venv.reward_inputs["message"][0])
    venv.close()
