"""Peak memory of a PPO iteration: LoRA (``model.lora.r``) vs full fine-tuning, same models and settings.

    python benchmarks/lora_memory.py                      # ~86M-parameter llama, random init, 1 iteration

A random-init llama (``--hidden``, ``--layers``; 86.5M parameters by default, a 2k BPE) is saved as
the "SFT final/" and, with a fresh score head, as the RM; then ``rlhf-train stage=ppo`` runs one
iteration (``--batch`` episodes of ``--new-tokens`` sampled tokens, minibatches of ``--minibatch``)
twice, full fine-tuning and LoRA, each in a fresh process (the parent holds no model: Linux keeps
a parent's peak RSS across fork + exec). Measured in each: the peak during the iteration (CPU: the
RSS high-water mark, ``VmHWM``, reset at the iteration's start through ``/proc/self/clear_refs``,
so it counts the imports, ~0.4 GiB, printed beside; CUDA: ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats``); the export that follows is not counted. The RSS after set-up
is not compared: frozen weights loaded from safetensors stay file-mapped until first read.
Full fine-tuning holds policy, reference, EMA, value model and RM whole and, once it steps,
gradients and two Adam moments for policy and value model; LoRA one base for policy and
reference, one for value model and RM, and the adapters with their gradients and moments.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MB = 2**20
SYLLABLES = [a + b for a in "bcdfghklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou")]


def rss_mb(field: str = "VmRSS") -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: the peak), MiB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def make_models(root: Path, args) -> None:
    """A random-init policy saved as an 'SFT final/', the RM from it (fresh head), a prompt file."""
    import random

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf.data.formats import write_jsonl
    from rlhf.models.reward import load_reward_model
    from rlhf.models.tokenizer import train_bpe_tokenizer

    rng = random.Random(0)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(3000)]
    texts = [" ".join(rng.choices(words, k=rng.randint(18, 26))) for _ in range(600)]
    tok = train_bpe_tokenizer(texts, 2048)
    config = AutoConfig.for_model(model_type="llama", hidden_size=args.hidden, num_hidden_layers=args.layers,
                                  num_attention_heads=args.hidden // 64, intermediate_size=args.hidden * 8 // 3,
                                  max_position_embeddings=256, tie_word_embeddings=True, vocab_size=len(tok),
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config)
    policy.save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    rm = load_reward_model(str(root / "sft"), fresh_head=True)
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    write_jsonl(root / "prompts.jsonl", [{"prompt": t} for t in texts[:256]])
    print(json.dumps({"params": sum(p.numel() for p in policy.parameters())}), flush=True)


def child(root: Path, kind: str, args) -> None:
    """One PPO iteration, full fine-tuning or LoRA; prints a JSON line with the memory figures."""
    import lightning.pytorch as pl
    import torch
    from hydra import compose, initialize_config_dir

    from rlhf.train import CONF_DIR, train

    cuda = torch.cuda.is_available()

    class Iteration(pl.Callback):
        def on_train_start(self, trainer, module):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS

        def on_train_end(self, trainer, module):  # before the export
            self.peak = torch.cuda.max_memory_allocated() / MB if cuda else rss_mb("VmHWM")

    imports = rss_mb()  # the process's RSS, CPU or CUDA
    lora = [f"model.lora.r={args.r}", f"model.lora.alpha={2 * args.r}"] if kind == "lora" else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("train", overrides=[
            "stage=ppo", "data=files", f"data.files.prompts_ppo={root / 'prompts.jsonl'}", f"init={root / 'sft'}",
            f"stage.reward_model={root / 'rm'}", f"output_root={root}", f"run_name={kind}", "logger=csv",
            f"stage.batch_size={args.batch}", f"stage.minibatch_size={args.minibatch}",
            f"stage.max_new_tokens={args.new_tokens}", "trainer.max_steps=1", "stage.eval_every=0",
            "stage.save_every_n_steps=1000", "stage.save_every_minutes=1000", "stage.log_samples_every=0",
            "trainer.enable_progress_bar=false", "stage.optim.lr=1e-5", *lora])
    it = Iteration()
    _, objs = train(cfg, callbacks=[it])
    module = objs["module"]
    device = f"CUDA {torch.cuda.get_device_name()}: allocated by torch" if cuda else "CPU: resident set size"
    print(json.dumps({"kind": kind, "device": f"torch {torch.__version__}, {device}", "imports_mb": imports,
                      "peak_mb": it.peak, "params": sum(p.numel() for p in module.parameters()),
                      "trained": sum(p.numel() for p in module.parameters() if p.requires_grad)}), flush=True)


def run(args, *extra: str) -> dict:
    """This script again in a fresh process; its last JSON line."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:], *extra], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"{' '.join(extra)} failed:\n{out.stderr[-4000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2r, every linear layer)")
    ap.add_argument("--batch", type=int, default=8, help="episodes per iteration")
    ap.add_argument("--minibatch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--child", choices=("make", "full", "lora"), help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "make":
        return make_models(Path(args.root), args)
    if args.child:
        return child(Path(args.root), args.child, args)
    with tempfile.TemporaryDirectory() as tmp:
        made = run(args, "--child", "make", "--root", tmp)
        rows = {kind: run(args, "--child", kind, "--root", tmp) for kind in ("full", "lora")}
    print(f"llama {args.layers} layers x {args.hidden} wide, {made['params'] / 1e6:.1f}M parameters, fp32; "
          f"{args.batch} episodes of {args.new_tokens} tokens, minibatch {args.minibatch}; "
          f"LoRA r={args.r} on every linear; {rows['full']['device']}")
    print(f"{'':5} {'params held':>12} {'trained':>9} {'after imports':>14} {'iteration peak':>15} "
          f"{'above imports':>14}")
    for kind, r in rows.items():
        print(f"{kind:5} {r['params'] / 1e6:11.1f}M {r['trained'] / 1e6:8.2f}M {r['imports_mb']:10.0f} MiB "
              f"{r['peak_mb']:11.0f} MiB {r['peak_mb'] - r['imports_mb']:10.0f} MiB")
    full, lora = rows["full"], rows["lora"]
    print(f"LoRA's iteration peak: {lora['peak_mb'] / full['peak_mb']:.0%} of full fine-tuning's "
          f"({full['peak_mb'] - lora['peak_mb']:.0f} MiB less)")


if __name__ == "__main__":
    main()
