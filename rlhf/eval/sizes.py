"""The paper's Figure 1: every model size and method judged against one reference.

Each size is its own pipeline run (``rlhf-pipeline experiment=paper_sizes`` is a multirun over ``model``)
and its ``eval/samples.jsonl`` holds responses to the same test prompts. Win rates inside one
run are against that run's SFT; Figure 1 instead judges every (size, method) against the
largest size's SFT, as the paper does against SFT 175B, so sizes can be compared.

    python -m rlhf.eval.sizes outputs/paper_sizes/tiny outputs/paper_sizes/small outputs/paper_sizes/medium
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import matplotlib
import torch
from hydra.experimental.callback import Callback
from transformers import AutoConfig, AutoModelForCausalLM

from rlhf import feedback
from rlhf.data.formats import read_jsonl
from rlhf.eval.measure import judge_pairs, mean_ci
from rlhf.eval.report import METHODS
from rlhf.handoff import read_provenance

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


def n_params(model_dir: str | Path) -> int:
    """Parameter count from the config alone (meta device: no weights are read)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def figure1(run_dirs: list[Path], judge, out_dir: Path, reference: str = "sft", seed: int = 0) -> dict:
    """{size: {method: (win rate, lo, hi)}} against the largest run's ``reference`` responses."""
    runs = []
    for run in map(Path, run_dirs):
        info = read_provenance(run / "eval" / "final")
        rows = read_jsonl(run / "eval" / "samples.jsonl", "prompt")
        runs.append((n_params(info["models"]["sft"]), run, rows))
    runs.sort(key=lambda r: r[0])
    ref_rows = runs[-1][2]
    flat = [r["prompt"] for r in ref_rows]
    for _, run, rows in runs:
        if [r["prompt"] for r in rows] != flat:
            raise ValueError(f"{run}/eval/samples.jsonl: its prompts differ from {runs[-1][1]}'s; "
                             "every size must be evaluated on the same test prompts (same world seed and sizes)")
    rng, table = random.Random(seed), {}
    for size, run, rows in runs:
        table[run.name] = {"params": size}
        for method in [m for m in METHODS if m in rows[0]]:
            prefs = judge_pairs(judge, flat, [r[method] for r in rows], [r[reference] for r in ref_rows], rng)
            table[run.name][method] = mean_ci(prefs)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"reference": f"{runs[-1][1].name}/{reference}", "judge": feedback.describe(judge),
              "n_pairs": len(flat), "sizes": table}
    (out_dir / "figure1.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    _plot(table, result["reference"], out_dir / "figure1.png")
    _markdown(result, out_dir / "figure1.md")
    return result


def _plot(table: dict, reference: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = list(table)
    xs = [table[s]["params"] for s in sizes]
    for method in METHODS:
        if all(method in table[s] for s in sizes):
            ys = [table[s][method] for s in sizes]
            ax.errorbar(xs, [y[0] for y in ys], yerr=[[y[0] - y[1] for y in ys], [y[2] - y[0] for y in ys]],
                        marker="o", capsize=3, label=method)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="parameters", ylabel=f"win rate against {reference}",
           title="Figure 1: preference by model size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(result: dict, path: Path) -> None:
    sizes = result["sizes"]
    methods = [m for m in METHODS if all(m in sizes[s] for s in sizes)]
    lines = [f"# Figure 1: win rate against {result['reference']}", "",
             f"{result['n_pairs']} pairs per cell, judged by {result['judge']}; 95% intervals.", "",
             "| size | params | " + " | ".join(methods) + " |", "| --- " * (len(methods) + 2) + "|"]
    for name, row in sizes.items():
        cells = [f"{row[m][0]:.3f} [{row[m][1]:.3f}, {row[m][2]:.3f}]" for m in methods]
        lines.append(f"| {name} | {row['params'] / 1e6:.2f}M | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


class Figure1Callback(Callback):
    """After a ``paper_sizes`` multirun: Figure 1 over every size's run in ``runs_dir``."""

    def __init__(self, runs_dir: str, out_dir: str) -> None:
        self.runs_dir, self.out_dir = Path(runs_dir), Path(out_dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        runs = sorted(p.parent.parent for p in self.runs_dir.glob("*/eval/samples.jsonl"))
        if len(runs) < 2:
            log.warning("figure 1: %d finished size(s) in %s; nothing to compare", len(runs), self.runs_dir)
            return
        result = figure1(runs, feedback.load(config.judge), self.out_dir, seed=config.seed)
        log.info("figure 1: %s", self.out_dir / "figure1.md")
        print((self.out_dir / "figure1.md").read_text())
        return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="pipeline run directories, one per model size")
    ap.add_argument("--out", default=None, help="output directory (default: <parent of the runs>/figure1)")
    ap.add_argument("--seed", type=int, default=0, help="the world's seed: which held-out labelers judge")
    args = ap.parse_args(argv)
    judge = feedback.WorldLabelers(pool="held_out", seed=args.seed)
    out = Path(args.out) if args.out else Path(args.runs[0]).parent / "figure1"
    figure1([Path(r) for r in args.runs], judge, out, seed=args.seed)
    print((out / "figure1.md").read_text())


if __name__ == "__main__":
    main()
