"""The feedback plug-in layer: checked calls, rankings from preferences, loading user code."""
from __future__ import annotations

import functools
import math
import re
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf.feedback import (RETRIES, Custom, FeedbackError, GoldJudge, Retrying, RewardModelJudge, call_prefer,
                           call_rank, describe, judge_rank, load, rank_by_preferences, resolve)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "my_feedback.py"
PROMPT = "reverse: cat dog sun"
COMPS = ["sun dog cat", "cat", "sun dog"]


def fails(*_):
    raise KeyError("no such rule")


@pytest.mark.parametrize("returned,problem", [
    ([0, 0, 1], "not a permutation"), ([0, 1, 3], "not a permutation"), ([2, 0], "2 indices for 3 completions"),
    ([0, 1, 2, 3], "4 indices for 3 completions"), ([0.0, 1.0, 2.0], "not all integers"),
    (["0", "1", "2"], "not all integers"), ([True, False, 2], "not all integers"), (None, "not a list"),
    ("012", "not a list"), (2, "not a list"),
])
def test_call_rank_rejects_a_malformed_ranking_naming_prompt_and_value(returned, problem):
    with pytest.raises(FeedbackError) as e:
        call_rank(lambda prompt, completions: returned, PROMPT, COMPS)
    msg = str(e.value)
    assert f"for prompt {PROMPT!r}" in msg and f"returned {returned!r}" in msg and problem in msg


def test_call_rank_names_a_labeler_that_raises_and_keeps_the_cause():
    with pytest.raises(FeedbackError, match=r"labeler .*fails raised on prompt 'reverse: cat dog sun': KeyError") as e:
        call_rank(fails, PROMPT, COMPS)
    assert isinstance(e.value.__cause__, KeyError)


def test_call_rank_accepts_any_sequence_of_integers():
    import numpy as np

    assert call_rank(lambda p, c: (2, 0, 1), PROMPT, COMPS) == [2, 0, 1]
    assert call_rank(lambda p, c: np.array([1, 2, 0]), PROMPT, COMPS) == [1, 2, 0]
    assert call_rank(GoldJudge(), "what is 2 plus 3? answer with just the number.", ["4.", "5.", "5"]) == [1, 2, 0]


@pytest.mark.parametrize("returned", [1.5, -0.1, "0.7", None, math.nan, True, [0.5]])
def test_call_prefer_rejects_values_outside_a_probability(returned):
    with pytest.raises(FeedbackError) as e:
        call_prefer(lambda prompt, a, b: returned, PROMPT, "a", "b")
    msg = str(e.value)
    assert f"returned {returned!r} for prompt {PROMPT!r}" in msg and "[0, 1]" in msg


def test_call_prefer_names_a_judge_that_raises_and_accepts_numbers():
    with pytest.raises(FeedbackError, match=r"judge .*fails raised on prompt 'reverse: cat dog sun': KeyError"):
        call_prefer(fails, PROMPT, "a", "b")
    assert call_prefer(lambda p, a, b: 1, PROMPT, "a", "b") == 1.0
    assert call_prefer(lambda p, a, b: 0.25, PROMPT, "a", "b") == 0.25


def test_long_prompts_are_shortened_in_messages():
    with pytest.raises(FeedbackError, match=r"prompt 'x{77}\.\.\.'"):
        call_prefer(lambda p, a, b: 2, "x" * 500, "a", "b")


def test_rank_by_preferences_golden():
    table = {("a", "b"): 0.2, ("a", "c"): 1.0, ("b", "c"): 0.5, ("a", "d"): 1.0, ("b", "d"): 1.0, ("c", "d"): 0.5}
    asked = []

    def prefer(prompt, x, y):
        asked.append((x, y))
        return table[x, y]

    # wins: a 0.2+1+1 = 2.2, b 0.8+0.5+1 = 2.3, c 0+0.5+0.5 = 1.0, d 0+0+0.5 = 0.5
    assert rank_by_preferences(prefer, PROMPT, ["a", "b", "c", "d"]) == [1, 0, 2, 3]
    assert sorted(asked) == sorted(table)  # every pair once, in the given order
    assert rank_by_preferences(lambda p, x, y: 0.5, PROMPT, ["a", "b", "c"]) == [0, 1, 2]  # ties keep order
    with pytest.raises(FeedbackError, match=r"labeler .*returned 1.5 for prompt"):  # named as the labeler it is
        call_rank(lambda p, x, y: 1.5, PROMPT, ["a", "b"])


def test_plain_functions_play_the_role_their_arity_says():
    def prefer_shorter(prompt, a, b):
        return 0.5 if len(a) == len(b) else float(len(a) < len(b))

    def rank_longer(prompt, completions):
        return sorted(range(len(completions)), key=lambda i: -len(completions[i]))

    assert call_rank(prefer_shorter, PROMPT, COMPS) == [1, 2, 0]  # a prefer-only labeler is ranked by pairs
    assert call_prefer(rank_longer, PROMPT, "ab", "abc") == 0.0  # a rank-only judge ranks [a, b]
    assert call_prefer(rank_longer, PROMPT, "ab", "ab") == 0.5
    assert judge_rank(prefer_shorter, PROMPT, COMPS) == [1, 2, 0]
    assert call_rank(functools.partial(rank_longer), PROMPT, COMPS) == [0, 2, 1]  # what _partial_: true gives


def test_custom_loads_functions_classes_and_files(tmp_path, monkeypatch):
    (tmp_path / "fb_unit_mod.py").write_text(
        "def rank(prompt, completions, reverse=False):\n"
        "    return sorted(range(len(completions)), key=lambda i: len(completions[i]), reverse=reverse)\n"
        "class Judge:\n    def __init__(self, p=0.5):\n        self.p = p\n"
        "    def prefer(self, prompt, a, b):\n        return self.p\n"
        "def bad(prompt, completions):\n    return [0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert Custom("fb_unit_mod.rank").rank(PROMPT, COMPS) == [1, 2, 0]
    assert Custom("fb_unit_mod.rank", {"reverse": True}).rank(PROMPT, COMPS) == [0, 2, 1]
    assert Custom(f"{tmp_path}/fb_unit_mod.py:Judge", {"p": 0.75}).prefer(PROMPT, "a", "b") == 0.75
    assert Custom(f"{tmp_path}/fb_unit_mod.py:Judge").rank(PROMPT, COMPS) == [0, 1, 2]  # ranked by preferences
    with pytest.raises(FeedbackError, match="has no 'nope'"):
        Custom("fb_unit_mod.nope")
    with pytest.raises(FeedbackError, match="no Python file"):
        resolve(f"{tmp_path}/missing.py:rank")
    with pytest.raises(FeedbackError, match="need a target"):
        Custom().rank(PROMPT, COMPS)
    with pytest.raises(FeedbackError, match=r"labeler fb_unit_mod\.bad returned \[0\] for prompt"):
        call_rank(Custom("fb_unit_mod.bad"), PROMPT, COMPS)  # the user's function is named, not the wrapper


def test_reward_model_judge_without_a_model_says_which_key_to_set():
    with pytest.raises(FeedbackError, match=r"judge\.reward_model"):
        call_prefer(RewardModelJudge(None), PROMPT, "a", "b")


def test_the_example_module_ranks_and_judges_sensibly():
    rank, prefer, rules = (resolve(f"{EXAMPLES}:{n}") for n in ("rank", "prefer", "Rules"))
    prompt = "reverse this list: owl bus garden."
    good, hedge, echo, empty = "garden bus owl.", "i think maybe garden bus owl", "reverse this list: owl bus", ""
    assert call_rank(rank, prompt, [empty, hedge, good, echo]) == [2, 1, 3, 0]
    assert call_prefer(prefer, prompt, good, hedge) == 1.0 and call_prefer(prefer, prompt, good, good) == 0.5
    assert call_rank(rules(max_words=2), prompt, [good, "bus owl."]) == [1, 0]


class Flaky:
    """A judge whose first ``fails`` calls raise, as an API that times out; then it prefers a."""

    def __init__(self, fails: int):
        self.fails, self.calls = fails, 0

    def prefer(self, prompt, a, b):
        self.calls += 1
        if self.calls <= self.fails:
            raise TimeoutError("slow API")
        return 1.0


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The retries' sleeps, recorded instead of slept."""
    out = []
    monkeypatch.setattr(time, "sleep", out.append)
    return out


def test_load_takes_the_retry_keys_for_itself_and_names_who_by_the_config_key():
    cfg = OmegaConf.create({"seed": 3, "judge": {"_target_": "rlhf.feedback.WorldLabelers", "pool": "held_out",
                                                 "seed": "${seed}", "retries": 2, "retry_wait": 0.5}})
    judge = load(cfg.judge)  # WorldLabelers would reject retries= as an argument
    assert (judge.who, judge.retries, judge.retry_wait) == ("judge", 2, 0.5)
    assert describe(judge) == "WorldLabelers(held_out)"  # provenance names what the config names
    labeler = load({"_target_": "rlhf.feedback.GoldJudge"}, who="labeler")
    assert (labeler.who, labeler.retries, describe(labeler)) == ("labeler", RETRIES, "GoldJudge()")
    with pytest.raises(FeedbackError, match=r"judge\.retries=-1"):
        load({"_target_": "rlhf.feedback.GoldJudge", "retries": -1}, who="judge")


def test_a_judge_that_raises_is_retried_with_doubling_waits(waits, caplog):
    judge = Retrying(Flaky(2), "judge", retries=3, retry_wait=0.5)
    assert call_prefer(judge, PROMPT, "a", "b") == 1.0
    assert waits == [0.5, 1.0] and judge.retried == 2 and judge.obj.calls == 3
    assert re.search(r"judge .*Flaky.* raised on prompt 'reverse: cat dog sun': TimeoutError\('slow API'\); "
                     r"retry 2 of 3 in 1 s", caplog.text)


def test_a_judge_that_keeps_failing_stops_named_as_the_judge_with_its_cause(waits, tmp_path):
    judge = Retrying(Flaky(10), "judge", retries=2, retry_wait=0)
    with pytest.raises(FeedbackError, match=r"^judge .*Flaky.* raised on prompt 'reverse: cat dog sun': "
                                            r"TimeoutError\('slow API'\) \(gave up after 2 retries\)$") as e:
        call_prefer(judge, PROMPT, "a", "b")
    assert isinstance(e.value.__cause__, TimeoutError) and judge.obj.calls == 3
    # a judge=custom that only ranks, asked for its best (bestofn) is named the judge, not a labeler
    (tmp_path / "fb_down.py").write_text("def rank(prompt, completions):\n    raise ConnectionError('down')\n")
    node = OmegaConf.create({"judge": {"_target_": "rlhf.feedback.Custom", "target": f"{tmp_path}/fb_down.py:rank",
                                       "retries": 0}}).judge
    with pytest.raises(FeedbackError, match=r"^judge fb_down\.rank raised on prompt .*ConnectionError\('down'\)$"):
        judge_rank(load(node), PROMPT, COMPS)
    assert waits == [0, 0]


def test_malformed_answers_are_bugs_and_not_retried(waits):
    calls = []
    with pytest.raises(FeedbackError, match="returned 1.5"):
        call_prefer(Retrying(lambda p, a, b: calls.append(p) or 1.5, "judge"), PROMPT, "a", "b")
    with pytest.raises(FeedbackError, match="not a permutation"):
        call_rank(Retrying(lambda p, c: [0, 0, 1], "labeler"), PROMPT, COMPS)
    with pytest.raises(FeedbackError, match=r"judge\.reward_model"):  # a missing setting does not pass either
        call_prefer(Retrying(RewardModelJudge(None), "judge"), PROMPT, "a", "b")
    assert len(calls) == 1 and waits == []


def test_a_prefer_only_labeler_retries_the_pair_that_failed_not_the_ranking(waits):
    asked = []

    def prefer_shorter(prompt, a, b):
        asked.append((a, b))
        if len(asked) == 2:
            raise ConnectionError("reset")
        return float(len(a) < len(b))

    labeler = Retrying(prefer_shorter, "labeler", retries=1, retry_wait=0)
    assert call_rank(labeler, PROMPT, COMPS) == [1, 2, 0]
    assert len(asked) == 4 and asked[1] == asked[2] and labeler.retried == 1  # 3 pairs, the second twice
