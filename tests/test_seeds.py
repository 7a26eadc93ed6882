"""Seeds as replicates (issue 22): init seeds on the member axis equal the same seeds trained alone; the sensitivity
tables carry each setting's spread over seeds; the claims are judged against that spread with three verdicts; the
figures draw it; the forecast's ladder and backtest count it."""

import math

import matplotlib.axes
import polars as pl
import pytest

from proxyscale.science import claims
from proxyscale.core import config, seeds
from proxyscale.outputs import plots
from proxyscale.runs import sweep
from proxyscale.core.analysis import LR_GRID, sensitivity_frame, sensitivity_summary
from tests.conftest import tiny
from tests.test_engine import assert_close, member_frame, run

SIZES = (1e3, 1e4, 1e5)
AXIS = "model.qk_layernorm"


def test_seed_replicates_on_the_member_axis_equal_the_same_seeds_trained_alone(tmp_path):
    """``seeds: 3`` rides the member axis as members.seed [0, 1, 2]: each member equals that init seed trained as a
    group of its own (float tolerance), and all three see the group's data order (train.seed)."""
    spec = {"base": {k: v for k, v in tiny(train={"steps": 8, "eval_every": 4}).items() if k != "members"},
            "members": {"lr": [3e-2]}, "seeds": 3}
    (group,) = sweep.expand(spec)
    assert [m.seed for m in group.cfg.member_list()] == [0, 1, 2] and group.cfg.train.seed == 0
    raw = group.cfg.to_dict()
    _, together = run(tmp_path, raw, "together")
    for s in range(3):
        _, alone = run(tmp_path, {**raw, "members": {"lr": [3e-2], "seed": [s]}}, f"alone{s}")
        assert_close(member_frame(together, s), member_frame(alone, 0), 1e-4, ("seed", s))
    finals = member_frame(together, 0)["loss"].to_list(), member_frame(together, 1)["loss"].to_list()
    assert finals[0] != finals[1]  # other init, other curve


def test_seeds_in_a_spec_expand_to_the_same_groups_as_members_seed():
    base = {k: v for k, v in tiny().items() if k != "members"}
    a = sweep.expand({"base": base, "members": {"lr": [1e-2, 1e-1]}, "seeds": 3})
    b = sweep.expand({"base": base, "members": {"lr": [1e-2, 1e-1], "seed": [0, 1, 2]}})
    c = sweep.expand({"base": base, "members": {"lr": [1e-2, 1e-1]}, "seeds": [0, 1, 2]})
    assert [g.id for g in a] == [g.id for g in b] == [g.id for g in c]
    assert len(a[0].cfg.member_list()) == 6


def results(sens, n_seeds, best=lambda v, i, s: 3.0 - 0.2 * i):
    """A synthetic results table: sizes ``SIZES`` × qk-layernorm head/off × the paper's LR grid × ``n_seeds`` init
    seeds, with final loss best + sens(v, i, s)·(log10 lr/1e-2)² so each curve's LR sensitivity is set by ``sens``."""
    rows = []
    for i, n in enumerate(SIZES):
        for v in ("head", "off"):
            for s in range(n_seeds):
                for lr in LR_GRID:
                    loss = best(v, i, s) + sens(v, i, s) * math.log10(lr / 1e-2) ** 2
                    rows.append({"label.size": f"s{i}", "n_params": int(n), f"label.{AXIS}": v, "member.lr": lr,
                                 "member.seed": s, "l0": 5.5, "final_eval_loss": min(loss, 5.5), "diverged": False})
    return pl.DataFrame(rows)


def curvature_for(target):
    """The curvature whose curve has LR sensitivity ``target`` on the paper's grid (it is linear in it)."""
    unit = sum(math.log10(lr / 1e-2) ** 2 for lr in LR_GRID) / len(LR_GRID)
    return target / unit


def test_the_sensitivity_table_reports_each_setting_with_its_spread_over_seeds():
    r = results(lambda v, i, s: curvature_for(0.1 + 0.05 * s), 3)
    per_seed = sensitivity_frame(r, ["label.size", f"label.{AXIS}"])
    assert per_seed.height == 3 * 2 * 3 and "member.seed" in per_seed.columns  # one curve per seed, never mixed
    summary = sensitivity_summary(r, ["label.size", f"label.{AXIS}"])
    assert summary.height == 6 and set(summary["seeds"].to_list()) == {3}
    row = summary.row(0, named=True)
    assert row["lr_sensitivity"] == pytest.approx(0.15) and row["lr_sensitivity_min"] == pytest.approx(0.1)
    assert row["lr_sensitivity_max"] == pytest.approx(0.2)
    assert seeds.fold_spread(row)["lr_sensitivity"] == "0.15 (0.1–0.2)"
    one = sensitivity_summary(results(lambda v, i, s: curvature_for(0.1), 1), ["label.size", f"label.{AXIS}"])
    assert set(one["seeds"].to_list()) == {1}  # one seed: the range is the value itself
    assert one["lr_sensitivity_min"].to_list() == one["lr_sensitivity"].to_list() == one["lr_sensitivity_max"].to_list()
    assert seeds.fold_spread(one.row(0, named=True))["lr_sensitivity"] == one["lr_sensitivity"][0]
    assert seeds.count(results(lambda v, i, s: 0.1, 1)) == 1 and seeds.count(r) == 3


def test_the_spread_and_rule_by_hand():
    s = seeds.spread([0.1, 0.2, 0.3])
    half = 1.886 * 0.1 / math.sqrt(3)  # t80 at 2 degrees of freedom, sd 0.1
    assert s.mean == pytest.approx(0.2) and s.low == pytest.approx(0.2 - half, rel=1e-3) and s.n == 3
    assert seeds.judge(s) == "reproduced"
    assert seeds.judge(seeds.spread([-0.1, 0.2, 0.3])) == "within seed noise"
    assert seeds.judge(seeds.spread([-0.1, -0.2, -0.3])) == "not reproduced"
    assert seeds.judge(seeds.spread([0.1])) == "reproduced" and seeds.judge(seeds.spread([-0.1])) == "not reproduced"
    assert seeds.judge_all(["reproduced", "within seed noise"]) == "within seed noise"
    assert seeds.judge_all(["reproduced", "not reproduced"]) == "not reproduced"
    assert seeds.judge_all(["reproduced", "reproduced", "within seed noise"], "most") == "reproduced"


GROWS = lambda v, i, s: curvature_for(0.2 + 0.1 * i + 0.01 * s)  # noqa: E731 - +0.1 a decade, seeds agree
FALLS = lambda v, i, s: curvature_for(0.4 - 0.1 * i + 0.01 * s)  # noqa: E731
NOISY = lambda v, i, s: curvature_for(0.3 + 0.1 * i * (1 if s == 0 else -1) + 0.05 * s)  # noqa: E731 - seeds disagree


@pytest.mark.parametrize("sens, expected", [(GROWS, "reproduced"), (FALLS, "not reproduced"),
                                            (NOISY, "within seed noise")], ids=["grows", "falls", "noise"])
def test_growth_with_n_has_three_verdicts_with_seeds(sens, expected):
    state, detail = claims.sensitivity_increases_with_n(results(sens, 3), AXIS, "off")
    assert state == expected, detail
    assert "slope per decade of N" in detail and "over 3 seeds" in detail


def test_growth_with_n_at_one_seed_is_the_point_rule_and_says_so():
    state, detail = claims.sensitivity_increases_with_n(results(NOISY, 1), AXIS, "off")
    assert state == "reproduced" and "one seed: seed noise not measured" in detail  # seed 0 alone grows


def _lower(better_gap):
    """head below off by ``better_gap(i, s)`` at size i, seed s."""
    return lambda v, i, s: curvature_for(0.3 - (better_gap(i, s) if v == "head" else 0.0))


@pytest.mark.parametrize("gap, expected", [
    (lambda i, s: 0.1 + 0.01 * s, "reproduced"),  # lower at every size, every seed
    (lambda i, s: -0.1 - 0.01 * s if i == 1 else 0.1, "not reproduced"),  # higher at one size, every seed
    (lambda i, s: 0.1 if i != 1 else (0.05 if s == 0 else -0.04), "within seed noise"),  # one size: seeds disagree
], ids=["lower", "higher-at-one-size", "noise-at-one-size"])
def test_lower_at_every_size_has_three_verdicts_with_seeds(gap, expected):
    state, detail = claims.sensitivity_lower(results(_lower(gap), 3), AXIS, "head", "off")
    assert state == expected, detail


def _with_logit(logit):
    """``results`` (3 seeds) with a layer-0 logit ``logit(v, i, s, lr)`` for qk-layernorm v, size i, seed s."""
    r = results(GROWS, 3)
    values = [logit(v, int(size[1:]), s, lr) for v, size, s, lr in
              zip(r[f"label.{AXIS}"], r["label.size"], r["member.seed"], r["member.lr"])]
    return r.with_columns(pl.Series("attn_logit_max/0", values))


@pytest.mark.parametrize("logit, expected", [
    (lambda v, i, s, lr: (200.0 + 10 * s) if v == "off" else 10.0, "reproduced"),  # 20x at every size and seed
    (lambda v, i, s, lr: (30.0 + s) if v == "off" else 10.0, "not reproduced"),  # 3x: below the 10x asked
    (lambda v, i, s, lr: ([30.0, 300.0, 100.0][s] if i == 1 else 200.0) if v == "off" else 10.0,
     "within seed noise"),  # at one size the seeds give 3x, 30x and 10x
], ids=["above", "below", "noise"])
def test_a_ratio_claim_has_three_verdicts_with_seeds(logit, expected):
    state, detail = claims.ratio_at_least(_with_logit(logit), "attn_logit_max/0", AXIS, "off", "head", 10.0)
    assert state == expected, detail
    assert "over 3 seeds" in detail


@pytest.mark.parametrize("logit, expected", [
    (lambda v, i, s, lr: 10 * lr ** (0.5 + 0.1 * s), "reproduced"),  # rises with LR in every seed
    (lambda v, i, s, lr: 10 * lr ** (-0.5 - 0.1 * s), "not reproduced"),  # falls in every seed
    (lambda v, i, s, lr: 10 * lr ** [0.5, -0.6, 0.05][s], "within seed noise"),  # the seeds disagree
], ids=["rises", "falls", "noise"])
def test_a_trend_claim_has_three_verdicts_with_seeds(logit, expected):
    state, detail = claims.trend(_with_logit(logit), "attn_logit_max/0", "member.lr", 1)
    assert state == expected, detail
    assert "over 3 seeds" in detail


def test_a_trend_claim_at_one_seed_is_the_point_rule_and_says_so():
    one = _with_logit(lambda v, i, s, lr: 10 * lr ** [0.5, -0.6, 0.05][s]).filter(pl.col("member.seed") == 0)
    state, detail = claims.trend(one, "attn_logit_max/0", "member.lr", 1)
    assert state == "reproduced" and "one seed: seed noise not measured" in detail


def test_evaluate_records_the_third_verdict():
    claim = {"text": "grows", "check": "sensitivity_increases_with_n", "args": {"axis": AXIS, "value": "off"}}
    (v,) = claims.evaluate([claim], results(NOISY, 3))
    assert v.state == "within seed noise" and not v.reproduced and v.label == "within seed noise"


def test_figures_draw_the_spread_over_seeds(tmp_path, monkeypatch):
    """Error bars on sensitivity vs N and bands on LR vs loss, only where there are seeds."""
    drawn = {"errorbar": [], "fill_between": []}
    for name in drawn:
        real = getattr(matplotlib.axes.Axes, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            drawn[_name].append(kwargs.get("yerr") if _name == "errorbar" else args)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, name, spy)
    r = results(GROWS, 3)
    assert plots.sensitivity_vs_n(r, tmp_path / "s", lines=AXIS)[0].exists()
    assert plots.lr_vs_loss(r, tmp_path / "l", panels=AXIS)[0].exists()
    assert drawn["errorbar"] and all(e is not None for e in drawn["errorbar"])
    assert len(drawn["fill_between"]) == 2 * len(SIZES)  # a band per size and panel
    drawn = {"errorbar": [], "fill_between": []}
    one = results(GROWS, 1)
    plots.sensitivity_vs_n(one, tmp_path / "s1", lines=AXIS)
    plots.lr_vs_loss(one, tmp_path / "l1", panels=AXIS)
    assert all(e is None for e in drawn["errorbar"]) and not drawn["fill_between"]


def test_the_forecast_fits_through_every_seed_and_scores_each_held_out_seed():
    from proxyscale.science import extrapolation
    from proxyscale.jobs import forecast
    from proxyscale.core import instability

    def logit(i, s, lr):
        return 2.0 * (10 ** (i + 3)) ** 0.5 * (1.0 + 0.1 * s) * lr / 1e-2

    rows = []
    for i, n in enumerate((1e3, 1e4, 1e5, 1e6)):
        for s in range(3):
            for lr in LR_GRID:
                rows.append({"label.size": f"s{i}", "n_params": int(n), "member.lr": lr, "member.seed": s,
                             "l0": 5.5, "final_eval_loss": 3.0 + (lr / 1e-2) * 0.01, "diverged": False,
                             "attn_logit_max/0": logit(i, s, lr), "output_logit_mean": -1.0, "log_z_mean": 1.0,
                             "grad_rms/layers.0.w1": 1e-3})
    r = pl.DataFrame(rows)
    points = forecast.at_lr_points(instability.unstable(r), "attn_logit_max/0", 1e-2)
    assert len(points) == 4 * 3  # every seed a point of the fit
    # the fit's own band (extrapolation.BANDS "fit"): its width is the scatter of the points, so the seeds' spread
    t = extrapolation.trend([p for p in points if p[0] < 1e6], 1e6, band="fit")
    single = extrapolation.trend([(n, v) for (n, v) in points if n < 1e6][::3], 1e6, band="fit")  # seed 0: exact
    assert single["high"] / single["low"] < 1 + 1e-9  # no scatter, no band
    assert t["high"] / t["low"] > 1.2  # the seeds' spread (±10% in the logit) is the band
    wide = extrapolation.trend([p for p in points if p[0] < 1e6], 1e6)  # the forecast's band adds the form term to it
    assert wide["low"] <= t["low"] and wide["high"] >= t["high"] and wide["value"] == t["value"]
    bt = forecast.backtest(r, 1e-8, 1e-4, 1e-4, "off")
    assert bt["ok"] and len(bt["rows"]) == len(LR_GRID) * 3 and {tuple(x["seed"]) for x in bt["rows"]} == {
        (0,), (1,), (2,)}


def test_a_data_order_seed_is_an_axis_beside_init_seeds(tmp_path):
    """train.seed as an axis beside members.seed varies the data order alone: separate groups, same init seeds."""
    base = {k: v for k, v in tiny().items() if k != "members"}
    groups = sweep.expand({"base": base, "axes": {"train.seed": [1, 2]}, "members": {"lr": [1e-2], "seed": [0]}})
    assert len(groups) == 2 and {g.cfg.train.seed for g in groups} == {1, 2}
    assert all([m.seed for m in g.cfg.member_list()] == [0] for g in groups)
    assert config.from_dict({**base, "members": {"seed": [3]}}).member_list()[0].seed == 3


def test_a_sweep_with_seeds_writes_each_setting_with_its_spread(tmp_path):
    """settings.parquet: one row per setting and LR, the final loss and the diagnostics as mean, min and max over
    the seeds; the mean is the mean of the results table's rows."""
    base = {k: v for k, v in tiny(train={"steps": 6, "eval_every": 3}).items() if k != "members"}
    results = sweep.run_sweep({"base": base, "members": {"lr": [1e-2, 1e-1]}, "seeds": 2}, tmp_path / "s")
    settings = pl.read_parquet(tmp_path / "s" / "settings.parquet")
    assert settings.height == 2 and set(settings["seeds"].to_list()) == {2}
    for lr in (1e-2, 1e-1):
        mine = results.filter(pl.col("member.lr") == lr)
        row = settings.filter(pl.col("member.lr") == lr).row(0, named=True)
        assert row["final_eval_loss"] == pytest.approx(mine["final_eval_loss"].mean())
        assert row["final_eval_loss_min"] == pytest.approx(mine["final_eval_loss"].min())
        assert row["attn_logit_max/0_max"] == pytest.approx(mine["attn_logit_max/0"].max())
