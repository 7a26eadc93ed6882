"""Every experiment file is valid at every scale: its spec expands, its checks and figures exist and take its args."""

import pytest

from proxyscale import experiments
from proxyscale.outputs import plots
from proxyscale.jobs import reproduce
from proxyscale.runs import sweep
from proxyscale.core.config import ConfigError

KINDS = {"lr_vs_loss", "sensitivity_vs_n", "over_steps", "metric_vs", "prediction", "loss_curves",
         "sensitivity_by_variant", "drift_law"}
PAPER_ITEMS = {"fig1", "fig2", "fig3", "fig5", "fig6", "fig7", "fig8", "fig9", "fig10", "fig11", "fig12",
               "e1", "e5", "e7", "e8", "e9", "e10", "e11", "e14", "c1"}


def test_every_paper_experiment_is_listed():
    assert PAPER_ITEMS <= set(reproduce.names())


@pytest.mark.parametrize("name", reproduce.names())
def test_experiment_file_is_valid(name):
    exp = reproduce.load(name)  # validates every figure's and claim's arguments against its function
    assert exp["name"] == name and exp["title"] and exp["paper"]
    assert set(exp["scales"]) == set(reproduce.SCALES)
    for scale, body in exp["scales"].items():
        assert body["why"], (name, scale)
        groups = sweep.expand({"name": name, **body["spec"]})
        assert groups, (name, scale)
        if scale == "micro":
            for g in groups:
                assert g.cfg.model.width <= 256 and g.cfg.train.steps <= 600, (name, g.labels)
        if scale == "laptop":  # the headline claims on 2 cores: micro's shapes, 5x its steps
            for g in groups:
                assert g.cfg.model.width <= 256 and g.cfg.data.batch_size * g.cfg.data.seq_len <= 16 * 64, (name, g.labels)
                assert g.cfg.train.steps >= 750, (name, g.labels)  # e7's shortest is half the laptop length
        if scale == "mini":  # mini goes after the scaling claims: far more tokens per run than micro
            for g in groups:
                tokens = g.cfg.train.steps * g.cfg.data.batch_size * g.cfg.data.seq_len
                assert tokens >= 40 * 300 * 8 * 64, (name, g.labels)  # e7, e9 halve length or batch
    for fig in exp["figures"]:
        assert fig["kind"] in KINDS
    assert exp["claims"]


def test_mini_has_a_held_out_size_for_fig9():
    spec = reproduce.load("fig9")["scales"]["mini"]["spec"]
    assert len({g.labels["size"] for g in sweep.expand(spec)}) >= 5


def test_figure_registry_rejects_bad_entries():
    assert set(plots.FIGURES) == KINDS
    plots.validate({"kind": "lr_vs_loss", "name": "x", "panels": "model.qk_layernorm"}, "f")
    with pytest.raises(ConfigError, match=r"f\.kind: unknown figure 'lr_vs_los'; valid: lr_vs_loss"):
        plots.validate({"kind": "lr_vs_los", "name": "x"}, "f")
    with pytest.raises(ConfigError, match="f.panel: not an argument of lr_vs_loss .did you mean 'panels'.*"):
        plots.validate({"kind": "lr_vs_loss", "name": "x", "panel": "model.qk_layernorm"}, "f")
    with pytest.raises(ConfigError, match="f: .*missing a required argument: 'lines'"):
        plots.validate({"kind": "sensitivity_vs_n", "name": "x"}, "f")


def test_experiment_with_a_bad_figure_or_claim_fails_to_load(tmp_path, monkeypatch):
    import shutil

    for f in ("scales.yaml", "fig1.yaml"):
        shutil.copy(experiments.FOLDER / f, tmp_path / f)
    monkeypatch.setattr(experiments, "FOLDER", tmp_path)
    monkeypatch.setattr(experiments, "SCALES_FILE", tmp_path / "scales.yaml")
    assert reproduce.load("fig1")["scales"]["micro"]["spec"]["members"]["lr"][0] == 3.0e-4  # the named grid
    text = (tmp_path / "fig1.yaml").read_text()
    (tmp_path / "fig1.yaml").write_text(text.replace("check: sensitivity_lower", "check: sensitivity_lowr"))
    with pytest.raises(ConfigError, match=r"fig1\.claims\[0\]\.check: unknown check 'sensitivity_lowr'"):
        reproduce.load("fig1")
    (tmp_path / "fig1.yaml").write_text(text.replace("better: head", "bettr: head"))
    with pytest.raises(ConfigError, match=r"fig1\.claims\[0\]\.args\.bettr: not an argument of sensitivity_lower "
                       r"\(did you mean 'better'\?\)"):
        reproduce.load("fig1")
    (tmp_path / "fig1.yaml").write_text(text.replace("members: {lr: paper}", "members: {lr: papr}"))
    with pytest.raises(ConfigError, match=r"members\.lr: unknown grid 'papr'; valid: paper"):
        reproduce.load("fig1")


@pytest.mark.parametrize("scale", ["micro", "laptop", "mini"])
def test_experiments_share_fig1s_groups(scale):
    """The pool trains a group once: fig9 needs all of fig1's groups, and figs 8, 11 and E.14 some of them."""
    def ids(name):
        return {g.id for g in sweep.expand(reproduce.sweep_spec(reproduce.load(name), scale))}

    fig1 = ids("fig1")
    assert fig1 <= ids("fig9")
    for name in ("fig8", "fig11", "e14"):
        assert ids(name) & fig1, name


@pytest.mark.parametrize("scale", reproduce.SCALES)
@pytest.mark.parametrize("name", reproduce.names())
def test_every_claim_matches_planned_runs_at_every_scale(name, scale):
    """A claim names only values its experiment trains at that scale (issue 14 §3): resolved against the plan,
    so a claim that would match no rows is found by --plan, before anything trains."""
    exp = reproduce.load(name)
    claims = reproduce.resolved_claims(exp, scale, sweep.expand(reproduce.sweep_spec(exp, scale)))
    assert len(claims) == len(exp["claims"])
    for c in claims:
        assert not any(isinstance(v, dict) and "role" in v for v in c["args"].values()), c


@pytest.mark.parametrize("scale, longest, shortest", [("micro", 75, 1), ("laptop", 375, 5), ("mini", 750, 3)])
def test_fig5_compares_the_longest_and_shortest_warmup_of_each_scale(scale, longest, shortest):
    exp = reproduce.load("fig5")
    claims = reproduce.resolved_claims(exp, scale, sweep.expand(reproduce.sweep_spec(exp, scale)))
    assert [(c["args"]["better"], c["args"]["worse"]) for c in claims] == [(longest, shortest)] * 2


def test_a_claim_that_matches_no_run_is_an_error_naming_claim_and_scale():
    exp = reproduce.load("fig5")
    exp = {**exp, "claims": [{**exp["claims"][0], "args": {"axis": "member.warmup", "better": 75, "worse": 1}}]}
    groups = sweep.expand(reproduce.sweep_spec(exp, "mini"))
    with pytest.raises(ConfigError, match=r"fig5\.claims\[0\] at --scale mini.*better=75 matches no planned run.*3, 150, 750"):
        reproduce.resolved_claims(exp, "mini", groups)
    assert reproduce.resolved_claims(exp, "micro", sweep.expand(reproduce.sweep_spec(exp, "micro")))


def test_a_claim_lr_off_the_grid_and_a_bad_role_are_errors():
    from proxyscale.science import claims
    from proxyscale.core import table

    planned = table.planned(sweep.expand(reproduce.sweep_spec(reproduce.load("fig2"), "micro")))
    base = {"text": "t", "check": "ratio_at_least",
            "args": {"column": "attn_logit_max/0", "axis": "model.qk_layernorm", "high": "off", "low": "head", "factor": 10}}
    with pytest.raises(ConfigError, match="lr=0.3 is not on the planned LR grid"):
        claims.resolve({**base, "args": {**base["args"], "lr": 0.3}}, planned, "x")
    with pytest.raises(ConfigError, match="by role"):
        claims.resolve({**base, "args": {**base["args"], "high": {"role": "longest"}}}, planned, "x")
    with pytest.raises(ConfigError, match="axis 'optim.eps' is not swept"):
        claims.resolve({**base, "args": {**base["args"], "axis": "optim.eps"}}, planned, "x")
    assert claims.resolve({**base, "args": {**base["args"], "lr": 0.1}}, planned, "x")["args"]["lr"] == 0.1


def test_laptop_scale_plan_fig1_and_fig6_share_groups_and_plan_without_training(tmp_path, capsys):
    """The laptop scale (issue 14): Fig 1 over micro's three sizes at 1,500 steps, fp32 on a CPU; Fig 6's
    independent-decay groups are Fig 1's; --plan prints it and writes nothing."""
    from proxyscale.cli import main
    from proxyscale.engine.device import resolve_precision

    groups = sweep.expand(reproduce.sweep_spec(reproduce.load("fig1"), "laptop"))
    assert len(groups) == 6 and {g.cfg.train.steps for g in groups} == {1500}
    assert {g.cfg.optim.warmup for g in groups} == {150}
    assert {resolve_precision("auto", __import__("torch").device("cpu"), g.cfg.model.width,
                              g.cfg.data.batch_size * g.cfg.data.seq_len) for g in groups} == {"fp32"}
    fig6 = {g.id for g in sweep.expand(reproduce.sweep_spec(reproduce.load("fig6"), "laptop"))}
    assert len(fig6 & {g.id for g in groups}) == 3
    assert main(["reproduce", "fig1", "--scale", "laptop", "--out", str(tmp_path / "r"), "--plan"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    # three init seeds on the member axis (issue 22): 6 groups of 7 LRs x 3 seeds
    assert {len(g.cfg.member_list()) for g in groups} == {21}
    assert "6 groups (0 done, 0 resuming, 6 new), 126 runs" in out and not (tmp_path / "r").exists()


def test_forecast_ladders_come_from_scales_yaml():
    from pathlib import Path

    from proxyscale.core import config
    from proxyscale import experiments
    from proxyscale.jobs import forecast

    assert set(experiments.FORECAST_LADDERS) == {"micro", "laptop", "mini", "small"}
    target = config.load(str(Path(__file__).parents[1] / "examples" / "target.yaml"))
    ladder = sweep.expand(forecast.ladder_spec(target, "laptop"))
    assert len(ladder) == 4 and {g.cfg.train.steps for g in ladder} == {1500}
    with pytest.raises(ConfigError, match="--scale"):
        forecast.ladder_spec(target, "paper")
