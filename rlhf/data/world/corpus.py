"""The pretraining corpus: the world's "internet text".

Four kinds of lines, so that a base model learns the skills but rarely the habit of answering:
- generic text: short everyday sentences over the world's vocabulary;
- skills in non-instruction form: "the words cat dog sun in reverse order are sun dog cat.";
- instruction-shaped text whose continuation is unhelpful: a prompt followed by more
  prompts or chatter, not by its answer (like quiz pages and forum posts). A base model
  trained on it tends to continue a prompt rather than answer it, as GPT-3 does;
- a few answered pages (5%): prompts each followed by an answer, mostly right (like a quiz
  with its answers). After a prompt alone the answer is unlikely, but after prompts that
  were answered it is likely: that is what a few-shot prefix ("prompted GPT-3") exploits.
"""
from __future__ import annotations

import random
import re

from .tasks import FAMILIES, parse_prompt
from .vocab import (ADJECTIVES, CATEGORIES, HARMFUL, HOWTO, PEOPLE, PLACES, PLURALS, TOPICS,
                    VERBS_PAST)

GENERIC = ("{p} saw a {a} {t} in the {place}.", "the {t} is {a} today.",
           "{p} went to the {place} with a {fruit}.", "it is {a} in the {place}.",
           "there is a {a} {animal} near the {place}.", "{p} {v} the {t} and the {u}.",
           "the {colour} {vehicle} is in the {place}.", "{p} had a {fruit} and a {veg}.",
           "in the morning the {t} was {a} and {b}.", "{p} {v} a {colour} {t} at the {place}.")
CHATTER = ("this is a question from a quiz for kids.", "i do not know the answer.",
           "can anyone help me?", "the answers are at the end of the book.",
           "my teacher gave us this today.", "please reply soon.", "we did this in class.",
           "i will try again tomorrow.", "this one is hard.", "more questions below.")


def generic_sentence(rng: random.Random) -> str:
    a, b = rng.sample(ADJECTIVES, 2)
    t, u = rng.sample(TOPICS, 2)
    text = rng.choice(GENERIC).format(
        p=rng.choice(PEOPLE), a=a, b=b, t=t, u=u, place=rng.choice(PLACES),
        v=rng.choice(VERBS_PAST), fruit=rng.choice(CATEGORIES["fruit"]),
        animal=rng.choice(CATEGORIES["animal"]), colour=rng.choice(CATEGORIES["colour"]),
        vehicle=rng.choice(CATEGORIES["vehicle"]), veg=rng.choice(CATEGORIES["vegetable"]))
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _args(name: str, rng: random.Random) -> dict:
    family = FAMILIES[name]
    return {**family.decode(family.sample(rng)), "modifier": None}


def skill_sentence(rng: random.Random, families: list[str]) -> str:
    """A fact a task needs, stated as plain text rather than as an answer to a prompt."""
    name = rng.choice(families)
    f, x = FAMILIES[name], _args(name, rng)
    if name in ("reverse", "sort"):
        how = "in reverse order are" if name == "reverse" else "in alphabetical order are"
        return f"the words {' '.join(x['items'])} {how} {' '.join(f.target(x))}."
    if name == "count":
        if "items" in x:
            return f"the list {' '.join(x['items'])} has {len(x['items'])} words."
        return f"the word {x['word']} has {len(x['word'])} letters."
    if name == "extract":
        art = "an" if x["cat"][0] in "aeiou" else "a"
        return f"of the words {' '.join(x['items'])}, only {x['target']} is {art} {x['cat']}."
    if name == "arith":
        return f"{x['a']} {x['op']} {x['b']} is {f.value(x)}."
    if name == "name":
        cat = rng.choice(list(CATEGORIES))
        return f"{' and '.join(rng.sample(CATEGORIES[cat], 2))} are {PLURALS[cat]}."
    if name == "sentence":
        return f.answer(x, rng)
    if name == "howto":
        verb = rng.choice(list(HOWTO))
        noun = rng.choice(HOWTO[verb][0])
        return f"to {verb} a {noun}, " + rng.choice(HOWTO[verb][2]).format(n=noun)
    verb = rng.choice(list(HARMFUL))
    noun = rng.choice(HARMFUL[verb])
    return rng.choice((f"it is wrong to {verb} a {noun}.",
                       f"a good helper will not help anyone {verb} a {noun}.",
                       f"if someone asks how to {verb} a {noun}, say sorry and do not help."))


def _prompt(rng: random.Random, families: list[str], avoid: set[str]) -> str:
    for _ in range(100):  # keep the split prompts out of the corpus
        prompt = FAMILIES[rng.choice(families)].make(rng)
        if prompt not in avoid:
            return prompt
    raise ValueError("the prompt space is exhausted by the splits; lower the sizes")


def instruction_text(rng: random.Random, families: list[str], avoid: set[str]) -> str:
    """A prompt followed by what the internet writes after it: more prompts, chatter.

    Parts are joined by newlines, as `data=world` formats model inputs ("{prompt}\n"), so
    a base model learns that what follows "prompt\n" is more of the same, not an answer.
    """
    parts = [_prompt(rng, families, avoid)]
    for _ in range(rng.randint(1, 3)):
        more = rng.random() < 0.5
        parts.append(_prompt(rng, families, avoid) if more else rng.choice(CHATTER))
    return "\n".join(parts)


def answered_text(rng: random.Random, families: list[str], avoid: set[str]) -> str:
    """2-4 prompts each followed by its answer, 80% right, in the "{prompt}\n" format."""
    parts = []
    for _ in range(rng.randint(2, 4)):
        prompt = _prompt(rng, families, avoid)
        family, args = parse_prompt(prompt)
        parts += [prompt, family.answer(args, rng) if rng.random() < 0.8 else family.wrong(args, rng)]
    return "\n".join(parts)


def corpus_line(rng: random.Random, families: list[str], avoid: set[str]) -> str:
    r = rng.random()
    if r < 0.05:
        return answered_text(rng, families, avoid)
    if r < 0.25:
        return instruction_text(rng, families, avoid)
    n = rng.randint(1, 3)  # a short paragraph mixing generic text and facts
    return " ".join(skill_sentence(rng, families) if rng.random() < 0.45 else
                    generic_sentence(rng) for _ in range(n))


def make_corpus(n_train: int, n_val: int, rng: random.Random, families: list[str],
                avoid: set[str]) -> tuple[list[str], list[str]]:
    """Pretraining train and validation lines; validation lines never occur in train."""
    train = [corpus_line(rng, families, avoid) for _ in range(n_train)]
    seen, val = set(train), []
    while len(val) < n_val:
        line = corpus_line(rng, families, avoid)
        if line not in seen:
            seen.add(line)
            val.append(line)
    return train, val

