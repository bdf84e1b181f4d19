"""KL(pi || pi_ref) per token, estimated from tokens sampled from pi, and the KL coefficient.

Estimators from Schulman, "Approximating KL Divergence" (2020), with r = pi_ref / pi:
k1 = -log r (unbiased, can be negative), k2 = 0.5 (log r)^2 (biased, low variance),
k3 = (r - 1) - log r (unbiased, always >= 0). The reward uses k1, as the paper's Eq. 2.
"""

from __future__ import annotations

import math

import torch


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """log pi - log pi_ref. logprobs, ref_logprobs: (B, T). Returns (B, T)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """0.5 * (log pi - log pi_ref)^2. logprobs, ref_logprobs: (B, T). Returns (B, T)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def logprob_mismatch(logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the update's log-probs are from the rollout's on the same tokens, before any step.

    logprobs, rollout_logprobs, mask: (B, T). Returns the mean absolute difference, the mean k3
    KL per token and the spread (max - min) of the PPO ratio over the masked tokens. Zero when
    both come from the same weights and arithmetic (this project recomputes the rollout's
    log-probs with the training model); samplers that keep their own log-probs show nonzero.
    """
    m = mask.bool()
    diff = (logprobs - rollout_logprobs)[m]
    ratio = diff.exp()
    return {"mismatch/abs": diff.abs().mean(), "mismatch/k3": kl_k3(logprobs, rollout_logprobs)[m].mean(),
            "mismatch/ratio_spread": ratio.max() - ratio.min()}


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """exp(ref - lp) - 1 - (ref - lp). logprobs, ref_logprobs: (B, T). Returns (B, T)."""
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r  # expm1: exact near r = 1, where it matters


class FixedKLController:
    """A constant KL coefficient beta (the paper: 0.02)."""

    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op; present so both controllers are interchangeable."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller steering the KL towards `target` (Ziegler et al. 2019).

    Same rule as openai/lm-human-preferences: error = clip(KL / target - 1, -0.2, 0.2);
    beta *= 1 + error * n_steps / horizon. The clip bounds the change per update, so one
    outlier batch cannot blow beta up; `horizon` (in episodes) sets how fast it adapts.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """current_kl: mean per-sequence KL of the batch; n_steps: episodes in the batch."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        # only beta is state; target and horizon stay whatever the (resumed) config says
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def best_of_n_kl(n: int) -> float:
    """KL (nats) of best-of-n sampling from its base policy, log n - (n-1)/n (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n
