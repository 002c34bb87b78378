"""Annotator quality as a number: how well an LLM's pointwise scores order labelled captions. Prints JSON.

The labelled set is built in mmotif's real caption format. Real captions come from random
rollouts of the skill env (`--envs` games x `--steps` random actions, seeded action
sampler; NetHack itself is not seeded, so the real part of the set varies a little from run
to run). Rare moments that random play hardly ever shows (descents, ascents, altars, shops,
kills, gold pickups, hidden passages, deaths, an angry god, theft) are added as hand-built
`Moment`s written with the real caption code. Each caption gets a per-skill target read
from its events (`mmotif.nethack.events.caption_events`) by rules that follow from the skill
descriptions (`TARGETS` below): positive, neutral or negative, or none where the skill's
description does not make it clear (such captions are left out for that skill). Per skill
and class the set takes `--per-class` captions, real ones first, spread over the reasons a
caption has its target ("strata": for the descender's negatives, ascents, deaths, god).

Per model and prompt every (skill, caption) is scored once (`score_captions`, fresh cache)
and, per skill, over all (positive, neutral), (positive, negative) and (neutral, negative)
pairs:

* `auc`: the share of pairs whose scores are ordered right (equal scores count half; 0.5 is
  chance), also per pair kind;
* `tie_rank`, `tie_margin`: the share of those pairs a TieRule calls a tie, rank rule
  (`rank_gap` 0.1, ranks among the set's scores of the skill) and margin rule (0.5 log-odds);
* `agree_rank`, `agree_margin`: the share of the non-tie labels that are right;
* `s_per_caption`: wall time of the scoring / number of scores (prefix computations included).

`prefix_*` say what the backend's shared-prefix cache cost; `s_per_caption_after_prefix` is
the cost once each skill's prefix is cached, what a long run pays. The recommendation ranks
the configs by clean-label equivalents within the local preset's 10-minute, one-thread
budget (see `recommend`).

Cost on the 2-core box, one thread, float32: ~1.1-1.6 s per score for the 0.5B model,
~5.5-6.5 s for the 1.5B (few-shot, 0.5B: about the same once its ~620-token prefix is
cached); the
default set (5 + 6 + 5 captions x 5 skills = 80 scores) takes ~2 min per prompt with the 0.5B
and ~8 min with the 1.5B. bfloat16, the backend's default, is ~7x slower on this CPU
(AVX2, no bf16 instructions).

`--prompts fewshot` asks each skill's shipped solved examples first (`SkillSpec.examples`,
what a run asks with `annotator.few_shot: true`, the default; their captions are kept out of
the labelled set); `default` asks the bare question (`annotator.few_shot: false`).
`--pairwise` also labels `--pairwise-pairs` pairs per skill with the chain-of-thought prompt
(slow on a CPU).

    python bench/annotator_quality.py --models qwen2.5-coder-0.5b --prompts default,fewshot
    python bench/annotator_quality.py --models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b --per-class 3,4,3
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning (see bench/annotate.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402

from mmotif.annotators.annotate import AnnotationStats, TieRule, annotate_pairs, score_captions  # noqa: E402
from mmotif.annotators.examples import Moment  # noqa: E402
from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN, Caption, CaptionPair  # noqa: E402
from mmotif.nethack.events import caption_events  # noqa: E402
from mmotif.skills.specs import PAPER_SKILLS  # noqa: E402

POSITIVE, NEUTRAL, NEGATIVE = 1, 0, -1
CLASS_NAMES = {POSITIVE: "positive", NEUTRAL: "neutral", NEGATIVE: "negative"}
PAIR_KINDS = (("positive", "neutral"), ("positive", "negative"), ("neutral", "negative"))
TIE_RULES = {"rank": TieRule("rank", rank_gap=0.1), "margin": TieRule("margin", margin=0.5)}

# -- targets ---------------------------------------------------------------------------------
# Per skill: events that make a caption positive, events that make it negative (every skill
# avoids death and the god's anger: the prompts' god clause), and events that make it unclear
# whatever else it shows. A caption with both positive and negative events is unclear.
_AVOID = {"death", "god_angry"}
TARGETS: dict[str, dict[str, set[str]]] = {
    # "fighting monsters and collecting items such as gold ... Changing level ... firmly undesirable"
    "discoverer": {"positive": {"kill", "gold_gain", "hidden"}, "negative": {"descent", "ascent", *_AVOID},
                   "unclear": {"gold_loss", "prayer"}},
    # "going deeper ... urgent. Remaining on the same level is strongly undesirable, and going up is worse"
    "descender": {"positive": {"descent"}, "negative": {"ascent", *_AVOID}, "unclear": {"prayer"}},
    # "The only progress is successfully climbing up one level"
    "ascender": {"positive": {"ascent"}, "negative": {"descent", *_AVOID}, "unclear": {"prayer"}},
    # "Strongly favour using an altar ... rather than praying": praying is not clearly bad alone
    "worshipper": {"positive": {"altar"}, "negative": set(_AVOID), "unclear": {"prayer"}},
    # "dealing with shopkeepers ... Never steal from a shop" (theft: see THEFT)
    "merchant": {"positive": {"shop"}, "negative": set(_AVOID), "unclear": {"prayer"}},
}
# Theft from a shop: negative for the merchant ("Never steal"), unclear for everyone else.
THEFT = re.compile(r"\bYou stole\b|\bsteal|\bwithout paying\b|\bescaped the shop\b", re.IGNORECASE)
# A neutral caption shows no event at all ("nothing", or some other message), and neither of
# its two messages touches any skill's subject (stairs, fights, items, gold, gods, shops).
NEUTRAL_EVENTS = {"message", "nothing"}
TOUCHY = re.compile(
    r"stair|ladder|\bdown\b|\bup\b|trap ?door|\bhole\b|\blevel\b|climb|descend|\bfall|"
    r"gold|\$|see here|things? here|hidden|\bfind\b|\bfound\b|\bkill|\bhit|bite|\bmiss|corpse|"
    r"\b[a-zA-Z] - |\bpick|scroll|potion|\bring\b|wand|\bamulet|\bitem|attack|"
    r"altar|pray|\bgod\b|temple|bless|curse|holy|flash|sacrific|priest|displeased|angered|thunder|booming|"
    r"shop|\bsell|\bsold|\bbuy|zorkmid|price|\bpay|\bowe\b|welcome|store|\bstole|steal|merchandise|"
    r"\bdie\b|\bdies\b|\bkilled\b|\bthou\b|\bthy\b|\bthee\b|mortal|punish|\bglow|\bhaze\b|\bfeel|"
    r"\byou read\b|lightning|\bvoice\b|\bouch\b|\bhurts?\b",
    re.IGNORECASE,
)
# Same-level distractors must not mention going anywhere either.
LEVEL_WORDS = re.compile(r"stair|ladder|\bdown\b|\bup\b|trap ?door|\bhole\b|\blevel\b|climb|descend|\bfall",
                         re.IGNORECASE)
# Same-level events that are neutral for the level-changing skills: "Remaining on the same
# level is strongly undesirable, whatever else happens" (ascender; the descender likewise).
SAME_LEVEL_DISTRACTORS = {"kill", "hidden", "altar", "shop", "gold_gain", "level_up"}
_MESSAGES_LINE = re.compile(r'^The earlier message was "(.*)" and the current message is "(.*)"$', re.MULTILINE)


def messages_of(text: str) -> tuple[str, str]:
    found = _MESSAGES_LINE.search(text)
    return (found.group(1), found.group(2)) if found else ("", "")


def target(skill: str, caption: Caption) -> tuple[int, str] | None:
    """(class, stratum) of a caption for a skill, or None where the description leaves it unclear."""
    events = caption_events(caption)
    earlier, current = messages_of(caption.text)
    rules = TARGETS[skill]
    if THEFT.search(current) or THEFT.search(earlier):
        return (NEGATIVE, "theft") if skill == "merchant" and THEFT.search(current) else None
    if events & rules["unclear"]:
        return None
    pos, neg = events & rules["positive"], events & rules["negative"]
    if pos and neg:
        return None
    if pos:
        return POSITIVE, sorted(pos)[0]
    if neg:  # the most telling reason names the stratum
        for reason in ("death", "god_angry", "descent", "ascent"):
            if reason in neg:
                return NEGATIVE, reason
    if events <= NEUTRAL_EVENTS and not TOUCHY.search(earlier) and not TOUCHY.search(current):
        return NEUTRAL, min(events)
    if (skill in ("descender", "ascender") and events <= SAME_LEVEL_DISTRACTORS
            and not LEVEL_WORDS.search(earlier) and not LEVEL_WORDS.search(current)):
        return NEUTRAL, "same_level_event:" + sorted(events)[0]
    return None


# -- hand-built rare moments -----------------------------------------------------------------

_BLAND = ["", "It's a wall.", "You hear some noises in the distance.", "You stop waiting.", "Never mind.",
          "You hear the footsteps of a guard on patrol.", "This door is locked.", "You hear a door open.",
          "The kitten misses the newt.", "Unknown command '^M'.", "In what direction?", "You hear bubbling water."]


def rare_moments(seed: int) -> list[Moment]:
    """Varied hand-built moments of every event the targets use (plus bland ones)."""
    rng = random.Random(seed)
    out: list[Moment] = []

    def add(message: str, n: int = 1, **fixed):
        for _ in range(n):
            d = rng.randint(1, 6)
            gold = rng.choice([0, 0, 5, 23, 60])
            hp = rng.randint(8, 14)
            kw = {"previous_message": rng.choice(_BLAND), "depth": (d, d), "gold": (gold, gold),
                  "hp": (hp, hp), "hunger": ("Normal", rng.choice(["Normal", "Normal", "Normal", "Hungry"]))}
            kw.update({k: (v(d, gold, hp) if callable(v) else v) for k, v in fixed.items()})
            out.append(Moment(message=message, **kw))

    down = lambda d, g, h: (d, d + 1)  # noqa: E731
    up = lambda d, g, h: (d + 1, d)  # noqa: E731
    # descents / ascents
    for msg in ("You descend the stairs.", "", "There is a staircase up here.", "You fall through a trap door!"):
        add(msg, 4, depth=down)
    add("You fall through a hole!", 2, depth=lambda d, g, h: (d, d + 2))
    for msg in ("You climb up the stairs.", "", "There is a staircase down here.", "You climb up the ladder."):
        add(msg, 4, depth=up)
    # altars
    for msg in ("There is an altar to Huan Ti (neutral) here.", "There is an altar to Chih Sung-tzu (lawful) here.",
                "There is an altar to Anhur (chaotic) here.", "There is a black flash as the ring hits the altar.",
                "There is an amber flash as the potion hits the altar.", "There is a black flash as the scroll hits the altar.",
                "You drop 3 daggers. The daggers land on the altar.", "A wand lands on the altar.",
                "There is an amber flash as the amulet hits the altar.", "Some scrolls land on the altar."):
        add(msg, 2)
    # shops
    for msg in ("Hello, agent! Welcome to Asidonhopo's general store!", "Hello, agent! Welcome to Izchak's lighting store!",
                "Asidonhopo offers 10 gold pieces for your potion.  Sell it? [ynaq] (y)",
                "Izchak offers 5 gold pieces for your ring.  Sell it? [ynaq] (y)",
                "For you, good sir; only 13 zorkmids for this dagger.",
                "Asidonhopo offers 40 gold pieces for your scroll.  Sell it? [ynaq] (y)"):
        add(msg, 2)
    add("You sold a scroll labeled READ ME for 40 gold pieces.", 2, gold=lambda d, g, h: (g, g + 40))
    add("You sold 2 daggers for 8 gold pieces.", 2, gold=lambda d, g, h: (g, g + 8))
    # theft
    add("You stole 20 zorkmids worth of merchandise.", 3)
    add("You escaped the shop without paying!", 3)
    # kills, gold, hidden things
    for msg in ("You kill the newt!", "You kill the jackal!", "You kill the grid bug!", "You kill the sewer rat!",
                "You kill the kobold!", "You destroy the kobold zombie!"):
        add(msg, 2, hp=lambda d, g, h: (h, max(1, h - rng.choice([0, 0, 2, 4]))))
    add("You kill the gnome lord!", 2, level=(1, 2))
    for n in (3, 7, 12, 31, 58):
        add(f"$ - {n} gold pieces.", 2, gold=lambda d, g, h, n=n: (g, g + n))
    add("", 3, gold=lambda d, g, h: (g, g + rng.choice([4, 9, 17])))
    for msg in ("You find a hidden passage.", "You find a hidden door."):
        add(msg, 3)
    # deaths, the god's anger
    for prev in ("The jackal bites!", "The sewer rat bites!", "You are hit by an arrow!", "The gnome lord hits!"):
        add("You die...", 2, previous_message=prev, hp=lambda d, g, h: (rng.randint(1, 4), 0))
    for msg in ("You feel that Huan Ti is displeased.", "You feel that Chih Sung-tzu is displeased.",
                '"Thou hast angered me."', "You hear a booming voice: \"Thou durst call upon me?\""):
        add(msg, 2)
    # bland moments
    for msg in _BLAND:
        add(msg, 2)
    return out


def rollout_captions(envs: int, steps: int, seed: int, caption_gap: int, caption_rate: float) -> list[Caption]:
    """Captions of real games under random actions (seeded sampler; NetHack itself is not seeded)."""
    from mmotif.config import load_config
    from mmotif.nethack import actions as A
    from mmotif.skills.build import make_vector_env

    cfg = load_config(preset_name="local", overrides={
        "env": {"caption_rate": caption_rate, "caption_gap": caption_gap}})
    venv = make_vector_env(cfg, envs, seed=seed)
    venv.reset()
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        venv.step(rng.integers(A.NUM_ACTIONS, size=envs))
    captions = venv.pop_captions()
    venv.close()
    return captions


# -- few-shot prompt -------------------------------------------------------------------------

def shipped_examples() -> dict[str, list[tuple[str, str]]]:
    """Each skill's solved (caption, answer) questions as a local run asks them first
    (`SkillSpec.examples`, `annotator.few_shot: true`, the default), as earlier chat turns."""
    from mmotif.annotators.offline import examples_from_config
    from mmotif.config import load_config

    return examples_from_config(load_config(preset_name="local"))


# -- the labelled set ------------------------------------------------------------------------

def build_set(real: list[Caption], moments: list[Moment], per_class: dict[int, int], seed: int,
              exclude: set[str]) -> dict[str, list[dict]]:
    """Per skill: [{text, target, stratum, source}], real captions first within each stratum."""
    rng = random.Random(seed)
    pools = [("rollout", list({c.text: c for c in real}.values())),
             ("moment", list({c.text: c for c in (m.caption() for m in moments)}.values()))]
    out: dict[str, list[dict]] = {}
    for skill in TARGETS:
        chosen: list[dict] = []
        for cls, quota in per_class.items():
            strata: dict[str, list[dict]] = {}
            for source, captions in pools:
                items = []
                for c in captions:
                    t = target(skill, c)
                    if t is not None and t[0] == cls and c.text not in exclude:
                        items.append({"text": c.text, "target": cls, "stratum": t[1], "source": source})
                rng.shuffle(items)
                for item in items:
                    strata.setdefault(item["stratum"], []).append(item)
            # A stratum "a:b" is sub-stratum b of stratum a: interleave its sub-strata.
            grouped: dict[str, dict[str, list[dict]]] = {}
            for name, rows in strata.items():
                grouped.setdefault(name.split(":")[0], {})[name] = rows
            strata = {name: _interleave(list(subs.values())) for name, subs in grouped.items()}
            # Round-robin over the strata until the quota is met (real ones come first in each).
            picked, names, seen = [], sorted(strata), set()
            while len(picked) < quota and any(strata[n] for n in names):
                for name in names:
                    while strata[name] and strata[name][0]["text"] in seen:
                        strata[name].pop(0)
                    if strata[name] and len(picked) < quota:
                        item = strata[name].pop(0)
                        seen.add(item["text"])
                        picked.append(item)
            chosen += picked
        out[skill] = chosen
    return out


def _interleave(lists: list[list[dict]]) -> list[dict]:
    """Round-robin merge (each list keeps its order: real captions first)."""
    out: list[dict] = []
    for k in range(max(map(len, lists), default=0)):
        out += [rows[k] for rows in lists if k < len(rows)]
    return out


def describe_set(labelled: dict[str, list[dict]]) -> dict:
    per_skill = {}
    for skill, items in labelled.items():
        per_skill[skill] = {}
        for cls, name in CLASS_NAMES.items():
            of = [i for i in items if i["target"] == cls]
            per_skill[skill][name] = {
                "n": len(of), "from_rollouts": sum(i["source"] == "rollout" for i in of),
                "strata": dict(Counter(i["stratum"] for i in of)),
            }
    total = sum(len(v) for v in labelled.values())
    real = sum(i["source"] == "rollout" for v in labelled.values() for i in v)
    return {"per_skill": per_skill, "scored_items": total, "from_rollouts": real}


# -- metrics ---------------------------------------------------------------------------------

def skill_metrics(items: list[dict], scores: list[float]) -> dict:
    by_class = {name: [s for i, s in zip(items, scores) if i["target"] == cls] for cls, name in CLASS_NAMES.items()}
    pairs: list[tuple[float, float]] = []  # (should be higher, should be lower)
    out: dict = {}
    for hi, lo in PAIR_KINDS:
        kind = [(a, b) for a in by_class[hi] for b in by_class[lo]]
        if kind:
            out[f"auc_{hi}_vs_{lo}"] = round(_auc(kind), 3)
        pairs += kind
    out["pairs"] = len(pairs)
    out["auc"] = round(_auc(pairs), 3) if pairs else None
    for name, rule in TIE_RULES.items():
        labels = rule.labels(pairs, scores)
        ties = sum(label == LABEL_TIE for label in labels)
        right = sum(label == LABEL_FIRST for label in labels)
        wrong = sum(label == LABEL_SECOND for label in labels)
        out[f"tie_{name}"] = round(ties / len(pairs), 3) if pairs else None
        out[f"agree_{name}"] = round(right / (right + wrong), 3) if right + wrong else None
    out["mean_score"] = {name: round(float(np.mean(v)), 2) for name, v in by_class.items() if v}
    return out


def _auc(pairs: list[tuple[float, float]]) -> float:
    return float(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.mean(values)), 3) if values else None


class PrefixCounter:
    """Counts the shared prefixes the embedded backend computes (LRU misses) and their tokens."""

    def __init__(self, backend):
        self.backend, self.misses, self.tokens, self.seconds = backend, 0, 0, 0.0
        self.inner = getattr(backend, "_prefix_state", None)

    def __enter__(self):
        if self.inner is not None:
            def counted(prefix):
                if prefix in self.backend._prefix_lru:
                    return self.inner(prefix)
                t0 = time.perf_counter()
                state = self.inner(prefix)
                self.seconds += time.perf_counter() - t0
                self.misses += 1
                self.tokens += len(prefix)
                return state
            self.backend._prefix_state = counted
        return self

    def __exit__(self, *exc):
        if self.inner is not None:
            del self.backend._prefix_state  # back to the class's method


def pointwise_run(backend, labelled, skills, prompt: str, chunk_size: int) -> dict:
    items = [(skill, i["text"]) for skill, rows in labelled.items() for i in rows]
    t0 = time.perf_counter()
    with PrefixCounter(backend) as prefixes:
        examples = shipped_examples() if prompt == "fewshot" else None
        scores = score_captions(backend, items, skills, score_cache={}, chunk_size=chunk_size,
                                examples=examples)
    wall = time.perf_counter() - t0
    per_skill, k = {}, 0
    for skill, rows in labelled.items():
        per_skill[skill] = skill_metrics(rows, scores[k:k + len(rows)])
        k += len(rows)
    keys = ["auc", "auc_positive_vs_neutral", "auc_positive_vs_negative", "auc_neutral_vs_negative",
            "tie_rank", "agree_rank", "tie_margin", "agree_margin"]
    return {
        "per_skill": per_skill,
        "mean": {key: _mean(m.get(key) for m in per_skill.values()) for key in keys},
        "scores": len(items),
        "wall_s": round(wall, 1),
        "s_per_caption": round(wall / len(items), 3),
        # The backend reuses a cached prefix only when it is most of a batch's common prefix:
        # how many prefixes it computed, and their mean length in tokens.
        "prefix_computations": prefixes.misses,
        "prefix_mean_tokens": round(prefixes.tokens / prefixes.misses, 1) if prefixes.misses else 0,
        "prefix_s": round(prefixes.seconds, 1),
        # per caption once each skill's prefix is cached (a long run's steady state)
        "s_per_caption_after_prefix": round((wall - prefixes.seconds) / len(items), 3),
    }


def pairwise_run(backend, labelled, skills, n_pairs: int, max_tokens: int, seed: int) -> dict:
    """`n_pairs` pairs per skill, spread over the pair kinds, shown in a random order."""
    rng = random.Random(seed)
    pairs, expected = [], []
    for skill, rows in labelled.items():
        by = {name: [i for i in rows if i["target"] == cls] for cls, name in CLASS_NAMES.items()}
        kinds = [k for k in PAIR_KINDS if by[k[0]] and by[k[1]]]
        for j in range(n_pairs):
            hi, lo = kinds[j % len(kinds)]
            a, b = rng.choice(by[hi]), rng.choice(by[lo])
            ca, cb = (Caption(text=x["text"], message=messages_of(x["text"])[1], depth_change=0) for x in (a, b))
            if rng.random() < 0.5:
                pairs.append(CaptionPair(skill, ca, cb))
                expected.append(LABEL_FIRST)
            else:
                pairs.append(CaptionPair(skill, cb, ca))
                expected.append(LABEL_SECOND)
    stats = AnnotationStats()
    t0 = time.perf_counter()
    prefs = annotate_pairs(backend, pairs, skills, "pairwise", stats=stats, max_tokens=max_tokens, seed=seed)
    wall = time.perf_counter() - t0
    per_skill = {}
    for skill in labelled:
        got = [(p.label, e) for p, e in zip(prefs, expected) if p.pair.skill == skill]
        decided = [(g, e) for g, e in got if g in (LABEL_FIRST, LABEL_SECOND)]
        per_skill[skill] = {
            "pairs": len(got),
            "agree": round(sum(g == e for g, e in decided) / len(decided), 3) if decided else None,
            "tie": round(sum(g == LABEL_TIE for g, _ in got) / len(got), 3),
            "unknown": round(sum(g == LABEL_UNKNOWN for g, _ in got) / len(got), 3),
        }
    return {
        "per_skill": per_skill,
        "mean": {k: _mean(m[k] for m in per_skill.values()) for k in ("agree", "tie", "unknown")},
        "max_tokens": max_tokens,
        "parse_failure_rate": round(stats.parse_failure_rate, 3),
        "wall_s": round(wall, 1),
        "s_per_pair": round(wall / max(1, len(pairs)), 2),
    }


# -- recommendation --------------------------------------------------------------------------

def recommend(results: dict, budget_s: float, threads: int, dtype: str) -> dict:
    """Per config: expected clean-label equivalents within the local preset's budget.

    The local preset runs `budget_s` seconds with the annotator on one thread. A config scores
    n = (budget - model load - prefix_s) / s_per_caption_after_prefix captions there (one
    prefix per skill, computed once, as in this bench); about one new label per new
    score (pairs of scored captions are free). A label that is right with probability a
    carries (2a - 1)^2 of a clean label's information (none below a = 0.5), a tie none:
    value = n x (1 - tie) x max(0, 2 agree - 1)^2, with the rank rule (the local preset's).
    s_per_caption is as measured here (`threads`, `dtype`): measure with the preset's.
    """
    table = {}
    for model, runs in results.items():
        for name, run in runs.items():
            if not name.startswith("pointwise/"):
                continue
            mean = run["mean"]
            steady = run.get("s_per_caption_after_prefix", run["s_per_caption"])
            n = max(0.0, budget_s - runs.get("load_s", 0.0) - run.get("prefix_s", 0.0)) / steady
            agree, tie = mean["agree_rank"] or 0.5, mean["tie_rank"] or 0.0
            table[f"{model} {name}"] = {
                "auc": mean["auc"], "agree_rank": mean["agree_rank"], "s_per_caption": run["s_per_caption"],
                "s_per_caption_after_prefix": steady, "captions_in_budget": int(n),
                "clean_label_equivalents": round(n * (1 - tie) * max(0.0, 2 * agree - 1) ** 2, 1),
            }
    best = max(table, key=lambda k: table[k]["clean_label_equivalents"]) if table else None
    best_auc = max(table, key=lambda k: table[k]["auc"] or 0) if table else None
    return {"budget_s": budget_s, "threads": threads, "dtype": dtype,
            "dtype_note": "the local preset builds the embedded backend with its default dtype, bfloat16; "
                          "on a CPU without bf16 instructions (AVX2 only) that is several times slower "
                          "than float32: measure with --dtype bfloat16",
            "configs": table, "best_per_budget": best,
            "best_auc": best_auc, "rule": recommend.__doc__.split("\n\n")[1].replace("\n    ", " ").strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    parser.add_argument("--prompts", default="default", help="comma list of: default, fewshot")
    parser.add_argument("--pairwise", action="store_true", help="also label pairs with the chain-of-thought prompt")
    parser.add_argument("--pairwise-pairs", type=int, default=10, help="pairs per skill (pairwise)")
    parser.add_argument("--max-tokens", type=int, default=384, help="pairwise generation budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the local preset's annotator: 1)")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per forward (local preset: 4)")
    parser.add_argument("--dtype", default="float32", help="float32: on an AVX2-only CPU bfloat16 (the backend default) is ~7x slower")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--per-class", default="5,6,5", help="captions per skill: positive,neutral,negative")
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3000, help="random steps per env")
    parser.add_argument("--caption-gap", type=int, default=20)
    parser.add_argument("--caption-rate", type=float, default=0.05)
    parser.add_argument("--budget-s", type=float, default=600.0, help="the local preset's time limit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    unknown = set(prompts) - {"default", "fewshot"}
    if unknown:
        parser.error(f"unknown prompts {sorted(unknown)}; use default, fewshot")
    pos, neu, neg = (int(x) for x in args.per_class.split(","))
    skills = {s.name: s.preference for s in PAPER_SKILLS}

    t0 = time.perf_counter()
    real = rollout_captions(args.envs, args.steps, args.seed, args.caption_gap, args.caption_rate)
    rollout_s = time.perf_counter() - t0
    exclude = {text for examples in shipped_examples().values() for text, _ in examples}
    labelled = build_set(real, rare_moments(args.seed), {POSITIVE: pos, NEUTRAL: neu, NEGATIVE: neg},
                         args.seed, exclude)
    result = {
        "bench": "annotator_quality",
        "note": "real captions come from random rollouts; NetHack is not seeded, so the real part of "
                "the set varies a little between runs",
        "set": {
            "rollout": {"envs": args.envs, "steps_per_env": args.steps, "seed": args.seed,
                        "caption_gap": args.caption_gap, "caption_rate": args.caption_rate,
                        "captions": len(real), "unique": len({c.text for c in real}),
                        "events": dict(Counter(e for c in real for e in caption_events(c))),
                        "seconds": round(rollout_s, 1)},
            **describe_set(labelled),
        },
        "threads": args.threads, "batch_size": args.batch_size, "dtype": args.dtype,
        "tie_rules": {"rank": {"rank_gap": 0.1}, "margin": {"margin": 0.5}},
        "results": {},
    }
    print(json.dumps(result["set"], indent=1), file=sys.stderr)

    from mmotif.llm.embedded import EmbeddedBackend

    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        backend = EmbeddedBackend(model, cache_dir=args.cache_dir, num_threads=args.threads,
                                  dtype=args.dtype, batch_size=args.batch_size)
        runs: dict = {"load_s": round(backend.load_seconds, 1)}
        for prompt in prompts:
            runs[f"pointwise/{prompt}"] = run = pointwise_run(backend, labelled, skills, prompt, 64)
            print(f"{model} pointwise/{prompt}: {json.dumps(run['mean'])} {run['s_per_caption']} s/caption",
                  file=sys.stderr)
        if args.pairwise:
            runs["pairwise/default"] = run = pairwise_run(
                backend, labelled, skills, args.pairwise_pairs, args.max_tokens, args.seed)
            print(f"{model} pairwise: {json.dumps(run['mean'])} {run['s_per_pair']} s/pair", file=sys.stderr)
        result["results"][model] = runs
        backend.close()
    result["recommendation"] = recommend(result["results"], args.budget_s, args.threads, args.dtype)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
