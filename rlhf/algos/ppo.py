"""PPO for the InstructGPT bandit: KL-penalised rewards, GAE, clipped policy and value losses.

Shapes: B = episodes, T = response tokens. Response tensors are right-padded: `mask` is 1
on real tokens (up to and including EOS) and 0 after, with no holes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlhf.algos.kl import kl_k1, kl_k3
from rlhf.algos.stats import masked_mean


class Rollout(NamedTuple):
    """One batch of episodes, everything the PPO update needs (all tensors detached).

    query_ids: (B, Tq) long, left-padded prompts; query_mask: (B, Tq) 1 on prompt tokens.
    response_ids: (B, T) long, right-padded; response_mask: (B, T) 1 on real response tokens.
    logprobs, ref_logprobs, values: (B, T) float, policy / SFT reference / critic per token.
    scores: (B,) float, the (normalised) RM score of each episode.
    """

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor

    def select(self, idx: torch.Tensor | slice) -> "Rollout":
        """The episodes `idx` (a minibatch) of every field."""
        return Rollout(*(t[idx] for t in self))


def conservative_reward(member_scores: torch.Tensor, coef: float) -> torch.Tensor:
    """An RM ensemble's reward: the members' mean minus ``coef`` times their spread (population
    standard deviation), so PPO gains little where the members disagree (Coste et al. 2023).

    member_scores: (M, B) normalised scores of M members. Returns (B,); one member: its scores.
    """
    if member_scores.shape[0] == 1:
        return member_scores[0]
    return member_scores.mean(0) - coef * member_scores.std(0, unbiased=False)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward of Eq. 2: -beta * (log pi - log pi_ref), plus the RM score at the end.

    scores: (B,); logprobs, ref_logprobs, mask: (B, T).
    Returns rewards (B, T) and kl (B, T) (the k1 estimate), both 0 where mask is 0.
    The score lands on the last real token of each row; a row with no real token gets none.
    """
    mask = mask.to(logprobs.dtype)
    kl = kl_k1(logprobs, ref_logprobs) * mask
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask * positions).argmax(dim=1, keepdim=True)  # (B, 1): last index with mask 1
    rewards = (-beta * kl).scatter_add(1, last, scores.to(kl.dtype).unsqueeze(1))
    return rewards * mask, kl


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, discount: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over one episode per row.

    rewards, values, mask: (B, T). Returns advantages (B, T) and returns = advantages + values
    (B, T), both 0 where mask is 0. The episode ends after the last real token, so the value
    bootstrapped there is 0 (the paper's bandit has no next state); discount = 1 in the paper.
    """
    mask = mask.to(values.dtype)
    next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)  # 0 past the end
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1) * next_mask
    deltas = rewards + discount * next_values - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):  # T is at most a few hundred; a loop is clear
        running = deltas[:, t] + discount * lam * next_mask[:, t] * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate, a masked mean over tokens.

    logprobs (with grad), old_logprobs, advantages, mask: (B, T).
    Returns the scalar loss and stats (detached scalars):
      clipfrac: fraction of tokens where the clipped term is the active one (zero gradient);
      approx_kl: k3 estimate of KL(pi_old || pi) on the rollout tokens (unbiased, >= 0).
    """
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            # tokens were sampled from pi_old, so k3 with pi_old in the "sampling" slot
            "approx_kl": masked_mean(kl_k3(old_logprobs, logprobs), mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * max((v - R)^2, (v_clipped - R)^2), masked mean over tokens.

    values (with grad), old_values, returns, mask: (B, T); v_clipped keeps the new value
    within `clip` of the rollout's. Returns the scalar loss and stats with vf_clipfrac (the
    fraction of tokens where the clipped error is the larger one).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    err_unclipped = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((err_clipped > err_unclipped).float(), mask)}
    return loss, stats
