"""LoRA adapters (Hu et al. 2021) for SFT, RM and PPO through peft's functional API (``model.lora``).

With ``model.lora.r > 0`` a stage trains a low-rank adapter on every targeted linear layer
(W x + alpha / r * B A x, with B = 0 at the start) and leaves the base weights frozen:

  SFT   the causal LM + adapter ``default``;
  RM    the backbone + adapter, and the fresh score head trained whole (peft's ``modules_to_save``);
  PPO   the policy is ``init`` + a fresh adapter, and the reference IS the policy read with its
        adapter off (:class:`View`); the value model is the RM + an adapter + a trainable copy of
        the score head, and the RM IS the value model read with adapters off (the original head).
        One base in memory for each pair. The EMA is a second adapter, ``ema`` (:class:`AdapterEMA`).

``final/`` holds the merged plain HF model (``W + alpha / r * B A`` in every adapted layer; loads
with no peft) and ``final/adapter/`` the adapter in peft's format, so
``PeftModel.from_pretrained(<the stage's init>, final/adapter)`` is the same model.
``last.ckpt`` holds the adapters (and optimizer state), not the frozen base weights: those reload
from where the stage loaded them. peft is imported where it is used: it costs ~0.5 s at start-up.
"""
from __future__ import annotations

import copy
import logging
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

log = logging.getLogger(__name__)

ADAPTER, EMA = "default", "ema"  # the trained adapter, and its moving average (PPO)


def has_adapters(model) -> bool:
    """Whether ``model`` (or the model a :class:`View` reads) carries peft adapters."""
    return bool(getattr(model, "peft_config", None))


def add_lora(model: nn.Module, lora: DictConfig) -> nn.Module:
    """``model`` with a fresh adapter ``default`` (the only trainable weights); a sequence
    classifier's score head is trained whole beside it (a copy: the original stays, adapters off)."""
    from peft import LoraConfig, inject_adapter_in_model

    from rlhf.models.reward import score_head

    head = type(model).__name__.endswith("ForSequenceClassification")
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        task_type="SEQ_CLS" if head else "CAUSAL_LM",  # SEQ_CLS: "all-linear" leaves the head out
                        modules_to_save=[n for n, m in model.named_children() if head and m is score_head(model)])
    model = inject_adapter_in_model(config, model, adapter_name=ADAPTER)  # base weights frozen, adapter trainable
    log.info("LoRA r=%d alpha=%g on %d layers: %d of %d weights train", lora.r, lora.alpha, len(_layers(model)),
             sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))
    return model


def adapt(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """What a stage trains: ``model`` with an adapter when ``model.lora.r > 0``, else ``model``.
    Pretraining trains every weight (an adapter adapts a trained model)."""
    lora = cfg.model.get("lora")
    if not lora or not lora.r:
        return model
    if cfg.stage.get("data_kind") == "text":
        log.info("model.lora: stage=%s trains every weight; LoRA applies to SFT, RM and PPO", cfg.stage.name)
        return model
    return add_lora(model, lora)


def _layers(model) -> list[nn.Module]:
    """peft's layers in ``model``: LoRA-adapted linears and ``modules_to_save`` wrappers (the score head)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


@contextmanager
def active(model: nn.Module, adapter: str | None):
    """Within the block ``model`` computes with ``adapter`` (None: with none, its base weights and
    original head); then it is as before, which adapter was on and which weights require grad
    (peft's switches set ``requires_grad``). Nests."""
    layers = _layers(model)
    grads = [(p, p.requires_grad) for p in model.parameters()]
    before = [(m, list(m.active_adapters), m.disable_adapters) for m in layers]
    try:
        for m in layers:
            if adapter is None:
                m.enable_adapters(False)
            else:
                m.enable_adapters(True)
                m.set_adapter(adapter)
        yield model
    finally:
        for m, names, disabled in before:
            m.set_adapter(names)
            m.enable_adapters(not disabled)
        for p, g in grads:
            p.requires_grad_(g)


class View:
    """``model`` computing with one of its adapters, or with none (``adapter=None``: its base).

    PPO's reference is ``View(policy)``, its RM ``View(value)`` and its exported policy
    ``View(policy, EMA)``. Not an ``nn.Module``: the weights are the model's, held, sharded and
    checkpointed once, by it. A call (``view(...)``, or a ``with view:`` block for code that calls
    parts of the model, like the RM's backbone and head) switches the model over and back; mode
    switches and ``requires_grad_`` are its owner's business and do nothing here.
    ``save_pretrained`` writes the merged plain model and the adapter beside it (:func:`save_merged`).
    """

    def __init__(self, model: nn.Module, adapter: str | None = None):
        self.model, self.adapter, self._stack = model, adapter, []

    def __call__(self, *args, **kwargs):
        with active(self.model, self.adapter):
            return self.model(*args, **kwargs)

    def __enter__(self):
        self._stack.append(active(self.model, self.adapter))
        return self._stack[-1].__enter__()

    def __exit__(self, *exc):
        return self._stack.pop().__exit__(*exc)

    def __getattr__(self, name: str):
        if name == "model":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def train(self, mode: bool = True) -> "View":
        return self

    def eval(self) -> "View":
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "View":
        return self

    def save_pretrained(self, out_dir, **kwargs) -> None:
        save_merged(self.model, Path(out_dir), self.adapter)


def viewing(*models):
    """A ``with`` block in which every :class:`View` among ``models`` computes as it views (plain
    models: nothing happens)."""
    stack = ExitStack()
    for m in models:
        if isinstance(m, View):
            stack.enter_context(m)
    return stack


def exported(model: nn.Module):
    """What a stage saves as ``final/``: a model with adapters as :class:`View` (merged when saved), else itself."""
    return View(model, ADAPTER) if has_adapters(model) else model


class AdapterEMA:
    """The EMA of ``model``'s adapter, kept in a second adapter ``ema`` of the same layers (frozen),
    updated as torch's ``AveragedModel`` with ``get_ema_multi_avg_fn`` updates whole models: the
    first update copies, later ones ``ema += (1 - decay) * (w - ema)``. The base is not copied."""

    def __init__(self, model: nn.Module, decay: float):
        from peft import inject_adapter_in_model

        inject_adapter_in_model(copy.deepcopy(model.peft_config[ADAPTER]), model, adapter_name=EMA)
        for m in _layers(model):
            m.set_adapter(ADAPTER)  # injecting made ``ema`` the active, trainable one
        for _, e in self._pairs(model):
            e.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @staticmethod
    def _pairs(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(adapter weight, its EMA) pairs, looked up by name: FSDP2 replaces parameters when it shards."""
        params = dict(model.named_parameters())
        return [(p, params[n.replace(f".{ADAPTER}.", f".{EMA}.")]) for n, p in params.items()
                if is_adapter_weight(n) and f".{ADAPTER}." in n]

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        for p, e in self._pairs(model):
            e.copy_(p) if self.updates == 0 else e.lerp_(p, 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]


def is_adapter_weight(key: str) -> bool:
    """A state-dict key of an adapter (``lora_A``, ``lora_B``) or of a head trained whole (``modules_to_save``)."""
    return ".lora_" in key or ".modules_to_save." in key


def drop_base_weights(checkpoint: dict, *prefixes: str) -> None:
    """Remove from a Lightning checkpoint the frozen base weights of the adapted models whose
    state-dict keys start with ``prefixes``: they reload from where the stage loaded them."""
    sd = checkpoint["state_dict"]
    for k in [k for k in sd if k.startswith(prefixes) and not is_adapter_weight(k)]:
        del sd[k]


def restore_base_weights(module: nn.Module, checkpoint: dict, *prefixes: str) -> None:
    """Put the base weights :func:`drop_base_weights` left out back, from ``module`` as set up (FSDP2
    has loaded the checkpoint's weights and removed its ``state_dict`` already: nothing to do)."""
    if "state_dict" in checkpoint:
        checkpoint["state_dict"].update({k: v for k, v in module.state_dict().items()
                                         if k.startswith(prefixes) and not is_adapter_weight(k)})


class AdapterCheckpoint:
    """LightningModule hooks for a stage that trains ``self.model``: under LoRA its checkpoint
    holds the adapters (and a head trained whole), and the frozen base reloads from ``init``."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if has_adapters(self.model):
            drop_base_weights(checkpoint, "model.")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if has_adapters(self.model):
            restore_base_weights(self, checkpoint, "model.")


def copy_adapters(src: nn.Module, dst: nn.Module) -> nn.Module:
    """``dst``, a fresh model of ``src``'s class (on the meta device, say), with ``src``'s adapters:
    a full state dict of ``src`` then loads into it (``rlhf.distributed`` gathers sharded models so)."""
    from peft import inject_adapter_in_model

    for name, config in src.peft_config.items():
        dst = inject_adapter_in_model(copy.deepcopy(config), dst, adapter_name=name, low_cpu_mem_usage=True)
    for m in _layers(dst):
        m.set_adapter(ADAPTER)
    return dst


def merged(model: nn.Module, adapter: str | None = ADAPTER) -> nn.Module:
    """A plain copy of ``model`` (no peft layers) that computes as ``model`` with ``adapter`` on
    (None: as its base): each adapted linear gets W + alpha / r * B A, a wrapped head its copy."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = copy.deepcopy(model)  # the model itself goes on training (PPO's candidates)
    layers = {id(m) for m in _layers(out)}
    for name, m in [(n, m) for n, m in out.named_modules() if id(m) in layers]:
        if isinstance(m, BaseTunerLayer):
            if adapter is not None:
                m.merge(adapter_names=[adapter])
            plain = m.get_base_layer()
        else:  # modules_to_save: the trained head, or the original one
            plain = m.original_module if adapter is None else m.modules_to_save[adapter]
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent), child, plain)
    del out.peft_config
    return out.requires_grad_(False)


def save_adapter(model: nn.Module, out_dir: Path, adapter: str = ADAPTER) -> None:
    """``adapter_config.json`` and ``adapter_model.safetensors`` in peft's layout (``PeftModel``
    keys: ``base_model.model.<module>.lora_A.weight``); the config names the model the adapter was
    put on (``base_model_name_or_path``: the stage's init)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = copy.deepcopy(model.peft_config[ADAPTER])  # ``ema`` has the same
    config.base_model_name_or_path = getattr(model.config, "_name_or_path", None) or None
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    state = get_peft_model_state_dict(model, adapter_name=adapter)
    save_file({f"base_model.model.{k}": v.detach().contiguous() for k, v in state.items()},
              str(out_dir / "adapter_model.safetensors"))


def save_merged(model: nn.Module, out_dir: Path, adapter: str | None = ADAPTER) -> None:
    """The merged plain HF model in ``out_dir``, and ``adapter`` (if any) in ``out_dir/adapter/``."""
    merged(model, adapter).save_pretrained(str(out_dir))
    if adapter is not None:
        save_adapter(model, out_dir / "adapter", adapter)
