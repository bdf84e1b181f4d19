"""The reward model's scalar head: loads from a causal LM, reads the last real token, normalises."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf.models.reward import (load_reward_model, normalization, score_ids, sequence_rewards,
                                set_normalization, token_values)
from rlhf.models.tokenizer import train_bpe_tokenizer

ARCHS = {
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64),
}


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(["reverse: cat dog sun red blue tree fish bird"] * 4, vocab_size=300)


def causal_lm_dir(tmp_path, tok, arch: str, with_pad: bool = True):
    """A tiny random causal LM + tokenizer saved like any HF checkpoint (no download)."""
    config = AutoConfig.for_model(**ARCHS[arch], vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id if with_pad else None)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config)
    lm.save_pretrained(tmp_path / arch)
    tok.save_pretrained(tmp_path / arch)
    return tmp_path / arch, lm


def batch(tok, texts: list[str], side: str):
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    n = max(map(len, rows))
    ids = torch.full((len(rows), n), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(n - len(r), n)
        ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    return ids, mask


TEXTS = ["reverse: cat dog\nsun", "reverse: cat dog sun red blue\ntree fish", "red"]


@pytest.mark.parametrize("arch", ARCHS)
def test_loads_backbone_with_fresh_scalar_head(tmp_path, tok, arch):
    path, lm = causal_lm_dir(tmp_path, tok, arch)
    rm = load_reward_model(str(path), fresh_head=True)
    assert rm.config.num_labels == 1 and rm.get_output_embeddings() is None  # unembedding removed
    emb = rm.base_model.get_input_embeddings().weight
    assert torch.equal(emb, lm.get_input_embeddings().weight)  # backbone kept
    ids, mask = batch(tok, TEXTS, "right")
    assert sequence_rewards(rm, ids, mask).shape == (3,)


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_plain_transformers_and_ignores_padding_side(tmp_path, tok, arch):
    path, _ = causal_lm_dir(tmp_path, tok, arch)
    rm = load_reward_model(str(path), fresh_head=True).eval()
    rm.save_pretrained(tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids, mask = batch(tok, TEXTS, "right")
    with torch.no_grad():
        ours = sequence_rewards(rm, ids, mask, raw=True)
        theirs = plain(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        left = sequence_rewards(rm, *batch(tok, TEXTS, "left"), raw=True)  # GPT-2 needs position ids
        alone = torch.stack([sequence_rewards(rm, *batch(tok, [t], "right"), raw=True)[0] for t in TEXTS])
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(left, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, ours, atol=1e-5, rtol=1e-5)


def test_token_values_are_the_head_at_every_position(tmp_path, tok):
    rm = load_reward_model(str(causal_lm_dir(tmp_path, tok, "llama")[0]), fresh_head=True).eval()
    ids, mask = batch(tok, TEXTS, "right")
    with torch.no_grad():
        values, rewards = token_values(rm, ids, mask), sequence_rewards(rm, ids, mask)
    assert values.shape == ids.shape
    last = mask.sum(-1) - 1
    torch.testing.assert_close(values[torch.arange(3), last], rewards)


def test_normalization_is_stored_in_config_and_applied(tmp_path, tok):
    rm = load_reward_model(str(causal_lm_dir(tmp_path, tok, "llama")[0]), fresh_head=True).eval()
    assert normalization(rm) == (1.0, 0.0)
    ids, mask = batch(tok, TEXTS, "right")
    raw = sequence_rewards(rm, ids, mask, raw=True).detach()
    set_normalization(rm, gain=2.0, bias=-0.5)
    rm.save_pretrained(tmp_path / "rm")
    again = load_reward_model(str(tmp_path / "rm")).eval()
    assert normalization(again) == (2.0, -0.5)
    torch.testing.assert_close(sequence_rewards(again, ids, mask).detach(), 2.0 * raw - 0.5)
    torch.testing.assert_close(token_values(again, ids, mask, raw=True)[torch.arange(3), mask.sum(-1) - 1].detach(), raw)
    rows = [ids[i, :int(mask[i].sum())].tolist() for i in range(3)]
    torch.testing.assert_close(score_ids(again, rows, tok.pad_token_id, batch_size=2), 2.0 * raw - 0.5)


def test_missing_pad_token_id_comes_from_the_tokenizer(tmp_path, tok):
    path, _ = causal_lm_dir(tmp_path, tok, "gpt2", with_pad=False)
    assert load_reward_model(str(path), fresh_head=True).config.pad_token_id == tok.pad_token_id


def test_rm_scores_holds_a_prompts_samples_in_one_group_and_scores_each_as_alone(tmp_path, tok):
    from rlhf.eval.measure import rm_scores
    from rlhf.models.tokenizer import encode_pair

    path, _ = causal_lm_dir(tmp_path, tok, "llama")
    rm = load_reward_model(str(path), fresh_head=True).eval()
    set_normalization(rm, 2.0, 0.5)
    prompts = ["reverse: cat dog"] * 3 + ["red"] * 2 + ["reverse: cat dog"]
    responses = ["dog cat", "cat", "", "sun red blue tree", "tree", "fish"]
    got = rm_scores(rm, tok, prompts, responses, "{prompt}\n", batch_size=2)
    rows = [sum(encode_pair(tok, p, r or " ", "{prompt}\n"), []) for p, r in zip(prompts, responses)]
    torch.testing.assert_close(got, score_ids(rm, rows, tok.pad_token_id), rtol=1e-5, atol=1e-5)
