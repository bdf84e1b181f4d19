"""The task families of the built-in world, and prompt parsing from text alone."""
from __future__ import annotations

from functools import lru_cache

from .base import Family
from .lists import Extract, Reverse, Sort
from .numbers import Arith, Count
from .open import Name, Sentence
from .safety import Harmful, HowTo, is_refusal

# Order matters only for determinism (generation iterates families in this order).
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Reverse(), Sort(), Count(), Extract(), Arith(), Name(), Sentence(), HowTo(), Harmful())}


@lru_cache(maxsize=65536)
def parse_prompt(prompt: str) -> tuple[Family, dict]:
    """Which family wrote this prompt, and its arguments. ValueError if none did."""
    text = " ".join(prompt.lower().split())
    for family in FAMILIES.values():
        args = family.parse(text)
        if args is not None:
            return family, args
    raise ValueError(f"not a prompt of the built-in world: {prompt!r}")


def family_of(prompt: str) -> str:
    return parse_prompt(prompt)[0].name


__all__ = ["FAMILIES", "Family", "parse_prompt", "family_of", "is_refusal"]
