"""Resolve a stage's data: user files and datasets (``rlhf.data.hf``), or the built-in world
written on first use."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlhf.data.hf import Source
from rlhf.schema import ConfigError

# data.world.<key> -> world.json's sizes.<split>, for worlds written before world.json kept its params
SIZES = {"n_pretrain": "pretrain_train", "n_pretrain_val": "pretrain_val", "n_sft": "sft_train", "n_sft_val": "sft_val",
         "n_rm": "rm", "n_ppo": "ppo", "n_val": "val", "n_test": "test"}

log = logging.getLogger(__name__)


def world_changes(data_cfg: DictConfig) -> list[str]:
    """``data.world.<key>: written -> now`` where the world already in ``data.dir`` was written with
    other values (it is never rewritten). Worlds from before ``params`` compare their sizes only."""
    if data_cfg.get("world") is None or not (Path(data_cfg.dir) / "world.json").is_file():
        return []  # user files, or no world written yet
    info_file = Path(data_cfg.dir) / "world.json"
    info, now = json.loads(info_file.read_text()), OmegaConf.to_container(data_cfg.world, resolve=True)
    old = info.get("params") or {"seed": info["seed"], "labeler_noise": info["labeler_noise"],
                                 **{k: info["sizes"][s] for k, s in SIZES.items()}}
    return [f"data.world.{k}: {old[k]!r} -> {v!r}" for k, v in now.items() if k in old and old[k] != v]


def check_world(data_cfg: DictConfig) -> None:
    """A world already in ``data.dir`` that was written with other ``data.world`` values is an
    error, not reused."""
    changes = world_changes(data_cfg)
    if changes:
        raise ConfigError(f"the built-in world in {data_cfg.dir} was written with other values: {'; '.join(changes)}. "
                          "It is not rewritten: start another run_name (or set data.dir elsewhere)")


def ensure_world(data_cfg: DictConfig) -> None:
    """Write the built-in world into ``data.dir`` once (atomically, so parallel jobs agree)."""
    out = Path(data_cfg.dir)
    if (out / "world.json").is_file():
        return check_world(data_cfg)
    from rlhf.data.world import write_world  # imported lazily: user data never needs it

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".world-", dir=out.parent))
    write_world(tmp, **OmegaConf.to_container(data_cfg.world, resolve=True))
    try:
        os.replace(tmp, out)
        log.info("wrote the built-in world to %s", out)
    except OSError:  # another job won the race; its files are identical for the same seed
        shutil.rmtree(tmp, ignore_errors=True)


def data_source(cfg: DictConfig, key: str) -> Source:
    """``data.files.<key>`` (a path or a dataset spec, ``rlhf.data.hf``) with ``data.columns``;
    an error names the key and the stage that needs it."""
    if cfg.data.get("world") is not None:
        ensure_world(cfg.data)
    spec = cfg.data.files.get(key)
    if not spec:
        raise ValueError(f"data.files.{key} is not set, and stage {cfg.stage.name!r} needs it "
                         f"(set it with data.files.{key}=/path/to/file.jsonl, a dataset directory or hub id)")
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    columns = OmegaConf.to_container(cfg.data.columns, resolve=True) if cfg.data.get("columns") else {}
    return Source.of(spec, columns, key, drop_invalid=bool(cfg.data.get("drop_invalid")))
