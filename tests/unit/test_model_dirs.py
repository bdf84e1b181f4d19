"""Model directories named in the config: a missing one fails at once, a wrong kind says what it holds."""
from __future__ import annotations

import json
import time

import pytest

from conftest import make_config
from rlhf.models.dirs import ModelDirError, check_model_dir, looks_local
from rlhf.models.reward import load_reward_model, set_normalization
from rlhf.score import main as score_main
from rlhf.train import train
from tests.unit.test_reward_model import causal_lm_dir, tok  # noqa: F401 (fixture)


@pytest.fixture
def dirs(tmp_path, tok):  # noqa: F811
    """A causal LM, an rlhf RM built from it (normalised, with rlhf.json), and that RM without its normalisation."""
    lm, _ = causal_lm_dir(tmp_path, tok, "llama")
    rm = load_reward_model(str(lm), fresh_head=True)
    set_normalization(rm, 1.0, 0.0)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    (tmp_path / "rm" / "rlhf.json").write_text(json.dumps({"stage": "rm"}))
    bare = tmp_path / "bare_rm"
    load_reward_model(str(lm), fresh_head=True).save_pretrained(bare)
    (bare / "rlhf.json").write_text(json.dumps({"stage": "rm"}))
    return {"lm": lm, "rm": tmp_path / "rm", "bare_rm": bare}


@pytest.mark.parametrize("value,local", [("outputs/nope/sft/final", True), ("./x", True), ("/abs/x", True),
                                         ("~/x", True), ("gpt2", False), ("EleutherAI/pythia-1.4b", False),
                                         ("a b", True)])
def test_what_looks_local(value, local):
    assert looks_local(value) == local


def test_a_missing_init_fails_at_once_naming_it(toy_overrides, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ModelDirError, match=r"^init=outputs/nope/sft/final: no such directory$"):
        train(make_config([*toy_overrides, "stage=sft", "init=outputs/nope/sft/final"]))
    assert time.perf_counter() - t0 < 5  # no hub retries (they take a minute); measured: 0.02 s
    assert not (tmp_path / "t" / "sft").exists()  # nothing written


def test_a_causal_lm_as_reward_model_fails_saying_what_it_holds(dirs, toy_overrides):
    with pytest.raises(ModelDirError, match=r"stage\.reward_model=\S+llama holds a causal LM \(LlamaForCausalLM\); "
                                            r"it needs a trained reward model.*score head would be random"):
        train(make_config([*toy_overrides, "stage=ppo", f"init={dirs['lm']}", f"stage.reward_model={dirs['lm']}"]))


def test_a_reward_model_as_init_for_sft_fails(dirs, toy_overrides):
    with pytest.raises(ModelDirError, match=r"init=\S+/rm holds a reward model \(LlamaForSequenceClassification, "
                                            r"the final/ of stage rm\); it needs a causal LM"):
        train(make_config([*toy_overrides, "stage=sft", f"init={dirs['rm']}"]))


def test_an_rlhf_rm_without_its_normalisation_fails(dirs):
    with pytest.raises(ModelDirError, match=r"judge\.reward_model=\S+bare_rm holds an rlhf reward model without its "
                                            r"normalisation"):
        check_model_dir(str(dirs["bare_rm"]), "judge.reward_model", "reward model")
    check_model_dir(str(dirs["rm"]), "judge.reward_model", "reward model")  # the normalised one passes


def test_a_directory_without_a_model_says_what_it_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelDirError, match=r"init=\S+ holds no config.json \(it holds notes.txt\)"):
        check_model_dir(str(tmp_path), "init", "causal LM")


def test_rlhf_score_refuses_a_causal_lm(dirs, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"prompt": "reverse: cat", "response": "cat"}) + "\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(ModelDirError, match=r"holds a causal LM \(LlamaForCausalLM\)"):
        score_main([str(dirs["lm"]), str(data), str(out)])
    assert not out.exists()


def test_a_judge_rm_that_is_missing_fails_before_the_stage_runs(dirs, toy_overrides, tmp_path):
    with pytest.raises(ModelDirError, match=r"^judge\.reward_model=/nope/rm: no such directory$"):
        train(make_config([*(o for o in toy_overrides if "batch_size" not in o), "stage=bestofn", f"init={dirs['lm']}", f"stage.reward_model={dirs['rm']}",
                           "judge=rm", "judge.reward_model=/nope/rm"]))


def test_a_reward_model_without_its_score_head_fails(dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    headless = tmp_path / "headless"
    load_reward_model(str(dirs["rm"])).save_pretrained(headless)
    weights = load_file(headless / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("score.")}, headless / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelDirError, match=r"stage\.reward_model=\S+headless has no trained score head \(score.weight "
                                            r"not in its weights\)"):
        load_reward_model(str(headless), key="stage.reward_model")

