"""One dataclass per config group option: each key's type, range and meaning (the values and
why they are what they are live in the YAML files that extend these)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import MISSING

from rlhf.schema.fields import fraction, key, nonneg, positive, size


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
    save_every_n_steps: Optional[int] = size()   # last.ckpt every N optimizer steps (PPO: iterations); null: off
    save_every_minutes: Optional[float] = positive()  # and after this much wall time; null: off (epoch ends, signals: always)


@dataclass
class LMStage(TrainedStage):
    data_kind: str = key(choices=("text", "demonstration"))
    train_data: str = MISSING                    # keys of data.files
    val_data: str = MISSING
    dropout: float = fraction()
    export_every_epoch: bool = MISSING           # epochs/epoch_N/ after every epoch
    pack: bool = MISSING                         # pack each batch's examples into full rows (sdpa/eager)
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
    shared_prompt: bool = MISSING                # one row per prompt and its K completions (sdpa/eager)
    optim: LMOptim = MISSING


@dataclass
class PPOAlarms:                                 # thresholds of rlhf.eval.alarms
    window: int = size()                         # iterations the KL rate and the length are averaged over
    kl_per_iteration: float = positive()         # nats of KL growth per iteration that warn
    entropy_fraction: float = fraction()         # entropy below this share of its start warns
    length_factor: float = key(ge=1)             # mean length outside [start / f, start * f] warns


@dataclass
class PPOStage(TrainedStage):
    reward_model: Optional[str] = MISSING        # an RM final/ (required to run)
    reference: Optional[str] = None              # the KL's reference policy; null: init
    ensemble: List[str] = field(default_factory=list)  # more RM final/ dirs: an ensemble with reward_model
    ensemble_coef: float = nonneg()              # ensemble reward: members' mean - ensemble_coef x their spread
    prompts: str = MISSING                       # data.files key of the RL prompts
    iterations: Optional[int] = size()           # null: until trainer.max_steps
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
    critic_warmup_iterations: int = nonneg()     # first N iterations train the value model only
    eval_every: int = nonneg()                   # judge's validation win rate every N iterations; 0: never
    eval_prompts: str = MISSING                  # data.files key of the validation prompts
    max_eval_prompts: int = size()
    export_pick: str = key(choices=("best", "last"))  # rlhf.eval.selection: the judge's best candidate, or the end
    kl_budget: Optional[float] = positive()      # without a judge: best RM score within this KL to SFT
    alarms: PPOAlarms = MISSING
    log_samples_every: int = nonneg()            # 0: never
    log_samples: int = nonneg()
    optim: PPOOptim = MISSING
    trainer: Dict[str, Any] = MISSING            # Trainer arguments the stage fixes


@dataclass
class CollectStage(Stage):
    train_prompts: str = MISSING                 # data.files keys
    val_prompts: str = MISSING
    max_train_prompts: Optional[int] = size(None)  # null: all
    max_val_prompts: int = size()
    earlier: Optional[str] = None                # an earlier round's comparisons_train.jsonl, kept first
    num_samples: int = key(ge=2, le=9)           # K, the paper's 4..9; the comparisons format allows 2..9
    temperature: float = positive()


@dataclass
class RMSamplingStage(Stage):                    # samples the policy on prompts and scores them with an RM
    reward_model: Optional[str] = MISSING        # an RM final/ (the pipeline sets it)
    prompts: str = MISSING                       # data.files key
    max_prompts: int = size()
    temperature: float = positive()


@dataclass
class SelectStage(RMSamplingStage):
    samples_per_prompt: int = size()


@dataclass
class BestOfNStage(RMSamplingStage):
    n: int = key(ge=2)


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
    best_of_n: int = nonneg()                    # the reference's best of n by the RM as a baseline; 0: off
    temperature: float = positive()


# ---------------------------------------------------------------- the other groups
@dataclass
class Lora:                                      # peft LoraConfig arguments (rlhf.models.lora)
    r: int = nonneg(0)                           # adapter rank; 0: off (full fine-tuning); model.lora.r=16: on
    alpha: float = positive(32)                  # the adapter's output is scaled by alpha / r (Hu et al. 2021)
    dropout: float = fraction(0.05)              # on the adapter's input in SFT and RM (PPO: 0, like all dropout in RL)
    target_modules: Any = "all-linear"           # a list of module names, or every linear layer but the output head


@dataclass
class Model:
    name: str = MISSING
    pretrained: Optional[str] = MISSING          # hub id or local dir; null: `arch` from scratch
    vocab_size: Optional[int] = size()           # BPE size (from-scratch presets)
    pretrain_lr: float = positive()              # peak lr of stage=pretrain
    arch: Optional[Dict[str, Any]] = MISSING     # transformers config arguments
    lora: Lora = field(default_factory=Lora)     # LoRA adapters in SFT, RM and PPO (off unless lora.r > 0)


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
    files: Dict[str, Any] = MISSING              # key -> JSONL path, or a dataset: path/hub id or {path, split, subset, columns}
    columns: Dict[str, str] = field(default_factory=dict)  # record key -> dataset column, for every file
    dataset: Optional[Dict[str, Any]] = None     # data=dataset: one dataset's splits feed every files key
    drop_invalid: bool = False                   # skip records that break the schema (logged, counted) instead of stopping


@dataclass
class KL:
    controller: str = key(choices=("fixed", "adaptive"))
    coef: float = nonneg()                       # beta
    target: Optional[float] = positive(None)     # adaptive: target KL per response, nats
    target_best_of_n: Optional[int] = key(None, ge=2)  # adaptive, target null: best-of-n's KL, log n - (n-1)/n
    horizon: Optional[int] = size(None)          # adaptive: episodes


@dataclass
class Ptx:
    coef: float = nonneg()                       # the paper's gamma (PPO-ptx); 0: plain PPO
    examples_per_episode: int = nonneg()
    data: str = MISSING                          # data.files key of the pretraining texts
    pack: bool = MISSING                         # pack each optimizer step's texts into full rows


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


STAGES = {"pretrain": LMStage, "sft": SFTStage, "rm": RMStage, "ppo": PPOStage, "collect": CollectStage,
          "select": SelectStage, "bestofn": BestOfNStage, "eval": EvalStage}
GROUPS = {"model": Model, "data": Data, "kl": KL, "ptx": Ptx, "trainer": Trainer}
