"""Pretrain and SFT end to end through the Hydra config on a tiny model on CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import make_config
from rlhf.algos.lm_loss import IGNORE
from rlhf.handoff import metrics_rows, read_provenance
from rlhf.train import train


class Snapshot(pl.Callback):
    """Trainable parameters at the start of fit, and the global step fit started at."""

    def on_train_start(self, trainer, module):
        self.start_step = trainer.global_step
        self.before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def unchanged(module, snap: Snapshot) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad and torch.equal(p, snap.before[n])]


@pytest.fixture(scope="module")
def pretrained(toy_data, tmp_path_factory):
    """A tiny base model pretrained on the toy corpus (shared by the SFT tests)."""
    out = tmp_path_factory.mktemp("pt")
    ov = ["data=files", *(f"data.files.{k}={v}" for k, v in toy_data.items()), f"output_root={out}",
          "run_name=t", "model.vocab_size=300", "trainer.enable_progress_bar=false",
          "stage=pretrain", "stage.epochs=3", "stage.batch_size=16"]
    snap = Snapshot()
    _, objs = train(make_config(ov), callbacks=[snap])
    assert unchanged(objs["module"], snap) == []
    return out / "t" / "pretrain" / "final"


def test_sft_changes_every_parameter_and_lowers_val_loss(pretrained, toy_overrides):
    cfg = make_config([*toy_overrides, "stage=sft", f"init={pretrained}", "stage.epochs=3"])
    snap = Snapshot()
    metrics, objs = train(cfg, callbacks=[snap])
    assert unchanged(objs["module"], snap) == []
    # validation loss of the pretrained init vs the SFT result, same data and code
    before = objs["trainer"].validate(objs["module"].__class__(
        AutoModelForCausalLM.from_pretrained(pretrained), cfg.stage.optim), objs["datamodule"], verbose=False)
    assert metrics["val/loss"] < 0.8 * before[0]["val/loss"], (metrics, before)
    sdir = objs["trainer"].default_root_dir
    assert sorted(os.listdir(f"{sdir}/epochs")) == ["epoch_0", "epoch_1", "epoch_2"]  # one per epoch
    rows = metrics_rows(Path(sdir))
    assert any(r.get("val/loss") for r in rows)


def test_final_loads_with_plain_transformers_and_generates(pretrained, toy_overrides, tmp_path):
    train(make_config([*toy_overrides, "stage=sft", f"init={pretrained}", "stage.epochs=2", "run_name=gen"]))
    final = tmp_path / "gen" / "sft" / "final"
    tok, model = AutoTokenizer.from_pretrained(final), AutoModelForCausalLM.from_pretrained(final)
    ids = tok("reverse: cat dog sun\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    info = read_provenance(final)
    assert info["stage"] == "sft" and info["init"] == str(pretrained) and "val/loss" in info["metrics"]


def test_finished_stage_is_skipped_unless_forced(pretrained, toy_overrides):
    base = [*toy_overrides, "stage=sft", f"init={pretrained}", "debug=fast", "run_name=skip"]
    first, _ = train(make_config(base))
    again, objs = train(make_config(base))
    assert objs == {} and again == pytest.approx(first)
    _, objs = train(make_config([*base, "force=true"]))
    assert "trainer" in objs


def test_cli_runs_a_stage_and_prints_config(toy_overrides, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "rlhf.train", *toy_overrides, "stage=pretrain", "debug=fast"]
    printed = subprocess.run([*cmd, "--cfg", "job"], capture_output=True, text=True, env=env, check=True)
    assert "name: pretrain" in printed.stdout
    subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert (tmp_path / "t" / "pretrain" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "t" / "pretrain" / ".hydra" / "config.yaml").is_file()


def test_wandb_logger_works_offline(pretrained, toy_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(make_config([*toy_overrides, "stage=sft", f"init={pretrained}", "debug=fast", "logger=wandb",
                       "run_name=wb"]))
    assert list((tmp_path / "wb" / "sft" / "wandb").glob("offline-run-*"))
    assert list((tmp_path / "wb" / "sft" / "logs").glob("version_*/metrics.csv"))


def test_sft_mixes_in_pretraining_texts_with_full_loss(pretrained, toy_overrides):
    """stage.pretrain_mix=0.2: a fifth of the training examples are pretraining texts (the
    paper's PPO init); validation stays demonstrations only."""
    cfg = make_config([*toy_overrides, "stage=sft", f"init={pretrained}", "stage.epochs=1",
                       "stage.pretrain_mix=0.2", "stage.export_every_epoch=false"])
    _, objs = train(cfg)
    data = objs["datamodule"].data
    texts = [r for r in data["train"] if IGNORE not in r["labels"]]  # demonstrations mask the prompt
    assert len(data["train"]) == 500 and len(texts) == 100 and len(data["val"]) == 80
    assert all(r["labels"] == r["input_ids"] for r in texts)
    with pytest.raises(ValueError, match="fraction 1.0 must be in"):
        train(make_config([*toy_overrides, "stage=sft", f"init={pretrained}", "stage.pretrain_mix=1.0", "force=true"]))
