"""Labelers and judges: whoever ranks the policy's samples and judges the final models.

Any object named by ``_target_`` in the ``labeler`` or ``judge`` group plugs in if it offers

- ``rank(prompt: str, completions: list[str]) -> list[int]``   indices best first, or
- ``prefer(prompt: str, a: str, b: str) -> float``             P(a is better) in [0, 1]
  (1 / 0 / 0.5 for a hard choice or a tie); a ranking is then built from all pairs.

A plain function works too: it is taken as ``rank`` for labelers and ``prefer`` for judges.
Calls are checked here: an exception, a malformed ranking or an out-of-range value stops the
stage with a FeedbackError naming the prompt and what came back.
"""
from __future__ import annotations

import itertools
import random
from typing import Any

from hydra.utils import instantiate


class FeedbackError(RuntimeError):
    """A labeler or judge failed or returned something malformed."""


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def call_prefer(judge: Any, prompt: str, a: str, b: str) -> float:
    fn = judge.prefer if hasattr(judge, "prefer") else judge
    try:
        p = fn(prompt, a, b)
    except Exception as e:  # a user's code: name where it failed, keep the cause
        raise FeedbackError(f"judge {judge!r} raised on prompt {_short(prompt)!r}: {e!r}") from e
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise FeedbackError(f"judge {judge!r} returned {p!r} for prompt {_short(prompt)!r}; "
                            "expected a probability in [0, 1] (1 / 0 / 0.5 for a choice or a tie)")
    return float(p)


def call_rank(labeler: Any, prompt: str, completions: list[str]) -> list[int]:
    """The labeler's ranking (indices best first), checked to be a permutation."""
    if not hasattr(labeler, "rank") and hasattr(labeler, "prefer"):
        return rank_by_preferences(labeler, prompt, completions)
    fn = labeler.rank if hasattr(labeler, "rank") else labeler
    try:
        ranking = fn(prompt, list(completions))
    except Exception as e:
        raise FeedbackError(f"labeler {labeler!r} raised on prompt {_short(prompt)!r}: {e!r}") from e
    try:
        ranking = [int(i) for i in ranking]
    except (TypeError, ValueError):
        ranking = None
    if ranking is None or sorted(ranking) != list(range(len(completions))):
        raise FeedbackError(f"labeler {labeler!r} returned {ranking!r} for prompt {_short(prompt)!r}; "
                            f"expected a permutation of 0..{len(completions) - 1} (best first)")
    return ranking


def rank_by_preferences(judge: Any, prompt: str, completions: list[str]) -> list[int]:
    """Rank by total preference over all pairs (Copeland-style; ties keep the given order)."""
    wins = [0.0] * len(completions)
    for i, j in itertools.combinations(range(len(completions)), 2):
        p = call_prefer(judge, prompt, completions[i], completions[j])
        wins[i], wins[j] = wins[i] + p, wins[j] + 1.0 - p
    return sorted(range(len(completions)), key=lambda i: -wins[i])


def load(node) -> Any:
    """Instantiate a ``labeler`` / ``judge`` config node (``_target_`` + arguments)."""
    return instantiate(node, _convert_="all")


class WorldLabelers:
    """The built-in world's simulated labelers (``pool``: training or held_out), seeded."""

    def __init__(self, pool: str = "training", seed: int = 0, noise_scale: float = 1.0):
        from rlhf.data.world.labelers import LabelerPool

        if pool not in ("training", "held_out"):
            raise ValueError(f"labeler pool must be 'training' or 'held_out', got {pool!r}")
        self.pool = getattr(LabelerPool, pool)(seed=seed, noise_scale=noise_scale)
        self.name, self.rng = pool, random.Random(f"{pool}-calls-{seed}")

    def rank(self, prompt: str, completions: list[str]) -> list[int]:
        return self.pool.rank(prompt, completions, self.rng)

    def prefer(self, prompt: str, a: str, b: str) -> float:
        return self.pool.prefer(prompt, a, b, self.rng)

    def __repr__(self) -> str:
        return f"WorldLabelers({self.name})"


class GoldJudge:
    """The world's deterministic gold judge: ``gold_prefer`` (ties count half)."""

    def prefer(self, prompt: str, a: str, b: str) -> float:
        from rlhf.data.world.gold import gold_prefer

        return gold_prefer(prompt, a, b)

    def __repr__(self) -> str:
        return "GoldJudge()"
