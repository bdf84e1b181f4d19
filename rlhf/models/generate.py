"""Sampling: a decode loop whose finished rows stop costing, and the text sampler built on it.

``decode`` is what ``generate(do_sample=True, top_k=0, top_p=1.0)`` computes (pure sampling at a
temperature, or greedy at 0, KV cache on), except that rows which have emitted EOS are dropped
from the batch and from its KV cache, so a batch no longer runs at the cost of its longest
sample for every row. HF ``generate`` keeps every row until the last one ends.

Same seed, same samples? Without dropping (``prune=False``) the loop draws its random numbers
exactly as ``generate`` does and returns the same tokens (tested). Dropping rows changes the
shape of later draws, so the samples differ from ``generate``'s for a given seed while each row
is still drawn from the model's own distribution given its prefix (tested: the probability of
every sampled token equals the teacher-forced one). Greedy decoding is identical either way.

Comparison collection, evaluation, best-of-n and PPO's rollout (``rlhf.rollout``) all sample here.
"""
from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from rlhf.models.build import position_ids
from rlhf.models.tokenizer import prompt_ids

PRUNE_FRACTION = 1 / 8  # drop finished rows once they are this share of the batch: each drop copies the cache


def _pick(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) next tokens from (B, V) logits, sampled at ``temperature`` (greedy at 0) as generate
    does, and (B,) their log-probabilities under the distribution they were drawn from."""
    logits = logits.float() / (temperature or 1.0)
    logp = torch.log_softmax(logits, -1)
    tok = logits.argmax(-1) if temperature == 0 else torch.multinomial(logp.exp(), 1).squeeze(1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(1)


def _cache_arg(model) -> str:
    """The forward argument that takes the KV cache (``past_key_values`` was renamed ``cache``)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           temperature: float, eos_id: int, pad_id: int, prune: bool = True, return_logprobs: bool = False):
    """(B, T <= max_new_tokens) tokens sampled after left-padded prompts input_ids, attention_mask (B, Tq).

    A row is padded with ``pad_id`` after its EOS; T is the number of steps until every row has
    ended (or the cap), as with ``generate``. ``prune=False`` keeps finished rows in the batch.
    ``return_logprobs``: also (B, T) the log-probability each token was sampled with (0 after EOS).
    """
    B = input_ids.shape[0]
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=input_ids.device)
    out_logp = torch.zeros((B, max_new_tokens), device=input_ids.device)
    rows = torch.arange(B, device=input_ids.device)  # the output row of each row still in the batch
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    mask, pos = attention_mask.long(), position_ids(attention_mask)
    cache = {_cache_arg(model): DynamicCache(config=model.config)}
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, **cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    nxt = pos[:, -1] + 1
    for t in range(max_new_tokens):
        tok, logp = _pick(logits, temperature)
        tok = tok.masked_fill(done, pad_id)
        out[rows, t], out_logp[rows, t] = tok, logp.masked_fill(done, 0.0)
        done = done | (tok == eos_id)
        if done.all() or t == max_new_tokens - 1:
            break
        if prune and done.sum() >= max(1, PRUNE_FRACTION * len(rows)):
            keep = (~done).nonzero().squeeze(1)
            for layer in next(iter(cache.values())).layers:
                layer.batch_select_indices(keep)
            rows, mask, nxt, tok, done = rows[keep], mask[keep], nxt[keep], tok[keep], done[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
        logits = model(input_ids=tok[:, None], attention_mask=mask, position_ids=nxt[:, None],
                       **cache, use_cache=True).logits[:, -1]
        nxt = nxt + 1
    return (out[:, :t + 1], out_logp[:, :t + 1]) if return_logprobs else out[:, :t + 1]


@torch.no_grad()
def sample(model, tok, prompts: list, template: str, n: int = 1, max_new_tokens: int = 48,
           temperature: float = 1.0, batch_size: int = 64) -> list[list[str]]:
    """``n`` responses per prompt, cut at EOS; greedy when ``temperature == 0``."""
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        enc = tok.pad({"input_ids": [prompt_ids(tok, p, template) for p in chunk]},  # left: generation continues
                      padding_side="left", return_tensors="pt").to(model.device)  # right after each prompt
        ids = decode(model, enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0),
                     max_new_tokens, temperature, tok.eos_token_id, tok.pad_token_id)
        texts = tok.batch_decode(ids, skip_special_tokens=True)
        out.extend([t.strip() for t in texts[j * n:(j + 1) * n]] for j in range(len(chunk)))
    model.train(was_training)
    return out
