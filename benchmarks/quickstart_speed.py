"""Where the Quick start's time goes, and each change against the code before it, in one run.

    python benchmarks/quickstart_speed.py --run outputs/quickstart     # after its collect step

Reads the run's world (RM prompts, pretraining texts), its SFT ``final/`` and the comparisons its
collect step wrote, and times the three hot loops on that real data, each in its old and its new
form, interleaved round by round so machine noise hits both alike (medians over rounds after a
warm-up, and the median of the per-round ratios):

(1) RM training step (forward + backward + AdamW) on ``--rm-batch`` comparisons of K completions:
    one row per completion, right-padded (old) vs the prompt once per row with its K completions
    (``rlhf.data.comparisons``, new);
(2) sampling ``--samples`` completions for each of ``--prompts`` prompts with the SFT policy (what
    collection, best-of-n and eval do): HF ``generate`` (old) vs ``rlhf.models.generate.decode``,
    which drops finished rows (new); the same for the PPO rollout phase (``rlhf.rollout.rollout``,
    generation plus the four scoring passes) on ``--prompts`` prompts;
(3) LM training step on ``--lm-batch`` pretraining texts (the pretrain stage) and on one PPO-ptx
    optimizer step's texts: right-padded (old) vs packed (new).

For each it also prints the profile that motivated the change: the share of computed token
slots that are real tokens, repeated prompts, padding, or rows that had already ended.
"""
from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from rm_throughput import step as rm_step  # the RM's forward+backward+AdamW step (this folder)
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import rlhf.rollout
from rlhf.algos.lm_loss import lm_loss
from rlhf.data.comparisons import collate_comparisons, encode_comparisons
from rlhf.data.formats import read_jsonl
from rlhf.data.lm import Counts, collate_lm, encode_texts
from rlhf.models.generate import decode
from rlhf.models.reward import load_reward_model
from rlhf.models.tokenizer import render_prompt
from rlhf.modules.lm import lm_logits

TEMPLATE = "{prompt}\n"


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(name: str, old, new, rounds: int) -> dict:
    """Time old() and new() alternately; print medians and the median per-round ratio old/new."""
    old(), new()  # warm-up
    t = {"old": [], "new": []}
    for r in range(rounds):
        order = (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old))
        for key, fn in order:
            t[key].append(timed(fn))
    m_old, m_new = statistics.median(t["old"]), statistics.median(t["new"])
    ratio = statistics.median(o / n for o, n in zip(t["old"], t["new"]))
    print(f"  {name}: old {m_old:.3f} s, new {m_new:.3f} s  ->  {ratio:.2f}x faster (median of {rounds} paired rounds)")
    return {"old": m_old, "new": m_new, "ratio": ratio}


def compare_steps(name: str, step, model, opt, batches: dict, rounds: int) -> dict:
    """:func:`compare` of training ``step`` over the old layout's batches (``batches[False]``) and
    the new one's (``batches[True]``)."""
    return compare(name, lambda: [step(model, opt, b) for b in batches[False]],
                   lambda: [step(model, opt, b) for b in batches[True]], rounds)


def rm_section(args, run: Path, tok, device) -> None:
    recs = read_jsonl(run / "collect" / "comparisons_train.jsonl", "comparison")[:args.rm_batch * 4]
    data = encode_comparisons(recs, tok, TEMPLATE, 96, 48, Counts())
    model = load_reward_model(str(run / "sft" / "final")).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batches = {s: [{k: v.to(device) for k, v in collate_comparisons(data[i:i + args.rm_batch], tok.pad_token_id, s).items()}
                   for i in range(0, len(data), args.rm_batch)] for s in (False, True)}
    P = sum(len(d["prompt"]) for d in data)
    C = sum(len(c) for d in data for c in d["completions"])
    K = sum(len(d["completions"]) for d in data)
    plain = sum(b["input_ids"].numel() for b in batches[False])
    shared = sum(b["input_ids"].numel() for b in batches[True])
    print(f"(1) RM step, {args.rm_batch} prompts x K={K / len(data):.1f} completions per batch "
          f"(prompt {P / len(data):.1f} tokens, completion {C / K:.1f} on average)")
    repeated = sum(len(d["prompt"]) * len(d["completions"]) for d in data)
    print(f"  token slots per batch, one row per completion: {plain / len(batches[False]):.0f} = "
          f"{C / plain:.0%} completions, {repeated / plain:.0%} the prompt K times, "
          f"{1 - (C + repeated) / plain:.0%} padding")
    print(f"  token slots per batch, prompt shared: {shared / len(batches[True]):.0f} "
          f"({shared / plain:.0%} of the above; {(C + P) / shared:.0%} real tokens)")

    t = compare_steps(f"{len(batches[True])} RM steps", rm_step, model, opt, batches, args.rounds)
    print(f"  comparisons (prompts) per second: old {len(data) / t['old']:.0f}, new {len(data) / t['new']:.0f}")


def lm_step(model, opt, batch: dict) -> None:
    """One forward+backward+AdamW step of the LM loss on a padded or packed batch."""
    loss = lm_loss(lm_logits(model, batch), batch["labels"])[0]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def hf_sample(policy, ids, mask, max_new, temperature, eos, pad):
    """The old sampler: HF generate, finished rows kept until the last one ends."""
    gen = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new,
                           eos_token_id=eos, pad_token_id=pad, use_cache=True)
    return policy.generate(input_ids=ids, attention_mask=mask, generation_config=gen)[:, ids.shape[1]:]


def sampling_section(args, run: Path, tok, device) -> None:
    policy = AutoModelForCausalLM.from_pretrained(run / "sft" / "final").to(device).eval()
    prompts = [r["prompt"] for r in read_jsonl(run / "world" / "prompts_rm.jsonl", "prompt")][:args.prompts]
    tok.padding_side = "left"
    enc = tok([render_prompt(tok, p, TEMPLATE) for p in prompts], return_tensors="pt", padding=True,
              add_special_tokens=False).to(device)
    ids, mask = enc["input_ids"].repeat_interleave(args.samples, 0), enc["attention_mask"].repeat_interleave(args.samples, 0)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(0)
    out = decode(policy, ids, mask, 48, 1.0, eos, pad)
    lengths = (out != pad).sum(-1).float()
    print(f"(2) sampling {args.prompts} prompts x {args.samples} samples, at most 48 tokens: mean length "
          f"{lengths.mean():.1f}, longest {int(lengths.max())}; generate computes every row for the batch's "
          f"longest sample: {lengths.sum() / (len(lengths) * lengths.max()):.0%} of its row-steps are real tokens")
    t = compare("sampling", lambda: hf_sample(policy, ids, mask, 48, 1.0, eos, pad),
                lambda: decode(policy, ids, mask, 48, 1.0, eos, pad), args.rounds)
    print(f"  sampled tokens/s: old {lengths.sum() / t['old']:.0f}, new {lengths.sum() / t['new']:.0f}")
    rm = load_reward_model(str(run / "sft" / "final")).to(device).eval()  # an RM's shape; its head is untrained
    q, qm = enc["input_ids"], enc["attention_mask"]
    kw = dict(max_new_tokens=48, temperature=1.0, eos_id=eos, pad_id=pad, missing_eos_penalty=-1.0)
    new_sampler = rlhf.rollout.sample_responses

    def ppo_rollout(sampler):
        def go():
            rlhf.rollout.sample_responses = sampler
            try:
                rlhf.rollout.rollout(policy, policy, rm, rm, q, qm, **kw)
            finally:
                rlhf.rollout.sample_responses = new_sampler
        return go
    compare(f"PPO rollout of {len(prompts)} episodes (generation + 4 scoring passes)",
            ppo_rollout(hf_sample), ppo_rollout(new_sampler), args.rounds)


def lm_section(args, run: Path, tok, device) -> None:
    texts = read_jsonl(run / "world" / "pretrain_train.jsonl", "text")
    docs = encode_texts(random.Random(0).sample(texts, 4 * args.lm_batch), tok, 144, Counts())
    model = AutoModelForCausalLM.from_pretrained(run / "sft" / "final").to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for name, size in ((f"pretraining batch of {args.lm_batch} texts", args.lm_batch),
                       (f"PPO-ptx step's {args.ptx_batch} texts", args.ptx_batch)):
        batches = {p: [{k: v.to(device) for k, v in collate_lm(docs[i:i + size], tok.pad_token_id, p).items()}
                       for i in range(0, len(docs), size)] for p in (False, True)}
        real = sum(len(d["input_ids"]) for d in docs[:len(batches[False]) * size])
        slots = {p: sum(b["input_ids"].numel() for b in batches[p]) for p in batches}
        print(f"(3) LM step, {name}: real tokens are {real / slots[False]:.0%} of a padded batch's slots, "
              f"{real / slots[True]:.0%} of a packed one's")

        t = compare_steps(f"{len(batches[True])} steps", lm_step, model, opt, batches, args.rounds)
        print(f"  trained tokens/s: old {real / t['old']:.0f}, new {real / t['new']:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="outputs/quickstart", help="a run dir with world/, sft/final, collect/")
    ap.add_argument("--rm-batch", type=int, default=32, help="prompts per RM step (the Quick start's)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per sampling batch (collection's)")
    ap.add_argument("--samples", type=int, default=9, help="samples per prompt (the Quick start's K)")
    ap.add_argument("--lm-batch", type=int, default=64, help="texts per pretraining step (the Quick start's)")
    ap.add_argument("--ptx-batch", type=int, default=128, help="texts per PPO-ptx optimizer step (8 x 16)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("rm", "sampling", "lm"), action="append")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = Path(args.run)
    tok = AutoTokenizer.from_pretrained(run / "sft" / "final")
    print(f"{run}: torch {torch.__version__}, {device}, {args.threads} threads, {platform.processor() or platform.machine()}")
    sections = {"rm": rm_section, "sampling": sampling_section, "lm": lm_section}
    for key in args.only or sections:
        sections[key](args, run, tok, device)


if __name__ == "__main__":
    main()
