"""Pretraining and SFT as one thin LightningModule: next-token loss on the tokens that count."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from rlhf.algos.lm_loss import IGNORE, lm_loss
from rlhf.distributed import clip_gradients, is_sharded, shard
from rlhf.models.attention import model_mask
from rlhf.models.lora import AdapterCheckpoint, has_adapters


def adamw_cosine(module: pl.LightningModule, params, opt_cfg) -> dict:
    """AdamW with the paper's betas and cosine decay to ``min_lr_ratio`` of peak (paper: 10%)."""
    opt = torch.optim.AdamW(params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                            weight_decay=opt_cfg.weight_decay)
    sched = get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=opt_cfg.warmup_steps,
        num_training_steps=max(1, module.trainer.estimated_stepping_batches),
        min_lr_rate=opt_cfg.min_lr_ratio)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainable(model) -> list:
    """The weights an optimizer steps: all of them, or under LoRA the adapters (and a head trained whole)."""
    return [p for p in model.parameters() if p.requires_grad]


def lm_logits(model, batch: dict) -> torch.Tensor:
    """(B, T, V) logits of a right-padded or a packed batch (``rlhf.data.lm.collate_lm``)."""
    if "segments" in batch:
        return model(input_ids=batch["input_ids"], attention_mask=model_mask(model, batch["segments"]),
                     position_ids=batch["position_ids"], use_cache=False).logits
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


class LMModule(AdapterCheckpoint, pl.LightningModule):
    """``stage=pretrain`` (loss on every token) and ``stage=sft`` (loss on completion tokens)."""

    def __init__(self, model, optim_cfg):
        super().__init__()
        self.model, self.optim_cfg = model.train(), optim_cfg  # from_pretrained returns eval mode
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes=model.config.vocab_size, ignore_index=IGNORE,
                                          average="micro", validate_args=False)

    def configure_model(self) -> None:
        shard(self, self.model)  # strategy=fsdp2: FSDP2 per transformer block; other strategies: nothing
        if is_sharded(self.model) and has_adapters(self.model):  # LoRA: last.ckpt holds the adapters; FSDP2 loads
            self.strict_loading = False  # them before on_load_checkpoint could add the base weights

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # strategy=fsdp clips its own way

    def forward(self, batch: dict) -> torch.Tensor:
        return lm_logits(self.model, batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, n = lm_loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=int(n))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch)
        loss, n = lm_loss(logits, batch["labels"])
        self.val_loss.update(loss, weight=n)  # token-weighted, so batch sizes don't skew it
        self.val_acc.update(logits[:, :-1].argmax(-1), batch["labels"][:, 1:])
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/token_acc", self.val_acc)

    def configure_optimizers(self):
        return adamw_cosine(self, trainable(self.model), self.optim_cfg)
