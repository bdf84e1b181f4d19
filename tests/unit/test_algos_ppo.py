"""PPO math: KL-penalised rewards, GAE, clipped losses; hand-computed and brute-force references."""

import math

import pytest
import torch

from rlhf.algos.ppo import Rollout, gae, kl_penalized_rewards, policy_loss, value_loss


def test_kl_penalized_rewards_rows_of_different_length():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -1.0, -1.5, -2.0], [0.0, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0, -9.0], [-1.0, -1.0, -1.0, -1.0], [0.0, 0.0, 0.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    scores = torch.tensor([2.0, -1.0, 3.0])
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref, mask, beta=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    expected = torch.tensor([
        [-0.05, 0.1, 2.0, 0.0],  # score on token 2, the last real one
        [-0.05, -1.0, 0.0, 0.0],  # score on token 1
        [0.0, 0.0, 0.0, 2.9],  # full row: score on the last token, plus -0.1 * KL 1
    ])
    torch.testing.assert_close(rewards, expected)


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1 ends after token 1; its tail is garbage
    adv, ret = gae(rewards, values, mask, discount=1.0, lam=0.95)
    # row 0: deltas -0.1, -0.1, 0.7 -> A2 = 0.7, A1 = -0.1 + 0.95 * 0.7, A0 = -0.1 + 0.95 * A1
    # row 1: bootstrap 0 after token 1: A1 = 2 - 0.5, A0 = (0 + 0.5 - 1) + 0.95 * 1.5
    torch.testing.assert_close(adv, torch.tensor([[0.43675, 0.565, 0.7], [0.925, 1.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.93675, 0.965, 1.0], [1.925, 2.0, 0.0]]))


def gae_brute_force(rewards, values, lengths, discount, lam):
    adv = torch.zeros_like(values, dtype=torch.float64)
    for b, length in enumerate(lengths):
        v = lambda t: values[b, t].item() if t < length else 0.0  # noqa: E731
        for t in range(length):
            adv[b, t] = sum(
                (discount * lam) ** k * (rewards[b, t + k].item() + discount * v(t + k + 1) - v(t + k))
                for k in range(length - t)
            )
    return adv


def test_gae_matches_brute_force_with_discount():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 3, 7]
    rewards, values = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long()
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e3))  # masked tail ignored
    adv, ret = gae(rewards, values, mask, discount=0.9, lam=0.8)
    expected = gae_brute_force(rewards, values, lengths, discount=0.9, lam=0.8).float()
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + values) * mask)
    assert not adv.requires_grad


def test_policy_loss_clipping():
    ratio = torch.tensor([[1.1, 1.5, 1.5, 0.5, 0.5, 0.9, 3.0]])
    adv = torch.tensor([[2.0, 1.0, -1.0, -2.0, 1.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0, -0.1, -1.0]])
    logprobs = (old + ratio.log()).requires_grad_()
    loss, stats = policy_loss(logprobs, old, adv, mask, clip=0.2)
    # per token max(-A r, -A clip(r)): inside; clipped at 1.2; unclipped (A<0, r>1.2);
    # clipped at 0.8 (A<0); unclipped (A>0, r<0.8); inside
    per_token = [-2.2, -1.2, 1.5, 1.6, -0.5, 0.9]
    assert loss.item() == pytest.approx(sum(per_token) / 6, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 6)
    r = [1.1, 1.5, 1.5, 0.5, 0.5, 0.9]
    assert stats["approx_kl"].item() == pytest.approx(sum(x - 1 - math.log(x) for x in r) / 6, rel=1e-5)
    loss.backward()
    # clipped tokens and padding get no gradient; the others get -A r / 6
    expected_grad = torch.tensor([[-2.2, 0.0, 1.5, 0.0, -0.5, 0.9, 0.0]]) / 6
    torch.testing.assert_close(logprobs.grad, expected_grad)


def test_value_loss_clipping():
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.1, 0.5, 0.5, 0.5, 0.5, 50.0]])
    returns = torch.tensor([[1.0, 1.0, 0.4, -1.0, 0.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    # clipped values 0.1, 0.2, 0.2, 0.2, 0.8 -> max squared errors below
    assert loss.item() == pytest.approx(0.5 * (0.81 + 0.64 + 0.04 + 2.25 + 0.64) / 5)
    assert stats["vf_clipfrac"].item() == pytest.approx(3 / 5)


def test_rollout_select():
    B, Tq, T = 4, 3, 5
    r = Rollout(
        torch.zeros(B, Tq, dtype=torch.long), torch.ones(B, Tq), torch.arange(B * T).view(B, T),
        torch.ones(B, T), torch.zeros(B, T), torch.zeros(B, T), torch.zeros(B, T), torch.arange(B).float(),
    )
    mb = r.select(torch.tensor([3, 1]))
    assert isinstance(mb, Rollout) and mb.response_ids.shape == (2, T)
    torch.testing.assert_close(mb.scores, torch.tensor([3.0, 1.0]))


def test_conservative_reward_golden():
    from rlhf.algos.ppo import conservative_reward
    scores = torch.tensor([[1.0, 2.0, -1.0], [3.0, 2.0, 1.0]])  # 2 members x 3 episodes
    torch.testing.assert_close(conservative_reward(scores, 1.0), torch.tensor([1.0, 2.0, -1.0]))  # mean - 1 x std
    torch.testing.assert_close(conservative_reward(scores, 0.0), torch.tensor([2.0, 2.0, 0.0]))
    three = torch.tensor([[0.0], [3.0], [6.0]])  # std sqrt(6)
    torch.testing.assert_close(conservative_reward(three, 2.0), torch.tensor([3.0 - 2 * 6 ** 0.5]))
    torch.testing.assert_close(conservative_reward(scores[:1], 5.0), scores[0])  # one member: its own scores
