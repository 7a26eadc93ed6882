"""The one owner of "unstable": the flag with and without a reference run, the calibrated threshold, the 80%
interval and the constants the claims, forecast, plots and monitor import."""

import math

import polars as pl
import pytest

from proxyscale.science import claims
from proxyscale.jobs import forecast
from proxyscale.core import instability
from proxyscale import monitor
from proxyscale.outputs import plots


def runs(losses, lrs=(1e-3, 1e-2, 1e-1, 1.0), size="s0", diverged=None, **extra):
    return pl.DataFrame({"label.size": [size] * len(lrs), "n_params": [1000] * len(lrs), "member.lr": list(lrs),
                         "final_eval_loss": list(losses), "diverged": diverged or [False] * len(lrs), **extra})


def test_without_a_reference_only_lrs_above_the_best_can_be_unstable():
    r = instability.unstable(runs([3.5, 3.0, 3.05, 3.2]))
    # 3.5 at LR 1e-3 is undertrained (below the best LR), 3.05 within the margin, 3.2 beyond it
    assert r["unstable"].to_list() == [False, False, False, True]
    r = instability.unstable(runs([3.5, 3.0, float("nan"), 3.0], diverged=[False, False, True, False]))
    assert r["unstable"].to_list() == [False, False, True, False]


def test_with_a_reference_a_run_is_unstable_against_its_own_size_and_lr():
    ref = runs([3.0, 2.9, 2.8, 2.8])
    r = instability.unstable(runs([3.05, 3.1, 2.85, float("nan")]), reference=ref)
    assert r["unstable"].to_list() == [False, True, False, True]  # NaN counts as worse than any reference


def test_threshold_between_stable_and_unstable_or_none():
    rows = instability.unstable(runs([3.0, 3.0, 3.5, 4.0], logit=[10.0, 40.0, 90.0, 1000.0]))
    assert instability.threshold(rows, "logit") == pytest.approx(math.sqrt(40 * 90))
    mixed = rows.with_columns(pl.Series("logit", [10.0, 400.0, 90.0, 1000.0]))
    assert instability.threshold(mixed, "logit") is None
    assert instability.separating(mixed, "logit") == (400.0, 90.0, False)


def test_interval_is_the_fit_with_students_t_80_percent_band():
    from proxyscale.core.analysis import fit_log

    x = [1e3, 1e4, 1e5, 1e6]
    exact = instability.interval(fit_log(x, [2 * v**0.5 for v in x]), 1e8)
    assert exact["value"] == pytest.approx(2e4, rel=1e-6) and exact["low"] == pytest.approx(exact["value"])
    two = instability.interval(fit_log(x[:2], [1.0, 2.0]), 1e8)  # as many points as parameters: no band
    assert math.isnan(two["low"]) and math.isnan(two["high"])
    noisy = instability.interval(fit_log(x, [2 * v**0.5 * f for v, f in zip(x, (1.3, 0.8, 1.2, 0.9))]), 1e8)
    assert noisy["low"] < noisy["value"] < noisy["high"]


def test_the_constants_have_one_owner():
    assert instability.collapses(9e-8, 1e-8) and not instability.collapses(1.1e-7, 1e-8)
    assert forecast.PAPER_LOGIT_THRESHOLD is instability.PAPER_LOGIT_THRESHOLD
    assert forecast.EPS_FACTOR is instability.EPS_FACTOR and forecast.MARGIN is instability.MARGIN
    import inspect

    def default(fn, name):
        return inspect.signature(inspect.unwrap(fn)).parameters[name].default

    assert default(monitor.attach, "logit_threshold") == instability.PAPER_LOGIT_THRESHOLD
    for fn in (claims.prediction_table, claims.prediction, plots.prediction):
        assert default(fn, "margin") == instability.MARGIN
    for name in ("T80", "t80", "band", "unstable", "threshold"):  # forecast re-uses, never re-defines
        assert getattr(forecast, name, None) in (None, getattr(instability, name, None)), name
