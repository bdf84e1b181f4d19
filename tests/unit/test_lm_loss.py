"""SFT's loss ignores prompt tokens: golden values on a hand-made batch."""
import math

import torch

from rlhf.algos.lm_loss import IGNORE, lm_loss


def test_loss_counts_completion_tokens_only():
    # vocab 2, uniform logits except position 1 which is confident in token 1.
    logits = torch.zeros(1, 4, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])  # p(token 1) = 3/4
    labels = torch.tensor([[IGNORE, IGNORE, 1, 0]])  # a 2-token prompt, then the completion
    loss, n = lm_loss(logits, labels)
    # scored: position 1 -> label 1 (p=3/4), position 2 -> label 0 (p=1/2)
    assert n == 2
    assert torch.isclose(loss, torch.tensor((-math.log(0.75) - math.log(0.5)) / 2))


def test_prompt_logits_do_not_change_the_loss():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 6, 5), torch.randint(0, 5, (2, 6))
    labels[:, :3] = IGNORE
    changed = logits.clone()
    changed[:, :2] += 100.0  # positions 0-1 predict prompt tokens 1-2: ignored
    assert torch.allclose(lm_loss(logits, labels)[0], lm_loss(changed, labels)[0])
