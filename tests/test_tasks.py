"""The nine tasks: data, success trackers on real NLE states (wizard mode) and crafted
messages, and the shipped reference policies in the scripted depth/branch world."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmotif.codegen.simulate import simulate
from mmotif.nethack import actions as A
from mmotif.nethack.game import NetHackGame
from mmotif.skills.code_policy import CodePolicy
from mmotif.skills.env import SkillEnv
from mmotif.skills.specs import SkillSet
from mmotif.tasks import (
    TASKS, DungeonProbe, TaskTracker, get_task, price_identifies, reference_policy_source,
    task_policy,
)
from mmotif.tasks.reference import POLICY_DIR
from wizard import keys, screen, settle, teleport_onto, wish

CTRL_F, CTRL_G, CTRL_V = 6, 7, 22
DIRECTIONS = {(-1, -1): "y", (0, -1): "k", (1, -1): "u", (-1, 0): "h", (1, 0): "l",
              (-1, 1): "b", (0, 1): "j", (1, 1): "n"}


# ---------------------------------------------------------------------------------------
# helpers: real states through wizard mode
# ---------------------------------------------------------------------------------------
def new_game() -> NetHackGame:
    game = NetHackGame(wizard=True)
    game.reset()
    return game


def calm(game: NetHackGame) -> None:
    """No pending prompt, not confused or stunned (such a hero teleports at random)."""
    game._escape_everything()
    for _ in range(200):
        if not int(game.blstats[25]) & 0x180:
            return
        target = adjacent_monster(game)
        keys(game, *(("F", target) if target else ("5s",)))
        settle(game)


def stand_on_upstairs(game: NetHackGame) -> None:
    """Teleport onto '<'; where a teleport keeps missing it, travel there (`_ <`)."""
    calm(game)
    try:
        teleport_onto(game, "<")
        return
    except AssertionError:
        pass
    for _ in range(20):
        keys(game, "_", "<", ".")
        settle(game)
        keys(game, ":")
        here = game.obs[3].tobytes()
        settle(game)
        if b"staircase up" in here:
            return
        target = adjacent_monster(game)
        if target:
            keys(game, "F", target)
            settle(game)
    raise AssertionError(f"could not reach '<':\n{screen(game)}")


def level_teleport(game: NetHackGame, target: int | str) -> None:
    """Wizard-mode level teleport: to a depth of the current dungeon, or to a special level
    picked by its name from the level menu (which spans every dungeon)."""
    for _ in range(5):
        calm(game)
        keys(game, CTRL_V)
        if b"Oops" in game.obs[3].tobytes():               # confused after all: random level
            settle(game)
            continue
        if isinstance(target, int):
            keys(game, f"{target}\r")
            settle(game)
            return
        keys(game, "?\r")
        for _ in range(5):
            m = re.search(r"^ (\w) - [ *] +%s:" % re.escape(target), screen(game), re.M)
            if m:
                keys(game, m.group(1))
                settle(game)
                return
            keys(game, ">")
        raise AssertionError(f"level {target!r} not in the wizard level menu:\n{screen(game)}")
    raise AssertionError(f"could not level-teleport to {target!r}:\n{screen(game)}")


def teleport_next_to_the_oracle(game: NetHackGame) -> None:
    """Map the Oracle level and teleport onto one of the fountains around the Oracle."""
    keys(game, CTRL_F)
    settle(game)
    keys(game, 20, "{", ".")                                # ^T, cursor to a fountain, confirm
    settle(game)


def act(game: NetHackGame, tracker: TaskTracker, name: str = "SEARCH") -> None:
    action = A.INDEX[name] if isinstance(name, str) else name
    game.step(action)
    tracker.step(game, action)


def eat_from_inventory(game: NetHackGame, tracker: TaskTracker) -> None:
    """EAT, then answer the item prompt (declining a floor item first, if one is offered)."""
    act(game, tracker, "EAT")
    if b"eat it?" in game.message_bytes() or b"eat one?" in game.message_bytes():
        keys(game, "n")
        settle(game)                                        # the item prompt stays pending
    act(game, tracker, A.ANSWER_YES)


def observe_raw(game: NetHackGame, tracker: TaskTracker) -> None:
    """After raw wizard keys, let the tracker see the state (one harmless SEARCH)."""
    act(game, tracker, "SEARCH")


def adjacent_monster(game: NetHackGame) -> str | None:
    """The direction key of a (non-pet) monster next to the hero, if any."""
    x, y = int(game.blstats[0]), int(game.blstats[1])
    for (dx, dy), key in DIRECTIONS.items():
        if 0 <= y + dy < 21 and 0 <= x + dx < 79 and 0 <= int(game.glyphs[y + dy, x + dx]) < 381:
            return key
    return None


def wait_until_hungry(game: NetHackGame) -> None:
    for _ in range(200):
        if int(game.blstats[21]) >= 2 or game.done:
            return
        target = adjacent_monster(game)
        keys(game, *(("F", target) if target else ("300s",)))
        settle(game)


def kill_a_newt(game: NetHackGame, tracker: TaskTracker) -> bool:
    keys(game, CTRL_G, "newt\r")
    settle(game)
    for _ in range(100):
        target = adjacent_monster(game)
        if target is None:
            return False
        keys(game, "F", target)
        settle(game)
        tracker.step(game, A.INDEX["SEARCH"])     # the attack's message, seen as one step
        if b"You kill" in game.message_bytes():
            return True
    return False


class FakeGame:
    """A crafted observation: only what the tracker reads (for states a real game cannot
    reach quickly, e.g. a shop sale)."""

    def __init__(self, depth=3, dnum=0, gold=0, xl=1, hunger=1):
        self.blstats = np.zeros(27, np.int64)
        self.blstats[[12, 23, 13, 18, 21]] = [depth, dnum, gold, xl, hunger]
        self.glyphs = np.zeros((21, 79), np.int16)
        self.message = b""
        self.just_ate = False
        self.done = False

    def message_bytes(self) -> bytes:
        return self.message

    def say(self, tracker, message: bytes, action: str = "SEARCH") -> None:
        self.message = message
        tracker.step(self, A.INDEX[action])


def crafted_tracker(task: str, **state) -> tuple[TaskTracker, FakeGame]:
    game = FakeGame(**state)
    tracker = TaskTracker(task, probe=False)
    tracker.start(game)
    return tracker, game


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def test_the_nine_tasks_are_described():
    assert len(TASKS) == 9
    kinds = [t.kind for t in TASKS.values()]
    assert kinds.count("navigation") == 3 and kinds.count("interaction") == 3
    assert get_task("Golden Exit").name == "goldenexit" and get_task("ORACLE").name == "delphi"
    assert get_task("delphi").initial_values == {"max_depth": 10, "discoverer_skill_steps": 50}
    assert get_task("minetown").initial_values["discoverer_skill_steps"] == 50
    assert get_task("gnomish").paper.format() == "46.00% ± 1.70%"
    assert get_task("buc").paper.format() == "1.60 ± 0.01"
    with pytest.raises(KeyError, match="known"):
        get_task("sokoban")


# ---------------------------------------------------------------------------------------
# real NLE states
# ---------------------------------------------------------------------------------------
def test_probe_reads_the_dungeon_without_touching_the_game():
    game = new_game()
    turn, keys_before = int(game.blstats[20]), game.keys_sent
    probe = DungeonProbe(game)
    special = probe.special_levels()
    assert probe.available, probe.error
    assert special["oracle"][0] == 0 and 5 <= special["oracle"][1] <= 9
    assert special["minetn"][0] == 2 and special["minetn"][1] in (3, 4)
    assert probe.hero_level() == (0, 1)
    assert int(game.blstats[20]) == turn and game.keys_sent == keys_before
    game.reset()                                  # NLE reloads its library: no handle was left open
    assert DungeonProbe(game).hero_level() == (0, 1)
    game.close()


def test_all_trackers_stay_silent_at_the_start():
    game = new_game()
    trackers = [TaskTracker(name) for name in TASKS]
    for t in trackers:
        t.start(game)
    for _ in range(5):
        game.step(A.INDEX["SEARCH"])
        for t in trackers:
            t.step(game, A.INDEX["SEARCH"])
    for t in trackers:
        r = t.result()
        assert r["proxy"] == 0 and r["exact"] == 0, r
        assert not t.finished
    game.close()


def test_delphi_fires_on_the_oracle_level_only():
    game = new_game()
    oracle_depth = DungeonProbe(game).special_levels()["oracle"][1]
    tracker = TaskTracker("delphi")
    tracker.start(game)
    other = 5 if oracle_depth != 5 else 6
    level_teleport(game, other)
    observe_raw(game, tracker)
    assert int(game.blstats[12]) == other
    assert not tracker.exact and not tracker.proxy            # not the Oracle, not depth 7
    level_teleport(game, "oracle")
    observe_raw(game, tracker)
    assert int(game.blstats[12]) == oracle_depth
    assert tracker.exact and tracker.exact_method == "dungeon data"
    assert tracker.proxy == (oracle_depth >= 7)
    # the glyph evidence: the Oracle (and her centaur statues) in view
    teleport_next_to_the_oracle(game)
    observe_raw(game, tracker)
    assert tracker.oracle_seen
    game.close()


def test_delphi_glyph_fallback_without_the_probe():
    game = new_game()
    tracker = TaskTracker("delphi", probe=False)
    tracker.start(game)
    level_teleport(game, "oracle")
    teleport_next_to_the_oracle(game)
    observe_raw(game, tracker)
    assert tracker.exact and tracker.exact_method == "glyphs"
    game.close()


def test_mines_and_minetown():
    game = new_game()
    minetown_dlevel = DungeonProbe(game).special_levels()["minetn"][1]
    level_teleport(game, "minetn")
    minetown_depth = int(game.blstats[12])
    level_teleport(game, minetown_depth - 1)               # a plain Mines level above it
    assert int(game.blstats[23]) == 2 and int(game.blstats[12]) == minetown_depth - 1
    mines = TaskTracker("gnomish")
    town = TaskTracker("minetown")
    for t in (mines, town):
        t.start(game)
        observe_raw(game, t)
    assert mines.proxy and mines.exact and mines.finished
    assert not town.exact                                   # in the Mines, not in Minetown
    assert DungeonProbe(game).hero_level() == (2, minetown_dlevel - 1)
    level_teleport(game, "minetn")
    observe_raw(game, town)
    assert town.exact
    keys(game, CTRL_F)
    settle(game)
    observe_raw(game, town)
    assert town.minetown_seen                               # the temple's altar on the map
    game.close()


def test_minetown_proxy_is_the_third_mines_level():
    tracker, game = crafted_tracker("minetown", depth=3, dnum=2)      # Mines start at 3
    game.blstats[12] = 4
    game.say(tracker, b"")
    assert not tracker.proxy
    game.blstats[12] = 5
    game.say(tracker, b"You descend the stairs.")
    assert tracker.proxy and not tracker.exact              # no probe, nothing seen: no exact


def test_golden_exit_needs_everything_before_the_leave_prompt():
    game = new_game()
    tracker = TaskTracker("goldenexit")
    tracker.start(game)
    assert kill_a_newt(game, tracker)
    assert tracker.kills_exact >= 1 and tracker.kills_proxy >= tracker.kills_exact
    stand_on_upstairs(game)
    act(game, tracker, "UP")                                # no skill running: declined
    assert b"Still climb?" in game.message_bytes() and int(game.blstats[12]) == 1 and not game.done
    assert tracker.leave_attempts == 1 and not tracker.proxy and not tracker.exact
    # the rest of the prerequisites: gold and DL3 for real, the remaining kills crafted
    wish(game, "50 gold pieces")
    level_teleport(game, 3)
    observe_raw(game, tracker)
    level_teleport(game, 1)
    observe_raw(game, tracker)
    assert tracker.gold >= 20 and tracker.deepest_dod == 3
    tracker.kills_exact = tracker.kills_proxy = 25
    act(game, tracker, "SEARCH")
    assert not tracker.exact                                # no exit attempt yet
    stand_on_upstairs(game)
    tracker.active_skill = lambda: "discoverer"             # not the policy choosing to leave
    act(game, tracker, "UP")
    assert tracker.proxy and not tracker.exact and not game.done  # asked, declined: the proxy only
    tracker.active_skill = lambda: "ascender"
    act(game, tracker, "UP")
    assert game.done and game.escaped and tracker.escaped  # the prompt answered yes: the hero left
    assert tracker.exact and tracker.finished and tracker.result()["escaped"]
    assert tracker.gold >= 20                               # the last live stats, not NLE's zeroed ones
    game.close()


def gain_levels(game: NetHackGame, tracker: TaskTracker, level: int) -> None:
    """Quaff wished-for potions of gain level until experience level `level`."""
    for _ in range(3 * level):
        if int(game.blstats[18]) >= level:
            return
        wish(game, "uncursed potion of gain level")
        m = re.search(rb"\b(\w) - [^.]*potion", game.message_bytes())
        assert m, game.message_bytes()
        keys(game, "q", m.group(1).decode())
        settle(game)
        observe_raw(game, tracker)


def test_level_up_on_dl1_then_sell_then_survive():
    game = new_game()
    tracker = TaskTracker("levelupsell")
    tracker.start(game)
    gain_levels(game, tracker, 4)
    assert int(game.blstats[18]) >= 4 and tracker.xl4_on_dl1
    # the shop part, crafted: a real sale message, then 300 steps
    game.message[:] = 0
    sale = b"You sold a murky potion for 50 gold pieces."
    game.message[: len(sale)] = np.frombuffer(sale, np.uint8)
    tracker.step(game, A.INDEX["NW"])
    for _ in range(300):
        act(game, tracker, "SEARCH")
        if game.done:
            break
    assert not tracker.exact                                # exactly 300 steps: not yet more
    act(game, tracker, "SEARCH")
    assert tracker.proxy and tracker.exact
    game.close()


def test_level_up_after_leaving_dl1_is_not_exact():
    game = new_game()
    tracker = TaskTracker("levelupsell")
    tracker.start(game)
    level_teleport(game, 2)
    observe_raw(game, tracker)
    level_teleport(game, 1)
    observe_raw(game, tracker)
    gain_levels(game, tracker, 4)
    assert int(game.blstats[18]) >= 4 and not tracker.xl4_on_dl1
    game.close()


def test_discovery_hunger_eat_while_hungry_in_the_mines_then_the_oracle():
    # eating while not hungry counts for the proxy only
    game = new_game()
    sated = TaskTracker("discoveryhunger")
    sated.start(game)
    level_teleport(game, "minetn")
    observe_raw(game, sated)
    eat_from_inventory(game, sated)
    assert game.just_ate and sated.ate_in_mines and not sated.ate_hungry_in_mines
    game.close()
    # hungry first (on DL1), then eat in the Mines, then the Oracle level; a visit to the
    # Oracle level *before* eating does not count
    game = new_game()
    special = DungeonProbe(game).special_levels()
    tracker = TaskTracker("discoveryhunger")
    tracker.start(game)
    level_teleport(game, "oracle")
    observe_raw(game, tracker)
    level_teleport(game, 1)
    observe_raw(game, tracker)
    assert tracker.on_oracle and not tracker.exact
    wait_until_hungry(game)
    assert int(game.blstats[21]) >= 2, "never got hungry"
    level_teleport(game, "minetn")
    observe_raw(game, tracker)
    assert not tracker.ate_in_mines
    eat_from_inventory(game, tracker)
    assert game.just_ate and tracker.ate_hungry_in_mines
    assert not tracker.exact and not tracker.proxy
    level_teleport(game, "oracle")
    observe_raw(game, tracker)
    assert tracker.exact
    assert tracker.proxy == (special["oracle"][1] >= 7)
    game.close()


def test_altar_drops_count_only_on_an_altar():
    game = new_game()
    tracker = TaskTracker("buc")
    tracker.start(game)
    wish(game, "uncursed dagger")
    act(game, tracker, "DROP")                              # on the floor: no altar
    assert tracker.altar_drops_exact == 0 and tracker.altar_drops_proxy == 0
    keys(game, ",")                                         # pick it up again
    settle(game)
    if game._pending_prompt():
        keys(game, "\r")
        settle(game)
    wish(game, "altar")
    drops = 0
    for _ in range(5):                  # a monster's attack can take the message's place
        wish(game, "uncursed dagger")
        act(game, tracker, "DROP")
        if b"altar" in game.message_bytes():
            drops += 1
            break
    assert drops == 1, game.message_bytes()
    assert tracker.altar_drops_exact == 1 and tracker.altar_drops_proxy == 1
    assert tracker.metric_values() == (1.0, 1.0)
    game.close()


# ---------------------------------------------------------------------------------------
# crafted shop messages
# ---------------------------------------------------------------------------------------
def test_sales_and_price_identification_from_shop_messages():
    tracker, game = crafted_tracker("price")
    offer = b"Asidonhopo offers 50 gold pieces for your murky potion.  Sell it? [ynaq] (y)"
    game.say(tracker, offer)
    assert tracker.offers == 1 and tracker.price_id_exact == 0 and tracker.price_id_proxy == 0
    game.say(tracker, b"Never mind.")                      # the offer declined: nothing identified
    assert tracker.price_id_exact == 0
    game.say(tracker, offer)
    game.say(tracker, b"You sold a murky potion for 50 gold pieces.", "NW")
    assert tracker.price_id_proxy == 1 and tracker.sales_exact == 1 and tracker.sales_proxy == 1
    # a formally identified item identifies nothing; the same item twice counts once
    game.say(tracker, b"Asidonhopo offers 50 gold pieces for your potion of healing.  Sell it? [ynaq] (y)")
    game.say(tracker, b"You sold a potion of healing for 50 gold pieces.", "NW")
    game.say(tracker, offer)
    assert tracker.price_id_exact == 1 and tracker.sales_exact == 2
    assert tracker.offers == 4
    # a suspicious shopkeeper (3/8) and a stack: still identified exactly, not by the proxy
    game.say(tracker, b"Izchak offers 113 gold pieces for your jade ring.  Sell it? [ynaq] (y)")
    game.say(tracker, b"You sold a jade ring for 113 gold pieces.", "NW")
    assert tracker.price_id_exact == 2 and tracker.price_id_proxy == 1
    assert price_identifies(100, "2 clear potions") == ("potion", (100,))
    game.say(tracker, b"Izchak offers 100 gold pieces for your clear potions.  Sell them? [ynaq] (y)")
    assert tracker.offers == 6 and tracker.price_id_exact == 2       # a stack: count unknown
    assert price_identifies(7, "plumed helmet") is None and price_identifies(5, "plumed helmet")
    assert price_identifies(10, "long sword") is None
    # a 'sold' that is not a sale: proxy counts it, exact does not
    tracker, game = crafted_tracker("transactions")
    game.say(tracker, b"This shop appears to be deserted; the goods were sold off.")
    assert tracker.metric_values() == (1.0, 0.0)


# ---------------------------------------------------------------------------------------
# the env hook
# ---------------------------------------------------------------------------------------
def test_tracker_as_env_hook_wires_attributes_into_the_policy():
    skills = SkillSet()
    tracker = TaskTracker("goldenexit")
    env = SkillEnv(skills, task_policy("goldenexit", skills, seed=0), wizard=True, seed=0, task=tracker)
    env.reset()
    assert env.policy.attribute("gold_pieces") == int(env.game.blstats[13])
    assert env.policy.attribute("monsters_defeated") == 0
    wish(env.game, "30 gold pieces")
    env.step(A.INDEX["SEARCH"])
    assert env.policy.attribute("gold_pieces") == int(env.game.blstats[13]) >= 30
    assert tracker.steps == 1
    assert env.game.confirm == tracker.confirms and tracker.active_skill() == env.skill
    env.close()


# ---------------------------------------------------------------------------------------
# reference policies in the scripted world (spec §12.2)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TASKS))
def test_reference_policies_load_and_survive_a_dry_run(name):
    policy = task_policy(name, seed=0)
    assert policy.new_episode() == "discoverer"
    assert policy.attribute("max_depth") == TASKS[name].initial_values["max_depth"]
    assert policy.attribute("discoverer_skill_steps") == TASKS[name].initial_values["discoverer_skill_steps"]
    source = reference_policy_source(name)
    CodePolicy.from_source(source, SkillSet().names, SkillSet().with_precondition(), seed=1)


def test_reference_policy_files_leave_the_starting_values_to_the_task_data():
    for path in POLICY_DIR.glob("*.policy.py"):
        assert "def set_initial_values" not in path.read_text(), path.name
    for task in TASKS.values():
        assert (POLICY_DIR / f"{task.policy or task.name}.policy.py").is_file(), task.name
        assert (task.rule is None) == task.counts_events, task.name


def test_gnomish_policy_retries_the_branch_until_it_is_in_the_mines():
    for seed in range(20):
        trace = simulate(task_policy("gnomish", seed=seed), turns=30, branch_depth=3, seed=seed,
                         stop=lambda t: t.branch == 2)
        assert trace[-1].branch == 2, seed
        for before, after in zip(trace, trace[1:]):
            if before.depth == 3 and before.branch == 0 and before.skill == "descender" \
                    and after.branch == 0:
                assert after.skill == "ascender"            # wrong staircase: climb back


def test_delphi_policy_descends_without_exploring_and_leaves_the_mines():
    for seed in range(10):
        trace = simulate(task_policy("delphi", seed=seed), turns=40, branch_depth=2, seed=seed,
                         stop=lambda t: t.depth >= 9 and t.branch == 0)
        assert trace[-1].depth == 9 and trace[-1].branch == 0, seed
        assert all(t.skill != "discoverer" for t in trace[1:-1])   # no exploring on the way
        assert trace[-1].skill == "discoverer"                      # explore at depth 9
        for t, nxt in zip(trace, trace[1:]):
            if t.branch == 2:
                assert t.skill == "ascender"


def test_minetown_policy_enters_the_mines_then_descends_to_depth_8():
    trace = simulate(task_policy("minetown", seed=0), turns=60, branch_depth=4, seed=1)
    mines = [t for t in trace if t.branch == 2]
    assert mines, "never reached the Mines"
    assert max(t.depth for t in mines) == 8
    assert all(t.skill == "descender" for t in mines if t.depth < 8)
    assert all(t.skill == "discoverer" for t in mines if t.depth == 8)


def test_composite_policies_follow_their_attributes():
    # Golden Exit: sweep DL1-3, then climb for the exit once gold and kills are there
    rich = lambda turn, depth, branch, skill: {"gold_pieces": 25 if turn > 12 else 0,
                                               "monsters_defeated": 30 if turn > 12 else 0}
    trace = simulate(task_policy("goldenexit", seed=0), turns=25, branch_depth=4, attributes=rich)
    assert max(t.depth for t in trace[:13]) == 3
    assert all(t.skill == "ascender" for t in trace[14:])
    assert trace[-1].depth == 1
    # Level Up & Sell: explore DL1 until XL 4, then look for a shop
    xl = lambda turn, depth, branch, skill: {"xp_level": 1 + turn // 5}
    trace = simulate(task_policy("levelupsell", seed=0), turns=20, attributes=xl,
                     merchant_at=lambda d, b: d == 3)
    assert all(t.depth == 1 for t in trace[:16])
    assert any(t.skill == "merchant" for t in trace)
    # Discovery Hunger: explore the Mines until fed, then descend to 9 in the Dungeons of Doom
    fed = lambda turn, depth, branch, skill: {"eaten_food": turn > 15}
    trace = simulate(task_policy("discoveryhunger", seed=0), turns=50, branch_depth=2, seed=3,
                     attributes=fed, stop=lambda t: t.depth == 9)
    assert any(t.branch == 2 and t.skill == "discoverer" for t in trace)
    assert trace[-1].depth == 9 and trace[-1].branch == 0
