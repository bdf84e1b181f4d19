"""The reward-model stage as a thin LightningModule: K-way ranking loss, one element per prompt."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric, Metric

from rlhf.algos.ranking import kway_ranking_loss
from rlhf.distributed import clip_gradients, is_sharded, shard
from rlhf.models.reward import completion_rewards
from rlhf.models.lora import AdapterCheckpoint, has_adapters
from rlhf.modules.lm import adamw_cosine, trainable


class PairwiseAccuracy(Metric):
    """Share of ranked pairs with r_winner > r_loser over all pairs seen (not a mean of batch means)."""
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor, total: torch.Tensor) -> None:
        self.correct += correct
        self.total += total

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class RewardStd(Metric):
    """Standard deviation of every reward seen (float64 running sums)."""
    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("n", "sum", "sumsq"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rewards: torch.Tensor) -> None:
        r = rewards.detach().double()
        self.n += r.numel()
        self.sum += r.sum()
        self.sumsq += (r * r).sum()

    def compute(self) -> torch.Tensor:
        mean = self.sum / self.n.clamp(min=1)
        return (self.sumsq / self.n.clamp(min=1) - mean * mean).clamp(min=0).sqrt().float()


class RewardModule(AdapterCheckpoint, pl.LightningModule):
    """``stage=rm``: scores each completion once and applies ``kway_ranking_loss`` per prompt.

    ``normalize`` is what ``rlhf.stages.rm.export`` needs to set the bias after training
    (demonstration file, template, gain on/off); the module itself never reads it.
    """

    def __init__(self, model, optim_cfg, normalize: dict | None = None):
        super().__init__()
        self.model, self.optim_cfg, self.normalize = model.train(), optim_cfg, normalize  # from_pretrained: eval
        self.train_acc = PairwiseAccuracy()
        self.val_acc, self.val_std = PairwiseAccuracy(), RewardStd()
        self.val_loss, self.val_mean, self.val_margin = MeanMetric(), MeanMetric(), MeanMetric()

    def configure_model(self) -> None:
        shard(self, self.model)  # strategy=fsdp2: FSDP2 per transformer block; other strategies: nothing
        if is_sharded(self.model) and has_adapters(self.model):  # LoRA: last.ckpt holds the adapters; FSDP2 loads
            self.strict_loading = False  # them before on_load_checkpoint could add the base weights

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # strategy=fsdp clips its own way

    def forward(self, batch: dict) -> torch.Tensor:
        """(B, Kmax) raw rewards: the N flattened completions scattered back to their prompts."""
        r = completion_rewards(self.model, batch, raw=True).float()  # (N,)
        return r.new_zeros(batch["mask"].shape).index_put((batch["owner"], batch["slot"]), r)

    def _step(self, batch: dict):
        rewards = self(batch)
        loss, stats = kway_ranking_loss(rewards, batch["ranks"], batch["mask"])
        return loss, stats, rewards[batch["mask"]]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, s, _ = self._step(batch)
        b = batch["mask"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.train_acc(s["correct"], s["total"])  # forward: batch value on step, all pairs on epoch
        self.log("train/accuracy", self.train_acc, on_step=True, on_epoch=True, prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": s[k] for k in ("margin", "reward_mean", "reward_std")}, batch_size=b)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, s, real = self._step(batch)
        self.val_loss.update(loss, weight=batch["mask"].shape[0])  # per-prompt weighting, like the loss
        self.val_acc.update(s["correct"], s["total"])
        self.val_margin.update(s["margin"], weight=s["total"])
        self.val_mean.update(real)
        self.val_std.update(real)
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/accuracy", self.val_acc, prog_bar=True)
        self.log("val/margin", self.val_margin)
        self.log("val/reward_mean", self.val_mean)
        self.log("val/reward_std", self.val_std)

    def configure_optimizers(self):
        return adamw_cosine(self, trainable(self.model), self.optim_cfg)
