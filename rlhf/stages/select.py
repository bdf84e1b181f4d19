"""``stage=select``: pick the SFT epoch whose samples the RM scores highest (paper §3.5).

SFT overfits on validation loss after one epoch, yet later epochs score better with the RM
and with labelers, so the paper selects by RM score on validation prompts. ``init`` is the SFT
stage directory's ``final/``; its ``epochs/epoch_N/`` exports are the candidates.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoTokenizer

from rlhf.data.formats import read_jsonl
from rlhf.data.sources import data_source
from rlhf.eval.measure import rm_scores
from rlhf.handoff import provenance, save_json
from rlhf.models.build import inference_device, load_causal_lm
from rlhf.models.generate import sample
from rlhf.models.reward import load_reward_model

log = logging.getLogger(__name__)


def candidates(sft_final: Path) -> list[Path]:
    epochs = sorted((sft_final.parent / "epochs").glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
    return epochs or [sft_final]


def run(cfg: DictConfig, sdir: Path) -> dict:
    st = cfg.stage
    if not cfg.get("init") or not st.get("reward_model"):
        raise ValueError("stage=select needs init=<SFT final/> and stage.reward_model=<RM final/>")
    prompts = [r["prompt"] for r in read_jsonl(data_source(cfg, st.prompts), "prompt")][: st.max_prompts]
    rm = load_reward_model(st.reward_model, key="stage.reward_model").to(inference_device(cfg)).eval()
    rm_tok = AutoTokenizer.from_pretrained(st.reward_model)
    scores = {}
    for path in candidates(Path(cfg.init)):
        torch.manual_seed(cfg.seed)  # the same sampling noise for every epoch
        tok, model = AutoTokenizer.from_pretrained(path), load_causal_lm(path, cfg)
        outs = [r for rs in sample(model, tok, prompts, cfg.data.template, n=st.samples_per_prompt,
                                   max_new_tokens=cfg.data.max_response_tokens, temperature=st.temperature)
                for r in rs]
        flat = [p for p in prompts for _ in range(st.samples_per_prompt)]
        scores[str(path)] = float(rm_scores(rm, rm_tok, flat, outs, cfg.data.template).mean())
        log.info("select: %s scores %.4f", path, scores[str(path)])
    best = max(scores, key=scores.get)
    metrics = {"best_rm_score": scores[best], "n_candidates": len(scores)}
    save_json(sdir / "final", provenance(cfg, metrics, selected=best, rm_scores=scores))
    return metrics
