import math

import polars as pl
import pytest

from proxyscale import claims, sweep
from proxyscale.cli import main
from proxyscale.config import ConfigError


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
    real = sweep._run_one

    def flaky(job):
        calls.append(job[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(sweep, "_run_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(s, tmp_path / "resumed")
    calls.clear()
    monkeypatch.setattr(sweep, "_run_one", lambda job: (calls.append(job[0]), real(job))[1])
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
    from proxyscale import reproduce

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
