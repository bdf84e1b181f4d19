"""How good is a trained RM on the comparisons it was validated on? ``python -m rlhf.eval.rm_check``.

On held-out comparisons (every pair of every prompt), the pairwise accuracy of
- the RM, against the labelers' rankings;
- a length-only baseline (longer is better), the cheap feature an RM may learn instead;
- a second training labeler ranking the same completions (labeler-labeler agreement; the
  paper's RM and labelers both sit near 72-73%);
and, with the built-in world, how often each orders pairs like the gold judge (gold ties skipped).
"""
from __future__ import annotations

import argparse
import itertools
import json
import random

from transformers import AutoTokenizer

from rlhf.data.formats import read_jsonl
from rlhf.eval.measure import rm_scores
from rlhf.models.reward import load_reward_model


def pair_agreement(rank_a: list[int], scores: list[float]) -> tuple[int, int]:
    """(agreeing, total) pairs between a ranking (best first) and scores (ties count half, x2)."""
    pos = {c: i for i, c in enumerate(rank_a)}
    agree = total = 0
    for i, j in itertools.combinations(range(len(rank_a)), 2):
        better, worse = (i, j) if pos[i] < pos[j] else (j, i)
        agree += 2 if scores[better] > scores[worse] else 1 if scores[better] == scores[worse] else 0
        total += 2
    return agree, total


def check(rm_dir: str, comparisons: str, template: str = "{prompt}\n", world: bool = True, seed: int = 0) -> dict:
    recs = read_jsonl(comparisons, "comparison")
    rm, tok = load_reward_model(rm_dir).eval(), AutoTokenizer.from_pretrained(rm_dir)
    flat_p = [r["prompt"] for r in recs for _ in r["completions"]]
    flat_c = [c for r in recs for c in r["completions"]]
    scores, k = rm_scores(rm, tok, flat_p, flat_c, template).tolist(), 0
    judges = {"rm": [], "length": []}
    for r in recs:
        n = len(r["completions"])
        judges["rm"].append(scores[k:k + n])
        judges["length"].append([len(c.split()) for c in r["completions"]])
        k += n
    out = {}
    if world:
        from rlhf.data.world.gold import gold_score
        from rlhf.data.world.labelers import LabelerPool

        pool, rng = LabelerPool.training(seed), random.Random(seed)
        judges["second_labeler"] = [[-r.index(i) for i in range(len(r))] for r in
                                    (pool.rank(x["prompt"], x["completions"], rng) for x in recs)]
        gold = [[gold_score(x["prompt"], c) for c in x["completions"]] for x in recs]
        for name, js in [("labelers", None), *judges.items()]:
            a = t = 0
            for x, g, s in zip(recs, gold, js or [[-x["ranking"].index(i) for i in range(len(x["ranking"]))] for x in recs]):
                for i, j in itertools.combinations(range(len(g)), 2):
                    if g[i] != g[j]:
                        hi, lo = (i, j) if g[i] > g[j] else (j, i)
                        a, t = a + (2 if s[hi] > s[lo] else 1 if s[hi] == s[lo] else 0), t + 2
            out[f"{name}/agreement_with_gold"] = a / max(t, 1)
    for name, js in judges.items():
        a = t = 0
        for x, s in zip(recs, js):
            da, dt = pair_agreement(x["ranking"], s)
            a, t = a + da, t + dt
        out[f"{name}/accuracy_vs_labelers"] = a / t
    out["n_comparisons"], out["n_pairs"] = len(recs), t // 2
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rm_dir")
    ap.add_argument("comparisons", help="held-out comparisons JSONL (e.g. outputs/<run>/collect/comparisons_val.jsonl)")
    ap.add_argument("--no-world", action="store_true", help="user data: skip the gold and second-labeler figures")
    args = ap.parse_args()
    print(json.dumps(check(args.rm_dir, args.comparisons, world=not args.no_world), indent=2))


if __name__ == "__main__":
    main()
