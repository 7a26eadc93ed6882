"""Run one experiment of the paper: its sweep at a scale, its figures, its claim verdicts."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from . import claims as claims_mod
from . import plots, store, sweep
from .config import ConfigError

EXPERIMENTS = Path(__file__).parent / "experiments"
SCALES = ("micro", "small", "paper")


def names() -> list[str]:
    """Experiment names in the paper's order: figures, then appendix items (E.*, C.*)."""
    def key(name: str) -> tuple[int, int]:
        prefix = 0 if name.startswith("fig") else 1 if name.startswith("e") else 2
        return prefix, int("".join(ch for ch in name if ch.isdigit()) or 0)

    return sorted((p.stem for p in EXPERIMENTS.glob("*.yaml")), key=key)


def load(name: str) -> dict[str, Any]:
    path = EXPERIMENTS / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"experiment {name!r}: unknown; valid: {', '.join(names())} or all (see: proxyscale list)")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _figures(exp: dict[str, Any], results: pl.DataFrame, out: Path) -> list[str]:
    made = []
    fig_dir = out / "figures"
    all_results = results
    for fig in exp.get("figures", []):
        path = fig_dir / f"{exp['name']}_{fig['name']}"
        kind = fig["kind"]
        results = claims_mod._where(all_results, fig.get("where")) if kind != "metric_vs" else all_results
        if kind == "lr_vs_loss":
            made += plots.lr_vs_loss(results, path, panels=fig.get("panels"), title=exp["title"])
        elif kind == "sensitivity_vs_n":
            made += plots.sensitivity_vs_n(results, path, lines=fig["lines"], title="LR sensitivity vs N")
        elif kind == "over_steps":
            made += plots.over_steps(_curves(results, out, fig), path, fig["columns"], title=exp["title"],
                                     logy=tuple(fig.get("logy", ())))
        elif kind == "metric_vs":
            made += plots.metric_vs(results, path, fig["x"], fig["y"], lines=fig.get("lines", "label.size"),
                                    title=exp["title"], logx=fig.get("logx", True), logy=fig.get("logy", True),
                                    where=fig.get("where"), vline=fig.get("vline"))
        elif kind == "prediction":
            made += plots.prediction(results, path, fig["fit_sizes"], fig.get("degree", 1), fig.get("margin", 0.1),
                                     title=exp["title"])
        else:
            raise ConfigError(f"{exp['name']}.figures: unknown kind {kind!r}")
    return [str(p.relative_to(out)) for p in made]


def _curves(results: pl.DataFrame, out: Path, fig: dict[str, Any]) -> dict[str, pl.DataFrame]:
    """Per-step metrics of the members at LR ``fig['lr']``, labelled by size and the ``lines`` axis."""
    curves = {}
    rows = results.filter((pl.col("member.lr") - fig["lr"]).abs() < 1e-12)
    for row in rows.iter_rows(named=True):
        metrics = pl.read_parquet(out.parent / "groups" / row["group"] / "metrics.parquet")
        member = metrics.filter(pl.col("member") == row["member"]).filter(pl.col("loss").is_not_null())
        curves[f"{row['label.size']}, {fig['lines']}={row['label.' + fig['lines']]}"] = member
    return curves


def reproduce(name: str, scale: str, out: Path, workers: int = 1, progress: Any = None) -> dict[str, Any]:
    """Run experiment ``name`` at ``scale`` into ``out/<name>``: sweep, figures, verdicts.json."""
    exp = load(name)
    if scale not in exp["scales"]:
        raise ConfigError(f"--scale: {scale!r} not defined for {name}; valid: {', '.join(exp['scales'])}")
    spec = {"name": name, **exp["scales"][scale]["spec"]}
    sweep.expand(spec)  # validate before anything is written
    exp_out = out / name
    start = time.perf_counter()
    results = sweep.run_sweep(spec, exp_out, workers=workers, progress=progress, pool=out / "groups")
    figures = _figures(exp, results, exp_out)
    verdicts = claims_mod.evaluate(exp.get("claims", []), results)
    table = sensitivity_table(results, exp)
    # from-scratch cost: the training time of every group this experiment needs, shared ones included
    train_seconds = sum(store.read_json(out / "groups" / gid / "summary.json").get("seconds", 0.0)
                        for gid in results["group"].unique().to_list())
    record = {"name": name, "title": exp["title"], "paper": exp.get("paper", ""), "scale": scale,
              "why": exp["scales"][scale].get("why", ""), "command": f"proxyscale reproduce {name} --scale {scale}",
              "seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - start, 1),
              "groups": results["group"].n_unique(), "runs": results.height, "figures": figures,
              "verdicts": [{"claim": v.claim, "verdict": v.label, "detail": v.detail} for v in verdicts],
              "sensitivity": table.to_dicts()}
    store.write_json(exp_out / "verdicts.json", record)
    return record


def sensitivity_table(results: pl.DataFrame, exp: dict[str, Any]) -> pl.DataFrame:
    from .analysis import sensitivity_frame

    by = ["label.size"] + [c for c in results.columns if c.startswith("label.") and c != "label.size"]
    by += [c for c in results.columns if c.startswith("member.") and c not in ("member.lr", "member.seed")
           and results[c].n_unique() > 1]
    frame = sensitivity_frame(results, by).sort(["n_params", *by[1:]])
    return frame.with_columns(pl.col("best_lr").map_elements(lambda x: x if math.isfinite(x) else None, return_dtype=pl.Float64))
