"""Resolve a stage's data files: user JSONL paths, or the built-in world written on first use."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def ensure_world(data_cfg: DictConfig) -> None:
    """Write the built-in world into ``data.dir`` once (atomically, so parallel jobs agree)."""
    out = Path(data_cfg.dir)
    if (out / "world.json").is_file():
        return
    from rlhf.data.world import write_world  # imported lazily: user data never needs it

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".world-", dir=out.parent))
    write_world(tmp, **OmegaConf.to_container(data_cfg.world, resolve=True))
    try:
        os.replace(tmp, out)
        log.info("wrote the built-in world to %s", out)
    except OSError:  # another job won the race; its files are identical for the same seed
        shutil.rmtree(tmp, ignore_errors=True)


def data_file(cfg: DictConfig, key: str) -> Path:
    """Path of ``data.files.<key>``; an error names the key and the stage that needs it."""
    if cfg.data.get("world") is not None:
        ensure_world(cfg.data)
    path = cfg.data.files.get(key)
    if not path:
        raise ValueError(f"data.files.{key} is not set, and stage {cfg.stage.name!r} needs it "
                         f"(set it with data.files.{key}=/path/to/file.jsonl)")
    return Path(path)
