"""Schema checks: a bad line stops the load and the error names file, line and problem."""
from __future__ import annotations

import json

import pytest

from rlhf.data.formats import DataError, read_jsonl


def write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return path


def test_valid_files_load_and_pairwise_becomes_k2(tmp_path):
    p = write(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"},
                         {"prompt": "q", "completions": ["x", "y", "z"], "ranking": [2, 0, 1], "family": "f"}])
    recs = read_jsonl(p, "comparison")
    assert recs[0]["completions"] == ["a", "b"] and recs[0]["ranking"] == [0, 1]
    assert recs[1]["family"] == "f"  # extra keys are kept


@pytest.mark.parametrize("kind,bad,msg", [
    ("text", {"txt": "x"}, "missing key 'text'"),
    ("demonstration", {"prompt": "p", "completion": ""}, "'completion' is empty"),
    ("prompt", {"prompt": 3}, "'prompt' must be a string"),
    ("comparison", {"prompt": "p", "completions": ["a", "b"], "ranking": [0, 0]}, "not a permutation"),
    ("comparison", {"prompt": "p", "completions": ["a"], "ranking": [0]}, "K=1"),
    ("comparison", {"prompt": "p", "completions": list("abcdefghij"), "ranking": list(range(10))}, "K=10"),
    ("comparison", {"prompt": "p", "completions": ["a", " "], "ranking": [0, 1]}, "completion 1 is empty"),
    ("demonstration", "{not json", "not valid JSON"),
])
def test_bad_line_names_file_and_line(tmp_path, kind, bad, msg):
    good = {"text": {"text": "t"}, "demonstration": {"prompt": "p", "completion": "c"}, "prompt": {"prompt": "p"},
            "comparison": {"prompt": "p", "completions": ["a", "b"], "ranking": [1, 0]}}[kind]
    p = write(tmp_path, [good, good, bad])
    with pytest.raises(DataError) as e:
        read_jsonl(p, kind)
    assert f"{p}:3:" in str(e.value) and msg in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        read_jsonl(tmp_path / "nope.jsonl", "text")
