"""Simulated labelers: they write demonstrations, rank K completions, and judge pairs.

A labeler's utility for a response is gold score + taste + Gaussian noise (a Thurstone
model). Gold differences between right and wrong answers are large (0.4-1.0), so labelers
are reliable on correctness; taste (length, filler, a pet peeve) and noise are of the size
of the small gold differences (filler, framing, a cut-off ending), so that is where they
disagree. Everything works from (prompt, response) text only.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from .candidates import add_chatter
from .gold import gold_score
from .tasks import is_refusal, parse_prompt
from .tasks.base import words
from .vocab import CHATTER_AFTER, CHATTER_BEFORE

FILLER = CHATTER_BEFORE + CHATTER_AFTER
PEEVES = {  # a feature of the text that one labeler dislikes more than the others
    "unfinished": lambda t: not t.rstrip().endswith((".", "!")),
    "commas": lambda t: "," in t,
    "long": lambda t: len(words(t)) > 10,
    "refusal": is_refusal,
    "filler": lambda t: any(c in t for c in FILLER),
}
# Parameter ranges: (low, high), drawn uniformly per labeler.
# Noise and taste were tuned so that two training labelers agree on ~73% of pairs of
# `candidates()` and two held-out labelers on ~77% (paper: 72.6% and 77.3%).
TRAINING = dict(noise=(0.22, 0.30), length=(-0.2, 0.2), filler=(-0.2, 0.1),
                peeve_weight=(0.05, 0.2), p_slip=(0.04, 0.10), p_forget=(0.1, 0.3),
                p_filler=(0.05, 0.25), p_unfinished=(0.02, 0.06), p_framed=(0.1, 0.6))
HELD_OUT = dict(noise=(0.18, 0.23), length=(-0.1, 0.15), filler=(-0.1, 0.05),
                peeve_weight=(0.03, 0.10), p_slip=(0.03, 0.08), p_forget=(0.1, 0.25),
                p_filler=(0.05, 0.2), p_unfinished=(0.02, 0.05), p_framed=(0.2, 0.5))


@dataclass(frozen=True)
class Labeler:
    name: str
    noise: float  # sd of the judgement noise on the utility
    length: float  # taste: utility of a 20-word answer over an empty one (+ likes long)
    filler: float  # taste for polite filler ("sure.", "hope this helps.")
    peeve: str  # one of PEEVES
    peeve_weight: float
    p_slip: float  # demonstrations: a small content mistake
    p_forget: float  # ... ignores the prompt's explicit constraint
    p_filler: float  # ... adds polite filler
    p_unfinished: float  # ... forgets the final period
    p_framed: float  # ... wraps the answer in words (gold-neutral style)

    def taste(self, response: str) -> float:
        t = response.lower()
        return (self.length * min(len(words(t)), 20) / 20
                + self.filler * any(c in t for c in FILLER)
                - self.peeve_weight * bool(PEEVES[self.peeve](t)))

    def utility(self, prompt: str, response: str, rng: random.Random) -> float:
        return gold_score(prompt, response) + self.taste(response) + rng.gauss(0.0, self.noise)

    def rank(self, prompt: str, completions: list[str], rng: random.Random) -> list[int]:
        """Indices of completions, best first (a permutation)."""
        u = [self.utility(prompt, c, rng) for c in completions]
        return sorted(range(len(completions)), key=lambda i: -u[i])

    def prefer(self, prompt: str, a: str, b: str, rng: random.Random) -> float:
        """1.0 if this labeler prefers a, 0.0 if b, 0.5 for identical texts."""
        if a == b:
            return 0.5
        return float(self.utility(prompt, a, rng) > self.utility(prompt, b, rng))

    def demonstrate(self, prompt: str, rng: random.Random) -> str:
        """A demonstration: usually right, with this labeler's habits and slips."""
        family, args = parse_prompt(prompt)
        if rng.random() < self.p_slip:
            return family.wrong(args, rng)
        text = family.break_constraint(args, rng) if rng.random() < self.p_forget else None
        text = text or family.answer(args, rng, framed=rng.random() < self.p_framed)
        if rng.random() < self.p_filler:
            text = add_chatter(text, rng)
        if rng.random() < self.p_unfinished:
            text = text.rstrip(".")
        return text

    def params(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def draw_labelers(prefix: str, n: int, spec: dict, rng: random.Random,
                  noise_scale: float = 1.0) -> list[Labeler]:
    peeves = list(PEEVES)
    rng.shuffle(peeves)
    out = []
    for i in range(n):
        p = {k: rng.uniform(*lo_hi) for k, lo_hi in spec.items()}
        p["noise"] *= noise_scale
        out.append(Labeler(name=f"{prefix}{i}", peeve=peeves[i % len(peeves)], **p))
    return out


class LabelerPool:
    """A pool of labelers; each request is served by one labeler drawn at random."""

    def __init__(self, labelers: list[Labeler]):
        self.labelers = list(labelers)

    @classmethod
    def training(cls, seed: int = 0, noise_scale: float = 1.0, n: int = 8) -> LabelerPool:
        rng = random.Random(f"train-{seed}")
        return cls(draw_labelers("train", n, TRAINING, rng, noise_scale))

    @classmethod
    def held_out(cls, seed: int = 0, noise_scale: float = 1.0, n: int = 4) -> LabelerPool:
        rng = random.Random(f"held-{seed}")  # another stream and other ranges
        return cls(draw_labelers("heldout", n, HELD_OUT, rng, noise_scale))

    def pick(self, rng: random.Random) -> Labeler:
        return self.labelers[rng.randrange(len(self.labelers))]

    def rank(self, prompt: str, completions: list[str], rng: random.Random) -> list[int]:
        return self.pick(rng).rank(prompt, completions, rng)

    def prefer(self, prompt: str, a: str, b: str, rng: random.Random) -> float:
        return self.pick(rng).prefer(prompt, a, b, rng)

    def demonstrate(self, prompt: str, rng: random.Random) -> str:
        return self.pick(rng).demonstrate(prompt, rng)

    def params(self) -> list[dict]:
        return [lab.params() for lab in self.labelers]
