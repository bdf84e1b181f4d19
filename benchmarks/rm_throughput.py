"""RM training throughput: the paper's K-way batching vs the same data as independent pairs.

    python benchmarks/rm_throughput.py            # small preset, K=9, 64 prompts, 2 threads

(a) K-way: a prompt with its K completions is one batch element; each completion is encoded
    once and the loss covers its C(K,2) pairs (rlhf.data.comparisons + kway_ranking_loss).
(b) pairwise: the same comparisons expanded to C(K,2) independent (chosen, rejected) pairs,
    each completion encoded again in every pair it is in, as pairwise trainers do (K=2 case).
Both use the same model, collate, rows per step (72 at K=9) and forward+backward+AdamW step, in
the plain layout (one row per completion; ``--shared-prompt`` for the RM's default layout).
A round is one pass over all comparisons; the steps of (a) and (b) are interleaved.
"""
from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForSequenceClassification

from rlhf.algos.ranking import kway_ranking_loss
from rlhf.data.comparisons import collate_comparisons
from rlhf.models.reward import completion_rewards

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"
PAD = 1


def synthetic(n: int, k: int, prompt_len: int, completion_len: int, vocab: int, seed: int = 0) -> list[dict]:
    """n prompts, each with k completions of completion_len +- 4 tokens, ranked best first = 0..k-1."""
    g = torch.Generator().manual_seed(seed)
    tokens = lambda m: torch.randint(2, vocab, (m,), generator=g).tolist()  # noqa: E731
    out = []
    for _ in range(n):
        completions = [tokens(completion_len + int(torch.randint(-4, 5, (1,), generator=g))) for _ in range(k)]
        out.append({"prompt": tokens(prompt_len), "completions": completions, "ranks": list(range(k))})
    return out


def as_pairs(data: list[dict]) -> list[dict]:
    """Each prompt's C(K,2) comparisons as separate K=2 elements (chosen first)."""
    return [{"prompt": d["prompt"], "completions": [d["completions"][i], d["completions"][j]], "ranks": [0, 1]}
            for d in data for i, j in itertools.combinations(range(len(d["ranks"])), 2)]


def step(model, opt, batch: dict) -> int:
    """One forward+backward+step; returns the number of comparisons (pairs) it learned from."""
    r = completion_rewards(model, batch, raw=True)
    rewards = r.new_zeros(batch["mask"].shape).index_put((batch["owner"], batch["slot"]), r)
    loss, stats = kway_ranking_loss(rewards, batch["ranks"], batch["mask"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return int(stats["total"])


def timed_steps(model, opt, batches: list[dict]) -> list[tuple[float, int]]:
    """(seconds, comparisons) of each forward+backward+step."""
    out = []
    for b in batches:
        t0 = time.perf_counter()
        n = step(model, opt, b)
        out.append((time.perf_counter() - t0, n))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small", help="a from-scratch preset in conf/model")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--completion-len", type=int, default=16)
    ap.add_argument("--batch-prompts", type=int, default=8, help="(a): prompts per step")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared-prompt", action="store_true", help="one row per prompt and its completions")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = OmegaConf.load(CONF / f"{args.model}.yaml")
    config = AutoConfig.for_model(**OmegaConf.to_container(preset.arch), vocab_size=preset.vocab_size,
                                  num_labels=1, pad_token_id=PAD, eos_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    data = synthetic(args.prompts, args.k, args.prompt_len, args.completion_len, preset.vocab_size)
    pair_batch = args.batch_prompts * args.k // 2  # (b) encodes as many rows per step as (a)
    batches = {"kway": [collate_comparisons(data[i:i + args.batch_prompts], PAD, args.shared_prompt)
                        for i in range(0, len(data), args.batch_prompts)]}
    pairs = as_pairs(data)
    batches["pairwise"] = [collate_comparisons(pairs[i:i + pair_batch], PAD, args.shared_prompt)
                           for i in range(0, len(pairs), pair_batch)]
    ratio = len(batches["pairwise"]) // len(batches["kway"])
    timed_steps(model, opt, batches["kway"][:3] + batches["pairwise"][:3])  # warmup
    steps = {"kway": [], "pairwise": []}
    for _ in range(args.rounds):  # a pass over all comparisons; machine noise hits both alike:
        # each (a) step is followed by the (b) steps over the same prompts' pairs
        for i, b in enumerate(batches["kway"]):
            steps["kway"] += timed_steps(model, opt, [b])
            steps["pairwise"] += timed_steps(model, opt, batches["pairwise"][i * ratio:(i + 1) * ratio])
    tput = {}
    for name, st in steps.items():
        secs, n = sum(t for t, _ in st), sum(c for _, c in st)
        rows = sum(b["input_ids"].shape[0] for b in batches[name]) * args.rounds
        med, tput[name] = statistics.median(t for t, _ in st), n / secs
        print(f"{name:8s}: {len(st)} steps, {n} comparisons, {rows} sequences encoded, {secs:.1f} s: "
              f"{n / secs:.0f} comparisons/s, {rows / secs:.0f} sequences/s (median step {med * 1e3:.0f} ms)")
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), K={args.k}, "
          f"{args.prompts} prompts, torch {torch.__version__}, {args.threads} threads, {platform.machine()}")
    print(f"K-way / pairwise comparisons per second: {tput['kway'] / tput['pairwise']:.2f}x")

if __name__ == "__main__":
    main()
