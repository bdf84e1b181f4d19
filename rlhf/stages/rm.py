"""Stage wiring for ``stage=rm``: the reward model from an SFT ``final/`` (paper §3.5).

After training, ``export`` normalises the RM before RL: a bias (and with
``stage.normalize_gain=true`` a gain) so that labeler demonstrations (``data.files.<stage.
normalize_data>``, prompt + completion) score 0 on average (and std 1); stored in
``config.json`` as ``reward = rlhf_reward_gain * raw + rlhf_reward_bias`` and recorded in
``rlhf.json`` under ``normalization``.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlhf.data.comparisons import ComparisonDataModule
from rlhf.data.formats import read_numbered
from rlhf.data.lm import Counts, encode_demonstrations, report_drops
from rlhf.data.sources import data_source
from rlhf.handoff import EpochExport, save_hf
from rlhf.models.build import load_tokenizer, set_dropout, weights_source
from rlhf.models.lora import adapt, exported
from rlhf.models.reward import load_reward_model, score_ids, set_normalization
from rlhf.modules.rm import RewardModule


def setup(cfg: DictConfig, sdir: Path):
    st, data = cfg.stage, cfg.data
    source = weights_source(cfg)
    if not source:
        raise ValueError("stage=rm starts from a trained language model: set init=<sft stage dir>/final "
                         "(or any HF causal LM path / hub id, or an HF model preset such as model=gpt2)")
    tok = load_tokenizer(cfg, sdir / "tokenizer", corpus=lambda: ())  # the checkpoint's own
    dm = ComparisonDataModule(
        tok, [data_source(cfg, k) for k in [st.train_data, *(st.get("extra_train_data") or [])]],
        data_source(cfg, st.val_data),
        batch_size=st.batch_size, template=data.template, seed=cfg.seed, shared_prompt=st.shared_prompt,
        max_prompt_tokens=data.max_prompt_tokens, max_response_tokens=data.max_response_tokens)
    normalize = {  # resolved now, so a missing file fails before training, not after
        "data": data_source(cfg, st.normalize_data) if st.normalize_data else None,
        "gain": bool(st.normalize_gain), "template": data.template,
        "max_prompt_tokens": data.max_prompt_tokens, "max_response_tokens": data.max_response_tokens}
    dm.setup("fit")  # bad or emptied data fails here, before the model loads and trains
    if normalize["data"]:
        normalization_rows(tok, normalize)
    model = load_reward_model(source, fresh_head=True, key="init")  # unembedding removed, fresh scalar head
    set_normalization(model)  # identity while training; export sets the new bias
    set_dropout(model, st.dropout)
    model = adapt(model, cfg)  # model.lora.r > 0: a LoRA adapter on the backbone, the head trained whole
    callbacks = [EpochExport(sdir, tok)] if st.export_every_epoch else []
    return RewardModule(model, st.optim, normalize), dm, tok, callbacks


def normalization_rows(tok, spec: dict, counts: Counts | None = None) -> list[dict]:
    """The demonstrations the RM is normalised on, encoded; none kept is a DataError (checked at setup)."""
    counts, invalid, dropped = counts or Counts(), [], []
    numbered = read_numbered(spec["data"], "demonstration", invalid)
    counts.dropped_invalid = len(invalid)
    rows = encode_demonstrations([r for _, r in numbered], tok, spec["template"], spec["max_prompt_tokens"],
                                 spec["max_response_tokens"], counts, dropped)
    report_drops(spec["data"], "demonstration", [numbered[i][0] for i in dropped], len(rows), spec["max_prompt_tokens"])
    return rows


def normalize_on_demonstrations(model, tok, spec: dict) -> dict:
    """Set (gain, bias) so the demonstrations in ``spec["data"]`` score mean 0 (std 1 if gain)."""
    counts = Counts()
    rows = normalization_rows(tok, spec, counts)
    raw = score_ids(model, [r["input_ids"] for r in rows], tok.pad_token_id, raw=True).double()
    mean, std = raw.mean().item(), raw.std().item() if len(raw) > 1 else 0.0
    gain = 1.0 / std if spec["gain"] and std > 0 else 1.0
    bias = -gain * mean
    set_normalization(model, gain, bias)
    after = gain * raw + bias
    return {"convention": "reward = gain * raw + bias", "data": str(spec["data"]), "n": len(rows),
            "dropped_long_prompt": counts.dropped_long_prompt, "dropped_invalid": counts.dropped_invalid,
            "gain": gain, "bias": bias,
            "raw_mean": mean, "raw_std": std, "mean": after.mean().item(),
            "std": after.std().item() if len(raw) > 1 else 0.0}


def export(module: RewardModule, tok, out_dir: Path, info: dict) -> Path:
    model, spec = module.model, module.normalize or {}
    set_dropout(model, 0.0)
    info["template"] = spec.get("template")  # rlhf.score renders prompts the same way
    if spec.get("data"):
        info["normalization"] = normalize_on_demonstrations(model, tok, spec)
    return save_hf(exported(model), tok, out_dir, info)  # LoRA: merged, the adapter in adapter/
