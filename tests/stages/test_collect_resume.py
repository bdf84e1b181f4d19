"""Collection keeps every ranking: a failing labeler is retried, a stopped or killed collection
resumes asking only for what is missing, and the result equals an uninterrupted run's."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from conftest import WORDS, make_config
from rlhf.data.formats import write_jsonl
from rlhf.feedback import FeedbackError
from rlhf.stages.collect import partial_state
from rlhf.train import train

# A deterministic labeler (fewest words first) that logs each call to `log`, and raises on the
# calls FLAKY_FAIL_ON names or from call FLAKY_FAIL_FROM on: the environment, not the config,
# says when it fails, so the rerun is the same command.
LABELER = '''
import os

class Flaky:
    def __init__(self, log):
        self.log, self.calls = log, 0

    def rank(self, prompt, completions):
        self.calls += 1
        with open(self.log, "a") as f:
            f.write(prompt + "\\n")
        fail_on = {int(c) for c in os.environ.get("FLAKY_FAIL_ON", "").split(",") if c}
        fail_from = int(os.environ.get("FLAKY_FAIL_FROM", "0")) or None
        if self.calls in fail_on or fail_from and self.calls >= fail_from:
            raise TimeoutError(f"call {self.calls}")
        return sorted(range(len(completions)), key=lambda i: (len(completions[i].split()), i))
'''


@pytest.fixture(scope="module")
def setup(toy_data, tmp_path_factory):
    """A function run_name -> (the collect config's overrides, the labeler's call log)."""
    root, rng = tmp_path_factory.mktemp("resume"), random.Random(3)
    (root / "flaky.py").write_text(LABELER)
    prompts = {k: write_jsonl(root / f"{k}.jsonl", [{"prompt": "reverse: " + " ".join(rng.sample(WORDS, 3))}
                                                   for _ in range(n)])
               for k, n in (("prompts_rm", 90), ("prompts_val", 6))}  # > 60 kept: a failure on call 60 is in train
    ov = ["data=files", *(f"data.files.{k}={v}" for k, v in {**toy_data, **prompts}.items()), f"output_root={root}",
          "model.vocab_size=300", "trainer.enable_progress_bar=false", "data.max_response_tokens=8"]
    train(make_config([*ov, "run_name=sft", "stage=sft", "debug=fast", "stage.batch_size=16"]))

    def collect(run: str) -> tuple[list[str], Path]:
        log = root / f"{run}.calls"
        return [*ov, f"run_name={run}", "stage=collect", f"init={root}/sft/sft/final", "stage.num_samples=6",
                "labeler=custom", f"labeler.target={root}/flaky.py:Flaky", f"+labeler.args.log={log}",
                "labeler.retry_wait=0"], log
    return collect


def calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.is_file() else 0


@pytest.fixture(scope="module")
def reference(setup):
    """An uninterrupted run: (metrics, comparisons_train.jsonl's text, its number of labeler calls)."""
    ov, log = setup("ref")
    metrics, _ = train(make_config(ov))
    sdir = log.parent / "ref" / "collect"
    assert metrics["train/comparisons"] > 60 and calls(log) == metrics["train/comparisons"] + metrics["val/comparisons"]
    assert partial_state(sdir) == []  # a finished collection keeps only its comparisons
    return metrics, (sdir / "comparisons_train.jsonl").read_text(), calls(log)


def test_a_labeler_that_fails_once_is_retried_and_changes_nothing(setup, reference, monkeypatch, caplog):
    ov, log = setup("once")
    monkeypatch.setenv("FLAKY_FAIL_ON", "60")
    with caplog.at_level(logging.INFO):
        metrics, _ = train(make_config(ov))
    assert metrics == reference[0] and calls(log) == reference[2] + 1
    assert (log.parent / "once" / "collect" / "comparisons_train.jsonl").read_text() == reference[1]
    assert "labeler " in caplog.text and "raised on prompt" in caplog.text and "retry 1 of 5" in caplog.text
    done = metrics["train/comparisons"]
    assert f"collect train: labelled {done}/{done} prompts (" in caplog.text and "/s), 1 retries" in caplog.text


def test_a_stopped_collection_keeps_its_rankings_and_a_rerun_asks_only_for_the_rest(setup, reference, monkeypatch):
    ov, log = setup("stop")
    sdir = log.parent / "stop" / "collect"
    monkeypatch.setenv("FLAKY_FAIL_FROM", "30")
    train_k = reference[0]["train/comparisons"]
    with pytest.raises(FeedbackError, match=rf"labeler .*Flaky.* raised on prompt .*TimeoutError.*gave up after 5 "
                                            rf"retries\)\ncollect train: 29 of {train_k} rankings are kept in "):
        train(make_config(ov))
    assert calls(log) == 29 + 6  # 29 rankings, then the first try and 5 retries of the 30th
    partial = sdir / "comparisons_train.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 29 and not (sdir / "comparisons_train.jsonl").exists()
    assert partial_state(sdir) == [partial, sdir / "samples_train.jsonl", sdir / "samples_val.jsonl"]

    monkeypatch.delenv("FLAKY_FAIL_FROM")  # the labeler works again: the same command continues
    log.unlink()
    metrics, _ = train(make_config(ov))
    assert calls(log) == reference[2] - 29
    assert metrics == reference[0] and (sdir / "comparisons_train.jsonl").read_text() == reference[1]
    assert partial_state(sdir) == []


def test_a_line_cut_short_by_a_kill_is_dropped_and_asked_again(setup, reference, monkeypatch):
    ov, log = setup("killed")
    sdir = log.parent / "killed" / "collect"
    monkeypatch.setenv("FLAKY_FAIL_FROM", "11")
    with pytest.raises(FeedbackError, match="10 of"):
        train(make_config(ov))
    partial = sdir / "comparisons_train.partial.jsonl"
    text = partial.read_text()
    partial.write_text(text[:-20])  # the 10th record half written when the process was killed

    monkeypatch.delenv("FLAKY_FAIL_FROM")
    log.unlink()
    metrics, _ = train(make_config(ov))
    assert calls(log) == reference[2] - 9  # the cut one is asked again
    assert metrics == reference[0] and (sdir / "comparisons_train.jsonl").read_text() == reference[1]


def test_resume_false_starts_over(setup, reference, monkeypatch):
    ov, log = setup("fresh")
    monkeypatch.setenv("FLAKY_FAIL_FROM", "5")
    with pytest.raises(FeedbackError, match="4 of"):
        train(make_config([*ov, "labeler.retries=0"]))
    sdir = log.parent / "fresh" / "collect"
    (sdir / "samples_val.jsonl").write_text('{"prompt": "stale", "completions": ["a", "b"]}\n')  # would not match

    monkeypatch.delenv("FLAKY_FAIL_FROM")
    log.unlink()
    metrics, _ = train(make_config([*ov, "resume=false"]))
    assert calls(log) == reference[2] and metrics == reference[0]
    assert (sdir / "comparisons_train.jsonl").read_text() == reference[1]
