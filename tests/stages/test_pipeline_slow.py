"""The whole pipeline end to end on the tiny preset and a tiny world (slow: run with -m slow)."""
from __future__ import annotations

import json

import pytest

from test_pipeline import pipeline


@pytest.mark.slow
def test_whole_pipeline_on_the_tiny_preset(tmp_path):
    ppo = {"iterations": 3, "batch_size": 16, "minibatch_size": 8}
    extra = [f"+steps.{s}.stage.{k}={v}" for s in ("ppo", "ppo_ptx", "ppo_beta") for k, v in ppo.items()]
    results, _ = pipeline(tmp_path, "run_order=[pretrain,sft,collect,rm,select,bestofn,ppo,ppo_ptx,ppo_beta,eval,report]",
                          "+steps.eval.stage.max_prompts=10", "+steps.bestofn.stage.max_prompts=10",
                          "+steps.select.stage.max_prompts=10", *extra)
    assert set(results) == {"pretrain", "sft", "collect", "rm", "select", "bestofn", "ppo", "ppo_ptx", "ppo_beta", "eval"}
    report = json.loads((tmp_path / "p" / "report" / "report.json").read_text())
    assert list(report["methods"]) == ["base", "prompted", "sft", "ppo", "ppo_ptx", "ppo_beta"]
    assert report["best_of_n"]["verdict"] and set(report["ppo_curves"]) == {"ppo", "ppo_ptx", "ppo_beta"}
    assert (tmp_path / "p" / "report" / "summary.md").is_file()
