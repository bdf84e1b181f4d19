"""Schema fields with their ranges: ``key(default, ge=, gt=, le=, choices=)`` and its short forms."""
from __future__ import annotations

from dataclasses import field
from typing import Any

from omegaconf import MISSING


def key(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
        choices: tuple | None = None) -> Any:
    """A schema field with its range: ``ge`` <= value (< ``gt``) <= ``le``, or one of ``choices``."""
    rng = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("choices", choices)) if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=rng)
    return field(default=default, metadata=rng)


def size(default: Any = MISSING) -> Any:
    return key(default, ge=1)


def positive(default: Any = MISSING) -> Any:
    return key(default, gt=0)


def nonneg(default: Any = MISSING) -> Any:
    return key(default, ge=0)


def fraction(default: Any = MISSING) -> Any:
    return key(default, ge=0, le=1)
