"""The records that cross process boundaries, defined once with shapes and dtypes.

Every role (rollout actors, learner, pair sampler, annotators, reward trainer) imports
these; nothing else defines its own copy.

Observation of the skill environment (one env; a vector env stacks a leading batch axis):

| key          | shape             | dtype   | meaning                                                   |
|--------------|-------------------|---------|-----------------------------------------------------------|
| crop_chars   | (H, W)            | uint8   | tty characters around the hero (hero at the centre)       |
| crop_colors  | (H, W)            | uint8   | tty colours of the same cells (0-15)                      |
| blstats      | (30 + K,)         | float32 | 27 NLE blstats + 3 extras, scaled (§7.1), + skill one-hot |
| message      | (256,)            | uint8   | current message as char codes, zero padded                |
| diffstats    | (5,)              | float32 | sign of depth change since skill start, entries 1-4 zero  |
| msg_count    | ()                | int32   | episodic count of the current message (20-key cache)      |
| skill        | ()                | int64   | id of the active skill                                    |

K is the number of skills (5 for the paper's set).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mmotif.durable import read_text

MESSAGE_LEN = 256
NLE_BLSTATS = 27
BLSTATS_EXTRAS = 3  # starting spell type, number of potions, number of food items
DIFFSTATS_LEN = 5
DEFAULT_CROP = (12, 12)


def blstats_dim(num_skills: int) -> int:
    return NLE_BLSTATS + BLSTATS_EXTRAS + num_skills


def observation_spec(num_skills: int, crop: tuple[int, int] = DEFAULT_CROP) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of one skill-env observation, keyed by name."""
    return {
        "crop_chars": (tuple(crop), np.dtype(np.uint8)),
        "crop_colors": (tuple(crop), np.dtype(np.uint8)),
        "blstats": ((blstats_dim(num_skills),), np.dtype(np.float32)),
        "message": ((MESSAGE_LEN,), np.dtype(np.uint8)),
        "diffstats": ((DIFFSTATS_LEN,), np.dtype(np.float32)),
        "msg_count": ((), np.dtype(np.int32)),
        "skill": ((), np.dtype(np.int64)),
    }


# Hunger states in blstats[21] order (NLE_BL_HUNGER), as words the LLM reads.
HUNGER_WORDS = ("Satiated", "Normal", "Hungry", "Weak", "Fainting", "Fainted", "Starved")


@dataclass(frozen=True)
class GameState:
    """What a caption needs of one moment of a game: the message and six stats (§2.3)."""

    message: str
    depth: int
    gold: int
    hp: int
    hp_max: int
    level: int  # experience level (blstats[18])
    hunger: int  # index into HUNGER_WORDS

    def stats(self) -> tuple[int, int, int, int, int, int]:
        return (self.depth, self.gold, self.hp, self.hp_max, self.level, self.hunger)


@dataclass(frozen=True)
class Caption:
    """One annotatable observation: a (previous, current) state pair and its text.

    `text` is what the LLM reads; `message` and `depth_change` are what the reward model
    reads (current message only, sign of the depth change; §4.1). Both come from the same
    pair so the LLM and the reward model never disagree about which moment this is.
    """

    text: str
    message: str
    depth_change: int  # +1 deeper, -1 shallower, 0 same level

    def reward_key(self) -> str:
        """Identity of the reward-model input (dedup key for normalisation, §4.5)."""
        return f"{self.message}\x00{self.depth_change}"


# ------------------------------------------------------------------ captions files
# JSON lines, one caption per line, its fields by name: {"text", "message", "depth_change"}.
# `mmotif run` writes the captions it samples to `<run_dir>/captions.jsonl`; `mmotif annotate`
# reads such a file.
class CaptionsFileError(ValueError):
    pass


def append_captions(path: str | Path, captions: Iterable[Caption]) -> None:
    with open(path, "a") as f:
        for c in captions:
            f.write(json.dumps(asdict(c)) + "\n")


def read_captions(path: str | Path) -> list[Caption]:
    names = [f.name for f in fields(Caption)]
    types = {f.name: (int if f.type in (int, "int") else str) for f in fields(Caption)}
    lines = read_text(path, "captions file", "a JSON-lines file", CaptionsFileError).splitlines()
    captions = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions.append(Caption(**{n: types[n](row[n]) for n in names}))
        except (ValueError, KeyError, TypeError) as err:
            raise CaptionsFileError(
                f"{path}:{number}: not a caption ({type(err).__name__}: {err}); expected a JSON "
                f"object with {', '.join(map(repr, names))}") from None
    return captions


# Preference labels (§2.4): which caption of a pair better fits the skill.
LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN = 0, 1, 2, 3


@dataclass(frozen=True)
class CaptionPair:
    """Two captions to be compared for one skill."""

    skill: str
    first: Caption
    second: Caption


@dataclass(frozen=True)
class Preference:
    """One label from an annotator, with its provenance."""

    pair: CaptionPair
    label: int  # LABEL_FIRST | LABEL_SECOND | LABEL_TIE | LABEL_UNKNOWN
    backend: str
    model: str
    prompt_version: str
    created_at: float  # unix time
    # the skill's preference text the annotator was shown (annotators.prompts.preference_digest);
    # "" when not recorded (labels stored before digests were)
    preference_digest: str = ""

    def soft_target(self) -> float:
        """Probability that the second caption is preferred; ties and unknowns are 0.5 (§2.4)."""
        return {LABEL_FIRST: 0.0, LABEL_SECOND: 1.0}.get(self.label, 0.5)


@dataclass(frozen=True)
class RewardModelVersion:
    """A published, immutable set of per-skill reward models (`mmotif.rewards.versions`).

    The weights live in `path` (a directory `<root>/v000007/` with `manifest.json` and one
    weights file per skill); this record is what the reward trainer announces and what
    trajectories and metrics cite. Tuples are in skill-id order.
    """

    version: int
    path: str
    skills: tuple[str, ...]
    n_labels: tuple[int, ...]  # labels each skill's model was trained on (0: constant reward)
    val_accuracy: tuple[float | None, ...]  # held-out accuracy on non-tie pairs, None if unknown
    created_at: float  # unix time
    # (mean target probe - neutral probe) / std per skill, None without probes (rewards.probes)
    probe_margins: tuple[float | None, ...] = ()


# What the reward models read of the observation that followed an action.
REWARD_INPUT_KEYS = ("message", "diffstats", "msg_count")


def encode_reward_input(message: str | bytes | np.ndarray, depth_change: int,
                        out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What a reward model reads of one moment (§4.1): (message uint8 (256,), diffstats
    float32 (5,)). The one encoding of the env's observations and the reward trainer's captions.

    `message`: text (non-ASCII characters become '?', as NLE messages are ASCII), bytes, or
    the env's uint8 message buffer; zero padded / truncated to MESSAGE_LEN. `diffstats` is
    [sign(depth_change), 0, 0, 0, 0]. `out`: rows to write into (e.g. an observation's).
    """
    msg, diff = out if out is not None else (np.zeros(MESSAGE_LEN, np.uint8), np.zeros(DIFFSTATS_LEN, np.float32))
    if isinstance(message, np.ndarray) and message.shape == msg.shape:
        np.copyto(msg, message)
    else:
        raw = message.encode("ascii", errors="replace") if isinstance(message, str) else bytes(message)
        raw = raw[:MESSAGE_LEN]
        msg[:] = 0
        msg[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    diff[:] = 0
    diff[0] = (depth_change > 0) - (depth_change < 0)
    return msg, diff


# Per-step arrays of a trajectory, each (T, B): name -> dtype. The reward-model inputs of the
# observation that followed each step come beside them as next_<key> (REWARD_INPUT_KEYS).
STEP_DTYPES = {"actions": np.int64, "logp": np.float32, "values": np.float32,
               "env_rewards": np.float32, "dones": np.bool_}


@dataclass
class TrajectoryBatch:
    """T steps of B envs from one rollout actor; numpy arrays, time-major.

    obs[t] is what action t was chosen on (its `skill` is the skill that acted);
    obs[T] is only for the bootstrap value. dones[t]: the episode ended after action t,
    so obs[t+1] is the first observation of a new episode. next_* are the reward-model
    inputs of the observation that followed action t, taken before any reset: the
    intrinsic reward of step t is r_{skill_t}(next_message_t, next_diffstats_t) divided by
    next_msg_count_t**beta. (The reference rewarded o_t's own message with o_t's skill;
    rewarding the outcome credits the skill that caused it.)

    A new per-step field is declared here and in STEP_DTYPES; `allocate` and
    `concat_batches` (the learner's) follow the declarations.
    """

    obs: dict[str, np.ndarray]  # (T+1, B, ...) per observation_spec
    actions: np.ndarray  # (T, B) int64
    logp: np.ndarray  # (T, B) float32, behaviour policy
    values: np.ndarray  # (T, B) float32, behaviour critic
    env_rewards: np.ndarray  # (T, B) float32, game score delta
    dones: np.ndarray  # (T, B) bool
    next_message: np.ndarray  # (T, B, 256) uint8
    next_diffstats: np.ndarray  # (T, B, 5) float32
    next_msg_count: np.ndarray  # (T, B) int32
    core_state: np.ndarray  # (B, H) float32, recurrent state entering step 0
    policy_version: int
    actor_id: int

    @classmethod
    def allocate(cls, T: int, obs_like: dict[str, np.ndarray], core_state: np.ndarray,
                 policy_version: int, actor_id: int) -> TrajectoryBatch:
        """Zeroed arrays for T steps of the envs whose batched observation is `obs_like`."""
        B = next(iter(obs_like.values())).shape[0]
        steps = {name: np.zeros((T, B), dtype) for name, dtype in STEP_DTYPES.items()}
        nexts = {f"next_{k}": np.zeros((T, *obs_like[k].shape), obs_like[k].dtype) for k in REWARD_INPUT_KEYS}
        obs = {k: np.zeros((T + 1, *v.shape), v.dtype) for k, v in obs_like.items()}
        return cls(obs=obs, **steps, **nexts, core_state=core_state,
                   policy_version=policy_version, actor_id=actor_id)

    @property
    def env_steps(self) -> int:
        return int(self.actions.size)


def concat_batches(batches: list[TrajectoryBatch]) -> dict[str, Any]:
    """One (T, sum B) batch of every array field (dicts of arrays per key) from several
    rollouts; the env axis is 1, core_state's is 0. Scalars (versions, ids) are left out."""
    def cat(arrays, name):
        return np.concatenate(arrays, axis=0 if name == "core_state" else 1)

    out: dict[str, Any] = {}
    for f in fields(TrajectoryBatch):
        first = getattr(batches[0], f.name)
        if isinstance(first, dict):
            out[f.name] = {k: cat([getattr(b, f.name)[k] for b in batches], f.name) for k in first}
        elif isinstance(first, np.ndarray):
            out[f.name] = cat([getattr(b, f.name) for b in batches], f.name)
    return out


@dataclass(frozen=True)
class PolicyVersion:
    """Published policy weights: a number and a CPU state dict (numpy arrays)."""

    version: int
    weights: dict[str, np.ndarray]
    env_steps: int  # env steps the learner had consumed when it published this version


@dataclass(frozen=True)
class RewardModelUpdate:
    """New per-skill reward models in transit (trainer -> driver -> learner, by object ref;
    no shared disk). `mmotif.rewards.versions.RewardModelSet.to_update` / `from_update`."""

    version: int | None
    manifest: dict[str, Any]  # the version's manifest.json content
    state_dicts: tuple[dict[str, Any] | None, ...]  # CPU tensors per skill; None: constant reward


@dataclass(frozen=True)
class EpisodeSummary:
    """One finished training episode, as the rollout that played it reports it: the driver's
    episode metrics and the competence yardstick (mmotif.skills.competence) read it."""

    episode_steps: int
    score: int
    skill_switches: int
    max_depth: int
    policy_errors: int
    truncated: bool
    skill_steps: dict[str, int]  # env steps each skill acted
    competence: dict[str, dict[str, int]]  # {skill: {event: count}} while that skill acted


@dataclass(frozen=True)
class EnvRebuild:
    """A reset that never reached the move loop, with what the screen and prompt showed;
    `rebuilt`: the game was replaced by a fresh NLE instance (False: gave up)."""

    attempt: int
    rebuilt: bool
    error: str
    screen: tuple[str, ...]
    message: str = ""
    misc: tuple[int, ...] = ()
    program_state: tuple[int, ...] = ()
    env: int = -1  # index in its vector env
    actor: int = -1  # rollout actor id


@dataclass
class RolloutSideLog:
    """What a rollout reports beside each trajectory (to the driver, not the learner)."""

    episodes: list[EpisodeSummary] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)
    rebuilds: list[EnvRebuild] = field(default_factory=list)
