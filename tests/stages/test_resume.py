"""Nothing trained is lost, nothing broken is called finished: kills, signals, full disks,
changed configs and diverged runs, each on the real stages through the Hydra config."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import Crash, make_config, tiny_sft_and_rm
from rlhf.checkpoint import CheckpointError, NonFiniteError
from rlhf.data.formats import write_jsonl
from rlhf.handoff import metrics_rows
from rlhf.schema import ConfigError
from rlhf.train import train
from test_rm import graded

REPO = Path(__file__).resolve().parents[2]
# 10 batches an epoch, 3 epochs, a checkpoint after every step: a kill lands mid-epoch mostly
LM = ["trainer.limit_train_batches=10", "trainer.limit_val_batches=2", "stage.epochs=3", "stage.save_every_n_steps=1",
      "trainer.log_every_n_steps=1", "stage.optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def setup(toy_data, tmp_path_factory) -> dict:
    """A pretrained and an SFT tiny model, comparisons, and an RM dir: every stage's inputs."""
    root, rng = tmp_path_factory.mktemp("resume"), random.Random(1)
    data = [graded(rng) for _ in range(256)]
    files = {**toy_data, "comparisons_train": write_jsonl(root / "c_train.jsonl", data[:224]),
             "comparisons_val": write_jsonl(root / "c_val.jsonl", data[224:])}
    ov = ["data=files", *(f"data.files.{k}={v}" for k, v in files.items()), "model.vocab_size=300",
          "trainer.enable_progress_bar=false", "stage.batch_size=16"]
    models = tiny_sft_and_rm(toy_data, root / "models", ov)
    return {"root": root, "overrides": ov, **models}


def stage_overrides(setup: dict, stage: str) -> list[str]:
    sft = f"init={setup['sft']}"
    return [*setup["overrides"], f"output_root={setup['root']}", *{
        "pretrain": ["stage=pretrain", *LM],
        "sft": ["stage=sft", sft, *LM],
        "rm": ["stage=rm", sft, *LM],
        "ppo": ["stage=ppo", sft, f"stage.reward_model={setup['rm']}", f"data.files.prompts_ppo={setup['prompts']}",
                "stage.batch_size=8", "stage.minibatch_size=4", "stage.max_new_tokens=8", "stage.iterations=10",
                "stage.save_every_n_steps=1", "stage.optim.warmup_iterations=2", "kl=adaptive", "ptx=paper",
                "ptx.examples_per_episode=1", "stage.eval_every=0"],
    }[stage]]


def weights(final: Path) -> dict[str, torch.Tensor]:
    return load_file(final / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert differ == [], f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def ckpt_step(sdir: Path) -> int:
    return torch.load(sdir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def start(overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-m", "rlhf.train", *overrides], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, sdir: Path, step: int, timeout: float = 240) -> None:
    """Until the stage's last.ckpt is at ``step`` or later."""
    end = time.time() + timeout
    while not ((sdir / "checkpoints" / "last.ckpt").is_file() and ckpt_step(sdir) >= step):
        if proc.poll() is not None or time.time() > end:
            proc.kill()
            raise AssertionError(f"no checkpoint at step {step} (exit {proc.poll()}):\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.02)


@pytest.mark.parametrize("stage,steps", [("pretrain", 30), ("sft", 30), ("rm", 30), ("ppo", 10)])
def test_a_stage_killed_at_a_random_step_resumes_to_the_weights_of_an_uninterrupted_run(setup, stage, steps):
    base = stage_overrides(setup, stage)
    train(make_config([*base, "run_name=whole"]))
    sdir = setup["root"] / "killed" / stage
    at = random.randrange(1, steps // 2)  # not chosen by hand: any step must do
    proc = start([*base, "run_name=killed"])
    wait_for_step(proc, sdir, at)
    proc.send_signal(signal.SIGKILL)  # mid-step, or mid-save: the checkpoint is written beside and renamed
    proc.wait()
    assert not (sdir / "final").exists(), "the run finished before it was killed"
    resumed_from = ckpt_step(sdir)
    assert 0 < resumed_from < steps, (at, resumed_from)
    _, objs = train(make_config([*base, "run_name=killed"]))  # the same command again
    assert objs["trainer"].global_step == steps
    assert_same_weights(setup["root"] / "whole" / stage / "final", sdir / "final")
    whole = setup["root"] / "whole" / stage
    a, b = ({k: v for k, v in json.loads((d / "final" / "rlhf.json").read_text())["metrics"].items()
             if k.startswith("val/") or k in ("train/loss", "train/kl", "train/score")} for d in (whole, sdir))
    assert a and b == a  # the last validation and step, after the resume as in one go (not wall times)
    if stage == "sft":  # every epoch's export, after the resume too
        assert sorted(p.name for p in (sdir / "epochs").iterdir()) == ["epoch_0", "epoch_1", "epoch_2"]
    if stage == "ppo":  # every iteration's samples once, as in the uninterrupted run
        def its(d):
            return [json.loads(line)["iteration"] for line in (d / "samples.jsonl").read_text().splitlines()]
        assert its(sdir) == its(setup["root"] / "whole" / stage)


class FullDisk(pl.Callback):
    """The checkpoint writer fills the disk on its ``at``-th save: half the bytes, then ENOSPC."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def setup(self, trainer, module, stage):
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def failing(checkpoint, path, storage_options=None):
            self.calls += 1
            if self.calls < self.at:
                return save(checkpoint, path, storage_options)
            save(checkpoint, path, storage_options)
            Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        io.save_checkpoint = failing


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_the_rerun_finishes(setup):
    base = stage_overrides(setup, "sft")
    train(make_config([*base, "run_name=whole"]))
    sdir = setup["root"] / "disk" / "sft"
    with pytest.raises(CheckpointError, match=r"could not write .*last.ckpt: .*No space left.*previous one \(step 6\) is kept"):
        train(make_config([*base, "run_name=disk"]), callbacks=[FullDisk(at=7)])
    assert ckpt_step(sdir) == 6 and sorted(p.name for p in (sdir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert not (sdir / "final").exists()
    train(make_config([*base, "run_name=disk"]))  # space again: resumes from step 6
    assert_same_weights(setup["root"] / "whole" / "sft" / "final", sdir / "final")


def test_a_resume_with_a_changed_result_key_fails_naming_it_and_a_log_key_passes(setup):
    base = stage_overrides(setup, "sft")
    with pytest.raises(RuntimeError, match="crash"):
        train(make_config([*base, "run_name=changed"]), callbacks=[Crash(at=4)])
    with pytest.raises(ConfigError, match=r"stage\.optim\.lr: [0-9.e-]+ -> 0\.002\. .*resume=false.*run_name"):
        train(make_config([*base, "run_name=changed", "stage.optim.lr=2e-3"]))
    _, objs = train(make_config([*base, "run_name=changed", "trainer.log_every_n_steps=5"]))  # not a result key
    assert objs["trainer"].global_step == 30
    rows = metrics_rows(setup["root"] / "changed" / "sft")
    assert min(int(r["step"]) for r in rows if r.get("train/loss")) == 0  # logs of both starts are kept


def test_force_trains_from_scratch_with_the_new_config(setup):
    base = stage_overrides(setup, "sft")
    train(make_config([*base, "run_name=force"]))
    sdir = setup["root"] / "force" / "sft"
    old = weights(sdir / "final")
    (sdir / "epochs" / "epoch_7").mkdir()  # a leftover of an earlier, longer run
    starts = []

    class Start(pl.Callback):
        def on_train_start(self, trainer, module):
            starts.append(trainer.global_step)
    train(make_config([*base, "run_name=force", "force=true", "stage.optim.lr=2e-3"]), callbacks=[Start()])
    assert starts == [0]  # from scratch, not from the finished run's last.ckpt
    new = weights(sdir / "final")
    assert all(not torch.equal(old[k], new[k]) for k in old if "layers" in k)
    assert sorted(p.name for p in (sdir / "epochs").iterdir()) == ["epoch_0", "epoch_1", "epoch_2"]
    assert OmegaConf.load(sdir / "final" / "config.yaml").stage.optim.lr == 2e-3  # what ran is what is recorded


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_a_diverged_stage_fails_naming_the_bad_tensor_and_exports_nothing(setup, stage):
    base = stage_overrides(setup, stage)
    run = f"run_name=diverged_{stage}"
    with pytest.raises(NonFiniteError, match=rf"stage {stage} diverged: model\.\S+ \((nan|inf)\) is not finite"):
        train(make_config([*base, run, "stage.optim.lr=1e8"]))
    sdir = setup["root"] / f"diverged_{stage}" / stage
    assert not (sdir / "final").exists()
    if (sdir / "checkpoints" / "last.ckpt").exists():  # what it kept is finite
        state = torch.load(sdir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_truncated_checkpoint_is_named_before_anything_runs(setup):
    base = stage_overrides(setup, "sft")
    with pytest.raises(RuntimeError, match="crash"):
        train(make_config([*base, "run_name=truncated"]), callbacks=[Crash(at=3)])
    ckpt = setup["root"] / "truncated" / "sft" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # e.g. copied in part
    with pytest.raises(CheckpointError, match=rf"{ckpt} is not a complete checkpoint.*Delete it.*resume=false"):
        train(make_config([*base, "run_name=truncated"]))
    train(make_config([*base, "run_name=truncated", "resume=false"]))  # the way out it names
    assert (ckpt.parent.parent / "final" / "rlhf.json").is_file()


@pytest.mark.slow  # ~22 s: a real process and its rerun; the in-process SIGTERM tests below run by default
def test_sigterm_saves_the_step_it_was_at_and_the_rerun_loses_none(setup):
    """Default cadence (no step checkpoints): the checkpoint comes from the signal itself."""
    base = [*stage_overrides(setup, "sft"), "stage.save_every_n_steps=null", "stage.epochs=20"]
    train(make_config([*base, "run_name=whole_term"]))
    sdir = setup["root"] / "term" / "sft"
    proc = start([*base, "run_name=term"])
    wait_for_step(proc, sdir, 10)  # the first epoch end's checkpoint
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    step = ckpt_step(sdir)
    trained = max(int(r["step"]) for r in metrics_rows(sdir) if r.get("train/loss"))
    assert step == trained + 1 and 10 <= step < 200, (step, trained)  # the last step trained is the one saved
    train(make_config([*base, "run_name=term"]))
    assert_same_weights(setup["root"] / "whole_term" / "sft" / "final", sdir / "final")


class Term(pl.Callback):
    """Sends this process SIGTERM in the middle of the batch of step ``at`` (after its backward)."""

    def __init__(self, at: int):
        self.at = at

    def on_after_backward(self, trainer, module):
        if trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("at", [14, 19])  # mid-epoch, and an epoch's last batch (10 steps per epoch)
def test_sigterm_at_any_batch_saves_the_step_after_it(setup, at):
    """An epoch's last batch defers its checkpoint to the epoch's end (after validation and
    exports); Lightning's own SIGTERM stop must not end the run before that checkpoint."""
    base = [*stage_overrides(setup, "sft"), "stage.save_every_n_steps=null", "stage.epochs=3", f"run_name=term{at}"]
    with pytest.raises(SystemExit) as e:
        train(make_config(base), callbacks=[Term(at)])
    sdir = setup["root"] / f"term{at}" / "sft"
    trained = max(int(r["step"]) for r in metrics_rows(sdir) if r.get("train/loss"))
    assert e.value.code == 128 + signal.SIGTERM and trained == at  # the batch it came in finished
    assert ckpt_step(sdir) == at + 1  # and is the last one saved
