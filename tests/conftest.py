"""Shared fixtures: compose the real Hydra config, and small JSONL data written per test."""
from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

from rlhf.data.formats import read_jsonl, write_jsonl
from rlhf.models.reward import load_reward_model, set_normalization
from rlhf.train import CONF_DIR, train

torch.set_num_threads(2)
WORDS = "cat dog sun red blue tree fish bird milk rain star moon apple lamp door king".split()


class Crash(pl.Callback):
    """Raises before step ``at``: a run that died after its checkpoint of step ``at`` (saved every step)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("crash")


def make_config(overrides: list[str]):
    """The config `rlhf-train <overrides>` would run, composed through Hydra."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


def _demo(rng: random.Random) -> dict:
    words = rng.sample(WORDS, 3)
    return {"prompt": "reverse: " + " ".join(words), "completion": " ".join(reversed(words))}


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    """A small learnable corpus in the user formats: reverse three words."""
    d, rng = tmp_path_factory.mktemp("toy"), random.Random(0)
    demos = [_demo(rng) for _ in range(480)]
    texts = [{"text": f"{x['prompt']} gives {x['completion']}."} for x in demos]
    return {
        "pretrain_train": write_jsonl(d / "pt_train.jsonl", texts[:400]),
        "pretrain_val": write_jsonl(d / "pt_val.jsonl", texts[400:]),
        "sft_train": write_jsonl(d / "sft_train.jsonl", demos[:400]),
        "sft_val": write_jsonl(d / "sft_val.jsonl", demos[400:]),
    }


@pytest.fixture
def toy_overrides(toy_data, tmp_path) -> list[str]:
    """Overrides for a tiny, fast run on toy_data under tmp_path."""
    return ["data=files", *(f"data.files.{k}={v}" for k, v in toy_data.items()),
            f"output_root={tmp_path}", "run_name=t", "model.vocab_size=300",
            "trainer.enable_progress_bar=false", "stage.batch_size=16"]


def tiny_sft_and_rm(toy_data: dict[str, Path], out: Path, overrides: list[str]) -> dict[str, Path]:
    """A tiny SFT final/ (``stage=sft debug=fast`` with ``overrides``), an RM dir built from it
    (gain 1, bias 0.5) and a PPO prompt file: what the PPO and scale tests start from."""
    train(make_config([*overrides, f"output_root={out}", "run_name=t", "stage=sft", "debug=fast",
                       "stage.batch_size=16"]))
    sft = out / "t" / "sft" / "final"
    rm = load_reward_model(str(sft), fresh_head=True)
    set_normalization(rm, 1.0, 0.5)
    rm.save_pretrained(out / "rm")
    AutoTokenizer.from_pretrained(sft).save_pretrained(out / "rm")
    prompts = [{"prompt": r["prompt"]} for r in read_jsonl(toy_data["sft_train"], "demonstration")[:64]]
    return {"sft": sft, "rm": out / "rm", "prompts": write_jsonl(out / "prompts.jsonl", prompts)}
