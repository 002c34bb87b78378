"""Which labels a run's reward models train on: those whose provenance is the run's own.

A label records the annotator model, the prompt version and a digest of the skill's
preference text (`mmotif.contract.Preference`). Labels made by another model, with other
prompts or for another wording of a skill teach a different reward, so with
`reward.label_provenance: current` (the default) the trainer keeps only labels that match
the run's annotator config and counts the others by reason; `any` keeps every label.

A label stored before digests were recorded (preference store schema < 3) has an empty
digest: under `current` it is excluded as `no_preference_digest`, since nothing says which
preference text it was made for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mmotif.config import RunConfig
from mmotif.contract import Preference

# why a label was left out, in the order they are checked
REASONS = ("annotator_model", "prompt_version", "no_preference_digest", "preference_text")


@dataclass(frozen=True)
class LabelProvenance:
    model: str
    prompt_version: str
    preference_digests: Mapping[str, str]  # skill -> digest of its preference text

    def mismatch(self, pref: Preference) -> str | None:
        """Why `pref` was not made by this provenance (one of REASONS), or None."""
        if pref.model != self.model:
            return "annotator_model"
        if pref.prompt_version != self.prompt_version:
            return "prompt_version"
        if not pref.preference_digest:
            return "no_preference_digest"
        if pref.preference_digest != self.preference_digests.get(pref.pair.skill):
            return "preference_text"
        return None

    def to_dict(self) -> dict:
        return {"model": self.model, "prompt_version": self.prompt_version,
                "preference_digests": dict(self.preference_digests)}


def run_provenance(cfg: RunConfig) -> LabelProvenance:
    """The provenance of the labels `cfg`'s annotators make."""
    from mmotif.annotators.prompts import preference_digest, prompt_version

    a = cfg.annotator
    if a.backend == "rules":
        from mmotif.annotators.rules import rules_model_name

        model = rules_model_name(a.rules)
    else:
        from mmotif.llm.factory import recorded_model_name

        model = recorded_model_name(a)
    return LabelProvenance(model=model, prompt_version=prompt_version(a.mode),
                           preference_digests={s.name: preference_digest(s.preference) for s in cfg.skills})


def label_filter(cfg: RunConfig) -> LabelProvenance | None:
    """The provenance labels must match to train `cfg`'s reward models; None: any label."""
    return run_provenance(cfg) if cfg.reward.label_provenance == "current" else None


def exclusion_line(excluded: Mapping[str, int], received: int, wanted: LabelProvenance) -> str:
    """One log line: how many labels were left out of reward training, and why."""
    why = ", ".join(f"{reason} {n}" for reason, n in excluded.items() if n)
    return (f"reward training leaves out {sum(excluded.values())} of {received} labels made with another "
            f"provenance ({why}); it trains on labels of model {wanted.model!r}, prompts "
            f"{wanted.prompt_version!r} and the skills' current preference texts "
            f"(reward.label_provenance: any uses every label)")
