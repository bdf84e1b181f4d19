"""Hydra multiruns through ``hydra/launcher=slurm`` on a real SLURM: slurmctld, slurmd, munge,
slurmdbd and MariaDB installed (apt) and started on this machine by ``slurm_cluster.py``, stopped
at the end. Needs root and apt (CI has both); if either fails, the tests fail with the reason.

Deselect with ``-m 'not slurm'``.
"""
from __future__ import annotations

import csv
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from scale_helpers import REPO, cli_env, data_overrides, ppo_overrides, run_cli, tiny_models  # noqa: F401 (fixtures)
from slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm
# one CPU and 2 GB per job: two jobs at a time on a 2-core machine. A SIGUSR2 in the first
# 10 minutes of a 20-minute job is a preemption to submitit (later, a time-out)
LAUNCH = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
          "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20", "objective=train/score"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()  # raises, with the daemons' logs, if it cannot
    yield c
    c.stop()  # cancels jobs, then stops only the daemons it started


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((d for d in sweep.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))


def rows(sdir: Path) -> list[dict]:
    return [r for f in sorted(sdir.glob("logs/version_*/metrics.csv")) for r in csv.DictReader(f.open())
            if r.get("train/kl")]


def start_multirun(cluster, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlhf.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO, env=cli_env(**cluster.env_extra),
                            start_new_session=True)


def wait_for(what: str, ready, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > end:
            proc.kill()
            raise AssertionError(f"no {what} (multirun exit {proc.poll()}):\n{proc.communicate()[0][-4000:]}")
        time.sleep(0.5)


def test_grid_of_ppo_jobs_runs_as_a_job_array_each_in_its_own_directory(cluster, ppo_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    run_cli([*LAUNCH, f"hydra.sweep.dir={sweep}", *ppo_overrides, "trainer.max_steps=2",
             "kl.coef=0.01,0.02", "ptx.coef=0,27.8"], env=cli_env(**cluster.env_extra), timeout=300)
    jobs = job_dirs(sweep)
    seen = set()
    for job in jobs:
        cfg = OmegaConf.load(job / "config.yaml")  # the resolved config the job ran
        assert cfg.stage_dir == str(job)  # a multirun job writes into its own Hydra job directory
        kl, ptx = cfg.kl.coef, cfg.ptx.coef
        seen.add((kl, ptx))
        assert {f"kl.coef={kl:g}", f"ptx.coef={ptx:g}"} <= set(OmegaConf.load(job / ".hydra/overrides.yaml"))
        r = rows(job)
        assert len(r) == 2 and float(r[0]["train/beta"]) == pytest.approx(kl)
        assert bool(r[-1].get("train/ptx_loss")) == (ptx > 0)  # the ptx term runs only with ptx.coef > 0
        info = OmegaConf.load(job / "final" / "rlhf.json")
        assert info.kl.coef == kl and info.ptx.coef == ptx
        AutoModelForCausalLM.from_pretrained(job / "final")
        # what main() returned to Hydra: the objective, train/score
        result = next((sweep / ".submitit").glob(f"*_{job.name}/*_{job.name}_0_result.pkl"))
        status, ret = pickle.loads(result.read_bytes())
        assert status == "success" and ret.return_value == pytest.approx(info.metrics["train/score"])
    assert seen == {(0.01, 0.0), (0.01, 27.8), (0.02, 0.0), (0.02, 27.8)}
    # submitit returns once each job has written its result; sacct may still say RUNNING for the
    # few seconds the job's batch step takes to exit, so wait for the array to leave RUNNING
    end = time.time() + 60
    while True:
        states = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State"], env=cluster.env,
                                capture_output=True, text=True, timeout=30).stdout.split()
        array = [s for s in states if "_" in s.split("|")[0]][-4:]
        settled = len(array) == 4 and not any(s.split("|")[1] in ("RUNNING", "COMPLETING", "PENDING") for s in array)
        if settled or time.time() > end:
            break
        time.sleep(1)
    assert len(array) == 4 and all(s.endswith("|COMPLETED") for s in array), states


def test_a_job_killed_mid_run_fails_the_multirun_with_a_clear_error(cluster, ppo_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    proc = start_multirun(cluster, [*LAUNCH, f"hydra.sweep.dir={sweep}", *ppo_overrides, "trainer.max_steps=10000",
                                    "stage.iterations=null", "kl.coef=0.01"])
    wait_for("training job", lambda: list(sweep.glob("0/logs/version_*/metrics.csv")), 150, proc)
    running = [j for j, state, _ in cluster.jobs() if state == "RUNNING"]
    assert running, cluster.jobs()
    cluster.scancel(*running)
    killed = time.time()
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the multirun still waits for a job cancelled 90 s ago") from None
    assert proc.returncode != 0
    assert "UncompletedJobError" in out and "CANCELLED" in out, out[-3000:]
    assert time.time() - killed < 60


@pytest.mark.slow  # ~1 min: two starts of a job and SLURM's requeue delay (make test-slow)
def test_a_preempted_job_is_requeued_and_resumes_from_last_ckpt(cluster, ppo_overrides, tmp_path):
    """SIGUSR2 is what SLURM sends before a time limit or preemption (submitit's --signal): submitit
    checkpoints the Hydra job, requeues it, and the stage resumes from its own last.ckpt."""
    sweep = tmp_path / "sweep"
    proc = start_multirun(cluster, [*LAUNCH, f"hydra.sweep.dir={sweep}", *ppo_overrides, "trainer.max_steps=16",
                                    "stage.save_every_n_steps=1", "kl.coef=0.01"])
    wait_for("checkpoint", lambda: (sweep / "0" / "checkpoints" / "last.ckpt").is_file(), 150, proc)
    job = next(j for j, state, _ in cluster.jobs() if state == "RUNNING")
    subprocess.run(["scancel", "--signal=USR2", job], env=cluster.env, check=True)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-4000:]
    job_dir = sweep / "0"
    logs = sorted(job_dir.glob("logs/version_*/metrics.csv"))
    assert len(logs) == 2, logs  # two starts of the same stage directory
    steps = [int(r["step"]) for r in rows(job_dir)]
    assert steps[0] == 0 and steps[-1] == 15 and len(set(steps)) == 16  # every iteration, none skipped
    assert "resuming ppo from" in (job_dir / "train.log").read_text()
    assert (job_dir / "final" / "rlhf.json").is_file()


@pytest.mark.slow  # ~1 min: two starts of a job and SLURM's requeue delay (make test-slow)
def test_a_preempted_sft_job_saves_at_the_signal_and_resumes_with_no_step_lost(cluster, tiny_models, data_overrides,
                                                                               tmp_path):
    """Default cadence (epoch ends, every 10 min): the checkpoint that the requeued job resumes from
    is written at the step boundary after SIGUSR2, before submitit requeues the job."""
    sweep = tmp_path / "sweep"
    proc = start_multirun(cluster, [*LAUNCH, f"hydra.sweep.dir={sweep}", *data_overrides, "stage=sft",
                                    f"init={tiny_models['sft']}", "stage.epochs=40", "trainer.limit_train_batches=10",
                                    "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "stage.batch_size=16",
                                    "stage.export_every_epoch=false", "objective=val/loss"])
    job_dir = sweep / "0"
    wait_for("the first epoch's checkpoint", lambda: (job_dir / "checkpoints" / "last.ckpt").is_file(), 150, proc)
    job = next(j for j, state, _ in cluster.jobs() if state == "RUNNING")
    subprocess.run(["scancel", "--signal=USR2", job], env=cluster.env, check=True)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-4000:]
    logs = sorted(job_dir.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    assert len(logs) == 2, logs  # two starts of the same stage directory
    first, second = ([int(r["step"]) for r in csv.DictReader(f.open()) if r.get("train/loss")] for f in logs)
    assert 10 <= first[-1] + 1 == second[0], (first[-1], second[0])  # resumed at the step after the last one trained
    assert sorted(first + second) == list(range(400))  # every step once: none lost, none repeated
    assert "resuming sft from" in (job_dir / "train.log").read_text()
    assert (job_dir / "final" / "rlhf.json").is_file()
