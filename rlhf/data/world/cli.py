"""`rlhf-world OUT_DIR`: write the built-in world for inspection and print its calibration."""
from __future__ import annotations

import argparse
import json
import time

from .tasks import FAMILIES
from .writer import write_world


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="rlhf-world", description=__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    for name, default in (("pretrain", 20000), ("pretrain-val", 1000), ("sft", 2000),
                          ("sft-val", 200), ("rm", 2000), ("ppo", 1000), ("val", 250),
                          ("test", 250)):
        ap.add_argument(f"--n-{name}", type=int, default=default)
    ap.add_argument("--families", default=None,
                    help=f"comma-separated subset of: {','.join(FAMILIES)} (default: all)")
    ap.add_argument("--labeler-noise", type=float, default=1.0,
                    help="scales every labeler's judgement noise")
    a = ap.parse_args(argv)
    start = time.perf_counter()
    paths = write_world(
        a.out_dir, seed=a.seed, n_pretrain=a.n_pretrain, n_pretrain_val=a.n_pretrain_val,
        n_sft=a.n_sft, n_sft_val=a.n_sft_val, n_rm=a.n_rm, n_ppo=a.n_ppo, n_val=a.n_val,
        n_test=a.n_test, families=a.families.split(",") if a.families else None,
        labeler_noise=a.labeler_noise)
    seconds = time.perf_counter() - start
    for name, path in paths.items():
        lines = sum(1 for _ in path.open()) if path.suffix == ".jsonl" else "-"
        print(f"{str(path):<48} {lines:>6} lines")
    info = json.loads(paths["world"].read_text())
    cal, gold = info["calibration"], info["gold"]
    print(f"agreement: training labelers {cal['training_agreement']['mean']:.3f} "
          f"(+/- {cal['training_agreement']['sd']:.3f}), held-out labelers "
          f"{cal['held_out_agreement']['mean']:.3f}  (paper: 0.726, 0.773)")
    print("training labelers vs gold by gold gap: " + ", ".join(
        f"{k} {v['agree']:.3f}" for k, v in cal["training_vs_gold"].items() if k != "tied_share"))
    print(f"gold: demonstrations {gold['demonstrations_mean']:.3f}, offline candidates "
          f"{gold['offline_candidates_mean']:.3f}, best achievable 1.0")
    print(f"written in {seconds:.1f} s")


if __name__ == "__main__":
    main()
