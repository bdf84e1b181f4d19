"""The rollout: EOS truncation and masks, the missing-EOS penalty, padded recompute, the prompt stream."""
from __future__ import annotations

import pytest
import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          GPT2Config, LlamaConfig)

from rlhf.data.prompts import Iterations, stream_batch
from rlhf.models.build import position_ids
from rlhf.models.reward import set_normalization
from rlhf.rollout import (apply_missing_eos_penalty, response_logprobs, response_values, rollout,
                          truncate_after_eos)

EOS, PAD = 1, 0


def test_truncate_after_first_eos():
    ids = torch.tensor([[5, 1, 7, 1],    # EOS at 1: keep it, cut after
                        [1, 4, 4, 4],    # EOS first: a one-token response
                        [6, 7, 8, 9],    # no EOS: all kept
                        [5, 6, 1, 0]])   # HF padding after EOS
    out, mask, has_eos = truncate_after_eos(ids, EOS, PAD)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert out.tolist() == [[5, 1, 0, 0], [1, 0, 0, 0], [6, 7, 8, 9], [5, 6, 1, 0]]
    assert has_eos.tolist() == [True, True, False, True]


def test_truncate_when_pad_is_eos():  # HF tokenizers without a pad token pad with EOS
    out, mask, has_eos = truncate_after_eos(torch.tensor([[4, 1, 1, 1]]), EOS, EOS)
    assert mask.tolist() == [[1, 1, 0, 0]] and has_eos.tolist() == [True]


def test_missing_eos_penalty():
    scores, has_eos = torch.tensor([0.5, 2.0, -3.0]), torch.tensor([True, False, False])
    assert apply_missing_eos_penalty(scores, has_eos, -1.0).tolist() == [0.5, -1.0, -1.0]
    assert apply_missing_eos_penalty(scores, has_eos, None).tolist() == [0.5, 2.0, -3.0]


def _tiny(kind: str, vocab: int = 32):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=64,
                            eos_token_id=EOS, pad_token_id=PAD, bos_token_id=EOS)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=64, eos_token_id=EOS,
                             pad_token_id=PAD, bos_token_id=EOS)
    lm = AutoModelForCausalLM.from_config(config).eval()
    rm_config = AutoConfig.for_model(**{**config.to_dict(), "num_labels": 1})
    rm = AutoModelForSequenceClassification.from_config(rm_config).eval()
    return lm, rm


def _padded_batch():
    """Prompts of 3, 5, 2 tokens left-padded; responses of 4, 1, 3 tokens right-padded."""
    prompts, responses = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14]], [[20, 21, 22, EOS], [EOS], [23, 24, 25]]
    q = torch.full((3, 5), PAD)
    qm = torch.zeros(3, 5, dtype=torch.long)
    r = torch.full((3, 4), PAD)
    rm = torch.zeros(3, 4, dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, responses)):
        q[i, 5 - len(p):], qm[i, 5 - len(p):] = torch.tensor(p), 1
        r[i, :len(s)], rm[i, :len(s)] = torch.tensor(s), 1
    return prompts, responses, (q, qm, r, rm)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_left_padded_recompute_equals_unpadded_per_example(kind):
    lm, value_model = _tiny(kind)
    prompts, responses, batch = _padded_batch()
    with torch.no_grad():
        lp = response_logprobs(lm, *batch, temperature=0.7)
        v = response_values(value_model, *batch)
        for i, (p, s) in enumerate(zip(prompts, responses)):
            one = (torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long),
                   torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
            n = len(s)
            torch.testing.assert_close(lp[i, :n], response_logprobs(lm, *one, temperature=0.7)[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(v[i, :n], response_values(value_model, *one)[0], atol=1e-5, rtol=0)
            # and by hand: log softmax(logits / T) of the unpadded sequence
            logits = lm(input_ids=torch.cat([one[0], one[2]], 1)).logits[0, len(p) - 1:-1] / 0.7
            torch.testing.assert_close(lp[i, :n], logits.log_softmax(-1)[torch.arange(n), torch.tensor(s)],
                                       atol=1e-5, rtol=0)


def test_gpt2_needs_position_ids_with_left_padding():  # why rollout passes them
    lm, _ = _tiny("gpt2")
    _, _, (q, qm, _, _) = _padded_batch()
    with torch.no_grad():
        plain = lm(input_ids=q, attention_mask=qm).logits[0, -1]
        right = lm(input_ids=q, attention_mask=qm, position_ids=position_ids(qm)).logits[0, -1]
        alone = lm(input_ids=q[:1, 2:]).logits[0, -1]
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(plain, alone, atol=1e-3)


def test_rollout_masks_scores_and_logprobs_are_consistent():
    lm, rm = _tiny("llama", vocab=6)  # 6 tokens: EOS is sampled often, but not always within 5 tokens
    set_normalization(rm, 2.0, 0.5)
    _, _, (q, qm, _, _) = _padded_batch()
    q, qm = q.repeat(6, 1) % 6, qm.repeat(6, 1)  # 18 prompts, token ids inside the 6-token vocabulary
    torch.manual_seed(0)
    info = rollout(lm, lm, rm, rm, q, qm, max_new_tokens=5, temperature=1.0, eos_id=EOS, pad_id=PAD,
                 missing_eos_penalty=-7.0)
    ro = info.rollout
    assert info.has_eos.any() and not info.has_eos.all()
    for i in range(len(q)):
        n = int(ro.response_mask[i].sum())
        real = ro.response_ids[i, :n].tolist()
        assert ro.response_mask[i, :n].all() and not ro.response_mask[i, n:].any()
        assert (EOS in real) == bool(info.has_eos[i]) and (not info.has_eos[i] or real.index(EOS) == n - 1)
        assert (ro.response_ids[i, n:] == PAD).all()
    torch.testing.assert_close(info.rm_score, 2.0 * info.rm_score_raw + 0.5)
    assert (ro.scores[~info.has_eos] == -7.0).all() and torch.equal(ro.scores[info.has_eos], info.rm_score[info.has_eos])
    assert torch.equal(ro.logprobs, ro.ref_logprobs)  # same model as policy and reference
    assert torch.equal(info.value_mask, ro.response_mask)
    assert ro.logprobs.shape == ro.values.shape == info.entropy.shape == ro.response_ids.shape


def test_prompt_stream_is_a_pure_function_of_the_batch_index():
    n, size = 10, 4
    first_pass = [i for k in range(5) for i in stream_batch(n, k, size, "0/prompts")]
    assert sorted(first_pass[:10]) == list(range(10)) and sorted(first_pass[10:20]) == list(range(10))
    assert first_pass[:10] != first_pass[10:20]  # each pass reshuffled
    assert stream_batch(n, 3, size, "0/prompts") == first_pass[12:16]
    assert stream_batch(n, 0, size, "1/prompts") != stream_batch(n, 0, size, "0/prompts")
    assert list(Iterations(lambda k: k, start=lambda: 3, stop=6)) == [3, 4, 5]


def test_an_rm_ensemble_scores_the_members_mean_minus_their_spread():
    import copy

    from rlhf.algos.ppo import conservative_reward
    lm, rm = _tiny("llama", vocab=6)
    other = copy.deepcopy(rm)
    torch.nn.init.normal_(other.score.weight)  # another head: the members disagree
    set_normalization(rm, 2.0, 0.5)
    set_normalization(other, 1.0, -0.5)
    _, _, (q, qm, _, _) = _padded_batch()
    q = q % 6
    kw = dict(max_new_tokens=5, temperature=1.0, eos_id=EOS, pad_id=PAD, missing_eos_penalty=None)
    torch.manual_seed(0)
    one = rollout(lm, lm, rm, rm, q, qm, **kw)
    torch.manual_seed(0)
    both = rollout(lm, lm, rm, torch.nn.ModuleList([rm, other]), q, qm, ensemble_coef=0.5, **kw)
    torch.manual_seed(0)
    alone = rollout(lm, lm, rm, other, q, qm, **kw)
    assert torch.equal(one.rollout.response_ids, both.rollout.response_ids)  # the same episodes, scored twice
    members = torch.stack([one.rm_score, alone.rm_score])
    torch.testing.assert_close(both.rm_score, members.mean(0) - 0.5 * members.std(0, unbiased=False))
    torch.testing.assert_close(both.rollout.scores, conservative_reward(members, 0.5))
    torch.testing.assert_close(both.rm_spread, (one.rm_score - alone.rm_score).abs() / 2)
    assert (both.rm_spread > 0).all() and (one.rm_spread == 0).all()
