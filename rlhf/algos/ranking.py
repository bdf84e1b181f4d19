"""The InstructGPT reward-model loss over K-way rankings (Ouyang et al. 2022, Sec. 3.5).

A prompt with its K ranked completions is ONE batch element: each completion is scored once
and the loss averages -log sigmoid(r_w - r_l) over the prompt's C(K, 2) pairs. Treating the
pairs as separate examples would show each completion K - 1 times per epoch, which the paper
found to overfit. Pairwise (chosen, rejected) data is the K = 2 case.

Layout: B prompts padded to Kmax completions.
  rewards: (B, Kmax) float, one scalar per completion (anything at padding is ignored);
  ranks:   (B, Kmax) long, position of each completion in its prompt's ranking, 0 = best;
  mask:    (B, Kmax) bool, True for real completions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_to_ranks(ranking: list[int]) -> list[int]:
    """Turn a ranking "completion indices, best first" into each completion's rank.

    ranking_to_ranks([2, 0, 1]) == [1, 2, 0]: completion 2 is best (rank 0), then 0, then 1.
    Raises ValueError if `ranking` is not a permutation of range(len(ranking)).
    """
    if sorted(ranking) != list(range(len(ranking))):
        raise ValueError(f"ranking {ranking} is not a permutation of 0..{len(ranking) - 1}")
    ranks = [0] * len(ranking)
    for position, completion in enumerate(ranking):
        ranks[completion] = position
    return ranks


def pair_mask(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, Kmax, Kmax) bool; [b, i, j] is True iff completion i is ranked above j (both real).

    ranks, mask: (B, Kmax). Tied ranks form no pair.
    """
    mask = mask.bool()
    return (ranks[:, :, None] < ranks[:, None, :]) & mask[:, :, None] & mask[:, None, :]


def pairwise_accuracy_counts(
    rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, total) over all pairs of the batch: correct counts r_winner > r_loser strictly.

    rewards, ranks, mask: (B, Kmax). Returns two long scalars, so a metric can sum over batches.
    """
    pairs = pair_mask(ranks, mask)
    correct = (rewards[:, :, None] > rewards[:, None, :]) & pairs
    return correct.sum(), pairs.sum()


def kway_ranking_loss(
    rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over prompts of the mean over its C(K, 2) pairs of -log sigmoid(r_w - r_l).

    rewards, ranks, mask: (B, Kmax). Returns the scalar loss and detached stats:
    correct / total (pair counts), accuracy, margin (mean r_w - r_l over pairs),
    reward_mean / reward_std (over real completions). Prompts with no pair are skipped.
    """
    mask = mask.bool()
    # zero the padding first: a NaN there would otherwise leak NaN gradients through 0 * NaN
    rewards = rewards.masked_fill(~mask, 0.0)
    pairs = pair_mask(ranks, mask)
    margins = rewards[:, :, None] - rewards[:, None, :]  # [b, i, j] = r_i - r_j
    nll = torch.where(pairs, -F.logsigmoid(margins), torch.zeros_like(margins))
    n_pairs = pairs.sum(dim=(1, 2))  # C(K_b, 2) for each prompt
    has_pairs = n_pairs > 0
    per_prompt = nll.sum(dim=(1, 2)) / n_pairs.clamp(min=1)  # weight 1 / C(K, 2) per prompt
    loss = per_prompt[has_pairs].mean()
    with torch.no_grad():
        correct = ((margins > 0) & pairs).sum()
        total = pairs.sum()
        real = rewards[mask]
        stats = {
            "correct": correct,
            "total": total,
            "accuracy": correct / total,
            "margin": margins[pairs].mean(),
            "reward_mean": real.mean(),
            "reward_std": real.std() if real.numel() > 1 else torch.zeros_like(real.sum()),
        }
    return loss, stats
