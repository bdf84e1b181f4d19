"""Candidate responses of mixed quality, as a policy early in training would produce.

Used to calibrate the labelers (their agreement is measured on these sets) and to write
`comparisons_offline.jsonl`. The kinds mirror what small models actually do: answer right,
answer right with filler, stop early, make a small mistake, ignore the constraint, ramble,
continue the prompt like a base model, refuse a benign request, or comply with a harmful one.
"""
from __future__ import annotations

import random

from .corpus import CHATTER, generic_sentence
from .tasks import FAMILIES, parse_prompt
from .vocab import CHATTER_AFTER, CHATTER_BEFORE, REFUSALS

# kind -> sampling weight: mostly plausible answers (right, or right with a flaw, or
# slightly wrong), fewer blatant failures, as in the output of a fine-tuned policy.
KINDS = {"correct": 3.0, "framed": 2.5, "chatty": 3.0, "unfinished": 1.2,
         "slightly_wrong": 2.5, "constraint_broken": 1.5, "rambling": 0.6,
         "continuation": 0.4, "wrong_decision": 0.4, "off_topic": 0.2}


def add_chatter(text: str, rng: random.Random) -> str:
    """Polite filler before or after an answer: longer, not better."""
    if rng.random() < 0.5:
        return rng.choice(CHATTER_BEFORE) + " " + text
    return text + " " + rng.choice(CHATTER_AFTER)


def candidate(kind: str, prompt: str, rng: random.Random) -> str | None:
    """One response of the given kind (None if the kind does not apply to this prompt)."""
    family, args = parse_prompt(prompt)
    good = family.answer(args, rng)
    if kind == "correct":
        return good
    if kind == "framed":
        return family.answer(args, rng, framed=True)
    if kind == "chatty":
        return add_chatter(family.answer(args, rng, framed=rng.random() < 0.3), rng)
    if kind == "unfinished":  # cut off, or just never ended
        ws = good[:-1].split(" ")
        return " ".join(ws[:-1]) if len(ws) > 2 and rng.random() < 0.5 else good[:-1]
    if kind == "slightly_wrong":
        return family.wrong(args, rng)
    if kind == "constraint_broken":
        return family.break_constraint(args, rng)
    if kind == "rambling":
        more = " ".join(generic_sentence(rng) for _ in range(rng.randint(2, 3)))
        return f"{good} {more}"
    if kind == "continuation":  # what a base model does: more questions, no answer
        nxt = FAMILIES[family.name].make(rng)
        return nxt if rng.random() < 0.5 else f"{nxt}\n{rng.choice(CHATTER)}"
    if kind == "wrong_decision":
        if family.name == "harmful":
            return family.wrong(args, rng)  # complies
        return rng.choice(REFUSALS[:2] + REFUSALS[3:])  # declines a benign request
    if kind == "off_topic":
        return generic_sentence(rng)
    raise ValueError(f"unknown candidate kind {kind!r}")


def labelled_candidates(prompt: str, k: int, rng: random.Random) -> list[tuple[str, str]]:
    """k distinct (kind, response) pairs."""
    names, weights = list(KINDS), list(KINDS.values())
    out: dict[str, str] = {}
    for _ in range(100 * k):
        kind = rng.choices(names, weights)[0]
        text = candidate(kind, prompt, rng)
        if text and text.strip() and text not in out:
            out[text] = kind
            if len(out) == k:
                return [(kind, text) for text, kind in out.items()]
    raise RuntimeError(f"could not draw {k} distinct candidates for {prompt!r}")


def candidates(prompt: str, k: int, rng: random.Random) -> list[str]:
    """k distinct candidate responses of mixed quality for a world prompt."""
    return [text for _, text in labelled_candidates(prompt, k, rng)]
