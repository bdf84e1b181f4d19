"""The pipeline's plan: every step composed and checked before the first runs, the wiring, the
user's overlays winning, and finished steps compared with the config they were run with."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rlhf.handoff import is_finished, save_config, save_json
from rlhf.pipeline import STEPS, plan, run_pipeline
from rlhf.schema import ConfigError
from rlhf.train import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def planned(tmp_path, *overrides: str) -> dict:
    """{step: PlannedStep} for ``rlhf-pipeline <overrides>`` under tmp_path."""
    overrides = [f"output_root={tmp_path}", "run_name=p", *overrides]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return {s.name: s for s in plan(compose("pipeline", overrides=overrides), overrides)}


def finish(step) -> None:
    """Mark a planned step finished with its planned config, as train() would leave it."""
    save_config(step.config, Path(step.config.stage_dir))
    save_json(Path(step.config.stage_dir) / "final", {"metrics": {}, "selected": None})


@pytest.mark.parametrize("bad,named", [("stage.epochs=abc", "stage.epochs"), ("+steps.ppo.stage.minibatch_size=0", "stage.minibatch_size=0"),
                                       ("run_name=../../x", "must be a relative path inside output_root"),
                                       ("+steps.collect.stage.num_samples=12", "stage.num_samples=12: must be >= 2 and <= 9")])
def test_a_bad_value_in_any_step_fails_before_anything_runs(tmp_path, bad, named):
    with pytest.raises(Exception, match=named.replace(".", r"\.").replace("+", r"\+")):
        planned(tmp_path, bad)
    assert not any(tmp_path.iterdir())  # nothing written: no world, no stage directory


def test_a_typo_in_the_last_step_names_that_step(tmp_path):
    with pytest.raises(ConfigError, match=r"step 'eval'.*max_promts"):
        planned(tmp_path, "+steps.eval.stage.max_promts=5")
    with pytest.raises(ConfigError, match=r"unknown pipeline step\(s\) \['evl'\]"):
        planned(tmp_path, "+steps.evl.stage.max_prompts=5")


def test_every_step_reads_what_the_table_says(tmp_path):
    steps = planned(tmp_path)
    run = tmp_path / "p"
    assert list(steps) == list(STEPS)
    assert steps["sft"].config.init == str(run / "pretrain" / "final")
    assert steps["rm"].config.init == str(run / "sft" / "final")
    assert steps["ppo_ptx"].config.stage.reward_model == str(run / "rm" / "final")
    assert steps["ppo"].config.ptx.coef == 0 and steps["ppo_ptx"].config.ptx.coef == 27.8
    assert steps["ppo_beta"].config.kl.coef == 0.1 and steps["ppo"].config.kl.coef == 0.02
    assert steps["eval"].config.stage.models.ppo_beta == str(run / "ppo_beta" / "final")
    assert "run_order" not in steps["sft"].config and "steps" not in steps["sft"].config  # rlhf-train configs


def test_rounds_add_later_rounds_before_eval_wired_to_the_previous_round(tmp_path, toy_data):
    steps = planned(tmp_path, "rounds=3", "+steps.ppo_ptx.stage.iterations=7", "+steps.ppo_ptx_r3.stage.iterations=2")
    run = tmp_path / "p"
    assert list(steps)[-8:] == ["collect_r2", "rm_r2", "ppo_ptx_r2", "collect_r3", "rm_r3", "ppo_ptx_r3", "eval", "report"]
    assert steps["collect_r2"].config.init == str(run / "ppo_ptx" / "final")
    assert steps["collect_r2"].config.stage.earlier == str(run / "collect" / "comparisons_train.jsonl")
    assert steps["collect_r3"].config.stage.earlier == str(run / "collect_r2" / "comparisons_train.jsonl")
    rm3 = steps["rm_r3"].config  # from SFT, on every comparison so far (the world's own file does not win)
    assert rm3.init == str(run / "sft" / "final")
    assert rm3.data.files.comparisons_train == str(run / "collect_r3" / "comparisons_train.jsonl")
    p3 = steps["ppo_ptx_r3"].config
    assert p3.init == str(run / "ppo_ptx_r2" / "final") and p3.stage.reference == str(run / "sft" / "final")
    assert p3.stage.reward_model == str(run / "rm_r3" / "final") and p3.stage.name == "ppo_ptx_r3"
    assert p3.ptx.coef == 27.8 and p3.stage.iterations == 2 and steps["ppo_ptx_r2"].config.stage.iterations == 7
    assert steps["eval"].config.stage.models.ppo_ptx_r3 == str(p3.stage_dir) + "/final"
    # with the user's comparisons, round 2 keeps them as the earlier ones
    files = [f"data.files.{k}={v}" for k, v in toy_data.items()] + [
        "data=files", "rounds=2", "run_order=[sft,collect,rm,ppo_ptx]", "data.files.comparisons_train=/my/c.jsonl"]
    steps = planned(tmp_path / "u", *files)
    assert steps["rm"].config.data.files.comparisons_train == "/my/c.jsonl"
    assert steps["collect_r2"].config.stage.earlier == "/my/c.jsonl"
    with pytest.raises(ConfigError, match="rounds=2: later rounds continue the ppo_ptx step"):
        planned(tmp_path / "v", "rounds=2", "run_order=[sft,collect,rm,ppo]")


def test_an_rm_ensemble_is_the_rm_step_again_with_other_seeds_read_by_round_one_ppo(tmp_path):
    steps = planned(tmp_path, "rm_ensemble=3", "rounds=2", "seed=4", "+steps.rm.stage.epochs=3")
    run = tmp_path / "p"
    order = list(steps)
    assert order[order.index("rm"):order.index("rm") + 3] == ["rm", "rm_m2", "rm_m3"]
    assert [steps[s].config.seed for s in ("rm", "rm_m2", "rm_m3")] == [4, 5, 6]
    assert [steps[s].config.stage.epochs for s in ("rm", "rm_m2", "rm_m3")] == [3, 3, 3]  # rm's overlay
    assert steps["rm_m3"].config.data.world.seed == 4 and steps["rm_m3"].config.labeler.seed == 4  # the same world
    assert steps["rm_m2"].config.stage.name == "rm_m2" and steps["rm_m2"].config.init == str(run / "sft" / "final")
    members = [str(run / m / "final") for m in ("rm_m2", "rm_m3")]
    assert all(list(steps[s].config.stage.ensemble) == members for s in ("ppo", "ppo_ptx", "ppo_beta"))
    assert list(steps["ppo_ptx_r2"].config.stage.ensemble) == []  # later rounds: their own single RM
    with pytest.raises(ConfigError, match="rm_ensemble=0: must be >= 1"):
        planned(tmp_path / "z", "rm_ensemble=0")


def test_an_overlay_on_a_wired_key_wins(tmp_path):
    steps = planned(tmp_path, "+steps.ppo.ptx.coef=0.5", "+steps.ppo.ptx.examples_per_episode=2", "+steps.rm.init=/my/sft",
                    "ptx.coef=3")
    assert steps["ppo"].config.ptx.coef == 0.5  # the overlay beats the step's own ptx.coef=0
    assert steps["rm"].config.init == "/my/sft"
    assert steps["ppo_ptx"].config.ptx.coef == 3 and steps["ppo_beta"].config.ptx.coef == 0  # a global ptx.coef is PPO-ptx's


def test_user_files_collection_feeds_the_rm_unless_the_user_names_comparisons(tmp_path, toy_data, caplog):
    files = [f"data.files.{k}={v}" for k, v in toy_data.items()] + ["data.files.prompts_rm=p.jsonl", "data=files",
                                                                     "run_order=[sft,collect,rm]"]
    collected = str(tmp_path / "p" / "collect" / "comparisons_train.jsonl")
    with caplog.at_level("INFO", logger="rlhf.pipeline"):
        steps = planned(tmp_path, *files)
    assert steps["rm"].config.data.files.comparisons_train == collected
    assert steps["rm"].config.data.files.comparisons_val == str(tmp_path / "p" / "collect" / "comparisons_val.jsonl")
    assert f"step rm reads data.files.comparisons_train={collected} (written by step collect)" in caplog.text
    with caplog.at_level("INFO", logger="rlhf.pipeline"):
        steps = planned(tmp_path, *files, "data.files.comparisons_train=mine.jsonl")
    assert steps["rm"].config.data.files.comparisons_train == "mine.jsonl"
    assert "step rm reads data.files.comparisons_train=mine.jsonl (your file)" in caplog.text


def test_a_finished_step_with_another_config_stops_the_plan_naming_the_key(tmp_path):
    order = "run_order=[pretrain,sft,collect]"
    steps = planned(tmp_path, order)
    for name in ("pretrain", "sft"):
        finish(steps[name])
    again = planned(tmp_path, order, "kl.coef=0.05", "judge=gold")  # neither changes what pretrain or SFT computed
    assert again["pretrain"].status == again["sft"].status == "skip" and again["collect"].status == "run"
    with pytest.raises(ConfigError, match=r"sft \(.*\): stage\.optim\.lr: 0\.001 -> 0\.0005(.|\n)*rerun=\[sft\]"):
        planned(tmp_path, order, "+steps.sft.stage.optim.lr=5e-4")
    rerun = planned(tmp_path, order, "+steps.sft.stage.optim.lr=5e-4", "rerun=[sft]")
    assert rerun["pretrain"].status == "skip" and rerun["sft"].status == "rerun"
    assert rerun["sft"].config.force and not rerun["sft"].config.resume  # from scratch, not the old checkpoint


def test_a_finished_step_whose_input_will_be_rebuilt_is_not_skipped(tmp_path):
    steps = planned(tmp_path, "run_order=[pretrain,sft]")
    finish(steps["sft"])  # SFT finished, but its pretrained model is not: SFT would be stale
    with pytest.raises(ConfigError, match=r"sft: its inputs from pretrain will change(.|\n)*rerun=\[sft\]"):
        planned(tmp_path, "run_order=[pretrain,sft]")


def test_a_copied_run_directory_still_matches(tmp_path):

    steps = planned(tmp_path / "a", "run_order=[pretrain,sft]")
    finish(steps["pretrain"])
    shutil.copytree(tmp_path / "a" / "p", tmp_path / "b" / "p")
    assert planned(tmp_path / "b", "run_order=[pretrain,sft]")["pretrain"].status == "skip"


def test_a_step_whose_input_no_step_makes_fails_at_plan_time(tmp_path):
    with pytest.raises(ConfigError, match=r"step rm reads init=.*/p/sft/final, but step sft is not in run_order and has not run"):
        planned(tmp_path, "run_order=[collect,rm]")
    steps = planned(tmp_path, "run_order=[pretrain,sft,eval]")  # PPO models are optional for eval
    assert "ppo" not in steps["eval"].config.stage.models or steps["eval"].config.stage.models.ppo is None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_plans_and_plan_only_prints_it(tmp_path, experiment, capsys):
    """``rlhf-pipeline experiment=<each> plan_only=true``: every step, run or skip, its config; nothing runs."""
    overrides = [f"output_root={tmp_path}", "run_name=p", f"experiment={experiment}", "plan_only=true",
                 "++steps.sft.stage.epochs=3"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        assert run_pipeline(compose("pipeline", overrides=overrides), overrides) == {}
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if not line.startswith("      ")]
    assert [r[0] for r in rows] == list(STEPS)
    assert all(r[1] == "run" or r[:2] == ["pretrain", "skip"] for r in rows)  # paper_1.3b starts from Pythia
    assert "      stage.epochs=3" in out  # a key that differs from stage=sft's 16
    assert not (tmp_path / "p").exists()


def fake_stages(monkeypatch, picks: list[str]) -> dict:
    """train() replaced by one that records each step's init and marks it finished; select picks
    the next of ``picks`` (an SFT epoch directory name)."""
    import rlhf.pipeline

    seen = {}

    def train(cfg):
        sdir = Path(cfg.stage_dir)
        if is_finished(sdir) and not cfg.force:  # as train() does
            return {}, {}
        seen[cfg.stage.name] = cfg.get("init")
        extra = {"selected": str(Path(cfg.init).parent / "epochs" / picks.pop(0)), "init": cfg.init} if cfg.stage.name == "select" else {}
        if extra:
            Path(extra["selected"]).mkdir(parents=True)  # SFT exported every epoch
        save_config(cfg, sdir)
        save_config(cfg, sdir / "final")
        save_json(sdir / "final", {"metrics": {}, "verdict": "-", **extra})
        return {}, {}

    monkeypatch.setattr(rlhf.pipeline, "train", train)
    return seen


def run(tmp_path, *overrides: str) -> None:
    overrides = [f"output_root={tmp_path}", "run_name=p", "run_order=[select,bestofn,ppo]", *overrides]
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        run_pipeline(compose("pipeline", overrides=overrides), overrides)


def test_ppo_starts_from_the_epoch_select_picks_and_a_rerun_sets_the_old_run_aside(tmp_path, monkeypatch):
    for step in ("sft", "rm"):  # made by an earlier run
        save_json(tmp_path / "p" / step / "final", {"metrics": {}})
    seen = fake_stages(monkeypatch, ["epoch_1", "epoch_2"])
    run(tmp_path)
    epoch = str(tmp_path / "p" / "sft" / "epochs" / "epoch_1")
    assert seen == {"select": str(tmp_path / "p" / "sft" / "final"), "bestofn": epoch, "ppo": epoch}
    seen.clear()
    run(tmp_path)  # all finished with this config: nothing runs
    assert seen == {}
    run(tmp_path, "rerun=[select]")  # select picks again; what reads its pick runs again from it
    epoch = str(tmp_path / "p" / "sft" / "epochs" / "epoch_2")
    assert seen == {"select": str(tmp_path / "p" / "sft" / "final"), "bestofn": epoch, "ppo": epoch}
    assert len(list((tmp_path / "p").glob("select.replaced-*"))) == 1  # kept, not deleted
    shutil.copytree(tmp_path / "p", tmp_path / "copy" / "p")
    steps = planned(tmp_path / "copy", "run_order=[select,bestofn,ppo]")
    assert [s.status for s in steps.values()] == ["skip"] * 3  # the pick is read relative to the copy
    assert steps["ppo"].config.init == str(tmp_path / "copy" / "p" / "sft" / "epochs" / "epoch_2")


def test_a_world_written_with_other_values_is_not_reused(tmp_path):
    from rlhf.data.sources import ensure_world

    from test_pipeline import TINY_WORLD

    steps = planned(tmp_path, *TINY_WORLD, "run_order=[sft]")
    ensure_world(steps["sft"].config.data)
    assert planned(tmp_path, *TINY_WORLD, "run_order=[sft]")["sft"].status == "run"
    with pytest.raises(ConfigError, match=r"world in .* was written with other values: data\.world\.n_rm: 60 -> 70"):
        planned(tmp_path, *TINY_WORLD, "run_order=[sft]", "data.world.n_rm=70")
