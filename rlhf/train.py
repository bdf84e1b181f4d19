"""``rlhf-train``: run one stage (pretrain, sft, ...) from the composed Hydra config.

    rlhf-train stage=sft model=small init=outputs/quick/pretrain/final stage.epochs=4
    rlhf-train --cfg job            # print the composed config
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import signal
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from rlhf.checkpoint import (DirectCheckpointIO, NonFiniteError, ResumeCheckpoint, check_finite, check_readable,
                             last_checkpoint)
from rlhf.distributed import build_strategy, gather_for_export
from rlhf.models.dirs import check_model_dirs
from rlhf.handoff import (RUN_STATE, is_finished, partial_path, provenance, publish, read_provenance, remove,
                          save_config, stage_dir)
from rlhf.plan import config_changes
from rlhf.schema import ConfigError, register, validate

log = logging.getLogger(__name__)
# keys a run may resume with a new value of: they say only where it stops. A PPO run that goes on to
# iteration N is the run its config would make from scratch (its prompts, seeds and schedules are
# functions of the iteration, not of the end; its last step is checkpointed as mid-epoch); an LM or
# RM stage's cosine schedule spans its end. stage.iterations ends Lightning's epoch: not extendable.
EXTENDABLE = {"ppo": ("trainer.max_steps",)}
REPLACED = "final.replaced"  # a forced run keeps the old final/ here until its own is in place
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
    ckpt = ResumeCheckpoint(sdir, cfg.stage.name, cfg.stage.get("save_every_n_steps"), cfg.stage.get("save_every_minutes"))
    # last: an epoch's exports (epochs/epoch_N) are on disk before the checkpoint that skips past them
    callbacks = [*callbacks, *([LearningRateMonitor("step")] if loggers else []), ckpt]
    return pl.Trainer(default_root_dir=str(sdir), max_epochs=cfg.stage.epochs, strategy=strategy,
                      logger=loggers, callbacks=callbacks, enable_checkpointing=False,
                      plugins=[DirectCheckpointIO()], **kwargs)


def start_or_resume(cfg: DictConfig, sdir: Path, partial: list[Path]) -> Path | None:
    """What this run continues from: ``last.ckpt`` (or a stage's own partial files, ``partial``)
    when ``resume`` and not ``force``, after checking that the config that made them matches this
    one in every key that changes the result; otherwise everything an earlier run left is removed,
    so nothing of it feeds this run. Returns the checkpoint to resume from, if any."""
    ckpt = last_checkpoint(sdir)
    if (ckpt or partial) and cfg.resume and not cfg.force:
        changes = config_changes(cfg, ignore=EXTENDABLE.get(cfg.stage.kind, ()))
        if changes:
            raise ConfigError(f"stage {cfg.stage.name} in {sdir} was started with another config and would resume "
                              f"from {ckpt or partial[0]}: {'; '.join(changes)}. Rerun with the config it was started "
                              "with to resume, resume=false to train it from scratch, or another run_name")
        step, end = check_readable(ckpt) if ckpt else None, last_step(cfg)
        if step is not None and end is not None and step > end:
            raise ConfigError(f"{ckpt} is at step {step}, past this config's end ({end}): resume=false trains "
                              "from scratch to that end, or use another run_name")
        if ckpt:
            log.info("resuming %s from %s", cfg.stage.name, ckpt)
        return ckpt
    left = [p for p in [*(sdir / name for name in RUN_STATE), *partial] if p.exists()]
    if rank_zero_only.rank == 0 and left:  # every rank decides the same; one removes
        log.info("%s starts from scratch (%s): removing %s", cfg.stage.name,
                 "force=true" if cfg.force else "resume=false" if not cfg.resume else "nothing to resume",
                 ", ".join(p.name for p in left))
        for p in left:
            remove(p)
    if rank_zero_only.rank == 0 and cfg.force and (sdir / "final").exists():
        # aside, not gone, until the new one is in place; without final/ a killed forced run is not finished
        remove(sdir / REPLACED)
        os.replace(sdir / "final", sdir / REPLACED)
        log.info("force=true: the finished %s is kept in %s until this run replaces it", cfg.stage.name, sdir / REPLACED)
    return None


def last_step(cfg: DictConfig) -> int | None:
    """Where a PPO run stops (``trainer.max_steps`` or ``stage.iterations``); None: by epochs."""
    ends = [n for n in (cfg.trainer.max_steps, cfg.stage.get("iterations")) if n is not None and n > 0]
    return min(ends) if ends and cfg.stage.kind == "ppo" else None


def check_metrics(trainer: pl.Trainer, stage: str, metrics: dict) -> None:
    """Raise on every rank when any rank's final metrics hold a NaN or inf."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
        raise NonFiniteError(f"stage {stage} finished with metrics that are not finite: "
                             f"{', '.join(f'{k}={v}' for k, v in sorted(bad.items())) or 'on another rank'}; "
                             "nothing was exported")


def train(cfg: DictConfig, callbacks: list | None = None) -> tuple[dict, dict]:
    """Run ``cfg.stage`` and write its ``final/``; return (metrics, objects).

    A stage whose ``final/`` exists is skipped unless ``force=true`` (which trains it from
    scratch); otherwise it resumes from ``checkpoints/last.ckpt`` if the config matches
    (:func:`start_or_resume`). ``final/`` is assembled beside the stage directory's and moved in
    whole, and only from finite weights and metrics.
    """
    validate(cfg)
    sdir = stage_dir(cfg)
    if is_finished(sdir) and not cfg.force:
        changes = config_changes(cfg)
        if changes:
            raise ConfigError(f"stage {cfg.stage.name} in {sdir} finished with another config: {'; '.join(changes)}. "
                              "force=true trains it again from scratch; or use another run_name")
        log.info("stage %s already finished in %s (force=true reruns it)", cfg.stage.name, sdir)
        return read_provenance(sdir / "final")["metrics"], {}
    check_model_dirs(cfg)  # a missing or wrong model directory fails before anything loads
    stage = importlib.import_module(f"rlhf.stages.{cfg.stage.kind}")
    ckpt = start_or_resume(cfg, sdir, getattr(stage, "partial_state", lambda _: [])(sdir))
    if rank_zero_only.rank == 0:
        save_config(cfg, sdir)
    pl.seed_everything(cfg.seed, workers=True)
    if hasattr(stage, "run"):  # stages without a training loop (collect, eval)
        save_config(cfg, sdir / "final")  # before the rlhf.json that marks it finished
        metrics = stage.run(cfg, sdir)
        remove(sdir / REPLACED)
        return metrics, {}
    module, datamodule, tok, stage_callbacks = stage.setup(cfg, sdir)
    trainer = build_trainer(cfg, sdir, [*stage_callbacks, *(callbacks or [])])
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    except SIGTERMException:  # Lightning's own stop on SIGTERM exits 0: the stage is not finished
        raise SystemExit(128 + signal.SIGTERM) from None
    saved = next(c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)).metrics
    metrics = {**saved, **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
    check_finite(trainer, cfg.stage.name)
    check_metrics(trainer, cfg.stage.name, metrics)
    gather_for_export(trainer, module)  # sharded strategies: whole models on rank 0 (every rank takes part)
    if trainer.is_global_zero:
        counts = {s: vars(c) for s, c in getattr(datamodule, "counts", {}).items()}
        tmp = partial_path(sdir / "final")
        remove(tmp)
        stage.export(module, tok, tmp, provenance(cfg, metrics, data_counts=counts))
        save_config(cfg, tmp)
        publish(tmp, sdir / "final")
        remove(sdir / REPLACED)
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
