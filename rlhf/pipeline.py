"""``rlhf-pipeline``: InstructGPT end to end in one run directory, as one declared plan.

pretrain (from-scratch presets only) -> SFT -> collect comparisons on the SFT policy's samples
-> RM -> select the SFT epoch by RM score -> best-of-n check -> PPO, PPO-ptx and PPO with a
larger beta -> (``rounds=N``: N-1 more rounds of collect on the current PPO-ptx policy -> RM on
every comparison so far -> PPO-ptx continued, KL still to SFT; paper §3.4-3.5) -> evaluation -> report. :data:`STEPS` says what each step runs and which earlier
output feeds which key; :func:`plan` composes and checks every step's config before the first
one runs (the wiring first, then ``steps.<step>``, so the user wins). A finished step is skipped
only if its recorded config matches the plan's; otherwise the pipeline stops and names the keys.

    rlhf-pipeline experiment=quickstart
    rlhf-pipeline experiment=quickstart plan_only=true      # print the plan, run nothing
    rlhf-pipeline model=gpt2 data=files data.files.sft_train=... +steps.sft.stage.epochs=2
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from rlhf.data.sources import check_world
from rlhf.handoff import is_finished, read_provenance, stage_dir
from rlhf.plan import PlannedStep, check_finished, describe
from rlhf.schema import ConfigError, Pipeline, Train, validate
from rlhf.train import CONF_DIR, train, use_job_dir_in_multirun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One pipeline step. ``inputs``: config key -> its source, ``"base"`` (the pretrained model),
    ``"policy"`` (the SFT epoch ``select`` chose, else SFT's final/), ``"<step>"`` (that step's
    final/) or ``"<step>/<file>"``. A ``data.files.*`` input is wired only where the config leaves
    it null, so files the user names win."""
    stage: str | None                              # conf/stage option; None: the report
    overrides: tuple[str, ...] = ()                # what the step always needs
    inputs: dict[str, str] = field(default_factory=dict)
    optional: tuple[str, ...] = ()                 # inputs left unset when their step neither runs nor ran
    own_files: bool = False                        # data.files.* inputs are wired even where the config sets them


PPO_INPUTS = {"init": "policy", "stage.reward_model": "rm"}
STEPS = {
    "pretrain": Step("pretrain"),
    "sft": Step("sft", inputs={"init": "base"}),
    "collect": Step("collect", inputs={"init": "sft"}),
    "rm": Step("rm", inputs={"init": "sft", "data.files.comparisons_train": "collect/comparisons_train.jsonl",
                             "data.files.comparisons_val": "collect/comparisons_val.jsonl"}),
    "select": Step("select", inputs={"init": "sft", "stage.reward_model": "rm"}),
    "bestofn": Step("bestofn", inputs={"init": "policy", "stage.reward_model": "rm"}),
    # a global ptx.coef= is PPO-ptx's: plain PPO and the larger-beta run never mix in pretraining
    "ppo": Step("ppo", ("ptx=off", "ptx.coef=0"), PPO_INPUTS),
    "ppo_ptx": Step("ppo", ("ptx=paper", "stage.name=ppo_ptx"), PPO_INPUTS),
    "ppo_beta": Step("ppo", ("ptx=off", "ptx.coef=0", "stage.name=ppo_beta"), PPO_INPUTS),
    "eval": Step("eval", inputs={"stage.models.base": "base", "stage.models.sft": "policy", "stage.reward_model": "rm",
                                 "stage.models.ppo": "ppo", "stage.models.ppo_ptx": "ppo_ptx",
                                 "stage.models.ppo_beta": "ppo_beta"},
                 optional=("stage.models.ppo", "stage.models.ppo_ptx", "stage.models.ppo_beta", "stage.reward_model")),
    "report": Step(None),
}
ROUND = re.compile(r"^(collect|rm|ppo_ptx)_r([2-9]|[1-9]\d+)$")  # a later round's step: collect_r2, rm_r2, ...
MEMBER = re.compile(r"^rm_m([2-9]|[1-9]\d+)$")  # another member of an RM ensemble: rm_m2, rm_m3, ...


def step(name: str, cfg: DictConfig | None = None) -> Step:
    """The step called ``name``: one of :data:`STEPS`, a later round's (``<step>_r<round>``) or
    another RM ensemble member (``rm_m<k>``), wired for ``cfg.rounds`` and ``cfg.rm_ensemble``.

    Round r collects comparisons on round r-1's PPO-ptx policy, adds them to every earlier
    round's (``stage.earlier``), trains an RM on all of them from SFT (as the paper's RMs start),
    and continues PPO-ptx from round r-1's policy against it, the KL still to SFT's policy.
    Member k is the RM step again with seed + k - 1 (another head init and data order); round
    one's PPO steps score with every member (``stage.ensemble``)."""
    rounds, members = (cfg.get("rounds", 1), cfg.get("rm_ensemble", 1)) if cfg is not None else (1, 1)
    if MEMBER.match(name):
        return Step("rm", (f"stage.name={name}",), STEPS["rm"].inputs)
    m = ROUND.match(name)
    if not m:
        base = STEPS[name]
        if base.stage == "ppo" and members > 1:
            return replace(base, inputs={**base.inputs, "stage.ensemble": "ensemble:" + ",".join(
                f"rm_m{k}" for k in range(2, members + 1))})
        if name == "eval" and rounds > 1:  # eval reads every round's policy too
            later = {f"stage.models.ppo_ptx_r{r}": f"ppo_ptx_r{r}" for r in range(2, rounds + 1)}
            return replace(base, inputs={**base.inputs, **later}, optional=(*base.optional, *later))
        return base
    kind, r = m.group(1), int(m.group(2))
    prev = "ppo_ptx" if r == 2 else f"ppo_ptx_r{r - 1}"
    if kind == "collect":
        earlier = "comparisons" if r == 2 else f"collect_r{r - 1}/comparisons_train.jsonl"
        return Step("collect", (f"stage.name={name}",), {"init": prev, "stage.earlier": earlier})
    if kind == "rm":
        return Step("rm", (f"stage.name={name}",), {"init": "sft", **{
            f"data.files.comparisons_{s}": f"collect_r{r}/comparisons_{s}.jsonl" for s in ("train", "val")}}, own_files=True)
    return Step("ppo", ("ptx=paper", f"stage.name={name}"),
                {"init": prev, "stage.reward_model": f"rm_r{r}", "stage.reference": "policy"})


def expand(order: list[str], rounds: int, members: int) -> list[str]:
    """``run_order`` with the RM ensemble's other members after ``rm``, and the later rounds'
    steps before eval (or the report, or at the end)."""
    order = list(order)
    if members > 1:
        if "rm" not in order:
            raise ConfigError(f"rm_ensemble={members}: the members are the rm step again, but run_order "
                              f"{order} does not run it")
        at = order.index("rm") + 1
        order[at:at] = [f"rm_m{k}" for k in range(2, members + 1) if f"rm_m{k}" not in order]
    if rounds > 1:
        if "ppo_ptx" not in order:
            raise ConfigError(f"rounds={rounds}: later rounds continue the ppo_ptx step's policy, but run_order "
                              f"{order} does not run it")
        later = [f"{s}_r{r}" for r in range(2, rounds + 1) for s in ("collect", "rm", "ppo_ptx")]
        at = next((order.index(s) for s in ("eval", "report") if s in order), len(order))
        order[at:at] = [s for s in later if s not in order]
    return order


# what a step's rlhf-train config leaves out (the pipeline's objective is a <step>/<metric>)
PIPELINE_ONLY = [f for f in Pipeline.__dataclass_fields__ if f not in Train.__dataclass_fields__] + ["steps", "objective"]


def source(src: str, cfg: DictConfig) -> str | list[str] | None:
    """The path an input comes from (``policy`` is read from ``select`` once that has run; an
    ``ensemble:`` source is a list of paths)."""
    run = Path(cfg.run_dir)
    if src.startswith("ensemble:"):  # a list: every other member's final/
        return [str(run / m / "final") for m in src.split(":")[1].split(",")]
    if src == "comparisons":  # what round 1's RM trained on: the user's file, or what collect wrote
        return cfg.data.files.get("comparisons_train") or str(run / "collect" / "comparisons_train.jsonl")
    if src == "base":
        start = cfg.get("init") or cfg.model.get("pretrained")
        return start or (str(run / "pretrain" / "final") if "pretrain" in cfg.run_order else None)
    if src == "policy":
        if "select" in cfg.run_order and is_finished(run / "select"):
            info = read_provenance(run / "select" / "final")  # the epoch, in this run dir (it may be a copy)
            chosen, sft = Path(info["selected"]), Path(info["init"]).parent
            return str(run / "sft" / chosen.relative_to(sft)) if chosen.is_relative_to(sft) else str(chosen)
        src = "sft"
    step, _, file = src.partition("/")
    return str(run / step / (file or "final"))


def step_config(cfg: DictConfig, overrides: list[str], name: str) -> DictConfig:
    """One step's ``rlhf-train`` config: the user's overrides and the step's needs, its inputs
    wired, then ``steps.<name>`` merged over it; checked by :func:`rlhf.schema.validate`."""
    this = step(name, cfg)
    user = [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] not in PIPELINE_ONLY]
    full = compose("pipeline", overrides=[*user, f"stage={this.stage}", *this.overrides])
    step_cfg = OmegaConf.masked_copy(full, [k for k in full if k not in PIPELINE_ONLY])
    OmegaConf.set_struct(step_cfg, True)
    for key, src in this.inputs.items():
        path, feeder = source(src, cfg), src.split("/")[0]
        if key in this.optional and feeder not in cfg.run_order and not is_finished(Path(path).parent):
            continue  # e.g. eval's stage.models.ppo when no PPO step runs or ran
        if key.startswith("data.files.") and not this.own_files:  # a file the user (or the world) names wins
            path = OmegaConf.select(step_cfg, key) or path  # a path, or a dataset spec (rlhf.data.hf)
            whose = f"written by step {feeder}" if isinstance(path, str) and Path(path) == Path(source(src, cfg)) \
                else "your file"
            log.info("step %s reads %s=%s (%s)", name, key, path, whose)
        OmegaConf.update(step_cfg, key, path, force_add=True)
    if member := MEMBER.match(name):  # another head init and data order; the world and labelers stay
        OmegaConf.resolve(step_cfg)
        step_cfg.seed = cfg.seed + int(member.group(1)) - 1
    try:  # a later round's step (an ensemble member) takes its first round's overlay (rm's), then its own
        first = "rm" if member else ROUND.sub(r"\1", name)
        overlays = [cfg.steps.get(n) for n in dict.fromkeys([first, name])]
        with open_dict(step_cfg):  # new keys as with +key=: validate() allows them in trainer only
            for overlay in overlays:  # resolved here: it may point at another step's overlay
                step_cfg = OmegaConf.merge(step_cfg, OmegaConf.to_container(overlay, resolve=True) if overlay else {})
        return validate(step_cfg)
    except Exception as e:  # noqa: BLE001 - an overlay's type error too: say which step
        raise ConfigError(f"step {name!r} (steps.{name} over stage={this.stage}): {e}") from e


def feeders(src: str) -> set[str]:
    """The steps an input source comes from."""
    if src.startswith("ensemble:"):
        return set(src.split(":")[1].split(","))
    return {"base": {"pretrain"}, "policy": {"sft", "select"}, "comparisons": {"collect"}}.get(src, {src.split("/")[0]})


def upstream(name: str, cfg: DictConfig | None = None) -> set[str]:
    """The steps whose outputs ``name`` reads."""
    return set().union(*map(feeders, step(name, cfg).inputs.values()))


def dependents(names: set[str], order: list[str], cfg: DictConfig | None = None) -> set[str]:
    """``names`` and every step of ``order`` that reads their outputs, transitively."""
    out = set(names)
    for name in order:  # run_order follows the data flow, so one pass suffices
        if upstream(name, cfg) & out:
            out.add(name)
    return out


def missing_inputs(steps: list[PlannedStep], cfg: DictConfig) -> list[str]:
    """Inputs of steps about to run that no step of ``run_order`` makes and no earlier run made."""
    out = []
    for s in (s for s in steps if s.status in ("run", "rerun") and s.config is not None):
        for key, src in step(s.name, cfg).inputs.items():
            path, wired = OmegaConf.select(s.config, key), source(src, cfg)
            paths = list(path) if isinstance(wired, list) and path is not None else [path]
            made_here = (path is not None and paths == (wired if isinstance(wired, list) else [wired])
                         and all(Path(p).is_relative_to(cfg.run_dir) for p in paths))
            if made_here and not feeders(src) & set(cfg.run_order) and not all(Path(p).exists() for p in paths):
                out.append(f"step {s.name} reads {key}={path}, but step {' or '.join(sorted(feeders(src)))} "
                           "is not in run_order and has not run")
    return out


def plan(cfg: DictConfig, overrides: list[str]) -> list[PlannedStep]:
    """Every step of ``cfg.run_order`` with its composed, checked config and whether it runs.
    Fails in seconds on a bad key or value in any step, or on a finished step whose recorded
    config differs from the plan's (listing the keys and how to rerun it)."""
    bad = [s for s in [*cfg.run_order, *cfg.steps, *cfg.rerun] if s not in STEPS and not ROUND.match(s) and not MEMBER.match(s)]
    if bad:
        raise ConfigError(f"unknown pipeline step(s) {bad} in run_order, steps or rerun; known: {', '.join(STEPS)}, "
                          "a later round's collect_r<N>, rm_r<N>, ppo_ptx_r<N>, an RM ensemble's rm_m<K>")
    for k in ("rounds", "rm_ensemble"):
        if cfg[k] < 1:
            raise ConfigError(f"{k}={cfg[k]}: must be >= 1")
    with open_dict(cfg):
        cfg.run_order = expand(list(cfg.run_order), cfg.rounds, cfg.rm_ensemble)
    if set(cfg.rerun) - set(cfg.run_order):
        raise ConfigError(f"rerun={list(cfg.rerun)} names steps that run_order={list(cfg.run_order)} does not run")
    check_world(cfg.data)
    rerun = dependents(set(cfg.rerun), list(cfg.run_order), cfg)
    steps: list[PlannedStep] = []
    for name in cfg.run_order:
        if name == "report":
            steps.append(PlannedStep(name, None, "run", "built from what the steps wrote"))
        elif name == "pretrain" and source("base", cfg) != source("pretrain", cfg):
            steps.append(PlannedStep(name, None, "skip", f"the model starts from {source('base', cfg)}"))
        else:
            runs = [s.name for s in steps if s.status in ("run", "rerun") and s.name in upstream(name, cfg)]
            step_cfg, this = step_config(cfg, overrides, name), step(name, cfg)
            late = tuple(k for k, src in this.inputs.items()  # wired to the epoch select picks, when it has
                         if src == "policy" and OmegaConf.select(step_cfg, k) == source("policy", cfg))
            steps.append(check_finished(name, this.stage, step_cfg, name in rerun, runs)._replace(late=late))
    missing = missing_inputs(steps, cfg)
    if missing:
        raise ConfigError("\n".join(missing))
    changed = [s for s in steps if s.status == "changed"]
    if changed:
        names = sorted({s.name for s in changed}, key=list(cfg.run_order).index)
        raise ConfigError(
            "finished steps were run with another config:\n  " + "\n  ".join(s.why for s in changed)
            + f"\nTo run them again, and the steps that read their outputs: rerun=[{','.join(names)}]; "
            "or keep this run and start another with run_name=<new name>.")
    return steps


def set_aside(sdir: Path) -> Path:
    """Move a stage directory out of the way of its rerun (old epochs, logs and samples would mix
    with the new ones); nothing is deleted."""
    aside = sdir.with_name(f"{sdir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    sdir.rename(aside)
    log.warning("rerun of %s: the previous run is kept in %s", sdir, aside)
    return aside


def run_pipeline(cfg: DictConfig, overrides: list[str]) -> dict:
    """Plan, then run ``cfg.run_order``; return {step: metrics}. Must run inside an initialised Hydra."""
    steps = plan(cfg, overrides)
    if cfg.plan_only:
        print(describe(steps, configs=True))
        return {}
    log.info("plan:\n%s", describe(steps))
    results, minutes = {}, {}
    for step in steps:
        start = time.perf_counter()
        if step.name == "report":
            from rlhf.eval.report import build_report
            log.info("report: %s", build_report(Path(cfg.run_dir)))
        elif step.config is not None:  # (None: pretrain of a pretrained model)
            for key in step.late:  # select has run by now (or again): wire its choice
                OmegaConf.update(step.config, key, source("policy", cfg))
            if step.status == "rerun":
                set_aside(stage_dir(step.config))
            results[step.name], _ = train(step.config)
            log.info("step %s (%.1f min): %s", step.name, (time.perf_counter() - start) / 60,
                     {k: float(f"{v:.4g}") for k, v in results[step.name].items()})
            if step.name == "bestofn":  # said again when skipped, so a resumed run shows it too
                info = read_provenance(stage_dir(step.config) / "final")
                (log.info if info["metrics"].get("rm_helps") else log.warning)("best-of-n check: %s", info["verdict"])
        minutes[step.name] = (time.perf_counter() - start) / 60
    log.info("wall time per step: %s; total %.1f min", ", ".join(f"{k} {v:.1f} min" for k, v in minutes.items()),
             sum(minutes.values()))
    return results


@hydra.main(config_path=CONF_DIR, config_name="pipeline", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Runs the pipeline; returns ``objective`` (``<step>/<metric>``), what Hydra sweepers optimise."""
    overrides = list(HydraConfig.get().overrides.task)
    # A multirun's jobs must not share (and skip) each other's steps: each runs in its own job dir,
    # unless the sweep gives every job its own run_name (experiment=paper_sizes: run_dir_per_job=false).
    if cfg.run_dir_per_job:
        use_job_dir_in_multirun(cfg, "run_dir")
        overrides.append(f"run_dir={cfg.run_dir}")
    results = run_pipeline(cfg, overrides)
    if cfg.plan_only:
        return None
    print(OmegaConf.to_yaml(OmegaConf.create(results)))
    step, _, metric = cfg.objective.partition("/")
    if metric not in results.get(step, {}):
        log.warning("objective=%s: step %s has no metric %s; this run returns None", cfg.objective, step, metric)
    return results.get(step, {}).get(metric)


if __name__ == "__main__":
    main()
