"""Shared-prompt RM rows: the rewards and gradients of the plain layout, for K = 2..9 and mixed K."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from rlhf.algos.ranking import kway_ranking_loss
from rlhf.data.comparisons import collate_comparisons
from rlhf.models.attention import segment_mask
from rlhf.models.reward import completion_rewards

ARCHS = {
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=256),
}
PAD = 0


def rm(arch: str, attn: str):
    config = AutoConfig.for_model(**ARCHS[arch], vocab_size=50, num_labels=1, pad_token_id=PAD,
                                  bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn)
    return model.float().eval()  # no dropout (GPT-2 has 0.1): both layouts must compute the same function


def comparisons(ks: list[int], seed: int = 0) -> list[dict]:
    """Random prompts (3-12 tokens) with K completions of 1-9 tokens each and a random ranking."""
    rng = random.Random(seed)
    out = []
    for k in ks:
        prompt = [rng.randrange(1, 50) for _ in range(rng.randint(3, 12))]
        completions = [[rng.randrange(1, 50) for _ in range(rng.randint(1, 9))] for _ in range(k)]
        out.append({"prompt": prompt, "completions": completions, "ranks": rng.sample(range(k), k)})
    return out


def loss_rewards_grads(model, batch: list[dict], shared: bool):
    model.zero_grad()
    b = collate_comparisons(batch, PAD, shared_prompt=shared)
    r = completion_rewards(model, b, raw=True)
    rewards = r.new_zeros(b["mask"].shape).index_put((b["owner"], b["slot"]), r)
    loss, _ = kway_ranking_loss(rewards, b["ranks"], b["mask"])
    loss.backward()
    return loss.detach(), r.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


MIXED = [2, 9, 4, 3, 9]


@pytest.mark.parametrize("arch, attn, ks", [("llama", "sdpa", [k] * 3) for k in range(2, 10)]
                         + [(arch, attn, MIXED) for arch in ARCHS for attn in ("sdpa", "eager")], ids=str)
def test_shared_prompt_equals_separate_encodings(arch, attn, ks):
    model = rm(arch, attn)
    batch = comparisons(ks, seed=sum(ks))
    loss_p, r_p, g_p = loss_rewards_grads(model, batch, shared=False)
    loss_s, r_s, g_s = loss_rewards_grads(model, batch, shared=True)
    assert r_s.shape == (sum(ks),)
    torch.testing.assert_close(r_s, r_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_s, loss_p, rtol=1e-5, atol=1e-6)
    assert g_s.keys() == g_p.keys() and len(g_s) > 0
    for name in g_p:
        torch.testing.assert_close(g_s[name], g_p[name], rtol=1e-4, atol=1e-6, msg=name)


def test_segment_mask_sees_prompt_and_own_completion_only():
    seg = torch.tensor([[0, 0, 1, 1, 2, -1]])
    m = segment_mask(seg, "sdpa", torch.float32)[0, 0].int()
    assert m.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],   # completion 2 does not see completion 1
        [1, 1, 0, 0, 0, 1],   # padding (never read) sees the prompt and itself: no all-masked row
    ]
    eager = segment_mask(seg, "eager", torch.float32)[0, 0]
    assert (eager == 0).int().tolist() == m.tolist() and eager.min() == torch.finfo(torch.float32).min


def test_flash_attention_is_refused_by_name():
    with pytest.raises(ValueError, match="flash_attention_2.*stage.shared_prompt=false"):
        segment_mask(torch.zeros(1, 3, dtype=torch.long), "flash_attention_2", torch.float32)


def test_groups_packed_in_one_row_do_not_see_each_other():
    seg, groups = torch.tensor([[0, 1, 0, 1]]), torch.tensor([[0, 0, 1, 1]])  # two prompts with a completion each
    m = segment_mask(seg, "sdpa", torch.float32, groups)[0, 0].int()
    assert m.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
