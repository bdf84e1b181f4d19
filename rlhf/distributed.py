"""Sharded training: the strategies behind ``strategy=fsdp`` / ``fsdp2`` and the hooks stages call.

Every model is sharded per transformer block: the classes an HF model names in
``_no_split_modules`` (``LlamaDecoderLayer``, ``GPT2Block``, ...), then what is left of the model.

* ``strategy=fsdp2`` (:class:`FSDP2Strategy`): Lightning's ``ModelParallelStrategy`` with
  ``tensor_parallel_size=1``, so every process is one data-parallel shard, and torch's
  ``fully_shard`` (FSDP2) applied by each LightningModule's ``configure_model`` through
  :func:`shard`. Runs on GPUs (NCCL) and on CPUs (gloo): the tests run it with 2 CPU processes.
* ``strategy=fsdp`` (:class:`FSDPStrategy`): Lightning's ``FSDPStrategy`` (torch FSDP1, GPUs
  only; SFT and RM) wrapping the whole LightningModule, with one unit per block of the models it
  holds.

Sharded weights are gathered where a stage needs whole models: once per PPO rollout for
generation (:func:`gathered`, FSDP2), and for HF exports (:func:`full_model`, :func:`gather_for_export`).
"""
from __future__ import annotations

from contextlib import contextmanager

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1
from torch.distributed.tensor import DTensor
from torch.optim.swa_utils import AveragedModel
from transformers import PreTrainedModel

from rlhf.models.lora import View, copy_adapters, has_adapters

BF16 = ("bf16-mixed", "bf16-true", "bf16")
# FSDP1 / Lightning prefixes in module names; plain models have none
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def build_strategy(cfg: DictConfig):
    """The Lightning strategy of ``cfg.strategy`` (a name, or a ``_target_`` to instantiate).

    PPO-ptx under DDP: the ptx backward reaches the policy only, so DDP must be told that the
    value model's parameters may go unused (else it waits for their gradients and fails).
    """
    if "_target_" not in cfg.strategy:
        return cfg.strategy.name
    extra = {}
    if "find_unused_parameters" in cfg.strategy and cfg.stage.kind == "ppo" and cfg.ptx.coef > 0:
        extra["find_unused_parameters"] = True
    strategy = instantiate(cfg.strategy, **extra)
    if isinstance(strategy, FSDPStrategy) and cfg.stage.kind == "ppo":
        raise ValueError("strategy=fsdp (torch FSDP1) cannot run PPO: PPO steps its optimizers inside "
                         "training_step, which FSDP1 runs inside the forward of its root unit. Use "
                         "strategy=fsdp2, which shards all five PPO models the same way")
    if isinstance(strategy, FSDP2Strategy) and strategy._save_distributed_checkpoint and cfg.stage.kind == "ppo":
        raise ValueError("PPO under strategy=fsdp2 needs strategy.save_distributed_checkpoint=false: its "
                         "checkpoints leave out the frozen models, and a sharded checkpoint loads only with every key")
    return strategy


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF model: instances of its ``_no_split_modules`` classes."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def block_classes(module: nn.Module) -> set[type]:
    """Block classes of every HF model inside ``module`` (a LightningModule holds 1 to 5)."""
    return {type(b) for m in module.modules() if isinstance(m, PreTrainedModel) for b in blocks(m)}


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as pure FSDP2: data parallel over every process, no tensor parallel.

    activation_checkpointing: recompute each block's activations in backward (trainable models).
    The models themselves are sharded by :func:`shard`, which reads these settings.
    """

    def __init__(self, activation_checkpointing: bool = False, reshard_after_forward: bool = True, **kwargs):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # "auto" would be num_nodes
        super().setup_environment()

    def mp_policy(self, precision: str) -> MixedPrecisionPolicy:
        """bf16 weights for compute and all-gathers, fp32 gradient reduction; fp32 otherwise."""
        if str(precision) in BF16:
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's FSDP1 strategy (GPUs only) wrapping each transformer block in its own FSDP unit.

    The block classes come from the LightningModule's models, so one config fits every model.
    activation_checkpointing: HF's per-block checkpointing in the trainable models (torch's
    checkpoint_wrapper, Lightning's own option, breaks the recompute of HF's decoder layers).
    bf16 precision: bf16 parameters for compute, fp32 gradient reduction and buffers.
    """

    def __init__(self, activation_checkpointing: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.activation_checkpointing = activation_checkpointing

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import MixedPrecision
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        self.kwargs.setdefault("auto_wrap_policy", ModuleWrapPolicy(block_classes(self.lightning_module)))
        if self.activation_checkpointing:
            for m in trainable_models(self.lightning_module):
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.mixed_precision is None and str(self.precision_plugin.precision) in BF16:
            self.mixed_precision = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                  buffer_dtype=torch.float32)
        return super()._setup_model(model)


def trainable_models(module: nn.Module) -> list[PreTrainedModel]:
    return [m for m in module.children() if isinstance(m, PreTrainedModel) and any(p.requires_grad for p in m.parameters())]


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """torch's ``clip_grad_norm_`` over ``model`` (inf: only measure); the norm before, as a plain
    tensor (FSDP2's DTensor gradients give a replicated DTensor norm)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def clip_gradients(module: pl.LightningModule, optimizer, clip_val, algorithm) -> None:
    """``configure_gradient_clipping`` that also works under ``strategy=fsdp``: Lightning's FSDP
    precision plugin refuses norm clipping, FSDP1 clips through its root module."""
    root = module.trainer.strategy.model
    if isinstance(root, FSDP1) and clip_val and algorithm in (None, "norm"):
        root.clip_grad_norm_(clip_val)
    else:
        module.clip_gradients(optimizer, clip_val, algorithm)


def shard(module: pl.LightningModule, *models: nn.Module, trainable: bool = True) -> None:
    """``configure_model`` hook: under :class:`FSDP2Strategy`, :func:`shard_model` each model; else nothing.

    ``trainable``: the models run backward, so activation checkpointing applies if the strategy asks.
    """
    strategy = module.trainer.strategy
    if not isinstance(strategy, FSDP2Strategy):
        return
    for model in models:
        if not is_sharded(model):  # configure_model runs again in a later fit/validate of the same module
            shard_model(model, module.device_mesh["data_parallel"], strategy.mp_policy(module.trainer.precision),
                        strategy.reshard_after_forward, trainable and strategy.activation_checkpointing)


def shard_model(model: PreTrainedModel, mesh, mp_policy: MixedPrecisionPolicy | None = None,
                reshard_after_forward: bool = True, activation_checkpointing: bool = False) -> None:
    """FSDP2 ``fully_shard`` every transformer block, then the rest of the model.

    Sequence classifiers (RM, value) are run as backbone + head (``rlhf.models.reward``), so those
    two are separate units; a causal LM is one unit, which keeps tied embeddings together.
    """
    opts = dict(mesh=mesh, mp_policy=mp_policy or MixedPrecisionPolicy(),
                reshard_after_forward=None if reshard_after_forward else False)  # None: FSDP2's default,
    # blocks reshard after forward, the root keeps its weights for the backward that follows
    if activation_checkpointing:  # HF checkpoints inside each block's forward, FSDP2's hooks stay outside
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for block in blocks(model):
        fully_shard(block, **opts)
    if type(model).__name__.endswith("ForSequenceClassification"):
        for unit in (model.base_model, *(c for c in model.children() if c is not model.base_model)):
            fully_shard(unit, **opts)
    else:
        fully_shard(model, **opts)


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(m, (FSDPModule, FSDP1)) for m in model.modules())


@contextmanager
def gathered(model: nn.Module):
    """Whole weights for many forward passes in a row (generation), gathered once, resharded on exit.

    Without it, generating from an FSDP2-sharded model all-gathers every block at every token (TRL
    issue 1726): here every unit is ``unshard()``-ed and kept unsharded after each forward. The
    model generates in eval mode; with dropout 0 (RL) the only change is that HF keeps the KV cache,
    which it turns off in a training-mode model with gradient checkpointing. Unsharded: eval mode only.
    """
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    was_training = model.training
    model.eval()
    # FSDP2 internals: a parameter group reshards after forward unless post_forward_mesh_info is None.
    # Lazy init (normally at the first forward) first: it sets the roots' value, kept on exit.
    for top in [u for u in units if not any(u is not v and u in v.modules() for v in units)]:
        top._get_fsdp_state()._lazy_init()
    groups = [(g, g.post_forward_mesh_info) for u in units for g in u._get_fsdp_state()._fsdp_param_groups]
    try:
        for g, _ in groups:
            g.post_forward_mesh_info = None
        for u in units:
            u.unshard()
        yield model
    finally:
        for g, info in groups:
            g.post_forward_mesh_info = info
        for u in units:
            u.reshard()
        model.train(was_training)


def _full_state_dict(trainer: pl.Trainer, model: nn.Module) -> dict:
    """Every rank calls; rank 0 gets the full state dict of ``model`` (GPUs: on the CPU, and only rank 0)."""
    root = trainer.strategy.model
    opts = StateDictOptions(full_state_dict=True, cpu_offload=trainer.strategy.root_device.type != "cpu")
    if isinstance(root, FSDP1):  # Lightning's FSDPStrategy wraps the whole LightningModule
        prefix = next(n for n, m in trainer.lightning_module.named_modules() if m is model) + "."
        return {k[len(prefix):]: v for k, v in get_model_state_dict(root, options=opts).items()
                if k.startswith(prefix)}
    return get_model_state_dict(model, options=opts)


def _plain_copy(model: PreTrainedModel, state_dict: dict) -> PreTrainedModel:
    """An unsharded model of ``model``'s class and config holding ``state_dict`` (on CPU)."""
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # FSDP2 renamed it FSDP<cls>
    with torch.device("meta"):
        copy = cls(model.config)
        if has_adapters(model):  # LoRA: the same adapters, so its state dict loads
            copy = copy_adapters(model, copy)
    copy.load_state_dict(state_dict, strict=True, assign=True)
    buffers = {_clean(n): b for n, b in model.named_buffers()}  # not sharded; non-persistent ones (rotary)
    for name, buf in list(copy.named_buffers()):          # are not in the state dict
        if buf.is_meta:
            owner, _, attr = name.rpartition(".")
            src = buffers[name]
            copy.get_submodule(owner).register_buffer(
                attr, src.detach().to("cpu", torch.float32 if src.is_floating_point() else src.dtype), persistent=False)
    copy.tie_weights()
    if getattr(model, "generation_config", None) is not None:  # causal LMs only
        copy.generation_config = model.generation_config
    return copy.train(model.training)


def _clean(name: str) -> str:
    for p in WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def full_model(trainer: pl.Trainer, model: nn.Module) -> nn.Module | None:
    """``model`` itself when it is not sharded; else (every rank calls) a plain full copy on rank 0, None elsewhere
    (of a LoRA :class:`View`, the same view of the plain copy)."""
    if not is_sharded(trainer.strategy.model):
        return model
    if isinstance(model, View):
        whole = full_model(trainer, model.model)
        return View(whole, model.adapter) if whole is not None else None
    state = _full_state_dict(trainer, model)
    return _plain_copy(model, state) if trainer.is_global_zero else None


def gather_for_export(trainer: pl.Trainer, module: pl.LightningModule) -> None:
    """After fit, every rank calls: on rank 0, each sharded model an export may read (trainable
    models, EMA copies) becomes a plain full copy, so ``stage.export`` runs unchanged. Frozen
    models (PPO's reference and RM) are skipped: their weights are on disk already."""
    if not is_sharded(trainer.strategy.model):
        return
    for name, child in list(module.named_children()):
        if isinstance(child, AveragedModel):  # the EMA of the policy (frozen, but exported)
            owner, attr, model = child, "module", child.module
        elif isinstance(child, PreTrainedModel) and any(p.requires_grad for p in child.parameters()):
            owner, attr, model = module, name, child
        else:
            continue
        copy = full_model(trainer, model)
        if trainer.is_global_zero:
            setattr(owner, attr, copy)
