"""PPO and PPO-ptx (paper Eq. 2) as one LightningModule with manual optimisation.

One ``training_step`` = one PPO iteration over a batch of prompts:
  1. rollout (``rlhf.rollout``): sample from the CURRENT policy, score with the frozen models;
  2. per-token reward -beta * KL plus the score at the last token; GAE; whitened advantages;
     the KL controller sees the batch's mean sequence KL;
  3. ``ppo_epochs`` passes over shuffled minibatches. Each policy step backpropagates the
     clipped policy loss and, for PPO-ptx, ``ptx.coef`` times the pretraining LM loss into the
     SAME gradient buffers, then takes ONE step (paper appendix C: "accumulated ... before one
     step"); the value model's loss and step follow (separate models, separate gradients).
For the first ``stage.critic_warmup_iterations`` iterations only the value model learns: the
policy, its EMA and the KL controller stay as they are, so advantages are not noise when the
policy starts to move. Each iteration logs its wall time per phase (``time/<phase>_s``) and, on
its first minibatch, how far the update's log-probs are from the rollout's (``mismatch/*``).
Policy and value model have their own Adam (paper: betas (0.9, 0.95), value lr 9e-6, eps 1e-5),
LR constant after a linear warmup from 1/10 of peak over ``warmup_iterations``. An EMA of the
policy weights (paper 0.992, updated after every policy step) is what the stage exports.
Under LoRA (``rlhf.models.lora``) the reference IS the policy and the RM the value model, each read
with its adapters off (a ``View``), the EMA averages the policy's adapter only, and the checkpoint
holds adapters, not the frozen base weights.
``trainer.global_step`` counts PPO iterations (see ``_step``).
"""
from __future__ import annotations

import json
import time
from collections import defaultdict

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rlhf.algos.kl import kl_k3, logprob_mismatch
from rlhf.algos.lm_loss import lm_loss
from rlhf.algos.logprobs import logprobs_from_logits
from rlhf.algos.ppo import gae, kl_penalized_rewards, policy_loss, value_loss
from rlhf.algos.stats import explained_variance, masked_mean, masked_sum, masked_whiten
from rlhf.distributed import clip_grad_norm, gathered, is_sharded, shard
from rlhf.handoff import write_atomic
from rlhf.models.lora import (ADAPTER, EMA, AdapterEMA, View, drop_base_weights, has_adapters,
                               restore_base_weights)
from rlhf.modules.lm import lm_logits, trainable
from rlhf.rollout import check_finite, phase, response_logits, response_values, rollout

FROZEN = ("reference.", "reward_model.")  # state_dict prefixes reloaded from their final/ dirs


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    return model.requires_grad_(False).eval()


def keep_before(path, iteration: int) -> None:
    """Rewrite the JSONL at ``path`` with only its complete rows of iterations before ``iteration``."""
    if not path.is_file():
        return
    rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [r for r in rows if r.endswith("\n") and json.loads(r)["iteration"] < iteration]
    if len(kept) < len(rows):
        write_atomic(path, "".join(kept))


class PPOModule(pl.LightningModule):
    """Policy (trainable) and reference (frozen) from SFT; value (trainable) and RM (frozen) from the RM.

    LoRA: pass the adapted policy as ``reference`` and the adapted value model as ``reward_model``
    (the same objects): each is then held once, and read through a ``View`` with adapters off.
    """

    def __init__(self, policy, reference, reward_model, value, tokenizer, stage_cfg, kl_controller,
                 ptx_coef: float = 0.0, seed: int = 0, samples_path=None):
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.value = policy.train(), value.train()  # dropout is 0 in all four (setup)
        self.reference = View(policy) if reference is policy else frozen(reference)  # not a submodule:
        self.reward_model = View(value) if reward_model is value else frozen(reward_model)  # held once
        self.lora, decay = has_adapters(policy), stage_cfg.ema_decay
        if self.lora:  # the EMA of the adapter, a second adapter in the policy (no second base)
            self.ema = AdapterEMA(policy, decay) if decay else None
        else:
            self.ema = frozen(AveragedModel(policy, multi_avg_fn=get_ema_multi_avg_fn(decay))) if decay else None
        self.st, self.kl_ctl, self.ptx_coef, self.seed = stage_cfg, kl_controller, float(ptx_coef), seed
        self.tok, self.samples_path = tokenizer, samples_path
        self.sampling = dict(max_new_tokens=stage_cfg.max_new_tokens, temperature=stage_cfg.temperature,
                             eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                             missing_eos_penalty=stage_cfg.missing_eos_penalty, ensemble_coef=stage_cfg.ensemble_coef)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in (self.reference, self.reward_model, self.ema):
            if isinstance(m, torch.nn.Module):
                m.eval()  # frozen models stay in eval mode whatever Lightning asks (views: their model's mode)
        return self

    def configure_model(self) -> None:
        """strategy=fsdp2: every model sharded per transformer block, the frozen ones and the EMA too."""
        shard(self, self.policy, self.value)
        rms = list(self.reward_model) if isinstance(self.reward_model, torch.nn.ModuleList) else [self.reward_model]
        ema = [self.ema.module] if isinstance(self.ema, AveragedModel) else []
        shard(self, self.reference, *rms, *ema, trainable=False)  # views: their model is sharded already
        if is_sharded(self.policy):  # FSDP2 loads a checkpoint's weights before on_load_checkpoint could
            self.strict_loading = False  # add the frozen ones: they keep what setup loaded from disk

    def on_train_start(self) -> None:
        """A resumed run drops the sample and alarm rows of iterations after its checkpoint (and a
        line a kill cut short): it makes them again."""
        if self.trainer.is_global_zero and self.samples_path:
            for path in (self.samples_path, self.samples_path.with_name("alarms.jsonl")):
                keep_before(path, self.trainer.global_step)

    def export_model(self):
        """The policy to hand on: the EMA weights (paper), or the policy itself without EMA; under LoRA
        a ``View`` of the policy with that adapter, saved as the merged model and the adapter."""
        if self.lora:
            return View(self.policy, EMA if self.ema is not None else ADAPTER)
        return self.ema.module if self.ema is not None else self.policy

    # -- one PPO iteration -------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        it = self.trainer.global_step  # PPO iterations done
        # per-iteration seed: a resumed run samples exactly what the uninterrupted run would have
        torch.manual_seed(hash((self.seed, it, self.global_rank)) & (2**63 - 1))
        warmup = it < self.st.critic_warmup_iterations  # only the value model learns
        times: dict[str, float] = {}
        t0 = self._now()
        info = rollout(self.policy, self.reference, self.value, self.reward_model,
                     batch["input_ids"], batch["attention_mask"], **self.sampling,
                     full_params=lambda: gathered(self.policy), times=times)  # sharded: gathered once per rollout
        ro, mask, beta = info.rollout, info.rollout.response_mask, self.kl_ctl.value
        with phase(times, "advantages"):
            rewards, seq_kl, advantages, returns = self._advantages(info, beta, it, update_kl=not warmup)
        t1 = self._now()
        stats = self._update(ro, info.value_mask, advantages, returns, batch.get("ptx"), times, warmup)
        t2 = self._now()
        B = len(seq_kl)
        self.log_dict({"train/score": ro.scores.mean(), "train/kl": seq_kl.mean()}, prog_bar=True, batch_size=B)
        self.log_dict({
            "train/rm_score": info.rm_score.mean(), "train/rm_score_raw": info.rm_score_raw.mean(),
            "train/rm_spread": info.rm_spread.mean(),
            "train/kl_k3": masked_sum(kl_k3(ro.logprobs, ro.ref_logprobs), mask) / B, "train/beta": beta,
            "train/reward": rewards.sum(-1).mean(), "train/entropy": masked_mean(info.entropy, mask),
            "train/response_length": mask.sum(-1).float().mean(), "train/eos_rate": info.has_eos.float().mean(),
            "train/explained_variance": explained_variance(ro.values, returns, info.value_mask),
            **{f"train/{k}": v for k, v in stats.items()}, "train/critic_warmup": float(warmup),
            **{f"time/{k}_s": v for k, v in times.items()},
            "time/rollout_s": t1 - t0, "time/update_s": t2 - t1}, batch_size=B)
        self._log_samples(it, batch["prompts"], info)

    def _advantages(self, info, beta: float, it: int, update_kl: bool = True):
        """Eq. 2's per-token rewards, GAE, whitened advantages; feeds the KL controller (unless
        ``update_kl`` is False: critic warm-up). Returns rewards (B, T), sequence KL (B,),
        advantages, returns (B, T)."""
        ro, mask = info.rollout, info.rollout.response_mask
        for name, x in (("log-probs", ro.logprobs), ("reference log-probs", ro.ref_logprobs), ("values", ro.values)):
            check_finite(name, x, it, mask)
        check_finite("scores", ro.scores, it)
        rewards, kl = kl_penalized_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, mask, beta)
        check_finite("rewards", rewards, it, mask)
        advantages, returns = gae(rewards, ro.values, info.value_mask, self.st.discount, self.st.lam)
        seq_kl = kl.sum(-1)  # (B,) nats per response
        if update_kl:
            kl_mean = self.trainer.strategy.reduce(seq_kl.mean(), reduce_op="mean")  # one beta on every rank
            self.kl_ctl.update(float(kl_mean), len(seq_kl) * self.trainer.world_size)
        return rewards, seq_kl, masked_whiten(advantages, mask), returns

    def _update(self, ro, value_mask, advantages, returns, ptx: list[dict] | None, times: dict,
                warmup: bool = False) -> dict:
        """``ppo_epochs`` passes of minibatch steps; ``warmup``: the value model's steps only."""
        opt_p, opt_v = self.optimizers()
        steps = [idx for _ in range(self.st.ppo_epochs)
                 for idx in torch.randperm(len(advantages), device=advantages.device).split(self.st.minibatch_size)]
        ptx_on = ptx is not None and self.ptx_coef > 0 and not warmup
        stats = defaultdict(list)
        for n, idx in enumerate(steps):
            mb, s, last = ro.select(idx), {}, n == len(steps) - 1
            if not warmup:
                with phase(times, "policy_update"):
                    pg, s = self._policy_loss(mb, advantages[idx], first=n == 0)
                    self.manual_backward(pg)
                if ptx_on:  # into the same .grad buffers: no zero_grad, no step in between
                    with phase(times, "ptx"):
                        ptx_loss = self._ptx_loss(ptx[n])
                        self.manual_backward(self.ptx_coef * ptx_loss)
                    s["ptx_loss"] = ptx_loss.detach()
                with phase(times, "policy_update"):
                    s["policy_grad_norm"] = self._step(opt_p, self.policy, counted=last)
                    if self.ema is not None:
                        self.ema.update_parameters(self.policy)
            with phase(times, "value_update"):
                vf, vf_stats = self._value_loss(mb, value_mask[idx], returns[idx])
                self.manual_backward(self.st.vf_coef * vf)
                s.update(vf_stats, value_grad_norm=self._step(opt_v, self.value, counted=warmup and last))
            for k, v in s.items():
                stats[k].append(v)
        for sched, model in zip(self.lr_schedulers(), ("policy", "value")):
            if not (warmup and model == "policy"):  # the policy's lr warmup starts when the policy does
                sched.step()  # one warmup step per iteration
        return {k: torch.stack(v).mean() for k, v in stats.items()}

    def _policy_loss(self, mb, advantages, first: bool = False):
        """Clipped policy loss on one minibatch (a Rollout); ``first``: before any step of the
        iteration, so its log-probs come from the weights that scored the rollout (mismatch)."""
        q = (mb.query_ids, mb.query_mask, mb.response_ids, mb.response_mask)
        logprobs = logprobs_from_logits(response_logits(self.policy, *q), mb.response_ids, self.st.temperature)
        pg, pg_stats = policy_loss(logprobs, mb.logprobs, advantages, mb.response_mask, self.st.clip)
        stats = {"policy_loss": pg.detach(), **pg_stats}
        if first:
            stats.update(logprob_mismatch(logprobs.detach(), mb.logprobs, mb.response_mask))
        return pg, stats

    def _value_loss(self, mb, value_mask, returns):
        """Clipped value loss on one minibatch (a Rollout)."""
        q = (mb.query_ids, mb.query_mask, mb.response_ids, mb.response_mask)
        vf, vf_stats = value_loss(response_values(self.value, *q), mb.values, returns, value_mask, self.st.value_clip)
        return vf, {"value_loss": vf.detach(), **vf_stats}

    def _ptx_loss(self, b: dict) -> torch.Tensor:
        """Pretraining LM loss of the policy on packed or right-padded texts (the gamma term of Eq. 2)."""
        return lm_loss(lm_logits(self.policy, b), b["labels"])[0]

    def _step(self, opt, model, counted: bool) -> torch.Tensor:
        """Clip ``model``'s gradient norm, step ``opt`` once, zero; returns the norm before clipping.

        ``trainer.global_step`` (max_steps, checkpoint cadence, resume, data position) counts PPO
        iterations. Lightning counts every ``LightningOptimizer.step()``, so only the iteration's
        last policy step goes through it; the other steps call the strategy directly (the same
        precision plugin and hooks, not counted).
        """
        max_norm = self.st.optim.max_grad_norm
        norm = clip_grad_norm(model, max_norm if max_norm else float("inf"))  # FSDP2: a DTensor norm made plain
        if counted:
            opt.step()
        else:
            self.trainer.strategy.optimizer_step(opt.optimizer, closure=lambda: None)
        opt.zero_grad(set_to_none=True)
        return norm.detach()

    def configure_optimizers(self):
        o = self.st.optim
        opts = [torch.optim.Adam(trainable(m), lr=lr, betas=tuple(o.betas), eps=o.eps)
                for m, lr in ((self.policy, o.lr), (self.value, o.value_lr))]
        warm = o.warmup_iterations

        def warmup(it: int) -> float:  # 1/10 of peak at iteration 0, peak from `warm` on (paper)
            return min(1.0, 0.1 + 0.9 * it / warm) if warm else 1.0
        return [{"optimizer": opt, "lr_scheduler": {"scheduler": LambdaLR(opt, warmup), "name": f"lr/{name}"}}
                for opt, name in zip(opts, ("policy", "value"))]

    # -- checkpoint: KL controller in, frozen weights out (they reload from their final/) ------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["kl_controller"] = self.kl_ctl.state_dict()
        for k in [k for k in checkpoint["state_dict"] if k.startswith(FROZEN)]:
            del checkpoint["state_dict"][k]
        if self.lora:  # the adapters (and the value head's copy), not the bases they adapt
            drop_base_weights(checkpoint, "policy.", "value.")
            checkpoint["lora_ema"] = self.ema.state_dict() if self.ema is not None else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.kl_ctl.load_state_dict(checkpoint["kl_controller"])
        if "state_dict" in checkpoint:  # FSDP2 has loaded (and removed) the weights already
            checkpoint["state_dict"].update({k: v for k, v in self.state_dict().items() if k.startswith(FROZEN)})
        if self.lora:
            restore_base_weights(self, checkpoint, "policy.", "value.")
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint["lora_ema"])

    # -- helpers ---------------------------------------------------------------------------
    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _log_samples(self, it: int, prompts: list[str], info) -> None:
        """Every ``log_samples_every`` iterations: a few (prompt, response, score) rows to
        ``samples.jsonl`` (appended; a resumed run first drops the rows after its checkpoint) and the wandb table."""
        every, n = self.st.log_samples_every, self.st.log_samples
        if not every or it % every or not n or not self.trainer.is_global_zero:
            return
        ro = info.rollout
        rows = [{"iteration": it, "prompt": prompts[i],
                 "response": self.tok.decode(ro.response_ids[i][ro.response_mask[i].bool()], skip_special_tokens=True),
                 "score": ro.scores[i].item(), "rm_score_raw": info.rm_score_raw[i].item(), "eos": bool(info.has_eos[i])}
                for i in range(min(n, len(prompts)))]
        if self.samples_path:
            with open(self.samples_path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
        for lg in self.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_table(key="samples", columns=list(rows[0]), data=[list(r.values()) for r in rows])

