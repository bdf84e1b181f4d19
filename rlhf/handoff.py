"""Stage hand-off: every stage writes ``outputs/<run>/<stage>/`` and the next takes only a path.

Layout of a stage directory::

    config.yaml          the resolved config of the run that wrote it
    checkpoints/last.ckpt  Lightning checkpoint for resume
    logs/version_N/metrics.csv  every logged metric, one file per start (CSV always; wandb too)
    epochs/epoch_N/      HF export after each epoch (SFT: the pipeline picks one by RM score)
    final/               HF directory plain ``transformers`` loads, plus ``rlhf.json``
                         (provenance and final metrics); its presence marks the stage done
"""
from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from rlhf.distributed import full_model

PROVENANCE = "rlhf.json"


def stage_dir(cfg: DictConfig) -> Path:
    return Path(cfg.stage_dir)


def is_finished(sdir: Path) -> bool:
    return (sdir / "final" / PROVENANCE).is_file()


def last_checkpoint(sdir: Path) -> Path | None:
    ckpt = sdir / "checkpoints" / "last.ckpt"
    return ckpt if ckpt.is_file() else None


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


def save_json(out_dir: Path, info: dict) -> Path:
    """Write ``rlhf.json``; stages without weights (collect, eval) write only this."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PROVENANCE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def save_hf(model, tokenizer, out_dir: Path, info: dict | None = None) -> Path:
    """Write an HF directory (weights, config, tokenizer) and, if given, ``rlhf.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    if info is not None:  # written last: its presence marks a complete export
        save_json(out_dir, info)
    return out_dir


def read_provenance(final_dir: str | Path) -> dict:
    return json.loads((Path(final_dir) / PROVENANCE).read_text())


def rm_template(rm_dir: str | Path) -> str:
    """The prompt template an RM stage recorded in its ``rlhf.json`` (default ``"{prompt}\\n"``)."""
    info = Path(rm_dir) / PROVENANCE
    return (read_provenance(rm_dir).get("template") if info.is_file() else None) or "{prompt}\n"


def save_config(cfg: DictConfig, out_dir: Path) -> None:
    """``config.yaml``, resolved: in the stage directory when it starts, in ``final/`` when it ends
    (so a copied ``final/`` describes itself). ``steps`` are the pipeline's overlays, not this stage's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "steps"]), out_dir / "config.yaml", resolve=True)


class EpochExport(pl.Callback):
    """Export the model in HF format after every training epoch to ``epochs/epoch_N``."""

    def __init__(self, sdir: Path, tokenizer):
        self.sdir, self.tokenizer = sdir, tokenizer

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        model = full_model(trainer, module.model)  # sharded strategies: every rank takes part in the gather
        if trainer.is_global_zero:
            save_hf(model, self.tokenizer, self.sdir / "epochs" / f"epoch_{trainer.current_epoch}")
