"""Stage wiring for ``stage=pretrain`` and ``stage=sft``."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlhf.data.convert import plain_text
from rlhf.data.formats import read_jsonl
from rlhf.data.lm import LMDataModule
from rlhf.data.sources import data_source
from rlhf.handoff import EpochExport, save_hf
from rlhf.models.build import build_causal_lm, load_tokenizer, set_dropout
from rlhf.models.lora import adapt, exported
from rlhf.modules.lm import LMModule


def _corpus(cfg: DictConfig):
    """Texts a from-scratch tokenizer is trained on: pretraining text and demonstrations."""
    def texts():
        files = [(k, kind) for k, kind in (("pretrain_train", "text"), ("sft_train", "demonstration"))
                 if cfg.data.files.get(k)]
        for key, kind in files:
            for rec in read_jsonl(data_source(cfg, key), kind):
                yield from map(plain_text, (rec["text"],) if "text" in rec else (rec["prompt"], rec["completion"]))
    return texts


def setup(cfg: DictConfig, sdir: Path):
    st = cfg.stage
    tok = load_tokenizer(cfg, sdir / "tokenizer", _corpus(cfg))
    dm = LMDataModule(
        tok, st.data_kind, data_source(cfg, st.train_data), data_source(cfg, st.val_data),
        batch_size=st.batch_size, template=cfg.data.template, seed=cfg.seed,
        max_prompt_tokens=cfg.data.max_prompt_tokens, max_response_tokens=cfg.data.max_response_tokens,
        mix_file=data_source(cfg, "pretrain_train") if st.get("pretrain_mix") else None,
        mix_fraction=st.get("pretrain_mix") or 0.0, pack=st.pack)
    dm.setup("fit")  # bad or emptied data fails here, before the model is built
    model = build_causal_lm(cfg, tok)
    set_dropout(model, st.dropout)
    model = adapt(model, cfg)  # model.lora.r > 0 (SFT): a LoRA adapter, the base frozen
    callbacks = [EpochExport(sdir, tok)] if st.export_every_epoch else []
    return LMModule(model, st.optim), dm, tok, callbacks


def export(module: LMModule, tok, out_dir: Path, info: dict) -> Path:
    set_dropout(module.model, 0.0)  # later stages decide their own dropout
    return save_hf(exported(module.model), tok, out_dir, info)  # LoRA: merged, the adapter in adapter/
