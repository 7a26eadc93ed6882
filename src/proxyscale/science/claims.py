"""Claim checks: functions over a results table that return a verdict with the numbers behind it.

An experiment file names a check and its arguments; the check never sees the paper's numbers, only the
runs. A claim that fails at micro scale is reported as *not reproduced*, with the numbers.

Where the runs hold several seeds (``seeds``: init seeds on the member axis, data-order seeds as groups), the checks
of LR sensitivity judge each claim against the seed noise by the rule written in ``seeds`` (chosen before the
laptop runs with seeds were read): the claim's statistic per seed, its 80% interval over seeds, and one of three
verdicts, *reproduced*, *not reproduced* or *within seed noise*. Those checks are ``sensitivity_lower``,
``sensitivity_increases_with_n``, ``gap_grows_with_n``, ``sensitivity_slope_larger`` and ``best_loss_lower``, and
the two generic ones most figures use: ``trend`` (a slope per seed) and ``ratio_at_least`` (log10 of the ratio
per seed, paired). The other checks compare means over the runs they select, seeds included, and say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from . import drift
from ..core import instability, table
from ..core.analysis import sensitivity_frame, sensitivity_summary
from ..core.seeds import NOISE, NOT_REPRODUCED, REPRODUCED, count, judge, judge_all, seed_keys, spread
from ..core.config import ConfigError, check_call
from ..core.table import DIVERGED, FINAL_LOSS, L0, LR, N_PARAMS, SIZE, col, is_


@dataclass
class Verdict:
    claim: str
    state: str  # seeds.REPRODUCED, NOT_REPRODUCED or NOISE
    detail: str

    @property
    def reproduced(self) -> bool:
        return self.state == REPRODUCED

    @property
    def label(self) -> str:
        return self.state


CHECKS: dict[str, Callable[..., tuple[bool, str]]] = {}


def check(fn: Callable[..., tuple[bool, str]]) -> Callable[..., tuple[bool, str]]:
    CHECKS[fn.__name__] = fn
    return fn


def _sens(results: pl.DataFrame, axis: str, per: str = SIZE) -> pl.DataFrame:
    """The LR-sensitivity frame per ``per`` group, ``axis`` value and seed (one row a curve), sorted by N."""
    keys = list(dict.fromkeys([SIZE, col(per), col(axis)]))
    return sensitivity_frame(results, keys).sort(N_PARAMS)


def _mean_sens(results: pl.DataFrame, axis: str, per: str = SIZE) -> pl.DataFrame:
    """The same averaged over seeds (one row per ``per`` group and ``axis`` value), for the checks of means."""
    keys = list(dict.fromkeys([SIZE, col(per), col(axis)]))
    return sensitivity_summary(results, keys).sort(N_PARAMS)


def _by_seed(frame: pl.DataFrame, key: str, column: str) -> dict[Any, dict[tuple, float]]:
    """{value of ``key``: {seed: column}} from a per-seed frame."""
    out: dict[Any, dict[tuple, float]] = {}
    for k, seed, v in zip(frame[key].to_list(), seed_keys(frame), frame[column].to_list()):
        out.setdefault(k, {})[seed] = float("nan") if v is None else float(v)
    return out


def _paired(results: pl.DataFrame, axis: str, a: Any, b: Any, column: str = "lr_sensitivity",
            per: str = SIZE) -> tuple[list[Any], list[list[float]], list[list[float]]]:
    """Per ``per`` group (sorted by N): (keys, column with axis == a per seed, column with axis == b per seed), the
    seeds paired (the same seeds, in the same order, on both sides; a seed missing on one side is left out)."""
    s, p = _sens(results, axis, per), col(per)
    left, right = _by_seed(s.filter(is_(axis, a)), p, column), _by_seed(s.filter(is_(axis, b)), p, column)
    order = s.filter(is_(axis, a)).sort(N_PARAMS)[p].unique(maintain_order=True).to_list()
    keys = [k for k in order if k in right]
    xs, ys = [], []
    for k in keys:
        seeds = [sd for sd in left[k] if sd in right[k]]
        xs.append([left[k][sd] for sd in seeds])
        ys.append([right[k][sd] for sd in seeds])
    return keys, xs, ys


def _lower(keys: list[Any], xs: list[list[float]], ys: list[list[float]], at_least: str, what: str
           ) -> tuple[str, str]:
    """``x < y`` per key, judged over the paired seeds (``seeds.judge`` on y − x), every key or most."""
    states, parts = [], []
    for k, x, y in zip(keys, xs, ys):
        d = spread([b - a for a, b in zip(x, y)])
        states.append(judge(d))
        mx, my = spread(x).mean, spread(y).mean
        parts.append(f"{k}: {mx:.3f} vs {my:.3f}" + (f" (difference {d.text()}: {states[-1]})" if d.n > 1 else ""))
    n = max((len(x) for x in xs), default=0)
    tail = "" if n > 1 else " [one seed: seed noise not measured]"
    return judge_all(states, at_least), f"{what} — " + "; ".join(parts) + tail


@check
def sensitivity_lower(results: pl.DataFrame, axis: str, better: Any, worse: Any, at_least: str = "all",
                      per: str = SIZE, where: dict[str, Any] | None = None) -> tuple[str, str]:
    """The LR sensitivity with ``axis == better`` is below that with ``axis == worse`` in every ``per`` group
    (every size by default; ``at_least: most`` for a majority), judged against seed noise (``seeds``)."""
    keys, xs, ys = _paired(table.where(results, where), axis, better, worse, per=per)
    return _lower(keys, xs, ys, at_least, f"LR sensitivity {axis}={better} vs {worse}")


def _slopes_by_seed(frame: pl.DataFrame, column: str = "lr_sensitivity") -> tuple[list[float], list[str]]:
    """Per seed: the least-squares slope of ``column`` against log10 N over the sizes (a per-seed frame), and a
    line per seed naming its values by size."""
    slopes, lines = [], []
    by_seed: dict[tuple, list[tuple[float, float]]] = {}
    for seed, n, v in zip(seed_keys(frame), frame[N_PARAMS].to_list(), frame[column].to_list()):
        by_seed.setdefault(seed, []).append((n, float("nan") if v is None else v))
    for seed, points in by_seed.items():
        points.sort()
        slopes.append(_slope([n for n, _ in points], [v for _, v in points], logy=False))
        values = " → ".join(f"{v:.3f}" for _, v in points)
        lines.append(f"{values}" + (f" (seed {', '.join(map(str, seed))})" if seed else ""))
    return slopes, lines


@check
def sensitivity_increases_with_n(results: pl.DataFrame, axis: str, value: Any) -> tuple[str, str]:
    """With ``axis == value``, LR sensitivity grows with N: the slope of sensitivity against log10 N over the sizes,
    per seed, judged against seed noise (``seeds``; with one seed, the slope's sign)."""
    s = _sens(results, axis).filter(is_(axis, value))
    sizes = s[N_PARAMS].unique().sort().to_list()
    if len(sizes) < 2:
        return NOT_REPRODUCED, f"{axis}={value}: {len(sizes)} size(s); a trend needs 2"
    slopes, lines = _slopes_by_seed(s)
    sp = spread(slopes)
    sizes_text = ", ".join(f"{n / 1e3:.0f}k" for n in sizes)
    tail = f"; slope per decade of N {sp.text('+.3f')}" if sp.n > 1 else " [one seed: seed noise not measured]"
    return judge(sp), f"{axis}={value}: sensitivity by N ({sizes_text}) — " + "; ".join(lines) + tail


@check
def ratio_at_least(results: pl.DataFrame, column: str, axis: str, high: Any, low: Any, factor: float,
                   lr: float | None = None, where: dict[str, Any] | None = None, absolute: bool = False
                   ) -> tuple[str, str]:
    """column with ``axis == high`` is at least ``factor`` × column with ``axis == low``, at LR ``lr`` if given, at
    every size (``absolute``: of |column|, e.g. how far the mean output logit or log Z is from 0). Judged against
    seed noise (``seeds``): per seed (paired) the statistic is log10(high / low) − log10(factor) (high − factor ·
    low where a value is not positive); with one seed its sign decides, as before seeds."""
    r = table.where(results, where)
    if absolute:
        r = r.with_columns(pl.col(column).abs())
    r = r if lr is None else table.at_lr(r, lr)
    parts, states = [], []
    for size, part in r.group_by(SIZE, maintain_order=True):
        his = _means_by_seed(part.filter(is_(axis, high)), column)
        los = _means_by_seed(part.filter(is_(axis, low)), column)
        paired = [(his[k], los[k]) for k in his if k in los and math.isfinite(his[k]) and math.isfinite(los[k])]
        if not paired:
            continue
        positive = all(h > 0 and lo > 0 for h, lo in paired)
        stat = spread([math.log10(h / lo) - math.log10(factor) if positive else h - factor * lo for h, lo in paired])
        states.append(judge(stat))
        hi, lo = sum(h for h, _ in paired) / len(paired), sum(lo for _, lo in paired) / len(paired)
        ratio = f"{hi / lo:.1f}x" if lo else "inf"
        noise = (f", log10 ratio − log10 {factor:g} over {stat.n} seeds: 80% interval {stat.low:+.2f} to "
                 f"{stat.high:+.2f}: {states[-1]}" if stat.n > 1 and positive else
                 f", over {stat.n} seeds: {states[-1]}" if stat.n > 1 else "")
        parts.append(f"{size[0]}: {hi:.3g} vs {lo:.3g} ({ratio}{noise})")
    tail = "" if count(r) > 1 else " [one seed: seed noise not measured]"
    return (judge_all(states) if parts else NOT_REPRODUCED,
            f"{column} with {axis}={high} vs {low}{' at LR ' + format(lr, 'g') if lr else ''} (need ≥{factor:g}x) — "
            + "; ".join(parts) + tail)


def _means_by_seed(frame: pl.DataFrame, column: str) -> dict[tuple, float]:
    """{seed: the mean of ``column`` over that seed's rows of ``frame``} (``()`` the one key without seeds)."""
    sums: dict[tuple, list[float]] = {}
    for seed, v in zip(seed_keys(frame), frame[column].to_list()):
        if v is not None:
            sums.setdefault(seed, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def _slope(x: list[float], y: list[float], logy: bool = True) -> float:
    import numpy as np

    lx = np.log10(np.asarray(x, float))
    ly = np.log10(np.abs(np.asarray(y, float))) if logy else np.asarray(y, float)
    ok = np.isfinite(lx) & np.isfinite(ly)
    if ok.sum() < 2 or np.ptp(lx[ok]) == 0:
        return float("nan")
    return float(np.polyfit(lx[ok], ly[ok], 1)[0])


@check
def trend(results: pl.DataFrame, column: str, along: str, sign: int, per: str | None = SIZE,
          where: dict[str, Any] | None = None, logy: bool = True) -> tuple[str, str]:
    """The slope of ``column`` (log10 unless ``logy`` is false) against log10(``along``) has the sign ``sign``
    in every ``per`` group (the slope through the means of ``column`` at each ``along`` value). Judged against seed
    noise (``seeds``): the slope per seed, its 80% interval over the seeds; with one seed its sign decides."""
    r = table.where(results, where)
    y, x = col(column), col(along)
    groups = r.group_by(per, maintain_order=True) if per else [(("all",), r)]
    parts, states, n_seeds = [], [], 1
    for key, part in groups:
        slopes = []
        keys = seed_keys(part)  # once per group: each row's seed
        for seed in dict.fromkeys(keys):
            rows = part.filter(pl.Series([k == seed for k in keys])) if seed else part
            agg = rows.group_by(x).agg(pl.col(y).mean()).sort(x)
            slopes.append(_slope(agg[x].to_list(), agg[y].to_list(), logy))
        stat = spread(slopes)
        if stat.n == 0:
            states.append(NOT_REPRODUCED)
            parts.append(f"{key[0]}: slope nan")
            continue
        n_seeds = max(n_seeds, stat.n)
        states.append(judge(stat, sign))
        parts.append(f"{key[0]}: slope {stat.mean:+.3g}" + (
            f" (80% interval {stat.low:+.3g} to {stat.high:+.3g} over {stat.n} seeds: {states[-1]})"
            if stat.n > 1 else ""))
    word = "rises" if sign > 0 else "falls"
    tail = "" if n_seeds > 1 else " [one seed: seed noise not measured]"
    return (judge_all(states) if parts else NOT_REPRODUCED,
            f"{column} {word} with {along}? " + "; ".join(parts) + tail)


def _best_lrs(results: pl.DataFrame, axis: str, value: Any) -> pl.DataFrame:
    """Per size: the best LR (the mean over seeds of each seed's best LR) and the rest of the summary."""
    return sensitivity_summary(results.filter(is_(axis, value)), [SIZE]).sort(N_PARAMS)


@check
def best_lr_spread_smaller(results: pl.DataFrame, axis: str, narrower: Any, wider: Any,
                           where: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Across sizes, the best LR varies less (in log10 range) with ``axis == narrower`` than with ``wider``."""
    import math

    results = table.where(results, where)
    spreads, parts = {}, []
    for v in (narrower, wider):
        b = _best_lrs(results, axis, v)
        lrs = [x for x in b["best_lr"].to_list() if x == x]
        spreads[v] = math.log10(max(lrs) / min(lrs)) if lrs else float("nan")
        parts.append(f"{axis}={v}: best LR by size {', '.join(f'{x:g}' for x in lrs)} (spread {spreads[v]:.2f} decades)")
    return spreads[narrower] < spreads[wider], "; ".join(parts)


@check
def best_lr_shifts_right(results: pl.DataFrame, axis: str, order: list[Any]) -> tuple[bool, str]:
    """At every size the best LR does not fall along ``order`` of ``axis`` values, and rises somewhere."""
    c = col(axis)
    s = sensitivity_summary(results, [SIZE, c])
    ok, rose, parts = True, False, []
    for size, part in s.group_by(SIZE, maintain_order=True):
        lrs = [part.filter(is_(axis, v))["best_lr"].item() for v in order]
        ok &= all(b >= a for a, b in zip(lrs, lrs[1:]))
        rose |= lrs[-1] > lrs[0]
        parts.append(f"{size[0]}: " + " → ".join(f"{x:g}" for x in lrs))
    return ok and rose, f"best LR along {axis} = {order}: " + "; ".join(parts)


@check
def sensitivity_not_lower(results: pl.DataFrame, axis: str, value: Any, baseline: Any, tolerance: float = 0.1,
                          where: dict[str, Any] | None = None) -> tuple[bool, str]:
    """The mean LR sensitivity with ``axis == value`` is not below the baseline's by more than ``tolerance`` (relative)."""
    s = _mean_sens(table.where(results, where), axis)
    a = s.filter(is_(axis, value))["lr_sensitivity"].mean()
    b = s.filter(is_(axis, baseline))["lr_sensitivity"].mean()
    return a >= (1 - tolerance) * b, f"mean LR sensitivity {axis}={value}: {a:.3f} vs {baseline}: {b:.3f} (tolerance {tolerance:.0%})"


@check
def norms_explain_logits(results: pl.DataFrame, lr: float, axis: str, high: Any, low: Any) -> tuple[bool, str]:
    """Appendix E.1: between ``axis == low`` and ``high`` the growth of the max logit is mostly norm growth.
    logit = ‖q‖·‖k‖·cos/sqrt(d_head), so (logit ratio) = (norm-product ratio) × (implied alignment ratio);
    reproduced when the norm-product ratio is at least the alignment ratio at every size."""
    r = table.at_lr(results, lr)
    parts, ok = [], True
    for size, part in r.group_by(SIZE, maintain_order=True):
        hi, lo = part.filter(is_(axis, high)), part.filter(is_(axis, low))
        if hi.height == 0 or lo.height == 0:
            continue
        norms = (hi["q_norm/0"].mean() * hi["k_norm/0"].mean()) / (lo["q_norm/0"].mean() * lo["k_norm/0"].mean())
        logits = hi["attn_logit_max/0"].mean() / lo["attn_logit_max/0"].mean()
        align = logits / norms
        ok &= norms >= align
        parts.append(f"{size[0]}: logit x{logits:.3g} = norms x{norms:.3g} · alignment x{align:.3g}")
    return ok and bool(parts), f"{axis}={high} vs {low} at LR {lr:g} — " + "; ".join(parts)


@check
def gap_grows_with_n(results: pl.DataFrame, axis: str, better: Any, worse: Any) -> tuple[str, str]:
    """sensitivity(worse) − sensitivity(better) is larger at the largest size than at the smallest, per seed,
    judged against seed noise (``seeds``)."""
    keys, xs, ys = _paired(results, axis, better, worse)
    if len(keys) < 2:
        return NOT_REPRODUCED, f"{len(keys)} size(s) with both {axis}={better} and {worse}; a trend needs 2"
    gaps = [[y - x for x, y in zip(xk, yk)] for xk, yk in zip(xs, ys)]
    growth = spread([last - first for first, last in zip(gaps[0], gaps[-1])])
    parts = "; ".join(f"{k}: {spread(g).mean:+.3f}" for k, g in zip(keys, gaps))
    tail = f"; growth {growth.text('+.3f')}" if growth.n > 1 else " [one seed: seed noise not measured]"
    return judge(growth), f"sensitivity gap {axis}={worse} minus {better} by size — {parts}{tail}"


@check
def sensitivity_slope_larger(results: pl.DataFrame, axis: str, steeper: Any, flatter: Any) -> tuple[str, str]:
    """LR sensitivity rises faster with log10 N when scaling along ``steeper`` than along ``flatter`` (Fig 7): the
    difference of the slopes, per seed, judged against seed noise (``seeds``)."""
    s = _sens(results, axis)
    per_seed = {}
    for v in (steeper, flatter):
        part = s.filter(is_(axis, v))
        per_seed[v] = dict(zip(sorted(set(seed_keys(part))), _slopes_by_seed(part)[0])) if part.height else {}
    common = [sd for sd in per_seed[steeper] if sd in per_seed[flatter]]
    diff = spread([per_seed[steeper][sd] - per_seed[flatter][sd] for sd in common])
    means = {v: spread(list(per_seed[v].values())).mean for v in (steeper, flatter)}
    tail = f"; difference {diff.text('+.3f')}" if diff.n > 1 else " [one seed: seed noise not measured]"
    return judge(diff), "slope of LR sensitivity per decade of N — " + "; ".join(
        f"{axis}={v}: {means[v]:+.3f}" for v in (steeper, flatter)) + tail


@check
def best_loss_lower(results: pl.DataFrame, axis: str, better: Any, worse: Any, at_least: str = "most") -> tuple[str, str]:
    """The best final loss over the LR grid is lower with ``axis == better`` at most (or all) sizes, judged
    against seed noise (``seeds``)."""
    keys, xs, ys = _paired(results, axis, better, worse, column="best_loss")
    return _lower(keys, xs, ys, at_least, f"best loss {axis}={better} vs {worse}")


# -- checks of the mitigations after the paper (issue 16) ---------------------------------------------------------

@check
def at_most(results: pl.DataFrame, column: str, bound: Any, where: dict[str, Any] | None = None,
            per: str = SIZE, absolute: bool = False) -> tuple[bool, str]:
    """Every run (matching ``where``) has ``column`` (|column| with ``absolute``) ≤ ``bound``: a number, or a column
    read per run (e.g. ``member.attn_softcap``: each run's own cap). Runs where ``column`` was not measured are left
    out; none left is not reproduced."""
    r = table.where(results, where)
    if column not in r.columns:
        return False, f"{column}: not measured in these runs"
    if absolute:
        r = r.with_columns(pl.col(column).abs())
    limit = pl.col(col(bound)) if isinstance(bound, str) else pl.lit(float(bound))
    r = r.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan()).with_columns(limit.alias("_bound"))
    parts, ok = [], r.height > 0
    for key, part in r.group_by(col(per), maintain_order=True):
        worst = part.with_columns((pl.col(column) - pl.col("_bound")).alias("_over")).sort("_over").row(-1, named=True)
        ok &= worst["_over"] <= 0
        parts.append(f"{key[0]}: max {worst[column]:.4g} vs {worst['_bound']:.4g}")
    return ok, f"{column} ≤ {bound} — " + "; ".join(parts)


@check
def law_exponent(results: pl.DataFrame, column: str = "mu_norm", above: float | None = None,
                 between: list[float] | None = None, where: dict[str, Any] | None = None) -> tuple[str, str]:
    """The drift law (``drift.law``): |column| = c·I^b through the runs ``where`` selects, I their integrated LR (one
    point per run that did not diverge: its tail means of ``lr_integral`` and ``column``; every seed's runs are
    points, so the fit's scatter holds the seed noise). Judged on b's 80% interval: *reproduced* when it lies above
    ``above`` / inside ``between``, *not reproduced* when it lies wholly on the wrong side, *within seed noise* when
    it straddles a bound."""
    fitted = drift.law(drift.points(table.where(results, where), column))
    if not fitted["ok"]:
        return NOT_REPRODUCED, f"{column} against the integrated LR: {fitted['why']}"
    lo, hi = drift.exponent_interval(fitted["fit"])
    b, c = fitted["exponent"], fitted["coefficient"]
    if above is not None:
        state = REPRODUCED if lo > above else NOT_REPRODUCED if hi <= above else NOISE
        need = f"b > {above:g}"
    elif between is not None:
        a, z = between
        state = (REPRODUCED if a <= lo and hi <= z else NOT_REPRODUCED if hi < a or lo > z else NOISE)
        need = f"{a:g} ≤ b ≤ {z:g}"
    else:
        raise ConfigError("law_exponent: give `above` or `between`")
    return state, (f"|{column}| = {c:.3g}·I^b, b = {b:.3f} (80% interval {lo:.3f} to {hi:.3f}; need {need}) through "
                   f"{fitted['fit']['n']} runs, I {min(x for x, _ in fitted['points']):.3g} to "
                   f"{fitted['max_integral']:.3g}")


@check
def sensitivity_range_smaller(results: pl.DataFrame, axis: str, narrower: Any, wider: Any, over: str,
                              default: Any = None, where: dict[str, Any] | None = None) -> tuple[bool, str]:
    """LR sensitivity varies less over the values of ``over`` (e.g. a coefficient λ) with ``axis == narrower`` than
    with ``axis == wider``: the range (max − min) of the sensitivity over ``over``, each the mean over sizes and
    seeds. Rows whose ``over`` is null take ``default`` (the setting the main runs use). Compares means over seeds."""
    r = table.where(results, where)
    o = col(over)
    if default is not None and o in r.columns:
        r = r.with_columns(pl.col(o).fill_null(default))
    ranges, parts = {}, []
    for v in (narrower, wider):
        s = sensitivity_summary(r.filter(is_(axis, v)), [SIZE, o])
        by = s.group_by(o).agg(pl.col("lr_sensitivity").mean()).sort(o)
        vals = [x for x in by["lr_sensitivity"].to_list() if x is not None and x == x]
        ranges[v] = max(vals) - min(vals) if len(vals) >= 2 else float("nan")
        parts.append(f"{axis}={v}: " + ", ".join(f"{k:g}: {x:.3f}" if isinstance(k, float) else f"{k}: {x:.3f}"
                                                  for k, x in zip(by[o].to_list(), by["lr_sensitivity"].to_list()))
                     + f" (range {ranges[v]:.3f})")
    return ranges[narrower] < ranges[wider], f"LR sensitivity over {over} — " + "; ".join(parts)


def _grid_index(lrs: list[float], lr: float) -> int:
    return min(range(len(lrs)), key=lambda i: abs(lrs[i] - lr))


@check
def best_lr_within(results: pl.DataFrame, axis: str, a: Any, b: Any, steps: int = 1,
                   where: dict[str, Any] | None = None) -> tuple[bool, str]:
    """At every size the best LR with ``axis == a`` lies within ``steps`` grid steps of that with ``axis == b``."""
    r = table.where(results, where)
    grid = sorted(set(r[LR].to_list()))
    best = {v: dict(zip(*_best_lrs(r, axis, v).select(SIZE, "best_lr").to_dict(as_series=False).values())) for v in (a, b)}
    parts, ok = [], True
    sizes = [s for s in table.sizes(r) if s in best[a] and s in best[b]]
    for size in sizes:
        la, lb = best[a][size], best[b][size]
        if not (la == la and lb == lb):
            ok = False
            parts.append(f"{size}: no best LR")
            continue
        gap = abs(_grid_index(grid, la) - _grid_index(grid, lb))
        ok &= gap <= steps
        parts.append(f"{size}: {la:g} vs {lb:g} ({gap} step{'s' if gap != 1 else ''})")
    return ok and bool(sizes), f"best LR {axis}={a} vs {b} — " + "; ".join(parts)


@check
def diverged_fewer(results: pl.DataFrame, axis: str, better: Any, worse: Any,
                   where: dict[str, Any] | None = None) -> tuple[bool, str]:
    """Fewer runs diverge with ``axis == better`` than with ``worse`` (over every LR, seed and size matching
    ``where``); no divergence on either side is not reproduced (nothing to prevent)."""
    r = table.where(results, where)
    counts = {v: (int(r.filter(is_(axis, v))[DIVERGED].sum()), r.filter(is_(axis, v)).height) for v in (better, worse)}
    (nb, tb), (nw, tw) = counts[better], counts[worse]
    return nb < nw, f"diverged: {axis}={better} {nb} of {tb} runs vs {worse} {nw} of {tw}"


@check
def largest_stable_lr_at_least(results: pl.DataFrame, axis: str, value: Any, baseline: Any,
                               where: dict[str, Any] | None = None) -> tuple[bool, str]:
    """At every size, the largest LR at which ``axis == value`` trains stably (``instability.unstable``: not
    diverged and within ``MARGIN`` of the best above the best LR) is at least the baseline's."""
    r = table.where(results, where)
    largest = {}
    for v in (value, baseline):
        flagged = instability.unstable(r.filter(is_(axis, v)))
        stable = flagged.filter(~pl.col(instability.UNSTABLE)).group_by(SIZE).agg(pl.col(LR).max())
        largest[v] = dict(zip(stable[SIZE].to_list(), stable[LR].to_list()))
    sizes = [s for s in table.sizes(r) if s in largest[value] and s in largest[baseline]]
    ok = bool(sizes) and all(largest[value][s] >= largest[baseline][s] for s in sizes)
    return ok, f"largest stable LR {axis}={value} vs {baseline} — " + "; ".join(
        f"{s}: {largest[value][s]:g} vs {largest[baseline][s]:g}" for s in sizes)


@check
def matches(results: pl.DataFrame, column: str, a: dict[str, Any], b: dict[str, Any], rtol: float,
            per: str = LR) -> tuple[bool, str]:
    """For each value of ``per``, mean(column | ``a``) is within ``rtol`` (relative) of mean(column | ``b``);
    ``a`` and ``b`` are ``where`` conditions (e.g. Adam-atan2 vs AdamW at ε 1e-12)."""
    ra, rb = table.where(results, a), table.where(results, b)
    parts, ok = [], True
    for key in sorted(set(ra[col(per)].to_list()) & set(rb[col(per)].to_list())):
        x = ra.filter(is_(per, key))[column].mean()
        y = rb.filter(is_(per, key))[column].mean()
        if x is None or y is None:
            continue
        close = abs(x - y) <= rtol * abs(y)
        ok &= close
        parts.append(f"{per}={key:g}: {x:.4g} vs {y:.4g} ({(x - y) / y:+.1%})" if isinstance(key, float)
                     else f"{per}={key}: {x:.4g} vs {y:.4g}")
    return ok and bool(parts), f"{column} within {rtol:.0%} — " + "; ".join(parts)


@check
def trains_at(results: pl.DataFrame, lr: float, where: dict[str, Any] | None = None, gain: float = 1.0) -> tuple[bool, str]:
    """Every run at LR ``lr`` (matching ``where``) finishes undiverged, ``gain`` nats or more below ℓ0."""
    r = table.at_lr(table.where(results, where), lr)
    parts = [f"{row[SIZE]}: {row[FINAL_LOSS]:.3f} (ℓ0 {row[L0]:.2f})" for row in r.iter_rows(named=True)]
    ok = r.height > 0 and all((not row[DIVERGED]) and row[FINAL_LOSS] <= row[L0] - gain
                              for row in r.iter_rows(named=True))
    return ok, f"final loss at LR {lr:g} — " + "; ".join(parts)


def prediction_table(results: pl.DataFrame, fit_sizes: int | None = None, degree: int = 1, column: str = "attn_logit_max/0@step",
                     margin: float = instability.MARGIN, axis: str = "model.qk_layernorm", value: Any = "off",
                     reference: Any = "head") -> dict[str, Any]:
    """Fig 9 as an out-of-sample test, on the runs with ``axis == value`` (qk-layernorm off).

    Per LR: fit log10(logit) against log10(N) on the ``fit_sizes`` smallest sizes (default: all but the largest;
    with seeds, through every seed's point, so the fit's scatter holds the seed noise) and extrapolate to the next
    size, which the fit never saw, with its 80% interval. A run is *unstable* (``instability.unstable`` with a
    reference) when its final loss is worse by more than ``margin`` nats than the run of the same size, LR and seed
    with ``axis == reference`` (qk-layernorm on: the logit growth is what cost it), or when it diverged. The logit
    threshold is calibrated on the fitted sizes (``instability.threshold``). Each row holds the held-out size's
    value and instability per seed (``measured_seeds``, ``unstable_seeds``) and their mean / unanimity."""
    from ..core.analysis import fit_log

    # joined on the size label: qk-layernorm's scales make N differ slightly between the two variants
    r = instability.unstable(results.filter(is_(axis, value) & pl.col(column).is_not_null()), margin,
                             reference=results.filter(is_(axis, reference)))
    sizes = r.select(N_PARAMS).unique().sort(N_PARAMS)[N_PARAMS].to_list()
    fit_sizes = len(sizes) - 1 if fit_sizes is None else fit_sizes
    if not 1 <= fit_sizes < len(sizes):
        raise ValueError(f"fit_sizes={fit_sizes}: need at least one fitted and one held-out size, have {len(sizes)}")
    fit_n, held = sizes[:fit_sizes], sizes[fit_sizes]
    fitted = r.filter(pl.col(N_PARAMS).is_in(fit_n))
    stable_max, unstable_min, _ = instability.separating(fitted, column)
    threshold = instability.threshold(fitted, column)
    rows = []
    for lr in sorted(r[LR].unique().to_list()):
        part = table.at_lr(r, lr)
        pts = part.filter(pl.col(N_PARAMS).is_in(fit_n)).sort(N_PARAMS)
        fit = fit_log(pts[N_PARAMS].to_list(), pts[column].to_list(), degree)
        b = instability.interval(fit, held)
        pred, lo, hi = b["value"], b["low"], b["high"]
        meas = part.filter(pl.col(N_PARAMS) == held)
        values, bad = meas[column].to_list(), [bool(x) for x in meas["unstable"].to_list()]
        finite = [v for v in values if v is not None and v == v]
        rows.append({"lr": lr, "predicted": pred, "low": lo, "high": hi,
                     "measured": sum(finite) / len(finite) if finite else None, "measured_seeds": values,
                     "unstable": (True if all(bad) else False if not any(bad) else None) if bad else None,
                     "unstable_seeds": bad,
                     "predicted_unstable": (pred > threshold) if threshold else None, "fit": fit})
    return {"held_out_n": held, "fit_n": fit_n, "threshold": threshold, "stable_max": stable_max,
            "unstable_min": unstable_min, "rows": rows, "margin": margin, "seeds": max(
                (len(r["unstable_seeds"]) for r in rows), default=0)}


def _prediction_head(t: dict[str, Any]) -> str:
    thr = (f"{t['threshold']:.3g}" if t["threshold"] else
           f"none (stable logits up to {t['stable_max']:.3g}, unstable from {t['unstable_min']:.3g}: they do not "
           "separate)" if t["stable_max"] is not None and t["unstable_min"] is not None else
           "none (the fitted sizes have no stable or no unstable run)")
    seeds = f", {t['seeds']} seeds" if t["seeds"] > 1 else ""
    return (f"fit on N={t['fit_n']}, held out N={t['held_out_n']}{seeds}; unstable = loss > qk-LN run + "
            f"{t['margin']} nats; threshold {thr}")


def _measured(r: dict[str, Any]) -> str:
    vals = ", ".join("–" if v is None else f"{v:.3g}" for v in r["measured_seeds"])
    flags = r["unstable_seeds"]
    state = ("unstable" if all(flags) else "stable" if not any(flags) else
             f"unstable in {sum(flags)} of {len(flags)} seeds") if flags else "?"
    return f"measured {vals} ({state})"


@check
def prediction(results: pl.DataFrame, fit_sizes: int | None = None, degree: int = 1,
               margin: float = instability.MARGIN, axis: str = "model.qk_layernorm", value: Any = "off",
               reference: Any = "head") -> tuple[str, str]:
    """Fig 9 as the paper states it (§3.5): the threshold calibrated on the fitted sizes separates their stable and
    unstable runs (the points above it are the unstable ones), and the extrapolated logit above it calls the
    held-out size's unstable runs at every LR. Judged against seed noise (``seeds``): *reproduced* when every call
    matches every held-out seed; *not reproduced* when no threshold separates, or a call is wrong at an LR where the
    held-out seeds agree; *within seed noise* when the only wrong calls are at LRs where the seeds disagree."""
    t = prediction_table(results, fit_sizes, degree, margin=margin, axis=axis, value=value, reference=reference)
    head = _prediction_head(t)
    if not t["threshold"]:
        return NOT_REPRODUCED, head
    wrong = [r for r in t["rows"] if any(u != r["predicted_unstable"] for u in r["unstable_seeds"])]
    state = (REPRODUCED if not wrong else
             NOT_REPRODUCED if any(r["unstable"] is not None for r in wrong) else NOISE)
    calls = "; ".join(f"LR {r['lr']:g}: predicted {r['predicted']:.3g} "
                      f"({'unstable' if r['predicted_unstable'] else 'stable'}) vs {_measured(r)}" for r in t["rows"])
    return state, f"{head}; calls right at {len(t['rows']) - len(wrong)} of {len(t['rows'])} LRs; {calls}"


@check
def prediction_close(results: pl.DataFrame, fit_sizes: int | None = None, degree: int = 1, factor: float = 3.0,
                     margin: float = instability.MARGIN, axis: str = "model.qk_layernorm", value: Any = "off",
                     reference: Any = "head") -> tuple[bool, str]:
    """Fig 9's extrapolation as a number (our check, stricter than the paper's claim): the extrapolated logit is
    within ``factor`` of the measured one for most (LR, held-out seed) pairs."""
    t = prediction_table(results, fit_sizes, degree, margin=margin, axis=axis, value=value, reference=reference)
    pairs = [(r, v) for r in t["rows"] for v in r["measured_seeds"]]
    close = [v is not None and v > 0 and 1 / factor <= r["predicted"] / v <= factor for r, v in pairs]
    detail = "; ".join(f"LR {r['lr']:g}: predicted {r['predicted']:.3g} vs {_measured(r)}" for r in t["rows"])
    return (bool(close) and sum(close) > len(close) / 2,
            f"{_prediction_head(t)}; within {factor:g}x at {sum(close)} of {len(close)}; {detail}")


def validate(claim: dict[str, Any], where: str) -> None:
    """One claim entry of an experiment file: text, a known check, and arguments the check accepts."""
    if not isinstance(claim, dict) or not claim.get("text") or "check" not in claim:
        raise ConfigError(f"{where}: expected a mapping with text, check and args")
    if claim["check"] not in CHECKS:
        raise ConfigError(f"{where}.check: unknown check {claim['check']!r}; valid: {', '.join(CHECKS)}")
    check_call(CHECKS[claim["check"]], f"{where}.args", None, **(claim.get("args") or {}))
    for scale, over in (claim.get("scales") or {}).items():
        if not isinstance(over, dict) or set(over) - {"text", "args"}:
            raise ConfigError(f"{where}.scales.{scale}: expected a mapping with text and/or args")
        check_call(CHECKS[claim["check"]], f"{where}.scales.{scale}.args", None, **at_scale(claim, scale)["args"])


VALUE_ARGS = ("better", "worse", "value", "high", "low", "narrower", "wider", "steeper", "flatter", "baseline",
              "reference")
"""Check arguments that name a value of the check's ``axis``; ``order`` names a list of them."""
ROLES = {"largest": max, "smallest": min}
"""A value given by role (``better: {role: largest}``): the largest or smallest value the axis takes at the scale
(e.g. the longest and shortest warm-up of Fig 5, whose values differ per scale)."""


def _defaults(fn: Callable[..., Any], args: dict[str, Any]) -> dict[str, Any]:
    import inspect

    params = inspect.signature(fn).parameters
    return {**{n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}, **args}


def at_scale(claim: dict[str, Any], scale: str) -> dict[str, Any]:
    """The claim as it reads at ``scale``: its ``scales.<scale>`` entry (``text`` and ``args``, the args merged
    key by key) over the claim, for values that differ per scale (an LR grid, an ε grid)."""
    over = (claim.get("scales") or {}).get(scale) or {}
    out = {k: v for k, v in claim.items() if k != "scales"}
    if "text" in over:
        out["text"] = over["text"]
    if "args" in over:
        out["args"] = {**(claim.get("args") or {}), **over["args"]}
    return out


def resolve(claim: dict[str, Any], planned: pl.DataFrame, where: str) -> dict[str, Any]:
    """The claim (already ``at_scale``) with its values given by role resolved against the runs planned at a
    scale (``table.planned``), checked so that every value it names matches planned runs. A claim that would match
    no rows is a ConfigError naming the claim and the value (found by ``--plan``, before anything trains), never a
    silent *not reproduced*."""
    fn = CHECKS[claim["check"]]
    given = dict(claim.get("args") or {})
    args = _defaults(fn, given)
    text = f"{where} ({claim['text'][:60]!r})"
    for name in args.get("where") or {}:  # checked before filtering, which would fail on a missing column
        if table.col(name) not in planned.columns:
            raise ConfigError(f"{text}: where.{name}: no such column in the planned runs")
    rows = table.where(planned, args.get("where")) if isinstance(args.get("where"), dict) else planned
    if planned.height and rows.height == 0:
        raise ConfigError(f"{text}: where {args['where']} matches no planned run")
    axis = args.get("axis")
    if axis is not None and table.col(axis) not in rows.columns:
        raise ConfigError(f"{text}: axis {axis!r} is not swept here; swept: "
                          + ", ".join(c for c in rows.columns if c.startswith(("label.", "member.")) and rows[c].n_unique() > 1))
    present = table.values(rows, axis) if axis is not None else []

    def one(arg: str, raw: Any) -> Any:
        if isinstance(raw, dict):
            if set(raw) != {"role"} or raw["role"] not in ROLES:
                raise ConfigError(f"{text}: args.{arg}: a value by role is {{role: {' | '.join(ROLES)}}}, got {raw!r}")
            vals = [v for v in present if v is not None]
            if not vals:
                raise ConfigError(f"{text}: args.{arg}: {axis} takes no values here")
            return ROLES[raw["role"]](vals)
        if rows.filter(table.is_(axis, raw)).height == 0:
            raise ConfigError(f"{text}: args.{arg}={raw!r} matches no planned run; {axis} takes "
                              f"{', '.join(map(str, present))} here (name the value per scale or by role)")
        return raw

    for arg in VALUE_ARGS:
        if axis is not None and arg in args and args[arg] is not None:
            given[arg] = one(arg, args[arg])
    if axis is not None and isinstance(args.get("order"), list):
        given["order"] = [one("order", v) for v in args["order"]]
    lr = args.get("lr")
    if lr is not None and LR in rows.columns and table.at_lr(rows, float(lr)).height == 0:
        raise ConfigError(f"{text}: args.lr={lr:g} is not on the planned LR grid "
                          f"({', '.join(f'{x:g}' for x in sorted(set(rows[LR].to_list())))})")
    return {**claim, "args": given}


def state_of(outcome: bool | str) -> str:
    """A check's first return value as a verdict: a seed-noise check returns the verdict itself (``seeds``), the
    others whether the claim holds."""
    return outcome if isinstance(outcome, str) else REPRODUCED if outcome else NOT_REPRODUCED


def evaluate(claims: list[dict[str, Any]], results: pl.DataFrame) -> list[Verdict]:
    out = []
    for c in claims:
        fn = CHECKS[c["check"]]
        try:
            ok, detail = fn(results, **c.get("args", {}))
        except Exception as err:  # a check that cannot be computed is not a reproduction
            ok, detail = False, f"could not be evaluated: {err.__class__.__name__}: {err}"
        out.append(Verdict(c["text"], state_of(ok), detail))
    return out
