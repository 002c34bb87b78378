"""Atomic checkpoints of a run.

    <run_dir>/checkpoints/step_000000051200/
        learner.pt      weights, optimiser, counters, RNG states (torch.save)
        driver.json     driver counters, store cursor, reward-model version, RNG state
        config.yaml     the run's config
    <run_dir>/checkpoints/LATEST   name of the newest complete checkpoint

A checkpoint is assembled in a temporary folder, fsynced and renamed into place; LATEST is
replaced atomically afterwards. A process killed at any point leaves either the previous
checkpoint or the new one, never a half-written one that LATEST points to.

A checkpoint folder is a file a user opens (`mmotif eval --checkpoint DIR`, `mmotif run
--resume`), so nothing in it may run code: learner.pt holds only tensors and plain Python
values and is read with `torch.load(weights_only=True)` (`load_learner_file`); a pickle that
asks for anything else is refused with a `CheckpointError`, never unpickled. LATEST may only
name a `step_<digits>[-<hex>]` folder directly under `checkpoints/`; without a usable LATEST
the newest complete checkpoint (learner.pt + driver.json + config.yaml) is used, with a warning.

`--resume` refuses (it does not rebuild) a run whose preferences.sqlite lost labels the
checkpoint counted (deleted, replaced, rows removed): driver.json's `store_cursor` is the
store's last row id at checkpoint time, and row ids only grow.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import uuid
import warnings
from pathlib import Path

import torch
import yaml

from mmotif.config import RunConfig, build_config
from mmotif.durable import fsync_dir, write_durably

KEEP = 3
CHECKPOINT_NAME = re.compile(r"step_[0-9]+(?:-[0-9a-f]+)?")
CHECKPOINT_FILES = ("learner.pt", "driver.json", "config.yaml")
STORE_NAME = "preferences.sqlite"  # the run's preference store, beside checkpoints/

log = logging.getLogger("mmotif")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(run_dir: Path, cfg: RunConfig, learner_state: dict, driver_state: dict) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # a writer that died mid-write (one driver per run)
        shutil.rmtree(stale, ignore_errors=True)
    _check_plain(learner_state, "learner_state")  # a checkpoint that could not be read back is no checkpoint
    name = f"step_{int(learner_state['env_steps']):012d}"
    if (root / name).exists():  # same step again (Ctrl-C right after a periodic one): never
        name += f"-{uuid.uuid4().hex[:6]}"  # delete the checkpoint LATEST points to
    tmp = root / f".tmp-{uuid.uuid4().hex[:10]}"
    tmp.mkdir()
    try:
        with open(tmp / "learner.pt", "wb") as f:
            torch.save(learner_state, f)
            f.flush()
            os.fsync(f.fileno())
        write_durably(tmp / "driver.json", json.dumps(driver_state, indent=1).encode())
        write_durably(tmp / "config.yaml", cfg.to_yaml().encode())
        fsync_dir(tmp)
        target = root / name
        os.rename(tmp, target)
        write_durably(root / ".LATEST.tmp", name.encode())
        os.replace(root / ".LATEST.tmp", root / "LATEST")
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep=KEEP, newest=name)
    return target


def _prune(root: Path, keep: int, newest: str) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)


def _check_plain(obj, where: str) -> None:
    """Refuse (TypeError) anything a weights-only load cannot read back: only tensors, dicts,
    lists, tuples, str, int, float, bool and None go into learner.pt."""
    if obj is None or isinstance(obj, (torch.Tensor, str, bytes, bool, int, float)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} ({type(k).__name__}) cannot go into a checkpoint")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds only "
                    f"tensors and plain Python values (convert it, e.g. an ndarray to a tensor)")


def _legacy_safe_globals() -> list:
    """numpy's ndarray reconstruction (data only, no code): learner.pt files written before
    the numpy RNG state became a tensor hold one uint32 ndarray. Nothing else is allowed."""
    import numpy as np

    try:
        reconstruct = np._core.multiarray._reconstruct
    except AttributeError:  # numpy 1.x
        reconstruct = np.core.multiarray._reconstruct
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]


def load_learner_file(path: Path):
    """The contents of a learner.pt, read with `weights_only=True`: a file whose pickle asks for
    any code or object beyond tensors and plain values is refused (CheckpointError), not run."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a foreign pickle: refused below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        wanted = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        if wanted:
            raise CheckpointError(f"{path} is not a mmotif checkpoint: its pickle asks for {wanted.group(1)} "
                                  f"(code, not data), which mmotif refuses to unpickle") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
        detail = f": {detail.group(1)[:200]}" if detail else ""
        raise CheckpointError(f"{path} is not a mmotif checkpoint (not a weights-only torch file, unreadable "
                              f"or corrupt{detail}); refused to unpickle it") from None
    except Exception as err:  # noqa: BLE001 - a truncated zip, a missing file, ...
        raise CheckpointError(f"{path} is unreadable or corrupt ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


def is_complete(folder: Path) -> bool:
    return all((Path(folder) / f).is_file() for f in CHECKPOINT_FILES)


def _checkpoint_folders(root: Path) -> list[Path]:
    """Checkpoint folders directly under `root` (real folders, no links), oldest first."""
    found = []
    for p in root.glob("step_*"):
        if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            step = int(p.name[5:].split("-")[0])
            try:
                mtime = p.stat().st_mtime_ns
            except OSError:
                continue
            found.append(((step, "-" in p.name, mtime), p))
    return [p for _, p in sorted(found)]


def newest_complete_checkpoint(run_dir: Path) -> Path | None:
    complete = [p for p in _checkpoint_folders(Path(run_dir) / "checkpoints") if is_complete(p)]
    return complete[-1] if complete else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to resume from: the one LATEST names, or, when LATEST is missing or
    empty, the newest complete one (with a warning). None when there is none at all.

    LATEST may only name a folder `step_<digits>[-<hex>]` directly under checkpoints/;
    anything else (a path elsewhere, `..`, a link out of the folder) is refused."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "LATEST"
    if not pointer.is_file():
        fallback = newest_complete_checkpoint(run_dir)
        if fallback is not None:
            log.warning("%s is missing; using the newest complete checkpoint %s", pointer, fallback.name)
        return fallback
    try:
        raw = pointer.read_bytes()[:4096].decode("utf-8", errors="replace")
    except OSError as err:
        raise CheckpointError(f"{pointer} cannot be read ({err})") from None
    name = raw.strip()
    if not name:
        fallback = newest_complete_checkpoint(run_dir)
        if fallback is None:
            raise CheckpointError(f"{pointer} is empty and no complete checkpoint (a step_* folder with "
                                  f"{', '.join(CHECKPOINT_FILES)}) is under {root}: nothing to resume from")
        log.warning("%s is empty; using the newest complete checkpoint %s", pointer, fallback.name)
        return fallback
    shown = name if len(name) <= 80 else name[:80] + "..."
    if not CHECKPOINT_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer} names {shown!r}, which is not a checkpoint of this run "
                              f"(step_<digits>[-<hex>] directly under {root}); refusing to follow it")
    target = root / name
    if target.is_symlink() or target.resolve().parent != root.resolve():
        raise CheckpointError(f"{pointer} names {shown!r}, which is a link, not a checkpoint folder directly "
                              f"under {root}; refusing to follow it")
    if not target.is_dir():
        newest = newest_complete_checkpoint(run_dir)
        hint = (f"write {newest.name!r} into {pointer} to resume from the newest complete checkpoint"
                if newest is not None else f"no complete checkpoint is under {root}: nothing to resume from")
        raise CheckpointError(f"{pointer} names {shown!r}, which does not exist; {hint}")
    return target


def _find_checkpoint(run_dir: Path) -> Path:
    path = latest_checkpoint(run_dir)
    if path is None:
        root = Path(run_dir) / "checkpoints"
        partial = [p.name for p in _checkpoint_folders(root)]
        if partial:
            raise CheckpointError(f"--resume: no complete checkpoint under {root}: {', '.join(partial)} each lack "
                                  f"one of {', '.join(CHECKPOINT_FILES)}")
        raise CheckpointError(f"--resume: no checkpoint under {root}")
    return path


def _fallback_hint(path: Path) -> str:
    others = [p.name for p in _checkpoint_folders(path.parent) if p != path and is_complete(p)]
    if not others:
        return "no older complete checkpoint is left to fall back to"
    return f"remove {path} (and write {others[-1]!r} into {path.parent / 'LATEST'}) to fall back to an older one"


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is unreadable or corrupt ({_first_line(err)}); {_fallback_hint(path)}")


def _saved_config(path: Path) -> RunConfig:
    try:
        return build_config(yaml.safe_load((path / "config.yaml").read_text()), str(path / "config.yaml"))
    except Exception as err:  # noqa: BLE001 - any failure to read means unusable
        raise _corrupt(path, err) from None


def check_resumable(run_dir: Path, cfg: RunConfig) -> Path:
    """The checkpoint `--resume` would use, after refusing one that cannot continue `cfg` or
    whose labels the run's preference store no longer holds; reads its config.yaml and
    driver.json and the store's last row id (cheap: call it before touching the run folder)."""
    path = _find_checkpoint(run_dir)
    _check_compatible(_saved_config(path), cfg, path)
    _check_store_holds_labels(path, Path(run_dir) / STORE_NAME)
    return path


def _driver_state(path: Path) -> dict:
    try:
        state = json.loads((path / "driver.json").read_text())
    except Exception as err:  # noqa: BLE001
        raise _corrupt(path, err) from None
    if not isinstance(state, dict):
        raise _corrupt(path, ValueError("driver.json is not a JSON object"))
    return state


def _check_store_holds_labels(path: Path, store_path: Path) -> None:
    """Refuse a resume whose preference store lost rows the checkpoint counted: the run
    would report the old label count and retrain reward models from fewer labels. The store's
    row ids only grow, so its cursor can only be at or past the checkpoint's."""
    from mmotif.rewards.store import PreferenceStore

    saved = _driver_state(path).get("store_cursor", 0)
    if not isinstance(saved, int) or saved <= 0:
        return
    advice = (f"restore that file (with its -wal file) to resume, or start a new run in another "
              f"run folder (paths.run_dir)")
    if not store_path.is_file():
        raise CheckpointError(f"--resume: {store_path} is missing, but checkpoint {path.name} was written "
                              f"after {saved} labels were stored in it; {advice}")
    with PreferenceStore(store_path) as store:
        cursor = store.cursor()
    if cursor < saved:
        raise CheckpointError(f"--resume: {store_path} ends at row {cursor}, but checkpoint {path.name} was "
                              f"written after {saved} labels were stored in it (the file was replaced or "
                              f"rows were removed); {advice}")


def load_checkpoint(run_dir: Path, cfg: RunConfig) -> tuple[dict, dict]:
    """(learner_state, driver_state) of the newest checkpoint; refuse one that cannot
    continue this config."""
    path = _find_checkpoint(run_dir)
    _check_compatible(_saved_config(path), cfg, path)
    driver_state = _driver_state(path)
    try:
        learner_state = load_learner_file(path / "learner.pt")
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {_fallback_hint(path)}") from None
    if not isinstance(learner_state, dict) or "env_steps" not in learner_state:
        raise CheckpointError(f"{path / 'learner.pt'} is not a mmotif checkpoint (no learner state in it)")
    return learner_state, driver_state


def _check_compatible(saved: RunConfig, cfg: RunConfig, path: Path) -> None:
    problems = []
    if [s.name for s in saved.skills] != [s.name for s in cfg.skills]:
        problems.append(f"skills {[s.name for s in saved.skills]} vs {[s.name for s in cfg.skills]}")
    if saved.learner.network != cfg.learner.network:
        problems.append(f"network {saved.learner.network} vs {cfg.learner.network}")
    if tuple(saved.env.crop) != tuple(cfg.env.crop):
        problems.append(f"crop {saved.env.crop} vs {cfg.env.crop}")
    if problems:
        raise CheckpointError(f"checkpoint {path} was written by a different run config: "
                              + "; ".join(problems) + ". Resume with the run's own config.yaml.")
