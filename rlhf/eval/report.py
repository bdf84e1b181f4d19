"""The run's report, like the paper's: ``outputs/<run>/report/`` with summary.md, report.json and plots.

Reads what the stages wrote (eval's final/rlhf.json and samples.jsonl, PPO's logs/metrics.csv,
the RM's and collection's final/rlhf.json) and nothing else, so it can be rebuilt any time:
``python -m rlhf.eval.report outputs/<run>``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from rlhf.eval.measure import require_finite  # noqa: E402
from rlhf.handoff import is_finished, metrics_rows, read_provenance  # noqa: E402

METHODS = ["base", "prompted", "sft", "best_of_n", "ppo", "ppo_ptx", "ppo_beta"]  # the paper's, + baselines
PPO_RUNS = ["ppo", "ppo_ptx", "ppo_beta"]
FIGURES = ["win_rate.png", "ppo_training.png", "alignment_tax.png", "ppo_phases.png"]
PHASES = ["generation", "policy_pass", "reference_pass", "value_pass", "rm_pass", "advantages",
          "policy_update", "value_update", "ptx"]  # rlhf.modules.ppo's time/<phase>_s, in order
MISMATCH = ["mismatch/abs", "mismatch/k3", "mismatch/ratio_spread"]
BEST_OF_N = {"one_sample": "one sample", "rm_best": "RM's best of {n}", "judge_best": "judge's best of {n}"}


def ppo_runs(run_dir: Path) -> list[str]:
    """The run's PPO stage directories: the pipeline's three, then later rounds' (rounds=N) in order."""
    later = sorted((d.name for d in run_dir.glob("ppo_ptx_r*") if d.name[9:].isdigit()), key=lambda n: int(n[9:]))
    return [s for s in [*PPO_RUNS, *later] if (run_dir / s).is_dir()]


def _info(run_dir: Path, stage: str) -> dict | None:
    return read_provenance(run_dir / stage / "final") if is_finished(run_dir / stage) else None


def ppo_curves(run_dir: Path, stage: str, keys=("train/score", "train/kl", "train/val_win_rate")
               ) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} from a PPO stage's CSV metrics."""
    out = {k: [] for k in keys}
    for row in metrics_rows(run_dir / stage):
        for k in keys:
            if row.get(k):
                out[k].append((int(row["step"]), float(row[k])))
    return out


def ppo_phases(run_dir: Path, stage: str) -> dict:
    """{"seconds": {phase: mean wall seconds per iteration}, "mismatch": {key: max over iterations}}
    from a PPO stage's CSV metrics (phases it never ran, e.g. ptx in plain PPO, are left out)."""
    seconds, mismatch = {p: [] for p in PHASES}, {k: [] for k in MISMATCH}
    for row in metrics_rows(run_dir / stage):
        for p in PHASES:
            if row.get(f"time/{p}_s"):
                seconds[p].append(float(row[f"time/{p}_s"]))
        for k in MISMATCH:
            if row.get(f"train/{k}"):
                mismatch[k].append(abs(float(row[f"train/{k}"])))
    return {"seconds": {p: sum(v) / len(v) for p, v in seconds.items() if v},
            "mismatch": {k: max(v) for k, v in mismatch.items() if v}}


def methods_table(metrics: dict) -> dict[str, dict[str, list[float]]]:
    """{method: {figure: [mean, lo, hi]}} from eval's flat ``method/figure[_lo|_hi]`` metrics."""
    table: dict[str, dict[str, list[float]]] = {}
    for key, value in metrics.items():
        method, fig = key.split("/", 1)
        if fig.endswith(("_lo", "_hi")):
            continue
        table.setdefault(method, {})[fig] = [value, metrics.get(f"{key}_lo", value), metrics.get(f"{key}_hi", value)]
    order = [m for m in METHODS if m in table] + sorted(set(table) - set(METHODS))
    return {m: table[m] for m in order}


def best_of_n(info: dict | None) -> dict | None:
    """The best-of-n check from bestofn's rlhf.json: {n, n_prompts, judge, policy, picks, rm_helps, verdict}.

    picks: {one_sample | rm_best | judge_best: {win_rate_vs_one | gold: [mean, lo, hi]}}.
    """
    if not info:
        return None
    picks = methods_table({k: v for k, v in info["metrics"].items() if k.split("/")[0] in BEST_OF_N})
    return {"n": info.get("n"), "n_prompts": info.get("n_prompts"), "judge": info.get("judge"),
            "policy": info.get("init"), "picks": {p: picks[p] for p in BEST_OF_N if p in picks},
            "rm_helps": bool(info["metrics"].get("rm_helps")), "verdict": info.get("verdict")}


def best_of_n_markdown(bon: dict | None) -> list[str]:
    """The summary's "Best-of-n check" section (no lines without a bestofn stage)."""
    if not bon:
        return []
    n = bon.get("n") or "n"
    cols = [c for c in ("win_rate_vs_one", "gold") if any(c in f for f in bon["picks"].values())]
    lines = ["## Best-of-n check", "",
             f"Before PPO: {n} samples per prompt from {bon['policy']} on {bon['n_prompts']} validation prompts; "
             f"the pick of one sample, of the RM and of the judge ({bon['judge']}), each judged against one "
             "sample (ties count half). If the RM's best of n is no better than one sample, PPO against "
             "this RM is unlikely to beat SFT.", "",
             "| pick | " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for pick, figs in bon["picks"].items():
        lines.append(f"| {BEST_OF_N[pick].format(n=n)} | " + " | ".join(_fmt(figs.get(c)) for c in cols) + " |")
    verdict = bon.get("verdict") or ""
    return lines + ["", f"**{verdict}**" if not bon["rm_helps"] else verdict, ""]


def _fmt(v: list[float] | None, ci: bool = True) -> str:
    if v is None:
        return "–"
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if ci and v[1] != v[2] else f"{v[0]:.3f}"


def plot_win_rates(table: dict, path: Path) -> None:
    names = list(table)
    means = [table[m]["win_rate"][0] for m in names]
    errs = [[means[i] - table[m]["win_rate"][1] for i, m in enumerate(names)],
            [table[m]["win_rate"][2] - means[i] for i, m in enumerate(names)]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, means, yerr=errs, capsize=4, color="#4C72B0")
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set(ylabel="win rate against SFT", ylim=(0, 1), title="Held-out labelers' preference (95% CI)")
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def plot_ppo(curves: dict[str, dict], path: Path, chosen: dict | None = None) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for stage, c in curves.items():
        for ax, key in zip(axes, ("train/score", "train/kl", "train/val_win_rate")):
            if c.get(key):
                line, = ax.plot(*zip(*c[key]), label=stage, marker="o" if key == "train/val_win_rate" else None)
                pick = (chosen or {}).get(stage, {})
                if key == "train/val_win_rate" and pick.get("win_rate") is not None:  # the exported checkpoint
                    ax.plot(pick["iterations"] - 1, pick["win_rate"], "*", ms=14, color=line.get_color())
    for ax, title in zip(axes, ("RM score (normalised)", "KL to SFT (nats / response)",
                                "judge's win rate vs SFT, validation prompts")):
        ax.set(xlabel="PPO iteration", title=title)
        ax.legend() if ax.lines else ax.text(0.5, 0.5, "no PPO run", ha="center", transform=ax.transAxes)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def ppo_alarms(run_dir: Path, stage: str) -> list[dict]:
    """The alarms a PPO stage raised (``<stage>/alarms.jsonl``), in order."""
    path = run_dir / stage / "alarms.jsonl"
    return [json.loads(line) for line in path.open()] if path.is_file() else []


def alarms_markdown(alarms: dict[str, list[dict]]) -> list[str]:
    lines = ["## PPO alarms", ""]
    raised = [(s, a) for s, rows in alarms.items() for a in rows]
    if not raised:
        return lines + [f"None raised in {', '.join(alarms) or 'any PPO run'} (thresholds: stage.alarms).", ""]
    return lines + [f"- **{s}**, iteration {a['iteration']}: {a['alarm']}: {a['message']}" for s, a in raised] + [""]


def plot_phases(phases: dict[str, dict], path: Path) -> None:
    """One stacked bar per PPO run: mean wall seconds per iteration, split by phase."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = [n for n in phases if phases[n]["seconds"]]
    left = [0.0] * len(names)
    for i, p in enumerate(PHASES):
        widths = [phases[n]["seconds"].get(p, 0.0) for n in names]
        if any(widths):
            ax.barh(names, widths, left=left, label=p, color=plt.cm.tab10(i))
            left = [a + b for a, b in zip(left, widths)]
    ax.set(xlabel="seconds per PPO iteration", title="Where a PPO iteration's time goes")
    ax.legend(fontsize=7, ncol=3) if names else ax.text(0.5, 0.5, "no PPO run", ha="center", transform=ax.transAxes)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def phases_markdown(phases: dict[str, dict]) -> list[str]:
    names = [n for n in phases if phases[n]["seconds"]]
    if not names:
        return []
    lines = ["## PPO iterations: time per phase and log-prob mismatch", "",
             "Mean wall seconds per iteration by phase, and the largest mismatch over iterations between the "
             "rollout's log-probs and the update's first recomputation on the same tokens (0 in fp32: "
             "both come from the same weights).", "",
             "| run | " + " | ".join(PHASES) + " | total | " + " | ".join(MISMATCH) + " |",
             "|" + " --- |" * (len(PHASES) + len(MISMATCH) + 2)]
    for n in names:
        sec, mm = phases[n]["seconds"], phases[n]["mismatch"]
        lines.append(f"| {n} | " + " | ".join(f"{sec[p]:.3f}" if p in sec else "-" for p in PHASES)
                     + f" | {sum(sec.values()):.3f} | " + " | ".join(f"{mm[k]:.1e}" if k in mm else "-" for k in MISMATCH)
                     + " |")
    return lines + [""]


def selected_markdown(chosen: dict[str, dict]) -> list[str]:
    """Which candidate each PPO run exported, and why (``rlhf.eval.selection``)."""
    if not chosen:
        return []
    return ["## Exported PPO checkpoints", "", *(f"- **{s}**: {c['why']}" for s, c in chosen.items()), ""]


def families_markdown(families: dict[str, dict], reference: str = "sft") -> list[str]:
    """Gold score per task family (built-in world), each method's difference to the reference's."""
    if reference not in families:
        return []
    names = list(families[reference])
    lines = ["## Gold score by task family", "",
             f"Mean gold score of each method's samples per family; in brackets the difference to {reference}'s.", "",
             "| method | " + " | ".join(f"{f} (n={families[reference][f]['n']})" for f in names) + " |",
             "|" + " --- |" * (len(names) + 1)]
    for m, figs in families.items():
        ref = families[reference]
        lines.append(f"| {m} | " + " | ".join(
            f"{figs[f]['gold']:.3f}" + ("" if m == reference else f" ({figs[f]['gold'] - ref[f]['gold']:+.3f})")
            if f in figs else "–" for f in names) + " |")
    return lines + [""]


def plot_tax(table: dict, path: Path) -> None:
    names = [m for m in table if m.startswith("ppo")]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(names, [table[m]["alignment_tax"][0] for m in names], color="#DD8452")
    ax.axhline(0, color="grey", lw=1)
    ax.set(ylabel="pretraining val loss − SFT's", title="Alignment tax (lower is better)")
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def build_report(run_dir: str | Path, n_examples: int = 8) -> Path:
    run_dir = Path(run_dir)
    ev = _info(run_dir, "eval")
    if ev is None:
        raise FileNotFoundError(f"{run_dir}/eval/final/rlhf.json not found: run stage=eval first")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = methods_table(ev["metrics"])
    runs = ppo_runs(run_dir)
    curves = {s: ppo_curves(run_dir, s) for s in runs}
    phases = {s: ppo_phases(run_dir, s) for s in runs}
    raised = {s: ppo_alarms(run_dir, s) for s in runs}
    stages = {s: (_info(run_dir, s) or {}).get("metrics") for s in ("collect", "rm", "bestofn")}
    chosen = {s: info["selected"] for s in runs if (info := _info(run_dir, s)) and info.get("selected")}
    report = {"run": str(run_dir), "judge": ev.get("judge"), "n_prompts": ev.get("n_prompts"),
              "samples_per_prompt": ev.get("samples_per_prompt"), "best_of_n_baseline": ev.get("best_of_n"),
              "methods": table, "families": ev.get("families") or {}, "ppo_selected": chosen,
              "ppo_curves": curves, "ppo_phases": phases, "ppo_alarms": raised,
              **{s: m for s, m in stages.items() if m}}
    if bon := best_of_n(_info(run_dir, "bestofn")):
        report["best_of_n"] = bon
    require_finite(report, f"{out}/report.json")  # a NaN read from a stage's files stops here
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    plot_win_rates(table, out / FIGURES[0])
    plot_ppo(curves, out / FIGURES[1], chosen)
    plot_tax(table, out / FIGURES[2])
    plot_phases(phases, out / FIGURES[3])
    (out / "summary.md").write_text(summary_markdown(report, run_dir / "eval" / "samples.jsonl", n_examples))
    return out


def summary_markdown(report: dict, samples: Path, n_examples: int) -> str:
    cols = ["win_rate", "gold", "rm", "kl_to_ref", "alignment_tax"]
    lines = [f"# Report: {report['run']}", "",
             f"{report['n_prompts']} held-out prompts x {report['samples_per_prompt']} samples, judged by "
             f"{report['judge']}; win rates against SFT with 95% intervals (ties count half).", "",
             "| method | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for m, figs in report["methods"].items():
        lines.append(f"| {m} | " + " | ".join(_fmt(figs.get(c), ci=c == "win_rate") for c in cols) + " |")
    if report.get("best_of_n_baseline"):
        lines += ["", f"best_of_n: SFT's best of {report['best_of_n_baseline']} samples by the RM (the cheap alternative to "
                  "PPO); its KL is the analytic log n - (n-1)/n."]
    lines += ["", *selected_markdown(report.get("ppo_selected", {})), *families_markdown(report.get("families", {})),
              *(f"![{f}]({f})" for f in FIGURES), "", *best_of_n_markdown(report.get("best_of_n")),
              *alarms_markdown(report.get("ppo_alarms", {})), *phases_markdown(report.get("ppo_phases", {})),
              "## Examples", ""]
    if samples.is_file():
        step = report.get("samples_per_prompt") or 1  # one example per prompt
        rows = [json.loads(line) for line in samples.open()][::step][: n_examples]
        for row in rows:
            lines += [f"**{row.pop('prompt')}**", ""] + [f"- *{k}*: {v}" for k, v in row.items()] + [""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="Rebuild outputs/<run>/report/ from a finished run.")
    ap.add_argument("run_dir")
    print(build_report(ap.parse_args().run_dir))


if __name__ == "__main__":
    main()
