"""Every option of every config group composes and instantiates: a stale config fails here."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import make_config
from rlhf import schema
from rlhf.schema import groups
from rlhf.schema import ConfigError, validate
from rlhf.train import CONF_DIR, train

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
    validate(cfg)  # every key is in the schema and in range
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


SCHEMAS = [c for m in (schema, groups) for c in vars(m).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]


@pytest.mark.parametrize("node", SCHEMAS, ids=lambda c: c.__name__)
def test_every_schema_key_is_read_somewhere(node):
    """A key nobody reads is a value recorded that was never used (litgpt's config tests)."""
    if node is schema.Trainer:  # passed whole to Lightning: each key is one of its arguments
        import inspect

        import lightning.pytorch as pl

        assert {f.name for f in dataclasses.fields(node)} <= set(inspect.signature(pl.Trainer).parameters)
        return
    code = "\n".join(p.read_text() for p in Path(CONF_DIR).parent.joinpath("rlhf").rglob("*.py") if "schema" not in p.parts)
    yaml = "\n".join(p.read_text() for p in Path(CONF_DIR).rglob("*.yaml"))
    unread = [f.name for f in dataclasses.fields(node)  # attribute, key, or a parameter of the function given the node
              if not re.search(rf"(\.{f.name}\b|[\"']{f.name}[\"']|def \w+\([^)]*\b{f.name}\b)", code)
              and not re.search(rf"\${{[^}}]*\b{f.name}\b[^}}]*}}", yaml)]  # read through an interpolation
    assert not unread, f"{node.__name__}: {unread}"


@pytest.mark.parametrize("bad,named", [("stage.minibatch_size=0", "stage.minibatch_size=0: must be >= 1"),
                                       ("stage.batch_size=10", "stage.batch_size=10: must be a multiple of stage.minibatch_size=16"),
                                       ("+stage.minibatch=4", "stage.minibatch: unknown key"),
                                       ("stage.optim.lr=0", "stage.optim.lr=0.0: must be > 0"),
                                       ("kl.coef=-0.1", "kl.coef=-0.1: must be >= 0"),
                                       ("stage.ema_decay=1.5", "stage.ema_decay=1.5: must be >= 0 and <= 1"),
                                       ("stage.name=../x", "stage.name=../x: must be one directory name"),
                                       ("run_name=/abs", "run_name=/abs: must be a relative path"),
                                       ("stage.iterations=null", "stage.iterations=null runs until trainer.max_steps"),
                                       ("ptx.coef=1", "ptx.coef=1.0 needs ptx.examples_per_episode > 0"),
                                       ("model.lora.r=8 stage.ensemble=[a]", "model.lora.r=8 with stage.ensemble")])
def test_rlhf_train_checks_every_value_before_it_writes_anything(tmp_path, bad, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        train(make_config(["stage=ppo", f"output_root={tmp_path}", *bad.split(" ")]))
    assert not any(tmp_path.iterdir())


def test_a_wrong_type_names_the_key():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="stage.epochs=abc") as err:
        make_config(["stage.epochs=abc"])
    assert "could not be converted to Integer" in str(err.value.__cause__)


def test_rlhf_train_on_a_finished_stage_with_another_config_names_the_key(tmp_path, toy_overrides):
    cfg = make_config([*toy_overrides, "stage=pretrain", "debug=fast"])
    first, _ = train(cfg)
    again, _ = train(make_config([*toy_overrides, "stage=pretrain", "debug=fast", "trainer.enable_progress_bar=true"]))
    assert again == first  # read back: only how the run is watched changed
    with pytest.raises(ConfigError, match=r"stage pretrain .* finished with another config: stage\.optim\.lr: 0\.003 -> 0\.001"):
        train(make_config([*toy_overrides, "stage=pretrain", "debug=fast", "stage.optim.lr=1e-3"]))


def _schema_of(group: str, option: str, raw):
    if group == "stage":
        return groups.STAGES[raw.name if raw.name in groups.STAGES else option]
    return groups.GROUPS.get(group)


@pytest.mark.parametrize("group,option", [(g, o) for g in ("stage", "model", "data", "kl", "ptx", "trainer") for o in options(g)])
def test_every_key_in_every_yaml_is_in_its_schema(group, option):
    """Every YAML key is a field of the dataclass its file extends (Hydra enforces it too; this
    says which file and key when it does not)."""
    raw = OmegaConf.load(Path(CONF_DIR) / group / f"{option}.yaml")
    node = _schema_of(group, option, raw)
    first = str(raw.defaults[0] if "defaults" in raw else "")  # the schema, or an option it extends (data=dataset)
    assert f"/schema/{group}/" in first or first in options(group) or group == "trainer" and option != "default"

    def walk(cfg, schema_cls, path):
        fields = {f.name: f for f in dataclasses.fields(schema_cls)}
        for k in cfg:
            assert k in fields, f"conf/{group}/{option}.yaml: {path}{k} is not in {schema_cls.__name__}"
            sub = cfg[k] if OmegaConf.is_dict(cfg) and isinstance(cfg._get_node(k), type(cfg)) else None
            typ = fields[k].type
            cls = getattr(groups, typ.removeprefix("Optional[").removesuffix("]"), None)
            if sub is not None and cls is not None and dataclasses.is_dataclass(cls):
                walk(sub, cls, f"{path}{k}.")

    walk(OmegaConf.masked_copy(raw, [k for k in raw if k != "defaults"]), node, "")
