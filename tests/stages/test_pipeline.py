"""The pipeline on a tiny built-in world: pretrain -> SFT -> collect, skip-and-continue, eval."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlhf.data.formats import read_jsonl
from rlhf.feedback import FeedbackError
from rlhf.pipeline import run_pipeline
from rlhf.train import CONF_DIR

TINY_WORLD = ["data.world.n_pretrain=1500", "data.world.n_pretrain_val=100", "data.world.n_sft=300",
              "data.world.n_sft_val=40", "data.world.n_rm=60", "data.world.n_ppo=40", "data.world.n_val=30",
              "data.world.n_test=30", "data.world.n_calibration=50"]


def pipeline(tmp_path, *extra: str) -> tuple[dict, list[str]]:
    overrides = ["model=tiny", "model.vocab_size=600", f"output_root={tmp_path}", "run_name=p",
                 "trainer.enable_progress_bar=false", *TINY_WORLD, "+steps.pretrain.stage.batch_size=64",
                 "run_order=[pretrain,sft,collect]", "+steps.pretrain.stage.epochs=2", "+steps.sft.stage.epochs=2", "+steps.collect.stage.num_samples=4",
                 *extra]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return run_pipeline(compose("pipeline", overrides=overrides), overrides), overrides


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe")
    results, _ = pipeline(out)
    return out, results


def test_collect_writes_ranked_comparisons_from_the_sft_policy(tiny_run):
    out, results = tiny_run
    assert set(results) == {"pretrain", "sft", "collect"}
    train = read_jsonl(out / "p" / "collect" / "comparisons_train.jsonl", "comparison")
    kept, dropped = results["collect"]["train/comparisons"], results["collect"]["train/dropped_fewer_than_2_distinct"]
    assert len(train) == kept and kept + dropped == 60 and kept > 30
    assert all(2 <= len(r["completions"]) <= 4 and len(set(r["completions"])) == len(r["completions"]) for r in train)
    info = json.loads((out / "p" / "collect" / "final" / "rlhf.json").read_text())
    assert info["init"].endswith("p/sft/final") and info["labeler"] == "WorldLabelers(training)"
    for step in ("sft", "collect"):  # a copied final/ describes itself
        recorded = OmegaConf.load(out / "p" / step / "final" / "config.yaml")
        assert recorded.stage.name == step and "steps" not in recorded and "run_order" not in recorded


def test_finished_steps_are_skipped_and_a_stopped_pipeline_continues(tiny_run):
    out, first = tiny_run
    (out / "p" / "collect" / "final" / "rlhf.json").unlink()  # as if stopped during collection
    stamp = (out / "p" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns
    again, _ = pipeline(out)
    assert again["sft"] == pytest.approx(first["sft"])  # read back, not retrained
    assert (out / "p" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    assert (out / "p" / "collect" / "final" / "rlhf.json").is_file()  # the missing step ran


def test_a_labeler_returning_garbage_stops_collection_naming_the_prompt(tiny_run, tmp_path, monkeypatch):
    out, _ = tiny_run
    shutil.copytree(out / "p", tmp_path / "p", ignore=shutil.ignore_patterns("collect"))
    (tmp_path / "my_labeler.py").write_text("def rank(prompt, completions):\n    return [0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FeedbackError, match=r"returned \[0, 0.*for prompt '.+'.*permutation"):
        pipeline(tmp_path, "~labeler", "+labeler._target_=my_labeler.rank", "+labeler._partial_=true")


def test_eval_and_report_hold_every_figure(tiny_run):
    from rlhf.eval.report import FIGURES, build_report
    from rlhf.train import train

    from rlhf.handoff import read_provenance
    from rlhf.models.reward import load_reward_model, set_normalization

    out, _ = tiny_run
    run = out / "p"
    rm = load_reward_model(str(run / "sft" / "final"), fresh_head=True)  # an untrained score head: any RM scores
    set_normalization(rm, 1.0, 0.0)
    rm.save_pretrained(out / "rm")
    shutil.copy(run / "sft" / "final" / "tokenizer.json", out / "rm")
    shutil.copy(run / "sft" / "final" / "tokenizer_config.json", out / "rm")
    overrides = ["model=tiny", f"output_root={out}", "run_name=p", *TINY_WORLD, "stage=eval",
                 f"stage.models.base={run}/pretrain/final", f"stage.models.sft={run}/sft/final",
                 f"stage.models.ppo={run}/sft/epochs/epoch_0", "stage.max_prompts=10", "stage.max_pretrain_texts=20",
                 f"stage.reward_model={out / 'rm'}", "stage.best_of_n=3"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        metrics, _ = train(compose("train", overrides=overrides))
    for method in ("base", "prompted", "sft", "best_of_n", "ppo"):
        for fig in ("win_rate", "gold", "gold_win_rate", "rm", "kl_to_ref", "pretrain_val_loss", "alignment_tax"):
            assert f"{method}/{fig}" in metrics and f"{method}/{fig}_lo" in metrics, (method, fig)
    assert metrics["sft/win_rate"] == 0.5 and metrics["sft/kl_to_ref"] == 0.0  # against itself
    assert 0.0 <= metrics["base/win_rate_lo"] <= metrics["base/win_rate"] <= metrics["base/win_rate_hi"] <= 1.0
    assert metrics["best_of_n/kl_to_ref"] == pytest.approx(math.log(3) - 2 / 3)
    assert metrics["best_of_n/rm"] > metrics["sft/rm"]  # the RM's own pick scores higher by it
    info = read_provenance(run / "eval" / "final")
    assert info["best_of_n"] == 3 and set(info["families"]) == {"base", "prompted", "sft", "best_of_n", "ppo"}
    for method, fams in info["families"].items():  # every sample counted in exactly one family
        assert sum(f["n"] for f in fams.values()) == 10 * 2, method
        assert sum(f["gold"] * f["n"] for f in fams.values()) / 20 == pytest.approx(metrics[f"{method}/gold"])
    report_dir = build_report(run)
    report = json.loads((report_dir / "report.json").read_text())
    assert list(report["methods"]) == ["base", "prompted", "sft", "best_of_n", "ppo"]
    assert report["methods"]["ppo"]["alignment_tax"][0] == pytest.approx(metrics["ppo/alignment_tax"])
    for name in FIGURES:
        assert (report_dir / name).stat().st_size > 1000
    summary = (report_dir / "summary.md").read_text()
    assert "| prompted |" in summary and "## Examples" in summary and "## Gold score by task family" in summary
    assert "| best_of_n |" in summary and "best of 3 samples by the RM" in summary


def test_multirun_jobs_run_in_their_own_dirs(tmp_path):
    """`rlhf-pipeline -m seed=0,1`: two runs, neither skipping the other's finished steps."""
    cmd = [sys.executable, "-m", "rlhf.pipeline", "-m", "seed=0,1", "run_order=[pretrain]", "debug=fast",
           "model=tiny", "model.vocab_size=600", *TINY_WORLD, f"output_root={tmp_path}",
           f"hydra.sweep.dir={tmp_path}/sweep", "objective=pretrain/val/loss"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr[-3000:]
    for job in ("0", "1"):
        info = json.loads((tmp_path / "sweep" / job / "pretrain" / "final" / "rlhf.json").read_text())
        assert info["seed"] == int(job)
    assert "has no metric" not in done.stderr
