"""Sweeps. Every wandb sweep in sweeps/ runs its program with Hydra overrides: each swept key must
be a real config key and each value it can take must compose (checked without a wandb server).
The Optuna sweeper (no server at all) runs a small study end to end."""
from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlhf.train import CONF_DIR
from scale_helpers import REPO, data_overrides, ppo_overrides, run_cli, tiny_models  # noqa: F401 (fixtures)

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
PROGRAMS = {"rlhf-train": "train", "rlhf-pipeline": "pipeline"}  # program -> its Hydra config
DISTRIBUTIONS = {"uniform", "log_uniform_values", "int_uniform", "q_uniform", "q_log_uniform_values",
                 "normal", "log_normal", "categorical", "constant"}


def swept_values(spec: dict) -> list:
    """The values a sweep parameter can take: its list, or a distribution's ends and middle."""
    if "values" in spec:
        return spec["values"]
    if "value" in spec:
        return [spec["value"]]
    assert spec["distribution"] in DISTRIBUTIONS, spec
    return [spec["min"], spec["max"], (spec["min"] + spec["max"]) / 2]


def composed(program: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(PROGRAMS[program], overrides=overrides)
    OmegaConf.resolve(cfg)  # every interpolation, ${oc.env:WANDB_RUN_ID} included
    return cfg


def test_there_are_sweeps():
    assert len(SWEEPS) >= 2


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_wandb_sweep_keys_are_overrides_and_every_value_composes(path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    program, params, command = sweep["program"], sweep["parameters"], sweep["command"]
    assert program in PROGRAMS and sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] in ("maximize", "minimize") and sweep["metric"]["name"]
    assert command[:2] == ["${env}", "${program}"] and command[-1] == "${args_no_hyphens}"
    assert {"kl.coef", "ptx.coef"} <= set(params) or "stage.optim.lr" in params
    fixed = [c for c in command if not (c.startswith("${") and c.endswith("}"))]  # the agent's macros aside
    monkeypatch.setenv("WANDB_RUN_ID", "run123")  # set by `wandb agent` for each run
    # what `wandb agent` runs: the fixed overrides, then key=value for every parameter (args_no_hyphens)
    for key, spec in params.items():
        for value in swept_values(spec):
            cfg = composed(program, [*fixed, f"{key}={value}"])
            assert OmegaConf.select(cfg, key, throw_on_missing=True) == pytest.approx(value), key
    cfg = composed(program, [*fixed, *(f"{k}={swept_values(s)[0]}" for k, s in params.items())])
    if program == "rlhf-train":
        assert cfg.stage_dir.endswith("run123")  # each run of the sweep gets its own stage directory
        assert cfg.logger.wandb.offline is False  # the agent's runs report to the sweep


def test_optuna_sweeper_config_composes():
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("train", overrides=["hydra/sweeper=ppo_optuna"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert {"kl.coef", "ptx.coef", "stage.optim.lr"} <= set(cfg.hydra.sweeper.params)


def test_optuna_sweep_runs_trials_and_reports_the_best(ppo_overrides, tmp_path):
    sweep = tmp_path / "optuna"
    run_cli(["-m", "hydra/sweeper=ppo_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
             f"hydra.sweep.dir={sweep}", *ppo_overrides, "trainer.max_steps=1"])
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(best.best_params) == {"kl.coef", "ptx.coef", "stage.optim.lr"}
    trials = sorted(d for d in sweep.iterdir() if d.name.isdigit())
    assert len(trials) == 2
    scores = []
    for trial in trials:
        cfg = OmegaConf.load(trial / "config.yaml")
        assert 0.005 <= cfg.kl.coef <= 0.2 and 0.0 <= cfg.ptx.coef <= 50.0 and cfg.objective == "train/score"
        scores.append(OmegaConf.load(trial / "final" / "rlhf.json").metrics["train/score"])
    assert best.best_value == pytest.approx(max(scores))
