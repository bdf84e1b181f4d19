"""Tokenizers: the checkpoint's own for HF models, or a byte-level BPE trained on the run's corpus.

The prompt template joins prompt and response the same way in every stage (``render_prompt``
is the one path): the tokenizer's chat template where it has one (conversational prompts
need one), else ``data.template`` (default ``"{prompt}\\n"``); the response follows and ends with EOS.
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from rlhf.data.hf import DataError

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


class NoChatTemplate(DataError):
    """Conversational data for a tokenizer that has no chat template to render it with."""


def _chat(tok: PreTrainedTokenizerBase, messages: list[dict]) -> list[dict]:
    if not getattr(tok, "chat_template", None):
        raise NoChatTemplate(
            f"conversational data (lists of messages) needs a tokenizer with a chat template, and "
            f"{getattr(tok, 'name_or_path', '') or 'this tokenizer'} has none: use a chat model's tokenizer, "
            "or give string prompts (rendered with data.template)")
    return messages


def render_prompt(tok: PreTrainedTokenizerBase, prompt: str | list[dict], template: str) -> str:
    """The text the policy sees before its response: the one rendering path of every stage.

    A message list goes through the tokenizer's chat template with the generation prompt; a
    string too when there is a template (as one user turn), else through ``template``.
    """
    if isinstance(prompt, str) and not getattr(tok, "chat_template", None):
        return template.format(prompt=prompt)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tok.apply_chat_template(_chat(tok, messages), tokenize=False, add_generation_prompt=True)


def prompt_ids(tok: PreTrainedTokenizerBase, prompt: str | list[dict], template: str) -> list[int]:
    """Token ids of the rendered prompt (special tokens only where the rendering writes them)."""
    return tok(render_prompt(tok, prompt, template), add_special_tokens=False)["input_ids"]


def text_ids(tok: PreTrainedTokenizerBase, text: str | list[dict]) -> list[int]:
    """Token ids of a whole text, or of a whole conversation in the chat template; EOS not added."""
    if isinstance(text, list):
        text = tok.apply_chat_template(_chat(tok, text), tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def encode_pair(tok: PreTrainedTokenizerBase, prompt: str | list[dict], response: str,
                template: str) -> tuple[list[int], list[int]]:
    """Token ids of the rendered prompt and of ``response + EOS``, encoded separately.

    Separate encoding keeps the prompt/response boundary identical at training and sampling
    time (the policy generates right after the prompt's last token, and stops at EOS).
    """
    return prompt_ids(tok, prompt, template), tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
