"""``rlhf-score``: score a JSONL of ``{"prompt", "response"}`` records with a trained reward model
(a prompt may be a list of chat messages, a response one assistant message).

    python -m rlhf.score outputs/quickstart/rm/final in.jsonl out.jsonl --batch-size 32

Each output line is the input record plus ``"reward"`` (normalised, as RL sees it) and
``"raw_reward"`` (the head's output). Prompts are rendered with the template the RM was trained
with (``rlhf.json``), or ``--template``. A NaN or inf score stops it with an error naming the RM
directory, before the output is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoTokenizer

from rlhf.data.convert import check_prompt, completion_text
from rlhf.data.formats import DataError, iter_jsonl, write_jsonl
from rlhf.handoff import rm_template
from rlhf.models.reward import load_reward_model, normalization, score_ids
from rlhf.models.tokenizer import encode_pair, prepare_tokenizer


def read_scoring_input(path: Path) -> list[dict]:
    """Records with a non-empty ``prompt`` (a string or messages) and ``response``; errors name file:line, an empty
    file is an error (read as ``rlhf.data.formats.read_jsonl`` reads: UTF-8, a leading BOM skipped)."""
    records = []
    for lineno, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        # a prompt may be a conversation, the response one assistant message
        response, why = completion_text(rec["response"], "response") if "response" in rec \
            else (None, "missing key 'response'")
        if err := check_prompt(rec) or why:
            raise DataError(f"{path}:{lineno}: {err}")
        records.append({**rec, "response": response})
    if not records:
        raise DataError(f'{path}: no records to score (expected JSONL of {{"prompt", "response"}})')
    return records


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="rlhf-score", description=__doc__.splitlines()[0])
    ap.add_argument("rm_dir", type=Path, help="a reward model directory (an rm stage's final/)")
    ap.add_argument("input", type=Path, help='JSONL of {"prompt", "response"}')
    ap.add_argument("output", type=Path, help="JSONL written: each record plus reward, raw_reward")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--template", default=None, help="prompt template (default: the RM's own)")
    args = ap.parse_args(argv)
    if not args.input.is_file():
        ap.error(f"{args.input}: no such file")

    records = read_scoring_input(args.input)
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(str(args.rm_dir)))
    model = load_reward_model(str(args.rm_dir))
    template = args.template or rm_template(args.rm_dir)
    rows = []
    for rec in records:
        p, r = encode_pair(tok, rec["prompt"], rec["response"], template)
        rows.append(p + r)  # prompt + response + EOS, as in training
    # NaN or inf stops here, naming the RM directory, before the output file is opened
    raw = score_ids(model, rows, tok.pad_token_id, batch_size=args.batch_size, raw=True,
                    prompts=[r["prompt"] for r in records])
    gain, bias = normalization(model)
    write_jsonl(args.output, ({**r, "reward": gain * x + bias, "raw_reward": x}
                              for r, x in zip(records, raw.tolist())))
    print(f"scored {len(records)} records -> {args.output} (reward = {gain:g} * raw + ({bias:g}))")


if __name__ == "__main__":
    main()
