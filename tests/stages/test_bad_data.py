"""Bad data is named before compute is spent: a split the length limit leaves empty stops every
stage with the file, the counts and the key to raise; what is dropped is counted and its lines logged."""
from __future__ import annotations

import codecs
import json
import logging

import pytest
from transformers import AutoTokenizer

from conftest import make_config, tiny_sft_and_rm
from rlhf.data.comparisons import ComparisonDataModule
from rlhf.data.formats import DataError, read_jsonl, write_jsonl
from rlhf.data.prompts import PromptDataModule
from rlhf.score import main as score_main
from rlhf.score import read_scoring_input
from rlhf.train import train

LONG = "reverse: " + "cat dog sun " * 20  # over data.max_prompt_tokens=24 below


class Logged(logging.Handler):
    """The messages logged under ``rlhf.data`` while attached."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def models(toy_data, tmp_path_factory):
    """A tiny SFT final/ trained on the toy demonstrations with two long prompts at lines 3 and 5
    (dropped at data.max_prompt_tokens=24), an RM dir from it, comparisons and a PPO prompt file."""
    root = tmp_path_factory.mktemp("bad_data")
    demos = read_jsonl(toy_data["sft_train"], "demonstration")
    long = {"prompt": LONG, "completion": "sun dog cat"}
    sft_train = write_jsonl(root / "sft_train.jsonl", [*demos[:2], long, demos[2], long, *demos[3:]])
    comparisons = write_jsonl(root / "comparisons.jsonl", [{"prompt": d["prompt"], "chosen": d["completion"],
                                                             "rejected": "moon"} for d in demos[:8]])
    ov = ["data=files", *(f"data.files.{k}={v}" for k, v in toy_data.items()), f"data.files.sft_train={sft_train}",
          "data.max_prompt_tokens=24", "model.vocab_size=300", "trainer.enable_progress_bar=false"]
    logged, logger = Logged(), logging.getLogger("rlhf.data")
    logger.addHandler(logged)
    try:
        out = tiny_sft_and_rm(toy_data, root, ov)
    finally:
        logger.removeHandler(logged)
    return {**out, "sft_train": sft_train, "comparisons": comparisons, "log": logged.messages}


def test_sft_drops_are_counted_in_rlhf_json_and_logged_with_lines(models):
    counts = json.loads((models["sft"] / "rlhf.json").read_text())["data_counts"]
    assert counts["train"] == {"kept": 400, "dropped_long_prompt": 2, "truncated_response": 0, "dropped_invalid": 0}
    assert counts["val"]["dropped_long_prompt"] == 0
    assert (f"{models['sft_train']}: 2 of 402 demonstrations dropped, prompt > data.max_prompt_tokens=24 tokens: "
            "lines 3, 5") in models["log"]


def test_sft_split_emptied_by_the_prompt_limit_names_file_counts_and_key(toy_overrides, toy_data):
    with pytest.raises(DataError) as e:
        train(make_config([*toy_overrides, "stage=sft", "debug=fast", "data.max_prompt_tokens=2"]))
    assert str(e.value) == (f"{toy_data['sft_train']}: every demonstration was dropped (400 of 400): their prompts "
                            "are longer than data.max_prompt_tokens=2 tokens (raise it, or shorten the prompts)")


def test_rm_split_emptied_by_the_prompt_limit_names_file_counts_and_key(models, toy_overrides):
    c = models["comparisons"]
    with pytest.raises(DataError) as e:
        train(make_config([*toy_overrides, "stage=rm", f"init={models['sft']}", f"data.files.comparisons_train={c}",
                           f"data.files.comparisons_val={c}", "debug=fast", "data.max_prompt_tokens=2"]))
    assert str(e.value).startswith(f"{c}: every comparison was dropped (8 of 8): their prompts are longer than "
                                   "data.max_prompt_tokens=2 tokens")


def test_rm_drops_are_counted_and_logged_with_lines(models, tmp_path, caplog):
    recs = read_jsonl(models["comparisons"], "comparison")
    path = write_jsonl(tmp_path / "c.jsonl", [recs[0], {**recs[1], "prompt": LONG}, *recs[2:]])
    dm = ComparisonDataModule(AutoTokenizer.from_pretrained(models["sft"]), str(path), str(path), batch_size=4,
                              template="{prompt}\n", max_prompt_tokens=24, max_response_tokens=16)
    dm.setup()
    assert vars(dm.counts["train"]) == {"kept": 7, "dropped_long_prompt": 1, "truncated_response": 0, "dropped_invalid": 0}
    assert f"{path}: 1 of 8 comparisons dropped, prompt > data.max_prompt_tokens=24 tokens: lines 2" in caplog.text


def test_ppo_prompts_emptied_by_the_prompt_limit_name_file_count_and_key(models, toy_overrides):
    with pytest.raises(DataError) as e:
        train(make_config([*toy_overrides, "stage=ppo", f"init={models['sft']}",
                           f"stage.reward_model={models['rm']}", f"data.files.prompts_ppo={models['prompts']}",
                           "stage.batch_size=8", "stage.minibatch_size=4", "data.max_prompt_tokens=2"]))
    assert str(e.value).startswith(f"{models['prompts']}: every prompt was dropped (64 of 64): their prompts are "
                                   "longer than data.max_prompt_tokens=2 tokens")


def test_ppo_prompt_drops_are_counted_and_logged_with_lines(models, tmp_path, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "reverse: cat dog sun"}, {"prompt": LONG},
                                              {"prompt": "reverse: red blue tree"}, {"prompt": LONG}])
    dm = PromptDataModule(AutoTokenizer.from_pretrained(models["sft"]), str(path), batch_size=2,
                          template="{prompt}\n", max_prompt_tokens=24, iterations=1)
    dm.setup()
    assert [p for p, _ in dm.prompts] == ["reverse: cat dog sun", "reverse: red blue tree"]
    assert vars(dm.counts["prompts"]) == {"kept": 2, "dropped_long_prompt": 2, "truncated_response": 0, "dropped_invalid": 0}
    assert f"{path}: 2 of 4 prompts dropped, prompt > data.max_prompt_tokens=24 tokens: lines 2, 4" in caplog.text


def test_rlhf_score_refuses_an_empty_input_before_loading_the_rm(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError) as e:  # the RM directory does not exist: the input is read first
        score_main([str(tmp_path / "no_rm"), str(empty), str(tmp_path / "out.jsonl")])
    assert str(e.value).startswith(f"{empty}: no records to score")
    assert not (tmp_path / "out.jsonl").exists()


def test_rlhf_score_reads_a_bom_and_names_bytes_that_are_not_utf8(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(codecs.BOM_UTF8 + b'{"prompt": "p", "response": "r"}\n')
    assert read_scoring_input(bom) == [{"prompt": "p", "response": "r"}]
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(b'{"prompt": "p", "response": "r"}\n{"prompt": "p", "response": "caf\xe9"}\n')
    with pytest.raises(DataError) as e:
        read_scoring_input(latin)
    assert str(e.value).startswith(f"{latin}:2: not UTF-8: byte 0xe9")


def test_rlhf_score_reads_conversations_and_names_a_bad_response(tmp_path):
    chat = [{"role": "user", "content": "hi"}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": chat, "response": [{"role": "assistant", "content": "hello"}]}) + "\n"
                    + json.dumps({"prompt": chat, "response": " "}) + "\n")
    with pytest.raises(DataError, match=f"{path}:2: 'response' is empty"):
        read_scoring_input(path)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert read_scoring_input(path) == [{"prompt": chat, "response": "hello"}]
