"""PPO data: one batch per PPO iteration, the iteration's prompts and (PPO-ptx) pretraining texts.

Batch k (PPO iteration k) takes its prompts from an endless stream that shuffles the prompt
file anew on every pass (pass e shuffled with the seed ``"<seed>/prompts/<e>"``); the ptx texts
come from a second such stream. A batch is a pure function of (seed, k, rank), and iteration
starts at ``trainer.global_step`` (= PPO iterations done, restored from ``last.ckpt`` before the
loader is iterated), so a resumed run sees exactly the prompts the uninterrupted run would
have seen, and no two ranks share a batch (rank r of W takes stream batch k * W + r).

A batch::

    input_ids, attention_mask  (B, Tq)  prompts rendered with the one template, LEFT-padded
    prompts                    B prompts, strings or message lists (for the sample table)
    ptx                        (PPO-ptx only) one LM batch per optimizer step (``ptx_steps``),
                               each of ptx_per_iteration / ptx_steps texts, packed into rows
                               (``pack``) or right-padded (``rlhf.data.lm.collate_lm``)

Prompts longer than ``max_prompt_tokens`` are dropped, counted and their lines logged (paper:
over 1k tokens); a file left with none stops the stage, naming it, the count and the key.
"""
from __future__ import annotations

import itertools
import logging
import random
from functools import lru_cache
from typing import Callable

import lightning.pytorch as pl
from torch.utils.data import DataLoader, IterableDataset

from rlhf.data.formats import Source, read_jsonl, read_numbered
from rlhf.data.lm import Counts, collate_lm, encode_texts, report_drops
from rlhf.models.tokenizer import prompt_ids

log = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def _shuffled(n: int, seed: str) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed).shuffle(order)  # str seeds are hashed with sha512: same on every run
    return tuple(order)


def stream_batch(n: int, k: int, size: int, seed: str) -> list[int]:
    """Indices of batch k (``size`` items) of an endless stream of shuffled passes over range(n)."""
    return [_shuffled(n, f"{seed}/{i // n}")[i % n] for i in range(k * size, (k + 1) * size)]


def ptx_batches(texts: list[dict], n: int, pad_id: int, pack: bool) -> list[dict]:
    """The iteration's ptx texts in n equal consecutive chunks, one LM batch per optimizer step."""
    size = len(texts) // n
    return [collate_lm(texts[i * size:(i + 1) * size], pad_id, pack) for i in range(n)]


class Iterations(IterableDataset):
    """Yields ``make(k)`` for k = start(), start() + 1, ... up to ``stop`` (None: forever).

    ``start`` is called when the loader is iterated, i.e. after a checkpoint was restored.
    """

    def __init__(self, make: Callable[[int], dict], start: Callable[[], int], stop: int | None):
        self.make, self.start, self.stop = make, start, stop

    def __iter__(self):
        k = self.start()
        return map(self.make, range(k, self.stop) if self.stop is not None else itertools.count(k))


class PromptDataModule(pl.LightningDataModule):
    """The PPO prompt stream (``data.files.prompts_ppo``) and, with ``ptx_file``, the ptx stream."""

    def __init__(self, tok, prompts_file: str | Source, batch_size: int, template: str, max_prompt_tokens: int,
                 iterations: int | None, seed: int = 0, ptx_file: str | Source | None = None,
                 ptx_per_iteration: int = 0, max_ptx_tokens: int = 1024, ptx_steps: int = 1,
                 pack_ptx: bool = True):
        super().__init__()
        self.tok, self.files = tok, {"prompts": prompts_file, "ptx": ptx_file}
        self.batch_size, self.template, self.max_prompt = batch_size, template, max_prompt_tokens
        self.iterations, self.seed = iterations, seed
        self.ptx_per_iteration, self.max_ptx = ptx_per_iteration, max_ptx_tokens
        self.ptx_steps, self.pack_ptx = ptx_steps, pack_ptx
        self.prompts, self.ptx, self.counts = [], [], {}

    def setup(self, stage: str | None = None) -> None:
        if self.prompts:
            return
        counts = self.counts["prompts"] = Counts()
        dropped, invalid = [], []  # line numbers; (line, why)
        for lineno, rec in read_numbered(self.files["prompts"], "prompt", invalid):
            ids = prompt_ids(self.tok, rec["prompt"], self.template)  # the SFT/RM prompt encoding
            if len(ids) > self.max_prompt:
                counts.dropped_long_prompt += 1
                dropped.append(lineno)
                continue
            self.prompts.append((rec["prompt"], ids))
        counts.kept, counts.dropped_invalid = len(self.prompts), len(invalid)
        report_drops(self.files["prompts"], "prompt", dropped, counts.kept, self.max_prompt)
        log.info("prompts %s: %d kept, %d dropped (prompt > %d tokens)", self.files["prompts"],
                 counts.kept, counts.dropped_long_prompt, self.max_prompt)
        if self.files["ptx"] and self.ptx_per_iteration > 0:
            self.counts["ptx"] = Counts()
            self.ptx = encode_texts(read_jsonl(self.files["ptx"], "text"), self.tok, self.max_ptx, self.counts["ptx"])
            log.info("ptx %s: %d texts, %d per iteration", self.files["ptx"], len(self.ptx), self.ptx_per_iteration)

    def batch(self, k: int) -> dict:
        """The batch of PPO iteration k on this rank."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        i = k * world + rank
        chosen = [self.prompts[j] for j in stream_batch(len(self.prompts), i, self.batch_size, f"{self.seed}/prompts")]
        out = dict(self.tok.pad({"input_ids": [ids for _, ids in chosen]}, padding_side="left", return_tensors="pt"))
        out["prompts"] = [p for p, _ in chosen]
        if self.ptx:
            rows = stream_batch(len(self.ptx), i, self.ptx_per_iteration, f"{self.seed}/ptx")
            out["ptx"] = ptx_batches([self.ptx[j] for j in rows], self.ptx_steps, self.tok.pad_token_id, self.pack_ptx)
        return out

    def train_dataloader(self) -> DataLoader:
        def start() -> int:
            return self.trainer.global_step if self.trainer else 0
        return DataLoader(Iterations(self.batch, start, self.iterations), batch_size=None)
