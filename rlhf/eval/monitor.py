"""PPOMonitor: a cheap validation win rate every ``stage.eval_every`` iterations, the alarms, and
the candidate checkpoints the stage exports from.

Every ``eval_every`` PPO iterations, and after the last, the policy that would be exported (the
EMA, or the policy) answers ``stage.max_eval_prompts`` validation prompts once each; the ``judge``
compares each answer with SFT's (the frozen reference's, sampled once at the start) and the win
rate is logged as ``train/val_win_rate`` beside the RM score. That policy is saved as a candidate
in ``<stage dir>/candidates/iter_N/``; only the current pick (``rlhf.eval.selection``) and the
latest are kept. After every iteration the checks of ``rlhf.eval.alarms`` run; an alarm that
starts to hold is logged as a warning, as ``alarm/<name>`` = 1, and appended to
``<stage dir>/alarms.jsonl``, which the report lists.

Sampling here draws from its own random stream (``torch.random.fork_rng``), so a run with the
monitor trains exactly as one without it. Its history is saved in ``last.ckpt`` (resume-safe).
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import lightning.pytorch as pl
import torch

from rlhf.distributed import full_model, gathered
from rlhf.eval import alarms, selection
from rlhf.eval.measure import judge_pairs, mean_ci
from rlhf.models.generate import sample

log = logging.getLogger(__name__)


class PPOMonitor(pl.Callback):
    def __init__(self, judge, prompts: list[str], tok, template: str, max_new_tokens: int, temperature: float,
                 eval_every: int, thresholds, path: Path, seed: int = 0, candidates_dir: Path | None = None,
                 kl_budget: float | None = None):
        self.judge, self.prompts, self.tok, self.template = judge, prompts, tok, template
        self.sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature)
        self.every, self.th, self.path, self.seed = eval_every, thresholds, Path(path), seed
        self.dir, self.kl_budget = candidates_dir, kl_budget
        self.history, self.evals, self.active, self.sft, self.candidates = [], [], [], None, []

    def state_dict(self) -> dict:
        return {"history": self.history, "evals": self.evals, "active": self.active, "sft": self.sft,
                "candidates": self.candidates}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.evals, self.active, self.sft = state["history"], state["evals"], state["active"], state["sft"]
        self.candidates = state.get("candidates", [])

    def _path(self, iterations: int) -> Path:
        return self.dir / f"iter_{iterations:06d}"

    def chosen(self) -> tuple[dict, Path] | None:
        """The candidate to export and its directory (None: no candidates were kept)."""
        kept = [c for c in self.candidates if self.dir and self._path(c["iterations"]).is_dir()]
        if not kept:  # (a candidate's directory may be gone after a resume whose judge answered otherwise)
            return None
        c = selection.pick(kept, self.kl_budget)
        return c, self._path(c["iterations"])

    def _answers(self, model, seed: int) -> list[str]:
        with torch.random.fork_rng(devices=[]), gathered(model):
            torch.manual_seed(seed)
            return [r[0] for r in sample(model, self.tok, self.prompts, self.template, n=1, **self.sampling)]

    @staticmethod
    def _log(trainer, metrics: dict, it: int) -> None:
        """Straight to the loggers at the iteration's step: one row where it was measured (self.log
        would repeat the last value on every later step's row)."""
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=it)

    def on_train_start(self, trainer, module) -> None:
        if self.prompts and self.sft is None:
            self.sft = self._answers(module.reference, self.seed)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        m, it = trainer.callback_metrics, trainer.global_step - 1  # the iteration just done
        self.history.append({"iteration": it, "score": float(m["train/score"]), "kl": float(m["train/kl"]),
                             "entropy": float(m["train/entropy"]), "length": float(m["train/response_length"])})
        if self.every and (it + 1) % self.every == 0:
            self._candidate(trainer, module, it)
        found = alarms.check(self.history, self.evals, self.th)
        for name, message in found.items():
            if name not in self.active:
                self._log(trainer, {f"alarm/{name}": 1.0}, it)
                if trainer.is_global_zero:
                    log.warning("PPO iteration %d: alarm %s: %s", it, name, message)
                    with open(self.path, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"iteration": it, "alarm": name, "message": message}, allow_nan=False) + "\n")
        self.active = sorted(found)

    def on_train_end(self, trainer, module) -> None:
        it = trainer.global_step - 1
        if self.every and self.history and not any(c["iterations"] == it + 1 for c in self.candidates):
            self._candidate(trainer, module, it)  # the final policy is always a candidate

    def _candidate(self, trainer, module, it: int) -> None:
        """Judge the exported policy on the validation prompts, and keep it as a candidate."""
        recent = self.history[-self.th.window:]
        c = {"iterations": it + 1, "score": sum(r["score"] for r in recent) / len(recent),
             "kl": sum(r["kl"] for r in recent) / len(recent), "win_rate": None, "win_lo": None, "win_hi": None}
        if self.prompts:
            answers = self._answers(module.export_model(), self.seed + it + 1)
            win, lo, hi = mean_ci(judge_pairs(self.judge, self.prompts, answers, self.sft, random.Random(self.seed + it)))
            c.update(win_rate=win, win_lo=lo, win_hi=hi)
            self.evals.append({"iteration": it, "win_rate": win, "win_lo": lo, "win_hi": hi, "score": c["score"]})
            self._log(trainer, {"train/val_win_rate": win, "train/val_win_rate_lo": lo, "train/val_win_rate_hi": hi}, it)
        self.candidates = [*(x for x in self.candidates if x["iterations"] != c["iterations"]), c]
        if self.dir is None:
            return
        model = full_model(trainer, module.export_model())  # sharded: every rank takes part in the gather
        if trainer.is_global_zero:
            out = self._path(it + 1)
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp))
            self.tok.save_pretrained(str(tmp))
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)  # complete or absent
            keep = {out.name, self.chosen()[1].name}  # (chosen: out itself at least)
            for old in self.dir.glob("iter_*"):  # only the pick so far and the latest stay on disk
                if old.name not in keep:
                    shutil.rmtree(old)
