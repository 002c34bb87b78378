"""A whole run as one validated config: pydantic models, YAML on disk, named presets.

`local` sizes everything for a laptop (2 CPU cores, embedded LLM, minutes); `paper` holds
the reference's settings (spec §3.3, §4.4, §4.6, §7, §8.2); `cluster` is `paper` sized for
a Ray cluster with vLLM annotators. Bad values fail at load time with the field's path.

`load_config` starts from a preset (default `local`; a YAML may name its own with a top-level
`preset:` key), merges the YAML file over it, then `overrides`, then `--set PATH=VALUE` items.
A YAML giving every field (a dump of `mmotif config show`, a run's config.yaml) loads as
itself, whatever the preset.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator,
)

from mmotif.durable import read_text
from mmotif.llm.weights import DEFAULT_MODEL, SMALL_MODEL
from mmotif.skills.specs import PAPER_SKILLS, SkillSpec, validate_skill_list


class ConfigError(ValueError):
    """A config that cannot be used; the message names each bad field and why."""


DEFAULT_PRESET = "local"
TTY_SHAPE = (24, 80)  # NetHack's tty (rows, cols): the largest crop
MAX_POLICY_CALL_BUDGET_S = 10.0
BUILTIN_TRAINING_POLICIES = ("exploration",)  # builtin:<name> (mmotif.skills.build)
GENERATED_TRAINING_POLICY = "generate"  # written by the coder at the start of `mmotif run`
POLICY_CLASS = "NetHackPlayer"  # mmotif.skills.code_policy.CLASS_NAME


def check_policy_file(source: str) -> None:
    """A cheap look at a code-policy file, nothing executed: it exists, is UTF-8 Python text
    and defines class NetHackPlayer."""
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{source!r} is neither builtin:{BUILTIN_TRAINING_POLICIES[0]}, "
                         f"{GENERATED_TRAINING_POLICY} nor an existing file")
    if path.is_dir():
        raise ValueError(f"{source!r} is a directory, not a policy file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{source!r} is not UTF-8 text") from None
    except OSError as err:
        raise ValueError(f"{source!r} cannot be read ({err.strerror or err})") from None
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as err:
        raise ValueError(f"{source!r} is not valid Python ({err.msg}, line {err.lineno})") from None
    if not any(isinstance(n, ast.ClassDef) and n.name == POLICY_CLASS for n in ast.walk(tree)):
        raise ValueError(f"{source!r} does not define class {POLICY_CLASS} (a policy over skills, "
                         "e.g. from `mmotif plan`)")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EnvConfig(_Section):
    crop: tuple[int, int] = Field((12, 12), description="tty crop (rows, cols) around the hero")
    max_episode_steps: int = Field(10_000, gt=0)
    msg_max_keys: int = Field(20, gt=0, description="message-count cache size (§4.6)")
    caption_gap: int = Field(100, gt=0, description="env steps between a caption's two states")
    caption_rate: float = Field(0.01, ge=0.0, le=1.0, description="captions sampled per env step")
    policy_call_budget_s: float = Field(
        0.05, gt=0.0, le=MAX_POLICY_CALL_BUDGET_S, allow_inf_nan=False,
        description="time budget of one code-policy call")
    training_policy: str = Field(
        "builtin:exploration", description="code policy over skills: builtin:exploration (hand-written), "
        "generate (`mmotif run` has the coder write the skills' initiation/termination functions and the "
        "policy over skills first, into <run_dir>/skills_code/; a part that fails its checks falls back to "
        "its built-in, with a warning) or a file defining class NetHackPlayer, e.g. from `mmotif "
        "skills-code` (checked at load, not run)")
    training_policy_code: str | None = Field(
        None, description="the policy's source itself, set by `mmotif run` from training_policy (a "
        "file's text, the generated code), so actors on other nodes need no file; given, it wins")

    @field_validator("crop")
    @classmethod
    def _crop_fits_the_tty(cls, crop: tuple[int, int]) -> tuple[int, int]:
        rows, cols = crop
        if not (1 <= rows <= TTY_SHAPE[0] and 1 <= cols <= TTY_SHAPE[1]):
            raise ValueError(f"crop (rows, cols) must be at least (1, 1) and at most the tty's "
                             f"{TTY_SHAPE}, got {tuple(crop)}")
        return crop

    @field_validator("training_policy")
    @classmethod
    def _policy_is_usable(cls, source: str, info: ValidationInfo) -> str:
        if source == GENERATED_TRAINING_POLICY:
            return source
        if source.startswith("builtin:"):
            name = source.removeprefix("builtin:")
            if name not in BUILTIN_TRAINING_POLICIES:
                known = ", ".join(f"builtin:{n}" for n in BUILTIN_TRAINING_POLICIES)
                raise ValueError(f"unknown built-in policy {source!r}; known: {known}")
            return source
        # the file is looked at where a user loads the config; actors on other nodes that
        # rebuild it (no shared disk) must not need the file
        if (info.context or {}).get("check_files"):
            check_policy_file(source)
        return source


class LLMConfig(_Section):
    """One LLM: the fields `mmotif.llm.backend_from_config` builds a backend from. The
    defaults are the coder's; `annotator:` changes some."""

    backend: Literal["embedded", "vllm", "openai"] = "embedded"
    model: str = Field(DEFAULT_MODEL, description="embedded: a known model name or a model folder; "
                       "openai/vllm: the served model")
    base_url: str | None = Field(None, description="OpenAI-compatible server (backend: openai)")
    temperature: float = Field(0.2, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, description="-1 or 0: off")
    max_tokens: int = Field(4096, gt=0)
    request_timeout_s: float = Field(
        300.0, gt=0.0, allow_inf_nan=False, description="openai: the whole deadline of one request "
        "(long chain-of-thought answers take minutes)")
    max_concurrency: int | None = Field(
        None, ge=1, description="openai: requests in flight at once; None: the section's batch_size "
        "(the annotator's), else 4")


class CoderConfig(LLMConfig):
    """The coder: the LLM that writes code policies (`mmotif plan`, `mmotif skills-code`,
    `env.training_policy: generate`; mmotif.codegen)."""

    max_rewrites: int = Field(
        3, ge=0, description="refinement rounds after the first generation (the method's 3); a small "
        "CPU model takes minutes per round")


class AnnotatorConfig(LLMConfig):
    backend: Literal["embedded", "vllm", "openai", "rules"] = Field(
        "embedded", description="rules: the rule-based control annotator (mmotif.annotators.rules), "
        "never the default")
    temperature: float = Field(0.1, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=-1, description="-1 or 0: off")
    mode: Literal["pointwise", "pairwise"] = "pointwise"
    num_annotators: int | Literal["auto"] = Field(
        1, description="annotator actors; auto: as many as the GPUs hold (vllm), else 1")
    batch_size: int = Field(8, gt=0, description="prompts per LLM forward batch")
    pairs_per_call: int = Field(
        64, gt=0, description="caption pairs per annotator call (pointwise: pairs of already "
                              "scored captions cost no LLM call)")
    seed_moments: bool = Field(
        True, description="add hand-written moments of the skills' target events (descents, altars, "
        "shops, ...; mmotif.annotators.examples.seed_captions) to the pair pool at the start, for the "
        "LLM to label: the agent's own first games almost never show them")
    pair_stratum_alpha: float = Field(
        0.3, ge=0.0, le=1.0, description="pair sampling: a pair's first caption comes from an event stratum "
        "drawn with weight (stratum size)**alpha: 1 is uniform over captions, 0 uniform over strata "
        "(rare moments: level changes, shop, altar, kills, deaths)")
    captions_per_reward_input: int = Field(
        16, ge=1, description="pair pool: at most this many captions of one reward-model input (current "
        "message and level change); more of the same input teach the reward model nothing new, and "
        "without a cap one input (a death, an empty step) fills most pairs")
    few_shot: bool = Field(
        True, description="pointwise: ask each skill's solved examples (SkillSpec.examples) before every "
        "question; on the 0.5B model this lifts ranking of real captions from chance (AUC 0.48) to 0.70")
    tie_rule: Literal["rank", "margin"] = Field(
        "rank", description="pointwise: a pair ties when its two captions' score ranks among the skill's "
        "scored captions differ by at most tie_rank_gap (rank), or their scores by tie_margin (margin)")
    tie_rank_gap: float = Field(
        0.1, ge=0.0, lt=1.0, description="rank rule: two random captions tie with probability 2g-g^2 (0.19)")
    tie_margin: float = Field(0.5, ge=0.0, description="margin rule: score gap (log-odds) below which a pair ties")
    rules: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="backend rules: per-skill {event: weight} replacing the defaults "
        "(events: mmotif.nethack.events.EVENTS)")
    retry_max_tokens: int = Field(
        64, gt=0, description="pairwise: token cap of the retry turn that follows an unparseable answer "
        "(it asks for the verdict alone)")
    tensor_parallel_size: int = Field(1, ge=1)
    threads: int = Field(1, ge=1, description="CPU threads of the embedded backend")


class RewardConfig(_Section):
    """Reward-model training (spec §4.3, §4.4; `mmotif.rewards.training` reads this section
    directly), the trainer's retraining policy and the RL-time reward transform (§4.6)."""

    lr: float = Field(1e-5, gt=0.0)
    batch_size: int = Field(1000, gt=0, description="pairs per Adam step")
    epochs: int = Field(20, gt=0)
    min_steps: int = Field(300, ge=0, description="small stores get more epochs, up to this many Adam steps")
    max_steps: int | None = Field(
        None, gt=0, description="cap for very large stores, in whole epochs (None: no cap)")
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    shuffle: bool = Field(True, description="shuffle the pairs each epoch (the paper walks them in file order)")
    include_unknown: bool = Field(True, description="an unknown label (3) trains as a 0.5/0.5 tie (§2.4)")
    max_grad_norm: float | None = Field(None, gt=0.0)
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="cpu, cuda, cuda:N or auto")
    eval_batch_size: int = Field(4096, gt=0, description="inputs per forward when scoring for metrics")
    min_labels_per_skill: int = Field(
        20, ge=1, description="below this many labels a skill keeps its previous (or constant) model")
    accuracy_tolerance: float = Field(
        0.02, ge=0.0, description="a retrained skill may rank the held-out labels this much worse than the model it replaces (both measured on the same labels) and still be published")
    retrain_every_labels: int = Field(1000, gt=0, description="retrain when this many new labels arrived")
    beta: float = Field(3.0, ge=0.0, description="message-count exponent (§4.6)")
    coef: float = Field(0.1, ge=0.0, description="intrinsic reward coefficient")
    extrinsic_coef: float = Field(0.0, ge=0.0)
    bound: float = Field(10.0, gt=0.0, description="normalised rewards are clamped to ±bound")
    gate_at_neutral: bool = Field(
        True, description="raise each skill's gate tau to at least the normalised score of its neutral step "
        "(no message, same level), so a step where nothing happened is never paid (mmotif's deviation from "
        "the paper's plain quantile gate, whose nets put the neutral step in the lower mode; a flat or young "
        "model puts it in the top 15% and pays noise). false: the paper's gate")
    models: Path | None = Field(
        None, description="a published reward-model version folder to start from (e.g. from "
        "`mmotif train-rewards`); None starts from constant zero rewards. A given skill model is the "
        "starting point, never replaced by one trained on fewer labels: the run retrains that skill only "
        "once it holds more labels for it (after reward.label_provenance) than the given model was trained "
        "on (its manifest's n_labels), and the retrain starts from the given weights. The run's learner "
        "records them as reward-model version 0; --resume loads them from this path again")
    label_provenance: Literal["current", "any"] = Field(
        "current", description="current: reward models train only on labels made by this run's annotator "
        "model, prompt version and skill preference texts (others are counted and logged, "
        "mmotif.rewards.provenance); any: on every label in the store")


class NetworkConfig(_Section):
    """`size` picks a preset of `mmotif.models.network` (paper: GRU 512, ~2.9M
    parameters; local: GRU 128, ~0.28M); the other fields override single widths."""

    size: Literal["paper", "local"] = "paper"
    core_hidden: int | None = Field(None, gt=0)
    crop_hidden: int | None = Field(None, gt=0)
    blstats_hidden: int | None = Field(None, gt=0)
    message_dim: int | None = Field(None, gt=0)
    shortcuts: bool = Field(
        True, description="the network's exact shortcuts: each distinct message and crop of a batch encoded "
        "once, encodings cached while acting (same numbers within float tolerance); false: the reference "
        "computation, for benchmarks")

    def overrides(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump(exclude={"size", "shortcuts"}).items() if v is not None}


class LearnerConfig(_Section):
    """The learner and its APPO/V-trace hyperparameters; defaults are the paper's (spec §8.2).
    `mmotif.learners.appo` reads this section directly."""

    total_env_steps: int = Field(4_000_000_000, gt=0)
    rollout: int = Field(32, gt=0, description="env steps per rollout, also the BPTT length")
    batch_size: int = Field(4096, gt=0, description="samples per SGD step")
    lr: float = Field(1e-4, gt=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-6, gt=0.0)
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    entropy_coef: float = Field(0.003, ge=0.0)
    value_coef: float = Field(0.5, ge=0.0)
    clip_ratio: float = Field(0.1, gt=0.0, description="ratio clipped to [1/(1+clip), 1+clip]")
    value_clip: float = Field(1.0, gt=0.0, description="relative to the behaviour (old) value")
    max_grad_norm: float = Field(4.0, gt=0.0)
    rho_bar: float = Field(1.0, gt=0.0, description="V-trace importance-weight clip")
    c_bar: float = Field(1.0, gt=0.0, description="V-trace trace-cutting clip")
    ratio_min: float = Field(0.05, gt=0.0, description="ratios clamped to [ratio_min, ratio_max] before any use")
    ratio_max: float = Field(20.0, gt=0.0)
    max_policy_lag: int = Field(
        10_000, gt=0, description="rollouts acted by a policy more versions old are dropped (reference: "
        "10,000, effectively off)")
    normalize_advantages: bool = Field(True, description="advantages normalised per batch (reference: on)")
    adv_std_floor: float = Field(
        1e-3, gt=0.0, description="advantages are divided by max(batch std, this); 1e-3 is plain normalisation. "
        "At the reward's scale (e.g. 0.1) a batch without reward keeps near-zero advantages instead of "
        "unit-size value noise, which helps sparse rewards (bench/README.md, learning_signal)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16_autocast: bool = Field(
        False, description="a CUDA learner runs the network's forward under bfloat16 autocast (loss, V-trace, "
        "gradients and Adam stay float32); ignored on CPU. Untested on a GPU so far")
    network: NetworkConfig = NetworkConfig()

    @model_validator(mode="after")
    def _batch_holds_whole_rollouts(self):
        if self.batch_size % self.rollout:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of rollout ({self.rollout})"
            )
        if self.ratio_min >= self.ratio_max:
            raise ValueError(f"ratio_min ({self.ratio_min}) must be below ratio_max ({self.ratio_max})")
        return self


class ActorsConfig(_Section):
    num_actors: int | Literal["auto"] = Field("auto", description="rollout actors (>= 1), or auto: one per free CPU")
    envs_per_actor: int = Field(20, gt=0)
    threads_per_actor: int = Field(1, ge=1)
    max_actors: int | None = Field(
        None, ge=1, description="with num_actors: auto, ask the Ray autoscaler for CPUs for this many rollout "
        "actors (plus the learner and annotators) and grow onto nodes as they join; None: use what is there")
    rollout_timeout_s: float = Field(
        120.0, gt=0, description="a rollout taking longer is a stalled env: its actor is killed and restarted")
    rollouts_in_flight: int = Field(
        2, ge=1, le=4, description="collect calls queued per rollout actor: with 2, an actor starts its next "
        "rollout while the driver hands the last one on (double buffering; one more policy version of lag)")
    max_replacements: int = Field(
        8, ge=0, description="rollout actors the driver may replace by fresh ones over a run (a rollout "
        "that raised; an actor Ray could not restart); once spent, the run goes on with the others")

    @field_validator("num_actors")
    @classmethod
    def _at_least_one_actor(cls, n: int | str) -> int | str:
        if isinstance(n, int) and n < 1:
            raise ValueError("must be >= 1 or 'auto': without rollout actors a run only idles")
        return n


class EvalConfig(_Section):
    """Zero-shot evaluation at the end of `mmotif run`: the trained skills under each task's
    policy over skills (the run's generated <run_dir>/plans/<task>.py when present, else the
    task's reference policy), in parallel Ray actors, with a replay of the first episode.
    `mmotif eval` on the checkpoint runs the paper's protocol (about 1,000 episodes, 9 seeds)."""

    tasks: list[str] = Field(default_factory=list, description="task names (see mmotif eval --help)")
    episodes: int = Field(8, ge=1, description="episodes per task, split over the seeds")
    seeds: int = Field(1, ge=1, description="action-sampling seeds (run seed, run seed + 1, ...)")
    max_steps: int = Field(10_000, gt=0, description="env steps per evaluation episode")
    replays: int = Field(1, ge=0, description="episodes recorded (the first rendered as GIF + HTML)")

    @field_validator("tasks")
    @classmethod
    def _tasks_exist(cls, tasks: list[str]) -> list[str]:
        if tasks:
            from mmotif.tasks import TASKS, get_task  # imports nle: only when tasks are named

            unknown = []
            for name in tasks:
                try:
                    get_task(name)
                except KeyError:
                    unknown.append(name)
            if unknown:
                raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}; known: {', '.join(TASKS)}")
        return tasks


class FaultsConfig(_Section):
    """Injected faults, for soak and recovery tests only (all off by default)."""

    crash_rollout_at_steps: list[int] = Field(
        default_factory=list, description="rollout actor 0 dies (SIGSEGV) after this many of its env steps")
    stall_rollout_at_steps: list[int] = Field(
        default_factory=list, description="the last rollout actor hangs (sleeps) after this many of its env steps")
    stall_seconds: float = Field(3600.0, gt=0)
    nan_reward_at_update: int | None = Field(
        None, ge=0, description="the learner's batch at this update gets a NaN reward")
    reset_fails_at_attempt: int = Field(
        0, ge=0, description="rollout actor 0's first env fails this reset attempt (1 = its first; 0: off): "
        "its game never reaches the move loop")
    reset_fails_times: int = Field(
        1, ge=1, description="attempts in a row that fail from reset_fails_at_attempt on (more than the "
        "env's rebuilds make its rollout raise)")


ActorRole = Literal["learner", "rollout", "annotator", "reward_trainer"]


class ClusterConfig(_Section):
    address: str | None = Field(None, description="Ray address to join; None starts Ray locally")
    dashboard_host: str = "127.0.0.1"
    num_cpus: int | None = Field(None, gt=0)
    num_gpus: int | None = Field(None, ge=0)
    actor_resources: dict[ActorRole, dict[str, float]] = Field(
        default_factory=dict, description="custom Ray resources each actor of a role asks for, on top of its "
        "CPUs/GPUs, e.g. {reward_trainer: {spot: 0.01}} with `ray start --resources '{\"spot\": 1}'` on the "
        "nodes that may host it: pins roles to node types (the learner to the head, rollouts to spot workers)")

    @field_validator("actor_resources")
    @classmethod
    def _positive_amounts(cls, roles: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for role, wants in roles.items():
            for name, amount in wants.items():
                if name in ("CPU", "GPU", "memory", "object_store_memory"):
                    raise ValueError(f"{role}: {name} is set by mmotif's sizing; name a custom resource")
                if amount <= 0:
                    raise ValueError(f"{role}: {name} must be > 0 (got {amount:g})")
        return roles


class PathsConfig(_Section):
    run_dir: Path = Path("runs/latest")
    storage: str | None = Field(
        None, description="durable copy of the run folder: a folder or an fsspec URI (s3://, gs://, "
                          "file://); mirrored after each checkpoint, fetched by --resume on a head "
                          "without the run (mmotif.storage)")

    @field_validator("storage")
    @classmethod
    def _storage_opens_here(cls, uri: str | None) -> str | None:
        from mmotif.storage import check_storage_uri  # fsspec: imported only when a copy is asked for

        return None if uri is None else check_storage_uri(uri)
    model_cache: Path | None = Field(
        None, description="cache of the embedded LLM (converted models under models/); "
                          "None: $MMOTIF_CACHE or ~/.cache/mmotif")


class MetricsConfig(_Section):
    wandb: bool = Field(False, description="also log every metric to Weights & Biases (the `wandb` extra; "
                                           "WANDB_MODE=offline keeps the run on disk)")
    wandb_project: str = "mmotif"
    wandb_entity: str | None = None


class RunConfig(_Section):
    """Everything one `mmotif run` needs."""

    name: str = "mmotif"
    seed: int = Field(0, ge=0, lt=2**31, description="seeds numpy and the games (0 <= seed < 2**31)")
    time_limit_s: float | None = Field(None, gt=0, description="stop after this many seconds")
    checkpoint_every_steps: int = Field(50_000_000, gt=0)
    env: EnvConfig = EnvConfig()
    skills: list[SkillSpec] = Field(default_factory=lambda: list(PAPER_SKILLS))
    annotator: AnnotatorConfig = AnnotatorConfig()
    coder: CoderConfig = CoderConfig()
    reward: RewardConfig = RewardConfig()
    learner: LearnerConfig = LearnerConfig()
    actors: ActorsConfig = ActorsConfig()
    cluster: ClusterConfig = ClusterConfig()
    paths: PathsConfig = PathsConfig()
    evaluation: EvalConfig = EvalConfig()
    faults: FaultsConfig = FaultsConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("skills")
    @classmethod
    def _skills_are_usable(cls, skills: list[SkillSpec]) -> list[SkillSpec]:
        return validate_skill_list(skills)

    @model_validator(mode="after")
    def _rules_cover_the_skills(self):
        if self.annotator.backend == "rules" or self.annotator.rules:
            from mmotif.annotators.rules import resolve_rules

            resolve_rules([s.name for s in self.skills], self.annotator.rules)
        if self.annotator.backend == "rules" and self.annotator.mode != "pointwise":
            raise ValueError("annotator.backend 'rules' scores captions: annotator.mode must be 'pointwise'")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# The reference's annotation at scale: Llama 3.1 70B on vLLM (tensor parallel 4), pairwise
# chain-of-thought prompts; with the field defaults (the paper's GRU-512 network, batch 4,096,
# 4e9 steps) and a CUDA learner this is the paper's method on one GPU machine.
_REFERENCE_METHOD: dict[str, Any] = {
    "annotator": {"backend": "vllm", "model": "meta-llama/Llama-3.1-70B-Instruct", "mode": "pairwise",
                  "batch_size": 2000, "pairs_per_call": 2000, "tensor_parallel_size": 4},
    "learner": {"device": "cuda"},
}
PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "paper": {**_REFERENCE_METHOD, "name": "paper", "paths": {"run_dir": "runs/paper"}},
    "local": {
        "name": "local",
        "time_limit_s": 600,
        "checkpoint_every_steps": 200_000,
        "env": {"max_episode_steps": 2000, "caption_rate": 0.02},
        "annotator": {"model": SMALL_MODEL, "batch_size": 4, "threads": 1},
        "reward": {"batch_size": 64, "epochs": 3, "min_steps": 60, "lr": 3e-4, "retrain_every_labels": 200},
        # lr 1e-3 and an advantage-std floor of 0.1 (reference: 1e-4, plain normalisation): at
        # the local budget (~2M steps) they keep reward-free batches from turning value noise
        # into unit-size advantages. Rules labels, 2 seeds x 2M steps: discoverer new cells per
        # 1,000 steps 256 / 213 vs random 183 / 168 (before: far below random), kills 33 / 28 vs
        # 5 / 4 (bench/README.md, skill_learning).
        "learner": {
            "total_env_steps": 2_000_000, "rollout": 32, "batch_size": 512, "lr": 1e-3, "adv_std_floor": 0.1,
            "device": "cpu",
            "network": {"size": "local"},
        },
        "actors": {"num_actors": 1, "envs_per_actor": 16},
        "evaluation": {"tasks": ["gnomish"], "episodes": 4, "max_steps": 1000},
        "paths": {"run_dir": "runs/local"},
    },
    "cluster": {
        **_REFERENCE_METHOD,
        "name": "cluster",
        "annotator": {**_REFERENCE_METHOD["annotator"], "num_annotators": "auto"},
        "actors": {"num_actors": "auto", "envs_per_actor": 20},
        "cluster": {"address": "auto"},
        "paths": {"run_dir": "runs/cluster"},
    },
}
PRESETS = tuple(PRESET_OVERRIDES)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _origin(loc: tuple[str, ...], origins: dict[tuple[str, ...], str]) -> str | None:
    """The `--set` item behind an error at `loc` (one path is a prefix of the other)."""
    for keys, label in reversed(origins.items()):
        n = min(len(keys), len(loc))
        if n and loc[:n] == keys[:n]:
            return label
    return None


def _describe(err: ValidationError, source: str,
              origins: dict[tuple[str, ...], str] | None = None) -> str:
    lines, blamed = [], []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        path = ".".join(loc) or "<root>"
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        lines.append(f"  {path}: {e['msg']}{shown}")
        blamed.append(_origin(loc, origins or {}))
    if blamed and all(blamed):  # every error comes from a --set item: name just those
        source = ", ".join(dict.fromkeys(blamed))
    return "\n".join([f"invalid config ({source}):", *lines])


def build_config(data: dict, source: str = "<dict>",
                 origins: dict[tuple[str, ...], str] | None = None, check_files: bool = False) -> RunConfig:
    """A validated config. `check_files`: also look at files the config names (the
    training policy), as a user's own load does; a config rebuilt inside an actor does not."""
    try:
        return RunConfig.model_validate(data, context={"check_files": check_files})
    except ValidationError as err:
        raise ConfigError(_describe(err, source, origins)) from None


def with_overrides(cfg: RunConfig, overrides: dict, source: str = "overrides") -> RunConfig:
    """A new validated config: `cfg` with `overrides` merged in (nested dicts merge)."""
    return build_config(_merge(cfg.model_dump(mode="json"), overrides), source)


def _check_preset(name: str) -> str:
    if name not in PRESET_OVERRIDES:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return name


def preset(name: str) -> RunConfig:
    return build_config(PRESET_OVERRIDES[_check_preset(name)], f"preset {name}")


def read_config_file(path: str | Path) -> dict:
    """The top-level mapping of a YAML config file; every way of failing is one ConfigError line."""
    path = Path(path)
    text = read_text(path, "config file", "a YAML file", ConfigError, encoding="utf-8-sig")
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(loaded).__name__}")
    return loaded


def _field_annotation(keys: Sequence[str]) -> Any:
    """The type annotation of the RunConfig field at `keys`, or None (no such model field)."""
    model: Any = RunConfig
    annotation = None
    for key in keys:
        fields = getattr(model, "model_fields", None)
        if not isinstance(model, type) or fields is None or key not in fields:
            return None
        annotation = fields[key].annotation
        model = annotation
    return annotation


def _is_textual(annotation: Any) -> bool:
    textual = (str, Path)
    return annotation in textual or (
        bool(get_args(annotation)) and all(a in textual or a is type(None) for a in get_args(annotation)))


def parse_set(item: str) -> tuple[tuple[str, ...], Any]:
    """`a.b=value` as (("a", "b"), value): the value is read as YAML (`1e-3`, `auto`,
    `[gnomish]`, `null`), except that a text field (str, path) keeps its text as written."""
    path, sep, raw = item.partition("=")
    keys = tuple(k.strip() for k in path.split("."))
    if not sep or not all(keys):
        raise ConfigError(f"--set {item!r}: expected PATH=VALUE with a dotted field path, "
                          "e.g. --set learner.lr=1e-3")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {item}: the value is not valid YAML ({problem})") from None
    if isinstance(value, (bool, int, float)) and _is_textual(_field_annotation(keys)):
        value = raw.strip()
    return keys, value


def _nest(keys: Sequence[str], value: Any) -> dict:
    for key in reversed(keys):
        value = {key: value}
    return value


def _is_complete(data: Any, model: type[BaseModel]) -> bool:
    """Does `data` give every field of `model`, and of its sections (a dumped config)?"""
    if not isinstance(data, dict):
        return False
    for key, info in model.model_fields.items():
        if key not in data:
            return False
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel) and not _is_complete(data[key], section):
            return False
    return True


def resolve_config(path: str | Path | None = None, preset_name: str | None = None,
                   overrides: dict | None = None, sets: Sequence[str] = ()) -> tuple[RunConfig, str]:
    """(config, name of its preset): a preset, the YAML file, `overrides`, then `sets`
    (`PATH=VALUE` items, see `parse_set`), merged in that order.

    The preset is `preset_name`, else the file's top-level `preset:` key, else `local`. A
    file that gives every field (a dumped config, no `preset:` key) is not merged over the
    preset: it loads exactly as itself."""
    name = _check_preset(preset_name) if preset_name is not None else None
    loaded, full = None, False
    if path is not None:
        loaded = read_config_file(path)
        if "preset" in loaded:
            named = loaded.pop("preset")
            if not isinstance(named, str) or named not in PRESET_OVERRIDES:
                raise ConfigError(f"invalid config ({path}):\n  preset: unknown preset {named!r}; "
                                  f"choose one of: {', '.join(PRESETS)}")
            name = name or named
        else:
            full = _is_complete(loaded, RunConfig)
    name = name or DEFAULT_PRESET
    data = {} if full else copy.deepcopy(PRESET_OVERRIDES[name])
    source = f"preset {name}"
    if loaded is not None:
        data = _merge(data, loaded)
        source = str(path)
    if overrides:
        data = _merge(data, overrides)
    origins: dict[tuple[str, ...], str] = {}
    for item in sets:
        keys, value = parse_set(item)
        data = _merge(data, _nest(keys, value))
        origins.pop(keys, None)
        origins[keys] = f"--set {item}"
    if sets:
        source = ", ".join([source, *(f"--set {item}" for item in sets)])
    return build_config(data, source, origins, check_files=True), name


def load_config(path: str | Path | None = None, preset_name: str | None = None,
                overrides: dict | None = None, sets: Sequence[str] = ()) -> RunConfig:
    """A preset (default `local`, or the file's `preset:`), then the YAML file, then
    `overrides`, then `sets`, merged in that order (see `resolve_config`)."""
    return resolve_config(path, preset_name, overrides, sets)[0]


def config_diff(cfg: RunConfig, base: RunConfig) -> dict:
    """The fields of `cfg` that differ from `base`, nested as in the YAML (lists whole).
    Merged over `base` it gives `cfg` again (presets hold no free-form dicts to remove keys from)."""

    def diff(a: dict, b: dict) -> dict:
        out = {}
        for key, value in a.items():
            if isinstance(value, dict) and isinstance(b.get(key), dict):
                if sub := diff(value, b[key]):
                    out[key] = sub
            elif key not in b or b[key] != value:
                out[key] = value
        return out

    return diff(cfg.model_dump(mode="json"), base.model_dump(mode="json"))
