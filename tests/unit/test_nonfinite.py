"""A reward model that gives NaN or inf stops every caller, naming its directory; no file holds a bare NaN."""
from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import make_config
from rlhf.eval.measure import require_finite, rm_scores
from rlhf.feedback import FeedbackError, RewardModelJudge, call_prefer
from rlhf.models.reward import (NonFiniteError, load_reward_model, score_head, score_ids, sequence_rewards,
                                set_normalization)
from rlhf.models.tokenizer import train_bpe_tokenizer

PROMPTS = ["reverse: cat dog sun", "reverse: red blue tree"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny random llama + tokenizer saved like an SFT final/ (no download)."""
    tok = train_bpe_tokenizer(["reverse: cat dog sun red blue tree fish bird"] * 4, vocab_size=300)
    config = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, vocab_size=len(tok),
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sft") / "final"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def saved_rm(lm_dir, path, weight: float | None = None, bias: float = 0.0):
    """An RM directory from ``lm_dir``: head weight[0, 0] set to ``weight`` (the rest 0), or a normalisation bias."""
    rm = load_reward_model(str(lm_dir), fresh_head=True)
    if weight is not None:
        with torch.no_grad():
            score_head(rm).weight.zero_()[0, 0] = weight  # nan -> NaN, inf -> +-inf scores
    set_normalization(rm, 1.0, bias)
    rm.save_pretrained(path)
    AutoTokenizer.from_pretrained(lm_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["nan", "inf"])
def bad_rm(lm_dir, tmp_path_factory, request):
    return saved_rm(lm_dir, tmp_path_factory.mktemp("rm") / "final", float(request.param)), request.param


def test_rm_scores_score_ids_and_sequence_rewards_name_the_directory(bad_rm):
    path, value = bad_rm
    rm, tok = load_reward_model(str(path)), AutoTokenizer.from_pretrained(path)
    said = rf"reward model {re.escape(str(path))} gave a non-finite score \(-?{value}\) for 2 of 2 completions"
    with pytest.raises(NonFiniteError, match=said + r", the first for prompt 'reverse: cat dog sun'"):
        rm_scores(rm, tok, PROMPTS, ["sun dog cat", "tree blue red"], "{prompt}\n")
    rows = [tok(p)["input_ids"] + [tok.eos_token_id] for p in PROMPTS]
    with pytest.raises(NonFiniteError, match=said + ", the first at row 0"):
        score_ids(rm, rows, tok.pad_token_id, batch_size=1)  # counted over all rows, not per batch
    ids = torch.tensor(rows[:1])
    with pytest.raises(NonFiniteError, match=re.escape(str(path))):  # PPO's rollout scores through here
        sequence_rewards(rm, ids, torch.ones_like(ids))


def test_a_healthy_rm_passes_and_a_non_finite_normalisation_is_named(lm_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(lm_dir)
    good = load_reward_model(str(saved_rm(lm_dir, tmp_path / "good")))
    assert torch.isfinite(rm_scores(good, tok, PROMPTS, ["a", "b"], "{prompt}\n")).all()
    path = saved_rm(lm_dir, tmp_path / "nan_bias", bias=float("nan"))  # config.json holds NaN
    with pytest.raises(NonFiniteError, match=rf"reward model {re.escape(str(path))}: .*rlhf_reward_bias nan"):
        rm_scores(load_reward_model(str(path)), tok, PROMPTS, ["a", "b"], "{prompt}\n")


def test_rlhf_score_fails_naming_the_directory_and_writes_nothing(bad_rm, tmp_path):
    from rlhf.score import main as score_main

    path, _ = bad_rm
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": p, "response": "x"}) + "\n" for p in PROMPTS))
    with pytest.raises(NonFiniteError, match=re.escape(str(path))):
        score_main([str(path), str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")])
    assert not (tmp_path / "out.jsonl").exists()


def test_the_rm_judge_fails_naming_the_directory(bad_rm):
    path, _ = bad_rm
    with pytest.raises(NonFiniteError, match=re.escape(str(path))):
        RewardModelJudge(str(path)).prefer(PROMPTS[0], "sun dog cat", "cat")
    with pytest.raises(FeedbackError, match=re.escape(str(path))):  # as stages call it (eval, bestofn, monitor)
        call_prefer(RewardModelJudge(str(path)), PROMPTS[0], "sun dog cat", "cat")


def test_stage_select_fails_naming_the_rm_and_writes_no_final(lm_dir, bad_rm, tmp_path):
    from rlhf.train import train

    path, _ = bad_rm
    (tmp_path / "val.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    with pytest.raises(NonFiniteError, match=re.escape(str(path))):
        train(make_config(["data=files", f"data.files.prompts_val={tmp_path / 'val.jsonl'}", f"output_root={tmp_path}",
                           "run_name=t", "stage=select", f"init={lm_dir}", f"stage.reward_model={path}",
                           "data.max_response_tokens=4", "trainer.enable_progress_bar=false"]))
    assert not (tmp_path / "t" / "select" / "final" / "rlhf.json").exists()


def test_figures_with_nan_are_not_written_and_the_key_is_named(tmp_path):
    from rlhf.eval.report import build_report

    with pytest.raises(NonFiniteError, match=r"x\.json not written: \['m'\]\['ppo/rm'\]\[1\] is inf"):
        require_finite({"m": {"sft/rm": [0.0, 1], "ppo/rm": (0.5, float("inf"))}, "note": None}, "x.json")
    final = tmp_path / "eval" / "final"
    final.mkdir(parents=True)
    (final / "rlhf.json").write_text(json.dumps({"metrics": {"sft/win_rate": 0.5, "sft/rm": float("nan")},
                                                 "judge": "coin", "n_prompts": 1, "samples_per_prompt": 1}))
    with pytest.raises(NonFiniteError, match=r"report\.json not written: \['methods'\]\['sft'\]\['rm'\]\[0\] is nan"):
        build_report(tmp_path)  # an older run's rlhf.json with NaN stops here
    assert not (tmp_path / "report" / "report.json").exists()
