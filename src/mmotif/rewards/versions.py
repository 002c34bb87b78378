"""Immutable, numbered reward-model versions: publish, load, score.

A version is a directory `<root>/v000007/`:

    manifest.json      format, version number, skills in skill-id order and, per skill: kind
                       ("model" or "constant"), weights file + sha256, normalisation stats,
                       threshold, 5%..95% quantiles, validation accuracy, labels used
    skill_00.pt ...    one state_dict per skill that has a trained model

It is written into a temporary directory under `<root>` and renamed into place, so a reader
sees either no version 7 or a complete one. Versions are never modified; "latest" is the
highest number present. A loaded `RewardModelSet` scores a mixed-skill batch on one device.
A skill may be "constant" (raw score 0 with stats that gate everything out): that is how a
run starts before any labels exist, and how a skill with too few labels so far stays silent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmotif.contract import DIFFSTATS_LEN, MESSAGE_LEN, RewardModelUpdate, RewardModelVersion
from mmotif.durable import fsync_dir, write_durably
from mmotif.rewards.model import RewardModel
from mmotif.rewards.stats import RewardStats
from mmotif.rewards.transform import DEFAULT_BETA, DEFAULT_BOUND, DEFAULT_COEF, intrinsic_reward

FORMAT = "mmotif.reward_models/1"
MANIFEST = "manifest.json"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")


class RewardVersionError(RuntimeError):
    """A reward-model version directory is missing, corrupt, or does not fit this run."""


@dataclass(frozen=True)
class SkillReward:
    """One skill's entry in a version: weights (None = constant zero reward) + stats."""

    name: str
    state_dict: Mapping[str, torch.Tensor] | None
    stats: RewardStats
    val_accuracy: float | None = None
    n_labels: int = 0
    train_report: dict | None = field(default=None, compare=False)

    @property
    def is_constant(self) -> bool:
        return self.state_dict is None

    @classmethod
    def constant(cls, name: str) -> "SkillReward":
        return cls(name=name, state_dict=None, stats=RewardStats.constant())


def version_dirname(version: int) -> str:
    return f"v{int(version):06d}"


SCORE_MEMO_ROWS = 65_536  # distinct rows a version remembers (~25 MB of keys); cleared when full


class RewardModelSet:
    """Per-skill reward models + stats of one version, ready to score batches on a device."""

    def __init__(self, entries: Sequence[SkillReward], *, version: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        if not entries:
            raise ValueError("a reward model set needs at least one skill")
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate skill names in reward model set: {names}")
        for e in entries:
            e.stats.validate()
        self.entries: tuple[SkillReward, ...] = tuple(entries)
        self.version = version
        self.device = torch.device(device)
        self._models: list[RewardModel | None] = []
        for e in self.entries:
            if e.state_dict is None:
                self._models.append(None)
                continue
            m = RewardModel()
            try:
                m.load_state_dict(e.state_dict, strict=True)
            except RuntimeError as err:
                raise RewardVersionError(f"skill {e.name!r}: weights do not fit RewardModel: {err}") from None
            self._models.append(m.eval().requires_grad_(False).to(self.device))
        self._memo: dict[bytes, float] = {}  # distinct row -> raw score (see _score_distinct)
        self.mean = torch.tensor([e.stats.mean for e in self.entries], dtype=torch.float32, device=self.device)
        self.std = torch.tensor([e.stats.std for e in self.entries], dtype=torch.float32, device=self.device)
        self.threshold = torch.tensor([e.stats.threshold for e in self.entries], dtype=torch.float32,
                                      device=self.device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def constant(cls, skills: Sequence[str], *, device: str | torch.device = "cpu") -> "RewardModelSet":
        """All-zero rewards for every skill (before any labels exist)."""
        return cls([SkillReward.constant(s) for s in skills], version=None, device=device)

    @property
    def skills(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def num_skills(self) -> int:
        return len(self.entries)

    def to(self, device: str | torch.device) -> "RewardModelSet":
        """A copy on another device (this set is left as it is)."""
        return RewardModelSet(self.entries, version=self.version, device=device)

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def score(self, message: torch.Tensor, diffstats: torch.Tensor, skill_ids: torch.Tensor, *,
              dedup: bool = True) -> torch.Tensor:
        """Raw scores r_phi_k(message, diffstats) with k = skill_ids, float32 of skill_ids' shape.

        message: uint8 (..., 256); diffstats: float (..., 5); skill_ids: integer (...).
        Each skill's model sees only its rows. With `dedup` identical (message, diffstats,
        skill) rows are scored once, and rows already scored by this version are not scored
        again: NetHack messages repeat a lot (most steps have an empty message), so this
        usually cuts the work several-fold.
        """
        lead = skill_ids.shape
        msg = message.reshape(-1, message.shape[-1]).to(self.device)
        diff = diffstats.reshape(-1, diffstats.shape[-1]).to(self.device, torch.float32)
        sid = skill_ids.reshape(-1).to(self.device, torch.long)
        n = sid.shape[0]
        if msg.shape != (n, MESSAGE_LEN) or diff.shape != (n, DIFFSTATS_LEN):
            raise ValueError(f"score: message {tuple(message.shape)}, diffstats {tuple(diffstats.shape)} "
                             f"and skill_ids {tuple(lead)} do not describe the same batch")
        if n == 0 or all(m is None for m in self._models):
            return torch.zeros(n, dtype=torch.float32, device=self.device).reshape(lead)
        if msg.dtype != torch.uint8:
            msg = msg.to(torch.uint8)

        if not dedup:
            return self._score_rows(msg, diff, sid).reshape(lead)
        key = torch.cat([msg.contiguous().view(torch.int64),
                         diff.contiguous().view(torch.int32).to(torch.int64),
                         sid.unsqueeze(1)], dim=1)
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        first = torch.full((uniq.shape[0],), n, dtype=torch.long, device=self.device)
        first.scatter_reduce_(0, inverse, torch.arange(n, device=self.device), reduce="amin")
        return self._score_distinct(uniq, msg[first], diff[first], sid[first])[inverse].reshape(lead)

    def _score_distinct(self, keys: torch.Tensor, msg: torch.Tensor, diff: torch.Tensor,
                        sid: torch.Tensor) -> torch.Tensor:
        """Scores of distinct rows (`keys`: one row of int64 words each). A version's models
        never change, so a row scored in an earlier batch comes from the memo: the learner
        sees the same few hundred (message, level change, skill) rows batch after batch."""
        names = [row.tobytes() for row in keys.cpu().numpy()]
        scores = [self._memo.get(name) for name in names]
        missing = [i for i, score in enumerate(scores) if score is None]
        if missing:
            rows = torch.tensor(missing, dtype=torch.long, device=self.device)
            for i, score in zip(missing, self._score_rows(msg[rows], diff[rows], sid[rows]).tolist()):
                scores[i] = score
            if len(self._memo) + len(missing) > SCORE_MEMO_ROWS:
                self._memo.clear()
            self._memo.update((names[i], scores[i]) for i in missing)
        return torch.tensor(scores, dtype=torch.float32, device=self.device)

    def _score_rows(self, msg: torch.Tensor, diff: torch.Tensor, sid: torch.Tensor) -> torch.Tensor:
        """Each row scored by its skill's model (0 for a constant skill)."""
        out = torch.zeros(sid.shape[0], dtype=torch.float32, device=self.device)
        counts = torch.bincount(sid, minlength=self.num_skills)
        if counts.shape[0] > self.num_skills or bool((sid < 0).any()):
            raise ValueError(f"score: skill ids must be in [0, {self.num_skills}), got "
                             f"min {int(sid.min())}, max {int(sid.max())}")
        order = torch.argsort(sid, stable=True)
        start = 0
        for k, c in enumerate(counts.tolist()):  # one sync for all skills
            if c and self._models[k] is not None:
                rows = order[start:start + c]
                out[rows] = self._models[k](msg[rows], diff[rows]).float()
            start += c
        return out

    def intrinsic_reward(self, message: torch.Tensor, diffstats: torch.Tensor, skill_ids: torch.Tensor,
                         msg_count: torch.Tensor, *, beta: float = DEFAULT_BETA, coef: float = DEFAULT_COEF,
                         bound: float | None = DEFAULT_BOUND) -> torch.Tensor:
        """score() followed by the RL transform (spec §4.6) with this version's stats."""
        raw = self.score(message, diffstats, skill_ids)
        return intrinsic_reward(raw, skill_ids.to(raw.device), self.mean, self.std, self.threshold,
                                msg_count.to(raw.device), beta=beta, coef=coef, bound=bound)

    # ------------------------------------------------------------------ description
    def manifest(self) -> dict:
        skills = []
        for i, e in enumerate(self.entries):
            skills.append(dict(
                name=e.name, kind="constant" if e.is_constant else "model",
                file=None if e.is_constant else f"skill_{i:02d}.pt", sha256=None,
                stats=e.stats.to_dict(), val_accuracy=e.val_accuracy, n_labels=int(e.n_labels),
                train_report=e.train_report,
            ))
        return dict(format=FORMAT, version=self.version,
                    model=dict(cls="RewardModel", msg_len=MESSAGE_LEN, diffstats_dim=DIFFSTATS_LEN),
                    skills=skills)

    def describe(self, path: str = "") -> RewardModelVersion:
        return RewardModelVersion(
            version=-1 if self.version is None else int(self.version), path=path, skills=self.skills,
            n_labels=tuple(int(e.n_labels) for e in self.entries),
            val_accuracy=tuple(e.val_accuracy for e in self.entries), created_at=time.time())

    def to_update(self) -> RewardModelUpdate:
        """The picklable CPU form that crosses processes (no shared filesystem needed)."""
        return RewardModelUpdate(
            version=self.version, manifest=self.manifest(),
            state_dicts=tuple(None if e.state_dict is None else {k: v.detach().cpu() for k, v in e.state_dict.items()}
                              for e in self.entries))

    @classmethod
    def from_update(cls, update: RewardModelUpdate, *, skills: Sequence[str] | None = None,
                    device: str | torch.device = "cpu") -> "RewardModelSet":
        entries = _entries_from_manifest(update.manifest, list(update.state_dicts), where="reward-model update")
        _check_skills([e.name for e in entries], skills, where="reward-model update")
        return cls(entries, version=update.version, device=device)

    def __repr__(self) -> str:
        kinds = ", ".join(f"{e.name}:{'const' if e.is_constant else e.n_labels}" for e in self.entries)
        return f"RewardModelSet(version={self.version}, {kinds}, device={self.device})"


# ---------------------------------------------------------------------- publishing
def list_versions(root: str | os.PathLike) -> list[int]:
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _VERSION_DIR.match(p.name)
        if m and p.is_dir():
            out.append(int(m.group(1)))
    return sorted(out)


def latest_version(root: str | os.PathLike) -> int | None:
    versions = list_versions(root)
    return versions[-1] if versions else None


def publish(root: str | os.PathLike, entries: Sequence[SkillReward] | RewardModelSet, *,
            version: int | None = None, extra: Mapping[str, Any] | None = None) -> RewardModelVersion:
    """Write a new immutable version under `root` and return its record.

    `version=None` takes the next number after the highest present. The version directory is
    assembled under a temporary name and renamed into place (atomic on POSIX filesystems); if
    another publisher took the number first, the next free number is used (unless `version`
    was given explicitly, which then raises).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rset = entries if isinstance(entries, RewardModelSet) else RewardModelSet(entries)
    manifest = rset.manifest()
    manifest["created_at"] = time.time()
    manifest["extra"] = dict(extra or {})

    tmp = root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for e, m in zip(rset.entries, manifest["skills"]):
            if e.is_constant:
                continue
            buf = io.BytesIO()
            torch.save({k: v.detach().cpu().contiguous() for k, v in e.state_dict.items()}, buf)
            data = buf.getvalue()
            m["sha256"] = hashlib.sha256(data).hexdigest()
            write_durably(tmp / m["file"], data)
        number = version if version is not None else (latest_version(root) or 0) + 1
        for _attempt in range(1000):
            manifest["version"] = int(number)
            write_durably(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            fsync_dir(tmp)
            target = root / version_dirname(number)
            if not target.exists():
                try:
                    os.rename(tmp, target)  # fails if a non-empty `target` appeared meanwhile
                    break
                except OSError:
                    if not target.exists():
                        raise
            if version is not None:
                raise RewardVersionError(f"reward-model version {number} already exists under {root}")
            number = max(number, latest_version(root) or 0) + 1
        else:  # pragma: no cover
            raise RewardVersionError(f"could not find a free version number under {root}")
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RewardModelVersion(
        version=int(number), path=str(root / version_dirname(number)), skills=rset.skills,
        n_labels=tuple(int(e.n_labels) for e in rset.entries),
        val_accuracy=tuple(e.val_accuracy for e in rset.entries), created_at=float(manifest["created_at"]))


# ---------------------------------------------------------------------- loading
def _check_skills(found: Sequence[str], expected: Sequence[str] | None, *, where: str) -> None:
    if expected is not None and list(found) != list(expected):
        raise RewardVersionError(f"{where}: reward models are for skills {list(found)} (in this order) "
                                 f"but this run expects {list(expected)}")


def _entries_from_manifest(manifest: Mapping[str, Any], state_dicts: Sequence[Mapping | None],
                           *, where: str) -> list[SkillReward]:
    if manifest.get("format") != FORMAT:
        raise RewardVersionError(f"{where}: unknown format {manifest.get('format')!r} (expected {FORMAT!r})")
    model = manifest.get("model", {})
    if model.get("msg_len") != MESSAGE_LEN or model.get("diffstats_dim") != DIFFSTATS_LEN:
        raise RewardVersionError(f"{where}: model input sizes {model} do not match "
                                 f"msg_len={MESSAGE_LEN}, diffstats_dim={DIFFSTATS_LEN}")
    skills = manifest.get("skills")
    if not isinstance(skills, list) or not skills or len(skills) != len(state_dicts):
        raise RewardVersionError(f"{where}: manifest lists no skills or a wrong number of weight sets")
    entries = []
    for s, sd in zip(skills, state_dicts):
        try:
            stats = RewardStats.from_dict(s["stats"])
        except (KeyError, TypeError, ValueError) as err:
            raise RewardVersionError(f"{where}: skill {s.get('name')!r} has bad stats: {err}") from None
        if (s.get("kind") == "constant") != (sd is None):
            raise RewardVersionError(f"{where}: skill {s.get('name')!r} kind {s.get('kind')!r} "
                                     f"does not match its weights")
        entries.append(SkillReward(name=s["name"], state_dict=sd, stats=stats,
                                   val_accuracy=s.get("val_accuracy"), n_labels=int(s.get("n_labels", 0)),
                                   train_report=s.get("train_report")))
    return entries


def load_dir(path: str | os.PathLike, *, skills: Sequence[str] | None = None,
             device: str | torch.device = "cpu") -> RewardModelSet:
    """Load one version directory, verifying manifest, skill names, files and checksums."""
    path = Path(path)
    where = f"reward-model version {path}"
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise RewardVersionError(f"{where}: missing {MANIFEST} (not a published version, or corrupt)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as err:
        raise RewardVersionError(f"{where}: unreadable {MANIFEST}: {err}") from None
    m = _VERSION_DIR.match(path.name)
    if m and manifest.get("version") != int(m.group(1)):
        raise RewardVersionError(f"{where}: manifest says version {manifest.get('version')}, "
                                 f"directory says {int(m.group(1))}")
    names = [s.get("name") for s in manifest.get("skills", []) if isinstance(s, Mapping)]
    _check_skills(names, skills, where=where)
    state_dicts: list[Mapping | None] = []
    for s in manifest.get("skills", []):
        if s.get("kind") == "constant":
            state_dicts.append(None)
            continue
        fpath = path / str(s.get("file"))
        if not s.get("file") or not fpath.is_file():
            raise RewardVersionError(f"{where}: skill {s.get('name')!r}: weights file {s.get('file')!r} missing")
        data = fpath.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != s.get("sha256"):
            raise RewardVersionError(f"{where}: skill {s.get('name')!r}: {fpath.name} checksum mismatch "
                                     f"(file changed or truncated)")
        try:
            sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means corrupt
            raise RewardVersionError(f"{where}: skill {s.get('name')!r}: cannot read {fpath.name}: {err}") from None
        state_dicts.append(sd)
    entries = _entries_from_manifest(manifest, state_dicts, where=where)
    return RewardModelSet(entries, version=manifest.get("version"), device=device)


def load(root: str | os.PathLike, version: int | str = "latest", *, skills: Sequence[str] | None = None,
         device: str | torch.device = "cpu") -> RewardModelSet:
    """Load version `version` (a number or "latest") from `root`; `skills` checks names/order."""
    root = Path(root)
    if version == "latest":
        number = latest_version(root)
        if number is None:
            raise RewardVersionError(f"no reward-model versions under {root}")
    elif isinstance(version, int) and not isinstance(version, bool):
        number = version
    else:
        raise ValueError(f"version must be an int or 'latest', got {version!r}")
    path = root / version_dirname(number)
    if not path.is_dir():
        raise RewardVersionError(f"reward-model version {number} not found under {root} "
                                 f"(present: {list_versions(root)})")
    return load_dir(path, skills=skills, device=device)
