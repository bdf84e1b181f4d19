"""The reward model: the SFT backbone with its unembedding replaced by a scalar head (paper §3.5).

Any HF causal LM (e.g. an SFT ``final/``) loads as ``AutoModelForSequenceClassification`` with
one label: the backbone is kept, ``lm_head`` is dropped and a fresh ``score`` head is added.

Normalisation (applied wherever the RM is used, stored in ``config.json``)::

    reward = rlhf_reward_gain * raw + rlhf_reward_bias        # defaults: gain 1, bias 0

The RM stage sets the bias so labeler demonstrations score 0 on average (optionally the gain
so they have std 1). Plain ``transformers`` ignores these two keys and returns ``raw``.

Padding caveat: :func:`sequence_rewards` reads the hidden state at the last position of
``attention_mask`` (left or right padding). Plain ``transformers`` reads the rightmost token
that is not ``pad_token_id``; the two agree for right-padded input whose last real token is
not the pad token. With ``pad == eos`` (the usual HF fallback) plain ``transformers`` skips
the final EOS and scores the token before it; ``rlhf``'s own tokenizers have a separate pad.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from rlhf.models.attention import model_mask
from rlhf.models.build import position_ids
from rlhf.models.tokenizer import prepare_tokenizer

GAIN, BIAS = "rlhf_reward_gain", "rlhf_reward_bias"


class NonFiniteError(ValueError):
    """NaN or inf in a reward model's scores, a stage's weights or metrics, or a figure about to be
    written: the run stops there, naming it."""


def loaded_from(model: PreTrainedModel) -> str:
    """Where ``model`` was loaded from (``config._name_or_path``), for error messages."""
    return getattr(model.config, "_name_or_path", "") or type(model).__name__


def check_rewards(model: PreTrainedModel, rewards: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
    """``rewards`` (N,) unchanged if all finite; else NonFiniteError naming the RM's directory,
    how many were non-finite and the first (by its prompt if ``prompts`` are given, else its row)."""
    bad = ~torch.isfinite(rewards.detach())
    if bad.any():
        i = int(bad.nonzero()[0])
        first = f"for prompt {prompts[i][:60]!r}" if prompts else f"at row {i}"
        raise NonFiniteError(f"reward model {loaded_from(model)} gave a non-finite score ({rewards[i].item()}) "
                             f"for {int(bad.sum())} of {len(rewards)} completions, the first {first}")
    return rewards


def load_reward_model(path_or_id: str, fresh_head: bool = False, key: str = "reward model") -> PreTrainedModel:
    """A trained reward model (an RM ``final/`` or an HF sequence classifier with its head); with
    ``fresh_head``, a scalar-head model built from an SFT ``final/`` or any causal LM (the RM stage's
    start). A directory of the wrong kind fails naming ``key`` (``rlhf.models.dirs``)."""
    from rlhf.models.dirs import ANY_LM, REWARD_MODEL, ModelDirError, check_model_dir

    check_model_dir(path_or_id, key, ANY_LM if fresh_head else REWARD_MODEL)
    model, info = AutoModelForSequenceClassification.from_pretrained(path_or_id, num_labels=1, dtype=torch.float32,
                                                                     output_loading_info=True)
    head = [k for k in info["missing_keys"] if k.split(".")[0] in ("score", "classifier")]
    if head and not fresh_head:  # transformers would score with a random head, silently
        raise ModelDirError(f"{key}={path_or_id} has no trained score head ({', '.join(head)} not in its weights): "
                            "it is not a trained reward model")
    if model.config.pad_token_id is None:  # plain transformers needs it for batches > 1
        model.config.pad_token_id = prepare_tokenizer(AutoTokenizer.from_pretrained(path_or_id)).pad_token_id
    return model


def score_head(model: PreTrainedModel) -> nn.Linear:
    """The head the class puts on its backbone (``score`` for llama/gpt2/gpt_neox, ...). Under LoRA
    it is peft's wrapper, which computes with the trained copy, or adapters off the original."""
    for name, module in model.named_children():
        linear = getattr(module, "original_module", module)  # peft's modules_to_save wrapper (rlhf.models.lora)
        if module is not model.base_model and isinstance(linear, nn.Linear) \
                and linear.out_features == model.config.num_labels:
            return module
    raise ValueError(f"{type(model).__name__}: no linear scoring head with {model.config.num_labels} output(s)")


def normalization(model: PreTrainedModel) -> tuple[float, float]:
    """(gain, bias) stored in the model's config; (1, 0) if it was never normalised."""
    gain, bias = float(getattr(model.config, GAIN, 1.0)), float(getattr(model.config, BIAS, 0.0))
    if not (math.isfinite(gain) and math.isfinite(bias)):
        raise NonFiniteError(f"reward model {loaded_from(model)}: non-finite normalisation in its config.json "
                             f"({GAIN} {gain}, {BIAS} {bias})")
    return gain, bias


def set_normalization(model: PreTrainedModel, gain: float = 1.0, bias: float = 0.0) -> None:
    setattr(model.config, GAIN, float(gain))
    setattr(model.config, BIAS, float(bias))


def _hidden(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) last hidden states; position ids skip left padding (GPT-2 needs them)."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids(attention_mask), use_cache=False)
    return out.last_hidden_state


def _normalize(model: PreTrainedModel, r: torch.Tensor, raw: bool) -> torch.Tensor:
    gain, bias = normalization(model)
    return r if raw else gain * r + bias


def _last_rewards(model, input_ids, attention_mask, raw: bool) -> torch.Tensor:
    """(B,) the head at each row's last attention-mask position, unchecked."""
    hidden = _hidden(model, input_ids, attention_mask)
    T = attention_mask.shape[-1]
    last = T - 1 - attention_mask.long().flip(-1).argmax(-1)  # (B,) last real position
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    return _normalize(model, score_head(model)(h).squeeze(-1), raw)


def sequence_rewards(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     raw: bool = False) -> torch.Tensor:
    """(B,) reward of each row, read at its last attention-mask position; NaN or inf raises
    :class:`NonFiniteError` (PPO's rollout scores through here).

    input_ids, attention_mask: (B, T), left or right padded. ``raw`` skips the normalisation.
    """
    return check_rewards(model, _last_rewards(model, input_ids, attention_mask, raw))


def completion_rewards(model: PreTrainedModel, batch: dict, raw: bool = False) -> torch.Tensor:
    """(N,) reward of each completion in a comparison batch (``rlhf.data.comparisons``, shared
    or plain layout), read at the completion's last token: ``batch["row"]``, ``batch["last"]``."""
    if "segments" in batch:  # the prompt once per row, then its completions
        mask, pos = model_mask(model, batch["segments"], batch.get("groups")), batch["position_ids"]
    else:
        mask, pos = batch["attention_mask"], position_ids(batch["attention_mask"])
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=pos,
                              use_cache=False).last_hidden_state
    h = hidden[batch["row"], batch["last"]]  # (N, H)
    return _normalize(model, score_head(model)(h).squeeze(-1), raw)


def token_values(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 raw: bool = False) -> torch.Tensor:
    """(B, T) the scoring head at every position: the PPO value model starts from the RM (paper).

    Normalised like the rewards by default, so initial values are on the reward's scale.
    """
    return _normalize(model, score_head(model)(_hidden(model, input_ids, attention_mask)).squeeze(-1), raw)


@torch.no_grad()
def score_ids(model: PreTrainedModel, rows: list[list[int]], pad_id: int, batch_size: int = 32,
              raw: bool = False, prompts: list[str] | None = None) -> torch.Tensor:
    """(N,) rewards of token-id rows (prompt + response + EOS), right-padded in batches; NaN or
    inf raises :class:`NonFiniteError`, naming the first row's entry of ``prompts`` if given."""
    was_training, out = model.training, []
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        n = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), n), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(chunk):
            ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), 1
        out.append(_last_rewards(model, ids.to(device), mask.to(device), raw).float().cpu())
    model.train(was_training)
    return check_rewards(model, torch.cat(out), prompts) if out else torch.zeros(0)
