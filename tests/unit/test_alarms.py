"""Over-optimisation alarms: each fires on a history built to trigger it and stays silent otherwise."""
from __future__ import annotations

from types import SimpleNamespace

from rlhf.eval import alarms

TH = SimpleNamespace(window=10, kl_per_iteration=0.2, entropy_fraction=0.3, length_factor=3.0)


def run(n=40, kl=lambda i: 0.03 * i, entropy=lambda i: 2.0 - 0.01 * i, length=lambda i: 12.0, score=lambda i: 0.01 * i):
    """A PPO run's per-iteration log; the defaults look like the Quick start's PPO (KL ~2.3 at 80)."""
    return [{"iteration": i, "kl": kl(i), "entropy": entropy(i), "length": length(i), "score": score(i)}
            for i in range(n)]


def test_a_healthy_run_raises_nothing():
    evals = [{"iteration": 19, "win_rate": 0.66, "win_lo": 0.54, "win_hi": 0.77, "score": 0.1},
             {"iteration": 39, "win_rate": 0.45, "win_lo": 0.33, "win_hi": 0.57, "score": 0.3}]  # overlapping
    noisy_kl = run(kl=lambda i: 0.03 * i + (0.8 if i % 7 == 0 else 0.0))  # single-iteration spikes
    assert alarms.check(noisy_kl, evals, TH) == {}


def test_kl_growing_faster_than_the_threshold_fires():
    found = alarms.check(run(kl=lambda i: 0 if i < 30 else 0.5 * (i - 30)), [], TH)
    assert set(found) == {"kl_growth"} and "0.225 nats per iteration" in found["kl_growth"]  # (2.25 - 0) / 10


def test_entropy_collapse_fires_below_its_fraction_of_the_start():
    found = alarms.check(run(entropy=lambda i: 2.0 if i < 20 else 0.5), [], TH)
    assert set(found) == {"entropy_collapse"} and "0.500" in found["entropy_collapse"]


def test_length_drift_fires_either_way():
    assert set(alarms.check(run(length=lambda i: 12.0 if i < 20 else 40.0), [], TH)) == {"length_drift"}
    assert set(alarms.check(run(length=lambda i: 12.0 if i < 20 else 3.0), [], TH)) == {"length_drift"}
    assert alarms.check(run(length=lambda i: 12.0 if i < 20 else 30.0), [], TH) == {}  # x2.5: inside x3


def test_rm_score_up_while_the_judges_win_rate_falls_is_reward_hacking():
    best = {"iteration": 19, "win_rate": 0.68, "win_lo": 0.59, "win_hi": 0.76, "score": 0.2}
    fell = {"iteration": 39, "win_rate": 0.40, "win_lo": 0.31, "win_hi": 0.49, "score": 0.6}
    found = alarms.check(run(), [best, fell], TH)
    assert set(found) == {"reward_hacking"} and "0.680 at iteration 19 -> 0.400" in found["reward_hacking"]
    assert alarms.check(run(), [best, {**fell, "score": 0.1}], TH) == {}  # the RM score fell too: no exploit
    assert alarms.check(run(), [best, {**fell, "win_hi": 0.6}], TH) == {}  # the intervals overlap: noise
