"""``rlhf-train``: run one stage (pretrain, sft, ...) from the composed Hydra config.

    rlhf-train stage=sft model=small init=outputs/quick/pretrain/final stage.epochs=4
    rlhf-train --cfg job            # print the composed config
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from rlhf.distributed import build_strategy, gather_for_export
from rlhf.handoff import is_finished, last_checkpoint, provenance, read_provenance, save_config, stage_dir
from rlhf.plan import config_changes
from rlhf.schema import ConfigError, register, validate

log = logging.getLogger(__name__)
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the repo's top-level conf/
register()  # the schemas conf/ extends must be in the ConfigStore before anything composes


def auto_precision() -> str:
    """fp32 on CPU (bf16 is ~30x slower on CPUs without bf16 units), bf16 mixed on GPUs."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_trainer(cfg: DictConfig, sdir, callbacks: list) -> pl.Trainer:
    # a stage may fix trainer arguments it depends on (PPO's manual optimisation: no clipping)
    kwargs = OmegaConf.to_container(OmegaConf.merge(cfg.trainer, cfg.stage.get("trainer") or {}), resolve=True)
    if kwargs.get("precision") == "auto":
        kwargs["precision"] = auto_precision()
    strategy = build_strategy(cfg)
    loggers = [instantiate(c) for c in cfg.logger.values()] if cfg.get("logger") else False
    ckpt = ModelCheckpoint(dirpath=sdir / "checkpoints", save_last=True, save_top_k=0,
                           every_n_train_steps=cfg.stage.get("save_every_n_steps"))
    callbacks = [ckpt, *callbacks] + ([LearningRateMonitor("step")] if loggers else [])
    return pl.Trainer(default_root_dir=str(sdir), max_epochs=cfg.stage.epochs, strategy=strategy,
                      logger=loggers, callbacks=callbacks, **kwargs)


def train(cfg: DictConfig, callbacks: list | None = None) -> tuple[dict, dict]:
    """Run ``cfg.stage`` and write its ``final/``; return (metrics, objects).

    A stage whose ``final/`` exists is skipped unless ``force=true``; a stage with a
    ``checkpoints/last.ckpt`` resumes from it (``resume=false`` starts over).
    """
    validate(cfg)
    sdir = stage_dir(cfg)
    if is_finished(sdir) and not cfg.force:
        changes = config_changes(cfg)
        if changes:
            raise ConfigError(f"stage {cfg.stage.name} in {sdir} finished with another config: {'; '.join(changes)}. "
                              "force=true resume=false trains it again from scratch; or use another run_name")
        log.info("stage %s already finished in %s (force=true resume=false reruns it)", cfg.stage.name, sdir)
        return read_provenance(sdir / "final")["metrics"], {}
    save_config(cfg, sdir)
    pl.seed_everything(cfg.seed, workers=True)
    stage = importlib.import_module(f"rlhf.stages.{cfg.stage.kind}")
    if hasattr(stage, "run"):  # stages without a training loop (collect, eval)
        metrics = stage.run(cfg, sdir)
        save_config(cfg, sdir / "final")
        return metrics, {}
    module, datamodule, tok, stage_callbacks = stage.setup(cfg, sdir)
    trainer = build_trainer(cfg, sdir, [*stage_callbacks, *(callbacks or [])])
    ckpt = last_checkpoint(sdir) if cfg.resume else None
    if ckpt:
        log.info("resuming %s from %s", cfg.stage.name, ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    gather_for_export(trainer, module)  # sharded strategies: whole models on rank 0 (every rank takes part)
    if trainer.is_global_zero:
        counts = {s: vars(c) for s, c in getattr(datamodule, "counts", {}).items()}
        stage.export(module, tok, sdir / "final", provenance(cfg, metrics, data_counts=counts))
        save_config(cfg, sdir / "final")
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule, "tokenizer": tok}


def use_job_dir_in_multirun(cfg: DictConfig, key: str = "stage_dir") -> None:
    """In a multirun (``-m``), ``cfg[key]`` becomes the job's own Hydra directory
    (``hydra.sweep.dir/<job num>/``, next to ``.hydra/overrides.yaml``); otherwise every job of a
    sweep would share one directory and resume, or skip, the others' run. A requeued job keeps its
    directory, so it resumes from its own ``last.ckpt``. Single runs and ``train(cfg)`` are unchanged."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        cfg[key] = HydraConfig.get().runtime.output_dir


@hydra.main(config_path=CONF_DIR, config_name="train", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Returns ``metrics[cfg.objective]``, what Hydra sweepers (Optuna) optimise."""
    use_job_dir_in_multirun(cfg)
    metrics, _ = train(cfg)
    if cfg.objective not in metrics and HydraConfig.get().mode == RunMode.MULTIRUN:
        log.warning("objective=%s is not a metric of stage %s (it logs %s): this job returns None",
                    cfg.objective, cfg.stage.name, ", ".join(sorted(metrics)))
    return metrics.get(cfg.objective)


if __name__ == "__main__":
    main()
