"""Offline annotation and reward training: `mmotif annotate` and `mmotif train-rewards`.

Captions files are JSON lines, read and written by `mmotif.contract` (`read_captions`,
`append_captions`); `mmotif run` writes the captions it samples to `<run_dir>/captions.jsonl`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mmotif.config import RunConfig
from mmotif.contract import CaptionsFileError, read_captions


def make_backend_from_config(cfg: RunConfig):
    """The annotator's backend: the rules control, else the LLM that `annotator:` describes."""
    a = cfg.annotator
    if a.backend == "rules":
        from mmotif.annotators.rules import RulesBackend

        return RulesBackend([s.name for s in cfg.skills], a.rules)
    from mmotif.llm import backend_from_config

    return backend_from_config(a, section="annotator", cache_dir=cfg.paths.model_cache)


def tie_rule_from_config(cfg: RunConfig):
    from mmotif.annotators.annotate import TieRule

    a = cfg.annotator
    return TieRule(a.tie_rule, rank_gap=a.tie_rank_gap, margin=a.tie_margin)


def generation_from_config(cfg: RunConfig) -> dict:
    """annotate_pairs' pairwise generation settings from `annotator:` (top_p and top_k are the
    backend's own, given when it is built)."""
    a = cfg.annotator
    return {"max_tokens": a.max_tokens, "retry_max_tokens": a.retry_max_tokens, "temperature": a.temperature}


def examples_from_config(cfg: RunConfig) -> dict[str, list[tuple[str, str]]]:
    """Each skill's solved Yes/No examples for the pointwise prompt (none when few_shot is off)."""
    if not cfg.annotator.few_shot:
        return {}
    return {s.name: [(e.caption, e.answer) for e in s.examples] for s in cfg.skills}


def annotate_file(cfg: RunConfig, captions_path: Path, store_path: Path, pairs_per_skill: int,
                  batch: int = 8, stream=sys.stderr) -> dict:
    """Label up to `pairs_per_skill` new pairs per skill from a captions file into the store."""
    from mmotif.annotators.annotate import AnnotationStats, annotate_pairs
    from mmotif.annotators.sampler import PairSampler
    from mmotif.rewards.store import PreferenceStore

    captions = read_captions(captions_path)
    if len(captions) < 2:
        raise CaptionsFileError(f"{captions_path}: needs at least two captions, found {len(captions)}")
    backend = make_backend_from_config(cfg)
    modifiers = {s.name: s.preference for s in cfg.skills}
    examples = examples_from_config(cfg)
    stats, cache = AnnotationStats(), {}
    new_labels, t0 = 0, time.perf_counter()
    with PreferenceStore(store_path) as store:
        sampler = PairSampler(list(modifiers), store.has_pair, seed=cfg.seed,
                              stratum_alpha=cfg.annotator.pair_stratum_alpha,
                              per_input_cap=cfg.annotator.captions_per_reward_input)
        sampler.add_captions(captions)
        total = pairs_per_skill * len(modifiers)
        for skill in modifiers:
            todo = pairs_per_skill
            while todo > 0:
                pairs = sampler.sample(skill, min(batch, todo))
                if not pairs:
                    break  # every pair of these captions is labelled for this skill
                prefs = annotate_pairs(backend, pairs, modifiers, cfg.annotator.mode, score_cache=cache,
                                       tie_rule=tie_rule_from_config(cfg), stats=stats, examples=examples,
                                       **generation_from_config(cfg))
                sampler.done(pairs)
                new_labels += store.append(prefs)
                todo -= len(pairs)
                _progress(stream, new_labels, total, time.perf_counter() - t0)
        counts = store.counts_by_skill()
    backend.close()
    stream.write("\n")
    elapsed = time.perf_counter() - t0
    return {"new_labels": new_labels, "labels_per_s": round(new_labels / max(elapsed, 1e-9), 3),
            "labels_in_store": counts, "dedup_hit_rate": round(sampler.stats.dedup_hit_rate, 4),
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.as_dict().items()}}


def _progress(stream, done: int, total: int, elapsed: float) -> None:
    width = 30
    filled = int(width * min(done / max(total, 1), 1.0))
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} labels  "
                 f"{done / max(elapsed, 1e-9):.2f} labels/s")
    stream.flush()


def train_rewards(cfg: RunConfig, store_path: Path, root: Path) -> dict:
    """Train every skill's reward model from the store and publish one version."""
    from mmotif.rewards.store import PreferenceStore
    from mmotif.rewards.trainer import RewardTrainer, publish_trained
    from mmotif.rewards.versions import latest_version, load

    if not Path(store_path).is_file():
        raise FileNotFoundError(f"preference store not found: {store_path} (run `mmotif annotate` first)")
    skills = [s.name for s in cfg.skills]
    number = latest_version(root)
    trainer = RewardTrainer(cfg, load(root, number, skills=skills) if number is not None else None)
    with PreferenceStore(store_path) as store:
        if store.count() == 0:
            raise ValueError(f"preference store {store_path} is empty: nothing to train on")
        trainer.add(store.iter_preferences())
    trained = trainer.maybe_retrain(force=True)
    excluded = {"labels_excluded": dict(trainer.excluded)}
    if trained is None:
        return {"published": None, "note": "no skill had enough new labels to retrain", **excluded}
    record, _ = publish_trained(root, *trained, skills)
    return {"published": record.version, "path": record.path,
            "validation_accuracy": dict(zip(record.skills, record.val_accuracy)),
            "probe_margins": dict(zip(record.skills, record.probe_margins)),
            "labels": dict(zip(record.skills, record.n_labels)), **excluded}
