"""Schema checks: a bad line stops the load and the error names file, line and problem."""
from __future__ import annotations

import codecs
import json

import pytest

from rlhf.data.formats import DataError, check_record, read_jsonl


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
    # rankings are lists of ints: true, false and 1.0 passed as 1, 0 and 1; "1" made sorted() raise
    ("comparison", {"prompt": "p", "completions": ["a", "b"], "ranking": [True, False]}, "item 0 is true, not an int"),
    ("comparison", {"prompt": "p", "completions": ["a", "b"], "ranking": [0, 1.0]}, "item 1 is 1.0, not an int"),
    ("comparison", {"prompt": "p", "completions": ["a", "b"], "ranking": ["0", "1"]}, 'item 0 is "0", not an int'),
    ("comparison", {"prompt": "p", "completions": ["a", "b"], "ranking": "01"}, "list of ints, got str"),
    ("comparison", {"prompt": "p", "completions": ["a", "b"]}, "missing key 'ranking'"),
    # the same completion twice: a ranking between them teaches nothing (whitespace around does not count)
    ("comparison", {"prompt": "p", "completions": ["a", "b", "a"], "ranking": [0, 1, 2]},
     "completions 0 and 2 are the same text"),
    ("comparison", {"prompt": "p", "completions": ["a", "b", "b\n"], "ranking": [0, 1, 2]},
     "completions 1 and 2 are the same text but for leading or trailing whitespace"),
    ("comparison", {"prompt": "p", "chosen": "a", "rejected": "a"}, "'chosen' and 'rejected' are the same text"),
    ("comparison", {"prompt": "p", "chosen": "a", "rejected": "b", "completions": ["a", "b"], "ranking": [1, 0]},
     "both 'chosen'/'rejected' and 'completions'/'ranking'"),
    ("comparison", {"prompt": "p", "chosen": "a", "ranking": [0, 1]}, "both 'chosen'/'rejected' and"),
])
def test_bad_line_names_file_and_line(tmp_path, kind, bad, msg):
    good = {"text": {"text": "t"}, "demonstration": {"prompt": "p", "completion": "c"}, "prompt": {"prompt": "p"},
            "comparison": {"prompt": "p", "completions": ["a", "b"], "ranking": [1, 0]}}[kind]
    p = write(tmp_path, [good, good, bad])
    with pytest.raises(DataError) as e:
        read_jsonl(p, kind)
    assert f"{p}:3:" in str(e.value) and msg in str(e.value)


def test_a_byte_order_mark_is_skipped(tmp_path):
    p = tmp_path / "excel.jsonl"
    p.write_bytes(codecs.BOM_UTF8 + b'{"prompt": "caf\xc3\xa9"}\r\n{"prompt": "q"}\r\n')  # as spreadsheets save it
    assert [r["prompt"] for r in read_jsonl(p, "prompt")] == ["café", "q"]


def test_bytes_that_are_not_utf8_name_file_line_and_byte(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes('{"prompt": "ok"}\n{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as e:
        read_jsonl(p, "prompt")
    assert f"{p}:2: not UTF-8: byte 0xe9 at byte offset 15" in str(e.value)


def test_only_blank_lines_is_no_records(tmp_path):
    p = tmp_path / "blank.jsonl"
    p.write_bytes(codecs.BOM_UTF8 + b"\n\n")
    with pytest.raises(DataError) as e:
        read_jsonl(p, "prompt")
    assert f"{p}: no prompt records" in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        read_jsonl(tmp_path / "nope.jsonl", "text")


U = [{"role": "user", "content": "hi"}]
A = [{"role": "assistant", "content": "hello"}]
B = [{"role": "assistant", "content": "go away"}]


@pytest.mark.parametrize("kind,rec,want", [
    # implicit prompt, strings: split at the last shared word boundary
    ("comparison", {"chosen": "Human: hi\nAssistant: hello there", "rejected": "Human: hi\nAssistant: help"},
     {"prompt": "Human: hi\nAssistant:", "completions": ["hello there", "help"], "ranking": [0, 1]}),
    ("comparison", {"chosen": "Q: x A: yes", "rejected": "Q: x A: yes indeed"},  # one the other's beginning
     {"prompt": "Q: x A:", "completions": ["yes", "yes indeed"], "ranking": [0, 1]}),
    # implicit prompt, conversational: the shared messages
    ("comparison", {"chosen": U + A, "rejected": U + B}, {"prompt": U, "completions": ["hello", "go away"], "ranking": [0, 1]}),
    ("comparison", {"prompt": U, "completions": [A, B], "ranking": [1, 0]},
     {"prompt": U, "completions": ["hello", "go away"], "ranking": [1, 0]}),
    # whole conversations beside a prompt column (UltraFeedback binarized): the prompt comes from them
    ("comparison", {"prompt": "hi", "chosen": U + A, "rejected": U + B},
     {"prompt": U, "completions": ["hello", "go away"], "ranking": [0, 1]}),
    ("comparison", {"prompt": U, "chosen": U + A, "rejected": B},
     {"prompt": U, "completions": ["hello", "go away"], "ranking": [0, 1]}),
    # SFT takes the best-ranked completion, or a conversation's last assistant turn
    ("demonstration", {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}, {"prompt": "p", "completion": "c"}),
    ("demonstration", {"prompt": U, "chosen": A, "rejected": B}, {"prompt": U, "completion": "hello"}),
    ("demonstration", {"messages": U + A + U + B}, {"prompt": U + A + U, "completion": "go away"}),
    ("demonstration", {"text": "a whole text"}, {"text": "a whole text"}),
    # RL takes the prompt of anything that has one
    ("prompt", {"messages": U + A}, {"prompt": U, "completion": "hello"}),
    ("prompt", {"messages": U}, {"prompt": U}),
    ("prompt", {"chosen": U + A, "rejected": U + B}, {"prompt": U}),
    ("text", {"messages": U + A}, {"text": U + A}),
    # columns arrow fills with nulls do not reach the template
    ("prompt", {"prompt": [{"role": "user", "content": "hi", "tool_calls": None}]}, {"prompt": U}),
])
def test_trl_formats_are_read_as_each_kind_needs(kind, rec, want):
    assert check_record(rec, kind) is None
    assert rec == want


@pytest.mark.parametrize("kind,rec,msg", [
    ("comparison", {"chosen": "yes", "rejected": "no"}, "share no beginning, so no prompt can be extracted"),
    ("comparison", {"chosen": A, "rejected": B}, "share no first message"),
    ("comparison", {"chosen": U + A, "rejected": U + A}, "are the same conversation"),
    ("comparison", {"chosen": U, "rejected": U + B}, "'chosen' ends where the shared prompt ends"),
    ("comparison", {"prompt": U, "chosen": A + U + A, "rejected": B}, "'chosen' must be one assistant message, got roles"),
    ("comparison", {"prompt": U, "chosen": U, "rejected": B}, "'chosen' must be one assistant message"),
    ("comparison", {"chosen": U + A, "rejected": "hi"}, "must both be strings or both message lists"),
    ("comparison", {"prompt": "p", "completion": "c"}, "a reward model needs rankings"),
    ("prompt", {"prompt": [{"role": None, "content": "x"}]}, "message 0: 'role' must be a non-empty string"),
    ("prompt", {"prompt": [{"role": "user", "content": [{"type": "text"}]}]}, "'content' must be a string"),
    ("prompt", {"text": "t"}, "missing key 'prompt'"),
    ("demonstration", {"messages": A}, "needs a turn before an assistant turn"),
    ("demonstration", {"question": "q"}, "rename columns with data.columns"),
])
def test_trl_formats_that_cannot_be_read_say_why(kind, rec, msg):
    assert msg in check_record(rec, kind)
