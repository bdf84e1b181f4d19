"""Stage hand-off: every stage writes ``outputs/<run>/<stage>/`` and the next takes only a path.

Layout of a stage directory::

    config.yaml          the resolved config of the run that wrote it
    checkpoints/last.ckpt  Lightning checkpoint for resume (``rlhf.checkpoint``)
    logs/version_N/metrics.csv  every logged metric, one file per start (CSV always; wandb too)
    epochs/epoch_N/      HF export after each epoch (SFT: the pipeline picks one by RM score)
    final/               HF directory plain ``transformers`` loads, plus ``rlhf.json``
                         (provenance and final metrics); its presence marks the stage done

Everything here is written atomically: assembled beside its place (``partial_path``), then renamed.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from rlhf.data.formats import partial_path, write_atomic
from rlhf.distributed import full_model
from rlhf.models.lora import exported

PROVENANCE = "rlhf.json"
# what a stage's training run leaves beside final/: removed when a stage starts from scratch
RUN_STATE = ("checkpoints", "epochs", "candidates", "logs", "samples.jsonl", "alarms.jsonl", "tokenizer")


def stage_dir(cfg: DictConfig) -> Path:
    return Path(cfg.stage_dir)


def is_finished(sdir: Path) -> bool:
    return (sdir / "final" / PROVENANCE).is_file()


def metrics_rows(sdir: Path) -> list[dict]:
    """Every row of every CSV metrics file of a stage, in the order the runs started."""
    files = sorted((sdir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    return [row for f in files for row in csv.DictReader(f.open())]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(cfg: DictConfig, metrics: dict, **extra) -> dict:
    return {
        "stage": cfg.stage.name, "run": cfg.run_name, "init": cfg.get("init"),
        "model": cfg.model.name, "seed": cfg.seed, "git_commit": _git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metrics": {k: float(v) for k, v in metrics.items()}, **extra,
    }


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def publish(tmp: Path, out_dir: Path) -> Path:
    """Move a directory assembled at ``tmp`` to ``out_dir``, replacing an older one (two renames:
    a kill between them leaves no ``out_dir``, so the stage is not finished and reruns its export)."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    remove(old)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    remove(old)
    return out_dir


def save_json(out_dir: Path, info: dict) -> Path:
    """Write ``rlhf.json`` atomically; stages without weights (collect, eval) write only this.
    A NaN or infinity raises: no ``rlhf.json`` holds a bare ``NaN``."""
    write_atomic(out_dir / PROVENANCE, json.dumps(info, indent=2, allow_nan=False) + "\n")
    return out_dir


def save_hf(model, tokenizer, out_dir: Path, info: dict | None = None) -> Path:
    """Write an HF directory (weights, config, tokenizer) and, if given, ``rlhf.json``; assembled
    beside ``out_dir`` and moved into place whole."""
    tmp = partial_path(out_dir)
    remove(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if info is not None:
        save_json(tmp, info)
    return publish(tmp, out_dir)


def read_provenance(final_dir: str | Path) -> dict:
    return json.loads((Path(final_dir) / PROVENANCE).read_text())


def rm_template(rm_dir: str | Path) -> str:
    """The prompt template an RM stage recorded in its ``rlhf.json`` (default ``"{prompt}\\n"``)."""
    info = Path(rm_dir) / PROVENANCE
    return (read_provenance(rm_dir).get("template") if info.is_file() else None) or "{prompt}\n"


def save_config(cfg: DictConfig, out_dir: Path) -> None:
    """``config.yaml``, resolved: in the stage directory when it starts, in ``final/`` when it ends
    (so a copied ``final/`` describes itself). ``steps`` are the pipeline's overlays, not this stage's."""
    write_atomic(out_dir / "config.yaml",
                 OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "steps"]), resolve=True))


class EpochExport(pl.Callback):
    """Export the model in HF format after every training epoch to ``epochs/epoch_N``."""

    def __init__(self, sdir: Path, tokenizer):
        self.sdir, self.tokenizer = sdir, tokenizer

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        model = full_model(trainer, module.model)  # sharded strategies: every rank takes part in the gather
        if trainer.is_global_zero:
            # LoRA: the merged model, and the adapter in adapter/
            save_hf(exported(model), self.tokenizer, self.sdir / "epochs" / f"epoch_{trainer.current_epoch}")
