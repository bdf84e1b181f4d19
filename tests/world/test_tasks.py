"""Task families: prompts parse back from text alone, and answers are judged as intended."""
import random

import pytest

from rlhf.data.world.gold import gold_score
from rlhf.data.world.tasks import FAMILIES, parse_prompt
from rlhf.data.world.vocab import CATEGORIES, THINGS


def test_at_least_six_families_with_a_decline_family():
    assert len(FAMILIES) >= 6 and "harmful" in FAMILIES


def test_categories_are_disjoint():
    words = [w for ws in CATEGORIES.values() for w in ws] + list(THINGS)
    assert len(words) == len(set(words))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_prompts_parse_back_to_their_family_and_arguments(name):
    family = FAMILIES[name]
    for i in range(200):
        raw = family.sample(random.Random(i))
        prompt = family.make(random.Random(i))  # make() samples the same raw fields first
        parsed, args = parse_prompt(prompt)
        assert parsed is family, prompt
        assert {k: v for k, v in args.items() if k != "modifier"} == family.decode(raw), prompt


@pytest.mark.parametrize("name", list(FAMILIES))
def test_answers_score_one_and_mistakes_score_clearly_lower(name):
    family, rng = FAMILIES[name], random.Random(1)
    for _ in range(200):
        prompt = family.make(rng)
        _, args = parse_prompt(prompt)
        assert gold_score(prompt, family.answer(args, rng)) == 1.0
        assert gold_score(prompt, family.answer(args, rng, framed=True)) == 1.0
        assert gold_score(prompt, family.wrong(args, rng)) <= 0.6  # a visible error
        broken = family.break_constraint(args, rng)
        if broken is not None:
            assert gold_score(prompt, broken) <= 0.6


def test_prompts_are_short_lowercase_text():
    rng = random.Random(0)
    for family in FAMILIES.values():
        for _ in range(50):
            prompt = family.make(rng)
            assert prompt == prompt.lower() and len(prompt.split()) <= 25


def test_foreign_prompt_is_rejected():
    with pytest.raises(ValueError, match="not a prompt of the built-in world"):
        parse_prompt("summarise this article about the economy.")
