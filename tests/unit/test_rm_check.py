"""rlhf.eval.rm_check: the figures #4 is judged by (RM vs labelers, labeler-labeler, length, gold)."""
import itertools
import random

import pytest
import torch

from rlhf.data.formats import write_jsonl
from rlhf.data.world.candidates import candidates
from rlhf.data.world.gold import gold_score
from rlhf.data.world.labelers import LabelerPool
from rlhf.data.world.tasks import FAMILIES
from rlhf.eval import rm_check


def test_pair_agreement_by_hand():
    # ranking best first: 2 > 0 > 1; pairs (0,1) (0,2) (1,2); scores agree on (0,1) only, tie on (1,2)
    assert rm_check.pair_agreement([2, 0, 1], [0.5, 0.1, 0.1]) == (3, 6)
    assert rm_check.pair_agreement([2, 0, 1], [1.0, 0.0, 2.0]) == (6, 6)
    assert rm_check.accuracy([[0, 1], [1, 0]], [[1, 0], [1, 0]]) == 0.5
    assert rm_check.as_scores([2, 0, 1]) == [-1, -2, 0]
    # gold ties skipped: only (0,2) and (1,2) count; scores order (1,2) right, (0,2) tied
    assert rm_check.gold_agreement([[0.5, 0.5, 0.0]], [[0.0, 1.0, 0.0]]) == 0.75


def test_paired_difference_by_hand():
    # two prompts, one ranking set; a orders all 4 pairs right, b the first prompt's pair wrong
    # and ties the second prompt's 3 pairs: (8 - (0 + 3)) / 8 = 0.625
    rankings = [[[0, 1], [0, 1, 2]]]
    a, b = [[1.0, 0.0], [3.0, 2.0, 1.0]], [[0.0, 1.0], [0.0, 0.0, 0.0]]
    diff, lo, hi = rm_check.paired_difference(rankings, a, b, n_boot=400)
    assert diff == 0.625
    # resampling prompts: the first prompt drawn twice gives 1.0 (b wrong on 2 of 2), the second
    # twice 0.5 (b ties 6 of 6 -> 3)
    assert lo == 0.5 and hi == 1.0
    assert rm_check.paired_difference(rankings, a, a) == (0.0, 0.0, 0.0)


def test_paired_interval_is_the_2_5_and_97_5_percentiles_over_prompts():
    # three one-pair prompts: a beats b on one, ties on one, loses on one. Of the 27 equally likely
    # resamples, all-first (+1) and all-third (-1) each have probability 1/27 = 3.7%: inside a 95%
    # interval's 2.5% tails, outside a 90% interval's 5%
    rankings = [[[0, 1], [0, 1], [0, 1]]]
    a, b = [[1, 0], [1, 0], [0, 1]], [[0, 1], [1, 0], [1, 0]]
    exact = sorted(sum(v) / 3 for v in itertools.product([1, 0, -1], repeat=3))
    diff, lo, hi = rm_check.paired_difference(rankings, a, b)
    assert diff == 0.0
    assert (lo, hi) == (exact[0], exact[-1]) == (-1.0, 1.0)


def test_no_comparisons_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: no comparison records"):
        rm_check.check("rm", str(tmp_path / "empty.jsonl"))


@pytest.fixture
def comparisons(tmp_path):
    rng, pool = random.Random(0), LabelerPool.training(0)
    prompts = [family.make(rng) for _ in range(6) for family in FAMILIES.values()]
    recs = []
    for p in prompts:
        cands = list(dict.fromkeys(candidates(p, 6, rng)))
        recs.append({"prompt": p, "completions": cands, "ranking": pool.rank(p, cands, rng)})
    return recs, write_jsonl(tmp_path / "val.jsonl", recs)


def _fake_rm(monkeypatch, score):
    """rm_check with an 'RM' that scores each (prompt, response) by ``score``."""
    monkeypatch.setattr(rm_check, "load_reward_model", lambda d: torch.nn.Identity())
    monkeypatch.setattr(rm_check.AutoTokenizer, "from_pretrained", staticmethod(lambda d: None))
    monkeypatch.setattr(rm_check, "rm_scores",
                        lambda rm, tok, ps, cs, t: torch.tensor([score(p, c) for p, c in zip(ps, cs)]))


def test_gold_rm_beats_labelers_and_length_against_fresh_labelers(monkeypatch, comparisons):
    recs, path = comparisons
    _fake_rm(monkeypatch, gold_score)  # an RM that knows gold exactly
    out = rm_check.check("rm", str(path), n_relabel=5)
    assert out["n_comparisons"] == len(recs)
    assert out["n_pairs"] == sum(len(r["completions"]) * (len(r["completions"]) - 1) // 2 for r in recs)
    assert out["rm/agreement_with_gold"] == 1.0  # orders every pair gold does not tie like gold
    # a labeler's taste and noise make it worse at predicting another labeler than gold is
    assert out["rm/accuracy_vs_fresh_labelers"] > out["labelers/accuracy_vs_fresh_labelers"] > 0.55
    assert out["gold/accuracy_vs_fresh_labelers"] == out["rm/accuracy_vs_fresh_labelers"]  # the ceiling
    diff = out["rm_minus_labelers/accuracy_vs_fresh_labelers"]
    assert diff == pytest.approx(out["rm/accuracy_vs_fresh_labelers"] - out["labelers/accuracy_vs_fresh_labelers"])
    assert 0 < out["rm_minus_labelers/accuracy_vs_fresh_labelers_lo"] < diff < out["rm_minus_labelers/accuracy_vs_fresh_labelers_hi"]
    assert abs(out["length/accuracy_vs_fresh_labelers"] - 0.5) < 0.15
    assert out["rm/accuracy_vs_labelers"] == rm_check.accuracy(
        [r["ranking"] for r in recs], [[gold_score(r["prompt"], c) for c in r["completions"]] for r in recs])


def test_constant_rm_scores_one_half_and_user_data_skips_the_world(monkeypatch, comparisons):
    _, path = comparisons
    _fake_rm(monkeypatch, lambda p, c: 0.0)
    out = rm_check.check("rm", str(path), world=False)
    assert out["rm/accuracy_vs_labelers"] == 0.5  # every pair tied
    assert not any("fresh" in k or "gold" in k for k in out)
    assert not any("fresh" in k for k in rm_check.check("rm", str(path), n_relabel=0))
