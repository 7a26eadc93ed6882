"""Run one experiment of the paper: its sweep at a scale, its figures, its claim verdicts."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import polars as pl

from ..science import claims as claims_mod
from .. import experiments as catalogue
from ..engine import loggers
from ..outputs import plots
from ..core import store, table
from ..runs import sweep
from ..core.config import ConfigError
from ..core.records import ExperimentRecord, GroupSummary, Verdict

SCALES = catalogue.SCALES


names = catalogue.names
"""Experiment names in the paper's order (the catalogue's)."""


def scales() -> dict[str, Any]:
    """experiments/scales.yaml: ``lr_grids`` (named LR grids) and ``scales`` (each scale's why, device, spec). A scale
    with ``like: OTHER`` is OTHER's spec with its own merged over it (``laptop-lite``: the laptop scale at half the
    batch)."""
    shared = catalogue.read_scales()
    for body in shared["scales"].values():
        if body.get("like"):
            body["spec"] = sweep.merge(shared["scales"][body["like"]]["spec"], body.get("spec") or {})
    return shared


def _scale_entries(exp: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    """The experiment's ``scales`` entries, with each ``like`` scale it does not name taking the entry of the scale it
    is like (its why and spec), so every experiment runs at every scale."""
    out = dict(exp["scales"])
    for scale, body in shared["scales"].items():
        like = body.get("like")
        if scale not in out and like in out:
            out[scale] = {**out[like], "why": f"{out[like]['why']} At {scale}: {body['why']}"}
    return out


def _named_grids(spec: dict[str, Any], grids: dict[str, list[float]], where: str) -> dict[str, Any]:
    """Replace an LR grid given by name (``members: {lr: paper}``) with its values, in ``spec`` and its parts."""
    for i, sub in enumerate([spec, *(spec.get("parts") or [])]):
        lr = (sub.get("members") or {}).get("lr")
        if isinstance(lr, str):
            if lr not in grids:
                raise ConfigError(f"{where}{'' if i == 0 else f'.parts[{i - 1}]'}.members.lr: unknown grid {lr!r}; "
                                  f"valid: {', '.join(grids)} (experiments/scales.yaml) or a list of LRs")
            sub["members"] = {**sub["members"], "lr": list(grids[lr])}
    return spec


def load(name: str) -> dict[str, Any]:
    """Experiment ``name`` with each scale's spec resolved (scales.yaml, then the file's ``spec``, then its
    ``scales.<scale>.spec``) and its figures and claims validated; ConfigError names the bad entry."""
    try:
        exp, shared = catalogue.read(name), scales()
    except KeyError:
        raise ConfigError(f"experiment {name!r}: unknown; valid: {', '.join(names())}, all or beyond (see: proxyscale list)") \
            from None
    resolved = {}
    for scale, body in _scale_entries(exp, shared).items():
        if scale not in shared["scales"]:
            raise ConfigError(f"{name}.scales.{scale}: unknown scale; valid: {', '.join(shared['scales'])}")
        spec = sweep.merge(sweep.merge(shared["scales"][scale]["spec"], exp.get("spec") or {}), body.get("spec") or {})
        spec = {k: v for k, v in spec.items() if v is not None}  # `sizes: null` drops the scale's ladder
        resolved[scale] = {**body, "spec": _named_grids(spec, shared["lr_grids"], f"{name}.scales.{scale}.spec")}
    for i, fig in enumerate(exp.get("figures") or []):
        plots.validate(fig, f"{name}.figures[{i}]")
    for i, claim in enumerate(exp.get("claims") or []):
        claims_mod.validate(claim, f"{name}.claims[{i}]")
    return {**exp, "scales": resolved}


def sweep_spec(exp: dict[str, Any], scale: str, log_to: str | None = None,
               seeds: int | list[int] | None = None) -> dict[str, Any]:
    """The sweep spec of a loaded experiment at ``scale`` (``log_to``: stream it to TensorBoard/W&B too; ``seeds``:
    the init seeds in place of the scale's, ``--seeds``)."""
    if scale not in exp["scales"]:
        raise ConfigError(f"--scale: {scale!r} not defined for {exp['name']}; valid: {', '.join(exp['scales'])}")
    spec = {"name": exp["name"], **exp["scales"][scale]["spec"]}
    if seeds is not None:
        spec["seeds"] = seeds
    return sweep.with_log_to(spec, log_to)


def resolved_claims(exp: dict[str, Any], scale: str, groups: list[sweep.Group]) -> list[dict[str, Any]]:
    """The experiment's claims at ``scale``, values by role resolved against its planned ``groups``; a claim that
    would match no run is a ConfigError naming the claim and the scale (``claims.resolve``)."""
    planned = table.planned(groups)
    return [claims_mod.resolve(claims_mod.at_scale(c, scale), planned, f"{exp['name']}.claims[{i}] at --scale {scale}")
            for i, c in enumerate(exp.get("claims") or [])]


def _figures(exp: dict[str, Any], results: pl.DataFrame, out: Path, pool: Path) -> list[str]:
    made = []
    for fig in exp.get("figures", []):
        made += plots.draw(fig, results, out / "figures" / f"{exp['name']}_{fig['name']}", exp["title"], pool)
    if results.height:  # every experiment: its training curves per size, so a user sees how each run went
        made += plots.loss_curves(results, out / "figures" / f"{exp['name']}_loss_curves", title=exp["title"],
                                  pool=pool)
    return [str(p.relative_to(out)) for p in made]


def group_rows(results: pl.DataFrame, groups: list[sweep.Group], pool: Path) -> list[dict[str, Any]]:
    """One row per group an experiment used: its id (the folder in the pool), size, switches, members, and what
    ran it (precision, device, threads, seconds), read from its summary.json."""
    rows = []
    used = set(results["group"].to_list()) if results.height else set()
    for g in groups:
        if g.id not in used:
            continue
        summary = GroupSummary.read(pool / g.id / "summary.json")
        rows.append({"group": g.id, "size": g.labels.get("size", ""),
                     "switches": ", ".join(f"{k.split('.')[-1]}={v}" for k, v in g.labels.items() if k != "size"),
                     "members": len(summary.members), "steps": summary.steps, "precision": summary.precision,
                     "device": summary.device, "threads": summary.threads, "seconds": summary.seconds})
    return rows


def reproduce(name: str, scale: str, out: Path, workers: int | None = None, progress: Any = None,
              executor: dict[str, Any] | None = None, log_to: str | None = None,
              seeds: int | list[int] | None = None) -> ExperimentRecord:
    """Run experiment ``name`` at ``scale`` into ``out/<name>``: sweep, figures, verdicts.json (its record);
    ``seeds`` in place of the scale's init seeds."""
    exp = load(name)
    spec = sweep_spec(exp, scale, log_to, seeds)
    groups, exp_out, pool, ex = sweep.prepare(spec, out / name, out / "groups", {"workers": workers, **(executor or {})})
    exp = {**exp, "claims": resolved_claims(exp, scale, groups)}
    with store.lock(exp_out):  # checked above: nothing is written before this
        return _reproduce_locked(exp, scale, spec, groups, exp_out, pool, ex, progress)


def _reproduce_locked(exp: dict[str, Any], scale: str, spec: dict[str, Any], groups: list[sweep.Group],
                      exp_out: Path, pool: Path, executor: Any, progress: Any) -> ExperimentRecord:
    name = exp["name"]
    start = time.perf_counter()
    results = sweep.run_locked(spec, groups, exp_out, pool, executor, progress)
    figures = _figures(exp, results, exp_out, pool)
    loggers.log_figures(loggers.sweep_kinds(groups), exp_out, name, [exp_out / f for f in figures])
    verdicts = claims_mod.evaluate(exp.get("claims", []), results)
    sens = sensitivity_table(results, exp)
    # from-scratch cost: the training time of every group this experiment needs, shared ones included
    train_seconds = sum(GroupSummary.read(pool / gid / "summary.json").seconds or 0.0
                        for gid in results["group"].unique().to_list())
    record = ExperimentRecord(
        name=name, title=exp["title"], paper=exp.get("paper", ""), scale=scale, why=exp["scales"][scale].get("why", ""),
        command=f"proxyscale reproduce {name} --scale {scale}", seconds=round(train_seconds, 1),
        wall_seconds=round(time.perf_counter() - start, 1), groups=results["group"].n_unique(), runs=results.height,
        figures=figures, group_rows=group_rows(results, groups, pool),
        verdicts=[Verdict(v.claim, v.label, v.detail) for v in verdicts], sensitivity=sens.to_dicts())
    record.write(exp_out / "verdicts.json")
    return record


def summarise_beyond(out: Path, scale: str) -> ExperimentRecord | None:
    """After ``reproduce beyond``: ``out/beyond/`` with the summary figure of every mitigation family reproduced
    into ``out`` (``plots.beyond_summary``) and a record the report shows, the families' verdict counts as its rows."""
    done = {name: out / name for name in catalogue.BEYOND if (out / name / "results.parquet").exists()}
    if not done:
        return None
    folder = out / "beyond"
    with store.lock(folder):
        results = {name: pl.read_parquet(d / "results.parquet") for name, d in done.items()}
        figures = plots.beyond_summary(results, folder / "figures" / "summary")
        verdicts = []
        for name, d in done.items():
            rec = ExperimentRecord.read(d / "verdicts.json")
            verdicts.append(Verdict(name, f"{rec.reproduced}/{len(rec.verdicts)} claims",
                                    "; ".join(f"{v.verdict}: {v.claim}" for v in rec.verdicts)))
        record = ExperimentRecord(
            name="beyond", title="Beyond the paper: every mitigation family, LR sensitivity by variant and size",
            paper="The mitigations adopted after the paper, under its lens (docs/beyond.md).", scale=scale,
            command=f"proxyscale reproduce beyond --scale {scale}", seconds=0.0,
            figures=[str(p.relative_to(folder)) for p in figures], verdicts=verdicts)
        record.write(folder / "verdicts.json")
    return record


def sensitivity_table(results: pl.DataFrame, exp: dict[str, Any]) -> pl.DataFrame:
    """The experiment's LR-sensitivity table: one row per setting, each number the mean over its seeds with its
    range (``COL_min``/``COL_max``) and the number of seeds (``analysis.sensitivity_summary``)."""
    from ..core.analysis import sensitivity_summary

    by = table.variant_columns(results)
    frame = sensitivity_summary(results, by).sort([table.N_PARAMS, *by[1:]])
    finite = [c for c in frame.columns if c.startswith("best_lr")]
    return frame.with_columns(pl.col(c).map_elements(lambda x: x if math.isfinite(x) else None,
                                                     return_dtype=pl.Float64) for c in finite)
