"""Measure the labelers: how often two of them agree, and how often they agree with gold.

Agreement is measured as in the paper: over pairs of completions of one prompt, the share
ordered the same way by two labelers. Candidate sets come from `candidates()` (K = 4..9).
"""
from __future__ import annotations

import itertools
import random
import statistics

from .candidates import candidates
from .gold import gold_score
from .labelers import LabelerPool

GAP_BINS = (("small", 0.0, 0.2), ("medium", 0.2, 0.5), ("large", 0.5, 1.01))


def concordant(rank_a: list[int], rank_b: list[int]) -> tuple[int, int]:
    """(pairs ordered the same way, all pairs) for two rankings of the same items."""
    pa = {item: pos for pos, item in enumerate(rank_a)}
    pb = {item: pos for pos, item in enumerate(rank_b)}
    pairs = list(itertools.combinations(range(len(rank_a)), 2))
    same = sum((pa[i] < pa[j]) == (pb[i] < pb[j]) for i, j in pairs)
    return same, len(pairs)


def _sets(prompts: list[str], rng: random.Random) -> list[tuple[str, list[str]]]:
    return [(p, candidates(p, rng.randint(4, 9), rng)) for p in prompts]


def labeler_agreement(pool: LabelerPool, sets, rng: random.Random) -> dict:
    """Mean (and sd over labeler pairs) of pairwise agreement between labelers."""
    n = len(pool.labelers)
    same = [[0] * n for _ in range(n)]
    total = 0
    for prompt, cands in sets:
        ranks = [lab.rank(prompt, cands, rng) for lab in pool.labelers]
        for i, j in itertools.combinations(range(n), 2):
            s, t = concordant(ranks[i], ranks[j])
            same[i][j] += s
        total += t
    rates = [same[i][j] / total for i, j in itertools.combinations(range(n), 2)]
    return {"mean": round(statistics.mean(rates), 4), "sd": round(statistics.pstdev(rates), 4),
            "pairs_per_labeler_pair": total}


def gold_agreement(pool: LabelerPool, sets, rng: random.Random) -> dict:
    """Share of pairs a labeler orders like gold, by gold gap (ties excluded)."""
    hits = {name: [0, 0] for name, _, _ in GAP_BINS}
    ties = pairs = 0
    for prompt, cands in sets:
        gold = [gold_score(prompt, c) for c in cands]
        for lab in pool.labelers:
            pos = {item: p for p, item in enumerate(lab.rank(prompt, cands, rng))}
            for i, j in itertools.combinations(range(len(cands)), 2):
                pairs += 1
                gap = abs(gold[i] - gold[j])
                if gap == 0:
                    ties += 1
                    continue
                name = next(n for n, lo, hi in GAP_BINS if lo <= gap < hi)
                hits[name][0] += (pos[i] < pos[j]) == (gold[i] > gold[j])
                hits[name][1] += 1
    out = {name: {"agree": round(h / max(t, 1), 4), "share": round(t / pairs, 4)}
           for name, (h, t) in hits.items()}
    out["tied_share"] = round(ties / pairs, 4)
    return out


def measure(prompts: list[str], seed: int = 0, noise_scale: float = 1.0) -> dict:
    """The calibration numbers that world.json and docs/world.md report."""
    rng = random.Random(f"calibration-{seed}")
    sets = _sets(prompts, rng)
    train = LabelerPool.training(seed, noise_scale)
    held = LabelerPool.held_out(seed, noise_scale)
    gold = [gold_score(p, c) for p, cs in sets for c in cs]
    return {
        "n_prompts": len(sets),
        "training_agreement": labeler_agreement(train, sets, rng),
        "held_out_agreement": labeler_agreement(held, sets, rng),
        "training_vs_gold": gold_agreement(train, sets, rng),
        "held_out_vs_gold": gold_agreement(held, sets, rng),
        "candidates_gold_mean": round(statistics.mean(gold), 4),
    }
