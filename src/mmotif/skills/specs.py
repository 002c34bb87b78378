"""Skills as data: a name, a short description for the coder LLM, and the preference
modifier the annotator LLM judges by (spec §2.1, in our own words).

The paper's five skills are the default; a user can give their own list in the run's YAML
(`skills:`), in which case the ids are the list order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmotif.contract import GameState
from mmotif.nethack.captions import caption_text


class Probe(BaseModel):
    """One canonical reward-model input: what the reward model reads of an observation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: str = Field("", max_length=256)
    depth_change: int = Field(0, ge=-1, le=1, description="+1 deeper, -1 shallower, 0 same level")


NEUTRAL_STEP = Probe()  # no message, same level: most steps of every game


class YesNoExample(BaseModel):
    """A solved pointwise question shown to the annotator before the real one (few-shot)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    caption: str = Field(min_length=1, description="a caption text, as mmotif.nethack.captions writes it")
    answer: Literal["Yes", "No"]


def _example(answer: str, message: str, previous: str = "", depth: tuple[int, int] = (4, 4),
             hp: tuple[int, int] = (12, 12)) -> YesNoExample:
    def state(i: int, msg: str) -> GameState:
        return GameState(message=msg, depth=depth[i], gold=0, hp=hp[i], hp_max=12, level=1, hunger=1)

    return YesNoExample(caption=caption_text(state(0, previous), state(1, message)), answer=answer)


# Measured by bench/annotator_quality.py: three solved examples per skill take the 0.5B model's
# ranking of real captions from chance (AUC 0.48) to 0.70 (bench/README.md). The fourth, the
# god's wrath, came later and is not in that number; the discoverer's fifth is measured below.
_NOTHING = "You hear water falling on coins."
_KILL = "You kill the giant rat!"
# A kill that cost hit points is still a "Yes" for the discoverer. Without it the 0.5B model
# read the HP line of a fight as bad news and ranked kills below nothing happening (an embedded
# run's discoverer model scored "" above every "You kill ...!"). Measured on two labelled sets
# of 34 discoverer captions (bench/README.md, annotator_quality): AUC positive vs neutral
# 0.56 -> 0.68 and 0.62 -> 0.65, overall 0.77 -> 0.82 and 0.60 -> 0.67.
_FIGHT_WON = ("You kill the jackal!", "The jackal bites!")
# Tried and taken out again (2026-12-07): a menu prompt ("What do you want to eat? [gh or ?*]")
# as a discoverer "No". It fixed what it aimed at (AUC kill vs menu prompt on real captions
# 0.10-0.35 -> 0.43-0.82) but lifted deaths and the god's anger to the kills' level (positive vs
# negative 0.66 -> 0.47, neutral vs negative 0.88 -> 0.23 and 0.71 -> 0.50); a reward model that
# pays for dying is worse than one that pays for opening menus. bench/example_ablation.py.
# The god's wrath, a "No" for every skill (the prompts' god clause). Without it the 0.5B
# model's reward models paid for the messages of prayer spam ("You are being punished for
# your misbehavior!", "Thou must relearn thy lessons!"): a 10-min local run's agent prayed
# in 44% of its steps and died after ~10 (bench/README.md, skill_learning).
_WRATH = ("You are being punished for your misbehavior!", "You feel that Anhur is displeased.")


class SkillSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="identifier used in code policies")
    description: str = Field(min_length=1, description="one line for the coder LLM")
    preference: str = Field(min_length=1, description="what the annotator should favour")
    has_precondition: bool = Field(
        False, description="the skill may start only when its initiation function allows it"
    )
    threshold_quantile: float = Field(
        0.85, gt=0.0, lt=1.0, description="reward threshold quantile for RL (§4.6)"
    )
    examples: tuple[YesNoExample, ...] = Field(
        (), description="solved Yes/No questions shown before each pointwise question (few-shot)")
    probes: tuple[Probe, ...] = Field(
        (), description="canonical inputs of the skill's target events; every reward-model version "
                        "is scored on them against `neutral_probe` (mmotif.rewards.probes)")
    neutral_probe: Probe = NEUTRAL_STEP


PAPER_SKILLS: tuple[SkillSpec, ...] = (
    SkillSpec(
        name="discoverer",
        description="Explores the current dungeon level in full, fighting off the monsters it meets.",
        preference=(
            "Favour bold exploration of the level the player is on: fighting monsters and "
            "collecting items such as gold or scrolls, and keeping them. Changing level, "
            "whether going down or up, is firmly undesirable."
        ),
        threshold_quantile=0.95,
        examples=(_example("Yes", _KILL, depth=(2, 2)), _example("No", "", _NOTHING, depth=(2, 2)),
                  _example("No", "You climb up the stairs.", depth=(3, 2)), _example("No", *_WRATH),
                  _example("Yes", *_FIGHT_WON, depth=(2, 2), hp=(12, 8))),
        probes=(Probe(message="You kill the newt!"), Probe(message="You find a hidden passage."),
                Probe(message="$ - 12 gold pieces.")),
    ),
    SkillSpec(
        name="descender",
        description="Finds a down staircase and goes down one level.",
        preference=(
            "Progress means going deeper into the dungeon, and it is urgent. Remaining on "
            "the same level is strongly undesirable, and going up is worse still."
        ),
        examples=(_example("Yes", "You descend the stairs.", "There is a staircase down here.", depth=(7, 8)),
                  _example("No", _KILL, depth=(7, 7)), _example("No", "You climb up the stairs.", depth=(8, 7)),
                  _example("No", *_WRATH)),
        probes=(Probe(message="You descend the stairs.", depth_change=1), Probe(depth_change=1)),
    ),
    SkillSpec(
        name="ascender",
        description="Finds an up staircase and goes up one level.",
        preference=(
            "The only progress is successfully climbing up one level. Remaining on the same "
            "level is strongly undesirable, whatever else happens."
        ),
        examples=(_example("Yes", "You climb up the stairs.", "There is a staircase up here.", depth=(8, 7)),
                  _example("No", _KILL, depth=(7, 7)), _example("No", "You descend the stairs.", depth=(7, 8)),
                  _example("No", *_WRATH)),
        probes=(Probe(message="You climb up the stairs.", depth_change=-1), Probe(depth_change=-1)),
    ),
    SkillSpec(
        name="worshipper",
        description="Uses an altar to learn whether its items are cursed or blessed.",
        preference=(
            "Strongly favour using an altar, above all to find out whether items are cursed "
            "or blessed, rather than praying or trying to please the god."
        ),
        has_precondition=True,
        examples=(_example("Yes", "There is a black flash as the wand hits the altar."), _example("No", _NOTHING),
                  _example("No", "You feel that Mitra is displeased.", hp=(9, 9))),
        probes=(Probe(message="There is an altar to Chih Sung-tzu (lawful) here."),
                Probe(message="There is a black flash as a ring hits the altar.")),
    ),
    SkillSpec(
        name="merchant",
        description="Deals with shopkeepers by selling them its items.",
        preference=(
            "Favour dealing with shopkeepers: negotiating, selling items and other trade. "
            "Never steal from a shop."
        ),
        has_precondition=True,
        examples=(_example("Yes", "Wonotobo offers 20 gold pieces for your wand.  Sell it? [ynaq] (y)"),
                  _example("No", _NOTHING), _example("No", "You die...", "The giant rat bites!", hp=(2, 0)),
                  _example("No", *_WRATH)),
        probes=(Probe(message="Asidonhopo offers 6 gold pieces for your ring.  Sell it? [ynaq] (y)"),
                Probe(message="Hello, Agent!  Welcome to Asidonhopo's general store!")),
    ),
)


def validate_skill_list(skills: list[SkillSpec]) -> list[SkillSpec]:
    names = [s.name for s in skills]
    if not names:
        raise ValueError("at least one skill is needed")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"skill names must be unique; repeated: {duplicates}")
    return skills


class SkillSet(BaseModel):
    """An ordered list of skills; a skill's id is its position."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skills: tuple[SkillSpec, ...] = PAPER_SKILLS

    @field_validator("skills")
    @classmethod
    def _unique_names(cls, skills: tuple[SkillSpec, ...]) -> tuple[SkillSpec, ...]:
        return tuple(validate_skill_list(list(skills)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.skills)

    def id_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown skill {name!r}; known: {', '.join(self.names)}") from None

    def with_precondition(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.skills if s.has_precondition)

    def __len__(self) -> int:
        return len(self.skills)
