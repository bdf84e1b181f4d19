"""The language-modelling loss of pretraining, SFT and the ptx term of PPO-ptx."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over tokens whose label is not IGNORE.

    logits: (B, T, V) for positions 0..T-1; labels: (B, T) aligned with the inputs, so the
    prediction at t is scored against labels[t+1]. SFT sets prompt labels to IGNORE, so its
    loss covers completion tokens only.
    Returns (loss scalar, number of scored tokens).
    """
    logits, targets = logits[:, :-1], labels[:, 1:]
    n = (targets != IGNORE).sum()
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss / n.clamp(min=1), n
