"""Masked statistics against plain computations on the real entries only."""

import numpy as np
import pytest
import torch

from rlhf.algos.stats import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, -5.0, 50.0, 60.0]])
M = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
REAL = np.array([1.0, 2.0, 3.0, 4.0, -5.0])  # X where M is 1


def test_masked_sum_and_mean():
    assert masked_sum(X, M).item() == pytest.approx(REAL.sum())
    assert masked_mean(X, M).item() == pytest.approx(REAL.mean())
    torch.testing.assert_close(masked_sum(X, M, dim=1), torch.tensor([6.0, -1.0]))
    torch.testing.assert_close(masked_mean(X, M, dim=1), torch.tensor([2.0, -0.5]))
    torch.testing.assert_close(masked_mean(X, M.bool(), dim=0), torch.tensor([2.5, -1.5, 3.0, float("nan")]), equal_nan=True)


def test_masked_var():
    assert masked_var(X, M).item() == pytest.approx(REAL.var(ddof=1))
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(REAL.var(ddof=0))
    with pytest.raises(ValueError):
        masked_var(X, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError):
        masked_var(X, torch.zeros_like(M), unbiased=False)


def test_masked_whiten():
    w = masked_whiten(X, M)
    real = w[M.bool()].double().numpy()
    assert real.mean() == pytest.approx(0.0, abs=1e-6)
    assert real.var(ddof=1) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(real, (REAL - REAL.mean()) / REAL.std(ddof=1), rtol=1e-5)
    assert (w[~M.bool()] == 0).all()  # padding zeroed, not whitened garbage


def test_masked_whiten_keeps_mean():
    w = masked_whiten(X, M, shift_mean=False)
    real = w[M.bool()].double().numpy()
    assert real.mean() == pytest.approx(REAL.mean(), abs=1e-5)
    assert real.var(ddof=1) == pytest.approx(1.0, abs=1e-6)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert explained_variance(returns, returns, m).item() == pytest.approx(1.0)
    const = torch.full_like(returns, 3.0)  # predicting the mean explains nothing
    assert explained_variance(const, returns, m).item() == pytest.approx(0.0, abs=1e-6)
    values = returns + torch.tensor([[1.0, -1.0, 0.0, 7.0], [0.5, 0.0, 3.0, 3.0]])
    r, v = np.array([1, 2, 3, 4, 5.0]), np.array([2, 1, 3, 4.5, 5.0])
    expected = 1 - np.var(r - v, ddof=1) / np.var(r, ddof=1)
    assert explained_variance(values, returns, m).item() == pytest.approx(expected, rel=1e-5)
