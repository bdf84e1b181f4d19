"""Stage wiring for ``stage=ppo``: PPO and PPO-ptx (paper §3.5, Eq. 2).

    rlhf-train stage=ppo init=outputs/quick/sft/final stage.reward_model=outputs/quick/rm/final
    rlhf-train stage=ppo ... ptx=paper kl=adaptive        # PPO-ptx, adaptive beta

Four models: the policy (trainable) and the reference (frozen copy) from ``init`` (an SFT
``final/``; in a later round of iterated RLHF the policy continues from the last round's and
``stage.reference`` keeps the KL to SFT); the RM (frozen) and the value model (trainable copy,
paper: initialised from the RM) from ``stage.reward_model`` (``stage.ensemble`` adds frozen RMs,
scored together as their mean minus ``stage.ensemble_coef`` x their spread). Dropout is off in
all of them. ``export`` writes the EMA policy of the iteration the judge preferred on validation
prompts (``stage.export_pick``, ``rlhf.eval.selection``).
"""
from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf import feedback
from rlhf.algos.kl import AdaptiveKLController, FixedKLController, best_of_n_kl
from rlhf.data.formats import read_jsonl
from rlhf.data.prompts import PromptDataModule
from rlhf.data.sources import data_source
from rlhf.eval import selection
from rlhf.eval.monitor import PPOMonitor
from rlhf.handoff import save_hf, save_json
from rlhf.models.build import build_causal_lm, load_tokenizer, set_dropout, weights_source
from rlhf.models.lora import adapt, has_adapters
from rlhf.models.reward import load_reward_model
from rlhf.modules.ppo import PPOModule

log = logging.getLogger(__name__)


def kl_controller(kl: DictConfig):
    if kl.controller == "fixed":
        return FixedKLController(kl.coef)
    if kl.controller == "adaptive":
        return AdaptiveKLController(kl.coef, kl_target(kl), kl.horizon)
    raise ValueError(f"kl.controller={kl.controller!r}: expected 'fixed' or 'adaptive'")


def kl_target(kl: DictConfig) -> float:
    """``kl.target``, or, when that is null, the KL of best-of-n sampling, log n - (n-1)/n
    (Stiennon et al. 2020): a budget that spends on PPO what the cheap alternative spends."""
    if kl.get("target") is not None:
        return kl.target
    if kl.get("target_best_of_n"):
        return best_of_n_kl(kl.target_best_of_n)
    raise ValueError("kl.controller=adaptive needs kl.target (nats) or kl.target_best_of_n")


def _check(cfg: DictConfig) -> None:
    st = cfg.stage
    if not weights_source(cfg):
        raise ValueError("stage=ppo starts from an SFT model: set init=<sft stage dir>/final")
    if not st.reward_model:
        raise ValueError("stage=ppo needs a reward model: set stage.reward_model=<rm stage dir>/final")


def setup(cfg: DictConfig, sdir: Path):
    _check(cfg)
    st, data = cfg.stage, cfg.data
    tok = load_tokenizer(cfg, sdir / "tokenizer", corpus=lambda: ())  # the SFT checkpoint's own
    others = [("stage.reward_model", st.reward_model), *((f"stage.ensemble[{i}]", p) for i, p in enumerate(st.ensemble)),
              *([("stage.reference", st.reference)] if st.reference else [])]
    for key, path in others:  # every model PPO scores or compares with reads the policy's tokens
        if AutoTokenizer.from_pretrained(path).get_vocab() != tok.get_vocab():
            raise ValueError(f"{key}={path} and the policy (init={weights_source(cfg)}) have different tokenizers")
    steps_per_iteration = st.ppo_epochs * (st.batch_size // st.minibatch_size)
    ptx_on = cfg.ptx.coef > 0
    dm = PromptDataModule(
        tok, data_source(cfg, st.prompts), st.batch_size, data.template, data.max_prompt_tokens,
        st.iterations, seed=cfg.seed, ptx_file=data_source(cfg, cfg.ptx.data) if ptx_on else None,
        # paper: examples_per_episode x the minibatch's episodes with every optimizer step
        ptx_per_iteration=cfg.ptx.examples_per_episode * st.minibatch_size * steps_per_iteration if ptx_on else 0,
        max_ptx_tokens=data.max_prompt_tokens + data.max_response_tokens, ptx_steps=steps_per_iteration,
        pack_ptx=cfg.ptx.pack)
    dm.setup("fit")  # bad or emptied prompt files fail here, before four models load
    policy = adapt(build_causal_lm(cfg, tok), cfg)  # model.lora.r > 0: + a LoRA adapter, the base frozen
    members = [load_reward_model(p, key=k) for k, p in others if k != "stage.reference"]
    lora = has_adapters(policy)  # then the reference is the policy, the RM the value model, adapters off
    rm = members[0] if len(members) == 1 else torch.nn.ModuleList(members)  # an ensemble: conservative reward
    reference = policy if lora else copy.deepcopy(policy)
    if st.reference:  # a later round of iterated RLHF: the policy continues, the KL stays to SFT
        reference = AutoModelForCausalLM.from_pretrained(st.reference, dtype=torch.float32)
    value = adapt(members[0], cfg) if lora else copy.deepcopy(members[0]).requires_grad_(True)  # paper: from the RM
    for m in (policy, reference, *members, value):
        set_dropout(m, 0.0)  # RL runs without dropout (the paper's implementation details), LoRA's too
    module = PPOModule(policy, reference, value if lora else rm, value, tok, st,
                       kl_controller(cfg.kl), ptx_coef=cfg.ptx.coef, seed=cfg.seed,
                       samples_path=sdir / "samples.jsonl")
    callbacks = [monitor(cfg, sdir, tok)]
    module.monitor = callbacks[0]  # export reads its candidates
    if cfg.kl.controller == "adaptive":
        log.info("adaptive KL controller: target %.3f nats per response", kl_target(cfg.kl))
    module.export_info = {"reward_model": str(st.reward_model), "ensemble": list(st.ensemble),
                          "ensemble_coef": st.ensemble_coef if st.ensemble else None,
                          "reference": str(st.reference or weights_source(cfg)),
                          "ema_decay": st.ema_decay,
                          "export_pick": st.export_pick, "kl_budget": st.kl_budget,
                          "kl": OmegaConf.to_container(cfg.kl), "ptx": OmegaConf.to_container(cfg.ptx)}
    return module, dm, tok, callbacks


def monitor(cfg: DictConfig, sdir: Path, tok) -> PPOMonitor:
    """The alarms, with the judge's validation win rate when ``stage.eval_prompts`` names a file."""
    st, key = cfg.stage, cfg.stage.eval_prompts
    prompts = []
    if st.eval_every and cfg.data.files.get(key):
        prompts = [r["prompt"] for r in read_jsonl(data_source(cfg, key), "prompt")][: st.max_eval_prompts]
    elif st.eval_every:
        log.warning("stage.eval_every=%d but data.files.%s is not set: no validation win rate (and no "
                    "reward-hacking alarm); the other alarms run", st.eval_every, key)
    judge = feedback.load(cfg.judge) if prompts else None  # a bad judge fails here, before any iteration
    return PPOMonitor(judge, prompts, tok, cfg.data.template, st.max_new_tokens, st.temperature, st.eval_every,
                      st.alarms, sdir / "alarms.jsonl", seed=cfg.seed, candidates_dir=sdir / "candidates",
                      kl_budget=st.kl_budget)


def export(module: PPOModule, tok, out_dir: Path, info: dict) -> Path:
    """``final/``: the candidate ``stage.export_pick`` names (``rlhf.eval.selection``), or the
    final policy when there are none (``eval_every=0``) or ``export_pick=last``."""
    info.update(module.export_info, kl_coef_final=module.kl_ctl.value)
    mon, pick = getattr(module, "monitor", None), module.export_info["export_pick"]
    chosen = mon.chosen() if mon is not None and pick == "best" else None
    info["candidates"] = mon.candidates if mon is not None else []
    if chosen is None:
        why = ("export_pick=last" if pick == "last" else "stage.eval_every=0: no candidates" if not (mon and mon.every)
               else "no candidate was kept")
        info["selected"] = {"iterations": mon.history[-1]["iteration"] + 1 if mon and mon.history else None,
                            "why": f"{why}: exported the final policy"}
        return save_hf(module.export_model(), tok, out_dir, info)
    c, src = chosen
    info["selected"] = {**c, "why": selection.why(c, mon.candidates, mon.kl_budget)}
    log.info("PPO %s", info["selected"]["why"])
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(src, out_dir)
    return save_json(out_dir, info)
