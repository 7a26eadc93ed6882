"""How far a ladder's trend in N can be carried to a size nobody trained (issue 24): how often its 80% bands hold
the measured value on a held-out size (*coverage*), and three warnings where a power law in N is the wrong tool.

- **Coverage.** ``case`` scores one forecast band against a measured value of the held-out size (|value|, as the
  forecast's trends are fitted on |value|); ``coverage`` totals cases per quantity (``QUANTITIES``) and overall;
  ``calibration`` gives the observed fraction inside the band at several nominal levels (the report's calibration
  figure), from each case's centre, log-scale and degrees of freedom (``instability.interval``). The target is
  ``TARGET_COVERAGE`` of the cases inside their 80% bands, for every quantity with at least ``MIN_CASES`` cases.
- **The band** (``trend``, ``BANDS``): the forecast's is ``conformal``, each quantity's ``forms`` band scaled by a
  split-conformal factor (``CONFORMAL``, ``conformal_factor``) computed on validation ladders.
- **The trend bends** (``bend``): the power law (a line in log N) against one with a curvature term, each scored
  by its leave-one-size-out error; the curve is *clearly better* when its error is under ``BEND_RATIO`` of the
  line's. Needs four sizes (a curve left with two sizes cannot be scored). Both extrapolations are reported.
- **The grid's edge** (``grid_edges``): a size whose best LR is the grid's first or last point (the best may lie
  beyond it), or that is unstable already at the grid's first LR; names the LRs to add (the grid's own step, two
  points further).
- **A regime change** (``regime_change``): sizes that never turn unstable on the grid beside sizes that do
  (mini's 63× miss: the smallest size stopped turning unstable, which no power law across sizes describes). The
  forecast of the instability LR is then withheld: no point forecast the data cannot support.

No torch here; polars and numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import polars as pl

from ..core.analysis import capped, fit_log
from ..core.instability import UNSTABLE, interval, t80, t_quantile
from ..core.table import FINAL_LOSS, L0, LR, N_PARAMS, SIZE

QUANTITIES = {
    "attn_logit_max/0": "layer-0 max attention logit",
    "instability_lr": "LR where the loss turns unstable",
    "lr_sensitivity": "LR sensitivity",
    "grad_rms/layers.0.w1": "first MLP layer's gradient RMS",
    "log_z_mean": "|log Z|",
    "output_logit_mean": "|mean output logit|",
}
"""Every forecast quantity the backtest scores on the held-out size (the per-LR ones at every LR of the grid)."""
NOMINAL = 0.8
"""The level of the forecast's bands (``instability.interval``)."""
TARGET_COVERAGE = (0.7, 0.9)
"""Issue 24's target for the fraction of held-out values inside their 80% bands."""
MIN_CASES = 10
"""A quantity's coverage is judged against ``TARGET_COVERAGE`` from this many cases on (fewer: reported only)."""
CALIBRATION_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
"""The nominal levels of the calibration figure (nominal against observed coverage)."""
BEND_RATIO = 0.5
"""A curvature term in log N is *clearly better* than the line when its leave-one-size-out error (RMS, in log10) is
under this fraction of the line's: the curve halves what the line misses on sizes it did not see."""
GRID_STEPS_TO_ADD = 2
"""How many grid steps beyond the edge a grid-edge warning suggests adding."""


# ---- coverage --------------------------------------------------------------------------------------------------------

def case(quantity: str, band: dict[str, Any], measured: float | None, **where: Any) -> dict[str, Any] | None:
    """One scored case: the band (a trend of ``trend``: ``ok``, ``value``, ``low``, ``high``, ``scale``,
    ``df``) against the held-out size's ``measured`` value (its magnitude); None when either is missing (a trend
    that could not be made, a run with no finite value). ``where``: the LR, the seed, what the case is."""
    if not band.get("ok") or measured is None or not math.isfinite(measured) or measured == 0:
        return None
    m = abs(float(measured))
    return {"quantity": quantity, **where, "value": band["value"], "low": band["low"], "high": band["high"],
            "scale": band.get("scale"), "df": band.get("df"), "measured": m,
            "inside": bool(band["low"] <= m <= band["high"])}


def coverage(cases: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """Per quantity and overall: ``inside`` of ``cases`` held the measured value, their ``fraction``, and whether
    the fraction meets ``TARGET_COVERAGE`` (``None`` below ``MIN_CASES`` cases)."""
    cases = [c for c in cases if c is not None]

    def total(part: list[dict[str, Any]]) -> dict[str, Any]:
        n, k = len(part), sum(c["inside"] for c in part)
        frac = k / n if n else None
        judged = None if n < MIN_CASES else TARGET_COVERAGE[0] <= frac <= TARGET_COVERAGE[1]
        return {"inside": k, "cases": n, "fraction": frac, "on_target": judged}

    per = {q: total([c for c in cases if c["quantity"] == q]) for q in QUANTITIES}
    per.update({c["quantity"]: total([d for d in cases if d["quantity"] == c["quantity"]]) for c in cases
                if c["quantity"] not in per})
    return {"per_quantity": {q: v for q, v in per.items() if v["cases"]}, "overall": total(cases)}


def _miss(c: dict[str, Any]) -> float:
    """A scored case's miss: |log10(measured / value)|, in decades."""
    return abs(math.log10(c["measured"] / c["value"]))


def _half(c: dict[str, Any]) -> float:
    """A scored case's band half-width above its value, in decades (the bands are symmetric in log10)."""
    return math.log10(c["high"] / c["value"])


def calibration(cases: Iterable[dict[str, Any] | None],
                levels: tuple[float, ...] = CALIBRATION_LEVELS) -> list[tuple[float, float, int]]:
    """(nominal level, observed fraction inside, cases) per level: each case's band rebuilt at that level from its
    centre, log-scale and degrees of freedom (Student's t), so a calibrated band gives observed ≈ nominal."""
    usable = [c for c in cases if c is not None and c.get("scale") and c.get("df")]
    out = []
    for level in levels:
        inside = 0
        for c in usable:
            half = t_quantile(0.5 + level / 2, c["df"]) * c["scale"]
            inside += _miss(c) <= half
        out.append((level, inside / len(usable) if usable else math.nan, len(usable)))
    return out


# ---- how far the line misses sizes it did not see ----------------------------------------------------------------

def loso_rate(points: list[tuple[float, float]]) -> float | None:
    """How fast a power law through the ladder misses sizes it did not see, in log10 per decade of N: each end size
    (the smallest and the largest) predicted by the line through the other sizes, its miss (against that size's
    mean log value) over the distance extrapolated, and the root-mean-square of the two rates. None with fewer than
    three sizes (a line through one size cannot extrapolate)."""
    import numpy as np

    sizes = sorted({x for x, _ in points})
    if len(sizes) < 3:
        return None
    rates = []
    for held, nearest in ((sizes[0], sizes[1]), (sizes[-1], sizes[-2])):
        rest = [(x, y) for x, y in points if x != held]
        fit = fit_log([x for x, _ in rest], [y for _, y in rest], 1)
        mean = float(np.mean([math.log10(y) for x, y in points if x == held]))
        miss = float(np.polyval(fit["coef"], math.log10(held))) - mean
        rates.append(miss / abs(math.log10(held / nearest)))
    return float(np.sqrt(np.mean(np.square(rates))))


def form_gap(points: list[tuple[float, float]], n: float) -> float | None:
    """How much the functional form matters at ``n`` for a quantity that grows with N: |log10 of the power law's
    forecast − log10 of the forecast of the other form three sizes cannot rule out, a line in log N (``a + b·log10
    N``: growth that slows, as log Z's and the mean output logit's does)|, both fitted by least squares through
    ``points``. None for a quantity that falls with N (a line in
    log N would cross zero: no positive second form of this family) and where the line does not stay positive to
    ``n`` or through the ladder. (Weighting the gap by the line's Akaike relative likelihood against the power law
    was measured and dropped: through three sizes that nearly lie on a power law it weighs the line to ~0 and gives
    back the ``fit`` band, 52% on the mean output logit.)"""
    import numpy as np

    lx = np.log10([x for x, _ in points])
    y = np.array([y for _, y in points], float)
    coef = np.polyfit(lx, np.log10(y), 1)
    if coef[0] < 0:
        return None
    line_coef = np.polyfit(lx, y, 1)
    line, fitted = float(np.polyval(line_coef, math.log10(n))), np.polyval(line_coef, lx)
    if line <= 0 or (fitted <= 0).any():  # a line below zero at a ladder size is ruled out by the ladder
        return None
    return abs(math.log10(line) - float(np.polyval(coef, math.log10(n))))


# ---- a trend and its 80% band -------------------------------------------------------------------------------------

BANDS = ("fit", "loso", "pooled", "forms", "pooled_forms", "loso_only", "conformal")
"""How a trend's 80% band is built (issue 24), all in log10 around the power law's forecast:

- ``fit``: the fit's own prediction interval (``instability.interval``: parameter covariance plus residual scatter,
  Student's t on the fit's degrees of freedom; one for three sizes);
- ``loso``: that, and the line's leave-one-size-out miss per decade (``extrapolation.loso_rate``) carried over the
  distance from the largest size to the target, added in quadrature as a normal term;
- ``pooled``: the fit's interval with the residual scatter pooled over every LR of the ladder (``forecast.pooled_scatter``);
- ``forms``: the fit's interval and, for a quantity that grows with N, the gap between the power law and the other
  form three sizes cannot rule out, a line in log N (``extrapolation.form_gap``: growth that slows), added in
  quadrature: the band accounts for a wrong functional form;
- ``pooled_forms``: both: the residual scatter pooled over the ladder's LRs (more degrees of freedom than one LR's
  three sizes give, so Student's t is not 3.08) and the form gap added in quadrature;
- ``loso_only``: the ladder's own extrapolation error alone, not added to the fit's: the leave-one-size-out miss
  per decade (``loso_rate``, the RMS of the two end sizes' misses) carried over the distance to the target, with
  Student's t on two degrees of freedom (two misses); the fit's interval where the target is inside the ladder;
- ``conformal``: the ``forms`` band with its half-width multiplied by the quantity's split-conformal factor
  (``CONFORMAL``): the band's width in units of itself that held 80% of the held-out values on the calibration
  ladders; a quantity without a factor keeps the ``forms`` band.
"""
POOLED_BANDS = ("pooled", "pooled_forms")
"""The bands that read the ladder's scatter pooled over its LRs (``trend``'s ``pooled`` argument)."""
LOSO_Z = 1.2816
"""The normal 0.9 quantile: the ``loso`` term's half-width in units of its rate × reach."""
BAND = "conformal"
"""The band the forecast uses: ``conformal`` since the calibration below (``CONFORMAL``); before it, ``forms``,
chosen by measurement (``examples/forecast_validation.py``, docs/forecasting.md): on the
eight validation ladders looked at while choosing (``TUNING`` there, 272 held-out values), ``fit`` held 77% in its
80% band but only 55% of the mean output logits (three sizes that happen to fall on a line give a band a few
percent wide, and the mean logit's growth slows with N); ``loso`` 78% (56%), ``pooled`` 76% (61%); ``forms`` 83%,
every quantity with ten or more cases inside 70–90% but the attention logit (95%: too wide). It was then scored on
four ladders it was not chosen on (docs/forecasting.md). ``pooled_forms`` (tried after, on the same twelve ladders, to narrow the
attention logit's band, commit after 8f0d0a6) brought the logit to 89% but the mean output logit down to 65%
(overall 78%): it moves the miss from one quantity to another, so ``forms`` stays. ``loso_only`` (the ladder's own
leave-one-size-out error in place of the fit's interval, tried next) is far too narrow: 60% overall on the twelve
(the logit 71%, the mean output logit 32%), 74% on the three later ladders. ``forms`` held 84% of all 510 cases of
the fifteen ladders but 92.5% of the attention logits (too wide); ``conformal`` recalibrates each quantity's
``forms`` band on those fifteen ladders (docs/forecasting.md has its coverage on ladders it was not calibrated on)."""

CONFORMAL_BASE = "forms"
"""The band whose half-width the split-conformal factor scales."""
CONFORMAL_MIN_CASES = 64
"""A quantity gets a conformal factor from this many calibration cases on: the coverage of a split-conformal band
from n cases varies over calibration sets with a standard deviation near sqrt(0.8 × 0.2 / n), 5 points at 64 (the
once-per-size quantities, the instability LR and the LR sensitivity, have one case per ladder: they keep ``forms``)."""
CONFORMAL: dict[str, float] = {
    "attn_logit_max/0": 0.68850,  # 120 calibration cases; the forms band held 111 (92.5%): too wide
    "output_logit_mean": 1.36588,  # 120; forms held 89 (74%): the growth slows more than the form gap allows
    "log_z_mean": 0.74919,  # 120; forms held 104 (87%)
    "grad_rms/layers.0.w1": 0.84869,  # 120; forms held 99 (82.5%)
}
"""Split-conformal factors per quantity (``conformal_factors``): the ⌈(n + 1)·0.8⌉-th smallest of the n calibration
cases' scores (``conformal_score``: the miss in units of the ``forms`` band's half-width), so that a new case from the
same population falls inside the scaled band with probability at least 80% (Vovk et al. 2005; Lei et al. 2018,
"Distribution-free predictive inference for regression", §2.2, with the normalised score of their §5.2). Computed
by ``python examples/forecast_validation.py --scale micro,laptop`` (it prints them) from the fifteen validation
ladders trained before the factors existed (``CALIBRATION`` there: 14 micro, 1 laptop; each size held out one step
beyond a ladder of three), rounded up in the fifth decimal, at commit a6a98a9, AMD EPYC (AVX512-BF16, no AMX). What
they assume: the user's ladder misses like those ladders do, at their reach (one size step, ~0.3-0.5 decades); a
target decades away is carried by the ``forms`` band's own growth with reach, which no held-out size here checks."""


def conformal_score(c: dict[str, Any]) -> float:
    """A scored case's miss in units of its band's half-width (log10): |log10(measured / value)| / half-width; a case
    censored beyond the grid (``measured`` None, outside) scores infinity: no finite factor holds it."""
    if c.get("measured") is None:
        return math.inf
    half, miss = _half(c), _miss(c)
    return miss / half if half > 0 else (0.0 if miss == 0 else math.inf)


def conformal_factor(cases: Iterable[dict[str, Any] | None], level: float = NOMINAL) -> float | None:
    """The split-conformal factor of ``cases`` (one quantity's, each scored against the base band): the ⌈(n + 1) ·
    ``level``⌉-th smallest score; None below ``CONFORMAL_MIN_CASES`` cases or where that score is infinite."""
    scores = sorted(conformal_score(c) for c in cases if c is not None)
    n = len(scores)
    if n < CONFORMAL_MIN_CASES:
        return None
    k = math.ceil((n + 1) * level)
    return scores[k - 1] if k <= n and math.isfinite(scores[k - 1]) else None


def conformal_factors(cases: Iterable[dict[str, Any] | None], level: float = NOMINAL) -> dict[str, float]:
    """``conformal_factor`` per quantity of ``cases`` (those with enough cases)."""
    cases = [c for c in cases if c is not None]
    out = {}
    for q in dict.fromkeys(c["quantity"] for c in cases):
        if (f := conformal_factor([c for c in cases if c["quantity"] == q], level)) is not None:
            out[q] = f
    return out


def rescaled(c: dict[str, Any], factor: float | None) -> dict[str, Any]:
    """A scored case with its band's half-width multiplied by ``factor`` (None: unchanged), re-judged: how the
    validation scores a conformal band on a ladder whose factors were computed without it."""
    if factor is None or c.get("measured") is None:
        return dict(c)
    half = _half(c) * factor
    low, high = c["value"] / 10**half, c["value"] * 10**half
    scale = c["scale"] * factor if c.get("scale") else c.get("scale")
    return {**c, "low": low, "high": high, "scale": scale, "inside": bool(low <= c["measured"] <= high)}


def _band(b: dict[str, Any], half: float, **extra: Any) -> dict[str, Any]:
    """The interval ``b`` rebuilt with half-width ``half`` (log10) around its value; ``scale`` the half-width in
    units of its Student's t (so ``extrapolation.calibration`` can rebuild it at other levels)."""
    df = extra.get("df", b["df"])
    centre = math.log10(b["value"])
    return {**b, "low": 10 ** (centre - half), "high": 10 ** (centre + half), "scale": half / t80(df), **extra}


def trend(points: list[tuple[float, float]], n: float, band: str | None = None,
          pooled: tuple[float, int] | None = None, quantity: str | None = None) -> dict[str, Any]:
    """Power-law fit of |value| against N through ``points`` [(N, value)], forecast at ``n`` with an 80% band built
    as ``band`` says (``BANDS``; default ``BAND``; ``pooled``: the ladder's ``forecast.pooled_scatter`` for this quantity;
    ``quantity``: which of ``QUANTITIES`` it is, for the ``conformal`` band's factor); or why not."""
    good = [(x, abs(y)) for x, y in points if y is not None and math.isfinite(y) and y != 0]
    if len(good) < 3:
        return {"ok": False, "why": f"{len(good)} sizes with a value; a trend with an interval needs 3",
                "points": good}
    fit = fit_log([x for x, _ in good], [y for _, y in good], 1)
    b = interval(fit, n)
    if not math.isfinite(b["low"]):
        return {"ok": False, "why": "the fit has no residual to estimate an interval from", "points": good}
    band = band or BAND
    factor = CONFORMAL.get(quantity) if band == "conformal" and quantity else None
    band = CONFORMAL_BASE if band == "conformal" else band
    if band in POOLED_BANDS and pooled is not None and fit["sigma"] > 0:
        import numpy as np

        sigma, df = pooled
        basis = np.array([math.log10(n), 1.0])
        var = float(basis @ (np.asarray(fit["cov"]) / fit["sigma"] ** 2) @ basis) * sigma**2 + sigma**2
        b = _band(b, t80(df) * math.sqrt(var), df=df)
    if band in ("forms", "pooled_forms") and (delta := form_gap(good, n)) is not None:
        b = _band(b, math.hypot(t80(b["df"]) * b["scale"], delta), form_gap=delta)
    elif band == "loso" and (rate := loso_rate(good)) is not None:
        reach = max(0.0, math.log10(n / max(x for x, _ in good)))
        b = _band(b, math.hypot(t80(b["df"]) * b["scale"], LOSO_Z * rate * reach), loso_rate=rate)
    elif band == "loso_only" and (rate := loso_rate(good)) is not None:
        reach = math.log10(n / max(x for x, _ in good))
        if reach > 0 and rate > 0:
            b = _band(b, t80(2) * rate * reach, df=2, loso_rate=rate)
    if factor is not None:
        b = _band(b, factor * t80(b["df"]) * b["scale"], conformal=factor)
    sign = -1.0 if sum(1 for _, y in points if y is not None and y < 0) > len(good) / 2 else 1.0
    return {"ok": True, "fit": fit, "slope": fit["coef"][0], "sign": sign, "points": good, **b}


# ---- the trend bends -------------------------------------------------------------------------------------------------

def _loso_error(points: list[tuple[float, float]], degree: int) -> float | None:
    """RMS over sizes (log10) of each size's mean value predicted by the fit through the other sizes' points."""
    import numpy as np

    sizes = sorted({x for x, _ in points})
    errors = []
    for held in sizes:
        rest = [(x, y) for x, y in points if x != held]
        if len({x for x, _ in rest}) < degree + 1:
            return None
        fit = fit_log([x for x, _ in rest], [y for _, y in rest], degree)
        mean = float(np.mean([math.log10(y) for x, y in points if x == held]))
        errors.append(float(np.polyval(fit["coef"], math.log10(held))) - mean)
    return float(np.sqrt(np.mean(np.square(errors))))


def bend(points: list[tuple[float, float]], n: float) -> dict[str, Any] | None:
    """Whether |value| against N through ``points`` bends (module doc): ``None`` when it cannot be judged (fewer
    than four sizes); else ``bends`` and both leave-one-size-out errors, and both extrapolations to ``n``."""
    import numpy as np

    good = [(x, abs(y)) for x, y in points if y is not None and math.isfinite(y) and y != 0]
    if len({x for x, _ in good}) < 4:
        return None
    line, curve = _loso_error(good, 1), _loso_error(good, 2)
    if line is None or curve is None:
        return None
    at = {}
    for degree in (1, 2):
        fit = fit_log([x for x, _ in good], [y for _, y in good], degree)
        at[degree] = 10 ** float(np.polyval(fit["coef"], math.log10(n)))
    return {"bends": curve < BEND_RATIO * line, "line_error": line, "curve_error": curve,
            "line_value": at[1], "curve_value": at[2]}


def bend_warning(quantity: str, b: dict[str, Any] | None, where: str = "") -> dict[str, Any] | None:
    """The warning record for a bend (``bend``), or None when it does not bend."""
    if not b or not b["bends"]:
        return None
    text = (f"the trend bends: {QUANTITIES.get(quantity, quantity)}{where} is fitted better with a curvature term in "
            f"log N (leave-one-size-out error {b['curve_error']:.3g} vs {b['line_error']:.3g} decades); at the "
            f"target the line gives {b['line_value']:.3g}, the curve {b['curve_value']:.3g}")
    return {"kind": "bends", "quantity": quantity, "text": text, **b}


# ---- the grid's edge -------------------------------------------------------------------------------------------------

def _beyond(lrs: list[float], low: bool) -> list[float]:
    """``GRID_STEPS_TO_ADD`` LRs continuing the grid past its low or high end by its own step there."""
    if len(lrs) < 2:
        return []
    step = lrs[1] / lrs[0] if low else lrs[-1] / lrs[-2]
    edge = lrs[0] if low else lrs[-1]
    return [float(f"{edge * step ** (-k if low else k):.3g}") for k in range(1, GRID_STEPS_TO_ADD + 1)]


def grid_edges(rows: pl.DataFrame) -> list[dict[str, Any]]:
    """One warning per size whose best LR (by the capped loss averaged over its seeds) is at the grid's first or
    last point, or that is unstable already at the grid's first LR; each names the LRs to add."""
    if rows.height == 0:
        return []
    lrs = sorted(set(rows[LR].to_list()))
    out = []
    loss = pl.struct(FINAL_LOSS, L0).map_elements(
        lambda r: capped(math.nan if r[FINAL_LOSS] is None else r[FINAL_LOSS], r[L0]), return_dtype=pl.Float64)
    mean = rows.with_columns(loss.alias("_capped")).group_by(SIZE, LR).agg(
        pl.col("_capped").mean(), pl.col(N_PARAMS).first(),
        (pl.col(UNSTABLE).all() if UNSTABLE in rows.columns else pl.lit(False)).alias("_unstable"))
    for size, part in sorted(mean.group_by(SIZE), key=lambda kv: kv[1][N_PARAMS][0]):
        part = part.sort(LR)
        best = part[LR][int(part["_capped"].arg_min())]
        label = size[0]
        if best == lrs[-1]:
            add = _beyond(lrs, low=False)
            out.append({"kind": "grid_edge", "size": label, "edge": "last", "lr": best, "add": add,
                        "text": f"the grid's edge: {label}'s best LR is the grid's largest ({best:g}), so its best "
                                f"and its instability may lie above the grid: add LR {', '.join(map(str, add))}"})
        elif best == lrs[0]:
            add = _beyond(lrs, low=True)
            out.append({"kind": "grid_edge", "size": label, "edge": "first", "lr": best, "add": add,
                        "text": f"the grid's edge: {label}'s best LR is the grid's smallest ({best:g}), so its "
                                f"best may lie below the grid: add LR {', '.join(map(str, add))}"})
        if part["_unstable"][0]:
            add = _beyond(lrs, low=True)
            out.append({"kind": "grid_edge", "size": label, "edge": "first_unstable", "lr": lrs[0], "add": add,
                        "text": f"the grid's edge: {label} is unstable already at the grid's smallest LR "
                                f"({lrs[0]:g}): add LR {', '.join(map(str, add))}"})
    return out


# ---- a regime change -------------------------------------------------------------------------------------------------

def calm_sizes(rows: pl.DataFrame) -> list[str]:
    """Sizes (labels, by N) none of whose runs is unstable at any LR of the grid, in any seed."""
    by = rows.group_by(SIZE).agg(pl.col(UNSTABLE).any().alias("_any"), pl.col(N_PARAMS).first()).sort(N_PARAMS)
    return by.filter(~pl.col("_any"))[SIZE].to_list()


def regime_change(rows: pl.DataFrame) -> dict[str, Any] | None:
    """The warning when some sizes never turn unstable on the grid while others do (module doc), else None."""
    calm = calm_sizes(rows)
    sizes = rows.sort(N_PARAMS)[SIZE].unique(maintain_order=True).to_list()
    wild = [s for s in sizes if s not in calm]
    if not calm or not wild:
        return None
    top = max(rows[LR].to_list())
    its = "its" if len(calm) == 1 else "their"
    text = (f"a regime change: {', '.join(calm)} never turned unstable on the grid (up to LR {top:g}) while "
            f"{', '.join(wild)} did; {its} instability LR lies above the grid, which no power law across these sizes "
            "describes, so the instability LR is not forecast: add higher LRs, or sizes between")
    return {"kind": "regime_change", "calm": calm, "unstable": wild, "text": text}

