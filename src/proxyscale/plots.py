"""Paper-style figures (PNG + SVG): log-x LR axes, one line per size coloured by size, sensitivity vs N."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import polars as pl  # noqa: E402

from .analysis import sensitivity_frame  # noqa: E402
from .claims import _col  # noqa: E402


def _save(fig: Any, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    out = [path.with_suffix(".png"), path.with_suffix(".svg")]
    fig.savefig(out[0], dpi=110, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight")
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


def _sizes(results: pl.DataFrame) -> list[str]:
    return results.sort("n_params")["label.size"].unique(maintain_order=True).to_list()


def lr_vs_loss(results: pl.DataFrame, path: Path, panels: str | None = None, title: str = "") -> list[Path]:
    """Final eval loss against peak LR, one line per size (viridis by size), one panel per ``panels`` value;
    losses above ℓ0 or NaN are drawn at ℓ0, as the LR sensitivity counts them."""
    col = _col(panels) if panels else None
    values = results[col].unique(maintain_order=True).to_list() if col else [None]
    sizes = _sizes(results)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(values), figsize=(4.2 * len(values), 3.4), sharey=True, squeeze=False)
    for ax, v in zip(axes[0], values):
        part = results if col is None else results.filter(pl.col(col) == v)
        for i, size in enumerate(sizes):
            s = part.filter(pl.col("label.size") == size).sort("member.lr")
            if s.height == 0:
                continue
            loss = [min(x, l0) if x == x else l0 for x, l0 in zip(s["final_eval_loss"], s["l0"])]
            ax.plot(s["member.lr"], loss, marker="o", ms=3, color=cmap(i / max(1, len(sizes) - 1)), label=size)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(f"{panels} = {v}" if col else title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final eval loss")
    axes[0][-1].legend(fontsize=7, title="size", title_fontsize=7)
    if title and col:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def sensitivity_vs_n(results: pl.DataFrame, path: Path, lines: str, title: str = "") -> list[Path]:
    """LR sensitivity against non-embedding parameters N, one line per value of ``lines``."""
    col = _col(lines)
    s = sensitivity_frame(results, ["label.size", col])
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    for v in s[col].unique(maintain_order=True).to_list():
        part = s.filter(pl.col(col) == v).sort("n_params")
        ax.plot(part["n_params"], part["lr_sensitivity"], marker="o", label=f"{lines} = {v}")
    _style(ax, "non-embedding parameters N", "LR sensitivity", title)
    return _save(fig, path)


def over_steps(metrics: dict[str, pl.DataFrame], path: Path, columns: list[str], title: str = "",
               logy: tuple[bool, ...] = ()) -> list[Path]:
    """Diagnostics over training steps, one line per labelled run (e.g. qk-layernorm on/off)."""
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.2), squeeze=False)
    for j, column in enumerate(columns):
        ax = axes[0][j]
        for label, df in metrics.items():
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


def metric_vs(results: pl.DataFrame, path: Path, x: str, y: list[str], lines: str = "label.size", title: str = "",
              logx: bool = True, logy: bool | list[bool] = True, where: dict[str, Any] | None = None,
              vline: str | None = None) -> list[Path]:
    """Each of ``y`` (one panel each) against ``x``, one line per value of ``lines`` (mean over other rows).
    ``vline`` names a column whose mean is drawn as a dashed vertical line (e.g. the measured gradient RMS)."""
    from .claims import _where

    r = _where(results, where)
    xc, lc = _col(x), _col(lines)
    keys = r.sort("n_params")[lc].unique(maintain_order=True).to_list()
    cmap = plt.get_cmap("viridis")
    logys = logy if isinstance(logy, list) else [logy] * len(y)
    fig, axes = plt.subplots(1, len(y), figsize=(4.6 * len(y), 3.4), squeeze=False)
    for ax, col, log_this in zip(axes[0], y, logys):
        yc = _col(col)
        for i, key in enumerate(keys):
            part = r.filter(pl.col(lc) == key).group_by(xc).agg(pl.col(yc).mean()).sort(xc)
            ax.plot(part[xc], part[yc], marker="o", ms=3, color=cmap(i / max(1, len(keys) - 1)), label=str(key))
        if vline is not None:
            v = r[_col(vline)].mean()
            if v is not None:
                ax.axvline(v, ls="--", color="grey", lw=1, label=f"{vline} ≈ {v:.2g}")
        if logx:
            ax.set_xscale("log")
        if log_this:
            ax.set_yscale("symlog" if (r[yc].min() or 0) <= 0 else "log")
        ax.set_xlabel(x.removeprefix("member.").removeprefix("label."))
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, title=lines.removeprefix("label."), title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def prediction(results: pl.DataFrame, path: Path, fit_sizes: int, degree: int = 1, margin: float = 0.1,
               title: str = "") -> list[Path]:
    """Fig 9: max attention logit at a fixed step against N per LR; fit on the small sizes (lines), the
    extrapolation to the held-out size (open marker with its ±1σ band) and the measured value there (filled)."""
    import numpy as np

    from .analysis import predict
    from .claims import prediction_table

    t = prediction_table(results, fit_sizes, degree, margin=margin)
    r = results.filter(pl.col("attn_logit_max/0@step").is_not_null() & (pl.col("label.model.qk_layernorm") == "off"))
    cmap = plt.get_cmap("plasma")
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    xs = np.geomspace(min(t["fit_n"]), t["held_out_n"] * 1.2, 50)
    for i, row in enumerate(t["rows"]):
        c = cmap(i / max(1, len(t["rows"]) - 1))
        part = r.filter(pl.col("member.lr") == row["lr"]).sort("n_params")
        ax.plot(part["n_params"], part["attn_logit_max/0@step"], "o", color=c, ms=4)
        ax.plot(xs, [predict(row["fit"], x)[0] for x in xs], "-", color=c, lw=1, label=f"LR {row['lr']:g}")
        ax.errorbar([t["held_out_n"]], [row["predicted"]], yerr=[[row["predicted"] - row["low"]], [row["high"] - row["predicted"]]]
                    if row["low"] == row["low"] else None, fmt="s", mfc="none", color=c, ms=7)
    if t["threshold"]:
        ax.axhline(t["threshold"], ls="--", color="grey", lw=1, label=f"threshold {t['threshold']:.3g}")
    ax.axvline(t["held_out_n"], ls=":", color="black", lw=0.8)
    _style(ax, "non-embedding parameters N (dotted: held out of the fit)", "layer-0 max attention logit at fixed step",
           title, logy=True, legend=6)
    return _save(fig, path)
