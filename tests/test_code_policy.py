"""Code policies over skills: the built-in training policy (spec §5, §6) and the checks
every policy passes before a game starts. Real RestrictedPython, no mocks."""

from __future__ import annotations

import pickle
import textwrap
import timeit

import numpy as np
import pytest

from mmotif.skills.code_policy import (
    CodePolicy,
    CodePolicyError,
    PolicyTimeout,
    SurroundingsView,
    UnsafeCodeError,
    builtin_source,
    combine_parts,
)

SKILLS = ("discoverer", "descender", "ascender", "worshipper", "merchant")
NO_PRE = {"merchant_precondition": False, "worshipper_precondition": False}


def exploration(seed=0) -> CodePolicy:
    policy = CodePolicy.exploration(SKILLS, ("worshipper", "merchant"), seed=seed)
    return policy


def start(policy: CodePolicy, **attrs) -> str:
    first = policy.new_episode()
    policy.set_attribute("branch_depth", -2)
    for k, v in attrs.items():
        policy.set_attribute(k, v)
    return first


# ---------------------------------------------------------------------------------------
# Initial values (§6.1 Combination)
# ---------------------------------------------------------------------------------------
def test_initial_values_are_drawn_per_episode_and_reproducible():
    policy = exploration(seed=3)
    draws = []
    for _ in range(40):
        assert policy.new_episode() == "discoverer"
        assert policy.attribute("discoverer_skill_steps") == 500
        assert policy.attribute("merchant_skill_steps") == 10_000
        assert policy.attribute("worshipper_skill_steps") == 10_000
        assert policy.attribute("branch_depth") == -2
        draws.append((policy.attribute("max_depth"), policy.attribute("mines")))
    assert {d for d, _ in draws} == {2, 3, 4}
    assert {m for _, m in draws} == {0, 1}
    again = exploration(seed=3)
    assert [(again.new_episode(), again.attribute("max_depth"), again.attribute("mines"))[1:]
            for _ in range(40)] == draws
    other = exploration(seed=4)
    assert [(other.new_episode(), other.attribute("max_depth"), other.attribute("mines"))[1:]
            for _ in range(40)] != draws


# ---------------------------------------------------------------------------------------
# Termination (§5.3)
# ---------------------------------------------------------------------------------------
def test_termination_rules():
    policy = exploration()
    start(policy)
    t = policy.terminates
    assert t("discoverer", 499, 1, 1, **NO_PRE) is False
    assert t("discoverer", 500, 1, 1, **NO_PRE) is True
    assert t("discoverer", 10, 2, 1, **NO_PRE) is False          # a level change does not end it
    assert t("descender", 3000, 1, 1, **NO_PRE) is False
    assert t("descender", 5, 2, 1, **NO_PRE) is True
    assert t("descender", 5, 1, 2, **NO_PRE) is False
    assert t("ascender", 5, 1, 2, **NO_PRE) is True
    assert t("ascender", 5, 3, 2, **NO_PRE) is False
    assert t("merchant", 9_999, 3, 3, **NO_PRE) is False
    assert t("merchant", 10_000, 3, 3, **NO_PRE) is True
    assert t("worshipper", 10_000, 3, 3, **NO_PRE) is True
    for skill in SKILLS:                                           # a precondition ends anything
        assert t(skill, 0, 1, 1, merchant_precondition=True, worshipper_precondition=False) is True
        assert t(skill, 0, 1, 1, merchant_precondition=False, worshipper_precondition=True) is True
    policy.set_attribute("discoverer_skill_steps", 50)             # Delphi / Minetown setting
    assert t("discoverer", 50, 1, 1, **NO_PRE) is True
    assert t("merchant", 999, 1, 1, **NO_PRE) is False
    assert t("merchant", 1000, 1, 1, **NO_PRE) is True


# ---------------------------------------------------------------------------------------
# Initiation (§5.2) through SurroundingsView
# ---------------------------------------------------------------------------------------
def window(cells: dict[tuple[int, int], tuple[str, int]], hero=("@", 15), dtype=np.int8):
    chars = np.full((7, 7), ord("."), dtype=np.uint8)
    colors = np.full((7, 7), 7, dtype=dtype)
    chars[3, 3] = ord(hero[0])
    colors[3, 3] = -1 if dtype == np.int8 else 255                # hero blanked by the env
    for (r, c), (ch, col) in cells.items():
        chars[r, c], colors[r, c] = ord(ch), col
    return chars, colors


def test_initiation_rules():
    policy = exploration()
    start(policy)
    altar = window({(0, 1): ("_", 7)})
    shop = window({(6, 6): ("@", 15)})
    red_altar = window({(0, 1): ("_", 1)})
    dog = window({(2, 2): ("@", 7)})
    alone = window({})
    for skill in ("discoverer", "descender", "ascender"):
        assert policy.initiation(skill, SurroundingsView(*alone, 0)) is True
    assert policy.initiation("worshipper", SurroundingsView(*altar, 1)) is True
    assert policy.initiation("worshipper", SurroundingsView(*altar, 0)) is False   # nothing to identify
    assert policy.initiation("worshipper", SurroundingsView(*red_altar, 1)) is False
    assert policy.initiation("merchant", SurroundingsView(*altar, 1)) is False
    assert policy.initiation("merchant", SurroundingsView(*shop, 2)) is True
    assert policy.initiation("merchant", SurroundingsView(*shop, 0)) is False
    assert policy.initiation("merchant", SurroundingsView(*dog, 1)) is False
    assert policy.initiation("merchant", SurroundingsView(*alone, 3)) is False      # the hero is not a shopkeeper
    uint8_alone = window({}, dtype=np.uint8)
    assert policy.initiation("merchant", SurroundingsView(*uint8_alone, 3)) is False


def test_surroundings_view():
    chars, colors = window({(1, 1): ("_", 7), (5, 0): ("@", 15)})
    view = SurroundingsView(chars[1:, :5], colors[1:, :5], 4)        # clipped, non-contiguous
    assert view.new_items == 4
    assert view.sees("_", 7) and view.sees("@", 15)
    assert not view.sees("_", 15) and not view.sees("<", 7) and not view.sees("\u2603", 7)
    assert SurroundingsView([[95, 64]], [[7, -1]], 1).sees("_", 7)
    assert not SurroundingsView([[95, 64]], [[7, -1]], 1).sees("@", 15)
    with pytest.raises(ValueError):
        SurroundingsView(chars, colors[:3], 0)
    n = 20_000
    per_step = min(timeit.repeat(lambda: (SurroundingsView(chars, colors, 1).sees("_", 7),
                                          SurroundingsView(chars, colors, 1).sees("@", 15)),
                                 number=n, repeat=3)) / n / 2
    print(f"\nSurroundingsView build + sees: {per_step * 1e6:.2f} us")


# ---------------------------------------------------------------------------------------
# The policy over skills (§6.2), in a scripted simulation
# ---------------------------------------------------------------------------------------
def run_skill(skill: str, depth: int, branch: int, land_branch) -> tuple[int, int, int]:
    """The skill runs to completion: (turns taken, new depth, new branch)."""
    if skill == "descender":
        return 20, depth + 1, land_branch(depth, branch)
    if skill == "ascender":
        # climbing out of the first Mines level lands back in the main dungeon
        return 20, depth - 1, branch
    if skill in ("merchant", "worshipper"):
        return 10_000, depth, branch                               # runs until its own time limit
    return 500, depth, branch


def simulate(policy: CodePolicy, switches: int, *, branch_depth=-2, land_branch=None,
             preconditions=None, **attrs):
    """Scripted env: run each skill until the policy says it terminated, then ask for the next."""
    land_branch = land_branch or (lambda depth, branch: branch)
    skill = start(policy, branch_depth=branch_depth, **attrs)
    depth, branch = 1, 0
    trace = [(skill, depth, branch)]
    for step in range(switches):
        turns, new_depth, new_branch = run_skill(skill, depth, branch, land_branch)
        if branch == 2 and new_branch == 2 and new_depth == branch_depth:
            new_branch = 0                                         # left the Mines upwards
        pre = dict(NO_PRE) if preconditions is None else preconditions(step, new_depth)
        assert policy.terminates(skill, turns, new_depth, depth, **pre) is True
        depth, branch = new_depth, new_branch
        skill = policy.next_skill(skill, depth, branch, **pre)
        trace.append((skill, depth, branch))
    return trace


@pytest.mark.parametrize("max_depth", [2, 3, 4])
def test_exploration_sweeps_down_and_up_alternating_explore_and_move(max_depth):
    policy = exploration()
    trace = simulate(policy, 40, max_depth=max_depth, mines=0)
    skills = [s for s, _, _ in trace]
    # explore, change level, explore, change level, ...
    assert skills[0::2] == ["discoverer"] * len(skills[0::2])
    assert set(skills[1::2]) <= {"descender", "ascender"}
    # depths explored by the discoverer sweep 1..max_depth..1 and again
    explored = [d for s, d, _ in trace if s == "discoverer"]
    sweep = list(range(1, max_depth + 1)) + list(range(max_depth - 1, 1, -1))
    expected = (sweep * 20)[: len(explored)]
    assert explored == expected
    assert max(d for _, d, _ in trace) == max_depth and min(d for _, d, _ in trace) == 1


def test_exploration_prefers_merchant_then_worshipper():
    policy = exploration()
    start(policy, max_depth=3, mines=0)
    both = {"merchant_precondition": True, "worshipper_precondition": True}
    altar = {"merchant_precondition": False, "worshipper_precondition": True}
    for skill in SKILLS:
        assert policy.next_skill(skill, 2, 0, **both) == "merchant"
        assert policy.next_skill(skill, 2, 0, **altar) == "worshipper"

    # preconditions preempt the sweep, which then resumes where it was
    def shop_on_level_2(step, depth):
        return {"merchant_precondition": depth == 2 and step < 3, "worshipper_precondition": False}

    policy2 = exploration()
    trace = simulate(policy2, 8, preconditions=shop_on_level_2, max_depth=3, mines=0)
    assert [s for s, _, _ in trace] == [
        "discoverer", "descender", "merchant", "merchant",
        "discoverer", "descender", "discoverer", "ascender", "discoverer",
    ]


def test_reach_gnomish_mines_retries_until_the_mines():
    policy = exploration()
    landings = iter([0, 2])                                       # first the main stairs, then the Mines

    def land(depth, branch):
        return next(landings) if (branch == 0 and depth == 2) else branch

    trace = simulate(policy, 10, branch_depth=2, land_branch=land, max_depth=4, mines=1)
    assert trace[:7] == [
        ("discoverer", 1, 0),
        ("descender", 1, 0),
        ("descender", 2, 0),     # the branch level: go down at once
        ("ascender", 3, 0),      # main dungeon: wrong staircase, go back up
        ("descender", 2, 0),     # and retry
        ("discoverer", 3, 2),    # in the Mines: sweep as usual
        ("descender", 3, 2),
    ]
    assert all(b == 2 for _, _, b in trace[5:])


def test_reach_dungeons_of_doom_leaves_the_mines():
    policy = exploration()
    start(policy, branch_depth=3, max_depth=4, mines=0)
    assert policy.next_skill("discoverer", 3, 0, **NO_PRE) == "descender"   # branch level
    assert policy.next_skill("descender", 4, 2, **NO_PRE) == "ascender"     # landed in the Mines
    assert policy.next_skill("descender", 4, 0, **NO_PRE) == "discoverer"   # landed right
    assert policy.next_skill("descender", 5, 2, **NO_PRE) == "discoverer"


def test_policy_call_cost_is_printed():
    policy = exploration()
    start(policy, max_depth=3, mines=0)
    view = SurroundingsView(*window({}), 1)
    n = 10_000

    def step():
        pre = {"worshipper_precondition": policy.initiation("worshipper", view),
               "merchant_precondition": policy.initiation("merchant", view)}
        policy.terminates("discoverer", 10, 1, 1, **pre)

    per_step = min(timeit.repeat(step, number=n, repeat=3)) / n
    print(f"\ncode-policy work per env step (2 initiations + 1 termination): {per_step * 1e6:.2f} us")


# ---------------------------------------------------------------------------------------
# Checks before any game
# ---------------------------------------------------------------------------------------
GOOD = '''
class NetHackPlayer:
    def set_initial_values(self):
        self.skill = "discoverer"

    def skill_termination(self, skill, skill_time, depth, start_depth, **preconditions):
        return skill_time >= 10

    def perform_task(self, current_skill, dungeon_depth, branch_number, **preconditions):
        return "descender" if current_skill == "discoverer" else "discoverer"
'''


def from_source(source, skills=("discoverer", "descender"), pre=(), **kw):
    return CodePolicy.from_source(textwrap.dedent(source), skills, pre, name="task.py", budget_s=0.05, **kw)


def test_a_minimal_policy_loads():
    policy = from_source(GOOD)
    assert policy.new_episode() == "discoverer"
    assert policy.initiation("descender", SurroundingsView(*window({}), 0)) is True
    assert policy.next_skill("discoverer", 1, 0) == "descender"


def test_non_skill_name_is_refused_at_dry_run():
    bad = GOOD.replace('return "descender" if', 'return "descend" if')
    with pytest.raises(CodePolicyError) as info:
        from_source(bad)
    message = str(info.value)
    assert message.startswith("task.py: dry run")
    assert "perform_task('discoverer', 1, 0) returned 'descend'" in message
    assert "expected one of discoverer, descender" in message


def test_non_bool_termination_is_refused_at_dry_run():
    bad = GOOD.replace("return skill_time >= 10", "if skill_time >= 10:\n            return True")
    with pytest.raises(CodePolicyError, match=r"dry run.*skill_termination\(.*\) returned None; expected True or False"):
        from_source(bad)


def test_failure_in_a_rare_state_is_found_at_dry_run():
    bad = GOOD.replace('return "descender" if', 'return {1: "descender"}[dungeon_depth] if')
    with pytest.raises(CodePolicyError, match=r"dry run .*perform_task\(\) failed at line \d+ .*KeyError: 2"):
        from_source(bad)


def test_runaway_policy_is_stopped_at_dry_run_and_at_run_time():
    looping = GOOD.replace("return skill_time >= 10", "while skill == 'descender':\n            pass\n        return True")
    with pytest.raises(PolicyTimeout, match=r"dry run .*skill_termination\(\) ran past its time budget"):
        from_source(looping)
    # a loop that only starts in a state the dry run does not visit
    late = GOOD.replace("return skill_time >= 10", "while skill_time == 123:\n            pass\n        return True")
    policy = from_source(late)
    policy.new_episode()
    with pytest.raises(PolicyTimeout):
        policy.terminates("discoverer", 123, 1, 1)
    assert policy.terminates("discoverer", 1, 1, 1) is True       # next call is fine


def test_missing_class_or_method():
    with pytest.raises(UnsafeCodeError, match="must define class NetHackPlayer"):
        from_source("class Player:\n    pass\n")
    with pytest.raises(UnsafeCodeError, match="lacks method.*perform_task"):
        from_source(GOOD.replace("def perform_task", "def perform"))
    with pytest.raises(UnsafeCodeError, match="skill_precondition"):
        from_source(GOOD, pre=("descender",))


def test_unsafe_sources_are_refused_before_running():
    for snippet, words in [
        ("import os", "import statements are not allowed"),
        ("x = __import__('os')", "__import__"),
        ("x = ().__class__.__bases__[0].__subclasses__()", "__subclasses__"),
        ("x = getattr(self, '__class__')", "getattr()"),
        ("x = open('/etc/passwd')", '"open" is not available'),
    ]:
        src = GOOD.replace('self.skill = "discoverer"', f'{snippet}\n        self.skill = "discoverer"')
        with pytest.raises(UnsafeCodeError) as info:
            from_source(src)
        assert "Line 4" in str(info.value) and words in str(info.value)


def test_huge_allocation_in_a_policy_is_stopped():
    for expr in ("'x' * 10**10", "[0] * 10**9"):
        src = GOOD.replace('self.skill = "discoverer"', f'self.big = {expr}\n        self.skill = "discoverer"')
        with pytest.raises(CodePolicyError, match="SandboxLimitError"):
            from_source(src)


def test_syntax_error_names_the_line():
    with pytest.raises(UnsafeCodeError, match=r"Line 6: SyntaxError.*def skill_termination\(self skill"):
        from_source(GOOD.replace("def skill_termination(self,", "def skill_termination(self"))


def test_set_attribute_accepts_plain_values_only():
    policy = from_source(GOOD)
    with pytest.raises(RuntimeError):
        policy.set_attribute("branch_depth", 3)
    policy.new_episode()
    policy.set_attribute("branch_depth", np.int64(3))
    assert policy.attribute("branch_depth") == 3 and type(policy.attribute("branch_depth")) is int
    policy.set_attribute("levels", (1, 2))
    with pytest.raises(TypeError):
        policy.set_attribute("view", object())
    with pytest.raises(ValueError):
        policy.set_attribute("_secret", 1)


# ---------------------------------------------------------------------------------------
# Combining parts (combine step, §6.1 / §12.1)
# ---------------------------------------------------------------------------------------
TASK_CLASS = '''
class NetHackPlayer:
    def perform_task(self, current_skill, dungeon_depth, branch_number,
                     merchant_precondition=False, worshipper_precondition=False):
        if dungeon_depth < 3:
            return "descender"
        return self.select_skill(current_skill, dungeon_depth, merchant_precondition, worshipper_precondition)

    def select_skill(self, current_skill, dungeon_depth, merchant_precondition, worshipper_precondition):
        return "discoverer"

    def set_initial_values(self):
        self.skill = "ascender"

# the unit test the LLM wrote; dropped by the combine step
player = NetHackPlayer()
for turn in range(20):
    print(player.perform_task("discoverer", 1, 0))
'''

TASK_INITIAL_VALUES = '''
def set_initial_values(self):
    self.skill = "discoverer"
    self.max_depth = 9
    self.discoverer_skill_steps = 50
'''


def test_from_parts_combines_like_the_method():
    parts = [
        ("initiation_termination.py", builtin_source("initiation_termination")),
        ("task.py", TASK_CLASS),
        ("initial_values.py", TASK_INITIAL_VALUES),
    ]
    policy = CodePolicy.from_parts(parts, SKILLS, seed=0, name="delphi")
    assert policy.printed == []                                   # the unit test did not run
    assert policy.new_episode() == "discoverer"                   # the appended part wins
    assert policy.attribute("max_depth") == 9
    assert policy.next_skill("discoverer", 1, 0, **NO_PRE) == "descender"
    assert policy.terminates("discoverer", 50, 4, 4, **NO_PRE) is True
    assert policy.source.index("def perform_task") < policy.source.index("def skill_precondition")


def test_errors_in_parts_name_the_part_and_its_line():
    bad_fragment = "def set_initial_values(self):\n    self.skill = 'discoverer'\n    import os\n"
    with pytest.raises(UnsafeCodeError, match=r"\(initial_values.py line 3\): import statements"):
        CodePolicy.from_parts([("task.py", TASK_CLASS), ("initial_values.py", bad_fragment)], SKILLS)
    failing = "def set_initial_values(self):\n    self.skill = 'discoverer'\n    self.x = 1 // 0\n"
    with pytest.raises(CodePolicyError, match=r"\(initial_values.py line 3\).*ZeroDivisionError"):
        CodePolicy.from_parts([("task.py", TASK_CLASS), ("initial_values.py", failing),
                               builtin_source("initiation_termination")], SKILLS)
    with pytest.raises(UnsafeCodeError, match=r"broken.py: line 2: SyntaxError"):
        combine_parts([("task.py", TASK_CLASS), ("broken.py", "def f(self):\n    return (\n")])
    with pytest.raises(UnsafeCodeError, match="only one part may define"):
        combine_parts([TASK_CLASS, TASK_CLASS])


def test_fragments_without_a_class_get_one():
    parts = [builtin_source("initiation_termination"), TASK_INITIAL_VALUES,
             "def perform_task(self, current_skill, dungeon_depth, branch_number, **pre):\n    return 'discoverer'\n"]
    policy = CodePolicy.from_parts(parts, SKILLS)
    assert policy.new_episode() == "discoverer"


def test_policy_pickles_by_source_and_needs_an_episode():
    policy = exploration(seed=5)
    with pytest.raises(CodePolicyError, match="no episode has started"):
        policy.next_skill("discoverer", 1, 0, **NO_PRE)
    copy = pickle.loads(pickle.dumps(policy))
    assert copy.source == policy.source and copy.name == "builtin:exploration"
    draws = [(p.new_episode(), p.attribute("max_depth"), p.attribute("mines")) for p in (policy, copy)]
    assert draws[0] == draws[1]


# ---------------------------------------------------------------------------------------
# Hardening (issue 17, finding 3): state kept between calls, dry-run arguments
# ---------------------------------------------------------------------------------------
HOARDER = GOOD.replace(
    "        return skill_time >= 10\n",
    "        if depth == 40 and skill_time == 7:\n"
    "            big = [0] * 1_000_000\n"
    "            self.box = Box()\n"
    "            self.box.rows = [big, big, big]\n"
    "        return skill_time >= 10\n",
) + "\nclass Box:\n    pass\n"


def test_state_kept_between_calls_is_weighed_and_the_player_dropped():
    import time

    policy = CodePolicy.from_source(HOARDER, ("discoverer", "descender"), (), name="hoard.py")
    policy.new_episode()
    assert policy.terminates("discoverer", 1, 1, 1) in (True, False)
    t0 = time.perf_counter()
    with pytest.raises(CodePolicyError, match=r"hoard.py: skill_termination\(\) left more than 1000000 items"):
        policy.terminates("discoverer", 7, 40, 1)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(CodePolicyError, match="no episode has started"):
        policy.terminates("discoverer", 1, 1, 1)


def test_dry_run_draws_arguments_a_policy_cannot_special_case():
    # slow (here: failing) only off the fixed dry-run situations
    src = GOOD.replace(
        "        return skill_time >= 10\n",
        "        if depth > 5 or skill_time not in (0, 1, 600, 50000):\n"
        "            raise ValueError('an unforeseen situation')\n"
        "        return skill_time >= 10\n",
    )
    with pytest.raises(CodePolicyError, match=r"dry run .*unforeseen situation"):
        from_source(src)
