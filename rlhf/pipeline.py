"""``rlhf-pipeline``: InstructGPT end to end in one run directory.

pretrain (from-scratch presets only) -> SFT -> collect comparisons on the SFT policy's samples
-> RM -> select the SFT epoch by RM score -> best-of-n check -> PPO, PPO-ptx and PPO with a
larger beta -> evaluation -> report. Each step is one ``rlhf-train`` stage composed from the same
config, then ``steps.<step>`` merged over it, then the paths of earlier steps wired in. A step
whose ``final/`` exists is skipped, so a stopped pipeline continues where it stopped.

    rlhf-pipeline experiment=quickstart
    rlhf-pipeline model=gpt2 data=files data.files.sft_train=... +steps.sft.stage.epochs=2
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rlhf.train import CONF_DIR, train, use_job_dir_in_multirun

log = logging.getLogger(__name__)

# step -> (stage option, Hydra overrides the step always needs)
STEPS = {
    "pretrain": ("pretrain", []), "sft": ("sft", []), "collect": ("collect", []), "rm": ("rm", []),
    "select": ("select", []), "bestofn": ("bestofn", []), "ppo": ("ppo", ["ptx=off"]),
    "ppo_ptx": ("ppo", ["ptx=paper", "stage.name=ppo_ptx"]),
    "ppo_beta": ("ppo", ["ptx=off", "stage.name=ppo_beta"]), "eval": ("eval", []), "report": (None, []),
}
PPO_STEPS = ("ppo", "ppo_ptx", "ppo_beta")


def step_config(cfg: DictConfig, overrides: list[str], step: str, wiring: dict) -> DictConfig:
    """One step's train config: user overrides, the step's needs, ``steps.<step>``, wiring."""
    stage, needs = STEPS[step]
    step_cfg = compose("pipeline", overrides=[*overrides, f"stage={stage}", *needs])
    step_cfg = OmegaConf.merge(step_cfg, cfg.steps.get(step) or {})
    for key, value in wiring.items():
        OmegaConf.update(step_cfg, key, value, force_add=True)
    return step_cfg


def run_pipeline(cfg: DictConfig, overrides: list[str]) -> dict:
    """Run ``cfg.run_order``; return {step: metrics}. Must run inside an initialised Hydra."""
    run = Path(cfg.run_dir)

    def fin(stage_name: str) -> str:
        return str(run / stage_name / "final")

    base = cfg.get("init") or cfg.model.get("pretrained")
    policy, results = fin("sft"), {}
    for step in cfg.run_order:
        if step not in STEPS:
            raise ValueError(f"unknown pipeline step {step!r} in run_order; known: {', '.join(STEPS)}")
        if step == "report":
            from rlhf.eval.report import build_report
            log.info("report: %s", build_report(run))
            continue
        if step == "pretrain" and base:
            log.info("pretrain skipped: starting from %s", base)
            continue
        wiring = {
            "pretrain": {}, "sft": {"init": base}, "collect": {"init": fin("sft")}, "rm": {"init": fin("sft")},
            "select": {"init": fin("sft"), "stage.reward_model": fin("rm")},
            "bestofn": {"init": policy, "stage.reward_model": fin("rm")},
            "eval": {"stage.models.base": base, "stage.models.sft": policy, "stage.reward_model": fin("rm"),
                     **{f"stage.models.{s}": fin(s) for s in PPO_STEPS if s in cfg.run_order}},
        }.get(step, {"init": policy, "stage.reward_model": fin("rm"),  # the PPO steps
                     **({} if step == "ppo_ptx" else {"ptx.coef": 0.0})})  # a global ptx.coef= is ppo_ptx's
        results[step], _ = train(step_config(cfg, overrides, step, wiring))
        if step == "pretrain":
            base = fin("pretrain")
        if step == "bestofn":  # said again when skipped, so a resumed run shows it too
            info = json.loads((run / "bestofn" / "final" / "rlhf.json").read_text())
            (log.info if info["metrics"].get("rm_helps") else log.warning)("best-of-n check: %s", info["verdict"])
        if step == "select":  # PPO starts from (and is penalised towards) the chosen SFT epoch
            policy = json.loads((run / "select" / "final" / "rlhf.json").read_text())["selected"]
        log.info("step %s: %s", step, {k: float(f"{v:.4g}") for k, v in results[step].items()})
    return results


@hydra.main(config_path=CONF_DIR, config_name="pipeline", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Runs the pipeline; returns ``objective`` (``<step>/<metric>``), what Hydra sweepers optimise."""
    overrides = list(HydraConfig.get().overrides.task)
    # A multirun's jobs must not share (and skip) each other's steps: each runs in its own job dir,
    # unless the sweep gives every job its own run_name (experiment=paper_sizes: run_dir_per_job=false).
    if cfg.get("run_dir_per_job", True):
        use_job_dir_in_multirun(cfg, "run_dir")
        overrides.append(f"run_dir={cfg.run_dir}")
    results = run_pipeline(cfg, overrides)
    print(OmegaConf.to_yaml(OmegaConf.create(results)))
    step, _, metric = cfg.objective.partition("/")
    if metric not in results.get(step, {}):
        log.warning("objective=%s: step %s has no metric %s; this run returns None", cfg.objective, step, metric)
    return results.get(step, {}).get(metric)


if __name__ == "__main__":
    main()
