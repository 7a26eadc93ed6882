"""Where a ladder's trend can be extrapolated (issue 24): coverage arithmetic on synthetic ladders with a known law,
the calibration curve, and each warning (a bend, the grid's edge, a regime change) on a ladder that has it and one
that does not; the forecast record round-trips with them."""

import math

import numpy as np
import polars as pl
import pytest

from proxyscale.science import extrapolation
from proxyscale.jobs import forecast
from proxyscale.core import instability
from proxyscale.core.records import DIVERGENCE_AT_LR, ForecastRecord

SIZES = [1e4, 1e5, 1e6]
HELD = 1e7


def synthetic_cases(ladders: int, scatter: float = 0.1, shrink: float = 1.0, seed: int = 0) -> list[dict]:
    """Power laws 2·N^0.5 with log-normal scatter (``scatter`` decades): fitted on three sizes, scored on the
    fourth; ``shrink`` < 1 narrows every band by that factor in log space (a band that claims too much)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(ladders):
        noise = 10 ** (scatter * rng.standard_normal(len(SIZES) + 1))
        band = extrapolation.trend([(n, 2.0 * n**0.5 * e) for n, e in zip(SIZES, noise)], HELD, band="fit")
        if shrink != 1.0:
            half_lo, half_hi = (math.log10(band["value"] / band["low"]), math.log10(band["high"] / band["value"]))
            band = {**band, "low": band["value"] / 10 ** (shrink * half_lo),
                    "high": band["value"] * 10 ** (shrink * half_hi), "scale": band["scale"] * shrink}
        cases.append(extrapolation.case("attn_logit_max/0", band, 2.0 * HELD**0.5 * noise[-1], lr=1e-2))
    return cases


def test_a_correct_band_covers_about_80_percent_and_meets_the_target():
    cov = extrapolation.coverage(synthetic_cases(2000))
    q = cov["per_quantity"]["attn_logit_max/0"]
    assert q["cases"] == 2000 and 0.77 <= q["fraction"] <= 0.83, q
    assert q["on_target"] is True and cov["overall"] == q


def test_a_too_narrow_band_is_caught():
    cov = extrapolation.coverage(synthetic_cases(2000, shrink=0.4))["overall"]
    assert cov["fraction"] < extrapolation.TARGET_COVERAGE[0] and cov["on_target"] is False, cov


def test_coverage_is_not_judged_below_the_minimum_cases_and_counts_per_quantity():
    cases = synthetic_cases(extrapolation.MIN_CASES - 1)
    band = {"ok": True, "value": 1.0, "low": 0.5, "high": 2.0, "scale": 0.1, "df": 1}
    cases += [extrapolation.case("lr_sensitivity", band, m) for m in (0.6, 3.0, -1.5)]  # |−1.5| is inside
    cases += [extrapolation.case("lr_sensitivity", {"ok": False, "why": "no"}, 1.0),  # no band: not a case
              extrapolation.case("lr_sensitivity", band, float("nan")), extrapolation.case("lr_sensitivity", band, None)]
    cov = extrapolation.coverage(cases)
    assert cov["per_quantity"]["attn_logit_max/0"]["on_target"] is None
    assert cov["per_quantity"]["lr_sensitivity"] == {"inside": 2, "cases": 3, "fraction": 2 / 3, "on_target": None}
    assert cov["overall"]["cases"] == extrapolation.MIN_CASES + 2


def test_calibration_lies_on_the_diagonal_for_a_correct_band_and_below_it_for_a_narrow_one():
    good = extrapolation.calibration(synthetic_cases(2000))
    assert all(abs(observed - nominal) < 0.04 for nominal, observed, _ in good), good
    narrow = extrapolation.calibration(synthetic_cases(2000, shrink=0.4))
    assert all(observed < nominal - 0.05 for nominal, observed, _ in narrow), narrow


def test_a_bending_trend_is_warned_with_both_extrapolations_and_a_straight_one_is_not():
    ns = [1e4, 1e5, 1e6, 1e7, 1e8]
    curved = [(n, 10 ** (1 + 0.8 * (math.log10(n) - 4) - 0.15 * (math.log10(n) - 4) ** 2)) for n in ns]
    b = extrapolation.bend(curved, 1e10)
    assert b["bends"] and b["curve_error"] < extrapolation.BEND_RATIO * b["line_error"]
    assert b["curve_value"] == pytest.approx(10 ** (1 + 0.8 * 6 - 0.15 * 36), rel=1e-6)  # the curve is exact
    assert b["line_value"] > 10 * b["curve_value"]  # the line overshoots a trend that flattens
    w = extrapolation.bend_warning("attn_logit_max/0", b, " at LR 0.01")
    assert w["kind"] == "bends" and "the line gives" in w["text"] and "the curve" in w["text"]
    rng = np.random.default_rng(1)
    straight = [(n, 2.0 * n**0.5 * 10 ** (0.05 * rng.standard_normal())) for n in ns]
    assert not extrapolation.bend(straight, 1e10)["bends"]
    assert extrapolation.bend_warning("attn_logit_max/0", extrapolation.bend(straight, 1e10)) is None
    assert extrapolation.bend(curved[:3], 1e10) is None  # three sizes cannot score a curve


def grid(best: dict[int, float], lrs=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), unstable_from: dict[int, float] | None = None):
    """Three sizes over ``lrs`` whose loss is lowest at ``best[i]`` and worse by 1 nat from ``unstable_from[i]``."""
    rows = []
    for i in range(3):
        for lr in lrs:
            bad = unstable_from is not None and lr >= unstable_from[i]
            rows.append({"label.size": f"s{i}", "n_params": 10 ** (4 + i), "member.lr": lr, "l0": 5.5,
                         "diverged": False,
                         "final_eval_loss": 3.0 + 0.1 * abs(math.log10(lr / best[i])) + (1.0 if bad else 0.0)})
    return instability.unstable(pl.DataFrame(rows))


def test_the_grids_edge_names_the_size_and_the_lrs_to_add():
    assert extrapolation.grid_edges(grid({0: 1e-2, 1: 1e-2, 2: 1e-3})) == []
    top = extrapolation.grid_edges(grid({0: 1e-2, 1: 1.0, 2: 1e-3}))
    assert [(w["size"], w["edge"], w["add"]) for w in top] == [("s1", "last", [10.0, 100.0])]
    assert "s1's best LR is the grid's largest (1)" in top[0]["text"] and "add LR 10.0, 100.0" in top[0]["text"]
    low = extrapolation.grid_edges(grid({0: 1e-4, 1: 1e-2, 2: 1e-3}))
    assert [(w["size"], w["edge"], w["add"]) for w in low] == [("s0", "first", [1e-05, 1e-06])]


def test_a_regime_change_is_named_and_withholds_the_instability_forecast():
    from test_forecast import ladder

    calm_smallest = {1e4: 10.0, 1e5: 0.1, 1e6: 0.01, 1e7: 0.01}  # s0 never turns unstable; the others do
    rows = instability.unstable(ladder(diverge_from=lambda n: calm_smallest[n], noise=0.02))
    assert extrapolation.calm_sizes(rows) == ["s0"]
    f = forecast.forecast(rows, 1e9, 1e-2, 1e-8, 1e-4, 1e-4, "off")
    regime = [w for w in f["warnings"] if w["kind"] == "regime_change"]
    assert len(regime) == 1 and regime[0]["calm"] == ["s0"] and regime[0]["unstable"] == ["s1", "s2", "s3"]
    div = {v["cause"]: v for v in f["verdicts"]}[DIVERGENCE_AT_LR]
    assert div["verdict"] == "cannot forecast" and "value" not in div and "a regime change: s0" in div["detail"]
    assert not f["divergence_lr"]["ok"]
    steady = forecast.forecast(instability.unstable(ladder(noise=0.02)), 1e9, 1e-2, 1e-8, 1e-4, 1e-4, "off")
    assert not [w for w in steady["warnings"] if w["kind"] == "regime_change"] and steady["divergence_lr"]["ok"]


def test_the_backtest_scores_every_quantity_and_the_record_round_trips(tmp_path):
    from test_forecast import ladder

    bt = forecast.backtest(ladder(noise=0.02), 1e-8, 0.0, 0.0, "off")
    assert set(bt["coverage"]["per_quantity"]) == set(extrapolation.QUANTITIES)
    assert bt["coverage"]["per_quantity"]["attn_logit_max/0"]["cases"] == 4  # one per LR of the held-out size
    assert bt["coverage"]["per_quantity"]["instability_lr"]["cases"] == 1
    assert bt["coverage"]["overall"]["cases"] == len(bt["cases"]) == 4 * 4 + 2
    f = forecast.forecast(instability.unstable(ladder(noise=0.02)), 1e9, 1e-2, 1e-8, 1e-4, 1e-4, "off")
    record = ForecastRecord(n_target=f["n_target"], lr=f["lr"], trends={}, verdicts=f["verdicts"],
                            warnings=[{"kind": "grid_edge", "text": "x", "add": [3.0]}], backtest=bt,
                            band=f["band"])
    assert f["band"] == {"name": "conformal", "base": "forms", "conformal": extrapolation.CONFORMAL}
    record.write(tmp_path / "forecast.json")
    back = ForecastRecord.read(tmp_path / "forecast.json")
    assert back.warnings == record.warnings and back.band == f["band"]
    assert back.backtest["coverage"] == bt["coverage"] and len(back.backtest["cases"]) == len(bt["cases"])


def test_the_form_gap_measures_how_far_a_line_in_log_n_and_the_power_law_part():
    power = [(n, 2.0 * n**0.5) for n in (1e4, 1e5, 1e6)]
    line = [(n, 2.0 + 1.5 * math.log10(n)) for n in (1e4, 1e5, 1e6)]
    assert extrapolation.form_gap(line, 1e8) > 0.02  # the two forms part by more than 5% two decades on
    assert extrapolation.form_gap(power, 1e8) > extrapolation.form_gap(power, 1e7) > 0  # and more the farther
    falling = [(n, 1e-3 * (1e4 / n) ** 0.5) for n in (1e4, 1e5, 1e6)]  # a falling quantity: no second form
    assert extrapolation.form_gap(falling, 1e9) is None
    assert extrapolation.form_gap([(1e4, 1.0), (1e5, 1.0), (1e6, 1.0)], 1e9) == pytest.approx(0.0, abs=1e-12)


# ---- the split-conformal band ------------------------------------------------------------------------------------------

def test_the_conformal_factor_is_the_ceil_n_plus_1_times_80_percent_smallest_score():
    """n cases with scores 1/100 … n/100 (the miss in units of the band's half-width): the factor is the
    ⌈(n + 1)·0.8⌉-th smallest; below the minimum number of cases there is none; a censored case scores infinity."""
    band = {"ok": True, "value": 1.0, "low": 0.1, "high": 10.0, "scale": 1.0, "df": 1}  # half-width: one decade
    n = 99
    cases = [extrapolation.case("attn_logit_max/0", band, 10 ** (k / 100)) for k in range(1, n + 1)]
    assert extrapolation.conformal_score(cases[4]) == pytest.approx(0.05)
    assert extrapolation.conformal_factor(cases) == pytest.approx(80 / 100)  # ⌈100 · 0.8⌉ = 80
    assert extrapolation.conformal_factor(cases[: extrapolation.CONFORMAL_MIN_CASES - 1]) is None
    censored = {**cases[0], "measured": None, "inside": False}
    assert extrapolation.conformal_score(censored) == math.inf
    assert extrapolation.conformal_factor([censored] * n) is None  # no finite factor holds them
    assert extrapolation.conformal_factors(cases) == {"attn_logit_max/0": pytest.approx(0.8)}


@pytest.mark.parametrize("shrink", [0.4, 1.0, 2.5])
def test_conformal_factors_from_one_set_of_ladders_give_80_percent_on_new_ones(shrink):
    """Split conformal on synthetic ladders with a known law: factors computed on 500 ladders whose band is too
    narrow (0.4), right (1.0) or too wide (2.5) bring the coverage of 2000 other ladders to about 80%."""
    calibration, new = synthetic_cases(500, shrink=shrink, seed=1), synthetic_cases(2000, shrink=shrink, seed=2)
    factor = extrapolation.conformal_factor(calibration)
    assert (factor > 1.0) if shrink < 1 else (factor < 1.0) if shrink > 1 else True
    before = extrapolation.coverage(new)["overall"]["fraction"]
    after = extrapolation.coverage([extrapolation.rescaled(c, factor) for c in new])["overall"]["fraction"]
    assert 0.76 <= after <= 0.84, (shrink, before, after)
    if shrink != 1.0:
        assert abs(after - 0.8) < abs(before - 0.8)


def test_the_conformal_band_is_the_forms_band_scaled_per_quantity(monkeypatch):
    """``conformal``: the ``forms`` band's half-width times the quantity's stored factor, around the same value; a
    quantity without a factor (or no quantity named) keeps the ``forms`` band."""
    monkeypatch.setattr(extrapolation, "CONFORMAL", {"log_z_mean": 0.5})
    pts = [(1e4, 3.0), (1e5, 4.7), (1e6, 6.0)]
    half = lambda t: math.log10(t["high"] / t["value"])  # noqa: E731
    forms = extrapolation.trend(pts, 1e8, band="forms")
    conf = extrapolation.trend(pts, 1e8, band="conformal", quantity="log_z_mean")
    assert conf["value"] == forms["value"] and conf["conformal"] == 0.5
    assert half(conf) == pytest.approx(0.5 * half(forms)) and conf["scale"] == pytest.approx(0.5 * forms["scale"])
    for other in (extrapolation.trend(pts, 1e8, band="conformal", quantity="lr_sensitivity"),
                  extrapolation.trend(pts, 1e8, band="conformal")):
        assert (other["low"], other["high"]) == (forms["low"], forms["high"]) and "conformal" not in other


def test_the_stored_factors_are_for_forecast_quantities_and_the_forecast_uses_them():
    assert set(extrapolation.CONFORMAL) <= set(extrapolation.QUANTITIES)
    assert all(0 < f < 10 for f in extrapolation.CONFORMAL.values())
    assert extrapolation.BAND == "conformal" and extrapolation.CONFORMAL_BASE in extrapolation.BANDS


def test_the_validation_scores_a_calibration_ladder_with_factors_it_did_not_help_compute():
    """examples/forecast_validation.py, leave one ladder out: a calibration ladder whose misses are huge gets the
    factor of the other ladders (its own cases would have widened it), and is scored outside."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("fv", Path(__file__).parents[1] / "examples" / "forecast_validation.py")
    fv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fv)
    a, b = fv.CALIBRATION[:2]
    tight = synthetic_cases(200, seed=3)
    wild = [{**c, "measured": c["value"] * 1e3} for c in synthetic_cases(200, seed=4)]
    cases = {a: {"forms": tight}, b: {"forms": wild}}
    scored = fv._conformal_cases(cases, b)
    assert len(scored) == 200 and not any(c["inside"] for c in scored)
    assert {c["band"] for c in scored} == {"conformal"}
    theirs = extrapolation.conformal_factor(wild)  # a is scored with b's factor, never with its own
    assert theirs > 10 * extrapolation.conformal_factor(tight)
    assert [c["high"] for c in fv._conformal_cases(cases, a)] == pytest.approx(
        [extrapolation.rescaled(c, theirs)["high"] for c in tight])


def test_the_band_sentence_names_the_band_and_each_factor():
    text = forecast.band_text(forecast.band_record())
    assert "`forms` band rescaled by split-conformal factors" in text and "docs/forecasting.md" in text
    assert all(f"{extrapolation.QUANTITIES[q]} ×{f:.2f}" in text for q, f in extrapolation.CONFORMAL.items())
    assert forecast.band_text(forecast.band_record("fit")).startswith("80% bands: the `fit` band")
