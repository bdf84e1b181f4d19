"""PPO throughput: bare generate vs the rollout vs whole iterations; Lightning update vs plain PyTorch.

    python benchmarks/ppo_throughput.py          # small preset, random init, 64 episodes, 2 threads

Same models (the small preset's llama, random init, a 2k BPE, fp32) and settings throughout:
(a) bare ``policy.generate``: pure sampling, KV cache;
(b) the rollout phase, ``rlhf.rollout.rollout``: generate + policy / reference / value / RM passes,
    and, timed separately, the generation inside it (goal: >= 90% of (a)'s tokens/s);
(c) whole PPO iterations through ``rlhf-train stage=ppo`` (Lightning, manual optimisation), with
    the module's own split of each iteration into rollout and update seconds, and its generation;
(d) the update phase as a plain PyTorch loop (no Lightning): the same rlhf.algos math, the same
    minibatches, two Adams, grad clipping and the EMA, on rollouts of the same shape (goal: the
    Lightning update no more than 15% slower).
Each Lightning iteration is followed by one round of (a), (b), (d), so noise on this shared machine
hits both sides of each comparison; the first round is a warm-up; medians over the rest.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import AutoConfig, AutoModelForCausalLM

import rlhf.rollout
from rlhf.algos.logprobs import logprobs_from_logits
from rlhf.algos.ppo import gae, kl_penalized_rewards, policy_loss, value_loss
from rlhf.algos.stats import masked_whiten
from rlhf.data.formats import write_jsonl
from rlhf.data.prompts import PromptDataModule
from rlhf.models.reward import load_reward_model
from rlhf.models.tokenizer import train_bpe_tokenizer
from rlhf.rollout import response_logits, response_values, rollout, truncate_after_eos
from rlhf.train import CONF_DIR, train

SYLLABLES = [a + b for a in "bcdfghklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou")]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def make_run(root: Path, vocab: int, model: str) -> dict:
    """A random-init policy (as an 'SFT final/'), an RM from it, a prompt file; returns paths."""
    rng = random.Random(0)  # 3k made-up words: enough for a full 2k BPE; prompts of ~32 tokens
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(3000)]
    texts = [" ".join(rng.choices(words, k=rng.randint(18, 26))) for _ in range(2000)]
    tok = train_bpe_tokenizer(texts, vocab)
    preset = OmegaConf.load(Path(CONF_DIR) / "model" / f"{model}.yaml")
    config = AutoConfig.for_model(**OmegaConf.to_container(preset.arch), vocab_size=len(tok),
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    for d, m in (("sft", AutoModelForCausalLM.from_config(config)), ("rm", None)):
        m = m if m is not None else load_reward_model(str(root / "sft"))
        m.save_pretrained(root / d)
        tok.save_pretrained(root / d)
    write_jsonl(root / "prompts.jsonl", [{"prompt": t} for t in texts[:1024]])
    return {"sft": root / "sft", "rm": root / "rm", "prompts": root / "prompts.jsonl", "tok": tok}


def plain_update(policy, value, ema, opts, ro, value_mask, adv, ret, minibatch: int, temperature=1.0) -> None:
    """One PPO update phase in plain PyTorch (what PPOModule._update does, minus Lightning)."""
    for idx in torch.randperm(len(adv)).split(minibatch):
        mb = ro.select(idx)
        q = (mb.query_ids, mb.query_mask, mb.response_ids, mb.response_mask)
        lp = logprobs_from_logits(response_logits(policy, *q), mb.response_ids, temperature)
        pg, _ = policy_loss(lp, mb.logprobs, adv[idx], mb.response_mask, 0.2)
        vf, _ = value_loss(response_values(value, *q), mb.values, ret[idx], value_mask[idx], 0.2)
        (pg + 0.1 * vf).backward()
        for model, opt in zip((policy, value), opts):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        ema.update_parameters(policy)


class GenerationTimer:
    """Wraps ``rlhf.rollout.sample_responses`` to time the generation inside every rollout."""

    def __init__(self, eos_id: int, pad_id: int):
        self.real, self.eos_id, self.pad_id = rlhf.rollout.sample_responses, eos_id, pad_id
        self.last = (0.0, 0)
        rlhf.rollout.sample_responses = self

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.real(*args, **kwargs)
        self.last = (time.perf_counter() - t0, int(truncate_after_eos(out, self.eos_id, self.pad_id)[1].sum()))
        return out


class Paired(pl.Callback):
    """After each Lightning iteration, one round of the plain measurements, so machine noise
    (this 2-core machine is shared) hits both sides of every comparison alike."""

    def __init__(self, plain_round, gen_timer: GenerationTimer):
        self.plain_round, self.gen_timer, self.rows = plain_round, gen_timer, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        m, (gen_s, gen_n) = trainer.callback_metrics, self.gen_timer.last
        row = {"wall": time.perf_counter() - self.t0, "rollout": float(m["time/rollout_s"]),
               "update": float(m["time/update_s"]), "pl_generate": gen_n / gen_s, **self.plain_round()}
        self.rows.append(row)
        print(f"iteration {len(self.rows) - 1}: Lightning {row['wall']:.2f} s (rollout {row['rollout']:.2f} s, "
              f"its generate {row['pl_generate']:.0f} tok/s, update {row['update']:.2f} s) | bare generate "
              f"{row['generate']:.0f} tok/s | rollout {row['rollout_s']:.2f} s, its generate "
              f"{row['rollout_generate']:.0f} tok/s | plain update {row['plain_update']:.2f} s", flush=True)


def lightning_run(run: dict, root: Path, args, callback: pl.Callback) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("train", overrides=[
            "stage=ppo", "data=files", f"data.files.prompts_ppo={run['prompts']}", f"init={run['sft']}",
            f"stage.reward_model={run['rm']}", f"output_root={root}", "run_name=bench", "logger=csv",
            f"stage.batch_size={args.batch}", f"stage.minibatch_size={args.minibatch}",
            f"stage.max_new_tokens={args.new_tokens}", f"trainer.max_steps={args.iterations}",
            "stage.save_every_n_steps=1000", "stage.log_samples_every=0", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", "trainer.devices=1", "stage.optim.lr=1e-5"])
    train(cfg, callbacks=[callback])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64, help="episodes per iteration")
    ap.add_argument("--minibatch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--iterations", type=int, default=8, help="paired rounds (the first is a warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="ppo_bench_"))
    run = make_run(root, args.vocab, args.model)
    tok = run["tok"]
    dm = PromptDataModule(tok, str(run["prompts"]), args.batch, "{prompt}\n", 1024, None)
    dm.setup()
    batch = dm.batch(0)
    q, qm = batch["input_ids"], batch["attention_mask"]
    policy = AutoModelForCausalLM.from_pretrained(run["sft"]).train()
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    rm = load_reward_model(str(run["rm"])).requires_grad_(False).eval()
    value = copy.deepcopy(rm).requires_grad_(True).train()
    ema = AveragedModel(policy, multi_avg_fn=get_ema_multi_avg_fn(0.992)).requires_grad_(False)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-5) for m in (policy, value)]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"model {args.model} ({n_params / 1e6:.2f}M params, vocab {len(tok)}), {args.batch} episodes, "
          f"prompts {q.shape[1]} tokens (left-padded), <= {args.new_tokens} new tokens, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    gen_timer = GenerationTimer(eos, pad)

    def plain_round() -> dict:
        out = {}
        with torch.no_grad():  # (a) what a user would call: no rlhf code in the way
            t0 = time.perf_counter()
            ids = policy.generate(input_ids=q, attention_mask=qm, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                  max_new_tokens=args.new_tokens, eos_token_id=eos, pad_token_id=pad)[:, q.shape[1]:]
            out["generate"] = int(truncate_after_eos(ids, eos, pad)[1].sum()) / (time.perf_counter() - t0)
        t0 = time.perf_counter()  # (b)
        info = rollout(policy, reference, value, rm, q, qm, max_new_tokens=args.new_tokens, temperature=1.0,
                     eos_id=eos, pad_id=pad, missing_eos_penalty=-1.0)
        out["rollout_s"] = time.perf_counter() - t0
        ro = info.rollout
        out["rollout_tokens"] = int(ro.response_mask.sum())
        out["rollout_generate"] = gen_timer.last[1] / gen_timer.last[0]
        rewards, _ = kl_penalized_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, ro.response_mask, 0.02)
        adv, ret = gae(rewards, ro.values, info.value_mask, 1.0, 0.95)
        adv = masked_whiten(adv, ro.response_mask)
        t0 = time.perf_counter()  # (d)
        plain_update(policy, value, ema, opts, ro, info.value_mask, adv, ret, args.minibatch)
        out["plain_update"] = time.perf_counter() - t0
        return out

    paired = Paired(plain_round, gen_timer)
    lightning_run(run, root, args, paired)
    rows, med = paired.rows[1:], statistics.median  # the first round is a warm-up
    gen = med(r["generate"] for r in rows)
    roll = med(r["rollout_tokens"] / r["rollout_s"] for r in rows)
    print(f"\nmodel {args.model} ({n_params / 1e6:.2f}M params), {args.batch} episodes x <= {args.new_tokens} "
          f"tokens, minibatch {args.minibatch}, torch {torch.__version__}, {args.threads} threads, "
          f"{cpu_name()}, load average now {os.getloadavg()[0]:.2f}; medians of {len(rows)} paired rounds")
    print(f"(a) bare generate: {gen:.0f} generated tokens/s")
    print(f"(b) rollout phase: {roll:.0f} generated tokens/s, {med(args.batch / r['rollout_s'] for r in rows):.1f} "
          f"episodes/s ({roll / gen:.0%} of bare generate); its generation "
          f"{med(r['rollout_generate'] / r['generate'] for r in rows):.0%} of bare (goal >= 90%)")
    print(f"(c) Lightning PPO iteration: {med(r['wall'] for r in rows):.2f} s = "
          f"{med(args.batch / r['wall'] for r in rows):.1f} episodes/s "
          f"(rollout {med(r['rollout'] for r in rows):.2f} s + update {med(r['update'] for r in rows):.2f} s); "
          f"its generation "          f"{med(r['pl_generate'] / r['generate'] for r in rows):.0%} of bare")
    print(f"(d) update phase: Lightning {med(r['update'] for r in rows):.2f} s vs plain PyTorch "
          f"{med(r['plain_update'] for r in rows):.2f} s per iteration; paired ratio "
          f"{med(r['update'] / r['plain_update'] for r in rows) - 1:+.0%} (goal <= +15%)")


if __name__ == "__main__":
    main()
