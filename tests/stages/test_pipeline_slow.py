"""The whole pipeline end to end on the tiny preset and a tiny world (slow: run with -m slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

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


@pytest.mark.slow
def test_paper_sizes_multirun_writes_figure_1(tmp_path):
    """`rlhf-pipeline experiment=paper_sizes` from the command line: one pipeline per size
    (two sizes here, tiny settings), then the Hydra callback judges every size against the
    largest size's SFT."""
    from test_pipeline import TINY_WORLD

    ppo = {"iterations": 3, "batch_size": 16, "minibatch_size": 8}
    cmd = [sys.executable, "-m", "rlhf.pipeline", "experiment=paper_sizes", "hydra.sweeper.params.model='tiny,small'",
           f"output_root={tmp_path}", "model.vocab_size=600", "trainer.enable_progress_bar=false", *TINY_WORLD,
           f"hydra.sweep.dir={tmp_path}/multirun", "++steps.pretrain.stage.epochs=1", "++steps.sft.stage.epochs=1",
           "++steps.collect.stage.num_samples=4", "++steps.rm.stage.epochs=1",
           *(f"++steps.{s}.stage.max_prompts=10" for s in ("eval", "bestofn", "select")),
           *(f"++steps.{s}.stage.{k}={v}" for s in ("ppo", "ppo_ptx", "ppo_beta") for k, v in ppo.items())]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    fig = json.loads((tmp_path / "paper_sizes" / "figure1" / "figure1.json").read_text())
    assert list(fig["sizes"]) == ["tiny", "small"] and fig["reference"] == "small/sft"
    assert fig["sizes"]["small"]["sft"][0] == 0.5  # the reference against itself: every pair ties
    assert {"base", "prompted", "sft", "ppo", "ppo_ptx"} <= set(fig["sizes"]["tiny"])
    assert (tmp_path / "paper_sizes" / "figure1" / "figure1.png").is_file()
    assert (tmp_path / "paper_sizes" / "small" / "report" / "summary.md").is_file()
