"""How good is a trained RM on the comparisons it was validated on? ``python -m rlhf.eval.rm_check``.

On held-out comparisons (every pair of every prompt), the pairwise accuracy of
- the RM, against the labelers' rankings in the file;
- a length-only baseline (longer is better), the cheap feature an RM may learn instead;
and, with the built-in world:
- the RM, the file's labeler and length against ``n_relabel`` fresh training labelers ranking the
  same completions again (``.../accuracy_vs_fresh_labelers``, averaged). The file's labeler
  against a fresh one is the labeler-labeler agreement (``labelers/...``; the paper's RM and
  labelers both sit near 72-73%); measuring the RM against the same fresh rankings compares the
  two on equal terms, without the noise of one draw of labels;
- how often each orders pairs like the gold judge (gold ties skipped);
- the gold judge itself against the fresh labelers (``gold/accuracy_vs_fresh_labelers``): what an
  RM that knew correctness exactly would reach, the ceiling the labelers' taste and noise leave;
- the RM minus the labeler against the fresh labelers, with a 95% interval from a paired bootstrap
  over prompts (``rm_minus_labelers/...``): is the RM as good as a labeler, beyond the noise of
  which prompts were held out?
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

from transformers import AutoTokenizer

from rlhf.data.formats import read_jsonl
from rlhf.eval.measure import rm_scores
from rlhf.models.reward import load_reward_model
from rlhf.handoff import rm_template


def _vote(better: float, worse: float) -> int:
    """2 if the scores order a pair right, 1 on a tie (half), 0 if wrong."""
    return 2 if better > worse else 1 if better == worse else 0


def pair_agreement(rank_a: list[int], scores: list[float]) -> tuple[int, int]:
    """(agreeing, total) pairs between a ranking (best first) and scores (ties count half, x2)."""
    pos = {c: i for i, c in enumerate(rank_a)}
    agree = total = 0
    for i, j in itertools.combinations(range(len(rank_a)), 2):
        better, worse = (i, j) if pos[i] < pos[j] else (j, i)
        agree += _vote(scores[better], scores[worse])
        total += 2
    return agree, total


def accuracy(rankings: list[list[int]], scores: list[list[float]]) -> float:
    """Share of all ranked pairs, over every prompt, that ``scores`` order as ``rankings`` do."""
    a = t = 0
    for rank, s in zip(rankings, scores):
        da, dt = pair_agreement(rank, s)
        a, t = a + da, t + dt
    return a / max(t, 1)


def paired_difference(rankings: list[list[list[int]]], a: list[list[float]], b: list[list[float]],
                      n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of scores ``a`` minus that of ``b`` against every ranking set in ``rankings``
    (each a ranking per prompt), with a 95% interval: prompts are resampled, not pairs, because
    the pairs of one prompt share completions. Returns (difference, low, high)."""
    n = len(a)
    per_a, per_b = ([[pair_agreement(r[i], s[i]) for r in rankings] for i in range(n)] for s in (a, b))
    da = [sum(x for x, _ in pa) - sum(x for x, _ in pb) for pa, pb in zip(per_a, per_b)]
    tot = [sum(t for _, t in pa) for pa in per_a]
    rng = random.Random(seed)
    diffs = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(sum(da[i] for i in idx) / max(sum(tot[i] for i in idx), 1))
    diffs.sort()
    return sum(da) / max(sum(tot), 1), diffs[int(0.025 * n_boot)], diffs[int(0.975 * n_boot) - 1]


def as_scores(ranking: list[int]) -> list[int]:
    """A ranking (best first) as scores, higher is better."""
    return [-ranking.index(i) for i in range(len(ranking))]


def gold_agreement(gold: list[list[float]], scores: list[list[float]]) -> float:
    """Share of the pairs gold does not tie that ``scores`` order as gold does (ties count half)."""
    a = t = 0
    for g, s in zip(gold, scores):
        for i, j in itertools.combinations(range(len(g)), 2):
            if g[i] != g[j]:
                hi, lo = (i, j) if g[i] > g[j] else (j, i)
                a, t = a + _vote(s[hi], s[lo]), t + 2
    return a / max(t, 1)


def check(rm_dir: str, comparisons: str, template: str | None = None, world: bool = True,
          seed: int = 0, n_relabel: int = 10) -> dict:
    """Every figure of the module docstring; ``template`` defaults to the RM's own (``rlhf.json``)."""
    recs, template = read_jsonl(comparisons, "comparison"), template or rm_template(Path(rm_dir))
    rm, tok = load_reward_model(rm_dir).eval(), AutoTokenizer.from_pretrained(rm_dir)
    flat = rm_scores(rm, tok, [r["prompt"] for r in recs for _ in r["completions"]],
                     [c for r in recs for c in r["completions"]], template).tolist()
    ends = list(itertools.accumulate(len(r["completions"]) for r in recs))
    judges = {"rm": [flat[e - len(r["completions"]):e] for r, e in zip(recs, ends)],
              "length": [[len(c.split()) for c in r["completions"]] for r in recs]}
    file_ranks = [r["ranking"] for r in recs]
    out = {f"{name}/accuracy_vs_labelers": accuracy(file_ranks, s) for name, s in judges.items()}
    if world:
        from rlhf.data.world.gold import gold_score
        from rlhf.data.world.labelers import LabelerPool

        judges["labelers"] = [as_scores(r) for r in file_ranks]
        pool, rng = LabelerPool.training(seed), random.Random(seed)
        fresh = [[pool.rank(x["prompt"], x["completions"], rng) for x in recs] for _ in range(n_relabel)]
        gold = [[gold_score(x["prompt"], c) for c in x["completions"]] for x in recs]
        for name, s in judges.items():
            out[f"{name}/agreement_with_gold"] = gold_agreement(gold, s)
        if fresh:  # --relabel 0: no fresh figures
            for name, s in {**judges, "gold": gold}.items():
                out[f"{name}/accuracy_vs_fresh_labelers"] = sum(accuracy(f, s) for f in fresh) / len(fresh)
            d = paired_difference(fresh, judges["rm"], judges["labelers"], seed=seed)
            for suffix, v in zip(("", "_lo", "_hi"), d):
                out[f"rm_minus_labelers/accuracy_vs_fresh_labelers{suffix}"] = v
        out["n_relabel"] = n_relabel
    out["n_comparisons"], out["n_pairs"] = len(recs), sum(len(r) * (len(r) - 1) // 2 for r in file_ranks)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rm_dir")
    ap.add_argument("comparisons", help="held-out comparisons JSONL (e.g. outputs/<run>/collect/comparisons_val.jsonl)")
    ap.add_argument("--no-world", action="store_true", help="user data: skip the fresh-labeler and gold figures")
    ap.add_argument("--relabel", type=int, default=10, help="fresh training-labeler rankings per comparison (world)")
    ap.add_argument("--seed", type=int, default=0, help="the world's seed (its training labelers)")
    args = ap.parse_args()
    print(json.dumps(check(args.rm_dir, args.comparisons, world=not args.no_world, seed=args.seed,
                           n_relabel=args.relabel), indent=2))


if __name__ == "__main__":
    main()
