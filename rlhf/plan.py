"""A pipeline plan's steps, and whether a finished step's recorded config still matches.

A finished step (its ``final/rlhf.json`` exists) is skipped only when every key that changes its
result has the value it was run with (``<stage dir>/config.yaml``); keys that only change how a
run is watched or saved are not compared, and a stage is compared only on what it reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from rlhf.handoff import is_finished, stage_dir

# top-level keys a stage kind's result depends on (an eval does not read `model`, SFT not `kl`)
READS = {
    "lm": ("stage", "model", "data", "trainer", "init", "seed"),
    "rm": ("stage", "model", "data", "trainer", "init", "seed"),
    "ppo": ("stage", "model", "data", "trainer", "init", "seed", "kl", "ptx", "judge"),  # judge: the export pick
    "collect": ("stage", "data", "init", "seed", "labeler"),
    "select": ("stage", "data", "init", "seed"),
    "bestofn": ("stage", "data", "init", "seed", "judge"),
    "eval": ("stage", "data", "seed", "judge"),
}
# how a run is watched or saved, not what it computes
# (model.pretrain_lr reaches a result only as pretrain's stage.optim.lr, which is compared)
NOT_RESULTS = ("trainer.enable_progress_bar", "trainer.log_every_n_steps", "stage.save_every_n_steps",
               "stage.save_every_minutes",
               "stage.log_samples", "stage.log_samples_every", "data.dir", "data.files", "data.name",
               "model.pretrain_lr",
               "stage.shared_prompt", "stage.pack", "ptx.pack",  # layouts: the same result to float tolerance
               "stage.alarms",  # PPO's monitor (its eval_every and prompts pick the exported checkpoint)
               "labeler.retries", "labeler.retry_wait", "judge.retries", "judge.retry_wait")  # how often a call is retried


class PlannedStep(NamedTuple):
    name: str
    config: DictConfig | None        # the rlhf-train config it runs (None: nothing to train)
    status: str                      # run | skip | rerun | changed
    why: str
    stage: str | None = None         # conf/stage option
    late: tuple[str, ...] = ()       # keys set to the SFT epoch select picks, once it has run


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def result_keys(cfg: DictConfig | dict) -> dict:
    """The flattened keys of ``cfg`` that change its stage's result, resolved."""
    c = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    st = c["stage"]
    named = {v for v in _flat(st).values() for v in (v if isinstance(v, list) else [v]) if isinstance(v, str)}
    named |= {c["ptx"]["data"]} if st["kind"] == "ppo" and c["ptx"]["coef"] else set()
    named |= {"pretrain_train"} if st.get("pretrain_mix") else set()
    named |= {"sft_train"} if st["kind"] == "eval" and st["prompted"] else set()  # the few-shot demonstrations
    files = {f"data.files.{k}": v for k, v in c["data"]["files"].items() if k in named}
    flat = _flat({k: c.get(k) for k in READS[st["kind"]]})
    flat = {k: v for k, v in flat.items() if not k.startswith(NOT_RESULTS)} | files
    # paths inside the run compare relative to it, so a copied or moved run directory still matches
    run = [str(Path(c["run_dir"]).resolve()), c["run_dir"]]
    return {k: _relative(v, run) for k, v in flat.items()}


def _relative(value, run_dirs: list[str]):
    for run in run_dirs:
        if isinstance(value, str) and (value == run or value.startswith(run + "/")):
            return "<run_dir>" + value[len(run):]
    return value


def check_finished(name: str, stage: str, cfg: DictConfig, rerun: bool, inputs_rerun: list[str]) -> PlannedStep:
    """Run, skip or rerun ``name``; ``changed`` when it is finished with another config (or on
    inputs that will be rebuilt) and the user did not ask to rerun it."""
    sdir = stage_dir(cfg)
    if not is_finished(sdir) or cfg.force:
        if rerun or inputs_rerun:  # a half-done run of it was made from what is now rebuilt: start over
            OmegaConf.update(cfg, "resume", False)
        return PlannedStep(name, cfg, "run", "forced (force=true)" if cfg.force else "not finished yet", stage)
    if rerun:
        OmegaConf.update(cfg, "force", True)
        OmegaConf.update(cfg, "resume", False)  # from scratch: the old checkpoint is of the old config
        return PlannedStep(name, cfg, "rerun", "asked for with rerun=", stage)
    if inputs_rerun:
        return PlannedStep(name, cfg, "changed", f"{name}: its inputs from {', '.join(inputs_rerun)} will change", stage)
    diff = config_changes(cfg)
    if diff:
        return PlannedStep(name, cfg, "changed", f"{name} ({sdir}): " + "; ".join(diff), stage)
    return PlannedStep(name, cfg, "skip", f"finished in {sdir} with this config", stage)


def config_changes(cfg: DictConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: recorded -> now`` for each result key (but ``ignore``) in which ``cfg`` differs from
    the config its finished stage recorded (``final/config.yaml``: what made it; else the stage
    directory's). Keys only one side has (renamed or dropped by an upgrade) are not compared."""
    sdir = stage_dir(cfg)
    record = next((p for p in (sdir / "final" / "config.yaml", sdir / "config.yaml") if p.is_file()), None)
    if record is None:
        return [f"no config.yaml recorded in {sdir}"]
    recorded = result_keys(OmegaConf.to_container(OmegaConf.load(record), resolve=True))
    return [f"{k}: {recorded[k]!r} -> {v!r}" for k, v in result_keys(cfg).items()
            if k in recorded and recorded[k] != v and k not in ignore]


def describe(steps: list[PlannedStep], configs: bool = False) -> str:
    """One line per step; with ``configs``, each step's keys that differ from its stage's defaults."""
    lines = []
    for s in steps:
        lines.append(f"  {s.name:<9} {s.status:<7} {s.why}")
        if configs and s.config is not None:
            paths = [f"{k}={s.config[k]}" for k in ("output_root", "run_name", "run_dir", "stage_dir")]
            default = _flat(OmegaConf.to_container(compose("train", overrides=[f"stage={s.stage}", *paths]), resolve=True))
            mine = _flat(OmegaConf.to_container(s.config, resolve=True))
            lines += [f"      {k}={v}" for k, v in mine.items() if default.get(k, object()) != v]
    return "\n".join(lines)
