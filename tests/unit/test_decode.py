"""The decode loop: generate's samples without pruning, the model's distribution with it."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlhf.models.generate import decode
from rlhf.rollout import response_logprobs, truncate_after_eos

ARCHS = {
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=128),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=128),
}
PAD, EOS, VOCAB = 0, 1, 10  # a small vocabulary: EOS ends rows at every step, so rows are dropped often


def lm(arch: str):
    config = AutoConfig.for_model(**ARCHS[arch], vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def prompts(n: int = 24):
    """Left-padded prompts of 2-7 tokens."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(2, 8, (n,), generator=g)
    ids = torch.full((n, 7), PAD)
    mask = torch.zeros(n, 7, dtype=torch.long)
    for i, k in enumerate(lengths.tolist()):
        ids[i, 7 - k:] = torch.randint(2, VOCAB, (k,), generator=g)
        mask[i, 7 - k:] = 1
    return ids, mask


def hf_generate(model, ids, mask, **kw):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, eos_token_id=EOS, pad_token_id=PAD,
                         **kw)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("arch", ARCHS)
def test_without_pruning_samples_what_generate_samples_for_the_seed(arch):
    model, (ids, mask) = lm(arch), prompts()
    torch.manual_seed(5)
    ours = decode(model, ids, mask, 20, 1.0, EOS, PAD, prune=False)
    torch.manual_seed(5)
    theirs = hf_generate(model, ids, mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_with_pruning_equals_generate(arch):
    model, (ids, mask) = lm(arch), prompts()
    ours = decode(model, ids, mask, 20, 0.0, EOS, PAD)
    assert torch.equal(ours, hf_generate(model, ids, mask, do_sample=False))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_pruned_rows_are_sampled_from_the_model_given_their_own_prefix(arch, temperature):
    model, (ids, mask) = lm(arch), prompts(48)
    sizes = []
    hook = model.register_forward_hook(lambda m, a, kw, out: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    torch.manual_seed(3)
    out, logprobs = decode(model, ids, mask, 20, temperature, EOS, PAD, return_logprobs=True)
    hook.remove()
    assert sizes[0] == 48 and sizes[-1] < sizes[0] // 2 and sizes == sorted(sizes, reverse=True)  # rows were dropped
    response, rmask, has_eos = truncate_after_eos(out, EOS, PAD)
    assert torch.equal(response, out) and has_eos.float().mean() > 0.5  # padded after EOS, as generate pads
    recomputed = response_logprobs(model, ids, mask, response, rmask, temperature)
    torch.testing.assert_close(logprobs[rmask.bool()], recomputed[rmask.bool()], rtol=1e-5, atol=1e-5)
    assert logprobs[~rmask.bool()].eq(0).all()
