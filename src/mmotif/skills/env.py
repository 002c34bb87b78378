"""The skill environment: NLE + the skill machinery, call-and-return (spec §5.4).

Every env step: play the action, update the Mines-branch knowledge, evaluate the
initiation functions, ask the code policy whether the active skill terminates and, if so,
which skill runs next. The observation carries the active skill (id and one-hot); `info`
carries the bookkeeping (switches, depth, branch, per-skill steps, and `competence`: the
per-skill outcome events of mmotif.skills.competence, credited to the skill that acted).

Timing (a deliberate choice, see contract.py): `diffstats` of an observation is the sign
of the depth change since the start of the skill that chose the previous action, so the
observation that shows a descent still says "deeper" even when that descent ends the skill.

Task hook (optional, for evaluation): `task` is any object with `begin(env)` and
`observe(env, action)`. `begin` is called at the end of every `begin_episode` (the game is
reset and the policy's new player exists); `observe` after every played action, *before*
the skill machinery, so a hook may update policy attributes with
`env.policy.set_attribute(...)` that `skill_termination` / `perform_task` see on the same
step (spec §5.4 step 4). `mmotif.tasks.TaskTracker` is such a hook.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from mmotif.contract import DEFAULT_CROP, Caption, EnvRebuild, EpisodeSummary, encode_reward_input, observation_spec
from mmotif.nethack import actions as A
from mmotif.nethack.captions import game_state, make_caption
from mmotif.nethack.features import (
    BL_DEPTH, BL_DNUM, BL_SCORE, BL_TIME, BL_X, BL_Y, MINES_DNUM, UNKNOWN_BRANCH, InventoryCounts,
    MessageCounter, sees_branch_staircase, window_around_hero, window_slices, write_blstats, write_crop,
)
from mmotif.nethack.game import MAX_RESET_KEYS, NetHackGame, ResetError
from mmotif.skills.code_policy import CodePolicy, CodePolicyError, SurroundingsView
from mmotif.skills.competence import CompetenceCounter
from mmotif.skills.specs import SkillSet

PRECONDITION_CACHE_SIZE = 4096
MAX_GAME_REBUILDS = 3  # fresh NLE instances one reset may try before the env gives up


@dataclass
class EpisodeStats:
    steps: int = 0
    score: int = 0
    max_depth: int = 1
    entered_mines: bool = False
    skill_switches: int = 0
    policy_errors: int = 0
    last_policy_error: str = ""
    branch_depth: int = UNKNOWN_BRANCH
    skill_steps: list[int] = field(default_factory=list)


def _rebuild_record(attempt: int, rebuilt: bool, err: ResetError) -> EnvRebuild:
    state = err.state
    return EnvRebuild(attempt=attempt, rebuilt=rebuilt, error=str(err), screen=tuple(state.get("screen", ())),
                      message=state.get("message", ""), misc=tuple(state.get("misc", ())),
                      program_state=tuple(state.get("program_state", ())))


class SkillEnv(gym.Env):
    """One NetHack game driven by a code policy over skills."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        skills: SkillSet,
        policy: CodePolicy,
        crop: tuple[int, int] = DEFAULT_CROP,
        max_episode_steps: int = 10_000,
        msg_max_keys: int = 20,
        caption_rate: float = 0.0,
        caption_gap: int = 100,
        seed: int | None = None,
        wizard: bool = False,
        task=None,
    ):
        self.skills = skills
        self.policy = policy
        self.crop = tuple(crop)
        self.max_episode_steps = max_episode_steps
        self.caption_rate = caption_rate
        self.caption_gap = caption_gap
        self.game = NetHackGame(wizard=wizard)
        self._wizard = wizard
        self.rebuilds: list[dict] = []  # one record per failed reset: its screen, and whether a fresh game followed
        self._reset_attempts = 0
        self._failing_attempts = range(0)  # injected faults (tests): attempts whose game never starts
        self.messages = MessageCounter(msg_max_keys)
        self.inventory = InventoryCounts()
        self._rng = np.random.default_rng(seed)
        self._names = skills.names
        self._precondition_skills = skills.with_precondition()
        self._precondition_kw = {name: f"{name}_precondition" for name in self._precondition_skills}
        self._has_descender = "descender" in self._names

        spec = observation_spec(len(skills), self.crop)
        self.observation_space = gym.spaces.Dict({
            k: gym.spaces.Box(0, 255, shape, dtype) if dtype == np.uint8
            else gym.spaces.Box(-np.inf, np.inf, shape, dtype)
            for k, (shape, dtype) in spec.items()
        })
        self.action_space = gym.spaces.Discrete(A.NUM_ACTIONS)
        self._obs = {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}
        self.captions: list[Caption] = []
        self._snapshots: deque = deque()
        self.stats = EpisodeStats()
        self.competence = CompetenceCounter(len(skills))  # per-skill outcome events (competence.py)
        self.task = task              # optional evaluation hook (see the module docstring)

    # -- gym API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.begin_episode()
        self.write_observation(self._obs)
        return {k: v.copy() for k, v in self._obs.items()}, self.info()

    def step(self, action: int):
        reward, terminated, truncated = self.advance(int(action))
        self.write_observation(self._obs)
        return {k: v.copy() for k, v in self._obs.items()}, reward, terminated, truncated, self.info()

    def close(self):
        self.game.close()

    def reseed(self, seed: int) -> None:
        """Reseed the env's own sampling (captions); NetHack games are never seeded (§9.4)."""
        self._rng = np.random.default_rng(seed)

    # -- core (used directly by the vector env) -------------------------------------
    def inject_reset_failures(self, at_reset: int, times: int) -> None:
        """Fault injection (tests, soak): this env's `at_reset`-th reset attempt (1 = the first)
        and the `times - 1` after it fail for real (the game gets no keys to leave the intro)."""
        self._failing_attempts = range(at_reset, at_reset + times) if at_reset > 0 else range(0)

    def pop_rebuilds(self) -> list[EnvRebuild]:
        records, self.rebuilds = self.rebuilds, []
        return records

    def _reset_game(self) -> None:
        """Start a new game; a game that cannot reach the move loop is replaced by a fresh NLE
        instance (up to MAX_GAME_REBUILDS times), each failure recorded with its screen."""
        for attempt in range(1, MAX_GAME_REBUILDS + 2):
            try:
                self._attempt_reset()
                return
            except ResetError as err:
                give_up = attempt > MAX_GAME_REBUILDS
                self.rebuilds.append(_rebuild_record(attempt, not give_up, err))
                if give_up:
                    raise ResetError(f"{err}; still failing after {MAX_GAME_REBUILDS} fresh NLE instances "
                                     f"(last screen: {' | '.join(err.state['screen'])[:400]})", err.state) from None
                self.game.close()
                self.game = NetHackGame(wizard=self._wizard)

    def _attempt_reset(self) -> None:
        self._reset_attempts += 1
        self.game.reset(max_keys=0 if self._reset_attempts in self._failing_attempts else MAX_RESET_KEYS)

    def begin_episode(self) -> None:
        self._reset_game()
        self.messages.reset()
        self.inventory = InventoryCounts()
        self._precondition_cache: dict = {}
        self.inventory.update(self.game.inv_letters, self.game.inv_oclasses, self.game.starting_letters)
        self._snapshots.clear()
        self.stats = EpisodeStats(skill_steps=[0] * len(self._names))
        self._skill = self._checked_skill(self._call(self.policy.new_episode, self._names[0]))
        self.policy.set_attribute("branch_depth", UNKNOWN_BRANCH)
        bl = self._bl = self.game.blstats.tolist()
        self.competence.reset(bl, self.game.glyphs)
        self._start_time, self._start_depth = bl[BL_TIME], bl[BL_DEPTH]
        self._acting_start_depth = self._start_depth
        self._score0 = bl[BL_SCORE]
        self._next_snapshot = self._draw_snapshot_delay()
        self._msg_count = self.messages.add(self.game.message_bytes())
        if self.task is not None:
            self.task.begin(self)

    def advance(self, action: int) -> tuple[float, bool, bool]:
        """Play one action and run the skill machinery. Returns (reward, terminated, truncated)."""
        game, stats = self.game, self.stats
        acting = self._skill_id  # the skill that chose this action (before any switch below)
        stats.skill_steps[acting] += 1
        terminated = game.step(action)
        stats.steps += 1
        truncated = not terminated and stats.steps >= self.max_episode_steps
        # NLE zeroes the bottom line once the game is over: the end of a game keeps the last
        # live stats, so a death never reads as "level went up, HP 0/0" (captions, diffstats).
        bl = self._bl = self._bl if terminated else game.blstats.tolist()  # ints index faster
        depth, dnum, score = bl[BL_DEPTH], bl[BL_DNUM], bl[BL_SCORE]
        reward = float(score - self._score0 - stats.score)
        stats.score = score - self._score0
        stats.max_depth = max(stats.max_depth, depth)
        stats.entered_mines |= dnum == MINES_DNUM
        message = game.message_bytes()
        self._msg_count = self.messages.add(message)
        self.competence.update(acting, bl, message, game.glyphs, not terminated)
        self.inventory.update(game.inv_letters, game.inv_oclasses, game.starting_letters)
        self._acting_start_depth = self._start_depth
        if stats.branch_depth == UNKNOWN_BRANCH and dnum == 0 and 2 <= depth <= 4:
            if sees_branch_staircase(game.glyphs):
                self._learn_branch(depth)
        if self.task is not None:
            self.task.observe(self, action)
        if not terminated:
            self._run_skill_machinery(depth, dnum, bl[BL_TIME])
        if self.caption_rate > 0:
            self._sample_captions(terminated, truncated)
        return reward, terminated, truncated

    def write_observation(self, out: dict[str, np.ndarray]) -> None:
        game, bl = self.game, self._bl
        blstats = np.asarray(bl) if game.done else game.blstats  # see advance(): last live stats
        write_crop(game.tty_chars, game.tty_colors, bl[BL_X], bl[BL_Y], out["crop_chars"], out["crop_colors"])
        write_blstats(blstats, game.spell_type, self.inventory, self._skill_id, out["blstats"])
        encode_reward_input(game.message, bl[BL_DEPTH] - self._acting_start_depth,
                            out=(out["message"], out["diffstats"]))
        out["msg_count"][...] = self._msg_count
        out["skill"][...] = self._skill_id

    @property
    def skill(self) -> str:
        return self._skill

    @property
    def skill_id(self) -> int:
        return self._skill_id

    def info(self) -> dict:
        s = self.stats
        return {
            "skill": self._skill,
            "skill_switches": s.skill_switches,
            "depth": int(self.game.blstats[BL_DEPTH]),
            "max_depth": s.max_depth,
            "branch": int(self.game.blstats[BL_DNUM]),
            "branch_depth": s.branch_depth,
            "entered_mines": s.entered_mines,
            "policy_errors": s.policy_errors,
            "episode_steps": s.steps,
            "score": s.score,
            "skill_steps": dict(zip(self._names, s.skill_steps)),
            "competence": self.competence.summary(self._names),  # {skill: {event: count}}
        }

    def episode_summary(self, truncated: bool) -> EpisodeSummary:
        s = self.stats
        return EpisodeSummary(
            episode_steps=s.steps, score=s.score, skill_switches=s.skill_switches, max_depth=s.max_depth,
            policy_errors=s.policy_errors, truncated=bool(truncated),
            skill_steps=dict(zip(self._names, s.skill_steps)), competence=self.competence.summary(self._names))

    def pop_captions(self) -> list[Caption]:
        captions, self.captions = self.captions, []
        return captions

    # -- skill machinery -------------------------------------------------------------
    def _run_skill_machinery(self, depth: int, dnum: int, turn: int) -> None:
        preconditions = self._preconditions()
        skill_time = turn - self._start_time
        ended = self._call(
            self.policy.terminates, False,
            self._skill, skill_time, depth, self._start_depth, **preconditions,
        )
        if not ended:
            return
        if (self.stats.branch_depth == UNKNOWN_BRANCH and dnum != 0
                and self._has_descender and self._skill == "descender"):
            self._learn_branch(self._start_depth)
        nxt = self._call(
            self.policy.next_skill, self._names[0],
            self._skill, depth, dnum, **preconditions,
        )
        self._skill = self._checked_skill(nxt)
        self.stats.skill_switches += 1
        self._start_time, self._start_depth = turn, depth

    def _preconditions(self) -> dict[str, bool]:
        """`<skill>_precondition` keywords for every skill with an initiation function.

        Initiation functions are, by the code-policy API, functions of (skill, view) only,
        so an answer is reused while the window and the new-item count are unchanged.
        """
        if not self._precondition_skills:
            return {}
        game, bl = self.game, self._bl
        rows, cols = window_slices(bl[BL_X], bl[BL_Y])
        new_items = self.inventory.new_items
        # the raw window (hero's cell included) as the key: no copy on a cache hit
        key = (game.tty_chars[rows, cols].tobytes(), game.tty_colors[rows, cols].tobytes(), new_items)
        cached = self._precondition_cache.get(key)
        if cached is not None:
            return cached
        view = SurroundingsView(*window_around_hero(game.tty_chars, game.tty_colors, bl[BL_X], bl[BL_Y]),
                                new_items)
        answers = {
            self._precondition_kw[name]: bool(self._call(self.policy.initiation, False, name, view))
            for name in self._precondition_skills
        }
        if len(self._precondition_cache) >= PRECONDITION_CACHE_SIZE:
            self._precondition_cache.clear()
        self._precondition_cache[key] = answers
        return answers

    def _learn_branch(self, depth: int) -> None:
        self.stats.branch_depth = depth
        self.policy.set_attribute("branch_depth", depth)

    def _call(self, method, fallback, *args, **kwargs):
        """Run policy code; a failing call is counted and replaced by `fallback`."""
        try:
            return method(*args, **kwargs)
        except CodePolicyError as err:
            self.stats.policy_errors += 1
            self.stats.last_policy_error = str(err)
            return fallback

    def _checked_skill(self, name) -> str:
        if name not in self._names:
            self.stats.policy_errors += 1
            self.stats.last_policy_error = f"policy returned {name!r}, not a skill name"
            name = self._names[0]
        self._skill_id = self._names.index(name)
        return name

    # -- caption stream ---------------------------------------------------------------
    def _draw_snapshot_delay(self) -> int:
        if self.caption_rate <= 0:
            return -1
        return self.stats.steps + int(self._rng.geometric(self.caption_rate))

    def _sample_captions(self, terminated: bool, truncated: bool) -> None:
        """Snapshots at a geometric rate; a caption pairs one with the state `caption_gap`
        steps later. A game that ends (a death) closes its oldest open snapshot early: that
        caption ends on the last live stats and NetHack's "You die..." message. A truncated
        episode drops its open snapshots (nothing happened to end them)."""
        steps = self.stats.steps
        if steps == self._next_snapshot and not (terminated or truncated):
            self._snapshots.append((steps + self.caption_gap, self._game_state()))
            self._next_snapshot = self._draw_snapshot_delay()
        while self._snapshots and (self._snapshots[0][0] == steps or terminated):
            _, earlier = self._snapshots.popleft()
            self.captions.append(make_caption(earlier, self._game_state()))
            if terminated:
                break
        if terminated or truncated:
            self._snapshots.clear()

    def _game_state(self):
        return game_state(self.game.message_bytes(), self._bl)
