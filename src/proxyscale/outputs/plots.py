"""Paper-style figures (PNG + SVG): log-x LR axes, one line per size coloured by size, sensitivity vs N.

Figures are registered by kind in ``FIGURES``, like the claim checks: an experiment file names a ``kind`` and its
arguments, ``validate`` checks them before anything runs and ``draw`` makes the files. Every figure takes the
results table, the output path (no suffix), a ``title`` and the ``pool`` of group folders (for per-step curves).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import polars as pl  # noqa: E402

from ..science import drift
from ..core import instability, store, table  # noqa: E402
from ..core.analysis import sensitivity_summary  # noqa: E402
from ..core.config import ConfigError, check_call  # noqa: E402
from ..core.seeds import count, first_seed  # noqa: E402
from ..core.table import FINAL_LOSS, L0, LR, N_PARAMS, SIZE, col  # noqa: E402

FIGURES: dict[str, Callable[..., list[Path]]] = {}


def figure(fn: Callable[..., list[Path]]) -> Callable[..., list[Path]]:
    FIGURES[fn.__name__] = fn
    return fn


SPEC_KEYS = ("kind", "name", "where")
"""Keys of a figure entry that are not arguments of its function: the kind, the file name and a row filter."""


def validate(fig: dict[str, Any], where: str) -> None:
    """One figure entry of an experiment file: a known kind, a name, and arguments its function accepts."""
    if not isinstance(fig, dict) or "kind" not in fig or "name" not in fig:
        raise ConfigError(f"{where}: expected a mapping with kind, name and the figure's arguments")
    if fig["kind"] not in FIGURES:
        raise ConfigError(f"{where}.kind: unknown figure {fig['kind']!r}; valid: {', '.join(FIGURES)}")
    args = {k: v for k, v in fig.items() if k not in SPEC_KEYS}
    check_call(FIGURES[fig["kind"]], where, None, None, title="", pool=None, **args)


def draw(fig: dict[str, Any], results: pl.DataFrame, path: Path, title: str, pool: Path) -> list[Path]:
    """Make one figure entry (validated) from the rows matching its ``where``."""
    args = {k: v for k, v in fig.items() if k not in SPEC_KEYS}
    return FIGURES[fig["kind"]](table.where(results, fig.get("where")), path, title=title, pool=pool, **args)


def _save(fig: Any, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    out = [path.with_suffix(".png"), path.with_suffix(".svg")]
    try:
        for target, dpi in zip(out, (110, None)):
            with store.writing(target) as tmp:  # a reader never sees half a figure
                fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=target.suffix[1:])
    finally:
        plt.close(fig)
    return out


def _style(ax: Any, xlabel: str, ylabel: str, title: str = "", logy: bool = False, legend: int = 7) -> None:
    """The common look: log-x axis (N or LR), labels, grid, legend."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels collide
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend)


@figure
def lr_vs_loss(results: pl.DataFrame, path: Path, *, title: str = "", pool: Path | None = None,
               panels: str | None = None) -> list[Path]:
    """Final eval loss against peak LR, one line per size (viridis by size), one panel per ``panels`` value;
    losses above ℓ0 or NaN are drawn at ℓ0, as the LR sensitivity counts them."""
    values = table.values(results, panels) if panels else [None]
    sizes = table.sizes(results)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(values), figsize=(4.2 * len(values), 3.4), sharey=True, squeeze=False)
    seeded = count(results) > 1
    for ax, v in zip(axes[0], values):
        part = results if panels is None else results.filter(table.is_(panels, v))
        for i, size in enumerate(sizes):
            s = part.filter(pl.col(SIZE) == size)
            if s.height == 0:
                continue
            # capped as the LR sensitivity counts it, then the mean over seeds with their range as a band
            s = s.with_columns(pl.when(pl.col(FINAL_LOSS).is_nan() | pl.col(FINAL_LOSS).is_null()).then(pl.col(L0))
                               .otherwise(pl.min_horizontal(FINAL_LOSS, L0)).alias("_capped"))
            m = s.group_by(LR).agg(pl.col("_capped").mean().alias("mean"), pl.col("_capped").min().alias("lo"),
                                   pl.col("_capped").max().alias("hi")).sort(LR)
            colour = cmap(i / max(1, len(sizes) - 1))
            ax.plot(m[LR], m["mean"], marker="o", ms=3, color=colour, label=size)
            if seeded:
                ax.fill_between(m[LR].to_list(), m["lo"].to_list(), m["hi"].to_list(), color=colour, alpha=0.2,
                                lw=0)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(f"{panels} = {v}" if panels else title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final eval loss" + (f" (mean, band: range over {count(results)} seeds)" if seeded else ""))
    axes[0][-1].legend(fontsize=7, title="size", title_fontsize=7)
    if title and panels:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@figure
def sensitivity_vs_n(results: pl.DataFrame, path: Path, *, title: str = "", pool: Path | None = None,
                     lines: str) -> list[Path]:
    """LR sensitivity against non-embedding parameters N, one line per value of ``lines``: the mean over seeds, with
    error bars spanning the seeds' range where there are several."""
    s = sensitivity_summary(results, [SIZE, col(lines)])
    n = int(s["seeds"].max()) if s.height else 1
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for v in table.values(s, lines):
        part = s.filter(table.is_(lines, v)).sort(N_PARAMS)
        y = part["lr_sensitivity"].to_numpy()
        err = [y - part["lr_sensitivity_min"].to_numpy(), part["lr_sensitivity_max"].to_numpy() - y] if n > 1 else None
        ax.errorbar(part[N_PARAMS], y, yerr=err, marker="o", capsize=3, label=f"{lines} = {v}")
    _style(ax, "non-embedding parameters N", "LR sensitivity" + (f" (mean, bars: range over {n} seeds)" if n > 1
                                                                 else ""), "LR sensitivity vs N")
    _label_sizes(ax, s)
    return _save(fig, path)


def _variant_bars(ax: Any, results: pl.DataFrame, legend: int = 6) -> None:
    """Groups of bars on ``ax``: per size (smallest N first), the LR sensitivity of every variant the runs hold, i.e.
    each combination of the switches and member scalars that vary (``table.variant_columns``): the mean over seeds,
    with an error bar over their range where there are several."""
    by = table.variant_columns(results)
    s = sensitivity_summary(results, by).sort(N_PARAMS)
    sizes, keys = table.sizes(s), [c for c in by if c != SIZE]
    variants = s.select(keys).unique(maintain_order=True).rows() if keys else [()]
    width = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        part = s
        for k, v in zip(keys, variant):
            part = part.filter(pl.col(k).is_null() if v is None else pl.col(k) == v)
        def at(size: Any, column: str) -> float:
            v = part.filter(pl.col(SIZE) == size)[column].mean()
            return float("nan") if v is None else float(v)

        heights = [at(size, "lr_sensitivity") for size in sizes]
        err = None
        if s.height and int(s["seeds"].max()) > 1:
            err = [[h - at(size, "lr_sensitivity_min") for h, size in zip(heights, sizes)],
                   [at(size, "lr_sensitivity_max") - h for h, size in zip(heights, sizes)]]
        label = ", ".join(f"{k.split('.')[-1]}={'off' if v is None else v}" for k, v in zip(keys, variant))
        ax.bar([i + (j - (len(variants) - 1) / 2) * width for i in range(len(sizes))], heights, width,
               yerr=err, capsize=2, label=label or "all")
    ax.set_xticks(range(len(sizes)))
    ax.set_xticklabels([str(x).replace(" (", "\n(") for x in sizes], fontsize=7)
    ax.set_ylabel("LR sensitivity")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=legend)


@figure
def sensitivity_by_variant(results: pl.DataFrame, path: Path, *, title: str = "",
                           pool: Path | None = None) -> list[Path]:
    """LR sensitivity per size of every variant the runs hold (``_variant_bars``), e.g. qk-layernorm × QK-clip."""
    n = max(1, len(table.sizes(results)))
    fig, ax = plt.subplots(figsize=(max(4.6, 2.2 * n), 3.6))
    _variant_bars(ax, results)
    ax.set_xlabel("size")
    ax.set_title("LR sensitivity by variant and size", fontsize=10)
    return _save(fig, path)


def beyond_summary(results: dict[str, pl.DataFrame], path: Path) -> list[Path]:
    """The mitigations after the paper side by side: one panel per family (``_variant_bars``): the LR sensitivity of
    each of its variants (its switches crossed with qk-layernorm and the rest) at every size."""
    names = [n for n, r in results.items() if r.height]
    cols = min(2, max(1, len(names)))
    rows_ = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows_, cols, figsize=(6.4 * cols, 3.8 * rows_), squeeze=False)
    panels = [a for row in axes for a in row]
    for ax, name in zip(panels, names):
        _variant_bars(ax, results[name], legend=5)
        ax.set_title(name, fontsize=10)
    for ax in panels[len(names):]:
        ax.axis("off")
    fig.suptitle("Beyond the paper: LR sensitivity by mitigation and size", fontsize=11)
    return _save(fig, path)


def _label_sizes(ax: Any, s: pl.DataFrame) -> None:
    """Tick the log-N axis at every size of the ladder, labelled with the size (d64-L2 and its N), instead of
    decades that may not fall between the sizes at all. Sizes that differ in N only slightly (qk-layernorm's
    scales) share one tick."""
    ticks: dict[str, float] = {}
    for size, n in s.sort(N_PARAMS).select(SIZE, N_PARAMS).iter_rows():
        ticks.setdefault(str(size), float(n))
    ax.set_xticks(list(ticks.values()))
    ax.set_xticklabels([label.replace(" (", "\n(") for label in ticks], fontsize=7)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


@figure
def loss_curves(results: pl.DataFrame, path: Path, *, title: str = "", pool: Path | None = None,
                smooth: float = 0.02) -> list[Path]:
    """Training loss against step: one panel per size (columns) and per variant (rows: every other label and
    member scalar that varies, e.g. qk-layernorm on/off), one line per LR (viridis by LR), each a running mean
    over ``smooth`` of the run; the y range is capped at ℓ0, as the LR sensitivity counts a loss. Where the runs
    hold several seeds, the first seed's curves (``seeds.first_seed``; the title says so)."""
    if count(results) > 1:
        title = f"{title} (first of {count(results)} seeds)"
        results = first_seed(results)
    sizes = table.sizes(results)
    variants = [c for c in table.variant_columns(results) if c != SIZE]
    keys = results.select(variants).unique(maintain_order=True).rows() if variants else [()]
    curves = table.curves(results, pool)
    lrs = sorted(set(results[LR].to_list()))
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(keys), len(sizes), figsize=(3.4 * len(sizes), 2.6 * len(keys)), sharex=True,
                             sharey=True, squeeze=False)
    low = float("inf")
    for i, key in enumerate(keys):
        rows = results
        for c, v in zip(variants, key):
            rows = rows.filter(pl.col(c).is_null() if v is None else pl.col(c) == v)
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            for r in rows.filter(pl.col(SIZE) == size).sort(LR).iter_rows(named=True):
                d = curves[(r["group"], r["member"])].sort("step")
                window = max(1, int(smooth * d.height))
                y = d["loss"].rolling_mean(window, min_samples=1)
                ax.plot(d["step"], y, lw=1, color=cmap(lrs.index(r[LR]) / max(1, len(lrs) - 1)),
                        label=f"{r[LR]:g}")
                low = min(low, float(y.min())) if y.len() and y.min() == y.min() else low
            ax.set_title(", ".join([size, *(f"{c.split('.')[-1]}={v}" for c, v in zip(variants, key))]), fontsize=8)
            ax.grid(alpha=0.3)
            if i == len(keys) - 1:
                ax.set_xlabel("step")
            if j == 0:
                ax.set_ylabel("train loss")
    if low < float("inf"):
        axes[0][0].set_ylim(0.95 * low, float(results[L0].max()))  # shared: capped at ℓ0
    axes[0][-1].legend(fontsize=6, title="LR", title_fontsize=6)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@figure
def over_steps(results: pl.DataFrame, path: Path, *, title: str = "", pool: Path | None = None, lr: float,
               lines: str, columns: list[str], logy: list[bool] | None = None) -> list[Path]:
    """Diagnostics over training steps of the runs at LR ``lr``, one line per size and value of ``lines`` (the first
    seed's, where there are several)."""
    if count(results) > 1:
        title = f"{title} (first of {count(results)} seeds)"
        results = first_seed(results)
    rows = table.at_lr(results, lr)
    curves = table.curves(rows, pool)
    metrics = {f"{r[SIZE]}, {lines}={r[col(lines)]}": curves[(r["group"], r["member"])]
               for r in rows.iter_rows(named=True)}
    return curves_over_steps(metrics, path, columns, title, logy or [])


def curves_over_steps(metrics: dict[str, pl.DataFrame], path: Path, columns: list[str], title: str = "",
                      logy: list[bool] | None = None) -> list[Path]:
    """One panel per column of ``metrics.parquet`` frames against step, one line per labelled frame (a member of
    a group, or a monitored model)."""
    logy = logy or []
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.2), squeeze=False)
    for j, column in enumerate(columns):
        ax = axes[0][j]
        for label, df in metrics.items():
            if column not in df.columns:
                continue
            d = df.filter(pl.col(column).is_not_null()).sort("step")
            ax.plot(d["step"], d[column], label=label, lw=1.2)
        if j < len(logy) and logy[j]:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@figure
def metric_vs(results: pl.DataFrame, path: Path, *, title: str = "", pool: Path | None = None, x: str,
              y: list[str], lines: str = SIZE, logx: bool = True, logy: bool | list[bool] = True,
              vline: str | None = None) -> list[Path]:
    """Each of ``y`` (one panel each) against ``x``, one line per value of ``lines`` (mean over other rows).
    ``vline`` names a column whose mean is drawn as a dashed vertical line (e.g. the measured gradient RMS)."""
    r = results
    xc, lc = col(x), col(lines)
    keys = table.values(r.sort(N_PARAMS), lines)
    cmap = plt.get_cmap("viridis")
    logys = logy if isinstance(logy, list) else [logy] * len(y)
    fig, axes = plt.subplots(1, len(y), figsize=(4.6 * len(y), 3.4), squeeze=False)
    for ax, name, log_this in zip(axes[0], y, logys):
        yc = table.col(name)
        for i, key in enumerate(keys):
            part = r.filter(pl.col(lc) == key).group_by(xc).agg(pl.col(yc).mean()).sort(xc)
            ax.plot(part[xc], part[yc], marker="o", ms=3, color=cmap(i / max(1, len(keys) - 1)), label=str(key))
        if vline is not None:
            v = r[col(vline)].mean()
            if v is not None:
                ax.axvline(v, ls="--", color="grey", lw=1, label=f"{vline} ≈ {v:.2g}")
        if logx:
            ax.set_xscale("log")
        if log_this:
            ax.set_yscale("symlog" if (r[yc].min() or 0) <= 0 else "log")
        ax.set_xlabel(x.removeprefix("member.").removeprefix("label."))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, title=lines.removeprefix("label."), title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@figure
def drift_law(results: pl.DataFrame, path: Path, *, title: str = "", pool: Path | None = None,
              lines: str) -> list[Path]:
    """The output-logit drift law (``drift``): ‖μ‖ and |mean output logit| against the integrated LR, log-log, one
    colour per value of ``lines``. Thin lines: each run's trajectory over its logged steps (from ``pool``); dots: its
    tail means, the points the law is fitted through; dashed: the fitted law c·I^b of that value, with b."""
    keys = table.values(results, lines)
    cmap = plt.get_cmap("tab10")
    curves = table.curves(results, pool) if pool is not None else {}
    fig, axes = plt.subplots(1, len(drift.LAW_COLUMNS), figsize=(5.2 * len(drift.LAW_COLUMNS), 3.8), squeeze=False)
    for ax, column in zip(axes[0], drift.LAW_COLUMNS):
        for i, key in enumerate(keys):
            part = results.filter(table.is_(lines, key))
            colour = cmap(i % 10)
            for row in part.iter_rows(named=True):
                c = curves.get((row["group"], row["member"]))
                if c is not None and "lr_integral" in c.columns and column in c.columns and not row[table.DIVERGED]:
                    c = c.filter(pl.col("lr_integral").is_not_null() & pl.col(column).is_not_null())
                    ax.plot(c["lr_integral"], c[column].abs(), color=colour, lw=0.6, alpha=0.35)
            pts = drift.points(part, column)
            fitted = drift.law(pts)
            label = f"{key}"
            if fitted["ok"]:
                lo, hi = min(x for x, _ in pts), fitted["max_integral"]
                xs = [lo * (hi / lo) ** (j / 20) for j in range(21)]
                ax.plot(xs, [fitted["coefficient"] * x ** fitted["exponent"] for x in xs], ls="--", color=colour,
                        lw=1.2)
                label += f" (b = {fitted['exponent']:.2f})"
            if pts:
                ax.scatter([x for x, _ in pts], [y for _, y in pts], s=12, color=colour, label=label, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _style(ax, "integrated LR Σ η (lr_integral)", "‖μ‖" if column == "mu_norm" else "|mean output logit|",
               legend=6)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


@figure
def prediction(results: pl.DataFrame, path: Path, *, title: str = "", pool: Path | None = None,
               fit_sizes: int | None = None, degree: int = 1, margin: float = instability.MARGIN) -> list[Path]:
    """Fig 9: max attention logit at a fixed step against N per LR; fit on the small sizes (lines), the
    extrapolation to the held-out size (open marker with its 80% interval) and the measured value there (filled)."""
    import numpy as np

    from ..science.claims import prediction_table

    t = prediction_table(results, fit_sizes, degree, margin=margin)
    r = results.filter(pl.col("attn_logit_max/0@step").is_not_null() & table.is_("model.qk_layernorm", "off"))
    cmap = plt.get_cmap("plasma")
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    xs = np.geomspace(min(t["fit_n"]), t["held_out_n"] * 1.2, 50)
    for i, row in enumerate(t["rows"]):
        c = cmap(i / max(1, len(t["rows"]) - 1))
        part = table.at_lr(r, row["lr"]).sort(N_PARAMS)
        ax.plot(part[N_PARAMS], part["attn_logit_max/0@step"], "o", color=c, ms=4)
        ax.plot(xs, [instability.interval(row["fit"], x)["value"] for x in xs], "-", color=c, lw=1, label=f"LR {row['lr']:g}")
        ax.errorbar([t["held_out_n"]], [row["predicted"]], yerr=[[row["predicted"] - row["low"]], [row["high"] - row["predicted"]]]
                    if row["low"] == row["low"] else None, fmt="s", mfc="none", color=c, ms=7)
    if t["threshold"]:
        ax.axhline(t["threshold"], ls="--", color="grey", lw=1, label=f"threshold {t['threshold']:.3g}")
    ax.axvline(t["held_out_n"], ls=":", color="black", lw=0.8)
    _style(ax, "non-embedding parameters N (dotted: held out of the fit)", "layer-0 max attention logit at fixed step",
           title, logy=True, legend=6)
    return _save(fig, path)


def forecast_trends(rows: pl.DataFrame, record: dict[str, Any], path: Path) -> list[Path]:
    """The forecast (``forecast.forecast``): each diagnostic of the ladder against N at the target LR, the power-law
    fit extended to the target's N with its 80% band, the forecast with its interval, and the threshold it is
    judged against. With a backtest in ``record``: the held-out size's forecast (from the smaller sizes, its band
    as an error bar) and the value it measured (filled diamonds, one per seed)."""
    import numpy as np

    n, lr = record["n_target"], record["lr"]
    at = f" at LR {lr:g}"
    panels = [("layer-0 max attention logit", at, record["trends"]["attn_logit_max/0"], record["logit_threshold"],
               "threshold", "attn_logit_max/0"),
              ("|log Z|", at, record["trends"]["log_z_mean"], record["log_z_threshold"], "threshold", "log_z_mean"),
              ("gradient RMS, first MLP layer", at, record["trends"]["grad_rms/layers.0.w1"],
               instability.EPS_FACTOR * record["target"]["eps"] if "target" in record else None,
               f"{instability.EPS_FACTOR:g}·ε", "grad_rms/layers.0.w1"),
              ("LR where the loss turns unstable", "", record["divergence_lr"], lr, "target LR", "instability_lr")]
    cases = (record.get("backtest") or {}).get("cases") or []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.5), squeeze=False)
    for ax, (label, where, t, limit, limit_name, quantity) in zip(axes[0], panels):
        pts = t.get("points") or []
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o", color="C0", label="ladder")
        if t.get("ok"):
            xs = np.geomspace(min(x for x, _ in pts), n, 40)
            from ..science.extrapolation import trend  # the band as the forecast builds it (extrapolation.BAND), at every N

            band = [trend(pts, x, quantity=quantity) for x in xs]
            ax.plot(xs, [b["value"] for b in band], "-", color="C0", lw=1)
            ax.fill_between(xs, [b["low"] for b in band], [b["high"] for b in band], color="C0", alpha=0.15,
                            lw=0, label="80% band")
            ax.errorbar([n], [t["value"]], yerr=[[t["value"] - t["low"]], [t["high"] - t["value"]]], fmt="s",
                        mfc="none", color="C3", label="forecast (80%)")
        else:
            ax.text(0.5, 0.5, "cannot forecast:\n" + t.get("why", ""), transform=ax.transAxes, ha="center",
                    fontsize=7, wrap=True)
        held = [c for c in cases if c["quantity"] == quantity and (c.get("lr") is None or c["lr"] == lr)]
        if held:
            hn = record["backtest"]["held_out_n"]
            c0 = held[0]
            ax.errorbar([hn], [c0["value"]], yerr=[[c0["value"] - c0["low"]], [c0["high"] - c0["value"]]], fmt="s",
                        mfc="none", color="C2", label="backtest forecast (80%)")
            measured = [c["measured"] for c in held if c.get("measured")]
            ax.plot([hn] * len(measured), measured, "D", color="C2", ms=5, label="held-out size, measured")
        if limit:
            ax.axhline(limit, ls="--", color="grey", lw=1, label=f"{limit_name} {limit:.3g}")
        ax.axvline(n, ls=":", color="black", lw=0.8)
        _style(ax, "non-embedding parameters N (dotted: target)", label, label + where, logy=True, legend=6)
    return _save(fig, path)


def calibration(cases: list[dict[str, Any]], path: Path) -> list[Path]:
    """Nominal against observed coverage of the backtest's bands (``extrapolation.calibration``): a calibrated
    forecast lies on the diagonal; below it, the bands are too narrow."""
    from ..science.extrapolation import calibration as observed

    points = observed(cases)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="calibrated")
    ax.plot([p for p, _, _ in points], [o for _, o, _ in points], "o-", color="C0",
            label=f"observed ({points[0][2] if points else 0} held-out cases)")
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("nominal coverage of the band")
    ax.set_ylabel("held-out values inside it")
    ax.set_title("forecast calibration (backtest)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
