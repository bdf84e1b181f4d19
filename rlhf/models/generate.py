"""Sampling responses as text: comparison collection, evaluation and best-of-n share it.

PPO's rollout needs token ids and masks as well and has its own path (rlhf/rollout.py).
"""
from __future__ import annotations

import torch

from rlhf.models.tokenizer import render_prompt


@torch.no_grad()
def sample(model, tok, prompts: list[str], template: str, n: int = 1, max_new_tokens: int = 48,
           temperature: float = 1.0, batch_size: int = 64) -> list[list[str]]:
    """``n`` responses per prompt, cut at EOS; greedy when ``temperature == 0``."""
    model.eval()
    tok.padding_side = "left"  # generation continues right after each prompt's last token
    out: list[list[str]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        enc = tok([render_prompt(tok, p, template) for p in chunk], return_tensors="pt",
                  padding=True, add_special_tokens=False).to(model.device)
        kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 \
            else dict(do_sample=False)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=n,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kwargs)
        texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out.extend([t.strip() for t in texts[j * n:(j + 1) * n]] for j in range(len(chunk)))
    return out
