"""Comparison data for the RM: one prompt with its K completions per element, flattened once."""
from __future__ import annotations

import json
import re

import pytest
import torch

from rlhf.data.comparisons import ComparisonDataModule
from rlhf.data.formats import DataError, write_jsonl
from rlhf.models.tokenizer import encode_pair, train_bpe_tokenizer

TEMPLATE = "{prompt}\n"


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(["reverse: cat dog sun red blue tree fish bird one two three"] * 4, 300)


def datamodule(tok, train, val=None, batch_size=8, max_prompt=64, shared_prompt=True):
    dm = ComparisonDataModule(tok, str(train), str(val or train), batch_size=batch_size, template=TEMPLATE,
                              max_prompt_tokens=max_prompt, max_response_tokens=32, shared_prompt=shared_prompt)
    dm.setup()
    return dm


RECORDS = [
    {"prompt": "reverse: cat dog", "completions": ["dog cat", "cat dog", "cat"], "ranking": [0, 2, 1]},
    {"prompt": "reverse: sun red", "chosen": "red sun", "rejected": "sun"},  # pairwise = K=2
    {"prompt": "one", "completions": [f"two {'three ' * i}" for i in range(9)], "ranking": list(range(8, -1, -1))},
]


def test_mixed_k_batch_is_flattened_once_with_ranks_and_mask(tok, tmp_path):
    dm = datamodule(tok, write_jsonl(tmp_path / "c.jsonl", RECORDS), shared_prompt=False)
    b = next(iter(dm.val_dataloader()))
    assert b["input_ids"].shape[0] == b["attention_mask"].shape[0] == 3 + 2 + 9  # each completion once
    assert b["row"].tolist() == list(range(14))
    assert b["last"].tolist() == (b["attention_mask"].sum(-1) - 1).tolist()
    assert b["ranks"].shape == b["mask"].shape == (3, 9)
    assert b["mask"].sum(-1).tolist() == [3, 2, 9]
    assert b["ranks"][0, :3].tolist() == [0, 2, 1] and b["ranks"][1, :2].tolist() == [0, 1]
    assert b["ranks"][2].tolist() == list(range(8, -1, -1))
    assert b["owner"].tolist() == [0] * 3 + [1] * 2 + [2] * 9
    assert b["slot"].tolist() == [0, 1, 2, 0, 1, *range(9)]
    # row 1 is prompt 0's completion 1, encoded with the one template, right-padded, ending in EOS
    p, r = encode_pair(tok, "reverse: cat dog", "cat dog", TEMPLATE)
    n = int(b["attention_mask"][1].sum())
    assert b["input_ids"][1, :n].tolist() == p + r and b["input_ids"][1, n - 1] == tok.eos_token_id
    assert (b["input_ids"][1, n:] == tok.pad_token_id).all()
    # scattering per-row scores back gives the loss's (B, Kmax) layout
    rewards = torch.zeros(3, 9).index_put((b["owner"], b["slot"]), torch.arange(14.0))
    assert rewards[1, :2].tolist() == [3.0, 4.0] and rewards[0, 3:].eq(0).all()


def test_shared_layout_holds_each_prompt_once_then_its_completions(tok, tmp_path):
    dm = datamodule(tok, write_jsonl(tmp_path / "c.jsonl", RECORDS[:1]))
    b = next(iter(dm.val_dataloader()))
    assert b["input_ids"].shape[0] == b["segments"].shape[0] == 1  # one row: the prompt once
    p, _ = encode_pair(tok, "reverse: cat dog", "", TEMPLATE)
    completions = [encode_pair(tok, "reverse: cat dog", c, TEMPLATE)[1] for c in RECORDS[0]["completions"]]
    n = len(p) + sum(map(len, completions))
    assert b["input_ids"][0, :n].tolist() == p + [t for c in completions for t in c]
    assert b["segments"][0, :n].tolist() == [0] * len(p) + [s for s, c in enumerate(completions, 1) for _ in c]
    assert b["segments"][0, n:].eq(-1).all() and b["input_ids"][0, n:].eq(tok.pad_token_id).all()
    # positions continue from the prompt in every completion
    assert b["position_ids"][0, len(p):len(p) + len(completions[0])].tolist() == list(range(len(p), len(p) + len(completions[0])))
    ends = [len(p) + sum(map(len, completions[:i + 1])) - 1 for i in range(3)]
    assert b["row"].tolist() == [0] * 3 and b["last"].tolist() == ends
    assert b["input_ids"][0, ends].eq(tok.eos_token_id).all()


def test_shared_groups_are_packed_into_rows_and_each_completion_found_again(tok, tmp_path):
    dm = datamodule(tok, write_jsonl(tmp_path / "c.jsonl", RECORDS))
    b = next(iter(dm.val_dataloader()))
    assert b["input_ids"].shape[0] == 2  # the two short groups share a row beside the K=9 one
    assert b["owner"].tolist() == [0] * 3 + [1] * 2 + [2] * 9
    for n, (row, last) in enumerate(zip(b["row"].tolist(), b["last"].tolist())):
        rec = RECORDS[b["owner"][n]]
        texts = rec.get("completions") or [rec["chosen"], rec["rejected"]]
        c = encode_pair(tok, rec["prompt"], texts[b["slot"][n]], TEMPLATE)[1]
        assert b["input_ids"][row, last - len(c) + 1:last + 1].tolist() == c  # completion n ends there
        assert b["groups"][row, last] == b["groups"][row, last - len(c) + 1]


def test_batch_size_counts_prompts(tok, tmp_path):
    dm = datamodule(tok, write_jsonl(tmp_path / "c.jsonl", RECORDS * 3), batch_size=2)
    sizes = [b["mask"].shape[0] for b in dm.train_dataloader()]
    assert sizes == [2, 2, 2, 2, 1]


def test_long_prompts_are_dropped_and_counted(tok, tmp_path):
    long = {"prompt": "reverse: " + "cat dog sun " * 30, "chosen": "a", "rejected": "b"}
    dm = datamodule(tok, write_jsonl(tmp_path / "c.jsonl", [*RECORDS, long, long]), max_prompt=20)
    assert dm.counts["train"].kept == 3 and dm.counts["train"].dropped_long_prompt == 2
    with pytest.raises(DataError, match="every comparison was dropped"):
        datamodule(tok, write_jsonl(tmp_path / "l.jsonl", [long]), max_prompt=20)


def test_several_training_files_are_pooled_and_counted(tok, tmp_path):
    long = {"prompt": "reverse: " + "cat dog sun " * 30, "chosen": "a", "rejected": "b"}
    a, b = write_jsonl(tmp_path / "a.jsonl", RECORDS), write_jsonl(tmp_path / "b.jsonl", [RECORDS[1], long])
    dm = ComparisonDataModule(tok, [str(a), str(b)], str(a), batch_size=8, template=TEMPLATE,
                              max_prompt_tokens=20, max_response_tokens=32)
    dm.setup()
    assert len(dm.data["train"]) == 4 and len(dm.data["val"]) == 3
    assert dm.counts["train"].kept == 4 and dm.counts["train"].dropped_long_prompt == 1


@pytest.mark.parametrize("bad,why", [
    ({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [0, 1, 1]}, "not a permutation"),
    ({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 2]}, "not a permutation"),
    ({"prompt": "p", "completions": ["a"], "ranking": [0]}, "K=1"),
    ({"prompt": "p", "completions": list("abcdefghij"), "ranking": list(range(10))}, "K=10"),
    ({"prompt": "p", "completions": ["a", " "], "ranking": [0, 1]}, "completion 1 is empty"),
    ({"prompt": "p", "chosen": "a", "rejected": ""}, "'rejected' is empty"),
])
def test_bad_comparison_names_file_and_line(tok, tmp_path, bad, why):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*RECORDS, bad]) + "\n")
    with pytest.raises(DataError, match=f"{re.escape(str(path))}:4: .*{why}"):
        datamodule(tok, path)
