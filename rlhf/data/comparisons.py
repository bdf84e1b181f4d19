"""Comparison data for the RM stage: one batch element = one prompt with its K ranked completions.

Each completion is ``encode_pair(prompt, completion) = prompt + completion + EOS`` under the
SFT data's over-long policy (``rlhf.data.lm``): a comparison whose prompt is too long is
dropped whole and counted; over-long completions are truncated and counted.

A batch of B prompts is flattened so that every completion is encoded once::

    input_ids, attention_mask: (N, T)   N = sum of the B prompts' K, right-padded
    owner, slot:               (N,)     prompt index in the batch, completion index in its prompt
    ranks, mask:               (B, Kmax) rank of each completion (0 = best), True where real

``rewards_bk[owner, slot] = rewards`` puts the N scores back into the loss's (B, Kmax) layout.
"""
from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from rlhf.algos.ranking import ranking_to_ranks
from rlhf.data.formats import DataError, read_jsonl
from rlhf.data.lm import Counts, collate_right, encode_demonstrations

log = logging.getLogger(__name__)


def encode_comparisons(records, tok, template: str, max_prompt: int, max_response: int,
                       counts: Counts) -> list[dict]:
    """``{"completions": [encoded rows], "ranks": [K]}`` per kept prompt; ``counts`` counts prompts."""
    out = []
    for rec in records:
        demos = [{"prompt": rec["prompt"], "completion": c} for c in rec["completions"]]
        c = Counts()
        rows = encode_demonstrations(demos, tok, template, max_prompt, max_response, c)
        if c.dropped_long_prompt:  # same prompt for all K: the whole comparison goes
            counts.dropped_long_prompt += 1
            continue
        counts.truncated_response += c.truncated_response
        out.append({"completions": rows, "ranks": ranking_to_ranks(rec["ranking"])})
    counts.kept += len(out)
    return out


def collate_comparisons(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Flatten B prompts' completions into (N, T) rows plus the (B, Kmax) loss layout."""
    k = [len(b["ranks"]) for b in batch]
    flat = collate_right([row for b in batch for row in b["completions"]], pad_id)
    del flat["labels"]  # the RM reads the last real token, no token labels
    kmax = max(k)
    ranks = torch.zeros((len(batch), kmax), dtype=torch.long)
    mask = torch.zeros((len(batch), kmax), dtype=torch.bool)
    for i, b in enumerate(batch):
        ranks[i, :k[i]], mask[i, :k[i]] = torch.tensor(b["ranks"]), True
    flat["owner"] = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor(k))
    flat["slot"] = torch.cat([torch.arange(n) for n in k])
    return {**flat, "ranks": ranks, "mask": mask}


class ComparisonDataModule(pl.LightningDataModule):
    """Train/val loaders over comparison JSONL; ``batch_size`` counts prompts (paper: 64).

    ``train_file`` may be a list: their comparisons are pooled (the paper's came from several models).
    """

    def __init__(self, tok, train_file: str | list[str], val_file: str, batch_size: int, template: str,
                 max_prompt_tokens: int, max_response_tokens: int, seed: int = 0):
        super().__init__()
        self.tok, self.files = tok, {"train": train_file, "val": val_file}
        self.batch_size, self.template, self.seed = batch_size, template, seed
        self.max_prompt, self.max_response = max_prompt_tokens, max_response_tokens
        self.data, self.counts = {}, {}

    def setup(self, stage: str | None = None) -> None:
        for split, paths in self.files.items():
            if split in self.data:
                continue
            self.data[split], total = [], self.counts.setdefault(split, Counts())
            for path in [paths] if isinstance(paths, str) else paths:
                counts = Counts()
                rows = encode_comparisons(read_jsonl(path, "comparison"), self.tok, self.template,
                                          self.max_prompt, self.max_response, counts)
                if not rows:
                    raise DataError(f"{path}: every comparison was dropped (prompt > {self.max_prompt} tokens)")
                self.data[split] += rows
                for key, value in vars(counts).items():
                    setattr(total, key, getattr(total, key) + value)
                log.info("%s %s: %d comparisons, %d dropped (prompt > %d tokens), %d completions truncated",
                         split, path, counts.kept, counts.dropped_long_prompt, self.max_prompt,
                         counts.truncated_response)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.data[split], batch_size=self.batch_size, shuffle=shuffle, generator=g,
                          collate_fn=lambda b: collate_comparisons(b, self.tok.pad_token_id))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
