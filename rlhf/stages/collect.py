"""``stage=collect``: sample K completions per prompt from a policy, have the labeler rank them.

Writes ``comparisons_train.jsonl`` (from ``stage.train_prompts``) and ``comparisons_val.jsonl``
(from ``stage.val_prompts``) in the comparison format, so the RM reads them like user data.
The paper collects most comparisons on its supervised policies' own samples; measured here
(measured on the built-in world), offline comparisons leave the RM near chance on the policy's samples.
Prompts whose samples are all identical give no comparison: they are dropped and counted.
In a later round of iterated RLHF, ``stage.earlier`` names the previous round's
``comparisons_train.jsonl``: its records come first, so the RM trains on every comparison so far.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoTokenizer

from rlhf import feedback
from rlhf.data.formats import read_jsonl, write_jsonl
from rlhf.data.sources import data_file
from rlhf.handoff import provenance, save_json
from rlhf.models.build import load_causal_lm
from rlhf.models.generate import sample

log = logging.getLogger(__name__)


def collect(model, tok, labeler, prompts: list[str], cfg: DictConfig) -> tuple[list[dict], dict]:
    """Comparison records for ``prompts`` and counts of what was kept and dropped."""
    st = cfg.stage
    samples = sample(model, tok, prompts, cfg.data.template, n=st.num_samples,
                     max_new_tokens=cfg.data.max_response_tokens, temperature=st.temperature)
    records, counts = [], {"prompts": len(prompts), "dropped_fewer_than_2_distinct": 0, "completions": 0}
    for prompt, outs in zip(prompts, samples):
        distinct = list(dict.fromkeys(o for o in outs if o))[:9]  # K <= 9, as in the paper
        if len(distinct) < 2:
            counts["dropped_fewer_than_2_distinct"] += 1
            continue
        ranking = feedback.call_rank(labeler, prompt, distinct)
        records.append({"prompt": prompt, "completions": distinct, "ranking": ranking})
        counts["completions"] += len(distinct)
    counts["comparisons"] = len(records)
    return records, counts


def run(cfg: DictConfig, sdir: Path) -> dict:
    if not cfg.get("init"):
        raise ValueError("stage=collect samples from a policy: set init=<an SFT final/ directory>")
    torch.manual_seed(cfg.seed)
    tok, model = AutoTokenizer.from_pretrained(cfg.init), load_causal_lm(cfg.init, cfg)
    labeler = feedback.load(cfg.labeler)
    metrics = {}
    earlier = read_jsonl(cfg.stage.earlier, "comparison") if cfg.stage.earlier else []
    for split, key, limit in (("train", cfg.stage.train_prompts, cfg.stage.max_train_prompts),
                              ("val", cfg.stage.val_prompts, cfg.stage.max_val_prompts)):
        prompts = [r["prompt"] for r in read_jsonl(data_file(cfg, key), "prompt")][:limit]
        t0 = time.time()
        records, counts = collect(model, tok, labeler, prompts, cfg)
        if split == "train" and earlier:
            counts["earlier_comparisons"] = len(earlier)
            records = [*earlier, *records]
        write_jsonl(sdir / f"comparisons_{split}.jsonl", records)
        log.info("collect %s: %s in %.1fs", split, counts, time.time() - t0)
        metrics.update({f"{split}/{k}": v for k, v in counts.items()})
        metrics[f"{split}/mean_k"] = counts["completions"] / max(1, counts["comparisons"])
    save_json(sdir / "final", provenance(cfg, metrics, labeler=feedback.describe(labeler)))
    return metrics
