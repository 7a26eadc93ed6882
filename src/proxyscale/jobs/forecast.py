"""Forecast a target run from a ladder of proxies (paper §3.5, Fig 9 and Fig 11 as a tool), and backtest it.

``TARGET.yaml`` is a group config for one run the user cannot afford to try (any size; ``optim.lr`` its peak LR).
The ladder is the scale's sizes, on the target's corpus and vocab, each trained with the target's interventions (qk-layernorm, z-loss, weight decay
and its mode, ε, μParam, ...) over an LR grid around the target LR, as one group per size. Each diagnostic is fitted
against N per LR as a power law (log-log, ``analysis.fit_log``) and extrapolated to the target's N with an 80%
prediction interval (parameter covariance plus residual scatter, Student's t in log space). Then one verdict per cause:

- **attention-logit growth** (§3.1.1): the layer-0 max attention logit at the target LR against a threshold
  calibrated on the ladder (between the largest logit of a stable run and the smallest of an unstable one, when
  they separate; else the paper's 1e4, labelled as such);
- **output-logit divergence** (§3.1.2): the drift of log Z and the mean output logit, judged against the same kind
  of calibrated threshold on |log Z|;
- **update collapse from ε** (§3.4): the first MLP layer's gradient RMS against AdamW's ε (collapse once the RMS
  is within 10× of ε);
- **divergence LR and LR sensitivity** (§3): the LR at which a size turns unstable (its loss crossing best +
  ``margin``, interpolated in log LR between grid points), fitted against N.

What makes a run *unstable*, the calibrated threshold, the 80% interval and the constants are ``instability``'s
(without a reference run: diverged, or above its size's best LR a loss worse than that best by ``MARGIN``). A forecast that cannot be made (fewer than three sizes with a value, a trend that does not fit)
says so instead of printing a number. ``backtest`` holds out the ladder's largest size and scores the forecast.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import polars as pl

from ..science import drift, extrapolation
from ..runs import sweep
from ..core import table
from ..core.analysis import LR_GRID, capped, fit_log, sensitivity_frame
from ..core.seeds import count, seed_keys
from ..core.table import replicate_columns
from ..core.config import ConfigError, GroupConfig
from ..experiments import FORECAST_LADDERS
from ..core.instability import EPS_FACTOR, MARGIN, PAPER_LOGIT_THRESHOLD, threshold, unstable
from ..engine.model import count_params
from ..runs.plan import vocab_size
from ..core.records import (
    ATTENTION_LOGIT_GROWTH,
    DIVERGENCE_AT_LR,
    OUTPUT_LOGIT_DIVERGENCE,
    UPDATE_COLLAPSE,
    ExperimentRecord,
    ForecastRecord,
    Verdict,
    verdicts_by_cause,
)
from ..core.table import FINAL_LOSS, L0, LR, N_PARAMS, SIZE

LADDERS = FORECAST_LADDERS
"""The ladder a scale forecasts from (scales.yaml's ``ladder``, via the experiments catalogue)."""
MODEL_INTERVENTIONS = ("qk_layernorm", "norm", "attn_scale", "mup", "zero_init_queries", "kappa", "attention",
                       "tied_embeddings", "rope_base",
                       # after the paper (docs/beyond.md): the ladder trains with the target's
                       "attn_softcap", "final_softcap", "qkv_layernorm", "norm_placement", "depth_alpha", "base_depth")
OPTIM_INTERVENTIONS = ("weight_decay", "independent_weight_decay", "eps", "beta1", "beta2", "z_loss", "clip",
                       "rms_scaled_lr", "min_lr",
                       "optimizer", "muon_lr_adjust", "muon_momentum", "atan2_a", "atan2_b", "qk_clip", "qk_clip_alpha",
                       "zclip", "zclip_alpha", "zclip_warmup", "mu_centering", "mu_loss")


def mitigations_of(target: GroupConfig) -> dict[str, Any]:
    """The post-paper mitigations a target uses that the verdicts speak of (None / adamw: not used)."""
    m, o = target.model, target.optim
    return {"optimizer": o.optimizer, "qk_clip": o.qk_clip, "attn_softcap": m.attn_softcap,
            "final_softcap": m.final_softcap, "zclip": o.zclip, "mu_centering": o.mu_centering or None,
            "mu_loss": o.mu_loss or None}


QK_CLIP_HELD = 0.25
"""QK-clip "holds" the logit when, once active, it stays within τ·(1 + this) (the qkclip experiment's claim)."""


def mitigation_evidence(rows: pl.DataFrame, lr: float, mitigations: dict[str, Any]) -> list[str]:
    """What the ladder's runs at LR ``lr`` show each mitigation the target uses doing (their switches are on in
    every ladder run): QK-clip's clip fraction and δ, the soft-cap's post- and pre-cap logits, ZClip's fraction."""
    at = table.at_lr(rows, lr)
    out = []

    def peak(column: str) -> float | None:
        return at[column].max() if column in at.columns and at[column].drop_nulls().len() else None

    if mitigations.get("qk_clip"):
        frac, delta = peak("qk_clip_fraction"), peak("qk_clip_delta")
        if frac is not None:
            held = f", max logit ≤ τ·(1 + {delta:.2g})" if delta is not None else ", never above τ"
            helps = delta is not None and delta <= QK_CLIP_HELD
            out.append(f"QK-clip (τ = {mitigations['qk_clip']:g}) clipped on up to {frac:.0%} of the ladder's steps "
                       f"at this LR{held}" + ("; suggested: keep QK-clip" if helps else ""))
    if mitigations.get("attn_softcap"):
        post, pre = peak("attn_logit_max_capped/all:max"), peak("attn_logit_max/all:max")
        if post is not None and pre is not None:
            out.append(f"the attention soft-cap {mitigations['attn_softcap']:g} bounds the post-cap logit (ladder max "
                       f"{post:.3g}); the forecast is of the pre-cap logit (ladder max {pre:.3g}), which the cap hides")
    if mitigations.get("zclip"):
        frac = peak("zclip_fraction")
        if frac is not None:
            out.append(f"ZClip clipped up to {frac:.1%} of the ladder's steps at this LR")
    return out


def load_target(path: str) -> GroupConfig:
    """The run to forecast, read from the group YAML at ``path``: one run (no members grid), its ``optim.lr`` the
    target LR; ``ConfigError`` naming the field otherwise."""
    from ..core.config import load

    target = load(path)
    if len(target.member_list()) != 1:
        raise ConfigError(f"{path}: members: a target is one run; give its LR as optim.lr (and no members grid)")
    return target


ABSURD_N = 1e13
"""A target with more non-embedding parameters than this (10T, beyond any run trained to date) is probably a typo."""


def size_warnings(target: GroupConfig, spec: dict[str, Any]) -> list[str]:
    """One line each when a forecast would not be an extrapolation the ladder can make: a target no larger than
    the ladder's largest size (run it directly, or use a smaller scale), or one of absurd size."""
    n = float(count_params(target.model, vocab_size(target)))
    largest = max(float(count_params(g.cfg.model, vocab_size(g.cfg))) for g in sweep.expand(spec))
    out = []
    if n <= largest:
        out.append(f"the target (N = {n:.3g}) is no larger than the ladder's largest size (N = {largest:.3g}): "
                   "the forecast interpolates; training the target itself costs no more than the ladder")
    if n > ABSURD_N:
        out.append(f"the target's N = {n:.3g} is beyond any model trained to date (> {ABSURD_N:.0e}); check "
                   "model.width and model.depth")
    return out


def lr_grid(lr: float) -> list[float]:
    """The paper's grid (§3) around the target LR, with the target LR and its neighbours ×3 and ÷3 added."""
    points = {round(x, 12) for x in (*LR_GRID, lr, lr * 3, lr / 3)}
    return sorted(x for x in points if 1e-5 <= x <= 10)


def ladder_switches(target: GroupConfig) -> dict[str, Any]:
    """The interventions the ladder trains with that differ from the defaults (the target's: ``ladder_spec``), as
    ``section.field: value``; what a plan or a forecast's header names so a user sees what the proxies run."""
    from ..core.config import ModelConfig, OptimConfig

    model, optim = ModelConfig(), OptimConfig()
    out = {f"model.{f}": getattr(target.model, f) for f in MODEL_INTERVENTIONS
           if getattr(target.model, f) != getattr(model, f)}
    out.update({f"optim.{f}": getattr(target.optim, f) for f in OPTIM_INTERVENTIONS
                if getattr(target.optim, f) != getattr(optim, f)})
    return out


def ladder_spec(target: GroupConfig, scale: str, sizes: list[dict[str, int]] | None = None,
                seeds: int | list[int] | None = None) -> dict[str, Any]:
    """The sweep spec of the proxy ladder: the scale's base settings, the target's interventions, warm-up as the
    same fraction of the run as the target's, one group per size over the LR grid; ``seeds`` (``sweep.parse_seeds``)
    init seeds on the member axis, whose spread then widens every fitted trend's interval."""
    from .reproduce import scales

    if scale not in LADDERS:
        raise ConfigError(f"--scale: {scale!r}; valid: {', '.join(LADDERS)}")
    shared = scales()["scales"][scale]["spec"]
    base = sweep.merge(shared["base"], {})
    steps = base.get("train", {}).get("steps", 100)
    warmup = max(1, round(steps * target.optim.warmup / target.train.steps))
    # the target's own data and tokenizer (its corpus, bin format and vocab): the ladder must see what the run sees;
    # sequence length and batch stay the scale's (the proxies' budget)
    data = {"corpus": target.data.corpus, "bin_dtype": target.data.bin_dtype}
    model = {f: getattr(target.model, f) for f in MODEL_INTERVENTIONS}
    model["vocab"] = target.model.vocab
    if target.model.mup != "none":
        model["mup_base_width"] = 32  # μParam's base: the ladder's smallest width (as the experiments do)
    optim = {f: getattr(target.optim, f) for f in OPTIM_INTERVENTIONS}
    base = sweep.merge(base, {"model": model, "data": data, "optim": {**optim, "warmup": warmup}})
    return {"name": "forecast", "base": base, "sizes": sizes or LADDERS[scale],
            "members": {"lr": lr_grid(target.optim.lr)}, **({"seeds": seeds} if seeds is not None else {})}


# ---- fits ----------------------------------------------------------------------------------------------------------

def pooled_scatter(rows: pl.DataFrame, column: str) -> tuple[float, int] | None:
    """(σ, degrees of freedom) of the power laws of ``column`` against N fitted at every LR of ``rows`` with at least
    three sizes: their residual variances pooled (Σ RSS / Σ df, in log10); None when no LR has a residual."""
    rss = df = 0.0
    for lr in sorted(set(rows[LR].to_list())):
        good = [(x, abs(y)) for x, y in at_lr_points(rows, column, lr)
                if y is not None and math.isfinite(y) and y != 0]
        if len(good) < 3:
            continue
        fit = fit_log([x for x, _ in good], [y for _, y in good], 1)
        if math.isfinite(fit["sigma"]):
            rss, df = rss + fit["sigma"] ** 2 * (fit["n"] - 2), df + fit["n"] - 2
    return (math.sqrt(rss / df), int(df)) if df else None


def instability_lrs(rows: pl.DataFrame, margin: float = MARGIN) -> list[tuple[float, float]]:
    """(N, the LR at which that size turns unstable) for the sizes where some LR is: the first unstable LR above the
    size's best, interpolated in log LR against the last stable one below it to where the capped loss crosses
    best + ``margin`` (the grid's 3× steps would otherwise quantise the trend in N to the grid; paper §3's capped
    loss, min(ℓ, ℓ0), so a diverged run counts as ℓ0)."""
    out = []
    seeds = replicate_columns(rows)  # one point per size and seed: the fit's scatter then holds the seed noise
    for _size, part in rows.sort(LR).group_by([SIZE, *seeds], maintain_order=True):
        lrs, bad = part[LR].to_list(), part["unstable"].to_list()
        gaps = [capped(loss if loss is not None else math.nan, l0) for loss, l0 in zip(part[FINAL_LOSS],
                                                                                      part[L0])]
        best = min(range(len(lrs)), key=lambda i: gaps[i])
        gaps = [g - gaps[best] for g in gaps]
        first = next((i for i in range(best + 1, len(lrs)) if bad[i]), None)
        if first is None:
            continue
        lo, hi = first - 1, first  # lo ≥ best: stable, its gap ≤ margin
        frac = (margin - gaps[lo]) / (gaps[hi] - gaps[lo]) if gaps[hi] > gaps[lo] else 1.0
        frac = min(1.0, max(0.0, frac))  # a run flagged diverged with a loss under the margin: its own LR
        log_lr = math.log(lrs[lo]) + frac * (math.log(lrs[hi]) - math.log(lrs[lo]))
        out.append((float(part[N_PARAMS][0]), math.exp(log_lr)))
    return sorted(out)


def sensitivities(rows: pl.DataFrame) -> list[tuple[float, float]]:
    """(N, LR sensitivity) per size and seed, as ``analysis.sensitivity_frame`` computes it (paper §3): with seeds
    the trend is fitted through every seed's point, so its interval holds the seed noise."""
    frame = sensitivity_frame(rows, [SIZE])
    return sorted(zip(frame[N_PARAMS].cast(pl.Float64).to_list(), frame["lr_sensitivity"].to_list()))


def at_lr_points(rows: pl.DataFrame, column: str, lr: float) -> list[tuple[float, float]]:
    part = table.at_lr(rows, lr).sort(N_PARAMS)
    return [(float(n), v) for n, v in zip(part[N_PARAMS], part[column])]


# ---- the forecast ----------------------------------------------------------------------------------------------------

def forecast(rows: pl.DataFrame, n_target: float, lr: float, eps: float, z_loss: float, weight_decay: float,
             qk_layernorm: str, mitigations: dict[str, Any] | None = None,
             clock: dict[str, Any] | None = None,
             curves: dict[tuple[str, int], pl.DataFrame] | None = None, band: str | None = None) -> dict[str, Any]:
    """Forecast the run of size ``n_target`` at LR ``lr`` from the ladder ``rows`` (results table with ``unstable``);
    ``mitigations`` (``mitigations_of``): the post-paper ones the target (and so the ladder) uses; ``clock``
    (``drift_clock``): the target's integrated LR and logit precision, at which the drift law is read; ``curves``
    (``table.curves``): the ladder's per-step metrics, along which the drift law runs (``drift_forecast``)."""
    mitigations = mitigations or {}
    pooled = (band or extrapolation.BAND) in extrapolation.POOLED_BANDS  # the scatter over every LR: only the pooled band reads it
    trends = {c: extrapolation.trend(at_lr_points(rows, c, lr), n_target, band, pooled_scatter(rows, c) if pooled else None,
                                     quantity=c)
              for c in ("attn_logit_max/0", "output_logit_mean", "log_z_mean", "grad_rms/layers.0.w1")}
    div = extrapolation.trend(instability_lrs(rows), n_target, band, quantity="instability_lr")
    regime = extrapolation.regime_change(rows)
    if regime and div["ok"]:  # a power law across sizes that do and do not turn unstable: no point forecast
        div = {"ok": False, "why": regime["text"], "points": div["points"]}
    elif not div["ok"] and len(div["points"]) < 3:  # say which sizes never turned unstable, and what would help
        calm = extrapolation.calm_sizes(rows)  # by N
        if calm:
            its, lie = ("its", "LR lies") if len(calm) == 1 else ("their", "LRs lie")
            div["why"] += (f"; {', '.join(calm)} stayed stable at every LR above {its} best, so {its} instability "
                           f"{lie} above {max(rows[LR].to_list()):g}: add higher LRs to see it")
    sens = extrapolation.trend(sensitivities(rows), n_target, band, quantity="lr_sensitivity")
    logit_thr = threshold(rows, "attn_logit_max/0")
    logit_thr_src = "calibrated on the ladder" if logit_thr else "the paper's (the ladder's runs do not separate)"
    logit_thr = logit_thr or PAPER_LOGIT_THRESHOLD
    logz_thr = threshold(rows, "log_z_mean", absolute=True)
    law = drift_forecast(rows, clock, mitigations, curves, lr)
    warnings = extrapolation.grid_edges(rows) + ([regime] if regime else [])
    bends = {c: extrapolation.bend(at_lr_points(rows, c, lr), n_target) for c in trends}
    bends["instability_lr"] = extrapolation.bend(instability_lrs(rows), n_target) if div["ok"] else None
    bends["lr_sensitivity"] = extrapolation.bend(sensitivities(rows), n_target)
    where = {c: f" at LR {lr:g}" for c in trends}
    warnings += [w for c, b in bends.items() if (w := extrapolation.bend_warning(c, b, where.get(c, "")))]
    verdicts = [
        _attention_verdict(trends["attn_logit_max/0"], logit_thr, logit_thr_src, lr, rows, n_target, qk_layernorm,
                           mitigation_evidence(rows, lr, mitigations), band),
        _output_verdict(trends["log_z_mean"], trends["output_logit_mean"], logz_thr, z_loss, weight_decay, law),
        _eps_verdict(trends["grad_rms/layers.0.w1"], eps, mitigations.get("optimizer", "adamw")),
        _divergence_verdict(div, lr),
    ]
    for v in verdicts:  # each warning is a line in the verdict it concerns, and a field of forecast.json
        lines = [w["text"] for w in warnings if WARNING_CAUSE.get(w.get("quantity", w["kind"])) == v["cause"]]
        if lines:
            v["detail"] += "".join(f"\nwarning: {line}" for line in lines)
    return {"n_target": n_target, "lr": lr, "trends": trends, "divergence_lr": div, "lr_sensitivity": sens,
            "logit_threshold": logit_thr, "logit_threshold_source": logit_thr_src, "log_z_threshold": logz_thr,
            "drift": law, "verdicts": verdicts, "warnings": warnings, "band": band_record(band)}


def band_record(band: str | None = None) -> dict[str, Any]:
    """How the forecast's 80% bands were built (``forecast.json``'s ``band``): the band's name and, for the conformal
    band, the factors it scaled each quantity's ``forms`` band by."""
    name = band or extrapolation.BAND
    return {"name": name, **({"base": extrapolation.CONFORMAL_BASE, "conformal": dict(extrapolation.CONFORMAL)}
                             if name == "conformal" else {})}


def band_text(band: dict[str, Any]) -> str:
    """One sentence on how the 80% bands were built (``band_record``), for the CLI and the report."""
    from ..outputs.links import page

    if band.get("conformal"):
        factors = ", ".join(f"{extrapolation.QUANTITIES.get(q, q)} ×{f:.2f}" for q, f in band["conformal"].items())
        return (f"80% bands: the `{band['base']}` band rescaled by split-conformal factors ({factors}), "
                f"calibrated on validation ladders ({page('forecast')}).")
    return f"80% bands: the `{band.get('name', extrapolation.BAND)}` band ({page('forecast')})."


WARNING_CAUSE = {"attn_logit_max/0": ATTENTION_LOGIT_GROWTH, "log_z_mean": OUTPUT_LOGIT_DIVERGENCE,
                 "output_logit_mean": OUTPUT_LOGIT_DIVERGENCE, "grad_rms/layers.0.w1": UPDATE_COLLAPSE,
                 "instability_lr": DIVERGENCE_AT_LR, "lr_sensitivity": DIVERGENCE_AT_LR,
                 "grid_edge": DIVERGENCE_AT_LR, "regime_change": DIVERGENCE_AT_LR}
"""Which verdict a warning (``extrapolation``) is a line of: a bend by its quantity, the grid's edge and a regime
change by the instability LR they undermine."""


def _fmt(t: dict[str, Any], sign: float = 1.0) -> str:
    """A forecast with its band; ``sign`` -1 for a trend fitted on |value| of a negative quantity."""
    low, high = sorted((sign * t["low"], sign * t["high"]))
    return f"{sign * t['value']:.3g} (80% interval {low:.3g}–{high:.3g})"


def _verdict(cause: str, t: dict[str, Any], level: str, threshold: float | None, detail: str) -> dict[str, Any]:
    return {"cause": cause, "verdict": level, "value": t["value"], "low": t["low"], "high": t["high"],
            "threshold": threshold, "detail": detail}


def _cannot(cause: str, t: dict[str, Any]) -> dict[str, Any]:
    """A verdict that cannot be made says why, and carries no number."""
    return {"cause": cause, "verdict": "cannot forecast", "detail": t["why"]}


def _level(value: float, low: float, high: float, limit: float, above: bool) -> str:
    """likely / possible / unlikely that ``value`` passes ``limit`` (above it, or below it)."""
    if above:
        return "likely" if value > limit else "possible" if high > limit else "unlikely"
    return "likely" if value < limit else "possible" if low < limit else "unlikely"


def _attention_verdict(t: dict[str, Any], thr: float, src: str, lr: float, rows: pl.DataFrame, n: float,
                       qk: str, evidence: list[str] | None = None, band: str | None = None) -> dict[str, Any]:
    cause = ATTENTION_LOGIT_GROWTH
    if not t["ok"]:
        return _cannot(cause, t)
    pooled = pooled_scatter(rows, "attn_logit_max/0") if (band or extrapolation.BAND) in extrapolation.POOLED_BANDS else None
    notes = "".join(f"; {e}" for e in evidence or [])
    level = _level(t["value"], t["low"], t["high"], thr, above=True)
    safe = [x for x in sorted(set(rows[LR].to_list()))
            if (tt := extrapolation.trend(at_lr_points(rows, "attn_logit_max/0", x), n, band, pooled,
                                                   quantity="attn_logit_max/0"))["ok"] and tt["high"] < thr]
    advice = []
    if level != "unlikely":
        if qk == "off":
            advice.append("qk-layernorm")
        if safe:
            advice.append(f"LR ≤ {max(safe):g}")
    return _verdict(cause, t, level, thr, f"layer-0 max attention logit at LR {lr:g}: {_fmt(t)}, threshold "
                    f"{thr:.3g} ({src})" + notes + (f"; suggested: {' or '.join(advice)}" if advice else ""))


def drift_clock(target: GroupConfig) -> dict[str, Any]:
    """The target's integrated LR at its last step (``drift.schedule_integral``) and the precision its logits are
    in (``auto``: bf16, what a large run uses), the two things the drift law is read at."""
    o, t = target.optim, target.train
    precision = t.precision if t.precision != "auto" else "bf16"
    return {"integral": drift.schedule_integral(o.lr, o.warmup, t.steps, o.min_lr), "precision": precision,
            "precision_assumed": t.precision == "auto"}


def stable_curves(rows: pl.DataFrame, curves: dict[tuple[str, int], pl.DataFrame], lr: float) -> list[pl.DataFrame]:
    """The per-step metrics of the ladder runs at LR ``lr`` that did not diverge: what the drift law runs along."""
    at = table.at_lr(rows, lr)
    return [curves[(g, m)] for g, m, bad in zip(at["group"], at["member"], at[table.DIVERGED])
            if (g, m) in curves and not bad]


def drift_forecast(rows: pl.DataFrame, clock: dict[str, Any] | None, mitigations: dict[str, Any] | None = None,
                   curves: dict[tuple[str, int], pl.DataFrame] | None = None, lr: float | None = None) -> dict[str, Any]:
    """The drift law (``drift``) read at the target's integrated LR: ‖μ‖ and |mean output logit| with their 80%
    intervals, how far that extrapolates, and the |logit| at which the target's precision costs the loss
    (``drift.DAMAGE_AT``). With the ladder's per-step ``curves``, the law runs along the trajectories of the stable
    runs at the target LR (every size: the way a longer run at that LR extends them); without them, or where those
    give no law, across every stable ladder run (the LR grid spreads I over three decades; measured to grow more
    slowly than along a run, docs/beyond.md). ``{"ok": False, "why"}`` without a clock or a law."""
    if clock is None:
        return {"ok": False, "why": "no target clock (its steps, LR and schedule) to read the drift law at"}
    laws, basis = {}, "across the ladder's stable runs"
    if curves is not None and lr is not None:
        frames = stable_curves(rows, curves, lr)
        laws = {c: drift.law(drift.trajectory_points(frames, c)) for c in drift.LAW_COLUMNS}
        basis = f"along the {len(frames)} stable ladder runs at LR {lr:g}"
    if not laws.get("output_logit_mean", {}).get("ok"):
        laws, basis = {c: drift.law(drift.points(rows, c)) for c in drift.LAW_COLUMNS}, "across the ladder's stable runs"
    mean = laws["output_logit_mean"]
    if not mean["ok"]:
        return {"ok": False, "why": f"mean output logit: {mean['why']}"}
    out = {"ok": True, **clock, "basis": basis,
           "damage_at": drift.damage_at(clock["precision"]),
           "mu_centering": bool((mitigations or {}).get("mu_centering"))}
    for column, fitted in laws.items():
        if fitted["ok"]:
            out[column] = {"exponent": fitted["exponent"], "coefficient": fitted["coefficient"],
                           "points": fitted["fit"]["n"], **drift.project(fitted, clock["integral"])}
    return out


def _output_verdict(logz: dict[str, Any], mean: dict[str, Any], thr: float | None, z_loss: float,
                    weight_decay: float, law: dict[str, Any] | None = None) -> dict[str, Any]:
    """From the drift law when the ladder gives one (``drift_forecast``): the target's |mean output logit| at its
    integrated LR against the |logit| where its precision costs the loss; else from log Z's trend in N."""
    cause = OUTPUT_LOGIT_DIVERGENCE
    if law is not None and law.get("ok") and "output_logit_mean" in law:
        return _drift_verdict(law, z_loss, weight_decay)
    if not logz["ok"]:
        return _cannot(cause, logz)
    drift_text = f"|log Z| {_fmt(logz)}" + (f", mean output logit {_fmt(mean, mean['sign'])}" if mean["ok"] else "")
    if thr is not None:
        level = _level(logz["value"], logz["low"], logz["high"], thr, above=True)
        detail = f"{drift_text}; threshold |log Z| {thr:.3g} (calibrated on the ladder)"
    else:  # nothing on the ladder went unstable through log Z: judge by the drift and the mitigations in place
        growing = logz["slope"] > 0
        level = "possible" if growing and z_loss == 0 and weight_decay == 0 else "unlikely"
        detail = (f"{drift_text}; {'grows' if growing else 'does not grow'} with N; no ladder run separates a "
                  f"threshold; z-loss {z_loss:g}, weight decay {weight_decay:g}")
    if level != "unlikely" and z_loss == 0:
        detail += "; suggested: z-loss 1e-4"
    return _verdict(cause, logz, level, thr, detail)


def _drift_verdict(law: dict[str, Any], z_loss: float, weight_decay: float) -> dict[str, Any]:
    cause = OUTPUT_LOGIT_DIVERGENCE
    m, limit = law["output_logit_mean"], law["damage_at"]
    precision = law["precision"] + (" (assumed: train.precision is auto)" if law.get("precision_assumed") else "")
    far = (f"{m['extrapolation']:.3g}x beyond the ladder's largest" if m["extrapolation"] > 1
           else "inside the ladder's range")
    detail = (f"|mean output logit| at the target's integrated LR {law['integral']:.4g} ({far}): {m['value']:.3g} "
              f"(80% interval {m['low']:.3g}–{m['high']:.3g}; law c·I^b, b = {m['exponent']:.2f}, {law['basis']})")
    if "mu_norm" in law:
        mu = law["mu_norm"]
        detail += f"; ‖μ‖ {mu['value']:.3g} ({mu['low']:.3g}–{mu['high']:.3g}, b = {mu['exponent']:.2f})"
    detail += (f"; {precision} logits cost ≥ {drift.DAMAGE_NATS:g} nats from |logit| {limit:g} "
               "(drift.DAMAGE_AT, measured)")
    if law.get("mu_centering"):
        level = "unlikely"
        detail += "; μ-centering keeps μ at 0 (the ladder trained with it)"
    else:
        level = _level(m["value"], m["low"], m["high"], limit, above=True)
    if level != "unlikely":
        fixes = ["μ-centering (optim.mu_centering)"] + (["z-loss 1e-4"] if z_loss == 0 else []) + (
            ["weight decay"] if weight_decay == 0 else []) + (["fp32 logits"] if law["precision"] != "fp32" else [])
        detail += f"; suggested: {' or '.join(fixes)}"
    return _verdict(cause, m, level, limit, detail)


def _eps_verdict(t: dict[str, Any], eps: float, optimizer: str = "adamw") -> dict[str, Any]:
    cause = UPDATE_COLLAPSE
    if optimizer != "adamw":  # the watched tensor (the first MLP layer) has no ε under either
        why = ("Adam-atan2 has no ε" if optimizer == "adam_atan2" else
               "Muon steps the first MLP layer (every hidden matrix) by its orthogonalised momentum, with no ε")
        return {"cause": cause, "verdict": "unlikely", "value": t.get("value"), "low": t.get("low"),
                "high": t.get("high"), "threshold": None, "detail": f"{why}: the update cannot collapse against it"}
    if not t["ok"]:
        return _cannot(cause, t)
    limit = EPS_FACTOR * eps  # instability.collapses: below this the update shrinks
    level = _level(t["value"], t["low"], t["high"], limit, above=False)
    detail = f"first MLP layer's gradient RMS {_fmt(t)} against {EPS_FACTOR:g}·ε = {limit:.3g}"
    if level != "unlikely":
        detail += f"; suggested: ε ≤ {t['low'] / 100:.1g}"
    return _verdict(cause, t, level, limit, detail)


def _divergence_verdict(t: dict[str, Any], lr: float) -> dict[str, Any]:
    cause = DIVERGENCE_AT_LR
    if not t["ok"]:
        return _cannot(cause, t)
    level = "likely" if lr >= t["value"] else "possible" if lr >= t["low"] else "unlikely"
    return _verdict(cause, t, level, lr, f"LR where the loss turns unstable {_fmt(t)} against the target LR {lr:g}")


# ---- backtest ----------------------------------------------------------------------------------------------------------

def backtest(rows: pl.DataFrame, eps: float, z_loss: float, weight_decay: float, qk: str,
             mitigations: dict[str, Any] | None = None, band: str | None = None) -> dict[str, Any]:
    """Hold out the largest size, forecast it from the others at every LR, compare with what it did: with seeds,
    one forecast per LR (fitted through every seed of the smaller sizes) scored against each seed of the held-out
    size, so the score counts the seed noise too."""
    sizes = rows.select(N_PARAMS).unique().sort(N_PARAMS)[N_PARAMS].to_list()
    if len(sizes) < 4:
        return {"ok": False, "why": f"{len(sizes)} sizes: a backtest needs 3 to fit and 1 to hold out"}
    held = sizes[-1]
    fit_rows = unstable(rows.filter(pl.col(N_PARAMS) < held))
    truth = unstable(rows).filter(pl.col(N_PARAMS) == held)
    out, cases = [], []
    for lr in sorted(set(truth[LR].to_list())):
        f = forecast(fit_rows, held, lr, eps, z_loss, weight_decay, qk, mitigations, band=band)
        by_cause = verdicts_by_cause(f["verdicts"])
        att, div = by_cause[ATTENTION_LOGIT_GROWTH], by_cause[DIVERGENCE_AT_LR]
        called = [v["verdict"] for v in (att, div) if v["verdict"] != "cannot forecast"]
        logit = f["trends"]["attn_logit_max/0"]
        measured = table.at_lr(truth, lr)
        for seed, m in zip(seed_keys(measured), measured.iter_rows(named=True)):  # each seed of the held-out size
            m_logit = m["attn_logit_max/0"]
            cases += [extrapolation.case(c, f["trends"][c], m.get(c), lr=lr, seed=list(seed))
                      for c in f["trends"] if not m[table.DIVERGED]]
            out.append({"lr": lr, **({"seed": list(seed)} if seed else {}), "predicted_logit": logit.get("value"),
                        "measured_logit": m_logit,
                        "ratio": (logit["value"] / m_logit) if logit["ok"] and m_logit else None,
                        "predicted_unstable": ("likely" in called) if called else None,
                        "unstable": bool(m["unstable"]), "verdicts": {v["cause"]: v["verdict"] for v in f["verdicts"]}})
    cases += _once_per_size_cases(f, truth)
    calls = [r for r in out if r["predicted_unstable"] is not None]
    tp = sum(r["predicted_unstable"] and r["unstable"] for r in calls)
    fp = sum(r["predicted_unstable"] and not r["unstable"] for r in calls)
    fn = sum((not r["predicted_unstable"]) and r["unstable"] for r in calls)
    ratios = [r["ratio"] for r in out if r["ratio"]]
    law = {c: drift.backtest(rows, c) for c in drift.LAW_COLUMNS}  # the drift law, held out in integrated LR
    cases = [c for c in cases if c is not None]
    return {"ok": True, "held_out_n": held, "fit_n": sizes[:-1], "rows": out, "drift": law, "cases": cases,
            "coverage": extrapolation.coverage(cases), "warnings": f["warnings"],
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "verdicts_right": sum(r["predicted_unstable"] == r["unstable"] for r in calls), "verdicts": len(calls),
            "logit_within_2x": sum(1 / 2 <= r <= 2 for r in ratios), "logits": len(ratios)}


def _once_per_size_cases(f: dict[str, Any], truth: pl.DataFrame) -> list[dict[str, Any] | None]:
    """The backtest's cases for the quantities with one value per size and seed: the instability LR and the LR
    sensitivity of each held-out seed against their bands (``f``: a forecast of the held-out size). A held-out seed
    that never turns unstable has its instability LR above the grid: outside a band that ends below the grid's
    largest LR, and not scored otherwise (censored: the band may hold it)."""
    cases: list[dict[str, Any] | None] = []
    div, top = f["divergence_lr"], max(truth[LR].to_list())
    found = {}
    for _key, part in truth.group_by(table.replicate_columns(truth) or [SIZE], maintain_order=True):
        lrs = instability_lrs(part)
        found[seed_keys(part)[0]] = lrs[0][1] if lrs else None
    for seed in found:
        measured = found.get(seed)
        if measured is not None:
            cases.append(extrapolation.case("instability_lr", div, measured, seed=list(seed)))
        elif div.get("ok") and div["high"] < top:  # censored above the grid, and the band ends below it
            cases.append({**extrapolation.case("instability_lr", div, div["high"] * 2, seed=list(seed)),
                          "measured": None, "inside": False, "censored_above": top})
    sens = f["lr_sensitivity"]
    frame = sensitivity_frame(truth, [SIZE])
    for seed, value in zip(seed_keys(frame), frame["lr_sensitivity"].to_list()):
        cases.append(extrapolation.case("lr_sensitivity", sens, value, seed=list(seed)))
    return cases


# ---- the command -------------------------------------------------------------------------------------------------------

def run(target_path: str, scale: str, out: Path, do_backtest: bool = False, progress: Any = None,
        executor: dict[str, Any] | None = None, log_to: str | None = None,
        seeds: int | list[int] | None = None) -> ForecastRecord:
    """Train (or reuse) the ladder, forecast the target, write ``out/forecast/`` (forecast.json, verdicts.json for
    the report, figures) and return the forecast's record; with ``do_backtest`` also score the forecast on the
    held-out largest size."""
    from ..outputs import plots

    target = load_target(target_path)
    spec = ladder_spec(target, scale, seeds=seeds)
    for warning in size_warnings(target, spec):
        print(f"warning: forecast: {warning}", file=sys.stderr, flush=True)
    spec = sweep.with_log_to(spec, log_to)  # stream the ladder's groups to TensorBoard / W&B too
    results = sweep.run_sweep(spec, out / "ladder", progress=progress, pool=out / "groups", executor=executor)
    rows = unstable(results)
    n_target = float(count_params(target.model, vocab_size(target)))
    o, m = target.optim, target.model
    curves = table.curves(table.at_lr(rows, o.lr), out / "groups")  # the trajectories the drift law runs along
    record = forecast(rows, n_target, o.lr, o.eps, o.z_loss, o.weight_decay, m.qk_layernorm, mitigations_of(target),
                      drift_clock(target), curves)
    record["target"] = {"path": target_path, "width": m.width, "depth": m.depth, "heads": m.heads, "n": n_target,
                        "lr": o.lr, "steps": target.train.steps, "qk_layernorm": m.qk_layernorm, "z_loss": o.z_loss,
                        "weight_decay": o.weight_decay, "eps": o.eps,
                        **{k: v for k, v in mitigations_of(target).items() if v not in (None, "adamw")}}
    record["ladder"] = {"scale": scale, "sizes": rows[SIZE].unique(maintain_order=True).to_list(),
                        "lrs": lr_grid(o.lr), "groups": results["group"].n_unique(), "seeds": count(rows)}
    if do_backtest:
        record["backtest"] = backtest(results, o.eps, o.z_loss, o.weight_decay, m.qk_layernorm, mitigations_of(target))
        stable = stable_curves(rows, curves, o.lr)  # the drift law along the runs, each one's second half held out
        record["backtest"]["drift_along_runs"] = {c: drift.trajectory_backtest(stable, c) for c in drift.LAW_COLUMNS}
    folder = out / "forecast"
    folder.mkdir(parents=True, exist_ok=True)
    figures = plots.forecast_trends(rows, record, folder / "figures" / "trends")  # the fits: in memory only
    if do_backtest and record["backtest"].get("cases"):
        figures += plots.calibration(record["backtest"]["cases"], folder / "figures" / "calibration")
    result = ForecastRecord(**record)
    result.write(folder / "forecast.json")
    ExperimentRecord(
        name="forecast", title=f"Forecast: d{m.width}-L{m.depth} ({n_target / 1e6:.3g}M) at LR {o.lr:g}",
        paper="Forecast from a proxy ladder (paper §3.5, Fig 9; §3.4, Fig 11). " + band_text(result.band), scale=scale,
        command=f"proxyscale forecast {target_path} --scale {scale}", seconds=0.0,
        figures=[str(p.relative_to(folder)) for p in figures],
        verdicts=[Verdict(v["cause"], v["verdict"], v["detail"]) for v in result.verdicts]
    ).write(folder / "verdicts.json")
    return result
