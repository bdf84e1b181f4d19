"""The K-way ranking loss: hand-computed pairs, Bradley-Terry, order invariance, padding."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from rlhf.algos.ranking import kway_ranking_loss, pairwise_accuracy_counts, ranking_to_ranks


def nll(d):  # -log sigmoid(d)
    return math.log1p(math.exp(-d))


# K=3, ranking best first [2, 0, 1]; K=4, ranking [2, 0, 3, 1]; one batch padded to Kmax=4
R3, RANKS3 = [1.0, 0.5, 0.2], [1, 2, 0]
R4, RANKS4 = [0.3, -0.2, 1.5, -0.5], [1, 3, 0, 2]
# pairs (winner - loser): K=3: (2,0) -0.8, (2,1) -0.3, (0,1) 0.5
L3 = (nll(0.2 - 1.0) + nll(0.2 - 0.5) + nll(1.0 - 0.5)) / 3
# K=4: (2,0) 1.2, (2,3) 2.0, (2,1) 1.7, (0,3) 0.8, (0,1) 0.5, (3,1) -0.3
L4 = (nll(1.2) + nll(2.0) + nll(1.7) + nll(0.8) + nll(0.5) + nll(-0.3)) / 6


def test_ranking_to_ranks():
    assert ranking_to_ranks([2, 0, 1]) == RANKS3
    assert ranking_to_ranks([2, 0, 3, 1]) == RANKS4
    with pytest.raises(ValueError):
        ranking_to_ranks([0, 0, 1])


def test_k3_and_k4_hand_computed():
    loss, _ = kway_ranking_loss(torch.tensor([R3]), torch.tensor([RANKS3]), torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx(L3, rel=1e-6)
    loss, _ = kway_ranking_loss(torch.tensor([R4]), torch.tensor([RANKS4]), torch.ones(1, 4, dtype=torch.bool))
    assert loss.item() == pytest.approx(L4, rel=1e-6)


def test_padded_batch_weights_each_prompt_equally():
    rewards = torch.tensor([R3 + [7.0], R4])
    ranks = torch.tensor([RANKS3 + [0], RANKS4])  # padding rank 0 must not form pairs
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    loss, stats = kway_ranking_loss(rewards, ranks, mask)
    assert loss.item() == pytest.approx((L3 + L4) / 2, rel=1e-6)  # not (3 L3 + 6 L4) / 9
    assert (stats["correct"].item(), stats["total"].item()) == (1 + 5, 3 + 6)
    assert stats["accuracy"].item() == pytest.approx(6 / 9)
    margins = [-0.8, -0.3, 0.5, 1.2, 2.0, 1.7, 0.8, 0.5, -0.3]
    assert stats["margin"].item() == pytest.approx(sum(margins) / 9, abs=1e-6)
    assert stats["reward_mean"].item() == pytest.approx(sum(R3 + R4) / 7)
    correct, total = pairwise_accuracy_counts(rewards, ranks, mask)
    assert (correct.item(), total.item()) == (6, 9)


def test_accuracy_ties_count_as_wrong():
    correct, total = pairwise_accuracy_counts(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[0, 1, 2]]), torch.ones(1, 3))
    assert (correct.item(), total.item()) == (2, 3)


def test_k2_is_bradley_terry():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(6, generator=g), torch.randn(6, generator=g)
    rewards = torch.stack([rejected, chosen], dim=1)  # chosen listed second
    ranks = torch.tensor([[1, 0]]).repeat(6, 1)
    loss, _ = kway_ranking_loss(rewards, ranks, torch.ones(6, 2, dtype=torch.bool))
    torch.testing.assert_close(loss, -F.logsigmoid(chosen - rejected).mean())


def test_invariant_to_listing_order():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(3, 6, generator=g)
    ranks = torch.stack([torch.randperm(6, generator=g) for _ in range(3)])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    ranks = torch.where(mask, ranks.argsort(1).argsort(1), 0)  # any values; only order matters
    loss, stats = kway_ranking_loss(rewards, ranks, mask)
    perm = torch.randperm(6, generator=g)  # padding moves into the middle too
    loss_p, stats_p = kway_ranking_loss(rewards[:, perm], ranks[:, perm], mask[:, perm])
    torch.testing.assert_close(loss_p, loss)
    assert stats_p["correct"] == stats["correct"] and stats_p["total"] == stats["total"]


def brute_force(rewards, ranks):
    pairs = [(i, j) for i, j in itertools.permutations(range(len(ranks)), 2) if ranks[i] < ranks[j]]
    assert len(pairs) == math.comb(len(ranks), 2)
    return sum(nll(rewards[i] - rewards[j]) for i, j in pairs) / len(pairs)


def test_mixed_k_batch_equals_each_prompt_alone_and_grads_only_real():
    g = torch.Generator().manual_seed(2)
    ks = [2, 4, 9]
    prompts = [(torch.randn(k, generator=g, dtype=torch.float64), torch.randperm(k, generator=g)) for k in ks]
    rewards = torch.full((4, 9), float("nan"), dtype=torch.float64)  # row 3: an all-padding prompt
    ranks = torch.zeros(4, 9, dtype=torch.long)
    mask = torch.zeros(4, 9, dtype=torch.bool)
    for b, (r, rk) in enumerate(prompts):
        rewards[b, : len(r)], ranks[b, : len(r)], mask[b, : len(r)] = r, rk, True
    rewards.requires_grad_()
    loss, _ = kway_ranking_loss(rewards, ranks, mask)
    expected = sum(brute_force(r.tolist(), rk.tolist()) for r, rk in prompts) / len(ks)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    alone = [kway_ranking_loss(r[None], rk[None], torch.ones(1, len(r), dtype=torch.bool))[0] for r, rk in prompts]
    torch.testing.assert_close(loss, torch.stack(alone).mean())
    loss.backward()
    assert torch.isfinite(rewards.grad).all()  # NaN padding does not leak
    assert (rewards.grad[~mask] == 0).all()
    assert (rewards.grad[mask] != 0).all()
