"""The config schema: one dataclass per config group option, stored in Hydra's ConfigStore.

Every YAML option extends its schema (``defaults: [/schema/stage/ppo@_here_, _self_]``), so Hydra
rejects a wrong type or an unknown key when it composes, naming the key (``stage.epochs=abc``).
The YAML files hold the values and why; ``groups.py`` holds each key's type and range, which
:func:`validate` checks after composition (Hydra does not check ranges), together with keys added
with ``+``, cross-key rules and run names that would leave ``output_root``. ``_target_`` groups (strategy, logger,
labeler, judge) are checked against their target's signature when instantiated.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from rlhf.schema.groups import GROUPS, KL, STAGES, Data, Model, Ptx, Trainer


class ConfigError(ValueError):
    """A config value out of range or an unknown key; the message names every bad key."""


# ---------------------------------------------------------------- primary configs
@dataclass
class Train:
    """conf/train.yaml (rlhf-train)."""
    stage: Any = MISSING
    model: Model = MISSING
    data: Data = MISSING
    kl: KL = MISSING
    ptx: Ptx = MISSING
    trainer: Trainer = MISSING
    strategy: Any = MISSING                      # _target_ groups: checked by their target
    logger: Any = MISSING
    labeler: Any = MISSING
    judge: Any = MISSING
    run_name: str = MISSING
    output_root: str = MISSING
    run_dir: str = MISSING
    stage_dir: str = MISSING
    init: Optional[str] = MISSING
    seed: int = MISSING
    resume: bool = MISSING
    force: bool = MISSING
    objective: str = MISSING
    # rlhf-pipeline's step -> overlay; an experiment preset sets them, rlhf-train ignores them
    steps: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Pipeline(Train):
    """conf/pipeline.yaml (rlhf-pipeline)."""
    run_order: List[str] = MISSING
    run_dir_per_job: bool = True                 # a multirun job runs in its own job directory
    plan_only: bool = False                      # print the plan and stop
    rerun: List[str] = field(default_factory=list)  # steps to rerun from scratch, with what they feed
    rounds: int = 1                              # iterated RLHF: rounds of collect -> RM -> PPO-ptx
    rm_ensemble: int = 1                         # RMs (seeds) round one's PPO steps score with together


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=Train)
    cs.store(group="schema", name="pipeline", node=Pipeline)
    for name, node in STAGES.items():
        cs.store(group="schema/stage", name=name, node=node)
    for group, node in GROUPS.items():
        cs.store(group=f"schema/{group}", name=group, node=node)


def _problems(node: Any, schema: type, path: str) -> list[str]:
    out = []
    names = {f.name for f in dataclasses.fields(schema)}
    if not getattr(schema, "open", False):
        out += [f"{path}{k}: unknown key (the keys of {schema.__name__} are in rlhf/schema/)"
                for k in node if k not in names]
    for f in dataclasses.fields(schema):
        value = node.get(f.name)
        name, rng = f"{path}{f.name}", f.metadata
        if value is None or isinstance(value, bool) and rng:
            continue
        if "choices" in rng and value not in rng["choices"]:
            out.append(f"{name}={value}: must be one of {', '.join(map(str, rng['choices']))}")
        if "ge" in rng and value < rng["ge"] or "gt" in rng and value <= rng["gt"] or "le" in rng and value > rng["le"]:
            bounds = [f">= {rng['ge']}" if "ge" in rng else "", f"> {rng['gt']}" if "gt" in rng else "",
                      f"<= {rng['le']}" if "le" in rng else ""]
            out.append(f"{name}={value}: must be {' and '.join(b for b in bounds if b)}")
        sub = OmegaConf.get_type(node, f.name) if isinstance(value, DictConfig) else None
        if sub is not None and dataclasses.is_dataclass(sub):
            out += _problems(value, sub, f"{name}.")
    return out


def _ppo_problems(cfg: DictConfig) -> list[str]:
    """What no single key's range says about PPO."""
    st, out = cfg.stage, []
    if st.minibatch_size and st.batch_size % st.minibatch_size:
        out.append(f"stage.batch_size={st.batch_size}: must be a multiple of stage.minibatch_size={st.minibatch_size}")
    if st.iterations is None and cfg.trainer.max_steps < 0:
        out.append("stage.iterations=null runs until trainer.max_steps, which is not set")
    if cfg.ptx.coef > 0 and cfg.ptx.examples_per_episode <= 0:
        out.append(f"ptx.coef={cfg.ptx.coef} needs ptx.examples_per_episode > 0")
    if cfg.model.get("lora") and cfg.model.lora.r and st.ensemble:  # checked here: before a pipeline runs
        out.append(f"model.lora.r={cfg.model.lora.r} with stage.ensemble (rm_ensemble) is not supported: the value "
                   "model is an adapter on stage.reward_model, and the other members would be whole copies")
    return out


def validate(cfg: DictConfig) -> DictConfig:
    """Check every range, key and path of a composed config; raise :class:`ConfigError` naming
    every bad key. Interpolations are resolved, so a broken one is named here too."""
    problems = _problems(cfg, OmegaConf.get_type(cfg) if dataclasses.is_dataclass(OmegaConf.get_type(cfg)) else Train, "")
    stage = cfg.get("stage")
    if stage is not None and dataclasses.is_dataclass(OmegaConf.get_type(stage)) is False:
        problems.append("stage: has no schema (a stage option must extend /schema/stage/<kind>)")
    if stage is not None and stage.get("kind") == "ppo":
        problems += _ppo_problems(cfg)
    # names become directories under output_root: they may not climb out of it (run_dir and
    # stage_dir themselves may be set anywhere, as a multirun sets them to its job directories)
    run_name = Path(str(cfg.get("run_name", "")))
    if run_name.is_absolute() or ".." in run_name.parts:
        problems.append(f"run_name={run_name}: must be a relative path inside output_root={cfg.get('output_root')}")
    if stage is not None and (len(Path(str(stage.name)).parts) != 1 or stage.name in ("..", ".")):
        problems.append(f"stage.name={stage.name}: must be one directory name")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return cfg
