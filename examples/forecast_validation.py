"""Score the forecast's backtest on validation ladders it was not built on: docs/forecasting.md's coverage and validation
tables.

    python examples/forecast_validation.py [--out runs/forecast_validation] [--scale micro,laptop] [--only seed1,qk]
                                           [--workers 1] [--cases cases.parquet]

Each variant is a target (``examples/target.yaml`` or ``target_drift.yaml``) with some fields changed and the
ladder's training seed; its ladder (4 sizes x 8-9 LRs) is trained into a shared pool (finished groups are reused),
the largest size is held out, and the forecast from the other three is scored against it (``forecast.backtest``):
the verdicts, and every forecast quantity's 80% band against the held-out value (``extrapolation.coverage``).
The tuning ladders (``TUNING``) are the ones the forecast's rules and bands were chosen on; the coverage table
reports the others apart, so a change of the band is judged on ladders it was not tuned on.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import polars as pl
import yaml

from proxyscale.science import extrapolation
from proxyscale.jobs import forecast
from proxyscale.runs import sweep
from proxyscale.core.config import GroupConfig

EXAMPLES = Path(__file__).parent
VARIANTS: dict[str, tuple[str, str, dict, int, str]] = {
    # name: (what docs/forecasting.md calls it, target file, fields changed in it, the ladder's train.seed, scale)
    "target": ("the target (the rule was built on this one)", "target.yaml", {}, 0, "micro"),
    "seed1": ("seed 1", "target.yaml", {}, 1, "micro"),
    "seed2": ("seed 2", "target.yaml", {}, 2, "micro"),
    "no_zloss_no_wd": ("z-loss 0, weight decay 0", "target.yaml", {"optim": {"z_loss": 0.0, "weight_decay": 0.0}},
                       0, "micro"),
    "coupled": ("coupled weight decay 0.1", "target.yaml",
                {"optim": {"weight_decay": 0.1, "independent_weight_decay": False}}, 0, "micro"),
    "qk": ("qk-layernorm", "target.yaml", {"model": {"qk_layernorm": "head"}}, 0, "micro"),
    "qk_seed1": ("qk-layernorm, seed 1", "target.yaml", {"model": {"qk_layernorm": "head"}}, 1, "micro"),
    "qk_lr3e-2": ("qk-layernorm, target LR 3e-2", "target.yaml",
                  {"model": {"qk_layernorm": "head"}, "optim": {"lr": 0.03}}, 0, "micro"),
    "drift": ("target_drift (qk-layernorm, LR 0.1, bf16, no z-loss or decay)", "target_drift.yaml", {}, 0, "micro"),
    "qkclip": ("QK-clip τ = 100", "target.yaml", {"optim": {"qk_clip": 100.0}}, 0, "micro"),
    "softcap": ("attention soft-cap 50", "target.yaml", {"model": {"attn_softcap": 50.0}}, 0, "micro"),
    "laptop_drift": ("target_drift, laptop ladder", "target_drift.yaml", {}, 0, "laptop"),
    "seed3": ("seed 3", "target.yaml", {}, 3, "micro"),
    "qk_seed2": ("qk-layernorm, seed 2", "target.yaml", {"model": {"qk_layernorm": "head"}}, 2, "micro"),
    "muon": ("Muon", "target.yaml", {"optim": {"optimizer": "muon"}}, 0, "micro"),
    # trained after the conformal factors were computed (extrapolation.CONFORMAL): never in their calibration set
    "seed4": ("seed 4", "target.yaml", {}, 4, "micro"),
    "qk_seed3": ("qk-layernorm, seed 3", "target.yaml", {"model": {"qk_layernorm": "head"}}, 3, "micro"),
    "no_zloss_no_wd_seed1": ("z-loss 0, weight decay 0, seed 1", "target.yaml",
                             {"optim": {"z_loss": 0.0, "weight_decay": 0.0}}, 1, "micro"),
    "softcap_seed1": ("attention soft-cap 50, seed 1", "target.yaml", {"model": {"attn_softcap": 50.0}}, 1, "micro"),
}
TUNING = ("target", "seed1", "seed2", "no_zloss_no_wd", "coupled", "qk", "drift", "laptop_drift",
          "qk_seed1", "qk_lr3e-2", "qkclip", "softcap")
"""The ladders whose coverage was looked at while the forecast's band (``extrapolation.BAND``) was chosen: the first eight
chose ``forms`` over ``fit``, ``loso`` and ``pooled``; the next four were scored after that choice (83% inside, docs/forecasting.md)
and then looked at too (a guard against a line below zero at a ladder size; an Akaike-weighted gap, tried and
dropped; then ``pooled_forms``, which did not replace ``forms``). The rest (``seed3``, ``qk_seed2``, ``muon``) were trained after every choice: their coverage says how the
band does on ladders it was not tuned on."""
CALIBRATION = ("target", "seed1", "seed2", "no_zloss_no_wd", "coupled", "qk", "qk_seed1", "qk_lr3e-2", "drift", "qkclip",
               "softcap", "laptop_drift", "seed3", "qk_seed2", "muon")
"""The ladders the split-conformal factors (``extrapolation.CONFORMAL``) are computed on: every ladder trained before
them. On these the ``conformal`` band is scored leave-one-ladder-out (each ladder with factors from the other
fourteen); the ladders after them (``seed4`` ...) were trained after the factors were stored, and are scored with
the stored factors: the band's coverage on ladders it has never seen."""


def variant(name: str, folder: Path) -> tuple[dict, GroupConfig]:
    """The variant's ladder sweep spec and the target it stands for (written to ``folder/<name>.yaml``)."""
    _, file, changes, seed, scale = VARIANTS[name]
    raw = yaml.safe_load((EXAMPLES / file).read_text())
    for section, fields in changes.items():
        raw[section] = {**copy.deepcopy(raw.get(section, {})), **fields}
    path = folder / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    target = forecast.load_target(str(path))
    return sweep.merge(forecast.ladder_spec(target, scale), {"base": {"train": {"seed": seed}}}), target


def score(name: str, out: Path, workers: int | None, band: str | None = None) -> dict:
    """Train (or reuse) the variant's ladder and backtest the forecast on its largest size, its bands built as
    ``band`` says (``extrapolation.BANDS``; default the forecast's)."""
    spec, target = variant(name, out / "targets")
    results = sweep.run_sweep(spec, out / "ladders" / name, pool=out / "groups", workers=workers)
    o = target.optim
    return forecast.backtest(results, o.eps, o.z_loss, o.weight_decay, target.model.qk_layernorm,
                             forecast.mitigations_of(target), band=band)


def _pct(c: dict) -> str:
    return "–" if not c["cases"] else f"{c['inside']}/{c['cases']} ({c['fraction']:.0%})"


def _label(q: str) -> str:
    return extrapolation.QUANTITIES[q].replace("|", "\\|")  # a markdown table cell


def _conformal_cases(cases: dict[str, dict[str, list[dict]]], name: str) -> list[dict]:
    """The ``conformal`` band's cases of ladder ``name``: on a calibration ladder its ``forms`` cases rescaled by the
    factors of the other calibration ladders (leave one ladder out: never scored with factors it helped compute);
    on a later ladder the forecast's own (the stored factors)."""
    if name not in CALIBRATION:
        return cases[name]["conformal"]
    rest = [c for other in CALIBRATION if other != name and other in cases for c in cases[other]["forms"]]
    factors = extrapolation.conformal_factors(rest)
    return [{**extrapolation.rescaled(c, factors.get(c["quantity"])), "band": "conformal"} for c in cases[name]["forms"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/forecast_validation", type=Path)
    parser.add_argument("--scale", default="micro,laptop", help="comma-separated scales whose ladders to score")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--workers", type=int, default=None, help="parallel groups (default: the sweep's)")
    parser.add_argument("--cases", type=Path, default=None, help="write every scored case to this parquet file")
    args = parser.parse_args()
    scales = [s for s in args.scale.split(",") if s]
    names = [n for n in args.only.split(",") if n] or [n for n, v in VARIANTS.items() if v[4] in scales]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--only: unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    scored: dict[str, dict[str, dict]] = {}
    cases: dict[str, dict[str, list[dict]]] = {}
    for name in names:
        scored[name] = {band: score(name, args.out, args.workers, band) for band in extrapolation.BANDS}
        cases[name] = {band: [{**c, "band": band, "ladder": name, "ladder_scale": VARIANTS[name][4],
                               "tuning": name in TUNING, "calibration": name in CALIBRATION,
                               "seed": str(c.get("seed")), "lr": c.get("lr")} for c in b.get("cases", [])]
                       for band, b in scored[name].items()}
    for name in names:
        cases[name]["conformal"] = _conformal_cases(cases, name)
    print(f"bands built as {extrapolation.BAND!r} (extrapolation.BAND); on the calibration ladders the conformal "
          f"band is scored leave-one-ladder-out\n")
    print("| ladder (largest size held out) | scale | verdicts right | precision / recall | logit within 2× "
          "| inside the 80% band | warnings |")
    print("|---|---|---|---|---|---|---|")
    right = total = 0
    for name in names:
        bt = scored[name][extrapolation.BAND]
        if not bt["ok"]:
            print(f"| {VARIANTS[name][0]} | {VARIANTS[name][4]} | cannot backtest: {bt['why']} |||||")
            continue
        pr = " / ".join("–" if x is None else f"{x:.2f}" for x in (bt["precision"], bt["recall"]))
        kinds = sorted({w["kind"] for w in bt["warnings"]})
        inside = extrapolation.coverage(cases[name][extrapolation.BAND])["overall"]
        print(f"| {VARIANTS[name][0]} | {VARIANTS[name][4]} | {bt['verdicts_right']}/{bt['verdicts']} | {pr} | "
              f"{bt['logit_within_2x']}/{bt['logits']} | {_pct(inside)} | {', '.join(kinds) or '–'} |")
        right, total = right + bt["verdicts_right"], total + bt["verdicts"]
    every = {band: [c for name in names for c in cases[name][band]] for band in extrapolation.BANDS}
    print(f"\n{right} of {total} verdicts right over {len(names)} ladders; {len(every[extrapolation.BAND])} "
          f"held-out cases\n")
    calib = [c for c in every[extrapolation.CONFORMAL_BASE] if c["calibration"]]
    factors = extrapolation.conformal_factors(calib)
    print("conformal factors from the calibration ladders' `forms` cases: " + (", ".join(
        f"{q} {f:.4f} (stored: {extrapolation.CONFORMAL.get(q, float('nan')):.4f})" for q, f in factors.items())
        or "none (too few cases)") + "\n")
    heads = [(band, part) for band in extrapolation.BANDS for part in ("calibration ladders", "later ladders")]
    cov = {(band, part): extrapolation.coverage([c for c in every[band]
                                                  if c["calibration"] == (part == "calibration ladders")])
           for band, part in heads}
    print("| quantity | " + " | ".join(f"band `{b}`: {p}" for b, p in heads) + " |")
    print("|---|" + "---|" * len(heads))
    for q in extrapolation.QUANTITIES:
        print(f"| {_label(q)} | " + " | ".join(_pct(cov[h]["per_quantity"].get(q, {"cases": 0})) for h in heads)
              + " |")
    print("| **overall** | " + " | ".join(_pct(cov[h]["overall"]) for h in heads) + " |")
    for band in extrapolation.BANDS:
        print(f"\ncalibration, band `{band}` (nominal → observed, all ladders): " + ", ".join(
            f"{lvl:.0%} → {obs:.0%}" for lvl, obs, _ in extrapolation.calibration(every[band])))
    if args.cases:
        args.cases.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame([{k: v for k, v in c.items() if k != "censored_above"} for band in every for c in every[band]],
                     infer_schema_length=None).write_parquet(args.cases)


if __name__ == "__main__":  # the local executor spawns workers that import this file
    main()
