"""Language-model data for the pretrain and SFT stages: tokenise, mask, pad, batch.

Over-long policy (paper: prompts over 1k tokens are dropped, responses capped at 1k):
examples whose prompt exceeds ``max_prompt_tokens`` are dropped; responses longer than
``max_response_tokens`` are truncated (their EOS is lost, so the model learns no false end).
Both are counted (``counts``, recorded in ``rlhf.json`` as ``data_counts``) and the dropped ones
logged with their line numbers; a split left empty stops the stage with a DataError naming the
file, the counts and ``data.max_prompt_tokens``.

Batches are packed by default (``stage.pack``): the batch's examples are packed into rows as
wide as its longest one, each attending to itself only and restarting its positions
(``rlhf.models.attention``), so short lines no longer cost the longest one's width. A batch holds
the same examples either way, and the loss counts the same tokens (tested equal).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from rlhf.checkpoint import ResumableLoader
from rlhf.data.formats import DataError, Source, read_jsonl, read_numbered
from rlhf.models.attention import collate_segmented, pack_documents
from rlhf.models.tokenizer import encode_pair, text_ids

log = logging.getLogger(__name__)
IGNORE = -100  # label of tokens that carry no loss (prompt, padding)
SHOWN_LINES = 20  # dropped records' line numbers named in the log, per file


@dataclass
class Counts:
    kept: int = 0
    dropped_long_prompt: int = 0
    truncated_response: int = 0
    dropped_invalid: int = 0  # records that break the schema, with data.drop_invalid


def encode_texts(records, tok, max_tokens: int, counts: Counts) -> list[dict]:
    """Pretraining: every token of ``text + EOS`` carries loss; longer texts are cut."""
    out = []
    for rec in records:
        out.append(encode_text(rec["text"], tok, max_tokens, counts))
    counts.kept += len(out)
    return out


def encode_text(text, tok, max_tokens: int, counts: Counts) -> dict:
    """``text + EOS`` (a conversation in the chat template), every token labelled, cut at ``max_tokens``."""
    ids = text_ids(tok, text) + [tok.eos_token_id]
    if len(ids) > max_tokens:
        ids, counts.truncated_response = ids[:max_tokens], counts.truncated_response + 1
    return {"input_ids": ids, "labels": list(ids)}


def encode_demonstrations(records, tok, template: str, max_prompt: int, max_response: int, counts: Counts,
                          dropped: list[int] | None = None) -> list[dict]:
    """SFT: loss on completion tokens only; the prompt (earlier turns included) is masked with IGNORE.

    The index (in ``records``) of each one dropped for a long prompt is appended to ``dropped``.
    """
    out, dropped = [], [] if dropped is None else dropped
    for i, rec in enumerate(records):
        if "completion" not in rec:  # a whole text (TRL's language-modelling format): every token trained
            out.append(encode_text(rec["text"], tok, max_prompt + max_response, counts))
            continue
        p, r = encode_pair(tok, rec["prompt"], rec["completion"], template)
        if len(p) > max_prompt:
            counts.dropped_long_prompt += 1
            dropped.append(i)
            continue
        if len(r) > max_response:
            r, counts.truncated_response = r[:max_response], counts.truncated_response + 1
        out.append({"input_ids": p + r, "labels": [IGNORE] * len(p) + r})
    counts.kept += len(out)
    return out


def report_drops(path, what: str, lines: list[int], kept: int, max_prompt: int) -> None:
    """Log the line (or row) numbers of ``path``'s records dropped for a prompt over ``max_prompt``
    tokens; raise DataError if none was kept (a stage would train on nothing, or fail later and obscurely)."""
    path = Source.of(path)
    if not kept:
        raise DataError(f"{path}: every {what} was dropped ({len(lines)} of {len(lines)}): their prompts are longer "
                        f"than data.max_prompt_tokens={max_prompt} tokens (raise it, or shorten the prompts)")
    if lines:
        more = f" (first {SHOWN_LINES} of {len(lines)})" if len(lines) > SHOWN_LINES else ""
        log.warning("%s: %d of %d %ss dropped, prompt > data.max_prompt_tokens=%d tokens: %ss %s%s", path,
                    len(lines), len(lines) + kept, what, max_prompt, path.unit, ", ".join(map(str, lines[:SHOWN_LINES])),
                    more)


def collate_right(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (pad_id) and ``labels`` (IGNORE); build the attention mask."""
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate_lm(batch: list[dict], pad_id: int, pack: bool) -> dict[str, torch.Tensor]:
    """Packed rows (``input_ids``, ``labels``, ``segments``, ``position_ids``) or right-padded ones."""
    return collate_segmented(pack_documents(batch, IGNORE), pad_id, IGNORE) if pack else collate_right(batch, pad_id)


class LMDataModule(pl.LightningDataModule):
    """Train/val loaders over a text (pretrain) or demonstration (SFT) JSONL pair.

    ``mix_file`` + ``mix_fraction``: that fraction of the training examples are pretraining texts
    (full loss), drawn at random from ``mix_file``; the paper's PPO init is SFT with 10% mixed in.
    """

    def __init__(self, tok, kind: str, train_file: str | Source, val_file: str | Source, batch_size: int,
                 template: str, max_prompt_tokens: int, max_response_tokens: int, seed: int = 0,
                 mix_file: str | Source | None = None, mix_fraction: float = 0.0, pack: bool = False):
        super().__init__()
        if not 0.0 <= mix_fraction < 1.0 or (mix_fraction > 0 and not mix_file):
            raise ValueError(f"pretrain mix: fraction {mix_fraction} must be in [0, 1) and needs a text file")
        self.mix_file, self.mix_fraction, self.pack = mix_file, mix_fraction, pack
        self.tok, self.kind, self.files = tok, kind, {"train": train_file, "val": val_file}
        self.batch_size, self.template, self.seed = batch_size, template, seed
        self.max_prompt, self.max_response = max_prompt_tokens, max_response_tokens
        self.data, self.counts = {}, {}

    def setup(self, stage: str | None = None) -> None:
        for split, path in self.files.items():
            if split in self.data:
                continue
            counts, invalid, dropped = Counts(), [], []
            numbered = read_numbered(path, self.kind, invalid)
            counts.dropped_invalid = len(invalid)
            records = [rec for _, rec in numbered]
            if self.kind == "text":
                self.data[split] = encode_texts(records, self.tok, self.max_prompt + self.max_response, counts)
            else:
                self.data[split] = encode_demonstrations(
                    records, self.tok, self.template, self.max_prompt, self.max_response, counts, dropped)
            self.counts[split] = counts
            report_drops(path, self.kind, [numbered[i][0] for i in dropped], counts.kept, self.max_prompt)
            if split == "train" and self.mix_fraction > 0:
                self.data[split] += self._mix(len(self.data[split]))
            log.info("%s %s: %d examples, %d dropped (prompt > %d tokens), %d truncated",
                     split, path, counts.kept, counts.dropped_long_prompt, self.max_prompt, counts.truncated_response)

    def _mix(self, n_main: int) -> list[dict]:
        texts = read_jsonl(self.mix_file, "text")
        n = round(n_main * self.mix_fraction / (1 - self.mix_fraction))
        if n > len(texts):
            raise DataError(f"{self.mix_file}: {len(texts)} texts, but a pretrain mix of "
                            f"{self.mix_fraction} over {n_main} examples needs {n}")
        picked = random.Random(self.seed).sample(texts, n)
        log.info("train: %d pretraining texts from %s mixed in (%.0f%%)", n, self.mix_file, 100 * self.mix_fraction)
        return encode_texts(picked, self.tok, self.max_prompt + self.max_response, Counts())

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        loader = ResumableLoader if shuffle else DataLoader  # training's position is kept in last.ckpt
        return loader(self.data[split], batch_size=self.batch_size, shuffle=shuffle, generator=g,
                          collate_fn=lambda b: collate_lm(b, self.tok.pad_token_id, self.pack))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
