import json
import math

import polars as pl
import yaml
import pytest

from proxyscale.science import claims
from proxyscale.runs import sweep
from proxyscale.cli import main
from proxyscale.core.config import ConfigError


def spec(make_raw, **over):
    base = make_raw(train={"steps": 6, "eval_every": 3})
    base.pop("members")
    s = {"name": "t", "base": base, "sizes": [{"width": 32, "depth": 1, "heads": 1}, {"width": 64, "depth": 1, "heads": 2}],
         "axes": {"model.qk_layernorm": ["head", "off"]}, "members": {"lr": [1e-3, 1e-2]}}
    s.update(over)
    return s


def test_expansion_and_stable_ids(make_raw):
    groups = sweep.expand(spec(make_raw))
    assert len(groups) == 4 and all(len(g.cfg.member_list()) == 2 for g in groups)
    assert len({g.id for g in groups}) == 4
    assert [g.id for g in sweep.expand(spec(make_raw))] == [g.id for g in groups]  # stable
    s2 = spec(make_raw)
    s2["base"]["train"]["threads"] = 2  # threads do not change results, so not the id
    assert [g.id for g in sweep.expand(s2)] == [g.id for g in groups]
    s3 = spec(make_raw)
    s3["base"]["optim"]["warmup"] = 4
    assert not {g.id for g in sweep.expand(s3)} & {g.id for g in groups}
    assert groups[0].labels == {"size": "d32-L1 (12k)", "model.qk_layernorm": "head"}
    no_sizes = sweep.expand({k: v for k, v in spec(make_raw).items() if k != "sizes"})
    assert no_sizes[0].labels["size"] == "d32-L2 (25k)"  # the base model's size, even with no sizes axis


@pytest.mark.parametrize("over, field", [
    ({"axes": {"model.qk_layrnorm": ["head"]}}, "model.qk_layrnorm"),
    ({"axes": {"nonsense": [1]}}, "axes.nonsense"),
    ({"axes": {"model.qk_layernorm": []}}, "axes.model.qk_layernorm"),
    ({"members": {"lr": []}}, "members.lr"),
    ({"sizes": "huge"}, "sizes"),
    ({"grid": {}}, "grid"),
])
def test_bad_specs(make_raw, over, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        sweep.expand(spec(make_raw, **over))


def test_bad_spec_and_unknown_experiment_cli(tmp_path, make_raw, capsys):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec(make_raw, axes={"model.bogus": [1]})))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.bogus" in err
    assert not (tmp_path / "o").exists()
    assert main(["reproduce", "fig99", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "fig99" in err and "fig1" in err and len(err.splitlines()) == 1


def test_interrupted_sweep_redoes_only_unfinished_groups(tmp_path, make_raw, monkeypatch):
    s = spec(make_raw)
    full = sweep.run_sweep(s, tmp_path / "full")
    calls = []
    real = sweep.train_job

    def flaky(job):
        calls.append(job[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(sweep, "train_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(s, tmp_path / "resumed")
    calls.clear()
    monkeypatch.setattr(sweep, "train_job", lambda job: (calls.append(job[0]), real(job))[1])
    resumed = sweep.run_sweep(s, tmp_path / "resumed")
    assert len(calls) == 2  # the two groups that had not finished
    cols = [c for c in full.columns if c != "tokens_per_s"]
    assert full.select(cols).sort("group", "member").equals(resumed.select(cols).sort("group", "member"))
    assert full.height == 8 and {"l0", "final_eval_loss", "diverged", "attn_logit_max/0", "label.size"} <= set(full.columns)


def synthetic_results(off_losses):
    rows = []
    lrs = [1e-3, 1e-2, 1e-1]
    for size, n in (("s", 1e4), ("m", 1e5)):
        for qk, losses in (("head", [3.0, 2.5, 2.6]), ("off", off_losses)):
            for lr, loss in zip(lrs, losses):
                rows.append({"group": f"{size}{qk}", "label.size": size, "label.model.qk_layernorm": qk, "n_params": int(n),
                             "member.lr": lr, "member.independent_weight_decay": True, "l0": 5.5,
                             "final_eval_loss": loss, "diverged": not math.isfinite(loss)})
    return pl.DataFrame(rows)


def test_claim_check_both_verdicts():
    claim = [{"text": "qk-LN lowers sensitivity", "check": "sensitivity_lower",
              "args": {"axis": "model.qk_layernorm", "better": "head", "worse": "off"}}]
    yes = claims.evaluate(claim, synthetic_results([3.0, 2.6, float("nan")]))[0]
    assert yes.reproduced and "0.200 vs 1.100" in yes.detail
    no = claims.evaluate(claim, synthetic_results([2.9, 2.5, 2.5]))[0]
    assert not no.reproduced and no.label == "not reproduced"


def test_report_builds_from_a_tiny_reproduction(tmp_path, monkeypatch):
    from proxyscale.jobs import reproduce

    exp = reproduce.load("fig2")
    tiny = exp["scales"]["micro"]["spec"]
    tiny["base"]["train"].update({"steps": 6, "eval_every": 3, "precision": "fp32", "threads": 1})
    tiny["base"]["data"].update({"corpus": "synthetic", "seq_len": 32, "batch_size": 2, "eval_batches": 1})
    tiny["sizes"] = [{"width": 32, "depth": 1, "heads": 1}]
    monkeypatch.setattr(reproduce, "load", lambda name: exp)
    assert main(["reproduce", "fig2", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 and "reproduce fig2 --scale micro" in page
    assert "reproduced" in page and "http" not in page.replace("http-equiv", "")  # self-contained
    assert (tmp_path / "fig2" / "figures" / "fig2_curves.svg").exists()
    assert (tmp_path / "fig2" / "figures" / "fig2_loss_curves.png").exists()  # every experiment: loss vs step
    rec = json.loads((tmp_path / "fig2" / "verdicts.json").read_text())
    for row in rec["group_rows"]:  # each group linked to its folder, with what ran it
        assert f"href='groups/{row['group']}/'" in page and (tmp_path / "groups" / row["group"] / "DONE").exists()
        assert row["precision"] == "fp32" and row["device"] == "cpu" and row["threads"] == 1
    assert "Ran in fp32 on cpu" in page and "budget" not in page


def test_parts_paired_axes_and_named_size_sets(make_raw):
    base = make_raw()
    base.pop("members")
    spec = {"base": base, "sizes": {"depth": [{"width": 32, "depth": 1, "heads": 1}, {"width": 32, "depth": 2, "heads": 1}],
                                    "width": [{"width": 32, "depth": 1, "heads": 1}]},
            "parts": [{"labels": {"decay": "independent"}, "members": {"lr": [1e-3, 1e-2]}},
                      {"labels": {"decay": "coupled"}, "base": {"optim": {"independent_weight_decay": False, "weight_decay": 0.1}},
                       "members": {"lr": [1e-4, 1e-3, 1e-2]}}]}
    groups = sweep.expand(spec)
    # 3 (set, size) pairs x 2 parts; the depth-1 size appears in both sets with different labels but one config
    assert len(groups) == 4
    coupled = [g for g in groups if g.labels["decay"] == "coupled"]
    assert all(not g.cfg.optim.independent_weight_decay and g.cfg.optim.weight_decay == 0.1 for g in coupled)
    assert all(len(g.cfg.member_list()) == 3 for g in coupled)
    assert {g.labels["scaling"] for g in groups} == {"depth"}  # first label wins for a shared config
    paired = sweep.expand({"base": base, "axes": {"optim.independent_weight_decay,optim.weight_decay": [[True, 1e-4], [False, 0.1]]}})
    assert [(g.cfg.optim.independent_weight_decay, g.cfg.optim.weight_decay) for g in paired] == [(True, 1e-4), (False, 0.1)]
    with pytest.raises(ConfigError, match="paired axis"):
        sweep.expand({"base": base, "axes": {"optim.eps,optim.beta2": [[1e-8]]}})
    with pytest.raises(ConfigError, match=r"parts\[0\]\.bogus"):
        sweep.expand({"base": base, "parts": [{"bogus": 1}]})


def test_trend_and_prediction_checks_on_synthetic_results():
    rows = []
    # logit = 10 * (N/1e4)^1.5 * (lr/1e-2); the largest size is held out of the fit
    for n in (1e4, 3e4, 1e5, 3e5):
        for lr in (1e-2, 1e-1):
            logit = 10 * (n / 1e4) ** 1.5 * (lr / 1e-2)
            loss = 2.0 + (1.0 if logit > 1e3 else 0.0)
            for qk in ("head", "off"):  # the qk-layernorm runs are the reference for "unstable"
                rows.append({"group": str(n), "label.size": f"n{int(n)}", "member.lr": lr,
                             "n_params": int(n) + (64 if qk == "head" else 0),  # qk-LN scales add parameters
                             "label.model.qk_layernorm": qk, "l0": 5.5, "diverged": False,
                             "final_eval_loss": loss if qk == "off" else 2.0,
                             "attn_logit_max/0@step": logit if qk == "off" else 5.0,
                             "grad_rms/layers.0.w1": 1e-3 / n**0.5 / lr})
    results = pl.DataFrame(rows)
    ok, detail = claims.CHECKS["trend"](results, column="grad_rms/layers.0.w1", along="n_params", sign=-1, per="member.lr")
    assert claims.state_of(ok) == "reproduced" and "slope -0.5" in detail
    ok, _ = claims.CHECKS["trend"](results, column="grad_rms/layers.0.w1", along="n_params", sign=1, per="member.lr")
    assert claims.state_of(ok) == "not reproduced"
    ok, detail = claims.CHECKS["prediction"](results, fit_sizes=3, degree=1)
    ok = claims.state_of(ok) == "reproduced"
    table = claims.prediction_table(results, fit_sizes=3, degree=1)
    assert table["held_out_n"] == 300000 and table["threshold"] is not None
    assert all(abs(r["predicted"] / r["measured"] - 1) < 1e-6 for r in table["rows"])  # exact power law
    assert ok, detail
    off_fit = results.with_columns(
        pl.when(pl.col("n_params") == 300000).then(pl.col("attn_logit_max/0@step") * 10)
        .otherwise(pl.col("attn_logit_max/0@step")).alias("attn_logit_max/0@step"))
    state, detail = claims.CHECKS["prediction"](off_fit, fit_sizes=3, degree=1)
    assert state == "reproduced", detail  # the paper's claim is the calls, and the losses (so the calls) are unchanged
    ok, detail = claims.CHECKS["prediction_close"](off_fit, fit_sizes=3, degree=1)
    assert not ok and "within 3x at 0 of 2" in detail, detail  # 10x off: the number is not close
    ok, _ = claims.CHECKS["prediction_close"](results, fit_sizes=3, degree=1)
    assert ok
    flipped = off_fit.with_columns(  # the held-out size stable at both LRs (its losses those of the reference)
        pl.when(pl.col("n_params") == 300000).then(2.0).otherwise(pl.col("final_eval_loss")).alias("final_eval_loss"))
    state, detail = claims.CHECKS["prediction"](flipped, fit_sizes=3, degree=1)
    assert state == "not reproduced", detail


def test_workers_give_the_same_results_as_sequential(tmp_path, make_raw):
    s = spec(make_raw, axes={"model.qk_layernorm": ["head"]})
    seq = sweep.run_sweep(s, tmp_path / "seq")
    par = sweep.run_sweep(s, tmp_path / "par", workers=2)
    cols = [c for c in seq.columns if c != "tokens_per_s"]
    assert seq.select(cols).sort("group", "member").equals(par.select(cols).sort("group", "member"))


def test_two_sweeps_over_one_pool_cooperate(make_raw, tmp_path):
    """Issue 15 §10: two ``proxyscale sweep`` processes of one spec into one --out (cluster workers over one pool)
    both finish with the same results, and each group is trained by exactly one of them."""
    import json
    import os
    import subprocess
    import sys

    base = make_raw(train={"steps": 200, "eval_every": 100})
    base.pop("members")
    spec = {"name": "t", "sizes": [{"width": 32, "depth": 1, "heads": 1}, {"width": 32, "depth": 2, "heads": 2}],
            "axes": {"model.qk_layernorm": ["head", "off"]}, "members": {"lr": [1e-3, 1e-2]}, "base": base}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "proxyscale", "sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-400:] for o in outs]
    trained = [int(next(line for line in o[0].splitlines() if "trained here" in line).split("trained here: ")[1]
                   .split()[0]) for o in outs]
    assert sum(trained) == 4, (trained, [o[0] for o in outs])  # each of the 4 groups once, by one of the two
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["groups"] == 4
    results = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert results.height == 8 and results["final_eval_loss"].is_finite().all()
