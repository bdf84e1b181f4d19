"""Write the built-in world to a directory, in the project's user JSONL formats.

Every product draws from its own random stream (`random.Random(f"{product}-{seed}")`), so
the same seed gives byte-identical files, and changing one size leaves the others alone.
"""
from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from .calibration import measure
from .candidates import candidates
from .corpus import make_corpus
from .gold import gold_score
from .labelers import LabelerPool
from .tasks import FAMILIES

# file -> kind of record (rlhf.data.formats.read_jsonl kinds)
FILES = {"pretrain_train": "text", "pretrain_val": "text", "sft_train": "demonstration",
         "sft_val": "demonstration", "prompts_rm": "prompt", "prompts_ppo": "prompt",
         "prompts_val": "prompt", "prompts_test": "prompt", "comparisons_offline": "comparison"}


def draw_prompts(families: list[str], sizes: dict[str, int], rng: random.Random) -> dict:
    """split -> [(family, prompt)]: disjoint by prompt text, every family in every split."""
    seen: set[str] = set()
    out = {}
    for split, n in sizes.items():
        if n < len(families):
            raise ValueError(f"{split}: {n} prompts cannot cover {len(families)} families")
        rows = []
        for i, name in enumerate(families):
            want, misses = n // len(families) + (i < n % len(families)), 0
            while want:
                prompt = FAMILIES[name].make(rng)
                if prompt in seen:
                    misses += 1
                    if misses > 5000:
                        used = sum(f == name for f, _ in rows) + sum(f == name for r in out.values() for f, _ in r)
                        raise ValueError(
                            f"family {name!r} ran out of distinct prompts drawing split {split!r}: "
                            f"{used} of its prompts are used and the splits want more; lower the "
                            f"world's sizes (data.world.n_rm, n_ppo, ...) or drop families")
                    continue
                seen.add(prompt)
                rows.append((name, prompt))
                want, misses = want - 1, 0  # out of prompts = 5,000 duplicates in a row
        rng.shuffle(rows)
        out[split] = rows
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _mean(xs) -> float:
    return round(statistics.mean(xs), 4) if xs else 0.0


def gold_summary(demos: list[dict], comparisons: list[dict], names: list[str]) -> dict:
    """Gold scores of the demonstrations (overall, by family) and of the offline candidates."""
    demo_gold = [gold_score(r["prompt"], r["completion"]) for r in demos]
    cand_gold = [[gold_score(c["prompt"], x) for x in c["completions"]] for c in comparisons]
    return {
        "best_achievable": 1.0,
        "demonstrations_mean": _mean(demo_gold),
        "demonstrations_by_family": {n: _mean([g for g, r in zip(demo_gold, demos) if r["family"] == n])
                                     for n in names},
        "offline_candidates_mean": _mean([g for gs in cand_gold for g in gs]),
        "offline_labeler_top1_mean": _mean([gs[c["ranking"][0]] for gs, c in zip(cand_gold, comparisons)]),
        "offline_best_mean": _mean([max(gs) for gs in cand_gold]),
    }


def write_world(out_dir, *, seed: int = 0, n_pretrain: int = 20000, n_pretrain_val: int = 1000,
                n_sft: int = 2000, n_sft_val: int = 200, n_rm: int = 2000, n_ppo: int = 1000,
                n_val: int = 250, n_test: int = 250, families: list[str] | None = None,
                labeler_noise: float = 1.0, n_calibration: int = 400) -> dict[str, Path]:
    """Write every file of the world to out_dir; returns {name: path} incl. "world"."""
    if isinstance(families, str):  # "arith,harmful" from a command line
        families = [f.strip() for f in families.split(",") if f.strip()]
    names = list(FAMILIES) if families is None else [f for f in FAMILIES if f in families]
    if families is not None and set(families) - set(names):
        raise ValueError(f"unknown families {sorted(set(families) - set(names))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"sft_train": n_sft, "sft_val": n_sft_val, "rm": n_rm, "ppo": n_ppo,
             "val": n_val, "test": n_test}
    prompts = draw_prompts(names, sizes, random.Random(f"prompts-{seed}"))
    pool = LabelerPool.training(seed, labeler_noise)

    rng = random.Random(f"demonstrations-{seed}")  # written by the training labelers
    demos = {s: [{"prompt": p, "completion": pool.demonstrate(p, rng), "family": f}
                 for f, p in prompts[s]] for s in ("sft_train", "sft_val")}

    rng = random.Random(f"comparisons-{seed}")  # K = 4..9 offline candidates, ranked
    comparisons = []
    for f, p in prompts["rm"]:
        cands = candidates(p, rng.randint(4, 9), rng)
        comparisons.append({"prompt": p, "completions": cands,
                            "ranking": pool.rank(p, cands, rng), "family": f})

    avoid = {p for rows in prompts.values() for _, p in rows}
    pre_train, pre_val = make_corpus(n_pretrain, n_pretrain_val,
                                     random.Random(f"corpus-{seed}"), names, avoid)
    rows = {
        "pretrain_train": [{"text": t} for t in pre_train],
        "pretrain_val": [{"text": t} for t in pre_val],
        **demos,
        **{f"prompts_{s}": [{"prompt": p, "family": f} for f, p in prompts[s]]
           for s in ("rm", "ppo", "val", "test")},
        "comparisons_offline": comparisons,
    }
    paths = {name: _write(out / f"{name}.jsonl", rows[name]) for name in FILES}

    info = {
        "seed": seed, "families": names, "labeler_noise": labeler_noise,
        "params": {"seed": seed, "n_pretrain": n_pretrain, "n_pretrain_val": n_pretrain_val, "n_sft": n_sft,
                   "n_sft_val": n_sft_val, "n_rm": n_rm, "n_ppo": n_ppo, "n_val": n_val, "n_test": n_test,
                   "families": families, "labeler_noise": labeler_noise, "n_calibration": n_calibration},
        "sizes": {"pretrain_train": n_pretrain, "pretrain_val": n_pretrain_val, **sizes},
        "files": {f"{name}.jsonl": kind for name, kind in FILES.items()},
        "counts": {s: {n: sum(f == n for f, _ in prompts[s]) for n in names} for s in sizes},
        "gold": gold_summary(demos["sft_train"], comparisons, names),
        "calibration": measure([p for _, p in prompts["rm"][:n_calibration]], seed, labeler_noise),
        "labelers": {"training": pool.params(),
                     "held_out": LabelerPool.held_out(seed, labeler_noise).params()},
    }
    paths["world"] = out / "world.json"
    paths["world"].write_text(json.dumps(info, indent=1) + "\n")
    return paths
