"""The record formats every stage reads, shared by the built-in world and by users.

Records come from JSONL (one JSON object per line, UTF-8, a leading byte-order mark skipped)
or from a dataset (``rlhf.data.hf``). Extra keys are kept (the world adds ``family``). Each
kind is normalised to one form:

- ``text``:          ``{"text": str | messages}``                     (pretraining)
- ``demonstration``: ``{"prompt": P, "completion": str}``, or ``{"text": str}`` (SFT, all tokens trained)
- ``comparison``:    ``{"prompt": P, "completions": [str, ...], "ranking": [int, ...]}``
                     ranking = indices best first, a permutation, 2 <= K <= 9 (RM);
                     ``{"prompt", "chosen", "rejected"}`` is read as the K=2 case
- ``prompt``:        ``{"prompt": P}``                                 (RL, evaluation)

P is a string or a list of chat messages; TRL's other formats (conversational, implicit
prompt, ``messages``) are read as these by ``rlhf.data.convert``.

A record that breaks its schema stops the load with ``file:line: what is wrong`` (a dataset's:
``dataset <path> (split s) row n``): bytes that are not UTF-8, a ranking of anything but ints
(``true``, ``1.0``, ``"1"``), the same completion twice (texts compared after ``strip()``: a
ranking between them teaches nothing), and a record with both the pairwise and the ranked keys
(which one was meant is unknown).
"""
from __future__ import annotations

import codecs
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from rlhf.data.convert import (best_completion, check_messages, check_prompt, clean_messages, completion_text,
                               conversations_hold_prompt, extract_prompt, split_conversation)
from rlhf.data.hf import DataError, Source, rows

log = logging.getLogger(__name__)
SHOWN = 20  # invalid records named in the log, per file
K_MIN, K_MAX = 2, 9  # the paper ranks K = 4..9; pairwise data is K = 2
KINDS = ("text", "demonstration", "comparison", "prompt")
COMPARISON_KEYS = {"chosen", "rejected", "completions", "ranking"}


def _nonempty_str(rec: dict, key: str) -> str | None:
    if key not in rec:
        return f"missing key {key!r}"
    if not isinstance(rec[key], str):
        return f"{key!r} must be a string, got {type(rec[key]).__name__}"
    if not rec[key].strip():
        return f"{key!r} is empty"
    return None


def _same(a: str, b: str) -> str | None:
    """Why texts a and b count as one completion (equal after ``strip()``), else None."""
    if a.strip() != b.strip():
        return None
    return "the same text" if a == b else "the same text but for leading or trailing whitespace"


def _duplicate(texts: list[str]) -> str | None:
    for j, b in enumerate(texts):  # K <= 9: all pairs are cheap
        for i, a in enumerate(texts[:j]):
            if same := _same(a, b):
                return f"completions {i} and {j} are {same}"
    return None


def _check_ranking(ranking: Any, k: int) -> str | None:
    if ranking is None:
        return "missing key 'ranking'"
    if not isinstance(ranking, list):
        return f"'ranking' must be a list of ints, got {type(ranking).__name__}"
    for i, r in enumerate(ranking):
        if type(r) is not int:  # bool is an int to Python: [true, false] would pass as [1, 0]
            return f"'ranking' must be a list of ints: item {i} is {json.dumps(r)}, not an int"
    if sorted(ranking) != list(range(k)):
        return f"'ranking' {ranking!r} is not a permutation of 0..{k - 1}"
    return None


def _completions(rec: dict) -> str | None:
    """Conversational completions (one assistant message each) -> their texts, in place."""
    for key in ("chosen", "rejected"):
        if key in rec:
            rec[key], err = completion_text(rec[key], key)
            if err:
                return err
    if isinstance(rec.get("completions"), list):
        for i, c in enumerate(rec["completions"]):
            if isinstance(c, list):
                rec["completions"][i], err = completion_text(c, f"completion {i}")
                if err:
                    return err
    return None


def _check_comparison(rec: dict) -> str | None:
    pairwise, ranked = "chosen" in rec or "rejected" in rec, "completions" in rec or "ranking" in rec
    if pairwise and ranked:
        return "both 'chosen'/'rejected' and 'completions'/'ranking'; keep one form"
    if pairwise:  # pairwise = K=2, chosen first
        for key in ("chosen", "rejected"):
            if key not in rec:
                return f"missing key {key!r}"
        conversations_hold_prompt(rec)
        if "prompt" not in rec and (err := extract_prompt(rec)):
            return err
        if err := check_prompt(rec) or _completions(rec):
            return err
        if same := _same(rec["chosen"], rec["rejected"]):
            return f"'chosen' and 'rejected' are {same}"
        rec["completions"] = [rec.pop("chosen"), rec.pop("rejected")]
        rec["ranking"] = [0, 1]
        return None
    if err := check_prompt(rec):
        return err
    comps = rec.get("completions")
    if not isinstance(comps, list):
        return "'completions' must be a list of strings"
    if not K_MIN <= len(comps) <= K_MAX:
        return f"K={len(comps)} completions; need {K_MIN} <= K <= {K_MAX}"
    if err := _completions(rec):
        return err
    for i, c in enumerate(comps):
        if not isinstance(c, str) or not c.strip():
            return f"completion {i} is empty or not a string"
    return _duplicate(comps) or _check_ranking(rec.get("ranking"), len(comps))


def _keys(rec: dict) -> str:
    return f"got keys {sorted(rec)} (rename columns with data.columns.<key>=<column>)"


def _check_demonstration(rec: dict) -> str | None:
    if "completion" in rec:
        if err := check_prompt(rec):
            return err
        rec["completion"], err = completion_text(rec["completion"], "completion")
        return err
    if "messages" in rec:
        return split_conversation(rec)
    if COMPARISON_KEYS & rec.keys():  # SFT on the best-ranked completion
        return _check_comparison(rec) or best_completion(rec)
    if "text" in rec:  # a whole text, every token trained (TRL's language-modelling format)
        return _nonempty_str(rec, "text")
    return f"expected 'prompt' + 'completion', 'messages', 'text' or a comparison; {_keys(rec)}"


def _check_prompt_only(rec: dict) -> str | None:
    if COMPARISON_KEYS & rec.keys():
        if err := _check_comparison(rec):
            return err
        del rec["completions"], rec["ranking"]
        return None
    if "prompt" in rec:
        return check_prompt(rec)
    if "messages" in rec:
        if err := check_messages(rec["messages"], "messages"):
            return err
        if any(m["role"] == "assistant" for m in rec["messages"][1:]):
            return split_conversation(rec)
        rec["prompt"] = clean_messages(rec.pop("messages"))  # no answer yet: all of it is the prompt
        return None
    return f"missing key 'prompt' (or 'messages', or a comparison's); {_keys(rec)}"


def check_record(rec: Any, kind: str) -> str | None:
    """Return what is wrong with one record of ``kind`` (None if it is valid).

    Normalises in place to the kind's form (module docstring): pairwise and implicit-prompt
    comparisons become ``completions`` + ``ranking``, conversational completions their text,
    and the formats of ``rlhf.data.convert`` what the kind needs of them.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {KINDS}")
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    if kind == "text":
        if "messages" in rec and "text" not in rec:
            if err := check_messages(rec["messages"], "messages"):
                return err
            rec["text"] = clean_messages(rec.pop("messages"))
            return None
        return _nonempty_str(rec, "text")
    if kind == "prompt":
        return _check_prompt_only(rec)
    if kind == "demonstration":
        return _check_demonstration(rec)
    if not COMPARISON_KEYS & rec.keys():
        return f"a reward model needs rankings: 'chosen' + 'rejected' or 'completions' + 'ranking'; {_keys(rec)}"
    return _check_comparison(rec)


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each non-blank line; bytes or JSON that do not parse raise
    DataError naming file:line. A UTF-8 byte-order mark at the start is skipped (spreadsheets
    write one); the file is read as bytes and split at ``\\n`` only, as JSONL is defined."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            raw = raw.removeprefix(codecs.BOM_UTF8) if lineno == 1 else raw
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8: byte {raw[e.start]:#04x} at byte offset {e.start} "
                                "of the line (save the file as UTF-8)") from None
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) carry no record
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_numbered(source: str | Path | Source, kind: str,
                  invalid: list[tuple[int, str]] | None = None) -> list[tuple[int, dict]]:
    """(line or row number, record) of ``source`` (``rlhf.data.hf``: a JSONL path or a dataset),
    validated and normalised to ``kind``; a bad record raises DataError naming file:line or the row,
    unless the source drops invalid records (``data.drop_invalid``): then they are logged and
    (number, why) appended to ``invalid``."""
    src = Source.of(source)
    if src.is_jsonl:
        if not Path(src.path).is_file():
            raise DataError(f"{src.path}: no such data file (expected JSONL of {kind} records)")
        numbered = ((n, rec if not isinstance(rec, dict) else src.rename(rec)) for n, rec in iter_jsonl(Path(src.path)))
    else:
        numbered = rows(src)
    records, bad = [], []
    for n, rec in numbered:
        if err := check_record(rec, kind):
            if not src.drop_invalid:
                raise DataError(f"{src.at(n)}: {err} (expected a {kind} record; data.drop_invalid=true would drop "
                                "such records, logged and counted)")
            bad.append((n, err))
            continue
        records.append((n, rec))
    if not records:
        raise DataError(f"{src}: no {kind} records" + (f" ({len(bad)} invalid, e.g. {src.unit} {bad[0][0]}: "
                                                       f"{bad[0][1]})" if bad else ""))
    if bad:
        log.warning("%s: %d of %d records dropped, not valid %s records (data.drop_invalid): %s", src, len(bad),
                    len(bad) + len(records), kind, "; ".join(f"{src.unit} {n}: {why}" for n, why in bad[:SHOWN]))
    if invalid is not None:
        invalid.extend(bad)
    return records


def read_jsonl(source: str | Path | Source, kind: str) -> list[dict]:
    """Read and validate the records of ``source`` (:func:`read_numbered`), without their numbers."""
    return [rec for _, rec in read_numbered(source, kind)]


def partial_path(path: Path) -> Path:
    """Where ``path`` is assembled before it replaces ``path``: beside it, so on its filesystem."""
    return path.with_name(f".{path.name}.partial")


def write_atomic(path: str | Path, text: str | Iterable[str]) -> Path:
    """``path`` holds the old text or the new, never a part: written beside it, renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text) if isinstance(text, str) else f.writelines(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write all records or none (:func:`write_atomic`). A NaN or infinity raises (JSON has none;
    a bare ``NaN`` breaks other readers)."""
    return write_atomic(path, (json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n" for rec in records))
