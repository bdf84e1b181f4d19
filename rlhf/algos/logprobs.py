"""Per-token log-probabilities and entropies from a causal LM's logits.

Logits are upcast to float32 (bf16 log-softmax loses the small differences PPO ratios are
made of) and divided by the sampling temperature, so log-probs recomputed in the update
match the distribution the rollout actually sampled from.
"""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(labels | logits / temperature).

    logits: (B, T, V) already aligned with `labels` (logits[:, t] predicts labels[:, t]).
    labels: (B, T) long. Returns (B, T) float32.
    """
    logits = logits.float() / temperature
    # gather - logsumexp: no (B, T, V) log-softmax tensor kept for backward
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the softmax over the vocabulary, in nats.

    logits: (B, T, V). Returns (B, T) float32.
    """
    logits = logits.float() / temperature
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
