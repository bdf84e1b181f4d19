"""Training with 2 CPU processes over gloo, each run a ``python -m rlhf.train`` subprocess:
DDP, and FSDP2 (``strategy=fsdp2``: Lightning's ModelParallelStrategy + torch ``fully_shard``).
Both are data parallel over the same per-rank batches, so they must train to the same weights;
FSDP2 must also checkpoint, resume (PPO), and export whole HF models from its shards. ``strategy=fsdp``
(torch FSDP1) is meant for GPUs; a slow test runs its code on CPUs through ``fsdp1_on_cpu.py``.
"""
from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import make_config
from rlhf.distributed import FSDP2Strategy, block_classes, build_strategy
from scale_helpers import REPO, cli_env, data_overrides, ppo_overrides, run_cli, tiny_models  # noqa: F401 (fixtures)

TWO_CPUS = ["trainer.devices=2", "trainer.accelerator=cpu"]


def weights(final) -> dict[str, torch.Tensor]:
    return load_file(final / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def train_rows(sdir) -> list[dict]:
    return [r for f in sorted(sdir.glob("logs/version_*/metrics.csv")) for r in csv.DictReader(f.open())
            if r.get("train/loss") or r.get("train/kl")]


def test_build_strategy(tmp_path):
    def strategy(*overrides):
        return build_strategy(make_config([f"output_root={tmp_path}", *overrides]))
    # PPO-ptx under DDP: the ptx backward leaves the value model without gradients
    assert strategy("strategy=ddp", "stage=ppo", "ptx=paper")._ddp_kwargs["find_unused_parameters"] is True
    assert strategy("strategy=ddp", "stage=ppo")._ddp_kwargs["find_unused_parameters"] is False
    assert strategy("strategy=ddp", "stage=sft", "ptx=paper")._ddp_kwargs["find_unused_parameters"] is False
    fsdp2 = strategy("strategy=fsdp2")
    assert isinstance(fsdp2, FSDP2Strategy) and fsdp2._tensor_parallel_size == 1
    assert strategy("strategy=fsdp", "stage=sft").kwargs["use_orig_params"] is True
    with pytest.raises(ValueError, match="strategy=fsdp2"):
        strategy("strategy=fsdp", "stage=ppo")
    with pytest.raises(ValueError, match="save_distributed_checkpoint=false"):
        strategy("strategy=fsdp2", "stage=ppo", "strategy.save_distributed_checkpoint=true")


def test_blocks_are_the_models_no_split_modules(tiny_models):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from rlhf.models.reward import load_reward_model
    module = torch.nn.ModuleDict({"policy": AutoModelForCausalLM.from_pretrained(tiny_models["sft"]),
                                  "rm": load_reward_model(str(tiny_models["rm"]))})
    assert block_classes(module) == {LlamaDecoderLayer}


@pytest.mark.slow  # ~40 s: two 2-process end-to-end runs, too long for the default run
def test_sft_under_fsdp2_equals_ddp_and_exports_whole_models(tiny_models, data_overrides, tmp_path):
    sft = [*data_overrides, *TWO_CPUS, f"output_root={tmp_path}", "stage=sft", f"init={tiny_models['sft']}",
           "stage.epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "stage.batch_size=8",
           "stage.optim.warmup_steps=0", "stage.optim.lr=3e-3", "trainer.log_every_n_steps=1"]
    run_cli([*sft, "strategy=ddp", "run_name=ddp"])
    run_cli([*sft, "strategy=fsdp2", "run_name=fsdp2"])
    sdir = tmp_path / "fsdp2" / "sft"
    ddp, fsdp2, init = (weights(d) for d in (tmp_path / "ddp/sft/final", sdir / "final", tiny_models["sft"]))
    assert max_diff(ddp, fsdp2) < 1e-6  # same data per rank, same averaged gradients
    assert all(not torch.equal(fsdp2[k], init[k]) for k in init)  # every tensor trained
    assert max_diff(weights(sdir / "epochs" / "epoch_1"), fsdp2) == 0  # per-epoch exports gathered too
    assert len(train_rows(sdir)) == 4 and (sdir / "epochs" / "epoch_0" / "model.safetensors").is_file()
    ckpt = torch.load(sdir / "checkpoints" / "last.ckpt", weights_only=False)
    embed = "model.embed_tokens.weight"  # one file holding whole (gathered) tensors, not shards
    assert ckpt["global_step"] == 4 and ckpt["state_dict"][f"model.{embed}"].shape == init[embed].shape
    tok, model = AutoTokenizer.from_pretrained(sdir / "final"), AutoModelForCausalLM.from_pretrained(sdir / "final")
    out = model.generate(**tok("reverse: cat dog sun\n", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 0


@pytest.mark.slow
def test_fsdp1_on_cpu_equals_ddp_for_sft(tiny_models, data_overrides, tmp_path):
    """strategy=fsdp's own code (per-block wrap, HF activation checkpointing, clipping through the
    root, gathered exports) on 2 CPU processes, against DDP."""
    sft = [*data_overrides, *TWO_CPUS, f"output_root={tmp_path}", "stage=sft", f"init={tiny_models['sft']}",
           "debug=fast", "stage.batch_size=8", "stage.optim.warmup_steps=0"]
    run_cli([*sft, "strategy=ddp", "run_name=ddp"])
    run_cli([str(REPO / "tests" / "scale" / "fsdp1_on_cpu.py"), *sft, "strategy=fsdp", "run_name=fsdp"], module=None)
    fsdp = tmp_path / "fsdp" / "sft"
    assert max_diff(weights(tmp_path / "ddp" / "sft" / "final"), weights(fsdp / "final")) < 1e-6
    assert max_diff(weights(fsdp / "epochs" / "epoch_0"), weights(fsdp / "final")) == 0


@pytest.mark.slow  # ~55 s; the default run keeps FSDP2's gathered generation on 2 processes
def test_ppo_ptx_under_fsdp2_resumed_equals_ddp(ppo_overrides, tmp_path):
    """PPO-ptx with all five models sharded (policy, value, frozen reference and RM, EMA) and
    generation from the gathered policy, stopped after 1 iteration and resumed, against 2
    iterations of DDP with whole models (which needs find_unused_parameters for the ptx
    backward: it reaches the policy only)."""
    ppo = [*ppo_overrides, *TWO_CPUS, f"output_root={tmp_path}", "stage.save_every_n_steps=1"]
    run_cli([*ppo, "strategy=ddp", "run_name=ddp", "trainer.max_steps=2"])
    run_cli([*ppo, "strategy=fsdp2", "run_name=fsdp2", "trainer.max_steps=1"])
    ddp, fsdp2 = tmp_path / "ddp" / "ppo", tmp_path / "fsdp2" / "ppo"
    (fsdp2 / "final" / "rlhf.json").unlink()  # as if killed after iteration 1
    assert "resuming ppo from" in run_cli([*ppo, "strategy=fsdp2", "run_name=fsdp2", "trainer.max_steps=2"])
    assert max_diff(weights(ddp / "final"), weights(fsdp2 / "final")) < 1e-6  # the exported EMA policy
    rows = {d: train_rows(d) for d in (ddp, fsdp2)}
    assert len(rows[fsdp2]) == 2 and all(r["train/ptx_loss"] for r in rows[fsdp2])
    for key in ("train/ptx_loss", "train/policy_grad_norm", "train/value_loss", "train/score"):
        assert [float(r[key]) for r in rows[ddp]] == pytest.approx([float(r[key]) for r in rows[fsdp2]], rel=1e-4), key
    info = json.loads((fsdp2 / "final" / "rlhf.json").read_text())
    assert info["ptx"]["coef"] == 27.8 and "train/kl" in info["metrics"]
    AutoModelForCausalLM.from_pretrained(fsdp2 / "final")


def test_generation_gathers_the_sharded_policy_once_per_rollout(tiny_models, tmp_path):
    result = tmp_path / "gathered.json"
    run_cli(["--nproc-per-node", "2", str(REPO / "tests" / "scale" / "gathered_generation.py"), str(tiny_models["sft"])],
            module="torch.distributed.run", env=cli_env(OUT_JSON=str(result)), timeout=180)
    r = json.loads(result.read_text())
    assert r["same_tokens"] and r["resharded"] and r["training_after"]
    assert r["all_gathers_gathered"] == r["units"]  # once per FSDP unit for the whole generation
    assert r["all_gathers_plain"] > 4 * r["units"]  # without it: every block at every token


@pytest.mark.slow  # ~55 s: three 2-process runs; test_lora.py covers LoRA PPO's resume in one process
def test_ppo_with_lora_under_fsdp2_resumed_equals_ddp(ppo_overrides, tmp_path):
    """LoRA PPO-ptx with one sharded base for policy and reference and one for value model and RM
    (adapters off through a View), the EMA as a second adapter, stopped after 1 iteration and
    resumed from a checkpoint of adapters only, against 2 iterations of DDP."""
    ppo = [*ppo_overrides, *TWO_CPUS, f"output_root={tmp_path}", "stage.save_every_n_steps=1", "model.lora.r=4",
           "stage.eval_every=0"]
    run_cli([*ppo, "strategy=ddp", "run_name=ddp", "trainer.max_steps=2"])
    run_cli([*ppo, "strategy=fsdp2", "run_name=fsdp2", "trainer.max_steps=1"])
    ddp, fsdp2 = tmp_path / "ddp" / "ppo", tmp_path / "fsdp2" / "ppo"
    ckpt = torch.load(fsdp2 / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all(".lora_" in k or "modules_to_save" in k for k in ckpt["state_dict"])
    (fsdp2 / "final" / "rlhf.json").unlink()  # as if killed after iteration 1
    assert "resuming ppo from" in run_cli([*ppo, "strategy=fsdp2", "run_name=fsdp2", "trainer.max_steps=2"])
    assert max_diff(weights(ddp / "final"), weights(fsdp2 / "final")) < 1e-6  # the merged EMA policy
    adapters = [load_file(d / "final" / "adapter" / "adapter_model.safetensors") for d in (ddp, fsdp2)]
    assert max_diff(*adapters) < 1e-6
    rows = {d: train_rows(d) for d in (ddp, fsdp2)}
    for key in ("train/ptx_loss", "train/policy_grad_norm", "train/value_loss", "train/score", "train/kl"):
        assert [float(r[key]) for r in rows[ddp]] == pytest.approx([float(r[key]) for r in rows[fsdp2]],
                                                                    rel=1e-4, abs=1e-6), key  # kl: near 0
    assert float(rows[fsdp2][0]["train/kl"]) == 0  # iteration 0: the policy is its reference, adapters off
    assert float(rows[fsdp2][1]["train/kl"]) != 0
    AutoModelForCausalLM.from_pretrained(fsdp2 / "final")
