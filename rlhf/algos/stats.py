"""Masked statistics over padded token tensors.

Every function takes `x` and a `mask` of the same shape (1 = real token, 0 = padding);
the mask may be bool or float. Padding never enters a statistic.
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` over entries where `mask` is set.

    x, mask: (...) same shape. Returns a scalar if `dim` is None, else `x` reduced over `dim`.
    """
    x = x * mask.to(x.dtype)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over entries where `mask` is set.

    x, mask: (...) same shape. Returns a scalar if `dim` is None, else `x` reduced over `dim`.
    A slice with no real entry gives NaN (0 / 0), so an empty batch is never silently 0.
    """
    return masked_sum(x, mask, dim) / masked_sum(torch.ones_like(x), mask, dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over all entries where `mask` is set.

    x, mask: (...) same shape. Returns a scalar. `unbiased` applies Bessel's n / (n - 1).
    Raises ValueError when there are too few real entries (0, or 1 with `unbiased`).
    """
    n = mask.sum()
    if n == 0 or (unbiased and n == 1):  # one host sync per call; cheap next to a forward pass
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} real entries, got {int(n)}")
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return var * n / (n - 1) if unbiased else var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise `x` to unit (unbiased) variance over its real entries.

    x, mask: (B, T). Returns (B, T) with zeros where `mask` is 0.
    With `shift_mean` (advantages) the result has mean 0; without it (rewards) the mean is
    kept, so whitening never flips the sign of an all-positive reward.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over real tokens (1 = perfect critic, <= 0 = useless).

    values, returns, mask: (B, T). Returns a scalar; NaN when the returns have zero variance.
    """
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask)
