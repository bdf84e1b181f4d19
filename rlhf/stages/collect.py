"""``stage=collect``: sample K completions per prompt from a policy, have the labeler rank them.

Writes ``comparisons_train.jsonl`` (from ``stage.train_prompts``) and ``comparisons_val.jsonl``
(from ``stage.val_prompts``) in the comparison format, so the RM reads them like user data.
The paper collects most comparisons on its supervised policies' own samples; measured here
(measured on the built-in world), offline comparisons leave the RM near chance on the policy's
samples.
Prompts whose samples are all identical give no comparison: they are dropped and counted.
In a later round of iterated RLHF, ``stage.earlier`` names the previous round's
``comparisons_train.jsonl``: its records come first, so the RM trains on every comparison so far.

Labels are never thrown away. Both splits are sampled first and kept in ``samples_{split}.jsonl``;
then each ranking is appended to ``comparisons_{split}.partial.jsonl`` as the labeler gives it.
A rerun after an error or a kill reuses those samples and asks the labeler only for the prompts
not ranked yet (a line cut short by a kill is asked again); ``resume=false`` starts over
(``rlhf.train`` removes them, as it does a checkpoint). The files go when the stage finishes (:func:`partial_state` lists them). Sampling every split before
ranking keeps the torch random stream of one split after the other (labelers draw none of it), so
an uninterrupted run writes the same comparisons as before. The world's labelers draw from one
random stream per process: after a resume the rest are ranked from a restarted stream, so with
other draws (from the same labelers) than an uninterrupted run would have made.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoTokenizer

from rlhf import feedback
from rlhf.data.formats import read_jsonl, write_jsonl
from rlhf.data.sources import data_source
from rlhf.handoff import provenance, save_json
from rlhf.models.build import load_causal_lm
from rlhf.models.generate import sample

log = logging.getLogger(__name__)
CHUNK = 512  # prompts per sample() call: a multiple of its batch of 64, so the same samples as one call


class Progress:
    """Logs ``<what> done/total prompts (rate/s)<extra>`` every ``every`` seconds and at the end:
    cheap enough to call per prompt, and what a SLURM log shows of a long collection."""

    def __init__(self, what: str, total: int, start: int = 0, every: float = 30.0):
        self.what, self.total, self.start, self.every = what, total, start, every
        self.t0 = self.last = time.monotonic()

    def __call__(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if done == self.total or now - self.last >= self.every:
            self.last = now
            rate = (done - self.start) / max(now - self.t0, 1e-6)  # of this process, not of read-back ones
            log.info("%s %d/%d prompts (%.1f/s)%s", self.what, done, self.total, rate, extra)


def partial_state(sdir: Path) -> list[Path]:
    """The files an unfinished collection resumes from: its samples and the rankings so far
    (train.py checks them against the config and deletes them to start over, as a checkpoint)."""
    return sorted([*sdir.glob("samples_*.jsonl"), *sdir.glob("comparisons_*.partial.jsonl")])


def _complete_lines(path: Path) -> list[dict]:
    """The records of a JSONL file written line by line, cut back to its last complete line (a kill
    mid-write leaves a partial one: it is dropped from the file too, so the next append starts clean)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        os.truncate(path, end)
    return [json.loads(line) for line in data[:end].split(b"\n") if line]  # bytes: "\u2028" is no line end


def _sample(cfg: DictConfig, prompts: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Per split, each prompt with its distinct samples (``{"prompt", "completions"}``)."""
    st, out = cfg.stage, {}
    tok, model = AutoTokenizer.from_pretrained(cfg.init), load_causal_lm(cfg.init, cfg)
    for split, ps in prompts.items():
        rows, progress = [], Progress(f"collect {split}: sampled", len(ps))
        for i in range(0, len(ps), CHUNK):
            outs = sample(model, tok, ps[i:i + CHUNK], cfg.data.template, n=st.num_samples,
                          max_new_tokens=cfg.data.max_response_tokens, temperature=st.temperature)
            rows += [{"prompt": p, "completions": list(dict.fromkeys(o for o in g if o))[:9]}  # K <= 9, as in the paper
                     for p, g in zip(ps[i:i + CHUNK], outs)]
            progress(len(rows))
        out[split] = rows
    return out


def samples(cfg: DictConfig, sdir: Path, prompts: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Per split, the prompts with their distinct samples: read back from ``samples_{split}.jsonl``
    when an earlier attempt wrote them (all splits, or none: they are written once all are sampled),
    else sampled now and written."""
    paths = {split: sdir / f"samples_{split}.jsonl" for split in prompts}
    if not all(p.is_file() for p in paths.values()):
        rows = _sample(cfg, prompts)
        for split, path in paths.items():
            write_jsonl(path, rows[split])
        return rows
    rows = {split: _complete_lines(path) for split, path in paths.items()}
    for split, ps in prompts.items():
        if [r["prompt"] for r in rows[split]] != ps:
            raise ValueError(f"{paths[split]} holds samples of other prompts than stage.{split}_prompts now: "
                             "resume=false collects from scratch")
    log.info("collect: samples read back from %s", ", ".join(map(str, paths.values())))
    return rows


def label(labeler: feedback.Retrying, split: str, rows: list[dict], sdir: Path) -> list[dict]:
    """Comparison records of the rows with >= 2 distinct completions, in order: those
    ``comparisons_{split}.partial.jsonl`` holds, then the labeler's, each appended as it comes."""
    todo, path = [r for r in rows if len(r["completions"]) >= 2], sdir / f"comparisons_{split}.partial.jsonl"
    done = _complete_lines(path)
    if len(done) > len(todo) or any((d["prompt"], d["completions"]) != (r["prompt"], r["completions"])
                                    for d, r in zip(done, todo)):
        raise ValueError(f"{path} does not match {sdir}/samples_{split}.jsonl: resume=false collects from scratch")
    if done:
        log.info("collect %s: %d of %d rankings read back from %s", split, len(done), len(todo), path)
    progress = Progress(f"collect {split}: labelled", len(todo), start=len(done))
    with path.open("a", encoding="utf-8") as f:
        for r in todo[len(done):]:
            try:
                ranking = feedback.call_rank(labeler, r["prompt"], r["completions"])
            except feedback.FeedbackError as e:
                raise feedback.FeedbackError(f"{e}\ncollect {split}: {len(done)} of {len(todo)} rankings are kept in "
                                             f"{path}; the same command continues from there") from e
            done.append({**r, "ranking": ranking})
            f.write(json.dumps(done[-1], ensure_ascii=False, allow_nan=False) + "\n")
            f.flush()  # survives a kill; no fsync per line (a power cut may cost the last few)
            progress(len(done), f", {labeler.retried} retries")
    return done


def run(cfg: DictConfig, sdir: Path) -> dict:
    if not cfg.get("init"):
        raise ValueError("stage=collect samples from a policy: set init=<an SFT final/ directory>")
    torch.manual_seed(cfg.seed)
    labeler = feedback.load(cfg.labeler)
    earlier = read_jsonl(cfg.stage.earlier, "comparison") if cfg.stage.earlier else []
    prompts = {split: [r["prompt"] for r in read_jsonl(data_source(cfg, key), "prompt")][:limit]
               for split, key, limit in (("train", cfg.stage.train_prompts, cfg.stage.max_train_prompts),
                                         ("val", cfg.stage.val_prompts, cfg.stage.max_val_prompts))}
    rows, metrics = samples(cfg, sdir, prompts), {}
    for split, ps in prompts.items():
        t0 = time.time()
        records = label(labeler, split, rows[split], sdir)
        counts = {"prompts": len(ps), "dropped_fewer_than_2_distinct": len(ps) - len(records),
                  "completions": sum(len(r["completions"]) for r in records), "comparisons": len(records)}
        if split == "train" and earlier:
            counts["earlier_comparisons"] = len(earlier)
            records = [*earlier, *records]
        write_jsonl(sdir / f"comparisons_{split}.jsonl", records)
        log.info("collect %s: %s in %.1fs", split, counts, time.time() - t0)
        metrics.update({f"{split}/{k}": v for k, v in counts.items()})
        metrics[f"{split}/mean_k"] = counts["completions"] / max(1, counts["comparisons"])
    save_json(sdir / "final", provenance(cfg, metrics, labeler=feedback.describe(labeler)))
    for path in partial_state(sdir):  # the comparisons hold it all now; kept until here so a kill loses nothing
        path.unlink()
    return metrics
