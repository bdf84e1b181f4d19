"""LoRA (``model.lora.r``) through SFT -> RM -> PPO on tiny models: only adapters train, final/ is a
merged plain HF model equal to base + adapter, PPO holds one base for policy and reference and one
for value model and RM, and an SFT killed mid-run resumes to the weights of an uninterrupted one."""
from __future__ import annotations

import random
import signal

import lightning.pytorch as pl
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import Crash, make_config, tiny_sft_and_rm
from rlhf.data.formats import write_jsonl
from rlhf.models.lora import View, is_adapter_weight, viewing
from rlhf.models.reward import load_reward_model, sequence_rewards
from rlhf.train import train
from test_resume import LM, assert_same_weights, ckpt_step, start, wait_for_step
from test_rm import graded

LORA = ["model.lora.r=4", "model.lora.alpha=8"]
IDS = torch.tensor([[5, 9, 33, 4, 70, 12, 8], [3, 3, 41, 90, 17, 6, 2]]), torch.ones(2, 7, dtype=torch.long)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only thrashes (tests/stages/test_ppo.py)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(toy_data, tmp_path_factory) -> dict:
    """A tiny full SFT (the base), then SFT, RM and PPO with LoRA on it, each ``debug=fast``."""
    root, rng = tmp_path_factory.mktemp("lora"), random.Random(1)
    data = [graded(rng) for _ in range(96)]
    files = {**toy_data, "comparisons_train": write_jsonl(root / "c_train.jsonl", data[:80]),
             "comparisons_val": write_jsonl(root / "c_val.jsonl", data[80:])}
    ov = ["data=files", *(f"data.files.{k}={v}" for k, v in files.items()), "model.vocab_size=300",
          "trainer.enable_progress_bar=false", "stage.batch_size=16"]
    base = tiny_sft_and_rm(toy_data, root / "base", ov)
    (root / "judge.py").write_text("def prefer(prompt, a, b):\n    return 0.5 + 0.5 * (len(a) > len(b))\n")
    run = [*ov, *LORA, f"output_root={root}", "run_name=lora"]
    out = {"root": root, "overrides": run, "base": base}
    for stage, extra in (("sft", [f"init={base['sft']}", "debug=fast"]),
                         ("rm", [f"init={root}/lora/sft/final", "debug=fast", "stage.optim.lr=1e-3"]),
                         ("ppo", [f"init={root}/lora/sft/final", f"stage.reward_model={root}/lora/rm/final",
                                  f"data.files.prompts_ppo={base['prompts']}", "stage.batch_size=8",
                                  "stage.minibatch_size=4", "stage.max_new_tokens=8", "trainer.max_steps=3",
                                  "stage.save_every_n_steps=1", "stage.optim.warmup_iterations=0",
                                  "stage.optim.lr=1e-3", f"data.files.prompts_val={base['prompts']}",
                                  "stage.max_eval_prompts=4", "stage.eval_every=1", "judge=custom",
                                  f"judge.target={root / 'judge.py'}:prefer"])):  # candidates: merged views
        out[stage] = train(make_config([*run, f"stage={stage}", *extra]))[1]
        out[stage].update(final=root / "lora" / stage / "final", overrides=[*run, f"stage={stage}", *extra])
    return out


def logits(model):
    return model.eval()(input_ids=IDS[0], attention_mask=IDS[1]).logits.detach()


def test_sft_trains_only_adapters_and_its_merged_final_is_base_plus_adapter(runs):
    init, final = runs["base"]["sft"], runs["sft"]["final"]
    module = runs["sft"]["module"]
    assert {n.split(".")[-3] for n, p in module.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    a, b = load_file(init / "model.safetensors"), load_file(final / "model.safetensors")
    assert a.keys() == b.keys()  # a plain model, no peft keys
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.endswith(("proj.weight")) for k in changed)  # the adapted linears only
    assert "model.embed_tokens.weight" not in changed
    plain = AutoModelForCausalLM.from_pretrained(final)  # plain transformers
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(init), final / "adapter")
    torch.testing.assert_close(logits(plain), logits(adapted), atol=1e-5, rtol=1e-5)
    assert (final / "adapter" / "adapter_config.json").is_file()
    epoch = load_file(final.parent / "epochs" / "epoch_0" / "model.safetensors")  # per-epoch exports merged too
    assert epoch.keys() == a.keys() and (final.parent / "epochs" / "epoch_0" / "adapter").is_dir()
    ckpt = torch.load(runs["root"] / "lora" / "sft" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])  # no base weights


def test_rm_trains_adapters_and_its_head_and_its_final_loads_as_a_plain_reward_model(runs):
    init, final = runs["sft"]["final"], runs["rm"]["final"]
    trainable = {n for n, p in runs["rm"]["module"].named_parameters() if p.requires_grad}
    assert "model.score.modules_to_save.default.weight" in trainable
    assert all(".lora_" in n or "modules_to_save" in n for n in trainable)
    rm = load_reward_model(str(final))  # plain transformers: the merged backbone and the trained head
    base = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
    adapted = PeftModel.from_pretrained(base, final / "adapter").eval()
    torch.testing.assert_close(sequence_rewards(rm.eval(), *IDS, raw=True),
                               sequence_rewards(adapted.base_model.model, *IDS, raw=True), atol=1e-5, rtol=1e-5)


def test_ppo_holds_one_base_for_policy_and_reference_and_one_for_value_and_rm(runs):
    module, ppo = runs["ppo"]["module"], runs["ppo"]
    assert isinstance(module.reference, View) and module.reference.model is module.policy
    assert isinstance(module.reward_model, View) and module.reward_model.model is module.value
    names = [n for n, _ in module.named_parameters()]
    assert all(n.startswith(("policy.", "value.")) for n in names)  # no reference, RM or EMA copies
    sft, rm = AutoModelForCausalLM.from_pretrained(runs["sft"]["final"]), load_reward_model(str(runs["rm"]["final"]))
    held = sum(p.numel() for n, p in module.named_parameters() if not is_adapter_weight(n))
    assert held == sum(p.numel() for p in sft.parameters()) + sum(p.numel() for p in rm.parameters())  # once each
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert all(".lora_" in n and ".default." in n or "modules_to_save.default" in n for n in trainable)
    with torch.no_grad():  # after training, adapters off: still SFT and the RM
        torch.testing.assert_close(logits(module.reference), logits(sft), atol=1e-5, rtol=1e-5)
        with viewing(module.reward_model):
            torch.testing.assert_close(sequence_rewards(module.reward_model, *IDS), sequence_rewards(rm, *IDS),
                                       atol=1e-5, rtol=1e-5)
    final = ppo["final"]  # the judge's pick of the candidates: the EMA adapter merged into SFT, the adapter beside
    assert all((c / "adapter" / "adapter_model.safetensors").is_file() for c in (final.parent / "candidates").iterdir())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(runs["sft"]["final"]), final / "adapter")
    plain = AutoModelForCausalLM.from_pretrained(final)
    torch.testing.assert_close(logits(plain), logits(adapted), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(adapted), logits(sft), atol=1e-4)  # PPO moved it
    ckpt = torch.load(runs["root"] / "lora" / "ppo" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all(".lora_" in k or "modules_to_save" in k for k in ckpt["state_dict"])
    assert ckpt["lora_ema"]["updates"] == 3 * 2  # 2 policy steps per iteration


@pytest.mark.slow  # ~17 s; the LoRA PPO resume test stays in the default run
def test_lora_sft_killed_at_a_random_step_resumes_to_the_weights_of_an_uninterrupted_run(runs):
    base = [*runs["overrides"], "stage=sft", f"init={runs['base']['sft']}", *LM]
    train(make_config([*base, "run_name=whole"]))
    sdir = runs["root"] / "killed" / "sft"
    proc = start([*base, "run_name=killed"])
    wait_for_step(proc, sdir, random.randrange(1, 15))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (sdir / "final").exists() and 0 < ckpt_step(sdir) < 30
    _, objs = train(make_config([*base, "run_name=killed"]))  # adapters, optimizer and position restored
    assert objs["trainer"].global_step == 30
    assert_same_weights(runs["root"] / "whole" / "sft" / "final", sdir / "final")
    whole, killed = (load_file(runs["root"] / d / "sft" / "final" / "adapter" / "adapter_model.safetensors")
                     for d in ("whole", "killed"))
    assert whole.keys() == killed.keys() and all(torch.equal(whole[k], killed[k]) for k in whole)


def test_lora_ppo_crashed_after_a_checkpoint_resumes_to_the_same_exported_policy(runs):
    """Adapters, their EMA (and its update count), both optimizers and the KL controller come
    back from a last.ckpt that holds no base weights."""
    base = [*runs["ppo"]["overrides"], "run_name=crashed"]
    with pytest.raises(RuntimeError, match="crash"):
        train(make_config(base), callbacks=[Crash(at=2)])
    starts = []

    class Start(pl.Callback):
        def on_train_start(self, trainer, module):
            starts.append(trainer.global_step)
    _, objs = train(make_config(base), callbacks=[Start()])
    assert starts == [2] and objs["trainer"].global_step == 3
    assert_same_weights(runs["ppo"]["final"], runs["root"] / "crashed" / "ppo" / "final")
