"""The PPO rollout: sample responses from the current policy, then score them (no learning here).

    prompts (left-padded) --generate--> responses --truncate after the first EOS--> masks
      --> old log-probs (policy), reference log-probs (SFT), values (value model), score (RM)

Token layout. A prompt of Tq tokens (left-padded) is followed by a response of T tokens
(right-padded). Response token j is predicted by the logits at position Tq - 1 + j, and its
value V(s_j) is read at that same position: s_j = prompt + response[:j] is the state in which
token j is chosen. Two masks over the T response positions, both (B, T):

  response_mask  log-probs, KL, entropy, rewards, policy loss: the tokens the policy chose, up
                 to and including the first EOS; 0 after it.
  value_mask     value loss, GAE, explained variance: the states s_j the value model is fitted
                 on, one per chosen token. The state after EOS is terminal, worth 0 by
                 definition, and is not fitted (TRL's ``padding_mask_p1`` fits it, to 0).
                 With this alignment both masks cover the same positions; they are kept apart
                 so neither loss depends on the other's definition.

A response with no EOS (``max_new_tokens`` reached) keeps all its tokens, and its score is
replaced by ``missing_eos_penalty`` (None keeps the RM's score). Log-probs are recomputed with
logits / temperature, so they match the distribution the tokens were sampled from, and with
``position_ids`` from the attention mask (GPT-2 is wrong with left padding otherwise).
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, NamedTuple

import torch
from torch import nn

from rlhf.algos.logprobs import entropy_from_logits, logprobs_from_logits
from rlhf.algos.ppo import Rollout, conservative_reward
from rlhf.models.build import position_ids
from rlhf.models.generate import decode
from rlhf.models.lora import viewing
from rlhf.models.reward import normalization, sequence_rewards, token_values


class RolloutInfo(NamedTuple):
    """A rollout plus what only logging and the value loss need (all detached).

    rollout.scores is the score that enters the reward (RM normalised, missing-EOS penalty
    applied); value_mask, entropy: (B, T); rm_score_raw, rm_score: (B,) the RM before/after its
    normalisation, without the penalty (an ensemble: the members' mean raw score, and the
    conservative reward); rm_spread: (B,) the members' spread (0 for one RM); has_eos: (B,) bool.
    """

    rollout: Rollout
    value_mask: torch.Tensor
    entropy: torch.Tensor
    rm_score_raw: torch.Tensor
    rm_score: torch.Tensor
    has_eos: torch.Tensor
    rm_spread: torch.Tensor


def sample_responses(policy, query_ids: torch.Tensor, query_mask: torch.Tensor, max_new_tokens: int,
                     temperature: float, eos_id: int, pad_id: int) -> torch.Tensor:
    """(B, T <= max_new_tokens) tokens sampled from the policy after each prompt.

    Pure sampling at ``temperature`` (no top-k / top-p), KV cache on, finished rows padded and
    dropped from the batch (``rlhf.models.generate.decode``).
    """
    return decode(policy, query_ids, query_mask, max_new_tokens, temperature, eos_id, pad_id)


def truncate_after_eos(response_ids: torch.Tensor, eos_id: int, pad_id: int):
    """Cut each row after its first EOS.

    response_ids: (B, T). Returns (ids with pad after the first EOS (B, T), response_mask (B, T)
    long, 1 up to and including the first EOS, has_eos (B,) bool).
    """
    is_eos = (response_ids == eos_id).long()
    after = (is_eos.cumsum(-1) - is_eos) > 0  # strictly after the first EOS
    return response_ids.masked_fill(after, pad_id), (~after).long(), is_eos.bool().any(-1)


def apply_missing_eos_penalty(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """scores, has_eos: (B,). Rows without EOS get ``penalty``; None leaves scores as they are."""
    return scores if penalty is None else torch.where(has_eos, scores, torch.full_like(scores, penalty))


def _joined(query_ids, query_mask, response_ids, response_mask):
    return torch.cat([query_ids, response_ids], 1), torch.cat([query_mask, response_mask], 1).long()


def response_logits(model, query_ids, query_mask, response_ids, response_mask) -> torch.Tensor:
    """(B, T, V) logits predicting each response token (only T + 1 positions go through lm_head)."""
    ids, mask = _joined(query_ids, query_mask, response_ids, response_mask)
    T = response_ids.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False,
                logits_to_keep=T + 1)
    return out.logits[:, :-1]


def response_logprobs(model, query_ids, query_mask, response_ids, response_mask, temperature: float = 1.0):
    """(B, T) log p(response token | prompt, earlier response tokens) at ``temperature``."""
    logits = response_logits(model, query_ids, query_mask, response_ids, response_mask)
    return logprobs_from_logits(logits, response_ids, temperature)


def response_values(value_model, query_ids, query_mask, response_ids, response_mask) -> torch.Tensor:
    """(B, T) V(s_j): the value head at the last token of prompt + response[:j] (normalised scale)."""
    ids, mask = _joined(query_ids, query_mask, response_ids, response_mask)
    Tq = query_ids.shape[1]
    return token_values(value_model, ids, mask)[:, Tq - 1:-1].float()  # fp32 under bf16 autocast too


@contextmanager
def phase(times: dict | None, name: str):
    """Add the wall seconds of the block to ``times[name]`` (CUDA synchronised); None: no timing."""
    if times is None:
        yield
        return
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    yield
    sync()
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0


def check_finite(name: str, x: torch.Tensor, iteration: int, mask: torch.Tensor | None = None) -> None:
    """Stop the run if ``x`` (where ``mask`` is set) holds NaN or inf, naming tensor and iteration."""
    bad = ~torch.isfinite(x) if mask is None else ~torch.isfinite(x) & mask.bool()
    if bad.any():
        where = bad.nonzero()[0].tolist()
        raise FloatingPointError(f"PPO iteration {iteration}: {int(bad.sum())} non-finite value(s) in {name} "
                                 f"(first at index {where})")


@torch.no_grad()
def rollout(policy, reference, value_model, reward_model, query_ids: torch.Tensor, query_mask: torch.Tensor, *,
            max_new_tokens: int, temperature: float, eos_id: int, pad_id: int,
            missing_eos_penalty: float | None, ensemble_coef: float = 1.0,
            full_params: Callable[[], ContextManager] = nullcontext, times: dict | None = None) -> RolloutInfo:
    """One batch of episodes from left-padded prompts query_ids, query_mask (B, Tq).

    ``full_params`` is where a sharded policy gathers its weights for generation. Generating
    token by token from an FSDP-sharded model all-gathers every layer at every step (TRL issue
    1726: orders of magnitude slower), so gather ONCE per rollout instead: with torch FSDP2
    (``fully_shard``, what Lightning's ModelParallelStrategy uses) a context that calls
    ``policy.unshard()`` and ``reshard()`` on exit; with FSDP1
    ``FullyShardedDataParallel.summon_full_params(policy, writeback=False, recurse=True)``.
    The scoring passes below are plain forwards and run sharded as they are. ``times`` collects
    the wall seconds of generation and of each scoring pass (``phase``). ``reward_model`` may be
    an ``nn.ModuleList`` of RMs, an ensemble scored by ``conservative_reward``. Under LoRA the
    reference and the RM are ``rlhf.models.lora.View``s of the policy and the value model: their
    passes run with the adapters off, the policy's and the value model's with them on.
    """
    with phase(times, "generation"), full_params():
        response = sample_responses(policy, query_ids, query_mask, max_new_tokens, temperature, eos_id, pad_id)
    response, mask, has_eos = truncate_after_eos(response, eos_id, pad_id)
    q = (query_ids, query_mask, response, mask)
    with phase(times, "policy_pass"):
        logits = response_logits(policy, *q)
        logprobs, entropy = logprobs_from_logits(logits, response, temperature), entropy_from_logits(logits, temperature)
        del logits
    with phase(times, "reference_pass"):
        ref_logprobs = response_logprobs(reference, *q, temperature=temperature)
    with phase(times, "value_pass"):
        values = response_values(value_model, *q)
    members = list(reward_model) if isinstance(reward_model, nn.ModuleList) else [reward_model]
    with phase(times, "rm_pass"), viewing(*members):  # each read at EOS (or the last token)
        raw = torch.stack([sequence_rewards(m, *_joined(*q), raw=True).float() for m in members])  # (M, B)
    normalised = torch.stack([gain * r + bias for r, (gain, bias) in zip(raw, map(normalization, members))])
    rm_score = conservative_reward(normalised, ensemble_coef)
    scores = apply_missing_eos_penalty(rm_score, has_eos, missing_eos_penalty)
    ro = Rollout(query_ids, query_mask, response, mask, logprobs, ref_logprobs, values, scores)
    return RolloutInfo(ro, mask.clone(), entropy, raw.mean(0), rm_score, has_eos, normalised.std(0, unbiased=False))
