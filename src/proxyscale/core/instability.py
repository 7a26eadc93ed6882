"""What makes a run *unstable*, and how far a fitted trend can be trusted: the one owner of both (paper §3, §3.5).

The claims (Fig 9's out-of-sample check), the forecast, its plots and the monitor's alarms import these names; no
other module defines a margin, a logit threshold, the 10·ε rule or a prediction interval.

- ``unstable``: a results table gets an ``unstable`` column. Without a reference a run is unstable when it diverged,
  or when, above its size's best LR, its final loss is worse than that size's best by more than ``MARGIN`` nats
  (below the best LR a worse loss is undertraining, not instability). With a reference (the same sizes and LRs
  under a stabilising intervention, e.g. qk-layernorm on for Fig 9) a run is unstable when it diverged or its loss
  is worse than the reference run of its size and LR by more than ``MARGIN``.
- ``threshold``: a logit threshold calibrated on runs with that column: the geometric mean of the largest stable
  and the smallest unstable value, when they separate; else None (callers fall back to ``PAPER_LOGIT_THRESHOLD``).
- ``interval``: a power-law (or quadratic) fit of ``analysis.fit_log`` evaluated at N with its two-sided 80%
  prediction interval: parameter covariance plus residual variance, Student's t with the fit's degrees of freedom.

No torch here: the light commands (``list``, ``report``) and the claims import it.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import polars as pl

from .table import DIVERGED, FINAL_LOSS, LR, SIZE, replicate_columns

UNSTABLE = "unstable"
"""The column ``unstable`` adds to a results table."""
MARGIN = 0.1
"""Nats of final loss above the best loss of its size (or above its reference run) that make a run *unstable*."""
PAPER_LOGIT_THRESHOLD = 1e4
"""Paper §3.5: every run whose extrapolated layer-0 max attention logit exceeded 1e4 diverged."""
LOGIT_WATCH_FRACTION = 0.1
"""The monitor warns of a logit still rising once it is within this fraction of the threshold (a tenth of it)."""
EPS_FACTOR = 10.0
"""An update collapses once the gradient RMS is within this factor of AdamW's ε (paper §3.4, Fig 11)."""
T80 = (3.0777, 1.8856, 1.6377, 1.5332, 1.4759, 1.4398, 1.4149, 1.3968, 1.3830, 1.3722, 1.3634, 1.3562, 1.3502,
       1.3450, 1.3406, 1.3368, 1.3334, 1.3304, 1.3277, 1.3253, 1.3232, 1.3212, 1.3195, 1.3178, 1.3163, 1.3150,
       1.3137, 1.3125, 1.3114, 1.3104)
"""The 0.9 quantile of Student's t with 1..30 degrees of freedom: the half-width, in standard errors, of a two-sided
80% prediction interval. A ladder leaves few degrees of freedom (3 sizes and a power law: 1), where the normal's
1.2816 would claim a band 2.4x too narrow."""


def t80(df: int) -> float:
    """Student's t 0.9 quantile (``T80``); beyond 30 degrees of freedom the table's last value (within 2.2% of the
    normal's 1.2816, on the wide side)."""
    if df < 1:
        raise ValueError(f"a prediction interval needs at least 1 degree of freedom, got {df}")
    return T80[min(df, len(T80)) - 1]


@functools.lru_cache(maxsize=None)
def t_quantile(q: float, df: int) -> float:
    """Student's t ``q`` quantile (0.5 < q < 1) with ``df`` degrees of freedom, by bisection on its CDF (the density
    integrated by the trapezoid rule): for the calibration figure's other levels; ``t80`` is this at q = 0.9."""
    import numpy as np

    if not 0.5 < q < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0.5 < q < 1 and df >= 1, got q={q}, df={df}")
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(t: float) -> float:
        x = np.linspace(0.0, t, 4001)
        return 0.5 + float(np.trapezoid(c * (1 + x**2 / df) ** (-(df + 1) / 2), x))

    lo, hi = 0.0, 1.0
    while cdf(hi) < q:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


def collapses(grad_rms: float, eps: float) -> bool:
    """Paper §3.4: the update shrinks once the gradient RMS is within ``EPS_FACTOR`` of AdamW's ε."""
    return grad_rms < EPS_FACTOR * eps


# ---- which runs are unstable ---------------------------------------------------------------------------------------

def unstable(results: pl.DataFrame, margin: float = MARGIN, reference: pl.DataFrame | None = None) -> pl.DataFrame:
    """``results`` with an ``unstable`` column (module docstring). ``reference``: rows of the same sizes and LRs
    under a stabilising intervention, matched on the size label and LR (the intervention may change N slightly)."""
    # one LR curve per size and seed (init or data order, ``table.SEED_COLUMNS``): a seed's best is its own
    seeds = replicate_columns(results)
    if reference is not None:
        on = [SIZE, LR, *[c for c in seeds if c in reference.columns]]
        ref = reference.select(*on, pl.col(FINAL_LOSS).alias("_ref"))
        return results.join(ref, on=on, how="left").with_columns(
            ((pl.col(FINAL_LOSS).fill_nan(1e9) > pl.col("_ref") + margin) | pl.col(DIVERGED))
            .fill_null(False).alias(UNSTABLE)).drop("_ref")
    finite = results.with_columns(pl.col(FINAL_LOSS).fill_nan(None).alias("_loss"))
    best = finite.sort("_loss", nulls_last=True).group_by([SIZE, *seeds]).agg(
        pl.col("_loss").first().alias("_best"), pl.col(LR).first().alias("_best_lr"))
    return finite.join(best, on=[SIZE, *seeds]).with_columns(
        (pl.col(DIVERGED) | ((pl.col(LR) > pl.col("_best_lr"))
                               & (pl.col("_loss").fill_null(1e9) > pl.col("_best") + margin))).alias(UNSTABLE)
    ).drop("_best", "_best_lr", "_loss")


def threshold(rows: pl.DataFrame, column: str, absolute: bool = False) -> float | None:
    """Between the largest (|)value(|) of a stable run and the smallest of an unstable one, when they separate: their
    geometric mean; None when they do not (or a side is empty)."""
    separation = separating(rows, column, absolute)
    return math.sqrt(separation[0] * separation[1]) if separation[2] else None


def separating(rows: pl.DataFrame, column: str, absolute: bool = False) -> tuple[Any, Any, bool]:
    """(largest stable value, smallest unstable value, whether they separate) of ``column`` over rows flagged by
    ``unstable``; what ``threshold`` is computed from, for a message that says why there is none."""
    values = rows.with_columns((pl.col(column).abs() if absolute else pl.col(column)).alias("_v"))
    stable_max = values.filter(~pl.col(UNSTABLE))["_v"].max()
    unstable_min = values.filter(pl.col(UNSTABLE))["_v"].min()
    ok = stable_max is not None and unstable_min is not None and unstable_min > stable_max and stable_max > 0
    return stable_max, unstable_min, ok


# ---- how far a trend can be trusted --------------------------------------------------------------------------------

def interval(fit: dict[str, Any], n: float) -> dict[str, float]:
    """The fit (``analysis.fit_log``) at ``n``: ``value`` and its 80% prediction interval ``low``–``high`` (module
    docstring), with ``scale`` (its standard error in log10) and ``df``; ``low``/``high`` are NaN when the fit has no uncertainty estimate (as many points as parameters)."""
    import numpy as np

    lx = math.log10(n)
    basis = np.array([lx**p for p in range(fit["degree"], -1, -1)])
    mean = float(np.polyval(fit["coef"], lx))
    var = float(basis @ np.asarray(fit["cov"]) @ basis) + fit["sigma"] ** 2
    if not math.isfinite(var):
        return {"value": 10**mean, "low": math.nan, "high": math.nan}
    df = fit["n"] - fit["degree"] - 1
    half = t80(df) * math.sqrt(var)
    return {"value": 10**mean, "low": 10 ** (mean - half), "high": 10 ** (mean + half), "scale": math.sqrt(var),
            "df": df}
