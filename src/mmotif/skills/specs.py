"""Skills as data: a name, a short description for the coder LLM, and the preference
modifier the annotator LLM judges by (spec §2.1, in our own words).

The paper's five skills are the default; a user can give their own list in the run's YAML
(`skills:`), in which case the ids are the list order.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Probe(BaseModel):
    """One canonical reward-model input: what the reward model reads of an observation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: str = Field("", max_length=256)
    depth_change: int = Field(0, ge=-1, le=1, description="+1 deeper, -1 shallower, 0 same level")


NEUTRAL_STEP = Probe()  # no message, same level: most steps of every game


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
        probes=(Probe(message="You descend the stairs.", depth_change=1), Probe(depth_change=1)),
    ),
    SkillSpec(
        name="ascender",
        description="Finds an up staircase and goes up one level.",
        preference=(
            "The only progress is successfully climbing up one level. Remaining on the same "
            "level is strongly undesirable, whatever else happens."
        ),
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
