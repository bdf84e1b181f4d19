"""Tokenizers: the checkpoint's own for HF models, or a byte-level BPE trained on the run's corpus.

The prompt template joins prompt and response the same way in every stage: the tokenizer's
chat template where it has one, else ``data.template`` (default ``"{prompt}\\n"``); the
response follows and ends with EOS.
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS, PAD = "<|endoftext|>", "<|pad|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style: every string round-trips) on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give HF tokenizers without a pad token one (EOS), as is standard for decoder-only LMs."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def render_prompt(tok: PreTrainedTokenizerBase, prompt: str, template: str) -> str:
    """The text the policy sees before its response (chat template if the tokenizer has one)."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return template.format(prompt=prompt)


def encode_pair(tok: PreTrainedTokenizerBase, prompt: str, response: str, template: str) -> tuple[list[int], list[int]]:
    """Token ids of the rendered prompt and of ``response + EOS``, encoded separately.

    Separate encoding keeps the prompt/response boundary identical at training and sampling
    time (the policy generates right after the prompt's last token).
    """
    p = tok(render_prompt(tok, prompt, template), add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p, r

