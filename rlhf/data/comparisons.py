"""Comparison data for the RM stage: one batch element = one prompt with its K ranked completions.

Each completion is ``encode_pair(prompt, completion) = prompt + completion + EOS`` under the
SFT data's over-long policy (``rlhf.data.lm``): a comparison whose prompt is too long is
dropped whole, counted and its line logged; over-long completions are truncated and counted. A
file left with no comparison stops the stage, naming it, the counts and ``data.max_prompt_tokens``.

Every completion is encoded once, in one of two layouts (``shared_prompt``):

    shared (default): a prompt once and then its K completions, each completion attending to
      the prompt and to itself; such groups packed into rows as wide as the batch's longest
      group, each group seeing only itself (``rlhf.models.attention``)
        input_ids, segments, position_ids, groups: (R, T)   R <= B rows
    plain: one row per completion, prompt + completion, right-padded
        input_ids, attention_mask: (N, T)      N = sum of the B prompts' K
    both:
        row, last:  (N,)      the row holding each completion and the index of its last token
        owner, slot: (N,)     prompt index in the batch, completion index in its prompt
        ranks, mask: (B, Kmax) rank of each completion (0 = best), True where real

``rewards_bk[owner, slot] = rewards`` puts the N scores back into the loss's (B, Kmax) layout.
At K = 9 the shared layout computes the prompt once instead of nine times and almost no padding;
the rewards are those of the plain layout (tested).
"""
from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from rlhf.algos.ranking import ranking_to_ranks
from rlhf.checkpoint import ResumableLoader
from rlhf.data.formats import Source, read_numbered
from rlhf.data.lm import Counts, collate_right, report_drops
from rlhf.models.attention import collate_segmented, pack_groups, shared_prompt_row
from rlhf.models.tokenizer import encode_pair

log = logging.getLogger(__name__)


def encode_comparisons(records, tok, template: str, max_prompt: int, max_response: int,
                       counts: Counts, dropped: list[int] | None = None) -> list[dict]:
    """``{"prompt": ids, "completions": [ids + EOS], "ranks": [K]}`` per kept prompt.

    ``counts`` counts prompts (kept, dropped for a long prompt) and truncated completions; the
    index (in ``records``) of each dropped one is appended to ``dropped``.
    """
    out, dropped = [], [] if dropped is None else dropped
    for i, rec in enumerate(records):
        pairs = [encode_pair(tok, rec["prompt"], c, template) for c in rec["completions"]]
        prompt = pairs[0][0]
        if len(prompt) > max_prompt:  # same prompt for all K: the whole comparison goes
            counts.dropped_long_prompt += 1
            dropped.append(i)
            continue
        completions = [r[:max_response] for _, r in pairs]  # cut: the EOS is lost, no false end learnt
        counts.truncated_response += sum(len(r) > max_response for _, r in pairs)
        out.append({"prompt": prompt, "completions": completions, "ranks": ranking_to_ranks(rec["ranking"])})
    counts.kept += len(out)
    return out


def collate_comparisons(batch: list[dict], pad_id: int, shared_prompt: bool = True) -> dict[str, torch.Tensor]:
    """B prompts' completions in the shared or the plain layout, plus the (B, Kmax) loss layout."""
    k = [len(b["ranks"]) for b in batch]
    owner = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor(k))
    if shared_prompt:
        packed, where, last = pack_groups([shared_prompt_row(b["prompt"], b["completions"]) for b in batch])
        flat = collate_segmented(packed, pad_id)
        flat["row"], flat["last"] = torch.tensor(where)[owner], torch.tensor([i for ends in last for i in ends])
    else:
        seqs = [b["prompt"] + c for b in batch for c in b["completions"]]
        flat = collate_right([{"input_ids": s, "labels": s} for s in seqs], pad_id)
        del flat["labels"]  # the RM reads the last real token, no token labels
        flat["row"], flat["last"] = torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])
    kmax = max(k)
    ranks = torch.zeros((len(batch), kmax), dtype=torch.long)
    mask = torch.zeros((len(batch), kmax), dtype=torch.bool)
    for i, b in enumerate(batch):
        ranks[i, :k[i]], mask[i, :k[i]] = torch.tensor(b["ranks"]), True
    flat["owner"] = owner
    flat["slot"] = torch.cat([torch.arange(n) for n in k])
    return {**flat, "ranks": ranks, "mask": mask}


class ComparisonDataModule(pl.LightningDataModule):
    """Train/val loaders over comparison JSONL; ``batch_size`` counts prompts (paper: 64).

    ``train_file`` may be a list: their comparisons are pooled (the paper's came from several models).
    """

    def __init__(self, tok, train_file: Source | list[Source], val_file: Source, batch_size: int, template: str,
                 max_prompt_tokens: int, max_response_tokens: int, seed: int = 0, shared_prompt: bool = True):
        super().__init__()
        self.tok, self.files, self.shared_prompt = tok, {"train": train_file, "val": val_file}, shared_prompt
        self.batch_size, self.template, self.seed = batch_size, template, seed
        self.max_prompt, self.max_response = max_prompt_tokens, max_response_tokens
        self.data, self.counts = {}, {}

    def setup(self, stage: str | None = None) -> None:
        for split, paths in self.files.items():
            if split in self.data:
                continue
            self.data[split], total = [], self.counts.setdefault(split, Counts())
            for path in paths if isinstance(paths, list) else [paths]:
                counts, invalid, dropped = Counts(), [], []
                numbered = read_numbered(path, "comparison", invalid)
                counts.dropped_invalid = len(invalid)
                rows = encode_comparisons([rec for _, rec in numbered], self.tok, self.template,
                                          self.max_prompt, self.max_response, counts, dropped)
                report_drops(path, "comparison", [numbered[i][0] for i in dropped], counts.kept, self.max_prompt)
                self.data[split] += rows
                for key, value in vars(counts).items():
                    setattr(total, key, getattr(total, key) + value)
                log.info("%s %s: %d comparisons, %d dropped (prompt > %d tokens), %d completions truncated",
                         split, path, counts.kept, counts.dropped_long_prompt, self.max_prompt,
                         counts.truncated_response)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        loader = ResumableLoader if shuffle else DataLoader  # training's position is kept in last.ckpt
        return loader(self.data[split], batch_size=self.batch_size, shuffle=shuffle, generator=g,
                          collate_fn=lambda b: collate_comparisons(b, self.tok.pad_token_id, self.shared_prompt))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
