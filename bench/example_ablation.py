"""One few-shot example's effect on how the embedded annotator ranks a run's own captions.

`python bench/example_ablation.py --run RUN_DIR [--skill discoverer] (--drop INDEX |
--add No|Yes MESSAGE [--previous MESSAGE] [--depth A B] [--at INDEX]) [--per-class 20]
[--seed 0]`: captions of a finished run (its `captions.jsonl`, what the agent's own games
showed) are put in classes by their events, as annotator_quality's targets say: positive (the
skill's target events), negative (death, the god's anger, the wrong level change), menu (the
game asking for an item or a direction, and "Never mind."), empty (no message, no change) and
other (any other message). `--per-class` distinct captions per class are scored for the skill
with its shipped examples (`SkillSpec.examples`) and with one change: example `--drop` left
out (a Python index), or a new example (`--add ANSWER MESSAGE`, its caption written as
`SkillSpec` examples are: dungeon levels `--depth`, no other change) put in at `--at` (default:
before the last). Prints, per variant, the AUC of the positive class against each other class
and every class's mean score, one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from annotator_quality import TARGETS, _auc, shipped_examples  # noqa: E402
from mmotif.annotators.annotate import score_captions  # noqa: E402
from mmotif.contract import Caption, read_captions  # noqa: E402
from mmotif.llm.embedded import EmbeddedBackend  # noqa: E402
from mmotif.llm.weights import SMALL_MODEL  # noqa: E402
from mmotif.nethack.events import caption_events  # noqa: E402
from mmotif.skills.specs import PAPER_SKILLS, _example  # noqa: E402

MENU = re.compile(r"^What do you want to |^In what direction\?|^Never mind\.")
CLASSES = ("positive", "negative", "menu", "empty", "other")


def caption_class(skill: str, caption: Caption) -> str | None:
    events = caption_events(caption)
    targets = TARGETS[skill]
    if events & targets["unclear"] or (events & targets["positive"] and events & targets["negative"]):
        return None
    if events & targets["positive"]:
        return "positive"
    if events & targets["negative"]:
        return "negative"
    if MENU.search(caption.message):
        return "menu"
    return "empty" if events == {"nothing"} else "other"


def sample_classes(run: Path, skill: str, per_class: int, seed: int) -> list[tuple[str, str]]:
    """(class, caption text) rows, `per_class` distinct texts per class at most."""
    by_class: dict[str, set[str]] = {c: set() for c in CLASSES}
    for caption in read_captions(run / "captions.jsonl"):
        cls = caption_class(skill, caption)
        if cls is not None:
            by_class[cls].add(caption.text)
    rng, rows = random.Random(seed), []
    for cls in CLASSES:
        texts = sorted(by_class[cls])
        rng.shuffle(texts)
        rows += [(cls, text) for text in texts[:per_class]]
    return rows


def score_variant(backend, skill: str, rows, examples) -> dict:
    preference = {skill: next(s.preference for s in PAPER_SKILLS if s.name == skill)}
    t0 = time.time()
    scores = score_captions(backend, [(skill, text) for _, text in rows], preference, score_cache={},
                            examples={skill: examples})
    by_class = {c: [s for (cls, _), s in zip(rows, scores) if cls == c] for c in CLASSES}
    positive = by_class["positive"]
    return {
        "auc_positive_vs": {c: round(_auc([(p, o) for p in positive for o in v]), 3)
                            for c, v in by_class.items() if c != "positive" and v and positive},
        "mean_score": {c: round(float(np.mean(v)), 3) for c, v in by_class.items() if v},
        "seconds": round(time.time() - t0, 1),
    }


def changed_examples(shipped: list[tuple[str, str]], args) -> tuple[list[tuple[str, str]], dict]:
    """The shipped list with one example dropped or added, and a description of the change."""
    if args.add:
        answer, message = args.add
        added = _example(answer, message, args.previous, depth=tuple(args.depth))
        at = len(shipped) - 1 if args.at is None else args.at
        changed = shipped[:at] + [(added.caption, answer)] + shipped[at:]
        return changed, {"added": added.caption, "answer": answer, "at": at}
    drop = args.drop % len(shipped)
    changed = [e for i, e in enumerate(shipped) if i != drop]
    return changed, {"dropped": shipped[drop][0], "answer": shipped[drop][1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a run folder with captions.jsonl")
    p.add_argument("--skill", default="discoverer", choices=sorted(TARGETS))
    change = p.add_mutually_exclusive_group(required=True)
    change.add_argument("--drop", type=int, help="index of the shipped example to leave out")
    change.add_argument("--add", nargs=2, metavar=("ANSWER", "MESSAGE"), help="a new example: Yes|No and its message")
    p.add_argument("--previous", default="", help="the new example's earlier message")
    p.add_argument("--depth", type=int, nargs=2, default=(2, 2), metavar=("BEFORE", "AFTER"),
                   help="the new example's dungeon levels (default: 2 2, no change)")
    p.add_argument("--at", type=int, default=None, help="where the new example goes (default: before the last)")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=SMALL_MODEL, help="the local preset's annotator model by default")
    args = p.parse_args()
    if args.add and args.add[0] not in ("Yes", "No"):
        p.error("--add: the answer is Yes or No")
    torch.set_num_threads(1)
    rows = sample_classes(args.run, args.skill, args.per_class, args.seed)
    shipped = shipped_examples()[args.skill]
    changed, change_info = changed_examples(shipped, args)
    backend = EmbeddedBackend(args.model, num_threads=1, batch_size=4, dtype="float32")
    print(json.dumps({
        "bench": "example_ablation", "run": str(args.run), "skill": args.skill, "seed": args.seed,
        "classes": {c: sum(cls == c for cls, _ in rows) for c in CLASSES}, "change": change_info,
        "shipped": score_variant(backend, args.skill, rows, shipped),
        "changed": score_variant(backend, args.skill, rows, changed),
    }))


if __name__ == "__main__":
    main()
