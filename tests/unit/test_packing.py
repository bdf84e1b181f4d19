"""Packed LM batches: the loss and gradients of the same documents right-padded."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlhf.algos.lm_loss import lm_loss
from rlhf.data.lm import IGNORE, collate_lm
from rlhf.data.prompts import ptx_batches
from rlhf.models.attention import pack
from rlhf.modules.lm import lm_logits

ARCHS = {
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=128),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=128),
}
PAD = 0


def docs(n: int, seed: int = 0, prompt_masked: bool = False) -> list[dict]:
    """Texts of 2-30 tokens; with ``prompt_masked`` their first tokens carry no loss (SFT)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(1, 60) for _ in range(rng.randint(2, 30))]
        cut = rng.randint(1, len(ids) - 1) if prompt_masked else 0
        out.append({"input_ids": ids, "labels": [IGNORE] * cut + ids[cut:]})
    return out


def lm(arch: str, attn: str):
    config = AutoConfig.for_model(**ARCHS[arch], vocab_size=60, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()  # eval: no dropout


def loss_and_grads(model, batch):
    model.zero_grad()
    loss, n = lm_loss(lm_logits(model, batch), batch["labels"])
    loss.backward()
    return loss.detach(), int(n), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch, attn", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa")])
@pytest.mark.parametrize("prompt_masked", [False, True], ids=["pretrain", "sft"])
def test_packed_batch_has_the_loss_and_gradients_of_the_padded_one(arch, attn, prompt_masked):
    model, batch = lm(arch, attn), docs(24, seed=3, prompt_masked=prompt_masked)
    padded, packed = collate_lm(batch, PAD, pack=False), collate_lm(batch, PAD, pack=True)
    assert packed["input_ids"].numel() < 0.75 * padded["input_ids"].numel()  # the padding is gone
    loss_pad, n_pad, g_pad = loss_and_grads(model, padded)
    loss_pack, n_pack, g_pack = loss_and_grads(model, packed)
    assert n_pack == n_pad  # the same tokens carry loss
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-6)
    for name in g_pad:
        torch.testing.assert_close(g_pack[name], g_pad[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pack_places_every_document_once_within_the_width():
    lengths = [random.Random(i).randint(1, 40) for i in range(200)]
    rows = pack(lengths, max(lengths))
    assert sorted(i for r in rows for i in r) == list(range(200))
    assert all(sum(lengths[i] for i in r) <= max(lengths) for r in rows)
    assert len(rows) <= 1.3 * sum(lengths) / max(lengths) + 1  # first-fit decreasing: near full rows


def test_packed_rows_restart_positions_and_mask_each_first_label():
    b = collate_lm([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]},
                    {"input_ids": [3], "labels": [3]}], PAD, pack=True)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 9, 3]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert b["segments"].tolist() == [[1, 1, 1], [1, 1, 2]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, 9, IGNORE]]


def test_ptx_batches_are_one_per_optimizer_step_in_order():
    texts = docs(12, seed=1)
    chunks = ptx_batches(texts, 3, PAD, pack=True)
    assert len(chunks) == 3
    for i, c in enumerate(chunks):
        tokens = sorted(t for row, seg in zip(c["input_ids"].tolist(), c["segments"].tolist())
                        for t, s in zip(row, seg) if s > 0)
        assert tokens == sorted(t for d in texts[4 * i:4 * i + 4] for t in d["input_ids"])
