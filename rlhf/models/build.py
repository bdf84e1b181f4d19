"""Build the policy LM and its tokenizer from a model preset, a hub id, or a stage's ``final/``.

Where a stage's weights come from, first match wins:
1. ``init``: a previous stage's ``final/`` directory (or any HF checkpoint path / hub id);
2. ``model.pretrained``: a hub id or local directory (the HF presets: gpt2, pythia, llama);
3. ``model.arch``: a transformers config built with random init (the from-scratch presets),
   with a byte-level BPE tokenizer trained on the run's corpus.
All HF paths go through ``from_pretrained``, so the code users run is the code tests run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rlhf.models.tokenizer import prepare_tokenizer, train_bpe_tokenizer

log = logging.getLogger(__name__)

# Residual dropout by architecture (paper: 0.2 in SFT). Llama has none in transformers, so
# the knob falls back to its attention dropout; documented in the README.
_DROPOUT_KEYS = ("resid_pdrop", "hidden_dropout", "attention_dropout", "attn_pdrop", "embd_pdrop")


def weights_source(cfg: DictConfig) -> str | None:
    """Where the starting weights come from: ``init``, ``model.pretrained`` or None (random)."""
    return cfg.get("init") or cfg.model.get("pretrained")


def load_tokenizer(cfg: DictConfig, tokenizer_dir: Path, corpus: Callable[[], Iterable[str]]):
    """The checkpoint's tokenizer, or one trained on ``corpus()`` and cached in ``tokenizer_dir``.

    The cache makes a resumed run reuse exactly the tokenizer its checkpoint was trained with.
    """
    source = weights_source(cfg)
    if source:
        return prepare_tokenizer(AutoTokenizer.from_pretrained(source))
    if (tokenizer_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    log.info("training a %d-token byte-level BPE on the run's corpus", cfg.model.vocab_size)
    tok = train_bpe_tokenizer(corpus(), cfg.model.vocab_size)
    tok.save_pretrained(str(tokenizer_dir))
    return tok


def set_dropout(model: PreTrainedModel, p: float) -> None:
    """Set the residual dropout (or the closest the architecture has) to ``p`` everywhere."""
    for key in _DROPOUT_KEYS:
        if hasattr(model.config, key):
            setattr(model.config, key, p)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    for module in model.modules():  # some attention layers read the rate at forward time
        if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
            module.attention_dropout = p


def build_causal_lm(cfg: DictConfig, tokenizer) -> PreTrainedModel:
    """The causal LM the stage trains (see the module docstring for the source order)."""
    source = weights_source(cfg)
    if source:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    else:
        arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
        config = AutoConfig.for_model(
            **arch, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        )
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_config(config)
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def inference_device(cfg: DictConfig) -> torch.device:
    """Where the sampling and scoring stages (collect, select, best-of-n, eval) run: the GPU
    when there is one and ``trainer.accelerator`` allows it, else the CPU. Weights stay fp32."""
    if str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_causal_lm(path: str, cfg: DictConfig) -> PreTrainedModel:
    """A stage's ``final/`` (or any HF causal LM) for sampling, on :func:`inference_device`, in eval mode."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(inference_device(cfg)).eval()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding. GPT-2's forward pass is wrong without them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
