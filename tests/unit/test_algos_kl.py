"""KL estimators and the KL coefficient controllers."""

import math

import pytest
import torch

from rlhf.algos.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3

LP = torch.tensor([[-1.0, -2.0, -0.5]])
REF = torch.tensor([[-1.5, -1.0, -0.5]])


def test_kl_estimators_golden():
    torch.testing.assert_close(kl_k1(LP, REF), torch.tensor([[0.5, -1.0, 0.0]]))
    torch.testing.assert_close(kl_k2(LP, REF), torch.tensor([[0.125, 0.5, 0.0]]))
    # k3 = exp(ref - lp) - 1 - (ref - lp): ref - lp = -0.5, 1, 0
    expected = [math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1, 0.0]
    torch.testing.assert_close(kl_k3(LP, REF), torch.tensor([expected]))
    assert (kl_k3(LP, REF) >= 0).all()


def test_k1_and_k3_unbiased():
    # exact expectations under p of k1 and k3 equal KL(p || q)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    kl = (p * (p / q).log()).sum()
    torch.testing.assert_close((p * kl_k1(p.log(), q.log())).sum(), kl)
    torch.testing.assert_close((p * kl_k3(p.log(), q.log())).sum(), kl)


def test_fixed_controller():
    c = FixedKLController(0.02)
    c.update(100.0, 512)
    assert c.value == 0.02
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.value == 0.02


def test_adaptive_controller_golden():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    c.update(7.5, 1000)  # error 0.25 -> clipped to 0.2: coef *= 1 + 0.2 * 0.1
    assert c.value == pytest.approx(0.1 * 1.02)
    c.update(5.4, 500)  # error -0.1: coef *= 1 - 0.1 * 0.05
    assert c.value == pytest.approx(0.1 * 1.02 * 0.995)
    c.update(0.0, 2000)  # error -1 -> clipped to -0.2: coef *= 1 - 0.2 * 0.2
    assert c.value == pytest.approx(0.1 * 1.02 * 0.995 * 0.96)
    c.update(6.0, 2000)  # on target: unchanged
    assert c.value == pytest.approx(0.1 * 1.02 * 0.995 * 0.96)


def test_adaptive_controller_resumes():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    for kl in (9.0, 8.0, 3.0):
        c.update(kl, 512)
    resumed = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    resumed.load_state_dict(c.state_dict())
    assert resumed.value == c.value
    c.update(7.0, 512)
    resumed.update(7.0, 512)
    assert resumed.value == c.value


def test_kl_budget_target_is_best_of_n_kl():
    import math

    import pytest
    from omegaconf import OmegaConf

    from rlhf.stages.ppo import kl_controller, kl_target
    assert kl_target(OmegaConf.create({"target": None, "target_best_of_n": 8})) == pytest.approx(1.2044, abs=1e-4)
    assert kl_target(OmegaConf.create({"target": 3.0, "target_best_of_n": 8})) == 3.0  # an explicit target wins
    ctl = kl_controller(OmegaConf.create({"controller": "adaptive", "coef": 0.02, "target": None,
                                          "target_best_of_n": 2, "horizon": 100}))
    assert ctl.target == pytest.approx(math.log(2) - 0.5)
    with pytest.raises(ValueError, match="kl.target"):
        kl_target(OmegaConf.create({"target": None, "target_best_of_n": None}))
