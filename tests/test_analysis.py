import math

import pytest

from proxyscale.core.analysis import best_lr, lr_sensitivity, lr_sensitivity_coupled

GRID = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]


def test_lr_sensitivity_known_numbers():
    # capped at ℓ0 = 6: [4, 3.5, 3, 3.2, 6 (capped from 7), 6 (NaN), 6 (inf)] ; ℓ* = 3
    losses = [4.0, 3.5, 3.0, 3.2, 7.0, math.nan, math.inf]
    expect = (1.0 + 0.5 + 0.0 + 0.2 + 3.0 + 3.0 + 3.0) / 7
    assert lr_sensitivity(losses, 6.0) == pytest.approx(expect)


def test_lr_sensitivity_flat_and_all_diverged_are_zero():
    assert lr_sensitivity([3.0] * 7, 6.0) == 0.0
    assert lr_sensitivity([math.nan] * 7, 6.0) == 0.0


def test_lr_sensitivity_per_point_l0():
    assert lr_sensitivity([2.0, 9.0], [5.0, 4.0]) == pytest.approx((0 + 2.0) / 2)


def test_coupled_takes_min_over_two_windows():
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    losses = [5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0, 6.0]  # bad at both ends
    w1 = lr_sensitivity(losses[:7], 6.0)  # [1e-4, 1e-1]
    w2 = lr_sensitivity(losses[1:], 6.0)  # [3e-4, 3e-1]
    assert lr_sensitivity_coupled(lrs, losses, 6.0) == pytest.approx(min(w1, w2))
    assert w1 != w2


def test_best_lr():
    assert best_lr(GRID, [4, 3, 2.5, 2.7, math.nan, 9, 9]) == (3e-3, 2.5)
    lr, loss = best_lr([1.0], [math.nan])
    assert math.isnan(lr) and math.isnan(loss)


def test_power_law_fit_and_extrapolation_uncertainty():
    import numpy as np

    from proxyscale.core.analysis import fit_log
    from proxyscale.core.instability import interval

    def predict(fit, n):
        b = interval(fit, n)
        return b["value"], b["low"], b["high"]

    x = [1e3, 1e4, 1e5, 1e6]
    y = [2.0 * v**0.5 for v in x]
    fit = fit_log(x, y, degree=1)
    assert fit["coef"][0] == pytest.approx(0.5) and fit["sigma"] == pytest.approx(0, abs=1e-9)
    mid, lo, hi = predict(fit, 1e8)
    assert mid == pytest.approx(2e4, rel=1e-6)
    noisy = [v * f for v, f in zip(y, (1.3, 0.8, 1.2, 0.9))]
    mid, lo, hi = predict(fit_log(x, noisy, degree=1), 1e8)
    assert lo < mid < hi and hi / lo > 1.5  # extrapolation far out carries a visible band
    quad = fit_log(x + [1e7], [2 * v**0.5 * np.exp(0.01 * np.log(v) ** 2) for v in x + [1e7]], degree=2)
    assert quad["degree"] == 2 and len(quad["coef"]) == 3
    with pytest.raises(ValueError):
        fit_log([1.0], [1.0], degree=1)


def test_lr_sensitivity_splits_into_the_parts_below_and_above_the_best_lr():
    from proxyscale.core.analysis import lr_sensitivity, lr_sensitivity_split

    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    losses = [3.0, 2.0, 2.5, float("nan")]  # best at 1e-2; the NaN counts as ℓ0 = 5
    below, above = lr_sensitivity_split(lrs, losses, 5.0)
    assert below == pytest.approx(1.0 / 4) and above == pytest.approx((0.5 + 3.0) / 4)
    assert below + above == pytest.approx(lr_sensitivity(losses, 5.0))
