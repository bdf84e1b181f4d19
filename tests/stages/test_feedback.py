"""User labelers and judges through the stages, on user prompt files: collect -> RM, eval, best-of-n, report.

A user module written into a temp directory (not part of the package) ranks the tiny SFT
policy's samples and judges its evaluation; the best-of-n check lands in the report.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from conftest import WORDS, make_config
from rlhf.data.formats import read_jsonl, write_jsonl
from rlhf.feedback import FeedbackError
from rlhf.train import train

USER_MODULE = '''
def n_words(text):
    return len(text.split())

def rank(prompt, completions):          # a labeler: fewest words first
    return sorted(range(len(completions)), key=lambda i: n_words(completions[i]))

def prefer(prompt, a, b):               # a judge: the shorter answer wins
    return 0.5 if n_words(a) == n_words(b) else float(n_words(a) < n_words(b))

def coin(prompt, a, b):                 # a judge that cannot tell anything apart
    return 0.5

def too_sure(prompt, a, b):
    return 1.5

class FirstCallTimesOut:                # as prefer, but its first call raises, as an API's may
    def __init__(self):
        self.calls = 0

    def prefer(self, prompt, a, b):
        self.calls += 1
        if self.calls == 1:
            raise TimeoutError("slow API")
        return prefer(prompt, a, b)
'''


def user_prompts(rng: random.Random, n: int) -> list[dict]:
    return [{"prompt": "please reverse: " + " ".join(rng.sample(WORDS, 3))} for _ in range(n)]


@pytest.fixture(scope="module")
def setup(toy_data, tmp_path_factory):
    """(overrides on user files, the user module's directory, the tiny SFT final/)."""
    root, rng = tmp_path_factory.mktemp("feedback"), random.Random(7)
    user = root / "user"
    user.mkdir()
    (user / "fb_stage_user.py").write_text(USER_MODULE)
    prompts = {k: write_jsonl(root / f"{k}.jsonl", user_prompts(rng, n))
               for k, n in (("prompts_rm", 16), ("prompts_val", 6), ("prompts_test", 4))}
    ov = ["data=files", *(f"data.files.{k}={v}" for k, v in {**toy_data, **prompts}.items()),
          f"output_root={root}", "run_name=t", "model.vocab_size=300", "trainer.enable_progress_bar=false",
          "data.max_response_tokens=8"]
    train(make_config([*ov, "stage=sft", "debug=fast", "stage.batch_size=16"]))
    return ov, user, f"{root}/t/sft/final"


@pytest.fixture(scope="module")
def collected(setup):
    ov, user, sft = setup
    with pytest.MonkeyPatch.context() as mp:  # the user's module is importable, as with PYTHONPATH=...
        mp.syspath_prepend(str(user))
        metrics, _ = train(make_config([*ov, "stage=collect", f"init={sft}", "stage.num_samples=4", "~labeler",
                                        "+labeler._target_=fb_stage_user.rank", "+labeler._partial_=true"]))
    return metrics


@pytest.fixture(scope="module")
def rm(setup, collected):
    ov, _, sft = setup
    run = sft.removesuffix("/sft/final")
    train(make_config([*ov, "stage=rm", f"init={sft}", "debug=fast", "stage.batch_size=16", "stage.optim.lr=1e-3",
                       f"data.files.comparisons_train={run}/collect/comparisons_train.jsonl",
                       f"data.files.comparisons_val={run}/collect/comparisons_val.jsonl"]))
    return f"{run}/rm/final"


def judge(setup, name: str) -> list[str]:
    return ["judge=custom", f"judge.target={setup[1]}/fb_stage_user.py:{name}"]


def test_a_user_labeler_ranks_the_policys_samples_on_user_prompts(setup, collected, rm):
    ov, _, sft = setup
    run = sft.removesuffix("/sft/final")
    train_recs = read_jsonl(f"{run}/collect/comparisons_train.jsonl", "comparison")
    assert len(train_recs) == collected["train/comparisons"] > 8
    assert collected["train/comparisons"] + collected["train/dropped_fewer_than_2_distinct"] == 16
    for rec in train_recs:  # the user's rule, fewest words first, decided every ranking
        assert rec["prompt"].startswith("please reverse: ")
        lengths = [len(rec["completions"][i].split()) for i in rec["ranking"]]
        assert lengths == sorted(lengths)
    info = json.loads(open(f"{run}/collect/final/rlhf.json").read())
    assert info["labeler"] == "fb_stage_user.rank"  # collect records which labeler ranked
    rm_info = json.loads(open(f"{rm}/rlhf.json").read())  # ... and the RM trained on them
    assert rm_info["data_counts"]["train"]["kept"] == len(train_recs)


def test_a_user_judge_decides_the_evaluation(setup, rm):
    ov, _, sft = setup
    run = sft.removesuffix("/sft/final")
    metrics, _ = train(make_config([*ov, *judge(setup, "prefer"), "stage=eval", "stage.prompted=false",
                                    f"stage.models.sft={sft}", f"stage.models.ppo={run}/sft/epochs/epoch_0",
                                    f"stage.reward_model={rm}", "stage.max_prompts=4", "stage.max_pretrain_texts=8"]))
    rows = read_jsonl(f"{run}/eval/samples.jsonl", "prompt")
    lengths = [(len(r["ppo"].split()), len(r["sft"].split())) for r in rows]
    shorter = [0.5 if a == b else float(a < b) for a, b in lengths]  # what the user's rule says
    assert len(rows) == 8 and metrics["ppo/win_rate"] == pytest.approx(sum(shorter) / len(shorter))
    assert json.loads(open(f"{run}/eval/final/rlhf.json").read())["judge"].endswith("fb_stage_user.py:prefer)")


def test_a_judge_out_of_range_stops_the_stage_naming_prompt_and_value(setup):
    ov, _, sft = setup
    msg = r"judge fb_stage_user\.too_sure returned 1\.5 for prompt 'please reverse: \w+ \w+ \w+'; expected"
    with pytest.raises(FeedbackError, match=msg):
        train(make_config([*ov, *judge(setup, "too_sure"), "stage=eval", "run_name=bad", "stage.prompted=false",
                           f"stage.models.sft={sft}", "stage.max_prompts=1", "stage.max_pretrain_texts=2"]))


def test_best_of_n_figures_reach_the_report(setup, rm):
    from rlhf.eval.report import build_report

    ov, _, sft = setup
    metrics, _ = train(make_config([*ov, *judge(setup, "prefer"), "stage=bestofn", f"init={sft}",
                                    f"stage.reward_model={rm}", "stage.n=4", "stage.max_prompts=6"]))
    assert metrics["judge_best/win_rate_vs_one"] >= 0.5  # the shortest of 4 never loses to one sample
    run = sft.removesuffix("/sft/final")
    out = build_report(run)
    bon = json.loads((out / "report.json").read_text())["best_of_n"]
    assert (bon["n"], bon["n_prompts"], bon["rm_helps"]) == (4, 6, bool(metrics["rm_helps"]))
    for pick in ("one_sample", "rm_best", "judge_best"):
        assert bon["picks"][pick]["win_rate_vs_one"][0] == pytest.approx(metrics[f"{pick}/win_rate_vs_one"])
    summary = (out / "summary.md").read_text()
    assert "## Best-of-n check" in summary and bon["verdict"] in summary
    assert f"| RM's best of 4 | {metrics['rm_best/win_rate_vs_one']:.3f}" in summary
    assert f"| judge's best of 4 | {metrics['judge_best/win_rate_vs_one']:.3f}" in summary


def test_when_the_rm_does_not_help_log_and_report_say_so(setup, rm, caplog):
    from rlhf.eval.report import build_report

    ov, _, sft = setup
    with caplog.at_level(logging.WARNING, logger="rlhf.stages.bestofn"):
        metrics, _ = train(make_config([*ov, *judge(setup, "coin"), "stage=bestofn", "run_name=warn", f"init={sft}",
                                        f"stage.reward_model={rm}", "stage.n=4", "stage.max_prompts=6"]))
    plain = "WARNING: the RM's best of 4 is no better than one sample (win rate 0.500, 95% CI includes 0.5)"
    assert metrics["rm_helps"] == 0.0 and plain in caplog.text
    run = Path(sft.removesuffix("/t/sft/final")) / "warn"
    synthetic_eval = {"metrics": {"sft/win_rate": 0.5, "sft/win_rate_lo": 0.5, "sft/win_rate_hi": 0.5,
                                  "sft/alignment_tax": 0.0}, "judge": "coin", "n_prompts": 6, "samples_per_prompt": 1}
    (run / "eval" / "final").mkdir(parents=True)
    (run / "eval" / "final" / "rlhf.json").write_text(json.dumps(synthetic_eval))
    report_dir = build_report(run)
    assert f"**{plain}" in (report_dir / "summary.md").read_text()  # in bold, under "Best-of-n check"
    assert json.loads((report_dir / "report.json").read_text())["best_of_n"]["verdict"].startswith(plain)


def test_a_judge_call_that_raises_is_retried_and_changes_nothing(setup, rm, caplog):
    ov, _, sft = setup
    runs = {name: train(make_config([*ov, *judge(setup, name), "judge.retry_wait=0", "stage=bestofn",
                                     f"run_name={name}", f"init={sft}", f"stage.reward_model={rm}", "stage.n=4",
                                     "stage.max_prompts=6"]))[0]
            for name in ("prefer", "FirstCallTimesOut")}
    assert runs["FirstCallTimesOut"] == runs["prefer"]
    assert "judge <fb_stage_user.FirstCallTimesOut object at " in caplog.text  # the judge, named by its key
    assert "TimeoutError('slow API'); retry 1 of 5 in 0 s" in caplog.text


def test_the_trained_rm_as_judge(setup, rm):
    ov, _, sft = setup
    metrics, _ = train(make_config([*ov, "judge=rm", "stage=bestofn", "run_name=rmjudge", f"init={sft}",
                                    f"stage.reward_model={rm}", "stage.n=4", "stage.max_prompts=6"]))
    info = json.loads(open(sft.removesuffix("/t/sft/final") + "/rmjudge/bestofn/final/rlhf.json").read())
    assert info["judge"] == f"RewardModelJudge({rm})"  # judge.reward_model followed stage.reward_model
    assert metrics["judge_best/win_rate_vs_one"] == pytest.approx(metrics["rm_best/win_rate_vs_one"])
    assert metrics["rm_best/win_rate_vs_one"] >= 0.5  # sigmoid(r_best - r_one) >= 1/2 on every prompt


def test_report_shows_gold_beside_the_judge_when_the_world_has_it(tmp_path):
    from rlhf.eval.report import build_report
    from rlhf.stages.bestofn import verdict_text

    figs = {"one_sample": (0.5, 0.53), "rm_best": (0.62, 0.58), "judge_best": (0.7, 0.66)}
    metrics = {f"{p}/{k}{s}": v + d for p, (w, g) in figs.items() for k, v in (("win_rate_vs_one", w), ("gold", g))
               for s, d in (("", 0.0), ("_lo", -0.05), ("_hi", 0.05))}
    metrics["rm_helps"] = 1.0
    verdict = verdict_text(metrics, 8)
    assert verdict.startswith("RM best-of-8 beats one sample (win rate 0.620)")
    assert "Gold score: one sample 0.530, RM's best 0.580, judge's best 0.660." in verdict
    for stage, info in (("bestofn", {"metrics": metrics, "verdict": verdict, "n": 8, "n_prompts": 200,
                                     "judge": "WorldLabelers(held_out)", "init": "sft/final"}),
                        ("eval", {"metrics": {"sft/win_rate": 0.5}, "judge": "j", "n_prompts": 1})):
        (tmp_path / stage / "final").mkdir(parents=True)
        (tmp_path / stage / "final" / "rlhf.json").write_text(json.dumps(info))
    out = build_report(tmp_path)
    summary = (out / "summary.md").read_text()
    assert "| pick | win rate vs one | gold |" in summary
    assert "| RM's best of 8 | 0.620 [0.570, 0.670] | 0.580 [0.530, 0.630] |" in summary
    assert f"\n{verdict}\n" in summary and "**" not in summary  # no warning in bold when the RM helps
    bon = json.loads((out / "report.json").read_text())["best_of_n"]
    assert bon["picks"]["judge_best"]["gold"] == pytest.approx([0.66, 0.61, 0.71]) and bon["rm_helps"] is True
