"""Which PPO candidate is exported (rlhf.eval.selection.pick)."""
from __future__ import annotations

import pytest

from rlhf.eval.selection import pick, why


def cand(it, score, kl, win=None):
    return {"iterations": it, "score": score, "kl": kl, "win_rate": win,
            "win_lo": None if win is None else win - 0.05, "win_hi": None if win is None else win + 0.05}


def test_the_judge_wins_over_the_rm_score():
    cands = [cand(20, 0.1, 0.5, 0.55), cand(40, 0.4, 1.5, 0.71), cand(60, 0.9, 3.0, 0.52)]
    assert pick(cands)["iterations"] == 40  # RM score still rising at 60, win rate clearly down: over-optimised
    assert "iteration 40 of 3 candidates" in why(pick(cands), cands, None) and "0.710" in why(pick(cands), cands, None)


def test_a_later_candidate_within_the_noise_of_the_best_is_kept():
    """Intervals +-0.05: 0.61 at 40 is not clearly better than 0.56 at 60 (0.56 + 0.05 >= 0.61 - 0.05)."""
    cands = [cand(20, 0.1, 0.5, 0.55), cand(40, 0.4, 1.5, 0.61), cand(60, 0.9, 3.0, 0.56), cand(80, 1.0, 3.1, 0.50)]
    assert pick(cands)["iterations"] == 60  # 80's interval [0.45, 0.55] lies below 40's [0.56, 0.66]
    text = why(pick(cands), cands, None)
    assert "latest within the interval of the best" in text and "iteration 40: 0.610" in text


def test_a_tie_in_win_rate_goes_to_the_later_candidate():
    assert pick([cand(20, 0.1, 0.5, 0.6), cand(40, 0.2, 1.0, 0.6)])["iterations"] == 40


def test_without_a_judge_the_best_rm_score_within_the_kl_budget():
    cands = [cand(20, 0.1, 0.5), cand(40, 0.4, 1.5), cand(60, 0.9, 3.0)]
    assert pick(cands)["iterations"] == 60
    assert pick(cands, kl_budget=2.0)["iterations"] == 40
    assert pick(cands, kl_budget=0.1)["iterations"] == 20  # none within: the closest to SFT
    assert "none was within the KL budget" in why(pick(cands, 0.1), cands, 0.1)
    assert "no judge" in why(pick(cands, 2.0), cands, 2.0)


def test_no_candidates_is_an_error():
    with pytest.raises(ValueError, match="no PPO candidates"):
        pick([])


def test_best_of_n_picks_each_groups_top_rm_score(monkeypatch):
    """Eval's baseline: per prompt, samples_per_prompt picks, each the best of its own n samples."""
    import torch
    from omegaconf import OmegaConf

    import rlhf.stages.eval as ev
    # 2 prompts x (s=2 picks x n=3 samples); the RM scores a response by its length
    monkeypatch.setattr(ev, "sample", lambda m, t, prompts, tmpl, n, **kw: [
        [f"{p}{'x' * k}" for k in (1, 4, 2, 3, 6, 5)][:n] for p in prompts])
    monkeypatch.setattr(ev, "rm_scores", lambda rm, tok, ps, rs, tmpl, max_group: torch.tensor([float(len(r)) for r in rs]))
    st = OmegaConf.create({"best_of_n": 3, "samples_per_prompt": 2, "temperature": 1.0})
    picks = ev.best_of_n(None, None, None, None, ["a", "b"], st, 8, "{prompt}")
    assert picks == ["axxxx", "axxxxxx", "bxxxx", "bxxxxxx"]
