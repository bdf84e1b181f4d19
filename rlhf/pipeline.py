"""``rlhf-pipeline``: InstructGPT end to end in one run directory.

pretrain (from-scratch presets only) -> SFT -> collect comparisons on the SFT policy's
samples -> RM -> PPO / PPO-ptx -> evaluation. Each step is one ``rlhf-train`` stage composed
from the same config plus the step's overrides; a step whose ``final/`` exists is skipped,
so a stopped pipeline continues where it stopped (``force=true`` reruns everything).

    rlhf-pipeline experiment=quickstart
    rlhf-pipeline model=gpt2 data=files data.files.sft_train=... +steps.sft.stage.epochs=2
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rlhf.train import CONF_DIR, train

log = logging.getLogger(__name__)


def step_config(cfg: DictConfig, overrides: list[str], step: str, stage: str, **wiring) -> DictConfig:
    """The train config of one step: the user's overrides, then ``steps.<step>``, then the wiring."""
    step_cfg = compose("pipeline", overrides=[*overrides, f"stage={stage}"])
    step_cfg = OmegaConf.merge(step_cfg, cfg.steps.get(step) or {})
    for key, value in wiring.items():
        OmegaConf.update(step_cfg, key, value, force_add=True)
    return step_cfg


def final(cfg: DictConfig, stage_name: str) -> str:
    return str(Path(cfg.run_dir) / stage_name / "final")


def run_pipeline(cfg: DictConfig, overrides: list[str]) -> dict:
    """Run ``cfg.run_order``; return {step: metrics}. Must run inside an initialised Hydra."""
    results, base = {}, cfg.get("init") or cfg.model.get("pretrained")
    for step in cfg.run_order:
        if step == "pretrain":
            if base:
                log.info("pretrain skipped: starting from %s", base)
                continue
            results[step], _ = train(step_config(cfg, overrides, step, "pretrain"))
            base = final(cfg, "pretrain")
        elif step == "sft":
            results[step], _ = train(step_config(cfg, overrides, step, "sft", init=base))
        elif step == "collect":
            results[step], _ = train(step_config(cfg, overrides, step, "collect", init=final(cfg, "sft")))
        else:
            raise ValueError(f"unknown pipeline step {step!r} in run_order; known: pretrain, sft, collect")
        log.info("step %s: %s", step, {k: round(v, 4) for k, v in results[step].items()})
    return results


@hydra.main(config_path=CONF_DIR, config_name="pipeline", version_base=None)
def main(cfg: DictConfig) -> None:
    overrides = [o for o in HydraConfig.get().overrides.task]
    results = run_pipeline(cfg, overrides)
    print(OmegaConf.to_yaml(OmegaConf.create(results)))


if __name__ == "__main__":
    main()
