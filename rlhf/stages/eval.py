"""``stage=eval``: the paper's evaluation on held-out prompts.

For each model in ``stage.models`` (base, SFT, PPO, PPO-ptx; plus the base with a few-shot
"prompted" prefix): ``samples_per_prompt`` responses per test prompt, then
- win rate against the reference (SFT) as judged by the ``judge`` (ties count half), 95% CI;
- gold score (built-in world only) and RM score (if ``stage.reward_model`` is set);
- KL to the reference: mean over the model's own samples of log pi(y|x) - log pi_ref(y|x);
- alignment tax: pretraining-validation loss minus the reference's.
With ``stage.best_of_n`` = n and an RM, the cheap alternative to PPO is evaluated beside it:
``best_of_n``, the reference's own best of n samples by the RM (its KL to the reference is the
analytic log n - (n-1)/n). With the built-in world, each method's gold score per task family.
Writes ``samples.jsonl`` (responses side by side) and ``final/rlhf.json`` (every figure).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoTokenizer

from rlhf import feedback
from rlhf.algos.kl import best_of_n_kl
from rlhf.data.formats import read_jsonl, write_jsonl
from rlhf.data.sources import data_source
from rlhf.eval.measure import (few_shot, judge_pairs, mean_ci, require_finite, response_logprobs,
                               rm_scores, text_loss)
from rlhf.handoff import provenance, save_json
from rlhf.models.build import inference_device, load_causal_lm
from rlhf.models.generate import sample

log = logging.getLogger(__name__)


def run(cfg: DictConfig, sdir: Path) -> dict:
    st, template = cfg.stage, cfg.data.template
    models = {k: v for k, v in st.models.items() if v}
    if st.reference not in models:
        raise ValueError(f"stage.models.{st.reference} (the reference every model is compared with) is not set")
    torch.manual_seed(cfg.seed)
    prompts = [r["prompt"] for r in read_jsonl(data_source(cfg, st.prompts), "prompt")][: st.max_prompts]
    texts = [r["text"] for r in read_jsonl(data_source(cfg, st.pretrain_val), "text")][: st.max_pretrain_texts]
    flat = [p for p in prompts for _ in range(st.samples_per_prompt)]
    runs = {name: (path, template, prompts) for name, path in models.items()}
    if st.prompted and "base" in models:
        demos = read_jsonl(data_source(cfg, "sft_train"), "demonstration")[: st.prompted_shots]
        shot_prompts, shot_template = few_shot(demos, prompts, template)
        runs["prompted"] = (models["base"], shot_template, shot_prompts)
    ref_path, max_tokens = models[st.reference], cfg.data.max_prompt_tokens + cfg.data.max_response_tokens
    ref_tok, ref = AutoTokenizer.from_pretrained(ref_path), load_causal_lm(ref_path, cfg)
    ref_loss = text_loss(ref, ref_tok, texts, max_tokens)
    responses, stats = {}, {}
    for name, (path, tmpl, shown) in runs.items():  # one model in memory at a time, beside the reference
        torch.manual_seed(cfg.seed)  # each model's samples depend on it and the seed, not on the others'
        tok, model = AutoTokenizer.from_pretrained(path), load_causal_lm(path, cfg)
        outs = sample(model, tok, shown, tmpl, n=st.samples_per_prompt,
                      max_new_tokens=cfg.data.max_response_tokens, temperature=st.temperature)
        res = responses[name] = [r for rs in outs for r in rs]
        shown = [p for p in shown for _ in range(st.samples_per_prompt)]
        kl = response_logprobs(model, tok, shown, res, tmpl) - response_logprobs(ref, ref_tok, shown, res, tmpl)
        pt = text_loss(model, tok, texts, max_tokens)
        stats[name] = {"kl_to_ref": mean_ci(kl.tolist()), "pretrain_val_loss": (pt,) * 3,
                       "alignment_tax": (pt - ref_loss,) * 3}
        log.info("eval: sampled %d responses from %s", len(flat), name)

    judge, gold = feedback.load(cfg.judge), cfg.data.get("world") is not None
    rm = rm_tok = None
    if st.get("reward_model"):
        from rlhf.models.reward import load_reward_model
        rm = load_reward_model(st.reward_model, key="stage.reward_model").to(inference_device(cfg)).eval()
        rm_tok = AutoTokenizer.from_pretrained(st.reward_model)
    if st.best_of_n and rm is not None:
        torch.manual_seed(cfg.seed)
        responses["best_of_n"] = best_of_n(ref, ref_tok, rm, rm_tok, prompts, st, cfg.data.max_response_tokens, template)
        stats["best_of_n"] = {"kl_to_ref": (best_of_n_kl(st.best_of_n),) * 3,
                              "pretrain_val_loss": (ref_loss,) * 3, "alignment_tax": (0.0,) * 3}
        runs["best_of_n"] = (ref_path, template, prompts)
        log.info("eval: best of %d of %s's samples by the RM, for %d prompts", st.best_of_n, st.reference, len(flat))
    elif st.best_of_n:
        log.warning("stage.best_of_n=%d but stage.reward_model is not set: no best-of-n baseline", st.best_of_n)
    metrics, families = {}, {}
    for name, res in responses.items():
        # a fresh judge and order per method: each method's win rate depends on its own samples, the
        # seed and the judge, not on which methods were judged before it (the same noise for all)
        judge = feedback.load(cfg.judge)
        m = {"win_rate": mean_ci(judge_pairs(judge, flat, res, responses[st.reference], random.Random(cfg.seed)))}
        if gold:
            from rlhf.data.world.gold import gold_prefer, gold_score
            m["gold"] = mean_ci([gold_score(p, r) for p, r in zip(flat, res)])
            m["gold_win_rate"] = mean_ci([gold_prefer(p, a, b) for p, a, b in zip(flat, res, responses[st.reference])])
            families[name] = family_gold(flat, res)
        if rm is not None:
            m["rm"] = mean_ci(rm_scores(rm, rm_tok, flat, res, template).tolist())
        m.update(stats[name])
        for key, (mean, lo, hi) in m.items():
            metrics[f"{name}/{key}"], metrics[f"{name}/{key}_lo"], metrics[f"{name}/{key}_hi"] = mean, lo, hi
        log.info("eval %s: %s", name, {k: round(v[0], 4) for k, v in m.items()})
    require_finite({"metrics": metrics, "families": families}, f"{sdir}/final/rlhf.json")
    write_jsonl(sdir / "samples.jsonl", ({"prompt": p, **{n: responses[n][i] for n in runs}}
                                         for i, p in enumerate(flat)))
    save_json(sdir / "final", provenance(cfg, metrics, judge=feedback.describe(judge), models=dict(models),
                                         n_prompts=len(prompts), samples_per_prompt=st.samples_per_prompt,
                                         best_of_n=st.best_of_n if "best_of_n" in responses else None,
                                         families=families))
    return metrics


def best_of_n(model, tok, rm, rm_tok, prompts: list[str], st, max_new_tokens: int, template: str) -> list[str]:
    """For each prompt, ``samples_per_prompt`` picks, each the RM's best of ``best_of_n`` fresh samples."""
    n, s = st.best_of_n, st.samples_per_prompt
    groups = sample(model, tok, prompts, template, n=n * s, max_new_tokens=max_new_tokens, temperature=st.temperature)
    cands = [g[j * n:(j + 1) * n] for g in groups for j in range(s)]  # flat order: prompt by prompt
    flat = [p for p in prompts for _ in range(s * n)]
    scores = rm_scores(rm, rm_tok, flat, [c for cs in cands for c in cs], template, max_group=n).view(len(cands), n)
    return [cs[i] for cs, i in zip(cands, scores.argmax(-1).tolist())]


def family_gold(prompts: list[str], responses: list[str]) -> dict[str, dict]:
    """{family: {"gold": mean gold score, "n": responses}} of the built-in world's task families."""
    from rlhf.data.world.gold import gold_score
    from rlhf.data.world.tasks import family_of
    by: dict[str, list[float]] = {}
    for p, r in zip(prompts, responses):
        by.setdefault(family_of(p), []).append(gold_score(p, r))
    return {f: {"gold": sum(v) / len(v), "n": len(v)} for f, v in sorted(by.items())}
