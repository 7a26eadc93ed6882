"""Forecast: trends with intervals, calibrated thresholds, verdicts that say when they cannot be made, the
backtest's scoring, and the command end to end on a tiny ladder."""

import json
import math

import polars as pl
import pytest
import yaml

from proxyscale.core import config, instability
from proxyscale.science import extrapolation
from proxyscale.jobs import forecast
from proxyscale.runs import sweep
from proxyscale.cli import main


UNSTABLE_FROM = {1e4: 1.0, 1e5: 0.1, 1e6: 0.1, 1e7: 0.01, 1e8: 0.01}


def ladder(logit=lambda n, lr: 0.1 * n**0.5 * lr, diverge_from=lambda n: UNSTABLE_FROM[n],
           sizes=(1e4, 1e5, 1e6, 1e7), lrs=(1e-3, 1e-2, 1e-1, 1.0), noise=0.0):
    """A synthetic results table: logits follow ``logit``; a size is unstable from ``diverge_from(N)`` up."""
    rows = []
    for i, n in enumerate(sizes):
        for j, lr in enumerate(lrs):
            bad = lr >= diverge_from(n)
            wobble = 1 + noise * ((-1) ** (i + j))
            rows.append({"label.size": f"s{i}", "n_params": int(n), "member.lr": lr, "l0": 5.5, "diverged": False,
                         "final_eval_loss": 4.0 if bad else 3.0 - 0.1 * j, "attn_logit_max/0": logit(n, lr) * wobble,
                         "output_logit_mean": -5.0 * wobble, "log_z_mean": 6.0 * wobble,
                         "grad_rms/layers.0.w1": 1e-3 * (1e4 / n) ** 0.5 * wobble})
    return pl.DataFrame(rows)


def test_a_power_law_is_forecast_with_an_interval_that_holds_it():
    pts = [(n, 2.0 * n**0.5 * (1 + 0.05 * (-1) ** i)) for i, n in enumerate([1e4, 1e5, 1e6, 1e7])]
    t = extrapolation.trend(pts, 1e9)
    assert t["ok"] and t["low"] < 2.0 * 1e9**0.5 < t["high"]
    assert t["value"] == pytest.approx(2.0 * 1e9**0.5, rel=0.2) and t["slope"] == pytest.approx(0.5, abs=0.02)


def test_too_few_sizes_say_so_instead_of_a_number():
    t = extrapolation.trend([(1e4, 1.0), (1e5, 2.0)], 1e9)
    assert not t["ok"] and "needs 3" in t["why"] and "value" not in t
    f = forecast.forecast(instability.unstable(ladder(sizes=(1e4, 1e5))), 1e9, 1e-2, 1e-8, 1e-4, 1e-4, "off")
    assert {v["verdict"] for v in f["verdicts"]} == {"cannot forecast"}


def test_unstable_means_above_the_best_lr_only():
    rows = instability.unstable(ladder())
    small = rows.filter(pl.col("n_params") == 10_000).sort("member.lr")
    assert small["unstable"].to_list() == [False, False, False, True]  # the undertrained low LRs are not unstable
    # each size's first unstable LR, pulled back in log LR to where its loss crosses best + 0.1 nats
    expected = [(1e4, 0.1 * 10 ** (0.1 / 1.2)), (1e5, 0.01 * 10 ** (0.1 / 1.1)), (1e6, 0.01 * 10 ** (0.1 / 1.1)),
                (1e7, 1e-3 * 10 ** (0.1 / 1.0))]
    got = forecast.instability_lrs(rows)
    assert [n for n, _ in got] == [n for n, _ in expected]
    assert [lr for _, lr in got] == pytest.approx([lr for _, lr in expected], rel=1e-9)


def test_instability_lr_interpolates_between_grid_points_with_the_loss_capped_at_l0():
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    sizes = {"gradual": [3.0, 2.5, 2.55, 2.75], "diverged": [3.0, 2.5, 2.52, float("nan")],
             "never": [3.0, 2.5, 2.45, 2.5]}
    rows = pl.DataFrame([{"label.size": name, "n_params": 10**i, "member.lr": lr, "l0": 5.5, "final_eval_loss": loss,
                          "diverged": loss != loss} for i, (name, losses) in enumerate(sizes.items(), start=4)
                         for lr, loss in zip(lrs, losses)])
    got = dict(forecast.instability_lrs(instability.unstable(rows)))
    assert got[1e4] == pytest.approx(0.1 * 10 ** ((0.1 - 0.05) / (0.25 - 0.05)))  # gaps 0.05 → 0.25 cross 0.1
    assert got[1e5] == pytest.approx(0.1 * 10 ** ((0.1 - 0.02) / (3.0 - 0.02)))  # NaN counts as ℓ0 = 5.5
    assert 1e6 not in got  # no LR above the best is unstable: no instability LR, not a made-up one


def test_verdicts_follow_the_forecast_and_the_calibrated_threshold():
    rows = instability.unstable(ladder(noise=0.02))
    f = forecast.forecast(rows, 1e9, 1e-1, 1e-8, 0.0, 0.0, "off")
    att, out, eps, div = f["verdicts"]
    assert f["logit_threshold_source"] == "calibrated on the ladder"
    assert att["verdict"] == "likely" and "qk-layernorm" in att["detail"] and att["value"] > f["logit_threshold"]
    assert eps["verdict"] == "unlikely" and eps["threshold"] == pytest.approx(1e-7)  # 1e-3·(1e4/1e9)^0.5 = 3e-6
    assert div["verdict"] == "likely"
    assert out["verdict"] in ("unlikely", "possible") and "log Z" in out["detail"]
    with_qk = forecast.forecast(rows, 1e9, 1e-3, 1e-8, 0.0, 0.0, "head")["verdicts"][0]
    assert "qk-layernorm" not in with_qk["detail"]
    starved = forecast.forecast(rows, 1e9, 1e-1, 1e-6, 0.0, 0.0, "off")["verdicts"][2]
    assert starved["verdict"] == "likely" and "ε ≤" in starved["detail"]  # 3e-6 < 10·1e-6


def test_backtest_scores_the_held_out_size():
    bt = forecast.backtest(ladder(noise=0.02), 1e-8, 0.0, 0.0, "off")
    assert bt["ok"] and bt["held_out_n"] == 10_000_000 and len(bt["rows"]) == 4
    assert bt["logit_within_2x"] == bt["logits"] == 4
    assert all(r["ratio"] == pytest.approx(1.0, rel=0.2) for r in bt["rows"])
    assert not forecast.backtest(ladder(sizes=(1e4, 1e5, 1e6)), 1e-8, 0.0, 0.0, "off")["ok"]


def test_ladder_carries_the_targets_interventions(make_raw, tmp_path):
    raw = make_raw(model={"qk_layernorm": "off", "width": 1024, "depth": 12, "heads": 16},
                   optim={"lr": 0.02, "z_loss": 0.0, "weight_decay": 0.0, "eps": 1e-12, "warmup": 10},
                   train={"steps": 100, "eval_every": 50})
    raw.pop("members")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(raw))
    spec = forecast.ladder_spec(forecast.load_target(str(tmp_path / "t.yaml")), "micro")
    assert spec["sizes"] == "micro" and 0.02 in spec["members"]["lr"] and 0.3 in spec["members"]["lr"]
    assert spec["base"]["model"]["qk_layernorm"] == "off" and spec["base"]["optim"]["eps"] == 1e-12
    assert spec["base"]["optim"]["z_loss"] == 0.0 and spec["base"]["optim"]["warmup"] == 30  # 10% of 300 steps
    raw["members"] = {"lr": [0.1, 0.2]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(raw))
    assert main(["forecast", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "o")]) == 2


def test_forecast_command_end_to_end_on_a_tiny_ladder(make_raw, tmp_path, monkeypatch, capsys):
    real = forecast.ladder_spec

    def tiny(target, scale, sizes=None, seeds=None):  # tens of steps, four tiny sizes: the plumbing, not the science
        spec = real(target, scale, [{"width": 16, "depth": 1, "heads": 1}, {"width": 32, "depth": 1, "heads": 1},
                                    {"width": 32, "depth": 2, "heads": 1}, {"width": 64, "depth": 2, "heads": 2}],
                    seeds=seeds)
        spec["base"]["train"].update({"steps": 12, "eval_every": 6, "threads": 1, "precision": "fp32"})
        spec["base"]["data"].update({"corpus": "synthetic", "seq_len": 16, "batch_size": 2})
        spec["base"]["optim"]["warmup"] = 2
        return spec

    monkeypatch.setattr(forecast, "ladder_spec", tiny)
    raw = make_raw(model={"qk_layernorm": "off", "width": 512, "depth": 8, "heads": 8}, optim={"lr": 0.01})
    raw.pop("members")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(raw))
    import importlib.util

    logged = importlib.util.find_spec("tensorboard") is not None  # in [test]; the flag must reach the ladder
    assert main(["forecast", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "o"), "--backtest",
                 *(["--log-to", "tensorboard"] if logged else [])]) == 0
    if logged:
        assert len(list((tmp_path / "o" / "groups").glob("*/tensorboard/m00_*"))) == 4
    out = " ".join(capsys.readouterr().out.split())
    assert "attention-logit growth:" in out and "update collapse from ε:" in out and "backtest" in out
    from proxyscale.core.records import FORECAST_CAUSES, ForecastRecord

    rec = ForecastRecord.read(tmp_path / "o" / "forecast")
    assert rec.target["width"] == 512 and len(rec.verdicts) == 4 and rec.backtest["held_out_n"] > 0
    assert all(rec.verdict(c)["verdict"] in ("likely", "possible", "unlikely", "cannot forecast")
               for c in FORECAST_CAUSES)
    assert "fit" not in json.loads((tmp_path / "o" / "forecast" / "forecast.json").read_text())["trends"].get(
        "attn_logit_max/0", {})  # the fits stay in memory
    assert math.isfinite(rec.n_target) and (tmp_path / "o" / "forecast" / "figures" / "trends.png").exists()
    assert (tmp_path / "o" / "forecast" / "figures" / "calibration.png").exists()  # the report's calibration figure
    assert rec.backtest["coverage"]["overall"]["cases"] == len(rec.backtest["cases"]) > 0
    assert "inside their 80% bands" in out and isinstance(rec.warnings, list)
    page = (tmp_path / "o" / "report.html").read_text()
    assert "Forecast: d512-L8" in page and "attention-logit growth" in page and "calibration" in page


def test_t80_is_students_t_quantile():
    import numpy as np

    def cdf(t, df):  # Student's t CDF by the trapezoid rule on its density
        x = np.linspace(0.0, t, 20001)
        c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
        return 0.5 + np.trapezoid(c * (1 + x**2 / df) ** (-(df + 1) / 2), x)

    for df in (1, 2, 3, 5, 10, 30):
        assert cdf(instability.t80(df), df) == pytest.approx(0.9, abs=2e-4), df
    assert instability.t80(1000) == instability.t80(30)
    with pytest.raises(ValueError):
        instability.t80(0)


@pytest.mark.parametrize("sizes", [3, 4, 6])
def test_the_80_percent_band_holds_80_percent_of_new_sizes(sizes):
    """Calibration: power laws with log-normal scatter, fitted on ``sizes`` sizes, extrapolated one decade; the band
    must hold the new size's value in about 80% of 3000 ladders (a normal quantile holds ~61% at 3 sizes)."""
    import numpy as np

    rng = np.random.default_rng(0)
    ns = [10.0 ** (4 + k) for k in range(sizes)]
    target, held = 10.0 ** (4 + sizes), 0
    for _ in range(3000):
        noise = 10 ** (0.1 * rng.standard_normal(sizes + 1))
        t = extrapolation.trend([(n, 2.0 * n**0.5 * e) for n, e in zip(ns, noise)], target, band="fit")
        held += t["low"] <= 2.0 * target**0.5 * noise[-1] <= t["high"]
    assert 0.77 <= held / 3000 <= 0.83, held / 3000


def test_the_forms_band_holds_a_trend_that_is_not_a_power_law():
    """A quantity that grows as a line in log N (as the mean output logit nearly does), fitted on three sizes with
    little scatter: the power law's own band misses the next decade in most ladders; the ``forms`` band, which
    adds the gap between the two forms, holds it in about 80%; both bands contain the power law's forecast."""
    import numpy as np

    rng = np.random.default_rng(0)
    ns, target = [1e4, 1e5, 1e6], 1e8
    truth = 2.0 + 1.5 * math.log10(target)
    held = {"fit": 0, "forms": 0}
    for _ in range(500):
        pts = [(n, (2.0 + 1.5 * math.log10(n)) * 10 ** (0.003 * rng.standard_normal())) for n in ns]
        measured = truth * 10 ** (0.003 * rng.standard_normal())
        for band in held:
            t = extrapolation.trend(pts, target, band=band)
            held[band] += t["low"] <= measured <= t["high"]
            assert t["low"] <= t["value"] <= t["high"]
    assert held["fit"] / 500 < 0.5 and 0.8 <= held["forms"] / 500 <= 0.95, held  # measured: 225 and 442 of 500


def test_the_pooled_forms_band_is_the_pooled_band_plus_the_form_gap():
    """``pooled_forms``: the pooled band's half-width (the scatter of every LR, many degrees of freedom) and the
    form gap added in quadrature for a growing quantity; for a falling one (no second form) it is the pooled band."""
    pooled = (0.01, 8)
    growing = [(1e4, 3.0), (1e5, 4.6), (1e6, 6.0)]
    p, pf = (extrapolation.trend(growing, 1e8, band=b, pooled=pooled) for b in ("pooled", "pooled_forms"))
    half = lambda t: math.log10(t["high"]) - math.log10(t["value"])  # noqa: E731
    assert pf["value"] == p["value"] and pf["df"] == 8
    assert half(pf) == pytest.approx(math.hypot(half(p), pf["form_gap"]))
    falling = [(n, 1.0 / v) for n, v in growing]
    p, pf = (extrapolation.trend(falling, 1e8, band=b, pooled=pooled) for b in ("pooled", "pooled_forms"))
    assert "form_gap" not in pf and half(pf) == pytest.approx(half(p))


def test_the_loso_only_band_is_the_ladders_own_extrapolation_error():
    """``loso_only``: half-width t(2) × the leave-one-size-out miss per decade × the decades to the target, in
    place of the fit's interval; a target inside the ladder keeps the fit's band."""
    from proxyscale.core.instability import t80

    pts = [(1e4, 3.0), (1e5, 4.6), (1e6, 6.0)]
    far = extrapolation.trend(pts, 1e8, band="loso_only")
    half = math.log10(far["high"]) - math.log10(far["value"])
    assert half == pytest.approx(t80(2) * extrapolation.loso_rate(pts) * 2.0) and far["df"] == 2
    inside, fit = (extrapolation.trend(pts, 3e5, band=b) for b in ("loso_only", "fit"))
    assert (inside["low"], inside["high"]) == (fit["low"], fit["high"])


def test_the_validation_example_builds_every_variant(tmp_path):
    """examples/forecast_validation.py (docs/forecasting.md's coverage table): each variant is a valid target whose ladder
    carries its changes, seed and scale; at least 8 ladders over micro and laptop, the tuning ones among them and
    not all of them; nothing is trained here."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "forecast_validation.py"
    spec = importlib.util.spec_from_file_location("forecast_validation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from proxyscale.runs import sweep

    for name, (_label, _file, changes, seed, scale) in module.VARIANTS.items():
        ladder, target = module.variant(name, tmp_path)
        groups = sweep.expand(ladder)
        assert len(groups) == 4 and all(g.cfg.train.seed == seed for g in groups), name
        assert ladder["sizes"] == forecast.LADDERS[scale], name
        for section, fields in changes.items():
            for field, value in fields.items():
                if field in forecast.MODEL_INTERVENTIONS:
                    assert all(getattr(g.cfg.model, field) == value for g in groups), (name, field)
                elif field in forecast.OPTIM_INTERVENTIONS:
                    assert all(getattr(g.cfg.optim, field) == value for g in groups), (name, field)
        assert target.optim.lr in ladder["members"]["lr"]
    assert len(module.VARIANTS) >= 8 and {v[4] for v in module.VARIANTS.values()} == {"micro", "laptop"}
    assert set(module.TUNING) < set(module.VARIANTS)
    ids = [g.id for name in module.VARIANTS for g in sweep.expand(module.variant(name, tmp_path)[0])]
    assert len(set(ids)) == len(ids)  # no two variants share a group


def test_a_size_that_never_turns_unstable_is_named_when_the_divergence_lr_cannot_be_forecast():
    calm = {1e4: 10.0, 1e5: 10.0, 1e6: 0.1, 1e7: 0.01}  # the two smallest sizes are stable on the whole grid
    rows = instability.unstable(ladder(diverge_from=lambda n: calm[n]))
    div = forecast.forecast(rows, 1e9, 1e-2, 1e-8, 1e-4, 1e-4, "off")["verdicts"][3]
    assert div["verdict"] == "cannot forecast" and "needs 3" in div["detail"]
    assert "s0, s1 stayed stable at every LR above their best" in div["detail"] and "above 1:" in div["detail"]


def test_the_output_verdict_gives_the_mean_logit_with_its_band_and_sign():
    rows = instability.unstable(ladder(noise=0.02))  # mean output logit -5 at every size
    out = forecast.forecast(rows, 1e9, 1e-2, 1e-8, 1e-4, 1e-4, "off")["verdicts"][1]
    low, high = out["detail"].split("mean output logit ")[1].split("(80% interval ")[1].split(")")[0].split("–")
    assert float(low) < -5.0 < float(high) < 0


def test_the_ladder_trains_on_the_targets_corpus_and_tokenizer_and_odd_sizes_are_warned(make_raw, tmp_path):
    """Reported: the ladder trained on the scale's corpus and byte vocab whatever the target said."""
    corpus = tmp_path / "mine.txt"
    corpus.write_text("my own text, not the King James Bible. " * 200)
    raw = make_raw(model={"qk_layernorm": "off", "width": 1024, "depth": 12, "heads": 16, "vocab": "bpe:300"},
                   data={"corpus": str(corpus)})
    raw.pop("members")
    target = config.from_dict(raw)
    spec = forecast.ladder_spec(target, "micro")
    assert spec["base"]["data"]["corpus"] == str(corpus) and spec["base"]["model"]["vocab"] == "bpe:300"
    assert all(g.cfg.data.corpus == str(corpus) and g.cfg.model.vocab == "bpe:300" for g in sweep.expand(spec))
    assert forecast.size_warnings(target, spec) == []
    small = config.from_dict({**raw, "model": {**raw["model"], "width": 32, "depth": 1, "heads": 2}})
    assert "no larger than the ladder" in forecast.size_warnings(small, forecast.ladder_spec(small, "micro"))[0]
    huge = config.from_dict({**raw, "model": {**raw["model"], "width": 1 << 20, "depth": 2000, "heads": 16}})
    assert "beyond any model trained" in forecast.size_warnings(huge, forecast.ladder_spec(huge, "micro"))[0]
