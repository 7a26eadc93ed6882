"""LR sensitivity (paper §3) and related summaries of final losses."""

from __future__ import annotations

import math
from collections.abc import Sequence

LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
"""The paper's 7-point LR grid (§3)."""
COUPLED_WINDOWS = ((1e-4, 1e-1), (3e-4, 3e-1))
"""For coupled weight decay the paper reports the minimum sensitivity over these two LR windows (§3)."""


def capped(loss: float, l0: float) -> float:
    """min(ℓ, ℓ0), with a NaN/Inf final loss counting as ℓ0 (paper §3)."""
    return l0 if not math.isfinite(loss) else min(loss, l0)


def lr_sensitivity(losses: Sequence[float], l0: float | Sequence[float]) -> float:
    """E_η[min(ℓ(η), ℓ0) − ℓ*], ℓ* the best capped loss on the grid; uniform mean over the given points.

    ``l0`` is the loss at initialisation, one value or one per point (members with other init seeds).
    """
    if not losses:
        raise ValueError("lr_sensitivity needs at least one final loss")
    l0s = [l0] * len(losses) if isinstance(l0, (int, float)) else list(l0)
    values = [capped(loss, ref) for loss, ref in zip(losses, l0s)]
    best = min(values)
    return sum(values) / len(values) - best


def _in_window(lr: float, lo: float, hi: float) -> bool:
    return lo * (1 - 1e-9) <= lr <= hi * (1 + 1e-9)


def lr_sensitivity_coupled(lrs: Sequence[float], losses: Sequence[float], l0: float | Sequence[float]) -> float:
    """Coupled weight decay: the minimum of the sensitivity over the windows [1e-4, 1e-1] and [3e-4, 3e-1]
    (paper §3), each over the grid points that fall inside it. Windows with fewer than two points are skipped."""
    l0s = [l0] * len(losses) if isinstance(l0, (int, float)) else list(l0)
    results = []
    for lo, hi in COUPLED_WINDOWS:
        idx = [i for i, lr in enumerate(lrs) if _in_window(lr, lo, hi)]
        if len(idx) >= 2:
            results.append(lr_sensitivity([losses[i] for i in idx], [l0s[i] for i in idx]))
    if not results:
        return lr_sensitivity(losses, l0s)
    return min(results)


def best_lr(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, float]:
    """(η*, ℓ*): the LR with the lowest finite final loss, and that loss (NaN, NaN if none is finite)."""
    finite = [(loss, lr) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    if not finite:
        return math.nan, math.nan
    loss, lr = min(finite)
    return lr, loss
