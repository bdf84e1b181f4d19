"""Rows that hold more than one sequence: packed documents, and one prompt shared by K completions.

Both layouts are described per token by a segment id, a position id and optionally a group id (B, T)::

    segment   -1 padding; 0 a shared prefix (the prompt) that every later token of its group
              sees; s >= 1 a sequence (a document, a completion) that sees itself and the prefix
    position  where the token would sit in its own sequence: documents restart at 0,
              a completion continues from the end of the prompt
    group     several prompts with their completions packed into one row: tokens see only
              their own group (absent: the whole row is one group)

Query i attends key j iff ``j <= i``, both are in one group and ``segment[j] in (0, segment[i])``;
every token also attends itself, so a padding row is never empty (an all-masked SDPA row is NaN,
and NaN times a zero gradient is still NaN in the weight gradients). Each sequence then computes
exactly what it would alone in its own row; only padding and the repeated prompt are no longer
computed.

The mask goes to the model as a 4D tensor, which transformers passes through unchanged to
``sdpa`` (boolean, True = attend) and ``eager`` (additive float). Flash-attention kernels take
no such mask and FlexAttention wants a BlockMask (not built here: it has no backward on CPUs, so
it could not be tested): :func:`segment_mask` refuses both by name, and callers keep the plain
path (one padded sequence per row) selectable for them.
"""
from __future__ import annotations

import torch

PAD, PREFIX = -1, 0
SUPPORTED = ("sdpa", "eager")


def segment_mask(segments: torch.Tensor, attn_implementation: str | None, dtype: torch.dtype,
                 groups: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, T, T) attention mask for ``segments`` (and ``groups``), (B, T), as in the module docstring.

    Boolean for ``sdpa``, additive (0 / dtype's min) for ``eager``; ``dtype`` is the model's.
    """
    impl = attn_implementation or "eager"
    if impl not in SUPPORTED:
        raise ValueError(f"attention implementation {impl!r}: packed and shared-prompt rows pass a dense 4D mask, "
                         f"which only {SUPPORTED} take; turn them off (stage.pack=false, ptx.pack=false, "
                         f"stage.shared_prompt=false) or load the model with attn_implementation='sdpa'")
    T = segments.shape[-1]
    q, k = segments[:, :, None], segments[:, None, :]  # (B, T, 1), (B, 1, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (k != PAD) & ((k == PREFIX) | (k == q))
    if groups is not None:
        allowed &= groups[:, :, None] == groups[:, None, :]
    allowed |= torch.eye(T, dtype=torch.bool, device=segments.device)
    allowed = allowed[:, None]
    if impl == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed, torch.finfo(dtype).min)


def model_mask(model, segments: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`segment_mask` for ``model``'s attention implementation and dtype."""
    return segment_mask(segments, getattr(model.config, "_attn_implementation", None), model.dtype, groups)


def shared_prompt_row(prompt: list[int], completions: list[list[int]]) -> dict[str, list[int]]:
    """One row: the prompt once, then each completion, positions continuing from the prompt.

    Returns ``input_ids``, ``segments``, ``position_ids`` (all of length P + sum of the
    completions' lengths) and ``last``: the index of each completion's last token.
    """
    P = len(prompt)
    ids, seg, pos, last = list(prompt), [PREFIX] * P, list(range(P)), []
    for s, c in enumerate(completions, start=1):
        ids += c
        seg += [s] * len(c)
        pos += range(P, P + len(c))
        last.append(len(ids) - 1)
    return {"input_ids": ids, "segments": seg, "position_ids": pos, "last": last}


def pack_groups(rows: list[dict]) -> tuple[list[dict], list[int]]:
    """Shared-prompt rows (:func:`shared_prompt_row`) packed into rows as wide as the longest one.

    Returns the packed rows (each input row one ``group``), the packed row holding each input
    row, and each input row's ``last`` indices shifted to their place in the packed row.
    """
    members = pack([len(r["input_ids"]) for r in rows], max(len(r["input_ids"]) for r in rows))
    packed, where, offset = [], [0] * len(rows), [0] * len(rows)
    for b, idx in enumerate(members):
        row = {"input_ids": [], "segments": [], "position_ids": [], "groups": []}
        for g, i in enumerate(idx):
            where[i], offset[i] = b, len(row["input_ids"])
            for key in ("input_ids", "segments", "position_ids"):
                row[key] += rows[i][key]
            row["groups"] += [g] * len(rows[i]["input_ids"])
        packed.append(row)
    last = [[offset[i] + j for j in r["last"]] for i, r in enumerate(rows)]
    return packed, where, last


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of sequences per row, first-fit in order of decreasing length; no row exceeds
    ``capacity`` (which must be at least the longest length)."""
    rows, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def collate_segmented(rows: list[dict], pad_id: int, ignore: int = -100) -> dict[str, torch.Tensor]:
    """Right-pad segmented rows (``input_ids``, ``segments``, ``position_ids``, optional
    ``labels``) into (B, T) tensors: padding has segment -1, position 0, label ``ignore``."""
    T = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "segments": PAD, "position_ids": 0, "groups": -1, "labels": ignore}
    out = {}
    for key, value in fill.items():
        if key in rows[0]:
            t = torch.full((len(rows), T), value, dtype=torch.long)
            for i, r in enumerate(rows):
                t[i, :len(r[key])] = torch.tensor(r[key], dtype=torch.long)
            out[key] = t
    return out


def pack_documents(docs: list[dict], ignore: int = -100) -> list[dict]:
    """Documents (``input_ids``, ``labels``) packed into rows as wide as the longest one.

    Each document restarts its positions and sees only itself; the label of a document's first
    token becomes ``ignore``, since in a packed row the token before it belongs to another
    document (alone in a row, no position predicts a first token either). Loss over the packed
    rows therefore counts exactly the tokens it counts over the same documents padded.
    """
    lengths = [len(d["input_ids"]) for d in docs]
    out = []
    for members in pack(lengths, max(lengths)):
        row = {"input_ids": [], "labels": [], "segments": [], "position_ids": []}
        for s, i in enumerate(members, start=1):
            d = docs[i]
            row["input_ids"] += d["input_ids"]
            row["labels"] += [ignore] + list(d["labels"][1:])
            row["segments"] += [s] * lengths[i]
            row["position_ids"] += range(lengths[i])
        out.append(row)
    return out
