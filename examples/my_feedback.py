"""A rule-based labeler and judge: the shape your own feedback code takes (docs/feedback.md).

Plain Python, no import from ``rlhf``; it works on the built-in world's prompts and on your own.

    rlhf-train stage=collect labeler=custom labeler.target=examples/my_feedback.py:rank ...
    rlhf-train stage=eval judge=custom judge.target=examples/my_feedback.py:prefer ...
    rlhf-train stage=eval judge=custom judge.target=examples/my_feedback.py:Rules +judge.args.max_words=12 ...
"""
from __future__ import annotations

import re

HEDGES = ("not sure", "i think", "maybe", "perhaps", "as an ai")


def text(prompt: str | list[dict]) -> str:
    """A conversational prompt (a list of {"role", "content"} messages) as its last turn's text."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def score(prompt: str | list[dict], response: str, max_words: int = 25) -> float:
    """score(prompt, response) -> float: higher is better; 0 for an empty response."""
    prompt = text(prompt)
    words = re.findall(r"[a-z0-9']+", response.lower())
    if not words:
        return 0.0
    asked = set(re.findall(r"[a-z0-9']+", prompt.lower()))
    s = 1.0
    s += 0.5 * len(asked & set(words)) / len(set(words))        # stays on the prompt's words
    s -= 0.5 * response.rstrip().endswith("?")                     # answers, does not ask back
    s -= 0.3 * (not response.rstrip().endswith((".", "!")))       # finished sentence
    s -= 0.4 * any(h in response.lower() for h in HEDGES)          # no hedging
    s -= 0.5 * (len(words) > max_words)                            # no rambling
    s -= 0.5 * (1 - len(set(words)) / len(words))                  # no repetition
    s -= 0.8 * (" ".join(words[:4]) == " ".join(re.findall(r"[a-z0-9']+", prompt.lower())[:4]))  # no echo
    return s


def rank(prompt: str, completions: list[str]) -> list[int]:
    """rank(prompt, completions) -> indices best first (a labeler; ties keep the given order)."""
    scores = [score(prompt, c) for c in completions]
    return sorted(range(len(completions)), key=lambda i: -scores[i])


def prefer(prompt: str, a: str, b: str) -> float:
    """prefer(prompt, a, b) -> 1.0 if a is better, 0.0 if b is, 0.5 for a tie (a judge)."""
    sa, sb = score(prompt, a), score(prompt, b)
    return 0.5 if sa == sb else float(sa > sb)


class Rules:
    """The same rules with a setting: Rules(max_words=25) offers rank and prefer."""

    def __init__(self, max_words: int = 25):
        self.max_words = max_words

    def rank(self, prompt: str, completions: list[str]) -> list[int]:
        scores = [score(prompt, c, self.max_words) for c in completions]
        return sorted(range(len(completions)), key=lambda i: -scores[i])

    def prefer(self, prompt: str, a: str, b: str) -> float:
        sa, sb = score(prompt, a, self.max_words), score(prompt, b, self.max_words)
        return 0.5 if sa == sb else float(sa > sb)

    def __repr__(self) -> str:
        return f"Rules(max_words={self.max_words})"
