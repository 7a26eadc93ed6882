"""The output-logit drift (paper §3.1.2, Figs 3/4), measured the way Output Embedding Centering explains it.

Stollenwerk, Lokrantz and Hertzberg 2026 (arXiv 2601.02031; code: flxst/output-embedding-centering): the mean output
logit over the vocabulary is μ·h, with μ = mean_i W_out[i] the mean output-embedding row. For an untied output layer
without bias the rows' gradients sum to 0, so SGD would keep μ where it starts; Adam's per-coordinate normalisation
does not, and μ drifts with the integrated LR I(t) = Σ_{s≤t} η_s (their 16M model: ‖μ‖ 20 at LR 1e-2 and 187 at
1e-1 after 100k steps). Weight decay, z-loss and OEC (``optim.mu_centering``, ``optim.mu_loss``) are the restoring
forces. Cross-entropy is shift-invariant in exact arithmetic, so a drift of every logit by the same amount costs
nothing by itself; it costs the loss once the logits sit so far from 0 that their precision rounds away the
differences between them (bf16 keeps 8 significant bits: a spacing of 2 at |z| = 256).

This module owns the three measurements (issue 23):

- **the law**: ‖μ‖ (or |mean logit|) = c·I^b, fitted in log-log through (integrated LR, value) points with its 80%
  prediction interval (``analysis.fit_log``, ``instability.interval``): ``points``, ``law``, ``project``. Its x is
  the logged ``lr_integral`` (``optim.BatchedAdamW``; the monitor sums the user's LR the same way);
- **the clock of a run not trained yet**: I at its last step from its peak LR, warm-up, steps and the cosine schedule
  (``schedule_integral``), so a forecast reads the law at the target's own I;
- **the damage**: the loss a logit precision costs when every logit sits ``shift`` from where it is
  (``rounding_loss``, ``precision_damage`` on a trained group), and the |logit| at which it reaches ``DAMAGE_NATS``
  (``DAMAGE_AT``, measured: see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..core.analysis import fit_log
from ..core.instability import interval

if TYPE_CHECKING:  # torch is imported where the damage is measured: the report and the law stay light
    import torch

LAW_COLUMNS = ("mu_norm", "output_logit_mean")
"""What the law is fitted to: ‖μ‖ and the mean output logit (its absolute value), each against ``lr_integral``."""

DAMAGE_NATS = 0.01
"""The loss (nats/token) a logit precision may cost before a run counts as losing its loss to the drift: a hundredth
of a nat, under the seed spread of the laptop scale's final losses (docs/reproducing.md: Seeds)."""

DAMAGE_AT: dict[str, float] = {"bf16": 64.0, "fp16": 512.0, "fp32": 64.0 * 2.0**16}
"""|logit| (the logits' distance from 0) from which rounding them to the precision costs ``DAMAGE_NATS`` or more.
Measured with ``precision_damage`` (``examples/logit_precision.py``: d64-L2, 300 steps, LR 0.01/0.1/0.3, no weight
decay or z-loss, commit 0e50898+, on this project's AVX512-BF16 CPU without AMX): the cost, the worst of the three
members, at shifts 0, 1, 2, … 4096; the smallest power of two where it reaches 0.01 nats. bf16, byte vocab: 0.0022
at 32, **0.011 at 64**, 0.036 at 128, 0.13 at 256, 0.45 at 512, 1.3 at 1024; BPE-2048: 0.0019 / **0.011** / 0.044 /
0.14 / 0.47 / 2.0, the same threshold. fp16 (3 more significant bits): **0.011 at 512** with either vocabulary.
fp32 has 16 more significant bits than bf16: its threshold is 2^16 times bf16's, beyond any drift measured here.
For scale: OEC's 16M model without mitigation ended at a mean logit of +588 with a loss 0.42 nats above μ-centering's
(4.269 vs 3.844), where this table gives 0.45 at 512."""


# ---- the law ---------------------------------------------------------------------------------------------------------

def points(rows: Any, column: str = "mu_norm") -> list[tuple[float, float]]:
    """(integrated LR, |column|) of every run in ``rows`` (a results table, ``table`` module) that did not diverge and
    has both: one point per member, its tail means (``table.DIAGNOSTICS``)."""
    import polars as pl

    if "lr_integral" not in rows.columns or column not in rows.columns:
        return []
    part = rows.filter(~pl.col("diverged").cast(pl.Boolean)) if "diverged" in rows.columns else rows
    out = []
    for x, y in zip(part["lr_integral"].to_list(), part[column].to_list()):
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y) and x > 0 and y != 0:
            out.append((float(x), abs(float(y))))
    return sorted(out)


TRAJECTORY_SKIP = 0.2
"""The first fifth of each run's logged steps is left out of its trajectory (the warm-up and the first transient)."""

TRAJECTORY_POINTS = 20
"""Points kept per run's trajectory, evenly spaced in log I, so a long run does not outweigh a short one."""


def trajectory_points(curves: Sequence[Any], column: str = "output_logit_mean") -> list[tuple[float, float]]:
    """(integrated LR, |column|) along each run's own logged steps (``metrics.parquet`` frames of runs that did not
    diverge), past its first ``TRAJECTORY_SKIP``, ``TRAJECTORY_POINTS`` of them per run: the law along one run's clock,
    the way a longer run at the same LR extends it. Measured (docs/beyond.md: the drift law) it differs from the law across
    the LR grid at a fixed number of steps: the mean logit grows as I^0.3–0.5 along a run at LR ≥ 0.03, I^0.14–0.21
    across LRs."""
    import polars as pl

    out: list[tuple[float, float]] = []
    for frame in curves:
        if "lr_integral" not in frame.columns or column not in frame.columns:
            continue
        f = frame.filter(pl.col("lr_integral").is_not_null() & pl.col(column).is_not_null()).sort("step")
        f = f[int(f.height * TRAJECTORY_SKIP):]
        pts = [(float(x), abs(float(y))) for x, y in zip(f["lr_integral"], f[column])
               if x > 0 and math.isfinite(y) and y != 0]
        if len(pts) > TRAJECTORY_POINTS:
            lo, hi = math.log(pts[0][0]), math.log(pts[-1][0])
            marks = [lo + (hi - lo) * j / (TRAJECTORY_POINTS - 1) for j in range(TRAJECTORY_POINTS)]
            pts = [min(pts, key=lambda p, m=m: abs(math.log(p[0]) - m)) for m in marks]
        out += sorted(set(pts))
    return sorted(out)


def trajectory_backtest(curves: Sequence[Any], column: str = "output_logit_mean", keep: float = 0.5
                        ) -> dict[str, Any]:
    """Score the trajectory law where a forecast reads it, beyond its data: fit it through the first ``keep`` of each
    run's trajectory (in log I, past the skipped start), forecast each run's last logged value, and say whether it
    fell inside the 80% band. ``{"ok", "rows", "inside", "cases", "extrapolation"}`` (the held-out I over the largest
    fitted one, the mean over runs)."""
    fit_pts, held, reach = [], [], []
    for frame in curves:
        pts = trajectory_points([frame], column)
        if len(pts) < 3:
            continue
        lo, end = math.log(pts[0][0]), pts[-1]
        cut = math.exp(lo + keep * (math.log(end[0]) - lo))
        mine = [p for p in pts if p[0] <= cut]
        if not mine:
            continue
        fit_pts += mine
        held.append(end)
        reach.append(end[0] / mine[-1][0])
    fitted = law(fit_pts)
    if not fitted["ok"] or not held:
        return {"ok": False, "why": fitted.get("why", "no run with a trajectory")}
    return {"ok": True, "column": column, "extrapolation": sum(reach) / len(reach), **_score(fitted, held)}


def _score(fitted: dict[str, Any], held: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """The law's forecast of each held-out (I, value) against its 80% band: ``exponent``, ``rows``, ``inside``,
    ``cases``."""
    rows = []
    for x, y in held:
        p = project(fitted, x)
        rows.append({"integral": x, "measured": y, "predicted": p["value"], "low": p["low"], "high": p["high"],
                     "inside": bool(p["low"] <= y <= p["high"])})
    return {"exponent": fitted["exponent"], "rows": rows, "inside": sum(r["inside"] for r in rows),
            "cases": len(rows)}


def law(pts: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """value = c·I^b through ``pts`` [(I, value > 0)]: ``{"ok", "exponent" b, "coefficient" c, "fit", "points",
    "span" (the largest I over the smallest)}``, or ``{"ok": False, "why"}`` with fewer than 3 points or no spread."""
    good = [(x, y) for x, y in pts if x > 0 and y > 0]
    if len(good) < 3:
        return {"ok": False, "why": f"{len(good)} runs with an integrated LR and a value; a law needs 3",
                "points": good}
    if len({x for x, _ in good}) < 2:
        return {"ok": False, "why": "every run has the same integrated LR: no spread to fit a law through",
                "points": good}
    fit = fit_log([x for x, _ in good], [y for _, y in good], 1)
    slope, intercept = fit["coef"]
    return {"ok": True, "exponent": slope, "coefficient": 10**intercept, "fit": fit, "points": good,
            "span": max(x for x, _ in good) / min(x for x, _ in good), "max_integral": max(x for x, _ in good)}


def exponent_interval(fit: dict[str, Any]) -> tuple[float, float]:
    """The 80% interval of the law's exponent b (Student's t on its standard error)."""
    from ..core.instability import t80

    se = math.sqrt(fit["cov"][0][0]) if math.isfinite(fit["cov"][0][0]) else math.nan
    half = t80(fit["n"] - 2) * se
    return fit["coef"][0] - half, fit["coef"][0] + half


def project(fitted: dict[str, Any], integral: float) -> dict[str, float]:
    """The law at integrated LR ``integral``: ``value`` with its 80% prediction interval ``low``–``high``, and
    ``extrapolation``, the factor beyond the largest integrated LR fitted (1 or less: inside the data)."""
    out = interval(fitted["fit"], integral)
    return {**out, "extrapolation": integral / fitted["max_integral"]}


def backtest(rows: Any, column: str = "mu_norm") -> dict[str, Any]:
    """Score the law where it is read, beyond its data: fit it through every stable run but those of the largest
    integrated LR, forecast those held-out runs (every size and seed at that LR) and say whether each measured value
    fell inside its 80% band. ``{"ok", "held_out_integral", "extrapolation", "rows", "inside", "cases"}``."""
    pts = points(rows, column)
    if not pts:
        return {"ok": False, "why": f"no stable run with {column} and lr_integral"}
    top = max(x for x, _ in pts)
    held = [(x, y) for x, y in pts if x >= top * (1 - 1e-9)]
    fitted = law([(x, y) for x, y in pts if x < top * (1 - 1e-9)])
    if not fitted["ok"]:
        return {"ok": False, "why": fitted["why"]}
    return {"ok": True, "column": column, "held_out_integral": top, "extrapolation": top / fitted["max_integral"],
            **_score(fitted, held)}


# ---- the clock -------------------------------------------------------------------------------------------------------

def schedule_integral(peak: float, warmup: int, steps: int, min_lr: float) -> float:
    """Σ of the LR over a run's ``steps`` optimizer steps (``optim.lr_schedule``: linear warm-up, cosine to
    ``min_lr``): the integrated LR at its end, the x at which the law is read for a run not trained yet."""
    from ..engine.optim import lr_schedule  # the one owner of the schedule (imports torch)

    return math.fsum(lr_schedule(s, peak, warmup, steps, min_lr) for s in range(steps))


# ---- the damage ------------------------------------------------------------------------------------------------------

def _ce(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per member [K] of float32 logits [K, N, V] at ``targets`` [N]."""
    import torch

    picked = z.gather(-1, targets.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1)
    return (torch.logsumexp(z, dim=-1) - picked).mean(dim=1)


def rounding_loss(logits: torch.Tensor, targets: torch.Tensor, shift: float, dtype: torch.dtype) -> torch.Tensor:
    """CE(round_dtype(z + shift)) − CE(z) per member [K] (nats/token), for float32 logits [K, N, V] and ``targets``
    [N]: what storing the logits in ``dtype`` costs when every logit sits ``shift`` further from 0 (the mean-logit
    drift moves them all together). 0 in exact arithmetic: the softmax is shift-invariant. Both cross-entropies
    run in float32 (the shifted one from the rounded values), so only the rounding to ``dtype`` differs."""
    z = logits.float()
    return _ce((z + shift).to(dtype).float(), targets) - _ce(z, targets)


def precision_damage(run: Any, shifts: Sequence[float], dtypes: Sequence[str] = ("bf16",)) -> list[dict[str, Any]]:
    """``rounding_loss`` of a trained group (``train.GroupRun``) over its evaluation windows, per member, shift and
    precision: rows ``{"member", "shift", "precision", "loss_fp32", "damage"}``. The logits come from the float32
    master weights (the same checkpoint for every precision); shift 0 is the checkpoint as it is, with its own
    mean logit."""
    import torch

    from ..engine.device import compute_dtype

    weights = run.fp.params  # float32 master views
    logits, targets = [], []
    with torch.no_grad():
        for x, y in run.batches.eval:
            z, _ = run.model.forward(weights, x, False, run.caps)
            logits.append(z.float().reshape(z.shape[0], -1, z.shape[-1]))
            targets.append(y.reshape(-1))
    z, t = torch.cat(logits, dim=1), torch.cat(targets)
    base = _ce(z, t)
    rows = []
    for name in dtypes:
        for shift in shifts:
            damage = rounding_loss(z, t, shift, compute_dtype(name) if name != "fp16" else torch.float16)
            rows += [{"member": k, "shift": float(shift), "precision": name, "loss_fp32": float(base[k]),
                      "damage": float(damage[k])} for k in range(z.shape[0])]
    return rows


def damage_at(precision: str) -> float:
    """``DAMAGE_AT`` for a logit precision (an unknown one counts as float32)."""
    return DAMAGE_AT.get(precision, DAMAGE_AT["fp32"])
