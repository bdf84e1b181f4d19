"""Log-probs and entropy against log_softmax + gather and the textbook formula."""

import math

import pytest
import torch

from rlhf.algos.logprobs import entropy_from_logits, logprobs_from_logits


def test_logprobs_equal_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g) * 3
    labels = torch.randint(0, 7, (2, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    out = logprobs_from_logits(logits, labels)
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, expected)
    # temperature divides the logits before the softmax
    expected_t = torch.log_softmax(logits / 0.7, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, labels, temperature=0.7), expected_t)


def test_logprobs_golden_and_bf16():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probs 1/4, 3/4
    assert logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    # temperature 2: logits (0, log(3)/2) -> probs 1/(1+sqrt 3), sqrt 3/(1+sqrt 3)
    out = logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0).item()
    assert out == pytest.approx(-math.log(1 + math.sqrt(3)))
    assert logprobs_from_logits(logits.bfloat16(), torch.tensor([[1]])).dtype == torch.float32


def test_entropy():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]]])
    out = entropy_from_logits(logits)
    assert out.shape == (1, 2)
    h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(out, torch.tensor([[math.log(4.0), h2]]))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 6, generator=g)
    p = torch.softmax(logits / 1.5, -1)
    torch.testing.assert_close(entropy_from_logits(logits, temperature=1.5), -(p * p.log()).sum(-1))
