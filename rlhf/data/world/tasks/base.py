"""What every task family shares: prompt templates that parse back, and answer helpers.

A family turns random arguments into a prompt (`make`), recovers the arguments from the
prompt text alone (`parse`, which the gold judge uses), writes correct and slightly wrong
answers, and scores an answer's content (`correctness`) and its explicit constraint
(`constraint`). Format rules shared by all families (ending, chatter, rambling) live in gold.py.
"""
from __future__ import annotations

import random
import re

WORD_RE = re.compile(r"[a-z0-9']+")

# Optional constraint suffixes a family may append to its prompts.
COMMAS = "separate them with commas."
ONE_WORD = "answer with one word."
NUMBER_ONLY = "answer with just the number."


def words(text: str) -> list[str]:
    """Lowercase word tokens, punctuation dropped."""
    return WORD_RE.findall(text.lower())


def sentence(items: list[str], commas: bool = False) -> str:
    """Join items into a short answer that ends properly: 'a b c.' or 'a, b, c.'"""
    return (", " if commas else " ").join(items) + "."


def and_list(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class Template:
    """A prompt pattern like 'reverse these words: {items}.' that fills and matches.

    `fields` maps each placeholder to the regex its value must match (fields the format
    does not use are ignored), so that a filled prompt matches back to the values.
    """

    def __init__(self, fmt: str, **fields: str):
        self.fmt = fmt
        self.keys = set(re.findall(r"{(\w+)}", fmt))
        pattern = re.escape(fmt)
        for name, rx in fields.items():
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{rx})")
        self.regex = re.compile(f"^{pattern}$")

    def fill(self, args: dict) -> str:
        return self.fmt.format(**args)

    def match(self, text: str) -> dict | None:
        m = self.regex.match(text)
        return m.groupdict() if m else None


class Family:
    """Base class; subclasses set templates/modifiers and implement the abstract methods."""

    name = ""
    templates: tuple[Template, ...] = ()
    modifiers: tuple[str, ...] = ()  # optional constraint suffixes
    p_modifier = 0.35  # share of prompts that carry one
    max_sentences = 1  # a good answer is one sentence
    budget = 12  # more words than this is rambling

    # -- prompts ---------------------------------------------------------------------
    def sample(self, rng: random.Random) -> dict:
        """Random raw template fields (strings)."""
        raise NotImplementedError

    def decode(self, raw: dict) -> dict | None:
        """Template fields -> arguments (lists, ints); None if they are not this family's."""
        raise NotImplementedError

    def make(self, rng: random.Random) -> str:
        raw = self.sample(rng)
        ok = [t for t in self.templates if t.keys == set(raw)]  # templates using every field
        text = rng.choice(ok).fill(raw)
        if self.modifiers and rng.random() < self.p_modifier:
            text += " " + rng.choice(self.modifiers)
        return text

    def parse(self, prompt: str) -> dict | None:
        core, mod = prompt, None
        for m in self.modifiers:
            if prompt.endswith(" " + m):
                core, mod = prompt[: -len(m) - 1], m
        for t in self.templates:
            raw = t.match(core)
            if raw is not None:
                args = self.decode(raw)
                if args is not None:
                    return {**args, "modifier": mod}
        return None

    # -- answers ---------------------------------------------------------------------
    def answer(self, args: dict, rng: random.Random, framed: bool = False) -> str:
        """A correct answer that obeys the prompt's constraint; `framed` wraps it in words."""
        raise NotImplementedError

    def wrong(self, args: dict, rng: random.Random) -> str:
        """A slightly wrong answer: the kind of mistake a small model makes."""
        raise NotImplementedError

    def break_constraint(self, args: dict, rng: random.Random) -> str | None:
        """A correct answer that ignores the prompt's explicit constraint (None if none)."""
        if args["modifier"] == COMMAS:
            return self.answer({**args, "modifier": None}, rng).replace(",", "")
        if args["modifier"] in (ONE_WORD, NUMBER_ONLY):
            return self.answer({**args, "modifier": None}, rng, framed=True)
        return None

    # -- judging ---------------------------------------------------------------------
    def correctness(self, args: dict, response: str) -> float:
        """Content score in [0, 1] with partial credit; format is judged elsewhere."""
        raise NotImplementedError

    def constraint(self, args: dict, response: str) -> float:
        """Factor in [0, 1] for the explicit constraint; 1.0 when satisfied or absent."""
        mod, n = args["modifier"], len(words(response))
        if mod == COMMAS:
            return 1.0 if response.count(",") >= max(1, self.n_items(args) - 1) else 0.6
        if mod in (ONE_WORD, NUMBER_ONLY):
            return 1.0 if n == 1 else 0.6
        return 1.0

    def n_items(self, args: dict) -> int:
        return len(args.get("items", ()))
