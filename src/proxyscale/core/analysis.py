"""LR sensitivity (paper §3) and related summaries of final losses."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..experiments import LR_GRIDS
from .table import DIVERGED, FINAL_LOSS, L0, LR, N_PARAMS, replicate_columns

LR_GRID = LR_GRIDS["paper"]
"""The paper's 7-point LR grid (§3): scales.yaml's ``paper`` grid, the catalogue's."""
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


def lr_sensitivity_split(lrs: Sequence[float], losses: Sequence[float], l0: float | Sequence[float]) -> tuple[float, float]:
    """The LR sensitivity (uniform rule) as the sum of two parts: (below, above) = the share of the mean from the
    grid points below the best LR and above it. ``below`` is what undertrained low LRs cost, ``above`` what
    instability at high LR costs; a sensitivity that falls with N while ``above`` rises is undertraining, not
    stability (issue 14 §2)."""
    l0s = [l0] * len(losses) if isinstance(l0, (int, float)) else list(l0)
    values = [capped(loss, ref) for loss, ref in zip(losses, l0s)]
    best = min(values)
    star = lrs[values.index(best)]
    n = len(values)
    below = sum(v - best for lr, v in zip(lrs, values) if lr < star) / n
    above = sum(v - best for lr, v in zip(lrs, values) if lr > star) / n
    return below, above


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


def fit_log(x: Sequence[float], y: Sequence[float], degree: int = 1) -> dict:
    """Fit log10(y) as a polynomial of log10(x): degree 1 is a power law, 2 the paper's quadratic (Fig 9).

    Returns the coefficients (highest power first), their covariance, the residual std and the number of points
    fitted, for ``instability.interval``.
    """
    import numpy as np

    lx, ly = np.log10(np.asarray(x, float)), np.log10(np.asarray(y, float))
    ok = np.isfinite(lx) & np.isfinite(ly)
    lx, ly = lx[ok], ly[ok]
    if len(lx) < degree + 1:
        raise ValueError(f"a degree-{degree} fit needs at least {degree + 1} finite points, got {len(lx)}")
    if len(lx) > degree + 1:
        coef, cov = np.polyfit(lx, ly, degree, cov="unscaled")
        resid = ly - np.polyval(coef, lx)
        sigma = float(np.sqrt((resid**2).sum() / (len(lx) - degree - 1)))
        cov = cov * sigma**2
    else:  # exact fit: no residual to estimate the uncertainty from
        coef, cov, sigma = np.polyfit(lx, ly, degree), np.full((degree + 1, degree + 1), np.nan), float("nan")
    return {"coef": coef.tolist(), "cov": cov.tolist(), "sigma": sigma, "degree": degree, "n": int(len(lx))}


SENSITIVITY_COLUMNS = ("lr_sensitivity", "sensitivity_below_best", "sensitivity_above_best", "best_lr", "best_loss")
"""The per-curve numbers of ``sensitivity_frame`` that ``sensitivity_summary`` reports with their spread over seeds."""


def sensitivity_frame(results, by: Sequence[str]):
    """Per combination of ``by`` columns and per seed: LR sensitivity, best LR and best loss over the member LRs.

    The seed columns that vary (``table.SEED_COLUMNS``: init and data-order seeds) are added to ``by``, so one row
    is one LR curve of one seed: replicates are never mixed into one curve (``sensitivity_summary`` averages them).
    Coupled-decay rows use the paper's min-over-two-windows rule. Returns a polars frame sorted by its keys.
    """
    import polars as pl

    by = list(by) + [c for c in replicate_columns(results) if c not in by]
    rows = []
    for key, part in results.group_by(list(by), maintain_order=True):
        part = part.sort(LR)
        lrs, losses = part[LR].to_list(), part[FINAL_LOSS].fill_null(float("nan")).to_list()
        l0 = part[L0].to_list()
        coupled = "member.independent_weight_decay" in part.columns and not part["member.independent_weight_decay"][0]
        sens = lr_sensitivity_coupled(lrs, losses, l0) if coupled else lr_sensitivity(losses, l0)
        lr_star, loss_star = best_lr(lrs, losses)
        below, above = lr_sensitivity_split(lrs, losses, l0) if not coupled else (None, None)
        rows.append({**dict(zip(by, key)), N_PARAMS: part[N_PARAMS][0], "lr_sensitivity": sens,
                     "sensitivity_below_best": below, "sensitivity_above_best": above,
                     "best_lr": lr_star, "best_loss": loss_star, "lrs": len(lrs),
                     DIVERGED: int(part[DIVERGED].sum())})
    return pl.DataFrame(rows).sort(list(by))


def sensitivity_summary(results, by: Sequence[str]):
    """``sensitivity_frame`` with the seeds averaged: one row per combination of ``by``, each of
    ``SENSITIVITY_COLUMNS`` as its mean over seeds with ``COL_min``/``COL_max`` (the range over seeds), ``seeds``
    (how many), ``N`` and the runs that diverged (summed). With one seed the range is the value itself."""
    import polars as pl

    from .seeds import over_seeds

    frame = sensitivity_frame(results, by)
    if frame.height == 0:
        return frame
    by = list(by)
    spread = over_seeds(frame, by, SENSITIVITY_COLUMNS)
    counts = frame.group_by(by, maintain_order=True).agg(pl.col(N_PARAMS).first(), pl.col(DIVERGED).sum(),
                                                          pl.col("lrs").first())
    return counts.join(spread, on=by, how="left", nulls_equal=True).sort(by)
