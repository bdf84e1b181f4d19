"""Labelers and judges: whoever ranks the policy's samples and judges the models (docs/feedback.md).

Anything the ``labeler`` or ``judge`` group instantiates plugs in if it offers

- ``rank(prompt: str, completions: list[str]) -> list[int]``   indices best first, or
- ``prefer(prompt: str, a: str, b: str) -> float``             P(a is better) in [0, 1]
  (1 / 0 / 0.5 for a hard choice or a tie).

A labeler with only ``prefer`` ranks by :func:`rank_by_preferences`; a judge with only ``rank``
prefers by ranking ``[a, b]``. A plain function is a ``rank`` if it takes two arguments and a
``prefer`` if it takes three. Every call goes through :func:`call_rank` / :func:`call_prefer`:
an exception, a malformed ranking or a value outside [0, 1] stops the stage with a
:class:`FeedbackError` naming who (``labeler`` or ``judge``), the prompt and what came back.
:func:`load` wraps what the config names in :class:`Retrying`: a call that raises is tried again
(``retries`` times, waiting ``retry_wait`` seconds, doubling) before the stage stops.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import itertools
import logging
import math
import operator
import random
import sys
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlhf.data.convert import prompt_key

log = logging.getLogger(__name__)
RETRIES, RETRY_WAIT = 5, 2.0  # for nodes without them (~labeler +labeler._target_=...): ~1 min, for an API


class FeedbackError(RuntimeError):
    """A labeler or judge failed or returned something malformed."""


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def describe(obj: Any) -> str:
    """A readable name for messages and provenance: ``module.function`` or the object's repr."""
    obj = obj.obj if isinstance(obj, Retrying) else obj
    fn = obj.func if isinstance(obj, functools.partial) else obj
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return f"{fn.__module__}.{fn.__qualname__}"
    return repr(obj)


def _arity(fn: Any) -> int | None:
    """How many positional arguments ``fn`` needs (None if it takes ``*args`` or has no signature)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)


def _role(obj: Any, default: str) -> str:
    """'rank' or 'prefer': the method ``obj`` offers, or for a plain callable its arity."""
    has_rank, has_prefer = hasattr(obj, "rank"), hasattr(obj, "prefer")
    if has_rank or has_prefer:
        return default if has_rank and has_prefer else "rank" if has_rank else "prefer"
    if not callable(obj):
        raise FeedbackError(f"{describe(obj)} has neither rank(prompt, completions) nor prefer(prompt, a, b)")
    return {2: "rank", 3: "prefer"}.get(_arity(obj), default)


def _fn(obj: Any, role: str):
    return getattr(obj, role, obj)


def call_prefer(judge: Any, prompt: str, a: str, b: str, who: str = "judge") -> float:
    """``judge``'s P(a better than b) for ``prompt``, checked to be a number in [0, 1]."""
    if _role(judge, "prefer") == "rank":
        return {0: 1.0, 1: 0.0}[call_rank(judge, prompt, [a, b], who=who)[0]] if a != b else 0.5
    try:
        p = _fn(judge, "prefer")(prompt, a, b)
    except FeedbackError:
        raise
    except Exception as e:  # a user's code: name where it failed, keep the cause
        raise FeedbackError(f"{who} {describe(judge)} raised on prompt {_short(prompt)!r}: {e!r}") from e
    try:
        value = None if isinstance(p, (bool, str, bytes)) else float(p)
    except (TypeError, ValueError):
        value = None
    if value is None or not 0.0 <= value <= 1.0:  # NaN fails too
        raise FeedbackError(f"{who} {describe(judge)} returned {_short(repr(p))} for prompt {_short(prompt)!r}; "
                            "expected a probability in [0, 1] (1 / 0 / 0.5 for a choice or a tie)")
    return value


def _check_ranking(ranking: Any, k: int) -> tuple[list[int] | None, str]:
    """(the ranking as ints, "") or (None, what is wrong with it)."""
    if isinstance(ranking, (str, bytes, dict)) or not hasattr(ranking, "__iter__"):
        return None, "not a list of indices"
    items = list(ranking)
    try:
        ints = [operator.index(i) for i in items if not isinstance(i, bool)]
    except TypeError:
        ints = []
    if len(ints) != len(items):
        return None, "not all integers"
    if len(ints) != k:
        return None, f"{len(ints)} indices for {k} completions"
    if sorted(ints) != list(range(k)):
        return None, "not a permutation (an index repeats or is out of range)"
    return ints, ""


def call_rank(labeler: Any, prompt: str, completions: list[str], who: str = "labeler") -> list[int]:
    """``labeler``'s ranking of ``completions`` (indices best first), checked to be a permutation."""
    if _role(labeler, "rank") == "prefer":
        return rank_by_preferences(labeler, prompt, completions, who=who)
    try:
        ranking = _fn(labeler, "rank")(prompt, list(completions))
    except FeedbackError:
        raise
    except Exception as e:
        raise FeedbackError(f"{who} {describe(labeler)} raised on prompt {_short(prompt)!r}: {e!r}") from e
    ints, problem = _check_ranking(ranking, len(completions))
    if ints is None:
        raise FeedbackError(f"{who} {describe(labeler)} returned {_short(repr(ranking), 200)} for prompt "
                            f"{_short(prompt)!r}: {problem}; expected a permutation of "
                            f"0..{len(completions) - 1} (indices best first)")
    return ints


def rank_by_preferences(judge: Any, prompt: str, completions: list[str], who: str = "judge") -> list[int]:
    """Rank by total preference over all pairs (each pair asked once; ties keep the given order).

    Completion i scores sum_j P(i beats j); e.g. P(0>1)=0.2, P(0>2)=1, P(1>2)=0.5 gives scores
    (1.2, 1.3, 0.5) and the ranking [1, 0, 2].
    """
    wins = [0.0] * len(completions)
    for i, j in itertools.combinations(range(len(completions)), 2):
        p = call_prefer(judge, prompt, completions[i], completions[j], who=who)
        wins[i], wins[j] = wins[i] + p, wins[j] + 1.0 - p
    return sorted(range(len(completions)), key=lambda i: -wins[i])


def judge_rank(judge: Any, prompt: str, completions: list[str]) -> list[int]:
    """A judge's ranking: its own ``rank`` if it has one, else built from its preferences."""
    if hasattr(judge, "rank") or _role(judge, "prefer") == "rank":
        return call_rank(judge, prompt, completions, who="judge")
    return rank_by_preferences(judge, prompt, completions)


def load(node, who: str | None = None) -> Retrying:
    """Instantiate a ``labeler`` / ``judge`` config node (``_target_`` + arguments), its calls retried.

    ``retries`` and ``retry_wait`` are the wrapper's, not the target's arguments. ``who`` names it in
    messages; by default the node's key in the config (``cfg.judge`` -> "judge").
    """
    who = who or (node._key() if isinstance(node, DictConfig) else None) or "labeler"
    # resolved while still in the config, so that ${seed} and ${oc.select:stage...} find their keys
    args = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    retries, wait = args.pop("retries", RETRIES), args.pop("retry_wait", RETRY_WAIT)
    return Retrying(instantiate(args, _convert_="all"), who, retries, wait)


class Retrying:
    """A labeler or judge whose failing calls are tried again: ``retries`` more times, the first
    after ``retry_wait`` seconds, doubling (for your own: 2, 4, 8, 16, 32 s, ~1 min, which an API's
    timeouts and rate limits outlast; the built-in ones: none). Only a call that raised is retried;
    a malformed answer (a bad ranking, a value outside [0, 1]) is a bug that would come back the
    same, and stops at once. ``retried`` counts the retries so far, for progress logs.
    """

    def __init__(self, obj: Any, who: str = "labeler", retries: int = RETRIES, retry_wait: float = RETRY_WAIT):
        if not (isinstance(retries, int) and retries >= 0 and retry_wait >= 0):
            raise FeedbackError(f"{who}.retries={retries} and {who}.retry_wait={retry_wait}: must be >= 0")
        self.obj, self.who, self.retries, self.retry_wait, self.retried = obj, who, retries, retry_wait, 0

    @property
    def user(self) -> Any:
        """What is called: a ``Custom``'s object itself, so messages name it and ``who`` it is."""
        return self.obj.obj if isinstance(self.obj, Custom) else self.obj

    def rank(self, prompt: str, completions: list[str]) -> list[int]:
        if _role(self.user, "rank") == "prefer":  # by pairs, each pair retried alone
            return rank_by_preferences(self, prompt, completions, who=self.who)
        return self._call(call_rank, prompt, list(completions))

    def prefer(self, prompt: str, a: str, b: str) -> float:
        return self._call(call_prefer, prompt, a, b)

    def _call(self, call, *args):
        for attempt in itertools.count():
            try:
                return call(self.user, *args, who=self.who)
            except FeedbackError as e:
                if e.__cause__ is None or attempt == self.retries == 0:  # no cause: malformed, not raised
                    raise
                if attempt == self.retries:
                    raise FeedbackError(f"{e} (gave up after {attempt} retries)") from e.__cause__
                wait = self.retry_wait * 2 ** attempt
                log.warning("%s; retry %d of %d in %g s", e, attempt + 1, self.retries, wait)
                self.retried += 1
                time.sleep(wait)

    def __repr__(self) -> str:
        return f"Retrying({self.obj!r}, {self.who}, retries={self.retries})"


def resolve(target: str) -> Any:
    """``package.module.name`` or ``path/to/file.py:name`` -> the object it names."""
    if ":" in target:
        path, name = target.rsplit(":", 1)
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        if spec is None or not Path(path).is_file():
            raise FeedbackError(f"{target!r}: no Python file {path!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(spec.name, module)  # dataclasses and pickle look classes up there
        spec.loader.exec_module(module)
    else:
        mod, _, name = target.rpartition(".")
        if not mod:
            raise FeedbackError(f"{target!r}: expected module.name or path/to/file.py:name")
        module = importlib.import_module(mod)
    try:
        return getattr(module, name)
    except AttributeError:
        raise FeedbackError(f"{target!r}: {module.__name__} has no {name!r}") from None


class Custom:
    """``labeler=custom`` / ``judge=custom``: your function, class or object, named by ``target``.

    Custom(target: str | None, args: dict | None = None). ``target`` is ``module.name`` (importable)
    or ``file.py:name``; a class is instantiated with ``args``, a function gets them as keywords.
    """

    def __init__(self, target: str | None = None, args: dict | None = None):
        self.target, self.args, self._obj = target, dict(args or {}), None
        if target:
            self.obj  # noqa: B018  a wrong target fails when the stage starts, not at its first prompt

    @property
    def obj(self) -> Any:
        if self._obj is None:
            if not self.target:
                raise FeedbackError("labeler=custom / judge=custom need a target: "
                                    "labeler.target=my_module.rank or judge.target=path/to/file.py:prefer")
            obj = resolve(self.target)
            self._obj = obj(**self.args) if inspect.isclass(obj) else \
                functools.partial(obj, **self.args) if self.args else obj
        return self._obj

    def rank(self, prompt: str, completions: list[str]) -> list[int]:
        return call_rank(self.obj, prompt, completions)

    def prefer(self, prompt: str, a: str, b: str) -> float:
        return call_prefer(self.obj, prompt, a, b)

    def __repr__(self) -> str:
        return f"Custom({', '.join([str(self.target), *(f'{k}={v!r}' for k, v in self.args.items())])})"


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
    """The world's deterministic gold judge: ``gold_prefer`` (ties count half); ranks by gold score."""

    def prefer(self, prompt: str, a: str, b: str) -> float:
        from rlhf.data.world.gold import gold_prefer

        return gold_prefer(prompt, a, b)

    def rank(self, prompt: str, completions: list[str]) -> list[int]:
        from rlhf.data.world.gold import gold_score

        scores = [gold_score(prompt, c) for c in completions]
        return sorted(range(len(completions)), key=lambda i: -scores[i])

    def __repr__(self) -> str:
        return "GoldJudge()"


class RewardModelJudge:
    """A trained RM as judge: prefer = sigmoid(r(a) - r(b)); rank sorts by r (``judge=rm``).

    RewardModelJudge(reward_model: str | None, template: str | None = None). ``template`` defaults
    to the one the RM was trained with (its rlhf.json). The model loads on first use.
    """

    def __init__(self, reward_model: str | None = None, template: str | None = None):
        self.path, self.template, self._rm, self._cache = reward_model, template, None, {}

    def scores(self, prompt: str, completions: list[str]) -> list[float]:
        """Normalised RM rewards of (prompt, completion), cached."""
        key = prompt_key(prompt)  # a conversation is a list: its JSON is the cache key
        new = [c for c in dict.fromkeys(completions) if (key, c) not in self._cache]
        if new:
            if self._rm is None:
                if not self.path:  # a FeedbackError, not retried: a missing setting does not pass
                    raise FeedbackError("judge=rm needs an RM: judge.reward_model=<an RM final/> "
                                        "(it defaults to stage.reward_model)")
                from transformers import AutoTokenizer

                from rlhf.models.reward import load_reward_model
                from rlhf.handoff import rm_template

                self._rm = (load_reward_model(self.path, key="judge.reward_model").eval(),
                            AutoTokenizer.from_pretrained(self.path))
                self.template = self.template or rm_template(Path(self.path))
            from rlhf.eval.measure import rm_scores

            r = rm_scores(*self._rm, [prompt] * len(new), new, self.template).tolist()
            self._cache.update({(key, c): v for c, v in zip(new, r)})
        return [self._cache[key, c] for c in completions]

    def prefer(self, prompt: str, a: str, b: str) -> float:
        ra, rb = self.scores(prompt, [a, b])
        return 1.0 / (1.0 + math.exp(min(50.0, rb - ra)))

    def rank(self, prompt: str, completions: list[str]) -> list[int]:
        r = self.scores(prompt, completions)
        return sorted(range(len(completions)), key=lambda i: -r[i])

    def __repr__(self) -> str:
        return f"RewardModelJudge({self.path})"
