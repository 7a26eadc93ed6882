"""Paper-style figures (PNG + SVG): log-x LR axes, one line per size coloured by size, sensitivity vs N."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from .analysis import sensitivity_frame  # noqa: E402


def _save(fig: Any, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_suffix(".png"), path.with_suffix(".svg")]
    fig.savefig(out[0], dpi=110, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight")
    plt.close(fig)
    return out


def _sizes(results: pl.DataFrame) -> list[str]:
    return results.sort("n_params")["label.size"].unique(maintain_order=True).to_list()


def lr_vs_loss(results: pl.DataFrame, path: Path, panels: str | None = None, title: str = "") -> list[Path]:
    """Final eval loss against peak LR, one line per size (viridis by size), one panel per ``panels`` value;
    losses above ℓ0 or NaN are drawn at ℓ0, as the LR sensitivity counts them."""
    col = f"label.{panels}" if panels else None
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
    col = f"label.{lines}"
    s = sensitivity_frame(results, ["label.size", col])
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    for v in s[col].unique(maintain_order=True).to_list():
        part = s.filter(pl.col(col) == v).sort("n_params")
        ax.plot(part["n_params"], part["lr_sensitivity"], marker="o", label=f"{lines} = {v}")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("LR sensitivity")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
