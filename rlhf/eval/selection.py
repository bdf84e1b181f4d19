"""Which PPO checkpoint to export: the one the user's judge prefers on validation prompts.

The paper chose its checkpoints by labelers' preferences on validation prompts, not by RM score:
RM score keeps rising after the policy stops getting better (over-optimisation). PPO keeps a
candidate every ``stage.eval_every`` iterations and at its end (``rlhf.eval.monitor``), and
``stage.export_pick=best`` exports the pick of :func:`pick`; ``last`` exports the final policy.
The validation win rate is noisy (128 answers: +-0.08), so "best" means the latest candidate not
worse than the best beyond that noise: a later checkpoint is given up only for a clear drop.

A candidate is ``{"iterations", "score", "kl", "win_rate", "win_lo", "win_hi"}``: iterations
trained, the RM score and KL to SFT averaged over the window before it, and the judge's win rate
against SFT on the validation prompts (``None`` without a judge).
"""
from __future__ import annotations


def _best(candidates: list[dict]) -> dict:
    """The judged candidate with the best win rate (the later one on a tie)."""
    return max((c for c in candidates if c.get("win_rate") is not None), key=lambda c: (c["win_rate"], c["iterations"]))


def pick(candidates: list[dict], kl_budget: float | None = None) -> dict:
    """The candidate to export.

    With judged candidates: the latest whose 95% interval reaches the best win rate's interval,
    so an earlier checkpoint is exported only when the later ones are worse beyond the noise of
    a few hundred judged answers (argmax alone picked noise: measured in docs/generalisation.md).
    Without a judge: the best RM score among those within ``kl_budget`` nats of SFT (all, if
    None); if none is within the budget, the one closest to SFT.
    """
    if not candidates:
        raise ValueError("no PPO candidates to pick from")
    judged = [c for c in candidates if c.get("win_rate") is not None]
    if judged:
        best = _best(judged)
        return max((c for c in judged if c["win_hi"] >= best["win_lo"]), key=lambda c: c["iterations"])
    within = [c for c in candidates if kl_budget is None or c["kl"] <= kl_budget]
    if not within:
        return min(candidates, key=lambda c: c["kl"])
    return max(within, key=lambda c: (c["score"], c["iterations"]))


def why(chosen: dict, candidates: list[dict], kl_budget: float | None) -> str:
    """One sentence for the log, rlhf.json and the report."""
    n, it = len(candidates), chosen["iterations"]
    if chosen.get("win_rate") is not None:
        best = _best(candidates)
        rate = f"{chosen['win_rate']:.3f} [{chosen['win_lo']:.3f}, {chosen['win_hi']:.3f}]"
        if best["iterations"] == it:
            return f"exported iteration {it} of {n} candidates: best validation win rate against SFT {rate} by the judge"
        return (f"exported iteration {it} of {n} candidates: the latest within the interval of the best validation "
                f"win rate against SFT (iteration {best['iterations']}: {best['win_rate']:.3f} [{best['win_lo']:.3f}, "
                f"{best['win_hi']:.3f}]); its own {rate}")
    budget = f" within the KL budget of {kl_budget} nats" if kl_budget is not None else ""
    if kl_budget is not None and chosen["kl"] > kl_budget:
        return f"exported iteration {it} of {n} candidates: none was within the KL budget of {kl_budget}; the closest (KL {chosen['kl']:.2f})"
    return f"exported iteration {it} of {n} candidates: no judge; best RM score {chosen['score']:.3f}{budget} (KL {chosen['kl']:.2f})"
