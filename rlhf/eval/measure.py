"""What evaluation measures on a model: response log-probs, LM loss on text, RM scores, win rates."""
from __future__ import annotations

import math
import random

import torch

from rlhf import feedback
from rlhf.algos.lm_loss import IGNORE, lm_loss
from rlhf.algos.logprobs import logprobs_from_logits
from rlhf.data.lm import Counts, collate_right, encode_demonstrations, encode_texts
from rlhf.models.reward import NonFiniteError, check_rewards, completion_rewards
from rlhf.data.convert import as_messages
from rlhf.models.tokenizer import encode_pair


def mean_ci(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval (values may be 0 / 0.5 / 1 preferences)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return m, m - half, m + half


def _first_nonfinite(x, key: str = "") -> tuple[str, float] | None:
    """(key path, value) of the first NaN or inf float in nested dicts / lists / tuples."""
    if isinstance(x, float):
        return None if math.isfinite(x) else (key, x)
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, (list, tuple)) else ()
    return next((f for k, v in items if (f := _first_nonfinite(v, f"{key}[{k!r}]"))), None)


def require_finite(figures, where: str) -> None:
    """Stop before ``where`` is written if ``figures`` hold NaN or inf: no file holds a bare NaN."""
    if found := _first_nonfinite(figures):
        raise NonFiniteError(f"{where} not written: {found[0]} is {found[1]}")


def _rows(tok, prompts, responses, template):
    demos = [{"prompt": p, "completion": r or " "} for p, r in zip(prompts, responses)]
    return encode_demonstrations(demos, tok, template, 10**9, 10**9, Counts())  # measure, never drop


@torch.no_grad()
def response_logprobs(model, tok, prompts: list[str], responses: list[str], template: str,
                      batch_size: int = 64) -> torch.Tensor:
    """(N,) sum of log p(response + EOS | prompt) under ``model`` (temperature 1)."""
    model.eval()
    rows, out = _rows(tok, prompts, responses, template), []
    for i in range(0, len(rows), batch_size):
        b = {k: v.to(model.device) for k, v in collate_right(rows[i:i + batch_size], tok.pad_token_id).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        labels = b["labels"][:, 1:]
        lp = logprobs_from_logits(logits[:, :-1], labels.clamp(min=0))
        out.append((lp * (labels != IGNORE)).sum(-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def text_loss(model, tok, texts: list[str], max_tokens: int, batch_size: int = 64) -> float:
    """Token-weighted LM loss on ``texts`` (the pretraining-validation loss of the alignment tax)."""
    model.eval()
    rows = encode_texts([{"text": t} for t in texts], tok, max_tokens, Counts())
    total, n = 0.0, 0
    for i in range(0, len(rows), batch_size):
        b = {k: v.to(model.device) for k, v in collate_right(rows[i:i + batch_size], tok.pad_token_id).items()}
        loss, k = lm_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
        total, n = total + float(loss) * int(k), n + int(k)
    return total / max(n, 1)


@torch.no_grad()
def rm_scores(rm, tok, prompts: list[str], responses: list[str], template: str, batch_size: int = 32,
              max_group: int = 9) -> torch.Tensor:
    """(N,) normalised RM rewards of (prompt, response) pairs, in order; NaN or inf raises
    :class:`NonFiniteError` naming the RM and the first such prompt (every RM caller but PPO and
    ``rlhf-score`` scores through here: select, bestofn, eval, judge=rm, rm_check).

    Consecutive pairs with the same prompt (a prompt's n samples) are scored as groups of up to
    ``max_group``, the prompt held once (the RM's shared-prompt rows; wider rows cost more than
    they save); every reward is the one it gets alone.
    """
    from rlhf.data.comparisons import collate_comparisons

    groups = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        prompt_ids, response_ids = encode_pair(tok, p, r or " ", template)
        if i and p == prompts[i - 1] and len(groups[-1]["completions"]) < max_group:
            groups[-1]["completions"].append(response_ids)
        else:
            groups.append({"prompt": prompt_ids, "completions": [response_ids]})
    out, device = [], next(rm.parameters()).device
    for i in range(0, len(groups), batch_size):
        chunk = [{**g, "ranks": [0] * len(g["completions"])} for g in groups[i:i + batch_size]]
        b = {k: v.to(device) for k, v in collate_comparisons(chunk, tok.pad_token_id).items()}
        out.append(completion_rewards(rm, b).float().cpu())  # (owner, slot) order: the input order
    return check_rewards(rm, torch.cat(out), prompts) if out else torch.zeros(0)


def few_shot_template(demos: list[dict], template: str) -> str:
    """The template with k demonstrations in front: the paper's "prompted" GPT-3 baseline.

    Shots are joined by newlines, not EOS: one document of answered prompts, like a quiz page
    with its answers; after an EOS a base model starts a new document and forgets the shots.
    """
    shots = "".join(template.format(prompt=d["prompt"]) + d["completion"] + "\n" for d in demos)
    return shots.replace("{", "{{").replace("}", "}}") + template


def few_shot(demos: list[dict], prompts: list, template: str) -> tuple[list, str]:
    """(prompts, template) of the "prompted" baseline: k demonstrations before every prompt, in the
    template for string prompts, as earlier user/assistant turns for conversational ones."""
    shots = [d for d in demos if "completion" in d]  # a whole-text record is no shot
    if all(isinstance(p, str) for p in prompts):
        return prompts, few_shot_template([d for d in shots if isinstance(d["prompt"], str)], template)
    turns = [m for d in shots for m in as_messages(d["prompt"]) + [{"role": "assistant", "content": d["completion"]}]]
    def shown(p):  # a system message stays first (templates require it there)
        p = as_messages(p)
        k = next((i for i, m in enumerate(p) if m["role"] != "system"), len(p))
        return p[:k] + turns + p[k:]
    return [shown(p) for p in prompts], template


def judge_pairs(judge, prompts, responses, reference, rng: random.Random) -> list[float]:
    """P(response beats reference) per pair, shown to the judge in random order (position bias)."""
    prefs = []
    for p, a, b in zip(prompts, responses, reference):
        if rng.random() < 0.5:
            prefs.append(feedback.call_prefer(judge, p, a, b))
        else:
            prefs.append(1.0 - feedback.call_prefer(judge, p, b, a))
    return prefs
