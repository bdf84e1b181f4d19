"""LoRA (rlhf.models.lora): adapters off is the base exactly, merging is base + adapter, and the
adapter saved beside a merged model loads in peft."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf.distributed import _plain_copy
from rlhf.models.lora import EMA, AdapterEMA, View, add_lora, drop_base_weights, merged, save_merged, viewing
from rlhf.models.reward import sequence_rewards, token_values

LORA = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})


def config(**extra):
    return AutoConfig.for_model(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, vocab_size=50, pad_token_id=0, tie_word_embeddings=True, **extra)


def kick(model, seed: int = 1) -> None:
    """Random adapter weights (a fresh adapter has B = 0: the base exactly, which proves nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".default." in n:  # the trained adapter (and head copy), not the EMA
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture
def ids():
    return torch.randint(1, 50, (3, 7), generator=torch.Generator().manual_seed(0)), torch.ones(3, 7, dtype=torch.long)


def logits(model, ids):
    return model(input_ids=ids[0], attention_mask=ids[1]).logits


def test_only_adapters_train_and_adapters_off_is_the_base_exactly(ids):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config()).eval()
    want = logits(base, ids)
    model = add_lora(base, LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    assert not any("lm_head" in n or "embed" in n for n in trainable)  # all-linear leaves the output head out
    kick(model)
    assert not torch.allclose(logits(model, ids), want, atol=1e-3)  # the adapter is on
    with torch.no_grad():
        assert torch.equal(View(model)(input_ids=ids[0], attention_mask=ids[1]).logits, want)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable  # switched back as it was
    assert not torch.allclose(logits(model, ids), want, atol=1e-3)


def test_merged_gives_base_plus_adapter_loads_plain_and_its_adapter_loads_in_peft(ids, tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config()).save_pretrained(tmp_path / "base")
    model = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LORA).eval()
    kick(model)
    want = logits(model, ids).detach()
    plain = merged(model)
    assert not any("lora" in n for n, _ in plain.named_parameters()) and not hasattr(plain, "peft_config")
    torch.testing.assert_close(logits(plain, ids), want, atol=1e-5, rtol=1e-5)
    save_merged(model, tmp_path / "final")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")  # plain transformers, no peft
    torch.testing.assert_close(logits(loaded.eval(), ids), want, atol=1e-5, rtol=1e-5)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "final" / "adapter")
    torch.testing.assert_close(logits(peft.eval(), ids), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(merged(model, None), ids), logits(View(model), ids), atol=0, rtol=0)


def test_a_reward_model_scores_with_its_original_head_adapters_off_and_values_with_the_copy(ids, tmp_path):
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(config(num_labels=1)).eval()
    want = sequence_rewards(rm, *ids)
    value = add_lora(rm, LORA)
    trainable = [n for n, p in value.named_parameters() if p.requires_grad]
    assert "score.modules_to_save.default.weight" in trainable and "score.original_module.weight" not in trainable
    kick(value)
    with torch.no_grad(), viewing(View(value)):  # PPO's RM pass: backbone and head called apart
        assert torch.equal(sequence_rewards(View(value), *ids), want)
    assert not torch.allclose(token_values(value, *ids)[:, -1], want, atol=1e-3)  # the value model: adapter + copy
    save_merged(value, tmp_path / "rm")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    torch.testing.assert_close(sequence_rewards(loaded, *ids), sequence_rewards(value, *ids), atol=1e-5, rtol=1e-5)


def test_adapter_ema_copies_then_averages_and_only_the_adapters_are_checkpointed(ids):
    torch.manual_seed(0)
    model = add_lora(AutoModelForCausalLM.from_config(config()), LORA)
    ema = AdapterEMA(model, decay=0.5)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)  # the EMA adapter does not train
    kick(model, 1)
    ema.update_parameters(model)  # the first update copies
    w = dict(model.named_parameters())
    name = next(n for n in w if ".lora_B.default." in n)
    first = w[name].detach().clone()
    assert torch.equal(w[name.replace(".default.", f".{EMA}.")], first)
    kick(model, 2)
    ema.update_parameters(model)
    torch.testing.assert_close(w[name.replace(".default.", f".{EMA}.")], 0.5 * first + 0.5 * w[name].detach())
    torch.testing.assert_close(logits(View(model, EMA), ids), logits(merged(model, EMA), ids), atol=1e-5, rtol=1e-5)
    ckpt = {"state_dict": {f"policy.{k}": v for k, v in model.state_dict().items()}}
    drop_base_weights(ckpt, "policy.")
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])
    assert any(f".{EMA}." in k for k in ckpt["state_dict"])


def test_a_plain_copy_of_an_adapted_model_keeps_its_adapters(ids):
    """What ``rlhf.distributed`` builds on rank 0 from a sharded model's gathered state dict."""
    torch.manual_seed(0)
    model = add_lora(AutoModelForCausalLM.from_config(config()), LORA)
    AdapterEMA(model, 0.9)
    kick(model)
    copy = _plain_copy(model, model.state_dict())
    assert set(copy.peft_config) == {"default", EMA}
    torch.testing.assert_close(logits(copy.eval(), ids), logits(model.eval(), ids), atol=0, rtol=0)
