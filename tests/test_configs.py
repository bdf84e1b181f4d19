"""Every option of every config group composes and instantiates: a stale config fails here."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import make_config
from rlhf.train import CONF_DIR

# experiment presets are the pipeline's: tests/stages/test_plan.py composes them against pipeline.yaml
GROUPS = ["stage", "model", "data", "kl", "ptx", "strategy", "logger", "trainer", "labeler", "judge", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_primary_config_names_every_group():
    defaults = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "train.yaml").defaults)
    named = {next(iter(d)).removeprefix("override ") for d in defaults if isinstance(d, dict)}
    assert set(GROUPS) | {"experiment", "hydra/launcher"} <= named


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes_and_resolves(group, option, tmp_path):
    cfg = make_config([f"{group}={option}", f"output_root={tmp_path}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    for name, node in (cfg.logger or {}).items():
        assert instantiate(node) is not None, name
    if "_target_" in cfg.strategy:
        assert instantiate(cfg.strategy) is not None
    from rlhf.feedback import load

    assert hasattr(load(cfg.labeler), "rank") and hasattr(load(cfg.judge), "prefer")
    __import__(f"rlhf.stages.{cfg.stage.kind}")  # the stage's code exists


@pytest.mark.parametrize("option", options("model"))
def test_model_preset_builds_or_names_a_checkpoint(option):
    from transformers import AutoConfig

    cfg = make_config([f"model={option}"])
    if cfg.model.pretrained:  # HF presets: a hub id or path, loaded with from_pretrained (no download here)
        assert cfg.model.arch is None and isinstance(cfg.model.pretrained, str)
    else:
        arch = OmegaConf.to_container(cfg.model.arch)
        AutoConfig.for_model(**arch, vocab_size=cfg.model.vocab_size)


def test_from_scratch_presets_grow_about_4x():
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = []
    for name in ("tiny", "small", "medium"):
        m = make_config([f"model={name}"]).model
        config = AutoConfig.for_model(**OmegaConf.to_container(m.arch), vocab_size=m.vocab_size)
        sizes.append(sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()))
    assert all(3 <= b / a <= 6 for a, b in zip(sizes, sizes[1:])), sizes


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (Path(CONF_DIR) / "hydra/launcher").glob("*.yaml")))
def test_launcher_composes(launcher):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_


def test_unknown_key_fails_with_hydra_error():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        make_config(["stage.no_such_key=1"])


@pytest.mark.parametrize("model,lr", [("tiny", 3e-3), ("medium", 1e-3), ("gpt2", 3e-3)])
def test_pretraining_lr_comes_from_the_model_preset(model, lr, tmp_path):
    cfg = make_config(["stage=pretrain", f"model={model}", f"output_root={tmp_path}"])
    assert cfg.stage.optim.lr == lr
    cfg = make_config(["stage=pretrain", f"model={model}", "stage.optim.lr=5e-4", f"output_root={tmp_path}"])
    assert cfg.stage.optim.lr == 5e-4  # the command line wins
