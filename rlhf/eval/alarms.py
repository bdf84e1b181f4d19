"""Over-optimisation alarms for PPO: pure checks over what the iterations logged.

The signs users look for when a policy starts to exploit its reward model, each with a threshold
in ``stage.alarms`` (conf/stage/ppo.yaml):

    reward_hacking  the RM score rose since the best validation win rate while the judge's win
                    rate against SFT fell below it: the latest 95% interval lies wholly under the
                    best one's (non-overlapping intervals, so a small noisy sample does not fire it)
    kl_growth       KL to SFT grew by more than ``kl_per_iteration`` nats per iteration: the mean
                    over the last ``window`` iterations against the mean over the window before
                    (single iterations' KL is too noisy to difference)
    entropy_collapse  mean token entropy fell below ``entropy_fraction`` of the first iteration's
    length_drift    mean response length over the last ``window`` iterations left
                    [first / ``length_factor``, first * ``length_factor``], first = the first window's

``history`` rows are one PPO iteration each: ``{"iteration", "score", "kl", "entropy", "length"}``;
``evals`` rows one validation judgement each: ``{"iteration", "win_rate", "win_lo", "win_hi", "score"}``.
"""
from __future__ import annotations


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def kl_growth(history: list[dict], window: int, kl_per_iteration: float) -> str | None:
    if len(history) < 2 * window:
        return None
    then, now = _mean(history[-2 * window:-window], "kl"), _mean(history[-window:], "kl")
    rate = (now - then) / window
    if rate > kl_per_iteration:
        return (f"KL to SFT grew {rate:.3f} nats per iteration (mean of the last {window} iterations "
                f"{now:.2f}, of the {window} before {then:.2f}; threshold {kl_per_iteration})")
    return None


def entropy_collapse(history: list[dict], entropy_fraction: float) -> str | None:
    if not history:
        return None
    start, now = history[0]["entropy"], history[-1]["entropy"]
    if start > 0 and now < entropy_fraction * start:
        return (f"token entropy fell to {now:.3f}, below {entropy_fraction} of its start ({start:.3f}): "
                "the policy is collapsing onto few responses")
    return None


def length_drift(history: list[dict], window: int, length_factor: float) -> str | None:
    if len(history) < 2 * window:
        return None
    start, now = _mean(history[:window], "length"), _mean(history[-window:], "length")
    if start > 0 and not start / length_factor <= now <= start * length_factor:
        return (f"mean response length drifted from {start:.1f} to {now:.1f} tokens "
                f"(outside x{length_factor} of the start)")
    return None


def reward_hacking(evals: list[dict]) -> str | None:
    if len(evals) < 2:
        return None
    best = max(evals[:-1], key=lambda e: e["win_rate"])
    now = evals[-1]
    if now["score"] > best["score"] and now["win_hi"] < best["win_lo"]:
        return (f"RM score rose ({best['score']:.3f} -> {now['score']:.3f}) while the judge's win rate "
                f"against SFT fell ({best['win_rate']:.3f} at iteration {best['iteration']} -> "
                f"{now['win_rate']:.3f}; 95% intervals [{best['win_lo']:.3f}, {best['win_hi']:.3f}] and "
                f"[{now['win_lo']:.3f}, {now['win_hi']:.3f}]): the policy may be exploiting the RM")
    return None


def check(history: list[dict], evals: list[dict], th) -> dict[str, str]:
    """{alarm: message} for every alarm that holds now; ``th``: the ``stage.alarms`` node."""
    found = {"kl_growth": kl_growth(history, th.window, th.kl_per_iteration),
             "entropy_collapse": entropy_collapse(history, th.entropy_fraction),
             "length_drift": length_drift(history, th.window, th.length_factor),
             "reward_hacking": reward_hacking(evals)}
    return {k: v for k, v in found.items() if v}
