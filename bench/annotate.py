"""Annotation throughput of the embedded backend on hand-written NetHack captions. Prints JSON.

Pairs are drawn at random from a fixed pool of captions, as pairs sampled from rollouts
repeat captions, so the pointwise score cache matters: the report has labels/s, LLM calls per
label, the cache hit rate and (pairwise) the parse-failure rate. With --sanity it also scores
the five obvious (better, worse) pairs of every paper skill in both orders and reports how
many the model gets right.

    python bench/annotate.py --model qwen2.5-coder-0.5b --threads 2 --pairs 200 --captions 60
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a machine whose
# cores are shared, spinning threads make 2-thread inference several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from mmotif.annotators.annotate import AnnotationStats, TieRule, annotate_pairs  # noqa: E402
from mmotif.annotators.examples import obvious_pairs, synthetic_pairs  # noqa: E402
from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, CaptionPair  # noqa: E402
from mmotif.llm.embedded import EmbeddedBackend  # noqa: E402
from mmotif.llm.weights import EMBEDDED_MODELS, ensure_model  # noqa: E402
from mmotif.skills.specs import PAPER_SKILLS  # noqa: E402


def sanity(backend, skills: dict[str, str], mode: str, margin: float, max_tokens: int) -> dict:
    """Obvious pairs per skill, each in both orders: correct / tie / wrong counts."""
    report = {}
    for skill in skills:
        pairs = obvious_pairs(skill)
        both = pairs + [CaptionPair(p.skill, p.second, p.first) for p in pairs]
        prefs = annotate_pairs(backend, both, skills, mode, score_cache={}, tie_rule=TieRule("margin", margin=margin), max_tokens=max_tokens)
        expected = [LABEL_FIRST] * len(pairs) + [LABEL_SECOND] * len(pairs)
        labels = [p.label for p in prefs]
        report[skill] = {
            "correct": sum(a == b for a, b in zip(labels, expected)),
            "tie": sum(a == LABEL_TIE for a in labels),
            "of": len(both),
        }
    report["total_correct"] = sum(v["correct"] for v in report.values())
    report["total"] = sum(v["of"] for k, v in report.items() if k != "total_correct")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mode", choices=["pointwise", "pairwise"], default="pointwise")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--captions", type=int, default=60, help="size of the caption pool pairs are drawn from")
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=512, help="pairwise generation budget")
    parser.add_argument("--no-prefix-cache", action="store_true")
    parser.add_argument("--sanity", action="store_true", help="also score the obvious pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    if args.model in EMBEDDED_MODELS:  # download + convert on first use (reported apart)
        ensure_model(args.model, args.cache_dir)
    prepare_s = time.perf_counter() - t0
    backend = EmbeddedBackend(
        args.model, cache_dir=args.cache_dir, num_threads=args.threads, dtype=args.dtype,
        batch_size=args.batch_size, prefix_cache=not args.no_prefix_cache,
    )
    skills = {s.name: s.preference for s in PAPER_SKILLS}
    pairs = synthetic_pairs(list(skills), args.pairs, args.captions, seed=args.seed)

    stats = AnnotationStats()
    cache: dict = {}
    t0 = time.perf_counter()
    prefs = annotate_pairs(backend, pairs, skills, args.mode, score_cache=cache, tie_rule=TieRule("margin", margin=args.margin),
                           stats=stats, max_tokens=args.max_tokens)
    elapsed = time.perf_counter() - t0
    labels = [p.label for p in prefs]
    result = {
        "bench": "annotate",
        "backend": backend.name,
        "model": backend.model,
        "mode": args.mode,
        "dtype": args.dtype,
        "threads": args.threads,
        "prefix_cache": backend.prefix_cache,
        "pairs": len(pairs),
        "caption_pool": args.captions,
        "prepare_s": round(prepare_s, 2),
        "load_s": round(backend.load_seconds, 2),
        "elapsed_s": round(elapsed, 2),
        "labels_per_s": round(stats.labels / elapsed, 3) if elapsed else None,
        "llm_calls": stats.llm_calls,
        "llm_calls_per_label": round(stats.calls_per_label, 3),
        "llm_calls_per_s": round(stats.llm_calls / stats.llm_seconds, 3) if stats.llm_seconds else None,
        "cache_hit_rate": round(stats.cache_hit_rate, 3),
        "parse_failure_rate": round(stats.parse_failure_rate, 3),
        "unknown_rate": round(stats.unknown / max(1, stats.pairs), 3),
        "label_counts": {name: labels.count(value) for name, value in
                         (("first", 0), ("second", 1), ("tie", 2), ("unknown", 3))},
    }
    if args.sanity:
        t0 = time.perf_counter()
        result["obvious_pairs"] = sanity(backend, skills, args.mode, args.margin, args.max_tokens)
        result["obvious_pairs"]["elapsed_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
