"""PPOMonitor: a cheap validation win rate every ``stage.eval_every`` iterations, and the alarms.

Every ``eval_every`` PPO iterations the policy that would be exported (the EMA, or the policy)
answers ``stage.max_eval_prompts`` validation prompts once each; the ``judge`` compares each
answer with SFT's (the frozen reference's, sampled once at the start) and the win rate is logged
as ``train/val_win_rate`` beside the RM score. After every iteration the checks of
``rlhf.eval.alarms`` run; an alarm that starts to hold is logged as a warning, as
``alarm/<name>`` = 1, and appended to ``<stage dir>/alarms.jsonl``, which the report lists.

Sampling here draws from its own random stream (``torch.random.fork_rng``), so a run with the
monitor trains exactly as one without it. Its history is saved in ``last.ckpt`` (resume-safe).
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import lightning.pytorch as pl
import torch

from rlhf.distributed import gathered
from rlhf.eval import alarms
from rlhf.eval.measure import judge_pairs, mean_ci
from rlhf.models.generate import sample

log = logging.getLogger(__name__)


class PPOMonitor(pl.Callback):
    def __init__(self, judge, prompts: list[str], tok, template: str, max_new_tokens: int, temperature: float,
                 eval_every: int, thresholds, path: Path, seed: int = 0):
        self.judge, self.prompts, self.tok, self.template = judge, prompts, tok, template
        self.sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature)
        self.every, self.th, self.path, self.seed = eval_every, thresholds, Path(path), seed
        self.history, self.evals, self.active, self.sft = [], [], [], None

    def state_dict(self) -> dict:
        return {"history": self.history, "evals": self.evals, "active": self.active, "sft": self.sft}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.evals, self.active, self.sft = state["history"], state["evals"], state["active"], state["sft"]

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
        if self.prompts and self.every and (it + 1) % self.every == 0:
            answers = self._answers(module.export_model(), self.seed + it + 1)
            win, lo, hi = mean_ci(judge_pairs(self.judge, self.prompts, answers, self.sft, random.Random(self.seed + it)))
            recent = self.history[-self.th.window:]
            self.evals.append({"iteration": it, "win_rate": win, "win_lo": lo, "win_hi": hi,
                               "score": sum(r["score"] for r in recent) / len(recent)})
            self._log(trainer, {"train/val_win_rate": win, "train/val_win_rate_lo": lo, "train/val_win_rate_hi": hi}, it)
        found = alarms.check(self.history, self.evals, self.th)
        for name, message in found.items():
            if name not in self.active:
                self._log(trainer, {f"alarm/{name}": 1.0}, it)
                if trainer.is_global_zero:
                    log.warning("PPO iteration %d: alarm %s: %s", it, name, message)
                    with open(self.path, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"iteration": it, "alarm": name, "message": message}) + "\n")
        self.active = sorted(found)
