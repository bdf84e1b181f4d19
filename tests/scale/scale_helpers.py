"""Shared by the scale tests (imported, not a conftest.py: a second conftest module would shadow
tests/conftest.py for `from conftest import ...`): tiny SFT and RM directories, CLI runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_sft_and_rm

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_overrides(toy_data) -> list[str]:
    return ["data=files", *(f"data.files.{k}={v}" for k, v in toy_data.items()), "model.vocab_size=300",
            "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="session")
def tiny_models(toy_data, data_overrides, tmp_path_factory) -> dict[str, Path]:
    """A tiny SFT final/ (a few steps from scratch), an RM dir built from it, a PPO prompt file."""
    return tiny_sft_and_rm(toy_data, tmp_path_factory.mktemp("scale_models"),
                           [*data_overrides, "stage.export_every_epoch=false"])


@pytest.fixture(scope="session")
def ppo_overrides(tiny_models, data_overrides) -> list[str]:
    """A tiny PPO-ptx run: 8 episodes per iteration in 2 minibatches, responses of <= 8 tokens."""
    return [*data_overrides, "stage=ppo", f"init={tiny_models['sft']}", f"stage.reward_model={tiny_models['rm']}",
            f"data.files.prompts_ppo={tiny_models['prompts']}", "stage.batch_size=8", "stage.minibatch_size=4",
            "stage.max_new_tokens=8", "stage.optim.warmup_iterations=0", "stage.log_samples_every=1",
            "ptx=paper", "ptx.examples_per_episode=1"]


def cli_env(**extra) -> dict:
    """One intra-op thread per process: 2 processes on 2 cores (torch would start 2 threads each)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **extra}


def run_cli(args: list[str], timeout: float = 240, env: dict | None = None, module: str | None = "rlhf.train") -> str:
    """``python -m <module> <args>`` (``python <args>`` for module=None); all its processes are
    killed if it hangs; returns stdout + stderr."""
    cmd = [sys.executable, *(["-m", module] if module else []), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=env or cli_env(), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # DDP / FSDP ranks are in the same session
        out, _ = proc.communicate()
        raise AssertionError(f"hung for {timeout} s: {' '.join(cmd)}\n{out[-5000:]}") from None
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{out[-6000:]}"
    return out
