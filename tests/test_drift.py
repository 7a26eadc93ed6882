"""The output-logit drift law (issue 23, ``drift``): the integrated LR, the law and its backtest, the rounding damage,
the claim check, the forecast's verdict from the law, and the monitor's alarm with its projected step."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch

from proxyscale.science import claims, drift
from proxyscale.core import config, instability
from proxyscale.jobs import forecast
from proxyscale.monitor.watch import Alarms
from proxyscale.engine.optim import lr_schedule
from proxyscale.core.seeds import NOISE, NOT_REPRODUCED, REPRODUCED
from proxyscale.engine.train import GroupRun
from tests.conftest import tiny
from tests.test_engine import member_frame


# -- the clock ----------------------------------------------------------------------------------------------------------

def test_the_logged_lr_integral_is_the_sum_of_the_schedule_so_far(tmp_path):
    """``lr_integral`` at step s is Σ_{t≤s} η_t of each member's own schedule, and at the last step it equals
    ``drift.schedule_integral`` (the clock a forecast reads for a run not trained yet)."""
    raw = tiny(members={"lr": [1e-2, 1e-1]}, train={"log_every": 1})
    cfg = config.from_dict(raw)
    run_ = GroupRun(cfg, tmp_path / "g")
    run_.run()
    frame, steps, o = run_.log.frame(), cfg.train.steps, cfg.optim
    for k, m in enumerate(cfg.member_list()):
        f = member_frame(frame, k).filter(pl.col("lr_integral").is_not_null()).sort("step")
        by_hand = [math.fsum(lr_schedule(t, m.lr, m.warmup, steps, o.min_lr) for t in range(s + 1))
                   for s in f["step"].to_list()]
        assert f["lr_integral"].to_list() == pytest.approx(by_hand, rel=1e-5)
        assert f["lr_integral"][-1] == pytest.approx(drift.schedule_integral(m.lr, m.warmup, steps, o.min_lr),
                                                     rel=1e-5)


# -- the law ------------------------------------------------------------------------------------------------------------

def drifting(b=0.8, c=1.5, noise=0.05, lrs=(1e-3, 1e-2, 1e-1, 1.0), steps=300, column="mu_norm", extra=None):
    """A results table whose ``column`` follows c·I^b, I = LR × steps, with a ±``noise`` wobble."""
    rows = []
    for j, lr in enumerate(lrs):
        for k, size in enumerate(("s0", "s1", "s2", "s3")):
            integral = lr * steps
            wobble = 1 + noise * (-1) ** (j + k)
            rows.append({"label.size": size, "n_params": 10 ** (4 + k), "member.lr": lr, "l0": 5.5,
                         "diverged": False, "final_eval_loss": 3.0, "lr_integral": integral,
                         column: c * integral**b * wobble, **(extra or {})})
    return pl.DataFrame(rows)


def test_the_law_recovers_the_exponent_and_its_interval_holds_it():
    fitted = drift.law(drift.points(drifting(b=0.8, c=1.5)))
    lo, hi = drift.exponent_interval(fitted["fit"])
    assert fitted["ok"] and fitted["exponent"] == pytest.approx(0.8, abs=0.02) and lo < 0.8 < hi
    assert fitted["coefficient"] == pytest.approx(1.5, rel=0.1)
    p = drift.project(fitted, 3000.0)
    assert p["low"] < 1.5 * 3000**0.8 < p["high"] and p["extrapolation"] == pytest.approx(10.0)


def test_the_law_says_why_it_cannot_be_fitted():
    assert not drift.law([(1.0, 1.0), (2.0, 2.0)])["ok"]
    same = drift.law([(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)])
    assert not same["ok"] and "same integrated LR" in same["why"]
    diverged = drifting().with_columns(pl.lit(True).alias("diverged"))
    assert drift.points(diverged) == []  # a diverged run is not a point of the law


def test_the_law_backtest_holds_out_the_largest_integrated_lr():
    bt = drift.backtest(drifting(b=0.8, noise=0.05))
    assert bt["ok"] and bt["cases"] == 4 and bt["held_out_integral"] == pytest.approx(300.0)
    assert bt["extrapolation"] == pytest.approx(10.0) and bt["inside"] == 4
    bent = drifting(b=0.8, noise=0.0).with_columns(  # the held-out decade far above the line: outside the band
        pl.when(pl.col("member.lr") == 1.0).then(pl.col("mu_norm") * 10).otherwise(pl.col("mu_norm")).alias("mu_norm"))
    bent = bent.with_columns(pl.col("mu_norm") * (1 + 0.01 * pl.col("n_params").log10()))
    assert drift.backtest(bent)["inside"] == 0


# -- the damage ---------------------------------------------------------------------------------------------------------

def test_rounding_loss_is_zero_in_float32_and_grows_with_the_shift_in_bf16():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 512, 64, generator=g) * 3
    targets = torch.randint(0, 64, (512,), generator=g)
    assert drift.rounding_loss(logits, targets, 0.0, torch.float32).abs().max() == 0
    costs = [drift.rounding_loss(logits, targets, m, torch.bfloat16).abs().mean().item() for m in (0, 16, 256, 2048)]
    assert costs[0] < costs[1] < costs[2] < costs[3] and costs[3] > 0.1
    # by hand: every logit rounded to bf16 at shift 256 (spacing 2), then the float32 cross-entropy
    z = (logits[0] + 256).to(torch.bfloat16).float()
    by_hand = (torch.logsumexp(z, -1) - z.gather(-1, targets.view(-1, 1)).squeeze(-1)).mean() - (
        torch.logsumexp(logits[0], -1) - logits[0].gather(-1, targets.view(-1, 1)).squeeze(-1)).mean()
    assert drift.rounding_loss(logits, targets, 256.0, torch.bfloat16)[0].item() == pytest.approx(by_hand.item(),
                                                                                                  rel=1e-5)


def test_precision_damage_of_a_trained_group_is_zero_at_no_shift_in_float32(tmp_path):
    run_ = GroupRun(config.from_dict(tiny(members={"lr": [1e-2, 1e-1]})), tmp_path / "g")
    run_.run()
    rows = drift.precision_damage(run_, [0.0, 1024.0], ("bf16", "fp16"))
    assert len(rows) == 2 * 2 * 2
    far = [r["damage"] for r in rows if r["shift"] == 1024.0 and r["precision"] == "bf16"]
    near = [r["damage"] for r in rows if r["shift"] == 0.0 and r["precision"] == "fp16"]
    assert min(abs(d) for d in far) > max(abs(d) for d in near)
    assert drift.damage_at("bf16") == 64.0 and drift.damage_at("fp8-unknown") == drift.DAMAGE_AT["fp32"]


# -- the claim ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("b, noise, kwargs, state", [
    (0.9, 0.02, {"between": [0.75, 1.25]}, REPRODUCED),
    (0.3, 0.02, {"between": [0.75, 1.25]}, NOT_REPRODUCED),
    (0.75, 0.6, {"between": [0.75, 1.25]}, NOISE),
    (0.5, 0.02, {"above": 0.0}, REPRODUCED),
    (-0.5, 0.02, {"above": 0.0}, NOT_REPRODUCED),
])
def test_law_exponent_gives_each_verdict(b, noise, kwargs, state):
    out, detail = claims.law_exponent(drifting(b=b, noise=noise), column="mu_norm", **kwargs)
    assert out == state, detail
    assert "80% interval" in detail


def test_law_exponent_without_points_is_not_reproduced():
    out, detail = claims.law_exponent(drifting().drop("lr_integral"), column="mu_norm", above=0.0)
    assert out == NOT_REPRODUCED and "a law needs 3" in detail


# -- the forecast -------------------------------------------------------------------------------------------------------

def ladder_with_drift(b: float, c: float = 1.0) -> pl.DataFrame:
    """The forecast's synthetic ladder (tests.test_forecast) with a mean logit that follows −c·I^b."""
    from tests.test_forecast import ladder

    rows = ladder(noise=0.02)
    i = pl.col("member.lr") * 300
    wobble = 1 + 0.03 * ((pl.col("n_params").log10() + pl.col("member.lr").log10()) % 2 * 2 - 1)
    return instability.unstable(rows.with_columns(i.alias("lr_integral"),
                                                  (-c * i.pow(b) * wobble).alias("output_logit_mean"),
                                                  (2 * c * i.pow(b) * wobble).alias("mu_norm")))


def test_the_output_verdict_reads_the_drift_law_at_the_targets_clock():
    """With drift (b = 1): the target's integrated LR 3e4 puts the mean logit far past bf16's range: likely, with the
    projected step's numbers and the fixes; in fp32 the same law is unlikely; without drift (b ≈ 0) unlikely."""
    clock = {"integral": 3.0e4, "precision": "bf16", "precision_assumed": False}
    rows = ladder_with_drift(b=1.0)
    out = forecast.forecast(rows, 1e9, 1e-2, 1e-8, 0.0, 0.0, "off", clock=clock)
    v = out["verdicts"][1]
    assert v["verdict"] == "likely" and v["value"] == pytest.approx(3.0e4, rel=0.3)
    assert "μ-centering" in v["detail"] and "beyond the ladder's largest" in v["detail"]
    assert out["drift"]["output_logit_mean"]["exponent"] == pytest.approx(1.0, abs=0.05)
    fp32 = forecast.forecast(rows, 1e9, 1e-2, 1e-8, 0.0, 0.0, "off", clock={**clock, "precision": "fp32"})
    assert fp32["verdicts"][1]["verdict"] == "unlikely"
    flat = forecast.forecast(ladder_with_drift(b=0.01, c=5.0), 1e9, 1e-2, 1e-8, 0.0, 0.0, "off", clock=clock)
    assert flat["verdicts"][1]["verdict"] == "unlikely"
    centred = forecast.forecast(rows, 1e9, 1e-2, 1e-8, 0.0, 0.0, "off", {"mu_centering": True}, clock)
    assert centred["verdicts"][1]["verdict"] == "unlikely" and "μ-centering keeps μ at 0" in \
        centred["verdicts"][1]["detail"]


def test_the_drift_clock_of_a_target_is_its_schedule_integral():
    target = config.from_dict({**tiny(), "members": None, "train": {"steps": 1000, "precision": "auto"},
                               "optim": {"lr": 0.1, "warmup": 100}})
    clock = forecast.drift_clock(target)
    assert clock["integral"] == pytest.approx(drift.schedule_integral(0.1, 100, 1000, target.optim.min_lr))
    assert clock["precision"] == "bf16" and clock["precision_assumed"]
    assert 45 < clock["integral"] < 55  # warm-up 100 at ~half the peak, then a cosine's mean of half the peak


# -- the monitor --------------------------------------------------------------------------------------------------------

def test_the_monitor_alarm_names_the_projected_step_where_bf16_loses_the_loss():
    """A mean logit growing as I^1 at LR 0.1 a step reaches bf16's limit (DAMAGE_AT) at a step the law predicts; the
    alarm fires with that step before the run gets there. A flat mean logit raises nothing."""
    limit = drift.DAMAGE_AT["bf16"]
    rules = Alarms(precision="bf16", total_steps=10_000)
    fired = []
    for s in range(0, 400, 10):
        integral = 0.1 * (s + 1)
        fired += rules._drift(s, {"output_logit_mean": -0.5 * integral, "lr_integral": integral})
    expected = limit / 0.5 / 0.1  # the step where 0.5·I = limit
    assert fired and fired[0].step < expected
    assert fired[0].value == pytest.approx(expected, rel=0.05) and "near step" in fired[0].message
    calm = Alarms(precision="bf16", total_steps=10_000)
    quiet = []
    for s in range(0, 400, 10):
        quiet += calm._drift(s, {"output_logit_mean": -3.0, "lr_integral": 0.1 * (s + 1)})
    assert quiet == []
    fp32 = Alarms(precision="fp32", total_steps=10_000)
    assert not [a for s in range(0, 400, 10)
                for a in fp32._drift(s, {"output_logit_mean": -0.5 * 0.1 * (s + 1), "lr_integral": 0.1 * (s + 1)})]


def test_the_monitor_records_the_integrated_lr_of_the_users_optimizer(tmp_path):
    from proxyscale import monitor

    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    mon = monitor.attach(model, opt, every=1, out=tmp_path / "mon")
    for _ in range(4):
        x = torch.randint(0, 16, (2, 5))
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten())
        loss.backward()
        mon.step(loss, logits)
        opt.step()
        opt.zero_grad()
    frame = pl.read_parquet(mon.close())
    got = frame.filter(pl.col("lr_integral").is_not_null()).sort("step")["lr_integral"].to_list()
    assert got == pytest.approx([0.05, 0.10, 0.15, 0.20])


# -- the law along a run ------------------------------------------------------------------------------------------------

def trajectory(b: float, c: float = 2.0, lr: float = 0.1, steps: int = 400) -> pl.DataFrame:
    """One run's metrics: a constant LR, so I = lr·(step + 1), and a mean logit −c·I^b."""
    s = list(range(steps))
    i = [lr * (k + 1) for k in s]
    return pl.DataFrame({"step": s, "lr_integral": i, "output_logit_mean": [-c * x**b for x in i],
                         "mu_norm": [3 * c * x**b for x in i]})


def test_the_trajectory_law_follows_a_run_and_thins_it():
    pts = drift.trajectory_points([trajectory(0.4), trajectory(0.4, lr=0.3)])
    assert len(pts) <= 2 * drift.TRAJECTORY_POINTS
    assert min(x for x, _ in pts) >= 0.1 * 80  # the first fifth of the steps is left out
    fitted = drift.law(pts)
    assert fitted["exponent"] == pytest.approx(0.4, abs=1e-6) and fitted["coefficient"] == pytest.approx(2.0, rel=1e-5)
    bt = drift.trajectory_backtest([trajectory(0.4), trajectory(0.4, lr=0.3)])
    assert bt["ok"] and bt["cases"] == 2 and 1.5 < bt["extrapolation"] < 2.5  # half of log I: I_end / √(I_end/I_0)
    assert all(r["predicted"] == pytest.approx(r["measured"], rel=1e-4) for r in bt["rows"])


def test_the_forecast_reads_the_law_along_the_runs_at_the_target_lr():
    """The same ladder whose tail means grow as I^1 across LRs, but whose runs at the target LR grow as I^0.05 along
    their own steps: with the curves the verdict follows the runs (unlikely), and says so."""
    rows = ladder_with_drift(b=1.0)
    rows = rows.with_columns(pl.Series("group", [f"g{i}" for i in range(rows.height)]), pl.lit(0).alias("member"))
    curves = {(g, 0): trajectory(0.05, c=5.0) for g in rows["group"]}
    clock = {"integral": 3.0e4, "precision": "bf16", "precision_assumed": False}
    along = forecast.forecast(rows, 1e9, 1e-2, 1e-8, 0.0, 0.0, "off", clock=clock, curves=curves)
    assert along["verdicts"][1]["verdict"] == "unlikely" and "along the" in along["drift"]["basis"]
    across = forecast.forecast(rows, 1e9, 1e-2, 1e-8, 0.0, 0.0, "off", clock=clock)
    assert across["verdicts"][1]["verdict"] == "likely" and across["drift"]["basis"].startswith("across")


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "1000"])
def test_a_bad_total_steps_is_refused_before_the_monitor_touches_anything(tmp_path, bad):
    from proxyscale import monitor

    model = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="total_steps: the run's length"):
        monitor.attach(model, torch.optim.AdamW(model.parameters()), out=tmp_path / "mon", total_steps=bad)
    assert not (tmp_path / "mon").exists() and not model._forward_hooks
