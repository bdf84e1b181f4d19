"""Number families: counting words or letters, and arithmetic on small numbers.

The answer is read as the last number of the first sentence ("there are 4 words." and
"7 plus 5 is 12." both work); numbers may be digits or words up to twelve. Off by one
earns partial credit. Numbers stay small so that a tiny model can learn them as facts.
"""
from __future__ import annotations

import re

from ..vocab import LIST_WORDS, WORD_NUMBERS
from .base import NUMBER_ONLY, Family, Template, words
from .lists import ITEMS


def said_number(response: str) -> int | None:
    """The last number in the first sentence of a response, or None."""
    first = re.split(r"[.?!]", response.lower(), maxsplit=1)[0]
    nums = [int(w) if w.isdigit() else WORD_NUMBERS[w] for w in words(first)
            if w.isdigit() or w in WORD_NUMBERS]
    return nums[-1] if nums else None


class _Numeric(Family):
    modifiers = (NUMBER_ONLY,)
    budget = 10

    def value(self, args: dict) -> int:
        raise NotImplementedError

    def framed(self, args: dict, rng) -> str:
        raise NotImplementedError

    def answer(self, args, rng, framed=False):
        if framed and args["modifier"] is None:  # framing would break "just the number"
            return self.framed(args, rng)
        return f"{self.value(args)}."

    def wrong(self, args, rng):
        v = self.value(args)
        v = rng.choice([v + d for d in (-2, -1, 1, 1, 2) if v + d >= 0])  # near misses
        return f"{v}." if rng.random() < 0.6 else self.framed({**args, "value": v}, rng)

    def correctness(self, args, response):
        said = said_number(response)
        if said is None:
            return 0.0
        return {0: 1.0, 1: 0.4}.get(abs(said - self.value(args)), 0.0)


class Count(_Numeric):
    name = "count"
    templates = (Template("how many words are in this list: {items}?", items=ITEMS),
                 Template("count the words in this list: {items}.", items=ITEMS),
                 Template("how many letters are in the word {word}?", word="[a-z]+"),
                 Template("count the letters in the word {word}.", word="[a-z]+"))

    def sample(self, rng):
        if rng.random() < 0.5:
            return {"items": " ".join(rng.choices(LIST_WORDS, k=rng.randint(2, 7)))}
        return {"word": rng.choice(LIST_WORDS)}

    def decode(self, raw):
        if raw.get("items"):
            return {"items": raw["items"].split()}
        return {"word": raw["word"]}

    def value(self, args):
        if "value" in args:  # a deliberately wrong value, see wrong()
            return args["value"]
        return len(args["items"]) if "items" in args else len(args["word"])

    def framed(self, args, rng):
        v = self.value(args)
        if "items" in args:
            return rng.choice(("there are {v} words.", "the list has {v} words.")).format(v=v)
        return rng.choice(("the word {w} has {v} letters.", "there are {v} letters.")).format(
            w=args["word"], v=v)


class Arith(_Numeric):
    name = "arith"
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    templates = tuple(Template(f, a=r"\d+", op="plus|minus|times", b=r"\d+") for f in (
        "what is {a} {op} {b}?", "how much is {a} {op} {b}?", "compute {a} {op} {b}."))

    def sample(self, rng):
        op = rng.choice(list(self.ops))
        if op == "times":
            a, b = rng.randint(1, 6), rng.randint(1, 6)
        elif op == "plus":
            a, b = rng.randint(0, 12), rng.randint(0, 12)
        else:
            a = rng.randint(1, 20)
            b = rng.randint(0, a)
        return {"a": str(a), "op": op, "b": str(b)}

    def decode(self, raw):
        return {"a": int(raw["a"]), "op": raw["op"], "b": int(raw["b"])}

    def value(self, args):
        if "value" in args:  # a deliberately wrong value, see wrong()
            return args["value"]
        return self.ops[args["op"]](args["a"], args["b"])

    def framed(self, args, rng):
        v = self.value(args)
        return rng.choice(("the answer is {v}.", "{a} {op} {b} is {v}.", "it is {v}.")).format(
            v=v, a=args["a"], op=args["op"], b=args["b"])
