"""Model directories named in the config, checked before a stage loads or computes anything.

A value that looks local (it exists, starts with ``/ . ~``, has more than one ``/``, or its first
part is a local directory) and is not there fails at once with "no such directory", instead of
transformers trying it as a hub id (a minute of retries offline). A directory that holds another
kind of model than the key needs fails saying what it holds: a causal LM where a trained reward
model is needed (its score head would be random), a reward model where a causal LM is needed, an
``rlhf`` RM without its normalisation. Hub ids pass on to ``from_pretrained``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from omegaconf import DictConfig

CAUSAL_LM, REWARD_MODEL, ANY_LM = "causal LM", "reward model", "causal LM or reward model"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
GAIN = "rlhf_reward_gain"  # rlhf.models.reward's normalisation keys in config.json


class ModelDirError(ValueError):
    """A config key names a model directory that is missing or holds the wrong kind of model."""


def looks_local(value: str) -> bool:
    first = value.split("/", 1)[0]
    return (value.startswith(("/", ".", "~")) or value.count("/") > 1 or Path(value).exists()
            or ("/" in value and Path(first).is_dir()) or not HUB_ID.match(value))


def holds(path: Path) -> tuple[str | None, str]:
    """(kind, what it is in words) of an HF model directory, from its config.json."""
    config = path / "config.json"
    if not config.is_file():
        names = sorted(p.name for p in path.iterdir())[:6] if path.is_dir() else []
        return None, f"no config.json (it holds {', '.join(names) or 'nothing'})"
    try:
        arch = (json.loads(config.read_text()).get("architectures") or ["?"])[0]
    except (json.JSONDecodeError, AttributeError) as e:
        return None, f"a config.json that is not a JSON object ({e})"
    info = path / "rlhf.json"
    stage = json.loads(info.read_text()).get("stage") if info.is_file() else None
    said = f"{arch}{f', the final/ of stage {stage}' if stage else ''}"
    if arch.endswith(("ForSequenceClassification", "ForTokenClassification")):
        return REWARD_MODEL, f"a reward model ({said})"
    if arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return CAUSAL_LM, f"a causal LM ({said})"
    return None, f"a {said} model"


def check_model_dir(value: str | None, key: str, want: str) -> None:
    """Fail now if ``value`` (the config's ``key``) is a missing local path or holds no ``want``."""
    if not value:
        return
    path = Path(value).expanduser()
    if not path.exists():
        if looks_local(value):
            raise ModelDirError(f"{key}={value}: no such directory")
        return  # a hub id: from_pretrained fetches it (or says it cannot)
    kind, what = holds(path)
    if kind is None or (want != ANY_LM and kind != want):
        need = {CAUSAL_LM: "a causal LM (a pretrain or SFT final/, or an HF *ForCausalLM directory)",
                REWARD_MODEL: "a trained reward model (an RM stage's final/, or an HF *ForSequenceClassification "
                              "directory with its score head)",
                ANY_LM: "a causal LM or a reward model"}[want]
        why = " (loaded as a reward model its score head would be random)" if want == REWARD_MODEL and kind else ""
        raise ModelDirError(f"{key}={value} holds {what}; it needs {need}{why}")
    if kind == REWARD_MODEL and (path / "rlhf.json").is_file() and GAIN not in json.loads((path / "config.json").read_text()):
        raise ModelDirError(f"{key}={value} holds an rlhf reward model without its normalisation ({GAIN} is not in "
                            "its config.json): it is not an RM stage's final/ (an epoch export or a copy in part?)")


def model_keys(cfg: DictConfig) -> list[tuple[str, str | None, str]]:
    """(config key, value, kind it must hold) of every model a stage of ``cfg.stage.kind`` reads."""
    st, kind = cfg.stage, cfg.stage.kind
    keys = [("model.pretrained", cfg.model.get("pretrained"), CAUSAL_LM)]
    if kind != "eval":
        keys.append(("init", cfg.get("init"), ANY_LM if kind == "rm" else CAUSAL_LM))  # an RM may go on training
    if kind in ("ppo", "select", "bestofn", "eval"):
        keys.append(("stage.reward_model", st.get("reward_model"), REWARD_MODEL))
    if kind == "ppo":
        keys += [("stage.reference", st.get("reference"), CAUSAL_LM),
                 *((f"stage.ensemble[{i}]", p, REWARD_MODEL) for i, p in enumerate(st.get("ensemble") or []))]
    if kind == "eval":
        keys += [(f"stage.models.{name}", path, CAUSAL_LM) for name, path in (st.get("models") or {}).items()]
    judge = cfg.get("judge") or {}
    if kind in ("ppo", "bestofn", "eval") and str(judge.get("_target_", "")).endswith("RewardModelJudge"):
        keys.append(("judge.reward_model", judge.get("reward_model"), REWARD_MODEL))
    return keys


def check_model_dirs(cfg: DictConfig) -> None:
    """Every model directory the stage reads: present, and of the kind it needs."""
    for key, value, want in model_keys(cfg):
        check_model_dir(value, key, want)
