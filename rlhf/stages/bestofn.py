"""``stage=bestofn``: the cheap check before PPO. Does the RM pick better samples than chance?

For validation prompts, n samples each from the policy (``init``). The judge compares
(a) the RM's best of n and (b) the judge's own best of n against (c) one sample; with the
built-in world the gold score of each is reported too. If the RM's best of n is no better than
one sample, PPO against this RM is unlikely to beat SFT; the
log and the report say so plainly. Writes ``final/rlhf.json``: ``{pick}/win_rate_vs_one`` and
``{pick}/gold`` (mean, _lo, _hi) for pick in one_sample, rm_best, judge_best; ``rm_helps``;
``verdict`` (the plain sentence); ``n``, ``n_prompts`` and the judge.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoTokenizer

from rlhf import feedback
from rlhf.data.formats import read_jsonl
from rlhf.data.sources import data_source
from rlhf.eval.measure import judge_pairs, mean_ci, require_finite, rm_scores
from rlhf.handoff import provenance, save_json
from rlhf.models.build import inference_device, load_causal_lm
from rlhf.models.generate import sample
from rlhf.models.reward import load_reward_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig, sdir: Path) -> dict:
    st = cfg.stage
    if not cfg.get("init") or not st.get("reward_model"):
        raise ValueError("stage=bestofn needs init=<policy final/> and stage.reward_model=<RM final/>")
    torch.manual_seed(cfg.seed)
    prompts = [r["prompt"] for r in read_jsonl(data_source(cfg, st.prompts), "prompt")][: st.max_prompts]
    tok, model = AutoTokenizer.from_pretrained(cfg.init), load_causal_lm(cfg.init, cfg)
    groups = sample(model, tok, prompts, cfg.data.template, n=st.n,
                    max_new_tokens=cfg.data.max_response_tokens, temperature=st.temperature)
    rm = load_reward_model(st.reward_model, key="stage.reward_model").to(inference_device(cfg)).eval()
    rm_tok = AutoTokenizer.from_pretrained(st.reward_model)
    flat_p = [p for p in prompts for _ in range(st.n)]
    r = rm_scores(rm, rm_tok, flat_p, [o for g in groups for o in g], cfg.data.template).view(len(prompts), st.n)
    judge = feedback.load(cfg.judge)
    picks = {"one_sample": [g[0] for g in groups],
             "rm_best": [g[i] for g, i in zip(groups, r.argmax(-1).tolist())],
             "judge_best": [g[feedback.judge_rank(judge, p, g)[0]] for p, g in zip(prompts, groups)]}
    metrics, rng = {}, random.Random(cfg.seed)
    for name, texts in picks.items():
        figs = {"win_rate_vs_one": mean_ci(judge_pairs(judge, prompts, texts, picks["one_sample"], rng))}
        if cfg.data.get("world") is not None:
            from rlhf.data.world.gold import gold_score
            figs["gold"] = mean_ci([gold_score(p, t) for p, t in zip(prompts, texts)])
        for key, (m, lo, hi) in figs.items():
            metrics[f"{name}/{key}"], metrics[f"{name}/{key}_lo"], metrics[f"{name}/{key}_hi"] = m, lo, hi
    helps = metrics["rm_best/win_rate_vs_one_lo"] > 0.5  # the 95% interval lies above a coin flip
    metrics["rm_helps"] = float(helps)
    require_finite(metrics, f"{sdir}/final/rlhf.json")
    verdict = verdict_text(metrics, st.n)
    (log.info if helps else log.warning)("best-of-n: %s", verdict)
    save_json(sdir / "final", provenance(cfg, metrics, verdict=verdict, judge=feedback.describe(judge),
                                         n=st.n, n_prompts=len(prompts)))
    return metrics


def verdict_text(metrics: dict, n: int) -> str:
    """The plain sentence for the log and the report: does the RM's best of n beat one sample?"""
    win = metrics["rm_best/win_rate_vs_one"]
    gold = (f" Gold score: one sample {metrics['one_sample/gold']:.3f}, RM's best {metrics['rm_best/gold']:.3f}, "
            f"judge's best {metrics['judge_best/gold']:.3f}.") if "rm_best/gold" in metrics else ""
    if metrics["rm_helps"]:
        return (f"RM best-of-{n} beats one sample (win rate {win:.3f}): the RM ranks this policy's "
                f"samples usefully.{gold}")
    return (f"WARNING: the RM's best of {n} is no better than one sample (win rate {win:.3f}, 95% CI "
            f"includes 0.5): PPO against this RM is unlikely to beat SFT. More or better comparisons "
            f"come first.{gold}")
