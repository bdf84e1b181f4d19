"""The config schema: one dataclass per config group option, stored in Hydra's ConfigStore.

Every YAML option extends its schema (``defaults: [/schema/stage/ppo@_here_, _self_]``), so Hydra
rejects a wrong type or an unknown key when it composes, naming the key (``stage.epochs=abc``).
The YAML files hold the values and why; this file holds each key's type and range, which
:func:`validate` checks after composition (Hydra does not check ranges), together with keys added
with ``+`` and paths that would leave ``output_root``. ``_target_`` groups (strategy, logger,
labeler, judge) are checked against their target's signature when instantiated.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value out of range or an unknown key; the message names every bad key."""


def key(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
        choices: tuple | None = None) -> Any:
    """A schema field with its range: ``ge`` <= value (< ``gt``) <= ``le``, or one of ``choices``."""
    rng = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("choices", choices)) if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=rng)
    return field(default=default, metadata=rng)


def size(default: Any = MISSING) -> Any:
    return key(default, ge=1)


def positive(default: Any = MISSING) -> Any:
    return key(default, gt=0)


def nonneg(default: Any = MISSING) -> Any:
    return key(default, ge=0)


def fraction(default: Any = MISSING) -> Any:
    return key(default, ge=0, le=1)


# ---------------------------------------------------------------- stages (conf/stage/)
@dataclass
class Optim:
    lr: float = positive()                       # peak learning rate
    betas: List[float] = MISSING                 # AdamW betas
    eps: float = positive()


@dataclass
class LMOptim(Optim):
    weight_decay: float = nonneg()
    warmup_steps: int = nonneg()                 # linear warmup, optimizer steps
    min_lr_ratio: float = fraction()             # cosine decay ends at this fraction of lr


@dataclass
class PPOOptim(Optim):
    value_lr: float = positive()                 # the value model's peak lr
    warmup_iterations: int = nonneg()            # linear warmup from lr/10, then constant
    max_grad_norm: Optional[float] = positive()  # per model; null: no clipping


@dataclass
class Stage:
    name: str = MISSING                          # the stage directory's name, outputs/<run>/<name>/
    kind: str = key(choices=("lm", "rm", "collect", "select", "bestofn", "ppo", "eval"))  # rlhf.stages.<kind>


@dataclass
class TrainedStage(Stage):
    epochs: int = size()                         # Lightning max_epochs
    batch_size: int = size()
    save_every_n_steps: Optional[int] = size()   # last.ckpt every N optimizer steps; null: every epoch end


@dataclass
class LMStage(TrainedStage):
    data_kind: str = key(choices=("text", "demonstration"))
    train_data: str = MISSING                    # keys of data.files
    val_data: str = MISSING
    dropout: float = fraction()
    export_every_epoch: bool = MISSING           # epochs/epoch_N/ after every epoch
    optim: LMOptim = MISSING


@dataclass
class SFTStage(LMStage):
    pretrain_mix: float = fraction()             # fraction of examples drawn from data.files.pretrain_train


@dataclass
class RMStage(TrainedStage):
    data_kind: str = key(choices=("comparison",))
    train_data: str = MISSING
    val_data: str = MISSING
    extra_train_data: List[str] = MISSING        # more data.files keys pooled into training
    dropout: float = fraction()
    normalize_data: Optional[str] = MISSING      # data.files key of demonstrations that should score 0
    normalize_gain: bool = MISSING
    export_every_epoch: bool = MISSING
    optim: LMOptim = MISSING


@dataclass
class PPOStage(TrainedStage):
    reward_model: Optional[str] = MISSING        # an RM final/ (required to run)
    prompts: str = MISSING                       # data.files key of the RL prompts
    iterations: int = size()
    minibatch_size: int = size()                 # episodes per optimizer step; divides batch_size
    ppo_epochs: int = size()
    max_new_tokens: int = size()
    temperature: float = positive()
    missing_eos_penalty: Optional[float] = MISSING
    discount: float = fraction()                 # GAE's discount (the paper: 1, no discount)
    lam: float = fraction()                      # GAE's lambda
    clip: float = positive()
    value_clip: Optional[float] = positive()
    vf_coef: float = nonneg()
    ema_decay: Optional[float] = fraction()
    log_samples_every: int = size()
    log_samples: int = nonneg()
    optim: PPOOptim = MISSING
    trainer: Dict[str, Any] = MISSING            # Trainer arguments the stage fixes


@dataclass
class CollectStage(Stage):
    train_prompts: str = MISSING                 # data.files keys
    val_prompts: str = MISSING
    max_val_prompts: int = size()
    num_samples: int = key(ge=2, le=9)           # K, the paper's 4..9; the comparisons format allows 2..9
    temperature: float = positive()


@dataclass
class SelectStage(Stage):
    reward_model: Optional[str] = MISSING
    prompts: str = MISSING
    max_prompts: int = size()
    samples_per_prompt: int = size()
    temperature: float = positive()


@dataclass
class BestOfNStage(Stage):
    reward_model: Optional[str] = MISSING
    prompts: str = MISSING
    max_prompts: int = size()
    n: int = key(ge=2)
    temperature: float = positive()


@dataclass
class EvalStage(Stage):
    models: Dict[str, Optional[str]] = MISSING   # name -> HF directory or hub id
    reference: str = MISSING                     # a key of models
    prompted: bool = MISSING
    prompted_shots: int = nonneg()
    reward_model: Optional[str] = MISSING
    prompts: str = MISSING
    pretrain_val: Optional[str] = MISSING
    max_prompts: int = size()
    max_pretrain_texts: int = size()
    samples_per_prompt: int = size()
    temperature: float = positive()


# ---------------------------------------------------------------- the other groups
@dataclass
class Model:
    name: str = MISSING
    pretrained: Optional[str] = MISSING          # hub id or local dir; null: `arch` from scratch
    vocab_size: Optional[int] = size()           # BPE size (from-scratch presets)
    pretrain_lr: float = positive()              # peak lr of stage=pretrain
    arch: Optional[Dict[str, Any]] = MISSING     # transformers config arguments


@dataclass
class World:                                     # arguments of rlhf.data.world.write_world
    seed: int = MISSING
    n_pretrain: int = size()
    n_pretrain_val: int = size()
    n_sft: int = size()
    n_sft_val: int = size()
    n_rm: int = size()
    n_ppo: int = size()
    n_val: int = size()
    n_test: int = size()
    families: Optional[List[str]] = MISSING
    labeler_noise: float = nonneg()
    n_calibration: int = size()


@dataclass
class Data:
    name: str = MISSING
    dir: Optional[str] = None                    # where the built-in world is written
    world: Optional[World] = MISSING             # null: user files only
    template: str = MISSING                      # prompt -> model input without a chat template
    max_prompt_tokens: int = size()
    max_response_tokens: int = size()
    files: Dict[str, Optional[str]] = MISSING    # key -> JSONL path


@dataclass
class KL:
    controller: str = key(choices=("fixed", "adaptive"))
    coef: float = nonneg()                       # beta
    target: Optional[float] = positive(None)     # adaptive: target KL per response, nats
    horizon: Optional[int] = size(None)          # adaptive: episodes


@dataclass
class Ptx:
    coef: float = nonneg()                       # the paper's gamma (PPO-ptx); 0: plain PPO
    examples_per_episode: int = nonneg()
    data: str = MISSING                          # data.files key of the pretraining texts


@dataclass
class Trainer:                                   # Lightning Trainer arguments; +trainer.<arg> adds others
    open: ClassVar[bool] = True
    accelerator: str = MISSING
    devices: Any = MISSING
    num_nodes: int = size()
    precision: Any = MISSING
    gradient_clip_val: Optional[float] = nonneg()
    log_every_n_steps: int = size()
    enable_progress_bar: bool = MISSING
    deterministic: bool = MISSING
    max_steps: int = key(ge=-1)
    limit_train_batches: Any = MISSING
    limit_val_batches: Any = MISSING


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
    run_dir_per_job: bool = MISSING
    plan_only: bool = MISSING
    rerun: List[str] = MISSING                   # steps to rerun from scratch, with what they feed


STAGES = {"pretrain": LMStage, "sft": SFTStage, "rm": RMStage, "ppo": PPOStage, "collect": CollectStage,
          "select": SelectStage, "bestofn": BestOfNStage, "eval": EvalStage}
GROUPS = {"model": Model, "data": Data, "kl": KL, "ptx": Ptx, "trainer": Trainer}


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
        out += [f"{path}{k}: unknown key (the keys of {schema.__name__} are in rlhf/schema.py)"
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


def validate(cfg: DictConfig) -> DictConfig:
    """Check every range, key and path of a composed config; raise :class:`ConfigError` naming
    every bad key. Interpolations are resolved, so a broken one is named here too."""
    problems = _problems(cfg, OmegaConf.get_type(cfg) if dataclasses.is_dataclass(OmegaConf.get_type(cfg)) else Train, "")
    stage = cfg.get("stage")
    if stage is not None and dataclasses.is_dataclass(OmegaConf.get_type(stage)) is False:
        problems.append("stage: has no schema (a stage option must extend /schema/stage/<kind>)")
    if stage is not None and stage.get("kind") == "ppo" and stage.minibatch_size and stage.batch_size % stage.minibatch_size:
        problems.append(f"stage.batch_size={stage.batch_size}: must be a multiple of stage.minibatch_size={stage.minibatch_size}")
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
