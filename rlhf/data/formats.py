"""The JSONL formats every stage reads, shared by the built-in world and by users.

One JSON object per line. Extra keys are kept (the world adds ``family``).

- ``text``:          ``{"text": str}``                               (pretraining)
- ``demonstration``: ``{"prompt": str, "completion": str}``          (SFT)
- ``comparison``:    ``{"prompt": str, "completions": [str, ...], "ranking": [int, ...]}``
                     ranking = indices best first, a permutation, 2 <= K <= 9 (RM);
                     ``{"prompt", "chosen", "rejected"}`` is read as the K=2 case
- ``prompt``:        ``{"prompt": str}``                              (RL, evaluation)

A line that breaks its schema stops the load with ``file:line: what is wrong``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

K_MIN, K_MAX = 2, 9  # the paper ranks K = 4..9; pairwise data is K = 2
KINDS = ("text", "demonstration", "comparison", "prompt")


class DataError(ValueError):
    """A data file that breaks its schema; the message names the file and line."""


def _nonempty_str(rec: dict, key: str) -> str | None:
    if key not in rec:
        return f"missing key {key!r}"
    if not isinstance(rec[key], str):
        return f"{key!r} must be a string, got {type(rec[key]).__name__}"
    if not rec[key].strip():
        return f"{key!r} is empty"
    return None


def _check_comparison(rec: dict) -> str | None:
    if "chosen" in rec or "rejected" in rec:  # pairwise = K=2, chosen first
        for key in ("prompt", "chosen", "rejected"):
            if err := _nonempty_str(rec, key):
                return err
        rec["completions"] = [rec.pop("chosen"), rec.pop("rejected")]
        rec["ranking"] = [0, 1]
        return None
    if err := _nonempty_str(rec, "prompt"):
        return err
    comps, ranking = rec.get("completions"), rec.get("ranking")
    if not isinstance(comps, list):
        return "'completions' must be a list of strings"
    if not K_MIN <= len(comps) <= K_MAX:
        return f"K={len(comps)} completions; need {K_MIN} <= K <= {K_MAX}"
    for i, c in enumerate(comps):
        if not isinstance(c, str) or not c.strip():
            return f"completion {i} is empty or not a string"
    if not isinstance(ranking, list) or sorted(ranking) != list(range(len(comps))):
        return f"'ranking' {ranking!r} is not a permutation of 0..{len(comps) - 1}"
    return None


def check_record(rec: Any, kind: str) -> str | None:
    """Return what is wrong with one record of ``kind`` (None if it is valid).

    Normalises in place: pairwise comparisons become ``completions`` + ``ranking``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {KINDS}")
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    if kind == "text":
        return _nonempty_str(rec, "text")
    if kind == "prompt":
        return _nonempty_str(rec, "prompt")
    if kind == "demonstration":
        return _nonempty_str(rec, "prompt") or _nonempty_str(rec, "completion")
    return _check_comparison(rec)


def read_jsonl(path: str | Path, kind: str) -> list[dict]:
    """Read and validate a JSONL file of ``kind``; raise DataError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file (expected JSONL of {kind} records)")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) carry no record
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if err := check_record(rec, kind):
                raise DataError(f"{path}:{lineno}: {err} (expected a {kind} record)")
            records.append(rec)
    if not records:
        raise DataError(f"{path}: no {kind} records")
    return records


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write all records or none: into a file beside ``path``, renamed over it when complete.
    A NaN or infinity raises (JSON has none; a bare ``NaN`` breaks other readers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
