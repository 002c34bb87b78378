"""Reward-model training speed: preference pairs per second through `train_reward_model`
(the char-CNN + depth-change model, soft Bradley-Terry loss), on synthetic preferences with
a planted ground truth. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mmotif.config import RewardConfig
from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, Caption, CaptionPair, Preference
from mmotif.rewards.training import train_reward_model

MESSAGES = ["You descend the stairs.", "You kill the newt!", "It's a wall.", "The jackal bites!",
            "You see here a scroll.", "", "There is a staircase down here.", "You miss the rat."]


def planted_preferences(n: int) -> list[Preference]:
    """Descending beats everything; everything else ties. Distinct caption texts per pair."""
    prefs = []
    for i in range(n):
        a = Caption(f"a{i}", MESSAGES[i % len(MESSAGES)], 1 if i % len(MESSAGES) == 0 else 0)
        b = Caption(f"b{i}", MESSAGES[(i * 3 + 1) % len(MESSAGES)], 1 if (i * 3 + 1) % len(MESSAGES) == 0 else 0)
        label = LABEL_FIRST if a.depth_change > b.depth_change else LABEL_SECOND if b.depth_change > a.depth_change else LABEL_TIE
        prefs.append(Preference(CaptionPair("descender", a, b), label, "bench", "planted", "v1", 0.0))
    return prefs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    prefs = planted_preferences(args.pairs)
    config = RewardConfig(batch_size=args.batch, epochs=args.epochs, min_steps=0, lr=1e-3)
    t0 = time.perf_counter()
    _, report = train_reward_model(prefs, config, seed=0)
    elapsed = time.perf_counter() - t0
    trained_pairs = report.n_train * report.epochs
    print(json.dumps({
        "pairs": args.pairs, "epochs": args.epochs, "batch": args.batch, "threads": args.threads,
        "seconds": round(elapsed, 2), "pairs_per_s": round(trained_pairs / elapsed, 1),
        "val_accuracy": report.val_accuracy,
    }, indent=2))


if __name__ == "__main__":
    main()
