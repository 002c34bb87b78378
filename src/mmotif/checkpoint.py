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

`load_network` reads the trained skill network of a run back (evaluation, replays). What
`--resume` checks before continuing a run is the driver's: `mmotif.runtime.resume`.
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
        raise CheckpointError(f"{path} is unreadable or corrupt ({first_line(err)})") from None


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


def is_complete(folder: Path) -> bool:
    return all((Path(folder) / f).is_file() for f in CHECKPOINT_FILES)


def checkpoint_folders(root: Path) -> list[Path]:
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
    complete = [p for p in checkpoint_folders(Path(run_dir) / "checkpoints") if is_complete(p)]
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


def load_network(checkpoint: str | Path) -> tuple[RunConfig, torch.nn.Module, str]:
    """(config, frozen network, checkpoint folder) from a run folder (newest checkpoint, via
    checkpoints/LATEST), a checkpoint folder (learner.pt + config.yaml) or a learner.pt.

    learner.pt is read weights-only: a file that asks to unpickle code is refused with a
    CheckpointError, as is a LATEST naming anything but a checkpoint folder of the run."""
    from mmotif.models.build import make_network

    path = Path(checkpoint)
    if path.is_file():
        path = path.parent
    if (path / "checkpoints").is_dir():  # a run folder
        path = latest_checkpoint(path) or path
    weights, config = path / "learner.pt", path / "config.yaml"
    if not weights.is_file() or not config.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint (learner.pt + config.yaml) found at {path}")
    cfg = build_config(yaml.safe_load(config.read_text()), str(config))
    state = load_learner_file(weights)
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights} is not a mmotif checkpoint (no weights in it)")
    net = make_network(cfg)
    try:
        net.load_state_dict(state["net"] if "net" in state else state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{weights} does not fit the network of {config} "
                              f"({str(err).strip().splitlines()[0][:300]})") from None
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return cfg, net, str(path)
